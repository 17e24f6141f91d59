//! `cargo xtask bench pf-model`: what killing a gateway's connections costs pf's kernel, by
//! the model's count of passes, states examined and lookups, for statecull's plan against
//! what pfSense/OPNsense and earlier patches do.
//!
//! Times are the model's CPU time in this process, not a FreeBSD kernel's: the counts are
//! what carries over.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use statecull_broker::backend::Backend;
use statecull_broker::backend::pf::PfBackend;
use statecull_pf::client::PfClient;
use statecull_pf::model::{Cost, PfModel};
use statecull_pf::model_device::{ModelDevice, Release};
use statecull_pf::plan;
use statecull_pf::table_gen::{ROUTER, Spec, router_table};
use statecull_pf::types::{PfKill, RuleAddr};
use statecull_proto::{BackendKind, CheckedSelector, Selector};

use crate::util::{Result, msg, thousands};

/// One method's result.
struct Outcome {
    label: String,
    cost: Cost,
    killed: u64,
    secs: f64,
    /// Requests extrapolated from a sample (method c).
    extrapolated_from: Option<(usize, usize)>,
    killed_ids: Option<HashSet<u64>>,
}

const W: statecull_pf::cost::Weights = statecull_pf::cost::Weights::MEASURED;

/// The model's counts priced with the weights the path choice uses.
fn modelled_us(c: &Cost) -> f64 {
    W.price(&statecull_pf::cost::Work {
        compared: c.states_examined,
        exported: c.states_exported,
        unlinked_by_filter: c.killed.saturating_sub(c.id_lookups),
        killed_by_id: c.id_lookups,
        key_lookups: c.key_lookups,
    })
}

/// A release broker over a model of `states` states kills WAN1's states by NAT address (the
/// listing path, where memory matters); its peak resident memory (VmHWM, KiB).
fn broker_peak_rss(states: usize) -> Result<u64> {
    let bin = crate::util::build_model_broker()?;
    let dir = statecull_tests::TempDir::new("bench-pf-rss").map_err(|e| msg(e.to_string()))?;
    let socket = dir.path().join("broker.sock");
    let mut child = std::process::Command::new(&bin)
        .args(["--backend", "pf-model", "--model-states", &states.to_string(), "--socket"])
        .arg(&socket)
        .args(statecull_tests::broker_test_args())
        .args(["--log-level", "warn"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| msg(format!("start {}: {e}", bin.display())))?;
    let result = (|| -> Result<u64> {
        let deadline = Instant::now() + std::time::Duration::from_secs(900);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if Instant::now() > deadline {
                return Err(msg("the model broker did not start"));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut c = statecull_cli::BrokerClient::connect(&socket, "bench pf-model")
            .map_err(|e| msg(e.to_string()))?;
        c.set_timeout(Some(std::time::Duration::from_secs(900))).map_err(|e| msg(e.to_string()))?;
        let nat = Selector { nat_addr: Some(ROUTER.wan_addr[0].0.into()), ..Selector::default() };
        c.kill_matching(vec![nat], true).map_err(|e| msg(e.to_string()))?;
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .map_err(|e| msg(e.to_string()))?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            .ok_or_else(|| msg("no VmHWM in /proc/PID/status"))
    })();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    result
}

fn selectors(gateways: &[IpAddr]) -> Result<Vec<CheckedSelector>> {
    gateways
        .iter()
        .map(|g| {
            Selector { gateway: Some(*g), ..Selector::default() }
                .check()
                .map_err(|e| msg(e.to_string()))
        })
        .collect()
}

fn alive(m: &PfModel) -> HashSet<u64> {
    m.states().map(|s| s.id).collect()
}

fn device(model: PfModel) -> Result<PfClient<ModelDevice>> {
    PfClient::probe(ModelDevice::new(model, Release::FREEBSD_15)).map_err(|e| msg(e.to_string()))
}

/// (a) statecull: the broker's pf backend, after one listing taught it the table's size;
/// with `force_listing`, (d): the listing path it would take (a protected prefix that touches
/// nothing forces it).
fn statecull_plan(
    model: PfModel,
    sels: &[CheckedSelector],
    force_listing: bool,
) -> Result<Outcome> {
    let rows = model.rows() as u64;
    let before = alive(&model);
    let backend =
        PfBackend::with_second_lane(device(model)?, BackendKind::PfModel, "model".into(), rows)
            .map_err(|e| msg(e.to_string()))?;
    backend.count(&[]).map_err(|e| msg(e.to_string()))?;
    let base = backend.with_device(|d| d.model().cost());
    let nowhere: Vec<statecull_proto::Prefix> = if force_listing {
        vec![
            "2001:db8:ffff:ffff::/64"
                .parse()
                .map_err(|e: statecull_proto::ProtoError| msg(e.to_string()))?,
        ]
    } else {
        Vec::new()
    };
    let t = Instant::now();
    let report = backend.kill_matching(sels, true, &nowhere).map_err(|e| msg(e.to_string()))?;
    let secs = t.elapsed().as_secs_f64();
    let (cost, after) = backend.with_device(|d| {
        // One lock for both (the model's lock is not re-entrant).
        let m = d.model();
        (m.cost() - base, alive(&m))
    });
    let tag = if force_listing { "(d) statecull's listing path" } else { "(a) statecull plan" };
    Ok(Outcome {
        label: format!("{tag} ({}, {} pass)", report.path, report.table_passes),
        cost,
        killed: report.killed,
        secs,
        extrapolated_from: None,
        killed_ids: Some(before.difference(&after).copied().collect()),
    })
}

/// (b) one kernel-filtered kill per gateway with kill_match (`pfctl -M -k gateway -k GW`).
fn per_gateway(model: PfModel, sels: &[CheckedSelector]) -> Result<Outcome> {
    let before = alive(&model);
    let mut c = device(model)?;
    let base = c.device().model().cost();
    let t = Instant::now();
    let mut killed = 0u64;
    for s in sels {
        let k =
            plan::kill_filter(s, true).ok_or_else(|| msg("gateway selector not expressible"))?;
        killed += u64::from(c.kill(&k).map_err(|e| msg(e.to_string()))?);
    }
    let secs = t.elapsed().as_secs_f64();
    // One lock for both (the model's lock is not re-entrant).
    let (cost, killed_ids) = {
        let m = c.device().model();
        (m.cost() - base, before.difference(&alive(&m)).copied().collect())
    };
    Ok(Outcome {
        label: format!("(b) pfctl -M -k gateway, one per gateway ({} requests)", sels.len()),
        cost,
        killed,
        secs,
        extrapolated_from: None,
        killed_ids: Some(killed_ids),
    })
}

/// (c) one filtered kill per client/server pair of the gateways' states, on a sample.
fn per_pair(model: PfModel, gateways: &[IpAddr], sample: usize) -> Result<Outcome> {
    let mut pairs: Vec<(IpAddr, IpAddr)> = Vec::new();
    let mut seen = HashSet::new();
    for s in model.states() {
        if s.rt_addr.is_some_and(|g| gateways.contains(&g)) {
            let (src, _, dst, _) = s.kill_endpoints();
            if seen.insert((src, dst)) {
                pairs.push((src, dst));
            }
        }
    }
    let mut c = device(model)?;
    let base = c.device().model().cost();
    let n = sample.min(pairs.len()).max(1);
    let t = Instant::now();
    let mut killed = 0u64;
    for (src, dst) in pairs.iter().take(n) {
        let host = |a: &IpAddr| RuleAddr::prefix(a, if a.is_ipv4() { 32 } else { 128 });
        let k = PfKill { src: host(src), dst: host(dst), kill_match: true, ..PfKill::default() };
        killed += u64::from(c.kill(&k).map_err(|e| msg(e.to_string()))?);
    }
    let secs = t.elapsed().as_secs_f64();
    let sampled = c.device().model().cost() - base;
    // Scale by requests: every request is a full pass over (nearly) the whole table.
    let f = pairs.len() as f64 / n as f64;
    let scale = |x: u64| (x as f64 * f) as u64;
    let cost = Cost {
        requests: scale(sampled.requests),
        passes: scale(sampled.passes),
        rows_locked: scale(sampled.rows_locked),
        states_examined: scale(sampled.states_examined),
        key_lookups: scale(sampled.key_lookups),
        id_lookups: scale(sampled.id_lookups),
        states_exported: scale(sampled.states_exported),
        killed: scale(sampled.killed),
    };
    Ok(Outcome {
        label: format!(
            "(c) one request per client/server pair ({} pairs)",
            thousands(pairs.len() as u64)
        ),
        cost,
        killed: scale(killed),
        secs: secs * f,
        extrapolated_from: Some((n, pairs.len())),
        killed_ids: None,
    })
}

pub fn bench_pf_model(states: usize, sample: usize, json: bool) -> Result<()> {
    if cfg!(debug_assertions) {
        // The model is plain Rust: measure an optimised build.
        eprintln!("building xtask in release mode for the model benchmark ...");
        let mut cmd = crate::util::cargo();
        cmd.args(["run", "--quiet", "--release", "--package", "xtask", "--", "bench", "pf-model"])
            .args(["--states", &states.to_string(), "--sample", &sample.to_string()]);
        if json {
            cmd.arg("--json");
        }
        return crate::util::run(&mut cmd);
    }
    let t = Instant::now();
    let g = router_table(&Spec::new(states, 1)).map_err(|e| msg(e.to_string()))?;
    let table = g.model;
    let s0 = table.len() as u64;
    eprintln!(
        "generated {} states in {:.1} s ({} id-hash rows)",
        thousands(s0),
        t.elapsed().as_secs_f64(),
        table.rows()
    );
    let gw = |w: usize| -> [IpAddr; 2] { [ROUTER.gateway[w].0.into(), ROUTER.gateway[w].1.into()] };
    let scenarios: Vec<(&str, Vec<IpAddr>)> = vec![
        ("gateway 1 down (its IPv4 and IPv6 addresses)", gw(0).to_vec()),
        ("gateways 1 and 2 down", [gw(0), gw(1)].concat()),
    ];
    let mut all = Vec::new();
    for (name, gws) in &scenarios {
        let sels = selectors(gws)?;
        eprintln!("{name}: (a) ...");
        let a = statecull_plan(table.clone(), &sels, false)?;
        eprintln!("{name}: (d) ...");
        let d = statecull_plan(table.clone(), &sels, true)?;
        eprintln!("{name}: (b) ...");
        let b = per_gateway(table.clone(), &sels)?;
        eprintln!("{name}: (c) ...");
        let c = per_pair(table.clone(), gws, sample)?;
        all.push((*name, vec![a, b, c, d]));
    }
    let visits = |c: &Cost| c.states_examined + c.states_exported;
    let mut verdicts = Vec::new();
    for (name, outs) in &all {
        let (a, b, d) = (&outs[0], &outs[1], &outs[3]);
        let same = |x: &Outcome, y: &Outcome| match (&x.killed_ids, &y.killed_ids) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        };
        let cheapest = modelled_us(&b.cost).min(modelled_us(&d.cost));
        verdicts.push((
            format!(
                "{name}: (a) costs no more than the cheaper of (b) and (d) ({:.0} ms modelled, cheaper {:.0} ms)",
                modelled_us(&a.cost) / 1000.0,
                cheapest / 1000.0
            ),
            modelled_us(&a.cost) <= cheapest * 1.05,
        ));
        verdicts.push((
            format!("{name}: (a), (b) and (d) kill exactly the same states"),
            same(a, b) && same(d, b),
        ));
    }
    eprintln!("the broker's peak memory at {} states ...", thousands(s0));
    let rss = broker_peak_rss(states)?;
    if json {
        let v = serde_json::json!({
            "states": s0,
            "rows": table.rows(),
            "scenarios": all.iter().map(|(name, outs)| serde_json::json!({
                "scenario": name,
                "methods": outs.iter().map(|o| serde_json::json!({
                    "method": o.label, "passes": o.cost.passes, "rows_locked": o.cost.rows_locked,
                    "states_examined": o.cost.states_examined, "states_exported": o.cost.states_exported,
                    "key_lookups": o.cost.key_lookups, "id_lookups": o.cost.id_lookups,
                    "killed": o.killed, "model_seconds": o.secs, "modelled_us": modelled_us(&o.cost),
                    "extrapolated_from": o.extrapolated_from.map(|(n, of)| serde_json::json!({"sampled": n, "of": of})),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "broker_peak_rss_kib": rss,
            "goals": verdicts.iter().map(|(g, ok)| serde_json::json!({"goal": g, "pass": ok})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "pf model: {} states, {} id-hash rows (FreeBSD 15 interfaces; counts are the kernel's work)",
            thousands(s0),
            thousands(table.rows() as u64)
        );
        for (name, outs) in &all {
            println!("\n{name}");
            println!(
                "  {:<58} {:>9} {:>13} {:>11} {:>11} {:>10} {:>13} {:>10} {:>9}",
                "method",
                "passes",
                "states seen",
                "key lookups",
                "id lookups",
                "killed",
                "modelled ms",
                "model s",
                "vs (a)"
            );
            let base = modelled_us(&outs[0].cost).max(1.0);
            for o in outs {
                println!(
                    "  {:<58} {:>9} {:>13} {:>11} {:>11} {:>10} {:>13.0} {:>10.3} {:>8.1}x",
                    o.label,
                    thousands(o.cost.passes),
                    thousands(visits(&o.cost)),
                    thousands(o.cost.key_lookups),
                    thousands(o.cost.id_lookups),
                    thousands(o.killed),
                    modelled_us(&o.cost) / 1000.0,
                    o.secs,
                    modelled_us(&o.cost) / base,
                );
                if let Some((n, of)) = o.extrapolated_from {
                    println!(
                        "  {:<58} (measured on {n} of {} requests, scaled)",
                        "",
                        thousands(of as u64)
                    );
                }
            }
        }
        println!(
            "\nmodelled ms: the model's counts priced with pf::cost::Weights::MEASURED (compare {} µs, export {} µs, unlink {} µs, kill by id {} µs, key lookup {} µs)",
            W.compare_us, W.export_us, W.unlink_us, W.kill_by_id_us, W.key_lookup_us
        );
        println!(
            "broker peak memory (VmHWM) at {} states, after a listing kill: {} MiB",
            thousands(s0),
            rss / 1024
        );
        println!("\ngoals:");
        for (g, ok) in &verdicts {
            println!("  {} {g}", if *ok { "PASS" } else { "FAIL" });
        }
    }
    if verdicts.iter().all(|(_, ok)| *ok) { Ok(()) } else { Err(msg("a goal was not met")) }
}
