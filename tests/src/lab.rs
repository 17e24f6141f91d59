//! A small failover topology for the engine's tests and `cargo xtask demo`: a firewall
//! namespace with two WAN links, each a veth pair to its own "ISP" namespace that answers
//! pings as the gateway, and the engine running inside the firewall namespace.
//!
//! ```text
//!   fw: wan1 198.51.100.1/24 ──veth── isp1: 198.51.100.254 (WAN1's gateway)
//!       wan2 203.0.113.1/24  ──veth── isp2: 203.0.113.254  (WAN2's gateway)
//! ```
//!
//! Addresses are from the documentation ranges and exist only inside these namespaces.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::{ChildGuard, Netns, TempDir, run};

/// One WAN link of the lab: device in `fw`, the firewall's address, the gateway's.
#[derive(Clone, Copy, Debug)]
pub struct WanLink {
    pub device: &'static str,
    pub fw_addr: &'static str,
    pub gateway: &'static str,
    pub prefix_len: u8,
}

pub const WAN_LINKS: [WanLink; 2] = [
    WanLink { device: "wan1", fw_addr: "198.51.100.1", gateway: "198.51.100.254", prefix_len: 24 },
    WanLink { device: "wan2", fw_addr: "203.0.113.1", gateway: "203.0.113.254", prefix_len: 24 },
];

/// The firewall and its two ISPs; every namespace is removed on drop.
#[derive(Debug)]
pub struct TwoWanLab {
    // Declared first, dropped first: ISPs go before the firewall (order does not matter to
    // the kernel, but keeps the cleanup log readable).
    pub isp: [Netns; 2],
    pub fw: Netns,
}

impl TwoWanLab {
    pub fn create(tag: &str) -> io::Result<Self> {
        let fw = Netns::create(&format!("{tag}fw"))?;
        let isp = [Netns::create(&format!("{tag}isp1"))?, Netns::create(&format!("{tag}isp2"))?];
        for (link, isp) in WAN_LINKS.iter().zip(&isp) {
            let fw_cidr = format!("{}/{}", link.fw_addr, link.prefix_len);
            let gw_cidr = format!("{}/{}", link.gateway, link.prefix_len);
            run(fw
                .command("ip")
                .args(["link", "add", link.device, "type", "veth"])
                .args(["peer", "name", "up0"]))?;
            run(fw.command("ip").args(["link", "set", "up0", "netns", isp.name()]))?;
            run(fw.command("ip").args(["addr", "add", &fw_cidr, "dev", link.device]))?;
            run(fw.command("ip").args(["link", "set", link.device, "up"]))?;
            run(isp.command("ip").args(["addr", "add", &gw_cidr, "dev", "up0"]))?;
            run(isp.command("ip").args(["link", "set", "up0", "up"]))?;
        }
        // Datagram ICMP sockets for the unprivileged engine. The knob is per namespace; the
        // host's own stays as it is.
        run(fw.command("sysctl").args(["-qw", "net.ipv4.ping_group_range=0 2147483647"]))?;
        Ok(Self { isp, fw })
    }

    /// Make ISP `i` (0 or 1) ignore or answer pings; its link stays up, as when an
    /// upstream router silently blackholes.
    pub fn set_answering(&self, i: usize, answering: bool) -> io::Result<()> {
        let isp = self.isp.get(i).ok_or_else(|| io::Error::other("no such ISP"))?;
        let value = if answering { "0" } else { "1" };
        run(isp.command("sysctl").args(["-qw", &format!("net.ipv4.icmp_echo_ignore_all={value}")]))
    }
}

/// The engine running in a namespace with a given policy; stopped (SIGTERM, then SIGKILL)
/// on drop.
#[derive(Debug)]
pub struct EngineProcess {
    child: ChildGuard,
    control: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl EngineProcess {
    /// Write `policy` to a file, start `bin` in `ns` with it, wait for the control socket.
    pub fn start(bin: &Path, ns: &Netns, policy: &str, extra: &[&str]) -> io::Result<Self> {
        let dir = TempDir::new("engine")?;
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy)?;
        let control = dir.path().join("engine.sock");
        let log = dir.path().join("engine.log");
        let child = ChildGuard::spawn_serving(
            ns.command(bin)
                .arg("--policy")
                .arg(&policy_path)
                .arg("--control-socket")
                .arg(&control)
                .args(crate::daemon_user_args())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(File::create(&log)?)
                .stderr(File::create(&log)?),
            &control,
            Duration::from_secs(30),
            &log,
        )?
        .terminate_on_drop(Duration::from_secs(10));
        Ok(Self { child, control, log, _dir: dir })
    }

    pub fn control(&self) -> &Path {
        &self.control
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the engine is still running.
    pub fn running(&mut self) -> bool {
        self.child.running()
    }
}

/// One `[[gateway]]` of a test policy: probes every `interval_ms` (timeout 2.5 intervals),
/// down at 50 % loss over a 10-probe window, up again after a 2 s hold-down; states
/// recognised by ct mark (mask 0xff) and NAT address.
pub fn gateway_toml(
    name: &str,
    device: &str,
    gateway: &dyn std::fmt::Display,
    nat: &dyn std::fmt::Display,
    mark: u32,
    interval_ms: u64,
) -> String {
    let mark = statecull_proto::MarkMatch { value: mark, mask: 0xff };
    gateway_toml_marked(name, device, gateway, nat, mark, interval_ms)
}

/// [`gateway_toml`] with any mark and mask.
pub fn gateway_toml_marked(
    name: &str,
    device: &str,
    gateway: &dyn std::fmt::Display,
    nat: &dyn std::fmt::Display,
    mark: statecull_proto::MarkMatch,
    interval_ms: u64,
) -> String {
    let timeout = interval_ms * 5 / 2;
    format!(
        r#"
[[gateway]]
name = "{name}"
interface = "{device}"
address = "{gateway}"
probe_interval = "{interval_ms}ms"
probe_timeout = "{timeout}ms"
latency_degraded = "{degraded}ms"
latency_up = "{up}ms"
window = 10
min_samples = 5
loss_down = "50%"
loss_degraded = "30%"
loss_up = "10%"
hold_down = "2s"
[gateway.states]
mark = "{mark}"
nat_addr = ["{nat}"]
"#,
        degraded = timeout * 4 / 5,
        up = timeout * 2 / 5,
    )
}

/// A conntrack policy for the lab: WAN1 (tier 1, ct mark 1) and WAN2 (tier 2, ct mark 2),
/// ICMP probes every `interval_ms`, down at 50 % loss over a 10-probe window, routing
/// confirmed by a short settle delay (the lab's routing does not change here).
pub fn conntrack_policy(broker_socket: &Path, interval_ms: u64) -> String {
    let gateway = |name: &str, link: &WanLink, mark: u32| {
        gateway_toml(name, link.device, &link.gateway, &link.fw_addr, mark, interval_ms)
    };
    format!(
        r#"[engine]
broker_socket = "{broker}"

[routing]
confirm = "delay"
settle_timeout = "300ms"
sweep_delay = "300ms"
{wan1}{wan2}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
        broker = broker_socket.display(),
        wan1 = gateway("WAN1", &WAN_LINKS[0], 1),
        wan2 = gateway("WAN2", &WAN_LINKS[1], 2),
    )
}
