//! When the states-per-gateway figure is counted next, pure: the budget of the engine's
//! background broker work. No I/O and no clock: time is a [`Millis`] the refresher
//! (`crate::states`) passes in, so every rule is tested with table-driven traces
//! (`tests/refresh.rs`), as the batching machine is.
//!
//! A count is a full pass over the broker's table (conntrack: a dump; pf: an export of every
//! state under the device lock). At 4 million conntrack entries one takes seconds of a core,
//! and counting every 15 s kept the broker 40 % busy while idle. So:
//!
//! * the next count starts no sooner than [`StatesRefresh::BUDGET_FACTOR`] (100) times the
//!   last count's duration after that count ended: the broker's background work stays below
//!   1 % of one core on average, whatever the table size;
//! * and never sooner than the minimum of `[engine] states_refresh` ([`StatesRefresh`]):
//!   15 s on conntrack and 10 minutes on pf for `auto`, which depend on the broker's backend
//!   (learned from its Hello); `off` never counts;
//! * a count abandoned for a kill is charged what it ran, and at least as much as the last
//!   full count took (the broker may have walked the table regardless);
//! * a count that failed is charged what it ran; before any broker has answered (the
//!   backend unknown, nothing walked), the next attempt comes after
//!   [`RETRY_UNREACHABLE`].
//!
//! The first count is due at once (time 0, the engine's start), so status has a figure
//! early.

use std::time::Duration;

use statecull_policy::Millis;
use statecull_policy::model::StatesRefresh;
use statecull_proto::BackendKind;

/// How soon a count is tried again when no broker has answered yet (nothing was counted,
/// so nothing is charged to the budget).
pub const RETRY_UNREACHABLE: Duration = Duration::from_secs(15);

/// How one count attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The broker answered; the count took `took`.
    Counted { took: Duration },
    /// Given up for a kill (a decision arrived, or a kill started) after `ran`.
    Abandoned { ran: Duration },
    /// No answer (broker unreachable, refused, timed out) after `ran`.
    Failed { ran: Duration },
}

/// The refresher's budget: when the next count may start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    setting: StatesRefresh,
    /// The broker's backend, once a Hello has said (the `auto` minimum depends on it).
    backend: Option<BackendKind>,
    /// The next count may start at this time.
    not_before: Millis,
    /// How long the last finished count took.
    last_took: Option<Duration>,
}

/// Whole milliseconds, rounded up: a wait is never shorter than the budget.
fn millis_up(d: Duration) -> Millis {
    let ms = u64::try_from(d.as_millis()).unwrap_or(Millis::MAX);
    if d.subsec_nanos().is_multiple_of(1_000_000) { ms } else { ms.saturating_add(1) }
}

impl Schedule {
    /// A schedule for `setting`; the first count is due at time 0.
    pub fn new(setting: StatesRefresh) -> Self {
        Schedule { setting, backend: None, not_before: 0, last_took: None }
    }

    /// The broker's backend, from its Hello (it may change when the broker is replaced).
    pub fn backend(&mut self, kind: BackendKind) {
        self.backend = Some(kind);
    }

    /// The shortest interval between counts on the known backend; `None` when counting is
    /// off or the backend is not known yet.
    pub fn minimum(&self) -> Option<Duration> {
        self.backend.and_then(|b| self.setting.minimum(b))
    }

    /// When the next count may start; `None` when counting is off.
    pub fn next(&self) -> Option<Millis> {
        (self.setting != StatesRefresh::Off).then_some(self.not_before)
    }

    /// How long the last finished count took.
    pub fn last_took(&self) -> Option<Duration> {
        self.last_took
    }

    /// An attempt ended at `end` with `outcome`: schedule the next.
    pub fn done(&mut self, end: Millis, outcome: Outcome) {
        let charged = match outcome {
            Outcome::Counted { took } => {
                self.last_took = Some(took);
                took
            }
            Outcome::Abandoned { ran } => ran.max(self.last_took.unwrap_or_default()),
            Outcome::Failed { ran } => ran,
        };
        let budget = charged.saturating_mul(StatesRefresh::BUDGET_FACTOR);
        let wait = match self.minimum() {
            Some(min) => budget.max(min),
            // Off: `next` says so, whatever this is.
            None if self.setting == StatesRefresh::Off => budget,
            // No Hello yet: nothing was walked; try again soon.
            None => budget.max(RETRY_UNREACHABLE),
        };
        self.not_before = end.saturating_add(millis_up(wait));
    }
}
