//! The background refresher of the states-per-gateway figure (`statecull status`, the
//! `statecull_gateway_states` metric): it counts every gateway's states on the broker link's
//! background lane when the pure [`Schedule`] says so, and records the figure with its time
//! and duration in `Shared::states`. Status and metrics only read that record; they never
//! ask the broker.
//!
//! A count never delays a kill: it runs on its own connection, does not start while a plan
//! is pending, and is abandoned the moment a decision arrives or a kill starts (see
//! `BrokerLink::call_background`); the budget then charges what it ran. On pf a count
//! exports every state under the broker's device lock, which kills wait for, so `auto`
//! counts there at most every 10 minutes.

use std::sync::Arc;
use std::time::Duration;

use statecull_policy::plan;
use statecull_proto::BackendKind;
use tokio::time::Instant;

use crate::error::EngineError;
use crate::refresh::{Outcome, Schedule};
use crate::state::Shared;

/// One count of every gateway's states.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Per gateway in policy order; `None` for one whose states cannot be recognised on
    /// the broker's backend.
    pub per_gateway: Vec<Option<u64>>,
    /// How long the count took: the broker's own figure or, if longer, the time from
    /// asking to the answer.
    pub took: Duration,
}

/// Count every gateway's states now, on the background lane (waiting while a plan is
/// pending, abandoned for a kill). Also returns the broker's backend when a Hello said it.
pub async fn count_now(shared: &Shared) -> (Option<BackendKind>, Result<Counted, EngineError>) {
    let policy = shared.planning_policy();
    let n = policy.gateways.len();
    let hello = match shared.broker.hello().await {
        Ok(h) => h,
        Err(e) => return (None, Err(e)),
    };
    let kind = hello.backend.kind;
    let every: Vec<usize> = (0..n).collect();
    let owned = plan::owned_selectors(&policy, &every, &hello.backend.capabilities);
    if owned.selectors.is_empty() {
        // No gateway is recognisable on this backend: nothing to ask.
        return (Some(kind), Ok(Counted { per_gateway: vec![None; n], took: Duration::ZERO }));
    }
    let max = usize::try_from(hello.limits.max_selectors).unwrap_or(usize::MAX);
    if owned.selectors.len() > max {
        let message = format!(
            "the gateways' {} selectors exceed the broker's limit of {max} per count",
            owned.selectors.len()
        );
        return (Some(kind), Err(EngineError::Control(message)));
    }
    let t0 = Instant::now();
    let selectors = owned.selectors;
    let result = shared.broker.call_background(move |c| c.count(selectors)).await.map(|c| {
        let broker = Duration::from_micros(c.elapsed_us);
        Counted {
            per_gateway: plan::per_gateway(&owned.owners, &c.per_selector, n),
            took: t0.elapsed().max(broker),
        }
    });
    (Some(kind), result)
}

/// Keep the figure up to date, within the budget of `[engine] states_refresh`. Runs for
/// the engine's lifetime (with counting off, it only waits).
pub async fn run(shared: Arc<Shared>) {
    let clock = *shared.clock();
    let mut schedule = Schedule::new(shared.policy().engine.states_refresh);
    loop {
        let Some(at) = schedule.next() else {
            shared.states().next_at(None);
            return std::future::pending().await;
        };
        shared.states().next_at(Some(clock.instant(at)));
        tokio::time::sleep_until(clock.instant(at)).await;
        // A plan is pending or a kill runs: it goes first, the count after.
        shared.broker.kill_priority_over().await;
        let t0 = Instant::now();
        let (backend, result) = count_now(&shared).await;
        if let Some(kind) = backend {
            schedule.backend(kind);
        }
        let ran = t0.elapsed();
        let end = clock.now_ms();
        let outcome = match result {
            Ok(counted) => {
                let took = counted.took;
                shared.states().counted(counted.per_gateway, clock.instant(end), took);
                shared.refresh_metrics();
                Outcome::Counted { took }
            }
            Err(EngineError::Abandoned) => Outcome::Abandoned { ran },
            Err(e) => {
                tracing::debug!(target: "statecull::states", "states per gateway not counted: {e}");
                Outcome::Failed { ran }
            }
        };
        schedule.done(end, outcome);
        tracing::debug!(
            target: "statecull::states",
            outcome = ?outcome,
            next_in_ms = schedule.next().map(|at| at.saturating_sub(clock.now_ms())),
            "states per gateway"
        );
    }
}
