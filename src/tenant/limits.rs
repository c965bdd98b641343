//! One key's limits on this replica: requests per minute (governor's GCRA), tokens per minute
//! (a bucket that can be paid back), concurrent requests (a counter), and the `x-ratelimit-*`
//! headers that tell the client where it stands.
//!
//! Tokens are charged at admission from the estimate (prompt text, visual tokens, `max_tokens`
//! × `n`) and settled when the request finishes: the part of the estimate the worker's usage
//! says was not used goes back, a larger use is taken (the bucket may go below zero, and the
//! next request waits until it has refilled). governor has no way to give cells back, which is
//! why this bucket is our own; requests per minute are never given back and use governor.

use super::keys::Limits;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use axum::http::{HeaderMap, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Gcra = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// The state of one key's limits. Kept across reloads while the key's limits are unchanged;
/// the concurrency count is kept across any reload.
pub struct Limiter {
    name: String,
    limits: Limits,
    requests: Option<Gcra>,
    tokens: Option<Mutex<TokenBucket>>,
    concurrent: Arc<AtomicU32>,
    in_flight: prometheus::IntGauge,
    metrics: Metrics,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Where the key stood on requests after this one was counted: the `x-ratelimit-*-requests`
/// headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestsLeft {
    pub limit: u32,
    pub remaining: u32,
    /// Until the whole minute's allowance is back.
    pub reset: Duration,
}

impl Limiter {
    /// The limiter of the key `name`. `limits` are this replica's share; `concurrent` carries
    /// the count of a key reloaded with new limits.
    pub fn new(
        name: &str,
        limits: Limits,
        concurrent: Option<Arc<AtomicU32>>,
        metrics: &Metrics,
    ) -> Limiter {
        Limiter {
            name: name.to_string(),
            in_flight: metrics.key_in_flight(name),
            metrics: metrics.clone(),
            limits,
            requests: limits.requests_per_minute.map(|n| {
                let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
                RateLimiter::direct(Quota::per_minute(n)).with_middleware()
            }),
            tokens: limits
                .tokens_per_minute
                .map(|n| Mutex::new(TokenBucket::new(n, Instant::now()))),
            concurrent: concurrent.unwrap_or_default(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn concurrent(&self) -> Arc<AtomicU32> {
        self.concurrent.clone()
    }

    /// Count one request against requests per minute: where the key stands after it (`None`:
    /// no such limit), and the refusal when it is over.
    pub fn request(&self) -> (Option<RequestsLeft>, Result<(), GatewayError>) {
        let Some(gcra) = &self.requests else {
            return (None, Ok(()));
        };
        let limit = self.limits.requests_per_minute.unwrap_or(1);
        match gcra.check() {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let per = snapshot.quota().replenish_interval();
                let left = RequestsLeft {
                    limit,
                    remaining,
                    reset: per * limit.saturating_sub(remaining),
                };
                (Some(left), Ok(()))
            }
            Err(not_until) => {
                self.metrics.key_limited(&self.name, "requests");
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let per = not_until.quota().replenish_interval();
                let left = RequestsLeft {
                    limit,
                    remaining: 0,
                    reset: wait + per * limit.saturating_sub(1),
                };
                let err = GatewayError::RateLimited {
                    message: format!(
                        "Rate limit reached on requests per minute (RPM): limit {limit}. \
                         Please try again in {}.",
                        go_duration(wait)
                    ),
                    limit: "requests",
                    retry_after: Some(wait),
                };
                (Some(left), Err(err))
            }
        }
    }

    /// Admit a validated request costing an estimated `tokens`: a concurrency slot and the
    /// tokens. Released (and settled) by the returned [`Charge`].
    pub fn admit(self: &Arc<Self>, tokens: u64) -> Result<Charge, GatewayError> {
        if let Some(max) = self.limits.max_concurrent {
            let before = self.concurrent.fetch_add(1, Ordering::AcqRel);
            if before >= max {
                self.concurrent.fetch_sub(1, Ordering::AcqRel);
                self.metrics.key_limited(&self.name, "concurrency");
                return Err(GatewayError::RateLimited {
                    message: format!(
                        "Too many concurrent requests for this key: limit {max}. Please try \
                         again when one has finished."
                    ),
                    limit: "requests",
                    retry_after: Some(Duration::from_secs(1)),
                });
            }
        } else {
            self.concurrent.fetch_add(1, Ordering::AcqRel);
        }
        // From here a Charge exists: any return releases the slot it took.
        self.in_flight.inc();
        let mut charge = Charge {
            limiter: self.clone(),
            tokens: 0,
            settled: false,
        };
        if let Some(bucket) = &self.tokens {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = b.take(tokens, Instant::now()) {
                self.metrics.key_limited(&self.name, "tokens");
                return Err(e);
            }
            charge.tokens = tokens;
        }
        Ok(charge)
    }

    /// The `x-ratelimit-*-tokens` figures now: (limit, remaining, reset).
    pub fn tokens_left(&self) -> Option<(u64, u64, Duration)> {
        let bucket = self.tokens.as_ref()?;
        let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        Some((b.capacity as u64, b.remaining(now), b.reset_in(now)))
    }

    /// Set OpenAI's `x-ratelimit-*` headers for the limits this key has.
    pub fn write_headers(&self, requests: Option<RequestsLeft>, headers: &mut HeaderMap) {
        if let Some(r) = requests {
            headers.insert("x-ratelimit-limit-requests", HeaderValue::from(r.limit));
            headers.insert(
                "x-ratelimit-remaining-requests",
                HeaderValue::from(r.remaining),
            );
            header_duration(headers, "x-ratelimit-reset-requests", r.reset);
        }
        if let Some((limit, remaining, reset)) = self.tokens_left() {
            headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(limit));
            headers.insert("x-ratelimit-remaining-tokens", HeaderValue::from(remaining));
            header_duration(headers, "x-ratelimit-reset-tokens", reset);
        }
    }
}

fn header_duration(headers: &mut HeaderMap, name: &'static str, d: Duration) {
    if let Ok(v) = HeaderValue::from_str(&go_duration(d)) {
        headers.insert(name, v);
    }
}

/// A duration the way OpenAI's reset headers write it (Go's format): `20ms`, `1.5s`, `6m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let trim = |x: f64| {
        let s = format!("{x:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let secs = d.as_secs_f64();
    if secs < 60.0 {
        return format!("{}s", trim(secs));
    }
    let minutes = d.as_secs() / 60;
    format!("{minutes}m{}s", trim(secs - (minutes * 60) as f64))
}

/// A request's hold on its key: one concurrency slot and the tokens charged. Settled with what
/// the request used when it finishes; dropped unsettled (the client left, the worker failed
/// without a usage), the estimate stays charged.
pub struct Charge {
    limiter: Arc<Limiter>,
    tokens: u64,
    settled: bool,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl Charge {
    /// The worker's usage for the request, counted under the key's name.
    pub fn count_tokens(&self, prompt: u64, completion: u64) {
        let l = &self.limiter;
        l.metrics.key_tokens(&l.name, prompt, completion);
    }

    /// The request finished having used `used` tokens: the worker's usage, or 0 when it was
    /// refused before reaching a worker.
    pub fn settle(&mut self, used: u64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(bucket) = &self.limiter.tokens {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            b.give_back(self.tokens as f64 - used as f64, Instant::now());
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.limiter.concurrent.fetch_sub(1, Ordering::AcqRel);
        self.limiter.in_flight.dec();
    }
}

/// Tokens per minute: refills continuously to `capacity` at `capacity` per minute.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(per_minute: u64, now: Instant) -> TokenBucket {
        let capacity = per_minute as f64;
        TokenBucket {
            capacity,
            per_sec: capacity / 60.0,
            level: capacity,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.level = (self.level + dt * self.per_sec).min(self.capacity);
        self.at = now;
    }

    fn take(&mut self, n: u64, now: Instant) -> Result<(), GatewayError> {
        self.refill(now);
        let n = n as f64;
        if n > self.capacity {
            return Err(GatewayError::RateLimited {
                message: format!(
                    "Request too large for tokens per minute (TPM): limit {}, requested {n} \
                     (prompt plus max_tokens × n). Lower max_tokens or send a smaller prompt.",
                    self.capacity
                ),
                limit: "tokens",
                retry_after: None,
            });
        }
        if self.level < n {
            let wait = Duration::from_secs_f64((n - self.level) / self.per_sec);
            return Err(GatewayError::RateLimited {
                message: format!(
                    "Rate limit reached on tokens per minute (TPM): limit {}, remaining {}, \
                     requested {n}. Please try again in {}.",
                    self.capacity,
                    self.level.max(0.0).floor(),
                    go_duration(wait)
                ),
                limit: "tokens",
                retry_after: Some(wait),
            });
        }
        self.level -= n;
        Ok(())
    }

    /// Return `n` tokens (negative: take more); never above capacity, possibly below zero.
    fn give_back(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }

    fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.level.max(0.0).floor() as u64
    }

    fn reset_in(&mut self, now: Instant) -> Duration {
        self.refill(now);
        Duration::from_secs_f64(((self.capacity - self.level) / self.per_sec).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limits: Limits) -> Limiter {
        Limiter::new("t", limits, None, &Metrics::new())
    }

    #[test]
    fn the_bucket_refills_at_its_rate_and_pays_back_what_was_not_used() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(600, t0); // 10 per second
        b.take(600, t0).expect("a full bucket holds its capacity");
        let err = b.take(10, t0).expect_err("empty");
        assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(b.remaining(t0 + Duration::from_millis(500)), 5);
        assert_eq!(
            b.reset_in(t0 + Duration::from_millis(500)),
            Duration::from_secs_f64(59.5)
        );
        b.take(5, t0 + Duration::from_millis(500))
            .expect("refilled");
        // The request used 100 of the 600 charged: 500 come back, capped at capacity.
        b.give_back(500.0, t0 + Duration::from_millis(500));
        assert_eq!(b.remaining(t0 + Duration::from_millis(500)), 500);
        // A request that used more than it was charged leaves a debt that must refill first.
        b.give_back(-1000.0, t0 + Duration::from_millis(500));
        assert_eq!(b.remaining(t0 + Duration::from_millis(500)), 0);
        let err = b.take(1, t0 + Duration::from_secs(1)).expect_err("in debt");
        assert!(err.retry_after().expect("retry") > Duration::from_secs(44));
        assert_eq!(b.remaining(t0 + Duration::from_secs(200)), 600);
    }

    #[test]
    fn a_request_larger_than_the_limit_is_told_it_never_fits() {
        let mut b = TokenBucket::new(100, Instant::now());
        let err = b.take(101, Instant::now()).expect_err("too large");
        assert_eq!(err.retry_after(), None);
        assert!(err.to_string().contains("Request too large"), "{err}");
    }

    #[test]
    fn concurrency_slots_come_back_when_the_charge_drops() {
        let l = Arc::new(limiter(Limits {
            max_concurrent: Some(2),
            ..Limits::default()
        }));
        let a = l.admit(1).expect("first");
        let b = l.admit(1).expect("second");
        let err = l.admit(1).expect_err("third is over the limit");
        assert_eq!(err.code(), "rate_limit_exceeded");
        drop(a);
        let c = l.admit(1).expect("a slot came back");
        drop((b, c));
        assert_eq!(l.concurrent.load(Ordering::Acquire), 0);
    }

    #[test]
    fn a_refused_token_charge_gives_its_concurrency_slot_back() {
        let l = Arc::new(limiter(Limits {
            tokens_per_minute: Some(10),
            max_concurrent: Some(1),
            ..Limits::default()
        }));
        l.admit(11).expect_err("too many tokens");
        assert_eq!(l.concurrent.load(Ordering::Acquire), 0);
        let mut c = l.admit(10).expect("fits");
        c.settle(4);
        drop(c);
        assert_eq!(l.tokens_left().map(|t| t.1), Some(6));
    }

    #[test]
    fn requests_count_down_then_refuse_with_the_wait() {
        let l = limiter(Limits {
            requests_per_minute: Some(3),
            ..Limits::default()
        });
        let left: Vec<u32> = (0..3)
            .map(|_| {
                let (left, allowed) = l.request();
                allowed.expect("allowed");
                left.expect("limited").remaining
            })
            .collect();
        assert_eq!(left, [2, 1, 0]);
        let (left, refused) = l.request();
        let left = left.expect("limited");
        assert_eq!(left.remaining, 0);
        assert!(left.reset > Duration::from_secs(59), "{:?}", left.reset);
        let err = refused.expect_err("fourth in a minute");
        let wait = err.retry_after().expect("a wait");
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
    }

    #[test]
    fn durations_are_written_as_openai_writes_them() {
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(20)), "20s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(61_250)), "1m1.25s");
    }
}
