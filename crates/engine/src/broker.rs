//! The engine's link to the broker: one connection, reconnected with backoff when the
//! broker restarts, used from async code.
//!
//! The connection is `statecull_client`'s tokio driver (`AsyncBrokerClient`): requests and
//! answers go through the runtime's reactor, so a kill of millions of states never stalls
//! probing or the control socket, and no thread is taken per call. Callers hand the link a
//! closure that *describes* the exchange from what the connection knows
//! (`|c| c.kill_matching(selectors, false)`, `|c| Ok(c.hello().clone())`; see
//! `statecull_client::exchange`), and the link runs it on the connection it holds. Calls are
//! serialised (one connection, one request at a time), which is also what the broker does
//! with mutations.
//!
//! Two kinds of callers share the connection:
//! * the executor (kills, the plan's Hello and counts, sweeps): [`BrokerLink::call`] and its
//!   retrying forms. Its requests always run, even if nobody waits for the answer any more.
//! * background callers (`status`, `plan` dry runs, the metrics refresher):
//!   [`BrokerLink::call_background`]. At most [`BACKGROUND_SLOTS`] of their requests are in
//!   the connection's queue at once, and one whose caller has given up is dropped before it
//!   is sent. Otherwise every abandoned `status` would leave a Count queued in front of the
//!   next kill (40 of them once delayed a failover by a minute).
//!
//! A kept connection idle for [`DEFAULT_IDLE_LIMIT`] (half the broker's own idle timeout) is
//! replaced by a fresh one before the next request, so a request never races the broker
//! closing it (a flush is never resent, so it must not be lost that way).

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use statecull_client::{AsyncBrokerClient, ClientError, Connected, IntoExchange};
use statecull_proto::{BROKER_IDLE_TIMEOUT_SECS, ErrorCode, HelloReply};
use tokio::sync::{Mutex, MutexGuard, Semaphore, oneshot};

use crate::error::EngineError;

/// How the engine names itself in the broker's audit log.
pub const CLIENT_NAME: &str = concat!("statecull-engine ", env!("CARGO_PKG_VERSION"));

/// A kill of millions of states takes seconds; a broker that answers nothing for this long
/// is treated as gone (the connection is dropped and the call retried, see `call_retrying`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Background requests (status, plan, metrics counts) queued for or running on the broker
/// connection at once. A kill waits behind at most this many of them.
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

#[derive(Debug)]
pub struct BrokerLink {
    path: PathBuf,
    conn: Mutex<Option<Kept>>,
    state: StdMutex<LinkState>,
    /// Permits for background requests; see [`BrokerLink::call_background`].
    background: Arc<Semaphore>,
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
    pub fn new(path: PathBuf) -> Self {
        Self::with_idle_limit(path, DEFAULT_IDLE_LIMIT)
    }

    /// A link that replaces a kept connection idle for `idle_limit` or longer (tests use a
    /// short one; the engine uses [`DEFAULT_IDLE_LIMIT`]).
    pub fn with_idle_limit(path: PathBuf, idle_limit: Duration) -> Self {
        BrokerLink {
            path,
            conn: Mutex::new(None),
            state: StdMutex::new(LinkState::default()),
            background: Arc::new(Semaphore::new(BACKGROUND_SLOTS)),
            idle_limit,
        }
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

    /// Run one request on the connection (connecting first if needed). A connection error
    /// drops the connection, so the next call reconnects; the error is returned either way.
    ///
    /// The request runs in its own task: a caller that stops waiting does not abandon the
    /// connection mid-request, and the request is sent even if nobody waits any more. That is
    /// what kills need; background callers use [`Self::call_background`] instead.
    pub async fn call<R, F>(self: &Arc<Self>, f: F) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        R::Output: Send,
        F: FnOnce(&Connected<'_>) -> R + Send + 'static,
    {
        let link = Arc::clone(self);
        match tokio::spawn(async move {
            let guard = link.conn.lock().await;
            link.run_locked(guard, f).await
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(task_failed(e)),
        }
    }

    /// Run a request for a background caller (status, plan, metrics), bounded so that it can
    /// never pile up in front of a kill:
    ///
    /// * at most [`BACKGROUND_SLOTS`] background requests wait for or use the connection at
    ///   once; further callers wait for a slot in their own future, so one that gives up (a
    ///   timeout) leaves nothing behind;
    /// * a request whose caller has gone before the connection is free is dropped unsent;
    /// * once sent, it is finished (and the connection kept), whoever still waits.
    pub async fn call_background<R, F>(self: &Arc<Self>, f: F) -> Result<R::Output, EngineError>
    where
        R: IntoExchange,
        R::Output: Send,
        F: FnOnce(&Connected<'_>) -> R + Send + 'static,
    {
        let permit = Arc::clone(&self.background).acquire_owned().await.map_err(task_failed)?;
        let (mut tx, rx) = oneshot::channel();
        let link = Arc::clone(self);
        tokio::spawn(async move {
            let _permit = permit;
            let guard = tokio::select! {
                g = link.conn.lock() => g,
                // The caller gave up while a kill (or the one other request) held the
                // connection: nothing was sent, so nothing needs finishing.
                () = tx.closed() => return,
            };
            if tx.is_closed() {
                return;
            }
            let r = link.run_locked(guard, f).await;
            let _ = tx.send(r);
        });
        rx.await.unwrap_or_else(|e| Err(task_failed(e)))
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
                match AsyncBrokerClient::connect(&self.path, CLIENT_NAME, Some(CALL_TIMEOUT)).await
                {
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
    /// request (status, plan, `--check`; the executor uses `call_retrying`).
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
