//! Table-driven traces of the gateway health state machine with a fake clock.
//!
//! Traces are written as compact patterns, one event per time step (1 s unless said):
//! `F` fast reply (20 ms), `M` medium reply (150 ms, between the latency thresholds),
//! `S` slow reply (300 ms), `L` lost, `T` tick, `D` external down, `U` external up.
//! A token may start with a repeat count that applies to its letters: `10F`, `3FL`
//! (= `FLFLFL`). Expected transitions name the event index (0-based) at which they happen.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::time::Duration;

use proptest::prelude::*;
use statecull_policy::Millis;
use statecull_policy::health::{Cause, GatewayHealth, Health, Probe, Transition};
use statecull_policy::model::{FlapDamping, HealthParams};

use Cause::*;
use Health::{Degraded, Down, Up};

const SEC: Millis = 1000;

// ---------------------------------------------------------------------------------------
// Parameters

/// Window 10, decision from 5 results, down at 50% loss, degraded at 20% loss or 200 ms,
/// up at or below 10% and 100 ms, hold-down 10 s, damping off.
fn base() -> HealthParams {
    HealthParams {
        window: 10,
        min_samples: 5,
        loss_down_pct: 50.0,
        loss_up_pct: 10.0,
        latency_degraded: Duration::from_millis(200),
        latency_up: Duration::from_millis(100),
        loss_degraded_pct: 20.0,
        hold_down: Duration::from_secs(10),
        damping: FlapDamping {
            enabled: false,
            penalty: 1000.0,
            suppress_above: 2500.0,
            reuse_below: 800.0,
            half_life: Duration::from_secs(60),
            max_penalty: 6000.0,
        },
    }
}

/// `base()` with damping on: +1000 per flap, suppress above 2500, reuse below 800,
/// half-life 60 s, cap 6000.
fn damped() -> HealthParams {
    let mut p = base();
    p.damping.enabled = true;
    p
}

fn with(f: impl FnOnce(&mut HealthParams)) -> HealthParams {
    let mut p = base();
    f(&mut p);
    p
}

// ---------------------------------------------------------------------------------------
// Traces

#[derive(Clone, Copy, Debug)]
enum Ev {
    Probe(Probe),
    Summary(f64, Option<Duration>),
    Tick,
    Force(bool),
}

fn reply(ms: u64) -> Ev {
    Ev::Probe(Probe::Reply { rtt: Duration::from_millis(ms) })
}

fn summary(loss: f64, latency_ms: u64) -> Ev {
    Ev::Summary(loss, Some(Duration::from_millis(latency_ms)))
}

fn letter(c: char) -> Ev {
    match c {
        'F' => reply(20),
        'M' => reply(150),
        'S' => reply(300),
        'L' => Ev::Probe(Probe::Lost),
        'T' => Ev::Tick,
        'D' => Ev::Force(false),
        'U' => Ev::Force(true),
        other => panic!("unknown pattern letter {other:?}"),
    }
}

/// The events of `pattern`, the first at `start`, one every `step` ms.
fn pattern(start: Millis, step: Millis, pattern: &str) -> Vec<(Millis, Ev)> {
    let mut letters = Vec::new();
    for token in pattern.split_whitespace() {
        let digits: String = token.chars().take_while(char::is_ascii_digit).collect();
        let count = if digits.is_empty() { 1 } else { digits.parse::<usize>().unwrap() };
        let rest = &token[digits.len()..];
        assert!(!rest.is_empty(), "token {token:?} has no letters");
        for _ in 0..count {
            letters.extend(rest.chars().map(letter));
        }
    }
    letters.into_iter().enumerate().map(|(i, ev)| (start + i as Millis * step, ev)).collect()
}

fn apply(gh: &mut GatewayHealth, now: Millis, ev: Ev) -> Option<Transition> {
    match ev {
        Ev::Probe(p) => gh.record(now, p),
        Ev::Summary(loss, lat) => gh.record_summary(now, loss, lat),
        Ev::Tick => gh.tick(now),
        Ev::Force(up) => gh.force(now, up),
    }
}

/// Feeds `events` and checks the invariants after every one: a transition goes from the
/// previous state to the current one, no call changes the state silently, `at` never goes
/// backwards, forced/suppressed gateways are down and otherwise the state is the judged one.
fn feed(
    gh: &mut GatewayHealth,
    first_index: usize,
    events: &[(Millis, Ev)],
) -> Vec<(usize, Transition)> {
    let mut out = Vec::new();
    let mut last_at: Option<Millis> = None;
    for (i, &(now, ev)) in events.iter().enumerate() {
        let before = gh.state();
        let t = apply(gh, now, ev);
        check_consistent(gh);
        match t {
            Some(t) => {
                assert_eq!(t.from, before, "event {}: from", first_index + i);
                assert_eq!(t.to, gh.state(), "event {}: to", first_index + i);
                assert_ne!(t.from, t.to, "event {}", first_index + i);
                if let Some(prev) = last_at {
                    assert!(t.at >= prev, "event {}: at went backwards", first_index + i);
                }
                last_at = Some(t.at);
                assert!(!t.reason.is_empty());
                out.push((first_index + i, t));
            }
            None => assert_eq!(gh.state(), before, "event {}: silent change", first_index + i),
        }
    }
    out
}

fn check_consistent(gh: &GatewayHealth) {
    assert_eq!(gh.usable(), gh.state() != Down);
    let j = gh.judgement();
    assert_eq!(j.down, gh.state() == Down);
    assert_eq!(gh.state() == Degraded, !j.down && (j.high_loss || j.high_latency), "{j:?}");
    if gh.forced_down() || gh.suppressed() || gh.verdict_held() {
        assert_eq!(gh.state(), Down);
    } else {
        assert_eq!(gh.state(), gh.judged());
    }
}

type Expect = Vec<(usize, Health, Health, Cause)>;

fn summarize(log: &[(usize, Transition)]) -> Expect {
    log.iter().map(|(i, t)| (*i, t.from, t.to, t.cause)).collect()
}

/// Runs a pattern from time 0, one event a second, on a fresh gateway.
fn run(params: HealthParams, pat: &str) -> (GatewayHealth, Vec<(usize, Transition)>) {
    let mut gh = GatewayHealth::new(params, 0);
    let log = feed(&mut gh, 0, &pattern(0, SEC, pat));
    (gh, log)
}

fn check_table(cases: Vec<(&str, HealthParams, &str, Expect)>) {
    for (name, params, pat, expected) in cases {
        let (_, log) = run(params, pat);
        assert_eq!(summarize(&log), expected, "case {name:?}");
        for (i, t) in &log {
            assert_eq!(t.at, *i as Millis * SEC, "case {name:?}: at of event {i}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Window, thresholds, hysteresis

#[test]
fn steady_up_stays_up() {
    let (gh, log) = run(base(), "1000F");
    assert!(log.is_empty());
    assert_eq!(gh.state(), Up);
    let ev = gh.evidence(999 * SEC);
    assert_eq!(ev.loss_pct, 0.0);
    assert_eq!(ev.latency_avg, Some(Duration::from_millis(20)));
    assert_eq!(ev.samples, 10);
    assert_eq!(ev.penalty, 0.0);
    assert!(!ev.suppressed);
}

#[test]
fn loss_burst_goes_down_at_the_exact_sample() {
    check_table(vec![
        (
            "degraded at the 2nd loss (20%), down at the 5th (50%)",
            base(),
            "10F 5L",
            vec![(11, Up, Degraded, Loss), (14, Degraded, Down, Loss)],
        ),
        (
            "degraded threshold 40%: degraded at the 4th loss",
            with(|p| p.loss_degraded_pct = 40.0),
            "10F 5L",
            vec![(13, Up, Degraded, Loss), (14, Degraded, Down, Loss)],
        ),
        (
            "cold start, all lost: straight down at min_samples",
            base(),
            "5L",
            vec![(4, Up, Down, Loss)],
        ),
        (
            "window 20, down at 20%: the 4th loss",
            with(|p| {
                p.window = 20;
                p.loss_down_pct = 20.0;
                p.loss_degraded_pct = 15.0;
                p.loss_up_pct = 5.0;
            }),
            "20F 4L",
            vec![(22, Up, Degraded, Loss), (23, Degraded, Down, Loss)],
        ),
        (
            "every other probe lost: down when the window holds 5 losses",
            base(),
            "10F 5FL",
            vec![(13, Up, Degraded, Loss), (19, Degraded, Down, Loss)],
        ),
        (
            "more losses once down: nothing more",
            base(),
            "10F 50L",
            vec![(11, Up, Degraded, Loss), (14, Degraded, Down, Loss)],
        ),
    ]);
}

#[test]
fn isolated_losses_do_not_take_it_down() {
    check_table(vec![
        ("one loss in 10 (10%)", base(), "10F 50FFFFFFFFFL", vec![]),
        ("a lone loss now and then", base(), "10F 20FFFFFFFFFFFFFFFFFFFL", vec![]),
        (
            "one loss in 5 (20%): degraded, never down, never back up",
            base(),
            "10F 40FFFFL",
            vec![(19, Up, Degraded, Loss)],
        ),
        (
            "one loss in 3 (30-40%): degraded, never down",
            base(),
            "10F 40FFL",
            vec![(15, Up, Degraded, Loss)],
        ),
    ]);
}

#[test]
fn latency_degrades_and_recovers_with_hysteresis() {
    check_table(vec![
        // 10 × 150 ms: between the thresholds, stays up. 300 ms replies push the mean to
        // 210 ms at the 4th (idx 13). Back to 150 ms: between, stays degraded. 20 ms replies:
        // 150 − 13·j ms, ≤ 100 ms at the 4th (idx 33).
        (
            "up → degraded → (band keeps degraded) → up",
            base(),
            "10M 10S 10M 10F",
            vec![(13, Up, Degraded, Latency), (33, Degraded, Up, Recovered)],
        ),
        ("between the thresholds for ever: stays up", base(), "200M", vec![]),
        (
            "between the thresholds after degraded: stays degraded",
            base(),
            "10S 200M",
            vec![(4, Up, Degraded, Latency)],
        ),
    ]);

    // Exact boundaries, built by hand.
    let mut gh = GatewayHealth::new(base(), 0);
    let mut events: Vec<(Millis, Ev)> =
        (0..10).map(|i| (i * SEC, reply(if i < 5 { 199 } else { 201 }))).collect();
    events.extend((10..20).map(|i| (i * SEC, reply(if i % 2 == 0 { 150 } else { 50 }))));
    events.extend((20..30).map(|i| (i * SEC, reply(100))));
    let log = feed(&mut gh, 0, &events);
    // Mean hits 200 ms (≥ latency_degraded) at idx 9; 100 ms (≤ latency_up) at idx 19.
    assert_eq!(summarize(&log), vec![(9, Up, Degraded, Latency), (19, Degraded, Up, Recovered)]);
}

#[test]
fn loss_hysteresis_through_summaries() {
    let t = |i: u64| i * SEC;
    let events = vec![
        (t(0), summary(0.0, 20)),
        (t(1), summary(15.0, 20)), // between up (10) and degraded (20): stays up
        (t(2), summary(20.0, 20)), // at the degraded threshold
        (t(3), summary(15.0, 20)), // between: stays degraded
        (t(4), summary(10.01, 20)), // just above up: stays degraded
        (t(5), summary(10.0, 20)), // at the up threshold
        (t(6), summary(19.99, 20)), // between: stays up
        (t(7), summary(5.0, 150)), // latency between: stays up
        (t(8), summary(5.0, 250)),
        (t(9), summary(5.0, 150)), // latency between: stays degraded
        (t(10), summary(5.0, 100)),
        (t(11), summary(49.99, 20)),
        (t(12), summary(50.0, 20)),
    ];
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &events);
    assert_eq!(
        summarize(&log),
        vec![
            (2, Up, Degraded, Loss),
            (5, Degraded, Up, Recovered),
            (8, Up, Degraded, Latency),
            (10, Degraded, Up, Recovered),
            (11, Up, Degraded, Loss),
            (12, Degraded, Down, Loss),
        ]
    );
}

#[test]
fn min_samples_gates_every_decision() {
    check_table(vec![
        (
            "min 1: the first loss decides",
            with(|p| p.min_samples = 1),
            "L",
            vec![(0, Up, Down, Loss)],
        ),
        ("min 0 acts as 1", with(|p| p.min_samples = 0), "L", vec![(0, Up, Down, Loss)]),
        ("min 5: four losses decide nothing", base(), "4L", vec![]),
        ("min 5: 4 losses then a reply is 80%", base(), "4L F", vec![(4, Up, Down, Loss)]),
        ("min 5: slow replies wait too", base(), "4S", vec![]),
        ("min 5: the 5th slow reply degrades", base(), "5S", vec![(4, Up, Degraded, Latency)]),
        (
            "min above the window is clamped to the window",
            with(|p| p.min_samples = 20),
            "10L",
            vec![(9, Up, Down, Loss)],
        ),
    ]);
}

// ---------------------------------------------------------------------------------------
// Hold-down

#[test]
fn recovery_needs_a_healthy_window_for_the_whole_hold_down() {
    check_table(vec![
        // After 10 losses the window is all losses; replies push them out: 10% (healthy) at
        // the 9th reply (idx 28); hold-down 10 s → up at idx 38.
        (
            "window clears, then hold-down",
            base(),
            "10F 10L 19F",
            vec![
                (11, Up, Degraded, Loss),
                (14, Degraded, Down, Loss),
                (38, Down, Up, HoldDownPassed),
            ],
        ),
        (
            "a lone loss within loss_up_pct does not reset the stretch",
            base(),
            "10F 10L 13F L 20F",
            vec![
                (11, Up, Degraded, Loss),
                (14, Degraded, Down, Loss),
                (38, Down, Up, HoldDownPassed),
            ],
        ),
        // Two losses at idx 33-34 make the window 20%: the stretch ends. It restarts when the
        // second loss is the only one left (idx 43) → up at idx 53.
        (
            "a relapse resets the hold-down",
            base(),
            "10F 10L 13F 2L 19F",
            vec![
                (11, Up, Degraded, Loss),
                (14, Degraded, Down, Loss),
                (53, Down, Up, HoldDownPassed),
            ],
        ),
        (
            "relapse to total loss, then recover",
            base(),
            "10F 10L 15F 10L 19F",
            vec![
                (11, Up, Degraded, Loss),
                (14, Degraded, Down, Loss),
                (63, Down, Up, HoldDownPassed),
            ],
        ),
        // Down at idx 4; slow replies: healthy at idx 18, hold-down passes at idx 28 with a
        // 300 ms mean → degraded; fast replies: 300 − 28·j ms ≤ 100 ms at j = 8 (idx 36).
        (
            "comes back degraded while latency is still high",
            base(),
            "10L 19S 8F",
            vec![
                (4, Up, Down, Loss),
                (28, Down, Degraded, HoldDownPassed),
                (36, Degraded, Up, Recovered),
            ],
        ),
        (
            "a single good reply after total loss never brings it back",
            base(),
            "10L F 300T",
            vec![(4, Up, Down, Loss)],
        ),
        (
            "a reply every other probe after total loss: never healthy",
            base(),
            "10L 100FL",
            vec![(4, Up, Down, Loss)],
        ),
        // Window of one result: one reply makes the window healthy, but the stretch still
        // needs min_samples (3) results.
        (
            "window of one: min_samples fresh replies, even with no hold-down",
            with(|p| {
                p.window = 1;
                p.min_samples = 3;
                p.hold_down = Duration::ZERO;
            }),
            "5L F 10T F L F F F",
            vec![(0, Up, Down, Loss), (20, Down, Up, HoldDownPassed)],
        ),
        (
            "zero hold-down: up at the first healthy judgement backed by min_samples results",
            with(|p| p.hold_down = Duration::ZERO),
            "10L 13F",
            // healthy from idx 18 (9th reply); 5 results in the stretch at idx 22.
            vec![(4, Up, Down, Loss), (22, Down, Up, HoldDownPassed)],
        ),
    ]);
}

#[test]
fn ticks_complete_the_hold_down_only_with_enough_fresh_results() {
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &pattern(0, SEC, "10F 10L 9F"));
    assert_eq!(summarize(&log), vec![(11, Up, Degraded, Loss), (14, Degraded, Down, Loss)]);
    // The stretch started at idx 28 (28 s) with one result: no timer yet.
    assert_eq!(gh.hold_down_at(), None);
    assert_eq!(gh.next_tick(), None);
    assert_eq!(gh.tick(100 * SEC), None, "one result is not enough, whatever the clock says");

    let mut gh = GatewayHealth::new(base(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F 10L 13F"));
    // Stretch from 28 s with 5 results (idx 28-32): the timer runs.
    assert_eq!(gh.hold_down_at(), Some(38 * SEC));
    assert_eq!(gh.next_tick(), Some(38 * SEC));
    assert_eq!(gh.tick(38 * SEC - 1), None);
    assert_eq!(gh.state(), Down);
    let t = gh.tick(38 * SEC).unwrap();
    assert_eq!((t.from, t.to, t.cause, t.at), (Down, Up, HoldDownPassed, 38 * SEC));
    assert_eq!(
        t.reason,
        "healthy for 10 s over 5 results (hold-down 10 s): loss 0% over the last 10 probes (up at or below 10%)"
    );
    assert_eq!(gh.hold_down_at(), None);
}

// ---------------------------------------------------------------------------------------
// Flap damping

/// One flap cycle of the traces below: 5 losses (degraded at the 2nd, down at the 5th) and
/// 19 replies (healthy at the 9th, up 10 s later). 24 events, 24 s.
const CYCLE: &str = "5L 19F";

/// The damping figure after flaps at `flaps` (ms), per the documented formula.
fn model_figure(p: &HealthParams, flaps: &[Millis]) -> (f64, Millis) {
    let d = &p.damping;
    let hl = d.half_life.as_millis() as f64;
    let mut fig = 0.0f64;
    let mut at = 0;
    for &t in flaps {
        fig = (fig * (-((t - at) as f64) / hl).exp2() + d.penalty).min(d.max_penalty);
        at = t;
    }
    (fig, at)
}

#[test]
fn flapping_is_suppressed_then_reused_at_the_computed_time() {
    let p = damped();
    let mut gh = GatewayHealth::new(p.clone(), 0);
    let trace = format!("10F {CYCLE} {CYCLE} {CYCLE} 5L");
    let log = feed(&mut gh, 0, &pattern(0, SEC, &trace));

    // Cycle c starts at idx 10 + 24c. Flaps (down) at 14, 38, 62, 86 s. The model says the
    // figure is 1000, 1758, 2332, 2768: above 2500 at the 4th flap.
    let flaps = [14 * SEC, 38 * SEC, 62 * SEC, 86 * SEC];
    let mut n_suppress = None;
    for n in 1..=flaps.len() {
        if model_figure(&p, &flaps[..n]).0 > p.damping.suppress_above {
            n_suppress = Some(n);
            break;
        }
    }
    assert_eq!(n_suppress, Some(4));
    let mut expected = Vec::new();
    for c in 0..3 {
        let s = 10 + 24 * c;
        expected.extend([
            (s + 1, Up, Degraded, Loss),
            (s + 4, Degraded, Down, Loss),
            (s + 23, Down, Up, HoldDownPassed),
        ]);
    }
    expected.extend([(83, Up, Degraded, Loss), (86, Degraded, Down, Suppressed)]);
    assert_eq!(summarize(&log), expected);

    let (fig, flap_at) = model_figure(&p, &flaps);
    let (_, last) = log.last().unwrap();
    assert!(last.evidence.suppressed);
    assert!((last.evidence.penalty - fig).abs() < 1e-6, "{} vs {fig}", last.evidence.penalty);
    assert!(last.reason.starts_with("loss 50% over the last 10 probes (down at or above 50%); flap damping suppresses the gateway"), "{}", last.reason);
    assert!(gh.suppressed());

    // Reuse: fig · 2^(−dt/60 s) < 800 ⇔ dt > 60 s · log2(fig / 800) ≈ 107.4 s.
    let dt = 60_000.0 * (fig / p.damping.reuse_below).log2();
    let expected_reuse = flap_at + dt.ceil() as Millis;
    let reuse = gh.reuse_at().unwrap();
    assert!(reuse.abs_diff(expected_reuse) <= 1, "reuse at {reuse}, formula {expected_reuse}");
    assert!(gh.penalty(reuse) < p.damping.reuse_below);
    assert!(gh.penalty(reuse - 1) >= p.damping.reuse_below);
    assert_eq!(gh.next_tick(), Some(reuse));

    // Probes are fine all along: the probes say up (after the hold-down), the gateway stays
    // down, silently.
    let n_fine = (reuse - 1 - 87 * SEC) / SEC;
    let fine = pattern(87 * SEC, SEC, &format!("{n_fine}F"));
    assert!(feed(&mut gh, 87, &fine).is_empty());
    assert_eq!(gh.state(), Down);
    assert_eq!(gh.judged(), Up);
    assert!(gh.suppressed());
    assert_eq!(gh.tick(reuse - 1), None);
    assert!(gh.suppressed());

    let t = gh.tick(reuse).unwrap();
    assert_eq!((t.from, t.to, t.cause, t.at), (Down, Up, Reused, reuse));
    assert!(!t.evidence.suppressed);
    assert!(t.evidence.penalty < p.damping.reuse_below);
    assert!(t.reason.starts_with("flap damping penalty decayed to "), "{}", t.reason);
    assert!(!gh.suppressed());
    assert_eq!(gh.reuse_at(), None);
}

#[test]
fn suppression_ends_without_reuse_while_the_probes_say_down() {
    let p = damped();
    let mut gh = GatewayHealth::new(p.clone(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, &format!("10F {CYCLE} {CYCLE} {CYCLE} 5L")));
    assert!(gh.suppressed());
    let reuse = gh.reuse_at().unwrap();
    // Losses all along, up to the reuse time.
    let n = (reuse - 87 * SEC) / SEC;
    assert!(feed(&mut gh, 87, &pattern(87 * SEC, SEC, &format!("{n}L"))).is_empty());
    assert_eq!(gh.tick(reuse), None, "suppression lifts, but the probes say down");
    assert!(!gh.suppressed());
    assert_eq!(gh.state(), Down);
    // Then it comes back the ordinary way: 9 replies to a healthy window, 10 s hold-down.
    let start = reuse + 1;
    let log = feed(&mut gh, 0, &pattern(start, SEC, "19F"));
    assert_eq!(summarize(&log), vec![(18, Down, Up, HoldDownPassed)]);
}

#[test]
fn flaps_while_suppressed_extend_the_suppression_and_the_cap_bounds_it() {
    let p = damped();
    let mut gh = GatewayHealth::new(p.clone(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, &format!("10F {CYCLE} {CYCLE} {CYCLE} {CYCLE}")));
    let first = gh.reuse_at().unwrap();
    // 20 more flaps (each judged up, then down) while suppressed: silent, figure capped.
    let more: String = std::iter::repeat_n(CYCLE, 20).collect::<Vec<_>>().join(" ");
    let log = feed(&mut gh, 0, &pattern(110 * SEC, SEC, &more));
    assert!(log.is_empty());
    let now = 110 * SEC + 20 * 24 * SEC;
    assert!(gh.penalty(now) <= p.damping.max_penalty);
    let later = gh.reuse_at().unwrap();
    assert!(later > first);
    // From the cap, reuse takes at most half_life · log2(cap / reuse_below) after a flap.
    let bound =
        (60_000.0 * (p.damping.max_penalty / p.damping.reuse_below).log2()).ceil() as Millis;
    assert!(later <= now + bound, "{later} > {now} + {bound}");
}

#[test]
fn damping_disabled_never_suppresses() {
    let mut gh = GatewayHealth::new(base(), 0);
    let trace = format!("10F {}", std::iter::repeat_n(CYCLE, 10).collect::<Vec<_>>().join(" "));
    let log = feed(&mut gh, 0, &pattern(0, SEC, &trace));
    let mut expected = Vec::new();
    for c in 0..10 {
        let s = 10 + 24 * c;
        expected.extend([
            (s + 1, Up, Degraded, Loss),
            (s + 4, Degraded, Down, Loss),
            (s + 23, Down, Up, HoldDownPassed),
        ]);
    }
    assert_eq!(summarize(&log), expected);
    assert!(log.iter().all(|(_, t)| !t.evidence.suppressed && t.evidence.penalty == 0.0));
    assert!(!gh.suppressed());
    assert_eq!(gh.penalty(10_000 * SEC), 0.0);
    assert_eq!(gh.reuse_at(), None);
}

#[test]
fn damping_edge_parameters() {
    // Zero half-life: the figure is gone as soon as any time passes, never suppresses
    // across flaps spaced in time.
    let p = with(|p| {
        p.damping.enabled = true;
        p.damping.half_life = Duration::ZERO;
    });
    let trace = format!("10F {}", std::iter::repeat_n(CYCLE, 10).collect::<Vec<_>>().join(" "));
    let (gh, log) = run(p, &trace);
    assert_eq!(log.len(), 30);
    assert!(!gh.suppressed());

    // A penalty above suppress_above suppresses at the first flap.
    let p = with(|p| {
        p.damping.enabled = true;
        p.damping.penalty = 3000.0;
    });
    let (gh, log) = run(p, "10F 5L");
    assert_eq!(summarize(&log), vec![(11, Up, Degraded, Loss), (14, Degraded, Down, Suppressed)]);
    assert!(gh.suppressed());

    // A cap below suppress_above never suppresses.
    let p = with(|p| {
        p.damping.enabled = true;
        p.damping.max_penalty = 2000.0;
    });
    let trace = format!("10F {}", std::iter::repeat_n(CYCLE, 10).collect::<Vec<_>>().join(" "));
    let (gh, _) = run(p, &trace);
    assert!(!gh.suppressed());
    assert!(gh.penalty(250 * SEC) <= 2000.0);

    // reuse_below 0 (the loader refuses it): a suppression that never ends by decay, and
    // an external up does not lift suppression either.
    let p = with(|p| {
        p.damping.enabled = true;
        p.damping.penalty = 3000.0;
        p.damping.reuse_below = 0.0;
    });
    let (mut gh, _) = run(p, "10F 5L");
    assert_eq!(gh.reuse_at(), None);
    assert_eq!(gh.tick(Millis::MAX), None);
    assert_eq!(gh.state(), Down);
    assert_eq!(gh.force(Millis::MAX, true), None);
    assert_eq!(gh.state(), Down);
    assert!(gh.verdict_hold().unwrap().contains("never by decay"));
}

// ---------------------------------------------------------------------------------------
// External overrides

#[test]
fn force_down_and_up() {
    let no_hold = with(|p| p.hold_down = Duration::ZERO);
    check_table(vec![
        (
            "down at once, up after the hold-down",
            base(),
            "10F D 30F U 10F",
            vec![(10, Up, Down, External), (51, Down, Up, HoldDownPassed)],
        ),
        (
            "repeated forces are one verdict: a second up does not restart the hold-down",
            base(),
            "10F D D 5F U U 10T",
            vec![(10, Up, Down, External), (27, Down, Up, HoldDownPassed)],
        ),
        (
            "forced down stays down while the probes recover",
            base(),
            "10F 10L D 40F U 10T",
            vec![
                (11, Up, Degraded, Loss),
                (14, Degraded, Down, Loss),
                (71, Down, Up, HoldDownPassed),
            ],
        ),
        // External up clears the window: 4 losses decide nothing, the 5th takes it down.
        (
            "external up forgets old losses",
            base(),
            "10L U 10T 4L L",
            vec![(4, Up, Down, Loss), (20, Down, Up, HoldDownPassed), (25, Up, Down, Loss)],
        ),
        (
            "external up is held for the hold-down too",
            base(),
            "10L 9F U 9T T",
            vec![(4, Up, Down, Loss), (29, Down, Up, HoldDownPassed)],
        ),
        (
            "hold-down 0: up at once",
            no_hold.clone(),
            "D 5T U",
            vec![(0, Up, Down, External), (6, Down, Up, External)],
        ),
        (
            "a down cancels a held up; the next up starts a new hold-down",
            base(),
            "D 5T U 5T D 5T U 10T",
            vec![(0, Up, Down, External), (28, Down, Up, HoldDownPassed)],
        ),
        (
            "external up from degraded",
            base(),
            "10S U",
            vec![(4, Up, Degraded, Latency), (10, Degraded, Up, External)],
        ),
        (
            "external down from degraded",
            base(),
            "10S D",
            vec![(4, Up, Degraded, Latency), (10, Degraded, Down, External)],
        ),
        (
            "probes still bad after an external up keep it down",
            base(),
            "10L U 10L 20T",
            vec![(4, Up, Down, Loss)],
        ),
        ("up while up does nothing visible", base(), "10F U", vec![]),
        (
            "external gateway: only verdicts",
            base(),
            "D 100T U 100T",
            vec![(0, Up, Down, External), (111, Down, Up, HoldDownPassed)],
        ),
    ]);
}

#[test]
fn force_details() {
    let mut gh = GatewayHealth::new(damped(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F"));
    let t = gh.force(10 * SEC, false).unwrap();
    assert_eq!(
        t.reason,
        "external down: down at once (a down verdict is never held back); it stays down until \
         an external up; flap penalty 1000 (suppressed above 2500)"
    );
    assert!(gh.forced_down());
    assert_eq!(gh.verdict_hold(), None);
    // Probes keep being recorded for status while forced down; the down was one flap.
    assert!(feed(&mut gh, 11, &pattern(11 * SEC, SEC, "3L")).is_empty());
    assert_eq!(gh.evidence(13 * SEC).samples, 10);
    assert_eq!(gh.evidence(13 * SEC).loss_pct, 30.0);
    assert_eq!(gh.judged(), Degraded);
    assert!((gh.penalty(13 * SEC) - 1000.0 * (-3.0f64 / 60.0).exp2()).abs() < 1e-6);
    // The up is held for the hold-down, and says so.
    assert_eq!(gh.force(14 * SEC, true), None);
    assert!(!gh.forced_down());
    assert!(gh.verdict_held());
    assert_eq!(gh.judged(), Up);
    assert_eq!(gh.evidence(14 * SEC).samples, 0);
    assert_eq!(gh.next_tick(), Some(24 * SEC));
    assert_eq!(
        gh.verdict_hold().unwrap(),
        "up verdict held: the external up has stood for 0 ms of its hold-down 10 s (usable at \
         24000 ms if no down verdict comes)"
    );
    assert_eq!(gh.tick(24 * SEC - 1), None);
    let t = gh.tick(24 * SEC).unwrap();
    assert_eq!((t.from, t.to, t.cause), (Down, Up, HoldDownPassed));
    assert_eq!(t.reason, "the external up stood for 10 s with no down verdict (hold-down 10 s)");
    assert_eq!(gh.verdict_hold(), None);

    // One outage reported by both the verdict and the probes is one flap, in either order.
    let mut gh = GatewayHealth::new(damped(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F D 5L"));
    assert_eq!(gh.judged(), Down);
    assert!((gh.penalty(15 * SEC) - 1000.0 * (-5.0f64 / 60.0).exp2()).abs() < 1e-6);
    let mut gh = GatewayHealth::new(damped(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F 5L D"));
    assert!((gh.penalty(15 * SEC) - 1000.0 * (-1.0f64 / 60.0).exp2()).abs() < 1e-6);
    // Probe flaps while forced down, beyond the one the down counted, still count.
    let mut gh = GatewayHealth::new(damped(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F D 5L 20F 20T 10L"));
    assert_eq!(gh.judged(), Down);
    assert!(gh.penalty(65 * SEC) > 1000.0 * (-55.0f64 / 60.0).exp2() + 900.0);
}

/// dpinger summaries are debounced like probes: a report flapping between total loss and
/// none every second takes the gateway down once and never brings it back while it flaps
/// (a healthy stretch needs `min_samples` healthy summaries in a row and the hold-down);
/// once it settles healthy, it comes back after the hold-down.
/// Degraded by latency, by loss or both (what trigger levels look at): each with its own
/// hysteresis, changing while the state stays Degraded; Up once both are clear.
#[test]
fn degradation_by_loss_and_by_latency_are_tracked_apart() {
    use statecull_policy::health::Judgement;
    let by = |loss: bool, latency: bool| Judgement {
        down: false,
        high_loss: loss,
        high_latency: latency,
    };
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &pattern(0, SEC, "10S"));
    assert_eq!(summarize(&log), vec![(4, Up, Degraded, Latency)]);
    assert_eq!(gh.judgement(), by(false, true));
    // Two losses: 20% loss, degraded by loss too, no transition.
    assert!(feed(&mut gh, 10, &pattern(10 * SEC, SEC, "2L")).is_empty());
    assert_eq!(gh.judgement(), by(true, true));
    // Fast replies push the slow ones out: latency clears first (≤ 100 ms), loss stays 20%.
    assert!(feed(&mut gh, 12, &pattern(12 * SEC, SEC, "6F")).is_empty());
    assert_eq!(gh.judgement(), by(true, false));
    assert_eq!(gh.state(), Degraded);
    // The losses leave the window: 10% loss is at the up threshold, both clear, Up.
    let log = feed(&mut gh, 18, &pattern(18 * SEC, SEC, "3F"));
    assert_eq!(summarize(&log), vec![(20, Degraded, Up, Recovered)]);
    assert_eq!(gh.judgement(), Judgement::UP);
    // Down: neither (down excludes everywhere anyway).
    feed(&mut gh, 21, &pattern(21 * SEC, SEC, "10L"));
    assert_eq!(gh.judgement(), Judgement::DOWN);
    // Back through the hold-down with slow replies: degraded by latency only.
    let mut gh = GatewayHealth::new(base(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10L 30S"));
    assert_eq!(gh.state(), Degraded);
    assert_eq!(gh.judgement(), by(false, true));
}

#[test]
fn flapping_dpinger_summaries_are_held_down() {
    for params in [base(), damped()] {
        let mut gh = GatewayHealth::new(params, 0);
        let mut events: Vec<(Millis, Ev)> = (0..60)
            .map(|i| (i * SEC, if i % 2 == 0 { summary(100.0, 0) } else { summary(0.0, 20) }))
            .collect();
        events.extend((60..80).map(|i| (i * SEC, summary(0.0, 20))));
        let log = feed(&mut gh, 0, &events);
        // The last flap's healthy summary (59) starts the stretch that holds: 10 s later.
        assert_eq!(summarize(&log), vec![(0, Up, Down, Loss), (69, Down, Up, HoldDownPassed)]);
    }
}

#[test]
fn an_up_verdict_never_lifts_suppression() {
    let p = damped();
    let mut gh = GatewayHealth::new(p.clone(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, &format!("10F {CYCLE} {CYCLE} {CYCLE} {CYCLE}")));
    assert!(gh.suppressed());
    let reuse = gh.reuse_at().unwrap();
    assert_eq!(gh.force(106 * SEC, true), None);
    assert!(gh.suppressed());
    let why = gh.verdict_hold().unwrap();
    assert!(why.contains("flap damping suppresses it"), "{why}");
    assert!(why.contains(&format!("reused at {reuse} ms")), "{why}");
    // The verdict's hold-down passes first; the gateway stays down until the reuse time.
    assert_eq!(gh.tick(116 * SEC), None);
    assert!(!gh.verdict_held());
    assert_eq!(gh.tick(reuse - 1), None);
    let t = gh.tick(reuse).unwrap();
    assert_eq!((t.from, t.to, t.cause), (Down, Up, Reused));
}

/// A hook flapping `down`/`up` every `period` (down at 0, up half a period later): the
/// times at which the gateway went from usable to down (each is a kill) over `flaps` flaps.
fn hook_kills(params: &HealthParams, period: Millis, flaps: u64) -> Vec<Millis> {
    let mut gh = GatewayHealth::new(params.clone(), 0);
    let mut kills = Vec::new();
    let mut note = |t: Option<Transition>| {
        if let Some(t) = t
            && t.from != Down
            && t.to == Down
        {
            kills.push(t.at);
        }
    };
    let mut now = 0;
    for i in 0..flaps {
        // The engine ticks at next_tick(); ticks between verdicts.
        let down_at = i * period;
        while let Some(at) = gh.next_tick().filter(|&at| at < down_at) {
            note(gh.tick(at.max(now)));
            now = at.max(now);
            check_consistent(&gh);
        }
        note(gh.force(down_at, false));
        check_consistent(&gh);
        let up_at = down_at + period / 2;
        while let Some(at) = gh.next_tick().filter(|&at| at < up_at) {
            note(gh.tick(at.max(down_at)));
            check_consistent(&gh);
        }
        note(gh.force(up_at, true));
        check_consistent(&gh);
        now = up_at;
    }
    kills
}

#[test]
fn a_flapping_hook_kills_at_most_once_per_hold_down_and_stops_when_suppressed() {
    let defaults = HealthParams::default();
    // (flap period, kills expected over 100 flaps with the defaults: hold-down 10 s,
    // damping +1000, suppress above 2000, reuse below 750, half-life 60 s).
    let cases: Vec<(Millis, usize)> = vec![
        (SEC, 1),      // faster than the hold-down: the up never stands 10 s
        (10 * SEC, 1), // an up 5 s before the next down: still held
        (30 * SEC, 3), // up stands 10 s: usable again, until damping suppresses (3rd flap)
        (50 * SEC, 4), // slower: the penalty decays more between flaps, the 4th suppresses
        // Once per half-life or slower, the figure never passes 2000: not damped by the
        // defaults (each down is a new outage and acts).
        (60 * SEC, 100),
        (300 * SEC, 100),
    ];
    for (period, expected) in cases {
        let kills = hook_kills(&defaults, period, 100);
        assert_eq!(kills.len(), expected, "period {period} ms: kills at {kills:?}");
        assert_eq!(kills.first(), Some(&0), "the first down always acts at once");
        for w in kills.windows(2) {
            assert!(w[1] - w[0] >= 10 * SEC, "two kills within the hold-down: {kills:?}");
        }
    }
    // Hold-down 0 and damping off: every flap is a kill (the old behaviour, by choice).
    let undamped = HealthParams {
        hold_down: Duration::ZERO,
        damping: FlapDamping { enabled: false, ..FlapDamping::default() },
        ..HealthParams::default()
    };
    assert_eq!(hook_kills(&undamped, SEC, 100).len(), 100);
    // Damping alone (hold-down 0): a fast hook is suppressed at the third flap.
    let damping_only = HealthParams { hold_down: Duration::ZERO, ..HealthParams::default() };
    assert_eq!(hook_kills(&damping_only, SEC, 100).len(), 3);
}

#[test]
fn a_suppressed_hook_comes_back_once_it_stops_flapping() {
    let p = HealthParams::default();
    let mut gh = GatewayHealth::new(p, 0);
    let mut now = 0;
    for _ in 0..20 {
        gh.force(now, false);
        gh.force(now + 500, true);
        now += SEC;
    }
    assert!(gh.suppressed());
    assert_eq!(gh.state(), Down);
    // The last verdict was up: it is used again at the reuse time, and not before.
    let reuse = gh.reuse_at().unwrap();
    assert!(reuse > now + 60 * SEC, "suppressed for more than a half-life after the storm");
    assert_eq!(gh.next_tick(), Some(now - 500 + 10 * SEC));
    assert_eq!(gh.tick(now - 500 + 10 * SEC), None);
    assert_eq!(gh.next_tick(), Some(reuse));
    let t = gh.tick(reuse).unwrap();
    assert_eq!((t.from, t.to, t.cause), (Down, Up, Reused));
}

// ---------------------------------------------------------------------------------------
// External summaries (dpinger)

#[test]
fn dpinger_summaries() {
    let t = |i: u64| i * SEC;
    // Down at 60%; then 0% every second: the stretch starts at 2 s, needs 10 s and 5
    // summaries → up at 12 s.
    let mut events = vec![(t(0), summary(0.0, 20)), (t(1), summary(60.0, 20))];
    events.extend((2..=12).map(|i| (t(i), summary(0.0, 20))));
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &events);
    assert_eq!(summarize(&log), vec![(1, Up, Down, Loss), (12, Down, Up, HoldDownPassed)]);
    let (_, down) = &log[0];
    assert_eq!(down.reason, "loss 60% reported by the external monitor (down at or above 50%)");
    assert_eq!(down.evidence.samples, 0);
    assert_eq!(down.evidence.loss_pct, 60.0);
    assert_eq!(down.evidence.latency_avg, Some(Duration::from_millis(20)));
    assert_eq!(
        log[1].1.reason,
        "healthy for 10 s over 11 summaries (hold-down 10 s): loss 0% reported by the external monitor (up at or below 10%)"
    );

    // Hold-down with summaries and ticks: 5 summaries, then ticks.
    let mut events = vec![(t(0), summary(100.0, 0))];
    events.extend((1..=5).map(|i| (t(i), summary(0.0, 20))));
    events.extend((6..=12).map(|i| (t(i), Ev::Tick)));
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &events);
    assert_eq!(summarize(&log), vec![(0, Up, Down, Loss), (11, Down, Up, HoldDownPassed)]);
}

#[test]
fn dpinger_garbage_never_panics_and_is_sane() {
    let t = |i: u64| i * SEC;
    let events = vec![
        (t(0), Ev::Summary(f64::NAN, None)),                // ignored
        (t(1), Ev::Summary(f64::INFINITY, None)),           // 100%
        (t(2), Ev::Summary(f64::NAN, Some(Duration::MAX))), // ignored
        (t(3), Ev::Summary(f64::NEG_INFINITY, Some(Duration::MAX))), // 0%, huge latency
        (t(4), Ev::Summary(-5.0, None)),
        (t(5), Ev::Summary(250.0, None)), // 100%
    ];
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &events);
    assert_eq!(summarize(&log), vec![(1, Up, Down, Loss)]);
    assert_eq!(log[0].1.evidence.loss_pct, 100.0);
    assert_eq!(gh.evidence(t(4)).loss_pct, 100.0);

    // A NaN summary does not erase the previous one.
    let mut gh = GatewayHealth::new(base(), 0);
    gh.record_summary(0, 30.0, None);
    gh.record_summary(SEC, f64::NAN, None);
    assert_eq!(gh.evidence(SEC).loss_pct, 30.0);
    assert_eq!(gh.state(), Degraded);
}

#[test]
fn summaries_and_probes_replace_each_other() {
    let mut gh = GatewayHealth::new(base(), 0);
    // Probes fill the window; a summary replaces it.
    feed(&mut gh, 0, &pattern(0, SEC, "10L"));
    assert_eq!(gh.state(), Down);
    gh.record_summary(10 * SEC, 0.0, Some(Duration::from_millis(20)));
    assert_eq!(gh.evidence(10 * SEC).samples, 0);
    assert_eq!(gh.evidence(10 * SEC).loss_pct, 0.0);
    // Then probes again: a fresh window, no judgement for 4 results (the stretch ends).
    let log = feed(&mut gh, 11, &pattern(11 * SEC, SEC, "4F"));
    assert!(log.is_empty());
    assert_eq!(gh.hold_down_at(), None);
    assert_eq!(gh.evidence(14 * SEC).samples, 4);
    // From the 5th reply (15 s) the window is healthy: up 10 s later.
    let log = feed(&mut gh, 15, &pattern(15 * SEC, SEC, "11F"));
    assert_eq!(summarize(&log), vec![(25, Down, Up, HoldDownPassed)]);
}

// ---------------------------------------------------------------------------------------
// Time

#[test]
fn time_going_backwards_is_no_time_passing() {
    // Transitions carry the latest time seen.
    let mut events = pattern(0, SEC, "10F");
    events.extend((0..5).map(|i| (100 * (5 - i), Ev::Probe(Probe::Lost))));
    let mut gh = GatewayHealth::new(base(), 0);
    let log = feed(&mut gh, 0, &events);
    assert_eq!(summarize(&log), vec![(11, Up, Degraded, Loss), (14, Degraded, Down, Loss)]);
    assert!(log.iter().all(|(_, t)| t.at == 9 * SEC));

    // The hold-down counts forward time only.
    let mut gh = GatewayHealth::new(base(), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10L 9F")); // healthy from 18 s
    assert!(feed(&mut gh, 0, &pattern(0, 0, "20F")).is_empty()); // all at t = 0
    assert_eq!(gh.hold_down_at(), Some(28 * SEC));
    assert_eq!(gh.tick(5 * SEC), None);
    assert_eq!(gh.tick(28 * SEC - 1), None);
    let t = gh.tick(28 * SEC).unwrap();
    assert_eq!((t.to, t.cause, t.at), (Up, HoldDownPassed, 28 * SEC));
    assert_eq!(gh.tick(0), None);

    // The damping figure does not decay backwards (nor grow).
    let mut gh = GatewayHealth::new(with(|p| p.damping.enabled = true), 0);
    feed(&mut gh, 0, &pattern(0, SEC, "10F 5L")); // flap at 14 s
    let at_clock = gh.penalty(14 * SEC);
    assert_eq!(at_clock, 1000.0);
    assert_eq!(gh.penalty(0), at_clock);
    gh.tick(60 * SEC);
    gh.tick(SEC);
    assert_eq!(gh.penalty(SEC), gh.penalty(60 * SEC));
    assert!((gh.penalty(74 * SEC) - 500.0).abs() < 1e-9);
}

#[test]
fn huge_values_do_not_panic() {
    let mut gh = GatewayHealth::new(base(), Millis::MAX - 5);
    for i in 0..20 {
        gh.record(Millis::MAX - 5 + i.min(5), Probe::Reply { rtt: Duration::MAX });
        check_consistent(&gh);
    }
    assert_eq!(gh.state(), Degraded);
    assert_eq!(gh.evidence(Millis::MAX).latency_avg, Some(Duration::MAX));
    gh.tick(Millis::MAX);
    gh.force(Millis::MAX, false);
    gh.force(0, true);
    // The up is held for the hold-down, which cannot pass after the end of time.
    assert_eq!(gh.state(), Down);
    assert!(gh.verdict_held());
    assert_eq!(gh.verdict_up_at(), Some(Millis::MAX));
}

#[test]
fn degenerate_parameters_do_not_panic() {
    let params = vec![
        with(|p| p.window = 0),
        with(|p| {
            p.window = usize::MAX;
            p.min_samples = usize::MAX;
        }),
        with(|p| {
            p.loss_down_pct = f64::NAN;
            p.loss_up_pct = f64::NAN;
            p.loss_degraded_pct = f64::NAN;
        }),
        with(|p| {
            p.loss_up_pct = 90.0; // above the degraded threshold
            p.latency_up = Duration::from_secs(1); // above the degraded latency
        }),
        with(|p| p.hold_down = Duration::MAX),
        with(|p| {
            p.damping.enabled = true;
            p.damping.penalty = f64::NAN;
        }),
        with(|p| {
            p.damping.enabled = true;
            p.damping.penalty = f64::INFINITY;
            p.damping.max_penalty = f64::INFINITY;
        }),
        with(|p| {
            p.damping.enabled = true;
            p.damping.half_life = Duration::MAX;
            p.damping.penalty = -1.0;
        }),
    ];
    let trace = "10F 10L 30F 5S 10M D 5L U 3FL 20T 10L 100F 5FFFFL";
    for p in params {
        let (gh, _) = run(p.clone(), trace);
        let ev = gh.evidence(1000 * SEC);
        assert!((0.0..=100.0).contains(&ev.loss_pct), "{p:?}");
        assert!(!ev.penalty.is_nan());
        let _ = (gh.next_tick(), gh.reuse_at(), gh.hold_down_at());
    }
    // Parameters whose up threshold is above the degraded one cannot oscillate.
    let (_, log) = run(with(|p| p.loss_up_pct = 90.0), "10F 200FFFFL");
    assert_eq!(summarize(&log), vec![(19, Up, Degraded, Loss)]);
}

// ---------------------------------------------------------------------------------------
// Names and reasons

#[test]
fn names_and_reasons() {
    assert_eq!([Up.name(), Degraded.name(), Down.name()], ["up", "degraded", "down"]);
    assert_eq!(Down.to_string(), "down");
    assert_eq!(
        [Loss, Latency, Recovered, HoldDownPassed, Suppressed, Reused, External].map(Cause::name),
        ["loss", "latency", "recovered", "hold-down-passed", "suppressed", "reused", "external"]
    );
    assert_eq!(GatewayHealth::new(base(), 0).state(), Up);
    assert_eq!(GatewayHealth::new(base(), 0).params(), &base());

    let (_, log) = run(base(), "10F 5L");
    assert_eq!(log[0].1.reason, "loss 20% over the last 10 probes (degraded at or above 20%)");
    assert_eq!(log[1].1.reason, "loss 50% over the last 10 probes (down at or above 50%)");
    assert_eq!(log[1].1.evidence.samples, 10);
    assert_eq!(log[1].1.evidence.latency_avg, Some(Duration::from_millis(20)));

    let (_, log) = run(base(), "10M 10S 10M 10F");
    assert_eq!(
        log[0].1.reason,
        "average latency 210 ms over the last 10 replies (degraded at or above 200 ms)"
    );
    assert_eq!(
        log[1].1.reason,
        "loss 0% over the last 10 probes and average latency 98 ms (up at or below 10% and 100 ms)"
    );

    let (_, log) = run(base(), "10L 19S");
    assert_eq!(
        log[1].1.reason,
        "healthy for 10 s over 11 results (hold-down 10 s): loss 0% over the last 10 probes (up at or below 10%), but average latency 300 ms is at or above 200 ms, so degraded"
    );

    let (_, log) = run(base(), "3L 3F");
    assert_eq!(log[0].1.reason, "loss 60% over the last 5 probes (down at or above 50%)");
}

// ---------------------------------------------------------------------------------------
// Property: random inputs never panic and the state always matches the transitions.

fn arb_ev() -> impl Strategy<Value = Ev> {
    prop_oneof![
        4 => Just(Ev::Probe(Probe::Lost)),
        4 => (0u64..500).prop_map(|ms| Ev::Probe(Probe::Reply { rtt: Duration::from_millis(ms) })),
        1 => (any::<u64>(), 0u32..1_000_000_000)
            .prop_map(|(s, n)| Ev::Probe(Probe::Reply { rtt: Duration::new(s, n) })),
        1 => (any::<f64>(), proptest::option::of(any::<u64>()))
            .prop_map(|(l, ms)| Ev::Summary(l, ms.map(Duration::from_millis))),
        1 => (0.0f64..100.0).prop_map(|l| Ev::Summary(l, Some(Duration::from_millis(30)))),
        2 => Just(Ev::Tick),
        1 => any::<bool>().prop_map(Ev::Force),
    ]
}

/// Time steps: mostly forward, sometimes backwards, sometimes huge.
fn arb_dt() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0i64..5_000,
        1 => -100_000i64..0,
        1 => 0i64..10_000_000,
    ]
}

fn arb_params() -> impl Strategy<Value = HealthParams> {
    (
        (0usize..30, 0usize..40, 0.0f64..=100.0, 0.0f64..=100.0, 0.0f64..=100.0),
        (0u64..400, 0u64..400, 0u64..30_000),
        (
            any::<bool>(),
            0.0f64..3000.0,
            0.0f64..5000.0,
            0.0f64..3000.0,
            0u64..120_000,
            0.0f64..10_000.0,
        ),
    )
        .prop_map(
            |(
                (window, min_samples, down, up, degraded),
                (lat_deg, lat_up, hold),
                (en, pen, sup, reuse, hl, max),
            )| {
                HealthParams {
                    window,
                    min_samples,
                    loss_down_pct: down,
                    loss_up_pct: up,
                    latency_degraded: Duration::from_millis(lat_deg),
                    latency_up: Duration::from_millis(lat_up),
                    loss_degraded_pct: degraded,
                    hold_down: Duration::from_millis(hold),
                    damping: FlapDamping {
                        enabled: en,
                        penalty: pen,
                        suppress_above: sup,
                        reuse_below: reuse,
                        half_life: Duration::from_millis(hl),
                        max_penalty: max,
                    },
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_traces_never_panic_and_stay_consistent(
        params in prop_oneof![Just(base()), Just(damped()), arb_params()],
        start in prop_oneof![Just(0u64), any::<u64>()],
        steps in proptest::collection::vec((arb_dt(), arb_ev()), 0..400),
    ) {
        let mut gh = GatewayHealth::new(params, start);
        let mut now = start;
        let mut clock = start;
        let mut last_to = Up;
        for (dt, ev) in steps {
            now = if dt >= 0 { now.saturating_add(dt.unsigned_abs()) } else { now.saturating_sub(dt.unsigned_abs()) };
            clock = clock.max(now);
            let before = gh.state();
            prop_assert_eq!(before, last_to);
            if let Some(t) = apply(&mut gh, now, ev) {
                prop_assert_eq!(t.from, before);
                prop_assert_ne!(t.from, t.to);
                prop_assert_eq!(t.at, clock);
                prop_assert!((0.0..=100.0).contains(&t.evidence.loss_pct));
                prop_assert!(!t.evidence.penalty.is_nan());
                last_to = t.to;
            }
            prop_assert_eq!(gh.state(), last_to);
            prop_assert_eq!(gh.usable(), gh.state() != Down);
            let j = gh.judgement();
            prop_assert_eq!(j.down, gh.state() == Down);
            prop_assert_eq!(gh.state() == Degraded, !j.down && (j.high_loss || j.high_latency));
            if gh.forced_down() || gh.suppressed() || gh.verdict_held() {
                prop_assert_eq!(gh.state(), Down);
            } else {
                prop_assert_eq!(gh.state(), gh.judged());
            }
            if let Some(at) = gh.next_tick() {
                prop_assert!(at >= clock);
            }
            let ev = gh.evidence(now);
            prop_assert!((0.0..=100.0).contains(&ev.loss_pct));
            prop_assert!(ev.samples <= gh.params().window.max(1));
            prop_assert!(!ev.penalty.is_nan() && ev.penalty >= 0.0);
        }
    }
}

/// A policy reload keeps a gateway's machine with new parameters: the state and the newest
/// results stay, the new thresholds judge from the next input on.
#[test]
fn new_parameters_keep_the_state_and_judge_from_the_next_input() {
    let mut gh = GatewayHealth::new(base(), 0);
    // 6 lost of 10: down (50 % threshold).
    for (i, p) in "FFFFLLLLLL".chars().enumerate() {
        let now = i as Millis * SEC;
        let _ = gh.record(
            now,
            if p == 'L' { Probe::Lost } else { Probe::Reply { rtt: Duration::from_millis(20) } },
        );
    }
    assert_eq!(gh.state(), Down);
    // Down stays down across the reload, whatever the new thresholds.
    gh.set_params(with(|p| {
        p.window = 4;
        p.min_samples = 2;
        p.loss_down_pct = 100.0;
        p.loss_degraded_pct = 90.0;
        p.loss_up_pct = 80.0;
        p.hold_down = Duration::ZERO;
    }));
    assert_eq!(gh.state(), Down);
    assert_eq!(gh.evidence(10 * SEC).samples, 4, "the window is trimmed to the new size");
    // The next result is judged by the new thresholds: 4 of the last 4 lost is 100 %.
    assert!(gh.record(10 * SEC, Probe::Lost).is_none());
    assert_eq!(gh.state(), Down);
    // Replies: 75 %, then 50 % loss, at or below the new loss_up (80 %); with no hold-down
    // the gateway is up once the healthy stretch has its minimum of fresh results.
    let rtt = Duration::from_millis(20);
    let t = [11, 12, 13].into_iter().find_map(|s| gh.record(s * SEC, Probe::Reply { rtt }));
    assert_eq!(t.map(|t| t.to), Some(Up));
    // Under the old thresholds (up at or below 10 %) it could not have come back.
    assert!(gh.evidence(13 * SEC).loss_pct > 10.0);
}
