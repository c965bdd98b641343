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

/// `/v1/*` only: who is calling ([`crate::tenant`]). When keys are configured the request
/// needs `Authorization: Bearer KEY` (401 otherwise); a key without `files_and_batches` may
/// not use those endpoints (403); the request counts against the key's requests per minute
/// (429 past it). The caller rides in the request's extensions, and the answer carries
/// OpenAI's `x-ratelimit-*` headers for the limits the key has.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    let caller = match state.tenants.authenticate(authorization) {
        Ok(caller) => caller,
        Err(err) => {
            state.metrics.reject("", &err);
            return err.into_response();
        }
    };
    let Some(tenant) = caller.0.clone() else {
        req.extensions_mut().insert(caller);
        return next.run(req).await;
    };
    let path = req.uri().path();
    let bulk_api = ["/v1/files", "/v1/batches"].iter().any(|p| {
        path.strip_prefix(p)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    });
    if bulk_api && !tenant.files_and_batches() {
        let err = GatewayError::PermissionDenied(format!(
            "the key `{}` may not use the files and batch API",
            tenant.name()
        ));
        state.metrics.reject("", &err);
        return err.into_response();
    }
    let (requests, allowed) = tenant.limiter().request();
    let mut resp = match allowed {
        Ok(()) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(err) => {
            state.metrics.reject("", &err);
            err.into_response()
        }
    };
    tenant.limiter().write_headers(requests, resp.headers_mut());
    resp
}
