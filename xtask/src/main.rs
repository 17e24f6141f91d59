//! `cargo xtask`: statecull's tasks. See `cargo xtask --help`.
#![forbid(unsafe_code)]
// A binary: `pub` in its private modules is crate-wide, and rates are printed as rounded
// integers on purpose.
#![allow(unreachable_pub, clippy::cast_possible_truncation)]

mod bench;
mod bench_ct_paths;
mod bench_engine;
mod bench_hostile;
mod bench_pf;
mod ci;
mod demo;
mod dist;
mod fuzz;
mod lab_task;
mod man;
mod tidy;
mod util;

use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

use crate::util::{Result, cargo, run};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "statecull's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// The main demo (root): a two-WAN firewall in private namespaces with a big conntrack
    /// table; the engine judges the gateways from real probes, ISP1 stops answering, and
    /// WAN1's states (only those) are killed. Leaves nothing behind, also when interrupted.
    Demo {
        /// States in the generated table
        #[arg(long, default_value_t = 200_000)]
        entries: u64,
    },
    /// The lab (root): a two-WAN failover in network namespaces (LAN, firewall, two ISPs,
    /// servers) with both daemons confined, 200 TCP sessions, a SIP-like registration and an
    /// RTP-like call; ISP1 silently blackholes, then comes back. Prints a report (detection,
    /// routing, kill, call loss, reconnection times) and compares on_down = gateway with all
    /// and none. Exit status 1 if an acceptance condition fails. Leaves nothing behind, also
    /// on Ctrl-C (unless --keep).
    Lab {
        /// How long the failure lasts at most before ISP1 comes back (e.g. 20s, 1m)
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// TCP sessions (half via WAN1, half via WAN2 by policy)
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Extra synthetic conntrack entries of both gateways in the firewall's table (try 1000000)
        #[arg(long, default_value_t = 0)]
        table_size: u64,
        /// Leave the main run's namespaces for inspection (prints how to remove them)
        #[arg(long)]
        keep: bool,
        /// Policy file for the main run instead of the lab's own (its broker_socket is overridden)
        #[arg(long, value_name = "FILE")]
        policy: Option<std::path::PathBuf>,
        /// Only the main run, without the on_down = all / none comparison
        #[arg(long)]
        no_compare: bool,
        /// One JSON object instead of the report
        #[arg(long)]
        json: bool,
        /// Lay the firewall out as OpenWrt's mwan3 does (fwmark rules with mask 0x3f00, a
        /// table per WAN, marks set before routing); the routing manager switches as mwan3
        /// does (the marking policy, not the routes) and runs contrib/mwan3/mwan3.user
        #[arg(long)]
        mwan3: bool,
    },
    /// Benchmarks that print numbers (root)
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// The test suite: installs what the namespace tests need, then `cargo test --workspace`.
    /// As root, tests that need root must run (they fail instead of skipping).
    Test {
        /// Extra arguments for `cargo test` (after --)
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run every fuzz target of fuzz/ (the `bin` list of fuzz/Cargo.toml) one after another
    /// and print, per target, the inputs executed and the crashes; exit 1 if any target
    /// crashed (its failing input and how to reproduce it are printed) or failed to run.
    /// Installs cargo-fuzz if missing; uses nightly when installed, else stable with
    /// RUSTC_BOOTSTRAP=1.
    #[command(alias = "fuzz-smoke")]
    Fuzz {
        /// Seconds per target [default: 30 when --runs is not given]
        #[arg(long)]
        seconds: Option<u64>,
        /// Executions per target (libFuzzer -runs); with --seconds, whichever comes first
        #[arg(long)]
        runs: Option<u64>,
        /// Only this target (repeat for several)
        #[arg(long = "target", value_name = "NAME")]
        targets: Vec<String>,
        /// Which toolchain gives cargo-fuzz its nightly features
        #[arg(long, value_enum, default_value = "auto")]
        toolchain: fuzz::Toolchain,
        /// Show libFuzzer's own output as it runs
        #[arg(long)]
        verbose: bool,
        /// More libFuzzer flags (after --), e.g. -- -max_len=65536
        #[arg(last = true)]
        libfuzzer_args: Vec<String>,
    },
    /// Type-check the crates that must build on FreeBSD
    CheckFreebsd,
    /// Packages for an OS: `dist deb` builds Debian packages (see `dist deb --help`);
    /// `dist freebsd` links the three programs for
    /// x86_64-unknown-freebsd with cargo-zigbuild (zig's FreeBSD 14 libc stubs) and writes
    /// pkg(8) packages statecull-broker, statecull-engine and statecull (tar + zstd, +MANIFEST
    /// with sha256 sums, rc.d scripts, pw(8) user creation) and the port skeleton, then reads
    /// every package back and checks it
    Dist {
        #[command(subcommand)]
        what: DistWhat,
    },
    /// Everything CI checks (what `.ci/run` runs after installing packages): fmt, clippy,
    /// tidy, cargo deny, the tests, the FreeBSD type-check, a release broker without the
    /// simulator, the Debian packages (lintian, installed, purged), a short lab, the demo, the deployment profiles, benchmark and fuzz smoke runs
    Ci,
    /// Man pages (statecull.8, statecull-engine.8, statecull-broker.8) and bash, zsh and
    /// fish completions, generated from the programs' own definitions, with the hand-written
    /// statecull-policy.5 and statecull-broker.toml.5 of docs/man, under DIR
    /// [default: target/man]
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// The tree's invariants: broker and engine dependencies, `unsafe` only in the FreeBSD
    /// layer, the code map's paths exist, no source file over 1,500 lines
    Tidy,
    /// (internal) a hostile client for `bench hostile`, run as another user
    #[command(hide = true)]
    BenchClient {
        /// count: 64-selector counts back to back; stall: a snapshot never read
        mode: String,
        #[arg(long)]
        socket: std::path::PathBuf,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
}

#[derive(Debug, Subcommand)]
enum DistWhat {
    /// FreeBSD 14 amd64 packages and the port, in target/dist/freebsd unless --out
    Freebsd {
        /// Package the binaries already in target/x86_64-unknown-freebsd/release
        #[arg(long)]
        no_build: bool,
        /// Output directory [default: target/dist/freebsd]
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
    },
    /// Debian 12 amd64 packages statecull, statecull-broker and statecull-engine, built
    /// with dpkg-deb from staged trees (units, sysusers, conffile broker.toml, man pages,
    /// completions, maintainer scripts from dist/debian/), each read back and checked, in
    /// target/dist/deb unless --out. Needs dpkg-dev (dpkg-shlibdeps) and binutils (strip)
    Deb {
        /// Package the binaries already in target/release
        #[arg(long)]
        no_build: bool,
        /// Output directory [default: target/dist/deb]
        #[arg(long, value_name = "DIR")]
        out: Option<std::path::PathBuf>,
        /// Also run lintian on them (fails on an error or warning not overridden)
        #[arg(long)]
        lintian: bool,
        /// Then (root) install them here with dpkg, check them, purge them and check that
        /// nothing is left; refuses where statecull is installed
        #[arg(long)]
        install_check: bool,
    },
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// Kill by mark and by NAT address vs full flush, conntrack -D, snapshot and the kernel floor
    Conntrack {
        /// States in the table (half via WAN1)
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Runs per method (the median is reported)
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// conntrack hash buckets [default: entries rounded up to a power of two]
        #[arg(long)]
        hashsize: Option<u64>,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    /// Killing gateway 1's connections on the pf model: statecull's plan vs one pass per
    /// gateway (pfctl -M -k gateway) vs one request per client/server pair; counts the
    /// kernel's passes, states looked at and lookups
    PfModel {
        /// States in the generated router table
        #[arg(long, default_value_t = 2_000_000)]
        states: usize,
        /// Client/server pairs actually killed for (c); the rest is extrapolated
        #[arg(long, default_value_t = 20)]
        sample: usize,
        /// One JSON object instead of the tables
        #[arg(long)]
        json: bool,
    },
    /// The engine at millions of states (root): both daemons confined in a private
    /// namespace, external health verdicts; idle CPU of each daemon, `statecull status`
    /// latency, a down verdict sent while a count is in flight (verdict -> kill started and
    /// done, against the kill alone), peak RSS; PASS/FAIL goals, exit status 1 if one fails
    Engine {
        /// States in the table (10 % via WAN1)
        #[arg(long, default_value_t = 4_000_000)]
        entries: u64,
        /// How long both daemons are watched while idle (e.g. 60s, 10s)
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        idle: std::time::Duration,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
        /// Print the goals but do not fail on a missed one (CI's smoke run)
        #[arg(long)]
        report_only: bool,
    },
    /// Hostile peers against a pf-model broker (root): twelve clients of another uid flood
    /// 64-selector counts while root counts, then a snapshot reader stalls while root kills;
    /// prints latencies and memory with PASS/FAIL goals
    /// Where one conntrack dump with batched deletes becomes cheaper than one kernel flush
    /// per selector (root); checks the broker's rule against the measured crossover
    ConntrackPaths {
        /// Entries in each fresh table
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Largest number of selectors to try (at most 8)
        #[arg(long, default_value_t = 8)]
        max_selectors: usize,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
    },
    Hostile {
        /// States in the model's table
        #[arg(long, default_value_t = 2_000_000)]
        states: usize,
        /// Attacking clients (uid nobody)
        #[arg(long, default_value_t = 12)]
        attackers: usize,
        /// How long the count flood lasts
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// A broker binary to measure instead of this tree's release build
        #[arg(long, value_name = "PATH")]
        broker_bin: Option<std::path::PathBuf>,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
        /// Print the goals but do not fail on a missed timing goal (CI's smoke run); the
        /// memory goal still fails
        #[arg(long)]
        report_only: bool,
    },
}

fn test(args: &[String]) -> Result<()> {
    let root = util::is_root();
    if root {
        util::ensure_tools(&[util::IP, util::NFT])?;
        util::ensure_conntrack()?;
    } else {
        eprintln!("not root: tests that need network namespaces will be SKIPPED (visibly)");
    }
    statecull_tests::remove_stale_namespaces();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--all-targets"]).args(args);
    if root {
        cmd.env("STATECULL_REQUIRE_ROOT_TESTS", "1");
    }
    // Doc tests are not part of --all-targets.
    // The fuzz crate is outside the workspace (it needs nightly to run), so type-check it here
    // too: a protocol change that breaks a fuzz target must fail the tests, not only the fuzzer.
    let fuzz_manifest = util::root().join("fuzz").join("Cargo.toml");
    let result = run(&mut cmd)
        .and_then(|()| run(cargo().args(["test", "--workspace", "--doc", "--quiet"])))
        .and_then(|()| {
            run(cargo().arg("check").arg("--quiet").arg("--manifest-path").arg(&fuzz_manifest))
        });
    if !root {
        eprintln!(
            "reminder: not root, so the tests that need root were SKIPPED (their SKIPPED lines \
             are above); run `sudo -E cargo xtask test` to run them"
        );
    }
    result
}

fn check_freebsd() -> Result<()> {
    let target = "x86_64-unknown-freebsd";
    let added =
        Command::new("rustup").args(["target", "add", target]).status().map(|s| s.success());
    if !added.unwrap_or(false) {
        eprintln!("WARNING: `rustup target add {target}` failed; cannot type-check for FreeBSD");
        return Ok(());
    }
    run(cargo().args([
        "check",
        "--target",
        target,
        "-p",
        "statecull-proto",
        "-p",
        "statecull-cli",
        "-p",
        "statecull-pf",
        "-p",
        "statecull-broker",
        "-p",
        "statecull-policy",
        "-p",
        "statecull-engine",
        "-p",
        "statecull-sandbox",
        "-p",
        "statecull-client",
        "-p",
        "statecull-control",
    ]))
}

/// "20s", "1m", "1500ms" or a number of seconds.
fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let bad = || format!("{s:?}: expected a duration like 20s, 1m or 1500ms");
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    // Ctrl-C (and SIGTERM, SIGHUP) removes namespaces and puts kernel knobs back.
    if let Err(e) = statecull_tests::cleanup::install_signal_cleanup() {
        eprintln!("xtask: cannot install the cleanup handler: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Demo { entries } => demo::demo(entries),
        Task::Lab { duration, sessions, table_size, keep, policy, no_compare, json, mwan3 } => {
            lab_task::lab(&statecull_tests::failover::LabOptions {
                duration,
                sessions,
                table_size,
                keep,
                policy,
                json,
                compare: !no_compare,
                mwan3,
            })
        }
        Task::Bench { what: BenchWhat::Conntrack { entries, runs, hashsize, json } } => {
            bench::bench_conntrack(entries, runs.max(1), hashsize, json)
        }
        Task::Bench { what: BenchWhat::Engine { entries, idle, json, report_only } } => {
            bench_engine::bench_engine(&bench_engine::Options { entries, idle, json, report_only })
        }
        Task::Bench { what: BenchWhat::PfModel { states, sample, json } } => {
            bench_pf::bench_pf_model(states, sample.max(1), json)
        }
        Task::Bench { what: BenchWhat::ConntrackPaths { entries, max_selectors, json } } => {
            bench_ct_paths::bench_conntrack_paths(entries, max_selectors, json)
        }
        Task::Bench {
            what: BenchWhat::Hostile { states, attackers, seconds, broker_bin, json, report_only },
        } => bench_hostile::bench_hostile(
            states,
            attackers.max(1),
            seconds.max(3),
            broker_bin,
            json,
            report_only,
        ),
        Task::BenchClient { mode, socket, seconds } => {
            bench_hostile::client(&mode, &socket, seconds)
        }
        Task::Test { args } => test(&args),
        Task::Fuzz { seconds, runs, targets, toolchain, verbose, libfuzzer_args } => {
            fuzz::fuzz(&fuzz::Options {
                seconds,
                runs,
                targets,
                toolchain,
                verbose,
                libfuzzer_args,
            })
        }
        Task::CheckFreebsd => check_freebsd(),
        Task::Dist { what: DistWhat::Freebsd { no_build, out } } => {
            dist::dist_freebsd(no_build, out)
        }
        Task::Dist { what: DistWhat::Deb { no_build, out, lintian, install_check } } => {
            dist::deb::dist_deb(no_build, out).and_then(|debs| {
                if lintian {
                    dist::deb::lintian(&debs)?;
                }
                if install_check { dist::deb_install::install_check(&debs) } else { Ok(()) }
            })
        }
        Task::Tidy => tidy::tidy(),
        Task::Man { out } => man::generate(out.as_deref()),
        Task::Ci => ci::ci(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
