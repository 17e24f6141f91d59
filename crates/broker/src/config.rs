//! The broker's own small configuration: where to listen, who may connect, what never to kill.
//!
//! A TOML file (`--config`) with unknown keys refused, overridden by command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use statecull_proto::Prefix;

use crate::error::BrokerError;

pub const DEFAULT_SOCKET: &str = statecull_proto::DEFAULT_BROKER_SOCKET;

/// The backend used when none is configured, by target OS, as a literal (for `concat!` in
/// the help text): the OS's own state table.
#[cfg(target_os = "freebsd")]
#[macro_export]
macro_rules! default_backend {
    () => {
        "pf"
    };
}

/// The backend used when none is configured, by target OS, as a literal (for `concat!` in
/// the help text): the OS's own state table.
#[cfg(not(target_os = "freebsd"))]
#[macro_export]
macro_rules! default_backend {
    () => {
        "conntrack"
    };
}

/// The backend used when none is configured: pf on FreeBSD, conntrack elsewhere.
pub const DEFAULT_BACKEND: BackendChoice =
    if cfg!(target_os = "freebsd") { BackendChoice::Pf } else { BackendChoice::Conntrack };
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Least severe log events written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Where log lines go (`statecull_service::log` decides what each means).
pub use statecull_service::log::Target as LogTarget;

pub fn parse_log_target(s: &str) -> Result<LogTarget, String> {
    match s {
        "stderr" => Ok(LogTarget::Stderr),
        "syslog" => Ok(LogTarget::Syslog),
        other => Err(format!("unknown log target {other:?} (stderr or syslog)")),
    }
}

pub fn parse_log_level(s: &str) -> Result<LogLevel, String> {
    match s {
        "error" => Ok(LogLevel::Error),
        "warn" => Ok(LogLevel::Warn),
        "info" => Ok(LogLevel::Info),
        "debug" => Ok(LogLevel::Debug),
        "trace" => Ok(LogLevel::Trace),
        other => Err(format!("unknown log level {other:?} (error, warn, info, debug or trace)")),
    }
}

/// Which state table to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// Linux netfilter conntrack.
    Conntrack,
    /// FreeBSD pf through `/dev/pf` and pf netlink.
    Pf,
    /// The in-memory model of pf, filled with a generated two-WAN router table (for
    /// simulation, tests and benchmarks; runs anywhere, needs no privilege).
    PfModel(ModelSpec),
}

impl BackendChoice {
    /// The name `--backend` and the configuration file use.
    pub fn name(&self) -> &'static str {
        match self {
            BackendChoice::Conntrack => "conntrack",
            BackendChoice::Pf => "pf",
            BackendChoice::PfModel(_) => "pf-model",
        }
    }
}

/// The generated table behind the `pf-model` backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    pub states: usize,
    pub seed: u64,
    /// Which FreeBSD release's kernel interfaces to emulate: 13, 14 or 15.
    pub release: u8,
}

impl Default for ModelSpec {
    fn default() -> Self {
        Self { states: 100_000, seed: 1, release: 15 }
    }
}

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub socket: PathBuf,
    /// Group the socket is chowned to (so the engine's group can connect).
    pub socket_gid: Option<u32>,
    /// Peers allowed besides root.
    pub allowed_uids: Vec<u32>,
    pub allowed_gids: Vec<u32>,
    /// States touching these prefixes are never killed.
    pub protected: Vec<Prefix>,
    /// Connection slots shared by every peer (root and the engine's uid also have one
    /// reserved slot each beyond these).
    pub max_connections: usize,
    /// Most of the shared slots one uid may hold (None: half of `max_connections`).
    pub max_connections_per_user: Option<usize>,
    /// The engine's uid: it gets a reserved connection slot (None: the first allowed uid).
    pub engine_uid: Option<u32>,
    /// Deadlines for peers (not in the file: the defaults are the design's values; tests
    /// shorten them).
    pub timeouts: crate::dispatch::Timeouts,
    pub backend: BackendChoice,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// Standard error (with journald priorities when it is the journal) or syslog.
    pub log_target: LogTarget,
    /// The user to switch to after opening the state table and the socket (name or uid);
    /// when started as root without one, [`DEFAULT_USER`].
    pub user: Option<String>,
}

/// The broker's own user (see sandbox/profiles/systemd/statecull.sysusers).
pub const DEFAULT_USER: &str = "statecull-broker";

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_gid: None,
            allowed_uids: Vec::new(),
            allowed_gids: Vec::new(),
            protected: Vec::new(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_user: None,
            engine_uid: None,
            timeouts: crate::dispatch::Timeouts::default(),
            backend: DEFAULT_BACKEND,
            log_format: LogFormat::Text,
            log_level: LogLevel::Info,
            log_target: LogTarget::Stderr,
            user: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    socket: Option<PathBuf>,
    socket_group: Option<String>,
    #[serde(default)]
    allow_users: Vec<String>,
    #[serde(default)]
    allow_groups: Vec<String>,
    #[serde(default)]
    allow_uids: Vec<u32>,
    #[serde(default)]
    allow_gids: Vec<u32>,
    #[serde(default)]
    protected: Vec<toml::Spanned<String>>,
    max_connections: Option<usize>,
    max_connections_per_user: Option<usize>,
    engine_user: Option<String>,
    backend: Option<String>,
    log_format: Option<String>,
    log_level: Option<String>,
    log_target: Option<String>,
    model_states: Option<usize>,
    model_seed: Option<u64>,
    model_release: Option<String>,
    user: Option<String>,
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Why `pf-model` is refused by a broker built without the model.
pub const NO_MODEL: &str = "this broker was built without the pf model (backend pf-model is for \
     tests and simulation; build one with `cargo build -p statecull-broker --features model`)";

pub fn parse_backend(s: &str) -> Result<BackendChoice, String> {
    match s {
        "conntrack" => Ok(BackendChoice::Conntrack),
        "pf" => Ok(BackendChoice::Pf),
        "pf-model" if cfg!(feature = "model") => Ok(BackendChoice::PfModel(ModelSpec::default())),
        "pf-model" => Err(NO_MODEL.into()),
        other => Err(format!("unknown backend {other:?} (available: conntrack, pf, pf-model)")),
    }
}

pub fn parse_release(s: &str) -> Result<u8, String> {
    match s {
        "13" => Ok(13),
        "14" => Ok(14),
        "15" => Ok(15),
        other => Err(format!("unknown FreeBSD release {other:?} (13, 14 or 15)")),
    }
}

pub fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!("unknown log format {other:?} (text or json)")),
    }
}

/// Resolve a user name or numeric uid.
pub fn resolve_user(name: &str) -> Result<u32, String> {
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(uid);
    }
    match nix::unistd::User::from_name(name) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no such user {name:?}")),
        Err(e) => Err(format!("cannot look up user {name:?}: {e}")),
    }
}

/// Resolve a group name or numeric gid.
pub fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("no such group {name:?}")),
        Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
    }
}

impl Config {
    /// Load a config file on top of the defaults.
    pub fn from_file(path: &Path) -> Result<Self, BrokerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BrokerError::Config(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parse config text; `origin` names the file in error messages.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, BrokerError> {
        let err = |line: usize, msg: String| BrokerError::Config(format!("{origin}:{line}: {msg}"));
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
            err(line, e.message().to_owned())
        })?;
        let mut c = Config::default();
        if let Some(s) = file.socket {
            c.socket = s;
        }
        c.user = file.user;
        if let Some(g) = &file.socket_group {
            c.socket_gid =
                Some(resolve_group(g).map_err(|m| err(1, format!("socket_group: {m}")))?);
        }
        for u in &file.allow_users {
            c.allowed_uids.push(resolve_user(u).map_err(|m| err(1, format!("allow_users: {m}")))?);
        }
        for g in &file.allow_groups {
            c.allowed_gids
                .push(resolve_group(g).map_err(|m| err(1, format!("allow_groups: {m}")))?);
        }
        c.allowed_uids.extend(&file.allow_uids);
        c.allowed_gids.extend(&file.allow_gids);
        for p in &file.protected {
            let line = line_of(text, p.span().start);
            let prefix: Prefix = p
                .get_ref()
                .parse()
                .map_err(|e: statecull_proto::ProtoError| err(line, format!("protected: {e}")))?;
            c.protected.push(prefix);
        }
        if let Some(n) = file.max_connections {
            if n == 0 {
                return Err(err(1, "max_connections must be at least 1".into()));
            }
            c.max_connections = n;
        }
        if let Some(n) = file.max_connections_per_user {
            if n == 0 {
                return Err(err(1, "max_connections_per_user must be at least 1".into()));
            }
            c.max_connections_per_user = Some(n);
        }
        if let Some(u) = &file.engine_user {
            c.engine_uid = Some(resolve_user(u).map_err(|m| err(1, format!("engine_user: {m}")))?);
        }
        if let Some(b) = &file.backend {
            c.backend = parse_backend(b).map_err(|m| err(1, m))?;
        }
        if let BackendChoice::PfModel(spec) = &mut c.backend {
            if let Some(n) = file.model_states {
                spec.states = n;
            }
            if let Some(n) = file.model_seed {
                spec.seed = n;
            }
            if let Some(r) = &file.model_release {
                spec.release = parse_release(r).map_err(|m| err(1, m))?;
            }
        } else if file.model_states.is_some()
            || file.model_seed.is_some()
            || file.model_release.is_some()
        {
            return Err(err(1, "model_* keys need backend = \"pf-model\"".into()));
        }
        if let Some(f) = &file.log_format {
            c.log_format = parse_log_format(f).map_err(|m| err(1, m))?;
        }
        if let Some(l) = &file.log_level {
            c.log_level = parse_log_level(l).map_err(|m| err(1, m))?;
        }
        if let Some(t) = &file.log_target {
            c.log_target = parse_log_target(t).map_err(|m| err(1, m))?;
        }
        Ok(c)
    }

    /// Most shared connection slots one uid may hold.
    pub fn max_connections_per_user(&self) -> usize {
        self.max_connections_per_user
            .unwrap_or(self.max_connections / 2)
            .clamp(1, self.max_connections.max(1))
    }

    /// The uid with a reserved slot besides root: the configured engine user, else the first
    /// allowed uid (the engine's, in the shipped configuration).
    pub fn engine_uid(&self) -> Option<u32> {
        self.engine_uid.or_else(|| self.allowed_uids.first().copied())
    }

    /// Is a peer with these credentials allowed? Root always is (the operator).
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.allowed_uids.contains(&uid) || self.allowed_gids.contains(&gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_target_os_ones() {
        let c = Config::default();
        assert_eq!(c.backend, parse_backend(crate::default_backend!()).unwrap());
        if cfg!(target_os = "freebsd") {
            assert_eq!(c.backend, BackendChoice::Pf);
            assert_eq!(c.socket, Path::new("/var/run/statecull/broker.sock"));
        } else {
            assert_eq!(c.backend, BackendChoice::Conntrack);
            assert_eq!(c.socket, Path::new("/run/statecull/broker.sock"));
        }
    }

    #[test]
    fn full_file() {
        let c = Config::from_toml(
            r#"
socket = "/tmp/x.sock"
allow_uids = [1000]
allow_gids = [2000]
protected = ["192.0.2.0/28", "2001:db8:ffff::/48"]
max_connections = 4
log_format = "json"
log_target = "syslog"
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
        assert!(c.allows(0, 0) && c.allows(1000, 1) && c.allows(5, 2000));
        assert!(!c.allows(1001, 1));
        assert_eq!(c.protected.len(), 2);
        assert_eq!(c.max_connections, 4);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_target, LogTarget::Syslog);
        let e = Config::from_toml("log_target = \"journal\"\n", "t.toml").unwrap_err();
        assert!(e.to_string().contains("unknown log target \"journal\" (stderr or syslog)"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Config::from_toml("socket = \"/x\"\nbogus = 1\n", "b.toml").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("b.toml:2") && m.contains("bogus"), "{m}");
        let e = Config::from_toml("protected = [\n  \"192.0.2.1/24\",\n]\n", "p.toml").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("p.toml:2") && m.contains("host bits"), "{m}");
        let e = Config::from_toml("max_connections = 0\n", "m.toml").unwrap_err();
        assert!(e.to_string().contains("at least 1"));
    }
}
