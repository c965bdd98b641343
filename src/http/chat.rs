//! `POST /v1/chat/completions` and `POST /v1/completions`: validate, hand the request to the driver
//! ([`crate::dispatch::send_with_failover`]: queue, worker, failover), and relay the answer.
//! The handler owns what is HTTP about the request: its id, its log record, the drain guard.

use super::extract::RawBody;
use super::middleware::RequestId;
use super::record::{Outcome, RequestRecord};
use super::relay::{self, Guards};
use crate::cache::{self, Answer, Cache, Decision, Failure};
use crate::dispatch::read_answer;
use crate::dispatch::{send_with_failover, Failed};
use crate::error::GatewayError;
use crate::resize::ResizeChoice;
use crate::state::AppState;
use crate::tenant::Caller;
use crate::validate::Endpoint;
use crate::validate::ValidRequest;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use std::sync::Arc;
use tokio::time::Instant;

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<RawBody, GatewayError>,
) -> Response {
    handle(state, id, caller, headers, body, Endpoint::Chat).await
}

/// `POST /v1/completions`: text prompts, through the same validation, queue and workers.
pub async fn completions(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Result<RawBody, GatewayError>,
) -> Response {
    handle(state, id, caller, headers, body, Endpoint::Completions).await
}

async fn handle(
    state: AppState,
    id: RequestId,
    caller: Caller,
    headers: HeaderMap,
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
    let checked = match body {
        Ok(RawBody(bytes)) => state
            .validate_as(
                endpoint,
                bytes.clone(),
                &caller,
                ResizeChoice::from_headers(&headers),
            )
            .await
            .inspect_err(|_| model_hint = served_model(&state, &caller, &bytes)),
        Err(err) => Err(err),
    };
    let req = match checked {
        Ok(req) => req,
        Err(err) => return refuse(&state, &id, &model_hint, err),
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
        Some(Err(err)) => return refuse(&state, &id, &req.model, err),
    };
    let mut record = RequestRecord::new(&state, &id, &req, started);
    record.charge(charge);
    let deadline = started + pool.request_timeout();
    let visual = VisualCost::of(&req);
    let cached = state
        .cache
        .as_ref()
        .map(|c| (c, c.decide(&req, &headers, caller.owner())));
    let mut resp = match cached {
        Some((cache, Decision::Key(key))) => {
            through_cache((cache, key), pool, req, record, deadline, in_flight, &id).await
        }
        Some((_, Decision::Bypass)) => {
            state.metrics.cache_bypassed();
            let mut resp = send(pool, req, record, deadline, in_flight, &id).await;
            resp.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static("bypass"));
            resp
        }
        None => send(pool, req, record, deadline, in_flight, &id).await,
    };
    visual.write(resp.headers_mut());
    resp
}

/// A request refused before it reached the driver: counted, logged, answered.
fn refuse(state: &AppState, id: &RequestId, model: &str, err: GatewayError) -> Response {
    state.metrics.reject(model, &err);
    tracing::info!(request_id = %id, status = err.status().as_u16(), error = %err, "request rejected");
    err.into_response()
}

/// To a worker through the driver, and the answer relayed.
async fn send(
    pool: &crate::state::Pool,
    req: ValidRequest,
    mut record: RequestRecord,
    deadline: Instant,
    in_flight: crate::shutdown::InFlight,
    id: &RequestId,
) -> Response {
    match send_with_failover(pool, &req, id.as_str(), deadline).await {
        Ok((upstream, lease)) => {
            record.worker = Some(lease.worker().url.clone());
            relay::respond(upstream, req, record, deadline, Guards { lease, in_flight }).await
        }
        Err(Failed { error, worker }) => {
            record.worker = worker;
            record.finish(error.status(), Outcome::from_error(&error), None);
            error.into_response()
        }
    }
}

const X_CACHE: &str = "x-cache";

/// A cacheable request: a whole answer from the cache or from the one load for its key (which
/// identical requests in flight wait for); a stream from the cache when its answer is there,
/// else from a worker as usual, not stored.
async fn through_cache(
    (cache, key): (&Cache, u128),
    pool: &crate::state::Pool,
    req: ValidRequest,
    mut record: RequestRecord,
    deadline: Instant,
    in_flight: crate::shutdown::InFlight,
    id: &RequestId,
) -> Response {
    if req.stream {
        if let Some(answer) = cache.get(key).await {
            if let Some(events) = cache::as_stream(&answer, req.endpoint, req.client_wants_usage) {
                record.served_from_cache();
                record.finish(StatusCode::OK, Outcome::Success, None);
                let mut resp = relay::event_stream(Body::from(events));
                resp.headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static("hit"));
                return resp;
            }
        }
        let mut resp = send(pool, req, record, deadline, in_flight, id).await;
        resp.headers_mut()
            .insert(X_CACHE, HeaderValue::from_static("miss"));
        return resp;
    }
    let mut worker = None;
    let loaded = cache
        .get_or_load(key, async {
            let (up, lease) = send_with_failover(pool, &req, id.as_str(), deadline)
                .await
                .map_err(|f| {
                    worker = f.worker;
                    failure(f.error)
                })?;
            worker = Some(lease.worker().url.clone());
            let whole = read_answer(up, &lease, &req.model, deadline)
                .await
                .map_err(failure)?;
            if whole.status != StatusCode::OK {
                // The worker's own answer (a 4xx passed through): not kept.
                return Err(Failure {
                    status: whole.status,
                    outcome: Outcome::from_status(whole.status),
                    headers: HeaderMap::new(),
                    body: whole.body,
                });
            }
            Ok(Arc::new(Answer {
                body: whole.body,
                usage: whole.usage,
            }))
        })
        .await;
    let resp = match loaded {
        Ok((answer, missed)) => {
            if missed {
                record.worker = worker;
                record.finish(StatusCode::OK, Outcome::Success, answer.usage);
            } else {
                record.served_from_cache();
                record.finish(StatusCode::OK, Outcome::Success, None);
            }
            let mut resp = relay::json(StatusCode::OK, answer.body.clone());
            let x = if missed { "miss" } else { "hit" };
            resp.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static(x));
            resp
        }
        Err(f) => {
            record.worker = worker;
            record.finish(f.status, f.outcome, None);
            let mut resp = relay::json(f.status, f.body.clone());
            resp.headers_mut().extend(f.headers.clone());
            resp.headers_mut()
                .insert(X_CACHE, HeaderValue::from_static("miss"));
            resp
        }
    };
    // Held to here: a draining gateway waits for this answer.
    drop(in_flight);
    resp
}

/// An error as the answer every waiter for the same load gets: its status, outcome, body and
/// headers (`retry-after`, …).
fn failure(e: GatewayError) -> Failure {
    let body = serde_json::to_vec(&e.envelope())
        .map(Bytes::from)
        .unwrap_or_default();
    let (status, outcome) = (e.status(), Outcome::from_error(&e));
    let headers = e.into_response().headers().clone();
    Failure {
        status,
        outcome,
        headers,
        body,
    }
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
            images: req.images.len() + req.remote.len(),
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
