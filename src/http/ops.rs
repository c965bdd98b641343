//! The small endpoints: `/health` (liveness), `/ready` (readiness), `/v1/models`, `/metrics`,
//! and the OpenAI-shaped 404 and 405.

use crate::api::models::ModelList;
use crate::error::GatewayError;
use crate::state::AppState;
use crate::tenant::Caller;
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

/// 200 while the process serves; says nothing about workers (a restart would not help them).
pub async fn health() -> StatusCode {
    StatusCode::OK
}

/// 200 when every served model has a worker that can take requests and we are not draining.
pub async fn ready(State(state): State<AppState>) -> Response {
    let pools: serde_json::Map<String, serde_json::Value> = state
        .pools
        .iter()
        .map(|(name, p)| {
            let workers = p.members.list().len();
            let reachable = p.members.reachable_count();
            (
                name.clone(),
                serde_json::json!({"workers": workers, "reachable": reachable}),
            )
        })
        .collect();
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "draining": state.drain.is_draining(),
        "pools": pools,
    });
    (status, Json(body)).into_response()
}

/// `GET /v1/models`: the served models the caller's key may use.
pub async fn models(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Json<ModelList> {
    let visible = state.pools.keys().filter(|m| caller.may_use(m)).cloned();
    Json(ModelList::new(visible, state.created))
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub async fn not_found(uri: Uri) -> GatewayError {
    GatewayError::RouteNotFound(uri.path().to_string())
}

pub async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}
