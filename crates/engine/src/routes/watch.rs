//! The route watcher: two rtnetlink sockets (one subscribed to route, rule and nexthop
//! changes, one for dumps) on tokio's reactor, and the dump conversations over them. What the
//! kernel sends is decoded by `parse.rs`.
//!
//! `netlink-sys` owns the descriptors (safe API); both are non-blocking and driven through
//! `AsyncFd`, so nothing blocks a runtime thread and no extra thread is needed. Both are
//! opened by [`RouteWatcher::open`] before the engine confines itself (the sandbox forbids
//! new netlink sockets). On other systems [`RouteWatcher::open`] fails.

#[cfg(target_os = "linux")]
pub use linux::{AddressWatcher, RouteWatcher};

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::HashMap;
    use std::io;
    use std::net::IpAddr;
    use std::time::Duration;

    use std::os::fd::AsRawFd;

    use netlink_sys::{AsyncSocket, AsyncSocketExt, TokioSocket, protocols::NETLINK_ROUTE};
    use nix::errno::Errno;
    use nix::sys::socket::{MsgFlags, setsockopt, sockopt};
    use tokio::time::{Instant, timeout_at};

    use crate::error::EngineError;
    use crate::routes::addrs::{
        AddressBook, IFADDRMSG_LEN, IFINFOMSG_LEN, RTM_DELADDR, RTM_DELLINK, RTM_GETADDR,
        RTM_NEWADDR, RTM_NEWLINK, decode, parse_addr, parse_link,
    };
    use crate::routes::parse::{
        AF_INET, AF_INET6, AF_UNSPEC, Chunk, NHMSG_LEN, Parsed, RTM_GETNEXTHOP, RTM_GETROUTE,
        RTM_NEWNEXTHOP, RTM_NEWROUTE, RTMSG_LEN, Route, bad, default_routes_via, dump_request,
        parse_nexthop, parse_route, resolve_nexthops, walk,
    };
    use crate::routes::rules::{
        FIB_RULE_HDR_LEN, RTM_GETRULE, RTM_NEWRULE, Rule, Snapshot, parse_rule,
    };

    const RTNLGRP_IPV4_ROUTE: u32 = 7;
    const RTNLGRP_IPV4_RULE: u32 = 8;
    const RTNLGRP_IPV6_ROUTE: u32 = 11;
    const RTNLGRP_IPV6_RULE: u32 = 19;
    /// Nexthop objects (Linux ≥ 5.3; joining fails harmlessly on older kernels).
    const RTNLGRP_NEXTHOP: u32 = 32;

    /// Receive buffer per `recv`: dump datagrams are at most 32 KiB.
    const RECV_BUF: usize = 64 * 1024;
    /// Requested socket receive buffer for notifications (capped by `net.core.rmem_max`).
    const NOTIFY_RCVBUF: usize = 1 << 20;
    /// A dump is retried this often when the kernel flags it as interrupted.
    const DUMP_ATTEMPTS: usize = 5;
    /// No dump should take this long; a hung one fails loudly.
    const DUMP_TIMEOUT: Duration = Duration::from_secs(30);

    fn io_err(what: &str, e: io::Error) -> EngineError {
        EngineError::Routes(format!("{what}: {e}"))
    }

    /// A non-blocking rtnetlink socket on the tokio reactor (`netlink-sys`'s `TokioSocket`).
    struct NlSocket {
        sock: TokioSocket,
        /// The last datagram received.
        buf: Vec<u8>,
    }

    impl std::fmt::Debug for NlSocket {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("NlSocket").field("fd", &self.sock.as_raw_fd()).finish()
        }
    }

    /// What one `recv` brought.
    enum Recv {
        /// A datagram, now in the buffer.
        Data,
        /// The kernel dropped messages for lack of buffer space (`ENOBUFS`).
        Overflow,
    }

    impl NlSocket {
        fn open(groups: &[u32], optional_groups: &[u32]) -> Result<Self, EngineError> {
            // Registering with the reactor outside a runtime would panic.
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(bad("RouteWatcher::open must run inside the tokio runtime"));
            }
            let mut sock = TokioSocket::new(NETLINK_ROUTE)
                .map_err(|e| io_err("open NETLINK_ROUTE socket", e))?;
            sock.socket_mut().bind_auto().map_err(|e| io_err("bind netlink socket", e))?;
            for g in groups {
                sock.socket_ref()
                    .add_membership(*g)
                    .map_err(|e| io_err(&format!("join rtnetlink group {g}"), e))?;
            }
            for g in optional_groups {
                if let Err(e) = sock.socket_ref().add_membership(*g) {
                    tracing::debug!(group = g, error = %e, "optional rtnetlink group unavailable");
                }
            }
            if !groups.is_empty() {
                // Best effort: more room means fewer overflows (which are handled anyway).
                let _ = setsockopt(sock.socket_ref(), sockopt::RcvBuf, &NOTIFY_RCVBUF);
            }
            Ok(Self { sock, buf: Vec::new() })
        }

        /// Wait for and receive one whole datagram (sized by a peek, never truncated).
        async fn recv(&mut self) -> Result<Recv, EngineError> {
            loop {
                match self.sock.recv_from_full().await {
                    Ok((datagram, _from)) => {
                        self.buf = datagram;
                        return Ok(Recv::Data);
                    }
                    Err(e) => match classify(e) {
                        Some(r) => return r,
                        None => continue,
                    },
                }
            }
        }

        /// Read everything already queued without waiting; true if anything was there.
        fn drain(&mut self) -> Result<bool, EngineError> {
            let mut any = false;
            let mut scratch = Vec::with_capacity(RECV_BUF);
            loop {
                scratch.clear();
                let flags = (MsgFlags::MSG_TRUNC | MsgFlags::MSG_DONTWAIT).bits();
                match self.sock.socket_ref().recv(&mut scratch, flags) {
                    Ok(_) => any = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(any),
                    Err(e) => match classify(e) {
                        Some(Ok(_)) => any = true,
                        Some(Err(e)) => return Err(e),
                        None => {}
                    },
                }
            }
        }

        async fn send(&self, bytes: &[u8]) -> Result<(), EngineError> {
            loop {
                match self.sock.send(bytes).await {
                    Ok(n) if n == bytes.len() => return Ok(()),
                    Ok(n) => return Err(bad(format!("short netlink send: {n} bytes"))),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("netlink send", e)),
                }
            }
        }
    }

    /// `ENOBUFS` is an overflow, `EINTR` a retry (`None`), anything else an error.
    fn classify(e: io::Error) -> Option<Result<Recv, EngineError>> {
        if e.raw_os_error() == Some(Errno::ENOBUFS as i32) {
            Some(Ok(Recv::Overflow))
        } else if e.kind() == io::ErrorKind::Interrupted {
            None
        } else {
            Some(Err(io_err("netlink recv", e)))
        }
    }

    /// The dump socket and its sequence numbers.
    #[derive(Debug)]
    struct Dumper {
        sock: NlSocket,
        seq: u32,
    }

    impl Dumper {
        /// One request/answer conversation: `each` sees every message of the answer.
        /// Returns whether the kernel flagged the dump as interrupted.
        async fn conversation(
            &mut self,
            msg_type: u16,
            family: u8,
            header_len: usize,
            mut each: impl FnMut(u16, &[u8]) -> Result<(), EngineError>,
        ) -> Result<bool, EngineError> {
            // Leftovers of an abandoned dump (a caller that timed out) must go first: the
            // kernel refuses a new dump while one is running on the socket.
            self.sock.drain()?;
            self.seq = self.seq.wrapping_add(1).max(1);
            let seq = self.seq;
            self.sock.send(&dump_request(msg_type, seq, family, header_len)).await?;
            let mut interrupted = false;
            loop {
                match self.sock.recv().await? {
                    Recv::Data => {}
                    Recv::Overflow => return Err(bad("dump answer overflowed the socket")),
                }
                let Chunk { done, interrupted: i } =
                    walk(&self.sock.buf, Some(seq), |m| each(m.msg_type, m.payload))?;
                interrupted |= i;
                if done {
                    return Ok(interrupted);
                }
            }
        }

        /// Routes of both families passing `keep`, nexthop objects resolved.
        async fn routes(&mut self, keep: fn(&Route) -> bool) -> Result<Vec<Route>, EngineError> {
            for _ in 0..DUMP_ATTEMPTS {
                let mut parsed: Vec<Parsed> = Vec::new();
                let mut interrupted = false;
                for family in [AF_INET, AF_INET6] {
                    interrupted |= self
                        .conversation(RTM_GETROUTE, family, RTMSG_LEN, |t, payload| {
                            if t == RTM_NEWROUTE
                                && let Some(p) = parse_route(payload)?
                                && keep(&p.route)
                            {
                                parsed.push(p);
                            }
                            Ok(())
                        })
                        .await?;
                }
                let needs_nexthops =
                    parsed.iter().any(|p| p.nh_id.is_some() && p.route.gateways.is_empty());
                let mut nexthops = HashMap::new();
                if needs_nexthops {
                    interrupted |= self
                        .conversation(RTM_GETNEXTHOP, AF_UNSPEC, NHMSG_LEN, |t, payload| {
                            if t == RTM_NEWNEXTHOP
                                && let Some((id, nh)) = parse_nexthop(payload)?
                            {
                                nexthops.insert(id, nh);
                            }
                            Ok(())
                        })
                        .await?;
                }
                if interrupted {
                    tracing::debug!("route dump interrupted by a change; dumping again");
                    continue;
                }
                return resolve_nexthops(parsed, &nexthops);
            }
            Err(bad(format!("routes kept changing during {DUMP_ATTEMPTS} dumps")))
        }

        /// Every rule of both families (`RTM_GETRULE`), in the kernel's order.
        async fn rules(&mut self) -> Result<Vec<Rule>, EngineError> {
            for _ in 0..DUMP_ATTEMPTS {
                let mut rules = Vec::new();
                let mut interrupted = false;
                for family in [AF_INET, AF_INET6] {
                    interrupted |= self
                        .conversation(RTM_GETRULE, family, FIB_RULE_HDR_LEN, |t, payload| {
                            if t == RTM_NEWRULE
                                && let Some(r) = parse_rule(payload)?
                            {
                                rules.push(r);
                            }
                            Ok(())
                        })
                        .await?;
                }
                if !interrupted {
                    return Ok(rules);
                }
                tracing::debug!("rule dump interrupted by a change; dumping again");
            }
            Err(bad(format!("rules kept changing during {DUMP_ATTEMPTS} dumps")))
        }
    }

    /// What the routing decision needs of the routes: default routes of every table, and the
    /// firewall's own addresses (host routes of the `local` table).
    fn for_snapshot(r: &Route) -> bool {
        r.is_default() || r.table == crate::routes::rules::RT_TABLE_LOCAL
    }

    /// Watches the kernel's routes and rules (read-only).
    #[derive(Debug)]
    pub struct RouteWatcher {
        notify: NlSocket,
        dumper: tokio::sync::Mutex<Dumper>,
    }

    fn keep_all(_: &Route) -> bool {
        true
    }

    const RTNLGRP_LINK: u32 = 1;
    const RTNLGRP_IPV4_IFADDR: u32 = 5;
    const RTNLGRP_IPV6_IFADDR: u32 = 9;
    const RTM_GETLINK: u16 = 18;

    /// The firewall's interface addresses over rtnetlink, read-only (`nat_addr =
    /// "interface"`): a dump of links and addresses (`RTM_GETLINK`, `RTM_GETADDR`), then the
    /// link and address notifications, decoded by `addrs.rs` into an [`AddressBook`].
    /// Opened before the engine confines itself, like the route watcher.
    #[derive(Debug)]
    pub struct AddressWatcher {
        notify: NlSocket,
        dumper: Dumper,
        book: AddressBook,
    }

    impl AddressWatcher {
        /// Open the sockets (notifications joined first, so no change falls between the
        /// dump and them) and read every link and address now (at `now`, the caller's ms).
        pub async fn open(now: u64) -> Result<AddressWatcher, EngineError> {
            let notify =
                NlSocket::open(&[RTNLGRP_LINK, RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR], &[])?;
            let dump = NlSocket::open(&[], &[])?;
            let mut w = AddressWatcher {
                notify,
                dumper: Dumper { sock: dump, seq: 0 },
                book: AddressBook::default(),
            };
            w.reload(now).await?;
            Ok(w)
        }

        /// Everything again (after an overflow lost notifications): links, then addresses.
        async fn reload(&mut self, now: u64) -> Result<(), EngineError> {
            let deadline = Instant::now() + DUMP_TIMEOUT;
            let mut msgs = Vec::new();
            let dumper = &mut self.dumper;
            let both = async {
                for _ in 0..DUMP_ATTEMPTS {
                    msgs.clear();
                    let mut interrupted = false;
                    for (t, header) in [(RTM_GETLINK, IFINFOMSG_LEN), (RTM_GETADDR, IFADDRMSG_LEN)]
                    {
                        interrupted |= dumper
                            .conversation(t, AF_UNSPEC, header, |t, payload| {
                                let m = match t {
                                    RTM_NEWLINK | RTM_DELLINK => parse_link(t, payload)?,
                                    RTM_NEWADDR | RTM_DELADDR => parse_addr(t, payload)?,
                                    _ => None,
                                };
                                msgs.extend(m);
                                Ok(())
                            })
                            .await?;
                    }
                    if !interrupted {
                        return Ok(());
                    }
                }
                Err(bad(format!("addresses kept changing during {DUMP_ATTEMPTS} dumps")))
            };
            match timeout_at(deadline, both).await {
                Ok(r) => r?,
                Err(_) => return Err(bad(format!("address dump took more than {DUMP_TIMEOUT:?}"))),
            }
            let mut book = AddressBook::default();
            for m in msgs {
                book.apply(m, now);
            }
            book.keep_departures_of(&self.book, now);
            self.book = book;
            Ok(())
        }

        /// Wait for the next link or address change and apply it (every notification
        /// already queued too); after an overflow, dump everything again. `now` gives the
        /// caller's clock when the change is applied. Cancel-safe.
        pub async fn changed(&mut self, now: impl Fn() -> u64) -> Result<(), EngineError> {
            match self.notify.recv().await? {
                Recv::Overflow => return self.reload(now()).await,
                Recv::Data => {}
            }
            let (msgs, _) = decode(&self.notify.buf, None)?;
            let at = now();
            for m in msgs {
                self.book.apply(m, at);
            }
            self.book.expire(at);
            Ok(())
        }

        /// The addresses as last read.
        pub fn book(&self) -> &AddressBook {
            &self.book
        }
    }

    impl RouteWatcher {
        /// Open the two rtnetlink sockets: one subscribed to IPv4/IPv6 route and rule
        /// changes (and nexthop objects where the kernel has them), one for dumps. Needs no
        /// privilege. Must be called inside the tokio runtime (with I/O enabled), before the
        /// engine confines itself.
        pub fn open() -> Result<RouteWatcher, EngineError> {
            let notify = NlSocket::open(
                &[RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE, RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE],
                &[RTNLGRP_NEXTHOP],
            )?;
            let dump = NlSocket::open(&[], &[])?;
            Ok(RouteWatcher {
                notify,
                dumper: tokio::sync::Mutex::new(Dumper { sock: dump, seq: 0 }),
            })
        }

        /// Dump all routes of all tables (`RTM_GETROUTE` with `NLM_F_DUMP`, IPv4 then IPv6),
        /// read-only. Dumps the kernel flags as interrupted by a change are repeated. Calls
        /// are serialised; a call abandoned half-way leaves nothing behind for the next.
        pub async fn dump(&self) -> Result<Vec<Route>, EngineError> {
            self.dump_filtered(keep_all).await
        }

        /// Like [`RouteWatcher::dump`], but keeps only default routes (no destination, or
        /// /0): on a router with a large table this avoids building a [`Route`] for every
        /// other entry. Enough for [`default_routes_via`].
        pub async fn dump_defaults(&self) -> Result<Vec<Route>, EngineError> {
            self.dump_filtered(Route::is_default).await
        }

        /// Rules and routes at one moment (rules first, then the routes; a change in between
        /// wakes [`RouteWatcher::changed`], so the next look sees it).
        pub async fn snapshot(&self) -> Result<Snapshot, EngineError> {
            let deadline = Instant::now() + DUMP_TIMEOUT;
            let mut dumper = self.dumper.lock().await;
            let both = async {
                let rules = dumper.rules().await?;
                let routes = dumper.routes(for_snapshot).await?;
                Ok::<_, EngineError>(Snapshot::new(rules, routes))
            };
            match timeout_at(deadline, both).await {
                Ok(r) => r,
                Err(_) => Err(bad(format!("rule and route dump took more than {DUMP_TIMEOUT:?}"))),
            }
        }

        async fn dump_filtered(&self, keep: fn(&Route) -> bool) -> Result<Vec<Route>, EngineError> {
            let deadline = Instant::now() + DUMP_TIMEOUT;
            let mut dumper = self.dumper.lock().await;
            match timeout_at(deadline, dumper.routes(keep)).await {
                Ok(r) => r,
                Err(_) => Err(bad(format!("route dump took more than {DUMP_TIMEOUT:?}"))),
            }
        }

        /// Resolve when a route, rule or nexthop changed since the last call (changes queue
        /// up in the socket between calls), or when the socket overflowed (`ENOBUFS`: some
        /// change was lost, so "something changed, re-dump"). Every notification already
        /// queued is consumed, so a burst of changes resolves one call. Cancel-safe.
        pub async fn changed(&mut self) -> Result<(), EngineError> {
            match self.notify.recv().await? {
                Recv::Data | Recv::Overflow => {}
            }
            self.notify.drain()?;
            Ok(())
        }

        /// Wait until no default route (any table) has `gw` among its next hops: `Ok(true)`
        /// once confirmed, `Ok(false)` if `timeout` passed first. Dumps once at the start and
        /// again after every change.
        pub async fn wait_until_off(
            &mut self,
            gw: IpAddr,
            timeout: Duration,
        ) -> Result<bool, EngineError> {
            let deadline = Instant::now() + timeout;
            // Changes before this point are covered by the first dump.
            self.notify.drain()?;
            loop {
                let defaults = match timeout_at(deadline, self.dump_defaults()).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(false),
                };
                let via = default_routes_via(&defaults, gw);
                if via.is_empty() {
                    return Ok(true);
                }
                tracing::debug!(gateway = %gw, routes = via.len(), "default routes still use the gateway");
                match timeout_at(deadline, self.changed()).await {
                    Ok(r) => r?,
                    Err(_) => return Ok(false),
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod other {
    use std::net::IpAddr;
    use std::time::Duration;

    use crate::error::EngineError;
    use crate::routes::parse::Route;

    /// Route watching needs Linux rtnetlink; [`RouteWatcher::open`] fails elsewhere.
    #[derive(Debug)]
    pub struct RouteWatcher {
        never: std::convert::Infallible,
    }

    impl RouteWatcher {
        pub fn open() -> Result<RouteWatcher, EngineError> {
            Err(EngineError::Routes(
                "route watching needs Linux rtnetlink; use an explicit \"routed\" signal or a \
                 settle delay"
                    .into(),
            ))
        }

        pub async fn dump(&self) -> Result<Vec<Route>, EngineError> {
            match self.never {}
        }

        pub async fn dump_defaults(&self) -> Result<Vec<Route>, EngineError> {
            match self.never {}
        }

        pub async fn snapshot(&self) -> Result<crate::routes::Snapshot, EngineError> {
            match self.never {}
        }

        pub async fn changed(&mut self) -> Result<(), EngineError> {
            match self.never {}
        }

        pub async fn wait_until_off(
            &mut self,
            _gw: IpAddr,
            _timeout: Duration,
        ) -> Result<bool, EngineError> {
            match self.never {}
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub use other::RouteWatcher;

/// Against a real kernel, inside private namespaces (root) or on this host (read-only).
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#[cfg(target_os = "linux")]
mod live {
    use std::net::IpAddr;

    use statecull_proto::Prefix;

    use crate::routes::testkit::{Netns, ip_in, skip};
    use crate::routes::{Route, RouteWatcher, default_routes_via};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    use std::time::{Duration, Instant};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// Everything against a real kernel, inside a private namespace.
    #[test]
    fn address_watcher_follows_a_renumbered_wan_and_a_pppoe_style_link() {
        use crate::routes::addrs::RETAIN_MS;
        let test = "routes::address_watcher_follows_a_renumbered_wan_and_a_pppoe_style_link";
        if !is_root() {
            skip(test, "needs root");
            return;
        }
        let Some(ns) = Netns::create(test, "addr") else { return };
        // veth pairs: this kernel has no dummy driver.
        ns.ip(&["link", "add", "wan0", "type", "veth", "peer", "name", "isp0"]);
        ns.ip(&["link", "set", "wan0", "up"]);
        // As systemd's sysctl defaults: deleting the primary promotes the new address
        // (without it the kernel deletes the secondaries of the subnet too).
        ns.exec("sysctl", &["-qw", "net.ipv4.conf.wan0.promote_secondaries=1"]);
        ns.ip(&["addr", "add", "198.51.100.20/24", "dev", "wan0"]);
        ns.ip(&["-6", "addr", "add", "2001:db8:1::20/64", "dev", "wan0", "nodad"]);
        ns.ip(&["link", "add", "wan1", "type", "veth", "peer", "name", "isp1"]);
        ns.ip(&["link", "set", "wan1", "up"]);
        // Point-to-point, as PPPoE: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        ns.ip(&["addr", "add", "203.0.113.77", "peer", "203.0.113.1", "dev", "wan1"]);
        let name = ns.name.clone();
        ns.run_in(move |rt| {
            rt.block_on(async move {
                let clock = Instant::now();
                let now = move || u64::try_from(clock.elapsed().as_millis()).unwrap();
                let mut w = super::AddressWatcher::open(now()).await.unwrap();
                let b = w.book();
                assert_eq!(b.current("wan0"), [ip("198.51.100.20"), ip("2001:db8:1::20")]);
                assert_eq!(b.current("wan1"), [ip("203.0.113.77")]);
                assert!(b.current("lo").is_empty(), "host scope is never a NAT address");
                // DHCP renumbers wan0: the new address comes, the old one goes.
                ip_in(&name, &["addr", "add", "198.51.100.21/24", "dev", "wan0"]);
                ip_in(&name, &["addr", "del", "198.51.100.20/24", "dev", "wan0"]);
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while w.book().current("wan0").contains(&ip("198.51.100.20")) {
                    tokio::time::timeout_at(deadline, w.changed(now)).await.unwrap().unwrap();
                }
                let at = now();
                assert_eq!(w.book().current("wan0"), [ip("2001:db8:1::20"), ip("198.51.100.21")]);
                assert_eq!(
                    w.book().selectable("wan0", at),
                    [ip("2001:db8:1::20"), ip("198.51.100.21"), ip("198.51.100.20")],
                    "the old address is still selectable"
                );
                assert!(
                    !w.book().selectable("wan0", at + RETAIN_MS).contains(&ip("198.51.100.20"))
                );
                // The link goes (PPPoE down): its address is kept as departed.
                ip_in(&name, &["link", "del", "wan1"]);
                while !w.book().current("wan1").is_empty() {
                    tokio::time::timeout_at(deadline, w.changed(now)).await.unwrap().unwrap();
                }
                assert_eq!(w.book().selectable("wan1", now()), [ip("203.0.113.77")]);
            });
        });
    }

    #[test]
    fn watcher_in_a_namespace() {
        let test = "routes::watcher_in_a_namespace";
        if !is_root() {
            skip(test, "needs root");
            return;
        }
        let Some(ns) = Netns::create(test, "rt") else { return };
        ns.ip(&["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"]);
        ns.ip(&["link", "set", "veth0", "up"]);
        ns.ip(&["link", "set", "veth1", "up"]);
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "veth0"]);
        ns.ip(&["-6", "addr", "add", "2001:db8::1/64", "dev", "veth0", "nodad"]);
        ns.ip(&["route", "add", "default", "via", "198.51.100.254"]);
        ns.ip(&["route", "add", "default", "via", "198.51.100.254", "table", "100"]);
        ns.ip(&["-6", "route", "add", "default", "via", "2001:db8::fe"]);
        let name = ns.name.clone();
        let ip_later = move |delay_ms: u64, args: &'static [&'static str]| {
            let name = name.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(delay_ms));
                ip_in(&name, args);
            })
        };

        let ns_ref = &ns;
        ns.run_in(move |rt| {
            rt.block_on(async move {
                let mut w = RouteWatcher::open().unwrap();
                let routes = w.dump().await.unwrap();
                let gw = ip("198.51.100.254");
                let via = default_routes_via(&routes, gw);
                assert_eq!(via.len(), 2, "{routes:#?}");
                let tables: Vec<u32> = via.iter().map(|r| r.table).collect();
                assert!(tables.contains(&254) && tables.contains(&100), "{tables:?}");
                assert_eq!(default_routes_via(&routes, ip("2001:db8::fe")).len(), 1);
                let defaults = w.dump_defaults().await.unwrap();
                assert_eq!(defaults.len(), 3, "{defaults:#?}");
                assert!(defaults.iter().all(Route::is_default));
                assert!(
                    routes
                        .iter()
                        .any(|r| r.dst == Some(Prefix { addr: ip("198.51.100.0"), len: 24 })
                            && r.gateways.is_empty())
                );

                // Routing stays on the gateway: timeout, Ok(false).
                let started = Instant::now();
                assert!(!w.wait_until_off(gw, Duration::from_millis(300)).await.unwrap());
                assert!(started.elapsed() >= Duration::from_millis(300));

                // Both tables move away while we wait: Ok(true), soon after the change.
                let t1 = ip_later(200, &["route", "replace", "default", "via", "198.51.100.253"]);
                let t2 = ip_later(
                    400,
                    &["route", "replace", "default", "via", "198.51.100.253", "table", "100"],
                );
                let started = Instant::now();
                assert!(w.wait_until_off(gw, Duration::from_secs(10)).await.unwrap());
                let took = started.elapsed();
                assert!(took >= Duration::from_millis(350), "{took:?}");
                assert!(took < Duration::from_secs(3), "{took:?}");
                t1.join().unwrap();
                t2.join().unwrap();
                // Already off: confirmed at once.
                assert!(w.wait_until_off(gw, Duration::from_secs(1)).await.unwrap());

                // Multipath: each next hop counts.
                ns_ref.ip(&[
                    "route",
                    "replace",
                    "default",
                    "nexthop",
                    "via",
                    "198.51.100.252",
                    "nexthop",
                    "via",
                    "198.51.100.251",
                ]);
                let routes = w.dump().await.unwrap();
                let mp = default_routes_via(&routes, ip("198.51.100.251"));
                assert_eq!(mp.len(), 1, "{routes:#?}");
                assert!(mp[0].gateways.contains(&ip("198.51.100.252")));

                // A rule change is a change.
                w.changed().await.unwrap(); // the multipath replace above
                let t = ip_later(100, &["rule", "add", "fwmark", "0x10", "lookup", "100"]);
                tokio::time::timeout(Duration::from_secs(5), w.changed())
                    .await
                    .expect("rule change notified")
                    .unwrap();
                t.join().unwrap();

                // Nexthop objects without compat attributes are resolved.
                ns_ref.exec("sysctl", &["-qw", "net.ipv4.nexthop_compat_mode=0"]);
                ns_ref.ip(&["nexthop", "add", "id", "7", "via", "198.51.100.250", "dev", "veth0"]);
                ns_ref.ip(&["route", "replace", "default", "nhid", "7"]);
                let routes = w.dump().await.unwrap();
                assert_eq!(
                    default_routes_via(&routes, ip("198.51.100.250")).len(),
                    1,
                    "{routes:#?}"
                );
                let t = ip_later(200, &["route", "replace", "default", "via", "198.51.100.253"]);
                assert!(
                    w.wait_until_off(ip("198.51.100.250"), Duration::from_secs(10)).await.unwrap()
                );
                t.join().unwrap();

                // IPv6 moves too.
                let t = ip_later(100, &["-6", "route", "del", "default", "via", "2001:db8::fe"]);
                assert!(
                    w.wait_until_off(ip("2001:db8::fe"), Duration::from_secs(10)).await.unwrap()
                );
                t.join().unwrap();
            })
        });
    }

    /// mwan3's layout on a real kernel: its rules (mask 0x3f00) and per-interface tables as
    /// `mwan3_create_iface_rules` and `mwan3_set_general_rules` make them, read back by the
    /// watcher and decided on; then mwan3's `ifdown` (rules deleted, table flushed) and
    /// netifd's route removal, seen as a change and decided "moved".
    #[test]
    fn mwan3_layout_in_a_namespace() {
        use crate::routes::{Outcome, RuleAction};
        use statecull_proto::{AddressFamily, MarkMatch};
        let test = "routes::mwan3_layout_in_a_namespace";
        if !is_root() {
            skip(test, "needs root");
            return;
        }
        let Some(ns) = Netns::create(test, "rt") else { return };
        for (dev, peer, addr) in
            [("eth1", "p1", "198.51.100.10/24"), ("eth2", "p2", "203.0.113.10/24")]
        {
            ns.ip(&["link", "add", dev, "type", "veth", "peer", "name", peer]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&["link", "set", peer, "up"]);
            ns.ip(&["addr", "add", addr, "dev", dev]);
        }
        for (id, dev, gw, metric) in
            [("1", "eth1", "198.51.100.254", "10"), ("2", "eth2", "203.0.113.254", "20")]
        {
            ns.ip(&["route", "add", "default", "via", gw, "dev", dev, "metric", metric]);
            ns.ip(&["route", "add", "table", id, "default", "via", gw, "dev", dev]);
            let n: u32 = id.parse().unwrap();
            let mark = format!("{:#x}/0x3f00", n << 8);
            ns.ip(&["rule", "add", "pref", &(1000 + n).to_string(), "iif", dev, "lookup", id]);
            ns.ip(&["rule", "add", "pref", &(2000 + n).to_string(), "fwmark", &mark, "lookup", id]);
            ns.ip(&[
                "rule",
                "add",
                "pref",
                &(3000 + n).to_string(),
                "fwmark",
                &mark,
                "unreachable",
            ]);
        }
        ns.ip(&["rule", "add", "pref", "2061", "fwmark", "0x3d00/0x3f00", "blackhole"]);
        ns.ip(&["rule", "add", "pref", "2062", "fwmark", "0x3e00/0x3f00", "unreachable"]);
        let (a, b) = (ip("198.51.100.254"), ip("203.0.113.254"));
        let fibre = Some(MarkMatch { value: 0x100, mask: 0x3f00 });
        let wans = vec!["eth1".to_string(), "eth2".to_string()];
        let ns_ref = &ns;
        ns.run_in(move |rt| {
            rt.block_on(async move {
                let mut w = RouteWatcher::open().unwrap();
                let s = w.snapshot().await.unwrap();
                let r2001 = s.rules().iter().find(|r| r.priority == 2001).expect("rule 2001");
                assert_eq!(r2001.fwmark, MarkMatch { value: 0x100, mask: 0x3f00 });
                assert_eq!(r2001.action, RuleAction::Lookup(1));
                assert_eq!(
                    s.rules().iter().find(|r| r.priority == 1001).unwrap().iif.as_deref(),
                    Some("eth1")
                );
                let flow = s.flow_for(AddressFamily::Ipv4, fibre, wans.clone());
                assert_eq!(flow.mark, MarkMatch { value: 0x100, mask: 0x3f00 });
                assert_eq!(
                    s.outcomes(&flow),
                    vec![Outcome::Via { table: 1, gateways: vec![a] }],
                    "{:#?}",
                    s.rules()
                );
                let cable = s.flow_for(
                    AddressFamily::Ipv4,
                    Some(MarkMatch { value: 0x200, mask: 0x3f00 }),
                    wans.clone(),
                );
                assert!(s.uses(&cable, b) && s.moved_off(&cable, a));
                // The table emptied first: rule 3001 makes fibre's mark unreachable.
                w.changed().await.ok();
                ns_ref.ip(&["route", "flush", "table", "1"]);
                tokio::time::timeout(Duration::from_secs(5), w.changed())
                    .await
                    .expect("route change notified")
                    .unwrap();
                let s = w.snapshot().await.unwrap();
                let flow = s.flow_for(AddressFamily::Ipv4, fibre, wans.clone());
                assert_eq!(s.outcomes(&flow), vec![Outcome::Dropped]);
                // ifdown: rules gone, netifd's main route gone: moved to cable by main.
                for pref in ["1001", "2001", "3001"] {
                    ns_ref.ip(&["rule", "del", "pref", pref]);
                }
                ns_ref.ip(&["route", "del", "default", "via", "198.51.100.254"]);
                let s = w.snapshot().await.unwrap();
                let flow = s.flow_for(AddressFamily::Ipv4, fibre, wans.clone());
                assert_eq!(s.outcomes(&flow), vec![Outcome::Via { table: 254, gateways: vec![b] }]);
                assert!(s.moved_off(&flow, a));
            })
        });
    }

    /// Reading this host's own routes needs no privilege and changes nothing.
    #[tokio::test]
    async fn host_dump_is_read_only_and_unprivileged() {
        let w = RouteWatcher::open().unwrap();
        let all = w.dump().await.unwrap();
        let defaults = w.dump_defaults().await.unwrap();
        assert!(defaults.iter().all(Route::is_default));
        assert_eq!(defaults.len(), all.iter().filter(|r| r.is_default()).count());
    }

    #[test]
    fn open_outside_a_runtime_is_an_error_not_a_panic() {
        assert!(RouteWatcher::open().is_err());
    }
}
