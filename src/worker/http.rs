//! Forwarding to an OpenAI-compatible worker over HTTP/1.1 with reqwest. The body sent is the
//! `ValidRequest`'s bytes (the client's own, in most cases); `x-request-id` goes along so the
//! worker's logs carry the same id. Connections are pooled and have TCP_NODELAY set.
//!
//! The worker's protocol is read here and nowhere else: a streamed answer is decoded line by
//! line with a real SSE decoder (`eventsource-stream`) into typed [`Chunk`]s, each parsed once;
//! a 5xx is classified by what it says about the worker ([`Fault`]); a 4xx body that is not an
//! OpenAI error envelope (FastAPI's `{"detail": …}`, say) is wrapped into one.

use super::{Chunk, Fault, SendError, SendLimits, StreamEvent, Upstream, UpstreamBody};
use crate::api::chat::ResponsePeek;
use crate::error::GatewayError;
use crate::validate::{Endpoint, ValidRequest};
use axum::http::StatusCode;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use std::time::Duration;
use tokio::time::Instant;

/// Idle connections kept per worker: enough for a busy vLLM at the gateway's in-flight caps,
/// so a burst does not open (and then close) hundreds of new connections. Not lower: a cap
/// under the concurrency one worker sees closes connections that the next request reopens (at
/// 256 client connections, a cap of 64 made the gateway open ~21,000 upstream connections in
/// 6 s instead of 256, for ~30 % fewer requests/s). `IDLE_TIMEOUT` bounds them instead.
const MAX_IDLE_PER_WORKER: usize = 1024;
/// An idle connection is closed after this long. Shorter than vLLM's uvicorn keep-alive (5 s
/// by default, which closes them anyway), so the gateway does not pick a connection that the
/// worker is closing at that moment. The pool sweeps once per timeout, so the connections a
/// burst leaves idle are gone within twice this: 15 s after a burst of 1,400 connections, RSS
/// was 16.4-16.8 MiB with no upstream fds left, against 19.1-20.2 MiB and ~135 idle upstream
/// connections with the 60 s it was (docs/BENCHMARKS.md, "Memory after connection bursts").
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Longest wait for an error body (its message is all the gateway keeps of it).
const ERROR_BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// Most bytes of an error body read: an error message is small; anything past this is noise.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Characters of a non-JSON error body kept as the message.
const MAX_ERROR_MESSAGE_CHARS: usize = 200;

/// The HTTP client all workers share.
pub fn client(connect_timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        // Nagle's algorithm would hold small SSE chunks back by up to ~40 ms.
        .tcp_nodelay(true)
        // vLLM serves HTTP/1.1; keep enough idle connections for a busy worker.
        .http1_only()
        .pool_max_idle_per_host(MAX_IDLE_PER_WORKER)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .build()
        .expect("the HTTP client builds with static settings; this is a bug")
}

/// A worker's endpoint URLs, parsed once: given a string, reqwest parses it (IDNA included)
/// on every request. `None` where the base does not parse, which leaves the error to reqwest.
#[derive(Debug)]
pub struct Endpoints {
    chat: Option<reqwest::Url>,
    completions: Option<reqwest::Url>,
}

impl Endpoints {
    pub fn new(base: &str) -> Endpoints {
        let parse = |e: Endpoint| reqwest::Url::parse(&format!("{base}{}", e.path())).ok();
        Endpoints {
            chat: parse(Endpoint::Chat),
            completions: parse(Endpoint::Completions),
        }
    }

    fn get(&self, endpoint: Endpoint) -> Option<&reqwest::Url> {
        match endpoint {
            Endpoint::Chat => self.chat.as_ref(),
            Endpoint::Completions => self.completions.as_ref(),
        }
    }
}

/// Send one request and wait for the response head (at most `limits.first_byte`, and never
/// past the deadline).
pub async fn send(
    client: &reqwest::Client,
    base: &str,
    endpoints: &Endpoints,
    req: &ValidRequest,
    request_id: &str,
    limits: SendLimits,
) -> Result<Upstream, SendError> {
    let builder = match endpoints.get(req.endpoint) {
        Some(url) => client.post(url.clone()),
        None => client.post(format!("{base}{}", req.endpoint.path())),
    };
    let fut = builder
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", request_id)
        .body(req.body.clone())
        .send();
    let limit = (Instant::now() + limits.first_byte).min(limits.deadline);
    let resp = match tokio::time::timeout_at(limit, fut).await {
        Err(_) => {
            return Err(SendError {
                error: GatewayError::Timeout(format!(
                    "no response from {base} within {:.1} s",
                    limits.first_byte.as_secs_f64()
                )),
                retryable: true,
                fault: Fault::Worker,
            })
        }
        Ok(Err(e)) => {
            return Err(SendError {
                error: GatewayError::BadGateway(format!("{base}: {}", describe(&e))),
                retryable: true,
                fault: Fault::Worker,
            })
        }
        Ok(Ok(resp)) => resp,
    };
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    if status.is_server_error() {
        // The worker's 5xx body is not passed on; its message goes into ours.
        let message = worker_message(&String::from_utf8_lossy(&read_error_body(resp).await));
        let (retryable, fault) = classify_5xx(status);
        return Err(SendError {
            error: GatewayError::WorkerStatus { status, message },
            retryable,
            fault,
        });
    }
    if !status.is_success() {
        let body = as_envelope(status, read_error_body(resp).await);
        return Ok(Upstream {
            status,
            body: UpstreamBody::Json(futures::stream::once(async move { Ok(body) }).boxed()),
        });
    }
    if req.stream {
        let events = decode_events(resp.bytes_stream(), req.model.clone()).boxed();
        return Ok(Upstream {
            status,
            body: UpstreamBody::Events(events),
        });
    }
    let body = resp
        .bytes_stream()
        .map(|r| r.map_err(|e| describe(&e)))
        .boxed();
    Ok(Upstream {
        status,
        body: UpstreamBody::Json(body),
    })
}

/// What a 5xx says: retry elsewhere?, and whose fault is it?
///
/// 502 and 503 mean the worker (or a proxy before it) could not take the request: it never
/// ran, so another worker may. 504 means it timed out somewhere behind the worker: unhealthy,
/// but it may have run, so no retry. Any other 5xx (vLLM's 500 "Cannot connect to host" for an
/// image URL it could not fetch, 501 for a data URL it cannot read) is an answer about this
/// request from a worker that is up: it would fail the same way anywhere.
pub fn classify_5xx(status: StatusCode) -> (bool, Fault) {
    match status {
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE => (true, Fault::Worker),
        StatusCode::GATEWAY_TIMEOUT => (false, Fault::Worker),
        _ => (false, Fault::Request),
    }
}

/// A worker's SSE body as typed events: each `data:` payload parsed once into a [`Chunk`]
/// (with `model` set to `requested_model`), `[DONE]` as [`StreamEvent::Done`]. Public for the
/// fuzz targets (tests/fuzz), which feed it the same way.
pub fn decode_events<S, B, E>(
    body: S,
    requested_model: String,
) -> impl futures::Stream<Item = Result<StreamEvent, String>>
where
    S: futures::Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    body.eventsource().map(move |event| match event {
        Ok(e) if e.data == "[DONE]" => Ok(StreamEvent::Done),
        Ok(e) => Ok(StreamEvent::Chunk(chunk(e.data, &requested_model))),
        Err(e) => Err(format!("worker stream broke: {e}")),
    })
}

/// One SSE payload as a typed chunk, with `model` set to the name the client asked for. The
/// payload's own buffer becomes the chunk's (no copy) unless the model must be renamed.
fn chunk(data: String, requested_model: &str) -> Chunk {
    let (usage, has_choices, renamed) = {
        let peek = serde_json::from_str::<ResponsePeek<'_>>(&data).ok();
        let renamed = renamed(data.as_bytes(), peek.as_ref(), requested_model);
        let peek = peek.unwrap_or_default();
        let has_choices = peek.choices.as_ref().is_some_and(|c| !c.is_empty());
        (peek.usage, has_choices, renamed)
    };
    Chunk {
        data: renamed.unwrap_or_else(|| Bytes::from(data)),
        usage,
        has_choices,
    }
}

/// A worker's answer (or chunk) with `model` set to the name the client asked for, when it
/// must change: it names another model, or it could not be read as an answer at all (a key
/// given twice, a `model` that is no string), where the generic JSON path decides (found by
/// fuzzing: such a chunk left with the worker's name). `None`: the bytes go on as they are.
pub fn renamed(body: &[u8], peek: Option<&ResponsePeek<'_>>, requested: &str) -> Option<Bytes> {
    match peek {
        Some(p) => match p.model.as_deref() {
            Some(m) if m != requested => set_model(body, requested),
            _ => None,
        },
        None => set_model(body, requested),
    }
}

/// Re-serialize with `model` replaced: only when the worker calls the model something else.
pub fn set_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?
        .insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// Up to [`MAX_ERROR_BODY`] bytes of an error answer, within [`ERROR_BODY_TIMEOUT`].
async fn read_error_body(resp: reqwest::Response) -> Bytes {
    let mut body = resp.bytes_stream();
    let mut buf = Vec::new();
    let read = async {
        while let Some(Ok(piece)) = body.next().await {
            let room = MAX_ERROR_BODY - buf.len();
            buf.extend_from_slice(&piece[..piece.len().min(room)]);
            if buf.len() >= MAX_ERROR_BODY {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(ERROR_BODY_TIMEOUT, read).await;
    Bytes::from(buf)
}

/// The worker's 4xx body when it is an OpenAI error envelope; else one made from its message,
/// keeping the status (the client's SDK reads `error.message` and the status).
fn as_envelope(status: StatusCode, body: Bytes) -> Bytes {
    let is_envelope = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v.pointer("/error/message").is_some_and(|m| m.is_string()));
    if is_envelope {
        return body;
    }
    let message = worker_message(&String::from_utf8_lossy(&body));
    let message = if message.is_empty() {
        format!("the worker answered {status}")
    } else {
        message
    };
    let envelope = serde_json::json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": status.as_u16(),
    }});
    Bytes::from(envelope.to_string())
}

/// The message of an error body: OpenAI's `error.message`, vLLM's older top-level `message`,
/// FastAPI's `detail` (a string, or a list of `{msg}`), or the first characters of the text.
fn worker_message(text: &str) -> String {
    let from_json = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            let s = |p: &str| v.pointer(p).and_then(|m| m.as_str().map(str::to_string));
            s("/error/message")
                .or_else(|| s("/message"))
                .or_else(|| match v.get("detail")? {
                    serde_json::Value::String(d) => Some(d.clone()),
                    serde_json::Value::Array(items) => Some(
                        items
                            .iter()
                            .filter_map(|i| i.get("msg").and_then(|m| m.as_str()))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    other => Some(other.to_string()),
                })
        });
    from_json.unwrap_or_else(|| text.chars().take(MAX_ERROR_MESSAGE_CHARS).collect())
}

/// reqwest's Display hides the cause ("error sending request"); include the chain.
fn describe(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `GET {base}/health` answered 200 within `timeout`.
pub async fn probe_health(client: &reqwest::Client, base: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, client.get(format!("{base}/health")).send()).await,
        Ok(Ok(r)) if r.status().is_success()
    )
}

/// The model names `GET {base}/v1/models` lists, if it answers.
/// One model a worker lists on `/v1/models`, with the context it reports (vLLM's
/// `max_model_len`), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedModel {
    pub id: String,
    pub max_model_len: Option<u64>,
}

pub async fn served_models(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> Option<Vec<ServedModel>> {
    let resp = tokio::time::timeout(timeout, client.get(format!("{base}/v1/models")).send())
        .await
        .ok()?
        .ok()?;
    let v: serde_json::Value = tokio::time::timeout(timeout, resp.json())
        .await
        .ok()?
        .ok()?;
    Some(
        v.get("data")?
            .as_array()?
            .iter()
            .filter_map(|m| {
                Some(ServedModel {
                    id: m.get("id")?.as_str()?.to_string(),
                    max_model_len: m
                        .get("max_model_len")
                        .and_then(serde_json::Value::as_u64)
                        .filter(|n| *n > 0),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_5xx_is_classified_by_what_it_says_about_the_worker() {
        assert_eq!(
            classify_5xx(StatusCode::SERVICE_UNAVAILABLE),
            (true, Fault::Worker)
        );
        assert_eq!(classify_5xx(StatusCode::BAD_GATEWAY), (true, Fault::Worker));
        assert_eq!(
            classify_5xx(StatusCode::GATEWAY_TIMEOUT),
            (false, Fault::Worker)
        );
        assert_eq!(
            classify_5xx(StatusCode::INTERNAL_SERVER_ERROR),
            (false, Fault::Request)
        );
        assert_eq!(
            classify_5xx(StatusCode::NOT_IMPLEMENTED),
            (false, Fault::Request)
        );
    }

    #[test]
    fn a_4xx_without_the_envelope_is_wrapped_keeping_its_message() {
        let fastapi = Bytes::from_static(br#"{"detail":"Not Found"}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&as_envelope(StatusCode::NOT_FOUND, fastapi)).expect("json");
        assert_eq!(out["error"]["message"], "Not Found");
        assert_eq!(out["error"]["type"], "invalid_request_error");
        assert_eq!(out["error"]["code"], 404);
        let listed = Bytes::from_static(br#"{"detail":[{"msg":"field required"},{"msg":"x"}]}"#);
        let out: serde_json::Value =
            serde_json::from_slice(&as_envelope(StatusCode::UNPROCESSABLE_ENTITY, listed))
                .expect("json");
        assert_eq!(out["error"]["message"], "field required; x");
        let text = Bytes::from_static(b"plain words");
        let out: serde_json::Value =
            serde_json::from_slice(&as_envelope(StatusCode::BAD_REQUEST, text)).expect("json");
        assert_eq!(out["error"]["message"], "plain words");
        let empty = as_envelope(StatusCode::BAD_REQUEST, Bytes::new());
        assert!(String::from_utf8_lossy(&empty).contains("the worker answered 400"));
    }

    #[test]
    fn an_envelope_passes_unchanged() {
        let body = Bytes::from_static(
            br#"{"error":{"message":"bad","type":"BadRequestError","param":null,"code":400}}"#,
        );
        assert_eq!(as_envelope(StatusCode::BAD_REQUEST, body.clone()), body);
    }

    #[test]
    fn a_chunk_is_read_once_with_the_requested_model() {
        let c = chunk(
            r#"{"model":"served","choices":[{"index":0,"delta":{"content":"a"}}]}"#.into(),
            "caprl",
        );
        assert!(c.has_choices);
        assert_eq!(c.usage, None);
        let v: serde_json::Value = serde_json::from_slice(&c.data).expect("json");
        assert_eq!(v["model"], "caprl");
        let u = chunk(
            r#"{"model":"caprl","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#
                .into(),
            "caprl",
        );
        assert!(!u.has_choices);
        assert_eq!(u.usage.map(|u| u.completion_tokens), Some(2));
    }
}
