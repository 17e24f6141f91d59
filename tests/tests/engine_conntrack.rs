//! The engine on real conntrack, in private namespaces (root only): ICMP probes through a
//! veth pair to an "ISP" namespace that stops answering drive the whole path — detection,
//! decision, settle delay, kill of exactly WAN1's states (ct mark 1), trailing sweep.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecull_cli::BrokerClient;
use statecull_conntrack::fill::TableSpec;
use statecull_proto::control::{Event, EventKind};
use statecull_proto::{MarkMatch, Selector};
use statecull_tests::{BrokerProcess, Netns, TempDir, skip_unless_root};

const ENTRIES: u64 = 10_000;

fn sh(cmd: &mut std::process::Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stops the engine (SIGTERM, then wait) when dropped, before the namespaces go.
struct Engine(Child);

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn policy(broker: &Path) -> String {
    format!(
        r#"
[engine]
broker_socket = "{}"

[routing]
confirm = "delay"
settle_timeout = "300ms"
sweep_delay = "300ms"

[[gateway]]
name = "WAN1"
interface = "wan1"
address = "198.51.100.254"
probe_interval = "100ms"
probe_timeout = "250ms"
latency_degraded = "200ms"
latency_up = "100ms"
window = 10
min_samples = 5
loss_down = "50%"
loss_degraded = "30%"
loss_up = "10%"
hold_down = "2s"
[gateway.states]
mark = "0x1/0xff"
nat_addr = ["198.51.100.1"]

[[gateway]]
name = "WAN2"
interface = "wan2"
address = "203.0.113.254"
probe_interval = "100ms"
probe_timeout = "250ms"
latency_degraded = "200ms"
latency_up = "100ms"
[gateway.states]
mark = "0x2/0xff"
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
        broker.display()
    )
}

fn mark(m: u32) -> Selector {
    Selector { mark: Some(MarkMatch { value: m, mask: 0xff }), ..Selector::default() }
}

fn counts(socket: &Path) -> (u64, u64) {
    let mut c = BrokerClient::connect(socket, "engine test").unwrap();
    let r = c.count(vec![mark(1), mark(2)]).unwrap();
    (r.per_selector[0], r.per_selector[1])
}

fn events(control: &Path) -> Vec<Event> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
        .args(["events", "--json", "--control"])
        .arg(control)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn probes_through_a_veth_drive_detection_and_a_kill_of_exactly_wan1() {
    if skip_unless_root("probes_through_a_veth_drive_detection_and_a_kill_of_exactly_wan1") {
        return;
    }
    let fw = Netns::create("efw").unwrap();
    let isp1 = Netns::create("eisp1").unwrap();
    let isp2 = Netns::create("eisp2").unwrap();
    for (isp, dev, fw_addr, isp_addr) in [
        (&isp1, "wan1", "198.51.100.1/24", "198.51.100.254/24"),
        (&isp2, "wan2", "203.0.113.1/24", "203.0.113.254/24"),
    ] {
        sh(fw.command("ip").args(["link", "add", dev, "type", "veth", "peer", "name", "up0"]));
        sh(fw.command("ip").args(["link", "set", "up0", "netns", isp.name()]));
        sh(fw.command("ip").args(["addr", "add", fw_addr, "dev", dev]));
        sh(fw.command("ip").args(["link", "set", dev, "up"]));
        sh(isp.command("ip").args(["addr", "add", isp_addr, "dev", "up0"]));
        sh(isp.command("ip").args(["link", "set", "up0", "up"]));
    }
    // Datagram ICMP sockets for the engine: a per-namespace knob, the host's is untouched.
    sh(fw.command("sysctl").args(["-qw", "net.ipv4.ping_group_range=0 2147483647"]));
    fw.fill(&TableSpec::two_wans(ENTRIES)).unwrap();

    let broker =
        BrokerProcess::start(Path::new(env!("CARGO_BIN_EXE_itest-broker")), &fw, &[]).unwrap();
    let (wan1_before, wan2_before) = counts(broker.socket());
    assert!(wan1_before > 1000 && wan2_before > 1000);

    let dir = TempDir::new("engine-ct").unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, policy(broker.socket())).unwrap();
    let control = dir.path().join("engine.sock");
    let log_path = dir.path().join("engine.log");
    let child = fw
        .command(env!("CARGO_BIN_EXE_itest-engine"))
        .arg("--policy")
        .arg(&policy_path)
        .arg("--control-socket")
        .arg(&control)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut engine = Engine(child);
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Healthy first: answered probes and no down event.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(st)) = engine.0.try_wait() {
            panic!("engine exited ({st}): {}", log());
        }
        if control.exists() {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_itest-statecull"))
                .args(["status", "--json", "--control"])
                .arg(&control)
                .output()
                .unwrap();
            if out.status.success() {
                let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if st["gateways"][0]["samples"].as_u64().unwrap_or(0) >= 5 {
                    assert_eq!(st["gateways"][0]["state"], "up", "{st}");
                    assert!(st["gateways"][0]["latency_ms"].as_f64().is_some(), "{st}");
                    break;
                }
            }
        }
        assert!(Instant::now() < deadline, "engine never got probe answers: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }

    // ISP1 silently stops answering; the link stays up.
    let cut_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    sh(isp1.command("sysctl").args(["-qw", "net.ipv4.icmp_echo_ignore_all=1"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    let evs = loop {
        let evs = events(&control);
        if evs.iter().any(|e| e.kind == EventKind::SweepDone) {
            break evs;
        }
        assert!(Instant::now() < deadline, "no kill and sweep: {evs:#?}\n{}", log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let find = |k: EventKind| {
        evs.iter().find(|e| e.kind == k).unwrap_or_else(|| panic!("no {k}: {evs:#?}"))
    };
    let down = find(EventKind::GatewayDown);
    assert_eq!(down.gateway.as_deref(), Some("WAN1"));
    assert!(
        !evs.iter()
            .any(|e| e.kind == EventKind::GatewayDown && e.gateway.as_deref() == Some("WAN2"))
    );
    let done = find(EventKind::PlanDone);
    assert_eq!(done.killed, Some(wan1_before), "{done:?}");
    let (wan1_after, wan2_after) = counts(broker.socket());
    assert_eq!(wan1_after, 0, "every WAN1 state gone");
    assert_eq!(wan2_after, wan2_before, "WAN2 untouched");
    assert_eq!(evs.iter().filter(|e| e.kind == EventKind::PlanStarted).count(), 1);
    println!(
        "detection: {} ms from the cut to the down decision; decision to kill done: {} ms; killed {}",
        down.unix_ms.saturating_sub(cut_ms),
        done.unix_ms.saturating_sub(down.unix_ms),
        wan1_before
    );
    drop(engine);
    drop(broker);
}
