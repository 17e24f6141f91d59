//! Private network namespaces for root-only tests (shared with `probe.rs`'s tests).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why a root test cannot run here, if it cannot.
fn unavailable() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    let mut ip = Command::new("ip");
    ip.arg("-V").stdout(Stdio::null()).stderr(Stdio::null());
    if !ip.status().is_ok_and(|s| s.success()) {
        return Some("needs `ip` from iproute2");
    }
    None
}

/// Print a skip past the harness's capture, or fail under
/// `STATECULL_REQUIRE_ROOT_TESTS=1` (as the project's other root tests do).
pub(crate) fn skip(test: &str, why: &str) {
    if std::env::var_os("STATECULL_REQUIRE_ROOT_TESTS").is_some_and(|v| v == "1") {
        panic!("{test}: {why}, but STATECULL_REQUIRE_ROOT_TESTS=1");
    }
    let _ = std::io::stderr().write_all(format!("SKIPPED {test}: {why}\n").as_bytes());
}

/// A private network namespace `sc-<tag>-<pid>-<n>`, deleted on drop (also when the test
/// panics). The name follows the tests crate's kit, whose stale-namespace cleanup
/// therefore covers these too.
#[derive(Debug)]
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    /// `None` (after printing SKIPPED) when the test cannot run here.
    pub(crate) fn create(test: &str, tag: &str) -> Option<Self> {
        if let Some(why) = unavailable() {
            skip(test, why);
            return None;
        }
        let name =
            format!("sc-{tag}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS ARGS...`, which must succeed.
    pub(crate) fn ip(&self, args: &[&str]) {
        ip_in(&self.name, args);
    }

    /// A program run inside the namespace, which must succeed.
    pub(crate) fn exec(&self, program: &str, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", &self.name, program]).args(args));
    }

    /// Run `f` on a thread that entered the namespace, handing it a current-thread
    /// runtime of its own: sockets opened there belong to the namespace.
    pub(crate) fn run_in<T: Send>(
        &self,
        f: impl FnOnce(&tokio::runtime::Runtime) -> T + Send,
    ) -> T {
        let fd = File::open(format!("/run/netns/{}", self.name)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let rt =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                f(&rt)
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `ip -n NAME ARGS...`, which must succeed: for a thread that cannot borrow the [`Netns`].
pub(crate) fn ip_in(name: &str, args: &[&str]) {
    run(Command::new("ip").args(["-n", name]).args(args));
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
