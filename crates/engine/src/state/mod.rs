//! What the engine's tasks share, as owned parts with private fields:
//!
//! * the policy (read-only) and the [`Clock`] the pure machines are fed;
//! * the [`GatewayBook`]: each gateway's health machine and runtime facts;
//! * the [`Counters`]: pending plans, the last plan's and sweep's figures;
//! * the [`StatesBook`]: the last background count of states per gateway;
//! * the channels ([`DecisionQueue`] to the executor, [`RoutedSignals`] from the control
//!   socket to the executor's routing wait, the metrics watch);
//! * the event bus and the broker link.
//!
//! [`Shared`] ties them together where one thing touches several: a transition recorded in
//! the book is published on the bus and, when usability changed, sent to the executor as a
//! [`Decision`]; metrics are composed from the book, the counters and the link.

mod book;
mod channels;
mod counters;
mod figure;

use std::sync::Arc;
use std::time::Duration;

use statecull_control::EventKind;
use statecull_policy::health::{Health, Probe, Transition};
use statecull_policy::{Millis, Policy};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use book::{Forced, GatewayBook, GatewayFacts};
pub use channels::{DecisionQueue, RoutedSignals};
pub use counters::{Counters, PlanStats};
pub use figure::{StatesBook, StatesFigure};

pub use crate::batch::Decision;
use crate::broker::BrokerLink;
use crate::events::{EventBus, NewEvent};
use crate::metrics::{EngineMetrics, GatewayMetrics};

/// The engine's clock for the pure machines: milliseconds since it started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    started: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock { started: Instant::now() }
    }

    /// Milliseconds since the engine started.
    pub fn now_ms(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The instant of `ms` on this clock (for timers).
    pub fn instant(&self, ms: Millis) -> Instant {
        self.started + Duration::from_millis(ms)
    }

    /// Time elapsed since `ms` on this clock.
    pub fn since(&self, ms: Millis) -> Duration {
        self.instant(ms).elapsed()
    }

    /// Time since the engine started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn started(&self) -> Instant {
        self.started
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
pub struct Shared {
    policy: Policy,
    clock: Clock,
    book: GatewayBook,
    counters: Counters,
    states: StatesBook,
    bus: EventBus,
    /// The broker link. Public: it is a shared handle with its own locking (its fields are
    /// private), used as `shared.broker` by every task and by the link's tests.
    pub broker: Arc<BrokerLink>,
    decisions: DecisionQueue,
    routed: RoutedSignals,
    metrics: watch::Sender<EngineMetrics>,
    /// Background readings of pf's ruleset ticket (`confirm = "pf-ruleset"`).
    tickets: std::sync::Mutex<crate::batch::TicketLog>,
}

impl Shared {
    /// Build the shared state; returns it with the receiving ends of the decision queue
    /// (the executor's) and of the metrics (the metrics server's).
    pub fn new(
        policy: Policy,
        broker: BrokerLink,
    ) -> (Self, mpsc::UnboundedReceiver<Decision>, watch::Receiver<EngineMetrics>) {
        let clock = Clock::new();
        let book = GatewayBook::new(&policy, clock.started());
        let routed = RoutedSignals::new(policy.gateways.len());
        let (decisions, rx) = DecisionQueue::new();
        let (mtx, mrx) = watch::channel(EngineMetrics::default());
        let shared = Shared {
            policy,
            clock,
            book,
            counters: Counters::default(),
            states: StatesBook::default(),
            bus: EventBus::new(),
            broker: Arc::new(broker),
            decisions,
            routed,
            metrics: mtx,
            tickets: std::sync::Mutex::default(),
        };
        (shared, rx, mrx)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn bus(&self) -> &EventBus {
        &self.bus
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The last background count of states per gateway (written by `crate::states`).
    pub fn states(&self) -> &StatesBook {
        &self.states
    }

    pub fn routed(&self) -> &RoutedSignals {
        &self.routed
    }

    /// A reading of pf's ruleset ticket, now.
    pub fn record_ticket(&self, ticket: u32) {
        let now = self.now_ms();
        self.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).record(now, ticket);
    }

    /// The first ticket for a wait whose decision was made at `decided` (see
    /// [`crate::batch::TicketLog::baseline_for`]).
    pub fn ticket_before(&self, decided: Millis) -> Option<u32> {
        self.tickets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).baseline_for(decided)
    }

    /// The pure code's clock: milliseconds since the engine started.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    pub fn gateway_name(&self, index: usize) -> &str {
        self.policy.gateways.get(index).map_or("?", |g| g.name.as_str())
    }

    /// Usability of every gateway now.
    pub fn usable(&self) -> Vec<bool> {
        self.book.usable()
    }

    /// One probe result (ICMP) for a gateway. Probes still count while a verdict is
    /// forced, but cannot override it.
    pub fn record_probe(&self, gateway: usize, probe: Probe, sent_unix_ms: u64) {
        if let Some(t) = self.book.record_probe(gateway, self.now_ms(), probe, sent_unix_ms) {
            self.apply(gateway, t);
        }
    }

    /// A dpinger summary for a gateway.
    pub fn record_summary(&self, gateway: usize, loss_pct: f64, latency: Option<Duration>) {
        if let Some(t) = self.book.record_summary(gateway, self.now_ms(), loss_pct, latency) {
            self.apply(gateway, t);
        }
    }

    /// The gateway's health source could not be read (or its report was refused): its
    /// health is not being updated. Shown by status and metrics until it answers again.
    pub fn source_failed(&self, gateway: usize, message: &str) {
        if self.book.source_failed(gateway, message) {
            self.refresh_metrics();
        }
    }

    /// The gateway's health source answered.
    pub fn source_ok(&self, gateway: usize) {
        if self.book.source_ok(gateway) {
            self.refresh_metrics();
        }
    }

    /// Timers (hold-down, damping decay) of every gateway.
    pub fn tick(&self) {
        for (i, t) in self.book.tick(self.now_ms()) {
            self.apply(i, t);
        }
    }

    /// An external verdict (`statecull gateway NAME down|up`). Returns what changed.
    pub fn force(&self, gateway: usize, up: bool) -> String {
        let t = match self.book.force(gateway, self.now_ms(), up) {
            Forced::NoSuchGateway => return "no such gateway".into(),
            Forced::Already => None,
            Forced::Changed(t) => Some(t),
        };
        let name = self.gateway_name(gateway).to_owned();
        match t {
            Some(t) => {
                let msg = format!("{name} is now {} ({})", t.to.name(), t.reason);
                self.apply(gateway, t);
                msg
            }
            None => format!("{name} was already {}", if up { "up" } else { "down" }),
        }
    }

    /// Count a `routed` signal for a gateway.
    pub fn signal_routed(&self, gateway: usize) {
        self.routed.signal(gateway);
    }

    /// Publish a transition and, if usability changed, hand a decision to the executor.
    fn apply(&self, gateway: usize, t: Transition) {
        let name = self.gateway_name(gateway).to_owned();
        let kind = match t.to {
            Health::Down => EventKind::GatewayDown,
            Health::Degraded => EventKind::GatewayDegraded,
            Health::Up => EventKind::GatewayUp,
        };
        let mut e = NewEvent::new(
            kind,
            format!("{name} {} -> {}: {}", t.from.name(), t.to.name(), t.reason),
        )
        .gateway(name)
        .field("from", t.from.name())
        .field("to", t.to.name())
        .field("cause", format!("{:?}", t.cause).to_lowercase())
        .field("loss_pct", format!("{:.1}", t.evidence.loss_pct))
        .field("samples", t.evidence.samples);
        if let Some(l) = t.evidence.latency_avg {
            e = e.field("latency_ms", format!("{:.1}", l.as_secs_f64() * 1e3));
        }
        if t.evidence.suppressed {
            e = e.field("suppressed", "true");
        }
        if let Some(first) = self.book.noted(gateway, &t) {
            e = e.field("first_lost_probe_unix_ms", first);
        }
        self.bus.publish(e);
        let was = t.from != Health::Down;
        let is = t.to != Health::Down;
        if was != is {
            // The executor lives as long as the engine; a send error means shutdown.
            let _ = self.decisions.send_with(|| {
                let d = Decision {
                    went_down: if is { vec![] } else { vec![gateway] },
                    came_up: if is { vec![gateway] } else { vec![] },
                    usable: self.usable(),
                    routed_marks: self.routed.counts(),
                    at: self.now_ms(),
                };
                self.counters.decision_sent();
                // Background counts stand aside (one in flight is abandoned) until the plan
                // is done: the kill must not wait for them or compete with them.
                self.broker.plan_decided();
                d
            });
        }
        self.refresh_metrics();
    }

    /// True while a plan is waiting or running.
    pub fn plan_pending(&self) -> bool {
        self.counters.plan_pending()
    }

    /// The executor took `n` decisions off the queue and finished with them.
    pub fn decisions_done(&self, n: u32) {
        self.counters.decisions_done(n);
        self.broker.plans_done(n);
    }

    /// Record kills for metrics.
    pub fn add_kills(&self, gateway: usize, killed: u64, leftovers: bool) {
        self.book.add_kills(gateway, killed, leftovers);
    }

    /// Health facts per gateway for status and metrics.
    pub fn gateway_facts(&self) -> Vec<GatewayFacts> {
        self.book.facts(self.now_ms())
    }

    /// Publish fresh metrics (the states per gateway as last counted).
    pub fn refresh_metrics(&self) {
        let facts = self.gateway_facts();
        let stats = self.counters.stats();
        let broker_connected = self.broker.state().connected;
        let states = self.states.get();
        self.metrics.send_modify(|m| {
            m.gateways = facts
                .iter()
                .enumerate()
                .map(|(i, f)| GatewayMetrics {
                    name: self.gateway_name(i).to_owned(),
                    state: f.state.name().to_owned(),
                    suppressed: f.suppressed,
                    loss_pct: f.loss_pct,
                    latency_ms: f.latency_ms,
                    states: states.of(i),
                    kills_total: f.kills_total,
                    sweep_leftovers_total: f.sweep_leftovers_total,
                    probes_total: f.probes_total,
                    probes_lost_total: f.probes_lost,
                    health_source_up: f.source_error.is_none(),
                    health_source_errors_total: f.source_errors_total,
                })
                .collect();
            m.plans_total = stats.plans_total;
            m.last_plan_duration_seconds = stats.last_plan_duration_s;
            m.last_sweep_leftovers = stats.last_sweep_leftovers;
            m.broker_connected = broker_connected;
            m.states_counted_at = states.counted_at;
            m.states_count_seconds = states.took.map(|d| d.as_secs_f64());
        });
    }
}
