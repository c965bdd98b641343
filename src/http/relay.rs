//! Relaying a worker's answer to the client. The worker seam has already read the worker's
//! protocol: what arrives here is one JSON document, or typed chunks ([`crate::worker::Chunk`]).
//!
//! - A document (a non-streamed answer, or any error answer) is read to its end within the
//!   deadline and passed on with `model` set to the name the client asked for; an error body
//!   goes on unchanged.
//! - Chunks are framed as server-sent events (`data: …\n\n`) one by one as they arrive, never
//!   buffered whole. The relay times the first token (TTFT) and the rest (TPOT) and hides the
//!   usage chunk the gateway asked for on the client's behalf. The lease and the drain guard
//!   ride inside the response body: when the client hangs up the body is dropped, which drops
//!   the upstream response (vLLM sees the disconnect and aborts the request; the engine frees
//!   the sequence) and frees the worker's slot. An error after the first byte becomes an SSE
//!   error event, then `data: [DONE]`.

use super::record::{Outcome, RequestRecord};
use crate::api::chat::Usage;
use crate::dispatch::{read_whole, Whole};
use crate::error::GatewayError;
use crate::pool::Lease;
use crate::shutdown::InFlight;
use crate::validate::ValidRequest;
use crate::worker::{Chunk, Fault, StreamEvent, Upstream, UpstreamBody};
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::pin::Pin;
use tokio::time::{Instant, Sleep};

/// What holds the request's place until its answer has been relayed: the worker slot and the
/// drain count. Dropped with the response (or its body, for a stream).
pub struct Guards {
    pub lease: Lease,
    /// Never read: held so a draining gateway waits for this answer, released on drop.
    #[allow(dead_code)]
    pub in_flight: InFlight,
}

/// Relay the answer: whole, or streamed as it arrives.
pub async fn respond(
    up: Upstream,
    req: ValidRequest,
    record: RequestRecord,
    deadline: Instant,
    guards: Guards,
) -> Response {
    match up.body {
        UpstreamBody::Json(body) => whole(up.status, body, &req, record, deadline, &guards).await,
        UpstreamBody::Events(events) => stream(events, req, record, deadline, guards),
    }
}

/// Read a whole answer and pass it on.
async fn whole(
    status: StatusCode,
    body: BoxStream<'static, Result<Bytes, String>>,
    req: &ValidRequest,
    mut record: RequestRecord,
    deadline: Instant,
    guards: &Guards,
) -> Response {
    let Whole {
        status,
        body,
        usage,
    } = match read_whole(status, body, &guards.lease, &req.model, deadline).await {
        Ok(whole) => whole,
        Err(err) => {
            record.finish(err.status(), Outcome::WorkerError, None);
            return err.into_response();
        }
    };
    record.finish(status, Outcome::from_status(status), usage);
    json(status, body)
}

/// A whole JSON answer.
pub fn json(status: StatusCode, body: Bytes) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A body of server-sent events, with the headers every stream gets.
pub fn event_stream(body: Body) -> Response {
    let mut resp = Response::new(body);
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

/// The state a streamed body carries; dropping it releases everything.
struct Relay {
    events: BoxStream<'static, Result<StreamEvent, String>>,
    model: String,
    client_wants_usage: bool,
    /// The request's deadline, one timer for the whole stream (not one per event).
    deadline: Pin<Box<Sleep>>,
    record: RequestRecord,
    usage: Option<Usage>,
    first_token_at: Option<Instant>,
    done: bool,
    /// Dropped with the body: the worker slot and the drain count.
    guards: Guards,
}

/// Relay a streamed answer as it arrives.
fn stream(
    events: BoxStream<'static, Result<StreamEvent, String>>,
    req: ValidRequest,
    record: RequestRecord,
    deadline: Instant,
    guards: Guards,
) -> Response {
    let relay = Relay {
        events,
        model: req.model,
        client_wants_usage: req.client_wants_usage,
        deadline: Box::pin(tokio::time::sleep_until(deadline)),
        record,
        usage: None,
        first_token_at: None,
        done: false,
        guards,
    };
    let body = futures::stream::unfold(relay, |mut relay| async move {
        let frame = relay.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), relay))
    });
    event_stream(Body::from_stream(body))
}

impl Relay {
    /// The next bytes for the client, or None at the end.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        loop {
            let next = tokio::select! {
                biased;
                next = self.events.next() => Ok(next),
                () = self.deadline.as_mut() => Err(()),
            };
            let event = match next {
                Err(()) => {
                    return Some(self.fail(GatewayError::Timeout(
                        "the stream did not complete within the request timeout".into(),
                    )))
                }
                Ok(None) => {
                    return Some(self.fail(GatewayError::BadGateway(
                        "the worker closed the stream before [DONE]".into(),
                    )))
                }
                Ok(Some(Err(message))) => {
                    return Some(self.fail(GatewayError::BadGateway(message)))
                }
                Ok(Some(Ok(event))) => event,
            };
            match event {
                StreamEvent::Done => {
                    self.done = true;
                    self.finish_ok();
                    return Some(Bytes::from_static(b"data: [DONE]\n\n"));
                }
                StreamEvent::Chunk(chunk) => {
                    if let Some(frame) = self.chunk(chunk) {
                        return Some(frame);
                    }
                }
            }
        }
    }

    /// One chunk: note what it says, decide whether the client sees it, and frame it.
    fn chunk(&mut self, chunk: Chunk) -> Option<Bytes> {
        if let Some(u) = chunk.usage {
            self.usage = Some(u);
            if !chunk.has_choices && !self.client_wants_usage {
                // The usage chunk the gateway asked for on the client's behalf.
                return None;
            }
        }
        if chunk.has_choices && self.first_token_at.is_none() {
            let now = Instant::now();
            self.first_token_at = Some(now);
            self.record
                .metrics()
                .first_token(&self.model, now.duration_since(self.record.started()));
        }
        let mut frame = BytesMut::with_capacity(chunk.data.len() + 8);
        frame.extend_from_slice(b"data: ");
        frame.extend_from_slice(&chunk.data);
        frame.extend_from_slice(b"\n\n");
        Some(frame.freeze())
    }

    fn fail(&mut self, err: GatewayError) -> Bytes {
        tracing::warn!(model = %self.model, error = %err, "stream ended with an error");
        self.guards.lease.worker().record_outcome(Fault::Worker);
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
                    .per_output_token(&self.model, per_token);
            }
        }
        self.record
            .finish(StatusCode::OK, Outcome::Success, self.usage);
    }
}
