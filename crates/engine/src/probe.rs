//! ICMP echo probes over datagram ICMP sockets (`surge-ping`).
//!
//! The engine is unprivileged, so it uses Linux's "ping sockets" (`SOCK_DGRAM` with
//! `IPPROTO_ICMP`/`IPPROTO_ICMPV6`), which the kernel allows to the groups inside
//! `net.ipv4.ping_group_range` (the one sysctl covers IPv6 too). Two steps:
//!
//! * [`Prober::open`] opens one client (socket) per address family per gateway, bound to
//!   the gateway's interface (`SO_BINDTODEVICE`) and source address when given, and proves
//!   each is a datagram socket. It sends nothing, so it can run before the engine drops
//!   privileges and confines itself.
//! * [`Prober::start`] spawns one task per (gateway, target) that sends an echo request every
//!   `interval` and reports each answer or loss on a channel.
//!
//! surge-ping silently falls back to a raw socket when the datagram one is refused (root with
//! the default `ping_group_range` gets `SOCK_RAW`). The engine never wants that: `open` first
//! creates a datagram ICMP socket itself, so a refusal is reported with the sysctl to fix it,
//! and afterwards checks the type surge-ping recorded and, on Linux, the kernel's own
//! `SO_TYPE` of surge-ping's descriptor (read on a `pidfd_getfd` duplicate, which needs no
//! `unsafe`). A raw socket is refused with [`EngineError::ProbeSocket`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use statecull_policy::health::Probe;
use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence, SurgeError};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::error::EngineError;

/// What to probe for one gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    /// The gateway's index (as in the policy); echoed in every [`ProbeResult`].
    pub gateway: usize,
    /// The gateway's name, for errors and logs.
    pub name: String,
    /// Bind the sockets to this interface (`SO_BINDTODEVICE`). Needed for link-local IPv6
    /// targets.
    pub interface: Option<String>,
    /// Addresses to ping (duplicates are probed once).
    pub targets: Vec<IpAddr>,
    /// Source address to bind; only targets of its family can be probed then.
    pub source: Option<IpAddr>,
    /// FreeBSD: the routing table of the raw probe sockets (`SO_SETFIB`); ignored by the
    /// Linux datagram prober, which binds to `interface` instead.
    pub fib: Option<u32>,
    /// Time between echo requests to each target.
    pub interval: Duration,
    /// Time after which an unanswered request counts as lost. It may exceed `interval`:
    /// requests overlap then (up to [`MAX_IN_FLIGHT`] per target).
    pub timeout: Duration,
}

/// One probe's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeResult {
    pub gateway: usize,
    pub target: IpAddr,
    pub probe: Probe,
    /// When the request was sent. Results of overlapping requests may arrive out of order.
    pub sent_at: Instant,
}

/// Echo requests outstanding per target at most; further ticks wait.
pub const MAX_IN_FLIGHT: usize = 64;
/// The echo payload.
const PAYLOAD: &[u8] = b"statecull probe.";

/// One gateway's open sockets.
struct Opened {
    spec: ProbeSpec,
    v4: Option<Client>,
    v6: Option<Client>,
    /// Interface index, for link-local IPv6 targets.
    scope_id: u32,
}

/// Sockets opened, not yet probing.
pub struct Prober {
    gateways: Vec<Opened>,
    /// The runtime the sockets are registered with; the probe tasks run there.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gateways: Vec<_> = self
            .gateways
            .iter()
            .map(|g| (&g.spec.name, g.spec.targets.len(), g.v4.is_some(), g.v6.is_some()))
            .collect();
        f.debug_struct("Prober").field("gateways (name, targets, v4, v6)", &gateways).finish()
    }
}

fn family_name(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// The message for a refused datagram ICMP socket: what to change, and how.
///
/// `gid` is the engine's effective group; `range` the current `ping_group_range`, if known.
pub fn permission_message(gid: u32, range: Option<&str>, v6: bool) -> String {
    let current = range.map_or_else(String::new, |r| {
        format!(" (now \"{}\")", r.split_whitespace().collect::<Vec<_>>().join(" "))
    });
    format!(
        "the kernel refused a datagram {} ICMP socket: the engine's group (gid {gid}) must lie \
         inside net.ipv4.ping_group_range{current}, which also covers IPv6. Allow it, e.g. \
         `sysctl -w net.ipv4.ping_group_range=\"0 2147483647\"` (or just \"{gid} {gid}\"), and \
         persist it in /etc/sysctl.d/. The engine never falls back to raw sockets.",
        family_name(v6)
    )
}

fn socket_error(spec: &ProbeSpec, message: impl Into<String>) -> EngineError {
    EngineError::ProbeSocket { gateway: spec.name.clone(), message: message.into() }
}

fn config_error(spec: &ProbeSpec, message: impl std::fmt::Display) -> EngineError {
    EngineError::Config(format!("gateway {}: probes: {message}", spec.name))
}

pub(crate) fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

/// Check a spec before anything is opened; returns it with duplicate targets removed.
pub(crate) fn validate(mut spec: ProbeSpec) -> Result<ProbeSpec, EngineError> {
    if spec.targets.is_empty() {
        return Err(config_error(&spec, "no targets"));
    }
    if spec.interval.is_zero() {
        return Err(config_error(&spec, "interval must be more than 0"));
    }
    if spec.timeout.is_zero() {
        return Err(config_error(&spec, "timeout must be more than 0"));
    }
    if let Some(ifname) = &spec.interface
        && (ifname.is_empty()
            || ifname.len() > statecull_proto::model::MAX_IFNAME_LEN
            || ifname.bytes().any(|b| b == 0 || b == b'/' || b.is_ascii_whitespace()))
    {
        return Err(config_error(&spec, format!("invalid interface name {ifname:?}")));
    }
    let mut seen = HashSet::new();
    spec.targets.retain(|t| seen.insert(*t));
    for t in &spec.targets {
        if t.is_unspecified() || t.is_multicast() {
            return Err(config_error(&spec, format!("target {t} is not a unicast address")));
        }
        if let Some(src) = spec.source
            && src.is_ipv4() != t.is_ipv4()
        {
            return Err(config_error(
                &spec,
                format!("source {src} and target {t} are of different families"),
            ));
        }
        if is_link_local_v6(t) && spec.interface.is_none() {
            return Err(config_error(&spec, format!("link-local target {t} needs an interface")));
        }
    }
    Ok(spec)
}

/// Whether the kernel refused for lack of permission (`EACCES`, `EPERM`).
pub(crate) fn is_permission(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::PermissionDenied
        || e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32)
        || e.raw_os_error() == Some(nix::errno::Errno::EACCES as i32)
}

fn permission_error(spec: &ProbeSpec, v6: bool) -> EngineError {
    let gid = nix::unistd::getegid().as_raw();
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").ok();
    socket_error(spec, permission_message(gid, range.as_deref(), v6))
}

/// Open and verify one gateway's client for one family.
fn open_client(spec: &ProbeSpec, v6: bool, scope_id: u32) -> Result<Client, EngineError> {
    // Ask for the datagram socket ourselves first: if the kernel refuses it, say so, instead
    // of letting surge-ping fall back to a raw socket.
    let (domain, protocol) =
        if v6 { (Domain::IPV6, Protocol::ICMPV6) } else { (Domain::IPV4, Protocol::ICMPV4) };
    match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(_probe_socket) => {}
        Err(e) if is_permission(&e) => return Err(permission_error(spec, v6)),
        Err(e) => {
            return Err(socket_error(
                spec,
                format!("cannot create a datagram {} ICMP socket: {e}", family_name(v6)),
            ));
        }
    }
    let mut config =
        Config::builder().kind(if v6 { ICMP::V6 } else { ICMP::V4 }).sock_type_hint(Type::DGRAM);
    if let Some(ifname) = &spec.interface {
        config = config.interface(ifname);
    }
    if let Some(src) = spec.source.filter(|s| s.is_ipv6() == v6) {
        let addr = match src {
            IpAddr::V6(a) if is_link_local_v6(&src) => {
                SocketAddr::V6(std::net::SocketAddrV6::new(a, 0, 0, scope_id))
            }
            other => SocketAddr::new(other, 0),
        };
        config = config.bind(addr);
    }
    let client = Client::new(&config.build()).map_err(|e| {
        if is_permission(&e) {
            return permission_error(spec, v6);
        }
        let hint = match e.raw_os_error() {
            Some(c) if c == nix::errno::Errno::ENODEV as i32 => " (no such interface?)",
            Some(c) if c == nix::errno::Errno::EADDRNOTAVAIL as i32 => {
                " (is the source address configured on this host?)"
            }
            _ => "",
        };
        socket_error(spec, format!("opening the {} ICMP socket: {e}{hint}", family_name(v6)))
    })?;
    verify_datagram(&client).map_err(|m| socket_error(spec, m))?;
    Ok(client)
}

/// Refuse anything but a datagram socket: the type surge-ping recorded, and on Linux the
/// kernel's `SO_TYPE` of the descriptor itself.
fn verify_datagram(client: &Client) -> Result<(), String> {
    let recorded = client.get_socket().get_type();
    if recorded != Type::DGRAM {
        return Err(format!(
            "surge-ping opened a {recorded:?} socket, not a datagram one; the engine refuses \
             raw ICMP sockets"
        ));
    }
    match kernel_socket_type(client) {
        Ok(Some(nix::sys::socket::SockType::Datagram)) => Ok(()),
        Ok(Some(other)) => Err(format!(
            "the kernel reports the ICMP socket as {other:?}, not a datagram socket; the \
             engine refuses raw ICMP sockets"
        )),
        Ok(None) => {
            tracing::warn!(
                "cannot ask the kernel for the ICMP socket's type here; relying on surge-ping's \
                 record (datagram)"
            );
            Ok(())
        }
        Err(e) => Err(format!("reading the ICMP socket's type: {e}")),
    }
}

/// The kernel's `SO_TYPE` of the client's socket, read on a duplicate obtained with
/// `pidfd_getfd` (Linux ≥ 5.6). `None` where that is unavailable (older kernels, other
/// systems, or a security module forbidding it).
#[cfg(target_os = "linux")]
fn kernel_socket_type(client: &Client) -> Result<Option<nix::sys::socket::SockType>, String> {
    use rustix::io::Errno;
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

    let raw = client.get_socket().get_native_sock();
    let unavailable = |e: Errno| matches!(e, Errno::NOSYS | Errno::PERM | Errno::ACCESS);
    let pidfd = match pidfd_open(getpid(), PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) if unavailable(e) => return Ok(None),
        Err(e) => return Err(format!("pidfd_open: {e}")),
    };
    // `client` holds the socket open for the duration of this call, so `raw` names it.
    let dup = match pidfd_getfd(&pidfd, raw, PidfdGetfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) if unavailable(e) => return Ok(None),
        Err(e) => return Err(format!("pidfd_getfd: {e}")),
    };
    nix::sys::socket::getsockopt(&dup, nix::sys::socket::sockopt::SockType)
        .map(Some)
        .map_err(|e| format!("getsockopt(SO_TYPE): {e}"))
}

#[cfg(not(target_os = "linux"))]
fn kernel_socket_type(_client: &Client) -> Result<Option<nix::sys::socket::SockType>, String> {
    Ok(None)
}

impl Prober {
    /// Open one datagram ICMP client per address family per gateway (only the families its
    /// targets need), bound to the gateway's interface and source address if given, and
    /// verify each is a datagram socket. Sends nothing. Must run inside the tokio runtime
    /// (with I/O enabled) that will run the probes.
    ///
    /// Errors: [`EngineError::Config`] for a spec that cannot work (no targets, zero interval
    /// or timeout, source and target of different families, a link-local target without an
    /// interface, a bad interface name); [`EngineError::ProbeSocket`] when a socket cannot be
    /// opened or is not a datagram socket (a refusal explains `ping_group_range`).
    pub async fn open(specs: Vec<ProbeSpec>) -> Result<Prober, EngineError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            EngineError::Config("Prober::open must run inside the tokio runtime".into())
        })?;
        let specs = specs.into_iter().map(validate).collect::<Result<Vec<_>, _>>()?;
        let mut gateways = Vec::with_capacity(specs.len());
        for spec in specs {
            let scope_id = match &spec.interface {
                Some(ifname)
                    if spec.targets.iter().chain(spec.source.iter()).any(is_link_local_v6) =>
                {
                    nix::net::if_::if_nametoindex(ifname.as_str())
                        .map_err(|e| socket_error(&spec, format!("interface {ifname}: {e}")))?
                }
                _ => 0,
            };
            let wants = |v6: bool| spec.targets.iter().any(|t| t.is_ipv6() == v6);
            let v4 = if wants(false) { Some(open_client(&spec, false, scope_id)?) } else { None };
            let v6 = if wants(true) { Some(open_client(&spec, true, scope_id)?) } else { None };
            gateways.push(Opened { spec, v4, v6, scope_id });
        }
        Ok(Prober { gateways, runtime })
    }

    /// Spawn one task per (gateway, target): an echo request every `interval` (sequence
    /// numbers increasing), each outcome sent to `tx` — `Reply` with the round-trip time,
    /// `Lost` on timeout or error. Errors other than timeouts are logged at debug level,
    /// once per kind and gateway. Dropping or aborting the returned set stops probing; a
    /// closed `tx` ends the tasks quietly.
    pub fn start(self, tx: mpsc::Sender<ProbeResult>) -> JoinSet<()> {
        let mut set = JoinSet::new();
        for g in self.gateways {
            let logged = Arc::new(Mutex::new(HashSet::new()));
            let exhausted_log = Arc::new(Mutex::new(crate::sources::RateLimited::new(
                crate::sources::EXHAUSTED_EVERY,
            )));
            for (i, target) in g.spec.targets.iter().enumerate() {
                let client = if target.is_ipv6() { g.v6.clone() } else { g.v4.clone() };
                let Some(client) = client else { continue }; // opened for every family used
                let task = Target {
                    client,
                    gateway: g.spec.gateway,
                    name: g.spec.name.clone(),
                    target: *target,
                    scope_id: if is_link_local_v6(target) { g.scope_id } else { 0 },
                    ident: PingIdentifier(u16::try_from(i).unwrap_or(u16::MAX)),
                    interval: g.spec.interval,
                    timeout: g.spec.timeout,
                    logged: Arc::clone(&logged),
                    exhausted_log: Arc::clone(&exhausted_log),
                };
                set.spawn_on(task.run(tx.clone()), &self.runtime);
            }
        }
        set
    }
}

/// One target's probing loop.
struct Target {
    client: Client,
    gateway: usize,
    name: String,
    target: IpAddr,
    scope_id: u32,
    /// Ignored by Linux datagram sockets (the kernel sets the identifier).
    ident: PingIdentifier,
    interval: Duration,
    timeout: Duration,
    /// Error kinds already logged for this gateway.
    logged: Arc<Mutex<HashSet<String>>>,
    /// Descriptor exhaustion is logged again every `sources::EXHAUSTED_EVERY`.
    exhausted_log: Arc<Mutex<crate::sources::RateLimited>>,
}

/// A short name for the kind of a ping error (for logging each kind once).
fn error_kind(e: &SurgeError) -> String {
    match e {
        SurgeError::IOError(io) => format!("io:{:?}", io.kind()),
        SurgeError::MalformedPacket(_) => "malformed-packet".into(),
        SurgeError::IncorrectBufferSize => "buffer-size".into(),
        SurgeError::Timeout { .. } => "timeout".into(),
        SurgeError::EchoRequestPacket => "echo-request".into(),
        SurgeError::NetworkError => "network".into(),
        SurgeError::IdenticalRequests { .. } => "identical-requests".into(),
        SurgeError::ClientDestroyed => "client-destroyed".into(),
    }
}

impl Target {
    async fn run(self, tx: mpsc::Sender<ProbeResult>) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut in_flight: JoinSet<ProbeResult> = JoinSet::new();
        let mut seq: u16 = 0;
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = ticker.tick(), if in_flight.len() < MAX_IN_FLIGHT => {
                    in_flight.spawn(self.ping_once(PingSequence(seq)));
                    seq = seq.wrapping_add(1);
                }
                Some(done) = in_flight.join_next() => {
                    // A ping task cannot panic or be aborted while this set lives.
                    let Ok(result) = done else { continue };
                    if tx.send(result).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// One echo request and its outcome, as a future owning what it needs.
    fn ping_once(&self, seq: PingSequence) -> impl Future<Output = ProbeResult> + 'static {
        let client = self.client.clone();
        let (gateway, target, ident, scope_id, timeout) =
            (self.gateway, self.target, self.ident, self.scope_id, self.timeout);
        let name = self.name.clone();
        let logged = Arc::clone(&self.logged);
        let exhausted_log = Arc::clone(&self.exhausted_log);
        async move {
            let mut pinger = client.pinger(target, ident).await;
            pinger.timeout(timeout);
            if scope_id != 0 {
                pinger.scope_id(scope_id);
            }
            let sent_at = Instant::now();
            let probe = match pinger.ping(seq, PAYLOAD).await {
                Ok((_packet, rtt)) => Probe::Reply { rtt },
                Err(SurgeError::Timeout { .. }) => Probe::Lost,
                Err(e) => {
                    let first =
                        logged.lock().map(|mut l| l.insert(error_kind(&e))).unwrap_or(false);
                    let exhausted = matches!(&e, SurgeError::IOError(io)
                        if crate::sources::out_of_descriptors(io));
                    if exhausted {
                        // The engine's own failure, not the gateway's: said at error level
                        // for as long as it lasts (the probe still counts as lost, so the
                        // gateway never looks healthy on it).
                        let held = exhausted_log.lock().ok().and_then(|mut r| r.allow());
                        if let Some(held) = held {
                            tracing::error!(gateway = %name, %target, error = %e,
                                "probe failed: the engine is OUT OF FILE DESCRIPTORS (counted as lost){}",
                                crate::sources::also_text(held));
                        }
                    } else if first {
                        tracing::warn!(gateway = %name, %target, error = %e,
                            "probe failed (counted as lost; further errors of this kind are not logged)");
                    }
                    Probe::Lost
                }
            };
            ProbeResult { gateway, target, probe, sent_at }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn spec(targets: &[&str]) -> ProbeSpec {
        ProbeSpec {
            gateway: 0,
            name: "WAN1".into(),
            interface: None,
            targets: targets.iter().map(|t| t.parse().unwrap()).collect(),
            source: None,
            fib: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(300),
        }
    }

    #[test]
    fn permission_message_teaches_the_sysctl() {
        let m = permission_message(65534, Some("1\t0\n"), false);
        assert!(m.contains("datagram IPv4 ICMP socket"), "{m}");
        assert!(m.contains("gid 65534"), "{m}");
        assert!(m.contains("net.ipv4.ping_group_range (now \"1 0\")"), "{m}");
        assert!(m.contains("also covers IPv6"), "{m}");
        assert!(m.contains("sysctl -w net.ipv4.ping_group_range=\"0 2147483647\""), "{m}");
        assert!(m.contains("\"65534 65534\""), "{m}");
        let m6 = permission_message(0, None, true);
        assert!(m6.contains("datagram IPv6 ICMP socket") && !m6.contains("(now"), "{m6}");
        let e = EngineError::ProbeSocket { gateway: "WAN1".into(), message: m };
        assert!(e.to_string().starts_with("gateway WAN1: probe socket: the kernel refused"));
    }

    #[test]
    fn specs_are_validated_before_anything_opens() {
        assert!(validate(spec(&[])).is_err());
        let mut s = spec(&["192.0.2.1"]);
        s.interval = Duration::ZERO;
        assert!(validate(s).is_err());
        let mut s = spec(&["192.0.2.1"]);
        s.timeout = Duration::ZERO;
        assert!(validate(s).is_err());
        let mut s = spec(&["2001:db8::1"]);
        s.source = Some("192.0.2.9".parse().unwrap());
        let e = validate(s).unwrap_err().to_string();
        assert!(e.contains("different families"), "{e}");
        let e = validate(spec(&["fe80::1"])).unwrap_err().to_string();
        assert!(e.contains("needs an interface"), "{e}");
        let mut s = spec(&["fe80::1"]);
        s.interface = Some("wan0".into());
        assert!(validate(s).is_ok());
        for bad in ["", "a/b", "with space", "sixteen_chars_xx", "nul\0"] {
            let mut s = spec(&["192.0.2.1"]);
            s.interface = Some(bad.into());
            assert!(validate(s).is_err(), "{bad:?}");
        }
        assert!(validate(spec(&["0.0.0.0"])).is_err());
        assert!(validate(spec(&["224.0.0.1"])).is_err());
        let d = validate(spec(&["192.0.2.1", "192.0.2.2", "192.0.2.1"])).unwrap();
        assert_eq!(d.targets.len(), 2);
    }

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        let fut = Prober::open(vec![spec(&["127.0.0.1"])]);
        // Poll it on a bare executor-less context: a runtime-less thread.
        let r = std::thread::spawn(move || {
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            let mut fut = Box::pin(fut);
            match fut.as_mut().poll(&mut cx) {
                std::task::Poll::Ready(r) => r.map(|_| ()),
                std::task::Poll::Pending => panic!("open has nothing to wait for"),
            }
        })
        .join()
        .unwrap();
        assert!(r.is_err());
    }

    /// In this host's own namespace: works only where `ping_group_range` admits our group.
    /// Where it does not, the refusal must be the teaching error, never a raw socket.
    #[tokio::test]
    async fn host_namespace_open_is_datagram_or_explained() {
        match Prober::open(vec![spec(&["127.0.0.1"])]).await {
            Ok(p) => {
                for g in &p.gateways {
                    let c = g.v4.as_ref().unwrap();
                    assert_eq!(c.get_socket().get_type(), Type::DGRAM);
                }
            }
            Err(EngineError::ProbeSocket { message, .. })
                if message.contains("ping_group_range") =>
            {
                skip_note(
                    "probe::host_namespace_open_is_datagram_or_explained (live part)",
                    &format!("datagram ICMP refused here: {message}"),
                );
            }
            Err(e) => panic!("unexpected: {e}"),
        }
    }

    fn skip_note(test: &str, why: &str) {
        use std::io::Write as _;
        let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
    }

    #[cfg(target_os = "linux")]
    mod live {
        use super::*;
        use crate::routes::testkit::{Netns, skip};
        use std::collections::HashMap;

        /// Real pings inside a private namespace whose `ping_group_range` admits everyone
        /// (the host's sysctl is never touched).
        #[test]
        fn pings_in_a_namespace() {
            let test = "probe::pings_in_a_namespace";
            if !nix::unistd::geteuid().is_root() {
                skip(test, "needs root");
                return;
            }
            let Some(ns) = Netns::create(test, "probe") else { return };
            ns.exec("sysctl", &["-qw", "net.ipv4.ping_group_range=0 2147483647"]);
            ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
            ns.ip(&["link", "set", "veth0", "up"]);
            ns.ip(&["link", "set", "veth1", "up"]);
            ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "veth0"]);
            let v6_lo = std::fs::read_to_string("/proc/net/if_inet6").is_ok();

            ns.run_in(|rt| {
                rt.block_on(async {
                    let mut targets = vec!["127.0.0.1"];
                    if v6_lo {
                        targets.push("::1");
                    }
                    let mut up = spec(&targets);
                    up.interface = Some("lo".into());
                    // Nobody answers 198.51.100.99: every probe times out. The timeout is
                    // three intervals, so requests must overlap.
                    let mut dead = spec(&["198.51.100.99"]);
                    dead.gateway = 1;
                    dead.name = "WAN2".into();
                    dead.interface = Some("veth0".into());
                    dead.source = Some("198.51.100.1".parse().unwrap());

                    let prober = Prober::open(vec![up, dead]).await.unwrap();
                    for g in &prober.gateways {
                        for c in g.v4.iter().chain(g.v6.iter()) {
                            assert_eq!(
                                kernel_socket_type(c).unwrap(),
                                Some(nix::sys::socket::SockType::Datagram),
                                "the kernel check must run here (Linux ≥ 5.6)"
                            );
                        }
                    }
                    let (tx, mut rx) = mpsc::channel(64);
                    let started = Instant::now();
                    let mut set = prober.start(tx);
                    let mut got: HashMap<(usize, IpAddr), Vec<ProbeResult>> = HashMap::new();
                    let window = Duration::from_millis(1200);
                    while let Ok(Some(r)) =
                        tokio::time::timeout_at(started + window, rx.recv()).await
                    {
                        got.entry((r.gateway, r.target)).or_default().push(r);
                    }
                    for t in &targets {
                        let ip: IpAddr = t.parse().unwrap();
                        let rs = got.get(&(0, ip)).unwrap_or_else(|| panic!("no result for {t}"));
                        assert!(rs.len() >= 8, "{t}: {} results", rs.len());
                        assert!(
                            rs.iter().all(|r| matches!(r.probe, Probe::Reply { .. })),
                            "{t}: {rs:?}"
                        );
                        assert!(rs.windows(2).all(|w| w[0].sent_at < w[1].sent_at));
                    }
                    let lost = &got[&(1, "198.51.100.99".parse().unwrap())];
                    assert!(lost.iter().all(|r| r.probe == Probe::Lost), "{lost:?}");
                    // Sent every 100 ms, each lost after 300 ms: ~9 in 1.2 s if requests
                    // overlap, at most 4 if each waited for the previous one.
                    assert!(lost.len() >= 6, "{} lost results", lost.len());

                    // Closing the channel ends every task quietly.
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

        /// The check itself refuses a raw ICMP socket (made on purpose, as root).
        #[test]
        fn raw_socket_is_refused() {
            let test = "probe::raw_socket_is_refused";
            if !nix::unistd::geteuid().is_root() {
                skip(test, "needs root (CAP_NET_RAW)");
                return;
            }
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let raw =
                    Client::new(&Config::builder().sock_type_hint(Type::RAW).build()).unwrap();
                assert_eq!(
                    kernel_socket_type(&raw).unwrap(),
                    Some(nix::sys::socket::SockType::Raw)
                );
                let e = verify_datagram(&raw).unwrap_err();
                assert!(e.contains("refuses raw"), "{e}");
            });
        }

        /// Where the namespace's default range admits nobody, open fails with the teaching
        /// error even for root (who could have had a raw socket).
        #[test]
        fn refused_datagram_is_explained() {
            let test = "probe::refused_datagram_is_explained";
            if !nix::unistd::geteuid().is_root() {
                skip(test, "needs root");
                return;
            }
            let Some(ns) = Netns::create(test, "probe") else { return };
            ns.exec("sysctl", &["-qw", "net.ipv4.ping_group_range=1 0"]);
            ns.run_in(|rt| {
                rt.block_on(async {
                    match Prober::open(vec![spec(&["127.0.0.1"])]).await {
                        Err(EngineError::ProbeSocket { gateway, message }) => {
                            assert_eq!(gateway, "WAN1");
                            assert!(
                                message.contains("ping_group_range (now \"1 0\")"),
                                "{message}"
                            );
                        }
                        other => panic!("expected a refusal, got {other:?}"),
                    }
                })
            });
        }
    }
}
