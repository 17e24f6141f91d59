//! ICMP echo probes over raw sockets: FreeBSD's prober.
//!
//! FreeBSD has no unprivileged ICMP sockets, so the engine, started as root (the rc.d script
//! runs it with `--user`), opens one raw ICMP (or ICMPv6) socket per gateway and target in
//! [`RawProber::open`], *before* it drops to its user and enters Capsicum:
//!
//! * bound to the gateway's `probe_source` when set, in its routing table (`fib`, FreeBSD's
//!   `SO_SETFIB`) when set — FreeBSD has no `SO_BINDTODEVICE`, so a probe otherwise leaves
//!   by the route to its target;
//! * connected to the target, because capability mode refuses `sendto(2)` with an address;
//!   a connected raw socket also receives only what that host sends;
//! * then limited by the daemon to `FdUse::Probe`: send, receive and kqueue events only
//!   ([`RawProber::descriptors`]).
//!
//! Each socket has its own echo identifier; replies are read and matched with the pure code
//! of `icmp.rs` (IPv4 header skipped, checksum checked, only our identifier, sequence and
//! payload from the target). One task per socket sends a request every `interval` (up to
//! [`crate::probe::MAX_IN_FLIGHT`] in flight), and reports each reply with its round-trip
//! time, and each request unanswered after `timeout` as lost, on the same channel as the
//! Linux prober ([`ProbeResult`]).
//!
//! Linux keeps its datagram ICMP sockets (`probe.rs`); this prober is compiled there too and
//! tested against the Linux kernel's own replies in a private namespace (as root). What
//! only FreeBSD does — `SO_SETFIB`, Capsicum rights, its raw IPv4 header — is type-checked
//! and follows FreeBSD's sources; it has not run on a FreeBSD kernel.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use statecull_policy::health::Probe;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::EngineError;
use crate::icmp::{self, Family, InFlight, Received};
use crate::probe::{MAX_IN_FLIGHT, ProbeResult, ProbeSpec};

/// The echo payload (as the datagram prober's).
const PAYLOAD: &[u8] = b"statecull probe.";
/// Largest packet read (an echo reply of ours is 44 bytes with its IPv4 header).
const RECV_BUF: usize = 2048;
/// How often requests past their timeout are looked for, at most.
const EXPIRY_CHECK_MAX: Duration = Duration::from_millis(50);

/// One open socket, not yet probing.
#[derive(Debug)]
struct Opened {
    gateway: usize,
    name: String,
    target: IpAddr,
    socket: AsyncFd<Socket>,
    id: u16,
    interval: Duration,
    timeout: Duration,
}

/// Raw sockets opened, not yet probing.
#[derive(Debug)]
pub struct RawProber {
    sockets: Vec<Opened>,
}

fn socket_error(spec: &ProbeSpec, message: impl Into<String>) -> EngineError {
    EngineError::ProbeSocket { gateway: spec.name.clone(), message: message.into() }
}

/// The message for a refused raw socket.
pub fn permission_message(v6: bool) -> String {
    format!(
        "the kernel refused a raw {} ICMP socket: on FreeBSD the engine opens its probe sockets \
         while still root, so start it as root with --user NAME (the rc.d script does), or \
         use health_source = \"dpinger\" or \"external\"",
        if v6 { "IPv6" } else { "IPv4" }
    )
}

/// Identifiers: distinct per socket within this engine, and unlike another process's.
fn identifier(index: usize) -> u16 {
    let base = u16::try_from(std::process::id() & 0xffff).unwrap_or(0) ^ 0x5c00;
    base.wrapping_add(u16::try_from(index & 0xffff).unwrap_or(0))
}

fn with_scope(addr: IpAddr, scope_id: u32) -> SocketAddr {
    match addr {
        IpAddr::V6(a) if a.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(a, 0, 0, scope_id))
        }
        other => SocketAddr::new(other, 0),
    }
}

fn open_one(spec: &ProbeSpec, target: IpAddr, scope_id: u32) -> Result<Socket, EngineError> {
    let v6 = target.is_ipv6();
    let (domain, protocol) =
        if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
    let socket = Socket::new(domain, Type::RAW, Some(protocol)).map_err(|e| {
        if crate::probe::is_permission(&e) {
            socket_error(spec, permission_message(v6))
        } else {
            socket_error(spec, format!("cannot create a raw ICMP socket: {e}"))
        }
    })?;
    let step = |what: &str, e: std::io::Error| {
        socket_error(spec, format!("raw ICMP socket to {target}: {what}: {e}"))
    };
    socket.set_nonblocking(true).map_err(|e| step("non-blocking mode", e))?;
    #[cfg(target_os = "freebsd")]
    if let Some(fib) = spec.fib {
        socket
            .set_fib(fib)
            .map_err(|e| step(&format!("SO_SETFIB {fib} (is net.fibs larger?)"), e))?;
    }
    if let Some(src) = spec.source {
        socket.bind(&with_scope(src, scope_id).into()).map_err(|e| {
            step(&format!("binding {src} (is the source address configured on this host?)"), e)
        })?;
    }
    socket.connect(&with_scope(target, scope_id).into()).map_err(|e| step("connect", e))?;
    Ok(socket)
}

impl RawProber {
    /// Open one raw socket per (gateway, target), bound and connected as the module says.
    /// Sends nothing. Must run inside the tokio runtime that will run the probes, before
    /// the privilege drop (raw sockets need root).
    ///
    /// Errors: [`EngineError::Config`] for a spec that cannot work (as the datagram
    /// prober); [`EngineError::ProbeSocket`] when a socket cannot be opened, bound or
    /// connected (a refusal says to start as root).
    pub fn open(specs: Vec<ProbeSpec>) -> Result<Self, EngineError> {
        let specs = specs.into_iter().map(crate::probe::validate).collect::<Result<Vec<_>, _>>()?;
        let mut sockets = Vec::new();
        for spec in specs {
            let scope_id = match &spec.interface {
                Some(ifname)
                    if spec
                        .targets
                        .iter()
                        .chain(spec.source.iter())
                        .any(crate::probe::is_link_local_v6) =>
                {
                    nix::net::if_::if_nametoindex(ifname.as_str())
                        .map_err(|e| socket_error(&spec, format!("interface {ifname}: {e}")))?
                }
                _ => 0,
            };
            for &target in &spec.targets {
                let socket = open_one(&spec, target, scope_id)?;
                // `AsyncFd::new` is deprecated for types whose descriptor may close or change
                // while registered (the contract of the `unsafe` `register`). A
                // `socket2::Socket` owns its descriptor for its whole life and the `AsyncFd`
                // owns the socket, which is that contract, kept without `unsafe`.
                #[allow(deprecated)]
                let socket = AsyncFd::new(socket).map_err(|e| {
                    socket_error(&spec, format!("registering the socket to {target}: {e}"))
                })?;
                sockets.push(Opened {
                    gateway: spec.gateway,
                    name: spec.name.clone(),
                    target,
                    socket,
                    id: identifier(sockets.len()),
                    interval: spec.interval,
                    timeout: spec.timeout,
                });
            }
        }
        Ok(RawProber { sockets })
    }

    /// Every socket, for the daemon to limit its Capsicum rights before `cap_enter`.
    pub fn descriptors(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.sockets.iter().map(|s| s.socket.get_ref().as_fd())
    }

    /// Spawn one task per socket; each outcome is sent to `tx`. Dropping or aborting the
    /// returned set stops probing; a closed `tx` ends the tasks quietly.
    pub fn start(self, tx: mpsc::Sender<ProbeResult>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for s in self.sockets {
            set.spawn(s.run(tx.clone()));
        }
        set
    }
}

impl Opened {
    async fn run(self, tx: mpsc::Sender<ProbeResult>) {
        let family = Family::of(self.target);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval((self.timeout / 4).min(EXPIRY_CHECK_MAX));
        expiry.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut in_flight: InFlight<Instant> = InFlight::new(self.target, self.id, PAYLOAD);
        let mut seq: u16 = 0;
        let mut buf = vec![0u8; RECV_BUF];
        let mut send_error_logged = false;
        let mut bad_packets: u64 = 0;
        loop {
            let mut out: Vec<ProbeResult> = Vec::new();
            tokio::select! {
                () = tx.closed() => return,
                _ = ticker.tick(), if in_flight.len() < MAX_IN_FLIGHT => {
                    let request = icmp::echo_request(family, self.id, seq, PAYLOAD);
                    let sent_at = Instant::now();
                    match self.socket.get_ref().write(&request) {
                        Ok(_) => in_flight.sent(seq, sent_at),
                        Err(e) => {
                            if crate::sources::out_of_descriptors(&e) || !send_error_logged {
                                send_error_logged = true;
                                tracing::warn!(gateway = %self.name, target = %self.target,
                                    error = %e, "probe not sent (counted as lost)");
                            }
                            out.push(self.result(Probe::Lost, sent_at));
                        }
                    }
                    seq = seq.wrapping_add(1);
                }
                ready = self.socket.readable() => {
                    let Ok(mut guard) = ready else { return };
                    loop {
                        match guard.try_io(|s| s.get_ref().read(&mut buf)) {
                            Ok(Ok(n)) => {
                                let packet = buf.get(..n).unwrap_or_default();
                                match self.answer(family, packet, &mut in_flight) {
                                    Ok(Some(sent_at)) => out.push(self.result(
                                        Probe::Reply { rtt: sent_at.elapsed() },
                                        sent_at,
                                    )),
                                    Ok(None) => {}
                                    Err(e) => {
                                        bad_packets += 1;
                                        if bad_packets.is_power_of_two() {
                                            tracing::debug!(gateway = %self.name, error = %e,
                                                bad_packets, "ignoring a malformed ICMP packet");
                                        }
                                    }
                                }
                            }
                            Ok(Err(e)) => {
                                // An ICMP error for a request (unreachable) surfaces here on
                                // a connected socket; the request simply times out.
                                tracing::debug!(gateway = %self.name, error = %e, "probe socket");
                                break;
                            }
                            Err(_would_block) => break,
                        }
                    }
                }
                _ = expiry.tick() => {
                    let now = Instant::now();
                    for sent_at in in_flight.expire(|t| now.duration_since(*t) >= self.timeout) {
                        out.push(self.result(Probe::Lost, sent_at));
                    }
                }
            }
            for r in out {
                if tx.send(r).await.is_err() {
                    return;
                }
            }
        }
    }

    /// The request `packet` answers, if it is one of ours still waiting and in time.
    fn answer(
        &self,
        family: Family,
        packet: &[u8],
        in_flight: &mut InFlight<Instant>,
    ) -> Result<Option<Instant>, EngineError> {
        let Received::EchoReply(echo) = icmp::parse(family, packet)? else { return Ok(None) };
        // A connected raw socket receives only from its peer; IPv4 says so in its header.
        let from = match family {
            Family::V4 => icmp::ipv4_source(packet).map_or(self.target, IpAddr::V4),
            Family::V6 => self.target,
        };
        let Some(sent_at) = in_flight.answer(from, &echo) else { return Ok(None) };
        if sent_at.elapsed() < self.timeout {
            Ok(Some(sent_at))
        } else {
            // A reply after the timeout is a loss, as the datagram prober counts it: left
            // for the expiry check to report.
            in_flight.sent(echo.seq, sent_at);
            Ok(None)
        }
    }

    fn result(&self, probe: Probe, sent_at: Instant) -> ProbeResult {
        ProbeResult { gateway: self.gateway, target: self.target, probe, sent_at }
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::routes::testkit::{Netns, skip};
    use std::collections::HashMap;

    fn spec(gateway: usize, name: &str, targets: &[&str], source: Option<&str>) -> ProbeSpec {
        ProbeSpec {
            gateway,
            name: name.into(),
            interface: None,
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            source: source.map(|s| s.parse().unwrap()),
            fib: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
        }
    }

    /// The raw prober against the Linux kernel's own echo replies, in a private namespace:
    /// replies from loopback (IPv4 and IPv6) are matched with their round-trip times, a
    /// host that does not exist is lost on time, and each socket was connected and bound.
    #[test]
    fn raw_probes_in_a_namespace() {
        let test = "raw_probe::raw_probes_in_a_namespace";
        if !nix::unistd::geteuid().is_root() {
            skip(test, "needs root (raw sockets)");
            return;
        }
        let Some(ns) = Netns::create(test, "rawprobe") else { return };
        ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
        ns.ip(&["link", "set", "veth0", "up"]);
        ns.ip(&["link", "set", "veth1", "up"]);
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "veth0"]);
        let v6 = std::fs::read_to_string("/proc/net/if_inet6").is_ok();
        ns.run_in(|rt| {
            rt.block_on(async {
                let mut targets = vec!["127.0.0.1"];
                if v6 {
                    targets.push("::1");
                }
                let up = spec(0, "WAN1", &targets, None);
                let dead = spec(1, "WAN2", &["198.51.100.99"], Some("198.51.100.1"));
                let prober = RawProber::open(vec![up, dead]).unwrap();
                assert_eq!(prober.descriptors().count(), targets.len() + 1);
                // Connected to its target: requests are sent with write(2), no address (an
                // unconnected raw socket fails that with EDESTADDRREQ), so every reply below
                // proves it. (Linux answers getpeername on raw sockets with ENOTCONN.)
                let bound = prober.sockets.last().unwrap().socket.get_ref().local_addr().unwrap();
                assert_eq!(bound.as_socket().unwrap().ip().to_string(), "198.51.100.1");
                let ids: std::collections::HashSet<u16> =
                    prober.sockets.iter().map(|s| s.id).collect();
                assert_eq!(ids.len(), prober.sockets.len(), "one identifier per socket");

                let (tx, mut rx) = mpsc::channel(64);
                let started = Instant::now();
                let mut set = prober.start(tx);
                let mut got: HashMap<(usize, IpAddr), Vec<ProbeResult>> = HashMap::new();
                while let Ok(Some(r)) =
                    tokio::time::timeout_at(started + Duration::from_millis(1200), rx.recv()).await
                {
                    got.entry((r.gateway, r.target)).or_default().push(r);
                }
                for t in &targets {
                    let ip: IpAddr = t.parse().unwrap();
                    let rs = got.get(&(0, ip)).unwrap_or_else(|| panic!("no result for {t}"));
                    assert!(rs.len() >= 8, "{t}: {} results", rs.len());
                    assert!(
                        rs.iter().all(|r| matches!(r.probe,
                            Probe::Reply { rtt } if rtt < Duration::from_millis(300))),
                        "{t}: {rs:?}"
                    );
                }
                let lost = &got[&(1, "198.51.100.99".parse().unwrap())];
                assert!(lost.iter().all(|r| r.probe == Probe::Lost), "{lost:?}");
                assert!(lost.len() >= 6, "{} lost results (requests must overlap)", lost.len());
                drop(rx);
                tokio::time::timeout(Duration::from_secs(5), async {
                    while let Some(r) = set.join_next().await {
                        assert!(r.is_ok());
                    }
                })
                .await
                .expect("tasks end once the receiver is gone");
            })
        });
    }

    /// Two sockets probing the same host (a raw socket sees every reply from it): each
    /// counts the replies to its own requests, once. (That a reply with another identifier
    /// is never taken is proven on the matcher itself: `icmp::tests::only_our_replies_are_matched`.)
    #[test]
    fn sockets_to_the_same_target_do_not_share_replies() {
        let test = "raw_probe::sockets_to_the_same_target_do_not_share_replies";
        if !nix::unistd::geteuid().is_root() {
            skip(test, "needs root (raw sockets)");
            return;
        }
        let Some(ns) = Netns::create(test, "rawprobe2") else { return };
        ns.run_in(|rt| {
            rt.block_on(async {
                let mut a = spec(0, "WAN1", &["127.0.0.1"], None);
                a.interval = Duration::from_millis(50);
                let mut b = spec(1, "WAN2", &["127.0.0.1"], None);
                b.interval = Duration::from_millis(1000);
                let (tx, mut rx) = mpsc::channel(256);
                let _set = RawProber::open(vec![a, b]).unwrap().start(tx);
                let started = Instant::now();
                let mut per = [0usize; 2];
                while let Ok(Some(r)) =
                    tokio::time::timeout_at(started + Duration::from_millis(600), rx.recv()).await
                {
                    assert!(matches!(r.probe, Probe::Reply { .. }), "{r:?}");
                    per[r.gateway] += 1;
                }
                // WAN2 sent one request (at start), WAN1 about twelve: WAN1's replies were not
                // counted for WAN2, nor any reply twice.
                assert_eq!(per[1], 1, "{per:?}");
                assert!((8..=13).contains(&per[0]), "{per:?}");
            })
        });
    }

    #[test]
    fn a_refusal_says_to_start_as_root() {
        let m = permission_message(false);
        assert!(m.contains("raw IPv4 ICMP socket") && m.contains("start it as root"), "{m}");
        assert!(permission_message(true).contains("IPv6"));
    }
}
