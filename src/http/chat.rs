//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, hand the request to the driver
//! ([`crate::dispatch::send_with_failover`]: queue, worker, failover), and relay the answer.
//! The handler owns what is HTTP about the request: its id, its log record, the drain guard.

use super::extract::RawBody;
use super::middleware::RequestId;
use super::record::{Outcome, RequestRecord};
use super::relay::{self, Guards};
use crate::dispatch::{send_with_failover, Failed};
use crate::error::GatewayError;
use crate::state::AppState;
use crate::tenant::Caller;
use crate::validate::Endpoint;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::time::Instant;

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    body: Result<RawBody, GatewayError>,
) -> Response {
    handle(state, id, caller, body, Endpoint::Chat).await
}

/// `POST /v1/completions`: text prompts, through the same validation, queue and workers.
pub async fn completions(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    body: Result<RawBody, GatewayError>,
) -> Response {
    handle(state, id, caller, body, Endpoint::Completions).await
}

async fn handle(
    state: AppState,
    id: RequestId,
    caller: Caller,
    body: Result<RawBody, GatewayError>,
    endpoint: Endpoint,
) -> Response {
    let started = Instant::now();
    let Some(in_flight) = state.drain.enter() else {
        let err = GatewayError::ShuttingDown;
        state.metrics.reject("", &err);
        return err.into_response();
    };
    let mut model_hint = String::new();
    let req = match body.and_then(|RawBody(bytes)| {
        state
            .validate_as(endpoint, bytes.clone(), &caller)
            .inspect_err(|_| model_hint = served_model(&state, &caller, &bytes))
    }) {
        Ok(req) => req,
        Err(err) => {
            state.metrics.reject(&model_hint, &err);
            tracing::info!(request_id = %id, status = err.status().as_u16(), error = %err, "request rejected");
            return err.into_response();
        }
    };
    let pool = state
        .pools
        .get(&req.model)
        .expect("validation only passes served models; this is a bug");
    // The key's concurrency slot and its estimated tokens, settled from the usage when the
    // record finishes.
    let charge = match caller
        .0
        .as_ref()
        .map(|t| t.limiter().admit(req.token_cost()))
    {
        None => None,
        Some(Ok(charge)) => Some(charge),
        Some(Err(err)) => {
            state.metrics.reject(&req.model, &err);
            tracing::info!(request_id = %id, status = err.status().as_u16(), error = %err, "request rejected");
            return err.into_response();
        }
    };
    let mut record = RequestRecord::new(&state, &id, &req, started);
    record.charge(caller.0.clone(), charge);
    let deadline = started + pool.request_timeout();
    let visual = VisualCost::of(&req);
    let mut resp = match send_with_failover(pool, &req, id.as_str(), deadline).await {
        Ok((upstream, lease)) => {
            record.worker = Some(lease.worker().url.clone());
            relay::respond(upstream, req, record, deadline, Guards { lease, in_flight }).await
        }
        Err(Failed { error, worker }) => {
            record.worker = worker;
            record.finish(error.status(), Outcome::from_error(&error), None);
            error.into_response()
        }
    };
    visual.write(resp.headers_mut());
    resp
}

/// What the request's images cost, told to the client on every answer to a validated request
/// (`x-caprl-images`, `x-caprl-image-tokens`), so it can plan batch sizes by visual tokens as
/// CapRL's evaluation does. Tokens are the gateway's estimate (smart_resize, 28×28 pixels a
/// token); remote images count as images with no estimate.
struct VisualCost {
    images: usize,
    tokens: u64,
}

impl VisualCost {
    fn of(req: &crate::validate::ValidRequest) -> VisualCost {
        VisualCost {
            images: req.images.len() + req.remote_images,
            tokens: req.image_tokens,
        }
    }

    fn write(&self, headers: &mut axum::http::HeaderMap) {
        headers.insert("x-caprl-images", axum::http::HeaderValue::from(self.images));
        headers.insert(
            "x-caprl-image-tokens",
            axum::http::HeaderValue::from(self.tokens),
        );
    }
}

/// On the error path only: the request's model when it is one we serve (a bounded label),
/// else empty.
fn served_model(state: &AppState, caller: &Caller, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Peek {
        model: Option<String>,
    }
    serde_json::from_slice::<Peek>(body)
        .ok()
        .and_then(|p| p.model)
        .filter(|m| state.pools.contains_key(m) && caller.may_use(m))
        .unwrap_or_default()
}
