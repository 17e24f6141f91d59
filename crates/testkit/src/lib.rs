//! statecull's test kit, one place for what tests in every crate need: scratch directories,
//! private network namespaces (with big conntrack tables loaded into them, feature
//! `conntrack`), daemons spawned inside them, root-only tests that skip loudly (or fail under
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
use std::process::{Child, Command, Stdio};
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

/// A broker process inside a namespace, stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
    _dir: TempDir,
}

impl BrokerProcess {
    /// Start `bin` (a broker binary) in `ns` with a fresh socket and extra flags, and wait
    /// until it accepts connections.
    pub fn start(bin: &Path, ns: &Netns, extra: &[&str]) -> io::Result<Self> {
        let dir = TempDir::new("broker")?;
        let socket = dir.path().join("broker.sock");
        let log = dir.path().join("broker.log");
        let child = ns
            .command(bin)
            .arg("--socket")
            .arg(&socket)
            .args(["--log-level", "debug"])
            .args(broker_test_args())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?)
            .spawn()?;
        let mut b = Self { child: Some(child), socket, log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&b.socket).is_err() {
            if let Some(c) = b.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                return Err(io::Error::other(format!(
                    "broker exited ({status}): {}",
                    b.log_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("broker did not start: {}", b.log_text())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }

    /// What the broker logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Open file descriptors of the broker process.
    pub fn open_fds(&self) -> io::Result<usize> {
        let pid = self.pid().ok_or_else(|| io::Error::other("broker not running"))?;
        Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn stop(&mut self) -> io::Result<std::process::ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| io::Error::other("already stopped"))?;
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop();
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

    use nix::sys::signal::{SigSet, Signal, kill};
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
    /// hook before the process exits (status 130). Call first thing in `main`, before any
    /// thread starts, so the signals are blocked everywhere and handled by one thread.
    pub fn install_signal_cleanup() -> std::io::Result<()> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        set.thread_block().map_err(std::io::Error::from)?;
        std::thread::Builder::new().name("cleanup-on-signal".into()).spawn(move || {
            let sig = set.wait().map(|s| s.as_str()).unwrap_or("a signal");
            eprintln!("\ninterrupted by {sig}; cleaning up ...");
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
