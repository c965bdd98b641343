//! Worker selection policies, one file each. Each is a pure function over snapshots of the
//! candidate workers (already filtered to those healthy and with room for the request, except
//! where a policy says otherwise), so each is tested without a runtime or a network.

mod affinity;
mod least_outstanding;
mod power_of_two;
mod round_robin;

pub use affinity::affinity;
pub use least_outstanding::least_outstanding;
pub use power_of_two::power_of_two;
pub use round_robin::round_robin;

/// What a policy sees of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSnapshot {
    /// Position in the pool's worker list.
    pub index: usize,
    /// A stable hash of the worker's address (for rendezvous hashing).
    pub key: u64,
    pub in_flight: u32,
    pub tokens_in_flight: u64,
    /// Healthy and not draining.
    pub available: bool,
    /// Has room for this request under its caps.
    pub has_room: bool,
}

impl WorkerSnapshot {
    pub fn eligible(&self) -> bool {
        self.available && self.has_room
    }
}
