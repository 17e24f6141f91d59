//! The tokio driver (feature `tokio`): a [`Session`] over a tokio Unix stream, for the engine.
//! Nothing blocks a runtime thread, so the engine needs no thread per broker call.
//!
//! Every read and every write is bounded by the connection's timeout, as the blocking
//! driver's socket timeouts bound each of its reads and writes. A timed-out or dropped
//! future can leave a frame half-written or an answer half-read: the session then refuses
//! the next request ([`ClientError::OutOfStep`]), and the caller must reconnect.

use std::future::Future;
use std::io;
use std::path::Path;
use std::time::Duration;

use statecull_proto::{
    CountReply, HelloReply, IfName, KillReport, Request, Response, Selector, SnapshotDone,
    StateHandle, StateRecord,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::READ_CHUNK;
use crate::error::{ClientError, closed, connect_error, io_error};
use crate::exchange::{Connected, Exchange, Parts};
use crate::session::Session;

/// While a broker's listen backlog is full, a non-blocking connect fails at once
/// (`EAGAIN`) where a blocking one would wait: try again this often (within the timeout).
const BACKLOG_RETRY: Duration = Duration::from_millis(10);

/// A connection to the broker, after a successful `Hello`.
#[derive(Debug)]
pub struct AsyncBrokerClient {
    stream: UnixStream,
    session: Session,
    hello: HelloReply,
    timeout: Option<Duration>,
    buf: Vec<u8>,
}

/// `fut`, bounded by `timeout` when there is one.
async fn bounded<T>(
    timeout: Option<Duration>,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, ClientError> {
    match timeout {
        None => fut.await.map_err(io_error),
        Some(t) => match tokio::time::timeout(t, fut).await {
            Ok(r) => r.map_err(io_error),
            Err(_) => Err(ClientError::Timeout),
        },
    }
}

impl AsyncBrokerClient {
    /// Connect and say hello, giving up on a broker that does not answer within `timeout`
    /// (None or zero: wait forever). The timeout covers the connect, the `Hello` exchange
    /// and every later read or write on this connection.
    pub async fn connect(
        path: &Path,
        client: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let timeout = timeout.filter(|t| !t.is_zero());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        && deadline
                            .is_none_or(|d| tokio::time::Instant::now() + BACKLOG_RETRY < d) =>
                {
                    tokio::time::sleep(BACKLOG_RETRY).await;
                }
                Err(e) => return Err(connect_error(path, &e)),
            }
        };
        Self::handshake(stream, client, timeout).await
    }

    /// Say hello over an already connected stream.
    pub async fn handshake(
        mut stream: UnixStream,
        client: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let timeout = timeout.filter(|t| !t.is_zero());
        let mut session = Session::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let frame = session.hello(client)?;
        if let Err(e) = bounded(timeout, stream.write_all(&frame)).await {
            // A broker that refuses this peer answers and closes before reading anything,
            // so our write can fail; its answer is still waiting to be read.
            return Err(match recv_on(&mut stream, &mut session, &mut buf, timeout).await {
                Err(refused @ ClientError::Refused(_)) => refused,
                _ => e,
            });
        }
        match recv_on(&mut stream, &mut session, &mut buf, timeout).await? {
            Response::Hello(hello) => Ok(Self { stream, session, hello, timeout, buf }),
            other => Err(ClientError::Unexpected(format!("{other:?} to Hello"))),
        }
    }

    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// What a closure building an exchange sees of this connection.
    pub fn connected(&self) -> Connected<'_> {
        Connected::new(&self.hello)
    }

    /// Send one request.
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let frame = self.session.request(req)?;
        bounded(self.timeout, self.stream.write_all(&frame)).await
    }

    /// Read one response; an `Error` response becomes [`ClientError::Refused`].
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        recv_on(&mut self.stream, &mut self.session, &mut self.buf, self.timeout).await
    }

    /// One request, one response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req).await?;
        self.recv().await
    }

    /// Run a typed exchange (see [`Exchange`]).
    pub async fn run<T: 'static>(&mut self, exchange: Exchange<T>) -> Result<T, ClientError> {
        let (request, mut read) = match exchange.into_parts() {
            Parts::Known(value) => return value,
            Parts::Ask(request, read) => (request, read),
        };
        self.send(&request).await?;
        loop {
            if let Some(value) = read(self.recv().await?)? {
                return Ok(value);
            }
        }
    }

    /// Stream a snapshot; `on_batch` sees every batch as it arrives.
    pub async fn snapshot(
        &mut self,
        selector: Option<Selector>,
        on_batch: &mut (dyn FnMut(Vec<StateRecord>) -> Result<(), ClientError> + Send),
    ) -> Result<SnapshotDone, ClientError> {
        self.send(&Request::Snapshot { selector }).await?;
        loop {
            match self.recv().await? {
                Response::SnapshotBatch(records) => on_batch(records)?,
                Response::SnapshotDone(done) => return Ok(done),
                other => return Err(ClientError::Unexpected(format!("{other:?} in a snapshot"))),
            }
        }
    }

    pub async fn count(&mut self, selectors: Vec<Selector>) -> Result<CountReply, ClientError> {
        self.run(Exchange::count(selectors)).await
    }

    pub async fn kill_matching(
        &mut self,
        selectors: Vec<Selector>,
        match_opposite: bool,
    ) -> Result<KillReport, ClientError> {
        self.run(Exchange::kill_matching(selectors, match_opposite)).await
    }

    pub async fn kill_handles(
        &mut self,
        handles: Vec<StateHandle>,
        match_opposite: bool,
    ) -> Result<KillReport, ClientError> {
        self.run(Exchange::kill_handles(handles, match_opposite)).await
    }

    pub async fn flush(&mut self, interface: Option<IfName>) -> Result<KillReport, ClientError> {
        self.run(Exchange::flush(interface)).await
    }

    /// False once the conversation is out of step (an exchange abandoned half-way, a bad
    /// answer): such a connection must not carry another request.
    pub fn usable(&self) -> bool {
        !self.session.is_broken() && self.session.is_idle()
    }
}

/// Read until the session has a whole response.
async fn recv_on(
    stream: &mut UnixStream,
    session: &mut Session,
    buf: &mut [u8],
    timeout: Option<Duration>,
) -> Result<Response, ClientError> {
    loop {
        if let Some(r) = session.next_response()? {
            return Ok(r);
        }
        let n = bounded(timeout, stream.read(buf)).await?;
        if n == 0 {
            return Err(closed());
        }
        session.receive(&buf[..n]);
    }
}
