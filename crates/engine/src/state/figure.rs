//! The states-per-gateway figure that `status` and the metrics show: the last background
//! count, when it finished, how long it took, and when the next one may start. Only the
//! refresher (`crate::states`) writes it; readers never ask the broker.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// A copy of the figure.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatesFigure {
    /// States per gateway (policy order) at the last count; `None` for a gateway whose
    /// states cannot be recognised on the broker's backend. Empty before the first count.
    pub per_gateway: Vec<Option<u64>>,
    /// When the last count finished; `None`: never counted.
    pub counted_at: Option<Instant>,
    /// How long the last count took.
    pub took: Option<Duration>,
    /// When the next count may start; `None` when counting is off or not scheduled yet.
    pub next_at: Option<Instant>,
}

impl StatesFigure {
    /// Gateway `i`'s states at the last count.
    pub fn of(&self, i: usize) -> Option<u64> {
        self.per_gateway.get(i).copied().flatten()
    }

    /// Time since the last count, at `now`.
    pub fn age(&self, now: Instant) -> Option<Duration> {
        self.counted_at.map(|t| now.saturating_duration_since(t))
    }
}

/// The figure behind its lock.
#[derive(Debug, Default)]
pub struct StatesBook {
    figure: Mutex<StatesFigure>,
}

impl StatesBook {
    pub fn get(&self) -> StatesFigure {
        self.figure.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A count finished at `at`, taking `took`.
    pub fn counted(&self, per_gateway: Vec<Option<u64>>, at: Instant, took: Duration) {
        let mut f = self.figure.lock().unwrap_or_else(PoisonError::into_inner);
        f.per_gateway = per_gateway;
        f.counted_at = Some(at);
        f.took = Some(took);
    }

    /// A reload: each new gateway keeps its namesake's last count (`carried`, see
    /// `GatewayBook::reload`); a new one has none until the next count.
    pub fn reload(&self, carried: &[Option<usize>]) {
        let mut f = self.figure.lock().unwrap_or_else(PoisonError::into_inner);
        if f.per_gateway.is_empty() {
            return;
        }
        let old = std::mem::take(&mut f.per_gateway);
        f.per_gateway =
            carried.iter().map(|from| from.and_then(|o| old.get(o).copied().flatten())).collect();
    }

    /// The next count may start at `at` (`None`: not scheduled).
    pub fn next_at(&self, at: Option<Instant>) {
        self.figure.lock().unwrap_or_else(PoisonError::into_inner).next_at = at;
    }
}
