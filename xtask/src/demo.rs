//! `cargo xtask demo`: a two-gateway conntrack table in a private namespace, WAN1's states
//! killed through the real broker and CLI, before/after counts per gateway.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use statecull_conntrack::fill::{TableSpec, WAN1, WAN2, Wan};
use statecull_tests::{BrokerProcess, Netns};

use crate::util::{self, IoContext, Result, msg, thousands};

/// Run the CLI and parse its one JSON object.
fn cli_json(bin: &Path, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(bin)
        .args(["broker", "--socket"])
        .arg(socket)
        .args(args)
        .arg("--json")
        .output()
        .context(format!("run {}", bin.display()))?;
    if !out.status.success() {
        return Err(msg(format!(
            "statecull {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout)
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

pub fn demo(entries: u64) -> Result<()> {
    util::require_root("the demo")?;
    util::ensure_tools(&[util::IP])?;
    util::ensure_conntrack()?;
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let bins = util::build_release()?;
    let (broker_bin, cli_bin) = (bins.join("statecull-broker"), bins.join("statecull"));
    let _knobs = util::size_conntrack(entries, None)?;

    let ns = Netns::create("demo").context("create namespace")?;
    println!("statecull demo: a two-gateway firewall's conntrack table in namespace {}", ns.name());
    let spec = TableSpec::two_wans(entries);
    let started = Instant::now();
    let loaded = ns.fill(&spec).context("fill")?;
    println!(
        "  loaded {} states (TCP and UDP, IPv4 and IPv6, SNAT to WAN1 or WAN2, ct mark 1 or 2) in {:.2} s",
        thousands(loaded.inserted),
        started.elapsed().as_secs_f64()
    );

    let broker = BrokerProcess::start(&broker_bin, &ns, &["--log-format", "json"])
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

    let before =
        [gateway_counts(&cli_bin, &socket, &WAN1)?, gateway_counts(&cli_bin, &socket, &WAN2)?];
    println!("\n  WAN1 fails. Killing its states: statecull broker kill --mark 1/0xff");
    let t = Instant::now();
    let kill = cli_json(&cli_bin, &socket, &["kill", "--mark", "1/0xff"])?;
    let wall = t.elapsed().as_secs_f64();
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
    let killed = kill["killed"].as_u64().unwrap_or(0);
    println!(
        "\n  killed {} states in {:.1} ms (whole CLI process; broker {:.1} ms), {} states/s, path {}, {} table pass(es)",
        thousands(killed),
        wall * 1000.0,
        kill["broker_elapsed_ms"].as_f64().unwrap_or(0.0),
        thousands((killed as f64 / wall.max(1e-9)) as u64),
        kill["path"].as_str().unwrap_or("?"),
        kill["table_passes"],
    );
    if let Some(note) = kill["note"].as_str() {
        println!("  note: {note}");
    }

    let mut problems = Vec::new();
    if after[0].by_mark != 0 || after[0].by_nat_v4 != 0 || after[0].by_nat_v6 != 0 {
        problems.push(format!("WAN1 still has {} states", after[0].by_mark));
    }
    if after[1].by_mark != before[1].by_mark
        || after[1].by_nat_v4 != before[1].by_nat_v4
        || after[1].by_nat_v6 != before[1].by_nat_v6
    {
        problems.push(format!("WAN2 changed: {} -> {}", before[1].by_mark, after[1].by_mark));
    }
    if killed != before[0].by_mark {
        problems.push(format!("reported {killed} killed, WAN1 had {}", before[0].by_mark));
    }
    if let Some(line) = broker.log_text().lines().find(|l| l.contains("statecull::audit")) {
        println!("  audit: {line}");
    }
    drop(broker);
    let name = ns.name().to_owned();
    drop(ns);
    println!("  removed namespace {name}");
    if problems.is_empty() {
        println!("\nOK: every WAN1 state gone (IPv4 and IPv6), every WAN2 state untouched.");
        Ok(())
    } else {
        Err(msg(format!("demo failed: {}", problems.join("; "))))
    }
}
