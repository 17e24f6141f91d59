//! The engine's link to the broker: two connections, each reconnected with backoff when the
//! broker restarts, used from async code.
//!
//! The connections are `statecull_client`'s tokio driver (`AsyncBrokerClient`): requests and
//! answers go through the runtime's reactor, so a kill of millions of states never stalls
//! probing or the control socket, and no thread is taken per call. Callers hand the link a
//! closure that *describes* the exchange from what the connection knows
//! (`|c| c.kill_matching(selectors, false)`, `|c| Ok(c.hello().clone())`; see
//! `statecull_client::exchange`), and the link runs it on the connection of its lane.
//!
//! Two lanes, each its own connection, so that a kill never waits behind anything the
//! engine does in the background (a count of a 4-million-entry table takes seconds):
//! * the **kill lane** (the executor: kills, the plan's Hello, sweeps): [`BrokerLink::call`]
//!   and its retrying forms. Its requests are serialised among themselves (the broker
//!   serialises mutations anyway) and always run, even if nobody waits for the answer.
//! * the **background lane** (the states-per-gateway refresher, `plan` dry runs, the
//!   liveness Hello): [`BrokerLink::call_background`]. A background request never starts
//!   while a kill-lane request runs or a plan is pending (decided, not finished), and one
//!   in flight is abandoned the moment a decision arrives or a kill-lane request starts: its
//!   future and connection are dropped (the broker tolerates a client going away
//!   mid-answer), so nothing the engine does competes with the kill. A caller that gives up
//!   abandons its request the same way; nothing is left queued.
//!
//! The broker reserves a connection slot for the engine's uid beyond its shared pool and
//! allows each uid several pool slots, so the two connections never crowd each other out.
//!
//! A kept connection idle for [`DEFAULT_IDLE_LIMIT`] (half the broker's own idle timeout) is
//! replaced by a fresh one before the next request, so a request never races the broker
//! closing it (a flush is never resent, so it must not be lost that way).

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use statecull_client::{AsyncBrokerClient, ClientError, Connected, IntoExchange};
use statecull_proto::{BROKER_IDLE_TIMEOUT_SECS, ErrorCode, HelloReply};
use tokio::sync::{Mutex, MutexGuard, watch};

use crate::dial::Dialer;
use crate::error::EngineError;

/// How the engine names itself in the broker's audit log.
pub const CLIENT_NAME: &str = concat!("statecull-engine ", env!("CARGO_PKG_VERSION"));

/// A kill of millions of states takes seconds; a broker that answers nothing for this long
/// is treated as gone (the connection is dropped and the call retried, see `call_retrying`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Background requests (states counts, `plan` dry runs, liveness Hellos) using the
/// background connection at once; others wait in their own futures. They are on their own
/// connection, so a kill waits behind none of them.
pub const BACKGROUND_SLOTS: usize = 1;

/// A kept connection idle for this long is not reused: the broker closes connections idle for
/// [`BROKER_IDLE_TIMEOUT_SECS`], and a request sent just as it does would be lost. Half of
/// it leaves a wide margin for clock and scheduling slack on both sides.
pub const DEFAULT_IDLE_LIMIT: Duration = Duration::from_secs(BROKER_IDLE_TIMEOUT_SECS / 2);

/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the engine knows about its broker connection, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct LinkState {
    pub connected: bool,
    pub hello: Option<HelloReply>,
    pub last_error: Option<String>,
}

/// The connection kept between calls, and when its last call finished (the broker's idle
/// timer runs from its last answer).
#[derive(Debug)]
struct Kept {
    client: AsyncBrokerClient,
    last_used: Instant,
}

/// What background requests stand aside for, shared by the link and its kill-lane guards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Gate {
    /// Plans decided and not finished (told by the engine: [`BrokerLink::plan_decided`]).
    plans: u32,
    /// Kill-lane requests running.
    kills: u32,
    /// Increases whenever priority work begins (a decision, a kill-lane request): a
    /// background request that sees it change is abandoned.
    generation: u64,
}

impl Gate {
    fn clear(&self) -> bool {
        self.plans == 0 && self.kills == 0
    }

    /// Priority work begins.
    fn begin(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }
}

/// Held while a kill-lane request runs: background requests stand aside until it is gone.
#[derive(Debug)]
struct KillRunning(Arc<watch::Sender<Gate>>);

impl KillRunning {
    fn new(gate: &Arc<watch::Sender<Gate>>) -> Self {
        gate.send_modify(|g| {
            g.kills += 1;
            g.begin();
        });
        KillRunning(Arc::clone(gate))
    }
}

impl Drop for KillRunning {
    fn drop(&mut self) {
        self.0.send_modify(|g| g.kills = g.kills.saturating_sub(1));
    }
}

#[derive(Debug)]
pub struct BrokerLink {
    path: PathBuf,
    /// How the socket is reached, again after every broker restart (see `crate::dial`).
    dialer: Dialer,
    /// The executor's connection (kills, the plan's Hello, sweeps).
    kill: Mutex<Option<Kept>>,
    /// The background connection (counts, dry runs, liveness); see
    /// [`BrokerLink::call_background`].
    background: Mutex<Option<Kept>>,
    state: StdMutex<LinkState>,
    gate: Arc<watch::Sender<Gate>>,
    idle_limit: Duration,
}

/// Whether a connection idle for `idle_for` may carry another request (see
/// [`DEFAULT_IDLE_LIMIT`]).
pub fn reusable(idle_for: Duration, idle_limit: Duration) -> bool {
    idle_for < idle_limit
}

/// True when waiting and trying again may succeed: the connection is unusable, or the broker
/// is at its connection limit or stopping (a restart in progress).
fn transient(e: &ClientError) -> bool {
    connection_lost(e)
        || matches!(
            e,
            ClientError::Refused(r) if matches!(r.code, ErrorCode::Busy | ErrorCode::ShuttingDown)
        )
}

/// True when the error means the connection is unusable (as opposed to a refusal).
fn connection_lost(e: &ClientError) -> bool {
    e.connection_lost()
}

fn task_failed(e: impl std::fmt::Display) -> EngineError {
    EngineError::Control(format!("broker call task failed: {e}"))
}

impl BrokerLink {
    /// A link with its own [`Dialer::direct`] (connects by path: tests, unconfined use).
    /// The engine builds its link with [`Self::with_dialer`].
    pub fn new(path: PathBuf) -> Self {
        Self::with_idle_limit(path, DEFAULT_IDLE_LIMIT)
    }

    /// A link that replaces a kept connection idle for `idle_limit` or longer (tests use a
    /// short one; the engine uses [`DEFAULT_IDLE_LIMIT`]), with its own direct dialer.
    pub fn with_idle_limit(path: PathBuf, idle_limit: Duration) -> Self {
        let dialer = Dialer::direct([("the broker".to_owned(), path.clone())]);
        Self::with_dialer(path, dialer, idle_limit)
    }

    /// A link that reaches the broker through `dialer`, built before confinement with the
    /// broker's socket registered (otherwise every connect is refused, with that said).
    pub fn with_dialer(path: PathBuf, dialer: Dialer, idle_limit: Duration) -> Self {
        BrokerLink {
            path,
            dialer,
            kill: Mutex::new(None),
            background: Mutex::new(None),
            state: StdMutex::new(LinkState::default()),
            gate: Arc::new(watch::Sender::new(Gate::default())),
            idle_limit,
        }
    }

    /// A decision was handed to the executor: background requests stand aside (one in
    /// flight is abandoned) until [`Self::plans_done`] says its plan is finished.
    pub fn plan_decided(&self) {
        self.gate.send_modify(|g| {
            g.plans += 1;
            g.begin();
        });
    }

    /// The executor finished with `n` decisions.
    pub fn plans_done(&self, n: u32) {
        self.gate.send_modify(|g| g.plans = g.plans.saturating_sub(n));
    }

    /// Wait until no plan is pending and no kill-lane request runs.
    pub async fn kill_priority_over(&self) {
        // The sender lives as long as the link, so this cannot fail.
        let _ = self.gate.subscribe().wait_for(Gate::clear).await;
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn state(&self) -> LinkState {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn set_state(&self, f: impl FnOnce(&mut LinkState)) {
        f(&mut self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// Run one request on the kill lane (connecting first if needed). A connection error
    /// drops the connection, so the next call reconnects; the error is returned either way.
    ///
    /// Background work stands aside from the moment this is called: a background request
    /// in flight is abandoned, and none starts until this one is finished. The request runs
    /// in its own task: a caller that stops waiting does not abandon the connection
    /// mid-request, and the request is sent even if nobody waits any more. That is what
    /// kills need; background callers use [`Self::call_background`] instead.
    pub async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        R::Output: Send,
        F: FnOnce(&Connected<'_>) -> R + Send + 'static,
    {
        let running = KillRunning::new(&self.gate);
        let link = Arc::clone(self);
        match tokio::spawn(async move {
            let _running = running;
            let guard = link.kill.lock().await;
            link.run_locked(guard, f).await
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(task_failed(e)),
        }
    }

    /// Run a request for a background caller (states counts, `plan` dry runs, liveness) on
    /// the background connection, so that it can never delay a kill:
    ///
    /// * it waits, in the caller's own future, while a plan is pending or a kill-lane
    ///   request runs, and for the background connection ([`BACKGROUND_SLOTS`]);
    /// * it is abandoned ([`EngineError::Abandoned`]) the moment a decision arrives or a
    ///   kill-lane request starts: the exchange and its connection are dropped, whatever the
    ///   broker was doing for it, and the next background request reconnects;
    /// * a caller that gives up (a timeout) abandons it the same way, sent or not: nothing
    ///   is left queued for the broker.
    pub async fn call_background<R, F>(&self, f: F) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        F: FnOnce(&Connected<'_>) -> R,
    {
        let mut gate = self.gate.subscribe();
        loop {
            let generation = match gate.wait_for(Gate::clear).await {
                Ok(g) => g.generation,
                // The sender lives as long as the link.
                Err(e) => return Err(task_failed(e)),
            };
            let lane = self.background.lock().await;
            // Priority work may have begun while this waited for the connection.
            let now = *gate.borrow_and_update();
            if now.generation != generation || !now.clear() {
                continue;
            }
            let preempted = async {
                let _ = gate.wait_for(|g| g.generation != generation).await;
            };
            return tokio::select! {
                biased;
                () = preempted => {
                    tracing::debug!("background broker request abandoned for a kill");
                    Err(EngineError::Abandoned)
                }
                r = self.run_locked(lane, f) => r,
            };
        }
    }

    /// Run `f` on the connection held by `guard`, connecting first when there is none or the
    /// kept one has been idle too long; keep the connection afterwards unless it failed.
    async fn run_locked<R, F>(
        &self,
        mut guard: MutexGuard<'_, Option<Kept>>,
        f: F,
    ) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        F: FnOnce(&Connected<'_>) -> R,
    {
        let existing = guard.take().and_then(|k| {
            let idle = k.last_used.elapsed();
            if !k.client.usable() {
                // An exchange was abandoned half-way (its task stopped): never reused.
                None
            } else if reusable(idle, self.idle_limit) {
                Some(k.client)
            } else {
                // Dropping closes it; the broker sees an orderly end, not a lost request.
                tracing::debug!(
                    idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX),
                    "broker connection idle too long, reconnecting"
                );
                None
            }
        });
        let mut client = match existing {
            Some(c) => c,
            None => {
                let connected = match self.dialer.connect(&self.path).await {
                    Ok(stream) => {
                        AsyncBrokerClient::handshake(stream, CLIENT_NAME, Some(CALL_TIMEOUT)).await
                    }
                    Err(e) => Err(statecull_client::connect_error(&self.path, &e)),
                };
                match connected {
                    Ok(c) => c,
                    Err(e) => {
                        drop(guard);
                        self.note(&Err::<(), _>(&e), None, true);
                        return Err(e.into());
                    }
                }
            }
        };
        let exchange = f(&client.connected()).into_exchange();
        let result = client.run(exchange).await;
        let keep = !matches!(&result, Err(e) if connection_lost(e));
        let hello = keep.then(|| client.hello().clone());
        *guard = keep.then(|| Kept { client, last_used: Instant::now() });
        drop(guard);
        self.note(&result.as_ref().map(|_| ()), hello, false);
        result.map_err(EngineError::from)
    }

    /// Record a call's outcome for status and metrics.
    fn note(
        &self,
        result: &Result<(), &ClientError>,
        hello: Option<HelloReply>,
        connect_failed: bool,
    ) {
        match result {
            Ok(()) => self.set_state(|s| {
                s.connected = true;
                if hello.is_some() {
                    s.hello = hello;
                }
                s.last_error = None;
            }),
            Err(e) => {
                let lost = connect_failed || connection_lost(e);
                self.set_state(|s| {
                    if lost {
                        s.connected = false;
                    }
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }

    /// Like [`Self::call`], but a lost or unreachable broker is waited for (backoff from
    /// 100 ms to 5 s) until `patience` runs out; refusals are returned at once. `on_retry` is
    /// told about each failed attempt (for events and logs).
    pub async fn call_retrying<R, F>(
        self: &Arc<Self>,
        f: F,
        patience: Duration,
        mut on_retry: impl FnMut(&EngineError),
    ) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        R::Output: Send,
        F: Fn(&Connected<'_>) -> R + Send + Sync + Clone + 'static,
    {
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = BACKOFF_MIN;
        loop {
            let g = f.clone();
            match self.call(move |c| g(c)).await {
                Ok(v) => return Ok(v),
                Err(EngineError::Broker(e)) if transient(&e) => {
                    let err = EngineError::Broker(e);
                    if tokio::time::Instant::now() + backoff > deadline {
                        return Err(err);
                    }
                    on_retry(&err);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connect (or check the connection) and return the broker's Hello, as a background
    /// request (the refresher, `plan`, liveness, `--check`; the executor uses
    /// `call_retrying`).
    pub async fn hello(self: &Arc<Self>) -> Result<HelloReply, EngineError> {
        self.call_background(|c| Ok(c.hello().clone())).await
    }

    /// Run a request that must not be sent twice (a flush: repeating it after a reply was
    /// lost would also kill connections made since): wait for a connection with
    /// [`Self::call_retrying`], then send it exactly once.
    pub async fn call_once<R, F>(
        self: &Arc<Self>,
        f: F,
        patience: Duration,
        on_retry: impl FnMut(&EngineError),
    ) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        R::Output: Send,
        F: FnOnce(&Connected<'_>) -> R + Send + 'static,
    {
        self.call_retrying(|c| Ok(c.hello().clone()), patience, on_retry).await?;
        self.call(f).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connections_are_replaced_before_the_broker_closes_them() {
        let broker_closes = Duration::from_secs(BROKER_IDLE_TIMEOUT_SECS);
        assert!(reusable(Duration::ZERO, DEFAULT_IDLE_LIMIT));
        assert!(reusable(Duration::from_secs(59), DEFAULT_IDLE_LIMIT));
        assert!(!reusable(DEFAULT_IDLE_LIMIT, DEFAULT_IDLE_LIMIT));
        assert!(!reusable(Duration::from_secs(61), DEFAULT_IDLE_LIMIT));
        // Half the broker's timeout: a reused connection has the other half to spare.
        assert_eq!(DEFAULT_IDLE_LIMIT * 2, broker_closes);
        assert!(!reusable(broker_closes, DEFAULT_IDLE_LIMIT));
    }
}
