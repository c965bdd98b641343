//! The batching rule, a pure function: given the waiting requests a worker could take (in
//! serving order), the worker's room and the batch limits, how many go now, or how long to hold
//! them to fill a bigger batch.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BatchItem {
    pub tokens: u64,
    pub image_tokens: u64,
    pub enqueued: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_requests: usize,
    pub max_tokens: u64,
    pub max_image_tokens: u64,
    pub max_wait: Duration,
}

/// What the worker can still take.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    pub requests: usize,
    pub tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send the first `n` items (n ≥ 1) now.
    Dispatch(usize),
    /// The batch is not full and its oldest item may wait until then.
    Hold(Instant),
    /// Nothing to send.
    Empty,
}

/// Items are taken from the front while they fit every limit. The first item always goes (the
/// caller checked it fits the worker), so a request larger than a batch limit runs alone rather
/// than never.
pub fn form_batch(items: &[BatchItem], limits: &BatchLimits, room: Room, now: Instant) -> Decision {
    let Some(first) = items.first() else {
        return Decision::Empty;
    };
    let cap = limits.max_requests.min(room.requests).max(1);
    let token_cap = limits.max_tokens.min(room.tokens);
    let (mut n, mut tokens, mut image_tokens) = (1usize, first.tokens, first.image_tokens);
    for item in &items[1..] {
        if n >= cap
            || tokens + item.tokens > token_cap
            || image_tokens + item.image_tokens > limits.max_image_tokens
        {
            // Full: go now.
            return Decision::Dispatch(n);
        }
        n += 1;
        tokens += item.tokens;
        image_tokens += item.image_tokens;
    }
    // Every waiting item fits. Hold only if the batch could still grow and the oldest item has
    // time left.
    let deadline = first.enqueued + limits.max_wait;
    if n < cap && now < deadline {
        Decision::Hold(deadline)
    } else {
        Decision::Dispatch(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(now: Instant, tokens: &[u64]) -> Vec<BatchItem> {
        tokens
            .iter()
            .map(|&t| BatchItem {
                tokens: t,
                image_tokens: t / 2,
                enqueued: now,
            })
            .collect()
    }

    fn limits(max_wait_ms: u64) -> BatchLimits {
        BatchLimits {
            max_requests: 4,
            max_tokens: 1000,
            max_image_tokens: 400,
            max_wait: Duration::from_millis(max_wait_ms),
        }
    }

    const ROOM: Room = Room {
        requests: 100,
        tokens: 1_000_000,
    };

    #[test]
    fn no_wait_sends_everything_that_fits() {
        let now = Instant::now();
        assert_eq!(
            form_batch(&items(now, &[100, 100]), &limits(0), ROOM, now),
            Decision::Dispatch(2)
        );
        assert_eq!(form_batch(&[], &limits(0), ROOM, now), Decision::Empty);
    }

    #[test]
    fn stops_at_each_limit() {
        let now = Instant::now();
        // max_requests 4
        assert_eq!(
            form_batch(&items(now, &[1; 10]), &limits(50), ROOM, now),
            Decision::Dispatch(4)
        );
        // max_tokens 1000
        assert_eq!(
            form_batch(&items(now, &[500, 300, 300]), &limits(50), ROOM, now),
            Decision::Dispatch(2)
        );
        // max_image_tokens 400: 300/2 + 300/2 + 300/2 > 400
        assert_eq!(
            form_batch(&items(now, &[300, 300, 300]), &limits(50), ROOM, now),
            Decision::Dispatch(2)
        );
        // the worker's room
        let room = Room {
            requests: 2,
            tokens: 1_000_000,
        };
        assert_eq!(
            form_batch(&items(now, &[1; 10]), &limits(50), room, now),
            Decision::Dispatch(2)
        );
        let room = Room {
            requests: 10,
            tokens: 150,
        };
        assert_eq!(
            form_batch(&items(now, &[100, 100]), &limits(50), room, now),
            Decision::Dispatch(1)
        );
    }

    #[test]
    fn an_oversized_request_goes_alone() {
        let now = Instant::now();
        assert_eq!(
            form_batch(&items(now, &[5000, 1]), &limits(50), ROOM, now),
            Decision::Dispatch(1)
        );
    }

    #[test]
    fn holds_a_partial_batch_until_max_wait() {
        let now = Instant::now();
        let it = items(now, &[10, 10]);
        assert_eq!(
            form_batch(&it, &limits(50), ROOM, now),
            Decision::Hold(now + Duration::from_millis(50))
        );
        let later = now + Duration::from_millis(50);
        assert_eq!(
            form_batch(&it, &limits(50), ROOM, later),
            Decision::Dispatch(2)
        );
    }
}
