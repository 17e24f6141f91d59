//! `nat_addr = "interface"` (issue 13): plans are made from the interface's addresses as the
//! address watcher last read them, an address that left within five minutes included; the
//! policy in force keeps none listed. Against the in-process fake broker (`common`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::net::IpAddr;
use std::sync::Arc;

use common::{Behaviour, FakeBroker};
use statecull_engine::broker::BrokerLink;
use statecull_engine::routes::addrs::{AddrMsg, AddressBook, RETAIN_MS};
use statecull_engine::state::Shared;

const POLICY: &str = r#"
[engine]
states_refresh = "off"

[[gateway]]
name = "WAN1"
interface = "eth1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
nat_addr = "interface"

[[gateway]]
name = "WAN2"
interface = "eth2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ { gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 } ]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_use_the_interfaces_addresses_now_and_those_that_just_left() {
    let broker = FakeBroker::start(Behaviour::default());
    let policy = statecull_policy::load::parse(POLICY, "t.toml").unwrap();
    let (shared, _d, _m) = Shared::new(policy, BrokerLink::new(broker.path.clone()));
    let shared = Arc::new(shared);
    // Nothing known yet: no NAT address for WAN1 (its states cannot be found yet).
    assert!(shared.planning_policy().gateways[0].states.nat_addr.is_empty());
    assert!(shared.policy().gateways[0].states.nat_from_interface);

    let now = shared.now_ms();
    let mut book = AddressBook::default();
    book.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, now);
    book.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.20") }, now);
    shared.set_addresses(book.clone());
    let p = shared.planning_policy();
    assert_eq!(p.gateways[0].states.nat_addr, [ip("198.51.100.20")]);
    assert_eq!(p.gateways[1].states.nat_addr, [ip("203.0.113.1")], "literal addresses stay");
    assert!(
        shared.policy().gateways[0].states.nat_addr.is_empty(),
        "the policy in force keeps none"
    );

    // Renumbered: the old address is still planned for (states NAT'd to it may live on).
    book.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.21") }, now);
    book.apply(AddrMsg::Removed { ifindex: 3, address: ip("198.51.100.20") }, now);
    shared.set_addresses(book.clone());
    assert_eq!(
        shared.planning_policy().gateways[0].states.nat_addr,
        [ip("198.51.100.21"), ip("198.51.100.20")]
    );
    // The dry run counts both (one selector each), as a kill would take them.
    let reply = statecull_engine::control::states_per_gateway(&shared).await;
    assert_eq!(reply.len(), 2);
    assert!(broker.log().iter().any(|l| l.starts_with("count:3#")), "{:?}", broker.log());
    // Past the retention only the current address is left.
    let (_, usable) = shared.usable_now();
    assert_eq!(usable, [true, true]);
    assert_eq!(
        book.selectable("eth1", now + RETAIN_MS),
        [ip("198.51.100.21")],
        "the book forgets it after five minutes"
    );
}
