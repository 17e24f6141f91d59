//! `cargo xtask demo`: a two-WAN firewall in private namespaces with a big conntrack table;
//! the engine judges both gateways from real ICMP probes, ISP1 silently stops answering, the
//! engine decides WAN1 is down and has the broker kill exactly WAN1's states.

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use statecull_conntrack::fill::{TableSpec, WAN1, WAN2, Wan};
use statecull_control::{Event, EventKind};
use statecull_tests::BrokerProcess;
use statecull_tests::lab::{EngineProcess, TwoWanLab, conntrack_policy};

/// Probe interval of the demo's gateways.
const PROBE_INTERVAL_MS: u64 = 200;

use crate::util::{self, IoContext, Result, msg, thousands};

/// Run `statecull` with these arguments; its stdout, or an error with its stderr.
fn statecull(bin: &Path, args: &[&OsStr]) -> Result<Vec<u8>> {
    let out = Command::new(bin).args(args).output().context(format!("run {}", bin.display()))?;
    if !out.status.success() {
        let shown: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        return Err(msg(format!(
            "statecull {} failed: {}",
            shown.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

/// Run the CLI and parse its one JSON object.
fn cli_json(bin: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let mut all: Vec<&OsStr> =
        vec![OsStr::new("broker"), OsStr::new("--socket"), socket.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    all.push(OsStr::new("--json"));
    let out = statecull(bin, &all)?;
    serde_json::from_slice(&out)
        .map_err(|e| msg(format!("statecull {}: bad JSON: {e}", args.join(" "))))
}

fn count(bin: &Path, socket: &Path, args: &[&str]) -> Result<u64> {
    cli_json(bin, socket, &[&["count"], args].concat())?["count"]
        .as_u64()
        .ok_or_else(|| msg(format!("statecull count {}: no count in the answer", args.join(" "))))
}

struct GatewayCounts {
    by_mark: u64,
    by_nat_v4: u64,
    by_nat_v6: u64,
}

fn gateway_counts(bin: &Path, socket: &Path, wan: &Wan) -> Result<GatewayCounts> {
    let mark = format!("{}/0xff", wan.mark);
    Ok(GatewayCounts {
        by_mark: count(bin, socket, &["--mark", &mark])?,
        by_nat_v4: count(bin, socket, &["--nat-addr", &IpAddr::V4(wan.nat_v4).to_string()])?,
        by_nat_v6: count(bin, socket, &["--nat-addr", &IpAddr::V6(wan.nat_v6).to_string()])?,
    })
}

/// Per address family, how the broker runs tuple kills (as `statecull broker hello` says).
fn tuple_filter_status(caps: &serde_json::Value) -> String {
    let listed = |list: &str, family: &str| {
        caps[list].as_array().is_some_and(|a| a.iter().any(|f| f.as_str() == Some(family)))
    };
    ["ipv4", "ipv6"]
        .iter()
        .map(|family| {
            let status = if listed("kernel_tuple_broken", family) {
                "tested and found wrong on this kernel: dump and delete"
            } else if listed("kernel_tuple_flush", family) {
                "in the kernel"
            } else {
                "not verified yet (no entries to test on): dump and delete"
            };
            format!("{family} {status}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Run `statecull` against the engine's control socket; its stdout.
fn engine_cli(bin: &Path, control: &Path, args: &[&str]) -> Result<String> {
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.extend([OsStr::new("--control"), control.as_os_str()]);
    Ok(String::from_utf8_lossy(&statecull(bin, &all)?).into_owned())
}

fn engine_events(bin: &Path, control: &Path) -> Result<Vec<Event>> {
    engine_cli(bin, control, &["events", "--json"])?
        .lines()
        .map(|l| serde_json::from_str(l).map_err(|e| msg(format!("bad event line {l:?}: {e}"))))
        .collect()
}

/// The `sandbox` field of a daemon's JSON "confined" log line.
fn sandbox_line(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "confined")
        .and_then(|v| v["sandbox"].as_str().map(str::to_owned))
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn demo(entries: u64) -> Result<()> {
    util::require_root("the demo")?;
    util::ensure_tools(&[util::IP])?;
    util::ensure_conntrack()?;
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let bins = util::build_release()?;
    let (broker_bin, cli_bin, engine_bin) =
        (bins.join("statecull-broker"), bins.join("statecull"), bins.join("statecull-engine"));
    let _knobs = util::size_conntrack(entries, None)?;

    let lab = TwoWanLab::create("demo").context("create namespaces")?;
    println!(
        "statecull demo: a two-WAN firewall (namespace {}) with ISP namespaces {} and {}",
        lab.fw.name(),
        lab.isp[0].name(),
        lab.isp[1].name()
    );
    let spec = TableSpec::two_wans(entries);
    let started = Instant::now();
    let loaded = lab.fw.fill(&spec).context("fill")?;
    println!(
        "  loaded {} states (TCP and UDP, IPv4 and IPv6, SNAT to WAN1 or WAN2, ct mark 1 or 2) in {:.2} s",
        thousands(loaded.inserted),
        started.elapsed().as_secs_f64()
    );

    let broker = BrokerProcess::start(&broker_bin, &lab.fw, &["--log-format", "json"])
        .context("start the broker")?;
    let socket = broker.socket().to_path_buf();
    let hello = cli_json(&cli_bin, &socket, &["hello"])?;
    let caps = &hello["backend"]["capabilities"];
    println!(
        "  broker up: backend {} on kernel {}, in-kernel kills by mark: {}; by NAT address: {}",
        hello["backend"]["kind"].as_str().unwrap_or("?"),
        hello["backend"]["kernel"].as_str().unwrap_or("?"),
        if caps["kernel_mark_flush"].as_bool() == Some(true) { "yes" } else { "no" },
        tuple_filter_status(caps),
    );
    let mut engine = EngineProcess::start(
        &engine_bin,
        &lab.fw,
        &conntrack_policy(&socket, PROBE_INTERVAL_MS),
        &["--log-format", "json"],
    )
    .context("start the engine")?;
    let control = engine.control().to_path_buf();
    println!(
        "  engine up (unprivileged logic, ICMP datagram probes every {PROBE_INTERVAL_MS} ms through each WAN link)"
    );
    for (name, log) in [("broker", broker.log_text()), ("engine", engine.log_text())] {
        match sandbox_line(&log) {
            Some(s) => {
                println!("  {name} confined:");
                for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                    if !part.starts_with("sandbox of") {
                        println!("      {}", part.split_whitespace().collect::<Vec<_>>().join(" "));
                    }
                }
            }
            None => return Err(msg(format!("the {name} did not report its confinement:\n{log}"))),
        }
    }

    // Both gateways healthy, judged from real probes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !engine.running() {
            return Err(msg(format!("the engine exited: {}", engine.log_text())));
        }
        let st: serde_json::Value =
            serde_json::from_str(&engine_cli(&cli_bin, &control, &["status", "--json"])?)
                .map_err(|e| msg(format!("status: {e}")))?;
        let ready = st["gateways"].as_array().is_some_and(|gws| {
            gws.iter().all(|g| g["samples"].as_u64().unwrap_or(0) >= 5 && g["state"] == "up")
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err(msg(format!("gateways not judged healthy in 30 s: {st}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\n  $ statecull status");
    print!("{}", indent(&engine_cli(&cli_bin, &control, &["status"])?));
    println!("\n  $ statecull plan --down WAN1");
    print!("{}", indent(&engine_cli(&cli_bin, &control, &["plan", "--down", "WAN1"])?));

    let before =
        [gateway_counts(&cli_bin, &socket, &WAN1)?, gateway_counts(&cli_bin, &socket, &WAN2)?];
    let seen = engine_events(&cli_bin, &control)?.last().map_or(0, |e| e.seq);
    println!("\n  ISP1 silently stops answering (its link stays up) ...");
    let cut = unix_ms();
    lab.set_answering(0, false).context("cut ISP1")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let evs = engine_events(&cli_bin, &control)?;
        if evs.iter().any(|e| e.kind == EventKind::SweepDone || e.kind == EventKind::PlanFailed) {
            break evs;
        }
        if Instant::now() > deadline {
            return Err(msg(format!("no kill within 60 s: {evs:?}\n{}", engine.log_text())));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("\n  $ statecull events");
    let new: Vec<&Event> = events.iter().filter(|e| e.seq > seen).collect();
    for e in &new {
        println!("    {}", statecull_cli::engine_cmds::event_line(e));
    }
    let after =
        [gateway_counts(&cli_bin, &socket, &WAN1)?, gateway_counts(&cli_bin, &socket, &WAN2)?];

    println!();
    println!(
        "  {:<8} {:>9} {:>18} {:>18} {:>12} {:>12}",
        "gateway", "ct mark", "SNAT IPv4", "SNAT IPv6", "before", "after"
    );
    for (i, wan) in [WAN1, WAN2].iter().enumerate() {
        println!(
            "  {:<8} {:>9} {:>18} {:>18} {:>12} {:>12}",
            format!("WAN{}", i + 1),
            wan.mark,
            wan.nat_v4.to_string(),
            wan.nat_v6.to_string(),
            thousands(before[i].by_mark),
            thousands(after[i].by_mark),
        );
    }

    let find = |k: EventKind| new.iter().find(|e| e.kind == k).copied();
    let mut problems = Vec::new();
    match (find(EventKind::GatewayDown), find(EventKind::Routed), find(EventKind::PlanDone)) {
        (Some(down), Some(routed), Some(done)) => {
            println!(
                "\n  detection (ISP1 cut -> down decision): {} ms; decision -> routing settled: {} ms; \
                 kill: {} states in {:.1} ms; cut -> kill done: {} ms",
                down.unix_ms.saturating_sub(cut),
                routed.unix_ms.saturating_sub(down.unix_ms),
                thousands(done.killed.unwrap_or(0)),
                done.elapsed_ms.unwrap_or(0.0),
                done.unix_ms.saturating_sub(cut),
            );
            if done.killed != Some(before[0].by_mark) {
                problems.push(format!(
                    "the engine reported {:?} killed, WAN1 had {}",
                    done.killed, before[0].by_mark
                ));
            }
        }
        _ => problems.push("missing gateway-down, routed or plan-done event".into()),
    }
    if new.iter().any(|e| e.gateway.as_deref() == Some("WAN2") && e.kind == EventKind::GatewayDown)
    {
        problems.push("WAN2 was judged down".into());
    }
    if after[0].by_mark != 0 || after[0].by_nat_v4 != 0 || after[0].by_nat_v6 != 0 {
        problems.push(format!("WAN1 still has {} states", after[0].by_mark));
    }
    if after[1].by_mark != before[1].by_mark
        || after[1].by_nat_v4 != before[1].by_nat_v4
        || after[1].by_nat_v6 != before[1].by_nat_v6
    {
        problems.push(format!("WAN2 changed: {} -> {}", before[1].by_mark, after[1].by_mark));
    }
    if let Some(line) = broker.log_text().lines().find(|l| l.contains("statecull::audit")) {
        println!("  broker audit: {line}");
    }
    drop(engine);
    drop(broker);
    let names: Vec<String> =
        [&lab.fw, &lab.isp[0], &lab.isp[1]].iter().map(|n| n.name().to_owned()).collect();
    drop(lab);
    println!("  removed namespaces {}", names.join(", "));
    if problems.is_empty() {
        println!(
            "\nOK: the engine saw WAN1 fail from its own probes and had every WAN1 state killed \
             (IPv4 and IPv6); every WAN2 state untouched."
        );
        Ok(())
    } else {
        Err(msg(format!("demo failed: {}", problems.join("; "))))
    }
}
