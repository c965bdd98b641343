//! The request body's deadline: a body must arrive within `body_read_timeout`, plus one second
//! for every `min_body_bytes_per_sec` it has delivered so far. A client trickling a byte a
//! second is cut off after the base timeout; an 8 GiB upload at a sane rate is not, and a
//! stalled upload is cut off once its allowance runs out. The handler sees the timeout as a
//! body error and answers 408 ([`is_timeout`]), and the connection closes.

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The error a body yields when its deadline passed.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// Whether `err` (a body or extraction error) is, somewhere down its sources, a [`BodyTimeout`].
pub fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    super::extract::has_source::<BodyTimeout>(err)
}

/// `inner`, cut off once it falls behind its deadline.
pub struct Deadline {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    started: Instant,
    received: u64,
    base: Duration,
    min_rate: u64,
}

impl Deadline {
    pub fn new(inner: Body, base: Duration, min_rate: u64) -> Deadline {
        let started = Instant::now();
        Deadline {
            inner,
            sleep: Box::pin(tokio::time::sleep_until(started + base)),
            started,
            received: 0,
            base,
            min_rate: min_rate.max(1),
        }
    }

    fn deadline(&self) -> Instant {
        let allowance = Duration::from_secs_f64(self.received as f64 / self.min_rate as f64);
        self.started + self.base + allowance
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    let deadline = this.deadline();
                    this.sleep.as_mut().reset(deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(other) => Poll::Ready(other),
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
        }
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
    use http_body_util::BodyExt;

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_off_and_a_steady_stream_is_not() {
        // 10 bytes per second allowed, 1 s base; the sender gives 1 byte per second.
        let (mut tx, rx) = tokio::io::duplex(64);
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(rx));
        let mut d = Deadline::new(body, Duration::from_secs(1), 10);
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..10 {
                if tx.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let mut got = 0;
        let err = loop {
            match d.frame().await {
                Some(Ok(f)) => got += f.into_data().map(|b| b.len()).unwrap_or(0),
                Some(Err(e)) => break e,
                None => panic!("the trickle was not cut off"),
            }
        };
        assert!(is_timeout(&err), "{err}");
        assert!(
            got <= 2,
            "cut off after the base second and its allowance: {got} bytes"
        );
        sender.abort();

        // 100 bytes at 100 bytes per second against a 10 B/s floor: never near the deadline.
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
            .map(|_| Ok(Bytes::from_static(b"0123456789")))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let whole = Deadline::new(body, Duration::from_secs(1), 10)
            .collect()
            .await
            .expect("in time");
        assert_eq!(whole.to_bytes().len(), 100);
    }
}
