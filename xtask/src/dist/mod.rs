//! `cargo xtask dist freebsd`: FreeBSD binaries linked with cargo-zigbuild (zig supplies
//! FreeBSD's C library stubs and start files), three pkg(8) packages and a port.
//!
//! * `statecull-broker`: the privileged half, its rc.d script and `broker.toml.sample`;
//!   creates group `statecull` and user `statecull-broker` with pw(8).
//! * `statecull-engine`: the unprivileged half, its rc.d script, `policy.toml.sample` (the
//!   pfSense two-WAN example) and the example policies; creates group and user `statecull`;
//!   depends on `statecull-broker` (it kills nothing without one on the same host).
//! * `statecull`: the operator's CLI alone. Separate because it is useful without the engine
//!   (`statecull broker ...`, `check-policy` on a workstation) and because the Debian
//!   packages of the Linux issue split the same way: one name, one set of files, per OS.
//!
//! Every package is read back ([`read`]) and checked before the task succeeds: manifests,
//! sums, sizes, the rc.d scripts byte for byte, and FreeBSD ELF programs.

pub mod deb;
pub mod deb_install;
pub mod pkg;
pub mod read;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{self, IoContext, Result, msg, run};
use pkg::{Package, PkgDep, PkgFile};

pub const TARGET: &str = "x86_64-unknown-freebsd";
/// What the packages are built for: zig links against FreeBSD 14's C library.
pub const ABI: &str = "FreeBSD:14:amd64";
pub const ARCH: &str = "freebsd:14:x86:64";
pub const PREFIX: &str = "/usr/local";
pub const ORIGIN: &str = "sysutils/statecull";
/// Cargo.toml's `repository`; set both when the project has a public home.
pub const WWW: &str = "https://example.invalid/statecull";
/// Placeholder address until the project has one (pkg requires the field).
pub const MAINTAINER: &str = "statecull@example.invalid";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The three programs, as built for FreeBSD.
pub struct Programs {
    pub broker: Vec<u8>,
    pub engine: Vec<u8>,
    pub cli: Vec<u8>,
}

/// `cargo zigbuild` on PATH (pip install cargo-zigbuild ziglang; .ci/run does it).
pub fn have_zigbuild() -> bool {
    Command::new("cargo-zigbuild")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Link the three release binaries for FreeBSD; returns their directory.
pub fn build() -> Result<PathBuf> {
    if !have_zigbuild() {
        return Err(msg("cargo-zigbuild is not on PATH: python3 -m venv VENV && VENV/bin/pip \
             install ziglang cargo-zigbuild, then put VENV/bin first on PATH (zig is found \
             through that venv's python3)"));
    }
    let added = Command::new("rustup").args(["target", "add", TARGET]).status();
    if !added.is_ok_and(|s| s.success()) {
        return Err(msg(format!("rustup target add {TARGET} failed")));
    }
    run(util::cargo().args([
        "zigbuild",
        "--release",
        "--locked",
        "--target",
        TARGET,
        "-p",
        "statecull-broker",
        "-p",
        "statecull-engine",
        "-p",
        "statecull-cli",
    ]))?;
    Ok(util::target_dir().join(TARGET).join("release"))
}

/// A file of the source tree, by its path from the root.
pub(crate) fn read_root(rel: &str) -> Result<Vec<u8>> {
    let path = util::root().join(rel);
    std::fs::read(&path).context(format!("read {}", path.display()))
}

/// The example policies (`policy/examples/*.toml`) as (file name, contents), sorted by
/// name: the FreeBSD and the Debian packages both ship them.
pub(crate) fn policy_examples() -> Result<Vec<(String, Vec<u8>)>> {
    let examples = util::root().join("policy/examples");
    let mut names: Vec<String> = std::fs::read_dir(&examples)
        .context(format!("read {}", examples.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| {
            let text = read_root(&format!("policy/examples/{n}"))?;
            Ok((n, text))
        })
        .collect()
}

fn text(rel: &str) -> Result<String> {
    String::from_utf8(read_root(rel)?).map_err(|_| msg(format!("{rel} is not UTF-8")))
}

fn file(path: &str, mode: u32, data: Vec<u8>) -> PkgFile {
    PkgFile { path: format!("{PREFIX}/{path}"), mode, data }
}

/// pre-install: the group and user, created the way ports' USERS/GROUPS do (pw(8), honouring
/// PKG_ROOTDIR; existing accounts are kept). No fixed UID/GID: those are assigned in the
/// ports tree's UIDs/GIDs files when a port is committed.
fn create_accounts(user: &str, gecos: &str, in_group: bool) -> String {
    let group_flag = if in_group { " -g statecull" } else { "" };
    format!(
        r#"if [ -n "${{PKG_ROOTDIR}}" ] && [ "${{PKG_ROOTDIR}}" != "/" ]; then
	PW="/usr/sbin/pw -R ${{PKG_ROOTDIR}}"
else
	PW=/usr/sbin/pw
fi
if ! ${{PW}} groupshow statecull >/dev/null 2>&1; then
	echo "===> Creating group statecull."
	${{PW}} groupadd statecull || exit 1
fi
if ! ${{PW}} usershow {user} >/dev/null 2>&1; then
	echo "===> Creating user {user}."
	${{PW}} useradd {user}{group_flag} -c "{gecos}" -d /nonexistent -s /usr/sbin/nologin -h - || exit 1
fi
"#
    )
}

/// post-install / pre-deinstall for `@sample`-style configuration: the sample is copied to
/// the real name when that does not exist, and the real file is removed on deinstall only
/// if it was never changed.
fn sample_scripts(rel: &str) -> (String, String) {
    let f = format!("${{PKG_ROOTDIR}}${{PKG_PREFIX}}/{rel}");
    (
        format!("if [ ! -f \"{f}\" ]; then\n\tcp -p \"{f}.sample\" \"{f}\"\nfi\n"),
        format!("if cmp -s \"{f}\" \"{f}.sample\"; then\n\trm -f \"{f}\"\nfi\n"),
    )
}

fn keep_user_note(user: &str) -> String {
    format!(
        "echo \"==> The user {user} and the group statecull are kept; remove them with \
         'pw userdel {user}' and 'pw groupdel statecull' when nothing uses them.\"\n"
    )
}

fn base(name: &str, comment: &str, desc: &str) -> Package {
    Package {
        name: name.into(),
        origin: ORIGIN.into(),
        version: VERSION.into(),
        comment: comment.into(),
        desc: desc.into(),
        maintainer: MAINTAINER.into(),
        www: WWW.into(),
        abi: ABI.into(),
        arch: ARCH.into(),
        prefix: PREFIX.into(),
        licenses: vec!["BSD2CLAUSE".into()],
        categories: vec!["sysutils".into(), "net".into()],
        deps: Vec::new(),
        files: Vec::new(),
        directories: Vec::new(),
        scripts: BTreeMap::new(),
        users: Vec::new(),
        groups: vec!["statecull".into()],
    }
}

/// The three packages, from the programs and the tree's files.
pub fn packages(programs: Programs) -> Result<Vec<Package>> {
    let mut broker = base(
        "statecull-broker",
        "Privileged half of statecull: lists and kills pf states",
        &text("dist/freebsd/broker.pkg-descr")?,
    );
    broker.users = vec!["statecull-broker".into()];
    broker.files = vec![
        file("sbin/statecull-broker", 0o555, programs.broker),
        file(
            "etc/rc.d/statecull_broker",
            0o555,
            read_root("sandbox/profiles/rc.d/statecull_broker")?,
        ),
        file(
            "etc/statecull/broker.toml.sample",
            0o644,
            read_root("dist/freebsd/broker.toml.sample")?,
        ),
        file(
            "share/doc/statecull-broker/deployment.md",
            0o644,
            read_root("sandbox/profiles/README.md")?,
        ),
    ];
    broker.directories =
        vec![format!("{PREFIX}/etc/statecull"), format!("{PREFIX}/share/doc/statecull-broker")];
    let (install, deinstall) = sample_scripts("etc/statecull/broker.toml");
    broker.scripts.insert(
        "pre-install".into(),
        create_accounts("statecull-broker", "statecull broker", false),
    );
    broker.scripts.insert("post-install".into(), install);
    broker.scripts.insert("pre-deinstall".into(), deinstall);
    broker.scripts.insert("post-deinstall".into(), keep_user_note("statecull-broker"));

    let mut engine = base(
        "statecull-engine",
        "Unprivileged half of statecull: judges gateways, decides which states die",
        &text("dist/freebsd/engine.pkg-descr")?,
    );
    engine.users = vec!["statecull".into()];
    engine.deps = vec![PkgDep {
        name: "statecull-broker".into(),
        origin: ORIGIN.into(),
        version: VERSION.into(),
    }];
    engine.files = vec![
        file("sbin/statecull-engine", 0o555, programs.engine),
        file(
            "etc/rc.d/statecull_engine",
            0o555,
            read_root("sandbox/profiles/rc.d/statecull_engine")?,
        ),
        file(
            "etc/statecull/policy.toml.sample",
            0o644,
            read_root("policy/examples/pfsense-two-wan.toml")?,
        ),
    ];
    for (n, text) in policy_examples()? {
        engine.files.push(file(&format!("share/examples/statecull-engine/{n}"), 0o644, text));
    }
    engine.directories = vec![
        format!("{PREFIX}/etc/statecull"),
        format!("{PREFIX}/share/examples/statecull-engine"),
    ];
    let (install, deinstall) = sample_scripts("etc/statecull/policy.toml");
    engine
        .scripts
        .insert("pre-install".into(), create_accounts("statecull", "statecull engine", true));
    engine.scripts.insert("post-install".into(), install);
    engine.scripts.insert("pre-deinstall".into(), deinstall);
    engine.scripts.insert("post-deinstall".into(), keep_user_note("statecull"));

    let mut cli = base(
        "statecull",
        "Operator tool of statecull: status, plans, verdicts, state kills",
        &text("dist/freebsd/statecull.pkg-descr")?,
    );
    cli.groups = Vec::new();
    cli.files = vec![
        file("bin/statecull", 0o555, programs.cli),
        file("share/doc/statecull/README.md", 0o644, read_root("README.md")?),
    ];
    cli.directories = vec![format!("{PREFIX}/share/doc/statecull")];
    Ok(vec![broker, engine, cli])
}

/// Read a written package back and check it as pkg would, plus what statecull needs: its
/// programs are FreeBSD ELF and its rc.d scripts are the tree's.
pub fn verify(bytes: &[u8], expected: &Package) -> std::result::Result<String, String> {
    let p = read::read(bytes)?;
    read::check(&p)?;
    for (key, want) in [
        ("name", expected.name.as_str()),
        ("version", expected.version.as_str()),
        ("abi", ABI),
        ("arch", ARCH),
        ("prefix", PREFIX),
        ("origin", ORIGIN),
    ] {
        if p.str_field(key)? != want {
            return Err(format!("+MANIFEST: {key} is {:?}, not {want:?}", p.str_field(key)?));
        }
    }
    let listed: Vec<&str> = p.entries.iter().map(|e| e.path.as_str()).collect();
    let wanted: Vec<&str> = expected.files.iter().map(|f| f.path.as_str()).collect();
    if listed != wanted {
        return Err(format!("files {listed:?}, expected {wanted:?}"));
    }
    let mut notes = Vec::new();
    for e in &p.entries {
        if e.path.contains("/sbin/") || e.path.contains("/bin/") {
            let elf = read::freebsd_elf(&e.data).map_err(|m| format!("{}: {m}", e.path))?;
            // pkg derives a package's ABI from this note; it must agree with the manifest.
            match elf.abi_tag {
                Some(v) if v / 100_000 == 14 => {}
                Some(v) => return Err(format!("{}: ABI note {v} is not FreeBSD 14", e.path)),
                None => return Err(format!("{}: no FreeBSD ABI note (.note.tag)", e.path)),
            }
            if e.mode != 0o555 {
                return Err(format!("{}: mode {:o}, not 555", e.path, e.mode));
            }
            notes.push(format!(
                "{} ({} bytes, EI_OSABI {}, ABI note {})",
                e.path,
                e.data.len(),
                if elf.osabi { "FreeBSD" } else { "not FreeBSD" },
                elf.abi_tag.map_or("none".to_owned(), |v| v.to_string())
            ));
        }
        if let Some(script) = e.path.strip_prefix(&format!("{PREFIX}/etc/rc.d/")) {
            let tree = std::fs::read(util::root().join("sandbox/profiles/rc.d").join(script))
                .map_err(|err| format!("sandbox/profiles/rc.d/{script}: {err}"))?;
            if e.data != tree || e.mode != 0o555 {
                return Err(format!(
                    "{}: not sandbox/profiles/rc.d/{script} with mode 555",
                    e.path
                ));
            }
        }
    }
    let scripts = p.manifest.get("scripts").and_then(|v| v.as_object());
    for (name, body) in scripts.into_iter().flatten() {
        let body = body.as_str().ok_or_else(|| format!("script {name} is not text"))?;
        let syntax = Command::new("sh").arg("-n").arg("-c").arg(body).output();
        if !syntax.is_ok_and(|o| o.status.success()) {
            return Err(format!("script {name}: sh -n fails"));
        }
    }
    for user in &expected.users {
        let pre = p.manifest.pointer("/scripts/pre-install").and_then(|v| v.as_str()).unwrap_or("");
        if !pre.contains(&format!("useradd {user}")) {
            return Err(format!("pre-install does not create user {user}"));
        }
    }
    Ok(notes.join("; "))
}

/// The programs were built with FreeBSD's compiled-in defaults (`statecull_proto::paths`):
/// each help text shows the FreeBSD path, and no Linux path (`/run/statecull`,
/// `/etc/statecull` not under `/var` or `/usr/local`) is anywhere in them.
pub fn check_paths(programs: &Programs) -> std::result::Result<(), String> {
    use statecull_proto::paths::FREEBSD;
    let contains = |data: &[u8], s: &str| data.windows(s.len()).any(|w| w == s.as_bytes());
    let foreign = |data: &[u8], needle: &str, unless_after: &str| {
        data.windows(needle.len()).enumerate().any(|(i, w)| {
            w == needle.as_bytes()
                && (i < unless_after.len()
                    || &data[i - unless_after.len()..i] != unless_after.as_bytes())
        })
    };
    // The broker renders its help from its flag table at run time: what the binary holds
    // are the table's texts, among them its configuration example and the --config line.
    for (name, data, help) in [
        (
            "statecull-broker",
            &programs.broker,
            vec![
                format!("socket = \"{}\"", FREEBSD.broker_socket),
                format!("pass --config {}", FREEBSD.broker_config),
                "backend = \"pf\"".to_owned(),
            ],
        ),
        ("statecull-engine", &programs.engine, vec![format!("else {}]", FREEBSD.control_socket)]),
        ("statecull", &programs.cli, vec![format!("check-policy {}", FREEBSD.policy_file)]),
    ] {
        if let Some(help) = help.iter().find(|h| !contains(data, h)) {
            return Err(format!("{name}: its help does not show {help:?}: not built for FreeBSD?"));
        }
        if foreign(data, "/run/statecull", "/var") || foreign(data, "/etc/statecull", "/usr/local")
        {
            return Err(format!("{name}: carries a Linux default path (/run or /etc/statecull)"));
        }
    }
    Ok(())
}

/// Where the packages and the port go unless `--out` says otherwise.
pub fn default_out() -> PathBuf {
    util::target_dir().join("dist").join("freebsd")
}

/// The port, completed: the tree's skeleton, `files/*.in` from the rc.d scripts (PREFIX as
/// `%%PREFIX%%`, as USE_RC_SUBR expects) and `Makefile.crates` from Cargo.lock.
pub fn write_port(out: &Path) -> Result<()> {
    let port = out.join("port");
    let files = port.join("files");
    std::fs::create_dir_all(&files).context(format!("create {}", files.display()))?;
    for name in ["Makefile", "pkg-descr", "pkg-plist"] {
        let data = read_root(&format!("dist/freebsd/port/{name}"))?;
        std::fs::write(port.join(name), data).context(format!("write port/{name}"))?;
    }
    for script in ["statecull_broker", "statecull_engine"] {
        let rc = text(&format!("sandbox/profiles/rc.d/{script}"))?;
        let templated = rc.replace(&format!("{PREFIX}/"), "%%PREFIX%%/");
        std::fs::write(files.join(format!("{script}.in")), templated)
            .context(format!("write port/files/{script}.in"))?;
    }
    std::fs::write(port.join("Makefile.crates"), cargo_crates(&text("Cargo.lock")?))
        .context("write port/Makefile.crates")?;
    Ok(())
}

/// `CARGO_CRATES=` for USES=cargo: every crates.io package of Cargo.lock as name-version
/// (what `make cargo-crates` prints on FreeBSD).
pub fn cargo_crates(lock: &str) -> String {
    let mut crates = Vec::new();
    let mut name = None;
    let mut version = None;
    for line in lock.lines().chain(std::iter::once("[[package]]")) {
        if line == "[[package]]" {
            name = None;
            version = None;
        } else if let Some(v) = line.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("version = ") {
            version = Some(v.trim_matches('"').to_owned());
        } else if line.starts_with("source = \"registry+")
            && let (Some(n), Some(v)) = (&name, &version)
        {
            crates.push(format!("{n}-{v}"));
        }
    }
    let mut out =
        String::from("# Generated by cargo xtask dist freebsd from Cargo.lock.\nCARGO_CRATES=");
    for (i, c) in crates.iter().enumerate() {
        out.push_str(if i == 0 { "\t" } else { " \\\n\t\t" });
        out.push_str(c);
    }
    out.push('\n');
    out
}

/// The whole task.
pub fn dist_freebsd(no_build: bool, out: Option<PathBuf>) -> Result<()> {
    let started = std::time::Instant::now();
    let bin_dir = if no_build { util::target_dir().join(TARGET).join("release") } else { build()? };
    let built = started.elapsed();
    let out = out.unwrap_or_else(default_out);
    let stage = out.join("stage");
    std::fs::create_dir_all(&stage).context(format!("create {}", stage.display()))?;
    // As ports' INSTALL_PROGRAM does, without the line tables of the release profile
    // (symbols stay, for backtraces). binutils' strip handles any x86-64 ELF.
    let read_bin = |name: &str| -> Result<Vec<u8>> {
        let p = bin_dir.join(name);
        if !p.exists() {
            return Err(msg(format!(
                "{} is missing (build it: cargo xtask dist freebsd)",
                p.display()
            )));
        }
        let stripped = stage.join(name);
        run(Command::new("strip").arg("--strip-debug").arg("-o").arg(&stripped).arg(&p))
            .map_err(|e| msg(format!("{e} (strip is in binutils)")))?;
        std::fs::read(&stripped).context(format!("read {}", stripped.display()))
    };
    let programs = Programs {
        broker: read_bin("statecull-broker")?,
        engine: read_bin("statecull-engine")?,
        cli: read_bin("statecull")?,
    };
    check_paths(&programs).map_err(msg)?;
    let mtime =
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    for p in packages(programs)? {
        let bytes = p.archive(mtime).map_err(msg)?;
        let path = out.join(p.file_name());
        std::fs::write(&path, &bytes).context(format!("write {}", path.display()))?;
        let back = std::fs::read(&path).context(format!("read {}", path.display()))?;
        let notes = verify(&back, &p).map_err(|m| msg(format!("{}: {m}", path.display())))?;
        println!(
            "{}: {} bytes, {} files, checked: {notes}",
            path.display(),
            bytes.len(),
            p.files.len()
        );
    }
    write_port(&out)?;
    println!("{}: the port (sysutils/statecull)", out.join("port").display());
    println!(
        "dist freebsd: {:.0} s (linking {:.0} s)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests;
