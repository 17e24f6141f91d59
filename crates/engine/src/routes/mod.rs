//! Read-only route watching over rtnetlink (Linux).
//!
//! Before the executor kills a dead gateway's states it must know that routing has moved off
//! that gateway, or clients' retries re-create the states on the dead link. This module dumps
//! the kernel's routes (all tables, both families) and listens for route and rule changes, so
//! [`RouteWatcher::wait_until_off`] can answer "no default route uses this next hop any more".
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
//! executor one face for both, with the same meaning of "moved".

mod parse;
pub mod rtsock;
mod socket;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod testkit;
mod watch;

use std::net::IpAddr;

pub use parse::{Route, default_routes_via, fuzzing, parse_routes};
pub use socket::RouteSocket;
pub use watch::RouteWatcher;

use crate::error::EngineError;

/// The kernel's main routing table (Linux).
const RT_TABLE_MAIN: u32 = 254;

/// Where the executor looks for routing to move.
#[derive(Debug)]
pub enum Routes {
    /// Linux rtnetlink: the main table's default routes.
    Netlink(RouteWatcher),
    /// FreeBSD routing socket: the default routes of the engine's FIB.
    Socket(RouteSocket),
}

impl Routes {
    /// Has routing moved? No default route uses a gateway of `down` any more, and every
    /// gateway of `up` is used by one again.
    pub async fn moved(&mut self, down: &[IpAddr], up: &[IpAddr]) -> Result<bool, EngineError> {
        match self {
            Routes::Netlink(w) => {
                // Only the main table: it is what a routing manager (mwan3, keepalived, the
                // lab's stand-in) switches for forwarded traffic, while per-WAN tables
                // (policy routing, the probes' own tables) keep their default route via
                // their gateway for good.
                let routes: Vec<_> = w
                    .dump_defaults()
                    .await?
                    .into_iter()
                    .filter(|r| r.table == RT_TABLE_MAIN)
                    .collect();
                Ok(down.iter().all(|g| default_routes_via(&routes, *g).is_empty())
                    && up.iter().all(|g| !default_routes_via(&routes, *g).is_empty()))
            }
            Routes::Socket(s) => {
                let mut down_answers = Vec::with_capacity(down.len());
                for g in down {
                    down_answers.push((*g, s.get_default(*g).await?));
                }
                let mut up_answers = Vec::with_capacity(up.len());
                for g in up {
                    up_answers.push((*g, s.get_default(*g).await?));
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
