//! The executor's batching, pure: which decisions form one plan, how long routing is waited
//! for, and which gateways the trailing sweep may still touch. No I/O and no clock: time is
//! a [`Millis`] the executor passes in (milliseconds since the engine started, the clock of
//! the health machines), so every rule here is tested with table-driven traces
//! (`tests/batch.rs`), as the health machine is.

use statecull_policy::Millis;

/// A change of usability the executor must act on. Decisions that arrive while it waits
/// for routing are merged into one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub went_down: Vec<usize>,
    pub came_up: Vec<usize>,
    /// Usability of every gateway (by policy index) right after this decision.
    pub usable: Vec<bool>,
    /// The `routed` signal counters when the decision was made: a signal sent right after
    /// (`statecull gateway WAN1 down --routed`) counts even if the executor is still busy.
    pub routed_marks: Vec<u64>,
    /// When it was decided.
    pub at: Millis,
}

/// Merge `d` into `batch`: a gateway that went down and came back before anything was
/// killed leaves both lists.
pub fn merge(batch: &mut Decision, d: Decision) {
    for &g in &d.went_down {
        if let Some(p) = batch.came_up.iter().position(|&x| x == g) {
            batch.came_up.remove(p);
        } else if !batch.went_down.contains(&g) {
            batch.went_down.push(g);
        }
    }
    for &g in &d.came_up {
        if let Some(p) = batch.went_down.iter().position(|&x| x == g) {
            batch.went_down.remove(p);
        } else if !batch.came_up.contains(&g) {
            batch.came_up.push(g);
        }
    }
    for &g in d.went_down.iter().chain(d.came_up.iter()) {
        if let (Some(slot), Some(v)) = (batch.routed_marks.get_mut(g), d.routed_marks.get(g)) {
            *slot = *v;
        }
    }
    batch.usable = d.usable;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(down: &[usize], up: &[usize]) -> Decision {
        Decision {
            went_down: down.to_vec(),
            came_up: up.to_vec(),
            usable: vec![],
            routed_marks: vec![0; 4],
            at: 0,
        }
    }

    #[test]
    fn merging_coalesces_and_cancels() {
        let mut b = d(&[0], &[]);
        merge(&mut b, d(&[1], &[]));
        assert_eq!(b.went_down, vec![0, 1]);
        merge(&mut b, d(&[], &[0]));
        assert_eq!(b.went_down, vec![1]);
        assert!(b.came_up.is_empty());
        merge(&mut b, d(&[], &[2]));
        merge(&mut b, d(&[2], &[]));
        assert!(b.came_up.is_empty());
        assert_eq!(b.went_down, vec![1]);
    }
}
