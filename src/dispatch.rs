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

use crate::api::chat::{ResponsePeek, Usage};
use crate::error::GatewayError;
use crate::pool::Lease;
use crate::state::Pool;
use crate::validate::ValidRequest;
use crate::worker::http::renamed;
use crate::worker::{Fault, SendError, SendLimits, Upstream, UpstreamBody};
use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::StreamExt;
use http::StatusCode;
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
///
/// `deadline` bounds the whole request, its wait for a worker included. A bulk request (a
/// batch line, [`ValidRequest::bulk`]) waits for a worker until `deadline` and then has the
/// pool's `request_timeout` from the moment it was admitted.
pub async fn send_with_failover(
    pool: &Pool,
    req: &ValidRequest,
    request_id: &str,
    deadline: Instant,
) -> Result<(Upstream, Lease), Failed> {
    let lease = pool.queue.admit(req, Vec::new(), deadline).await?;
    let deadline = if req.bulk {
        Instant::now() + pool.request_timeout()
    } else {
        deadline
    };
    send_admitted(pool, req, request_id, deadline, lease).await
}

/// [`send_with_failover`] for a request already admitted with `lease` (from
/// `pool.queue.admit`): a caller that must know when its request got a worker (the batch
/// runner: a line admitted is a line started) admits it itself.
pub async fn send_admitted(
    pool: &Pool,
    req: &ValidRequest,
    request_id: &str,
    deadline: Instant,
    mut lease: Lease,
) -> Result<(Upstream, Lease), Failed> {
    let model = pool.members.model.as_str();
    let limits = SendLimits {
        first_byte: pool.first_byte_timeout(),
        deadline,
    };
    let mut avoid: Vec<String> = Vec::new();
    let mut attempt = 0;
    loop {
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
                    Fault::Request if !req.remote.is_empty() => Fault::None,
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
                lease = pool
                    .queue
                    .admit(req, avoid.clone(), deadline)
                    .await
                    .map_err(|error| Failed {
                        error,
                        worker: avoid.last().cloned(),
                    })?;
            }
        }
    }
}

/// A non-streamed answer, read whole, as `/v1/chat/completions` returns it: the worker's
/// status, and its body with `model` set to the name the client asked for (an error body goes
/// on unchanged).
#[derive(Debug)]
pub struct Whole {
    pub status: StatusCode,
    pub body: Bytes,
    pub usage: Option<Usage>,
}

/// A worker's answer to a request that did not ask to stream, read whole: [`read_whole`] on its
/// document (a worker that streams anyway broke the protocol: an internal error).
pub async fn read_answer(
    up: Upstream,
    lease: &Lease,
    model: &str,
    deadline: Instant,
) -> Result<Whole, GatewayError> {
    match up.body {
        UpstreamBody::Json(body) => read_whole(up.status, body, lease, model, deadline).await,
        UpstreamBody::Events(_) => Err(GatewayError::Internal(
            "a worker streamed an answer that was not asked to stream".into(),
        )),
    }
}

/// Largest non-streamed answer accepted from a worker (n × max_tokens × logprobs can be big).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Read a document answer ([`crate::worker::UpstreamBody::Json`]) to its end within `deadline`. A body
/// that breaks off counts against the worker. Used by the HTTP relay and the batch runner, so
/// both return the same bytes.
pub async fn read_whole(
    status: StatusCode,
    body: BoxStream<'static, Result<Bytes, String>>,
    lease: &Lease,
    model: &str,
    deadline: Instant,
) -> Result<Whole, GatewayError> {
    let body = match tokio::time::timeout_at(deadline, collect(body)).await {
        Ok(Ok(body)) => body,
        Ok(Err(message)) => {
            lease.worker().record_outcome(Fault::Worker);
            return Err(GatewayError::BadGateway(message));
        }
        Err(_) => {
            return Err(GatewayError::Timeout(
                "the answer did not complete within the request timeout".into(),
            ))
        }
    };
    let mut usage = None;
    let body = if status.is_success() {
        let peek = serde_json::from_slice::<ResponsePeek<'_>>(&body).ok();
        usage = peek.as_ref().and_then(|p| p.usage);
        match renamed(&body, peek.as_ref(), model) {
            Some(renamed) => renamed,
            None => body,
        }
    } else {
        body
    };
    Ok(Whole {
        status,
        body,
        usage,
    })
}

async fn collect(mut body: BoxStream<'static, Result<Bytes, String>>) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(format!(
                "worker answer larger than {MAX_RESPONSE_BYTES} bytes"
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}
