//! The one driver of a request: admit it through the model's queue, send it through the
//! worker seam, fail over before the first byte, and tell the pool how each worker did.
//!
//! [`send_with_failover`] is called by the HTTP handler (`http/chat.rs`) and is meant for
//! anything else that sends requests as a client would (the batch runner, the cache): it takes
//! a [`ValidRequest`] and imports nothing from `http/`. What it returns is the worker's answer
//! head and the [`Lease`] that holds the worker's slot until the answer has been read.
//!
//! Failover: a failure before any response byte that the worker likely never ran (refused,
//! reset, 502, 503, first-byte timeout) is tried again on another worker, up to the pool's
//! `max_retries` and within the request's deadline. A failure the request itself caused (a 500
//! or 501 about what it asked for) is not retried: it would fail the same way anywhere, and
//! retrying would multiply what one bad request costs the fleet.

use crate::error::GatewayError;
use crate::pool::Lease;
use crate::state::Pool;
use crate::validate::ValidRequest;
use crate::worker::{Fault, SendError, SendLimits, Upstream};
use tokio::time::Instant;

/// A request that got no answer: the error for the client, and the last worker tried.
#[derive(Debug)]
pub struct Failed {
    pub error: GatewayError,
    pub worker: Option<String>,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Failed {
        Failed {
            error,
            worker: None,
        }
    }
}

/// Admit, send, and fail over: the worker's answer head and the lease that holds its slot.
pub async fn send_with_failover(
    pool: &Pool,
    req: &ValidRequest,
    request_id: &str,
    deadline: Instant,
) -> Result<(Upstream, Lease), Failed> {
    let model = pool.members.model.as_str();
    let limits = SendLimits {
        first_byte: pool.first_byte_timeout(),
        deadline,
    };
    let mut avoid: Vec<String> = Vec::new();
    let mut attempt = 0;
    loop {
        let lease = pool
            .queue
            .admit(req, avoid.clone(), deadline)
            .await
            .map_err(|error| Failed {
                error,
                worker: avoid.last().cloned(),
            })?;
        let worker = lease.worker().clone();
        match worker
            .backend
            .send(pool.client(), req, request_id, limits)
            .await
        {
            Ok(upstream) => {
                pool.metrics()
                    .worker_response(model, &worker.url, Some(upstream.status));
                pool.members.report(&worker, Fault::None, 0);
                return Ok((upstream, lease));
            }
            Err(SendError {
                error,
                retryable,
                fault,
            }) => {
                let status = match &error {
                    GatewayError::WorkerStatus { status, .. } => Some(*status),
                    _ => None,
                };
                pool.metrics().worker_response(model, &worker.url, status);
                // A request with an image URL the worker fetches itself fails wherever the URL
                // is bad: its failure says nothing about the worker, not even as a rate (a
                // client cycling through bad URLs would otherwise concentrate failures on one
                // worker under least-outstanding and make it look like an outlier).
                let fault = match fault {
                    Fault::Request if req.remote_images > 0 => Fault::None,
                    f => f,
                };
                // The body hash tells distinct requests apart; only failures pay for it.
                let request = match fault {
                    Fault::Request => xxhash_rust::xxh3::xxh3_64(&req.body),
                    Fault::None | Fault::Worker => 0,
                };
                pool.members.report(&worker, fault, request);
                drop(lease);
                attempt += 1;
                if !retryable || attempt > pool.max_retries() || Instant::now() >= deadline {
                    tracing::warn!(request_id, worker = %worker.url, error = %error, attempt, "worker failed");
                    return Err(Failed {
                        error,
                        worker: Some(worker.url.clone()),
                    });
                }
                tracing::info!(request_id, worker = %worker.url, error = %error, attempt, "worker failed before any byte; retrying on another");
                pool.metrics().retry(model);
                avoid.push(worker.url.clone());
            }
        }
    }
}
