//! Power of two choices: two eligible workers drawn at random, the less loaded of the two.
//! Near least-outstanding balance without every gateway replica herding onto the same worker.
//! The caller supplies the two random draws, which keeps this a pure function.

use super::WorkerSnapshot;

pub fn power_of_two(workers: &[WorkerSnapshot], draw_a: u64, draw_b: u64) -> Option<usize> {
    let eligible: Vec<&WorkerSnapshot> = workers.iter().filter(|w| w.eligible()).collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0].index),
        n => {
            let a = eligible[(draw_a % n as u64) as usize];
            // The second draw is over the others, so the two are distinct.
            let mut b_pos = (draw_b % (n as u64 - 1)) as usize;
            let a_pos = (draw_a % n as u64) as usize;
            if b_pos >= a_pos {
                b_pos += 1;
            }
            let b = eligible[b_pos];
            let load = |w: &WorkerSnapshot| (w.in_flight, w.tokens_in_flight);
            Some(if load(b) < load(a) { b.index } else { a.index })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(index: usize, in_flight: u32) -> WorkerSnapshot {
        WorkerSnapshot {
            index,
            key: 0,
            in_flight,
            tokens_in_flight: 0,
            available: true,
            has_room: true,
        }
    }

    #[test]
    fn picks_the_lighter_of_two_distinct_draws() {
        let ws = [w(0, 5), w(1, 2), w(2, 9)];
        assert_eq!(power_of_two(&ws, 0, 0), Some(1)); // 0 vs 1
        assert_eq!(power_of_two(&ws, 2, 0), Some(0)); // 2 vs 0
        assert_eq!(power_of_two(&ws, 1, 1), Some(1)); // 1 vs 2
                                                      // Never the same worker twice: with two workers the lighter always wins.
        for a in 0..4 {
            for b in 0..4 {
                assert_eq!(power_of_two(&ws[..2], a, b), Some(1));
            }
        }
    }

    #[test]
    fn single_and_empty() {
        assert_eq!(power_of_two(&[w(4, 1)], 7, 9), Some(4));
        assert_eq!(power_of_two(&[], 1, 2), None);
    }
}
