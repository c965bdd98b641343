//! Round robin: the eligible workers in turn. `turn` is a counter the caller advances once per
//! decision.

use super::WorkerSnapshot;

pub fn round_robin(workers: &[WorkerSnapshot], turn: u64) -> Option<usize> {
    let eligible: Vec<usize> = workers
        .iter()
        .filter(|w| w.eligible())
        .map(|w| w.index)
        .collect();
    if eligible.is_empty() {
        return None;
    }
    Some(eligible[(turn % eligible.len() as u64) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_turns_skipping_the_ineligible() {
        let ws: Vec<WorkerSnapshot> = (0..3)
            .map(|i| WorkerSnapshot {
                index: i,
                key: 0,
                in_flight: 0,
                tokens_in_flight: 0,
                available: i != 1,
                has_room: true,
            })
            .collect();
        let picks: Vec<_> = (0..4).map(|t| round_robin(&ws, t)).collect();
        assert_eq!(picks, vec![Some(0), Some(2), Some(0), Some(2)]);
    }
}
