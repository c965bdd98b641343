//! Least outstanding: the eligible worker with the fewest requests in flight, ties broken by
//! fewest tokens in flight, then by position. The default: it follows real load, and vLLM's
//! latency grows with the number of running sequences.

use super::WorkerSnapshot;

pub fn least_outstanding(workers: &[WorkerSnapshot]) -> Option<usize> {
    workers
        .iter()
        .filter(|w| w.eligible())
        .min_by_key(|w| (w.in_flight, w.tokens_in_flight, w.index))
        .map(|w| w.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(index: usize, in_flight: u32, tokens: u64, eligible: bool) -> WorkerSnapshot {
        WorkerSnapshot {
            index,
            key: index as u64,
            in_flight,
            tokens_in_flight: tokens,
            available: eligible,
            has_room: true,
        }
    }

    #[test]
    fn picks_the_least_loaded_eligible() {
        let ws = [
            w(0, 3, 0, true),
            w(1, 1, 900, true),
            w(2, 1, 100, true),
            w(3, 0, 0, false),
        ];
        assert_eq!(least_outstanding(&ws), Some(2));
        assert_eq!(least_outstanding(&[w(0, 0, 0, false)]), None);
        assert_eq!(least_outstanding(&[]), None);
    }
}
