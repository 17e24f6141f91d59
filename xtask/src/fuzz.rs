//! `cargo xtask fuzz`: run every cargo-fuzz target in `fuzz/` for a time or a number of
//! executions, and report per target how many inputs ran and whether it crashed.
//!
//! The targets are the `bin` list of `fuzz/Cargo.toml` (read with `cargo metadata`), so a
//! new target is its file and one line there. A target "crashed" when libFuzzer exited with
//! a failure and left an artifact (a crash, leak, timeout or out-of-memory input); the
//! command then prints the artifact and how to reproduce it, and exits non-zero. A target
//! that fails without an artifact (it did not build, libFuzzer refused a flag) fails the
//! command too.
//!
//! cargo-fuzz needs nightly features. With a nightly toolchain installed (`rustup run
//! nightly`) it is used; otherwise the default toolchain runs with `RUSTC_BOOTSTRAP=1`,
//! which lets a stable compiler accept them (CI machines often have only stable).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use crate::util::{IoContext, Result, msg, root, run};

/// How `cargo fuzz` is run: which toolchain gives it nightly features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Toolchain {
    /// Nightly when installed, else the default toolchain with RUSTC_BOOTSTRAP=1
    Auto,
    /// `cargo +nightly fuzz`
    Nightly,
    /// The default toolchain with RUSTC_BOOTSTRAP=1 (what a stable-only CI machine does)
    Stable,
}

/// What to run.
#[derive(Debug)]
pub struct Options {
    /// Per target: stop after this many seconds (libFuzzer `-max_total_time`).
    pub seconds: Option<u64>,
    /// Per target: stop after this many executions (libFuzzer `-runs`).
    pub runs: Option<u64>,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    pub toolchain: Toolchain,
    /// Show libFuzzer's own output as it runs.
    pub verbose: bool,
    /// More libFuzzer flags (`-max_len=...`).
    pub libfuzzer_args: Vec<String>,
}

/// Seconds per target when neither a time nor a number of runs is given.
pub const DEFAULT_SECONDS: u64 = 30;

/// What one target's run came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Inputs executed (`stat::number_of_executed_units`, else `Done N runs`, else the last
    /// `#N` status line).
    pub executions: Option<u64>,
    /// Failing inputs libFuzzer wrote (crash-, leak-, timeout-, oom-...).
    pub artifacts: Vec<String>,
    /// libFuzzer (through cargo fuzz) exited with success.
    pub success: bool,
}

impl Outcome {
    pub fn crashed(&self) -> bool {
        !self.success && !self.artifacts.is_empty()
    }

    /// Failed without leaving an input behind: not a finding, a broken run.
    pub fn broken(&self) -> bool {
        !self.success && self.artifacts.is_empty()
    }
}

/// Read libFuzzer's output (as `cargo fuzz run` passes it through).
pub fn parse_output(lines: &[String]) -> Outcome {
    let mut stat = None;
    let mut done = None;
    let mut last_status = None;
    let mut artifacts = Vec::new();
    for line in lines {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("stat::number_of_executed_units:") {
            stat = rest.trim().parse().ok().or(stat);
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // "Done 1234 runs in 10 second(s)"
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                done = Some(n);
            }
        } else if let Some((n, _)) = line.strip_prefix('#').and_then(|r| r.split_once('\t')) {
            // "#65536<TAB>pulse  cov: 123 ft: 456 corp: 7/89b exec/s: 21845 rss: 40Mb" (a
            // stack frame "#0 0x..." has a space, not a tab).
            if let Ok(n) = n.parse() {
                last_status = Some(n);
            }
        }
        // "artifact_prefix='...'; Test unit written to fuzz/artifacts/x/crash-abc"
        if let Some((_, path)) = line.split_once("Test unit written to ") {
            let path = path.trim().to_owned();
            if !path.is_empty() && !artifacts.contains(&path) {
                artifacts.push(path);
            }
        }
    }
    Outcome { executions: stat.or(done).or(last_status), artifacts, success: false }
}

/// The targets of `fuzz/Cargo.toml`, by name.
pub fn list_targets(fuzz_dir: &Path) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .current_dir(fuzz_dir)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .env_remove("CARGO_TARGET_DIR")
        .stderr(Stdio::inherit())
        .output()
        .context("cargo metadata for fuzz/Cargo.toml")?;
    if !out.status.success() {
        return Err(msg(format!("cargo metadata for fuzz/Cargo.toml failed: {}", out.status)));
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| msg(format!("cargo metadata for fuzz/Cargo.toml: {e}")))?;
    let mut names = BTreeSet::new();
    for package in meta["packages"].as_array().into_iter().flatten() {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            if let (true, Some(name)) = (is_bin, target["name"].as_str()) {
                names.insert(name.to_owned());
            }
        }
    }
    // A target file that is not in the list would silently never run.
    let dir = fuzz_dir.join("fuzz_targets");
    for entry in std::fs::read_dir(&dir).context(format!("reading {}", dir.display()))? {
        let path = entry.context(format!("reading {}", dir.display()))?.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if path.extension().is_some_and(|e| e == "rs") && !names.contains(stem) {
            return Err(msg(format!(
                "{} is not in the bin list of fuzz/Cargo.toml; add a line for it there",
                path.display()
            )));
        }
    }
    Ok(names.into_iter().collect())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("installing cargo-fuzz ...");
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked", "--quiet"]))?;
    }
    Ok(())
}

fn nightly_installed() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `cargo [+nightly] fuzz ARGS` in `fuzz/`, with its own target directory.
fn cargo_fuzz(fuzz_dir: &Path, nightly: bool) -> Command {
    let mut cmd = Command::new("cargo");
    if nightly {
        cmd.arg("+nightly");
    } else {
        // cargo-fuzz needs nightly features; stable can be told to allow them.
        cmd.env("RUSTC_BOOTSTRAP", "1");
    }
    // The fuzz crate builds with sanitizers into fuzz/target, never into the workspace's.
    cmd.env_remove("CARGO_TARGET_DIR").current_dir(fuzz_dir).arg("fuzz");
    cmd
}

fn how(nightly: bool) -> &'static str {
    if nightly { "cargo +nightly fuzz" } else { "RUSTC_BOOTSTRAP=1 cargo fuzz" }
}

pub fn fuzz(opts: &Options) -> Result<()> {
    let fuzz_dir = root().join("fuzz");
    let all = list_targets(&fuzz_dir)?;
    let targets: Vec<String> = if opts.targets.is_empty() {
        all.clone()
    } else {
        for t in &opts.targets {
            if !all.contains(t) {
                return Err(msg(format!("no fuzz target {t:?}; the targets: {}", all.join(", "))));
            }
        }
        opts.targets.clone()
    };
    ensure_cargo_fuzz()?;
    let nightly = match opts.toolchain {
        Toolchain::Auto => nightly_installed(),
        Toolchain::Nightly => true,
        Toolchain::Stable => false,
    };
    let seconds = opts.seconds.or(if opts.runs.is_none() { Some(DEFAULT_SECONDS) } else { None });
    let mut limits = Vec::new();
    if let Some(s) = seconds {
        limits.push(format!("{s} s"));
    }
    if let Some(r) = opts.runs {
        limits.push(format!("{} runs", thousands(r)));
    }
    eprintln!(
        "fuzz: {} target(s), each for at most {} ({})",
        targets.len(),
        limits.join(" or "),
        how(nightly)
    );

    // One build for every target (cargo fuzz run would build each on its own).
    let mut build = cargo_fuzz(&fuzz_dir, nightly);
    build.arg("build");
    if targets.len() == 1 {
        build.args(&targets);
    }
    run(&mut build)?;

    let mut rows = Vec::new();
    for target in &targets {
        let mut flags = vec!["-print_final_stats=1".to_owned()];
        if let Some(s) = seconds {
            flags.push(format!("-max_total_time={s}"));
        }
        if let Some(r) = opts.runs {
            flags.push(format!("-runs={r}"));
        }
        flags.extend(opts.libfuzzer_args.iter().cloned());
        // Inputs it finds go to the corpus; checked-in seeds (if any) are read too.
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).context(format!("creating {}", corpus.display()))?;
        let seeds = fuzz_dir.join("seeds").join(target);
        let mut cmd = cargo_fuzz(&fuzz_dir, nightly);
        cmd.args(["run", target]).arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--").args(&flags);
        eprintln!("fuzz: {target} ...");
        let started = Instant::now();
        let since = SystemTime::now();
        let (lines, success) = run_capturing(&mut cmd, opts.verbose)?;
        let elapsed = started.elapsed();
        let mut outcome = parse_output(&lines);
        outcome.success = success;
        for a in new_artifacts(&fuzz_dir.join("artifacts").join(target), since) {
            if !outcome.artifacts.iter().any(|seen| Path::new(seen).ends_with(&a)) {
                outcome.artifacts.push(a.display().to_string());
            }
        }
        if !outcome.success && !opts.verbose {
            // What libFuzzer said about it, since it was not shown.
            let tail = lines.len().saturating_sub(60);
            eprintln!("--- the end of {target}'s output:");
            for l in &lines[tail..] {
                eprintln!("{l}");
            }
            eprintln!("---");
        }
        rows.push((target.clone(), outcome, elapsed));
    }
    report(&rows, nightly, &fuzz_dir)
}

/// Run, collecting stdout and stderr lines (echoed when `verbose`); whether it succeeded.
fn run_capturing(cmd: &mut Command, verbose: bool) -> Result<(Vec<String>, bool)> {
    let mut child =
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context(format!("{cmd:?}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let pipes: Vec<Box<dyn Read + Send>> = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .collect();
    let readers: Vec<_> = pipes
        .into_iter()
        .map(|pipe| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).split(b'\n').map_while(std::io::Result::ok) {
                    if tx.send(String::from_utf8_lossy(&line).into_owned()).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    drop(tx);
    let mut lines = Vec::new();
    for line in rx {
        if verbose {
            eprintln!("{line}");
        }
        // libFuzzer prints a status line at every power of two and every few seconds: a
        // long campaign stays a few thousand lines.
        lines.push(line);
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().context(format!("waiting for {cmd:?}"))?;
    Ok((lines, status.success()))
}

/// Files written to `dir` since `since` (what cargo-fuzz itself looks at after a failure).
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since))
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

fn report(rows: &[(String, Outcome, Duration)], nightly: bool, fuzz_dir: &Path) -> Result<()> {
    println!();
    println!("{:<20} {:>16} {:>8} {:>10}  result", "target", "executions", "crashes", "time");
    for (target, o, elapsed) in rows {
        let result = if o.crashed() {
            "CRASHED"
        } else if o.broken() {
            "FAILED (no artifact: see the output above)"
        } else {
            "ok"
        };
        println!(
            "{target:<20} {:>16} {:>8} {:>8.1} s  {result}",
            o.executions.map_or_else(|| "?".to_owned(), thousands),
            if o.crashed() { o.artifacts.len() } else { 0 },
            elapsed.as_secs_f64(),
        );
    }
    let crashed: Vec<_> = rows.iter().filter(|(_, o, _)| o.crashed()).collect();
    for (target, o, _) in &crashed {
        for a in &o.artifacts {
            println!("\n{target}: failing input {a}");
            println!(
                "  reproduce: (cd {} && {} run {target} {a})",
                fuzz_dir.display(),
                how(nightly)
            );
            println!(
                "  as a value: (cd {} && {} fmt {target} {a})",
                fuzz_dir.display(),
                how(nightly)
            );
        }
    }
    let broken = rows.iter().filter(|(_, o, _)| o.broken()).count();
    if crashed.is_empty() && broken == 0 {
        return Ok(());
    }
    Err(msg(format!("{} target(s) crashed, {broken} failed to run", crashed.len())))
}

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn a_clean_run_reports_its_executions() {
        let out = lines(
            "INFO: Seed: 1234\n#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb\n\
             #65536\tpulse  cov: 99 ft: 120 corp: 20/300b lim: 4 exec/s: 21845 rss: 40Mb\n\
             #1000000\tDONE   cov: 99 ft: 120 corp: 20/300b lim: 4 exec/s: 90909 rss: 41Mb\n\
             Done 1000000 runs in 11 second(s)\n\
             stat::number_of_executed_units: 1000001\n\
             stat::average_exec_per_sec:     90909\n",
        );
        let o = parse_output(&out);
        assert_eq!(o.executions, Some(1_000_001), "the final stat wins");
        assert!(o.artifacts.is_empty());
        let o = parse_output(&out[..4]);
        assert_eq!(o.executions, Some(1_000_000), "then Done");
        let o = parse_output(&out[..3]);
        assert_eq!(o.executions, Some(65_536), "then the last status line");
        let o = parse_output(&lines("#8\tNEW cov: 1\n    #0 0x55d0 in abort\n"));
        assert_eq!(o.executions, Some(8), "stack frames are not status lines");
    }

    #[test]
    fn a_crash_reports_its_artifact() {
        let out = lines(
            "#4096\tpulse  cov: 9 ft: 9 corp: 3/9b exec/s: 2048 rss: 40Mb\n\
             thread '<unnamed>' panicked at fuzz_targets/x.rs:10:5:\n\
             ==77== ERROR: libFuzzer: deadly signal\n\
             MS: 1 ChangeBit-; base unit: 0\n\
             artifact_prefix='/w/fuzz/artifacts/x/'; Test unit written to /w/fuzz/artifacts/x/crash-0a1b\n\
             Base64: AAE=\n\
             stat::number_of_executed_units: 5000\n",
        );
        let mut o = parse_output(&out);
        assert_eq!(o.executions, Some(5000));
        assert_eq!(o.artifacts, vec!["/w/fuzz/artifacts/x/crash-0a1b".to_owned()]);
        assert!(o.crashed() && !o.broken(), "a failed exit with an artifact is a crash");
        o.success = true;
        assert!(!o.crashed() && !o.broken(), "a successful exit is never a crash");
        let o = Outcome { success: false, ..parse_output(&lines("error: could not compile")) };
        assert!(o.broken() && !o.crashed());
        assert_eq!(o.executions, None);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(10_000_000), "10,000,000");
    }

    #[test]
    fn every_target_file_is_listed() {
        let targets = list_targets(&root().join("fuzz")).expect("the fuzz targets");
        for t in [
            "decode_frame",
            "nvlist_unpack",
            "ct_entry",
            "rtnetlink_routes",
            "rtnetlink_addrs",
            "dpinger_status",
            "control_line",
        ] {
            assert!(targets.iter().any(|n| n == t), "{t} missing from {targets:?}");
        }
    }
}
