//! Read-only route watching over rtnetlink (Linux).
//!
//! Before the executor kills a dead gateway's states it must know that routing has moved off
//! that gateway, or clients' retries re-create the states on the dead link. This module dumps
//! the kernel's rules and routes (all tables, both families) and listens for their changes,
//! so the executor can answer "no way the kernel may route this gateway's new connections
//! leads to it any more" ([`Snapshot::moved_off`], pure, `rules.rs`: rule priority order,
//! fwmark/mask, `lookup`, `goto`, `nop`, dropping rules and routes, `suppress_prefixlength`,
//! multipath, the lowest metric wins).
//!
//! * Parsing is pure (`parse.rs`: [`parse_routes`], [`default_routes_via`], the dump decoding
//!   behind the watcher) and reuses the framing of `statecull-netlink`; only `rtmsg`,
//!   `nhmsg` and their attributes are decoded here. It is tested (and fuzzed) on bytes.
//! * The watcher (`watch.rs`, [`RouteWatcher`]) owns the sockets (non-blocking, on tokio's
//!   reactor, opened before the engine confines itself) and the dump conversations.
//! * Next hops: a route's next hops come from `RTA_GATEWAY`, `RTA_VIA` and every entry of
//!   `RTA_MULTIPATH`. Routes that use nexthop objects (`RTA_NH_ID`, Linux ≥ 5.3) carry those
//!   attributes too while `net.ipv4.nexthop_compat_mode` is 1 (the default); with it set to
//!   0 they do not, and [`RouteWatcher::dump`] resolves the ids with a nexthop dump
//!   (`RTM_GETNEXTHOP`). An id it cannot resolve is an error, never "no gateway".
//! * Link-local IPv6 next hops are compared without their interface: `fe80::1` matches on
//!   every interface, which can only make [`RouteWatcher::wait_until_off`] wait longer.
//! * Nexthops flagged dead or linkdown still count as next hops (the routing manager has
//!   not withdrawn them).
//!
//! On other systems [`RouteWatcher::open`] fails: there the executor relies on an explicit
//! "routed" signal or a settle delay.
//!
//! FreeBSD (`confirm = "route-socket"`): the routing socket ([`RouteSocket`], `socket.rs`)
//! asks `RTM_GET` for the default route through each gateway and listens for default-route
//! changes; its messages are built and decoded by the pure `rtsock.rs`. [`Routes`] gives the
//! executor one face for both: "moved" is the rule and table walk on Linux, the default
//! route via each gateway on FreeBSD (which has no ip rules; one FIB per engine).

mod addr_socket;
pub mod addrs;
mod parse;
pub mod rtsock;
mod rules;
mod socket;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod testkit;
mod watch;

use statecull_policy::model::Gateway;

#[cfg(target_os = "freebsd")]
pub use addr_socket::AddressSocket;
pub use parse::{Route, RouteKind, default_routes_via, fuzzing, parse_routes};
pub use rules::{Flow, Outcome, Rule, RuleAction, Snapshot};
pub use socket::RouteSocket;
#[cfg(target_os = "linux")]
pub use watch::AddressWatcher;
pub use watch::RouteWatcher;

/// The interfaces' addresses for `nat_addr = "interface"`: rtnetlink on Linux, the routing
/// socket on FreeBSD (type-checked only), one face for the daemon.
#[derive(Debug)]
pub enum Addresses {
    #[cfg(target_os = "linux")]
    Netlink(AddressWatcher),
    #[cfg(target_os = "freebsd")]
    Socket(AddressSocket),
}

impl Addresses {
    /// Open the watcher of this system and read every address now (`now`: the caller's
    /// ms). Inside the runtime, before confinement.
    pub async fn open(now: u64) -> Result<Addresses, EngineError> {
        #[cfg(target_os = "linux")]
        return Ok(Addresses::Netlink(AddressWatcher::open(now).await?));
        #[cfg(target_os = "freebsd")]
        return Ok(Addresses::Socket(AddressSocket::open(now)?));
        #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
        {
            let _ = now;
            Err(EngineError::Routes(
                "nat_addr = \"interface\" needs Linux rtnetlink or the FreeBSD routing socket"
                    .into(),
            ))
        }
    }

    /// Wait for the next change and apply it (see each watcher).
    pub async fn changed(&mut self, now: impl Fn() -> u64) -> Result<(), EngineError> {
        match self {
            #[cfg(target_os = "linux")]
            Addresses::Netlink(w) => w.changed(now).await,
            #[cfg(target_os = "freebsd")]
            Addresses::Socket(s) => s.changed(now).await,
        }
    }

    /// The addresses as last read.
    pub fn book(&self) -> &addrs::AddressBook {
        match self {
            #[cfg(target_os = "linux")]
            Addresses::Netlink(w) => w.book(),
            #[cfg(target_os = "freebsd")]
            Addresses::Socket(s) => s.book(),
        }
    }
}

use crate::error::EngineError;

/// Where the executor looks for routing to move.
#[derive(Debug)]
pub enum Routes {
    /// Linux rtnetlink: every ip rule and routing table ([`Snapshot`]).
    Netlink(RouteWatcher),
    /// FreeBSD routing socket: the default routes of the engine's FIB (no ip rules there).
    Socket(RouteSocket),
}

impl Routes {
    /// Has routing moved? No way routing may send a gateway of `down`'s new connections
    /// leads to it any more, and some way leads to every gateway of `up` again. `wans`: the
    /// gateways' interfaces (new forwarded connections did not arrive on them).
    pub async fn moved(
        &mut self,
        down: &[&Gateway],
        up: &[&Gateway],
        wans: &[String],
    ) -> Result<bool, EngineError> {
        match self {
            Routes::Netlink(w) => {
                // A snapshot of every rule and table decides, as the kernel would route each
                // gateway's new connections: main table switching, per-WAN tables behind
                // fwmark rules as mwan3 builds them, multipath.
                let snap = w.snapshot().await?;
                let flow = |gw: &Gateway| snap.flow_for(gw.family, gw.states.mark, wans.to_vec());
                Ok(down.iter().all(|gw| snap.moved_off(&flow(gw), gw.address))
                    && up.iter().all(|gw| snap.uses(&flow(gw), gw.address)))
            }
            Routes::Socket(s) => {
                let mut down_answers = Vec::with_capacity(down.len());
                for gw in down {
                    down_answers.push((gw.address, s.get_default(gw.address).await?));
                }
                let mut up_answers = Vec::with_capacity(up.len());
                for gw in up {
                    up_answers.push((gw.address, s.get_default(gw.address).await?));
                }
                rtsock::moved(&down_answers, &up_answers)
                    .map_err(|e| EngineError::Routes(e.to_string()))
            }
        }
    }

    /// Resolve when routes changed since the last call (see [`RouteWatcher::changed`],
    /// [`RouteSocket::changed`]). Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), EngineError> {
        match self {
            Routes::Netlink(w) => w.changed().await,
            Routes::Socket(s) => s.changed().await,
        }
    }
}
