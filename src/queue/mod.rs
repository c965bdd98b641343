//! The admission queue of one model: requests wait here, in priority then arrival order, until a
//! worker has room; then they leave in batches, each request holding a [`Lease`] on its worker.
//!
//! One task (the actor, [`run`]) owns the waiting line; a cloneable [`QueueHandle`] sends it
//! tickets. The queue is bounded in length (`queue_capacity`) and in wait (`queue_timeout_secs`):
//! past either the answer is 429 with `retry-after`, never a hang. A ticket whose caller went
//! away (client disconnected) is dropped and counted. Which requests form a batch is
//! [`batch::form_batch`], a pure function.

pub mod batch;

use crate::config::PolicyKind;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pool::{Lease, Members, RouteInfo};
use crate::validate::ValidRequest;
use batch::{form_batch, BatchItem, BatchLimits, Decision, Room};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a blocked queue waits before looking again even if nothing woke it (an ejection
/// running out wakes nobody).
const RECHECK: Duration = Duration::from_millis(50);
/// `retry-after` on a 429: long enough for a batch to finish, short enough to keep GPUs busy.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One request waiting for a worker.
struct Ticket {
    tokens: u64,
    image_tokens: u64,
    priority: i64,
    affinity: Option<u64>,
    /// Workers this request already failed on: chosen only if nothing else has room.
    avoid: Vec<String>,
    enqueued: Instant,
    deadline: Instant,
    reply: oneshot::Sender<Result<Lease, GatewayError>>,
}

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
    pub async fn admit(
        &self,
        req: &ValidRequest,
        avoid: Vec<String>,
        deadline: Instant,
    ) -> Result<Lease, GatewayError> {
        let model = self.members.model.as_str();
        if self.members.all_down() {
            self.metrics
                .rejections
                .with_label_values(&[model, "no_worker"])
                .inc();
            return Err(GatewayError::NoWorker(model.to_string()));
        }
        let now = Instant::now();
        let (reply, rx) = oneshot::channel();
        let ticket = Ticket {
            tokens: req.token_cost(),
            image_tokens: req.image_tokens,
            priority: req.priority,
            affinity: req.affinity_key(),
            avoid,
            enqueued: now,
            deadline: deadline.min(now + self.members.settings.queue_timeout()),
            reply,
        };
        if self.tx.try_send(ticket).is_err() {
            self.metrics
                .rejections
                .with_label_values(&[model, "queue_full"])
                .inc();
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

/// The actor: owns the waiting line, hands out leases.
async fn run(
    mut rx: mpsc::Receiver<Ticket>,
    members: Arc<Members>,
    metrics: Metrics,
    cancel: tokio_util::sync::CancellationToken,
) {
    let settings = members.settings.clone();
    let model = members.model.clone();
    let limits = BatchLimits {
        max_requests: settings.batch_max_requests,
        max_tokens: settings.batch_max_tokens,
        max_image_tokens: settings.batch_max_image_tokens,
        max_wait: settings.batch_max_wait(),
    };
    let depth = metrics.queue_depth.with_label_values(&[model.as_str()]);
    // Ordered by (priority, arrival): lower priority values first, as vLLM orders them.
    let mut waiting: BTreeMap<(i64, u64), Ticket> = BTreeMap::new();
    let mut seq: u64 = 0;
    let mut hold_until: Option<Instant> = None;
    let mut open = true;
    while open || !waiting.is_empty() {
        let wake = next_wake(&waiting, hold_until);
        tokio::select! {
            ticket = rx.recv(), if open => match ticket {
                Some(t) => {
                    accept(&mut waiting, &mut seq, t, settings.queue_capacity, &metrics, &model);
                    // Take whatever else arrived meanwhile before deciding, so a burst is
                    // batched; bounded so the loop stays responsive.
                    for _ in 0..1024 {
                        match rx.try_recv() {
                            Ok(t) => accept(&mut waiting, &mut seq, t, settings.queue_capacity, &metrics, &model),
                            Err(_) => break,
                        }
                    }
                }
                None => open = false,
            },
            _ = members.freed.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
            // Only after the drain: whoever still waits is told the gateway is stopping.
            _ = cancel.cancelled() => {
                for (_, t) in std::mem::take(&mut waiting) {
                    let _ = t.reply.send(Err(GatewayError::ShuttingDown));
                }
                depth.set(0);
                return;
            }
        }
        let now = Instant::now();
        expire(&mut waiting, now, &metrics, &model);
        hold_until = dispatch(&mut waiting, &members, &limits, now, &metrics);
        depth.set(waiting.len() as i64);
    }
}

fn accept(
    waiting: &mut BTreeMap<(i64, u64), Ticket>,
    seq: &mut u64,
    t: Ticket,
    capacity: usize,
    metrics: &Metrics,
    model: &str,
) {
    if waiting.len() >= capacity {
        metrics
            .rejections
            .with_label_values(&[model, "queue_full"])
            .inc();
        let _ = t.reply.send(Err(overloaded("the queue is full")));
        return;
    }
    *seq += 1;
    waiting.insert((t.priority, *seq), t);
}

fn next_wake(waiting: &BTreeMap<(i64, u64), Ticket>, hold_until: Option<Instant>) -> Instant {
    let far = Instant::now() + Duration::from_secs(3600);
    if waiting.is_empty() {
        return far;
    }
    let earliest_deadline = waiting.values().map(|t| t.deadline).min().unwrap_or(far);
    let recheck = Instant::now() + RECHECK;
    earliest_deadline
        .min(recheck)
        .min(hold_until.unwrap_or(far))
}

/// Drop tickets whose caller left; answer 429 to those past their wait.
fn expire(
    waiting: &mut BTreeMap<(i64, u64), Ticket>,
    now: Instant,
    metrics: &Metrics,
    model: &str,
) {
    waiting.retain(|_, t| {
        if t.reply.is_closed() {
            metrics.queue_abandoned.with_label_values(&[model]).inc();
            return false;
        }
        if now >= t.deadline {
            metrics
                .rejections
                .with_label_values(&[model, "queue_timeout"])
                .inc();
            // Take the ticket's reply by replacing it: the entry is removed right after.
            let (dummy, _) = oneshot::channel();
            let reply = std::mem::replace(&mut t.reply, dummy);
            let _ = reply.send(Err(overloaded("no worker had room in time")));
            return false;
        }
        true
    });
}

/// Hand out as many batches as workers have room for. Returns when to look again if a partial
/// batch is being held.
fn dispatch(
    waiting: &mut BTreeMap<(i64, u64), Ticket>,
    members: &Members,
    limits: &BatchLimits,
    now: Instant,
    metrics: &Metrics,
) -> Option<Instant> {
    let model = members.model.as_str();
    // Bounded: each round sends at least one ticket or stops.
    for _ in 0..=waiting.len() {
        let (&head_key, head) = waiting.iter().next()?;
        let route = RouteInfo {
            tokens: head.tokens,
            affinity: head.affinity,
        };
        let Some((worker, trial)) = members.choose(route, &head.avoid) else {
            if members.all_down() {
                // Nobody will ever have room: fail everyone now rather than at their deadline.
                for (_, t) in std::mem::take(waiting) {
                    metrics
                        .rejections
                        .with_label_values(&[model, "no_worker"])
                        .inc();
                    let _ = t.reply.send(Err(GatewayError::NoWorker(model.to_string())));
                }
            }
            return None;
        };
        // The batch: the head, then later tickets that may go to the same worker.
        let same_key = members.settings.policy == PolicyKind::Affinity;
        let keys: Vec<(i64, u64)> = if trial {
            vec![head_key]
        } else {
            waiting
                .iter()
                .filter(|(_, t)| {
                    !t.avoid.contains(&worker.url) && (!same_key || t.affinity == head.affinity)
                })
                .take(limits.max_requests)
                .map(|(k, _)| *k)
                .collect()
        };
        let items: Vec<BatchItem> = keys
            .iter()
            .map(|k| {
                let t = &waiting[k];
                BatchItem {
                    tokens: t.tokens,
                    image_tokens: t.image_tokens,
                    enqueued: t.enqueued.into_std(),
                }
            })
            .collect();
        let s = &members.settings;
        let room = Room {
            requests: s.max_in_flight.saturating_sub(worker.in_flight()) as usize,
            tokens: s
                .max_tokens_in_flight
                .saturating_sub(
                    worker
                        .load
                        .tokens
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
                .max(head.tokens),
        };
        let n = match form_batch(&items, limits, room, now.into_std()) {
            // A half-open trial is one request, sent at once.
            _ if trial => 1,
            Decision::Dispatch(n) => n,
            Decision::Hold(until) => return Some(Instant::from_std(until)),
            Decision::Empty => return None,
        };
        let batch_tokens: u64 = items[..n].iter().map(|i| i.tokens).sum();
        metrics
            .batch_size
            .with_label_values(&[model])
            .observe(n as f64);
        metrics
            .batch_tokens
            .with_label_values(&[model])
            .observe(batch_tokens as f64);
        for key in &keys[..n] {
            let t = waiting
                .remove(key)
                .expect("key taken from the map above; this is a bug");
            metrics
                .queue_wait
                .with_label_values(&[model])
                .observe(now.duration_since(t.enqueued).as_secs_f64());
            let lease = Lease::take(worker.clone(), t.tokens, trial, members.freed.clone());
            // A caller that left drops the lease with the message: capacity comes straight back.
            let _ = t.reply.send(Ok(lease));
        }
    }
    None
}

#[cfg(test)]
mod tests;
