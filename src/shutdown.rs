//! Graceful shutdown. On SIGTERM (or Ctrl-C) the gateway starts draining: `/ready` answers 503
//! so Kubernetes stops routing here, new chat requests get a clean 503, and requests already
//! admitted (in flight or queued) finish. The server stops once none is left or the grace
//! period is over, and the process exits 0.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Shared drain state: whether we are draining, and how many chat requests are running.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    /// Wakes `wait_idle` when the last request finishes.
    idle: Notify,
}

/// Held by one chat request from admission to its last byte; for streams it rides inside the
/// response body, so the count drops when the client has everything or hangs up.
#[derive(Debug)]
pub struct InFlight(Arc<Drain>);

impl Drain {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.idle.notify_waiters();
    }

    /// Count a request in, unless draining.
    pub fn enter(self: &Arc<Self>) -> Option<InFlight> {
        if self.is_draining() {
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Wait until no request is in flight, or `grace` has passed. True when idle.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler works on unix; this is a bug");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_requests_then_refuses_new_ones() {
        let drain = Arc::new(Drain::default());
        let guard = drain.enter().expect("not draining");
        drain.start();
        assert!(drain.enter().is_none());
        let d = drain.clone();
        let waiter = tokio::spawn(async move { d.wait_idle(Duration::from_secs(10)).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(guard);
        assert!(waiter.await.expect("joins"));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_grace_period() {
        let drain = Arc::new(Drain::default());
        let _guard = drain.enter().expect("not draining");
        drain.start();
        assert!(!drain.wait_idle(Duration::from_secs(5)).await);
    }
}
