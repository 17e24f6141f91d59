//! What the engine's tasks share: the policy, each gateway's health machine, the event bus,
//! the broker link, routing signals and counters. The health machines and the planner are
//! pure (`statecull-policy`); this module feeds them the clock and turns their transitions
//! into events and decisions for the executor.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use statecull_control::EventKind;
use statecull_policy::health::{GatewayHealth, Health, Probe, Transition};
use statecull_policy::{Millis, Policy};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::broker::BrokerLink;
use crate::events::{EventBus, NewEvent};
use crate::metrics::{EngineMetrics, GatewayMetrics};

/// A change of usability the executor must act on. Decisions that arrive while it waits
/// for routing are merged into one plan.
#[derive(Clone, Debug)]
pub struct Decision {
    pub went_down: Vec<usize>,
    pub came_up: Vec<usize>,
    /// Usability of every gateway (by policy index) right after this decision.
    pub usable: Vec<bool>,
    /// The `routed` signal counters when the decision was made: a signal sent right after
    /// (`statecull gateway WAN1 down --routed`) counts even if the executor is still busy.
    pub routed_marks: Vec<u64>,
    pub at: Instant,
}

/// Per-gateway runtime facts beside the health machine.
#[derive(Debug)]
pub struct GatewayRuntime {
    pub health: GatewayHealth,
    /// Some(up) while an operator/routing-manager verdict is in force.
    pub forced: Option<bool>,
    pub last_change: Instant,
    pub last_reason: Option<String>,
    pub probes_total: u64,
    pub probes_lost: u64,
    /// When the first probe of the current run of losses was sent (unix ms); None after a
    /// reply. Detection time is measured from it.
    pub first_loss_unix_ms: Option<u64>,
    pub kills_total: u64,
    pub sweep_leftovers_total: u64,
    /// Why the gateway's health source (dpinger) could not be read at its last poll; `None`
    /// while it answers (and always for ICMP and external sources).
    pub source_error: Option<String>,
    /// Failed polls of the health source since start.
    pub source_errors_total: u64,
}

/// Engine-wide counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub plans_total: u64,
    pub last_plan_duration_s: Option<f64>,
    pub last_sweep_leftovers: Option<u64>,
}

#[derive(Debug)]
pub struct Shared {
    pub policy: Policy,
    pub started: Instant,
    pub bus: EventBus,
    pub broker: Arc<BrokerLink>,
    pub gateways: Mutex<Vec<GatewayRuntime>>,
    /// Plans decided but not finished (waiting for routing or for the broker, or running).
    /// Background counts for status and metrics stand aside while this is non-zero, so
    /// they never delay a kill on the serialised broker link.
    pub pending_plans: AtomicU32,
    /// Held while a decision is built and sent, so decisions reach the executor in the
    /// order their usability snapshots were taken.
    decision_order: Mutex<()>,
    /// Per gateway: how many `routed` signals arrived (the executor waits for an increase).
    pub routed: Vec<watch::Sender<u64>>,
    pub stats: Mutex<Stats>,
    pub decisions: mpsc::UnboundedSender<Decision>,
    pub metrics: watch::Sender<EngineMetrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// Build the shared state; returns it with the receiving end of the decision channel.
    pub fn new(
        policy: Policy,
        broker: BrokerLink,
    ) -> (Self, mpsc::UnboundedReceiver<Decision>, watch::Receiver<EngineMetrics>) {
        let started = Instant::now();
        let gateways = policy
            .gateways
            .iter()
            .map(|g| GatewayRuntime {
                health: GatewayHealth::new(g.health.clone(), 0),
                forced: None,
                last_change: started,
                last_reason: None,
                probes_total: 0,
                probes_lost: 0,
                first_loss_unix_ms: None,
                kills_total: 0,
                sweep_leftovers_total: 0,
                source_error: None,
                source_errors_total: 0,
            })
            .collect();
        let routed = policy.gateways.iter().map(|_| watch::Sender::new(0)).collect();
        let (tx, rx) = mpsc::unbounded_channel();
        let (mtx, mrx) = watch::channel(EngineMetrics::default());
        let shared = Shared {
            policy,
            started,
            bus: EventBus::new(),
            broker: Arc::new(broker),
            gateways: Mutex::new(gateways),
            pending_plans: AtomicU32::new(0),
            decision_order: Mutex::new(()),
            routed,
            stats: Mutex::new(Stats::default()),
            decisions: tx,
            metrics: mtx,
        };
        (shared, rx, mrx)
    }

    /// The pure code's clock: milliseconds since the engine started.
    pub fn now_ms(&self) -> Millis {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn gateway_name(&self, index: usize) -> &str {
        self.policy.gateways.get(index).map_or("?", |g| g.name.as_str())
    }

    /// Usability of every gateway now.
    pub fn usable(&self) -> Vec<bool> {
        lock(&self.gateways).iter().map(|g| g.health.usable()).collect()
    }

    /// One probe result (ICMP) for a gateway. Probes still count while a verdict is
    /// forced, but cannot override it.
    pub fn record_probe(&self, gateway: usize, probe: Probe, sent_unix_ms: u64) {
        let now = self.now_ms();
        let t = {
            let mut gws = lock(&self.gateways);
            let Some(g) = gws.get_mut(gateway) else { return };
            g.probes_total += 1;
            if matches!(probe, Probe::Lost) {
                g.probes_lost += 1;
                g.first_loss_unix_ms = g.first_loss_unix_ms.or(Some(sent_unix_ms));
            } else {
                g.first_loss_unix_ms = None;
            }
            g.health.record(now, probe)
        };
        if let Some(t) = t {
            self.apply(gateway, t);
        }
    }

    /// A dpinger summary for a gateway.
    pub fn record_summary(
        &self,
        gateway: usize,
        loss_pct: f64,
        latency: Option<std::time::Duration>,
    ) {
        let now = self.now_ms();
        let t = {
            let mut gws = lock(&self.gateways);
            let Some(g) = gws.get_mut(gateway) else { return };
            g.probes_total += 1;
            g.health.record_summary(now, loss_pct, latency)
        };
        if let Some(t) = t {
            self.apply(gateway, t);
        }
    }

    /// The gateway's health source could not be read (or its report was refused): its
    /// health is not being updated. Shown by status and metrics until it answers again.
    pub fn source_failed(&self, gateway: usize, message: &str) {
        {
            let mut gws = lock(&self.gateways);
            let Some(g) = gws.get_mut(gateway) else { return };
            g.source_errors_total += 1;
            if g.source_error.as_deref() != Some(message) {
                g.source_error = Some(message.to_owned());
            }
        }
        self.refresh_metrics(None);
    }

    /// The gateway's health source answered.
    pub fn source_ok(&self, gateway: usize) {
        let changed = {
            let mut gws = lock(&self.gateways);
            gws.get_mut(gateway).is_some_and(|g| g.source_error.take().is_some())
        };
        if changed {
            self.refresh_metrics(None);
        }
    }

    /// Timers (hold-down, damping decay) of every gateway.
    pub fn tick(&self) {
        let now = self.now_ms();
        let ts: Vec<(usize, Transition)> = {
            let mut gws = lock(&self.gateways);
            gws.iter_mut()
                .enumerate()
                .filter_map(|(i, g)| g.health.tick(now).map(|t| (i, t)))
                .collect()
        };
        for (i, t) in ts {
            self.apply(i, t);
        }
    }

    /// An external verdict (`statecull gateway NAME down|up`). Returns what changed.
    pub fn force(&self, gateway: usize, up: bool) -> String {
        let now = self.now_ms();
        let t = {
            let mut gws = lock(&self.gateways);
            let Some(g) = gws.get_mut(gateway) else { return "no such gateway".into() };
            g.forced = if up { None } else { Some(false) };
            g.health.force(now, up)
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
        if let Some(tx) = self.routed.get(gateway) {
            tx.send_modify(|n| *n += 1);
        }
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
        {
            let mut gws = lock(&self.gateways);
            if let Some(g) = gws.get_mut(gateway) {
                g.last_change = Instant::now();
                g.last_reason = Some(t.reason.clone());
                if t.to == Health::Down
                    && let Some(first) = g.first_loss_unix_ms
                {
                    e = e.field("first_lost_probe_unix_ms", first);
                }
            }
        }
        self.bus.publish(e);
        let was = t.from != Health::Down;
        let is = t.to != Health::Down;
        if was != is {
            let _order = lock(&self.decision_order);
            let d = Decision {
                went_down: if is { vec![] } else { vec![gateway] },
                came_up: if is { vec![gateway] } else { vec![] },
                usable: self.usable(),
                routed_marks: self.routed.iter().map(|tx| *tx.borrow()).collect(),
                at: Instant::now(),
            };
            self.pending_plans.fetch_add(1, Ordering::SeqCst);
            // The executor lives as long as the engine; a send error means shutdown.
            let _ = self.decisions.send(d);
        }
        self.refresh_metrics(None);
    }

    /// True while a plan is waiting or running.
    pub fn plan_pending(&self) -> bool {
        self.pending_plans.load(Ordering::SeqCst) > 0
    }

    /// The executor took `n` decisions off the queue and finished with them.
    pub fn decisions_done(&self, n: u32) {
        let _ = self
            .pending_plans
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.saturating_sub(n)));
    }

    /// Record kills for metrics.
    pub fn add_kills(&self, gateway: usize, killed: u64, leftovers: bool) {
        let mut gws = lock(&self.gateways);
        if let Some(g) = gws.get_mut(gateway) {
            if leftovers {
                g.sweep_leftovers_total += killed;
            } else {
                g.kills_total += killed;
            }
        }
    }

    pub fn with_stats(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut lock(&self.stats));
    }

    /// Health facts per gateway for status and metrics.
    pub fn gateway_facts(&self) -> Vec<GatewayFacts> {
        let now = self.now_ms();
        lock(&self.gateways)
            .iter()
            .map(|g| {
                let ev = g.health.evidence(now);
                GatewayFacts {
                    state: g.health.state(),
                    suppressed: g.health.suppressed(),
                    forced: g.forced.is_some(),
                    since: g.last_change,
                    last_reason: g.last_reason.clone(),
                    loss_pct: ev.loss_pct,
                    latency_ms: ev.latency_avg.map(|l| l.as_secs_f64() * 1e3),
                    samples: ev.samples as u64,
                    penalty: ev.penalty,
                    probes_total: g.probes_total,
                    probes_lost: g.probes_lost,
                    kills_total: g.kills_total,
                    sweep_leftovers_total: g.sweep_leftovers_total,
                    source_error: g.source_error.clone(),
                    source_errors_total: g.source_errors_total,
                }
            })
            .collect()
    }

    /// Publish fresh metrics; `states` are per-gateway state counts when just counted.
    pub fn refresh_metrics(&self, states: Option<&[Option<u64>]>) {
        let facts = self.gateway_facts();
        let stats = lock(&self.stats);
        let broker_connected = self.broker.state().connected;
        self.metrics.send_modify(|m| {
            let old_states: Vec<Option<u64>> = m.gateways.iter().map(|g| g.states).collect();
            m.gateways = facts
                .iter()
                .enumerate()
                .map(|(i, f)| GatewayMetrics {
                    name: self.gateway_name(i).to_owned(),
                    state: f.state.name().to_owned(),
                    suppressed: f.suppressed,
                    loss_pct: f.loss_pct,
                    latency_ms: f.latency_ms,
                    states: match states {
                        Some(s) => s.get(i).copied().flatten(),
                        None => old_states.get(i).copied().flatten(),
                    },
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
        });
    }
}

/// A copy of one gateway's health facts.
#[derive(Clone, Debug)]
pub struct GatewayFacts {
    pub state: Health,
    pub suppressed: bool,
    pub forced: bool,
    pub since: Instant,
    pub last_reason: Option<String>,
    pub loss_pct: f64,
    pub latency_ms: Option<f64>,
    pub samples: u64,
    pub penalty: f64,
    pub probes_total: u64,
    pub probes_lost: u64,
    pub kills_total: u64,
    pub sweep_leftovers_total: u64,
    pub source_error: Option<String>,
    pub source_errors_total: u64,
}
