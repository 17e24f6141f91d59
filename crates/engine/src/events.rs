//! The event bus: every gateway transition, routing confirmation and plan step becomes one
//! [`Event`], logged as one line, kept in a short backlog for `statecull status`, and
//! broadcast to `statecull events --follow` clients.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use statecull_control::{Event, EventKind};
use tokio::sync::broadcast;

/// Events kept for `status` and for a new `events` client.
pub const BACKLOG: usize = 64;

/// Publishes events; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct EventBus {
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    backlog: VecDeque<Event>,
}

/// An event under construction; `EventBus::publish` numbers and stamps it.
#[derive(Clone, Debug)]
pub struct NewEvent {
    pub kind: EventKind,
    pub gateway: Option<String>,
    pub message: String,
    pub killed: Option<u64>,
    pub elapsed_ms: Option<f64>,
    pub fields: Vec<(String, String)>,
}

impl NewEvent {
    pub fn new(kind: EventKind, message: impl Into<String>) -> Self {
        NewEvent {
            kind,
            gateway: None,
            message: message.into(),
            killed: None,
            elapsed_ms: None,
            fields: Vec::new(),
        }
    }
    pub fn gateway(mut self, name: impl Into<String>) -> Self {
        self.gateway = Some(name.into());
        self
    }
    pub fn killed(mut self, n: u64) -> Self {
        self.killed = Some(n);
        self
    }
    pub fn elapsed_ms(mut self, ms: f64) -> Self {
        self.elapsed_ms = Some(ms);
        self
    }
    pub fn field(mut self, name: &str, value: impl ToString) -> Self {
        self.fields.push((name.to_owned(), value.to_string()));
        self
    }
}

/// Wall-clock milliseconds since the Unix epoch (what events carry).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        // Followers that fall this far behind lose events and are told so (see control.rs).
        let (tx, _) = broadcast::channel(1024);
        EventBus { inner: Mutex::new(Inner { next_seq: 1, backlog: VecDeque::new() }), tx }
    }

    /// Number, stamp, log, keep and broadcast one event; returns it.
    pub fn publish(&self, e: NewEvent) -> Event {
        let unix_ms = unix_ms();
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let event = Event {
            seq: inner.next_seq,
            unix_ms,
            kind: e.kind,
            gateway: e.gateway,
            message: e.message,
            killed: e.killed,
            elapsed_ms: e.elapsed_ms,
            fields: e.fields,
        };
        inner.next_seq += 1;
        if inner.backlog.len() == BACKLOG {
            inner.backlog.pop_front();
        }
        inner.backlog.push_back(event.clone());
        // Sent while holding the lock, so a follower that subscribes under the same lock
        // (see `subscribe_with_backlog`) sees every event exactly once.
        let _ = self.tx.send(event.clone());
        drop(inner);
        log_event(&event);
        event
    }

    /// The recent events (oldest first).
    pub fn backlog(&self) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        inner.backlog.iter().cloned().collect()
    }

    /// The backlog and a receiver for every later event, with no gap and no repeat.
    pub fn subscribe_with_backlog(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let rx = self.tx.subscribe();
        (inner.backlog.iter().cloned().collect(), rx)
    }
}

/// Event fields as one JSON object, so JSON logs can be queried by field.
fn fields_json(fields: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::Value::Object(map).to_string()
}

/// How serious an event is in the log, and so in `journalctl -p` or syslog: a failed plan
/// is an error (states that should have died did not); a gateway down or degraded, a lost
/// broker and a refused reload (the operator's change is not in force) are warnings; the
/// rest is information.
pub fn level_of(kind: EventKind) -> tracing::Level {
    match kind {
        EventKind::PlanFailed => tracing::Level::ERROR,
        EventKind::GatewayDown
        | EventKind::GatewayDegraded
        | EventKind::BrokerLost
        | EventKind::PolicyReloadFailed => tracing::Level::WARN,
        _ => tracing::Level::INFO,
    }
}

/// One log line per event, at [`level_of`] its kind (JSON with `--log-format json`).
fn log_event(event: &Event) {
    macro_rules! line {
        ($mac:ident) => {
            tracing::$mac!(
                target: "statecull::event",
                seq = event.seq,
                kind = event.kind.name(),
                gateway = event.gateway.as_deref().unwrap_or(""),
                killed = event.killed,
                elapsed_ms = event.elapsed_ms,
                fields = %fields_json(&event.fields),
                "{}",
                event.message
            )
        };
    }
    match level_of(event.kind) {
        tracing::Level::ERROR => line!(error),
        tracing::Level::WARN => line!(warn),
        _ => line!(info),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_errors_and_losses_warnings_in_the_log() {
        assert_eq!(level_of(EventKind::PlanFailed), tracing::Level::ERROR);
        for k in [
            EventKind::GatewayDown,
            EventKind::GatewayDegraded,
            EventKind::BrokerLost,
            EventKind::PolicyReloadFailed,
        ] {
            assert_eq!(level_of(k), tracing::Level::WARN, "{k}");
        }
        for k in [
            EventKind::GatewayUp,
            EventKind::PlanDone,
            EventKind::BrokerConnected,
            EventKind::PolicyReloaded,
        ] {
            assert_eq!(level_of(k), tracing::Level::INFO, "{k}");
        }
    }

    #[test]
    fn numbers_keeps_and_broadcasts() {
        let bus = EventBus::new();
        let (old, mut rx) = bus.subscribe_with_backlog();
        assert!(old.is_empty());
        for i in 0..(BACKLOG + 5) {
            bus.publish(NewEvent::new(EventKind::GatewayDown, format!("e{i}")).gateway("WAN1"));
        }
        let backlog = bus.backlog();
        assert_eq!(backlog.len(), BACKLOG);
        assert_eq!(backlog.first().map(|e| e.seq), Some(6));
        assert_eq!(backlog.last().map(|e| e.seq), Some(BACKLOG as u64 + 5));
        let first = rx.try_recv().unwrap();
        assert_eq!((first.seq, first.message.as_str()), (1, "e0"));
    }
}
