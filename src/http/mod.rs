//! The HTTP surface: routes, layers and thin handlers. [`app`] builds the whole router from the
//! state, so tests drive it in-process; `serve` binds it with TCP_NODELAY on every accepted
//! connection.
//!
//! The path of a chat request through this module: `middleware::observe` (request id, span,
//! metrics) → `middleware::require_key` (when a key is set) → `extract::RawBody` (body limit) →
//! `chat::completions` (validate, queue, send) → `relay` (the answer, whole or streamed).

mod chat;
mod extract;
pub mod middleware;
mod ops;
mod record;
mod relay;

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

pub fn app(state: AppState) -> Router {
    let body_limit = usize::try_from(state.config.limits.max_body_bytes).unwrap_or(usize::MAX);
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/models", get(ops::models))
        // Only the API needs the key; probes and scrapes do not.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_key,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // Bodies past the limit are refused while being read (by Content-Length when given),
        // before validation allocates anything for them.
        .layer(DefaultBodyLimit::max(body_limit))
        // Outermost: every response, errors included, carries the request id and is counted.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::observe,
        ))
        .with_state(state)
}

/// A router with only `/metrics`, for `--metrics-port`.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(ops::metrics))
        .with_state(state)
}
