//! What the engine's tasks share, as owned parts with private fields:
//!
//! * the policy in force (replaced as a whole by a reload, `crate::reload`) and the
//!   [`Clock`] the pure machines are fed;
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

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use statecull_control::EventKind;
use statecull_policy::health::{Health, Probe};
use statecull_policy::model::HealthSource;
use statecull_policy::{Millis, Policy};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use book::{Forced, GatewayBook, GatewayFacts, Outcome};
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

/// A gateway named by its index in the policy in force, or by its name (what every task
/// that outlives a reload uses: indices change when gateways are added or removed).
pub trait GatewayRef {
    /// The gateway's index in `policy`, if it has it.
    fn resolve(&self, policy: &Policy) -> Option<usize>;
}

impl GatewayRef for usize {
    fn resolve(&self, policy: &Policy) -> Option<usize> {
        (*self < policy.gateways.len()).then_some(*self)
    }
}

impl GatewayRef for &str {
    fn resolve(&self, policy: &Policy) -> Option<usize> {
        policy.gateway_index(self)
    }
}

#[derive(Debug)]
pub struct Shared {
    /// The policy in force. Every health input holds the read lock from the book's update to
    /// the decision it leads to; a reload swaps policy and book under the write lock.
    policy: RwLock<Arc<Policy>>,
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
    /// What start-up fixed (set by the daemon; without it there is no file to reload).
    start_up: std::sync::OnceLock<crate::reload::StartUp>,
    /// Interface addresses for `nat_addr = "interface"` (the address watcher's book).
    addresses: std::sync::Mutex<crate::routes::addrs::AddressBook>,
    /// One reload at a time (SIGHUP and `statecull reload` share it).
    reloading: tokio::sync::Mutex<()>,
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
            policy: RwLock::new(Arc::new(policy)),
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
            start_up: std::sync::OnceLock::new(),
            addresses: std::sync::Mutex::default(),
            reloading: tokio::sync::Mutex::new(()),
        };
        (shared, rx, mrx)
    }

    /// The policy in force now. A task that needs one policy for a whole piece of work
    /// (the executor for a plan) keeps this `Arc`.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.live())
    }

    /// The policy a plan, a count or a sweep is made from: the policy in force with each
    /// `nat_addr = "interface"` gateway's NAT addresses as known now (its interface's, and
    /// those that left it within `routes::addrs::RETAIN_MS`). The same `Arc` when no
    /// gateway takes its addresses from its interface.
    pub fn planning_policy(&self) -> Arc<Policy> {
        Self::planning(self.policy(), &self.addresses(), self.now_ms())
    }

    fn planning(
        policy: Arc<Policy>,
        book: &crate::routes::addrs::AddressBook,
        now: Millis,
    ) -> Arc<Policy> {
        if !policy.uses_interface_addresses() {
            return policy;
        }
        Arc::new(policy.with_interface_addresses(|i| book.selectable(&i.0, now)))
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, crate::routes::addrs::AddressBook> {
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The address watcher read the interfaces' addresses anew.
    pub fn set_addresses(&self, book: crate::routes::addrs::AddressBook) {
        *self.addresses() = book;
    }

    fn live(&self) -> RwLockReadGuard<'_, Arc<Policy>> {
        self.policy.read().unwrap_or_else(PoisonError::into_inner)
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
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner).record(now, ticket);
    }

    /// The first ticket for a wait whose decision was made at `decided` (see
    /// [`crate::batch::TicketLog::baseline_for`]).
    pub fn ticket_before(&self, decided: Millis) -> Option<u32> {
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner).baseline_for(decided)
    }

    /// The pure code's clock: milliseconds since the engine started.
    pub fn now_ms(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The name of the gateway at `index` in the policy in force.
    pub fn gateway_name(&self, index: usize) -> String {
        name_of(&self.live(), index).to_owned()
    }

    /// Usability of every gateway now: not down and not failed by its groups' trigger
    /// levels (the policy decides, from each gateway's judgement).
    pub fn usable(&self) -> Vec<bool> {
        self.usable_under(&self.live())
    }

    /// The policy to plan with ([`Shared::planning_policy`]) and every gateway's
    /// usability, taken together (a reload cannot come between them).
    pub fn usable_now(&self) -> (Arc<Policy>, Vec<bool>) {
        let policy = self.live();
        let usable = self.usable_under(&policy);
        (Self::planning(Arc::clone(&policy), &self.addresses(), self.now_ms()), usable)
    }

    /// The policy in force and the health facts of its gateways, taken together.
    pub fn facts_now(&self) -> (Arc<Policy>, Vec<GatewayFacts>) {
        let policy = self.live();
        (Arc::clone(&policy), self.book.facts(self.now_ms()))
    }

    fn usable_under(&self, policy: &Policy) -> Vec<bool> {
        self.book.judgements().into_iter().enumerate().map(|(g, j)| policy.usable(g, j)).collect()
    }

    /// One probe result (ICMP) for a gateway. Probes still count while a verdict is
    /// forced, but cannot override it. Ignored for a gateway the policy in force does not
    /// probe by ICMP (removed or changed by a reload).
    pub fn record_probe(&self, gateway: impl GatewayRef, probe: Probe, sent_unix_ms: u64) {
        let policy = self.live();
        let Some(i) = gateway.resolve(&policy) else { return };
        if policy.gateways.get(i).is_none_or(|g| g.source != HealthSource::Icmp) {
            return;
        }
        if let Some(o) = self.book.record_probe(i, self.now_ms(), probe, sent_unix_ms) {
            self.apply(&policy, i, o);
        }
    }

    /// A dpinger summary for a gateway (ignored for one the policy in force does not read
    /// from dpinger).
    pub fn record_summary(
        &self,
        gateway: impl GatewayRef,
        loss_pct: f64,
        latency: Option<Duration>,
    ) {
        let policy = self.live();
        let Some(i) = gateway.resolve(&policy) else { return };
        if policy.gateways.get(i).is_none_or(|g| !matches!(g.source, HealthSource::Dpinger { .. }))
        {
            return;
        }
        if let Some(o) = self.book.record_summary(i, self.now_ms(), loss_pct, latency) {
            self.apply(&policy, i, o);
        }
    }

    /// The gateway's health source could not be read (or its report was refused): its
    /// health is not being updated. Shown by status and metrics until it answers again.
    pub fn source_failed(&self, gateway: impl GatewayRef, message: &str) {
        let failed = {
            let policy = self.live();
            gateway.resolve(&policy).is_some_and(|i| self.book.source_failed(i, message))
        };
        if failed {
            self.refresh_metrics();
        }
    }

    /// The gateway's health source answered.
    pub fn source_ok(&self, gateway: impl GatewayRef) {
        let back = {
            let policy = self.live();
            gateway.resolve(&policy).is_some_and(|i| self.book.source_ok(i))
        };
        if back {
            self.refresh_metrics();
        }
    }

    /// Timers (hold-down, damping decay) of every gateway.
    pub fn tick(&self) {
        let policy = self.live();
        for (i, o) in self.book.tick(self.now_ms()) {
            self.apply(&policy, i, o);
        }
    }

    /// An external verdict (`statecull gateway NAME down|up`). Returns what changed.
    pub fn force(&self, gateway: impl GatewayRef, up: bool) -> String {
        let policy = self.live();
        let Some(gateway) = gateway.resolve(&policy) else { return "no such gateway".into() };
        let name = name_of(&policy, gateway).to_owned();
        let o = match self.book.force(gateway, self.now_ms(), up) {
            Forced::NoSuchGateway => return "no such gateway".into(),
            Forced::Already => None,
            Forced::Held(why) => {
                let msg = format!("{name} stays down for now ({why})");
                self.bus.publish(
                    NewEvent::new(EventKind::VerdictHeld, format!("{name}: {why}"))
                        .gateway(name.clone())
                        .field("verdict", "up"),
                );
                return msg;
            }
            Forced::Changed(o) => Some(o),
        };
        match o {
            Some(o) => {
                let msg = match &o.transition {
                    Some(t) => format!("{name} is now {} ({})", t.to.name(), t.reason),
                    None => format!("{name} is now {}", o.after),
                };
                self.apply(&policy, gateway, o);
                msg
            }
            None => format!("{name} was already {}", if up { "up" } else { "down" }),
        }
    }

    /// Count a `routed` signal for a gateway.
    pub fn signal_routed(&self, gateway: impl GatewayRef) {
        let policy = self.live();
        if let Some(i) = gateway.resolve(&policy) {
            self.routed.signal(i);
        }
    }

    /// Publish a transition (or a change of what a degraded gateway is degraded by) and, if
    /// its usability changed (down, or failed by its groups' trigger levels), hand a
    /// decision to the executor.
    ///
    /// `policy` is the policy in force, whose read lock the caller holds (from the book's
    /// update to here: a reload cannot renumber the gateways in between).
    fn apply(&self, policy: &Policy, gateway: usize, o: Outcome) {
        if o.quiet() {
            return;
        }
        let name = name_of(policy, gateway).to_owned();
        let was = policy.usable(gateway, o.before);
        let is = policy.usable(gateway, o.after);
        // Which groups' trigger levels fail it now (evidence when that is what decides).
        let failed_in: Vec<String> = policy
            .groups_of(gateway)
            .filter(|g| !o.after.down && g.trigger.fails(o.after))
            .map(|g| format!("{} (trigger = {})", g.name, g.trigger.name()))
            .collect();
        let mut e = match &o.transition {
            Some(t) => {
                let kind = match t.to {
                    Health::Down => EventKind::GatewayDown,
                    Health::Degraded => EventKind::GatewayDegraded,
                    Health::Up => EventKind::GatewayUp,
                };
                let mut e = NewEvent::new(
                    kind,
                    format!("{name} {} -> {}: {}", t.from.name(), t.to.name(), t.reason),
                )
                .field("from", t.from.name())
                .field("to", t.to.name())
                .field("cause", t.cause.name())
                .field("loss_pct", format!("{:.1}", t.evidence.loss_pct))
                .field("samples", t.evidence.samples);
                if let Some(l) = t.evidence.latency_avg {
                    e = e.field("latency_ms", format!("{:.1}", l.as_secs_f64() * 1e3));
                }
                if t.evidence.suppressed {
                    e = e.field("suppressed", "true");
                }
                if let Some(first) = self.book.noted(gateway, t) {
                    e = e.field("first_lost_probe_unix_ms", first);
                }
                e
            }
            None => NewEvent::new(
                EventKind::GatewayDegraded,
                format!("{name} now {} (was {})", o.after, o.before),
            ),
        }
        .gateway(name)
        .field("judged", o.after.to_string())
        .field("usable", is);
        if !failed_in.is_empty() {
            e = e.field("failed_by_trigger", failed_in.join(", "));
        }
        self.bus.publish(e);
        if was != is {
            // The executor lives as long as the engine; a send error means shutdown.
            let _ = self.decisions.send_with(|| {
                let d = Decision {
                    went_down: if is { vec![] } else { vec![gateway] },
                    came_up: if is { vec![gateway] } else { vec![] },
                    usable: self.usable_under(policy),
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
        self.refresh_metrics_under(policy);
    }

    /// What start-up fixed: the policy's path and the flags that override its settings.
    /// Set once by the daemon; an engine without it has no file to reload.
    pub fn set_start_up(&self, start_up: crate::reload::StartUp) {
        let _ = self.start_up.set(start_up);
    }

    /// Read the policy file again and put it in force (SIGHUP and `statecull reload`: this
    /// is the one implementation; `crate::reload` says what it guarantees). `Ok`: what
    /// changed; `Err`: why not, the old policy staying in force. Either is logged and
    /// published (`policy-reloaded`, `policy-reload-failed`); `via` says who asked.
    pub async fn reload(&self, via: &str) -> Result<String, String> {
        let _one = self.reloading.lock().await;
        let result = self.reload_once().await;
        let (kind, message) = match &result {
            Ok(m) => {
                tracing::info!("{via}: {m}");
                (EventKind::PolicyReloaded, m.clone())
            }
            Err(m) => {
                tracing::warn!("{via}: {m}");
                (EventKind::PolicyReloadFailed, m.clone())
            }
        };
        self.bus.publish(NewEvent::new(kind, message).field("via", via));
        result
    }

    async fn reload_once(&self) -> Result<String, String> {
        let Some(start) = self.start_up.get() else {
            return Err("this engine was not started from a policy file: nothing to reload".into());
        };
        let path = start.policy.path().display().to_string();
        let text = start.policy.read().map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (after start-up the engine runs as its own user: the file must be readable by it)"
            } else {
                ""
            };
            format!("{path} not reloaded (the policy in force stays): cannot read it: {e}{hint}")
        })?;
        let new = statecull_policy::load::parse(&text, &path)
            .map_err(|e| format!("not reloaded (the policy in force stays): {e}"))?;
        let refused = crate::reload::restart_only(&self.policy(), &new, start);
        if !refused.is_empty() {
            return Err(format!(
                "{path} not reloaded (the policy in force stays): {}",
                refused.join("; ")
            ));
        }
        // A plan in flight (and its sweep) finishes under its own policy: wait for quiet.
        let deadline = Instant::now() + crate::reload::QUIET_WAIT;
        let mut new = Some(new);
        loop {
            if !self.counters.busy() {
                let mut live = self.policy.write().unwrap_or_else(PoisonError::into_inner);
                // Decisions are sent under the read lock: none can start now.
                if !self.counters.busy() {
                    let Some(new) = new.take() else { return Err("reload lost its policy".into()) };
                    let summary = self.swap(&mut live, new);
                    drop(live);
                    self.refresh_metrics();
                    return Ok(format!("{path} reloaded: {summary}"));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{path} not reloaded (the policy in force stays): a plan or its trailing sweep \
                     was still running after {} s; it finishes under the policy it started \
                     with. Reload again when it is done (`statecull status` shows pending \
                     plans)",
                    crate::reload::QUIET_WAIT.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Put `new` in force (write lock held, nothing in flight): gateways matched by name.
    fn swap(&self, live: &mut Arc<Policy>, new: Policy) -> String {
        let old = Arc::clone(live);
        let carried = crate::reload::carried_over(&old, &new);
        self.book.reload(&new, &carried, self.now_ms());
        self.routed.reload(&carried);
        self.states.reload(&carried);
        fn names<'a>(p: &'a Policy, pick: &dyn Fn(&str) -> bool) -> Vec<&'a str> {
            p.gateways.iter().map(|g| g.name.as_str()).filter(|n| pick(n)).collect()
        }
        let kept = names(&new, &|n| old.gateway_index(n).is_some());
        let added = names(&new, &|n| old.gateway_index(n).is_none());
        let dropped = names(&old, &|n| new.gateway_index(n).is_none());
        let mut parts = vec![format!(
            "{} gateway(s), {} group(s); kept with their health: {}",
            new.gateways.len(),
            new.groups.len(),
            if kept.is_empty() { "none".to_owned() } else { kept.join(", ") }
        )];
        if !added.is_empty() {
            parts.push(format!("new (assumed up until judged): {}", added.join(", ")));
        }
        if !dropped.is_empty() {
            parts.push(format!("dropped: {}", dropped.join(", ")));
        }
        if *old == new {
            parts.push("no change".into());
        }
        *live = Arc::new(new);
        parts.join("; ")
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
        self.refresh_metrics_under(&self.live());
    }

    fn refresh_metrics_under(&self, policy: &Policy) {
        let facts = self.gateway_facts();
        let stats = self.counters.stats();
        let broker_connected = self.broker.state().connected;
        let states = self.states.get();
        self.metrics.send_modify(|m| {
            m.gateways = facts
                .iter()
                .enumerate()
                .map(|(i, f)| GatewayMetrics {
                    name: name_of(policy, i).to_owned(),
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

fn name_of(policy: &Policy, index: usize) -> &str {
    policy.gateways.get(index).map_or("?", |g| g.name.as_str())
}
