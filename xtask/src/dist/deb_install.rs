//! `cargo xtask dist deb --install-check` (root; CI runs it): install the three packages on
//! this machine with dpkg, check what an operator relies on, purge them, and check that
//! nothing is left: files, the accounts the installation created, unit symlinks and
//! deb-systemd-helper state, the sysctl drop-in, `/etc/statecull`, `/var/lib/statecull`.
//!
//! Nothing touches the host's tables: the broker's `--check` (a conntrack probe) runs in a
//! network namespace of its own (`unshare --net`), and so does dpkg, so the engine
//! postinst's `sysctl -p` of `ping_group_range` changes only that throwaway namespace
//! (the file it writes is on the host's disk and checked, then purged).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, Result, msg};

const PACKAGES: [&str; 3] = ["statecull-engine", "statecull-broker", "statecull"];
const ACCOUNTS: [(&str, &str); 4] = [
    ("passwd", "statecull"),
    ("passwd", "statecull-broker"),
    ("group", "statecull"),
    ("group", "statecull-broker"),
];
const PING_CONF: &str = "/etc/sysctl.d/60-statecull-ping.conf";

fn output(cmd: &mut Command) -> std::result::Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn account_exists(db: &str, name: &str) -> bool {
    Command::new("getent").args([db, name]).output().is_ok_and(|o| o.status.success())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout) != "not-installed")
}

/// Paths statecull's scripts or deb-systemd-helper may create outside the packages' lists.
fn side_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        ["/etc/statecull", "/var/lib/statecull", PING_CONF].iter().map(PathBuf::from).collect();
    for unit in ["statecull-broker.service", "statecull-engine.service"] {
        for dir in [
            "/etc/systemd/system/multi-user.target.wants",
            "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants",
            "/var/lib/systemd/deb-systemd-helper-masked",
            "/etc/systemd/system",
        ] {
            v.push(Path::new(dir).join(unit));
        }
        v.push(
            Path::new("/var/lib/systemd/deb-systemd-helper-enabled")
                .join(format!("{unit}.dsh-also")),
        );
    }
    v
}

/// What must hold while installed.
fn check_installed(before: &[bool]) -> std::result::Result<(), String> {
    for (db, name) in ACCOUNTS {
        if !account_exists(db, name) {
            return Err(format!("{db} {name} missing after installation"));
        }
    }
    let conf =
        output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "statecull-broker"]))?;
    if !conf.contains("/etc/statecull/broker.toml ") {
        return Err(format!("statecull-broker's conffiles: {conf:?}"));
    }
    let enabled = Path::new("/etc/systemd/system/multi-user.target.wants");
    for unit in ["statecull-broker.service", "statecull-engine.service"] {
        if std::fs::symlink_metadata(enabled.join(unit)).is_err() {
            return Err(format!("{unit} is not enabled ({} has no link)", enabled.display()));
        }
    }
    for path in [
        "/usr/share/man/man8/statecull.8.gz",
        "/usr/share/man/man8/statecull-broker.8.gz",
        "/usr/share/man/man8/statecull-engine.8.gz",
        "/usr/share/man/man5/statecull-policy.5.gz",
        "/usr/share/man/man5/statecull-broker.toml.5.gz",
        "/usr/share/bash-completion/completions/statecull",
        "/usr/share/zsh/vendor-completions/_statecull",
        "/usr/share/fish/vendor_completions.d/statecull.fish",
    ] {
        let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
        if meta.len() < 100 {
            return Err(format!("{path}: only {} bytes", meta.len()));
        }
        if path.contains("/man/") {
            // man-db reads it and groff finds nothing to warn about.
            let out = output(
                Command::new("man").args(["--warnings", "-l", path]).env("MANPAGER", "cat"),
            )?;
            if out.len() < 200 {
                return Err(format!("man -l {path}: {out:?}"));
            }
        }
    }
    // systemd accepts the installed units with the engine's drop-in (verify prints nothing
    // when all is well; its debug dump names every drop-in it loaded).
    let units = [
        "/lib/systemd/system/statecull-broker.service",
        "/lib/systemd/system/statecull-engine.service",
    ];
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(units)
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"))?;
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() || !said.trim().is_empty() {
        return Err(format!("systemd-analyze verify of the installed units: {said}"));
    }
    let debug = Command::new("systemd-analyze")
        .args(["verify", "--man=no", units[1]])
        .env("SYSTEMD_LOG_LEVEL", "debug")
        .output()
        .map_err(|e| format!("systemd-analyze: {e}"))?;
    let dump = format!(
        "{}{}",
        String::from_utf8_lossy(&debug.stdout),
        String::from_utf8_lossy(&debug.stderr)
    );
    if !dump.contains("statecull-engine.service.d/debian-policy.conf") {
        return Err("systemd does not load statecull-engine.service.d/debian-policy.conf".into());
    }
    // The programs work as installed: the broker probes conntrack (in a namespace of its
    // own), the CLI checks an installed example.
    let check = output(Command::new("unshare").args([
        "--net",
        "/usr/sbin/statecull-broker",
        "--config",
        "/etc/statecull/broker.toml",
        "--check",
    ]))?;
    println!("statecull-broker --check:\n{}", check.trim_end());
    let policy =
        output(Command::new("/usr/bin/statecull").args([
            "check-policy",
            "/usr/share/doc/statecull/examples/linux-mwan-three-wan.toml",
        ]))?;
    println!("statecull check-policy: {} lines of explanation", policy.lines().count());
    output(Command::new("/usr/sbin/statecull-engine").arg("--version"))?;
    // Where the range allowed nobody, postinst wrote the drop-in with the group's gid.
    let range_was_empty = before.last().copied().unwrap_or(false);
    if range_was_empty {
        let gid = output(Command::new("getent").args(["group", "statecull"]))?;
        let gid = gid.trim().split(':').nth(2).unwrap_or("?").to_owned();
        let conf = std::fs::read_to_string(PING_CONF).map_err(|e| format!("{PING_CONF}: {e}"))?;
        if !conf.contains(&format!("\nnet.ipv4.ping_group_range = {gid} {gid}\n")) {
            return Err(format!("{PING_CONF} does not allow gid {gid}"));
        }
    }
    Ok(())
}

/// The administrator's edit of the conffile survives installing the packages again (the
/// path of an upgrade's scripts: `configure` with the old version), and the accounts are
/// not recorded twice.
fn reinstall_keeps_changes(debs: &[PathBuf]) -> std::result::Result<(), String> {
    let conf = "/etc/statecull/broker.toml";
    let edit = "max_connections = 12 # the administrator's\n";
    let mut text = std::fs::read_to_string(conf).map_err(|e| format!("{conf}: {e}"))?;
    text.push_str(edit);
    std::fs::write(conf, &text).map_err(|e| format!("{conf}: {e}"))?;
    output(
        Command::new("unshare")
            .args(["--net", "dpkg", "-i", "--force-confold"])
            .args(debs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    let after = std::fs::read_to_string(conf).map_err(|e| format!("{conf}: {e}"))?;
    if !after.ends_with(edit) {
        return Err(format!("reinstalling replaced the edited {conf}"));
    }
    let created = "/var/lib/statecull/accounts-created";
    let list = std::fs::read_to_string(created).unwrap_or_default();
    let mut lines: Vec<&str> = list.lines().collect();
    let n = lines.len();
    lines.sort_unstable();
    lines.dedup();
    if lines.len() != n {
        return Err(format!("{created} lists an account twice: {list:?}"));
    }
    Ok(())
}

/// Install, check, purge, check again. Refuses to run where statecull is installed or its
/// side files exist (an operator's installation is never touched).
pub fn install_check(debs: &[PathBuf]) -> Result<()> {
    util::require_root("dist deb --install-check (dpkg -i)")?;
    util::ensure_conntrack()?;
    let started = std::time::Instant::now();
    if let Some(p) = PACKAGES.iter().find(|p| installed(p)) {
        return Err(msg(format!(
            "{p} is installed here already; the check installs and purges it"
        )));
    }
    if let Some(p) = side_paths().iter().find(|p| std::fs::symlink_metadata(p).is_ok()) {
        return Err(msg(format!("{} exists before installation; remove it first", p.display())));
    }
    let accounts_before: Vec<bool> = ACCOUNTS.iter().map(|(db, n)| account_exists(db, n)).collect();
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let nums: Vec<i64> = range.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    let range_empty = matches!(nums.as_slice(), [lo, hi] if lo > hi);
    let mut before = accounts_before.clone();
    before.push(range_empty);

    let mut dpkg = Command::new("unshare");
    dpkg.args(["--net", "dpkg", "-i"]).args(debs).env("DEBIAN_FRONTEND", "noninteractive");
    let installed_ok = output(&mut dpkg);
    let files: Vec<String> = PACKAGES
        .iter()
        .filter_map(|p| output(Command::new("dpkg-query").args(["-L", p])).ok())
        .flat_map(|l| l.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| !m.is_dir()))
        .collect();
    let checked = installed_ok
        .and_then(|_| check_installed(&before))
        .and_then(|()| reinstall_keeps_changes(debs));
    let mut purge = Command::new("unshare");
    purge.args(["--net", "dpkg", "--purge"]).args(PACKAGES);
    let purged = output(&mut purge);
    let install_secs = started.elapsed().as_secs_f64();
    checked.map_err(|e| msg(format!("installed packages: {e}")))?;
    purged.map_err(msg)?;

    let mut left: Vec<String> = files.into_iter().filter(|p| Path::new(p).exists()).collect();
    left.extend(
        side_paths()
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_ok())
            .map(|p| p.display().to_string()),
    );
    for ((db, name), existed) in ACCOUNTS.iter().zip(&accounts_before) {
        if !existed && account_exists(db, name) {
            left.push(format!("{db} entry {name}"));
        }
    }
    for p in PACKAGES {
        if installed(p) {
            left.push(format!("package {p} (dpkg status)"));
        }
    }
    if !left.is_empty() {
        return Err(msg(format!("left behind after purge:\n{}", left.join("\n"))));
    }
    println!(
        "installed, checked and purged the three packages in {install_secs:.1} s; nothing left \
         (files, accounts, unit links, deb-systemd-helper state, sysctl drop-in)"
    );
    Ok(())
}
