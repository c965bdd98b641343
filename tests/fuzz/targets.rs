//! The fuzz targets, shared by the mutation runner (examples/fuzz.rs) and the corpus replay
//! (tests/fuzz_corpus.rs). Each takes arbitrary bytes, runs the gateway's own code on them and
//! checks what must hold for any input; a broken property panics, and so does the code under
//! test if it can. Each returns a short outcome signature (the error code and field, or "ok"
//! and a shape) that the runner uses as its only feedback: an input with a new signature joins
//! the working corpus.
//!
//! - `chat`: a request body through chat and completions validation (JSON parse, every field,
//!   every image data URL decoded and checked) into a `ValidRequest` or the error to answer.
//! - `image`: a data URL, or image bytes wrapped in one, through the image checks (media type,
//!   base64, format sniffing, header read, pixel and size limits, hash, visual tokens).
//! - `sse`: a worker's stream body, cut into pieces at points the input chooses, through the
//!   SSE decoder and chunk parser the relay uses.
#![allow(dead_code)]

use base64::Engine;
use bytes::Bytes;
use caprl_gateway::config::LimitArgs;
use caprl_gateway::validate::images::{check_data_url, ImageLimits};
use caprl_gateway::validate::{validate_chat, validate_completion, ValidateOptions};
use caprl_gateway::worker::http::decode_events;
use caprl_gateway::worker::StreamEvent;
use futures::StreamExt;

pub const TARGETS: [&str; 3] = ["chat", "image", "sse"];

/// Run `target` on `input`; the outcome signature.
pub fn run(target: &str, input: &[u8]) -> String {
    match target {
        "chat" => chat(input),
        "image" => image(input),
        "sse" => sse(input),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// Limits small enough that inputs reach them: 4 images, 64 KiB each, a megapixel.
fn limits() -> LimitArgs {
    LimitArgs {
        max_body_bytes: 1 << 20,
        max_image_bytes: 64 << 10,
        max_images_per_request: 4,
        max_image_pixels: 1_000_000,
        ..LimitArgs::default()
    }
}

fn signature(err: &caprl_gateway::error::GatewayError) -> String {
    let status = err.status();
    assert!(
        status.is_client_error(),
        "client input answered {status}: {err}"
    );
    let v = serde_json::to_value(err.envelope()).expect("the envelope serializes");
    let param = v["error"]["param"].as_str().map(shape).unwrap_or_default();
    format!("{} {} {param}", status.as_u16(), v["error"]["code"])
}

/// The request fields the gateway reads or names in its errors.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "image_url",
    "url",
    "detail",
    "file",
    "file_id",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "seed",
    "logprobs",
    "temperature",
    "top_p",
    "priority",
    "user",
    "name",
    "echo",
    "best_of",
    "suffix",
    "tools",
    "tool_choice",
];

/// A field path's shape: indices dropped, names the gateway does not know as `?`, so that
/// `messages[3].content[12].image_url` and `messages[0].content[1].image_url` are one
/// signature and a fuzzed key name is not a new one.
fn shape(param: &str) -> String {
    param
        .split('.')
        .take(4)
        .map(|seg| {
            let name = seg.split('[').next().unwrap_or("");
            if FIELDS.contains(&name) {
                name
            } else {
                "?"
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

pub fn chat(input: &[u8]) -> String {
    let limits = limits();
    let opts = ValidateOptions {
        limits: &limits,
        is_served: &|m| m == "caprl",
        keep_image_bytes: &|_| false,
        image_rejected: &|_| {},
        read_file: &|id| Err(format!("no such file: {id}")),
        reported_max_model_len: &|_| Some(4096),
    };
    let mut out = String::new();
    for (name, result) in [
        ("chat", validate_chat(Bytes::copy_from_slice(input), &opts)),
        (
            "completions",
            validate_completion(Bytes::copy_from_slice(input), &opts),
        ),
    ] {
        match result {
            Ok(req) => {
                // What goes to a worker is JSON naming the served model: as serde reads it when
                // the input was (numbers past f64 and lone surrogates are valid JSON that
                // serde_json does not take, and vLLM's Python parser does), else by its grammar.
                match serde_json::from_slice::<serde_json::Value>(&req.body) {
                    Ok(body) => assert_eq!(body["model"], "caprl", "the forwarded model"),
                    Err(e) => {
                        assert!(
                            serde_json::from_slice::<serde_json::Value>(input).is_err(),
                            "readable JSON was forwarded unreadable: {e}"
                        );
                        serde_json::from_slice::<serde::de::IgnoredAny>(&req.body)
                            .expect("the forwarded body is JSON");
                    }
                }
                assert_eq!(req.model, "caprl");
                assert!(req.images.len() <= limits.max_images_per_request);
                assert!(req.prompt_tokens >= req.image_tokens);
                assert!(req.max_output_tokens >= 1);
                for img in &req.images {
                    assert!(img.bytes as u64 <= limits.max_image_bytes);
                    assert!(
                        u64::from(img.width) * u64::from(img.height) <= limits.max_image_pixels
                    );
                    assert!(img.tokens > 0);
                }
                out.push_str(&format!(
                    "{name}:ok images={} stream={} ",
                    req.images.len(),
                    req.stream
                ));
            }
            Err(e) => out.push_str(&format!("{name}:{} ", signature(&e))),
        }
    }
    out
}

pub fn image(input: &[u8]) -> String {
    let limits = ImageLimits::from(&limits());
    // A text input is tried as the URL itself; any input also as the bytes of an image.
    let mut urls = Vec::new();
    if let Ok(text) = std::str::from_utf8(input) {
        urls.push(text.to_string());
    }
    urls.push(format!(
        "data:image;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(input)
    ));
    let mut out = String::new();
    for url in urls {
        match check_data_url(&url, &limits, false, "image_url") {
            Ok(info) => {
                assert!(info.bytes as u64 <= limits.max_image_bytes);
                assert!(info.width > 0 && info.height > 0);
                assert!(u64::from(info.width) * u64::from(info.height) <= limits.max_image_pixels);
                assert!(info.tokens > 0);
                out.push_str(&format!("ok:{} ", info.format.as_str()));
            }
            Err(e) => out.push_str(&format!("{} ", signature(&e))),
        }
    }
    out
}

pub fn sse(input: &[u8]) -> String {
    // The first byte picks where the body is cut into pieces (as the network would).
    let (cut, body) = match input.split_first() {
        Some((c, rest)) => (usize::from(*c % 61) + 1, rest),
        None => (1, input),
    };
    let pieces: Vec<Result<Bytes, std::io::Error>> = body
        .chunks(cut)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let events: Vec<Result<StreamEvent, String>> = futures::executor::block_on(
        decode_events(futures::stream::iter(pieces), "caprl".to_string()).collect(),
    );
    let mut chunks = 0;
    let mut done = 0;
    for ev in &events {
        match ev {
            Ok(StreamEvent::Chunk(c)) => {
                chunks += 1;
                // A payload that is a JSON object naming a model leaves with ours.
                if let Ok(serde_json::Value::Object(o)) =
                    serde_json::from_slice::<serde_json::Value>(&c.data)
                {
                    if o.get("model").is_some() {
                        assert_eq!(o["model"], "caprl", "the relayed chunk's model");
                    }
                }
            }
            Ok(StreamEvent::Done) => done += 1,
            Err(_) => {}
        }
    }
    format!("chunks={} done={}", chunks.min(3), done.min(2))
}

/// Seeds for each target: the shapes the tests send, built here so they stay true to the code.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let png = encode(image::ImageFormat::Png, 8, 6);
    let jpeg = encode(image::ImageFormat::Jpeg, 16, 9);
    let webp = encode(image::ImageFormat::WebP, 5, 7);
    let gif = encode(image::ImageFormat::Gif, 3, 3);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match target {
        "chat" => {
            let image_req = |url: String| {
                serde_json::json!({
                    "model": "caprl", "max_tokens": 64, "temperature": 0,
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": [
                            {"type": "image_url", "image_url": {"url": url, "detail": "auto"}},
                            {"type": "text", "text": "Please describe the image in detail."}
                        ]}
                    ]
                })
                .to_string()
                .into_bytes()
            };
            vec![
                br#"{"model":"caprl","max_tokens":8,"messages":[{"role":"user","content":"Describe a kite."}]}"#.to_vec(),
                br#"{"model":"caprl","stream":true,"stream_options":{"include_usage":true},"n":2,"seed":7,"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#.to_vec(),
                br#"{"model":"caprl","prompt":"Question: 2+2?\nAnswer:","max_tokens":4,"stop":["\n"],"logprobs":1}"#.to_vec(),
                br#"{"model":"caprl","prompt":[[1,2,3],[4,5]],"max_completion_tokens":3,"echo":false}"#.to_vec(),
                br#"{"model":"caprl","messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"file-abc"}}]}]}"#.to_vec(),
                image_req(format!("data:image/png;base64,{}", b64(&png))),
                image_req(format!("data:image;base64,{}", b64(&jpeg))),
                image_req(format!("data:image/webp;base64,{}", b64(&webp))),
                image_req("https://example.invalid/cat.png".into()),
            ]
        }
        "image" => vec![
            png.clone(),
            jpeg,
            webp,
            gif,
            encode(image::ImageFormat::Bmp, 4, 4),
            format!("data:image/png;base64,{}", b64(&png)).into_bytes(),
            format!("data:image/png;charset=utf-8;base64,{}", b64(&png)).into_bytes(),
            b"data:,hello".to_vec(),
        ],
        "sse" => vec![
            [
                &b"\x07"[..],
                b"data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"model\":\"/models/caprl\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"The\"}}]}\n\n",
                b"data: {\"id\":\"c1\",\"model\":\"caprl\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,\"total_tokens\":6}}\n\n",
                b"data: [DONE]\n\n",
            ]
            .concat(),
            b"\x01: keep-alive\r\n\r\nevent: error\ndata: {\"error\":{\"message\":\"boom\"}}\r\n\r\n".to_vec(),
            b"\x3cdata: {\"model\":\"x\",\"choices\":[{\"text\":\"a\"}]}\ndata: more\n\nid: 7\nretry: 10\n\n".to_vec(),
        ],
        other => panic!("no fuzz target `{other}`"),
    }
}

fn encode(format: image::ImageFormat, w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_mul(40), (y as u8).wrapping_mul(30), 99])
    });
    let img = if format == image::ImageFormat::WebP || format == image::ImageFormat::Gif {
        image::DynamicImage::ImageRgba8(image::DynamicImage::ImageRgb8(img).to_rgba8())
    } else {
        image::DynamicImage::ImageRgb8(img)
    };
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("encode a seed image");
    out.into_inner()
}
