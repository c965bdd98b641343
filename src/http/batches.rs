//! `/v1/batches`: create, retrieve, list, cancel. The batch service is `crate::batch`; this
//! module only speaks HTTP. Off (404) without `--data-dir`. Every batch belongs to the key
//! that created it: another key's batch is not found.

use super::extract::RawBody;
use super::files::{off, parse_limit};
use crate::batch::{object, Batches, CreateBatch};
use crate::error::GatewayError;
use crate::state::AppState;
use crate::tenant::Caller;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::Value;

/// Batches per listing: OpenAI's default and bound.
const DEFAULT_LIST: usize = 20;
const MAX_LIST: usize = 100;

fn service(state: &AppState) -> Result<&Batches, GatewayError> {
    state.batches.as_ref().ok_or_else(off)
}

fn reply(result: Result<Value, GatewayError>) -> Response {
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/batches`.
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<RawBody, GatewayError>,
) -> Response {
    let result = async {
        let batches = service(&state)?;
        let RawBody(bytes) = body?;
        let req: CreateBatch = serde_json::from_slice(&bytes).map_err(|e| {
            GatewayError::invalid(format!("the body is not a JSON object: {e}"), None)
        })?;
        batches.create(&state, &caller, req).await
    }
    .await;
    reply(result)
}

/// `GET /v1/batches/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async { Ok(object(&service(&state)?.get(&id, caller.owner()).await?)) }.await;
    reply(result)
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/batches`: newest first.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let batches = service(&state)?;
        let Query(p) = params.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
        let limit = parse_limit(p.limit.as_deref(), DEFAULT_LIST, MAX_LIST)?;
        batches.list(caller.owner(), p.after, limit).await
    }
    .await;
    reply(result)
}

/// `POST /v1/batches/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async { service(&state)?.cancel(&id, caller.owner()).await }.await;
    reply(result)
}
