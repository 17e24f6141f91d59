//! The gateway book: each gateway's health machine and the runtime facts beside it (probe
//! counts, forced verdicts, source errors, kills), behind one lock. It only records; what a
//! transition leads to (an event, a decision for the executor) is decided by `Shared`.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use statecull_policy::health::{GatewayHealth, Health, Judgement, Probe, Transition};
use statecull_policy::{Millis, Policy};
use tokio::time::Instant;

/// Per-gateway runtime facts beside the health machine.
#[derive(Debug)]
struct GatewayRuntime {
    health: GatewayHealth,
    /// Some(up) while an operator/routing-manager verdict is in force.
    forced: Option<bool>,
    last_change: Instant,
    last_reason: Option<String>,
    probes_total: u64,
    probes_lost: u64,
    /// When the first probe of the current run of losses was sent (unix ms); None after a
    /// reply. Detection time is measured from it.
    first_loss_unix_ms: Option<u64>,
    kills_total: u64,
    sweep_leftovers_total: u64,
    /// Why the gateway's health source (dpinger) could not be read at its last poll; `None`
    /// while it answers (and always for ICMP and external sources).
    source_error: Option<String>,
    /// Failed polls of the health source since start.
    source_errors_total: u64,
}

impl GatewayRuntime {
    /// A gateway as the engine first sees it: assumed healthy, no evidence.
    fn new(g: &statecull_policy::model::Gateway, now: Millis, started: Instant) -> Self {
        GatewayRuntime {
            health: GatewayHealth::new(g.health.clone(), now),
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
        }
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

/// What one input did to a gateway: the transition of its effective state, if any, and its
/// judgement (down, degraded by loss / latency) before and after, taken under one lock, so
/// that a change a group's trigger level cares about is never missed or seen twice.
#[derive(Debug)]
pub struct Outcome {
    pub transition: Option<Transition>,
    pub before: Judgement,
    pub after: Judgement,
}

impl Outcome {
    /// Nothing changed.
    pub fn quiet(&self) -> bool {
        self.transition.is_none() && self.before == self.after
    }
}

fn outcome(
    health: &mut GatewayHealth,
    f: impl FnOnce(&mut GatewayHealth) -> Option<Transition>,
) -> Outcome {
    let before = health.judgement();
    let transition = f(health);
    Outcome { transition, before, after: health.judgement() }
}

/// What an external verdict did.
#[derive(Debug)]
pub enum Forced {
    /// The gateway changed state.
    Changed(Outcome),
    /// It already was what the verdict says.
    Already,
    /// An `up` the health machine holds (hold-down or flap damping): why.
    Held(String),
    /// No gateway has that index.
    NoSuchGateway,
}

/// Every gateway's health machine and runtime facts, by policy index.
#[derive(Debug)]
pub struct GatewayBook {
    gateways: Mutex<Vec<GatewayRuntime>>,
}

impl GatewayBook {
    /// One entry per gateway of `policy`, healthy machines started at time 0.
    pub fn new(policy: &Policy, started: Instant) -> Self {
        let gateways = policy.gateways.iter().map(|g| GatewayRuntime::new(g, 0, started)).collect();
        GatewayBook { gateways: Mutex::new(gateways) }
    }

    /// A reload: the book for `new`, where `carried[i]` is the index in the old book of new
    /// gateway `i`'s namesake. A kept gateway keeps its machine (with `new`'s thresholds
    /// from its next input on), forced verdict and counters; a new one starts as at
    /// start-up (healthy until evidence says otherwise, at `now`); the rest are dropped.
    pub fn reload(&self, new: &Policy, carried: &[Option<usize>], now: Millis) {
        let mut gws = self.lock();
        let mut old: Vec<Option<GatewayRuntime>> =
            std::mem::take(&mut *gws).into_iter().map(Some).collect();
        *gws = new
            .gateways
            .iter()
            .zip(carried)
            .map(|(g, from)| match from.and_then(|o| old.get_mut(o)).and_then(Option::take) {
                Some(mut kept) => {
                    if kept.health.params() != &g.health {
                        kept.health.set_params(g.health.clone());
                    }
                    kept
                }
                None => GatewayRuntime::new(g, now, Instant::now()),
            })
            .collect();
    }

    fn lock(&self) -> MutexGuard<'_, Vec<GatewayRuntime>> {
        self.gateways.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One probe result (ICMP), sent at `sent_unix_ms`. Probes still count while a verdict
    /// is forced, but cannot override it.
    pub fn record_probe(
        &self,
        gateway: usize,
        now: Millis,
        probe: Probe,
        sent_unix_ms: u64,
    ) -> Option<Outcome> {
        let mut gws = self.lock();
        let g = gws.get_mut(gateway)?;
        g.probes_total += 1;
        if matches!(probe, Probe::Lost) {
            g.probes_lost += 1;
            g.first_loss_unix_ms = g.first_loss_unix_ms.or(Some(sent_unix_ms));
        } else {
            g.first_loss_unix_ms = None;
        }
        Some(outcome(&mut g.health, |h| h.record(now, probe)))
    }

    /// A dpinger summary.
    pub fn record_summary(
        &self,
        gateway: usize,
        now: Millis,
        loss_pct: f64,
        latency: Option<Duration>,
    ) -> Option<Outcome> {
        let mut gws = self.lock();
        let g = gws.get_mut(gateway)?;
        g.probes_total += 1;
        Some(outcome(&mut g.health, |h| h.record_summary(now, loss_pct, latency)))
    }

    /// The gateway's health source failed with `message`; false for an unknown gateway.
    pub fn source_failed(&self, gateway: usize, message: &str) -> bool {
        let mut gws = self.lock();
        let Some(g) = gws.get_mut(gateway) else { return false };
        g.source_errors_total += 1;
        if g.source_error.as_deref() != Some(message) {
            g.source_error = Some(message.to_owned());
        }
        true
    }

    /// The gateway's health source answered; true if it had been failing.
    pub fn source_ok(&self, gateway: usize) -> bool {
        self.lock().get_mut(gateway).is_some_and(|g| g.source_error.take().is_some())
    }

    /// Timers (hold-down, damping decay) of every gateway: the transitions they cause.
    pub fn tick(&self, now: Millis) -> Vec<(usize, Outcome)> {
        self.lock()
            .iter_mut()
            .enumerate()
            .map(|(i, g)| (i, outcome(&mut g.health, |h| h.tick(now))))
            .filter(|(_, o)| !o.quiet())
            .collect()
    }

    /// An external verdict: down is forced until an `up` clears it; an `up` is debounced
    /// by the gateway's hold-down and flap damping (the health machine decides).
    pub fn force(&self, gateway: usize, now: Millis, up: bool) -> Forced {
        let mut gws = self.lock();
        let Some(g) = gws.get_mut(gateway) else { return Forced::NoSuchGateway };
        g.forced = if up { None } else { Some(false) };
        let o = outcome(&mut g.health, |h| h.force(now, up));
        if !o.quiet() {
            return Forced::Changed(o);
        }
        match g.health.verdict_hold().filter(|_| up) {
            Some(why) => Forced::Held(why),
            None => Forced::Already,
        }
    }

    /// Note a transition being published: when and why the gateway last changed. Returns
    /// when the first lost probe of its current losses was sent, if it just went down.
    pub fn noted(&self, gateway: usize, t: &Transition) -> Option<u64> {
        let mut gws = self.lock();
        let g = gws.get_mut(gateway)?;
        g.last_change = Instant::now();
        g.last_reason = Some(t.reason.clone());
        if t.to == Health::Down { g.first_loss_unix_ms } else { None }
    }

    /// Every gateway's judgement now (down, degraded by loss / latency).
    pub fn judgements(&self) -> Vec<Judgement> {
        self.lock().iter().map(|g| g.health.judgement()).collect()
    }

    /// Count killed states (`leftovers`: by the trailing sweep).
    pub fn add_kills(&self, gateway: usize, killed: u64, leftovers: bool) {
        if let Some(g) = self.lock().get_mut(gateway) {
            if leftovers {
                g.sweep_leftovers_total += killed;
            } else {
                g.kills_total += killed;
            }
        }
    }

    /// Health facts per gateway at `now`, for status and metrics.
    pub fn facts(&self, now: Millis) -> Vec<GatewayFacts> {
        self.lock()
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
}
