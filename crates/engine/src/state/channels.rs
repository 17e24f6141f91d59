//! The channels between the engine's tasks, each with its one way of being used: decisions
//! for the executor (sent in the order their usability snapshots were taken), and the
//! per-gateway `routed` signals the executor's routing wait watches.

use std::sync::{Mutex, PoisonError, RwLock};

use tokio::sync::{mpsc, watch};

use crate::batch::Decision;

/// The sending end of the executor's decision queue.
#[derive(Debug)]
pub struct DecisionQueue {
    tx: mpsc::UnboundedSender<Decision>,
    /// Held while a decision is built and sent, so decisions reach the executor in the
    /// order their usability snapshots were taken.
    order: Mutex<()>,
}

impl DecisionQueue {
    /// The queue and its receiving end (the executor's).
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Decision>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (DecisionQueue { tx, order: Mutex::new(()) }, rx)
    }

    /// Build a decision and send it, as one step with respect to other senders. False when
    /// the executor is gone (shutdown).
    pub fn send_with(&self, build: impl FnOnce() -> Decision) -> bool {
        let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        self.tx.send(build()).is_ok()
    }
}

/// Per gateway: how many `routed` signals arrived (the executor waits for an increase).
#[derive(Debug)]
pub struct RoutedSignals {
    counters: RwLock<Vec<watch::Sender<u64>>>,
}

impl RoutedSignals {
    /// One counter per gateway, at zero.
    pub fn new(gateways: usize) -> Self {
        RoutedSignals {
            counters: RwLock::new((0..gateways).map(|_| watch::Sender::new(0)).collect()),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<watch::Sender<u64>>> {
        self.counters.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Count a `routed` signal for `gateway` (ignored for an unknown one).
    pub fn signal(&self, gateway: usize) {
        if let Some(tx) = self.read().get(gateway) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Every gateway's count now (what a decision records, and what a wait compares to).
    pub fn counts(&self) -> Vec<u64> {
        self.read().iter().map(|tx| *tx.borrow()).collect()
    }

    /// Receivers that wake on any later signal, one per gateway.
    pub fn subscribe(&self) -> Vec<watch::Receiver<u64>> {
        self.read().iter().map(watch::Sender::subscribe).collect()
    }

    /// A reload (no plan in flight): one counter per new gateway, a kept one's carried over
    /// from its old index (`carried`, see `GatewayBook::reload`).
    pub fn reload(&self, carried: &[Option<usize>]) {
        let mut w = self.counters.write().unwrap_or_else(PoisonError::into_inner);
        let mut old: Vec<Option<watch::Sender<u64>>> =
            std::mem::take(&mut *w).into_iter().map(Some).collect();
        *w = carried
            .iter()
            .map(|from| {
                from.and_then(|o| old.get_mut(o))
                    .and_then(Option::take)
                    .unwrap_or_else(|| watch::Sender::new(0))
            })
            .collect();
    }
}
