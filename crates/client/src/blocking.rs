//! The blocking driver: a [`Session`] over a `std` Unix stream, with socket timeouts. The
//! operator's CLI and the end-to-end tests use it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use statecull_proto::{
    CountReply, HelloReply, IfName, KillReport, Request, Response, Selector, SnapshotDone,
    StateHandle, StateRecord,
};

use crate::READ_CHUNK;
use crate::error::{ClientError, closed, connect_error, io_error};
use crate::exchange::{Connected, Exchange, Parts};
use crate::session::Session;

/// A connection to the broker, after a successful `Hello`.
#[derive(Debug)]
pub struct BrokerClient {
    stream: UnixStream,
    session: Session,
    hello: HelloReply,
    /// Read buffer, reused for every read.
    buf: Vec<u8>,
}

impl BrokerClient {
    /// Connect and say hello. `client` names this client in the broker's audit log.
    /// Waits for the broker as long as it takes; see [`Self::connect_with_timeout`].
    pub fn connect(path: &Path, client: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, client, None)
    }

    /// Connect and say hello, giving up on a broker that does not answer within `timeout`
    /// (None or zero: wait forever). The timeout covers the `Hello` exchange and every later
    /// read or write on this connection (see [`Self::set_timeout`]).
    pub fn connect_with_timeout(
        path: &Path,
        client: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| connect_error(path, &e))?;
        // Before the handshake, so a broker that accepts but never answers cannot hang us.
        // (A zero timeout means none: std refuses `Some(Duration::ZERO)`.)
        let timeout = timeout.filter(|t| !t.is_zero());
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Self::handshake(stream, client)
    }

    /// Say hello over an already connected stream.
    pub fn handshake(mut stream: UnixStream, client: &str) -> Result<Self, ClientError> {
        let mut session = Session::new();
        let mut buf = vec![0u8; READ_CHUNK];
        let frame = session.hello(client)?;
        if let Err(e) = stream.write_all(&frame).map_err(io_error) {
            // A broker that refuses this peer answers and closes before reading anything,
            // so our write can fail; its answer is still waiting to be read.
            return Err(match recv_on(&mut stream, &mut session, &mut buf) {
                Err(refused @ ClientError::Refused(_)) => refused,
                _ => e,
            });
        }
        match recv_on(&mut stream, &mut session, &mut buf)? {
            Response::Hello(hello) => Ok(Self { stream, session, hello, buf }),
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

    /// Give up on a broker that does not answer within `timeout` (None or zero: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.filter(|t| !t.is_zero());
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Send one request.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let frame = self.session.request(req)?;
        self.stream.write_all(&frame).map_err(io_error)
    }

    /// Read one response; an `Error` response becomes [`ClientError::Refused`].
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        recv_on(&mut self.stream, &mut self.session, &mut self.buf)
    }

    /// One request, one response.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        self.recv()
    }

    /// Run a typed exchange (see [`Exchange`]).
    pub fn run<T: 'static>(&mut self, exchange: Exchange<T>) -> Result<T, ClientError> {
        let (request, mut read) = match exchange.into_parts() {
            Parts::Known(value) => return value,
            Parts::Ask(request, read) => (request, read),
        };
        self.send(&request)?;
        loop {
            if let Some(value) = read(self.recv()?)? {
                return Ok(value);
            }
        }
    }

    /// Stream a snapshot; `on_batch` sees every batch as it arrives.
    pub fn snapshot(
        &mut self,
        selector: Option<Selector>,
        on_batch: &mut dyn FnMut(Vec<StateRecord>) -> Result<(), ClientError>,
    ) -> Result<SnapshotDone, ClientError> {
        self.send(&Request::Snapshot { selector })?;
        loop {
            match self.recv()? {
                Response::SnapshotBatch(records) => on_batch(records)?,
                Response::SnapshotDone(done) => return Ok(done),
                other => return Err(ClientError::Unexpected(format!("{other:?} in a snapshot"))),
            }
        }
    }

    pub fn count(&mut self, selectors: Vec<Selector>) -> Result<CountReply, ClientError> {
        self.run(Exchange::count(selectors))
    }

    pub fn kill_matching(
        &mut self,
        selectors: Vec<Selector>,
        match_opposite: bool,
    ) -> Result<KillReport, ClientError> {
        self.run(Exchange::kill_matching(selectors, match_opposite))
    }

    pub fn kill_handles(
        &mut self,
        handles: Vec<StateHandle>,
        match_opposite: bool,
    ) -> Result<KillReport, ClientError> {
        self.run(Exchange::kill_handles(handles, match_opposite))
    }

    pub fn flush(&mut self, interface: Option<IfName>) -> Result<KillReport, ClientError> {
        self.run(Exchange::flush(interface))
    }

    /// The active main filter ruleset's ticket (pf; refused on conntrack).
    pub fn ruleset_ticket(&mut self) -> Result<statecull_proto::RulesetTicket, ClientError> {
        self.run(Exchange::ruleset_ticket())
    }
}

/// Read until the session has a whole response.
fn recv_on(
    stream: &mut UnixStream,
    session: &mut Session,
    buf: &mut [u8],
) -> Result<Response, ClientError> {
    loop {
        if let Some(r) = session.next_response()? {
            return Ok(r);
        }
        let n = match stream.read(buf) {
            Ok(0) => return Err(closed()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e)),
        };
        session.receive(&buf[..n]);
    }
}
