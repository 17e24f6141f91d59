//! Table-driven traces of the states refresher's budget (`statecull_engine::refresh`): when
//! the next background count may start, given the policy's `states_refresh`, the broker's
//! backend and how the last attempts went.
//!
//! A trace is a line of tokens, each at the current engine time:
//!
//! * `@T`: the clock is at T ms.
//! * `ct`, `pf`, `model`: a Hello said the backend is conntrack, pf or pf-model.
//! * `counted:D`, `abandoned:D`, `failed:D`: an attempt ended now; the count took D ms, or
//!   was abandoned for a kill / failed after running D ms.
//! * `next=T`: the next count may start at T ms; `next=off`: counting is off.
//! * `min=D` / `min=none`: the minimum interval now known.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::time::Duration;

use statecull_engine::refresh::{Outcome, RETRY_UNREACHABLE, Schedule};
use statecull_policy::Millis;
use statecull_policy::model::StatesRefresh;
use statecull_proto::BackendKind;

fn ms(text: &str) -> Millis {
    text.parse().unwrap_or_else(|_| panic!("not a number of ms: {text}"))
}

fn run(setting: StatesRefresh, trace: &str) {
    let mut s = Schedule::new(setting);
    let mut now: Millis = 0;
    for token in trace.split_whitespace() {
        let ctx = || format!("{setting:?} `{trace}` at `{token}` ({s:?})");
        if let Some(t) = token.strip_prefix('@') {
            now = ms(t);
        } else if let Some(want) = token.strip_prefix("next=") {
            let want = if want == "off" { None } else { Some(ms(want)) };
            assert_eq!(s.next(), want, "{}", ctx());
        } else if let Some(want) = token.strip_prefix("min=") {
            let want = if want == "none" { None } else { Some(Duration::from_millis(ms(want))) };
            assert_eq!(s.minimum(), want, "{}", ctx());
        } else if let Some((what, d)) = token.split_once(':') {
            let d = Duration::from_millis(ms(d));
            let outcome = match what {
                "counted" => Outcome::Counted { took: d },
                "abandoned" => Outcome::Abandoned { ran: d },
                "failed" => Outcome::Failed { ran: d },
                other => panic!("unknown outcome {other} in {}", ctx()),
            };
            s.done(now, outcome);
        } else {
            match token {
                "ct" => s.backend(BackendKind::Conntrack),
                "pf" => s.backend(BackendKind::Pf),
                "model" => s.backend(BackendKind::PfModel),
                other => panic!("unknown token {other} in {}", ctx()),
            }
        }
    }
}

const AUTO: StatesRefresh = StatesRefresh::Auto;
const OFF: StatesRefresh = StatesRefresh::Off;

fn every(secs: u64) -> StatesRefresh {
    StatesRefresh::AtMostEvery(Duration::from_secs(secs))
}

#[test]
fn the_first_count_is_due_at_start_unless_off() {
    for (setting, trace) in [
        (AUTO, "next=0 min=none ct min=15000 next=0"),
        (AUTO, "pf min=600000 model min=600000 next=0"),
        (every(60), "next=0 ct min=60000 pf min=60000"),
        (OFF, "next=off ct next=off min=none"),
    ] {
        run(setting, trace);
    }
}

/// The budget: the next count starts no sooner than 100 times the last one's duration
/// after it ended, and never sooner than the minimum. The table: a 6 s count of
/// 4 million entries every 15 s kept the broker 40 % busy; now it waits 10 minutes.
#[test]
fn small_tables_count_at_the_minimum_big_ones_within_one_percent() {
    let table = [
        // conntrack, auto: 15 s minimum.
        (AUTO, "ct next=0 @20 counted:20 next=15020"),
        (AUTO, "ct @20 counted:20 next=15020 @15020 @15170 counted:150 next=30170"),
        (AUTO, "ct @6000 counted:6000 next=606000"),
        (AUTO, "ct @6000 counted:6000 @606000 @606100 counted:100 next=621100"),
        // pf, auto: 10 minutes, even for a quick count; slower still for a slow one.
        (AUTO, "pf @50 counted:50 next=600050"),
        (AUTO, "model @2000 counted:2000 next=602000"),
        (AUTO, "pf @7000 counted:7000 next=707000"),
        // An explicit minimum, any backend.
        (every(1), "ct @5 counted:5 next=1005"),
        (every(1), "pf @5 counted:5 next=1005"),
        (every(1), "ct @50 counted:50 next=5050"),
        (every(3600), "ct @6000 counted:6000 next=3606000"),
    ];
    for (setting, trace) in table {
        run(setting, trace);
    }
}

/// The broker's background work stays at or below 1 % of one core, whatever the counts
/// take: over a long run of counts, each starting as soon as allowed, the time spent
/// counting is at most 1 % of the time elapsed.
#[test]
fn a_long_run_stays_within_the_budget() {
    for took_ms in [1u64, 7, 150, 999, 6_000, 45_000] {
        for setting in [AUTO, every(1)] {
            let mut s = Schedule::new(setting);
            s.backend(BackendKind::Conntrack);
            let mut now = 0;
            let mut busy = 0;
            for _ in 0..1000 {
                now = now.max(s.next().unwrap());
                now += took_ms;
                busy += took_ms;
                s.done(now, Outcome::Counted { took: Duration::from_millis(took_ms) });
            }
            let share = busy as f64 / now as f64;
            assert!(share <= 0.01, "{setting:?} {took_ms} ms: {share}");
        }
    }
}

/// A count abandoned for a kill is charged at least as much as the last full count (the
/// broker may have walked the table regardless), and what it ran if that is more.
#[test]
fn abandoned_counts_are_charged() {
    let table = [
        (AUTO, "ct @6000 counted:6000 next=606000 @606500 abandoned:500 next=1206500"),
        (AUTO, "ct @6000 counted:6000 @606000 @614000 abandoned:8000 next=1414000"),
        // Never counted yet: what it ran, and the minimum.
        (AUTO, "ct @100 abandoned:100 next=15100"),
        (AUTO, "ct @1000 abandoned:1000 next=101000"),
        (AUTO, "pf @100 abandoned:100 next=600100"),
        // The last full count is still the budget's base afterwards.
        (
            AUTO,
            "ct @6000 counted:6000 @606500 abandoned:500 @1206500 @1206600 counted:100 next=1221600",
        ),
    ];
    for (setting, trace) in table {
        run(setting, trace);
    }
}

/// A failed attempt: before any broker answered (the backend unknown, nothing walked), the
/// next try comes after RETRY_UNREACHABLE; once the backend is known, the minimum applies;
/// what a failed attempt ran is charged either way.
#[test]
fn failures_retry_soon_only_while_nothing_was_counted() {
    assert_eq!(RETRY_UNREACHABLE, Duration::from_secs(15));
    let table = [
        (AUTO, "@3 failed:3 next=15003 @15003 failed:0 next=30003"),
        (AUTO, "@10000 failed:1000 next=110000"),
        (AUTO, "pf @100 counted:100 @600100 @600105 failed:5 next=1200105"),
        (every(3600), "@1 failed:1 next=15001 ct @15002 failed:1 next=3615002"),
        (every(1), "ct @100 failed:0 next=1100"),
        (OFF, "@100 failed:100 next=off"),
    ];
    for (setting, trace) in table {
        run(setting, trace);
    }
}

/// Huge durations saturate instead of overflowing.
#[test]
fn huge_durations_saturate() {
    let mut s = Schedule::new(AUTO);
    s.backend(BackendKind::Conntrack);
    s.done(Millis::MAX - 1, Outcome::Counted { took: Duration::MAX });
    assert_eq!(s.next(), Some(Millis::MAX));
    assert_eq!(s.last_took(), Some(Duration::MAX));
}
