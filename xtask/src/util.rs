//! Shared plumbing: running commands, installing missing Debian packages, building the
//! release binaries, and kernel-wide knobs that must be put back.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Why a task failed. Printed as "xtask: {error}".
#[derive(Debug, thiserror::Error)]
pub enum XtaskError {
    /// A failure a message explains (a command that failed, a check that did not hold).
    #[error("{0}")]
    Msg(String),
    /// An I/O operation failed; `context` says which.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, XtaskError>;

/// A [`XtaskError::Msg`].
pub fn msg(message: impl Into<String>) -> XtaskError {
    XtaskError::Msg(message.into())
}

/// Attach what was being done to an I/O error.
pub trait IoContext<T> {
    fn context(self, what: impl Into<String>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|source| XtaskError::Io { context: what.into(), source })
    }
}

/// The workspace root (xtask lives one level down).
pub fn root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// Run a command, failing with its name and status.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().context(format!("{cmd:?}"))?;
    if status.success() { Ok(()) } else { Err(msg(format!("{cmd:?} failed: {status}"))) }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        Ok(())
    } else {
        Err(msg(format!(
            "{what} needs root: it creates network namespaces and fills their conntrack tables \
             (try: sudo -E cargo xtask ...)"
        )))
    }
}

pub fn on_path(bin: &str) -> bool {
    find_bin(bin).is_some()
}

pub use statecull_tests::tools::{CONNTRACK, IP, MODPROBE, NFT, Tool, find_bin};

/// Install the Debian packages of missing tools (as root, with apt-get).
pub fn ensure_tools(tools: &[Tool]) -> Result<()> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| !on_path(t.bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    if !is_root() || !on_path("apt-get") {
        return Err(msg(format!(
            "missing {}; install the Debian package(s): apt-get install -y {}",
            missing.iter().map(|t| t.bin).collect::<Vec<_>>().join(", "),
            packages.join(" ")
        )));
    }
    eprintln!("installing {} ...", packages.join(" "));
    let install = |pkgs: &[&str]| {
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !install(&packages) {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
        if !install(&packages) {
            return Err(msg(format!("apt-get install -y {} failed", packages.join(" "))));
        }
    }
    match missing.iter().find(|t| !on_path(t.bin)) {
        Some(t) => Err(msg(format!("{} still missing after installing {}", t.bin, t.package))),
        None => Ok(()),
    }
}

/// Present once the kernel's connection tracking is loaded.
const CONNTRACK_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

/// Make sure the kernel has connection tracking and its netlink interface. On a modular
/// kernel (stock Debian) they are modules nothing may have loaded yet: load
/// nf_conntrack_netlink (which pulls in nf_conntrack), installing kmod for `modprobe` if
/// needed. Needs root.
pub fn ensure_conntrack() -> Result<()> {
    if Path::new(CONNTRACK_MAX).exists() {
        return Ok(());
    }
    let missing = |why: String| {
        msg(format!(
            "{CONNTRACK_MAX} is missing, so this kernel has no connection tracking loaded ({why}); \
             statecull needs the kernel options CONFIG_NF_CONNTRACK (module nf_conntrack) and \
             CONFIG_NF_CT_NETLINK (module nf_conntrack_netlink), built in or as loadable modules"
        ))
    };
    ensure_tools(&[MODPROBE]).map_err(|e| missing(format!("cannot load modules: {e}")))?;
    let modprobe = find_bin(MODPROBE.bin).unwrap_or_else(|| MODPROBE.bin.into());
    eprintln!("{CONNTRACK_MAX} missing: loading nf_conntrack_netlink ...");
    let out = Command::new(&modprobe)
        .arg("nf_conntrack_netlink")
        .stdout(Stdio::null())
        .output()
        .context(format!("{}", modprobe.display()))?;
    if Path::new(CONNTRACK_MAX).exists() {
        return Ok(());
    }
    Err(missing(if out.status.success() {
        "`modprobe nf_conntrack_netlink` succeeded but did not load it".to_owned()
    } else {
        format!(
            "`modprobe nf_conntrack_netlink` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    }))
}

/// Build the shipped binaries in release mode; returns the directory holding them.
pub fn build_release() -> Result<PathBuf> {
    eprintln!("building release binaries ...");
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "statecull-broker",
        "-p",
        "statecull-cli",
        "-p",
        "statecull-engine",
    ]))?;
    Ok(target_dir().join("release"))
}

/// A release broker that has `--backend pf-model` (the tests crate's `itest-broker`, built
/// from the same `statecull_broker::cli::main` with the `model` feature); the shipped
/// `statecull-broker` has no simulator.
pub fn build_model_broker() -> Result<PathBuf> {
    eprintln!("building a release broker with the pf model ...");
    run(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "statecull-tests",
        "--bin",
        "itest-broker",
    ]))?;
    Ok(target_dir().join("release").join("itest-broker"))
}

/// Where original values of changed kernel knobs are kept until they are put back, so a run
/// that was killed is repaired by the next one.
const STATE_DIR: &str = "/run/statecull-xtask";

/// A kernel-wide knob (a /proc/sys or /sys file) raised for a benchmark and put back when
/// this guard drops, on Ctrl-C, or by the next run if this process was killed.
#[derive(Debug)]
pub struct KnobGuard {
    path: PathBuf,
    original: String,
    hook: u64,
}

/// One file per knob, holding "PATH\nORIGINAL".
fn state_file(path: &Path) -> PathBuf {
    let name: String = path
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    Path::new(STATE_DIR).join(name)
}

fn write_knob(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).context(format!("write {value} to {}", path.display()))
}

impl KnobGuard {
    pub fn set(path: &str, value: u64) -> Result<Self> {
        let path = PathBuf::from(path);
        let original = std::fs::read_to_string(&path)
            .context(format!("read {}", path.display()))?
            .trim()
            .to_owned();
        std::fs::create_dir_all(STATE_DIR).context(STATE_DIR)?;
        let saved = state_file(&path);
        if !saved.exists() {
            std::fs::write(&saved, format!("{}\n{original}", path.display()))
                .context(format!("{}", saved.display()))?;
        }
        write_knob(&path, &value.to_string())?;
        let (p, o) = (path.clone(), original.clone());
        let hook = statecull_tests::cleanup::on_interrupt(move || {
            if write_knob(&p, &o).is_ok() {
                let _ = std::fs::remove_file(state_file(&p));
                eprintln!("  restored {} = {o}", p.display());
            }
        });
        eprintln!("set {} = {value} (was {original}; put back afterwards)", path.display());
        Ok(Self { path, original, hook })
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        statecull_tests::cleanup::cancel(self.hook);
        match write_knob(&self.path, &self.original) {
            Ok(()) => {
                let _ = std::fs::remove_file(state_file(&self.path));
                eprintln!("restored {} = {}", self.path.display(), self.original);
            }
            Err(e) => eprintln!("WARNING: could not restore a kernel setting: {e}"),
        }
    }
}

/// Put back knobs left changed by a run that was killed.
pub fn restore_stale_knobs() {
    let Ok(dir) = std::fs::read_dir(STATE_DIR) else { return };
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let Some((path, value)) = text.split_once('\n') else { continue };
        if write_knob(Path::new(path), value.trim()).is_ok() {
            eprintln!("restored {path} = {} (left changed by an interrupted run)", value.trim());
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Raise `nf_conntrack_max` and the hash size so a table of `entries` fits.
pub fn size_conntrack(entries: u64, hashsize: Option<u64>) -> Result<Vec<KnobGuard>> {
    ensure_conntrack()?;
    let mut guards = Vec::new();
    let max_path = CONNTRACK_MAX;
    let current: u64 = std::fs::read_to_string(max_path)
        .context(format!("{max_path} (is nf_conntrack available?)"))?
        .trim()
        .parse()
        .unwrap_or(0);
    let want = entries + entries / 8 + 10_000;
    if current < want {
        guards.push(KnobGuard::set(max_path, want)?);
    }
    let hash_path = "/sys/module/nf_conntrack/parameters/hashsize";
    let hash_now: u64 =
        std::fs::read_to_string(hash_path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    let hash_want = hashsize.unwrap_or_else(|| entries.next_power_of_two().max(hash_now));
    if hash_now != hash_want && Path::new(hash_path).exists() {
        guards.push(KnobGuard::set(hash_path, hash_want)?);
    }
    Ok(guards)
}

pub use statecull_tests::failover::thousands;
