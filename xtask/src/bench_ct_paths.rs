//! `cargo xtask bench conntrack-paths`: where one dump with batched deletes becomes cheaper
//! than one kernel flush per selector, measured on fresh tables in a private namespace.
//!
//! The table's entries carry sixteen marks (as if sixteen gateways), one sixteenth each; for
//! k selectors (k of the marks, so k/16 of the table), the same kill runs both ways on
//! identical tables: k filtered
//! flushes (each walks the whole table) and one kernel-prefiltered dump with deletes. The
//! broker's rule (`statecull_conntrack::MAX_KERNEL_FLUSHES`: flushes while k is at most it)
//! is checked against the measured crossover.

use std::time::Duration;

use statecull_conntrack::Conntrack;
use statecull_conntrack::fill::TableSpec;
use statecull_proto::{CheckedSelector, Selector};
use statecull_tests::Netns;

use crate::util::{self, Result, msg, thousands};

fn selectors(k: usize) -> Result<Vec<CheckedSelector>> {
    (0..k)
        .map(|j| {
            let value = 1 + 16 * u32::try_from(j).map_err(|_| msg("at most 16 selectors"))?;
            Selector {
                mark: Some(statecull_proto::MarkMatch { value, mask: 0xff }),
                ..Selector::default()
            }
            .check()
            .map_err(|e| msg(e.to_string()))
        })
        .collect()
}

/// One kill on a fresh table: seconds (the broker's own elapsed) and states killed.
fn one(spec: &TableSpec, sels: &[CheckedSelector], flushes: bool) -> Result<(f64, u64)> {
    let ns = Netns::create("ctpaths").map_err(|e| msg(e.to_string()))?;
    ns.fill(spec).map_err(|e| msg(e.to_string()))?;
    let report = ns
        .enter(|| -> Result<statecull_proto::KillReport> {
            let table = Conntrack::open().map_err(|e| msg(e.to_string()))?;
            table.kill_matching_by(sels, flushes).map_err(|e| msg(e.to_string()))
        })
        .map_err(|e| msg(e.to_string()))??;
    drop(ns);
    std::thread::sleep(Duration::from_millis(300));
    Ok((report.elapsed_us as f64 / 1e6, report.killed))
}

pub fn bench_conntrack_paths(entries: u64, max_selectors: usize, json: bool) -> Result<()> {
    util::require_root("the benchmark")?;
    util::ensure_tools(&[util::IP])?;
    util::ensure_conntrack()?;
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let _knobs = util::size_conntrack(entries, None)?;
    let spec = TableSpec {
        ipv6_percent: 0,
        udp_percent: 0,
        wan1_percent: 100,
        mark_spread: 16,
        ..TableSpec::two_wans(entries)
    };
    let mut rows = Vec::new();
    let ks = [1usize, 2, 3, 4, 6, 8, 12, 16];
    for k in ks.into_iter().filter(|k| *k <= max_selectors.clamp(1, 16)) {
        let sels = selectors(k)?;
        eprintln!("{k} selector(s): flushes ...");
        let (f, killed_f) = one(&spec, &sels, true)?;
        eprintln!("{k} selector(s): dump + deletes ...");
        let (d, killed_d) = one(&spec, &sels, false)?;
        if killed_f != killed_d {
            return Err(msg(format!(
                "{k} selectors: the flushes killed {killed_f}, the dump {killed_d}"
            )));
        }
        rows.push((k, killed_f, f, d));
    }
    // The measured rule: flushes while they are not dearer than the dump. The broker's
    // MAX_KERNEL_FLUSHES must lie between the last k where flushes won and the first where
    // the dump did (or at the last k tried, when flushes always won).
    let crossover = rows.iter().take_while(|(_, _, f, d)| f <= d).last().map_or(0, |r| r.0);
    let first_loss = rows.iter().find(|(_, _, f, d)| f > d).map(|r| r.0);
    let rule = statecull_conntrack::MAX_KERNEL_FLUSHES;
    let ok = match first_loss {
        Some(loss) => rule >= crossover && rule < loss,
        None => rule >= crossover,
    };
    if json {
        println!(
            "{}",
            serde_json::json!({
                "entries": entries,
                "rows": rows.iter().map(|(k, killed, f, d)| serde_json::json!({
                    "selectors": k, "killed": killed, "flushes_s": f, "dump_s": d,
                })).collect::<Vec<_>>(),
                "measured_crossover": crossover,
                "max_kernel_flushes": rule,
                "pass": ok,
            })
        );
    } else {
        println!(
            "conntrack: k kernel flushes against one dump + batched deletes, {} entries (the broker's own elapsed time, fresh table each)",
            thousands(entries)
        );
        println!(
            "  {:>9} {:>10} {:>12} {:>12} {:>8}",
            "selectors", "killed", "flushes s", "dump s", "cheaper"
        );
        for (k, killed, f, d) in &rows {
            println!(
                "  {:>9} {:>10} {:>12.3} {:>12.3} {:>8}",
                k,
                thousands(*killed),
                f,
                d,
                if f <= d { "flushes" } else { "dump" }
            );
        }
        println!("goals:");
        println!(
            "  {} the broker's rule (flushes for at most {rule} selectors) sits at the measured crossover (flushes cheaper up to {crossover}, the dump from {})",
            if ok { "PASS" } else { "FAIL" },
            first_loss.map_or("never, in this range".to_owned(), |l| l.to_string())
        );
    }
    if ok { Ok(()) } else { Err(msg("the rule does not match the measurement")) }
}
