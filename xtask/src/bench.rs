//! `cargo xtask bench conntrack`: what a selective kill costs, against a full flush,
//! conntrack-tools and the kernel's own floor, on fresh tables in private namespaces.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use statecull_conntrack::codec::{MsgBuilder, NLMSG_ERROR, NlMsgs};
use statecull_conntrack::ct::{KernelFilter, flush_request};
use statecull_conntrack::fill::TableSpec;
use statecull_proto::MarkMatch;
use statecull_tests::{BrokerProcess, Netns};

use crate::util::{self, IoContext, Result, msg, thousands};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    KillMark,
    KillNat,
    FullFlush,
    ConntrackTool,
    Snapshot,
    KernelFloor,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::KillMark,
        Method::KillNat,
        Method::FullFlush,
        Method::ConntrackTool,
        Method::Snapshot,
        Method::KernelFloor,
    ];
    fn label(self) -> &'static str {
        match self {
            Method::KillMark => "(a) statecull kill --mark 1/0xff",
            Method::KillNat => "(b) statecull kill --nat-addr 198.51.100.1",
            Method::FullFlush => "(c) statecull flush (whole table)",
            Method::ConntrackTool => "(d) conntrack -D -m 1",
            Method::Snapshot => "(e) statecull list (whole table)",
            Method::KernelFloor => "(f) kernel floor: one raw mark flush",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Method::KillMark => "a",
            Method::KillNat => "b",
            Method::FullFlush => "c",
            Method::ConntrackTool => "d",
            Method::Snapshot => "e",
            Method::KernelFloor => "f",
        }
    }
    fn needs_broker(self) -> bool {
        !matches!(self, Method::ConntrackTool | Method::KernelFloor)
    }
}

/// One timed run: seconds and how many states it removed or listed.
#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    states: u64,
}

fn timed_cli(
    cli: &Path,
    socket: &Path,
    args: &[&str],
    json: bool,
) -> Result<(f64, serde_json::Value)> {
    let mut cmd = Command::new(cli);
    cmd.args(["broker", "--socket"]).arg(socket).args(args);
    if json {
        cmd.arg("--json");
    } else {
        cmd.stdout(Stdio::null());
    }
    let t = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().context(format!("run {}", cli.display()))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(msg(format!(
            "statecull {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let v = if json {
        serde_json::from_slice(&out.stdout)
            .map_err(|e| msg(format!("statecull {}: bad JSON: {e}", args.join(" "))))?
    } else {
        // `list` prints "N state(s) listed in ..." on stderr.
        let err = String::from_utf8_lossy(&out.stderr);
        let n = err.split_whitespace().next().and_then(|w| w.parse::<u64>().ok()).unwrap_or(0);
        serde_json::json!({ "count": n })
    };
    Ok((secs, v))
}

/// One mark flush sent straight to the kernel from inside the namespace: the floor any tool
/// can reach (no process start, no count, no protocol).
fn kernel_floor(ns: &Netns) -> Result<f64> {
    ns.enter(|| -> Result<f64> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
            .context("netlink socket")?;
        sock.bind_auto().context("bind the netlink socket")?;
        let mut b = MsgBuilder::new();
        let filter = KernelFilter {
            mark: Some(MarkMatch { value: 1, mask: 0xff }),
            ..KernelFilter::default()
        };
        flush_request(&mut b, 1, &filter);
        let mut buf = Vec::with_capacity(8192);
        let t = Instant::now();
        sock.send(b.as_bytes(), 0).context("send the flush")?;
        loop {
            buf.clear();
            sock.recv(&mut buf, 0).context("receive the flush's answer")?;
            for m in NlMsgs::new(&buf) {
                let m = m.map_err(|e| msg(format!("the flush's answer: {e}")))?;
                if m.msg_type == NLMSG_ERROR {
                    let (errno, _) =
                        m.error().map_err(|e| msg(format!("the flush's answer: {e}")))?;
                    if errno != 0 {
                        return Err(msg(format!("kernel flush failed: errno {}", -errno)));
                    }
                    return Ok(t.elapsed().as_secs_f64());
                }
            }
        }
    })
    .context("enter namespace")?
}

fn measure(method: Method, spec: &TableSpec, bins: &Path, wan1: u64) -> Result<Sample> {
    let ns = Netns::create("bench").context("namespace")?;
    ns.fill(spec).context("fill")?;
    let broker = if method.needs_broker() {
        Some(BrokerProcess::start(&bins.join("statecull-broker"), &ns, &[]).context("broker")?)
    } else {
        None
    };
    let cli = bins.join("statecull");
    let socket = broker.as_ref().map(|b| b.socket().to_path_buf()).unwrap_or_default();
    let expect = |what: &str, got: u64, want: u64| {
        if got == want {
            Ok(())
        } else {
            Err(msg(format!("{what}: {got} states, expected {want}")))
        }
    };
    let sample = match method {
        Method::KillMark | Method::KillNat => {
            let args: &[&str] = if method == Method::KillMark {
                &["kill", "--mark", "1/0xff"]
            } else {
                &["kill", "--nat-addr", "198.51.100.1"]
            };
            let (secs, v) = timed_cli(&cli, &socket, args, true)?;
            let killed = v["killed"].as_u64().unwrap_or(0);
            expect(method.label(), killed, wan1)?;
            Sample { secs, states: killed }
        }
        Method::FullFlush => {
            let (secs, v) = timed_cli(&cli, &socket, &["flush"], true)?;
            let killed = v["killed"].as_u64().unwrap_or(0);
            expect(method.label(), killed, spec.entries)?;
            Sample { secs, states: killed }
        }
        Method::Snapshot => {
            let (secs, v) = timed_cli(&cli, &socket, &["list"], false)?;
            let n = v["count"].as_u64().unwrap_or(0);
            expect(method.label(), n, spec.entries)?;
            Sample { secs, states: n }
        }
        Method::ConntrackTool => {
            let t = Instant::now();
            let out = ns
                .command("conntrack")
                .args(["-D", "-m", "1"])
                .stdout(Stdio::null())
                .output()
                .context("conntrack")?;
            let secs = t.elapsed().as_secs_f64();
            // "conntrack v1.4.7 (conntrack-tools): 500000 flow entries have been deleted."
            let err = String::from_utf8_lossy(&out.stderr);
            let n = err
                .split(':')
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0);
            expect(method.label(), n, wan1)?;
            Sample { secs, states: n }
        }
        Method::KernelFloor => {
            let secs = kernel_floor(&ns)?;
            let left = ns
                .enter(|| {
                    statecull_conntrack::Conntrack::with_features(
                        statecull_conntrack::KernelFeatures::NONE,
                    )
                    .table_entries()
                })
                .context("enter namespace")?
                .map_err(|e| msg(format!("count the table: {e}")))?;
            expect(method.label(), spec.entries - left, wan1)?;
            Sample { secs, states: wan1 }
        }
    };
    drop(broker);
    drop(ns);
    Ok(sample)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

pub fn bench_conntrack(entries: u64, runs: usize, hashsize: Option<u64>, json: bool) -> Result<()> {
    util::require_root("the benchmark")?;
    util::ensure_tools(&[util::IP])?;
    util::ensure_conntrack()?;
    let have_tool = util::ensure_tools(&[util::CONNTRACK]).is_ok();
    statecull_tests::remove_stale_namespaces();
    util::restore_stale_knobs();
    let bins = util::build_release()?;
    let _knobs = util::size_conntrack(entries, hashsize)?;
    let hash_now =
        std::fs::read_to_string("/sys/module/nf_conntrack/parameters/hashsize").unwrap_or_default();

    // The reference table: established TCP, IPv4, SNAT to WAN1 or WAN2, ct mark 1 or 2.
    let spec = TableSpec { ipv6_percent: 0, udp_percent: 0, ..TableSpec::two_wans(entries) };
    let wan1 = spec.count_where(|i| spec.wan_of(i) == 0);
    let methods: Vec<Method> =
        Method::ALL.into_iter().filter(|m| have_tool || *m != Method::ConntrackTool).collect();
    if !have_tool {
        eprintln!("conntrack-tools not available: skipping (d)");
    }
    eprintln!(
        "benchmark: {} entries ({} via WAN1), hash size {}, {runs} run(s) of {} methods, each on a fresh table",
        thousands(entries),
        thousands(wan1),
        hash_now.trim(),
        methods.len()
    );
    let mut samples: Vec<(Method, Vec<Sample>)> =
        methods.iter().map(|m| (*m, Vec::new())).collect();
    for run in 1..=runs {
        // Interleave methods so drift affects them alike.
        for (m, s) in samples.iter_mut() {
            eprint!("\r  run {run}/{runs}: {:<48}", m.label());
            let sample = measure(*m, &spec, &bins, wan1)?;
            s.push(sample);
            // Let the kernel free the last namespace's entries before the next fill.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    eprintln!("\r{:80}", "");

    let med = |m: Method| {
        samples
            .iter()
            .find(|(x, _)| *x == m)
            .map(|(_, s)| median(&mut s.iter().map(|x| x.secs).collect::<Vec<_>>()))
    };
    let floor = med(Method::KernelFloor).unwrap_or(0.0);
    let mut rows = Vec::new();
    for (m, s) in &samples {
        let mut secs: Vec<f64> = s.iter().map(|x| x.secs).collect();
        let md = median(&mut secs);
        let states = s.first().map(|x| x.states).unwrap_or(0);
        rows.push((
            *m,
            md,
            secs.first().copied().unwrap_or(0.0),
            secs.last().copied().unwrap_or(0.0),
            states,
        ));
    }
    let (a, c, d) = (med(Method::KillMark), med(Method::FullFlush), med(Method::ConntrackTool));
    let goals: Vec<(String, bool)> = [
        a.map(|a| (format!("(a) <= 1.25 x (f): {:.2} x", a / floor), a <= 1.25 * floor)),
        a.zip(c).map(|(a, c)| (format!("(a) <= 0.85 x (c): {:.2} x", a / c), a <= 0.85 * c)),
        a.zip(d).map(|(a, d)| (format!("(d) >= 3 x (a): {:.2} x", d / a), d >= 3.0 * a)),
    ]
    .into_iter()
    .flatten()
    .collect();

    if json {
        let v = serde_json::json!({
            "entries": entries,
            "wan1_entries": wan1,
            "hashsize": hash_now.trim().parse::<u64>().ok(),
            "runs": runs,
            "methods": rows.iter().map(|(m, md, lo, hi, states)| serde_json::json!({
                "method": m.key(), "label": m.label(), "median_s": md, "min_s": lo, "max_s": hi,
                "states": states, "states_per_s": *states as f64 / md.max(1e-9),
                "vs_floor": md / floor.max(1e-9),
            })).collect::<Vec<_>>(),
            "goals": goals.iter().map(|(g, ok)| serde_json::json!({"goal": g, "pass": ok})).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!(
            "conntrack kill benchmark: {} entries, {} via WAN1 (50 %), hash size {}, median of {runs}",
            thousands(entries),
            thousands(wan1),
            hash_now.trim()
        );
        println!(
            "{:<46} {:>9} {:>19} {:>12} {:>12} {:>8}",
            "method", "median s", "min-max s", "states", "states/s", "vs (f)"
        );
        for (m, md, lo, hi, states) in &rows {
            println!(
                "{:<46} {:>9.3} {:>19} {:>12} {:>12} {:>7.2}x",
                m.label(),
                md,
                format!("{lo:.3}-{hi:.3}"),
                thousands(*states),
                thousands((*states as f64 / md.max(1e-9)) as u64),
                md / floor.max(1e-9)
            );
        }
        println!("goals:");
        for (g, ok) in &goals {
            println!("  {} {g}", if *ok { "PASS" } else { "FAIL" });
        }
    }
    Ok(())
}
