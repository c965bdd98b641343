//! Worker health: what active probes (`GET /health` every few seconds) and passive outcomes
//! (each forwarded request) say, combined into one answer: may this worker get a request now?
//!
//! - Probes: `unhealthy_threshold` failures in a row mark a worker down, `healthy_threshold`
//!   passes bring it back. A worker starts `Unknown` and counts as down until its first pass.
//! - Passive, gateway failures: `eject_after_failures` connection errors, timeouts, 502, 503 or
//!   504 in a row (`worker::Fault::Worker`) eject it for a backoff that doubles with each
//!   ejection in a row (up to a maximum). When the backoff ends the worker is half-open: one
//!   trial request; success closes it, failure ejects it again. A client's 4xx is a success
//!   here: it says nothing bad about the worker.
//! - Passive, request failures: a 500 or 501 from a worker that answers (`Fault::Request`) is
//!   about the request (an image URL the worker could not fetch, a data URL it cannot read),
//!   so it never counts towards the run above: one client repeating a poison request must not
//!   eject healthy workers. A worker that fails *everything* is caught by its failure rate
//!   instead (outlier detection): over its recent answers ([`OUTLIER_WINDOW`], at most
//!   [`OUTLIER_SAMPLES`]), at least [`OUTLIER_MIN_DISTINCT`] *distinct* requests failed and
//!   they are at least [`OUTLIER_FAILURE_RATE`] of its answers, while its peers, having
//!   answered enough to judge, fail far less (`Members::report` makes that comparison). A
//!   worker alone in its pool has only its own answers: there a client that sends mostly
//!   distinct failing requests, and little else reaches the worker, can still eject it.
//!
//! The state sits behind a `std::sync::Mutex`: held for a few field updates, never across an
//! await.

use crate::config::PoolArgs;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back outlier detection looks: long enough to see a handful of distinct requests on a
/// quiet worker, short enough that an old bad minute is forgotten.
pub const OUTLIER_WINDOW: Duration = Duration::from_secs(60);
/// Answers remembered per worker (a ring): the rate is over at most this many.
pub const OUTLIER_SAMPLES: usize = 32;
/// Distinct failed requests (by body hash) needed before a worker can be an outlier: one
/// client sending the same poison request again and again is one request, however often.
pub const OUTLIER_MIN_DISTINCT: usize = 5;
/// Share of a worker's recent answers that must be request failures for it to be an outlier:
/// a worker that serves most requests well is not broken, whatever some requests do to it.
pub const OUTLIER_FAILURE_RATE: f64 = 0.8;
/// When the worker's peers fail at least this share of their answers too, the failures come
/// from the traffic, not from the worker, and nobody is ejected.
pub const OUTLIER_PEER_RATE: f64 = 0.4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeState {
    Unknown,
    Up,
    Down,
}

#[derive(Debug, Clone, Copy)]
pub struct HealthPolicy {
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    pub eject_after_failures: u32,
    pub eject_base: Duration,
    pub eject_max: Duration,
}

impl From<&PoolArgs> for HealthPolicy {
    fn from(p: &PoolArgs) -> Self {
        HealthPolicy {
            unhealthy_threshold: p.unhealthy_threshold,
            healthy_threshold: p.healthy_threshold,
            eject_after_failures: p.eject_after_failures,
            eject_base: Duration::from_secs_f64(p.eject_base_secs),
            eject_max: Duration::from_secs_f64(p.eject_max_secs),
        }
    }
}

#[derive(Debug)]
struct State {
    probe: ProbeState,
    probe_passes: u32,
    probe_failures: u32,
    /// Request failures in a row.
    failures: u32,
    /// Ejections in a row, for the backoff.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// The one half-open trial request is out.
    trial_out: bool,
    /// The worker's /v1/models lists the pool's model (false: it serves something else).
    model_ok: bool,
    /// Its recent answers, newest last: `None` served (any status below 500), `Some(hash)` a
    /// request failure (`Fault::Request`) of the request with that body hash.
    recent: VecDeque<(Instant, Option<u64>)>,
}

/// A worker's recent answers, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecentAnswers {
    pub answers: usize,
    pub failures: usize,
    /// Failures of distinct requests.
    pub distinct_failures: usize,
}

impl RecentAnswers {
    pub fn failure_rate(&self) -> f64 {
        if self.answers == 0 {
            0.0
        } else {
            self.failures as f64 / self.answers as f64
        }
    }

    /// Fails enough distinct requests, and most of what it answers, to be suspect on its own.
    pub fn is_suspect(&self) -> bool {
        self.distinct_failures >= OUTLIER_MIN_DISTINCT
            && self.failure_rate() >= OUTLIER_FAILURE_RATE
    }
}

/// What a worker may take right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Any number of requests.
    Open,
    /// Exactly one trial request (half-open).
    Trial,
    /// Nothing.
    Closed,
}

/// What happened to a state, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    WentUp,
    WentDown,
    Ejected(Duration),
    Restored,
}

#[derive(Debug)]
pub struct Health {
    policy: HealthPolicy,
    state: Mutex<State>,
}

impl Health {
    pub fn new(policy: HealthPolicy) -> Health {
        Health {
            policy,
            state: Mutex::new(State {
                probe: ProbeState::Unknown,
                probe_passes: 0,
                probe_failures: 0,
                failures: 0,
                ejections: 0,
                ejected_until: None,
                trial_out: false,
                model_ok: true,
                recent: VecDeque::with_capacity(OUTLIER_SAMPLES),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(&self, now: Instant) -> Admit {
        let s = self.lock();
        if s.probe != ProbeState::Up || !s.model_ok {
            return Admit::Closed;
        }
        match s.ejected_until {
            None => Admit::Open,
            Some(until) if now < until => Admit::Closed,
            Some(_) if s.trial_out => Admit::Closed,
            Some(_) => Admit::Trial,
        }
    }

    /// Counts for `/ready`: the probe says it is up and it is not ejected right now.
    pub fn is_reachable(&self, now: Instant) -> bool {
        self.admit(now) != Admit::Closed || self.lock().trial_out
    }

    /// Down by probe or by model check: not merely busy.
    pub fn is_down(&self) -> bool {
        let s = self.lock();
        s.probe == ProbeState::Down || !s.model_ok
    }

    pub fn probe_state(&self) -> ProbeState {
        self.lock().probe
    }

    pub fn is_ejected(&self, now: Instant) -> bool {
        matches!(self.lock().ejected_until, Some(until) if now < until)
    }

    pub fn set_model_ok(&self, ok: bool) {
        self.lock().model_ok = ok;
    }

    pub fn start_trial(&self) {
        self.lock().trial_out = true;
    }

    pub fn trial_finished(&self) {
        self.lock().trial_out = false;
    }

    pub fn record_probe(&self, passed: bool) -> Transition {
        let mut s = self.lock();
        let p = &self.policy;
        if passed {
            s.probe_failures = 0;
            s.probe_passes += 1;
            if s.probe != ProbeState::Up && s.probe_passes >= p.healthy_threshold {
                s.probe = ProbeState::Up;
                return Transition::WentUp;
            }
        } else {
            s.probe_passes = 0;
            s.probe_failures += 1;
            // An unknown worker that fails its first probe is down at once.
            if s.probe == ProbeState::Unknown
                || (s.probe == ProbeState::Up && s.probe_failures >= p.unhealthy_threshold)
            {
                s.probe = ProbeState::Down;
                return Transition::WentDown;
            }
        }
        Transition::None
    }

    /// A forwarded request went through (any status below 500).
    pub fn record_success(&self) -> Transition {
        let mut s = self.lock();
        remember(&mut s, Instant::now(), None);
        s.failures = 0;
        if s.ejected_until.take().is_some() {
            s.ejections = 0;
            return Transition::Restored;
        }
        s.ejections = 0;
        Transition::None
    }

    /// A forwarded request failed because of the worker (connect error, timeout, 502/503/504).
    pub fn record_failure(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        s.failures += 1;
        let half_open = matches!(s.ejected_until, Some(until) if now >= until);
        if half_open || s.failures >= self.policy.eject_after_failures {
            return self.eject_locked(&mut s, now);
        }
        Transition::None
    }

    /// The worker answered 500/501 to the request with body hash `request`: remembered for the
    /// failure rate, never counted towards the run of gateway failures. A half-open trial that
    /// fails this way still ejects again (the trial is the worker's one chance to show it is
    /// well). Returns what the worker's recent answers now look like.
    pub fn record_request_failure(
        &self,
        now: Instant,
        request: u64,
    ) -> (Transition, RecentAnswers) {
        let mut s = self.lock();
        remember(&mut s, now, Some(request));
        let half_open = matches!(s.ejected_until, Some(until) if now >= until);
        if half_open {
            return (self.eject_locked(&mut s, now), RecentAnswers::default());
        }
        (Transition::None, recent(&s, now))
    }

    /// What the worker's recent answers look like (for comparing with its peers).
    pub fn recent_answers(&self, now: Instant) -> RecentAnswers {
        recent(&self.lock(), now)
    }

    /// Take the worker out of rotation now (outlier detection decided it).
    pub fn eject(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        self.eject_locked(&mut s, now)
    }

    fn eject_locked(&self, s: &mut State, now: Instant) -> Transition {
        let backoff = self
            .policy
            .eject_base
            .saturating_mul(1u32 << s.ejections.min(16))
            .min(self.policy.eject_max);
        s.ejections += 1;
        s.failures = 0;
        // After the backoff, the half-open trial decides afresh: old answers say nothing more.
        s.recent.clear();
        s.ejected_until = Some(now + backoff);
        Transition::Ejected(backoff)
    }
}

fn remember(s: &mut State, now: Instant, answer: Option<u64>) {
    if s.recent.len() == OUTLIER_SAMPLES {
        s.recent.pop_front();
    }
    s.recent.push_back((now, answer));
}

fn recent(s: &State, now: Instant) -> RecentAnswers {
    let mut out = RecentAnswers::default();
    let mut seen: Vec<u64> = Vec::with_capacity(OUTLIER_MIN_DISTINCT);
    for (at, answer) in s.recent.iter().rev() {
        if now.saturating_duration_since(*at) > OUTLIER_WINDOW {
            break;
        }
        out.answers += 1;
        if let Some(hash) = answer {
            out.failures += 1;
            if !seen.contains(hash) {
                seen.push(*hash);
            }
        }
    }
    out.distinct_failures = seen.len();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(HealthPolicy {
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            eject_after_failures: 3,
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(4),
        })
    }

    #[test]
    fn starts_closed_until_a_probe_passes() {
        let h = health();
        let now = Instant::now();
        assert_eq!(h.admit(now), Admit::Closed);
        assert_eq!(h.record_probe(true), Transition::WentUp);
        assert_eq!(h.admit(now), Admit::Open);
        assert_eq!(h.record_probe(false), Transition::None);
        assert_eq!(h.record_probe(false), Transition::WentDown);
        assert_eq!(h.admit(now), Admit::Closed);
        assert!(h.is_down());
    }

    #[test]
    fn ejects_backs_off_and_restores_through_a_trial() {
        let h = health();
        h.record_probe(true);
        let t0 = Instant::now();
        assert_eq!(h.record_failure(t0), Transition::None);
        assert_eq!(h.record_failure(t0), Transition::None);
        assert_eq!(
            h.record_failure(t0),
            Transition::Ejected(Duration::from_secs(1))
        );
        assert_eq!(h.admit(t0), Admit::Closed);
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(h.admit(t1), Admit::Trial);
        h.start_trial();
        assert_eq!(h.admit(t1), Admit::Closed, "one trial at a time");
        // The trial fails: ejected again for twice as long.
        assert_eq!(
            h.record_failure(t1),
            Transition::Ejected(Duration::from_secs(2))
        );
        h.trial_finished();
        let t2 = t1 + Duration::from_millis(2100);
        assert_eq!(h.admit(t2), Admit::Trial);
        assert_eq!(h.record_success(), Transition::Restored);
        assert_eq!(h.admit(t2), Admit::Open);
    }

    #[test]
    fn backoff_is_capped() {
        let h = health();
        h.record_probe(true);
        let mut now = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..3 {
            h.record_failure(now);
        }
        for _ in 0..6 {
            now += Duration::from_secs(10);
            if let Transition::Ejected(d) = h.record_failure(now) {
                last = d;
            }
        }
        assert_eq!(last, Duration::from_secs(4));
    }

    #[test]
    fn request_failures_never_eject_by_themselves() {
        let h = health();
        h.record_probe(true);
        let now = Instant::now();
        // One poison request, repeated: one distinct failure however often.
        for _ in 0..OUTLIER_SAMPLES * 2 {
            let (t, recent) = h.record_request_failure(now, 42);
            assert_eq!(t, Transition::None);
            assert_eq!(recent.distinct_failures, 1);
            assert!(!recent.is_suspect());
        }
        assert_eq!(h.admit(now), Admit::Open);
    }

    #[test]
    fn a_worker_failing_distinct_requests_is_suspect_unless_it_serves_most() {
        let h = health();
        h.record_probe(true);
        let now = Instant::now();
        let mut last = RecentAnswers::default();
        for key in 0..OUTLIER_MIN_DISTINCT as u64 {
            last = h.record_request_failure(now, key).1;
        }
        assert!(last.is_suspect(), "{last:?}");
        let served = Health::new(health().policy);
        served.record_probe(true);
        for key in 0..OUTLIER_MIN_DISTINCT as u64 {
            for _ in 0..4 {
                served.record_success();
            }
            last = served.record_request_failure(now, key).1;
        }
        assert!(!last.is_suspect(), "serves 80 %: {last:?}");
    }

    #[test]
    fn old_answers_are_forgotten() {
        let h = health();
        h.record_probe(true);
        let t0 = Instant::now();
        for key in 0..OUTLIER_MIN_DISTINCT as u64 {
            h.record_request_failure(t0, key);
        }
        let later = t0 + OUTLIER_WINDOW + Duration::from_secs(1);
        assert_eq!(h.recent_answers(later), RecentAnswers::default());
    }

    #[test]
    fn a_failed_trial_ejects_again_whatever_the_cause() {
        let h = health();
        h.record_probe(true);
        let t0 = Instant::now();
        assert_eq!(h.eject(t0), Transition::Ejected(Duration::from_secs(1)));
        let t1 = t0 + Duration::from_millis(1100);
        assert_eq!(h.admit(t1), Admit::Trial);
        assert_eq!(
            h.record_request_failure(t1, 7).0,
            Transition::Ejected(Duration::from_secs(2))
        );
    }
}
