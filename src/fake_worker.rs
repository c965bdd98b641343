//! A fake worker that speaks vLLM's OpenAI API, for tests and load benchmarks: chat completions
//! (and text completions, `/v1/completions`, with the same answers as `text`) with `usage`, streamed chunks shaped as vLLM sends them (a role chunk, one chunk per token, a
//! finish chunk, the usage chunk when asked, `data: [DONE]`), 404 for unknown models,
//! `/health`, `/v1/models`, and knobs for latency, tokens per second, failures and health,
//! changeable at run time with `POST /control`. `GET /stats` tells a test what the worker saw:
//! how many requests, how many cancelled mid-way, and the last request (image data elided).
//!
//! Behind the cargo feature `fake-worker`: on by default, so `cargo test` and `cargo bench`
//! have it (a package cannot turn on its own features for its tests), and left out of the
//! production images, which build with `--no-default-features`. In a test, serve it in-process
//! with [`FakeWorker::spawn`] on 127.0.0.1:0, or run the `caprl-fake-worker` binary.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The worker's behaviour. Every field can be changed with `POST /control`.
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
#[serde(default)]
pub struct Behaviour {
    /// Delay before the response head (and, for non-streamed answers, the whole answer).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Streaming pace; 0 sends tokens as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub tokens_per_sec: f64,
    /// Fraction of chat requests answered with `fail_status`.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Status of a failed request.
    #[arg(long, default_value_t = 500)]
    pub fail_status: u16,
    /// `/health` answers 200 (true) or 503 (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub healthy: bool,
    /// Tokens generated when the request names no max_tokens.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: u64,
    /// Answer 500 to a request with an `http(s)` image URL, as vLLM does when it cannot fetch
    /// it ("Cannot connect to host"): a request-caused 5xx from a worker that is up.
    #[arg(long, default_value_t = false, action = clap::ArgAction::Set)]
    pub fail_remote_images: bool,
    /// The context `/v1/models` reports (`max_model_len`, as vLLM does); 0 reports none.
    #[arg(long, default_value_t = 32768)]
    pub max_model_len: u64,
    /// Answer in a workflow's formats instead of the fixed caption: `qa` writes QA blocks to a
    /// question-generation request and answers the letter of [`QA_SCRIPT`]'s rule to an
    /// answering one; `prism` captions and boxed answers (see `scripted_prism`). Empty: the
    /// fixed caption.
    #[arg(long, default_value = "")]
    pub script: String,
}

/// The questions the `qa` script writes, and how it answers each: the question, its options
/// (the gold one first), and whether it answers right with the image / without it. One more
/// block is malformed on purpose (its options are labelled A, C).
pub const QA_SCRIPT: [(&str, [&str; 4], bool, bool); 4] = [
    (
        "What colour is the kite?",
        ["Red", "Blue", "Green", "Yellow"],
        true,
        false,
    ),
    (
        "How many people are watching?",
        ["Two", "One", "Three", "Four"],
        true,
        false,
    ),
    (
        "What colour is the sky on a clear day?",
        ["Blue", "Purple", "Orange", "Black"],
        true,
        true,
    ),
    (
        "What is the kite's string made of?",
        ["Nylon", "Wire", "Rope", "Silk"],
        false,
        false,
    ),
];

/// A script's answers to a request (one per choice), when it is one of its kinds.
fn scripted(script: &str, req: &Value, n: u64) -> Option<Vec<String>> {
    match script {
        "qa" => scripted_qa(req).map(|t| vec![t; n as usize]),
        "prism" => scripted_prism(req, n),
        _ => None,
    }
}

/// The `prism` script. A caption request (`Please describe this image in detail`) gets the
/// captions `caption 0` … `caption n-1`. A completion whose prompt holds `[[X]]` and a caption
/// `caption K` gets `<think>…</think> <answer>… \boxed{X}</answer>` for an even K, and an answer
/// without a box for an odd one (a parse failure): so each sample's mean is half its best.
fn scripted_prism(req: &Value, n: u64) -> Option<Vec<String>> {
    if let Some(prompt) = req.get("prompt").and_then(Value::as_str) {
        let x = prompt.split("[[").nth(1)?.split("]]").next()?;
        let k: u64 = prompt
            .split("of an image: caption ")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let text = if k % 2 == 0 {
            format!("<think>The caption says so.</think> <answer>The answer is \\boxed{{{x}}}.</answer>")
        } else {
            "<think>The caption does not say.</think> <answer>I cannot tell.</answer>".to_string()
        };
        return Some(vec![text; n as usize]);
    }
    let asks_caption = req.get("messages")?.as_array()?.iter().any(|m| {
        m.get("content")
            .and_then(Value::as_array)
            .is_some_and(|parts| {
                parts.iter().any(|p| {
                    p.get("text").and_then(Value::as_str)
                        == Some("Please describe this image in detail")
                })
            })
    });
    asks_caption.then(|| (0..n).map(|i| format!("caption {i}")).collect())
}

/// The `qa` script's answer to a request, when it is one of its kinds.
fn scripted_qa(req: &Value) -> Option<String> {
    let messages = req.get("messages")?.as_array()?;
    let system = messages
        .iter()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("system"))
        .and_then(|m| m.get("content")?.as_str())
        .unwrap_or_default();
    if system.contains("multiple-choice questions") {
        let mut text = String::new();
        // The gold option is listed second, so the extraction must follow the answer line.
        for (i, (q, options, _, _)) in QA_SCRIPT.iter().enumerate() {
            let order = [1, 0, 2, 3];
            text.push_str(&format!("#### {}. **{q}**\n", i + 1));
            for (k, &o) in order.iter().enumerate() {
                text.push_str(&format!(
                    "   - {}) {}\n",
                    (b'A' + k as u8) as char,
                    options[o]
                ));
            }
            text.push_str(&format!("\n**Answer:** B) {}\n------\n", options[0]));
        }
        text.push_str("#### 5. **A broken question?**\n   - A) yes\n   - C) no\n\n**Answer:** A) yes\n------\n");
        return Some(text);
    }
    let user = messages.last()?;
    let (prompt, with_image) = match user.get("content")? {
        Value::String(s) => (s.clone(), false),
        Value::Array(parts) => (
            parts
                .iter()
                .filter_map(|p| p.get("text")?.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            parts.iter().any(|p| p.get("image_url").is_some()),
        ),
        _ => return None,
    };
    let question = prompt.lines().next()?;
    let (_, options, right_with, right_without) =
        QA_SCRIPT.iter().find(|(q, ..)| *q == question)?;
    let right = if with_image {
        *right_with
    } else {
        *right_without
    };
    // The options as the prompt lists them: `X) text` lines.
    let listed: Vec<(char, String)> = prompt
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut c = l.chars();
            let letter = c.next()?;
            (c.next()? == ')').then(|| {
                (
                    letter,
                    c.as_str()
                        .trim()
                        .trim_end_matches(". Answer the question with only the correct letter")
                        .to_string(),
                )
            })
        })
        .collect();
    let pick = listed
        .iter()
        .find(|(_, text)| (text == options[0]) == right && text != "None of the above")?;
    Some(pick.0.to_string())
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            latency_ms: 0,
            tokens_per_sec: 0.0,
            fail_rate: 0.0,
            fail_status: 500,
            healthy: true,
            default_max_tokens: 16,
            fail_remote_images: false,
            max_model_len: 32768,
            script: String::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    completed: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    models: Vec<String>,
    behaviour: Mutex<Behaviour>,
    counters: Counters,
    last_request: Mutex<Option<Value>>,
    /// The data URLs of the last request, whole (`last_request` shortens them).
    last_data_urls: Mutex<Vec<String>>,
    name: String,
}

#[derive(Clone, Debug)]
pub struct FakeWorker(Arc<Shared>);

impl FakeWorker {
    pub fn new(name: impl Into<String>, models: Vec<String>, behaviour: Behaviour) -> FakeWorker {
        FakeWorker(Arc::new(Shared {
            models,
            behaviour: Mutex::new(behaviour),
            counters: Counters::default(),
            last_request: Mutex::new(None),
            last_data_urls: Mutex::new(Vec::new()),
            name: name.into(),
        }))
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/health", get(health))
            .route("/control", post(control))
            .route("/stats", get(stats))
            .with_state(self.clone())
    }

    /// Serve on an already-bound listener until the task is dropped or aborted.
    pub async fn serve(self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        // As vLLM's server does: small SSE writes must not wait for a delayed ACK.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, self.router()).await
    }

    /// Bind 127.0.0.1 on `port` (0: any free port) and serve in a background task.
    pub async fn spawn(
        self,
        port: u16,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let handle = tokio::spawn(async move {
            let _ = self.serve(listener).await;
        });
        Ok((addr, handle))
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.0.behaviour.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn stats(&self) -> Value {
        stats_value(&self.0)
    }

    /// Every `data:` string of the last request, whole, in the order of the body.
    pub fn last_data_urls(&self) -> Vec<String> {
        self.0
            .last_data_urls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn behaviour(&self) -> Behaviour {
        self.0
            .behaviour
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn stats_value(s: &Shared) -> Value {
    let c = &s.counters;
    json!({
        "name": s.name,
        "requests": c.requests.load(Ordering::Relaxed),
        "completed": c.completed.load(Ordering::Relaxed),
        "cancelled": c.cancelled.load(Ordering::Relaxed),
        "failed": c.failed.load(Ordering::Relaxed),
        "in_flight": c.in_flight.load(Ordering::Relaxed),
        "max_in_flight": c.max_in_flight.load(Ordering::Relaxed),
        "last_request": s.last_request.lock().unwrap_or_else(|p| p.into_inner()).clone(),
    })
}

async fn health(State(w): State<FakeWorker>) -> StatusCode {
    if w.behaviour().healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn models(State(w): State<FakeWorker>) -> Json<Value> {
    let len = w.behaviour().max_model_len;
    let data: Vec<Value> = w
        .0
        .models
        .iter()
        .map(|m| {
            let mut model = json!({"id": m, "object": "model", "created": 0, "owned_by": "vllm", "root": m, "parent": null});
            if len > 0 {
                model["max_model_len"] = json!(len);
            }
            model
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

async fn control(State(w): State<FakeWorker>, Json(patch): Json<Value>) -> Json<Value> {
    let mut current = serde_json::to_value(w.behaviour()).unwrap_or_default();
    if let (Some(cur), Some(patch)) = (current.as_object_mut(), patch.as_object()) {
        for (k, v) in patch {
            cur.insert(k.clone(), v.clone());
        }
    }
    if let Ok(b) = serde_json::from_value::<Behaviour>(current) {
        w.set(|cur| *cur = b);
    }
    Json(serde_json::to_value(w.behaviour()).unwrap_or_default())
}

async fn stats(State(w): State<FakeWorker>) -> Json<Value> {
    Json(w.stats())
}

/// Counts a request in flight; a request dropped before `done()` was cancelled by its client.
struct Track {
    w: FakeWorker,
    done: bool,
}

impl Track {
    fn new(w: &FakeWorker) -> Track {
        let c = &w.0.counters;
        c.requests.fetch_add(1, Ordering::Relaxed);
        let now = c.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        c.max_in_flight.fetch_max(now, Ordering::Relaxed);
        Track {
            w: w.clone(),
            done: false,
        }
    }
    fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let c = &self.w.0.counters;
        c.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            c.completed.fetch_add(1, Ordering::Relaxed);
        } else {
            c.cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn error(status: StatusCode, message: &str, kind: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

/// The first `http(s)` image URL of the request's messages.
fn remote_image_url(req: &Value) -> Option<&str> {
    req.get("messages")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("content")?.as_array())
        .flatten()
        .filter_map(|p| p.pointer("/image_url/url")?.as_str())
        .find(|u| u.starts_with("http://") || u.starts_with("https://"))
}

/// Elide data URLs so the stats stay small and never echo image bytes.
/// Every `data:` string in `v`, in order.
fn data_urls(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.starts_with("data:") => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|v| data_urls(v, out)),
        Value::Object(o) => o.values().for_each(|v| data_urls(v, out)),
        _ => {}
    }
}

fn elide(v: &mut Value) {
    match v {
        Value::String(s) if s.starts_with("data:") => {
            let len = s.len();
            let head: String = s.chars().take(32).collect();
            *s = format!("{head}…({len} chars)");
        }
        Value::Array(a) => a.iter_mut().for_each(elide),
        Value::Object(o) => o.values_mut().for_each(elide),
        _ => {}
    }
}

async fn chat(
    State(w): State<FakeWorker>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    answer(w, headers, body, false).await
}

/// `/v1/completions`: the same answers as text completions (`text` for `message`).
async fn completions(
    State(w): State<FakeWorker>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    answer(w, headers, body, true).await
}

async fn answer(
    w: FakeWorker,
    headers: HeaderMap,
    body: axum::body::Bytes,
    text_completion: bool,
) -> Response {
    let mut track = Track::new(&w);
    let b = w.behaviour();
    let Ok(mut req) = serde_json::from_slice::<Value>(&body) else {
        track.done();
        return error(StatusCode::BAD_REQUEST, "invalid JSON", "BadRequestError");
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut urls = Vec::new();
    data_urls(&req, &mut urls);
    *w.0.last_data_urls.lock().unwrap_or_else(|p| p.into_inner()) = urls;
    let mut seen = req.clone();
    elide(&mut seen);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    *w.0.last_request.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(json!({"body": seen, "x_request_id": request_id, "body_bytes": body.len()}));
    if !w.0.models.contains(&model) {
        track.done();
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "NotFoundError",
        );
    }
    if b.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(b.latency_ms)).await;
    }
    if b.fail_remote_images {
        if let Some(url) = remote_image_url(&req) {
            w.0.counters.failed.fetch_add(1, Ordering::Relaxed);
            track.done();
            let host = url.split('/').nth(2).unwrap_or_default();
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Cannot connect to host {host} ssl:default [Connect call failed]"),
                "InternalServerError",
            );
        }
    }
    if b.fail_rate > 0.0 && fastrand::f64() < b.fail_rate {
        w.0.counters.failed.fetch_add(1, Ordering::Relaxed);
        track.done();
        let status =
            StatusCode::from_u16(b.fail_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return error(status, "injected failure", "InternalServerError");
    }
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(b.default_max_tokens);
    let n = req.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
    let stop: Vec<String> = match req.get("stop") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        _ => vec![],
    };
    let prompt_tokens = if text_completion {
        req.get("prompt").map_or(0, |p| match p {
            Value::String(s) => s.len().div_ceil(4) as u64,
            Value::Array(a) => a.len() as u64,
            _ => 0,
        })
    } else {
        prompt_tokens(req.get_mut("messages"))
    };
    // A script answers each choice on its own; otherwise every choice is the fixed caption.
    let script = scripted(&b.script, &req, n);
    let tokens = match &script {
        Some(texts) => Generated {
            pieces: vec![texts[0].clone()],
            text: texts[0].clone(),
            finish_reason: "stop",
            stop_reason: Value::Null,
        },
        None => generate(max_tokens, &stop),
    };
    let choice_text = |i: u64| -> String {
        script
            .as_ref()
            .and_then(|t| t.get(i as usize).cloned())
            .unwrap_or_else(|| tokens.text.clone())
    };
    let id = format!(
        "{}-{:032x}",
        if text_completion { "cmpl" } else { "chatcmpl" },
        fastrand::u128(..)
    );
    let (object, chunk_object) = if text_completion {
        ("text_completion", "text_completion")
    } else {
        ("chat.completion", "chat.completion.chunk")
    };
    let created = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let choices: Vec<Value> = (0..n)
            .map(|i| if text_completion {
                json!({
                    "index": i,
                    "text": choice_text(i),
                    "logprobs": null,
                    "finish_reason": tokens.finish_reason,
                    "stop_reason": tokens.stop_reason,
                })
            } else {
                json!({
                    "index": i,
                    "message": {"role": "assistant", "content": choice_text(i), "refusal": null, "annotations": null, "audio": null, "function_call": null, "tool_calls": [], "reasoning_content": null},
                    "logprobs": null,
                    "finish_reason": tokens.finish_reason,
                    "stop_reason": tokens.stop_reason,
                })
            })
            .collect();
        let completion = tokens.pieces.len() as u64 * n;
        track.done();
        return Json(json!({
            "id": id, "object": object, "created": created, "model": model,
            "choices": choices, "service_tier": null, "system_fingerprint": null,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion, "completion_tokens": completion, "prompt_tokens_details": null},
            "prompt_logprobs": null, "kv_transfer_params": null,
        }))
        .into_response();
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pace = (b.tokens_per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / b.tokens_per_sec));
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut c = json!({"id": id, "object": chunk_object, "created": created, "model": model, "choices": choices});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        format!("data: {c}\n\n")
    };
    let body = async_stream(move |tx| async move {
        let send = |s: String| tx.send(Ok::<_, std::convert::Infallible>(s));
        // Chat streams open with a role chunk per choice; text completions do not.
        for i in (0..n).filter(|_| !text_completion) {
            if send(chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]), None)).await.is_err() {
                return;
            }
        }
        for (k, piece) in tokens.pieces.iter().enumerate() {
            if let Some(p) = pace {
                tokio::time::sleep(p).await;
            }
            let last = k + 1 == tokens.pieces.len();
            for i in 0..n {
                let finish = if last {
                    json!(tokens.finish_reason)
                } else {
                    Value::Null
                };
                let stop_reason = if last {
                    tokens.stop_reason.clone()
                } else {
                    Value::Null
                };
                let choice = if text_completion {
                    json!([{"index": i, "text": piece, "logprobs": null, "finish_reason": finish, "stop_reason": stop_reason}])
                } else {
                    json!([{"index": i, "delta": {"content": piece}, "logprobs": null, "finish_reason": finish, "stop_reason": stop_reason}])
                };
                let c = chunk(choice, None);
                if send(c).await.is_err() {
                    return;
                }
            }
        }
        if include_usage {
            let completion = tokens.pieces.len() as u64 * n;
            let usage = json!({"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens + completion, "completion_tokens": completion});
            if send(chunk(json!([]), Some(usage))).await.is_err() {
                return;
            }
        }
        if send("data: [DONE]\n\n".to_string()).await.is_ok() {
            track.done();
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        "content-type",
        "text/event-stream; charset=utf-8"
            .parse()
            .expect("static header"),
    );
    resp
}

/// A body fed by a task through a channel of capacity 1, so the producer runs at the client's
/// pace and stops (dropping its state) when the client goes away.
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<String, std::convert::Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(f(tx));
    Body::from_stream(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Generated {
    pieces: Vec<String>,
    text: String,
    finish_reason: &'static str,
    stop_reason: Value,
}

/// Deterministic text: words from a fixed caption, one token each, cut at a stop string.
fn generate(max_tokens: u64, stop: &[String]) -> Generated {
    const WORDS: &[&str] = &[
        " The",
        " image",
        " shows",
        " a",
        " red",
        " kite",
        " above",
        " a",
        " green",
        " field",
        ",",
        " with",
        " two",
        " people",
        " watching",
        " under",
        " a",
        " pale",
        " blue",
        " sky",
        ".",
    ];
    let mut pieces = Vec::new();
    let mut text = String::new();
    for i in 0..max_tokens as usize {
        let piece = WORDS[i % WORDS.len()];
        let candidate = format!("{text}{piece}");
        if let Some(s) = stop
            .iter()
            .find(|s| !s.is_empty() && candidate.contains(s.as_str()))
        {
            return Generated {
                pieces,
                text,
                finish_reason: "stop",
                stop_reason: json!(s),
            };
        }
        pieces.push(piece.to_string());
        text = candidate;
    }
    Generated {
        pieces,
        text,
        finish_reason: "length",
        stop_reason: Value::Null,
    }
}

/// A rough prompt size: text bytes / 4, plus 64 per image.
fn prompt_tokens(messages: Option<&mut Value>) -> u64 {
    let mut text = 0u64;
    let mut images = 0u64;
    if let Some(Value::Array(ms)) = messages {
        for m in ms {
            match m.get("content") {
                Some(Value::String(s)) => text += s.len() as u64,
                Some(Value::Array(parts)) => {
                    for p in parts {
                        match p.get("type").and_then(Value::as_str) {
                            Some("text") => {
                                text += p
                                    .get("text")
                                    .and_then(Value::as_str)
                                    .map_or(0, |t| t.len() as u64)
                            }
                            Some("image_url") => images += 1,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
    }
    text.div_ceil(4) + 64 * images + 1
}
