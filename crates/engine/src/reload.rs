//! Reloading the policy (SIGHUP, `statecull reload`): one implementation for both.
//!
//! The new file is read and loaded by the same loader as start-up and `statecull
//! check-policy` (errors name file, line and field); then [`restart_only`] (pure) compares it
//! with the policy in force: what the engine opened or registered before confinement cannot
//! change without a restart (its sockets, the metrics listener, the dialer's socket paths,
//! the ICMP probe sockets, Landlock's readable paths, the routing watcher, the states
//! refresher's schedule), and a change to any of it refuses the whole reload, naming the
//! key. A refused reload keeps the old policy, and says why in its answer, the log and a
//! `policy-reload-failed` event.
//!
//! A plan in flight finishes under the policy it started with: the swap waits until no
//! decision is pending, no plan runs and no trailing sweep is scheduled (at most
//! [`QUIET_WAIT`]; otherwise it is refused and can be asked again). The swap itself happens
//! under the lock every health input takes, so no input is judged with one policy's
//! gateway numbers and applied with the other's. Gateways are matched by name
//! ([`carried_over`]): one present in both keeps its health state, counters and forced
//! verdict (with the new thresholds from its next input on); a renamed or removed one is
//! dropped; a new one starts as at start-up (assumed up until evidence says otherwise).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use statecull_policy::Policy;
use statecull_policy::model::{Gateway, HealthSource};

/// How long a reload waits for a plan in flight (and its trailing sweep) to finish.
pub const QUIET_WAIT: Duration = Duration::from_secs(30);

/// Where a reload reads the policy. On Linux by its path (Landlock keeps the policy's
/// directory readable, [`policy_dirs`]); on FreeBSD, where capability mode opens no path,
/// through the policy's directory, opened before confinement and limited to reading
/// (`statecull_sandbox::freebsd::open_read_directory`): a file renamed over the old one is
/// read, a symbolic link leading out of the directory is not.
#[derive(Clone, Debug)]
pub struct PolicyFile {
    path: PathBuf,
    #[cfg(target_os = "freebsd")]
    dir: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl PolicyFile {
    /// Read by path.
    pub fn by_path(path: &Path) -> Self {
        PolicyFile {
            path: path.to_owned(),
            #[cfg(target_os = "freebsd")]
            dir: None,
        }
    }

    /// The policy at `path`, as this system's confined engine can read it again: on
    /// FreeBSD its directory is opened now (call before confinement).
    pub fn open(path: &Path) -> Result<Self, crate::EngineError> {
        #[cfg(target_os = "freebsd")]
        {
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            let fd = statecull_sandbox::freebsd::open_read_directory(dir).map_err(|e| {
                crate::EngineError::Config(format!(
                    "opening the policy's directory for reloads: {e}"
                ))
            })?;
            Ok(PolicyFile { path: path.to_owned(), dir: Some(std::sync::Arc::new(fd)) })
        }
        #[cfg(not(target_os = "freebsd"))]
        Ok(Self::by_path(path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's text now.
    pub fn read(&self) -> std::io::Result<String> {
        #[cfg(target_os = "freebsd")]
        if let Some(dir) = &self.dir {
            use std::os::fd::AsFd;
            let name = self.path.file_name().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the policy path names no file",
                )
            })?;
            let bytes = statecull_sandbox::freebsd::read_file_at(dir.as_fd(), name)?;
            return String::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "the policy is not UTF-8")
            });
        }
        std::fs::read_to_string(&self.path)
    }
}

/// What the engine's command line fixed at start-up: the policy file, and which of the
/// policy's restart-only settings a flag overrides (a flag's value wins, so the policy's
/// may then change freely).
#[derive(Clone, Debug)]
pub struct StartUp {
    pub policy: PolicyFile,
    pub broker_socket_flag: bool,
    pub control_socket_flag: bool,
    pub metrics_flag: bool,
}

/// For each gateway of `new`, the index of the gateway of `old` with the same name, if any.
pub fn carried_over(old: &Policy, new: &Policy) -> Vec<Option<usize>> {
    new.gateways.iter().map(|g| old.gateway_index(&g.name)).collect()
}

fn restart(key: &str, what: &str) -> String {
    format!("{key}: {what}; restart the engine to change it")
}

fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "(not set)".to_owned(), |v| format!("{v:?}"))
}

/// Everything `new` changes that cannot change without a restart, one message per key
/// (empty: the reload may go ahead). Pure.
pub fn restart_only(old: &Policy, new: &Policy, start: &StartUp) -> Vec<String> {
    let mut out = Vec::new();
    let (oe, ne) = (&old.engine, &new.engine);
    if !start.broker_socket_flag && oe.broker_socket != ne.broker_socket {
        out.push(restart(
            "engine.broker_socket",
            &format!(
                "{} -> {}: the broker's socket is registered with the dialer before confinement",
                show(&oe.broker_socket),
                show(&ne.broker_socket)
            ),
        ));
    }
    if !start.control_socket_flag && oe.control_socket != ne.control_socket {
        out.push(restart(
            "engine.control_socket",
            &format!(
                "{} -> {}: the control socket is bound at start-up",
                show(&oe.control_socket),
                show(&ne.control_socket)
            ),
        ));
    }
    if !start.metrics_flag && oe.metrics_listen != ne.metrics_listen {
        let s = |a: &Option<SocketAddr>| a.map_or_else(|| "(none)".to_owned(), |a| a.to_string());
        out.push(restart(
            "engine.metrics_listen",
            &format!(
                "{} -> {}: the metrics listener is opened at start-up",
                s(&oe.metrics_listen),
                s(&ne.metrics_listen)
            ),
        ));
    }
    if oe.readable_paths != ne.readable_paths {
        out.push(restart(
            "engine.readable_paths",
            "the files the engine may read are fixed by Landlock at start-up",
        ));
    }
    if oe.states_refresh != ne.states_refresh {
        out.push(restart(
            "engine.states_refresh",
            &format!(
                "{} -> {}: the refresher's schedule is set at start-up",
                oe.states_refresh, ne.states_refresh
            ),
        ));
    }
    if old.routing.confirm != new.routing.confirm {
        out.push(restart(
            "routing.confirm",
            &format!(
                "{} -> {}: the route watcher (or ruleset reader) is opened at start-up",
                old.routing.confirm.word(),
                new.routing.confirm.word()
            ),
        ));
    }
    if new.uses_interface_addresses() && !old.uses_interface_addresses() {
        let at = new.gateways.iter().position(|g| g.states.nat_from_interface).unwrap_or(0);
        out.push(restart(
            &format!("gateway[{}].states.nat_addr", at + 1),
            "\"interface\" needs the address watcher, opened at start-up only when some \
             gateway uses it",
        ));
    }
    for (i, g) in new.gateways.iter().enumerate() {
        let at = format!("gateway[{}]", i + 1);
        let was = old.gateway_index(&g.name).and_then(|o| old.gateways.get(o));
        out.extend(health_source_change(&at, g, was));
    }
    out
}

/// A gateway's health source as the engine opened it: ICMP probe sockets and dpinger
/// socket paths exist only for what the policy at start-up named.
fn health_source_change(at: &str, g: &Gateway, was: Option<&Gateway>) -> Vec<String> {
    let mut out = Vec::new();
    let name = &g.name;
    match (&g.source, was) {
        (HealthSource::External, _) => {}
        (HealthSource::Icmp, None) => out.push(restart(
            &format!("{at}.health_source"),
            &format!(
                "{name} is a new gateway probed by ICMP: its probe sockets can only be opened at \
                 start-up (a new gateway with health_source = \"external\" needs no restart)"
            ),
        )),
        (HealthSource::Dpinger { .. }, None) => out.push(restart(
            &format!("{at}.dpinger_socket"),
            &format!(
                "{name} is a new gateway read from dpinger: its socket is registered with the \
                 dialer before confinement"
            ),
        )),
        (HealthSource::Icmp, Some(w)) => {
            if w.source != HealthSource::Icmp {
                out.push(restart(
                    &format!("{at}.health_source"),
                    &format!("{name} was not probed by ICMP at start-up: no probe sockets are open for it"),
                ));
                return out;
            }
            let probe_keys: [(&str, bool); 6] = [
                ("interface", g.interface != w.interface),
                ("monitor", g.monitor != w.monitor),
                ("probe_source", g.probe_source != w.probe_source),
                ("fib", g.fib != w.fib),
                ("probe_interval", g.probe_interval != w.probe_interval),
                ("probe_timeout", g.probe_timeout != w.probe_timeout),
            ];
            for (key, changed) in probe_keys {
                if changed {
                    out.push(restart(
                        &format!("{at}.{key}"),
                        &format!("{name}'s ICMP probe sockets and timers are set up at start-up"),
                    ));
                }
            }
        }
        (HealthSource::Dpinger { socket }, Some(w)) => {
            let same_socket =
                matches!(&w.source, HealthSource::Dpinger { socket: s } if s == socket);
            if !same_socket {
                out.push(restart(
                    &format!("{at}.dpinger_socket"),
                    &format!(
                        "{name}'s dpinger socket {socket} is not the one registered with the \
                         dialer before confinement"
                    ),
                ));
                return out;
            }
            for (key, changed) in [
                ("probe_interval", g.probe_interval != w.probe_interval),
                ("probe_timeout", g.probe_timeout != w.probe_timeout),
            ] {
                if changed {
                    out.push(restart(
                        &format!("{at}.{key}"),
                        &format!("{name}'s dpinger poller is set up at start-up"),
                    ));
                }
            }
        }
    }
    out
}

/// The directories Landlock must leave readable so a reload can read the policy again:
/// the directory of the policy's path as given and, when that is a link, of its target.
/// Directories, not the file: an editor or a package manager replaces the file by renaming
/// a new one over it, which a rule on the old file would not cover.
pub fn policy_dirs(policy_path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let mut dirs = vec![parent(policy_path)];
    if let Ok(real) = std::fs::canonicalize(policy_path) {
        let d = parent(&real);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[engine]
control_socket = "/run/statecull/engine.sock"

[[gateway]]
name = "WAN1"
interface = "eth1"
address = "198.51.100.1"
[gateway.states]
mark = "0x1/0xff"

[[gateway]]
name = "WAN2"
interface = "eth2"
address = "203.0.113.1"
health_source = "external"
[gateway.states]
mark = "0x2/0xff"

[[group]]
name = "wan"
members = [{ gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 }]
"#;

    fn load(text: &str) -> Policy {
        statecull_policy::load::parse(text, "policy.toml").unwrap()
    }

    fn start() -> StartUp {
        StartUp {
            policy: PolicyFile::by_path(Path::new("/etc/statecull/policy.toml")),
            broker_socket_flag: false,
            control_socket_flag: false,
            metrics_flag: false,
        }
    }

    #[test]
    fn thresholds_groups_and_external_gateways_may_change() {
        let old = load(BASE);
        let new = load(
            &(BASE
                .replace("tier = 2", "tier = 1")
                .replace("name = \"WAN2\"", "name = \"WAN2\"\nloss_down = \"50%\"")
                + r#"
[[gateway]]
name = "LTE"
interface = "wwan0"
address = "192.0.2.1"
health_source = "external"
[gateway.states]
mark = "0x3/0xff"
"#),
        );
        assert_eq!(restart_only(&old, &new, &start()), Vec::<String>::new());
        assert_eq!(carried_over(&old, &new), [Some(0), Some(1), None]);
    }

    #[test]
    fn what_was_opened_at_start_up_is_refused_by_key() {
        let old = load(BASE);
        let new = load(
            &(BASE.replace("/run/statecull/engine.sock", "/run/other.sock").replace(
                "address = \"198.51.100.1\"",
                "address = \"198.51.100.1\"\nmonitor = [\"198.51.100.9\"]",
            ) + "[routing]\nconfirm = \"signal\"\n"
                + r#"
[[gateway]]
name = "LTE"
interface = "wwan0"
address = "192.0.2.1"
[gateway.states]
mark = "0x3/0xff"
"#),
        );
        let why = restart_only(&old, &new, &start());
        let keys: Vec<&str> = why.iter().map(|m| m.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "engine.control_socket",
                "routing.confirm",
                "gateway[1].monitor",
                "gateway[3].health_source"
            ],
            "{why:#?}"
        );
        assert!(why.iter().all(|m| m.ends_with("restart the engine to change it")));
        // A flag on the command line overrides the policy's socket: its change is moot.
        let flagged = StartUp { control_socket_flag: true, ..start() };
        assert!(!restart_only(&old, &new, &flagged).iter().any(|m| m.contains("control_socket")));
    }

    #[test]
    fn a_gateway_turned_icmp_or_given_another_dpinger_socket_is_refused() {
        let old = load(BASE);
        let icmp = load(&BASE.replace("health_source = \"external\"\n", ""));
        let why = restart_only(&old, &icmp, &start());
        assert_eq!(why.len(), 1);
        assert!(why[0].starts_with("gateway[2].health_source: WAN2 was not probed by ICMP"));
        let dp = load(&BASE.replace(
            "health_source = \"external\"",
            "health_source = \"dpinger\"\ndpinger_socket = \"/var/run/dpinger_WAN2.sock\"",
        ));
        let why = restart_only(&old, &dp, &start());
        assert!(why[0].starts_with("gateway[2].dpinger_socket:"), "{why:?}");
        // Dropping a gateway is always allowed.
        let fewer = load(&BASE.replace("{ gateway = \"WAN2\", tier = 2 }", "").replace(
            "[[gateway]]\nname = \"WAN2\"\ninterface = \"eth2\"\naddress = \"203.0.113.1\"\nhealth_source = \"external\"\n[gateway.states]\nmark = \"0x2/0xff\"\n",
            "",
        ));
        assert_eq!(fewer.gateways.len(), 1);
        assert!(restart_only(&old, &fewer, &start()).is_empty());
    }

    #[test]
    fn the_policy_directory_is_what_landlock_keeps_readable() {
        assert_eq!(
            policy_dirs(Path::new("/nonexistent/statecull/policy.toml")),
            [PathBuf::from("/nonexistent/statecull")]
        );
        assert_eq!(policy_dirs(Path::new("policy.toml"))[0], PathBuf::from("."));
    }
}
