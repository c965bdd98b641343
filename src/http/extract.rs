//! The request body as bytes, with the rejections turned into our error envelope: a body over
//! `max_body_bytes` is a 413 `TooLarge`, a late one a 408, a broken upload a 400.
//!
//! The body is read once into one buffer of its declared length (the edge has already refused
//! a declared length over the limit), each frame copied in as it arrives and then dropped, so
//! a request holds its body once, not its frames and a copy of them; a body that arrives as
//! one frame is kept as it is, without a copy. A chunked body, with no declared length, grows
//! its buffer as it comes, up to the same limit.

use crate::error::GatewayError;
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_LENGTH;
use axum::RequestExt;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError};

/// The raw body; parsing is validation's job.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = GatewayError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // `into_limited_body` applies the route's `DefaultBodyLimit` (max_body_bytes).
        read_body(req.into_limited_body(), declared)
            .await
            .map(RawBody)
    }
}

/// Read `body` whole; `declared` is its Content-Length, which hyper holds it to.
async fn read_body(
    mut body: axum::body::Body,
    declared: Option<usize>,
) -> Result<Bytes, GatewayError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| refusal(&e))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers: not part of the body
        };
        if buf.is_empty() {
            if declared == Some(data.len()) {
                return Ok(data); // the whole body in one frame: no copy
            }
            // The edge refused a declared length over the limit, so this is bounded.
            buf.reserve(declared.unwrap_or(0).max(data.len()));
        }
        buf.extend_from_slice(&data);
    }
    Ok(buf.freeze())
}

/// The answer to a body that could not be read: what went wrong, found down its sources.
fn refusal(err: &axum::Error) -> GatewayError {
    if has_source::<LengthLimitError>(err) {
        GatewayError::too_large("request body exceeds the gateway's max_body_bytes", None)
    } else if super::deadline::is_timeout(err) {
        body_timeout()
    } else {
        GatewayError::invalid(format!("cannot read the request body: {err}"), None)
    }
}

/// Whether `err` or one of its sources is an `E`. Bounded: error chains are a handful deep.
pub(super) fn has_source<E: std::error::Error + 'static>(
    err: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur = Some(err);
    for _ in 0..16 {
        match cur {
            Some(e) if e.is::<E>() => return true,
            Some(e) => cur = e.source(),
            None => return false,
        }
    }
    false
}

/// The answer to a body that did not arrive in time (see `deadline`).
pub fn body_timeout() -> GatewayError {
    GatewayError::RequestTimeout(
        "the request body did not arrive in time (body_read_timeout_secs, \
         min_body_bytes_per_sec)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    fn chunked(parts: &[&'static [u8]]) -> Body {
        let frames: Vec<Result<Bytes, std::io::Error>> =
            parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        Body::from_stream(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn frames_are_joined_in_order_with_or_without_a_declared_length() {
        for declared in [Some(11), None] {
            let got = read_body(chunked(&[b"hello", b" ", b"world"]), declared)
                .await
                .expect("read");
            assert_eq!(&got[..], b"hello world");
        }
    }

    #[tokio::test]
    async fn one_frame_of_the_declared_length_is_kept_without_a_copy() {
        let frame = Bytes::from_static(b"{\"model\":\"m\"}");
        let got = read_body(Body::from(frame.clone()), Some(frame.len()))
            .await
            .expect("read");
        assert_eq!(got.as_ptr(), frame.as_ptr(), "the frame itself, not a copy");
    }

    #[tokio::test]
    async fn over_the_limit_is_413_and_a_broken_body_is_400() {
        let limited = Body::new(http_body_util::Limited::new(
            chunked(&[b"12345", b"678"]),
            6,
        ));
        let err = read_body(limited, None).await.expect_err("over the limit");
        assert_eq!(err.status().as_u16(), 413);

        let broken: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("connection reset")),
        ];
        let err = read_body(Body::from_stream(futures::stream::iter(broken)), Some(10))
            .await
            .expect_err("broken");
        assert_eq!(err.status().as_u16(), 400);
    }
}
