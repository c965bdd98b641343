//! A lease is one request's claim on a worker's capacity. Taking it adds to the worker's
//! in-flight counts; dropping it (request done, client gone, stream ended) gives them back and
//! wakes the admission queue. Nothing decrements the counts by hand.

use super::Worker;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug)]
pub struct Lease {
    worker: Arc<Worker>,
    tokens: u64,
    /// This request is the half-open trial of an ejected worker.
    trial: bool,
    /// Wakes the queue actor when capacity comes back; `notify_one` keeps a permit if the actor
    /// is busy, so a release is never missed.
    freed: Arc<Notify>,
}

impl Lease {
    /// Only the queue actor takes leases, after checking the worker has room.
    pub(crate) fn take(worker: Arc<Worker>, tokens: u64, trial: bool, freed: Arc<Notify>) -> Lease {
        worker.load.in_flight.fetch_add(1, Ordering::Relaxed);
        worker.load.tokens.fetch_add(tokens, Ordering::Relaxed);
        worker.metrics_in_flight(1);
        Lease {
            worker,
            tokens,
            trial,
            freed,
        }
    }

    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.worker.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.worker
            .load
            .tokens
            .fetch_sub(self.tokens, Ordering::Relaxed);
        self.worker.metrics_in_flight(-1);
        if self.trial {
            self.worker.health.trial_finished();
        }
        self.freed.notify_one();
    }
}
