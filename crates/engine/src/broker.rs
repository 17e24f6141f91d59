//! The engine's link to the broker: one connection, reconnected with backoff when the
//! broker restarts, used from async code.
//!
//! The broker protocol client is the blocking one the CLI uses
//! (`statecull_cli::client::BrokerClient`); each call runs on tokio's blocking pool, so a
//! kill of millions of states never stalls probing or the control socket. Calls are
//! serialised (one connection, one request at a time), which is also what the broker does
//! with mutations.

use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use statecull_cli::client::{BrokerClient, ClientError};
use statecull_proto::{ErrorCode, HelloReply};
use tokio::sync::Mutex;

use crate::error::EngineError;

/// How the engine names itself in the broker's audit log.
pub const CLIENT_NAME: &str = concat!("statecull-engine ", env!("CARGO_PKG_VERSION"));

/// A kill of millions of states takes seconds; a broker that answers nothing for this long
/// is treated as gone (the connection is dropped and the call retried, see `call_retrying`).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(600);

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

#[derive(Debug)]
pub struct BrokerLink {
    path: PathBuf,
    conn: Mutex<Option<BrokerClient>>,
    state: StdMutex<LinkState>,
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
    matches!(
        e,
        ClientError::Connect { .. }
            | ClientError::Io(_)
            | ClientError::Timeout
            | ClientError::Protocol(_)
            | ClientError::Unexpected(_)
    )
}

impl BrokerLink {
    pub fn new(path: PathBuf) -> Self {
        BrokerLink { path, conn: Mutex::new(None), state: StdMutex::new(LinkState::default()) }
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
    /// The request runs in its own task: a caller that stops waiting (a timeout on `status`)
    /// does not abandon the connection mid-request; the task finishes it and puts the
    /// connection back for the next call.
    pub async fn call<T, F>(self: &Arc<Self>, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut BrokerClient) -> Result<T, ClientError> + Send + 'static,
    {
        let link = Arc::clone(self);
        match tokio::spawn(async move { link.call_here(f).await }).await {
            Ok(r) => r,
            Err(e) => Err(EngineError::Control(format!("broker call task failed: {e}"))),
        }
    }

    async fn call_here<T, F>(&self, f: F) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut BrokerClient) -> Result<T, ClientError> + Send + 'static,
    {
        let mut guard = self.conn.lock().await;
        let existing = guard.take();
        let path = self.path.clone();
        let joined = tokio::task::spawn_blocking(move || {
            let mut client = match existing {
                Some(c) => c,
                None => {
                    match BrokerClient::connect_with_timeout(&path, CLIENT_NAME, Some(CALL_TIMEOUT))
                    {
                        Ok(c) => c,
                        Err(e) => return (None, Err(e), true),
                    }
                }
            };
            let result = f(&mut client);
            let keep = !matches!(&result, Err(e) if connection_lost(e));
            (keep.then_some(client), result, false)
        })
        .await;
        let (client, result, connect_failed) = match joined {
            Ok(x) => x,
            Err(e) => {
                return Err(EngineError::Control(format!("broker call task failed: {e}")));
            }
        };
        let hello = client.as_ref().map(|c| c.hello().clone());
        *guard = client;
        drop(guard);
        match &result {
            Ok(_) => self.set_state(|s| {
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
        result.map_err(EngineError::from)
    }

    /// Like [`Self::call`], but a lost or unreachable broker is waited for (backoff from
    /// 100 ms to 5 s) until `patience` runs out; refusals are returned at once. `on_retry` is
    /// told about each failed attempt (for events and logs).
    pub async fn call_retrying<T, F>(
        self: &Arc<Self>,
        f: F,
        patience: Duration,
        mut on_retry: impl FnMut(&EngineError),
    ) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: Fn(&mut BrokerClient) -> Result<T, ClientError> + Send + Sync + Clone + 'static,
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

    /// Connect (or check the connection) and return the broker's Hello.
    pub async fn hello(self: &Arc<Self>) -> Result<HelloReply, EngineError> {
        self.call(|c| Ok(c.hello().clone())).await
    }

    /// Run a request that must not be sent twice (a flush: repeating it after a reply was
    /// lost would also kill connections made since): wait for a connection with
    /// [`Self::call_retrying`], then send it exactly once.
    pub async fn call_once<T, F>(
        self: &Arc<Self>,
        f: F,
        patience: Duration,
        on_retry: impl FnMut(&EngineError),
    ) -> Result<T, EngineError>
    where
        T: Send + 'static,
        F: FnOnce(&mut BrokerClient) -> Result<T, ClientError> + Send + 'static,
    {
        self.call_retrying(|c| Ok(c.hello().clone()), patience, on_retry).await?;
        self.call(f).await
    }
}
