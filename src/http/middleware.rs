//! Per-request middleware: the request id, the API key check, and HTTP metrics.

use crate::error::GatewayError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

/// The request's id: the client's `x-request-id` when it is sane, else a new UUID.
#[derive(Debug, Clone)]
pub struct RequestId(Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest client-supplied id kept; longer (or non-printable) ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

fn request_id(req: &Request) -> RequestId {
    let given = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|s| {
            !s.is_empty()
                && s.len() <= MAX_REQUEST_ID_LEN
                && s.bytes().all(|b| b.is_ascii_graphic())
        });
    RequestId(match given {
        Some(s) => Arc::from(s),
        None => Arc::from(uuid::Uuid::new_v4().simple().to_string()),
    })
}

/// Outermost: give the request an id, a span, and count it.
pub async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let id = request_id(&req);
    // Runs before routing, so the label is the path when it is one of ours: bounded either way.
    let route: &'static str = match req.uri().path() {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/ready" => "/ready",
        "/metrics" => "/metrics",
        _ => "unmatched",
    };
    let method = req.method().clone();
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = %id, method = %method, route);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span).await;
    let status = resp.status();
    state
        .metrics
        .http_request(route, method.as_str(), status, started.elapsed());
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

/// `/v1/*` only: when an API key is configured, require `Authorization: Bearer KEY`.
pub async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = state.config.server.api_key.as_deref() {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let err = GatewayError::Unauthorized;
            state.metrics.reject("", &err);
            return err.into_response();
        }
    }
    next.run(req).await
}

/// Compare without leaking, through timing, how much of the key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
