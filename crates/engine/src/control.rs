//! The control socket: `statecull status|plan|gateway|events` (and scripts) talk to the
//! engine here, one JSON object per line (see `statecull_control`).
//!
//! The socket is created mode 0660 by `statecull_sandbox::socket` (bound in a private
//! directory, renamed into place); who may use it is decided by its group. A line longer
//! than `MAX_CONTROL_LINE` or one that does not parse gets an `Error` reply; an over-long
//! line also closes the connection.
//!
//! Every connection costs the engine a descriptor, and the engine needs descriptors to read
//! gateway health (dpinger polls) and reach the broker. So connections are bounded
//! ([`ControlLimits`]): past the cap a connection gets one `Error` line and is closed; a
//! connection must finish each request line, and read each answer, within the idle timeout;
//! `events --follow` subscribers, which legitimately stay silent, have a smaller cap of their
//! own and are closed when they hang up or stop reading.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use statecull_control::{
    BrokerStatus, ControlReply, ControlRequest, Event, GatewayAction, GatewayStatus,
    MAX_CONTROL_LINE, PlanReply, PlanStepSummary, StatesRefreshStatus, StatusReply,
};
use statecull_policy::model::StatesRefresh;
use statecull_policy::plan::{self, Action, PlanInput, Purpose};
use statecull_proto::{Capabilities, Selector};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;

use crate::error::EngineError;
use crate::state::Shared;

/// How long `plan` (and [`states_per_gateway`]) wait for the broker's counts (they stand
/// aside while a plan is pending, and a count of a big table takes seconds); past it, counts
/// are shown as unknown. `status` never waits: it shows the last background count.
const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

/// Bounds on the control socket's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlLimits {
    /// Connections served at once, `events --follow` subscribers not counted. Further ones
    /// get an `Error` line and are closed.
    pub max_connections: usize,
    /// `events --follow` subscribers at once (a subscriber gives back its connection slot).
    pub max_followers: usize,
    /// A connection must send each complete request line within this (from connecting, or
    /// from its previous answer), and take each answer within it; a follower must keep
    /// reading its events.
    pub idle_timeout: Duration,
}

impl Default for ControlLimits {
    /// 64 + 16 descriptors at most, far below the engine's descriptor limit (see the systemd
    /// unit's `LimitNOFILE=`); 30 s is long for a script between two requests.
    fn default() -> Self {
        ControlLimits {
            max_connections: 64,
            max_followers: 16,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Bind the control socket, mode 0660, without following links (see
/// `statecull_sandbox::socket`): a stale socket is replaced, a live one or anything else at
/// the path refused, and so is a directory others could write.
pub fn bind(path: &Path) -> Result<UnixListener, EngineError> {
    use statecull_sandbox::socket::{SocketError, SocketSpec, bind_unix_listener};
    let spec = SocketSpec { path, mode: 0o660, group: None, owner_name: "a process" };
    let listener = bind_unix_listener(&spec).map_err(|e| {
        EngineError::Config(match e {
            SocketError::InUse { .. } => format!(
                "{e}: is another statecull-engine running? Stop it, or give this one another \
                 --control-socket"
            ),
            other => format!("cannot create the control socket: {other}"),
        })
    })?;
    let io_error = |e| EngineError::io(format!("control socket {}", path.display()), e);
    listener.set_nonblocking(true).map_err(io_error)?;
    UnixListener::from_std(listener).map_err(io_error)
}

/// Serve control connections with the default [`ControlLimits`] until the listener fails.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    serve_with(listener, shared, ControlLimits::default()).await;
}

/// How often an accept error (out of descriptors, say) is logged at most.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serve control connections within `limits`.
pub async fn serve_with(listener: UnixListener, shared: Arc<Shared>, limits: ControlLimits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let followers = Arc::new(Semaphore::new(limits.max_followers));
    let mut accept_errors = crate::sources::RateLimited::new(ACCEPT_ERROR_LOG_EVERY);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    refuse(
                        stream,
                        &format!(
                            "too many control connections (limit {}); try again later",
                            limits.max_connections
                        ),
                    );
                    continue;
                };
                let shared = Arc::clone(&shared);
                let followers = Arc::clone(&followers);
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, shared, limits, slot, followers).await {
                        tracing::debug!("control connection: {e}");
                    }
                });
            }
            Err(e) => {
                if let Some(also) = accept_errors.allow() {
                    tracing::error!(
                        "control socket: accept failed: {e}{} (out of descriptors? the \
                         control socket is answered again once connections close)",
                        crate::sources::also_text(also)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tell a connection over the cap why it is closed, without waiting for it: the line is
/// short and the socket's buffer is empty, so a non-blocking write takes it or nothing does.
fn refuse(stream: UnixStream, message: &str) {
    use std::io::Write as _;
    let Ok(mut line) = serde_json::to_vec(&ControlReply::Error { message: message.into() }) else {
        return;
    };
    line.push(b'\n');
    if let Ok(mut s) = stream.into_std() {
        let _ = s.write(&line);
    }
}

/// Write one line, giving up on a peer that does not take it within `timeout`.
async fn write_line<T: serde::Serialize>(
    w: &mut (impl AsyncWriteExt + Unpin),
    v: &T,
    timeout: Duration,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    match tokio::time::timeout(timeout, w.write_all(&line)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the peer did not read its answer in time",
        )),
    }
}

async fn connection(
    stream: UnixStream,
    shared: Arc<Shared>,
    limits: ControlLimits,
    slot: tokio::sync::OwnedSemaphorePermit,
    followers: Arc<Semaphore>,
) -> std::io::Result<()> {
    let idle = limits.idle_timeout;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut r).take(MAX_CONTROL_LINE as u64 + 1);
        let n = match tokio::time::timeout(idle, limited.read_until(b'\n', &mut buf)).await {
            Ok(n) => n?,
            Err(_) => {
                let message = format!(
                    "no complete request line within {} ms; closing this connection",
                    idle.as_millis()
                );
                // Best effort: the peer may not be reading either.
                let short = idle.min(Duration::from_secs(1));
                let _ = write_line(&mut w, &ControlReply::Error { message }, short).await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            let msg = if n > MAX_CONTROL_LINE {
                "request line too long"
            } else {
                "request line not terminated by a newline"
            };
            write_line(&mut w, &ControlReply::Error { message: msg.into() }, idle).await?;
            return Ok(());
        }
        let req: ControlRequest = match serde_json::from_slice(&buf) {
            Ok(r) => r,
            Err(e) => {
                // serde's message may quote the line (an unknown variant): clipped.
                let why = statecull_proto::text::clip_message(e.to_string());
                let message = format!(
                    "cannot read the request ({why}); expected one JSON object per line, e.g. \"status\" or {{\"gateway\":{{\"name\":\"WAN1\",\"action\":\"down\"}}}}"
                );
                write_line(&mut w, &ControlReply::Error { message }, idle).await?;
                continue;
            }
        };
        match req {
            ControlRequest::Events { follow } => {
                if !follow {
                    let backlog = shared.bus().backlog();
                    write_line(&mut w, &ControlReply::Events { events: backlog }, idle).await?;
                    continue;
                }
                let Ok(_follower) = Arc::clone(&followers).try_acquire_owned() else {
                    let message = format!(
                        "too many `events --follow` subscribers (limit {}); try again later",
                        limits.max_followers
                    );
                    write_line(&mut w, &ControlReply::Error { message }, idle).await?;
                    return Ok(());
                };
                // A follower stays silent for good: it holds a follower slot instead.
                drop(slot);
                return follow_events(&shared, r, w, idle).await;
            }
            other => {
                let reply = match handle(&shared, other).await {
                    Ok(r) => r,
                    Err(e) => ControlReply::Error { message: e.to_string() },
                };
                write_line(&mut w, &reply, idle).await?;
            }
        }
    }
}

/// `events --follow`: the backlog, then every event, until the follower hangs up or stops
/// reading (an event it does not take within `idle` ends the subscription).
async fn follow_events(
    shared: &Shared,
    mut r: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut w: tokio::net::unix::OwnedWriteHalf,
    idle: Duration,
) -> std::io::Result<()> {
    let (backlog, mut rx) = shared.bus().subscribe_with_backlog();
    write_line(&mut w, &ControlReply::Events { events: backlog }, idle).await?;
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => write_line::<Event>(&mut w, &ev, idle).await?,
                Err(RecvError::Lagged(n)) => {
                    let message = format!("this follower was too slow and missed {n} events");
                    write_line(&mut w, &ControlReply::Error { message }, idle).await?;
                }
                Err(RecvError::Closed) => return Ok(()),
            },
            // Nothing more is expected from a follower; its hanging up frees the slot now
            // rather than at the next event. Anything it sends is ignored.
            got = r.read(&mut sink) => {
                if got? == 0 {
                    return Ok(());
                }
            }
        }
    }
}

fn index_in(policy: &statecull_policy::Policy, name: &str) -> Result<usize, EngineError> {
    policy.gateway_index(name).ok_or_else(|| {
        EngineError::Control(format!(
            "unknown gateway {} (the policy names: {})",
            statecull_proto::text::clip(name),
            policy.gateway_names()
        ))
    })
}

async fn handle(shared: &Arc<Shared>, req: ControlRequest) -> Result<ControlReply, EngineError> {
    match req {
        ControlRequest::Status => Ok(ControlReply::Status(status(shared))),
        ControlRequest::Plan { down, up } => {
            Ok(ControlReply::Plan(dry_run(shared, &down, &up).await?))
        }
        ControlRequest::Reload => match shared.reload("statecull reload").await {
            Ok(message) => Ok(ControlReply::Done { message }),
            Err(message) => Ok(ControlReply::Error { message }),
        },
        ControlRequest::Gateway { name, action } => {
            // Checked for the message; acted on by name (a reload may renumber gateways).
            index_in(&shared.policy(), &name)?;
            let g = name.as_str();
            let message = match action {
                GatewayAction::Down => shared.force(g, false),
                GatewayAction::Up => shared.force(g, true),
                GatewayAction::Routed => {
                    shared.signal_routed(g);
                    format!("routing for {name} noted as moved")
                }
            };
            Ok(ControlReply::Done { message })
        }
        ControlRequest::Events { .. } => {
            Err(EngineError::Control("events are served by the connection loop".into()))
        }
    }
}

/// Capabilities from the broker (as of the last Hello), connecting if never connected.
async fn caps(shared: &Shared) -> Option<Capabilities> {
    if let Some(h) = shared.broker.state().hello {
        return Some(h.backend.capabilities);
    }
    // A background request: a caller that times out leaves nothing queued for the broker.
    match tokio::time::timeout(COUNT_TIMEOUT, shared.broker.hello()).await {
        Ok(Ok(h)) => Some(h.backend.capabilities),
        _ => None,
    }
}

/// One Count request for many selectors, on the background lane, bounded in time.
async fn count(shared: &Shared, selectors: Vec<Selector>) -> Option<(Vec<u64>, u64, u64)> {
    if selectors.is_empty() {
        return None;
    }
    // Abandoned (its connection dropped) if a decision arrives or this caller times out:
    // it never delays a kill, and nothing is left queued for the broker.
    let fut = shared.broker.call_background(move |c| c.count(selectors));
    match tokio::time::timeout(COUNT_TIMEOUT, fut).await {
        Ok(Ok(c)) => Some((c.per_selector, c.matching_any, c.table_entries)),
        _ => None,
    }
}

/// States per gateway counted now, on demand (None where unknown), as `statecull plan`
/// counts: on the background lane, given up after [`COUNT_TIMEOUT`], nothing while a plan is
/// pending. `status` and the metrics do not use it: they show the refresher's last figure
/// (`crate::states`).
pub async fn states_per_gateway(shared: &Shared) -> Vec<Option<u64>> {
    let n = shared.policy().gateways.len();
    if shared.plan_pending() {
        return vec![None; n];
    }
    match tokio::time::timeout(COUNT_TIMEOUT, crate::states::count_now(shared)).await {
        Ok((_, Ok(counted))) => counted.per_gateway,
        _ => vec![None; n],
    }
}

/// How the states figure is kept up to date, for status.
fn states_refresh_status(shared: &Shared, now: tokio::time::Instant) -> StatesRefreshStatus {
    let setting = shared.policy().engine.states_refresh;
    let figure = shared.states().get();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    StatesRefreshStatus {
        setting: setting.to_string(),
        enabled: setting != StatesRefresh::Off,
        age_ms: figure.age(now).map(ms),
        last_count_ms: figure.took.map(ms),
        next_in_ms: figure.next_at.map(|at| ms(at.saturating_duration_since(now))),
    }
}

/// `status`: answered at once from what the engine knows; it never asks the broker (the
/// states per gateway are the refresher's last figure, with its age).
fn status(shared: &Arc<Shared>) -> StatusReply {
    let now = tokio::time::Instant::now();
    let figure = shared.states().get();
    let age_ms = figure.age(now).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let link = shared.broker.state();
    let (policy, facts) = shared.facts_now();
    let gateways = policy
        .gateways
        .iter()
        .zip(facts)
        .enumerate()
        .map(|(i, (g, f))| GatewayStatus {
            name: g.name.clone(),
            interface: g.interface.to_string(),
            address: g.address.to_string(),
            health_source: match (&g.source, &f.source_error) {
                (statecull_policy::model::HealthSource::Icmp, _) => "icmp".into(),
                (statecull_policy::model::HealthSource::Dpinger { socket }, None) => {
                    format!("dpinger {socket}")
                }
                // The health shown is stale: say so where the operator looks.
                (statecull_policy::model::HealthSource::Dpinger { socket }, Some(e)) => {
                    format!("dpinger {socket} (FAILING, health not updated: {e})")
                }
                (statecull_policy::model::HealthSource::External, _) => "external".into(),
            },
            state: f.state.name().into(),
            suppressed: f.suppressed,
            forced: f.forced,
            since_ms: u64::try_from(f.since.elapsed().as_millis()).unwrap_or(u64::MAX),
            last_reason: f.last_reason,
            loss_pct: f.loss_pct,
            latency_ms: f.latency_ms,
            samples: f.samples,
            flap_penalty: f.penalty,
            states: figure.of(i),
            states_age_ms: age_ms,
        })
        .collect();
    StatusReply {
        engine_version: env!("CARGO_PKG_VERSION").into(),
        policy: policy.source.clone(),
        uptime_s: shared.clock().uptime().as_secs_f64(),
        broker: BrokerStatus {
            socket: shared.broker.path().display().to_string(),
            connected: link.connected,
            backend: link.hello.map(|h| format!("{} on {}", h.backend.kind, h.backend.kernel)),
            pending_plans: shared.counters().pending_plans(),
            last_error: link.last_error,
        },
        gateways,
        recent_events: shared.bus().backlog(),
        states_refresh: Some(states_refresh_status(shared, now)),
    }
}

/// `statecull plan --down A --up B`: plan as if those changes happened now, count what each
/// selector matches, kill nothing. The counts are an operator's explicit request, so they
/// are made now, but on the background lane: they wait while a plan is pending and are
/// abandoned if a decision arrives (shown as unknown), so they never delay a kill.
async fn dry_run(
    shared: &Arc<Shared>,
    down: &[String],
    up: &[String],
) -> Result<PlanReply, EngineError> {
    if down.is_empty() && up.is_empty() {
        return Err(EngineError::Control(
            "say what to simulate: --down NAME and/or --up NAME".into(),
        ));
    }
    // One policy for the whole dry run, with the usability under it (a reload may come
    // meanwhile: this plan is of the policy it started with).
    let (policy, mut usable) = shared.usable_now();
    let down: Vec<usize> = down.iter().map(|n| index_in(&policy, n)).collect::<Result<_, _>>()?;
    let up: Vec<usize> = up.iter().map(|n| index_in(&policy, n)).collect::<Result<_, _>>()?;
    if let Some(g) = down.iter().find(|g| up.contains(g)) {
        return Err(EngineError::Control(format!(
            "{} cannot go both down and up in one plan",
            policy.gateways.get(*g).map_or("?", |g| g.name.as_str())
        )));
    }
    let caps = caps(shared).await.ok_or_else(|| {
        EngineError::Control(format!(
            "the broker at {} is unreachable, and the plan depends on its capabilities",
            shared.broker.path().display()
        ))
    })?;
    for &g in &down {
        if let Some(u) = usable.get_mut(g) {
            *u = false;
        }
    }
    for &g in &up {
        if let Some(u) = usable.get_mut(g) {
            *u = true;
        }
    }
    let input =
        PlanInput { policy: &policy, usable: &usable, went_down: &down, came_up: &up, caps: &caps };
    let plan = plan::plan(&input)?;
    let mut counts: Vec<Vec<u64>> = Vec::new();
    let mut steps = Vec::new();
    let mut counted = true;
    for step in &plan.steps {
        let (selectors, match_opposite, spared_flows, action) = match &step.action {
            Action::KillMatching { selectors, match_opposite } => {
                (selectors.clone(), *match_opposite, vec![], "kill-matching")
            }
            Action::KillExcept { selectors, match_opposite, except } => (
                selectors.clone(),
                *match_opposite,
                except.iter().map(|f| f.name.clone()).collect(),
                "kill-except",
            ),
            Action::Flush => (vec![], false, vec![], "flush"),
        };
        let (per, would_kill) = if selectors.is_empty() {
            // A flush kills the whole table.
            let table = tokio::time::timeout(
                COUNT_TIMEOUT,
                shared.broker.call_background(|c| c.count(vec![])),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| c.table_entries);
            counted &= table.is_some();
            (vec![], table)
        } else {
            match count(shared, selectors.clone()).await {
                Some((per, any, _)) => (per, Some(any)),
                None => {
                    counted = false;
                    (vec![], None)
                }
            }
        };
        counts.push(per.clone());
        steps.push(PlanStepSummary {
            purpose: match step.purpose {
                Purpose::GatewayDown { .. } => "gateway-down",
                Purpose::FlushAll { .. } => "flush-all",
                Purpose::FailBack { .. } => "fail-back",
            }
            .into(),
            action: action.into(),
            why: step.why.clone(),
            selectors: selectors
                .iter()
                .enumerate()
                .map(|(i, s)| (s.to_string(), per.get(i).copied()))
                .collect(),
            match_opposite,
            would_kill,
            spared_flows,
        });
    }
    Ok(PlanReply {
        explanation: plan.explain(if counted { Some(&counts) } else { None }),
        steps,
        skipped: plan.skipped.iter().map(|s| (s.subject.clone(), s.reason.clone())).collect(),
        counted,
    })
}

/// The default control socket path.
pub fn default_path() -> PathBuf {
    PathBuf::from(statecull_control::DEFAULT_CONTROL_SOCKET)
}
