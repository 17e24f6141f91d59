//! `cargo xtask bench engine`: what the engine costs at millions of states, and whether a
//! kill ever waits for something else, measured from outside over one run.
//!
//! One private namespace holds a generated table (`--entries`, 10 % via WAN1: ct mark 1,
//! SNAT to WAN1's addresses; the rest WAN2), the release broker and the release engine, both
//! confined as deployed. The gateways' health is external (`statecull gateway NAME ...`)
//! and routing is confirmed by a signal, so nothing but the verdict starts a kill. Over that
//! one run it measures:
//!
//! 1. each daemon's CPU while idle (`--idle`, default 60 s): utime + stime from
//!    `/proc/PID/stat`, nothing asked of either daemon meanwhile;
//! 2. `statecull status`: the whole CLI process, and one raw request on the control socket;
//! 3. a count in flight, then a down verdict: `statecull plan --down WAN2` makes the engine
//!    count WAN2's states on the broker (a table walk); while the broker walks (its CPU
//!    time rising), `statecull gateway WAN1 down --routed` is sent. From the engine's
//!    events: verdict → `plan-started`, verdict → `plan-done`; from the broker's audit line:
//!    the kill's own elapsed time ("the kill alone") and when the broker started it;
//! 4. peak RSS (`VmHWM`) of both daemons at the end.
//!
//! Goals (PASS/FAIL; exit status 1 if one fails unless `--report-only`): broker + engine
//! idle ≤ 1 % of one core; verdict → kill done ≤ kill alone + 50 ms; status ≤ 100 ms. The
//! kill's correctness (every WAN1 state gone, the count the engine reported) is checked
//! always: a wrong kill is an error, not a missed goal.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecull_cli::engine_cmds::ControlClient;
use statecull_conntrack::fill::{TableSpec, WAN1, WAN2};
use statecull_control::{ControlReply, ControlRequest, Event, EventKind, StatusReply};
use statecull_tests::lab::EngineProcess;
use statecull_tests::{BrokerProcess, Netns};

use crate::util::{self, IoContext, Result, msg, thousands};

/// What `cargo xtask bench engine` was asked for.
#[derive(Debug, Clone)]
pub struct Options {
    pub entries: u64,
    /// How long both daemons are watched while idle.
    pub idle: Duration,
    pub json: bool,
    /// Print the goals without failing on a missed one (CI's smoke run on a small table).
    pub report_only: bool,
}

/// Share of the table via WAN1.
const WAN1_PERCENT: u8 = 10;
/// How many `status` requests are timed, each way.
const STATUS_SAMPLES: usize = 5;
/// The goals.
const IDLE_GOAL_PCT: f64 = 1.0;
const KILL_SLACK_MS: f64 = 50.0;
const STATUS_GOAL_MS: f64 = 100.0;

fn policy(broker_socket: &Path) -> String {
    let gateway = |name: &str, dev: &str, gw: &str, w: &statecull_conntrack::fill::Wan| {
        format!(
            r#"
[[gateway]]
name = "{name}"
interface = "{dev}"
address = "{gw}"
health_source = "external"
[gateway.states]
mark = "{mark:#x}/0xff"
nat_addr = ["{v4}", "{v6}"]
"#,
            mark = w.mark,
            v4 = w.nat_v4,
            v6 = w.nat_v6,
        )
    };
    format!(
        r#"# cargo xtask bench engine: external verdicts, routing confirmed by a signal.
[engine]
broker_socket = "{broker}"

[routing]
confirm = "signal"
settle_timeout = "60s"
sweep_delay = "1s"
{wan1}{wan2}
[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
        broker = broker_socket.display(),
        wan1 = gateway("WAN1", "wan1", "198.51.100.254", &WAN1),
        wan2 = gateway("WAN2", "wan2", "203.0.113.254", &WAN2),
    )
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ; 100 on Linux).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

/// utime + stime of a process, in clock ticks (every thread's, the process's own).
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .context(format!("/proc/{pid}/stat (did the daemon exit?)"))?;
    // "pid (comm) state ppid ...": utime and stime are fields 14 and 15, i.e. the 12th and
    // 13th after the parenthesised name.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok());
    match (num(11), num(12)) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => Err(msg(format!("cannot read utime/stime from /proc/{pid}/stat"))),
    }
}

/// A line of `/proc/PID/status`, in KiB (VmHWM, VmRSS).
fn status_kib(pid: i32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The pid of the process in `ns` whose command name starts with `comm` (the kernel keeps
/// 15 characters: "statecull-engin").
fn pid_in(ns: &Netns, comm: &str, except: Option<i32>) -> Result<i32> {
    let out =
        Command::new("ip").args(["netns", "pids", ns.name()]).output().context("ip netns pids")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| Some(*p) != except)
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim().starts_with(comm))
        })
        .ok_or_else(|| msg(format!("no {comm}* process in namespace {}", ns.name())))
}

/// Wait until `pid` has used no CPU for `calm` (no table walk running), at most `limit`.
fn wait_quiet(pid: i32, calm: Duration, limit: Duration) -> Result<bool> {
    let deadline = Instant::now() + limit;
    let mut last = cpu_ticks(pid)?;
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        let now = cpu_ticks(pid)?;
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= calm {
            return Ok(true);
        }
    }
    Ok(false)
}

fn events(control: &Path) -> Result<Vec<Event>> {
    let mut c = ControlClient::connect(control, Some(Duration::from_secs(30)))
        .map_err(|e| msg(format!("events: {e}")))?;
    match c.call(&ControlRequest::Events { follow: false }).map_err(|e| msg(e.to_string()))? {
        ControlReply::Events { events } => Ok(events),
        other => Err(msg(format!("unexpected answer to events: {other:?}"))),
    }
}

fn find(evs: &[Event], after: u64, kind: EventKind) -> Option<&Event> {
    evs.iter().find(|e| e.seq > after && e.kind == kind)
}

fn field<'a>(e: &'a Event, name: &str) -> Option<&'a str> {
    e.fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Poll the engine's events until one of `kinds` shows up after `after`.
fn wait_event(
    control: &Path,
    after: u64,
    kinds: &[EventKind],
    limit: Duration,
) -> Result<Vec<Event>> {
    let deadline = Instant::now() + limit;
    loop {
        let evs = events(control)?;
        if kinds.iter().any(|k| find(&evs, after, *k).is_some()) {
            return Ok(evs);
        }
        if Instant::now() > deadline {
            return Err(msg(format!(
                "none of {kinds:?} within {} s; events: {}",
                limit.as_secs(),
                evs.iter()
                    .filter(|e| e.seq > after)
                    .map(statecull_cli::engine_cmds::event_line)
                    .collect::<Vec<_>>()
                    .join("\n  ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `statecull` with these arguments; its stdout, or an error with its stderr.
fn statecull(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin).args(args).output().context(format!("run {}", bin.display()))?;
    if !out.status.success() {
        return Err(msg(format!(
            "statecull {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `statecull broker count --mark M/0xff`: the count and the broker's elapsed milliseconds.
fn broker_count(bin: &Path, socket: &Path, mark: u32) -> Result<(u64, f64)> {
    let sock = socket.display().to_string();
    let mark = format!("{mark}/0xff");
    let out = statecull(bin, &["broker", "--socket", &sock, "count", "--mark", &mark, "--json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| msg(format!("count: bad JSON: {e}")))?;
    Ok((v["count"].as_u64().unwrap_or(0), v["elapsed_ms"].as_f64().unwrap_or(0.0)))
}

/// Milliseconds of one `statecull status` (the whole CLI process).
fn status_cli_ms(bin: &Path, control: &Path) -> Result<f64> {
    let t = Instant::now();
    let out = Command::new(bin)
        .args(["status", "--json", "--control"])
        .arg(control)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("statecull status")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        return Err(msg(format!(
            "statecull status failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(ms)
}

/// Milliseconds of one raw `"status"` request on the control socket (connect, ask, read the
/// answer line), and the answer.
fn status_raw_ms(control: &Path) -> Result<(f64, StatusReply)> {
    let t = Instant::now();
    let mut s = UnixStream::connect(control).context("connect to the control socket")?;
    s.set_read_timeout(Some(Duration::from_secs(60))).context("control socket timeout")?;
    s.write_all(b"\"status\"\n").context("send status")?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).context("read the status answer")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let reply: ControlReply =
        serde_json::from_str(&line).map_err(|e| msg(format!("status: bad answer: {e}")))?;
    let ControlReply::Status(st) = reply else {
        return Err(msg(format!("status: unexpected answer {}", line.trim())));
    };
    Ok((ms, st))
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(0.0, f64::max)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "2026-12-01T17:48:44.181515Z" (the broker's log timestamps, UTC) → µs since the epoch.
fn rfc3339_us(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(6).collect();
    let us = digits.parse::<i64>().ok()? * 10_i64.pow(6 - u32::try_from(digits.len()).ok()?);
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se;
    u64::try_from(secs * 1_000_000 + us).ok()
}

/// The broker's audit line of the engine's first kill-matching after `after_us`.
#[derive(Debug, Clone)]
struct Audit {
    killed: u64,
    elapsed_us: u64,
    path: String,
    table_passes: u64,
    /// When the broker logged it (the kill had ended), µs since the epoch.
    logged_us: u64,
}

fn engine_kill_audit(log: &str, after_us: u64) -> Option<Audit> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "statecull::audit" && v["verb"] == "kill-matching")
        .filter(|v| v["client"].as_str().is_some_and(|c| c.starts_with("statecull-engine")))
        .filter_map(|v| {
            Some(Audit {
                killed: v["killed"].as_u64()?,
                elapsed_us: v["elapsed_us"].as_u64()?,
                path: v["path"].as_str().unwrap_or("?").to_owned(),
                table_passes: v["table_passes"].as_u64().unwrap_or(0),
                logged_us: rfc3339_us(v["timestamp"].as_str()?)?,
            })
        })
        .find(|a| a.logged_us >= after_us)
}

/// The `sandbox` field of a daemon's JSON "confined" log line.
fn confined(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "confined")
        .and_then(|v| v["sandbox"].as_str().map(str::to_owned))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One `statecull plan --down WAN2` in the background: the engine counts WAN2's states.
fn start_plan(cli: &Path, control: &Path) -> Result<Child> {
    Command::new(cli)
        .args(["plan", "--down", "WAN2", "--json", "--control"])
        .arg(control)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start statecull plan")
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
struct Figures {
    entries: u64,
    wan1: u64,
    hashsize: String,
    load_before: String,
    load_after: String,
    idle_s: f64,
    idle_broker_pct: f64,
    idle_engine_pct: f64,
    status_cli_ms: Vec<f64>,
    status_raw_ms: Vec<f64>,
    status_has_counts: bool,
    /// The background states count as status reported it after the idle window: its
    /// duration, and the time from the last one's end to the next one's earliest start.
    refresh_setting: Option<String>,
    refresh_count_ms: Option<u64>,
    refresh_interval_ms: Option<u64>,
    count_alone_ms: f64,
    /// Spawning the plan → the verdict, and the broker's CPU spent in between.
    count_lead_ms: f64,
    count_cpu_ms_at_verdict: f64,
    plan_waiting_at_verdict: bool,
    plan_cli_ms: f64,
    verdict_cli_ms: f64,
    verdict_to_down_ms: Option<f64>,
    verdict_to_started_ms: Option<f64>,
    verdict_to_broker_start_ms: Option<f64>,
    verdict_to_done_ms: Option<f64>,
    engine_step_ms: Option<f64>,
    kill_alone_ms: Option<f64>,
    killed: Option<u64>,
    kill_path: String,
    table_passes: u64,
    rss_broker_kib: u64,
    rss_engine_kib: u64,
    events: Vec<String>,
}

pub fn bench_engine(opts: &Options) -> Result<()> {
    util::require_root("the engine benchmark")?;
    util::ensure_tools(&[util::IP])?;
    util::ensure_conntrack()?;
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let bins = util::build_release()?;
    let (broker_bin, engine_bin, cli) =
        (bins.join("statecull-broker"), bins.join("statecull-engine"), bins.join("statecull"));
    let _knobs = util::size_conntrack(opts.entries, None)?;
    let mut f = Figures {
        entries: opts.entries,
        hashsize: std::fs::read_to_string("/sys/module/nf_conntrack/parameters/hashsize")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        load_before: load_average(),
        ..Figures::default()
    };
    let spec = TableSpec { wan1_percent: WAN1_PERCENT, ..TableSpec::two_wans(opts.entries) };
    f.wan1 = spec.count_where(|i| spec.wan_of(i) == 0);

    let ns = Netns::create("bencheng").context("namespace")?;
    eprintln!(
        "filling {} states ({} via WAN1) in namespace {} ...",
        thousands(opts.entries),
        thousands(f.wan1),
        ns.name()
    );
    let t = Instant::now();
    ns.fill(&spec).context("fill")?;
    eprintln!("  filled in {:.1} s", t.elapsed().as_secs_f64());

    let broker = BrokerProcess::start(&broker_bin, &ns, &["--log-format", "json"])
        .context("start the broker")?;
    let socket = broker.socket().to_path_buf();
    let broker_pid = broker.pid().ok_or_else(|| msg("the broker has no pid"))?;
    let engine =
        EngineProcess::start(&engine_bin, &ns, &policy(&socket), &["--log-format", "json"])
            .context("start the engine")?;
    let control = engine.control().to_path_buf();
    let engine_pid = pid_in(&ns, "statecull-engin", Some(broker_pid))?;
    for (name, log) in [("broker", broker.log_text()), ("engine", engine.log_text())] {
        if confined(&log).is_none() {
            return Err(msg(format!("the {name} did not report its confinement:\n{log}")));
        }
    }
    eprintln!("broker (pid {broker_pid}) and engine (pid {engine_pid}) up, both confined");

    // Start-up is over once the engine has talked to the broker (its first states count).
    wait_event(&control, 0, &[EventKind::BrokerConnected], Duration::from_secs(600))?;
    wait_quiet(broker_pid, Duration::from_secs(1), Duration::from_secs(120))?;

    // 1. Idle.
    eprintln!("both daemons idle for {} s ...", opts.idle.as_secs());
    let hz = clock_ticks();
    let (b0, e0, t0) = (cpu_ticks(broker_pid)?, cpu_ticks(engine_pid)?, Instant::now());
    std::thread::sleep(opts.idle);
    let (b1, e1, secs) = (cpu_ticks(broker_pid)?, cpu_ticks(engine_pid)?, t0.elapsed());
    f.idle_s = secs.as_secs_f64();
    let pct = |d: u64| d as f64 / hz / f.idle_s * 100.0;
    f.idle_broker_pct = pct(b1.saturating_sub(b0));
    f.idle_engine_pct = pct(e1.saturating_sub(e0));

    // 2. status.
    eprintln!("timing statecull status ...");
    f.status_has_counts = true;
    for _ in 0..STATUS_SAMPLES {
        f.status_cli_ms.push(status_cli_ms(&cli, &control)?);
        let (ms, st) = status_raw_ms(&control)?;
        f.status_raw_ms.push(ms);
        f.status_has_counts &= st.gateways.iter().all(|g| g.states.is_some());
        if let Some(r) = st.states_refresh {
            f.refresh_setting = Some(r.setting);
            f.refresh_count_ms = r.last_count_ms;
            f.refresh_interval_ms = r.age_ms.zip(r.next_in_ms).map(|(a, n)| a + n);
        }
    }

    // 3. A count in flight, then the verdict.
    wait_quiet(broker_pid, Duration::from_millis(500), Duration::from_secs(120))?;
    let (wan2, count_ms) = broker_count(&cli, &socket, WAN2.mark)?;
    f.count_alone_ms = count_ms;
    eprintln!(
        "a count of WAN2's {} states alone: {count_ms:.0} ms; now the same count through the \
         engine (statecull plan --down WAN2), and WAN1's down verdict while it runs ...",
        thousands(wan2)
    );
    wait_quiet(broker_pid, Duration::from_millis(500), Duration::from_secs(120))?;
    let seen = events(&control)?.last().map_or(0, |e| e.seq);
    let cpu0 = cpu_ticks(broker_pid)?;
    let spawned = Instant::now();
    let mut plan = start_plan(&cli, &control)?;
    // The broker is walking the table once it has spent 20 ms of CPU; a short table's count
    // may be over before that shows, so wait at most half the count's own time.
    let lead_limit = Duration::from_secs_f64((count_ms / 2.0 + 20.0) / 1e3);
    while spawned.elapsed() < lead_limit {
        if cpu_ticks(broker_pid)?.saturating_sub(cpu0) as f64 / hz >= 0.020 {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f.count_lead_ms = spawned.elapsed().as_secs_f64() * 1e3;
    f.count_cpu_ms_at_verdict = cpu_ticks(broker_pid)?.saturating_sub(cpu0) as f64 / hz * 1e3;
    f.plan_waiting_at_verdict = matches!(plan.try_wait(), Ok(None));
    let verdict_us = unix_us();
    let verdict_ms = verdict_us as f64 / 1e3;
    let t = Instant::now();
    statecull(&cli, &["gateway", "WAN1", "down", "--routed", "--control", &control_str(&control)])?;
    f.verdict_cli_ms = t.elapsed().as_secs_f64() * 1e3;
    let evs = wait_event(
        &control,
        seen,
        &[EventKind::PlanDone, EventKind::PlanFailed],
        Duration::from_secs(600),
    )?;
    let out = plan.wait_with_output().context("statecull plan")?;
    f.plan_cli_ms = spawned.elapsed().as_secs_f64() * 1e3;
    if !out.status.success() {
        eprintln!(
            "note: statecull plan --down WAN2 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if let Some(failed) = find(&evs, seen, EventKind::PlanFailed) {
        return Err(msg(format!("the engine's kill failed: {}", failed.message)));
    }
    let since = |e: Option<&Event>| e.map(|e| e.unix_ms as f64 - verdict_ms);
    f.verdict_to_down_ms = since(find(&evs, seen, EventKind::GatewayDown));
    f.verdict_to_started_ms = since(find(&evs, seen, EventKind::PlanStarted));
    let done = find(&evs, seen, EventKind::PlanDone);
    f.verdict_to_done_ms = since(done);
    f.engine_step_ms = done.and_then(|e| e.elapsed_ms);
    f.killed = done.and_then(|e| e.killed);
    // The sweep follows a second later; let it finish before the last checks.
    let evs = wait_event(&control, seen, &[EventKind::SweepDone], Duration::from_secs(600))
        .unwrap_or(evs);
    f.events = evs
        .iter()
        .filter(|e| e.seq > seen)
        .map(|e| {
            let mut line = statecull_cli::engine_cmds::event_line(e);
            if let Some(ms) = field(e, "decision_to_kill_ms") {
                line.push_str(&format!(" (decision to kill done {ms} ms)"));
            }
            line
        })
        .collect();
    let audit = engine_kill_audit(&broker.log_text(), verdict_us.saturating_sub(1_000_000))
        .ok_or_else(|| msg("no audit line of the engine's kill in the broker's log"))?;
    f.kill_alone_ms = Some(audit.elapsed_us as f64 / 1e3);
    f.verdict_to_broker_start_ms =
        Some((audit.logged_us.saturating_sub(audit.elapsed_us)) as f64 / 1e3 - verdict_ms);
    f.kill_path = audit.path.clone();
    f.table_passes = audit.table_passes;

    // Correctness: exactly WAN1's states died.
    let (left1, _) = broker_count(&cli, &socket, WAN1.mark)?;
    let (left2, _) = broker_count(&cli, &socket, WAN2.mark)?;
    let mut wrong = Vec::new();
    if left1 != 0 {
        wrong.push(format!("{} WAN1 states left after the kill", thousands(left1)));
    }
    if left2 != wan2 {
        wrong.push(format!("WAN2 had {} states, now {}", thousands(wan2), thousands(left2)));
    }
    if f.killed != Some(f.wan1) || audit.killed != f.wan1 {
        wrong.push(format!(
            "WAN1 had {} states; the engine reported {:?} killed, the broker {}",
            thousands(f.wan1),
            f.killed,
            thousands(audit.killed)
        ));
    }

    f.rss_broker_kib = status_kib(broker_pid, "VmHWM").unwrap_or(0);
    f.rss_engine_kib = status_kib(engine_pid, "VmHWM").unwrap_or(0);
    f.load_after = load_average();
    drop(engine);
    drop(broker);
    drop(ns);
    if !wrong.is_empty() {
        return Err(msg(format!("the kill was wrong: {}", wrong.join("; "))));
    }

    let goals = goals(&f);
    if opts.json {
        println!("{}", to_json(&f, &goals));
    } else {
        print_table(&f, &goals);
    }
    let missed = goals.iter().filter(|(_, ok)| !ok).count();
    if missed > 0 && !opts.report_only {
        return Err(msg(format!("{missed} goal(s) missed")));
    }
    if missed > 0 {
        eprintln!("{missed} goal(s) missed (--report-only: not a failure)");
    }
    Ok(())
}

fn control_str(p: &Path) -> String {
    p.display().to_string()
}

fn goals(f: &Figures) -> Vec<(String, bool)> {
    let idle = f.idle_broker_pct + f.idle_engine_pct;
    let status = median(&f.status_cli_ms).max(median(&f.status_raw_ms));
    let kill = match (f.verdict_to_done_ms, f.kill_alone_ms) {
        (Some(done), Some(alone)) => (
            format!(
                "verdict -> kill done <= kill alone + {KILL_SLACK_MS:.0} ms ({done:.0} ms; kill alone {alone:.0} ms)"
            ),
            done <= alone + KILL_SLACK_MS,
        ),
        _ => ("verdict -> kill done <= kill alone + 50 ms (not measured)".to_owned(), false),
    };
    vec![
        (
            format!(
                "broker + engine idle <= {IDLE_GOAL_PCT:.0} % of one core ({:.2} % + {:.2} % = {idle:.2} %)",
                f.idle_broker_pct, f.idle_engine_pct
            ),
            idle <= IDLE_GOAL_PCT,
        ),
        kill,
        (
            format!(
                "statecull status <= {STATUS_GOAL_MS:.0} ms (median {:.0} ms CLI, {:.0} ms raw request)",
                median(&f.status_cli_ms),
                median(&f.status_raw_ms)
            ),
            status <= STATUS_GOAL_MS,
        ),
    ]
}

/// A count of `count_ms` every `interval_ms`, as a share of one core.
fn refresh_pct(count_ms: u64, interval_ms: u64) -> f64 {
    count_ms as f64 / (interval_ms.max(count_ms).max(1)) as f64 * 100.0
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0} ms"))
}

fn print_table(f: &Figures, goals: &[(String, bool)]) {
    println!(
        "engine benchmark: {} states, {} via WAN1 ({WAN1_PERCENT} %), hash size {}, both daemons \
         confined, external health source",
        thousands(f.entries),
        thousands(f.wan1),
        f.hashsize
    );
    println!("load average before {}, after {}", f.load_before, f.load_after);
    let row = |label: &str, value: String| println!("  {label:<64} {value:>18}");
    row(
        &format!("CPU while idle ({:.0} s): broker", f.idle_s),
        format!("{:.2} % of a core", f.idle_broker_pct),
    );
    row(
        &format!("CPU while idle ({:.0} s): engine", f.idle_s),
        format!("{:.2} % of a core", f.idle_engine_pct),
    );
    row(
        &format!("statecull status, CLI process (median / max of {STATUS_SAMPLES})"),
        format!("{:.0} / {:.0} ms", median(&f.status_cli_ms), max(&f.status_cli_ms)),
    );
    row(
        &format!("status, raw control request (median / max of {STATUS_SAMPLES})"),
        format!("{:.0} / {:.0} ms", median(&f.status_raw_ms), max(&f.status_raw_ms)),
    );
    row(
        "status carried every gateway's state count",
        if f.status_has_counts { "yes" } else { "no" }.to_owned(),
    );
    if let (Some(c), Some(i)) = (f.refresh_count_ms, f.refresh_interval_ms) {
        row(
            &format!(
                "background states count (states_refresh = {}): took / every",
                f.refresh_setting.as_deref().unwrap_or("?")
            ),
            format!("{} ms / {:.0} s", thousands(c), i as f64 / 1e3),
        );
        row(
            "  averaged over its interval (not in the idle window above)",
            format!("{:.2} % of a core", refresh_pct(c, i)),
        );
    }
    row("count of WAN2's states alone (broker's elapsed)", format!("{:.0} ms", f.count_alone_ms));
    row(
        "count in flight at the verdict (since sent / broker CPU)",
        format!(
            "{:.0} ms / {:.0} ms{}",
            f.count_lead_ms,
            f.count_cpu_ms_at_verdict,
            if f.plan_waiting_at_verdict { "" } else { " (plan had answered)" }
        ),
    );
    row("verdict -> gateway-down event", opt_ms(f.verdict_to_down_ms));
    row("verdict -> kill started (plan-started event)", opt_ms(f.verdict_to_started_ms));
    row("verdict -> kill started by the broker (audit)", opt_ms(f.verdict_to_broker_start_ms));
    row("verdict -> kill done (plan-done event)", opt_ms(f.verdict_to_done_ms));
    row(
        &format!(
            "kill alone (broker's elapsed; {} states, {} pass)",
            f.killed.map_or_else(|| "-".to_owned(), thousands),
            f.table_passes
        ),
        opt_ms(f.kill_alone_ms),
    );
    row(&format!("  the broker's path: {}", f.kill_path), String::new());
    row("the kill step as the engine timed it", opt_ms(f.engine_step_ms));
    row(
        "peak RSS (VmHWM): broker / engine",
        format!("{} / {} MiB", f.rss_broker_kib / 1024, f.rss_engine_kib / 1024),
    );
    println!("  engine events:");
    for e in &f.events {
        println!("    {e}");
    }
    println!("goals:");
    for (g, ok) in goals {
        println!("  {} {g}", if *ok { "PASS" } else { "FAIL" });
    }
}

fn to_json(f: &Figures, goals: &[(String, bool)]) -> serde_json::Value {
    serde_json::json!({
        "entries": f.entries,
        "wan1_entries": f.wan1,
        "hashsize": f.hashsize.parse::<u64>().ok(),
        "load_average_before": f.load_before,
        "load_average_after": f.load_after,
        "idle_s": f.idle_s,
        "idle_cpu_pct": { "broker": f.idle_broker_pct, "engine": f.idle_engine_pct },
        "status_cli_ms": f.status_cli_ms,
        "status_raw_ms": f.status_raw_ms,
        "status_has_counts": f.status_has_counts,
        "states_refresh": {
            "setting": f.refresh_setting,
            "last_count_ms": f.refresh_count_ms,
            "interval_ms": f.refresh_interval_ms,
            "averaged_cpu_pct": f.refresh_count_ms.zip(f.refresh_interval_ms).map(|(c, i)| refresh_pct(c, i)),
        },
        "count_alone_ms": f.count_alone_ms,
        "count_in_flight": {
            "sent_before_verdict_ms": f.count_lead_ms,
            "broker_cpu_ms_at_verdict": f.count_cpu_ms_at_verdict,
            "plan_waiting_at_verdict": f.plan_waiting_at_verdict,
            "plan_cli_ms": f.plan_cli_ms,
        },
        "verdict_cli_ms": f.verdict_cli_ms,
        "verdict_to_gateway_down_ms": f.verdict_to_down_ms,
        "verdict_to_kill_started_ms": f.verdict_to_started_ms,
        "verdict_to_broker_kill_start_ms": f.verdict_to_broker_start_ms,
        "verdict_to_kill_done_ms": f.verdict_to_done_ms,
        "kill_alone_ms": f.kill_alone_ms,
        "engine_step_ms": f.engine_step_ms,
        "killed": f.killed,
        "kill_path": f.kill_path,
        "table_passes": f.table_passes,
        "peak_rss_kib": { "broker": f.rss_broker_kib, "engine": f.rss_engine_kib },
        "events": f.events,
        "goals": goals.iter().map(|(g, ok)| serde_json::json!({"goal": g, "pass": ok})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_timestamps_parse() {
        assert_eq!(rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(rfc3339_us("1970-01-02T00:00:01.5Z"), Some(86_401_500_000));
        // date -u -d 2026-12-01T17:48:44Z +%s = 1796147324
        assert_eq!(rfc3339_us("2026-12-01T17:48:44.181515Z"), Some(1_796_147_324_181_515));
        assert_eq!(rfc3339_us("2026-12-01 17:48:44"), None);
    }

    #[test]
    fn the_engines_kill_is_found_in_the_audit_log() {
        let log = r#"{"timestamp":"2026-12-01T17:48:44.181515Z","level":"INFO","message":"states killed","client":"statecull-engine 0.1.0","verb":"kill-matching","killed":100,"elapsed_us":122508,"path":"kernel-filtered-flush","table_passes":1,"target":"statecull::audit"}
not json
{"timestamp":"2026-12-01T17:48:45.000000Z","level":"INFO","message":"states killed","client":"statecull-engine 0.1.0","verb":"kill-matching","killed":0,"elapsed_us":9,"path":"kernel-filtered-flush","table_passes":1,"target":"statecull::audit"}"#;
        let a = engine_kill_audit(log, 0).unwrap();
        assert_eq!((a.killed, a.elapsed_us, a.table_passes), (100, 122_508, 1));
        let later = engine_kill_audit(log, 1_796_147_324_500_000).unwrap();
        assert_eq!(later.killed, 0);
    }

    #[test]
    fn the_policy_is_valid() {
        let p = policy(Path::new("/run/statecull/broker.sock"));
        assert!(p.contains("health_source = \"external\""));
        assert!(p.contains("mark = \"0x1/0xff\""));
    }
}
