//! The lab's traffic: servers in `net`, clients in `lan`, all generated here with std threads
//! and sockets (plus `nix` for binding a TCP client to a source address before connecting).
//!
//! * TCP echo on :8000. A client sends `"<session-id> <seq>\n"`; the server answers
//!   `"<seq> <peer-ip>\n"`, `peer-ip` being the address it sees (the SNAT address, so the
//!   client learns which WAN it went through).
//! * A SIP-like registrar on UDP :5060: `"REGISTER <client-id> <seq>"` → `"200 OK <seq> <peer-ip>"`.
//! * An RTP-like media server on UDP :40000 with symmetric-RTP latching: it latches onto the
//!   source of the first packet and echoes (`"<seq>"`) only packets from that source; others
//!   are counted as rejected. A NAT state killed and recreated with a new random port thus
//!   drops the call, as with a real SBC.
//!
//! Clients record everything in unix milliseconds ([`unix_ms`]) so it can be compared with
//! the engine's events. Every loop stops when its handle is stopped or dropped, and every
//! socket operation has a timeout, so stopping takes at most about a second.
//!
//! Namespaces: sockets belong to the namespace of the thread that creates them. Servers bind
//! inside [`Netns::enter`] and serve from ordinary threads. Clients must create new TCP
//! sockets when they reconnect, so their threads are spawned from the thread inside the
//! namespace: on Linux a new thread starts in the network namespace of the thread that
//! creates it.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::Netns;
use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};

/// TCP echo port.
pub const TCP_PORT: u16 = 8000;
/// SIP-like registrar port (also the SIP client's source port).
pub const SIP_PORT: u16 = 5060;
/// RTP-like media port (also the RTP client's source port).
pub const RTP_PORT: u16 = 40000;

/// How often blocked loops look at the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// How often the (non-blocking) TCP listener is polled when idle.
const ACCEPT_POLL: Duration = Duration::from_millis(10);
/// TCP connect timeout and the pause between failed connects.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_RETRY: Duration = Duration::from_millis(200);
/// How long a SIP client waits for its reply; an RTP echo later than this counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
pub const RTP_LATE_MS: u64 = 1000;
/// Server write timeout.
const WRITE_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest line or datagram either side accepts.
const MAX_LINE: usize = 256;
/// Connections the TCP server serves at once (one thread each); more are closed at once.
const MAX_CONNECTIONS: usize = 4096;
/// Stack of every traffic thread (they only format short strings).
const STACK: usize = 256 * 1024;

/// Now, in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ms)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name).stack_size(STACK).spawn(f)
}

/// A stop flag that sleeping threads wake up for.
#[derive(Debug, Default)]
struct Stopper {
    stopped: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stopper {
    fn stop(&self) {
        let _guard = lock(&self.lock);
        self.stopped.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Sleep for `d` unless stopped first; true if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut guard = lock(&self.lock);
        loop {
            if self.is_stopped() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = match self.wake.wait_timeout(guard, left) {
                Ok((g, _)) => g,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// Stop and join every thread in `threads`.
fn stop_and_join(stop: &Stopper, threads: &mut Vec<JoinHandle<()>>) {
    stop.stop();
    for t in threads.drain(..) {
        let _ = t.join();
    }
}

// ---------------------------------------------------------------------------------------
// Line framing for the TCP echo (both sides).

#[derive(Debug, Default)]
struct LineReader {
    pending: Vec<u8>,
}

impl LineReader {
    /// The next complete line already received (without the newline).
    fn take_line(&mut self) -> Option<String> {
        let end = self.pending.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.pending.drain(..=end).take(end).collect();
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// One read from `stream`; `Ok(false)` at end of stream.
    fn fill(&mut self, mut stream: &TcpStream) -> io::Result<bool> {
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(false);
        }
        self.pending.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if self.pending.len() > 4 * MAX_LINE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
        }
        Ok(true)
    }
}

// ---------------------------------------------------------------------------------------
// Servers

#[derive(Debug, Default)]
struct ServerShared {
    stop: Stopper,
    tcp_accepted: AtomicU64,
    tcp_open: AtomicUsize,
    sip_registrations: AtomicU64,
    rtp_echoed: AtomicU64,
    rtp_rejected: AtomicU64,
    rtp_latched: Mutex<Option<SocketAddr>>,
}

/// The servers running in `net`; stopped (threads joined) by [`ServerHandle::stop`] or on drop.
#[derive(Debug)]
pub struct ServerHandle {
    shared: Arc<ServerShared>,
    threads: Vec<JoinHandle<()>>,
}

/// Start the TCP echo (:8000), the registrar (UDP :5060) and the media server (UDP :40000) on
/// `addr` inside `net`. Threads: 3, plus one per open TCP connection.
pub fn start_servers(net: &Netns, addr: Ipv4Addr) -> io::Result<ServerHandle> {
    let (tcp, sip, rtp) = net.enter(|| -> io::Result<_> {
        let tcp = TcpListener::bind((addr, TCP_PORT))?;
        tcp.set_nonblocking(true)?;
        let sip = UdpSocket::bind((addr, SIP_PORT))?;
        sip.set_read_timeout(Some(POLL))?;
        sip.set_write_timeout(Some(WRITE_TIMEOUT))?;
        let rtp = UdpSocket::bind((addr, RTP_PORT))?;
        rtp.set_read_timeout(Some(POLL))?;
        rtp.set_write_timeout(Some(WRITE_TIMEOUT))?;
        Ok((tcp, sip, rtp))
    })??;
    let mut handle = ServerHandle { shared: Arc::default(), threads: Vec::new() };
    let spawned = (|| {
        let sh = Arc::clone(&handle.shared);
        handle.threads.push(spawn("srv-tcp-accept".into(), move || tcp_acceptor(&tcp, &sh))?);
        let sh = Arc::clone(&handle.shared);
        handle.threads.push(spawn("srv-sip".into(), move || sip_server(&sip, &sh))?);
        let sh = Arc::clone(&handle.shared);
        handle.threads.push(spawn("srv-rtp".into(), move || rtp_server(&rtp, &sh))?);
        io::Result::Ok(())
    })();
    // On error, dropping the handle stops and joins what was started.
    spawned.map(|()| handle)
}

impl ServerHandle {
    /// RTP packets not answered because they came from another source than the latched one.
    pub fn rtp_rejected(&self) -> u64 {
        self.shared.rtp_rejected.load(Ordering::SeqCst)
    }

    /// RTP packets echoed to the latched source.
    pub fn rtp_echoed(&self) -> u64 {
        self.shared.rtp_echoed.load(Ordering::SeqCst)
    }

    /// The source the media server latched onto (the call's NAT address and port), if any.
    pub fn rtp_latched(&self) -> Option<SocketAddr> {
        *lock(&self.shared.rtp_latched)
    }

    /// Forget the latched source: the next packet, from wherever, starts a new call.
    pub fn rtp_unlatch(&self) {
        *lock(&self.shared.rtp_latched) = None;
    }

    /// Successful SIP registrations answered.
    pub fn sip_registrations(&self) -> u64 {
        self.shared.sip_registrations.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far, and open now.
    pub fn tcp_connections(&self) -> (u64, usize) {
        (
            self.shared.tcp_accepted.load(Ordering::SeqCst),
            self.shared.tcp_open.load(Ordering::SeqCst),
        )
    }

    /// Stop every server and join their threads (about 100 ms).
    pub fn stop(mut self) {
        stop_and_join(&self.shared.stop, &mut self.threads);
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        stop_and_join(&self.shared.stop, &mut self.threads);
    }
}

fn tcp_acceptor(listener: &TcpListener, sh: &Arc<ServerShared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !sh.stop.is_stopped() {
        // Reap finished connection threads so the list stays as long as the open connections.
        let mut i = 0;
        while i < conns.len() {
            if conns[i].is_finished() {
                let _ = conns.swap_remove(i).join();
            } else {
                i += 1;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                sh.tcp_accepted.fetch_add(1, Ordering::SeqCst);
                if conns.len() >= MAX_CONNECTIONS {
                    continue; // dropped: closed
                }
                let conn_sh = Arc::clone(sh);
                sh.tcp_open.fetch_add(1, Ordering::SeqCst);
                match spawn("srv-tcp-conn".into(), move || {
                    tcp_connection(&stream, &conn_sh);
                    conn_sh.tcp_open.fetch_sub(1, Ordering::SeqCst);
                }) {
                    Ok(h) => conns.push(h),
                    // The closure, and the stream with it, is dropped.
                    Err(_) => {
                        sh.tcp_open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            // Nothing pending (or out of descriptors): wait a little.
            Err(_) => {
                sh.stop.sleep(ACCEPT_POLL);
            }
        }
    }
    for c in conns {
        let _ = c.join();
    }
}

/// Serve one echo connection until the client closes it, an error, or stop.
fn tcp_connection(stream: &TcpStream, sh: &ServerShared) {
    let Ok(SocketAddr::V4(peer)) = stream.peer_addr() else { return };
    let setup = || -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(POLL))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)
    };
    if setup().is_err() {
        return;
    }
    let mut reader = LineReader::default();
    while !sh.stop.is_stopped() {
        while let Some(line) = reader.take_line() {
            // "<session-id> <seq>"
            let mut words = line.split_whitespace();
            let (Some(_id), Some(seq), None) = (words.next(), words.next(), words.next()) else {
                return;
            };
            if seq.parse::<u64>().is_err() {
                return;
            }
            let mut out = stream;
            if out.write_all(format!("{seq} {}\n", peer.ip()).as_bytes()).is_err() {
                return;
            }
        }
        match reader.fill(stream) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) if is_timeout(&e) => {}
            Err(_) => return,
        }
    }
}

fn sip_server(sock: &UdpSocket, sh: &ServerShared) {
    let mut buf = [0u8; MAX_LINE];
    while !sh.stop.is_stopped() {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let mut words = text.split_whitespace();
        let (Some("REGISTER"), Some(_client), Some(seq), None) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        if seq.parse::<u64>().is_err() {
            continue;
        }
        let reply = format!("200 OK {seq} {}", from.ip());
        if sock.send_to(reply.as_bytes(), from).is_ok() {
            sh.sip_registrations.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn rtp_server(sock: &UdpSocket, sh: &ServerShared) {
    let mut buf = [0u8; MAX_LINE];
    while !sh.stop.is_stopped() {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let latched = *lock(&sh.rtp_latched).get_or_insert(from);
        if from != latched {
            sh.rtp_rejected.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let payload = buf.get(..n).unwrap_or_default();
        if sock.send_to(payload, from).is_ok() {
            sh.rtp_echoed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients

/// What the clients in `lan` do.
#[derive(Clone, Debug)]
pub struct ClientSpec {
    /// The servers' address.
    pub server: Ipv4Addr,
    /// TCP sessions: (source address, number of sessions from it).
    pub tcp: Vec<(Ipv4Addr, usize)>,
    /// The SIP client's source address (port 5060).
    pub sip_src: Ipv4Addr,
    /// The RTP client's source address (port 40000).
    pub rtp_src: Ipv4Addr,
    /// Time between the starts of a TCP session's exchanges.
    pub tcp_interval: Duration,
    /// How long a TCP session waits for an echo before it gives the connection up.
    pub dead_after: Duration,
    /// Time between SIP registrations.
    pub sip_interval: Duration,
    /// RTP packets per second.
    pub rtp_pps: u32,
}

impl ClientSpec {
    /// The defaults: TCP every 200 ms, dead after 1 s, SIP every 2 s, RTP at 50 packets/s.
    pub fn new(
        server: Ipv4Addr,
        tcp: Vec<(Ipv4Addr, usize)>,
        sip_src: Ipv4Addr,
        rtp_src: Ipv4Addr,
    ) -> Self {
        Self {
            server,
            tcp,
            sip_src,
            rtp_src,
            tcp_interval: Duration::from_millis(200),
            dead_after: Duration::from_secs(1),
            sip_interval: Duration::from_secs(2),
            rtp_pps: 50,
        }
    }
}

/// RTP between two instants, see [`Clients::rtp_stats`].
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct RtpStats {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub largest_gap_ms: u64,
}

#[derive(Debug, Default)]
struct SessionLog {
    /// Successful exchanges: (unix ms, address the server saw), in time order.
    oks: Vec<(u64, Ipv4Addr)>,
    /// Successful connects (the first, then reconnects), unix ms.
    connects: Vec<u64>,
    /// Connections given up (echo timeout, RST, error, bad reply), unix ms.
    failures: Vec<u64>,
    /// Connect attempts that failed.
    connect_failures: u64,
}

#[derive(Debug)]
struct Session {
    src: Ipv4Addr,
    log: Mutex<SessionLog>,
}

#[derive(Debug, Default)]
struct SipLog {
    oks: Vec<(u64, Ipv4Addr)>,
    failures: Vec<u64>,
}

#[derive(Clone, Copy, Debug)]
struct RtpPacket {
    sent_ms: u64,
    /// 0: no echo (yet).
    echo_ms: u64,
}

#[derive(Debug)]
struct ClientShared {
    stop: Stopper,
    started_ms: u64,
    sessions: Vec<Session>,
    sip: Mutex<SipLog>,
    /// Indexed by sequence number.
    rtp: Mutex<Vec<RtpPacket>>,
}

/// The clients running in `lan`; stopped (threads joined) by [`Clients::stop`] or on drop.
#[derive(Debug)]
pub struct Clients {
    shared: Arc<ClientShared>,
    threads: Vec<JoinHandle<()>>,
}

/// Start the clients in `lan`. Threads: one per TCP session, one for SIP, two for RTP.
pub fn start_clients(lan: &Netns, spec: &ClientSpec) -> io::Result<Clients> {
    if spec.rtp_pps == 0 || spec.tcp_interval.is_zero() || spec.sip_interval.is_zero() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero rate or interval"));
    }
    if spec.dead_after.is_zero() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "zero dead_after"));
    }
    let sessions = spec
        .tcp
        .iter()
        .flat_map(|&(src, n)| (0..n).map(move |_| Session { src, log: Mutex::default() }))
        .collect();
    let mut clients = Clients {
        shared: Arc::new(ClientShared {
            stop: Stopper::default(),
            started_ms: unix_ms(),
            sessions,
            sip: Mutex::default(),
            rtp: Mutex::default(),
        }),
        threads: Vec::new(),
    };
    let shared = &clients.shared;
    let threads = &mut clients.threads;
    // Everything is spawned from inside the namespace, so the threads live in it. On error,
    // dropping `clients` stops and joins what was started.
    lan.enter(|| spawn_clients(shared, spec, threads))??;
    Ok(clients)
}

fn spawn_clients(
    shared: &Arc<ClientShared>,
    spec: &ClientSpec,
    threads: &mut Vec<JoinHandle<()>>,
) -> io::Result<()> {
    let sip = UdpSocket::bind((spec.sip_src, SIP_PORT))?;
    sip.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let rtp = UdpSocket::bind((spec.rtp_src, RTP_PORT))?;
    rtp.set_write_timeout(Some(WRITE_TIMEOUT))?;
    rtp.set_read_timeout(Some(POLL))?;
    let rtp_rx = rtp.try_clone()?;

    let sh = Arc::clone(shared);
    let (server, interval) = (SocketAddrV4::new(spec.server, SIP_PORT), spec.sip_interval);
    threads.push(spawn("cli-sip".into(), move || sip_client(&sip, &sh, server, interval))?);
    let sh = Arc::clone(shared);
    let (server, pps) = (SocketAddrV4::new(spec.server, RTP_PORT), spec.rtp_pps);
    threads.push(spawn("cli-rtp-tx".into(), move || rtp_sender(&rtp, &sh, server, pps))?);
    let sh = Arc::clone(shared);
    threads.push(spawn("cli-rtp-rx".into(), move || rtp_receiver(&rtp_rx, &sh, server))?);

    let total = u32::try_from(shared.sessions.len()).unwrap_or(u32::MAX).max(1);
    for index in 0..shared.sessions.len() {
        let sh = Arc::clone(shared);
        let cfg = SessionCfg {
            index,
            server: SocketAddrV4::new(spec.server, TCP_PORT),
            interval: spec.tcp_interval,
            dead_after: spec.dead_after,
            // Spread the sessions' exchanges over one interval.
            start_delay: spec.tcp_interval / total * u32::try_from(index).unwrap_or(0),
        };
        threads.push(spawn(format!("cli-tcp-{index}"), move || tcp_session(&sh, &cfg))?);
    }
    Ok(())
}

impl Clients {
    fn sessions_from(&self, src: Ipv4Addr) -> impl Iterator<Item = &Session> {
        self.shared.sessions.iter().filter(move |s| s.src == src)
    }

    /// All sessions from `src` have had a successful exchange reported via `peer` (a NAT
    /// address) at or after `since_ms`: the unix ms when the last of them first did so (None
    /// if some never did, or there are no sessions from `src`).
    pub fn tcp_all_ok_via(&self, src: Ipv4Addr, peer: Ipv4Addr, since_ms: u64) -> Option<u64> {
        let mut latest = None;
        for s in self.sessions_from(src) {
            let log = lock(&s.log);
            let from = log.oks.partition_point(|&(t, _)| t < since_ms);
            let first = log.oks[from..].iter().find(|&&(_, p)| p == peer)?.0;
            latest = latest.max(Some(first));
        }
        latest
    }

    /// Sessions from `src` whose last successful exchange is older than `stale`, as of now
    /// (stuck sessions). A session that never exchanged counts once the clients have run
    /// longer than `stale`.
    pub fn tcp_stuck(&self, src: Ipv4Addr, stale: Duration) -> usize {
        let cutoff = unix_ms().saturating_sub(ms(stale));
        self.sessions_from(src)
            .filter(|s| {
                let last = lock(&s.log).oks.last().map_or(self.shared.started_ms, |&(t, _)| t);
                last < cutoff
            })
            .count()
    }

    pub fn tcp_sessions(&self, src: Ipv4Addr) -> usize {
        self.sessions_from(src).count()
    }

    /// Total reconnects of sessions from `src` since `since_ms` (successful connects other
    /// than each session's first).
    pub fn tcp_reconnects(&self, src: Ipv4Addr, since_ms: u64) -> u64 {
        self.sessions_from(src)
            .map(|s| {
                let log = lock(&s.log);
                log.connects.iter().skip(1).filter(|&&t| t >= since_ms).count() as u64
            })
            .sum()
    }

    /// Connections of sessions from `src` given up since `since_ms` (echo timeout, RST,
    /// error), and failed connect attempts in all (no time kept for those).
    pub fn tcp_failures(&self, src: Ipv4Addr, since_ms: u64) -> (u64, u64) {
        self.sessions_from(src).fold((0, 0), |(given_up, connects), s| {
            let log = lock(&s.log);
            let n = log.failures.iter().filter(|&&t| t >= since_ms).count() as u64;
            (given_up + n, connects + log.connect_failures)
        })
    }

    /// First successful SIP registration via `peer` at or after `since_ms`.
    pub fn sip_registered_via(&self, peer: Ipv4Addr, since_ms: u64) -> Option<u64> {
        let log = lock(&self.shared.sip);
        log.oks.iter().find(|&&(t, p)| t >= since_ms && p == peer).map(|&(t, _)| t)
    }

    /// SIP registrations without a reply within 1 s since `since_ms`.
    pub fn sip_failures(&self, since_ms: u64) -> u64 {
        lock(&self.shared.sip).failures.iter().filter(|&&t| t >= since_ms).count() as u64
    }

    /// RTP between two unix-ms instants (both included): packets sent in the window, their
    /// echoes received (however late), lost (sent in the window, no echo within 1 s; packets
    /// sent less than 1 s ago are not counted as lost yet), and the largest gap in ms between
    /// consecutive echoes received in the window, including its edges (the end edge is
    /// clamped to now).
    pub fn rtp_stats(&self, from_ms: u64, to_ms: u64) -> RtpStats {
        let now = unix_ms();
        let mut stats = RtpStats { sent: 0, received: 0, lost: 0, largest_gap_ms: 0 };
        let mut echoes = Vec::new();
        for p in lock(&self.shared.rtp).iter() {
            if (from_ms..=to_ms).contains(&p.sent_ms) {
                stats.sent += 1;
                if p.echo_ms != 0 {
                    stats.received += 1;
                }
                let in_time = p.echo_ms != 0 && p.echo_ms <= p.sent_ms + RTP_LATE_MS;
                if !in_time && now >= p.sent_ms + RTP_LATE_MS {
                    stats.lost += 1;
                }
            }
            if p.echo_ms != 0 && (from_ms..=to_ms).contains(&p.echo_ms) {
                echoes.push(p.echo_ms);
            }
        }
        echoes.sort_unstable();
        let end = to_ms.min(now).max(from_ms);
        let mut prev = from_ms;
        for t in echoes.into_iter().chain([end]) {
            stats.largest_gap_ms = stats.largest_gap_ms.max(t.saturating_sub(prev));
            prev = t;
        }
        stats
    }

    /// Threads running (one per TCP session, SIP, RTP sender and receiver).
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Stop every client and join their threads (at most about a second: a connect or an
    /// echo wait in progress).
    pub fn stop(mut self) {
        stop_and_join(&self.shared.stop, &mut self.threads);
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        stop_and_join(&self.shared.stop, &mut self.threads);
    }
}

/// A TCP socket bound to `src` (any port), connected to `dst` within `timeout`.
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    let stream = TcpStream::from(fd);
    // Linux bounds a blocking connect by the send timeout (then EINPROGRESS).
    stream.set_write_timeout(Some(timeout))?;
    match connect(stream.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) => Ok(stream),
        // The handshake may have completed just as the wait ended (a retransmitted SYN or
        // SYN-ACK is due at 1 s, the usual timeout): then the connection is there.
        Err(Errno::EINPROGRESS | Errno::EAGAIN | Errno::EALREADY) => match stream.peer_addr() {
            Ok(_) => Ok(stream),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
        },
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug)]
struct SessionCfg {
    index: usize,
    server: SocketAddrV4,
    interval: Duration,
    dead_after: Duration,
    start_delay: Duration,
}

fn tcp_session(sh: &ClientShared, cfg: &SessionCfg) {
    let Some(session) = sh.sessions.get(cfg.index) else { return };
    let id = format!("{}/{}", session.src, cfg.index);
    if sh.stop.sleep(cfg.start_delay) {
        return;
    }
    let mut seq: u64 = 0;
    while !sh.stop.is_stopped() {
        let stream = match connect_from(session.src, cfg.server, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                lock(&session.log).connect_failures += 1;
                sh.stop.sleep(CONNECT_RETRY);
                continue;
            }
        };
        lock(&session.log).connects.push(unix_ms());
        if stream.set_write_timeout(Some(cfg.dead_after)).is_err()
            || stream.set_nodelay(true).is_err()
        {
            lock(&session.log).failures.push(unix_ms());
            continue;
        }
        let mut reader = LineReader::default();
        loop {
            seq += 1;
            let started = Instant::now();
            match exchange(&stream, &mut reader, &id, seq, cfg.dead_after, &sh.stop) {
                Ok(Some(peer)) => lock(&session.log).oks.push((unix_ms(), peer)),
                Ok(None) => return, // stopped
                Err(_) => {
                    // Give the connection up (closing it) and reconnect at once.
                    lock(&session.log).failures.push(unix_ms());
                    break;
                }
            }
            if sh.stop.sleep(cfg.interval.saturating_sub(started.elapsed())) {
                return;
            }
        }
    }
}

/// Send one line and wait up to `dead_after` for its echo: the peer address the server
/// reported, or `None` when stopped.
fn exchange(
    stream: &TcpStream,
    reader: &mut LineReader,
    id: &str,
    seq: u64,
    dead_after: Duration,
    stop: &Stopper,
) -> io::Result<Option<Ipv4Addr>> {
    let deadline = Instant::now() + dead_after;
    let mut out = stream;
    out.write_all(format!("{id} {seq}\n").as_bytes())?;
    loop {
        if let Some(line) = reader.take_line() {
            // "<seq> <peer-ip>"
            let mut words = line.split_whitespace();
            return match (words.next().map(str::parse::<u64>), words.next().map(str::parse)) {
                (Some(Ok(s)), Some(Ok(peer))) if s == seq => Ok(Some(peer)),
                _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("reply {line:?}"))),
            };
        }
        if stop.is_stopped() {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no echo"));
        }
        stream.set_read_timeout(Some(left.min(POLL)))?;
        match reader.fill(stream) {
            Ok(true) => {}
            Ok(false) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed")),
            Err(e) if is_timeout(&e) => {}
            Err(e) => return Err(e),
        }
    }
}

fn sip_client(sock: &UdpSocket, sh: &ClientShared, server: SocketAddrV4, interval: Duration) {
    let id = match sock.local_addr() {
        Ok(a) => format!("sip-{}", a.ip()),
        Err(_) => "sip".into(),
    };
    let mut buf = [0u8; MAX_LINE];
    let mut seq: u64 = 0;
    while !sh.stop.is_stopped() {
        let started = Instant::now();
        seq += 1;
        let registered = sock.send_to(format!("REGISTER {id} {seq}").as_bytes(), server).is_ok()
            && sip_wait_reply(sock, sh, server, seq, &mut buf);
        if !registered {
            lock(&sh.sip).failures.push(unix_ms());
        }
        if sh.stop.sleep(interval.saturating_sub(started.elapsed())) {
            return;
        }
    }
}

/// Wait up to 1 s for `"200 OK <seq> <peer-ip>"` from `server` and record it.
fn sip_wait_reply(
    sock: &UdpSocket,
    sh: &ClientShared,
    server: SocketAddrV4,
    seq: u64,
    buf: &mut [u8],
) -> bool {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    while !sh.stop.is_stopped() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || sock.set_read_timeout(Some(left.min(POLL))).is_err() {
            return false;
        }
        let Ok((n, from)) = sock.recv_from(buf) else { continue };
        if from != SocketAddr::V4(server) {
            continue;
        }
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
        let mut words = text.split_whitespace();
        if let (Some("200"), Some("OK"), Some(s), Some(peer)) =
            (words.next(), words.next(), words.next(), words.next())
            && s.parse() == Ok(seq)
            && let Ok(peer) = peer.parse::<Ipv4Addr>()
        {
            lock(&sh.sip).oks.push((unix_ms(), peer));
            return true;
        }
        // An older reply or garbage: keep waiting for ours.
    }
    false
}

fn rtp_sender(sock: &UdpSocket, sh: &ClientShared, server: SocketAddrV4, pps: u32) {
    let period = Duration::from_secs(1) / pps;
    let mut next = Instant::now();
    while !sh.stop.is_stopped() {
        let seq = {
            let mut log = lock(&sh.rtp);
            log.push(RtpPacket { sent_ms: unix_ms(), echo_ms: 0 });
            log.len() - 1
        };
        // A failed send (no route during a break) is a lost packet.
        let _ = sock.send_to(seq.to_string().as_bytes(), server);
        next += period;
        let now = Instant::now();
        if now > next + Duration::from_secs(1) {
            next = now; // fell far behind (suspended): do not burst
        }
        if sh.stop.sleep(next.saturating_duration_since(now)) {
            return;
        }
    }
}

fn rtp_receiver(sock: &UdpSocket, sh: &ClientShared, server: SocketAddrV4) {
    let mut buf = [0u8; MAX_LINE];
    while !sh.stop.is_stopped() {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        if from != SocketAddr::V4(server) {
            continue;
        }
        let now = unix_ms();
        let seq = std::str::from_utf8(buf.get(..n).unwrap_or_default())
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok());
        if let Some(seq) = seq
            && let Some(p) = lock(&sh.rtp).get_mut(seq)
            && p.echo_ms == 0
        {
            p.echo_ms = now.max(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::thread::sleep;

    use crate::skip_unless_root;

    use super::*;

    fn ip(ns: &Netns, args: &[&str]) {
        let out = ns.command("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {args:?} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
    const CLIENTS: [Ipv4Addr; 3] =
        [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)];

    /// Server namespace A and client namespace B joined by a veth pair, routed to each other
    /// (no NAT: the peer the servers report is the client's own address).
    fn two_namespaces() -> (Netns, Netns) {
        let a = Netns::create("trafA").expect("namespace A");
        let b = Netns::create("trafB").expect("namespace B");
        ip(&a, &["link", "add", "srv0", "type", "veth", "peer", "name", "cli0"]);
        ip(&a, &["link", "set", "cli0", "netns", b.name()]);
        ip(&a, &["addr", "add", &format!("{SERVER}/24"), "dev", "srv0"]);
        ip(&a, &["link", "set", "srv0", "up"]);
        for c in CLIENTS {
            ip(&b, &["addr", "add", &format!("{c}/24"), "dev", "cli0"]);
        }
        ip(&b, &["link", "set", "cli0", "up"]);
        ip(&a, &["route", "add", "192.0.2.0/24", "dev", "srv0"]);
        ip(&b, &["route", "add", "198.18.100.0/24", "dev", "cli0"]);
        (a, b)
    }

    #[test]
    fn traffic_flows_breaks_and_recovers() {
        if skip_unless_root("traffic_flows_breaks_and_recovers") {
            return;
        }
        let (a, b) = two_namespaces();
        let servers = start_servers(&a, SERVER).expect("servers");
        let mut spec = ClientSpec::new(
            SERVER,
            vec![(CLIENTS[0], 10), (CLIENTS[1], 10)],
            CLIENTS[1],
            CLIENTS[2],
        );
        spec.sip_interval = Duration::from_secs(1);
        let t0 = unix_ms();
        let clients = start_clients(&b, &spec).expect("clients");
        assert_eq!(clients.threads(), 20 + 3);
        sleep(Duration::from_secs(3));

        // Everything flows.
        for src in [CLIENTS[0], CLIENTS[1]] {
            assert_eq!(clients.tcp_sessions(src), 10);
            let ok = clients.tcp_all_ok_via(src, src, t0);
            assert!(ok.is_some(), "every session from {src} exchanged");
            assert_eq!(clients.tcp_stuck(src, Duration::from_secs(1)), 0);
            assert_eq!(clients.tcp_reconnects(src, t0), 0);
            assert_eq!(clients.tcp_all_ok_via(src, SERVER, t0), None, "wrong peer never matches");
        }
        assert!(clients.sip_registered_via(CLIENTS[1], t0).is_some(), "SIP registered");
        let before = clients.rtp_stats(t0 + 500, unix_ms());
        eprintln!("before the break: {before:?}");
        assert!(before.sent >= 100, "{before:?}");
        assert_eq!(before.lost, 0, "{before:?}");
        assert!(before.largest_gap_ms < 100, "{before:?}");
        assert_eq!(
            servers.rtp_latched(),
            Some(SocketAddr::V4(SocketAddrV4::new(CLIENTS[2], RTP_PORT)))
        );

        // Break the return path for 1.6 s: the servers' replies go into a blackhole.
        let t_break = unix_ms();
        ip(&a, &["route", "add", "blackhole", "192.0.2.0/25"]);
        sleep(Duration::from_millis(1600));
        ip(&a, &["route", "del", "blackhole", "192.0.2.0/25"]);
        let t_restore = unix_ms();
        sleep(Duration::from_secs(3));

        for src in [CLIENTS[0], CLIENTS[1]] {
            let ok = clients.tcp_all_ok_via(src, src, t_restore);
            assert!(ok.is_some(), "every session from {src} works again");
            let reconnects = clients.tcp_reconnects(src, t_break);
            assert!(reconnects >= 10, "{reconnects} reconnects from {src}");
            let (given_up, _) = clients.tcp_failures(src, t_break);
            assert!(given_up >= 10, "{given_up} connections given up from {src}");
            assert_eq!(clients.tcp_stuck(src, Duration::from_secs(1)), 0);
        }
        assert!(
            clients.sip_registered_via(CLIENTS[1], t_restore).is_some(),
            "SIP registered again"
        );
        assert!(clients.sip_failures(t_break) >= 1);
        let during = clients.rtp_stats(t_break.saturating_sub(200), t_restore + 1000);
        eprintln!("around the break: {during:?}");
        assert!(during.lost > 0, "{during:?}");
        assert!(during.largest_gap_ms >= 1000, "{during:?}");
        let after = clients.rtp_stats(t_restore + 500, unix_ms());
        eprintln!("after the break: {after:?}");
        assert_eq!(after.lost, 0, "{after:?}");
        assert!(after.largest_gap_ms < 100, "{after:?}");
        assert_eq!(servers.rtp_rejected(), 0);

        let stopping = Instant::now();
        clients.stop();
        servers.stop();
        assert!(stopping.elapsed() < Duration::from_secs(3), "stopped in {:?}", stopping.elapsed());
    }

    #[test]
    fn rtp_latching_rejects_a_new_source() {
        if skip_unless_root("rtp_latching_rejects_a_new_source") {
            return;
        }
        let (a, b) = two_namespaces();
        let servers = start_servers(&a, SERVER).expect("servers");
        let dst = SocketAddrV4::new(SERVER, RTP_PORT);
        let socks = b
            .enter(|| -> io::Result<_> {
                let first = UdpSocket::bind((CLIENTS[0], 0))?;
                let second = UdpSocket::bind((CLIENTS[0], 0))?;
                for s in [&first, &second] {
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                }
                Ok((first, second))
            })
            .expect("enter")
            .expect("sockets");
        let (first, second) = socks;
        let mut buf = [0u8; 64];
        first.send_to(b"1", dst).expect("send");
        let (n, _) = first.recv_from(&mut buf).expect("echo");
        assert_eq!(&buf[..n], b"1");
        second.send_to(b"2", dst).expect("send");
        assert!(second.recv_from(&mut buf).is_err(), "not echoed to another source");
        assert_eq!(servers.rtp_rejected(), 1);
        assert_eq!(servers.rtp_echoed(), 1);
        servers.rtp_unlatch();
        second.send_to(b"3", dst).expect("send");
        let (n, _) = second.recv_from(&mut buf).expect("echo after unlatching");
        assert_eq!(&buf[..n], b"3");
        servers.stop();
    }
}
