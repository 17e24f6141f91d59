//! The daemons as the end-to-end tests run them outside a namespace (no root needed; as root
//! they switch to the test user): their command lines, ready for a test's own flags and
//! for [`ChildGuard::spawn_serving`](crate::ChildGuard::spawn_serving), a policy for an
//! engine whose gateways the test declares up and down, and the CLI talking to an engine.

use std::fs::File;
use std::io;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use statecull_control::Event;

/// Two WANs with external health (the test says up and down), recognised the pf way (route,
/// NAT address, interface): WAN1 tier 1, WAN2 tier 2, `on_down = "gateway"`; routing
/// confirmed by signal only, so nothing is killed unless the test says `routed`.
pub const EXTERNAL_POLICY: &str = r#"
[routing]
confirm = "signal"
settle_timeout = "60s"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
rt_addr = "198.51.100.254"
nat_addr = ["198.51.100.1"]
interface = "igb1"

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
rt_addr = "203.0.113.254"
nat_addr = ["203.0.113.1"]
interface = "igb2"

[[group]]
name = "failover"
members = [ { gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 } ]
on_down = "gateway"
"#;

/// The broker `bin` over a pf model of `states` states, serving on `socket`, with the test
/// user, socket group and allowed user when root ([`crate::broker_test_args`]); standard
/// input and output closed, standard error to `log`.
pub fn model_broker_command(
    bin: &Path,
    states: usize,
    socket: &Path,
    log: &Path,
) -> io::Result<Command> {
    let mut c = Command::new(bin);
    c.args(["--backend", "pf-model", "--model-states", &states.to_string(), "--socket"])
        .arg(socket)
        .args(crate::broker_test_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);
    Ok(c)
}

/// The engine run by `cmd` (`Command::new(bin)`, or a wrapper that execs it) with the
/// `policy` file, the `broker` and `control` sockets, and the test user when root
/// ([`crate::daemon_user_args`]); standard input and output closed, standard error to `log`.
pub fn engine_command(
    mut cmd: Command,
    policy: &Path,
    broker: &Path,
    control: &Path,
    log: &Path,
) -> io::Result<Command> {
    cmd.arg("--policy")
        .arg(policy)
        .arg("--broker-socket")
        .arg(broker)
        .arg("--control-socket")
        .arg(control)
        .args(crate::daemon_user_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(log)?);
    Ok(cmd)
}

/// `statecull ARGS --control CONTROL`, run with the CLI `bin`; its output.
pub fn statecull(bin: &Path, control: &Path, args: &[&str]) -> io::Result<Output> {
    Command::new(bin).args(args).arg("--control").arg(control).output()
}

/// The engine's recent events, as `statecull events --json` (the CLI `bin`) lists them; a
/// failure carries what the CLI said.
pub fn events(bin: &Path, control: &Path) -> io::Result<Vec<Event>> {
    let out = statecull(bin, control, &["events", "--json"])?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "statecull events: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| io::Error::other(format!("{e}: {l}"))))
        .collect()
}
