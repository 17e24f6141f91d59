//! statecull's test kit, one place for what tests in every crate need: scratch directories,
//! private network namespaces (with big conntrack tables loaded into them, feature
//! `conntrack`), daemons spawned inside them, child processes that never outlive a test
//! ([`ChildGuard`], [`wait_for_socket`]), root-only tests that skip loudly (or fail under
//! `STATECULL_REQUIRE_ROOT_TESTS=1`), and cleanup that also runs on Ctrl-C. Used by the
//! crates' tests, the end-to-end tests (`statecull-tests`) and `cargo xtask`.
//!
//! Every namespace is named `sc-<tag>-<pid>-<n>`, removed when its guard drops (also when a
//! test panics), and namespaces left by a killed process are removed by
//! [`remove_stale_namespaces`]. Nothing here touches the root namespace's tables.
#![forbid(unsafe_code)]

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
#[cfg(feature = "conntrack")]
use statecull_conntrack::fill::{LoadReport, TableSpec};

/// Prefix of every namespace this kit creates.
pub const NETNS_PREFIX: &str = "sc-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The unprivileged user the daemons switch to in tests (they refuse to run confined as
/// root without one). Debian's `nobody`, whose primary group is `nogroup`.
pub const TEST_USER: &str = "nobody";
pub const TEST_GROUP: &str = "nogroup";

/// `--user nobody` when running as root (where the daemons need a user to switch to);
/// nothing otherwise (they keep the invoking user and confine themselves as it).
pub fn daemon_user_args() -> Vec<&'static str> {
    if nix::unistd::geteuid().is_root() { vec!["--user", TEST_USER] } else { Vec::new() }
}

/// Broker flags for tests: a user to switch to, and a socket the engine (running as
/// `nobody` too) may use.
pub fn broker_test_args() -> Vec<&'static str> {
    let mut a = daemon_user_args();
    if nix::unistd::geteuid().is_root() {
        a.extend(["--socket-group", TEST_GROUP, "--allow-user", TEST_USER]);
    }
    a
}

/// Why a root-only test cannot run here, or `None` when it can.
pub fn root_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces and CAP_NET_ADMIN)".into());
    }
    if Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        return Some("needs `ip` from iproute2 (apt-get install -y iproute2)".into());
    }
    let conntrack = || Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists();
    if !conntrack() {
        // A modular kernel loads conntrack on demand.
        let _ = Command::new("modprobe")
            .arg("nf_conntrack_netlink")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if !conntrack() {
        return Some("needs a kernel with nf_conntrack and nf_conntrack_netlink".into());
    }
    None
}

/// Call at the top of a root test: `if skip_unless_root("name") { return; }`.
///
/// Skips loudly on stderr. With `STATECULL_REQUIRE_ROOT_TESTS=1` (set by CI) a skip is a
/// failure instead, so CI cannot pass without running these tests.
pub fn skip_unless_root(test: &str) -> bool {
    skip_if(test, root_unavailable())
}

/// Skip `test` for `why` (when there is a reason), loudly, as [`skip_unless_root`] does; for
/// tests with other needs (root without conntrack, a helper binary).
#[allow(clippy::panic)] // a test kit: failing the calling test is the point
pub fn skip_if(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else { return false };
    if std::env::var_os("STATECULL_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: {why}, but STATECULL_REQUIRE_ROOT_TESTS=1");
    }
    // Written to the real stderr, past the test harness's output capture, so a skip is
    // visible even when the test passes.
    let _ = io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
    true
}

/// Run a command to completion; a failure carries its stderr.
pub fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A private network namespace, deleted (with every process still in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `sc-<tag>-<pid>-<n>`.
    pub fn create(tag: &str) -> io::Result<Self> {
        let name = format!(
            "{NETNS_PREFIX}{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        // Whoever makes a namespace removes it also when interrupted (test binaries too).
        if let Err(e) = cleanup::install_signal_cleanup() {
            eprintln!("warning: no cleanup on Ctrl-C for namespace {name}: {e}");
        }
        run(Command::new("ip").args(["netns", "add", &name]))?;
        cleanup::register_namespace(&name);
        let ns = Self { name };
        // Loopback up: some tools expect it.
        run(ns.command("ip").args(["link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace (`ip netns exec`, which execs in place, so
    /// the child's pid is the program's pid).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `f` on a thread that has entered the namespace; sockets it opens stay in it.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> io::Result<T> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        let fd = File::open(&path)?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                Ok(f())
            })
            .join()
            .map_err(|_| io::Error::other("thread in namespace panicked"))?
        })
    }

    /// Load a generated table into the namespace's conntrack table.
    #[cfg(feature = "conntrack")]
    pub fn fill(&self, spec: &TableSpec) -> io::Result<LoadReport> {
        let report = self.enter(|| {
            statecull_conntrack::fill::load((0..spec.entries).map(|i| spec.entry(i)), &mut |_| {})
        })?;
        let report = report.map_err(|e| io::Error::other(e.to_string()))?;
        if report.failed > 0 {
            return Err(io::Error::other(format!(
                "{} of {} inserts failed: {}",
                report.failed,
                spec.entries,
                report.first_error.as_deref().unwrap_or("?")
            )));
        }
        Ok(report)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        cleanup::delete_namespace(&self.name);
        cleanup::forget_namespace(&self.name);
    }
}

/// Remove `sc-*-<pid>-<n>` namespaces whose creating process is gone (a test run or lab that
/// was killed). Namespaces of live processes are left alone.
pub fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else { continue };
        let mut parts = rest.rsplit('-');
        let (_, Some(pid)) = (parts.next(), parts.next().and_then(|p| p.parse::<i32>().ok()))
        else {
            continue;
        };
        if !process_alive(pid) {
            // Kills what still runs inside (a broker or engine of the killed run) first.
            cleanup::delete_namespace(name);
        }
    }
}

/// Is `pid` a live process (not gone, not a zombie, not exiting)?
fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name: "1234 (name) S ...".
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| !matches!(state, "Z" | "X" | "x")),
        Err(_) => false,
    }
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/statecull-<tag>-<pid>-<n>`, with the default mode (umask applied).
    pub fn new(tag: &str) -> io::Result<Self> {
        let p = std::env::temp_dir().join(format!(
            "statecull-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&p)?;
        cleanup::register_dir(&p);
        Ok(Self(p))
    }

    /// The same with exactly `mode` (e.g. 0o777 to test a directory others can write).
    pub fn with_mode(tag: &str, mode: u32) -> io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let d = Self::new(tag)?;
        std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(mode))?;
        Ok(d)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        cleanup::forget_dir(&self.0);
    }
}

/// A child process (a daemon a test started) that never outlives the test: on drop, also
/// when the test panics, it is killed with SIGKILL and reaped, or, after
/// [`terminate_on_drop`](Self::terminate_on_drop), sent SIGTERM first and given a grace
/// period to stop as it would under a service manager.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    pid: Pid,
    /// On drop: SIGTERM and this long to exit before SIGKILL; `None`: SIGKILL at once.
    term_grace: Option<Duration>,
}

impl ChildGuard {
    /// Spawn `cmd` under a guard.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        Self::new(cmd.spawn()?)
    }

    /// Spawn `cmd`, a daemon writing its standard error to `log`, and wait up to `within`
    /// until it serves on `socket` (see [`wait_for_socket`]).
    pub fn spawn_serving(
        cmd: &mut Command,
        socket: &Path,
        within: Duration,
        log: &Path,
    ) -> io::Result<Self> {
        let mut child = Self::spawn(cmd)?;
        wait_for_socket(socket, within, &mut child, log)?;
        Ok(child)
    }

    /// Guard a child already spawned.
    pub fn new(mut child: Child) -> io::Result<Self> {
        match i32::try_from(child.id()) {
            Ok(pid) => Ok(Self { child, pid: Pid::from_raw(pid), term_grace: None }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(io::Error::other(format!("pid {} out of range: {e}", child.id())))
            }
        }
    }

    /// On drop, send SIGTERM and wait up to `grace` before SIGKILL.
    #[must_use]
    pub fn terminate_on_drop(mut self, grace: Duration) -> Self {
        self.term_grace = Some(grace);
        self
    }

    /// The child's process id (also after it exited; see [`signal`](Self::signal) for a
    /// safe way to signal it).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether the child still runs (it has not exited).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait up to `within` for the child to exit; its status, or `None` if it still runs.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send `sig` to the child; refused once it has exited (its pid may be another
    /// process's by then).
    pub fn signal(&mut self, sig: Signal) -> io::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(io::Error::other(format!(
                "pid {} already exited ({status}), not sent {sig}",
                self.pid
            )));
        }
        kill(self.pid, sig).map_err(io::Error::from)
    }

    /// Send SIGTERM and wait up to `within` for the exit; its status, or `None` if the
    /// child still runs (then [`kill`](Self::kill) it, or let the guard drop). The status
    /// at once if it had exited already.
    pub fn terminate(&mut self, within: Duration) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(status));
        }
        kill(self.pid, Signal::SIGTERM).map_err(io::Error::from)?;
        Ok(self.wait_exit(within))
    }

    /// SIGKILL, unless the child has exited, and reap it; its exit status.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.child.kill()?;
        self.child.wait()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(grace) = self.term_grace
            && matches!(self.terminate(grace), Ok(Some(_)))
        {
            return;
        }
        let _ = self.kill();
    }
}

/// Wait up to `within` until `path` accepts connections, as a daemon's socket does once it
/// serves. Fails at once if `child` exits meanwhile, and at the deadline; either way with
/// what the daemon wrote to `log` (its standard error).
pub fn wait_for_socket(
    path: &Path,
    within: Duration,
    child: &mut ChildGuard,
    log: &Path,
) -> io::Result<()> {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + within;
    while UnixStream::connect(path).is_err() {
        if let Some(status) = child.child.try_wait()? {
            return Err(io::Error::other(format!(
                "pid {} exited ({status}) before {} accepted connections; its log {}:\n{}",
                child.pid,
                path.display(),
                log.display(),
                log_text()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "nothing accepted connections at {} within {within:?} (pid {} runs); its log \
                 {}:\n{}",
                path.display(),
                child.pid,
                log.display(),
                log_text()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A broker process inside a namespace, stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    child: ChildGuard,
    socket: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl BrokerProcess {
    /// How long the broker has to stop on SIGTERM before it is killed.
    const STOP_GRACE: Duration = Duration::from_secs(20);

    /// Start `bin` (a broker binary) in `ns` with a fresh socket and extra flags, and wait
    /// until it accepts connections.
    pub fn start(bin: &Path, ns: &Netns, extra: &[&str]) -> io::Result<Self> {
        let dir = TempDir::new("broker")?;
        let socket = dir.path().join("broker.sock");
        let log = dir.path().join("broker.log");
        let child = ChildGuard::spawn_serving(
            ns.command(bin)
                .arg("--socket")
                .arg(&socket)
                .args(["--log-level", "debug"])
                .args(broker_test_args())
                .args(extra)
                .stdin(Stdio::null())
                .stdout(File::create(&log)?)
                .stderr(File::create(&log)?),
            &socket,
            Duration::from_secs(20),
            &log,
        )?
        .terminate_on_drop(Self::STOP_GRACE);
        Ok(Self { child, socket, log, _dir: dir })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<i32> {
        Some(self.child.pid().as_raw())
    }

    /// What the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open file descriptors of the broker process.
    pub fn open_fds(&self) -> io::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.pid()))?.count())
    }

    /// Send SIGTERM and wait for the exit status (SIGKILL after 20 s).
    pub fn stop(&mut self) -> io::Result<ExitStatus> {
        match self.child.terminate(Self::STOP_GRACE)? {
            Some(status) => Ok(status),
            None => self.child.kill(),
        }
    }
}

/// Command-line tools the namespace tests and the lab run, and where they are.
pub mod tools {
    use std::path::PathBuf;

    /// A command-line tool and the Debian package that ships it.
    #[derive(Debug, Clone, Copy)]
    pub struct Tool {
        pub bin: &'static str,
        pub package: &'static str,
    }

    pub const IP: Tool = Tool { bin: "ip", package: "iproute2" };
    pub const CONNTRACK: Tool = Tool { bin: "conntrack", package: "conntrack" };
    pub const NFT: Tool = Tool { bin: "nft", package: "nftables" };
    pub const MODPROBE: Tool = Tool { bin: "modprobe", package: "kmod" };
    pub const SYSCTL: Tool = Tool { bin: "sysctl", package: "procps" };

    /// The tool's path: PATH, then /usr/sbin and /sbin (a non-login root shell may lack
    /// them on its PATH).
    pub fn find_bin(bin: &str) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(bin))
            .find(|p| p.is_file())
    }
}

pub mod cleanup {
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    static NAMESPACES: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static DIRS: Mutex<Vec<std::path::PathBuf>> = Mutex::new(Vec::new());
    type Hook = Box<dyn FnOnce() + Send>;
    static HOOKS: Mutex<Vec<(u64, Hook)>> = Mutex::new(Vec::new());
    static NEXT_HOOK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    pub fn register_namespace(name: &str) {
        if let Ok(mut v) = NAMESPACES.lock() {
            v.push(name.to_owned());
        }
    }

    pub(crate) fn forget_namespace(name: &str) {
        if let Ok(mut v) = NAMESPACES.lock() {
            v.retain(|n| n != name);
        }
    }

    pub(crate) fn register_dir(dir: &std::path::Path) {
        if let Ok(mut v) = DIRS.lock() {
            v.push(dir.to_owned());
        }
    }

    pub(crate) fn forget_dir(dir: &std::path::Path) {
        if let Ok(mut v) = DIRS.lock() {
            v.retain(|d| d != dir);
        }
    }

    /// Run `hook` if the process is interrupted before [`cancel`] is called with the id.
    pub fn on_interrupt(hook: impl FnOnce() + Send + 'static) -> u64 {
        let id = NEXT_HOOK.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut v) = HOOKS.lock() {
            v.push((id, Box::new(hook)));
        }
        id
    }

    pub fn cancel(id: u64) {
        if let Ok(mut v) = HOOKS.lock() {
            v.retain(|(i, _)| *i != id);
        }
    }

    /// Delete a namespace and everything running in it.
    pub fn delete_namespace(name: &str) {
        if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse() {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "del", name]).stderr(Stdio::null()).status();
    }

    /// Make SIGINT, SIGTERM and SIGHUP remove every live namespace and run every pending
    /// hook before the process exits (status 130). Idempotent; [`crate::Netns`] calls it
    /// for every process that makes a namespace (test binaries too), xtask at start.
    ///
    /// Signal handlers that wake a thread (signal-hook's self-pipe), not a mask blocked in
    /// every thread and a `sigwait`: a blocked mask is inherited by every program the
    /// process spawns (std's `Command` does not reset it), so none of them could then be
    /// stopped with SIGTERM. Handlers are reset to the default by `exec`.
    pub fn install_signal_cleanup() -> std::io::Result<()> {
        static INSTALLED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        INSTALLED
            .get_or_init(|| install().map_err(|e| e.to_string()))
            .clone()
            .map_err(std::io::Error::other)
    }

    fn install() -> std::io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([
            Signal::SIGINT as i32,
            Signal::SIGTERM as i32,
            Signal::SIGHUP as i32,
        ])?;
        std::thread::Builder::new().name("cleanup-on-signal".into()).spawn(move || {
            let Some(sig) = signals.forever().next() else { return };
            let name = Signal::try_from(sig).map_or("a signal", Signal::as_str);
            eprintln!("\ninterrupted by {name}; cleaning up ...");
            let names: Vec<String> = NAMESPACES.lock().map(|v| v.clone()).unwrap_or_default();
            for n in names {
                delete_namespace(&n);
                eprintln!("  removed network namespace {n}");
            }
            let dirs: Vec<std::path::PathBuf> = DIRS.lock().map(|v| v.clone()).unwrap_or_default();
            for d in dirs {
                let _ = std::fs::remove_dir_all(&d);
            }
            let hooks: Vec<(u64, Hook)> =
                HOOKS.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
            for (_, hook) in hooks {
                hook();
            }
            std::process::exit(130);
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c script` under a guard, its standard error to `log`.
    fn sh(script: &str, log: &Path) -> ChildGuard {
        ChildGuard::spawn(
            Command::new("sh")
                .args(["-c", script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(log).unwrap()),
        )
        .unwrap()
    }

    /// Neither running nor a zombie waiting to be reaped.
    fn gone(pid: Pid) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_child() {
        let dir = TempDir::new("guard-drop").unwrap();
        let mut p = sh("exec sleep 60", &dir.path().join("log"));
        let pid = p.pid();
        assert!(p.running());
        drop(p);
        // Reaped too: no zombie is left under our pid.
        assert!(gone(pid), "pid {pid} still there");
    }

    #[test]
    fn terminate_gives_the_status_or_none_when_sigterm_is_ignored() {
        let dir = TempDir::new("guard-term").unwrap();
        let log = dir.path().join("log");
        let mut p = sh("exec sleep 60", &log);
        let status = p.terminate(Duration::from_secs(10)).unwrap().expect("sleep stops on SIGTERM");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(15));
        assert!(p.signal(Signal::SIGTERM).is_err(), "a signal to an exited child is refused");

        // Ignores SIGTERM, says so, then waits.
        let mut p = sh("trap '' TERM; echo trapped >&2; while :; do sleep 0.05; done", &log);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log).unwrap().contains("trapped") {
            assert!(Instant::now() < deadline, "the shell never set its trap");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(p.terminate(Duration::from_millis(300)).unwrap(), None);
        assert!(p.running());
        let pid = p.pid();
        // With a grace period the drop still ends it (SIGKILL after the grace).
        drop(p.terminate_on_drop(Duration::from_millis(100)));
        assert!(gone(pid), "pid {pid} still there");
    }

    #[test]
    fn wait_for_socket_fails_with_the_log_of_a_daemon_that_exited() {
        let dir = TempDir::new("guard-exit").unwrap();
        let log = dir.path().join("log");
        let socket = dir.path().join("never.sock");
        let mut p = sh("echo 'cannot bind: reason here' >&2; exit 3", &log);
        let e = wait_for_socket(&socket, Duration::from_secs(30), &mut p, &log).unwrap_err();
        let e = e.to_string();
        assert!(e.contains("exit status: 3") && e.contains("cannot bind: reason here"), "{e}");
        assert_eq!(p.wait_exit(Duration::ZERO).and_then(|s| s.code()), Some(3));
    }

    #[test]
    fn wait_for_socket_gives_up_at_the_deadline_and_returns_once_the_socket_serves() {
        let dir = TempDir::new("guard-socket").unwrap();
        let log = dir.path().join("log");
        let socket = dir.path().join("s.sock");
        let mut p = sh("echo still starting >&2; exec sleep 60", &log);
        let started = Instant::now();
        let e = wait_for_socket(&socket, Duration::from_millis(200), &mut p, &log).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(e.to_string().contains("nothing accepted connections"), "{e}");
        assert!(e.to_string().contains("still starting"), "{e}");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        wait_for_socket(&socket, Duration::from_secs(10), &mut p, &log).unwrap();
        assert!(p.running());
    }
}
