//! The workers of one served model: who they are (static or found by DNS), how loaded and how
//! healthy each is, and which one a request should go to.
//!
//! The queue (`crate::queue`) asks [`Members::choose`] for a worker when a request is at the
//! head of the line, and takes a [`Lease`] on it; the request driver, which sends the request
//! through the lease's worker, reports each outcome back through [`Worker::record_outcome`].
//! Active probes ([`probe::run`]) and DNS discovery ([`discovery::run_dns`]) are background
//! tasks that `crate::state` spawns and owns, one per worker target.

pub mod discovery;
pub mod health;
mod lease;
pub mod policy;
pub mod probe;

use crate::config::{PolicyKind, PoolArgs};
use crate::metrics::{HealthLevel, Metrics};
use crate::worker::{Backend, Fault};
pub use health::{Admit, Health, HealthPolicy, RecentAnswers, Transition};
pub use lease::Lease;
use policy::WorkerSnapshot;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tokio::sync::Notify;

/// In-flight load of one worker. Changed only by [`Lease`] (taken by the queue actor, given
/// back on drop), read by everyone.
#[derive(Debug, Default)]
pub struct Load {
    pub in_flight: AtomicU32,
    pub tokens: AtomicU64,
}

/// One worker: an address (or the in-process engine), its load, its health.
#[derive(Debug)]
pub struct Worker {
    /// Base URL (`http://10.0.0.7:8000`) or `candle:/path`: the label in logs and metrics.
    pub url: String,
    pub model: String,
    pub backend: Backend,
    pub load: Load,
    pub health: Health,
    /// Found gone by discovery: finishes what it has, gets nothing new.
    pub draining: AtomicBool,
    /// The context the worker reports on `/v1/models` (`max_model_len`); 0 when unknown.
    max_model_len: AtomicU64,
    /// Stable hash of `url`, for rendezvous hashing.
    key: u64,
    metrics: Metrics,
}

impl Worker {
    pub fn new(
        url: String,
        model: String,
        backend: Backend,
        policy: HealthPolicy,
        metrics: Metrics,
    ) -> Worker {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        url.hash(&mut h);
        // The in-process engine needs no probe: it is up from the start.
        let health = Health::new(policy);
        if backend.is_in_process() {
            health.record_probe(true);
        }
        Worker {
            key: h.finish(),
            url,
            model,
            backend,
            load: Load::default(),
            health,
            draining: AtomicBool::new(false),
            max_model_len: AtomicU64::new(0),
            metrics,
        }
    }

    pub(crate) fn metrics_in_flight(&self, delta: i64) {
        self.metrics
            .add_worker_in_flight(&self.model, &self.url, delta);
    }

    /// The context the worker reported, if it did.
    pub fn max_model_len(&self) -> Option<u64> {
        Some(self.max_model_len.load(Ordering::Relaxed)).filter(|n| *n > 0)
    }

    pub fn set_max_model_len(&self, len: Option<u64>) {
        self.max_model_len
            .store(len.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn in_flight(&self) -> u32 {
        self.load.in_flight.load(Ordering::Relaxed)
    }

    /// Whether this worker can take a request of `tokens` estimated tokens under the pool's
    /// caps. A request bigger than the whole token cap still runs, alone on an idle worker,
    /// rather than never.
    ///
    /// A bulk request (a batch line) sees only its share of the caps (`batch_share`, at least
    /// one request): what is above it stays free for interactive requests.
    pub fn has_room(&self, settings: &PoolArgs, tokens: u64, bulk: bool) -> bool {
        let in_flight = self.in_flight();
        let held = self.load.tokens.load(Ordering::Relaxed);
        let (max_in_flight, max_tokens) = if bulk {
            let share = settings.batch_share;
            (
                ((f64::from(settings.max_in_flight) * share).floor() as u32).max(1),
                (settings.max_tokens_in_flight as f64 * share) as u64,
            )
        } else {
            (settings.max_in_flight, settings.max_tokens_in_flight)
        };
        in_flight < max_in_flight && (held.saturating_add(tokens) <= max_tokens || in_flight == 0)
    }

    /// May take requests now or soon (for `/ready`): not draining, up by probe, not ejected
    /// (a half-open worker with its trial out counts).
    pub fn is_reachable(&self, now: Instant) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.health.is_reachable(now)
    }

    /// Feed a gateway failure ([`Fault::Worker`]) or a success ([`Fault::None`]) into passive
    /// health. A request failure needs the peers' view: see [`Members::report`].
    pub fn record_outcome(&self, fault: Fault) {
        let transition = match fault {
            Fault::Worker => self.health.record_failure(Instant::now()),
            Fault::None | Fault::Request => self.health.record_success(),
        };
        self.log_transition(transition, "request");
    }

    pub fn log_transition(&self, t: Transition, cause: &str) {
        match t {
            Transition::None => return,
            Transition::Ejected(backoff) => {
                self.metrics.worker_ejected(&self.model, &self.url);
                tracing::warn!(worker = %self.url, model = %self.model, backoff_ms = backoff.as_millis() as u64, cause, "worker ejected");
            }
            Transition::WentDown => {
                tracing::warn!(worker = %self.url, model = %self.model, cause, "worker down")
            }
            Transition::WentUp => {
                tracing::info!(worker = %self.url, model = %self.model, cause, "worker up")
            }
            Transition::Restored => {
                tracing::info!(worker = %self.url, model = %self.model, cause, "worker restored after ejection")
            }
        }
        self.update_health_gauge();
    }

    pub fn update_health_gauge(&self) {
        let now = Instant::now();
        let admit = self.health.admit(now);
        let level = if self.health.is_ejected(now) || admit == Admit::Trial {
            HealthLevel::Ejected
        } else if admit == Admit::Open {
            HealthLevel::Serving
        } else {
            HealthLevel::Down
        };
        self.metrics
            .set_worker_health(&self.model, &self.url, level);
    }
}

/// The pool's workers. Membership is copy-on-write: readers clone the `Arc` and never hold the
/// lock while they work; only discovery writes.
#[derive(Debug)]
pub struct Members {
    pub model: String,
    pub settings: PoolArgs,
    workers: RwLock<Arc<Vec<Arc<Worker>>>>,
    /// Round-robin turn.
    turn: AtomicU64,
    /// Wakes the queue actor when capacity may have appeared (lease dropped, worker up).
    pub freed: Arc<Notify>,
}

/// The queue's view of one request, for choosing a worker.
#[derive(Debug, Clone, Copy)]
pub struct RouteInfo {
    pub tokens: u64,
    pub affinity: Option<u64>,
    /// A batch line: admitted only into its share of a worker's caps.
    pub bulk: bool,
}

impl Members {
    pub fn new(model: String, settings: PoolArgs) -> Members {
        Members {
            model,
            settings,
            workers: RwLock::new(Arc::new(Vec::new())),
            turn: AtomicU64::new(0),
            freed: Arc::new(Notify::new()),
        }
    }

    pub fn list(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the member list (discovery). Workers no longer listed should already be draining.
    pub fn set(&self, workers: Vec<Arc<Worker>>) {
        *self.workers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(workers);
        self.freed.notify_one();
    }

    /// The longest context every worker that reported one accepts (the smallest reported
    /// `max_model_len`: a request may go to any of them), or None when none reported.
    pub fn max_model_len(&self) -> Option<u64> {
        self.list().iter().filter_map(|w| w.max_model_len()).min()
    }

    /// At least one worker may take requests now (for `/ready`).
    pub fn any_reachable(&self) -> bool {
        let now = Instant::now();
        self.list().iter().any(|w| w.is_reachable(now))
    }

    /// How many workers may take requests now (for `/ready`'s per-pool detail).
    pub fn reachable_count(&self) -> usize {
        let now = Instant::now();
        self.list().iter().filter(|w| w.is_reachable(now)).count()
    }

    /// Feed one request's outcome on `worker` into its health. `request` is the hash of the
    /// request's body: request failures ([`Fault::Request`]) count only across distinct
    /// requests, and eject only a worker that fails far more than its peers (outlier
    /// detection; `health` has the rule and its constants).
    pub fn report(&self, worker: &Worker, fault: Fault, request: u64) {
        if fault != Fault::Request {
            return worker.record_outcome(fault);
        }
        let now = Instant::now();
        let (transition, recent) = worker.health.record_request_failure(now, request);
        if transition != Transition::None {
            return worker.log_transition(transition, "request");
        }
        if recent.is_suspect() && !self.peers_fail_too(worker, now) {
            tracing::warn!(worker = %worker.url, model = %self.model, answers = recent.answers,
                failures = recent.failures, distinct = recent.distinct_failures,
                "worker fails most distinct requests while its peers do not");
            worker.log_transition(worker.health.eject(now), "failure_rate");
        }
    }

    /// Whether the worker's peers say the failures come from the traffic, not from the worker:
    /// they fail often too, or they have not answered enough yet to tell (then wait and see).
    /// A worker with no peers has only its own answers to go by.
    fn peers_fail_too(&self, worker: &Worker, now: Instant) -> bool {
        let (mut peers, mut answers, mut failures) = (0usize, 0usize, 0usize);
        for peer in self.list().iter() {
            if std::ptr::eq(peer.as_ref(), worker) || peer.draining.load(Ordering::Relaxed) {
                continue;
            }
            let r = peer.health.recent_answers(now);
            peers += 1;
            answers += r.answers;
            failures += r.failures;
        }
        if peers == 0 {
            return false;
        }
        answers < health::OUTLIER_MIN_DISTINCT
            || failures as f64 / answers as f64 >= health::OUTLIER_PEER_RATE
    }

    /// Every worker is known to be down (not merely busy or still starting): fail fast.
    pub fn all_down(&self) -> bool {
        let now = Instant::now();
        self.list().iter().all(|w| {
            w.draining.load(Ordering::Relaxed) || w.health.is_down() || w.health.is_ejected(now)
        })
    }

    /// Pick a worker with room for this request, preferring ones not in `avoid` (workers this
    /// request already failed on). Returns the worker and whether it is a half-open trial.
    pub fn choose(&self, route: RouteInfo, avoid: &[String]) -> Option<(Arc<Worker>, bool)> {
        let workers = self.list();
        let now = Instant::now();
        let s = &self.settings;
        let mut snaps: Vec<WorkerSnapshot> = Vec::with_capacity(workers.len());
        let mut trials: Vec<bool> = Vec::with_capacity(workers.len());
        for (index, w) in workers.iter().enumerate() {
            let admit = if w.draining.load(Ordering::Relaxed) {
                Admit::Closed
            } else {
                w.health.admit(now)
            };
            snaps.push(WorkerSnapshot {
                index,
                key: w.key,
                in_flight: w.in_flight(),
                tokens_in_flight: w.load.tokens.load(Ordering::Relaxed),
                available: admit != Admit::Closed,
                has_room: w.has_room(s, route.tokens, route.bulk),
            });
            trials.push(admit == Admit::Trial);
        }
        let pick = |snaps: &[WorkerSnapshot]| match s.policy {
            PolicyKind::LeastOutstanding => policy::least_outstanding(snaps),
            PolicyKind::PowerOfTwo => {
                policy::power_of_two(snaps, fastrand::u64(..), fastrand::u64(..))
            }
            PolicyKind::RoundRobin => {
                policy::round_robin(snaps, self.turn.fetch_add(1, Ordering::Relaxed))
            }
            PolicyKind::Affinity => policy::affinity(snaps, route.affinity),
        };
        // Only a retried request has workers to avoid; the first try picks from all at once.
        let index = if avoid.is_empty() {
            pick(&snaps)?
        } else {
            let preferred: Vec<WorkerSnapshot> = snaps
                .iter()
                .copied()
                .filter(|sn| !avoid.iter().any(|a| *a == workers[sn.index].url))
                .collect();
            pick(&preferred).or_else(|| pick(&snaps))?
        };
        let trial = trials[index];
        if trial {
            workers[index].health.start_trial();
        }
        Some((workers[index].clone(), trial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, policy: PolicyKind) -> Members {
        let settings = PoolArgs {
            policy,
            max_in_flight: 2,
            ..PoolArgs::default()
        };
        let m = Members::new("caprl".into(), settings.clone());
        let workers = (0..n)
            .map(|i| {
                let w = Worker::new(
                    format!("http://127.0.0.1:{}", 9000 + i),
                    "caprl".into(),
                    Backend::http(format!("http://127.0.0.1:{}", 9000 + i)),
                    HealthPolicy::from(&settings),
                    Metrics::new(),
                );
                w.health.record_probe(true);
                Arc::new(w)
            })
            .collect();
        m.set(workers);
        m
    }

    #[test]
    fn leases_fill_workers_up_to_their_cap() {
        let m = members(2, PolicyKind::LeastOutstanding);
        let route = RouteInfo {
            tokens: 10,
            affinity: None,
            bulk: false,
        };
        let mut leases = Vec::new();
        for _ in 0..4 {
            let (w, trial) = m.choose(route, &[]).expect("room");
            leases.push(Lease::take(w, 10, trial, m.freed.clone()));
        }
        assert!(
            m.choose(route, &[]).is_none(),
            "both workers at max_in_flight"
        );
        let counts: Vec<u32> = m.list().iter().map(|w| w.in_flight()).collect();
        assert_eq!(counts, vec![2, 2]);
        leases.pop();
        assert!(m.choose(route, &[]).is_some(), "a dropped lease frees room");
        drop(leases);
        assert!(m
            .list()
            .iter()
            .all(|w| w.in_flight() == 0 && w.load.tokens.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn room_is_the_request_and_token_caps_but_a_big_request_runs_alone() {
        let settings = PoolArgs {
            max_in_flight: 2,
            max_tokens_in_flight: 100,
            ..PoolArgs::default()
        };
        let m = members(1, PolicyKind::LeastOutstanding);
        let w = m.list()[0].clone();
        assert!(
            w.has_room(&settings, 1_000, false),
            "idle: even past the token cap"
        );
        let first = Lease::take(w.clone(), 60, false, m.freed.clone());
        assert!(w.has_room(&settings, 40, false));
        assert!(!w.has_room(&settings, 41, false), "60 + 41 tokens > 100");
        let second = Lease::take(w.clone(), 1, false, m.freed.clone());
        assert!(!w.has_room(&settings, 1, false), "two requests in flight");
        drop((first, second));
        assert!(w.has_room(&settings, 100, false));
    }

    #[test]
    fn a_bulk_request_sees_only_its_share_of_the_caps() {
        let settings = PoolArgs {
            max_in_flight: 4,
            max_tokens_in_flight: 1_000,
            batch_share: 0.5,
            ..PoolArgs::default()
        };
        let m = members(1, PolicyKind::LeastOutstanding);
        let w = m.list()[0].clone();
        let first = Lease::take(w.clone(), 100, false, m.freed.clone());
        assert!(w.has_room(&settings, 400, true));
        assert!(!w.has_room(&settings, 401, true), "over half the token cap");
        assert!(
            w.has_room(&settings, 401, false),
            "interactive has the whole cap"
        );
        let leases = (first, Lease::take(w.clone(), 1, false, m.freed.clone()));
        assert!(
            !w.has_room(&settings, 1, true),
            "two of four is the bulk share"
        );
        assert!(
            w.has_room(&settings, 1, false),
            "interactive still has room"
        );
        drop(leases);
        let none = PoolArgs {
            batch_share: 0.0,
            ..settings
        };
        assert!(
            w.has_room(&none, 1, true),
            "an idle worker takes one bulk request"
        );
    }

    #[test]
    fn reachable_leaves_out_draining_and_down_workers() {
        let m = members(3, PolicyKind::LeastOutstanding);
        assert_eq!(m.reachable_count(), 3);
        m.list()[0].draining.store(true, Ordering::Relaxed);
        m.list()[1].health.record_probe(false);
        m.list()[1].health.record_probe(false);
        assert_eq!(m.reachable_count(), 1);
        assert!(m.any_reachable());
        m.list()[2].draining.store(true, Ordering::Relaxed);
        assert_eq!(m.reachable_count(), 0);
        assert!(!m.any_reachable());
    }

    #[test]
    fn avoid_is_a_preference() {
        let m = members(2, PolicyKind::LeastOutstanding);
        let route = RouteInfo {
            tokens: 1,
            affinity: None,
            bulk: false,
        };
        let first = m.list()[0].url.clone();
        let (w, _) = m.choose(route, std::slice::from_ref(&first)).expect("some");
        assert_ne!(w.url, first);
        let both = [first.clone(), m.list()[1].url.clone()];
        assert!(
            m.choose(route, &both).is_some(),
            "falls back to an avoided worker"
        );
    }
}
