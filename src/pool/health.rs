//! Worker health: what active probes (`GET /health` every few seconds) and passive outcomes
//! (each forwarded request) say, combined into one answer: may this worker get a request now?
//!
//! - Probes: `unhealthy_threshold` failures in a row mark a worker down, `healthy_threshold`
//!   passes bring it back. A worker starts `Unknown` and counts as down until its first pass.
//! - Passive: `eject_after_failures` connection errors, timeouts or 5xx in a row eject it for a
//!   backoff that doubles with each ejection in a row (up to a maximum). When the backoff ends
//!   the worker is half-open: one trial request; success closes it, failure ejects it again.
//!   A client's 4xx is a success here: it says nothing bad about the worker.
//!
//! The state sits behind a `std::sync::Mutex`: held for a few field updates, never across an
//! await.

use crate::config::PoolArgs;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        s.failures = 0;
        if s.ejected_until.take().is_some() {
            s.ejections = 0;
            return Transition::Restored;
        }
        s.ejections = 0;
        Transition::None
    }

    /// A forwarded request failed because of the worker (connect error, timeout, 5xx).
    pub fn record_failure(&self, now: Instant) -> Transition {
        let mut s = self.lock();
        s.failures += 1;
        let half_open = matches!(s.ejected_until, Some(until) if now >= until);
        if half_open || s.failures >= self.policy.eject_after_failures {
            let backoff = self
                .policy
                .eject_base
                .saturating_mul(1u32 << s.ejections.min(16))
                .min(self.policy.eject_max);
            s.ejections += 1;
            s.failures = 0;
            s.ejected_until = Some(now + backoff);
            return Transition::Ejected(backoff);
        }
        Transition::None
    }
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
}
