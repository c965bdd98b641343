//! The in-flight body budget: the bytes all requests in flight may hold, counted from each
//! body's declared length (a chunked body counts as `max_body_bytes`), so memory stays bounded
//! under a flood of large images. A request that would go over waits up to
//! `body_budget_wait_secs` for room, then gets 503 `body_budget_full` with `retry-after`. The
//! hold is taken from the head, before a byte of the body is read, and released when the
//! answer's last byte is sent (or the client leaves): for a stream, the request body is held
//! until then too.
//!
//! Waiting briefly rather than reading slowly: reading a body only as fast as room frees up
//! would keep the connection and the client's request open without bound, and the 503 lets
//! the `openai` client back off and retry on its own.

use crate::error::GatewayError;
use crate::metrics::Metrics;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes are counted in KiB permits (a semaphore's permit count is bounded).
const UNIT: u64 = 1024;

#[derive(Debug)]
pub struct BodyBudget {
    room: Arc<Semaphore>,
    wait: Duration,
    gauge: prometheus::IntGauge,
}

/// A request's share of the budget; given back on drop.
#[derive(Debug)]
pub struct Hold {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

impl BodyBudget {
    pub fn new(max_bytes: u64, wait: Duration, metrics: &Metrics) -> BodyBudget {
        let units = usize::try_from(max_bytes / UNIT)
            .unwrap_or(Semaphore::MAX_PERMITS)
            .clamp(1, Semaphore::MAX_PERMITS);
        BodyBudget {
            room: Arc::new(Semaphore::new(units)),
            wait,
            gauge: metrics
                .body_bytes_in_flight
                .with_label_values(&[] as &[&str]),
        }
    }

    /// Room for a body of `bytes`, waiting at most the configured time.
    pub async fn hold(&self, bytes: u64) -> Result<Hold, GatewayError> {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        let acquire = self.room.clone().acquire_many_owned(units);
        match tokio::time::timeout(self.wait, acquire).await {
            Ok(Ok(permit)) => {
                let bytes = i64::try_from(u64::from(units) * UNIT).unwrap_or(i64::MAX);
                self.gauge.add(bytes);
                Ok(Hold {
                    _permit: permit,
                    bytes,
                    gauge: self.gauge.clone(),
                })
            }
            // Closed never happens (the semaphore lives as long as the app); treat it as full.
            Ok(Err(_)) | Err(_) => Err(GatewayError::BodyBudget(
                "the gateway holds as many request bytes as it may (max_inflight_body_bytes); \
                 retry shortly"
                    .into(),
            )),
        }
    }
}

/// `resp` with `hold` riding in its body: given back when the body is done or dropped.
pub fn attach(resp: Response, hold: Hold) -> Response {
    resp.map(|inner| Body::new(HeldBody { inner, _hold: hold }))
}

struct HeldBody {
    inner: Body,
    _hold: Hold,
}

impl HttpBody for HeldBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_held_until_the_hold_drops_and_a_wait_past_it_is_refused() {
        let m = Metrics::new();
        let b = BodyBudget::new(4 << 10, Duration::from_millis(50), &m);
        let first = b.hold(3 << 10).await.expect("fits");
        assert_eq!(b.gauge.get(), 3 << 10);
        let err = b.hold(2 << 10).await.expect_err("over the budget");
        assert_eq!(err.status().as_u16(), 503);
        assert!(err.retry_after().is_some());
        let small = b.hold(1).await.expect("one unit still fits");
        drop(first);
        let again = b.hold(3 << 10).await.expect("room came back");
        drop((small, again));
        assert_eq!(b.gauge.get(), 0);
    }
}
