//! Workers: where a leased request is sent, behind one seam, [`Backend::send`]. [`http`] speaks
//! to an OpenAI-compatible server (vLLM, SGLang, another caprl-gateway) and decodes its
//! server-sent events where that protocol lives; `candle` runs Qwen2.5-VL in this process and
//! builds the same chunks straight from the engine's events, with no SSE text in between.
//!
//! Both answer with an [`Upstream`]: a status and either one JSON document or a stream of typed
//! [`Chunk`]s, which `crate::http::relay` frames for the client. Nothing above this module names
//! a transport.

#[cfg(feature = "candle")]
pub mod candle;
pub mod http;

use crate::api::chat::Usage;
use crate::error::GatewayError;
use crate::validate::ValidRequest;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::time::Duration;
use tokio::time::Instant;

/// What serves a worker's requests.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An OpenAI-compatible server at this base URL (no trailing `/v1`), with its endpoint
    /// URLs parsed once.
    Http {
        base: String,
        endpoints: std::sync::Arc<http::Endpoints>,
    },
    /// The in-process engine.
    #[cfg(feature = "candle")]
    Candle(candle::CandleWorker),
}

/// How long a send may take, and with what.
#[derive(Debug, Clone, Copy)]
pub struct SendLimits {
    /// Longest wait for the response head (HTTP workers).
    pub first_byte: Duration,
    /// The request's own deadline; nothing waits past it.
    pub deadline: Instant,
}

impl Backend {
    pub fn http(base: impl Into<String>) -> Backend {
        let base = base.into();
        let endpoints = std::sync::Arc::new(http::Endpoints::new(&base));
        Backend::Http { base, endpoints }
    }

    pub fn is_in_process(&self) -> bool {
        !matches!(self, Backend::Http { .. })
    }

    /// The base URL of an HTTP worker, which probes and discovery work with.
    pub fn http_base(&self) -> Option<&str> {
        match self {
            Backend::Http { base, .. } => Some(base),
            #[cfg(feature = "candle")]
            Backend::Candle(_) => None,
        }
    }

    /// Send one validated request and wait for the answer's head.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        req: &ValidRequest,
        request_id: &str,
        limits: SendLimits,
    ) -> Result<Upstream, SendError> {
        match self {
            Backend::Http { base, endpoints } => {
                http::send(client, base, endpoints, req, request_id, limits).await
            }
            #[cfg(feature = "candle")]
            Backend::Candle(engine) => engine.send(req, request_id),
        }
    }
}

/// A worker's answer, from its response head on.
pub struct Upstream {
    pub status: StatusCode,
    pub body: UpstreamBody,
}

pub enum UpstreamBody {
    /// One JSON document, in pieces as it arrives: a whole answer, or any error answer (always
    /// an OpenAI error envelope). An error mid-body is a string the relay turns into a 502.
    Json(BoxStream<'static, Result<Bytes, String>>),
    /// A streamed answer, event by event; the stream ends after [`StreamEvent::Done`]. An
    /// error is a string the relay turns into an SSE error event.
    Events(BoxStream<'static, Result<StreamEvent, String>>),
}

/// One server-sent event of a streamed answer.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    Chunk(Chunk),
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// One `chat.completion.chunk`, already read: the relay frames it and never parses it again.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The JSON payload, with `model` set to the name the client asked for.
    pub data: Bytes,
    /// The chunk's `usage`, when it has one.
    pub usage: Option<Usage>,
    /// It carries at least one choice (a usage-only chunk does not).
    pub has_choices: bool,
}

/// What a failed request says about the worker that served it. Only [`Fault::Worker`] counts
/// towards ejection: a request that fails because of what it asks for must not let one client
/// take healthy workers out of rotation (the way Envoy counts only gateway failures in
/// `consecutive_gateway_failure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing against the worker: it answered (2xx or the client's 4xx), or the request was
    /// refused before it reached it.
    None,
    /// The worker answered 500, 501 or another 5xx that says "this request failed" while the
    /// worker itself is up. Retrying elsewhere would fail the same way; only a failure rate far
    /// above normal across distinct requests (outlier detection, `pool::health`) counts it.
    Request,
    /// The worker is unhealthy or unreachable: refused, reset, timed out, 502, 503, 504, or a
    /// stream that broke. Counted towards ejection.
    Worker,
}

/// Why a send failed before any response byte, and what that means.
#[derive(Debug)]
pub struct SendError {
    pub error: GatewayError,
    /// Safe to try on another worker: nothing reached the client and the worker likely never
    /// ran the request (refused, reset, 502, 503, first-byte timeout).
    pub retryable: bool,
    pub fault: Fault,
}

impl SendError {
    /// A request the worker will not run: the client's to fix, never retried, never counted.
    pub fn client(error: GatewayError) -> SendError {
        SendError {
            error,
            retryable: false,
            fault: Fault::None,
        }
    }
}
