//! Relaying a worker's answer to the client.
//!
//! - [`whole`]: a non-streamed answer, read to its end (within the deadline) and passed on with
//!   `model` set to the name the client asked for. A worker's 4xx body goes on unchanged.
//! - [`stream`]: server-sent events, parsed from the worker line by line with a real SSE decoder
//!   (`eventsource-stream`) and sent on one by one as they arrive, never buffered whole. The
//!   lease and the drain guard ride inside the response body: when the client hangs up the body
//!   is dropped, which drops the upstream response (vLLM sees the disconnect and aborts the
//!   request) and frees the worker's slot. An error after the first byte becomes an SSE error
//!   event, then `data: [DONE]`.

use super::record::{Outcome, RequestRecord};
use crate::api::chat::{ResponsePeek, Usage};
use crate::error::GatewayError;
use crate::pool::Lease;
use crate::shutdown::InFlight;
use crate::validate::ValidRequest;
use crate::worker::Upstream;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use std::pin::Pin;
use tokio::time::Instant;

/// Largest non-streamed answer accepted from a worker (n × max_tokens × logprobs can be big).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Read a non-streamed answer and pass it on.
pub async fn whole(
    up: Upstream,
    req: &ValidRequest,
    mut record: RequestRecord,
    deadline: Instant,
    lease: &Lease,
) -> Response {
    let body = match tokio::time::timeout_at(deadline, collect(up.body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(message)) => {
            lease.worker().record_outcome(true);
            let err = GatewayError::BadGateway(message);
            record.finish(err.status(), Outcome::WorkerError, None);
            return err.into_response();
        }
        Err(_) => {
            let err = GatewayError::Timeout(
                "the answer did not complete within the request timeout".into(),
            );
            record.finish(err.status(), Outcome::WorkerError, None);
            return err.into_response();
        }
    };
    let mut usage = None;
    let body = if up.status.is_success() {
        match serde_json::from_slice::<ResponsePeek<'_>>(&body) {
            Ok(peek) => {
                usage = peek.usage;
                match peek.model.as_deref() {
                    Some(m) if m != req.model => set_model(&body, &req.model).unwrap_or(body),
                    _ => body,
                }
            }
            Err(_) => body,
        }
    } else {
        body
    };
    record.finish(up.status, Outcome::from_status(up.status), usage);
    json_response(up.status, body)
}

async fn collect(
    mut body: futures::stream::BoxStream<'static, Result<Bytes, String>>,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "worker answer larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Re-serialize with `model` replaced: only when the worker calls the model something else.
fn set_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.as_object_mut()?
        .insert("model".into(), serde_json::Value::String(model.to_string()));
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

type Events = Pin<Box<dyn Stream<Item = Result<Event, EventStreamError<String>>> + Send>>;

/// The state a streamed body carries; dropping it releases everything.
struct Relay {
    events: Events,
    requested_model: String,
    client_wants_usage: bool,
    deadline: Instant,
    record: RequestRecord,
    usage: Option<Usage>,
    first_token_at: Option<Instant>,
    done: bool,
    /// Dropped with the body: the worker slot and the drain count.
    _guards: (Lease, InFlight),
}

/// Relay a streamed answer as it arrives.
pub fn stream(
    up: Upstream,
    req: ValidRequest,
    mut record: RequestRecord,
    deadline: Instant,
    guards: (Lease, InFlight),
) -> Response {
    if up.status != StatusCode::OK {
        // An error answer (vLLM's 400 for a bad parameter, say) is JSON, not a stream.
        let status = up.status;
        return Body::from_stream(up.body.map(|r| r.map_err(std::io::Error::other)))
            .into_response()
            .map_status(status, &mut record);
    }
    let relay = Relay {
        events: Box::pin(up.body.eventsource()),
        requested_model: req.model,
        client_wants_usage: req.client_wants_usage,
        deadline,
        record,
        usage: None,
        first_token_at: None,
        done: false,
        _guards: guards,
    };
    let body = futures::stream::unfold(relay, |mut relay| async move {
        let frame = relay.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), relay))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell nginx-style proxies in front of us not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

trait MapStatus {
    fn map_status(self, status: StatusCode, record: &mut RequestRecord) -> Response;
}

impl MapStatus for Response {
    fn map_status(mut self, status: StatusCode, record: &mut RequestRecord) -> Response {
        *self.status_mut() = status;
        self.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        record.finish(status, Outcome::from_status(status), None);
        self
    }
}

impl Relay {
    /// The next bytes for the client, or None at the end.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let event = match tokio::time::timeout_at(self.deadline, self.events.next()).await {
                Err(_) => {
                    return Some(self.fail(GatewayError::Timeout(
                        "the stream did not complete within the request timeout".into(),
                    )))
                }
                Ok(None) => {
                    return Some(self.fail(GatewayError::BadGateway(
                        "the worker closed the stream before [DONE]".into(),
                    )))
                }
                Ok(Some(Err(e))) => {
                    return Some(self.fail(GatewayError::BadGateway(format!(
                        "worker stream broke: {e}"
                    ))))
                }
                Ok(Some(Ok(event))) => event,
            };
            if event.data == "[DONE]" {
                self.done = true;
                self.finish_ok();
                return Some(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            if let Some(frame) = self.chunk(&event.data) {
                return Some(frame);
            }
        }
    }

    /// One `data:` payload: note what it says, decide whether and how the client sees it.
    fn chunk(&mut self, data: &str) -> Option<Bytes> {
        let peek: ResponsePeek<'_> = serde_json::from_str(data).unwrap_or_default();
        let has_choices = peek.choices.as_ref().is_some_and(|c| !c.is_empty());
        if let Some(u) = peek.usage {
            self.usage = Some(u);
            if !has_choices && !self.client_wants_usage {
                // The usage chunk the gateway asked for on the client's behalf.
                return None;
            }
        }
        if has_choices && self.first_token_at.is_none() {
            let now = Instant::now();
            self.first_token_at = Some(now);
            self.record
                .metrics()
                .ttft
                .with_label_values(&[self.record.model()])
                .observe(now.duration_since(self.record.started()).as_secs_f64());
        }
        let rewritten = match peek.model.as_deref() {
            Some(m) if m != self.requested_model => {
                set_model(data.as_bytes(), &self.requested_model)
            }
            _ => None,
        };
        let payload = rewritten.as_deref().unwrap_or(data.as_bytes());
        let mut frame = BytesMut::with_capacity(payload.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\n\n");
        Some(frame.freeze())
    }

    fn fail(&mut self, err: GatewayError) -> Bytes {
        tracing::warn!(model = %self.requested_model, error = %err, "stream ended with an error");
        self._guards.0.worker().record_outcome(true);
        self.done = true;
        self.record
            .finish(err.status(), Outcome::WorkerError, self.usage);
        let mut frame = err.to_sse_event();
        frame.push_str("data: [DONE]\n\n");
        Bytes::from(frame)
    }

    fn finish_ok(&mut self) {
        if let (Some(first), Some(u)) = (self.first_token_at, self.usage) {
            if u.completion_tokens > 1 {
                let per_token = first.elapsed().as_secs_f64() / (u.completion_tokens - 1) as f64;
                self.record
                    .metrics()
                    .tpot
                    .with_label_values(&[self.record.model()])
                    .observe(per_token);
            }
        }
        self.record
            .finish(StatusCode::OK, Outcome::Success, self.usage);
    }
}
