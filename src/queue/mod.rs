//! The admission queue of one model: requests wait here, in priority then arrival order, until a
//! worker has room under its caps (`max_in_flight`, `max_tokens_in_flight`); then each leaves
//! with a [`Lease`] on the worker the pool's policy picks for it. This is admission, not
//! batching: the caller sends every request alone, and the workers batch on their own (vLLM
//! continuously, the in-process engine in its scheduler).
//!
//! One task (the actor, [`run`]) owns the waiting line; a cloneable [`QueueHandle`] sends it
//! tickets. The queue is bounded in length (`queue_capacity`) and in wait (`queue_timeout_secs`):
//! past either the answer is 429 with `retry-after`, never a hang. A ticket whose caller went
//! away (client disconnected) is dropped and counted. Which worker a ticket gets is
//! [`Members::choose`], asked once per ticket with the load its predecessors just added, so a
//! burst that arrives in one turn spreads over the workers as the policy says.
//!
//! The caller then sends through the lease's worker; a failure before the first byte comes back
//! here as a new ticket that names that worker in `avoid`.

use crate::error::GatewayError;
use crate::metrics::{Metrics, RejectReason};
use crate::pool::{Lease, Members, RouteInfo};
use crate::validate::ValidRequest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a blocked queue waits before looking again even if nothing woke it (an ejection
/// running out wakes nobody).
const RECHECK: Duration = Duration::from_millis(50);
/// `retry-after` on a 429: long enough for a request in flight to finish, short enough to keep
/// GPUs busy.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Most tickets taken off the channel in one turn before leases are granted. Taking a burst
/// together lets priority order it (a more urgent ticket that came a moment later still goes
/// first); the bound keeps one turn short, so releases and deadlines are seen between bursts.
const MAX_TICKETS_PER_TURN: usize = 1024;

/// One request waiting for a worker.
struct Ticket {
    tokens: u64,
    priority: i64,
    /// A batch line: after every interactive ticket, into the bulk share of a worker only.
    bulk: bool,
    affinity: Option<u64>,
    /// Workers this request already failed on: chosen only if nothing else has room.
    avoid: Vec<String>,
    enqueued: Instant,
    deadline: Instant,
    /// The caller's span (it carries the request id), so what the actor logs about this ticket
    /// names its request.
    span: tracing::Span,
    reply: oneshot::Sender<Result<Lease, GatewayError>>,
}

/// The waiting line, ordered by (class, priority, arrival): every interactive ticket before
/// any batch line, then lower priority values first, as vLLM orders them.
type Line = BTreeMap<(bool, i64, u64), Ticket>;

/// The sending side of a model's queue. Cheap to clone; the actor stops when every handle is
/// dropped and the line is empty.
#[derive(Clone, Debug)]
pub struct QueueHandle {
    /// Bounded by `queue_capacity`: a full channel is a 429, never a wait.
    tx: mpsc::Sender<Ticket>,
    members: Arc<Members>,
    metrics: Metrics,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("tokens", &self.tokens)
            .field("priority", &self.priority)
            .finish()
    }
}

impl QueueHandle {
    /// Start the actor for `members` and return its handle. The task is owned by `tasks`.
    pub fn spawn(
        members: Arc<Members>,
        metrics: Metrics,
        tasks: &tokio_util::task::TaskTracker,
        cancel: tokio_util::sync::CancellationToken,
    ) -> QueueHandle {
        let (tx, rx) = mpsc::channel(members.settings.queue_capacity);
        tasks.spawn(run(rx, members.clone(), metrics.clone(), cancel));
        QueueHandle {
            tx,
            members,
            metrics,
        }
    }

    /// Wait for a worker with room. `avoid` lists workers this request already failed on;
    /// `deadline` is the request's own. Dropping the future withdraws the request.
    ///
    /// A bulk request (a batch line) waits until `deadline` rather than the queue's timeout,
    /// is not counted against `queue_capacity` (the batch runner bounds how many it sends),
    /// and waits for a place on the channel rather than being refused.
    pub async fn admit(
        &self,
        req: &ValidRequest,
        avoid: Vec<String>,
        deadline: Instant,
    ) -> Result<Lease, GatewayError> {
        let model = self.members.model.as_str();
        if self.members.all_down() {
            let err = GatewayError::NoWorker(model.to_string());
            self.metrics.reject(model, &err);
            return Err(err);
        }
        let now = Instant::now();
        let (reply, rx) = oneshot::channel();
        let ticket = Ticket {
            tokens: req.token_cost(),
            priority: req.priority,
            bulk: req.bulk,
            affinity: req.affinity_key(),
            avoid,
            enqueued: now,
            deadline: if req.bulk {
                deadline
            } else {
                deadline.min(now + self.members.settings.queue_timeout())
            },
            span: tracing::Span::current(),
            reply,
        };
        if req.bulk {
            self.tx
                .send(ticket)
                .await
                .map_err(|_| GatewayError::ShuttingDown)?;
        } else if self.tx.try_send(ticket).is_err() {
            self.metrics.rejected(model, RejectReason::QueueFull);
            return Err(overloaded("the queue is full"));
        }
        rx.await
            .unwrap_or_else(|_| Err(GatewayError::Internal("the queue stopped".into())))
    }
}

fn overloaded(why: &str) -> GatewayError {
    GatewayError::Overloaded {
        message: format!("{why}; retry after {} s", RETRY_AFTER.as_secs()),
        retry_after: RETRY_AFTER,
    }
}

/// The actor: owns the waiting line, grants leases.
async fn run(
    mut rx: mpsc::Receiver<Ticket>,
    members: Arc<Members>,
    metrics: Metrics,
    cancel: tokio_util::sync::CancellationToken,
) {
    let capacity = members.settings.queue_capacity;
    let model = members.model.clone();
    let mut waiting = Line::new();
    // Bulk tickets in `waiting`: they do not count against `capacity`.
    let mut bulk: usize = 0;
    let mut seq: u64 = 0;
    let mut open = true;
    while open || !waiting.is_empty() {
        let wake = next_wake(&waiting);
        tokio::select! {
            ticket = rx.recv(), if open => match ticket {
                Some(t) => {
                    accept(&mut waiting, &mut seq, t, capacity, &mut bulk, &metrics, &model);
                    for _ in 0..MAX_TICKETS_PER_TURN {
                        match rx.try_recv() {
                            Ok(t) => accept(&mut waiting, &mut seq, t, capacity, &mut bulk, &metrics, &model),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = members.freed.notified() => {}
            _ = sleep_until(wake) => {}
            // Only after the drain: whoever still waits is told the gateway is stopping.
            _ = cancel.cancelled() => {
                for (_, t) in std::mem::take(&mut waiting) {
                    let _ = t.reply.send(Err(GatewayError::ShuttingDown));
                }
                metrics.set_queue_depth(&model, 0);
                metrics.set_bulk_queue_depth(&model, 0);
                return;
            }
        }
        let now = Instant::now();
        expire(&mut waiting, &mut bulk, now, &metrics, &model);
        grant(&mut waiting, &mut bulk, &members, now, &metrics);
        metrics.set_queue_depth(&model, waiting.len() - bulk);
        metrics.set_bulk_queue_depth(&model, bulk);
    }
}

fn accept(
    waiting: &mut Line,
    seq: &mut u64,
    t: Ticket,
    capacity: usize,
    bulk: &mut usize,
    metrics: &Metrics,
    model: &str,
) {
    if !t.bulk && waiting.len() - *bulk >= capacity {
        metrics.rejected(model, RejectReason::QueueFull);
        tracing::debug!(parent: &t.span, "queue full");
        let _ = t.reply.send(Err(overloaded("the queue is full")));
        return;
    }
    *seq += 1;
    *bulk += usize::from(t.bulk);
    waiting.insert((t.bulk, t.priority, *seq), t);
}

/// When to look at the line again if nothing wakes the actor first: the earliest deadline, or
/// a recheck. `None` when the line is empty: only a ticket or a release can matter then.
fn next_wake(waiting: &Line) -> Option<Instant> {
    let earliest_deadline = waiting.values().map(|t| t.deadline).min()?;
    Some(earliest_deadline.min(Instant::now() + RECHECK))
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drop tickets whose caller left; answer 429 to those past their wait.
/// `bulk` counts the batch tickets in `waiting`; every removal here keeps it true.
fn expire(waiting: &mut Line, bulk: &mut usize, now: Instant, metrics: &Metrics, model: &str) {
    let done: Vec<(bool, i64, u64)> = waiting
        .iter()
        .filter(|(_, t)| t.reply.is_closed() || now >= t.deadline)
        .map(|(k, _)| *k)
        .collect();
    for key in done {
        let t = waiting
            .remove(&key)
            .expect("key taken from the map above; this is a bug");
        *bulk -= usize::from(t.bulk);
        if t.reply.is_closed() {
            metrics.left_queue(model);
            tracing::debug!(parent: &t.span, "caller left the queue");
        } else {
            metrics.rejected(model, RejectReason::QueueTimeout);
            tracing::debug!(parent: &t.span, waited_ms = now.duration_since(t.enqueued).as_millis() as u64, "no worker had room in time");
            let _ = t.reply.send(Err(overloaded("no worker had room in time")));
        }
    }
}

/// Grant leases from the head of the line while the policy finds a worker with room for it.
/// Each ticket is placed on its own, seeing the load the leases before it added, so the policy
/// decides where a burst goes. Stops at the first ticket no worker has room for: the line is
/// served in order, never around its head.
fn grant(waiting: &mut Line, bulk: &mut usize, members: &Members, now: Instant, metrics: &Metrics) {
    let model = members.model.as_str();
    // Bounded: each round grants one ticket or returns.
    while let Some(head) = waiting.first_entry() {
        let route = RouteInfo {
            tokens: head.get().tokens,
            affinity: head.get().affinity,
            bulk: head.get().bulk,
        };
        let Some((worker, trial)) = members.choose(route, &head.get().avoid) else {
            if members.all_down() {
                // Nobody will ever have room: fail everyone now rather than at their deadline.
                *bulk = 0;
                for (_, t) in std::mem::take(waiting) {
                    let err = GatewayError::NoWorker(model.to_string());
                    metrics.reject(model, &err);
                    let _ = t.reply.send(Err(err));
                }
            }
            return;
        };
        let t = head.remove();
        *bulk -= usize::from(t.bulk);
        let waited = now.duration_since(t.enqueued);
        metrics.waited_in_queue(model, waited);
        tracing::debug!(parent: &t.span, worker = %worker.url, trial, waited_ms = waited.as_millis() as u64, "admitted");
        let lease = Lease::take(worker, t.tokens, trial, members.freed.clone());
        // A caller that left drops the lease with the message: capacity comes straight back.
        let _ = t.reply.send(Ok(lease));
    }
}

#[cfg(test)]
mod tests;
