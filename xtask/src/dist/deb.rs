//! `cargo xtask dist deb`: three Debian packages for amd64, staged as trees and built with
//! `dpkg-deb --build` (dpkg's own tool, on every Debian machine: no crates.io packager in
//! CI; cargo-deb builds one package per crate and would not share the maintainer scripts,
//! sysusers and man pages of three packages from one workspace). Like `dist freebsd`, the
//! task decides every file, mode and script itself and reads each package back.
//!
//! * `statecull`: the CLI and the shared parts: sysusers (its postinst runs
//!   systemd-sysusers and notes the accounts it created; purge removes those), the
//!   `ping_group_range` template, `statecull.8`, `statecull-policy.5`, completions,
//!   example policies.
//! * `statecull-broker` (needs `statecull`): the daemon, its unit (enabled and started),
//!   the conffile `/etc/statecull/broker.toml`, `statecull-broker.8`,
//!   `statecull-broker.toml.5`.
//! * `statecull-engine` (needs both): the daemon, its unit (enabled, started only once
//!   `/etc/statecull/policy.toml` exists: the package ships no policy, the administrator
//!   writes one from the examples; a drop-in makes boot skip it until then), the sysctl
//!   drop-in written by postinst where the range allows nobody, `statecull-engine.8`.
//!
//! Maintainer scripts are files of `dist/debian/`, following debhelper's snippets
//! (dh_installsystemd, dh_installsysusers) so they behave as any Debian service does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::read_root;
use crate::util::{self, IoContext, Result, msg, run};

/// Debian revision 1 of the workspace's version.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "-1");
pub const ARCH: &str = "amd64";
pub const MAINTAINER: &str = "statecull developers <statecull@example.invalid>";
pub const HOMEPAGE: &str = super::WWW;
/// Debian 12 (bookworm) keeps units under /lib (the usrmerge moratorium); /lib is
/// /usr/lib on every merged system, so systemd finds them either way.
pub const UNIT_DIR: &str = "/lib/systemd/system";

/// One file of a package: absolute path, mode, contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A binary package as the task builds it.
#[derive(Clone, Debug)]
pub struct DebPackage {
    pub name: &'static str,
    pub depends: Vec<String>,
    pub synopsis: &'static str,
    pub description: &'static str,
    pub files: Vec<DebFile>,
    pub conffiles: Vec<String>,
    /// postinst, prerm, postrm: from `dist/debian/<package>.<script>`.
    pub scripts: BTreeMap<&'static str, Vec<u8>>,
}

impl DebPackage {
    pub fn file_name(&self) -> String {
        format!("{}_{VERSION}_{ARCH}.deb", self.name)
    }

    /// DEBIAN/control.
    pub fn control(&self) -> String {
        let size: u64 = self.files.iter().map(|f| (f.data.len() as u64).div_ceil(1024)).sum();
        let mut c = format!(
            "Package: {}\nVersion: {VERSION}\nArchitecture: {ARCH}\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {size}\n",
            self.name
        );
        if !self.depends.is_empty() {
            c.push_str(&format!("Depends: {}\n", self.depends.join(", ")));
        }
        c.push_str(&format!(
            "Section: net\nPriority: optional\nHomepage: {HOMEPAGE}\nDescription: {}\n",
            self.synopsis
        ));
        // Paragraphs wrapped to 79 columns (lintian: extended-description-line-too-long
        // past 80), separated by " ." lines.
        for para in self.description.split("\n\n") {
            let mut line = String::new();
            for word in para.split_whitespace() {
                if !line.is_empty() && line.len() + 1 + word.len() > 78 {
                    c.push_str(&format!(" {line}\n"));
                    line.clear();
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(word);
            }
            c.push_str(&format!(" {line}\n .\n"));
        }
        // No trailing " ." line.
        c.truncate(c.len() - 3);
        c
    }
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> DebFile {
    DebFile { path: path.to_owned(), mode, data }
}

/// `gzip -9n` (what dh_compress does: best compression, no name or time stamp).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    let mut stdin = child.stdin.take().ok_or_else(|| msg("gzip: no stdin"))?;
    let data = data.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &data));
    let out = child.wait_with_output().context("gzip")?;
    writer.join().map_err(|_| msg("gzip writer panicked"))?.context("gzip: write")?;
    if !out.status.success() {
        return Err(msg("gzip -9n failed"));
    }
    Ok(out.stdout)
}

/// changelog.Debian for a package built from the tree (Debian policy 12.7 wants one).
fn changelog(name: &str, date: &str) -> String {
    format!(
        "{name} ({VERSION}) unstable; urgency=medium\n\n  * Built by cargo xtask dist deb from \
         the statecull source tree.\n\n -- {MAINTAINER}  {date}\n"
    )
}

/// RFC 5322 date of a Unix time (`date -R`), for the changelog's trailer line.
pub fn rfc2822(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] =
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Which package ships each generated page and completion, and where (Debian's paths:
/// bash-completion's directory, zsh's vendor-completions, fish's vendor_completions.d).
fn generated_path(rel: &Path) -> Option<(&'static str, String, bool)> {
    let rel = rel.to_str()?;
    let (dir, name) = rel.split_once('/')?;
    let owner = |program: &str| match program {
        "statecull-broker" => "statecull-broker",
        "statecull-engine" => "statecull-engine",
        _ => "statecull",
    };
    match dir {
        "man8" | "man5" => {
            let stem = name.rsplit_once('.')?.0;
            // A program's page goes with the program (lintian: binary-without-manpage);
            // statecull-broker.toml(5) with the broker, statecull-policy(5) with the CLI
            // that checks policies (the engine depends on it).
            let pkg =
                if stem == "statecull-broker.toml" { "statecull-broker" } else { owner(stem) };
            Some((pkg, format!("/usr/share/man/{dir}/{name}.gz"), true))
        }
        "completions" => {
            if let Some(p) = name.strip_suffix(".bash") {
                Some((owner(p), format!("/usr/share/bash-completion/completions/{p}"), false))
            } else if let Some(p) = name.strip_suffix(".fish") {
                Some((owner(p), format!("/usr/share/fish/vendor_completions.d/{name}"), false))
            } else {
                let p = name.strip_prefix('_')?;
                Some((owner(p), format!("/usr/share/zsh/vendor-completions/{name}"), false))
            }
        }
        _ => None,
    }
}

const BROKER_DESC: &str = "statecull kills exactly the connection states that went through a \
failed gateway of a multi-WAN firewall. This is its privileged half: it owns the conntrack \
table, lists and kills states for statecull-engine and for operators over a Unix socket, \
checks every request, never kills its protected prefixes, and holds no policy.

It confines itself after start-up: user statecull-broker with CAP_NET_ADMIN alone, \
no_new_privs, Landlock and a seccomp allow-list. The unit is enabled and started.";

const ENGINE_DESC: &str = "statecull kills exactly the connection states that went through a \
failed gateway of a multi-WAN firewall. This is its unprivileged half: it judges gateways \
(ICMP datagram probes, dpinger, verdicts from mwan3 or scripts), waits for routing to move, \
and has statecull-broker kill the failed gateway's states in one request.

The package ships no policy: the unit is enabled but starts once \
/etc/statecull/policy.toml exists (see README.Debian and statecull-policy(5)).";

const CLI_DESC: &str = "statecull kills exactly the connection states that went through a \
failed gateway of a multi-WAN firewall. This package has the operator's tool, statecull \
(status, dry-run plans, gateway verdicts, events, check-policy, and direct broker commands \
like conntrack -L/-D), and what both daemons share: their users and group (sysusers), man \
pages, shell completions and example policies.";

/// Programs, as built for Linux, and the shared-library dependencies of each
/// (dpkg-shlibdeps' answer, e.g. `libc6 (>= 2.34)`).
pub struct LinuxPrograms {
    pub programs: super::Programs,
    pub broker_libs: Vec<String>,
    pub engine_libs: Vec<String>,
    pub cli_libs: Vec<String>,
}

/// The three packages, from the programs, the generated pages and the tree's files.
pub fn packages(
    p: LinuxPrograms,
    pages: &[(PathBuf, Vec<u8>)],
    date: &str,
) -> Result<Vec<DebPackage>> {
    let script = |pkg: &str, which: &'static str| -> Result<(&'static str, Vec<u8>)> {
        Ok((which, read_root(&format!("dist/debian/{pkg}.{which}"))?))
    };
    let doc = |pkg: &str| -> Result<Vec<DebFile>> {
        Ok(vec![
            file(
                &format!("/usr/share/doc/{pkg}/copyright"),
                0o644,
                read_root("dist/debian/copyright")?,
            ),
            file(
                &format!("/usr/share/doc/{pkg}/changelog.Debian.gz"),
                0o644,
                gzip(changelog(pkg, date).as_bytes())?,
            ),
        ])
    };
    let version = format!("(= {VERSION})");
    let sysusers = "systemd | systemd-standalone-sysusers".to_owned();

    let mut cli = DebPackage {
        name: "statecull",
        depends: [p.cli_libs, vec![sysusers]].concat(),
        synopsis: "multi-WAN state killer: operator's tool and shared files",
        description: CLI_DESC,
        files: vec![
            file("/usr/bin/statecull", 0o755, p.programs.cli),
            file(
                "/usr/lib/sysusers.d/statecull.conf",
                0o644,
                read_root("sandbox/profiles/systemd/statecull.sysusers")?,
            ),
            file(
                "/usr/share/statecull/sysctl.d/60-statecull-ping.conf.in",
                0o644,
                read_root("sandbox/profiles/sysctl.d/60-statecull-ping.conf")?,
            ),
        ],
        conffiles: Vec::new(),
        scripts: [script("statecull", "postinst")?, script("statecull", "postrm")?].into(),
    };
    for (n, text) in super::policy_examples()? {
        cli.files.push(file(&format!("/usr/share/doc/statecull/examples/{n}"), 0o644, text));
    }
    cli.files.extend(doc("statecull")?);

    let mut broker = DebPackage {
        name: "statecull-broker",
        depends: [p.broker_libs, vec![format!("statecull {version}")]].concat(),
        synopsis: "multi-WAN state killer: privileged broker (conntrack)",
        description: BROKER_DESC,
        files: vec![
            file("/usr/sbin/statecull-broker", 0o755, p.programs.broker),
            file(
                &format!("{UNIT_DIR}/statecull-broker.service"),
                0o644,
                read_root("sandbox/profiles/systemd/statecull-broker.service")?,
            ),
            file("/etc/statecull/broker.toml", 0o644, read_root("dist/debian/broker.toml")?),
        ],
        conffiles: vec!["/etc/statecull/broker.toml".into()],
        scripts: [
            script("statecull-broker", "postinst")?,
            script("statecull-broker", "prerm")?,
            script("statecull-broker", "postrm")?,
        ]
        .into(),
    };
    broker.files.extend(doc("statecull-broker")?);

    let mut engine = DebPackage {
        name: "statecull-engine",
        depends: [
            p.engine_libs,
            vec![format!("statecull {version}"), format!("statecull-broker {version}")],
        ]
        .concat(),
        synopsis: "multi-WAN state killer: gateway watcher and planner",
        description: ENGINE_DESC,
        files: vec![
            file("/usr/sbin/statecull-engine", 0o755, p.programs.engine),
            file(
                &format!("{UNIT_DIR}/statecull-engine.service"),
                0o644,
                read_root("sandbox/profiles/systemd/statecull-engine.service")?,
            ),
            file(
                &format!("{UNIT_DIR}/statecull-engine.service.d/debian-policy.conf"),
                0o644,
                read_root("dist/debian/statecull-engine.debian-policy.conf")?,
            ),
            file(
                "/usr/share/doc/statecull-engine/README.Debian",
                0o644,
                read_root("dist/debian/README.Debian")?,
            ),
        ],
        conffiles: Vec::new(),
        scripts: [
            script("statecull-engine", "postinst")?,
            script("statecull-engine", "prerm")?,
            script("statecull-engine", "postrm")?,
        ]
        .into(),
    };
    engine.files.extend(doc("statecull-engine")?);

    let mut all = vec![cli, broker, engine];
    for (rel, data) in pages {
        let (owner, path, compress) = generated_path(rel)
            .ok_or_else(|| msg(format!("xtask man wrote {}: which package?", rel.display())))?;
        let data = if compress { gzip(data)? } else { data.clone() };
        let pkg = all
            .iter_mut()
            .find(|p| p.name == owner)
            .ok_or_else(|| msg(format!("{}: no package {owner}", rel.display())))?;
        pkg.files.push(file(&path, 0o644, data));
    }
    let overrides = util::root().join("dist/debian/lintian-overrides");
    for pkg in &mut all {
        let o = overrides.join(pkg.name);
        if o.exists() {
            let data = std::fs::read(&o).context(format!("read {}", o.display()))?;
            pkg.files.push(file(
                &format!("/usr/share/lintian/overrides/{}", pkg.name),
                0o644,
                data,
            ));
        }
        pkg.files.sort_by(|a, b| a.path.cmp(&b.path));
    }
    Ok(all)
}

/// Stage a package as a tree and build it with `dpkg-deb --root-owner-group`; returns the
/// `.deb`'s path.
pub fn build_package(p: &DebPackage, stage: &Path, out: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let root = stage.join(p.name);
    if root.exists() {
        std::fs::remove_dir_all(&root).context(format!("remove {}", root.display()))?;
    }
    let set_mode = |path: &Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .context(format!("chmod {}", path.display()))
    };
    let mkdirs = |dir: &Path| -> Result<()> {
        std::fs::create_dir_all(dir).context(format!("create {}", dir.display()))?;
        let mut d = dir;
        while d.starts_with(&root) {
            set_mode(d, 0o755)?;
            match d.parent() {
                Some(parent) => d = parent,
                None => break,
            }
        }
        Ok(())
    };
    let mut md5 = Vec::new();
    for f in &p.files {
        let rel = f.path.trim_start_matches('/');
        let path = root.join(rel);
        mkdirs(path.parent().ok_or_else(|| msg(format!("{}: no directory", f.path)))?)?;
        std::fs::write(&path, &f.data).context(format!("write {}", path.display()))?;
        set_mode(&path, f.mode)?;
        md5.push(rel.to_owned());
    }
    let debian = root.join("DEBIAN");
    mkdirs(&debian)?;
    let write = |name: &str, data: &[u8], mode: u32| -> Result<()> {
        let path = debian.join(name);
        std::fs::write(&path, data).context(format!("write {}", path.display()))?;
        set_mode(&path, mode)
    };
    write("control", p.control().as_bytes(), 0o644)?;
    if !p.conffiles.is_empty() {
        write("conffiles", format!("{}\n", p.conffiles.join("\n")).as_bytes(), 0o644)?;
    }
    for (name, body) in &p.scripts {
        write(name, body, 0o755)?;
    }
    let sums = Command::new("md5sum").args(&md5).current_dir(&root).output().context("md5sum")?;
    if !sums.status.success() {
        return Err(msg("md5sum failed"));
    }
    write("md5sums", &sums.stdout, 0o644)?;
    std::fs::create_dir_all(out).context(format!("create {}", out.display()))?;
    let deb = out.join(p.file_name());
    let status = Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&root)
        .arg(&deb)
        .stdout(Stdio::null())
        .status()
        .context("dpkg-deb (Debian: dpkg)")?;
    if !status.success() {
        return Err(msg(format!("dpkg-deb --build {} failed", root.display())));
    }
    std::fs::remove_dir_all(&root).context(format!("remove {}", root.display()))?;
    Ok(deb)
}

fn dpkg_deb(args: &[&str], deb: &Path) -> std::result::Result<String, String> {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-deb {} {}: {}",
            args.join(" "),
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout).map_err(|_| format!("dpkg-deb {}: not UTF-8", args.join(" ")))
}

/// Read a built package back with dpkg-deb and check it against what was meant to go in:
/// control fields, the file list with modes and owners, conffiles, maintainer scripts byte
/// for byte (and `sh -n`), md5sums of every file. Returns a one-line summary.
pub fn verify(deb: &Path, expected: &DebPackage) -> std::result::Result<String, String> {
    let info = dpkg_deb(&["--info"], deb)?;
    let control = dpkg_deb(&["--field"], deb)?;
    let field = |name: &str| -> std::result::Result<String, String> {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_owned))
            .ok_or_else(|| format!("control has no {name}"))
    };
    for (name, want) in [
        ("Package", expected.name.to_owned()),
        ("Version", VERSION.to_owned()),
        ("Architecture", ARCH.to_owned()),
        ("Maintainer", MAINTAINER.to_owned()),
        ("Section", "net".to_owned()),
        ("Priority", "optional".to_owned()),
        ("Description", expected.synopsis.to_owned()),
    ] {
        let got = field(name)?;
        if got != want {
            return Err(format!("{name} is {got:?}, not {want:?}"));
        }
    }
    let depends =
        if expected.depends.is_empty() { None } else { Some(expected.depends.join(", ")) };
    if field("Depends").ok() != depends {
        return Err(format!("Depends is {:?}, not {depends:?}", field("Depends").ok()));
    }
    // The data tarball: every file with its mode and owner, and nothing else.
    let contents = dpkg_deb(&["--contents"], deb)?;
    let mut files = Vec::new();
    for line in contents.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(perm), Some(owner), Some(path)) = (cols.first(), cols.get(1), cols.get(5)) else {
            return Err(format!("--contents: cannot read {line:?}"));
        };
        if *owner != "root/root" {
            return Err(format!("{path}: owned by {owner}"));
        }
        if perm.starts_with('d') {
            if *perm != "drwxr-xr-x" {
                return Err(format!("{path}: directory mode {perm}"));
            }
            continue;
        }
        files.push(((*path).trim_start_matches('.').to_owned(), (*perm).to_owned()));
    }
    let want: Vec<(String, String)> =
        expected.files.iter().map(|f| (f.path.clone(), mode_string(f.mode))).collect();
    if files != want {
        return Err(format!("files {files:?}, expected {want:?}"));
    }
    // The control tarball, extracted.
    // Unique per call: tests verify the same package from several threads.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "statecull-deb-verify-{}-{call}-{}",
        std::process::id(),
        expected.name
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let extracted = Command::new("dpkg-deb")
        .arg("--control")
        .arg(deb)
        .arg(&dir)
        .status()
        .map_err(|e| format!("dpkg-deb --control: {e}"))?;
    let result = (|| {
        if !extracted.success() {
            return Err("dpkg-deb --control failed".to_owned());
        }
        let read = |name: &str| std::fs::read(dir.join(name)).ok();
        let conffiles = read("conffiles").map(|c| String::from_utf8_lossy(&c).into_owned());
        let want = (!expected.conffiles.is_empty())
            .then(|| format!("{}\n", expected.conffiles.join("\n")));
        if conffiles != want {
            return Err(format!("conffiles {conffiles:?}, expected {want:?}"));
        }
        for c in &expected.conffiles {
            if !expected.files.iter().any(|f| &f.path == c) || !c.starts_with("/etc/") {
                return Err(format!("conffile {c} is not a file of the package under /etc"));
            }
        }
        for name in ["preinst", "postinst", "prerm", "postrm", "config", "triggers"] {
            let got = read(name);
            let want = expected.scripts.get(name).cloned();
            if got != want {
                return Err(format!("maintainer script {name} differs from dist/debian/"));
            }
            if got.is_some() {
                let ok = Command::new("sh")
                    .arg("-n")
                    .arg(dir.join(name))
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!("{name}: sh -n fails"));
                }
            }
        }
        let sums = read("md5sums").ok_or("no md5sums")?;
        let sums = String::from_utf8_lossy(&sums);
        if sums.lines().count() != expected.files.len() {
            return Err(format!(
                "md5sums has {} lines for {} files",
                sums.lines().count(),
                expected.files.len()
            ));
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    let size = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Installed-Size: "))
        .unwrap_or("?")
        .to_owned();
    Ok(format!("{} files, Installed-Size {size} KiB", expected.files.len()))
}

/// `ls -l` style mode of a regular file.
fn mode_string(mode: u32) -> String {
    let mut s = String::from("-");
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// dpkg-shlibdeps' dependencies of one program (run in a scratch directory with the
/// minimal debian/control it needs).
pub fn shlibdeps(program: &Path, scratch: &Path) -> Result<Vec<String>> {
    let debian = scratch.join("debian");
    std::fs::create_dir_all(&debian).context(format!("create {}", debian.display()))?;
    std::fs::write(
        debian.join("control"),
        "Source: statecull\n\nPackage: statecull\nArchitecture: any\n",
    )
    .context("write debian/control")?;
    let out = Command::new("dpkg-shlibdeps")
        .args(["-O", "-e"])
        .arg(program)
        .current_dir(scratch)
        .output()
        .map_err(|e| msg(format!("dpkg-shlibdeps (Debian: dpkg-dev): {e}")))?;
    if !out.status.success() {
        return Err(msg(format!(
            "dpkg-shlibdeps {}: {}",
            program.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let deps = text
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .ok_or_else(|| msg(format!("dpkg-shlibdeps {}: no shlibs:Depends", program.display())))?;
    Ok(deps.split(", ").map(str::to_owned).collect())
}

/// Where the packages go unless `--out` says otherwise.
pub fn default_out() -> PathBuf {
    util::target_dir().join("dist").join("deb")
}

/// The whole task: build (unless `no_build`), strip as dh_strip does, find the library
/// dependencies, write the three packages and read each back. Returns their paths.
pub fn dist_deb(no_build: bool, out: Option<PathBuf>) -> Result<Vec<PathBuf>> {
    let started = std::time::Instant::now();
    let bin_dir =
        if no_build { util::target_dir().join("release") } else { util::build_release()? };
    let out = out.unwrap_or_else(default_out);
    let stage = out.join("stage");
    std::fs::create_dir_all(&stage).context(format!("create {}", stage.display()))?;
    let mut libs = Vec::new();
    let mut programs = Vec::new();
    for name in ["statecull-broker", "statecull-engine", "statecull"] {
        let p = bin_dir.join(name);
        if !p.exists() {
            return Err(msg(format!(
                "{} is missing (cargo xtask dist deb builds it)",
                p.display()
            )));
        }
        let stripped = stage.join("bin").join(name);
        std::fs::create_dir_all(stage.join("bin")).context("create the stage's bin")?;
        run(Command::new("strip")
            .args(["--remove-section=.comment", "--remove-section=.note", "-o"])
            .arg(&stripped)
            .arg(&p))
        .map_err(|e| msg(format!("{e} (strip is in binutils)")))?;
        libs.push(shlibdeps(&stripped, &stage.join("shlibs"))?);
        programs.push(std::fs::read(&stripped).context(format!("read {}", stripped.display()))?);
    }
    let [broker, engine, cli] = <[Vec<u8>; 3]>::try_from(programs).map_err(|_| msg("programs"))?;
    let [broker_libs, engine_libs, cli_libs] =
        <[Vec<String>; 3]>::try_from(libs).map_err(|_| msg("libs"))?;
    let epoch =
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let pkgs = packages(
        LinuxPrograms {
            programs: super::Programs { broker, engine, cli },
            broker_libs,
            engine_libs,
            cli_libs,
        },
        &crate::man::render()?,
        &rfc2822(epoch),
    )?;
    let mut paths = Vec::new();
    for p in &pkgs {
        let deb = build_package(p, &stage, &out)?;
        let summary = verify(&deb, p).map_err(|e| msg(format!("{}: {e}", deb.display())))?;
        println!("{}: {summary}; Depends: {}", deb.display(), p.depends.join(", "));
        paths.push(deb);
    }
    std::fs::remove_dir_all(&stage).context(format!("remove {}", stage.display()))?;
    println!("dist deb: {:.1} s", started.elapsed().as_secs_f64());
    Ok(paths)
}

/// lintian on the packages: fails on any error or warning that `dist/debian/lintian-overrides`
/// does not override (each override there says why).
pub fn lintian(debs: &[PathBuf]) -> Result<()> {
    run(Command::new("lintian").args(["--fail-on", "error,warning", "--display-info"]).args(debs))
        .map_err(|e| msg(format!("{e} (apt-get install lintian)")))
}

#[cfg(test)]
#[path = "deb_tests.rs"]
mod tests;
