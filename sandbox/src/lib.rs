//! statecull's confinement: each daemon, once it has opened everything it will ever use,
//! gives up every power it does not need, for good (DESIGN.md §2).
//!
//! # Linux: [`confine`], in this order, all or nothing
//!
//! 1. **Resolve the user** (`getpwnam`/`getpwuid`) before anything else: NSS may read
//!    `/etc/passwd`, load modules or talk to a daemon, none of which works afterwards.
//! 2. **Refuse a multi-threaded process**: capability changes, `no_new_privs` and Landlock
//!    apply to the calling thread only (and the threads it starts later), so other threads
//!    would keep their powers. Call `confine` before starting any thread (the engine: before
//!    its runtime starts worker threads).
//! 3. **Capability bounding set** reduced to what is kept (broker: `CAP_NET_ADMIN`; engine:
//!    nothing). This needs `CAP_SETPCAP`, which is still effective only before the uid
//!    changes, hence before step 4.
//! 4. **User switch**: broker `PR_SET_KEEPCAPS` (so the permitted set survives the switch),
//!    then for both `setgroups([gid])`, `setresgid`, `setresuid` (all three ids: no way
//!    back), then `PR_SET_KEEPCAPS` off again.
//! 5. **Capabilities** (`caps` crate): ambient and inheritable cleared, permitted and effective
//!    set to exactly the kept set; the process is made non-dumpable (`PR_SET_DUMPABLE` 0: no
//!    process of the same user can ptrace it or read its memory through `/proc`).
//! 6. **`no_new_privs`**: nothing executed later can gain privileges (set-uid, file
//!    capabilities); Landlock and an unprivileged seccomp filter require it.
//! 7. **Landlock** (ruleset written for ABI 6, best effort; see [`linux`] for why 6):
//!    engine: every filesystem access denied except read-only access beneath
//!    [`Plan::readable_paths`], TCP bind/connect denied, abstract Unix sockets and signals
//!    scoped to the sandbox; broker: the same with no readable path at all. What the kernel
//!    actually enforces is reported exactly ([`Report::landlock`]); a kernel without Landlock
//!    is reported as such, not refused.
//! 8. **seccomp** allow-list (`profiles/seccomp/<role>.allow`, compiled at build time) applied
//!    to every thread (TSYNC), last: the setup syscalls above need not be in the lists.
//! 9. **Check** what the kernel says (`/proc/self/status`, through a descriptor opened in
//!    step 2): ids, groups, every capability set, `NoNewPrivs`, `Seccomp`. Any mismatch is an
//!    error.
//!
//! The user lookup and the seccomp compilation come before any change, so their failures
//! leave the process as it was. Any later error leaves it partly confined, and that cannot
//! be undone: the caller must exit (a daemon that cannot confine itself must not start,
//! unless `--no-sandbox`).
//!
//! # Calling it (Linux)
//!
//! * Open everything first: sockets, listeners, the policy text, `/proc` files kept open.
//!   Afterwards no path can be opened (the engine's `readable_paths` excepted), no socket but
//!   `AF_UNIX` (engine) or `NETLINK_NETFILTER` (broker) created, nothing executed.
//! * One thread: no runtime worker threads, no signal thread yet. Threads started *after*
//!   `confine` inherit everything (the seccomp lists allow starting threads, not processes).
//! * A tokio runtime may also be built after `confine` (its epoll, eventfd and signal
//!   socketpair are allowed).
//! * Removing a socket file at exit fails afterwards (Landlock, and in deployments the
//!   directory's permissions): the daemons replace a stale socket at start instead.
//! * [`current`] works after `confine` (it re-reads `/proc/self/status` through a descriptor
//!   opened before) and never looks a name up then.
//!
//! # FreeBSD
//!
//! The `freebsd` module (Capsicum). [`confine`] there switches the user and enters capability
//! mode; the caller limits each kept descriptor with `freebsd::limit` first.

use std::fmt;

pub mod profile;
pub mod socket;
mod status;

#[cfg(target_os = "linux")]
pub mod linux;

#[cfg(target_os = "freebsd")]
pub mod freebsd;

pub use status::ProcStatus;

/// Which daemon is being confined; decides what it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    /// The unprivileged engine: keeps no capability, no filesystem (except
    /// [`Plan::readable_paths`]), no new sockets but Unix ones.
    Engine,
    /// The privileged broker: keeps `CAP_NET_ADMIN` (ctnetlink) and nothing else.
    Broker,
}

impl Role {
    /// `engine` or `broker`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Engine => "engine",
            Role::Broker => "broker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What [`confine`] should do.
#[derive(Clone, Debug)]
pub struct Plan {
    pub role: Role,
    /// Switch to this user (name or numeric uid) and its primary group; None: stay (allowed
    /// only when not root: a root process must name its user). Naming `root` (or `0`)
    /// explicitly keeps uid 0 while everything else still applies (for tests and
    /// deliberate setups; the report shows it).
    pub user: Option<String>,
    /// Engine only: files/dirs it may still read after confinement (Landlock read-only
    /// rules). Everything else on the filesystem is denied. Must exist and be reachable by
    /// the target user. Must be empty for the broker.
    pub readable_paths: Vec<std::path::PathBuf>,
    /// Broker only: keep `CAP_NET_ADMIN`, which a kernel state table needs (ctnetlink).
    /// False for a backend without one (the pf model): it then keeps no capability at all.
    /// Must be false for the engine.
    pub net_admin: bool,
}

/// What confinement is in force, as the kernel reports it plus what this process applied
/// (for `--print-sandbox` and the start-up log).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// The role confined by this process, if any.
    pub role: Option<Role>,
    /// The user's name (numeric when it has none or it cannot be looked up any more).
    pub user: String,
    /// Effective uid (confinement makes real, effective, saved and filesystem uids equal).
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    pub caps_effective: Vec<String>,
    pub caps_permitted: Vec<String>,
    pub caps_bounding: Vec<String>,
    pub caps_inheritable: Vec<String>,
    pub caps_ambient: Vec<String>,
    pub no_new_privs: bool,
    /// e.g. "ABI 6 ruleset on a kernel with ABI 7, fully enforced: …"; "not supported by
    /// this kernel (…)"; "not applied by this process".
    pub landlock: String,
    /// e.g. "filter, 62 syscalls allowed (14 with argument conditions), …, denied syscalls
    /// fail with EPERM"; "disabled".
    pub seccomp: String,
    /// FreeBSD: whether the process is in capability mode; None elsewhere.
    pub capsicum: Option<bool>,
}

impl Report {
    /// Confinement that is weaker than designed, one sentence each, for the caller to log
    /// loudly at every start (empty when everything is in force).
    pub fn weaknesses(&self) -> Vec<String> {
        let mut out = Vec::new();
        if cfg!(target_os = "linux") {
            if !self.landlock.contains("fully enforced") {
                out.push(format!("Landlock is not fully enforced: {}", self.landlock));
            }
            if !self.seccomp.starts_with("filter") {
                out.push(format!("no seccomp filter: {}", self.seccomp));
            }
            if !self.no_new_privs {
                out.push("no_new_privs is not set".to_owned());
            }
        }
        if self.capsicum == Some(false) {
            out.push("not in Capsicum capability mode".to_owned());
        }
        if self.uid == 0 {
            out.push("running as root (uid 0)".to_owned());
        }
        out
    }
}

fn caps_list(caps: &[String]) -> String {
    if caps.is_empty() { "none".to_owned() } else { caps.join(", ") }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Some(r) => writeln!(f, "sandbox of the {r}:")?,
            None => writeln!(f, "sandbox (not confined by this process):")?,
        }
        let groups: Vec<String> = self.groups.iter().map(u32::to_string).collect();
        writeln!(
            f,
            "  user:          {} (uid {}, gid {}, groups [{}])",
            self.user,
            self.uid,
            self.gid,
            groups.join(", ")
        )?;
        if cfg!(target_os = "linux") || !self.caps_bounding.is_empty() {
            writeln!(f, "  capabilities:  effective: {}", caps_list(&self.caps_effective))?;
            writeln!(f, "                 permitted: {}", caps_list(&self.caps_permitted))?;
            writeln!(f, "                 bounding: {}", caps_list(&self.caps_bounding))?;
            writeln!(f, "                 inheritable: {}", caps_list(&self.caps_inheritable))?;
            writeln!(f, "                 ambient: {}", caps_list(&self.caps_ambient))?;
            writeln!(f, "  no_new_privs:  {}", if self.no_new_privs { "yes" } else { "no" })?;
        }
        writeln!(f, "  landlock:      {}", self.landlock)?;
        write!(f, "  seccomp:       {}", self.seccomp)?;
        if let Some(c) = self.capsicum {
            write!(f, "\n  capsicum:      {}", if c { "capability mode" } else { "not entered" })?;
        }
        Ok(())
    }
}

/// Why confinement failed. Every variant is fatal: the process is partly confined and must
/// exit.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the {role} runs as root and no user to switch to was given: name an unprivileged user (e.g. --user statecull), or `root` explicitly to stay root on purpose"
    )]
    RootWithoutUser { role: Role },
    #[error(
        "user {user:?} does not exist: create it (see sandbox/profiles/systemd/statecull.sysusers) or name another"
    )]
    UnknownUser { user: String },
    #[error("looking up user {user:?}: {source}")]
    UserLookup { user: String, source: nix::Error },
    #[error(
        "confinement must start while the process has one thread, it has {threads}: capabilities, no_new_privs and Landlock apply to the calling thread only; call confine() before starting any thread (e.g. before the async runtime's workers)"
    )]
    Threads { threads: u64 },
    #[error("readable paths are for the engine only; the broker reads no file after start-up")]
    BrokerReadablePaths,
    #[error("reading {what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("/proc/self/status: {0}")]
    Status(String),
    #[error("switching to user {user:?} (uid {uid}, gid {gid}): {step} failed: {source}{hint}")]
    SwitchUser {
        user: String,
        uid: u32,
        gid: u32,
        step: &'static str,
        source: nix::Error,
        /// What to do about it.
        hint: &'static str,
    },
    #[error(
        "the capability bounding set still holds {remaining} and this process lacks CAP_SETPCAP to drop them: start with CAP_SETPCAP (as root, or systemd: add it to CapabilityBoundingSet=), or with exactly the capabilities that stay (systemd: CapabilityBoundingSet=, empty for the engine)"
    )]
    BoundingSet { remaining: String },
    #[error("capabilities: {step}: {reason}")]
    Capabilities { step: String, reason: String },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(nix::Error),
    #[error("landlock: {step}: {reason}")]
    Landlock { step: String, reason: String },
    #[error("readable path {path}: {reason} (it must exist and be reachable by the engine's user)")]
    ReadablePath { path: std::path::PathBuf, reason: String },
    #[error("seccomp: {step}: {reason}")]
    Seccomp { step: String, reason: String },
    #[error("after confinement the kernel reports {what}; refusing to run weaker than designed")]
    Verify { what: String },
    #[error(
        "confinement is not implemented on this platform ({0}); run with --no-sandbox for development only"
    )]
    Unsupported(&'static str),
    #[cfg(target_os = "freebsd")]
    #[error(transparent)]
    FreeBsd(#[from] freebsd::FreeBsdError),
}

/// What a daemon asks of [`confine_daemon`].
#[derive(Clone, Debug)]
pub struct DaemonConfinement<'a> {
    /// The program's name, for stderr lines (`statecull-broker`).
    pub program: &'a str,
    pub plan: Plan,
    /// `--no-sandbox`: confine nothing, warn loudly.
    pub no_sandbox: bool,
}

/// The sequence both daemons run once everything is open: with `--no-sandbox` a warning on
/// stderr and in the log (no log level may hide it) and nothing else; otherwise [`confine`],
/// every weakness of the result on stderr and in the log, and one log line with the report.
/// Returns the report (None with `--no-sandbox`), e.g. for `--print-sandbox`.
pub fn confine_daemon(d: &DaemonConfinement<'_>) -> Result<Option<Report>, SandboxError> {
    // Straight to stderr too, at warning priority when that is the journal.
    let loud = |w: String| {
        use statecull_service::log::{Priority, stderr_line};
        eprintln!("{}", stderr_line(Priority::WARNING, &w));
    };
    if d.no_sandbox {
        loud(format!("{}: {NO_SANDBOX_WARNING}", d.program));
        tracing::warn!("{NO_SANDBOX_WARNING}");
        return Ok(None);
    }
    let report = confine(&d.plan)?;
    for w in report.weaknesses() {
        loud(format!("{}: WARNING: sandbox: {w}", d.program));
        tracing::warn!("sandbox: {w}");
    }
    tracing::info!(sandbox = %report.to_string().replace('\n', "; "), "confined");
    Ok(Some(report))
}

/// A loud warning for `--no-sandbox`, for the caller to log at every start.
pub const NO_SANDBOX_WARNING: &str = "*** --no-sandbox: running WITHOUT confinement: no user switch, every capability kept, no no_new_privs, no Landlock, no seccomp, no Capsicum. A compromised process keeps every power it started with. For development only; never in production. ***";

/// Confine this process for `plan.role` (see the crate documentation for the order and the
/// reasons). Linux: call while the process has a single thread. On error, exit.
pub fn confine(plan: &Plan) -> Result<Report, SandboxError> {
    if plan.role == Role::Broker && !plan.readable_paths.is_empty() {
        return Err(SandboxError::BrokerReadablePaths);
    }
    #[cfg(target_os = "linux")]
    {
        linux::confine(plan)
    }
    #[cfg(target_os = "freebsd")]
    {
        freebsd_confine(plan)
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        Err(SandboxError::Unsupported(std::env::consts::OS))
    }
}

/// Look a user up by name or numeric uid (the same rule on Linux and FreeBSD).
#[cfg(any(target_os = "linux", target_os = "freebsd"))]
pub(crate) fn lookup_user(user: &str) -> Result<nix::unistd::User, SandboxError> {
    let lookup = match user.parse::<u32>() {
        Ok(n) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(n)),
        Err(_) => nix::unistd::User::from_name(user),
    };
    lookup
        .map_err(|source| SandboxError::UserLookup { user: user.to_owned(), source })?
        .ok_or_else(|| SandboxError::UnknownUser { user: user.to_owned() })
}

/// What is in force now: read from the kernel, plus what this process applied.
pub fn current() -> Report {
    #[cfg(target_os = "linux")]
    {
        linux::current()
    }
    #[cfg(not(target_os = "linux"))]
    {
        basic_report()
    }
}

/// Ids from the process itself (platforms without `/proc/self/status`).
#[cfg(not(target_os = "linux"))]
fn basic_report() -> Report {
    let uid = nix::unistd::geteuid();
    let user =
        nix::unistd::User::from_uid(uid).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
    let groups = nix::unistd::getgroups()
        .map(|g| g.into_iter().map(nix::unistd::Gid::as_raw).collect())
        .unwrap_or_default();
    #[cfg(target_os = "freebsd")]
    let capsicum = Some(freebsd::in_capability_mode());
    #[cfg(not(target_os = "freebsd"))]
    let capsicum = None;
    Report {
        role: None,
        user,
        uid: uid.as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        groups,
        caps_effective: Vec::new(),
        caps_permitted: Vec::new(),
        caps_bounding: Vec::new(),
        caps_inheritable: Vec::new(),
        caps_ambient: Vec::new(),
        no_new_privs: false,
        landlock: "not available on this platform".to_owned(),
        seccomp: "not available on this platform".to_owned(),
        capsicum,
    }
}

/// FreeBSD: switch user, then capability mode. The caller limits every kept descriptor with
/// [`freebsd::limit`] first (the plan does not know the descriptors).
#[cfg(target_os = "freebsd")]
fn freebsd_confine(plan: &Plan) -> Result<Report, SandboxError> {
    match &plan.user {
        Some(u) => freebsd::drop_to_user(u)?,
        None if nix::unistd::geteuid().is_root() => {
            return Err(SandboxError::RootWithoutUser { role: plan.role });
        }
        None => {}
    }
    freebsd::enter_capability_mode()?;
    let mut r = basic_report();
    r.role = Some(plan.role);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined() -> Report {
        Report {
            role: Some(Role::Broker),
            user: "statecull-broker".into(),
            uid: 998,
            gid: 997,
            groups: vec![997],
            caps_effective: vec!["CAP_NET_ADMIN".into()],
            caps_permitted: vec!["CAP_NET_ADMIN".into()],
            caps_bounding: vec!["CAP_NET_ADMIN".into()],
            caps_inheritable: vec![],
            caps_ambient: vec![],
            no_new_privs: true,
            landlock: "ABI 6 ruleset on a kernel with ABI 7, fully enforced: filesystem denied"
                .into(),
            seccomp: "filter, 43 syscalls allowed".into(),
            capsicum: None,
        }
    }

    #[test]
    fn display_is_a_readable_block() {
        let text = confined().to_string();
        assert!(text.starts_with("sandbox of the broker:\n"), "{text}");
        assert!(text.contains("user:          statecull-broker (uid 998, gid 997, groups [997])"));
        assert!(text.contains("effective: CAP_NET_ADMIN\n"));
        assert!(text.contains("inheritable: none\n"));
        assert!(text.contains("no_new_privs:  yes"));
        assert!(text.contains("landlock:      ABI 6"));
        assert!(text.ends_with("seccomp:       filter, 43 syscalls allowed"), "{text}");
    }

    #[test]
    fn weaknesses_name_what_is_missing() {
        if !cfg!(target_os = "linux") {
            return;
        }
        assert!(confined().weaknesses().is_empty());
        let mut r = confined();
        r.landlock = "not supported by this kernel (not built in)".into();
        r.uid = 0;
        let w = r.weaknesses();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("Landlock is not fully enforced: not supported"));
        assert!(w[1].contains("root"));
    }

    #[test]
    fn the_warning_is_loud() {
        assert!(NO_SANDBOX_WARNING.contains("WITHOUT confinement"));
        assert!(NO_SANDBOX_WARNING.contains("never in production"));
    }

    #[test]
    fn current_reads_this_unconfined_process() {
        let r = current();
        assert_eq!(r.role, None);
        assert_eq!(r.uid, nix::unistd::geteuid().as_raw());
        if cfg!(target_os = "linux") {
            assert_eq!(r.landlock, "not applied by this process");
        }
    }

    #[test]
    fn the_broker_reads_no_file() {
        let plan = Plan {
            role: Role::Broker,
            user: None,
            readable_paths: vec!["/etc/statecull".into()],
            net_admin: true,
        };
        assert!(matches!(confine(&plan), Err(SandboxError::BrokerReadablePaths)));
    }
}
