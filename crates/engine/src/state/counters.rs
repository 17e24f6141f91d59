//! Engine-wide counters: plans decided but not finished, and the figures of the last plan and
//! sweep for metrics.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};

/// The last plan and sweep, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PlanStats {
    pub plans_total: u64,
    pub last_plan_duration_s: Option<f64>,
    pub last_sweep_leftovers: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Counters {
    /// Plans decided but not finished (waiting for routing or for the broker, or running).
    /// Shown by status; the broker link keeps its own count of them, for which background
    /// counts stand aside (`BrokerLink::plan_decided`).
    pending_plans: AtomicU32,
    /// Trailing sweeps scheduled and not finished (a reload waits for them: they run
    /// under the policy of their plan).
    pending_sweeps: AtomicU32,
    stats: Mutex<PlanStats>,
}

impl Counters {
    /// A decision was handed to the executor.
    pub fn decision_sent(&self) {
        self.pending_plans.fetch_add(1, Ordering::SeqCst);
    }

    /// The executor took `n` decisions off the queue and finished with them.
    pub fn decisions_done(&self, n: u32) {
        let _ = self
            .pending_plans
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(n)));
    }

    /// Decisions not finished yet.
    pub fn pending_plans(&self) -> u32 {
        self.pending_plans.load(Ordering::SeqCst)
    }

    /// True while a plan is waiting or running.
    pub fn plan_pending(&self) -> bool {
        self.pending_plans() > 0
    }

    /// A trailing sweep was scheduled.
    pub fn sweep_scheduled(&self) {
        self.pending_sweeps.fetch_add(1, Ordering::SeqCst);
    }

    /// A scheduled sweep ran (or was skipped).
    pub fn sweep_ended(&self) {
        let _ = self
            .pending_sweeps
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(1)));
    }

    /// True while a plan is waiting or running, or its trailing sweep is scheduled.
    pub fn busy(&self) -> bool {
        self.plan_pending() || self.pending_sweeps.load(Ordering::SeqCst) > 0
    }

    /// A plan ran to its end, taking `duration_s`.
    pub fn plan_finished(&self, duration_s: f64) {
        let mut s = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        s.plans_total += 1;
        s.last_plan_duration_s = Some(duration_s);
    }

    /// A trailing sweep found `leftovers` states.
    pub fn sweep_finished(&self, leftovers: u64) {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).last_sweep_leftovers =
            Some(leftovers);
    }

    pub fn stats(&self) -> PlanStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
