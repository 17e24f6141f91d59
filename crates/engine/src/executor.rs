//! The executor: turns decisions into kills, in the right order.
//!
//! 1. A decision (gateways went down / came up) arrives. Decisions that arrive while the
//!    executor waits for routing are merged, so gateways failing together give one plan and
//!    one broker request; a gateway that comes back before anything was killed drops out.
//! 2. Wait for routing to move (policy `routing.confirm`): rtnetlink (no rule or table path
//!    for a down gateway's new connections leads to it any more, and a recovered one is
//!    used again), the FreeBSD routing socket (no default route uses a down gateway any
//!    more, and a recovered one is used again), pf's main filter ruleset reloaded (its
//!    ticket, read from the broker when the wait starts, changed), an explicit `routed`
//!    signal, or the settle delay. A `routed` signal cuts any wait short; past
//!    `settle_timeout` the plan runs anyway and the `routed` event says it was not confirmed.
//! 3. Plan (pure, `statecull_policy::plan`) with the broker's current capabilities, and run
//!    each step. A lost broker is waited for (the plan stays pending, reconnecting with
//!    backoff), so a broker restart loses nothing.
//! 4. After `sweep_delay`, one trailing sweep repeats the down steps' selectors and reports
//!    what it still found (non-zero: states were born on the dead link in the race window).
//!
//! What to merge, how long to wait and what the sweep may touch is decided by the pure
//! `batch` module; this one does the waiting, the route dumps, the broker calls and the
//! events.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use statecull_control::EventKind;
use statecull_policy::model::RoutingConfirm;
use statecull_policy::plan::{self, Action, Plan, PlanInput, Purpose, SweepRequest};
use statecull_proto::{Capabilities, KillReport, Selector, StateHandle, StateRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::batch::{self, Batch, Next, RouteCheck, Routed, Sweep};
use crate::error::EngineError;
use crate::events::NewEvent;
use crate::routes::Routes;
use crate::state::{Decision, Shared};

/// `confirm = "pf-ruleset"`: read the ruleset ticket every [`batch::TICKET_BACKGROUND_MS`] on
/// the background lane (which stands aside for plans and kills), so that a routing wait can
/// start from the ticket as it was before its decision. Runs for the engine's lifetime; a
/// failed or dropped read is skipped.
pub async fn watch_ruleset_ticket(shared: Arc<Shared>) {
    let every = Duration::from_millis(batch::TICKET_BACKGROUND_MS);
    loop {
        tokio::time::sleep(every).await;
        match shared.broker.call_background(|c| c.ruleset_ticket()).await {
            Ok(t) => shared.record_ticket(t.ticket),
            Err(e) => tracing::debug!("background ruleset ticket: {e}"),
        }
    }
}

/// Longest wait for one ruleset ticket (`confirm = "pf-ruleset"`); past it the rest of the
/// routing wait is the settle delay.
const TICKET_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a plan waits for a lost broker before it is given up (and reported failed).
pub const BROKER_PATIENCE: Duration = Duration::from_secs(3600);

pub struct Executor {
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<Decision>,
    routes: Option<Routes>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("routes", &self.routes.is_some()).finish()
    }
}

/// Outcome of one step, for events.
struct StepOutcome {
    killed: u64,
    per_gateway: Vec<(usize, u64)>,
    detail: String,
    /// The broker's kill path and table passes, when one request did the step.
    path: Option<(String, u32)>,
    /// The broker's own time for the step's kill, when one request did it.
    broker_us: Option<u64>,
}

impl Executor {
    pub fn new(
        shared: Arc<Shared>,
        rx: mpsc::UnboundedReceiver<Decision>,
        routes: Option<Routes>,
    ) -> Self {
        Executor { shared, rx, routes }
    }

    pub async fn run(mut self) {
        while let Some(first) = self.rx.recv().await {
            let mut batch = Batch::new(first);
            self.drain(&mut batch);
            // Wait for routing; decisions that arrived at the last moment join the batch
            // and are waited for too, so every gateway of the plan has had its wait.
            let routed_ok = loop {
                let ok = self.wait_for_routing(&mut batch).await;
                let known = batch.targets();
                self.drain(&mut batch);
                if batch.covered(&known) {
                    break ok;
                }
            };
            self.execute(&mut batch, routed_ok).await;
            self.shared.decisions_done(batch.taken());
            self.shared.refresh_metrics();
        }
    }

    /// Merge every decision already queued (they arrived while we waited or worked).
    fn drain(&mut self, batch: &mut Batch) {
        while let Ok(d) = self.rx.try_recv() {
            batch.absorb(d);
        }
    }

    /// Is routing where the batch needs it? Only for rtnetlink and the routing socket
    /// ([`Routes::moved`]: on Linux a snapshot of every rule and table decides, as the kernel
    /// would route each gateway's new connections, `routes::Snapshot`; on FreeBSD the default
    /// route via each gateway).
    async fn routes_moved(&mut self, batch: &Decision) -> Result<bool, EngineError> {
        let p = self.shared.policy();
        let gateway = |g: &usize| p.gateways.get(*g);
        let down: Vec<_> = batch.went_down.iter().filter_map(gateway).collect();
        let up: Vec<_> = batch.came_up.iter().filter_map(gateway).collect();
        let wans: Vec<String> = p.gateways.iter().map(|g| g.interface.0.clone()).collect();
        let Some(r) = self.routes.as_mut() else { return Ok(false) };
        r.moved(&down, &up, &wans).await
    }

    /// Wait until routing has moved for every gateway in the batch (merging decisions that
    /// arrive meanwhile), as the pure [`RoutingWait`] directs. Returns whether it was
    /// confirmed (false: timed out).
    async fn wait_for_routing(&mut self, batch: &mut Batch) -> bool {
        let routing = self.shared.policy().routing.clone();
        let clock = *self.shared.clock();
        let mut wait = batch.wait(&routing, self.routes.is_some());
        if wait.confirm() == RoutingConfirm::PfRuleset {
            wait.seed_ticket(self.shared.ticket_before(batch.decided()));
        }
        let mut routed_rx = self.shared.routed().subscribe();
        let Routed { confirmed, how } = loop {
            let mut next = wait.next(batch, clock.now_ms(), &self.shared.routed().counts());
            if next == Next::CheckRoutes {
                let check = match self.routes_moved(batch.decision()).await {
                    Ok(true) => RouteCheck::Moved,
                    Ok(false) => RouteCheck::NotYet,
                    Err(e) => {
                        tracing::warn!(
                            "route watcher failed, falling back to the settle delay: {e}"
                        );
                        RouteCheck::Failed
                    }
                };
                next = wait.routes(check, clock.now_ms());
            }
            if next == Next::ReadTicket {
                let read = match self.ruleset_ticket().await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(
                            "cannot read pf's ruleset ticket, falling back to the settle delay: {e}"
                        );
                        None
                    }
                };
                next = wait.ticket(read, clock.now_ms());
            }
            let (until, watch_routes) = match next {
                Next::Done(routed) => break routed,
                Next::Sleep { until, routes } => (until, routes),
                // `routes` never asks for another check; were it to, sleep as rtnetlink does.
                Next::CheckRoutes => (wait.deadline(), true),
                // Nor does `ticket` ask for another read; were it to, poll.
                Next::ReadTicket => (clock.now_ms().saturating_add(batch::TICKET_POLL_MS), false),
            };
            // Wake on: a new decision, a routed signal, a route change, or the deadline.
            let any_routed = futures_any_changed(&mut routed_rx);
            let route_change = async {
                match (watch_routes, self.routes.as_mut()) {
                    (true, Some(w)) => {
                        if let Err(e) = w.changed().await {
                            tracing::warn!("route watcher: {e}");
                            std::future::pending::<()>().await;
                        }
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                d = self.rx.recv() => match d {
                    Some(d) => wait.join(batch, d),
                    None => break wait.closed(),
                },
                () = any_routed => {},
                () = route_change => {},
                () = tokio::time::sleep_until(clock.instant(until)) => {},
            }
        };
        let waited = clock.since(batch.decided());
        let p = self.shared.policy();
        for g in batch.gateways() {
            let name = p.gateways.get(g).map_or("?", |x| x.name.as_str()).to_owned();
            let msg = if confirmed {
                format!("routing has moved for {name} ({how})")
            } else {
                format!(
                    "routing for {name} NOT confirmed within {} ms ({how}); killing anyway, the sweep will report stragglers",
                    routing.settle_timeout.as_millis()
                )
            };
            self.shared.bus().publish(
                NewEvent::new(EventKind::Routed, msg)
                    .gateway(name)
                    .elapsed_ms(waited.as_secs_f64() * 1e3)
                    .field("confirmed", confirmed)
                    .field("via", how),
            );
        }
        confirmed
    }

    /// pf's main filter ruleset ticket, on the kill lane (background work stands aside; a
    /// read never waits behind a count), within [`TICKET_READ_TIMEOUT`].
    async fn ruleset_ticket(&self) -> Result<u32, EngineError> {
        let read = self.shared.broker.call(|c| c.ruleset_ticket());
        match tokio::time::timeout(TICKET_READ_TIMEOUT, read).await {
            Ok(r) => {
                let t = r?;
                tracing::debug!(ticket = t.ticket, rules = t.rules, "pf ruleset ticket");
                self.shared.record_ticket(t.ticket);
                Ok(t.ticket)
            }
            Err(_) => Err(EngineError::Routes(format!(
                "the broker did not answer a ruleset ticket within {TICKET_READ_TIMEOUT:?}"
            ))),
        }
    }

    async fn capabilities(&self) -> Result<Capabilities, EngineError> {
        let shared = &self.shared;
        let hello = shared
            .broker
            .call_retrying(
                |c| Ok(c.hello().clone()),
                BROKER_PATIENCE,
                |e| tracing::warn!("plan pending: broker unreachable ({e}); retrying"),
            )
            .await?;
        Ok(hello.backend.capabilities)
    }

    async fn execute(&mut self, batch: &mut Batch, routed_ok: bool) {
        let started = Instant::now();
        let decided = self.shared.clock().instant(batch.decided());
        let caps = match self.capabilities().await {
            Ok(c) => c,
            Err(e) => {
                self.shared.bus().publish(NewEvent::new(
                    EventKind::PlanFailed,
                    format!("no plan run: the broker stayed unreachable: {e}"),
                ));
                return;
            }
        };
        // The broker may have kept us waiting: fold in what happened meanwhile, and plan
        // from the health as it is now, not as it was when the first decision came.
        self.drain(batch);
        if batch.settle(self.shared.usable()) {
            tracing::info!("health changed while the plan waited; planning from the current state");
        }
        if batch.is_empty() {
            self.shared.bus().publish(NewEvent::new(
                EventKind::PlanSkipped,
                "nothing to do: the gateways that changed are back as they were before anything was killed",
            ));
            return;
        }
        let d = batch.decision();
        // No reload comes while a decision is pending (`Shared::reload` waits): the plan, its
        // events and its sweep are of the policy the decisions were made under.
        // `nat_addr = "interface"`: the addresses known now (the sweep keeps them too).
        let policy = self.shared.planning_policy();
        let input = PlanInput {
            policy: &policy,
            usable: &d.usable,
            went_down: &d.went_down,
            came_up: &d.came_up,
            caps: &caps,
        };
        let plan = match plan::plan(&input) {
            Ok(p) => p,
            Err(e) => {
                self.shared
                    .bus()
                    .publish(NewEvent::new(EventKind::PlanFailed, format!("cannot plan: {e}")));
                return;
            }
        };
        if plan.is_empty() {
            self.shared.bus().publish(
                NewEvent::new(EventKind::PlanSkipped, headline(&plan))
                    .field("explanation", plan.explain(None))
                    .field("routing_confirmed", routed_ok),
            );
            return;
        }
        self.shared.bus().publish(
            NewEvent::new(EventKind::PlanStarted, headline(&plan))
                .field("explanation", plan.explain(None))
                .field("steps", plan.steps.len())
                .elapsed_ms(decided.elapsed().as_secs_f64() * 1e3),
        );
        let mut total = 0u64;
        let mut failed = false;
        for step in &plan.steps {
            let t0 = Instant::now();
            match run_action(&self.shared, &step.action, &step.gateways, &step.owners).await {
                Ok(out) => {
                    total += out.killed;
                    for &(g, n) in &out.per_gateway {
                        self.shared.add_kills(g, n, false);
                    }
                    let mut e = NewEvent::new(
                        EventKind::PlanDone,
                        format!(
                            "{}: killed {} states ({})",
                            purpose_text(&step.purpose),
                            out.killed,
                            out.detail
                        ),
                    )
                    .killed(out.killed)
                    .elapsed_ms(t0.elapsed().as_secs_f64() * 1e3)
                    .field("purpose", purpose_name(&step.purpose))
                    .field("why", &step.why)
                    .field(
                        "decision_to_kill_ms",
                        format!("{:.1}", decided.elapsed().as_secs_f64() * 1e3),
                    );
                    for &(g, n) in &out.per_gateway {
                        e = e.field(&format!("killed_{}", self.shared.gateway_name(g)), n);
                    }
                    if let Some((path, passes)) = &out.path {
                        e = e.field("path", path).field("table_passes", passes);
                    }
                    if let Some(us) = out.broker_us {
                        // The kill alone, as the broker timed it: what the rest of
                        // `decision_to_kill_ms` is compared with.
                        e = e.field("broker_ms", format!("{:.1}", us as f64 / 1e3));
                    }
                    if let [(g, _)] = out.per_gateway.as_slice() {
                        e = e.gateway(self.shared.gateway_name(*g));
                    }
                    self.shared.bus().publish(e);
                }
                Err(err) => {
                    failed = true;
                    self.shared.bus().publish(
                        NewEvent::new(EventKind::PlanFailed, format!("{}: {err}", step.why))
                            .elapsed_ms(t0.elapsed().as_secs_f64() * 1e3),
                    );
                }
            }
        }
        let duration = started.elapsed().as_secs_f64();
        self.shared.counters().plan_finished(duration);
        self.shared.refresh_metrics();
        tracing::info!(
            target: "statecull::step",
            step = "plan",
            killed = total,
            failed,
            duration_ms = duration * 1e3,
            "plan finished"
        );
        let sweep = plan.sweep_requests();
        if !sweep.is_empty() {
            let delay = self.shared.policy().routing.sweep_delay;
            if !delay.is_zero() {
                let gws = plan
                    .steps
                    .iter()
                    .filter(|s| matches!(s.purpose, Purpose::GatewayDown { .. }))
                    .flat_map(|s| s.gateways.iter().copied())
                    .collect::<Vec<_>>();
                self.sweep_later(sweep, gws, delay, Arc::clone(&policy));
            }
        }
    }

    /// Schedule the trailing sweep; runs beside the next decisions.
    /// Scheduled under `policy` (its plan's), which a reload waits for.
    fn sweep_later(
        &self,
        requests: Vec<SweepRequest>,
        gateways: Vec<usize>,
        delay: Duration,
        policy: Arc<statecull_policy::Policy>,
    ) {
        let shared = Arc::clone(&self.shared);
        shared.counters().sweep_scheduled();
        tokio::spawn(async move {
            /// The sweep has ended whichever way this task does.
            struct Ended<'a>(&'a Shared);
            impl Drop for Ended<'_> {
                fn drop(&mut self) {
                    self.0.counters().sweep_ended();
                }
            }
            let _ended = Ended(&shared);
            tokio::time::sleep(delay).await;
            let t0 = Instant::now();
            // A gateway that came back during the delay has new, healthy states: the sweep
            // must not touch them. Sweep only gateways that are still down.
            let caps = shared.broker.state().hello.map(|h| h.backend.capabilities);
            let (requests, gateways) =
                match batch::sweep(&policy, requests, &gateways, &shared.usable(), caps.as_ref()) {
                    Sweep::Run { requests, gateways } => (requests, gateways),
                    Sweep::AllBack { back } => {
                        let names: Vec<String> =
                            back.iter().map(|&g| shared.gateway_name(g)).collect();
                        shared.bus().publish(
                            NewEvent::new(
                                EventKind::SweepDone,
                                format!("trailing sweep skipped: {} back up", names.join(", ")),
                            )
                            .killed(0)
                            .field("skipped", "true"),
                        );
                        return;
                    }
                    Sweep::Nothing => return,
                };
            let mut result = Ok(StepOutcome {
                killed: 0,
                per_gateway: vec![],
                detail: String::new(),
                path: None,
                broker_us: None,
            });
            for request in &requests {
                match run_action(&shared, &request.action, &gateways, &request.owners).await {
                    Ok(o) => {
                        if let Ok(acc) = result.as_mut() {
                            acc.killed += o.killed;
                            for (g, n) in o.per_gateway {
                                match acc.per_gateway.iter_mut().find(|(x, _)| *x == g) {
                                    Some(slot) => slot.1 += n,
                                    None => acc.per_gateway.push((g, n)),
                                }
                            }
                        }
                    }
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            match result {
                Ok(out) => {
                    for &(g, n) in &out.per_gateway {
                        shared.add_kills(g, n, true);
                    }
                    shared.counters().sweep_finished(out.killed);
                    shared.refresh_metrics();
                    let msg = if out.killed == 0 {
                        "trailing sweep found nothing left: routing moved in time".to_owned()
                    } else {
                        format!(
                            "trailing sweep killed {} states born after the kill (routing was late)",
                            out.killed
                        )
                    };
                    let mut e = NewEvent::new(EventKind::SweepDone, msg)
                        .killed(out.killed)
                        .elapsed_ms(t0.elapsed().as_secs_f64() * 1e3)
                        .field("leftovers", out.killed);
                    if let [g] = gateways.as_slice() {
                        e = e.gateway(shared.gateway_name(*g));
                    }
                    shared.bus().publish(e);
                }
                Err(err) => {
                    shared.bus().publish(NewEvent::new(
                        EventKind::PlanFailed,
                        format!("trailing sweep failed: {err}"),
                    ));
                }
            }
        });
    }
}

/// Wait until any of the routed counters changes.
async fn futures_any_changed(rxs: &mut [tokio::sync::watch::Receiver<u64>]) {
    if rxs.is_empty() {
        return std::future::pending().await;
    }
    let futs = rxs.iter_mut().map(|rx| Box::pin(async move { rx.changed().await }));
    let (res, _, _) = select_all(futs).await;
    if res.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A tiny `select_all` over boxed futures (no futures crate dependency).
async fn select_all<F, T>(futs: impl Iterator<Item = std::pin::Pin<Box<F>>>) -> (T, usize, ())
where
    F: Future<Output = T> + ?Sized,
{
    let mut futs: Vec<_> = futs.collect();
    std::future::poll_fn(move |cx| {
        for (i, f) in futs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready((v, i, ()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The first line of a plan's explanation (its summary), for one-line events.
fn headline(plan: &Plan) -> String {
    plan.explain(None).lines().next().unwrap_or("plan").to_owned()
}

/// "WAN1 down", "fail-back of group failover (WAN2 -> WAN1)", "flush (WAN1 down)".
fn purpose_text(p: &Purpose) -> String {
    match p {
        Purpose::GatewayDown { gateways } => format!("{} down", gateways.join(", ")),
        Purpose::FlushAll { gateways } => {
            format!("flush of the whole table ({} down)", gateways.join(", "))
        }
        Purpose::FailBack { group, recovered, lower } => {
            format!("fail-back of group {group} ({} -> {})", lower.join(", "), recovered.join(", "))
        }
    }
}

fn purpose_name(p: &Purpose) -> &'static str {
    match p {
        Purpose::GatewayDown { .. } => "gateway-down",
        Purpose::FlushAll { .. } => "flush-all",
        Purpose::FailBack { .. } => "fail-back",
    }
}

async fn kill_matching(
    shared: &Shared,
    selectors: Vec<Selector>,
    match_opposite: bool,
) -> Result<KillReport, EngineError> {
    shared
        .broker
        .call_retrying(
            move |c| c.kill_matching(selectors.clone(), match_opposite),
            BROKER_PATIENCE,
            |e| tracing::warn!("kill pending: broker unreachable ({e}); retrying"),
        )
        .await
}

fn report_detail(r: &KillReport) -> String {
    let mut s = format!(
        "path {}, {} table pass(es), broker {} ms",
        r.path,
        r.table_passes,
        r.elapsed_us / 1000
    );
    if r.spared > 0 {
        s.push_str(&format!(", {} spared by the broker's protected prefixes", r.spared));
    }
    if r.not_found > 0 {
        s.push_str(&format!(", {} already gone", r.not_found));
    }
    if r.failed > 0 {
        s.push_str(&format!(", {} FAILED: {}", r.failed, r.first_error.as_deref().unwrap_or("?")));
    }
    if let Some(n) = &r.note {
        s.push_str(&format!("; {n}"));
    }
    s
}

/// A `KillMatching` report credited to the step's `gateways` from its per-selector counts
/// (`owners[i]` owns selector `i`). One gateway takes the whole kill; a report without a
/// count per selector (it cannot be split) credits no one rather than guess.
fn credit(gateways: &[usize], owners: &[usize], r: &KillReport) -> Vec<(usize, u64)> {
    match gateways {
        [g] => vec![(*g, r.killed)],
        _ if r.per_selector.len() == owners.len() => {
            plan::attribute(gateways, owners, &r.per_selector)
        }
        _ => {
            tracing::warn!(
                "the broker's kill report has {} per-selector counts for {} selectors; the \
                 {} killed states are not credited per gateway",
                r.per_selector.len(),
                owners.len(),
                r.killed
            );
            vec![]
        }
    }
}

/// Run one kill. `gateways` are the gateways it is about (the step's, or the sweep's) and
/// `owners` the gateway each selector belongs to, so the count is credited per gateway.
async fn run_action(
    shared: &Arc<Shared>,
    action: &Action,
    gateways: &[usize],
    owners: &[usize],
) -> Result<StepOutcome, EngineError> {
    match action {
        Action::Flush => {
            let r = shared
                .broker
                .call_once(
                    |c| c.flush(None),
                    BROKER_PATIENCE,
                    |e| tracing::warn!("flush pending: broker unreachable ({e}); retrying"),
                )
                .await?;
            Ok(StepOutcome {
                killed: r.killed,
                per_gateway: vec![],
                detail: report_detail(&r),
                path: Some((r.path.to_string(), r.table_passes)),
                broker_us: Some(r.elapsed_us),
            })
        }
        Action::KillMatching { selectors, match_opposite } => {
            // No count first: the broker's report says what each selector killed (a state
            // matching several counts for the first), which credits each gateway.
            let r = kill_matching(shared, selectors.clone(), *match_opposite).await?;
            let per_gateway = credit(gateways, owners, &r);
            Ok(StepOutcome {
                killed: r.killed,
                per_gateway,
                detail: report_detail(&r),
                path: Some((r.path.to_string(), r.table_passes)),
                broker_us: Some(r.elapsed_us),
            })
        }
        Action::KillExcept { selectors, match_opposite, except } => {
            let mut records: Vec<StateRecord> = Vec::new();
            for sel in selectors {
                let s = sel.clone();
                let (mut got, _done) = shared
                    .broker
                    .call_retrying(
                        move |c| c.snapshot(Some(s.clone())),
                        BROKER_PATIENCE,
                        |e| tracing::warn!("snapshot pending: broker unreachable ({e}); retrying"),
                    )
                    .await?;
                records.append(&mut got);
            }
            // A fail-back can list millions of states: match them off the runtime's only
            // thread, so probes and the control socket keep being served.
            let listed = records.len();
            let except_owned = except.clone();
            let resolved =
                tokio::task::spawn_blocking(move || plan::resolve_except(&records, &except_owned))
                    .await
                    .map_err(|e| {
                        EngineError::Control(format!("matching protected flows failed: {e}"))
                    })?;
            let limit = shared
                .broker
                .state()
                .hello
                .map_or(statecull_proto::MAX_HANDLES, |h| h.limits.max_handles)
                .max(1) as usize;
            let mut killed = 0u64;
            let mut not_found = 0u64;
            // With match_opposite the broker kills each victim's twin too (pf pairs them in
            // crates/pf, as for KillMatching): the LAN-side half of a connection NAT'd on the
            // gateway being left. A twin that is also a later chunk's victim is counted
            // there as already gone.
            let match_opposite = *match_opposite;
            for chunk in resolved.handles.chunks(limit) {
                let handles: Vec<StateHandle> = chunk.to_vec();
                let r = shared
                    .broker
                    .call_retrying(
                        move |c| c.kill_handles(handles.clone(), match_opposite),
                        BROKER_PATIENCE,
                        |e| tracing::warn!("kill pending: broker unreachable ({e}); retrying"),
                    )
                    .await?;
                killed += r.killed;
                not_found += r.not_found;
            }
            let per_gateway = match gateways {
                [g] => vec![(*g, killed)],
                _ => vec![],
            };
            Ok(StepOutcome {
                killed,
                per_gateway,
                path: None,
                broker_us: None,
                detail: format!(
                    "{} listed, {} spared as protected flows, {} already gone{}",
                    listed,
                    resolved.spared,
                    not_found,
                    if match_opposite {
                        " (the kills include each handle's twin; a listed state already killed \
                         as an earlier handle's twin counts as gone)"
                    } else {
                        ""
                    }
                ),
            })
        }
    }
}
