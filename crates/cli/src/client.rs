//! A blocking client for the broker protocol (the CLI's, and the tests').

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use statecull_proto::frame::{decode_response, encode_request, payload_len};
use statecull_proto::{
    CountReply, ErrorReply, HEADER_LEN, Hello, HelloReply, IfName, KillReport, PROTOCOL_VERSION,
    ProtoError, Request, Response, Selector, SnapshotDone, StateHandle, StateRecord,
};

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the broker at {}: {hint}", path.display())]
    Connect { path: PathBuf, hint: String },
    #[error("talking to the broker: {0}")]
    Io(#[from] io::Error),
    /// The broker did not answer (or read) within the client's timeout.
    #[error(
        "the broker did not answer within the timeout (a large kill can take seconds per million states; see --timeout)"
    )]
    Timeout,
    #[error("broker sent something this client cannot read: {0}")]
    Protocol(#[from] ProtoError),
    /// The broker refused or failed the request.
    #[error("broker refused: {0}")]
    Refused(ErrorReply),
    #[error("unexpected answer from the broker: {0}")]
    Unexpected(String),
}

/// A connection to the broker, after a successful `Hello`.
#[derive(Debug)]
pub struct BrokerClient {
    stream: UnixStream,
    hello: HelloReply,
}

impl BrokerClient {
    /// Connect and say hello. `client` names this client in the broker's audit log.
    /// Waits for the broker as long as it takes; see [`Self::connect_with_timeout`].
    pub fn connect(path: &Path, client: &str) -> Result<Self, ClientError> {
        Self::connect_with_timeout(path, client, None)
    }

    /// Connect and say hello, giving up on a broker that does not answer within `timeout`
    /// (None or zero: wait forever). The timeout covers the `Hello` exchange and every later request
    /// on this connection (see [`Self::set_timeout`]).
    pub fn connect_with_timeout(
        path: &Path,
        client: &str,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| ClientError::Connect {
            path: path.to_owned(),
            hint: match e.kind() {
                io::ErrorKind::NotFound => {
                    "no socket there; is statecull-broker running, and is --socket right?".into()
                }
                io::ErrorKind::PermissionDenied => {
                    "permission denied; run as root or as a user in the socket's group".into()
                }
                io::ErrorKind::ConnectionRefused => {
                    "nobody is listening (a stale socket from a stopped broker?)".into()
                }
                _ => e.to_string(),
            },
        })?;
        // Before the handshake, so a broker that accepts but never answers cannot hang us.
        // (A zero timeout means none: std refuses `Some(Duration::ZERO)`.)
        let timeout = timeout.filter(|t| !t.is_zero());
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)?;
        Self::handshake(stream, client)
    }

    /// Say hello over an already connected stream.
    pub fn handshake(mut stream: UnixStream, client: &str) -> Result<Self, ClientError> {
        let name: String = client.chars().take(statecull_proto::MAX_CLIENT_NAME_LEN).collect();
        let hello = Request::Hello(Hello { protocol_version: PROTOCOL_VERSION, client: name });
        if let Err(e) = send_on(&mut stream, &hello) {
            // A broker that refuses this peer answers and closes before reading anything,
            // so our write can fail; its answer is still waiting to be read.
            return Err(match recv_on(&mut stream) {
                Err(refused @ ClientError::Refused(_)) => refused,
                _ => e,
            });
        }
        match recv_on(&mut stream)? {
            Response::Hello(hello) => Ok(Self { stream, hello }),
            other => Err(ClientError::Unexpected(format!("{other:?} to Hello"))),
        }
    }

    pub fn hello(&self) -> &HelloReply {
        &self.hello
    }

    /// Give up on a broker that does not answer within `timeout` (None or zero: wait forever).
    pub fn set_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let timeout = timeout.filter(|t| !t.is_zero());
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)
    }

    /// Send one request.
    pub fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        send_on(&mut self.stream, req)
    }

    /// Read one response; an `Error` response becomes [`ClientError::Refused`].
    pub fn recv(&mut self) -> Result<Response, ClientError> {
        recv_on(&mut self.stream)
    }

    /// One request, one response.
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req)?;
        self.recv()
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
        match self.call(&Request::Count { selectors })? {
            Response::Count(c) => Ok(c),
            other => Err(ClientError::Unexpected(format!("{other:?} to Count"))),
        }
    }

    pub fn kill_matching(
        &mut self,
        selectors: Vec<Selector>,
        match_opposite: bool,
    ) -> Result<KillReport, ClientError> {
        self.killed(&Request::KillMatching { selectors, match_opposite })
    }

    pub fn kill_handles(&mut self, handles: Vec<StateHandle>) -> Result<KillReport, ClientError> {
        self.killed(&Request::KillHandles { handles })
    }

    pub fn flush(&mut self, interface: Option<IfName>) -> Result<KillReport, ClientError> {
        self.killed(&Request::Flush { interface })
    }

    fn killed(&mut self, req: &Request) -> Result<KillReport, ClientError> {
        match self.call(req)? {
            Response::Killed(k) => Ok(k),
            other => Err(ClientError::Unexpected(format!("{other:?} to {}", req.verb()))),
        }
    }
}

fn io_error(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout,
        _ => ClientError::Io(e),
    }
}

fn send_on(stream: &mut UnixStream, req: &Request) -> Result<(), ClientError> {
    let frame = encode_request(req)?;
    stream.write_all(&frame).map_err(io_error)?;
    Ok(())
}

fn recv_on(stream: &mut UnixStream) -> Result<Response, ClientError> {
    let mut header = [0u8; HEADER_LEN];
    stream.read_exact(&mut header).map_err(io_error)?;
    // Bounded (≤ 1 MiB) before allocating.
    let len = payload_len(header)?;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).map_err(io_error)?;
    match decode_response(&payload)? {
        Response::Error(e) => Err(ClientError::Refused(e)),
        r => Ok(r),
    }
}
