//! Resize to the pixel budget (`resize = "max-pixels"`) end to end: the gateway on 127.0.0.1 in
//! front of an in-process fake worker that records the body it got. The budget is the fixture
//! model's (min_pixels 3136, max_pixels 28224), so the resized images can be compared with what
//! transformers' default Qwen2-VL processor (vLLM's) resized the same files to:
//! tests/fixtures/resize/NAME.torchvision.png, made by scripts/fixtures/make_resize_refs.py.

mod common;

use base64::Engine;
use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use common::{data_url, metric, Gateway};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
const BUDGET: [&str; 4] = ["--min-pixels", "3136", "--max-pixels", "28224"];

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/resize");
    std::fs::read(path.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

struct Setup {
    gw: Gateway,
    worker: FakeWorker,
    _task: tokio::task::JoinHandle<()>,
}

/// A fake worker serving `models`, and a gateway in front of it with `extra` flags.
async fn setup(models: &[&str], extra: &[&str]) -> Setup {
    let worker = FakeWorker::new(
        "w0",
        models.iter().map(|m| m.to_string()).collect(),
        Behaviour::default(),
    );
    let (addr, task) = worker.clone().spawn(0).await.expect("worker binds");
    let mut args: Vec<String> = Vec::new();
    for m in models {
        args.extend(["--worker".to_string(), format!("{m}=http://{addr}")]);
    }
    args.extend(BUDGET.iter().chain(extra).map(|s| s.to_string()));
    let gw = Gateway::start(&args).await;
    gw.wait_ready(WAIT).await;
    Setup {
        gw,
        worker,
        _task: task,
    }
}

fn request(model: &str, url: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 8,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [
                {"type": "text", "text": "Please describe the image in detail."},
                {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
            ]}
        ]
    })
}

/// POST `body` (with `headers`); the image-tokens header, the image part the worker received
/// (its URL shortened) and that URL whole.
async fn post(s: &Setup, body: &Value, headers: &[(&str, &str)]) -> (u64, Value, String) {
    let mut req = common::client()
        .post(s.gw.url("/v1/chat/completions"))
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    let tokens = resp
        .headers()
        .get("x-caprl-image-tokens")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(u64::MAX);
    let text = resp.text().await.expect("body");
    assert_eq!(status, 200, "{text}");
    let part = s.worker.stats()["last_request"]["body"]["messages"][1]["content"][1].clone();
    let urls = s.worker.last_data_urls();
    assert_eq!(urls.len(), 1, "one image reached the worker");
    (tokens, part, urls[0].clone())
}

fn decode_url(url: &str) -> (String, Vec<u8>) {
    let (head, b64) = url.split_once(',').expect("a data URL");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    (head.to_string(), bytes)
}

#[tokio::test]
async fn images_above_the_budget_reach_the_worker_as_the_processor_resizes_them() {
    let s = setup(&["caprl"], &["--resize-images", "max-pixels"]).await;
    for (file, reference) in [
        ("photo_640x360.png", "photo_640x360.torchvision.png"),
        ("photo_1023x767.png", "photo_1023x767.torchvision.png"),
        ("tall_90x1600.png", "tall_90x1600.torchvision.png"),
        ("jpeg_500x375.jpg", "jpeg_500x375.torchvision.png"),
    ] {
        let sent = fixture(file);
        let (tokens, part, url) = post(&s, &request("caprl", &data_url(&sent)), &[]).await;
        let (head, bytes) = decode_url(&url);
        assert_eq!(head, "data:image/png;base64", "{file}");
        assert!(bytes.len() < sent.len(), "{file}: the PNG is not smaller");
        let got = image::load_from_memory(&bytes).expect("a PNG").to_rgb8();
        let want = image::load_from_memory(&fixture(reference))
            .expect("reference")
            .to_rgb8();
        assert_eq!(got.dimensions(), want.dimensions(), "{file}");
        let differing = got
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            differing, 0,
            "{file}: {differing} bytes differ from vLLM's processor"
        );
        // The other fields of the part are the client's; the token estimate is unchanged.
        assert_eq!(part["image_url"]["detail"], "high", "{file}");
        let (w, h) = want.dimensions();
        assert_eq!(tokens, u64::from(w / 28 * (h / 28)), "{file}");
    }
    let state = &s.gw.state;
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_resizes_total",
            &[("outcome", "resized")]
        ),
        4.0
    );
    let (bytes_in, bytes_out) = (
        metric(
            state,
            "caprl_gateway_image_resize_bytes_total",
            &[("stage", "in")],
        ),
        metric(
            state,
            "caprl_gateway_image_resize_bytes_total",
            &[("stage", "out")],
        ),
    );
    assert!(
        bytes_out > 0.0 && bytes_out < bytes_in,
        "in {bytes_in}, out {bytes_out}"
    );
}

#[tokio::test]
async fn images_within_the_budget_opted_out_or_not_exact_go_as_sent() {
    let s = setup(&["caprl"], &["--resize-images", "max-pixels"]).await;
    let photo = data_url(&fixture("photo_640x360.png"));
    // 101x47 is scaled up by the worker (to 112x56): not the gateway's business.
    let small = data_url(&fixture("odd_101x47.png"));
    // A 16-bit PNG: Pillow keeps the high byte of each sample, image rounds; not resized.
    let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(640, 360, |x, y| {
        image::Rgb([(x * 97) as u16, (y * 181) as u16, ((x ^ y) * 13) as u16])
    }));
    let deep = data_url(&common::encode(deep, image::ImageFormat::Png));
    for (url, headers, why) in [
        (&small, &[][..], "within the budget"),
        (&photo, &[("x-caprl-resize", "off")][..], "opted out"),
        (
            &photo,
            &[("x-caprl-resize", "OFF")][..],
            "opted out, upper case",
        ),
        (&deep, &[][..], "16-bit"),
    ] {
        let (_, _, got) = post(&s, &request("caprl", url), headers).await;
        assert!(got == *url, "{why}: the image was changed");
    }
    let state = &s.gw.state;
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_resizes_total",
            &[("outcome", "not_exact")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            state,
            "caprl_gateway_image_resizes_total",
            &[("outcome", "resized")]
        ),
        0.0
    );
}

#[tokio::test]
async fn a_resized_png_larger_than_the_original_is_not_sent() {
    let s = setup(&["caprl"], &["--resize-images", "max-pixels"]).await;
    // Noise at JPEG quality 1: about 14 KB of 8x8 blocks, where a lossless PNG of its resized
    // pixels takes twice that.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let noisy = image::RgbImage::from_fn(640, 480, |_, _| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 1)
        .encode_image(&noisy)
        .expect("jpeg");
    let url = data_url(&jpeg);
    let (_, _, got) = post(&s, &request("caprl", &url), &[]).await;
    assert!(got == url, "the larger PNG was sent");
    assert_eq!(
        metric(
            &s.gw.state,
            "caprl_gateway_image_resizes_total",
            &[("outcome", "larger")]
        ),
        1.0
    );
}

#[tokio::test]
async fn resize_is_a_per_pool_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, "[pools.caprl]\nresize = \"max-pixels\"\n").expect("write");
    let config = config.to_str().expect("utf-8").to_string();
    let s = setup(&["caprl", "plain"], &["--config", &config]).await;
    let url = data_url(&fixture("photo_640x360.png"));
    let (_, _, resized) = post(&s, &request("caprl", &url), &[]).await;
    let (head, _) = decode_url(&resized);
    assert_eq!(head, "data:image/png;base64");
    let (_, _, plain) = post(&s, &request("plain", &url), &[]).await;
    assert!(plain == url, "the pool without resize changed the image");
}
