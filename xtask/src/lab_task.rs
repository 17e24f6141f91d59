//! `cargo xtask lab`: the README's main command. Checks root and tools, builds the release
//! binaries, sizes the conntrack table for `--table-size`, then runs the lab of
//! `statecull_tests::failover` and prints its report. Exit status 1 if any acceptance
//! condition fails.

use statecull_tests::failover::{Bins, LabOptions, run_lab};

use crate::util::{self, Result, msg};

pub fn lab(opts: &LabOptions) -> Result<()> {
    util::require_root("the lab")?;
    util::ensure_tools(&[util::IP, util::NFT, statecull_tests::tools::SYSCTL])?;
    util::ensure_conntrack()?;
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let dir = util::build_release()?;
    let bins = Bins {
        broker: dir.join("statecull-broker"),
        engine: dir.join("statecull-engine"),
        cli: dir.join("statecull"),
    };
    // The lab's own traffic needs a few thousand entries; --table-size adds to that.
    let _knobs = util::size_conntrack(opts.table_size + 50_000, None)?;
    let report = run_lab(&bins, opts).map_err(msg)?;
    if opts.json {
        println!("{}", serde_json::to_string(&report).map_err(|e| msg(e.to_string()))?);
    } else {
        report.print(opts);
    }
    let failed = report.checks.iter().filter(|c| !c.pass).count();
    if failed > 0 {
        return Err(msg(format!("{failed} acceptance condition(s) failed")));
    }
    if !opts.json {
        println!("\nOK: every acceptance condition holds.");
    }
    Ok(())
}
