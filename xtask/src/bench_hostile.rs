//! `cargo xtask bench hostile`: what hostile or careless peers cost a pf-model broker at
//! millions of states, measured from outside, as a peer sees it.
//!
//! The broker runs as deployed (release build, confined). The attackers are this binary
//! re-run as `nobody` (`xtask bench-client`), an allowed uid; the legitimate client (the
//! engine's stand-in) is root, another uid:
//! 1. baseline: a one-selector count and a 64-selector count;
//! 2. twelve attackers run 64-selector counts back to back; meanwhile root counts once a
//!    second: its latency, and the broker's memory (peak RSS over baseline);
//! 3. an attacker asks for the whole table and stops reading; root then kills one gateway's
//!    states: how long the kill waited before the broker started it.
//!
//! `--broker-bin` runs another build of the broker (e.g. an older commit) for comparison;
//! the wire protocol is the same.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use statecull_cli::{BrokerClient, ClientError};
use statecull_proto::frame::encode_request;
use statecull_proto::{ErrorCode, Hello, PROTOCOL_VERSION, Prefix, Request, Selector};

use crate::util::{self, Result, msg};

const NOBODY: u32 = 65534;

/// 64 selectors, each one LAN host: the most a request may carry.
fn many_selectors() -> Vec<Selector> {
    (0..64u8)
        .map(|i| Selector {
            src: Some(Prefix { addr: [192, 0, 2, 10 + i].into(), len: 32 }),
            ..Selector::default()
        })
        .collect()
}

fn one_selector() -> Vec<Selector> {
    vec![Selector { nat_addr: Some([198, 51, 100, 1].into()), ..Selector::default() }]
}

fn gateway1() -> Selector {
    let gw = statecull_pf::table_gen::ROUTER.gateway[0].0;
    Selector { gateway: Some(gw.into()), ..Selector::default() }
}

/// The hidden subcommand the attackers run: `count` (64-selector counts until the time is
/// up) or `stall` (ask for a snapshot, never read, hold for the time). Prints one line.
pub fn client(mode: &str, socket: &Path, seconds: u64) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(seconds);
    match mode {
        "count" => {
            let mut c = BrokerClient::connect(socket, "bench attacker")
                .map_err(|e| msg(format!("attacker connect: {e}")))?;
            c.set_timeout(Some(Duration::from_secs(600))).map_err(|e| msg(e.to_string()))?;
            let (mut done, mut busy) = (0u64, 0u64);
            while Instant::now() < until {
                match c.count(many_selectors()) {
                    Ok(_) => done += 1,
                    Err(ClientError::Refused(e)) if e.code == ErrorCode::Busy => busy += 1,
                    Err(e) => return Err(msg(format!("attacker count: {e}"))),
                }
            }
            println!("attacker: {done} counts, {busy} busy");
        }
        "stall" => {
            let mut s = UnixStream::connect(socket).map_err(|e| msg(e.to_string()))?;
            let hello = Request::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                client: "bench staller".into(),
            });
            s.write_all(&encode_request(&hello).map_err(|e| msg(e.to_string()))?)
                .map_err(|e| msg(e.to_string()))?;
            let mut header = [0u8; 4];
            s.read_exact(&mut header).map_err(|e| msg(e.to_string()))?;
            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
            s.read_exact(&mut body).map_err(|e| msg(e.to_string()))?;
            let snap = Request::Snapshot { selector: None };
            s.write_all(&encode_request(&snap).map_err(|e| msg(e.to_string()))?)
                .map_err(|e| msg(e.to_string()))?;
            println!("staller: snapshot asked, not reading");
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        other => return Err(msg(format!("unknown bench client mode {other:?}"))),
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

struct Broker {
    child: Child,
    socket: PathBuf,
    _dir: statecull_tests::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn start_broker(bin: &Path, states: usize) -> Result<Broker> {
    let dir = statecull_tests::TempDir::new("bench-hostile").map_err(|e| msg(e.to_string()))?;
    let socket = dir.path().join("broker.sock");
    let child = Command::new(bin)
        .args(["--backend", "pf-model", "--model-states", &states.to_string(), "--socket"])
        .arg(&socket)
        .args(["--user", "nobody", "--allow-user", "nobody", "--socket-group", "nogroup"])
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| msg(format!("start {}: {e}", bin.display())))?;
    let broker = Broker { child, socket, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(600);
    while UnixStream::connect(&broker.socket).is_err() {
        if Instant::now() > deadline {
            return Err(msg("the broker did not start within 10 minutes"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(broker)
}

fn attacker(mode: &str, socket: &Path, seconds: u64) -> Result<Child> {
    let me = std::env::current_exe().map_err(|e| msg(e.to_string()))?;
    Command::new(me)
        .args(["bench-client", mode, "--seconds", &seconds.to_string(), "--socket"])
        .arg(socket)
        .uid(NOBODY)
        .gid(65534)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| msg(format!("start an attacker: {e}")))
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// The benchmark.
pub fn bench_hostile(
    states: usize,
    attackers: usize,
    seconds: u64,
    broker_bin: Option<PathBuf>,
    json: bool,
    report_only: bool,
) -> Result<()> {
    util::require_root("the hostile-peer benchmark (attackers run as nobody)")?;
    let bin = match broker_bin {
        Some(b) => b,
        None => util::build_model_broker()?,
    };
    eprintln!("starting {} with a pf model of {states} states ...", bin.display());
    let broker = start_broker(&bin, states)?;
    let pid = broker.child.id();
    let socket = broker.socket.clone();
    let mut root =
        BrokerClient::connect(&socket, "bench root").map_err(|e| msg(format!("connect: {e}")))?;
    root.set_timeout(Some(Duration::from_secs(600))).map_err(|e| msg(e.to_string()))?;
    let timed = |c: &mut BrokerClient, sel: Vec<Selector>| -> Result<Duration> {
        let t = Instant::now();
        c.count(sel).map_err(|e| msg(format!("count: {e}")))?;
        Ok(t.elapsed())
    };

    // 1. Baselines.
    let mut one: Vec<Duration> =
        (0..3).map(|_| timed(&mut root, one_selector())).collect::<Result<_>>()?;
    one.sort();
    let t1 = one[1];
    let t64 = timed(&mut root, many_selectors())?;
    let rss_base = rss_kib(pid);

    // 2. The count flood.
    eprintln!("{attackers} attackers run 64-selector counts for {seconds} s ...");
    let flood: Vec<Child> =
        (0..attackers).map(|_| attacker("count", &socket, seconds)).collect::<Result<_>>()?;
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut rss_peak = rss_base;
    std::thread::sleep(Duration::from_millis(500));
    while started.elapsed() < Duration::from_secs(seconds.saturating_sub(1)) {
        latencies.push(timed(&mut root, one_selector())?);
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            rss_peak = rss_peak.max(rss_kib(pid));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let mut attacker_lines = Vec::new();
    for c in flood {
        let out = c.wait_with_output().map_err(|e| msg(e.to_string()))?;
        attacker_lines.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    latencies.sort();
    let worst = latencies.last().copied().unwrap_or_default();
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or_default();

    // 3. A stalled snapshot reader, then a kill.
    eprintln!("an attacker asks for the whole table and stops reading; then a kill ...");
    let staller = attacker("stall", &socket, 60)?;
    std::thread::sleep(Duration::from_secs(5));
    // A kill's own report times the whole backend call, lock waits included; a count
    // before it, compared with one alone, shows what the stalled reader costs others.
    let stalled_count = timed(&mut root, one_selector())?;
    let t = Instant::now();
    let report =
        root.kill_matching(vec![gateway1()], true).map_err(|e| msg(format!("kill: {e}")))?;
    let kill_total = t.elapsed();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(staller.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = staller.wait_with_output();

    let count_goal = t1 + t64 + Duration::from_millis(500);
    let stalled_goal = t1 * 2 + Duration::from_secs(1);
    let rss_growth_mib = rss_peak.saturating_sub(rss_base) / 1024;
    let goals = [
        (
            format!(
                "root's count under the flood waits for at most one attacker count (worst {} <= {})",
                secs(worst),
                secs(count_goal)
            ),
            worst <= count_goal,
            true,
        ),
        (
            format!(
                "the flood grows the broker's memory by at most 100 MiB (peak +{rss_growth_mib} MiB)"
            ),
            rss_growth_mib <= 100,
            false,
        ),
        (
            format!(
                "a stalled snapshot reader does not hold others up (count {} <= {})",
                secs(stalled_count),
                secs(stalled_goal)
            ),
            stalled_count <= stalled_goal,
            true,
        ),
    ];
    if json {
        let v = serde_json::json!({
            "states": states,
            "attackers": attackers,
            "count_1_selector_s": t1.as_secs_f64(),
            "count_64_selectors_s": t64.as_secs_f64(),
            "root_count_under_flood_median_s": median.as_secs_f64(),
            "root_count_under_flood_worst_s": worst.as_secs_f64(),
            "rss_base_kib": rss_base,
            "rss_peak_kib": rss_peak,
            "kill_with_stalled_reader_s": kill_total.as_secs_f64(),
            "count_with_stalled_reader_s": stalled_count.as_secs_f64(),
            "kill_killed": report.killed,
            "attackers_report": attacker_lines,
            "goals": goals.iter().map(|(g, ok, timing)| serde_json::json!({"goal": g, "pass": ok, "timing": timing})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!("hostile peers against a pf-model broker of {states} states ({})", bin.display());
        println!("  count, 1 selector (root, alone):            {}", secs(t1));
        println!("  count, 64 selectors (root, alone):          {}", secs(t64));
        println!(
            "  root's 1-selector count during {attackers} attackers' 64-selector counts: median {}, worst {} ({} samples)",
            secs(median),
            secs(worst),
            latencies.len()
        );
        for l in &attacker_lines {
            println!("    {l}");
        }
        println!(
            "  broker RSS: {} MiB before, {} MiB at the peak of the flood",
            rss_base / 1024,
            rss_peak / 1024
        );
        println!(
            "  with a stalled snapshot reader: 1-selector count {}, kill of gateway 1 ({} states) {}",
            secs(stalled_count),
            report.killed,
            secs(kill_total)
        );
        println!("goals:");
        for (g, ok, _) in &goals {
            println!("  {} {g}", if *ok { "PASS" } else { "FAIL" });
        }
    }
    drop(broker);
    // --report-only (CI's smoke run, on a machine shared with builds): a latency depends on
    // what else runs, so a missed timing goal is reported, not failed; memory still fails.
    let excused = |timing: bool| report_only && timing;
    let fatal = goals.iter().filter(|(_, ok, timing)| !*ok && !excused(*timing)).count();
    let reported = goals.iter().filter(|(_, ok, _)| !ok).count() - fatal;
    if reported > 0 {
        eprintln!("{reported} timing goal(s) missed (--report-only: not a failure)");
    }
    if fatal == 0 { Ok(()) } else { Err(msg("a goal was missed")) }
}
