//! The request body as bytes, with axum's rejections turned into our error envelope: a body
//! over `max_body_bytes` is a 413 `TooLarge`, a broken upload a 400.

use crate::error::GatewayError;
use axum::extract::{FromRequest, Request};
use bytes::Bytes;

/// The raw body; parsing is validation's job.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = GatewayError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(b) => Ok(RawBody(b)),
            Err(rejection) if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(GatewayError::too_large(
                    "request body exceeds the gateway's max_body_bytes",
                    None,
                ))
            }
            Err(rejection) if super::deadline::is_timeout(&rejection) => Err(body_timeout()),
            Err(rejection) => Err(GatewayError::invalid(
                format!("cannot read the request body: {}", rejection.body_text()),
                None,
            )),
        }
    }
}

/// The answer to a body that did not arrive in time (see `deadline`).
pub fn body_timeout() -> GatewayError {
    GatewayError::RequestTimeout(
        "the request body did not arrive in time (body_read_timeout_secs, \
         min_body_bytes_per_sec)"
            .into(),
    )
}
