//! The HTTP surface, in-process: `http::app(state)` driven with `tower::ServiceExt::oneshot`, in
//! front of the fake worker served in this process on a bound 127.0.0.1:0 listener. Every error
//! envelope and its `param` (400, 404, 405, 413, 401), `x-request-id` echo and generation,
//! `/health`, `/ready`, `/v1/models`, and `/metrics` series moving by exact amounts.
//!
//! Each test builds its own state, so its metrics start at zero. After every refused request the
//! worker must have seen nothing and a good request must still succeed. The Python suite
//! (tests/e2e) keeps what needs the real `openai` client and curl: its exception classes, the
//! README snippet, byte-for-byte pass-through, SSE on the wire, disconnects.

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use bytes::Bytes;
use caprl_gateway::config;
use caprl_gateway::fake_worker::{Behaviour, FakeWorker};
use caprl_gateway::state::AppState;
use common::{data_url_as, image_bytes, solid_image};
use image::{ImageEncoder, ImageFormat};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tower::ServiceExt;

// The limits of the `limited` gateway, as tests/e2e/test_errors.py had them.
const MAX_IMAGES: usize = 2;
const MAX_IMAGE_BYTES: usize = 64 * 1024;
const MAX_IMAGE_PIXELS: u64 = 1_000_000;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const API_KEY: &str = "sk-e2e-secret";
/// The first image of a caption request: a system message, then the user's parts.
const IMG0: &str = "messages[1].content[0].image_url";
/// Largest reply body a test reads: the biggest here is a `/metrics` page of a few dozen KB.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;
/// How long a test waits for `/ready` or for the metrics to settle; polled every 20 ms.
const WAIT: Duration = Duration::from_secs(10);
const M: &str = "caprl_gateway_";

// ------------------------------------------------------------------------------ harness

/// The fake worker, served in this process on a bound 127.0.0.1:0 listener.
struct Worker {
    fake: FakeWorker,
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn start(models: &[&str]) -> Worker {
        let models = models.iter().map(|m| m.to_string()).collect();
        let fake = FakeWorker::new("fake", models, Behaviour::default());
        let (addr, task) = fake.clone().spawn(0).await.expect("bind 127.0.0.1:0");
        Worker {
            fake,
            url: format!("http://{addr}"),
            task,
        }
    }

    fn requests(&self) -> u64 {
        self.fake.stats()["requests"].as_u64().expect("a count")
    }

    fn last_request(&self) -> Value {
        self.fake.stats()["last_request"].clone()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One answer, read whole.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The OpenAI error envelope, exactly: `{"error": {message, type, param, code}}`.
    fn check_envelope(&self, param: Option<&str>, code: &str, kind: &str) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        let body = self.json();
        let top: BTreeSet<&str> = body
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(top, BTreeSet::from(["error"]), "{body}");
        let err = &body["error"];
        let keys: BTreeSet<&str> = err
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["message", "type", "param", "code"]),
            "{body}"
        );
        assert!(
            err["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert_eq!(err["type"], kind, "{body}");
        assert_eq!(err["param"], json!(param), "{body}");
        assert_eq!(err["code"], code, "{body}");
        body
    }

    /// The content of the first choice of a whole answer.
    fn content(&self) -> String {
        let v = self.json();
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {v}"))
            .to_string()
    }

    /// The JSON payloads of an SSE answer, after checking it ends with `data: [DONE]`.
    fn sse_payloads(&self) -> Vec<Value> {
        let text = self.text();
        let events: Vec<&str> = text
            .split("\n\n")
            .filter(|e| !e.trim().is_empty())
            .collect();
        assert!(events.iter().all(|e| e.starts_with("data: ")), "{text}");
        assert_eq!(events.last(), Some(&"data: [DONE]"), "{text}");
        events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(&e["data: ".len()..]).expect("a JSON event"))
            .collect()
    }
}

/// The gateway's router and state, built from command-line flags; requests go in with
/// `oneshot`, no socket involved.
struct Gateway {
    app: Router,
    state: AppState,
}

impl Gateway {
    fn new(workers: &[String], extra: &[&str]) -> Gateway {
        let mut argv: Vec<String> = ["caprl-gateway", "serve", "--host", "127.0.0.1"]
            .map(String::from)
            .into();
        for w in workers {
            argv.push("--worker".into());
            argv.push(w.clone());
        }
        argv.extend(extra.iter().map(|s| s.to_string()));
        let cli = config::try_parse_from(argv).expect("valid test settings");
        let args = cli.command.into_serve().expect("serve");
        let state = AppState::build(*args).expect("the state builds");
        Gateway {
            app: caprl_gateway::http::app(state.clone()),
            state,
        }
    }

    /// In front of `workers`, ready (a first probe passed on every pool).
    async fn ready(workers: &[String], extra: &[&str]) -> Gateway {
        let g = Gateway::new(workers, extra);
        g.wait_ready_status(StatusCode::OK).await;
        g
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self
            .app
            .clone()
            .oneshot(req)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = axum::body::to_bytes(resp.into_body(), MAX_REPLY_BYTES)
            .await
            .expect("the body reads");
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(request(Method::GET, path, Body::empty(), &[]))
            .await
    }

    async fn chat(&self, body: &Value) -> Reply {
        self.chat_with(body, &[]).await
    }

    async fn chat_with(&self, body: &Value, headers: &[(&str, &str)]) -> Reply {
        let bytes = serde_json::to_vec(body).expect("JSON");
        self.post_bytes("/v1/chat/completions", bytes, headers)
            .await
    }

    async fn post_bytes(&self, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(request(Method::POST, path, Body::from(body), &all))
            .await
    }

    /// Poll `/ready` until it answers `want` (bounded by [`WAIT`]); the last answer.
    async fn wait_ready_status(&self, want: StatusCode) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.get("/ready").await;
            if r.status == want {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "/ready is not {want} within {WAIT:?}: {} {}",
                r.status,
                r.text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> Samples {
        let r = self.get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK);
        Samples::parse(&r.text())
    }

    /// Scrape until nothing is in flight or queued (bounded): a request's record finishes just
    /// after its last byte is handed over.
    async fn settled(&self) -> Samples {
        let deadline = Instant::now() + WAIT;
        loop {
            let m = self.metrics().await;
            if m.sum(&format!("{M}worker_in_flight"), &[]) == 0.0
                && m.sum(&format!("{M}queue_depth"), &[]) == 0.0
            {
                return m;
            }
            assert!(Instant::now() < deadline, "requests still in flight");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        // Stop the probe and queue tasks of this state.
        self.state.cancel.cancel();
    }
}

fn request(method: Method, path: &str, body: Body, headers: &[(&str, &str)]) -> Request<Body> {
    // HTTP/1.1 needs a Host header (RFC 9112 §3.2; the gateway enforces it).
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "gateway.test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(body).expect("a valid request")
}

/// A gateway with small limits in front of one fake worker.
async fn limited() -> (Gateway, Worker) {
    let w = Worker::start(&["caprl"]).await;
    let limits = [
        MAX_IMAGES.to_string(),
        MAX_IMAGE_BYTES.to_string(),
        MAX_IMAGE_PIXELS.to_string(),
        MAX_BODY_BYTES.to_string(),
    ];
    let flags = [
        "--max-images-per-request",
        limits[0].as_str(),
        "--max-image-bytes",
        limits[1].as_str(),
        "--max-image-pixels",
        limits[2].as_str(),
        "--max-body-bytes",
        limits[3].as_str(),
    ];
    let g = Gateway::ready(std::slice::from_ref(&w.url), &flags).await;
    (g, w)
}

fn good_png() -> String {
    data_url_as(&image_bytes(ImageFormat::Png, 64, 48), "image/png")
}

/// CapRL's prompt: a system message, then a user message with the images and the text.
fn caption_messages(urls: &[String]) -> Value {
    let mut parts: Vec<Value> = urls
        .iter()
        .map(|u| json!({"type": "image_url", "image_url": {"url": u}}))
        .collect();
    parts.push(json!({"type": "text", "text": "Please describe the image in detail."}));
    json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": parts},
    ])
}

fn one_image(url: &str) -> Value {
    json!({"model": "caprl", "messages": caption_messages(&[url.to_string()]), "max_tokens": 3})
}

fn hi(max_tokens: u32) -> Value {
    json!({"model": "caprl", "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}]})
}

/// A good request after a refused one: answered, and seen by the worker once.
async fn good_request_succeeds(g: &Gateway, w: &Worker, headers: &[(&str, &str)]) {
    let before = w.requests();
    let body =
        json!({"model": "caprl", "messages": caption_messages(&[good_png()]), "max_tokens": 3});
    let r = g.chat_with(&body, headers).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.content(), " The image shows");
    assert_eq!(w.requests(), before + 1);
}

/// Send `body`; it must be refused with `status` and this envelope, the worker must not have
/// seen it, and a good request must succeed afterwards. Returns the envelope.
async fn expect_error(
    g: &Gateway,
    w: &Worker,
    body: Vec<u8>,
    status: StatusCode,
    param: Option<&str>,
    code: &str,
) -> Value {
    let before = w.requests();
    let r = g.post_bytes("/v1/chat/completions", body, &[]).await;
    assert_eq!(r.status, status, "{}", r.text());
    let envelope = r.check_envelope(param, code, "invalid_request_error");
    assert_eq!(
        w.requests(),
        before,
        "the worker saw a request the gateway should have refused"
    );
    good_request_succeeds(g, w, &[]).await;
    envelope
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("JSON")
}

// ------------------------------------------------------------------------------ metrics text

/// Samples of the Prometheus text format by name and label set.
struct Samples(Vec<(String, BTreeMap<String, String>, f64)>);

impl Samples {
    fn parse(text: &str) -> Samples {
        let mut out = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("a number: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    parse_labels(rest.strip_suffix('}').expect("closing brace")),
                ),
                None => (series, BTreeMap::new()),
            };
            out.push((name.to_string(), labels, value));
        }
        Samples(out)
    }

    /// The one series with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// The sum over every series of `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    fn names(&self) -> BTreeSet<&str> {
        self.0.iter().map(|(n, _, _)| n.as_str()).collect()
    }
}

/// `a="x",b="y \"quoted\""` into a map, undoing the format's escapes.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = text.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            return labels;
        }
        assert_eq!(chars.next(), Some('"'), "a quoted label value in {text}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                c => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').to_string(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

// ------------------------------------------------------------------------------ 400, 404, 413

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_messages_are_400_naming_messages() {
    let (g, w) = limited().await;
    let body = to_vec(&json!({"model": "caprl", "messages": []}));
    expect_error(
        &g,
        &w,
        body,
        StatusCode::BAD_REQUEST,
        Some("messages"),
        "invalid_request",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_naming_model() {
    let (g, w) = limited().await;
    let body = to_vec(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}));
    let err = expect_error(
        &g,
        &w,
        body,
        StatusCode::NOT_FOUND,
        Some("model"),
        "model_not_found",
    )
    .await;
    let message = err["error"]["message"].as_str().expect("a message");
    assert!(message.contains("gpt-4o"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_urls_are_400_naming_the_part() {
    let (g, w) = limited().await;
    let png = image_bytes(ImageFormat::Png, 32, 32);
    let b64_png = data_url_as(&png, "image/png")
        .split_once(',')
        .expect("a comma")
        .1
        .to_string();
    let cases = [
        (
            "malformed base64",
            "data:image/png;base64,@@@not*base64@@@".to_string(),
        ),
        (
            "not an image",
            data_url_as(b"GIF? no. just some text that is not an image", "image/png"),
        ),
        ("text/plain", data_url_as(&png, "text/plain")),
        ("no base64 marker", format!("data:image/png,{b64_png}")),
        ("truncated PNG header", data_url_as(&png[..24], "image/png")),
        ("file URL", "file:///etc/hosts".to_string()),
        ("ftp URL", "ftp://127.0.0.1/x.png".to_string()),
    ];
    for (case, url) in cases {
        let before = w.requests();
        let r = g.chat(&one_image(&url)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{case}: {}", r.text());
        r.check_envelope(Some(IMG0), "invalid_request", "invalid_request_error");
        assert_eq!(w.requests(), before, "{case}: the worker saw it");
    }
    good_request_succeeds(&g, &w, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_images_are_413_naming_the_first_extra_one() {
    let (g, w) = limited().await;
    let urls: Vec<String> = (0..=MAX_IMAGES as u32)
        .map(|i| data_url_as(&image_bytes(ImageFormat::Png, 20 + i, 20), "image/png"))
        .collect();
    let body = json!({"model": "caprl", "messages": caption_messages(&urls), "max_tokens": 3});
    let param = format!("messages[1].content[{MAX_IMAGES}].image_url");
    expect_error(
        &g,
        &w,
        to_vec(&body),
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(param.as_str()),
        "payload_too_large",
    )
    .await;
    // Exactly the limit is fine.
    let body = json!({"model": "caprl", "messages": caption_messages(&urls[..MAX_IMAGES]), "max_tokens": 2});
    let r = g.chat(&body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(!r.content().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_max_image_bytes_is_413() {
    let (g, w) = limited().await;
    let bmp = image_bytes(ImageFormat::Bmp, 160, 160);
    assert!(MAX_IMAGE_BYTES < bmp.len() && bmp.len() * 4 / 3 < MAX_BODY_BYTES);
    let body = one_image(&data_url_as(&bmp, "image/bmp"));
    expect_error(
        &g,
        &w,
        to_vec(&body),
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(IMG0),
        "payload_too_large",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_over_max_image_pixels_is_413() {
    let (g, w) = limited().await;
    // 16 M black pixels: a few KB at the best deflate level (the default, fast, level makes
    // more than the 64 KiB limit of it).
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new_with_quality(
        &mut png,
        image::codecs::png::CompressionType::Best,
        image::codecs::png::FilterType::NoFilter,
    )
    .write_image(
        &vec![0u8; 4000 * 4000],
        4000,
        4000,
        image::ExtendedColorType::L8,
    )
    .expect("encode the test image");
    assert!(png.len() < MAX_IMAGE_BYTES, "a small file with many pixels");
    let body = one_image(&data_url_as(&png, "image/png"));
    let err = expect_error(
        &g,
        &w,
        to_vec(&body),
        StatusCode::PAYLOAD_TOO_LARGE,
        Some(IMG0),
        "payload_too_large",
    )
    .await;
    let message = err["error"]["message"].as_str().expect("a message");
    assert!(message.contains("4000x4000"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_body_bytes_is_413_with_or_without_a_length() {
    let (g, w) = limited().await;
    let text = "x".repeat(MAX_BODY_BYTES + 10);
    let big = to_vec(
        &json!({"model": "caprl", "messages": [{"role": "user", "content": text}], "max_tokens": 3}),
    );
    let length = big.len().to_string();
    let before = w.requests();
    // With Content-Length: refused from the header.
    let r = g
        .post_bytes(
            "/v1/chat/completions",
            big.clone(),
            &[("content-length", length.as_str())],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    r.check_envelope(None, "payload_too_large", "invalid_request_error");
    // Without one (a chunked upload): refused while being read, same answer.
    let chunks: Vec<Result<Bytes, std::io::Error>> = big
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Body::from_stream(futures::stream::iter(chunks));
    let r = g
        .send(request(
            Method::POST,
            "/v1/chat/completions",
            streamed,
            &[("content-type", "application/json")],
        ))
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", r.text());
    r.check_envelope(None, "payload_too_large", "invalid_request_error");
    assert_eq!(w.requests(), before);
    good_request_succeeds(&g, &w, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_json_is_400_naming_where_parsing_stopped() {
    let (g, w) = limited().await;
    let before = w.requests();
    let truncated = br#"{"model": "caprl", "messages": [{"role": "user", "content": "hi"}"#;
    let r = g
        .post_bytes("/v1/chat/completions", truncated.to_vec(), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // Truncated inside `messages`: the param names where parsing stopped.
    r.check_envelope(Some("messages"), "invalid_request", "invalid_request_error");
    assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
    let r = g
        .post_bytes("/v1/chat/completions", b"{not json".to_vec(), &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    r.check_envelope(None, "invalid_request", "invalid_request_error");
    assert_eq!(w.requests(), before);
    good_request_succeeds(&g, &w, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400_naming_the_field() {
    let (g, w) = limited().await;
    let cases: [(&str, &[u8], Option<&str>); 6] = [
        ("garbage", b"not json at all", None),
        ("missing messages", br#"{"model": "caprl"}"#, Some("messages")),
        (
            "missing model",
            br#"{"messages": [{"role": "user", "content": "hi"}]}"#,
            Some("model"),
        ),
        (
            "unknown role",
            br#"{"model": "caprl", "messages": [{"role": "wizard", "content": "hi"}]}"#,
            Some("messages[0].role"),
        ),
        (
            "unknown part type",
            br#"{"model": "caprl", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}"#,
            Some("messages[0].content[0].type"),
        ),
        (
            "n zero",
            br#"{"model": "caprl", "n": 0, "messages": [{"role": "user", "content": "hi"}]}"#,
            Some("n"),
        ),
    ];
    for (case, body, param) in cases {
        let before = w.requests();
        let r = g
            .post_bytes("/v1/chat/completions", body.to_vec(), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{case}: {}", r.text());
        r.check_envelope(param, "invalid_request", "invalid_request_error");
        assert_eq!(w.requests(), before, "{case}: the worker saw it");
    }
    good_request_succeeds(&g, &w, &[]).await;
}

// ------------------------------------------------------------------------------ routes, 405, 401

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_404_and_a_wrong_method_405() {
    let (g, w) = limited().await;
    let before = w.requests();
    let r = g.get("/v1/nonsense").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let body = r.check_envelope(None, "not_found", "invalid_request_error");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(message.contains("/v1/nonsense"), "{message}");
    let r = g
        .post_bytes(
            "/v1/embeddings",
            to_vec(&json!({"model": "caprl", "input": "x"})),
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.check_envelope(None, "not_found", "invalid_request_error");
    // A route that exists, the wrong method.
    let r = g.post_bytes("/health", Vec::new(), &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.check_envelope(None, "method_not_allowed", "invalid_request_error");
    let r = g.get("/v1/chat/completions").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    r.check_envelope(None, "method_not_allowed", "invalid_request_error");
    assert_eq!(w.requests(), before);
    let m = g.metrics().await;
    assert_eq!(
        m.get(
            &format!("{M}http_requests_total"),
            &[
                ("route", "unmatched"),
                ("method", "GET"),
                ("status_code", "404")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_is_required_on_v1_only() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &["--api-key", API_KEY]).await;
    let before = w.requests();
    let unauthorized = |r: &Reply| {
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text());
        r.check_envelope(None, "invalid_api_key", "authentication_error");
    };
    let short = &API_KEY[..API_KEY.len() - 1];
    let long = format!("{API_KEY}x");
    for key in ["EMPTY", long.as_str(), short] {
        let bearer = format!("Bearer {key}");
        let auth = [("authorization", bearer.as_str())];
        unauthorized(&g.chat_with(&hi(2), &auth).await);
        unauthorized(
            &g.send(request(Method::GET, "/v1/models", Body::empty(), &auth))
                .await,
        );
    }
    // No key at all, and the key under another scheme.
    unauthorized(&g.chat(&hi(2)).await);
    let basic = format!("Basic {API_KEY}");
    unauthorized(
        &g.chat_with(&hi(2), &[("authorization", basic.as_str())])
            .await,
    );
    assert_eq!(
        w.requests(),
        before,
        "an unauthenticated request reached the worker"
    );
    let m = g.metrics().await;
    // 3 keys x 2 routes + 2.
    assert_eq!(
        m.sum(
            &format!("{M}rejections_total"),
            &[("reason", "unauthorized")]
        ),
        8.0
    );
    assert_eq!(
        m.get(
            &format!("{M}http_requests_total"),
            &[
                ("route", "/v1/chat/completions"),
                ("method", "POST"),
                ("status_code", "401")
            ]
        ),
        Some(5.0)
    );
    // Probes and scrapes need no key.
    for path in ["/health", "/ready", "/metrics"] {
        assert_eq!(g.get(path).await.status, StatusCode::OK, "{path}");
    }
    // The right key works.
    let bearer = format!("Bearer {API_KEY}");
    let auth = [("authorization", bearer.as_str())];
    good_request_succeeds(&g, &w, &auth).await;
    let r = g.chat_with(&hi(2), &auth).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(w.requests(), before + 2);
    let r = g
        .send(request(Method::GET, "/v1/models", Body::empty(), &auth))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["data"][0]["id"], "caprl");
}

// ------------------------------------------------------------------------------ x-request-id

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_request_id_is_echoed_and_forwarded() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    let r = g
        .chat_with(&hi(2), &[("x-request-id", "e2e-curl-0001")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-request-id"), Some("e2e-curl-0001"));
    assert_eq!(w.last_request()["x_request_id"], "e2e-curl-0001");

    // Streaming too.
    let mut body = hi(2);
    body["stream"] = json!(true);
    let r = g
        .chat_with(&body, &[("x-request-id", "e2e-openai-stream")])
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    assert_eq!(r.header("x-request-id"), Some("e2e-openai-stream"));
    assert!(!r.sse_payloads().is_empty());
    assert_eq!(w.last_request()["x_request_id"], "e2e-openai-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_generated_when_absent_or_unusable() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = g.chat(&hi(2)).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = r.header("x-request-id").expect("an id").to_string();
        assert!(id.len() >= 16, "{id}");
        assert_eq!(w.last_request()["x_request_id"], id.as_str());
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    // An id the gateway will not take (too long, or not printable ASCII) is replaced.
    let too_long = "x".repeat(200);
    for bad in [too_long.as_str(), "has space"] {
        let r = g.chat_with(&hi(2), &[("x-request-id", bad)]).await;
        assert_eq!(r.status, StatusCode::OK);
        let id = r.header("x-request-id").expect("an id");
        assert!(!id.is_empty() && id != bad, "{id}");
        assert_eq!(w.last_request()["x_request_id"], id);
    }
    // Other routes and errors carry one too.
    for path in ["/v1/nope", "/health", "/v1/models"] {
        let r = g.get(path).await;
        assert!(
            r.header("x-request-id").is_some_and(|id| id.len() >= 16),
            "{path}"
        );
    }
}

// ------------------------------------------------------------------------------ ops

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_lists_every_served_model_and_requests_route_by_model() {
    let a = Worker::start(&["caprl"]).await;
    let b = Worker::start(&["caprl-eval"]).await;
    let g = Gateway::ready(
        &[format!("caprl={}", a.url), format!("caprl-eval={}", b.url)],
        &[],
    )
    .await;
    let r = g.get("/v1/models").await;
    assert_eq!(r.status, StatusCode::OK);
    let list = r.json();
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().expect("data");
    let ids: BTreeSet<&str> = data.iter().filter_map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, BTreeSet::from(["caprl", "caprl-eval"]));
    assert_eq!(data.len(), 2);
    for m in data {
        assert_eq!(m["object"], "model", "{m}");
    }

    for (model, times) in [("caprl", 3), ("caprl-eval", 2)] {
        for _ in 0..times {
            let mut body = hi(2);
            body["model"] = json!(model);
            let r = g.chat(&body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert_eq!(r.json()["model"], model);
        }
    }
    let mut body = hi(2);
    body["model"] = json!("caprl-eval");
    body["stream"] = json!(true);
    let r = g.chat(&body).await;
    assert_eq!(r.status, StatusCode::OK);
    let chunks = r.sse_payloads();
    assert!(!chunks.is_empty());
    assert!(
        chunks.iter().all(|c| c["model"] == "caprl-eval"),
        "{chunks:?}"
    );
    body["model"] = json!("caprl-other");
    body["stream"] = json!(false);
    let r = g.chat(&body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    r.check_envelope(Some("model"), "model_not_found", "invalid_request_error");

    assert_eq!(a.requests(), 3, "caprl requests go to caprl's worker only");
    assert_eq!(
        b.requests(),
        3,
        "caprl-eval requests go to caprl-eval's worker only"
    );
    assert_eq!(a.last_request()["body"]["model"], "caprl");
    assert_eq!(b.last_request()["body"]["model"], "caprl-eval");
    let ready = g.get("/ready").await.json();
    assert_eq!(
        ready,
        json!({
            "ready": true,
            "draining": false,
            "pools": {
                "caprl": {"workers": 1, "reachable": 1},
                "caprl-eval": {"workers": 1, "reachable": 1},
            },
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_ready_follow_the_worker() {
    let w = Worker::start(&["caprl"]).await;
    // Probe every 0.5 s (2 failures mark a worker down) so the test stays short.
    let g = Gateway::ready(
        std::slice::from_ref(&w.url),
        &[
            "--health-interval-secs",
            "0.5",
            "--health-timeout-secs",
            "0.5",
        ],
    )
    .await;
    assert_eq!(g.get("/health").await.status, StatusCode::OK);
    let r = g.get("/ready").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["ready"], true);

    w.fake.set(|b| b.healthy = false);
    let r = g.wait_ready_status(StatusCode::SERVICE_UNAVAILABLE).await;
    let body = r.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["draining"], false);
    assert_eq!(body["pools"]["caprl"]["reachable"], 0);
    assert_eq!(body["pools"]["caprl"]["workers"], 1);
    assert_eq!(
        g.get("/health").await.status,
        StatusCode::OK,
        "liveness does not depend on workers"
    );
    let m = g.metrics().await;
    assert_eq!(
        m.get(
            &format!("{M}worker_health"),
            &[("model_name", "caprl"), ("worker", w.url.as_str())]
        ),
        Some(0.0)
    );

    w.fake.set(|b| b.healthy = true);
    g.wait_ready_status(StatusCode::OK).await;
    let r = g.chat(&hi(2)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content(), " The image");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_503_while_draining() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    g.state.drain.start();
    let r = g.get("/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let body = r.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["draining"], true);
    assert_eq!(body["pools"]["caprl"]["reachable"], 1);
    assert_eq!(g.get("/health").await.status, StatusCode::OK);
}

// ------------------------------------------------------------------------------ /metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_known_requests_imply() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    // 84 wide, 56 high: 3x2 = 6 visual tokens.
    let png = image_bytes(ImageFormat::Png, 84, 56);
    let mut usages = Vec::new();
    let body = json!({"model": "caprl", "messages": caption_messages(&[data_url_as(&png, "image/png")]), "max_tokens": 5});
    let r = g.chat(&body).await;
    assert_eq!(r.status, StatusCode::OK);
    // The answer tells the client what its images cost.
    assert_eq!(r.headers["x-caprl-images"], "1");
    assert_eq!(r.headers["x-caprl-image-tokens"], "6");
    usages.push(r.json()["usage"].clone());
    for max_tokens in [7, 9] {
        let body = json!({"model": "caprl", "messages": [{"role": "user", "content": "Say something."}], "max_tokens": max_tokens});
        let r = g.chat(&body).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-caprl-images"], "0");
        assert_eq!(r.headers["x-caprl-image-tokens"], "0");
        usages.push(r.json()["usage"].clone());
    }
    let r = g.chat(&json!({"model": "caprl", "messages": []})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let k = usages.len() as f64;
    let used = |kind: &str| -> f64 {
        usages
            .iter()
            .map(|u| u[kind].as_u64().expect("a count") as f64)
            .sum()
    };
    let completion: Vec<u64> = usages
        .iter()
        .filter_map(|u| u["completion_tokens"].as_u64())
        .collect();
    assert_eq!(completion, [5, 7, 9]);

    let m = g.settled().await;
    let names = m.names();
    for family in [
        "requests_total",
        "images_total",
        "tokens_total",
        "rejections_total",
        "http_requests_total",
        "worker_in_flight",
        "request_duration_seconds_count",
        "http_request_duration_seconds_count",
        "image_tokens_total",
        "worker_responses_total",
        "worker_health",
    ] {
        assert!(
            names.contains(format!("{M}{family}").as_str()),
            "{M}{family} missing"
        );
    }
    let n = |name: &str| format!("{M}{name}");
    let model = ("model_name", "caprl");
    let whole = ("streaming", "false");
    let worker = ("worker", w.url.as_str());
    assert_eq!(
        m.get(
            &n("requests_total"),
            &[model, ("outcome", "success"), whole]
        ),
        Some(k)
    );
    assert_eq!(
        m.sum(&n("requests_total"), &[]),
        k,
        "validation rejects are not chat requests"
    );
    assert_eq!(
        m.get(&n("images_total"), &[("format", "png"), ("outcome", "ok")]),
        Some(1.0)
    );
    assert_eq!(m.sum(&n("images_total"), &[]), 1.0);
    assert_eq!(m.get(&n("image_tokens_total"), &[model]), Some(6.0));
    assert_eq!(
        m.get(&n("image_pixels_count"), &[("format", "png")]),
        Some(1.0)
    );
    assert_eq!(
        m.get(&n("image_pixels_sum"), &[("format", "png")]),
        Some(84.0 * 56.0)
    );
    assert_eq!(
        m.get(&n("image_bytes_sum"), &[("format", "png")]),
        Some(png.len() as f64)
    );
    assert_eq!(
        m.get(&n("tokens_total"), &[model, ("kind", "completion")]),
        Some(used("completion_tokens"))
    );
    assert_eq!(
        m.get(&n("tokens_total"), &[model, ("kind", "prompt")]),
        Some(used("prompt_tokens"))
    );
    assert_eq!(
        m.sum(&n("rejections_total"), &[("reason", "bad_request")]),
        1.0
    );
    assert_eq!(m.sum(&n("rejections_total"), &[]), 1.0);
    let chat_route = ("route", "/v1/chat/completions");
    let post = ("method", "POST");
    assert_eq!(
        m.get(
            &n("http_requests_total"),
            &[chat_route, post, ("status_code", "200")]
        ),
        Some(k)
    );
    assert_eq!(
        m.get(
            &n("http_requests_total"),
            &[chat_route, post, ("status_code", "400")]
        ),
        Some(1.0)
    );
    assert!(
        m.value(
            &n("http_requests_total"),
            &[
                ("route", "/ready"),
                ("method", "GET"),
                ("status_code", "200")
            ]
        ) >= 1.0
    );
    assert_eq!(m.get(&n("worker_in_flight"), &[model, worker]), Some(0.0));
    assert_eq!(m.get(&n("worker_health"), &[model, worker]), Some(1.0));
    assert_eq!(
        m.get(
            &n("worker_responses_total"),
            &[model, worker, ("status_code", "200")]
        ),
        Some(k)
    );
    assert_eq!(
        m.get(&n("request_duration_seconds_count"), &[model, whole]),
        Some(k)
    );
    assert_eq!(
        m.get(
            &n("request_duration_seconds_bucket"),
            &[model, whole, ("le", "+Inf")]
        ),
        Some(k)
    );
    assert!(m.value(&n("request_duration_seconds_sum"), &[model, whole]) > 0.0);
    assert_eq!(
        m.get(&n("http_request_duration_seconds_count"), &[chat_route]),
        Some(k + 1.0)
    );
    assert_eq!(m.value(&n("retries_total"), &[model]), 0.0);
    assert_eq!(w.requests() as f64, k);

    // Counters only move forward, and a scrape moves only its own route's counter.
    let m2 = g.metrics().await;
    assert_eq!(
        m2.get(
            &n("requests_total"),
            &[model, ("outcome", "success"), whole]
        ),
        Some(k)
    );
    let scrapes = [
        ("route", "/metrics"),
        ("method", "GET"),
        ("status_code", "200"),
    ];
    assert_eq!(
        m2.value(&n("http_requests_total"), &scrapes),
        m.value(&n("http_requests_total"), &scrapes) + 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_streams_count_usage_the_client_did_not_ask_for() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    let messages = json!([{"role": "user", "content": "Describe."}]);
    let plain = g
        .chat(&json!({"model": "caprl", "messages": messages, "max_tokens": 7, "stream": true}))
        .await;
    assert_eq!(plain.status, StatusCode::OK);
    let plain = plain.sse_payloads();
    assert!(
        plain
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "usage leaked: {plain:?}"
    );
    let with_usage = g
        .chat(&json!({
            "model": "caprl", "messages": messages, "max_tokens": 4, "stream": true,
            "stream_options": {"include_usage": true},
        }))
        .await;
    assert_eq!(with_usage.status, StatusCode::OK);
    let with_usage = with_usage.sse_payloads();
    assert_eq!(
        with_usage.last().expect("chunks")["usage"]["completion_tokens"],
        4
    );
    let m = g.settled().await;
    let n = |name: &str| format!("{M}{name}");
    let model = ("model_name", "caprl");
    let streamed = ("streaming", "true");
    assert_eq!(
        m.get(
            &n("requests_total"),
            &[model, ("outcome", "success"), streamed]
        ),
        Some(2.0)
    );
    // The gateway asked the worker for usage on the first stream and counted it.
    assert_eq!(
        m.get(&n("tokens_total"), &[model, ("kind", "completion")]),
        Some(7.0 + 4.0)
    );
    assert_eq!(
        m.get(&n("request_duration_seconds_count"), &[model, streamed]),
        Some(2.0)
    );
    assert_eq!(
        m.get(&n("time_to_first_token_seconds_count"), &[model]),
        Some(2.0)
    );
    assert_eq!(
        m.get(&n("time_per_output_token_seconds_count"), &[model]),
        Some(2.0)
    );
    assert_eq!(
        m.get(&n("worker_in_flight"), &[model, ("worker", w.url.as_str())]),
        Some(0.0)
    );
}

/// images_total's `outcome` label is documented as `ok` or `rejected` (src/metrics.rs): an image
/// refused for its pixel count (its format already sniffed) counts as rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_rejected_image() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(
        std::slice::from_ref(&w.url),
        &["--max-image-pixels", "10000"],
    )
    .await;
    let png = solid_image(ImageFormat::Png, 200, 200, [1, 2, 3]);
    let body = json!({"model": "caprl", "messages": caption_messages(&[data_url_as(&png, "image/png")]), "max_tokens": 2});
    let r = g.chat(&body).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    r.check_envelope(Some(IMG0), "payload_too_large", "invalid_request_error");
    let m = g.settled().await;
    let n = |name: &str| format!("{M}{name}");
    assert_eq!(
        m.sum(&n("rejections_total"), &[("reason", "too_large")]),
        1.0
    );
    assert_eq!(
        m.value(&n("images_total"), &[("format", "png"), ("outcome", "ok")]),
        0.0
    );
    assert_eq!(
        m.get(
            &n("images_total"),
            &[("format", "png"), ("outcome", "rejected")]
        ),
        Some(1.0)
    );
    assert_eq!(w.requests(), 0);
}

#[test]
fn the_label_parser_undoes_escapes() {
    let labels = parse_labels(r#"a="x",b="say \"hi\"\\n",c="""#);
    assert_eq!(labels["a"], "x");
    assert_eq!(labels["b"], "say \"hi\"\\n");
    assert_eq!(labels["c"], "");
    assert_eq!(labels.len(), 3);
}

#[tokio::test]
async fn max_tokens_is_bounded_by_the_context_the_worker_reports() {
    let w = Worker::start(&["caprl"]).await;
    w.fake.set(|b| b.max_model_len = 1024);
    // The configured bound is larger: the worker's own word wins.
    let g = Gateway::ready(std::slice::from_ref(&w.url), &["--max-model-len", "32768"]).await;
    let over = g.chat(&hi(2000)).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST, "{}", over.text());
    over.check_envelope(
        Some("max_tokens"),
        "invalid_request",
        "invalid_request_error",
    );
    assert!(over.text().contains("1024"), "{}", over.text());
    assert_eq!(w.requests(), 0, "refused before any worker saw it");
    let fits = g.chat(&hi(1000)).await;
    assert_eq!(fits.status, StatusCode::OK, "{}", fits.text());

    // A worker that reports nothing leaves the configured bound in force.
    let quiet = Worker::start(&["caprl"]).await;
    quiet.fake.set(|b| b.max_model_len = 0);
    let g = Gateway::ready(
        std::slice::from_ref(&quiet.url),
        &["--max-model-len", "1500"],
    )
    .await;
    assert_eq!(g.chat(&hi(1000)).await.status, StatusCode::OK);
    assert_eq!(g.chat(&hi(2000)).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn text_completions_go_through_the_same_validation_queue_and_relay() {
    let w = Worker::start(&["caprl"]).await;
    let g = Gateway::ready(std::slice::from_ref(&w.url), &[]).await;
    let post = |body: Value| {
        let bytes = serde_json::to_vec(&body).expect("JSON");
        g.post_bytes("/v1/completions", bytes, &[])
    };
    let ok = post(
        json!({"model": "caprl", "prompt": "<|im_start|>user\nhi<|im_end|>", "max_tokens": 5}),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let v = ok.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "caprl");
    assert!(
        v["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{v}"
    );
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(
        w.last_request()["body"]["prompt"],
        "<|im_start|>user\nhi<|im_end|>"
    );

    // Streamed: text chunks, the usage chunk hidden (the gateway asked for it), then [DONE].
    let streamed =
        post(json!({"model": "caprl", "prompt": ["a", "b"], "max_tokens": 3, "stream": true}))
            .await;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.text());
    let events = streamed.sse_payloads();
    assert!(!events.is_empty());
    assert!(
        events
            .iter()
            .all(|e| e["object"] == "text_completion" && e.get("usage").is_none()),
        "{events:?}"
    );
    assert_eq!(
        w.last_request()["body"]["stream_options"]["include_usage"],
        true,
        "the gateway asks for usage to count tokens"
    );

    let seen = w.requests();
    let refused = [
        (json!({"model": "caprl", "max_tokens": 5}), Some("prompt")),
        (json!({"model": "caprl", "prompt": ""}), Some("prompt")),
        (json!({"model": "caprl", "prompt": []}), Some("prompt")),
        (
            json!({"model": "caprl", "prompt": {"text": "hi"}}),
            Some("prompt"),
        ),
        (
            json!({"model": "caprl", "prompt": "hi", "max_tokens": 0}),
            Some("max_tokens"),
        ),
        (
            json!({"model": "caprl", "prompt": "hi", "n": 129}),
            Some("n"),
        ),
    ];
    for (body, param) in refused {
        let r = post(body.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text());
        r.check_envelope(param, "invalid_request", "invalid_request_error");
    }
    let unknown = post(json!({"model": "nope", "prompt": "hi"})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    unknown.check_envelope(Some("model"), "model_not_found", "invalid_request_error");
    let big = br#"{"model":"caprl","prompt":"hi","seed":123456789012345678901234567890}"#;
    let big = g.post_bytes("/v1/completions", big.to_vec(), &[]).await;
    assert_eq!(big.status, StatusCode::BAD_REQUEST, "{}", big.text());
    big.check_envelope(Some("seed"), "invalid_request", "invalid_request_error");
    let array = g.post_bytes("/v1/completions", b"[1]".to_vec(), &[]).await;
    assert_eq!(array.status, StatusCode::BAD_REQUEST, "{}", array.text());
    assert_eq!(w.requests(), seen, "nothing refused reached the worker");
}
