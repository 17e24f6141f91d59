//! The broker and CLI against the pf-model backend: the same verbs as conntrack, with pf's
//! selectors (gateway, interface, label, opposite). No root needed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use statecull_cli::BrokerClient;
use statecull_pf::table_gen::{Kind, ROUTER, Spec, router_table};
use statecull_proto::{KillPath, Prefix, Selector, StateHandle, StateRecord};
use statecull_tests::daemons::model_broker_command;
use statecull_tests::{ChildGuard, TempDir};

const STATES: usize = 20_000;
const SEED: u64 = 1;

/// The broker process, stopped with SIGTERM (SIGKILL after a minute) when dropped.
struct ModelBroker {
    child: ChildGuard,
    socket: PathBuf,
    _dir: TempDir,
}

fn broker(extra: &[&str]) -> ModelBroker {
    let dir = TempDir::new("pfmodel").unwrap();
    let socket = dir.path().join("broker.sock");
    let log = dir.path().join("broker.log");
    let bin = Path::new(env!("CARGO_BIN_EXE_itest-broker"));
    let mut cmd = model_broker_command(bin, STATES, &socket, &log).unwrap();
    cmd.args(["--model-seed", &SEED.to_string()]).args(extra);
    let child = ChildGuard::spawn_serving(&mut cmd, &socket, Duration::from_secs(60), &log)
        .unwrap_or_else(|e| panic!("pf-model broker did not start: {e}"))
        .terminate_on_drop(Duration::from_secs(60));
    ModelBroker { child, socket, _dir: dir }
}

fn client(b: &ModelBroker) -> BrokerClient {
    BrokerClient::connect(&b.socket, "pf-model test").unwrap()
}

fn snapshot(c: &mut BrokerClient, sel: Option<Selector>) -> Vec<StateRecord> {
    let mut all = Vec::new();
    c.snapshot(sel, &mut |b| {
        all.extend(b);
        Ok(())
    })
    .unwrap();
    all
}

fn pf_id(r: &StateRecord) -> u64 {
    match r.handle {
        StateHandle::Pf { id, .. } => id,
        StateHandle::Conntrack { .. } => panic!("not a pf record"),
    }
}

fn gw(w: usize) -> Selector {
    Selector { gateway: Some(ROUTER.gateway[w].0.into()), ..Selector::default() }
}

fn cli(b: &ModelBroker, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(["broker", "--socket"])
        .arg(&b.socket)
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "statecull {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The generated table the broker holds (same spec, same seed: same states).
fn expected() -> statecull_pf::table_gen::Generated {
    router_table(&Spec::new(STATES, SEED)).unwrap()
}

/// Issue 11: a kill of several selectors says what each one killed (twins count with their
/// victim's selector), and the parts sum to the total.
#[test]
fn kill_reports_split_the_kill_per_selector() {
    let b = broker(&[]);
    let mut c = client(&b);
    let before: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    let r = c.kill_matching(vec![gw(0), gw(1)], true).unwrap();
    assert_eq!(r.per_selector.len(), 2, "{r:?}");
    assert!(r.per_selector.iter().all(|n| *n > 0), "{r:?}");
    assert_eq!(r.per_selector.iter().sum::<u64>(), r.killed, "{r:?}");
    let after: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    assert_eq!(before.len() - after.len(), r.killed as usize);
}

#[test]
fn gateway_kill_with_opposite_takes_both_twins_and_only_that_gateway() {
    let g = expected();
    let b = broker(&[]);
    let mut c = client(&b);
    assert!(c.hello().backend.capabilities.match_opposite);
    let before: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    assert_eq!(before.len(), g.model.len());

    let r = c.kill_matching(vec![gw(0)], true).unwrap();
    assert_eq!(r.path, KillPath::KernelFilteredFlush, "one selector: one kernel pass");
    assert_eq!(r.table_passes, 1);
    let after: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    let gone: HashSet<u64> = before.difference(&after).copied().collect();
    assert_eq!(gone.len() as u64, r.killed);
    // Every IPv4 policy-routed WAN1 connection lost both states; WAN2 lost nothing.
    let v4 = |ids: &[u64]| {
        g.model
            .get(ids[0], g.model.hostid())
            .is_some_and(|s| s.wire.af == statecull_pf::types::AF_INET)
    };
    for conn in &g.connections {
        let all_gone = conn.ids.iter().all(|id| gone.contains(id));
        let none_gone = conn.ids.iter().all(|id| !gone.contains(id));
        match conn.kind {
            Kind::PolicyWan1 if v4(&conn.ids) => assert!(all_gone, "{conn:?}"),
            k if k.wan() == Some(1) => assert!(none_gone, "WAN2 untouched: {conn:?}"),
            Kind::DefaultWan1 | Kind::OwnWan1 | Kind::LanToFirewall => {
                assert!(none_gone, "{conn:?}")
            }
            _ => {}
        }
    }
}

#[test]
fn several_gateways_cost_a_pass_each_and_default_route_needs_interface_and_nat() {
    let g = expected();
    let b = broker(&[]);
    let mut c = client(&b);
    // Both families of WAN1's gateway in one request: a handful of selectors run as one
    // kernel-filtered pass each (cheaper than exporting the table; the kernel pairs twins).
    let gw6 = Selector { gateway: Some(ROUTER.gateway[0].1.into()), ..Selector::default() };
    let r = c.kill_matching(vec![gw(0), gw6], true).unwrap();
    assert_eq!(r.path, KillPath::KernelFilteredFlush, "{r:?}");
    assert_eq!(r.table_passes, 2, "one pass per selector");
    assert!(r.exact);
    let left: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    let default_ids: Vec<u64> = g
        .connections
        .iter()
        .filter(|c| c.kind == Kind::DefaultWan1)
        .flat_map(|c| c.ids.clone())
        .collect();
    assert!(!default_ids.is_empty());
    assert!(
        default_ids.iter().all(|id| left.contains(id)),
        "gateway kills never reach rt_addr-0 states"
    );

    // The WAN interface plus its NAT address reaches them (and the twins with --opposite).
    let iface = statecull_proto::IfName(ROUTER.wan_if[0].into());
    let sels = [ROUTER.wan_addr[0].0.into(), ROUTER.wan_addr[0].1.into()]
        .into_iter()
        .map(|a: std::net::IpAddr| Selector {
            interface: Some(iface.clone()),
            nat_addr: Some(a),
            ..Selector::default()
        })
        .collect();
    let r = c.kill_matching(sels, true).unwrap();
    assert_eq!(r.path, KillPath::DumpAndDelete, "the NAT address is matched by the broker");
    assert_eq!(r.table_passes, 2, "the victims' listing, then their twins'");
    let left: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    assert!(default_ids.iter().all(|id| !left.contains(id)));
    let wan2: Vec<u64> = g
        .connections
        .iter()
        .filter(|c| c.kind.wan() == Some(1))
        .flat_map(|c| c.ids.clone())
        .collect();
    assert!(wan2.iter().all(|id| left.contains(id)), "WAN2 untouched");
}

#[test]
fn protected_prefixes_are_spared_on_pf_too() {
    let b = broker(&["--protect", "192.0.2.10/32"]);
    let mut c = client(&b);
    let r = c.kill_matching(vec![gw(0)], true).unwrap();
    assert_eq!(r.path, KillPath::DumpAndDelete, "protection forces the listing path");
    assert!(r.spared > 0, "{r:?}");
    let protected: Prefix = "192.0.2.10/32".parse().unwrap();
    let left = snapshot(&mut c, Some(gw(0)));
    assert!(!left.is_empty());
    assert!(left.iter().all(|s| s.addresses().iter().any(|a| protected.contains(a))));
    // A label kill cannot honour protections (only the kernel knows labels): refused.
    let label =
        Selector { label: Some(statecull_proto::Label("voip".into())), ..Selector::default() };
    let e = c.kill_matching(vec![label], true).unwrap_err();
    assert!(e.to_string().contains("label"), "{e}");
}

#[test]
fn cli_gateway_interface_label_and_opposite_work_on_the_model() {
    let b = broker(&[]);
    let voip = cli(&b, &["kill", "--label", "voip", "--opposite"]);
    assert!(voip["killed"].as_u64().unwrap() > 0);
    assert_eq!(voip["path"], "kernel-filtered-flush");
    let after =
        cli(&b, &["count", "--proto", "udp", "--dport", "5060", "--gateway", "203.0.113.254"]);
    assert_eq!(after["count"], 0, "no VoIP state left on WAN2's gateway");
    let wan1 = cli(&b, &["count", "--interface", "igb1"]);
    assert!(wan1["count"].as_u64().unwrap() > 0);
    let flushed = cli(&b, &["flush", "--interface", "igb1"]);
    assert_eq!(
        flushed["killed"], wan1["count"],
        "clear by interface counts floating states by their original interface"
    );
    let gone = cli(&b, &["count", "--interface", "igb1"]);
    assert_eq!(gone["count"], 0);
    let listed = cli(&b, &["list", "--gateway", "198.51.100.254"]);
    let states = listed["states"].as_array().unwrap();
    assert!(!states.is_empty());
    assert!(states.iter().all(|s| s["gateway"] == "198.51.100.254" && s["direction"] == "in"));
    // Marks are a conntrack idea.
    let out = Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(["broker", "--socket"])
        .arg(&b.socket)
        .args(["kill", "--mark", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no connection mark"));
}

#[test]
fn kill_handles_by_pf_id() {
    let b = broker(&[]);
    let mut c = client(&b);
    let some: Vec<StateHandle> =
        snapshot(&mut c, Some(gw(1))).iter().take(100).map(|r| r.handle).collect();
    let r = c.kill_handles(some.clone(), false).unwrap();
    assert_eq!((r.killed, r.not_found, r.path), (100, 0, KillPath::Handles));
    let r = c.kill_handles(some, false).unwrap();
    assert_eq!((r.killed, r.not_found), (0, 100));
    // A conntrack handle is refused by the pf backend.
    let ct = StateHandle::Conntrack {
        orig: statecull_proto::StateKey {
            proto: 6,
            src: "192.0.2.1".parse().unwrap(),
            dst: "198.18.0.1".parse().unwrap(),
            l4: statecull_proto::L4::Ports { src: 1, dst: 2 },
        },
        id: 1,
        zone: 0,
    };
    assert!(c.kill_handles(vec![ct], false).is_err());
}

/// `KillHandles` with `match_opposite`: the broker pairs each named state's twin (the WAN
/// half of a default-route connection takes its LAN half along), counts a stale handle as
/// not found, and refuses creator 0 (a handle must name its state as listed).
#[test]
fn kill_handles_with_twins_takes_the_lan_half_of_default_route_connections() {
    let b = broker(&[]);
    let mut c = client(&b);
    let g = expected();
    // The WAN-side (OUT, igb1) states of 50 IPv4 default-route connections.
    let conns: Vec<&statecull_pf::table_gen::Connection> = g
        .connections
        .iter()
        .filter(|c| {
            c.kind == Kind::DefaultWan1
                && g.model
                    .get(c.ids[1], g.model.hostid())
                    .is_some_and(|s| s.wire.af == statecull_pf::types::AF_INET)
        })
        .take(50)
        .collect();
    assert_eq!(conns.len(), 50);
    let wan: Vec<StateHandle> = conns
        .iter()
        .map(|c| StateHandle::Pf { id: c.ids[1], creator_id: g.model.hostid() })
        .collect();
    let before: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    let r = c.kill_handles(wan.clone(), true).unwrap();
    assert_eq!((r.requested, r.killed, r.not_found), (50, 100, 0), "{r:?}");
    assert_eq!((r.path, r.table_passes), (KillPath::Handles, 2));
    let after: HashSet<u64> = snapshot(&mut c, None).iter().map(pf_id).collect();
    let gone: HashSet<u64> = before.difference(&after).copied().collect();
    let want: HashSet<u64> = conns.iter().flat_map(|c| c.ids.iter().copied()).collect();
    assert_eq!(gone, want, "exactly the 50 connections, both halves");
    // Again: all gone already.
    let r = c.kill_handles(wan, true).unwrap();
    assert_eq!((r.killed, r.not_found), (0, 50));
    // Creator 0 names no listed state: refused before the backend.
    let e = c.kill_handles(vec![StateHandle::Pf { id: 1, creator_id: 0 }], true).unwrap_err();
    assert!(e.to_string().contains("creator id"), "{e}");
}

/// The ruleset ticket of a running pf-model broker: announced in Hello, stable while nothing
/// is committed (kills and listings leave it), changed by a ruleset commit (SIGUSR1 is the
/// model's stand-in for `pfctl -f`).
#[test]
fn ruleset_ticket_changes_only_when_a_ruleset_is_committed() {
    let mut b = broker(&[]);
    let mut c = client(&b);
    assert!(c.hello().backend.capabilities.ruleset_ticket);
    let t0 = c.ruleset_ticket().unwrap();
    assert!(t0.rules > 0);
    c.kill_matching(vec![gw(0)], true).unwrap();
    snapshot(&mut c, None);
    assert_eq!(c.ruleset_ticket().unwrap(), t0);
    b.child.signal(nix::sys::signal::Signal::SIGUSR1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let t1 = loop {
        let t = c.ruleset_ticket().unwrap();
        if t != t0 {
            break t;
        }
        assert!(Instant::now() < deadline, "SIGUSR1 committed no ruleset");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(t1.rules, t0.rules);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.ruleset_ticket().unwrap(), t1, "one commit, one new ticket");
    // The operator's view of the same.
    let v = cli(&b, &["ruleset-ticket"]);
    assert_eq!(v["ticket"], u64::from(t1.ticket), "{v}");
    assert_eq!(v["rules"], u64::from(t1.rules), "{v}");

    // FreeBSD 14 has no netlink GETRULES: the ticket comes from DIOCGETRULES.
    let old = broker(&["--model-release", "14"]);
    let mut c = client(&old);
    assert!(c.hello().backend.capabilities.ruleset_ticket);
    assert_eq!(c.ruleset_ticket().unwrap().ticket, 1, "the boot-time ruleset");
}
