//! The channels between the engine's tasks, each with its one way of being used: decisions
//! for the executor (sent in the order their usability snapshots were taken), and the
//! per-gateway `routed` signals the executor's routing wait watches.

use std::sync::{Mutex, PoisonError};

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
    counters: Vec<watch::Sender<u64>>,
}

impl RoutedSignals {
    /// One counter per gateway, at zero.
    pub fn new(gateways: usize) -> Self {
        RoutedSignals { counters: (0..gateways).map(|_| watch::Sender::new(0)).collect() }
    }

    /// Count a `routed` signal for `gateway` (ignored for an unknown one).
    pub fn signal(&self, gateway: usize) {
        if let Some(tx) = self.counters.get(gateway) {
            tx.send_modify(|n| *n += 1);
        }
    }

    /// Every gateway's count now (what a decision records, and what a wait compares to).
    pub fn counts(&self) -> Vec<u64> {
        self.counters.iter().map(|tx| *tx.borrow()).collect()
    }

    /// Receivers that wake on any later signal, one per gateway.
    pub fn subscribe(&self) -> Vec<watch::Receiver<u64>> {
        self.counters.iter().map(watch::Sender::subscribe).collect()
    }
}
