//! One error type for the request path, and the one OpenAI error envelope it becomes.
//!
//! Every failure a client can see is a [`GatewayError`]. [`GatewayError::status`] is the one
//! exhaustive mapping to an HTTP status; the same value renders as a JSON body
//! (`IntoResponse`) before a stream has started, and as an SSE `data:` event after
//! ([`GatewayError::to_sse_event`]). The internal cause is logged once, by the handler that
//! finishes the request, never here.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::time::Duration;

/// `code` of a remote image URL the SSRF guard refused (see [`GatewayError::image_url_refused`]).
pub const IMAGE_URL_REFUSED: &str = "image_url_refused";
/// `code` of a remote image that could not be fetched ([`GatewayError::image_fetch_failed`]).
pub const IMAGE_FETCH_FAILED: &str = "image_fetch_failed";

/// Everything that can go wrong with one request, as the client is told about it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request is malformed: bad JSON, a missing field, a bad image. `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    /// A configured limit was exceeded (body size, image bytes, pixels, image count).
    #[error("{message}")]
    TooLarge {
        message: String,
        param: Option<String>,
    },
    /// No API key, or the wrong one.
    #[error("invalid or missing API key")]
    Unauthorized,
    /// The key may not use this endpoint (the files and batch API).
    #[error("{0}")]
    PermissionDenied(String),
    /// The key is over one of its limits (`limit`: `requests`, `tokens`; OpenAI's `type`).
    /// No `retry_after`: the request can never fit (more tokens than the whole limit).
    #[error("{message}")]
    RateLimited {
        message: String,
        limit: &'static str,
        retry_after: Option<Duration>,
    },
    /// The client did not send its request body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// The requested model is not served here.
    #[error("The model `{0}` does not exist.")]
    ModelNotFound(String),
    /// A named object (a file, a batch) does not exist. `param` names the field.
    #[error("{message}")]
    NotFound {
        message: String,
        param: Option<String>,
    },
    /// The object is in a state that does not allow this (cancelling a finished batch).
    #[error("{0}")]
    Conflict(String),
    /// No route matches (`/v1/nonsense`).
    #[error("route not found: {0}")]
    RouteNotFound(String),
    /// The route exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The admission queue is full or the wait would exceed its bound: come back later.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// The bytes of request bodies in flight are at their bound: come back shortly.
    #[error("{0}")]
    BodyBudget(String),
    /// The gateway is shutting down and admits nothing new.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// No worker of the model's pool is available.
    #[error("no worker is available for model `{0}`")]
    NoWorker(String),
    /// The worker could not be reached, or broke the connection, or answered garbage.
    #[error("worker error: {0}")]
    BadGateway(String),
    /// The worker answered 5xx (503 is passed on as 503, the rest as 502).
    #[error("worker answered {status}: {message}")]
    WorkerStatus { status: StatusCode, message: String },
    /// The worker did not answer within the configured time.
    #[error("worker timed out: {0}")]
    Timeout(String),
    /// A bug in the gateway.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GatewayError {
    pub fn invalid(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        GatewayError::InvalidRequest {
            message: message.into(),
            param: param.into(),
            code: None,
        }
    }

    /// A required parameter is absent: OpenAI's `missing_required_parameter`.
    pub fn missing(param: &str) -> Self {
        GatewayError::InvalidRequest {
            message: format!("Missing required parameter: '{param}'."),
            param: Some(param.into()),
            code: Some("missing_required_parameter"),
        }
    }

    /// An image URL the SSRF guard will not fetch (`--fetch-remote-images`): 400
    /// `image_url_refused`, with the reason.
    pub fn image_url_refused(reason: impl std::fmt::Display, param: String) -> Self {
        GatewayError::InvalidRequest {
            message: format!("image URL refused: {reason}"),
            param: Some(param),
            code: Some(IMAGE_URL_REFUSED),
        }
    }

    /// A remote image the gateway could not fetch (the server answered 404, timed out, could
    /// not be reached): 400 `image_fetch_failed`, not a 5xx, since the URL is the client's.
    pub fn image_fetch_failed(reason: impl std::fmt::Display, param: String) -> Self {
        GatewayError::InvalidRequest {
            message: format!("image fetch failed: {reason}"),
            param: Some(param),
            code: Some(IMAGE_FETCH_FAILED),
        }
    }

    pub fn too_large(message: impl Into<String>, param: impl Into<Option<String>>) -> Self {
        GatewayError::TooLarge {
            message: message.into(),
            param: param.into(),
        }
    }

    /// The one mapping from error to HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            GatewayError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::PermissionDenied(_) => StatusCode::FORBIDDEN,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::ModelNotFound(_)
            | GatewayError::RouteNotFound(_)
            | GatewayError::NotFound { .. } => StatusCode::NOT_FOUND,
            GatewayError::Conflict(_) => StatusCode::CONFLICT,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::ShuttingDown
            | GatewayError::NoWorker(_)
            | GatewayError::BodyBudget(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            GatewayError::WorkerStatus { status, .. } => {
                if *status == StatusCode::SERVICE_UNAVAILABLE {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::BAD_GATEWAY
                }
            }
            GatewayError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` field.
    fn error_type(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { .. }
            | GatewayError::TooLarge { .. }
            | GatewayError::ModelNotFound(_)
            | GatewayError::RouteNotFound(_)
            | GatewayError::NotFound { .. }
            | GatewayError::Conflict(_)
            | GatewayError::PermissionDenied(_)
            | GatewayError::RequestTimeout(_)
            | GatewayError::MethodNotAllowed => "invalid_request_error",
            GatewayError::Unauthorized => "authentication_error",
            GatewayError::RateLimited { limit, .. } => limit,
            GatewayError::Overloaded { .. } => "rate_limit_error",
            GatewayError::ShuttingDown
            | GatewayError::NoWorker(_)
            | GatewayError::BodyBudget(_)
            | GatewayError::BadGateway(_)
            | GatewayError::WorkerStatus { .. }
            | GatewayError::Timeout(_)
            | GatewayError::Internal(_) => "server_error",
        }
    }

    /// OpenAI's `code` field: a stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::InvalidRequest { code, .. } => code.unwrap_or("invalid_request"),
            GatewayError::TooLarge { .. } => "payload_too_large",
            GatewayError::Unauthorized => "invalid_api_key",
            GatewayError::PermissionDenied(_) => "permission_denied",
            GatewayError::RateLimited { .. } => "rate_limit_exceeded",
            GatewayError::RequestTimeout(_) => "request_timeout",
            GatewayError::ModelNotFound(_) => "model_not_found",
            GatewayError::RouteNotFound(_) | GatewayError::NotFound { .. } => "not_found",
            GatewayError::Conflict(_) => "conflict",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::ShuttingDown => "shutting_down",
            GatewayError::BodyBudget(_) => "body_budget_full",
            GatewayError::NoWorker(_) => "no_worker_available",
            GatewayError::BadGateway(_) | GatewayError::WorkerStatus { .. } => "worker_error",
            GatewayError::Timeout(_) => "worker_timeout",
            GatewayError::Internal(_) => "internal_error",
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. }
            | GatewayError::TooLarge { param, .. }
            | GatewayError::NotFound { param, .. } => param.as_deref(),
            GatewayError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    /// The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}`.
    pub fn envelope(&self) -> ErrorEnvelope<'_> {
        ErrorEnvelope {
            error: ErrorBody {
                message: self.to_string(),
                r#type: self.error_type(),
                param: self.param(),
                code: self.code(),
            },
        }
    }

    /// The same envelope as one server-sent event, for errors after a stream has started.
    pub fn to_sse_event(&self) -> String {
        let json = serde_json::to_string(&self.envelope())
            .expect("the error envelope always serializes; this is a bug");
        format!("data: {json}\n\n")
    }

    /// The retry hint for 429 and 503 answers.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Overloaded { retry_after, .. } => Some(*retry_after),
            GatewayError::RateLimited { retry_after, .. } => *retry_after,
            GatewayError::ShuttingDown | GatewayError::BodyBudget(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ErrorEnvelope<'a> {
    pub error: ErrorBody<'a>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub message: String,
    pub r#type: &'static str,
    pub param: Option<&'a str>,
    pub code: &'static str,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::to_vec(&self.envelope())
            .expect("the error envelope always serializes; this is a bug");
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            let headers = response.headers_mut();
            // `retry-after` is whole seconds (rounded up); the openai client prefers the
            // millisecond header when both are present.
            let secs = after.as_millis().div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs as u64));
            headers.insert(
                "retry-after-ms",
                HeaderValue::from(after.as_millis() as u64),
            );
        }
        // A conflict, or a request larger than its key's whole token limit, does not go away
        // by itself: the openai client must not retry it.
        if matches!(
            self,
            GatewayError::Conflict(_)
                | GatewayError::RateLimited {
                    retry_after: None,
                    ..
                }
        ) {
            response
                .headers_mut()
                .insert("x-should-retry", HeaderValue::from_static("false"));
        }
        // The body was not read to its end: the connection cannot carry another request.
        if matches!(self, GatewayError::RequestTimeout(_)) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        // Handlers log the cause; the response carries the error for the access log line.
        response.extensions_mut().insert(ErrorCode(self.code()));
        response
    }
}

/// Attached to error responses so the request log line can name the reason.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_openai_shape() {
        let err =
            GatewayError::invalid("bad image", Some("messages[1].content[0].image_url".into()));
        let v = serde_json::to_value(err.envelope()).expect("serializes");
        assert_eq!(v["error"]["message"], "bad image");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages[1].content[0].image_url");
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn overload_carries_retry_headers() {
        let err = GatewayError::Overloaded {
            message: "queue full".into(),
            retry_after: Duration::from_millis(1500),
        };
        let resp = err.into_response();
        assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "2");
        assert_eq!(resp.headers()["retry-after-ms"], "1500");
    }

    #[test]
    fn sse_event_is_one_data_line() {
        let ev = GatewayError::Timeout("first byte".into()).to_sse_event();
        assert!(ev.starts_with("data: {\"error\":"));
        assert!(ev.ends_with("\n\n"));
        assert_eq!(ev.matches('\n').count(), 2);
    }
}
