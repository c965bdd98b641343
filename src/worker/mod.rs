//! Workers: where a leased request is sent. [`http`] speaks to an OpenAI-compatible server
//! (vLLM, SGLang, another caprl-gateway); `candle` runs Qwen2.5-VL in this process. Both answer
//! with an [`Upstream`]: a status and a body stream in the OpenAI wire format (JSON, or
//! server-sent events when streaming), which `crate::http::relay` passes on to the client.

#[cfg(feature = "candle")]
pub mod candle;
pub mod http;

use crate::error::GatewayError;
use axum::http::StatusCode;
use bytes::Bytes;
use futures::stream::BoxStream;

/// What serves a worker's requests.
#[derive(Debug, Clone)]
pub enum Backend {
    /// An OpenAI-compatible server at this base URL (no trailing `/v1`).
    Http { base: String },
    /// The in-process engine.
    #[cfg(feature = "candle")]
    Candle(candle::CandleWorker),
}

impl Backend {
    pub fn http(base: impl Into<String>) -> Backend {
        Backend::Http { base: base.into() }
    }

    pub fn is_in_process(&self) -> bool {
        !matches!(self, Backend::Http { .. })
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Backend::Http { .. } => "http",
            #[cfg(feature = "candle")]
            Backend::Candle(_) => "candle",
        }
    }
}

/// A worker's answer, from its response head on.
pub struct Upstream {
    pub status: StatusCode,
    /// The body, chunk by chunk, as the worker produces it. An error mid-body is a string the
    /// relay turns into an SSE error event or a 502.
    pub body: BoxStream<'static, Result<Bytes, String>>,
}

/// Why a send failed before any response byte, and what that means.
#[derive(Debug)]
pub struct SendError {
    pub error: GatewayError,
    /// Safe to try on another worker: nothing reached the client and the worker likely never
    /// ran the request (refused, reset, 502, 503, first-byte timeout).
    pub retryable: bool,
    /// Counts against the worker's health (never true for a client's 4xx).
    pub worker_fault: bool,
}
