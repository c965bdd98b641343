//! `POST /v1/chat/completions`: validate, wait in the model's queue for a worker, send, and
//! relay the answer. A failure before any response byte is retried on another worker (up to
//! `max_retries`, within the request's deadline); after that it is the client's to see.

use super::extract::RawBody;
use super::middleware::RequestId;
use super::record::{Outcome, RequestRecord};
use super::relay;
use crate::error::GatewayError;
use crate::state::{AppState, Pool};
use crate::validate::{validate_chat, ValidRequest, ValidateOptions};
use crate::worker::{self, Backend, SendError, Upstream};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use tokio::time::Instant;

pub async fn completions(
    State(state): State<AppState>,
    Extension(id): Extension<RequestId>,
    body: Result<RawBody, GatewayError>,
) -> Response {
    let started = Instant::now();
    let Some(in_flight) = state.drain.enter() else {
        reject(&state, "", "shutting_down");
        return GatewayError::ShuttingDown.into_response();
    };
    let mut model_hint = String::new();
    let req = match body.and_then(|RawBody(bytes)| {
        validate(&state, bytes.clone()).inspect_err(|_| model_hint = served_model(&state, &bytes))
    }) {
        Ok(req) => req,
        Err(err) => {
            let reason = match err.status().as_u16() {
                404 => "model_not_found",
                413 => "too_large",
                _ => "bad_request",
            };
            reject(&state, &model_hint, reason);
            tracing::info!(request_id = %id, status = err.status().as_u16(), error = %err, "request rejected");
            return err.into_response();
        }
    };
    let pool = state
        .pools
        .get(&req.model)
        .expect("validation only passes served models; this is a bug");
    let mut record = RequestRecord::new(&state, &id, &req, started);
    let deadline = started + pool.members.settings.request_timeout();
    match dispatch(&state, pool, &req, &id, deadline, &mut record).await {
        Ok((upstream, lease)) => {
            if req.stream {
                relay::stream(upstream, req, record, deadline, (lease, in_flight))
            } else {
                relay::whole(upstream, &req, record, deadline, &lease).await
            }
        }
        Err(err) => {
            record.finish(err.status(), Outcome::from_error(&err), None);
            err.into_response()
        }
    }
}

fn validate(state: &AppState, body: bytes::Bytes) -> Result<ValidRequest, GatewayError> {
    let req = validate_chat(
        body,
        &ValidateOptions {
            limits: &state.config.limits,
            is_served: &|m| state.pools.contains_key(m),
            keep_image_bytes: &|m| state.pools.get(m).is_some_and(|p| p.in_process),
            image_rejected: &|format| {
                let f = format.map_or("unknown", |f| f.as_str());
                state
                    .metrics
                    .images
                    .with_label_values(&[f, "rejected"])
                    .inc();
            },
        },
    )?;
    Ok(req)
}

/// On the error path only: the request's model when it is one we serve (a bounded label),
/// else empty.
fn served_model(state: &AppState, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Peek {
        model: Option<String>,
    }
    serde_json::from_slice::<Peek>(body)
        .ok()
        .and_then(|p| p.model)
        .filter(|m| state.pools.contains_key(m))
        .unwrap_or_default()
}

fn reject(state: &AppState, model: &str, reason: &str) {
    state
        .metrics
        .rejections
        .with_label_values(&[model, reason])
        .inc();
}

/// Admit, send, and fail over: the worker's response head and the lease that holds its slot.
async fn dispatch(
    state: &AppState,
    pool: &Pool,
    req: &ValidRequest,
    id: &RequestId,
    deadline: Instant,
    record: &mut RequestRecord,
) -> Result<(Upstream, crate::pool::Lease), GatewayError> {
    let settings = &pool.members.settings;
    let mut avoid: Vec<String> = Vec::new();
    let mut attempt = 0;
    loop {
        let lease = pool.queue.admit(req, avoid.clone(), deadline).await?;
        let worker = lease.worker().clone();
        record.worker = Some(worker.url.clone());
        let result = match &worker.backend {
            Backend::Http { base } => {
                worker::http::send(
                    &state.client,
                    base,
                    req,
                    id.as_str(),
                    settings.first_byte_timeout(),
                    deadline,
                )
                .await
            }
            #[cfg(feature = "candle")]
            Backend::Candle(engine) => engine.submit(req, id.as_str()),
        };
        let labels = [pool.members.model.as_str(), worker.url.as_str()];
        match result {
            Ok(upstream) => {
                let code = upstream.status.as_u16().to_string();
                state
                    .metrics
                    .worker_responses
                    .with_label_values(&[labels[0], labels[1], &code])
                    .inc();
                worker.record_outcome(false);
                return Ok((upstream, lease));
            }
            Err(SendError {
                error,
                retryable,
                worker_fault,
            }) => {
                let code = match &error {
                    GatewayError::WorkerStatus { status, .. } => status.as_u16().to_string(),
                    _ => "error".to_string(),
                };
                state
                    .metrics
                    .worker_responses
                    .with_label_values(&[labels[0], labels[1], &code])
                    .inc();
                worker.record_outcome(worker_fault);
                drop(lease);
                attempt += 1;
                if !retryable || attempt > settings.max_retries || Instant::now() >= deadline {
                    tracing::warn!(request_id = %id, worker = %worker.url, error = %error, attempt, "worker failed");
                    return Err(error);
                }
                tracing::info!(request_id = %id, worker = %worker.url, error = %error, attempt, "worker failed before any byte; retrying on another");
                state.metrics.retries.with_label_values(&[labels[0]]).inc();
                avoid.push(worker.url.clone());
            }
        }
    }
}
