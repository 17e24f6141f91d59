//! The socket layer: one `NETLINK_NETFILTER` socket per operation.
//!
//! Thin and free of `unsafe`: `netlink-sys` owns the descriptor and its syscalls, `nix` sets
//! the socket options. A fresh socket per operation means an abandoned dump (a client that
//! went away mid-snapshot) never leaves stale messages for the next request.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, protocols::NETLINK_NETFILTER};
use nix::sys::socket::{setsockopt, sockopt};

use crate::error::CtError;

/// Largest batch of messages handed to one `sendmsg`; below the default `wmem_default`
/// (212,992 bytes), above which the kernel answers EMSGSIZE.
pub(crate) const SEND_CHUNK: usize = 128 * 1024;
/// Receive buffer per `recv`. Dump skbs are at most 32 KiB; errors are small.
const RECV_BUF: usize = 64 * 1024;
/// Socket receive queue: room for the error answers of a whole send chunk.
const RCVBUF: usize = 8 << 20;
/// No kernel operation here should take this long; a hung socket then fails loudly.
const RECV_TIMEOUT: Duration = Duration::from_secs(600);

/// A ctnetlink socket.
#[derive(Debug)]
pub(crate) struct CtSocket {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl CtSocket {
    pub(crate) fn open() -> Result<Self, CtError> {
        let mut sock =
            Socket::new(NETLINK_NETFILTER).map_err(|e| CtError::io("open netlink socket", e))?;
        sock.bind_auto().map_err(|e| CtError::io("bind netlink socket", e))?;
        // Errors answer with only the failed message's header, not its whole payload.
        sock.set_cap_ack(true).map_err(|e| CtError::io("set NETLINK_CAP_ACK", e))?;
        // SO_RCVBUFFORCE needs CAP_NET_ADMIN, which the broker has; fall back silently to the
        // capped SO_RCVBUF otherwise (only batches of error answers depend on it).
        if setsockopt(&sock, sockopt::RcvBufForce, &RCVBUF).is_err() {
            let _ = setsockopt(&sock, sockopt::RcvBuf, &RCVBUF);
        }
        if setsockopt(&sock, sockopt::SndBufForce, &(2 * SEND_CHUNK)).is_err() {
            let _ = setsockopt(&sock, sockopt::SndBuf, &(2 * SEND_CHUNK));
        }
        let tv = nix::sys::time::TimeVal::new(
            i64::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(i64::MAX),
            0,
        );
        setsockopt(&sock, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| CtError::io("set SO_RCVTIMEO", e.into()))?;
        Ok(Self { sock, seq: 1, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// A fresh sequence number for the next request.
    pub(crate) fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// Send a buffer of one or more messages in one `sendmsg`. When it returns, the kernel
    /// has processed every message in it.
    pub(crate) fn send(&self, bytes: &[u8]) -> Result<(), CtError> {
        loop {
            match self.sock.send(bytes, 0) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(CtError::io(
                        "netlink send",
                        io::Error::other(format!("short send: {n} of {} bytes", bytes.len())),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CtError::io("netlink send", e)),
            }
        }
    }

    /// Receive one datagram. `Ok(None)` only when `wait` is false and nothing is queued.
    pub(crate) fn recv(&mut self, wait: bool) -> Result<Option<&[u8]>, CtError> {
        // MSG_TRUNC makes recv return the datagram's real length, so truncation shows.
        let trunc = nix::sys::socket::MsgFlags::MSG_TRUNC.bits();
        let flags = if wait { trunc } else { trunc | libc_msg_dontwait() };
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, flags) {
                Ok(n) if n > self.buf.len() => {
                    return Err(CtError::codec(format!(
                        "netlink datagram of {n} bytes truncated to {}",
                        self.buf.len()
                    )));
                }
                Ok(_) => return Ok(Some(&self.buf)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if !wait && e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(CtError::io(
                        "netlink recv",
                        io::Error::new(io::ErrorKind::TimedOut, "no answer from the kernel"),
                    ));
                }
                Err(e) => return Err(CtError::io("netlink recv", e)),
            }
        }
    }
}

fn libc_msg_dontwait() -> i32 {
    nix::sys::socket::MsgFlags::MSG_DONTWAIT.bits()
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
