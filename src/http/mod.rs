//! The HTTP surface: routes, layers and thin handlers. [`app`] builds the whole router from the
//! state, so tests drive it in-process; `serve` binds it with TCP_NODELAY on every accepted
//! connection.
//!
//! The path of a chat request through this module: `middleware::observe` (request id, span,
//! metrics) → `edge::check_head` (`Host`, a declared length over the limit) →
//! `middleware::authenticate` (the caller's key and its request limit) → `extract::RawBody` (body limit) →
//! `chat::completions` (validate, queue, send) → `relay` (the answer, whole or streamed).

mod batches;
mod budget;
mod chat;
mod deadline;
mod edge;
mod extract;
mod files;
pub mod middleware;
mod ops;
mod record;
mod relay;

use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

pub fn app(state: AppState) -> Router {
    let body_limit = usize::try_from(state.config.limits.max_body_bytes).unwrap_or(usize::MAX);
    let file_limit = usize::try_from(edge::upload_limit(state.config.batch.max_file_bytes))
        .unwrap_or(usize::MAX);
    let v1 = Router::new()
        .route("/v1/chat/completions", post(chat::chat))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/models", get(ops::models))
        .route(
            "/v1/files",
            // An upload is streamed to disk: its limit is the file limit, not the body limit.
            post(files::upload)
                .layer(DefaultBodyLimit::max(file_limit))
                .get(files::list),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        // Only the API needs a key; probes and scrapes do not.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::authenticate,
        ));
    Router::new()
        .merge(v1)
        .route("/health", get(ops::health))
        .route("/ready", get(ops::ready))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        // A body without a declared length (chunked) is refused once it passes the limit
        // while being read, before validation allocates anything for it.
        .layer(DefaultBodyLimit::max(body_limit))
        // A declared Content-Length over the limit, and a missing, repeated or malformed Host,
        // are refused from the head alone, before the body is polled (so before hyper sends
        // `100 Continue`): see `edge`.
        .layer(axum::middleware::from_fn_with_state(
            edge::Edge {
                state: state.clone(),
                budget: Arc::new(budget::BodyBudget::new(
                    state.config.limits.max_inflight_body_bytes,
                    Duration::from_secs_f64(state.config.limits.body_budget_wait_secs),
                    &state.metrics,
                )),
            },
            edge::check_head,
        ))
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
