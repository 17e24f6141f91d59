//! Loading and explaining large policies: prints wall-clock times, asserts nothing about
//! time (the complexity is asserted by `policy/tests/load_scale.rs`, by counting work).
//!
//! `cargo bench -p statecull-policy --bench load_scale -- 1000 3000`
#![allow(clippy::print_stdout)]

#[path = "../tests/common/scale.rs"]
mod scale;

use std::time::Instant;

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1000, 3000, 10_000] } else { sizes };
    for n in sizes {
        let text = scale::policy_text(n);
        let start = Instant::now();
        let policy = match statecull_policy::load::parse(&text, "<bench>") {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{n} gateways: {e}");
                std::process::exit(1);
            }
        };
        let parsed = start.elapsed();
        let start = Instant::now();
        let explanation = statecull_policy::load::explain(&policy);
        let explained = start.elapsed();
        println!(
            "{n:>6} gateways ({} KiB): parse {:>10.1} ms, explain {:>10.1} ms ({} KiB of text)",
            text.len() / 1024,
            parsed.as_secs_f64() * 1000.0,
            explained.as_secs_f64() * 1000.0,
            explanation.len() / 1024,
        );
    }
}
