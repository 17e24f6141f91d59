//! Shared plumbing: running commands, installing missing Debian packages, building the
//! release binaries, and kernel-wide knobs that must be put back.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub type Result<T> = std::result::Result<T, String>;

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
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() { Ok(()) } else { Err(format!("{cmd:?} failed: {status}")) }
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn require_root(what: &str) -> Result<()> {
    if is_root() {
        Ok(())
    } else {
        Err(format!(
            "{what} needs root: it creates network namespaces and fills their conntrack tables \
             (try: sudo -E cargo xtask ...)"
        ))
    }
}

pub fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(bin).is_file()))
        || Path::new("/usr/sbin").join(bin).is_file()
        || Path::new("/sbin").join(bin).is_file()
}

/// A command-line tool and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub bin: &'static str,
    pub package: &'static str,
}

pub const IP: Tool = Tool { bin: "ip", package: "iproute2" };
pub const CONNTRACK: Tool = Tool { bin: "conntrack", package: "conntrack" };

/// Install the Debian packages of missing tools (as root, with apt-get).
pub fn ensure_tools(tools: &[Tool]) -> Result<()> {
    let missing: Vec<Tool> = tools.iter().copied().filter(|t| !on_path(t.bin)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|t| t.package).collect();
    if !is_root() || !on_path("apt-get") {
        return Err(format!(
            "missing {}; install the Debian package(s): apt-get install -y {}",
            missing.iter().map(|t| t.bin).collect::<Vec<_>>().join(", "),
            packages.join(" ")
        ));
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
            return Err(format!("apt-get install -y {} failed", packages.join(" ")));
        }
    }
    match missing.iter().find(|t| !on_path(t.bin)) {
        Some(t) => Err(format!("{} still missing after installing {}", t.bin, t.package)),
        None => Ok(()),
    }
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
    ]))?;
    Ok(target_dir().join("release"))
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
    std::fs::write(path, value).map_err(|e| format!("write {value} to {}: {e}", path.display()))
}

impl KnobGuard {
    pub fn set(path: &str, value: u64) -> Result<Self> {
        let path = PathBuf::from(path);
        let original = std::fs::read_to_string(&path)
            .map_err(|e| format!("read {}: {e}", path.display()))?
            .trim()
            .to_owned();
        std::fs::create_dir_all(STATE_DIR).map_err(|e| format!("{STATE_DIR}: {e}"))?;
        let saved = state_file(&path);
        if !saved.exists() {
            std::fs::write(&saved, format!("{}\n{original}", path.display()))
                .map_err(|e| format!("{}: {e}", saved.display()))?;
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
    let mut guards = Vec::new();
    let max_path = "/proc/sys/net/netfilter/nf_conntrack_max";
    let current: u64 = std::fs::read_to_string(max_path)
        .map_err(|e| format!("{max_path}: {e} (is nf_conntrack available?)"))?
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

/// 1234567 -> "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
