//! Image affinity: requests whose first image has the same content hash go to the same worker,
//! so vLLM's prefix and encoder caches are reused when one image is asked about many times.
//!
//! The owner is chosen by rendezvous (highest-random-weight) hashing over the *available*
//! workers, busy or not: a change of membership moves only the keys of the worker that came or
//! went. When the owner has no room the request goes to the least outstanding worker instead;
//! requests without an image always do.

use super::{least_outstanding, WorkerSnapshot};

pub fn affinity(workers: &[WorkerSnapshot], key: Option<u64>) -> Option<usize> {
    let Some(key) = key else {
        return least_outstanding(workers);
    };
    let owner = workers
        .iter()
        .filter(|w| w.available)
        .max_by_key(|w| (mix(key ^ w.key), w.index))?;
    if owner.has_room {
        Some(owner.index)
    } else {
        least_outstanding(workers)
    }
}

/// SplitMix64's finaliser: a good 64-bit mix, so weights are independent per worker.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Vec<WorkerSnapshot> {
        (0..n)
            .map(|i| WorkerSnapshot {
                index: i,
                key: mix(i as u64 + 1000),
                in_flight: 0,
                tokens_in_flight: 0,
                available: true,
                has_room: true,
            })
            .collect()
    }

    fn key(i: u32) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes())
    }

    #[test]
    fn same_key_same_worker() {
        let ws = pool(4);
        let k = key(7);
        let first = affinity(&ws, Some(k));
        for _ in 0..10 {
            assert_eq!(affinity(&ws, Some(k)), first);
        }
    }

    #[test]
    fn keys_spread_over_workers() {
        let ws = pool(4);
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[affinity(&ws, Some(key(i))).expect("some")] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn membership_change_moves_few_keys() {
        let ws = pool(4);
        let mut fewer = ws.clone();
        fewer[2].available = false;
        let mut moved = 0;
        for i in 0..4000 {
            let before = affinity(&ws, Some(key(i))).expect("some");
            let after = affinity(&fewer, Some(key(i))).expect("some");
            if before != after {
                moved += 1;
                assert_eq!(before, 2, "only the removed worker's keys move");
            }
        }
        assert!(moved > 800 && moved < 1200, "{moved}");
    }

    #[test]
    fn saturated_owner_falls_back_to_least_outstanding() {
        let mut ws = pool(3);
        let k = key(1);
        let owner = affinity(&ws, Some(k)).expect("some");
        ws[owner].has_room = false;
        ws[owner].in_flight = 50;
        let other = (owner + 1) % 3;
        ws[other].in_flight = 1;
        let fallback = affinity(&ws, Some(k)).expect("some");
        assert_ne!(fallback, owner);
        assert_ne!(fallback, other, "least outstanding of the rest");
        assert_eq!(affinity(&ws, None), Some(fallback));
    }
}
