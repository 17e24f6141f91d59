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

mod parse;
mod rules;
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod testkit;
mod watch;

pub use parse::{Route, RouteKind, default_routes_via, fuzzing, parse_routes};
pub use rules::{Flow, Outcome, Rule, RuleAction, Snapshot};
pub use watch::RouteWatcher;
