//! Table-driven traces of the executor's batching (`statecull_engine::batch`) with a fake
//! clock: which decisions form one plan, how long routing is waited for and how the wait
//! ends, and what the trailing sweep may still touch.
//!
//! A trace is a line of tokens; `@T` sets the clock to T ms (engine time), every other token
//! happens at the current time:
//!
//! * `D0` / `U0`: gateway 0 goes down / comes up, and the engine decides so (usability and
//!   `routed` counts recorded then). The executor takes it as the first decision of a batch
//!   when it has none, while it waits for routing it joins the batch, otherwise it is queued
//!   until the next `drain`.
//! * `R0`: a `routed` signal for gateway 0. `H0+` / `H0-`: gateway 0's health changes and
//!   its decision is not out yet (what `settle` is for).
//! * `drain`: the executor merges every queued decision. `wait`: a routing wait starts.
//!   `end`: it ended (the gateways it covered are remembered).
//! * `next=E`, `moved=E`, `notyet=E`, `failed=E`, `closed=E`: ask the wait where it stands
//!   (`next`), report a look at the main table, or the decision queue closing; `E` is what
//!   it must answer: `sleepT` (sleep until T; `sleepTr`: and watch routes), `check` (look
//!   at the main table), `ok:H` (routing confirmed by H: `signal`, `routes`, `delay`, or
//!   `none` when nothing is left to wait for) or `late:H` (the wait gave up unconfirmed:
//!   `signal`, `routes`, or `closed`).
//! * `seedN`: the wait starts from ticket N read in the background before the decision.
//! * `ticketN=E`, `ticketfail=E`: report the pf ruleset ticket read after `next=read` (N),
//!   or that it could not be read; `ok:ruleset` / `late:ruleset` end a `pf-ruleset` wait.
//! * `covered=yes|no`: the batch holds only gateways the last wait covered. `settle=
//!   changed|same`: the batch brought up to date with the health. `batch=D0,1/U2`: what the
//!   batch holds (went down / came up, in order). `taken=N`: decisions taken for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeSet;
use std::time::Duration;

use statecull_engine::batch::{
    self, Batch, Decision, Next, RouteCheck, Routed, RoutingWait, Sweep,
};
use statecull_policy::Millis;
use statecull_policy::model::{Routing, RoutingConfirm};
use statecull_policy::plan::{Action, SweepRequest};
use statecull_proto::{Capabilities, Selector, SelectorField};

const GATEWAYS: usize = 4;
const SETTLE: Millis = 5_000;

fn routing(confirm: RoutingConfirm) -> Routing {
    Routing {
        confirm,
        settle_timeout: Duration::from_millis(SETTLE),
        sweep_delay: Duration::from_secs(1),
    }
}

/// The executor's view, driven by a trace.
struct Harness {
    routing: Routing,
    watcher: bool,
    now: Millis,
    health: Vec<bool>,
    routed: Vec<u64>,
    batch: Option<Batch>,
    wait: Option<RoutingWait>,
    queued: Vec<Decision>,
    known: BTreeSet<usize>,
}

impl Harness {
    fn new(confirm: RoutingConfirm, watcher: bool) -> Self {
        Harness {
            routing: routing(confirm),
            watcher,
            now: 0,
            health: vec![true; GATEWAYS],
            routed: vec![0; GATEWAYS],
            batch: None,
            wait: None,
            queued: Vec::new(),
            known: BTreeSet::new(),
        }
    }

    fn batch(&mut self) -> &mut Batch {
        self.batch.as_mut().expect("a batch in hand")
    }

    fn decide(&mut self, g: usize, up: bool) {
        self.health[g] = up;
        let d = Decision {
            went_down: if up { vec![] } else { vec![g] },
            came_up: if up { vec![g] } else { vec![] },
            usable: self.health.clone(),
            routed_marks: self.routed.clone(),
            at: self.now,
        };
        match (&mut self.batch, &mut self.wait) {
            (None, _) => self.batch = Some(Batch::new(d)),
            (Some(b), Some(w)) => w.join(b, d),
            (Some(_), None) => self.queued.push(d),
        }
    }

    fn wait(&mut self) -> &mut RoutingWait {
        self.wait.as_mut().expect("a wait in progress")
    }

    fn step(&mut self, token: &str, at: usize) {
        let gateway =
            |s: &str| -> usize { s.parse().unwrap_or_else(|_| panic!("token {at}: {s}")) };
        let (verb, expect) = match token.split_once('=') {
            Some((v, e)) => (v, Some(e)),
            None => (token, None),
        };
        let got: String = match verb {
            _ if verb.starts_with('@') => {
                let t: Millis = verb[1..].parse().unwrap();
                assert!(t >= self.now, "token {at}: time goes forward");
                self.now = t;
                return;
            }
            _ if verb.starts_with('D') => return self.decide(gateway(&verb[1..]), false),
            _ if verb.starts_with('U') => return self.decide(gateway(&verb[1..]), true),
            _ if verb.starts_with('R') => {
                self.routed[gateway(&verb[1..])] += 1;
                return;
            }
            _ if verb.starts_with('H') => {
                let (g, sign) = verb[1..].split_at(verb.len() - 2);
                self.health[gateway(g)] = sign == "+";
                return;
            }
            "drain" => {
                for d in std::mem::take(&mut self.queued) {
                    self.batch().absorb(d);
                }
                return;
            }
            "wait" => {
                let (routing, watcher) = (self.routing.clone(), self.watcher);
                self.wait = Some(self.batch().wait(&routing, watcher));
                return;
            }
            "end" => {
                self.wait = None;
                self.known = self.batch().targets();
                return;
            }
            "next" => {
                let (now, routed) = (self.now, self.routed.clone());
                let mut w = *self.wait();
                let n = w.next(self.batch.as_ref().unwrap(), now, &routed);
                self.wait = Some(w);
                show(n)
            }
            "moved" | "notyet" | "failed" => {
                let check = match verb {
                    "moved" => RouteCheck::Moved,
                    "notyet" => RouteCheck::NotYet,
                    _ => RouteCheck::Failed,
                };
                let now = self.now;
                show(self.wait().routes(check, now))
            }
            "closed" => show(Next::Done(self.wait().closed())),
            _ if verb.starts_with("seed") => {
                let t: u32 = verb[4..].parse().unwrap();
                self.wait().seed_ticket(Some(t));
                return;
            }
            _ if verb.starts_with("ticket") => {
                let read = match &verb[6..] {
                    "fail" => None,
                    n => Some(n.parse::<u32>().unwrap()),
                };
                let now = self.now;
                show(self.wait().ticket(read, now))
            }
            "covered" => {
                let known = self.known.clone();
                if self.batch().covered(&known) { "yes" } else { "no" }.into()
            }
            "settle" => {
                let health = self.health.clone();
                if self.batch().settle(health) { "changed" } else { "same" }.into()
            }
            "batch" => {
                let d = self.batch().decision().clone();
                let list =
                    |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
                format!("D{}/U{}", list(&d.went_down), list(&d.came_up))
            }
            "taken" => self.batch().taken().to_string(),
            other => panic!("token {at}: unknown {other:?}"),
        };
        let expect = expect.unwrap_or_else(|| panic!("token {at}: {verb} needs =expected"));
        assert_eq!(got, expect, "token {at} ({token}) at {} ms", self.now);
    }
}

fn show(n: Next) -> String {
    match n {
        Next::CheckRoutes => "check".into(),
        Next::ReadTicket => "read".into(),
        Next::Sleep { until, routes } => format!("sleep{until}{}", if routes { "r" } else { "" }),
        Next::Done(Routed { confirmed, how }) => {
            let how = match how {
                "routed signal" => "signal",
                "rtnetlink: main table moved"
                | "main table still uses it"
                | "route socket: default route moved"
                | "default route still uses it" => "routes",
                "pf ruleset reloaded" | "pf ruleset not reloaded" => "ruleset",
                "settle delay elapsed" => "delay",
                "no routed signal" => "signal",
                "" if confirmed => "none",
                "" => "closed",
                other => panic!("unknown how {other:?}"),
            };
            format!("{}:{how}", if confirmed { "ok" } else { "late" })
        }
    }
}

fn run(name: &str, confirm: RoutingConfirm, watcher: bool, trace: &str) {
    let mut h = Harness::new(confirm, watcher);
    for (i, token) in trace.split_whitespace().enumerate() {
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h.step(token, i))).is_err() {
            panic!("trace {name:?} failed at token {i} ({token})");
        }
    }
}

use RoutingConfirm::{Delay, PfRuleset, RouteSocket, Rtnetlink, Signal};

#[test]
fn routing_waits() {
    let table: &[(&str, RoutingConfirm, bool, &str)] = &[
        (
            "the settle delay is the confirmation",
            Delay,
            true,
            "@0 D0 wait next=sleep5000 @4999 next=sleep5000 @5000 next=ok:delay",
        ),
        (
            "a routed signal confirms at once",
            Signal,
            true,
            "@0 D0 wait next=sleep5000 @1200 R0 next=ok:signal",
        ),
        (
            "a routed signal cuts a delay short too",
            Delay,
            true,
            "@0 D0 wait @300 R0 next=ok:signal",
        ),
        (
            "a signal sent right after the decision counts, one from before does not",
            Signal,
            true,
            "@0 R0 D0 R1 wait next=sleep5000 @10 R0 next=ok:signal",
        ),
        ("no signal: the plan runs unconfirmed", Signal, true, "@0 D0 wait @5000 next=late:signal"),
        (
            "rtnetlink: the main table moved",
            Rtnetlink,
            true,
            "@0 D0 wait next=check notyet=sleep5000r @800 next=check moved=ok:routes",
        ),
        (
            "rtnetlink: still used at the deadline",
            Rtnetlink,
            true,
            "@0 D0 wait next=check notyet=sleep5000r @5000 next=check notyet=late:routes",
        ),
        (
            "rtnetlink: a routed signal wins without a dump",
            Rtnetlink,
            true,
            "@0 D0 wait next=check notyet=sleep5000r @50 R0 next=ok:signal",
        ),
        (
            "rtnetlink without a watcher is the settle delay",
            Rtnetlink,
            false,
            "@0 D0 wait next=sleep5000 @5000 next=ok:delay",
        ),
        (
            "a failing watcher turns the rest of the wait into the settle delay",
            Rtnetlink,
            true,
            "@0 D0 wait next=check failed=sleep5000 @2000 next=sleep5000 @5000 next=ok:delay",
        ),
        (
            "every gateway needs its signal",
            Signal,
            true,
            "@0 D0 D1 drain wait @10 R0 next=sleep5000 @20 R1 next=ok:signal",
        ),
        (
            "the queue closing ends the wait unconfirmed",
            Signal,
            true,
            "@0 D0 wait next=sleep5000 @100 closed=late:closed",
        ),
        (
            "route socket: the default route moved",
            RouteSocket,
            true,
            "@0 D0 wait next=check notyet=sleep5000r @800 next=check moved=ok:routes",
        ),
        (
            "route socket without a socket is the settle delay",
            RouteSocket,
            false,
            "@0 D0 wait next=sleep5000 @5000 next=ok:delay",
        ),
        (
            "pf ruleset: the first read is the baseline, a new ticket confirms",
            PfRuleset,
            true,
            "@0 D0 wait next=read ticket7=sleep50 @50 next=read ticket7=sleep100 \
             @100 next=read ticket8=ok:ruleset",
        ),
        (
            "pf ruleset: never reloaded, the plan runs unconfirmed at the deadline",
            PfRuleset,
            true,
            "@0 D0 wait next=read ticket7=sleep50 @4990 next=read ticket7=sleep5000 \
             @5000 next=read ticket7=late:ruleset",
        ),
        (
            "pf ruleset: a routed signal wins without a read",
            PfRuleset,
            true,
            "@0 D0 wait next=read ticket7=sleep50 @20 R0 next=ok:signal",
        ),
        (
            "pf ruleset: a reload before the decision (seen in the background) confirms at once",
            PfRuleset,
            true,
            "@0 D0 wait seed6 next=read ticket7=ok:ruleset",
        ),
        (
            "pf ruleset: a background ticket still current means waiting for a reload",
            PfRuleset,
            true,
            "@0 D0 wait seed7 next=read ticket7=sleep50 @50 next=read ticket8=ok:ruleset",
        ),
        (
            "pf ruleset: an unreadable ticket turns the wait into the settle delay",
            PfRuleset,
            true,
            "@0 D0 wait next=read ticketfail=sleep5000 @5000 next=ok:delay",
        ),
        (
            "pf ruleset: a decision joining re-reads the baseline; only a later commit confirms",
            PfRuleset,
            true,
            "@0 D0 wait next=read ticket7=sleep50 @30 D1 next=read ticket8=sleep80 \
             @80 next=read ticket8=sleep130 @130 next=read ticket9=ok:ruleset",
        ),
    ];
    for (name, confirm, watcher, trace) in table {
        run(name, *confirm, *watcher, trace);
    }
}

#[test]
fn batching() {
    let table: &[(&str, RoutingConfirm, &str)] = &[
        (
            "decisions already queued join the first",
            Delay,
            "@0 D0 @1 D1 D2 drain batch=D0,1,2/U taken=3",
        ),
        (
            "a gateway back before anything was killed drops out",
            Delay,
            "@0 D0 wait @100 U0 batch=D/U taken=2 next=ok:none",
        ),
        (
            "a decision during the wait extends it to its own settle timeout",
            Delay,
            "@0 D0 wait next=sleep5000 @3000 D1 next=sleep8000 batch=D0,1/U \
             @8000 next=ok:delay",
        ),
        (
            "never more than twice the settle timeout from the first decision",
            Delay,
            "@0 D0 wait @3000 D1 next=sleep8000 @7000 D2 next=sleep10000 @10000 next=ok:delay",
        ),
        (
            "an ended wait covers its gateways",
            Delay,
            "@0 D0 wait @5000 next=ok:delay end drain covered=yes",
        ),
        (
            "a gateway queued as the wait ended gets a wait of its own, still counted from the \
             batch's first decision",
            Signal,
            "@0 D0 wait @1000 R0 next=ok:signal end @1500 D1 drain covered=no \
             wait next=sleep5000 @2000 R1 next=ok:signal end drain covered=yes taken=2",
        ),
        (
            "one that cancels a gateway needs no further wait",
            Delay,
            "@0 D0 D1 drain wait @5000 next=ok:delay end U1 drain covered=yes batch=D0/U",
        ),
        (
            "a recovery merges as came-up, and its routed mark is its own",
            Signal,
            "@0 D0 wait @100 R0 R1 next=ok:signal end @200 U1 drain covered=no batch=D0/U1 \
             wait next=sleep5000 @300 R1 next=ok:signal",
        ),
        (
            "settled against the health as it is: back before the kill",
            Delay,
            "@0 D0 D1 drain wait @5000 next=ok:delay end drain H0+ settle=changed batch=D1/U",
        ),
        ("settled: nothing changed", Delay, "@0 D0 U1 drain settle=same batch=D0/U1"),
        (
            "settled: a recovered gateway that failed again is no recovery",
            Delay,
            "@0 U2 H2- settle=changed batch=D/U",
        ),
    ];
    for (name, confirm, trace) in table {
        run(name, *confirm, true, trace);
    }
}

// ---------------------------------------------------------------------------------------
// The trailing sweep

/// Three gateways on a pf-style backend. The loader refuses two gateways sharing a NAT
/// address on one interface; the test makes WAN3 share WAN2's afterwards (a `Policy` built
/// any other way may), to see how the sweep credits a selector two gateways share.
const POLICY: &str = r#"
[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "external"
[gateway.states]
rt_addr = "198.51.100.254"
nat_addr = ["198.51.100.1"]
interface = "igb1"

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
rt_addr = "203.0.113.254"
nat_addr = ["203.0.113.1"]
interface = "igb2"

[[gateway]]
name = "WAN3"
interface = "igb3"
address = "203.0.113.253"
health_source = "external"
[gateway.states]
rt_addr = "203.0.113.253"
nat_addr = ["203.0.113.2"]
interface = "igb3"
"#;

fn caps() -> Capabilities {
    Capabilities {
        selector_fields: SelectorField::ALL.to_vec(),
        kernel_mark_flush: false,
        kernel_tuple_flush: vec![],
        kernel_tuple_broken: vec![],
        listing_only: vec![],
        match_opposite: true,
        flush_by_interface: false,
        ruleset_ticket: false,
    }
}

fn rt(a: &str) -> Selector {
    Selector { gateway: Some(a.parse().unwrap()), ..Selector::default() }
}

fn nat(a: &str, i: &str) -> Selector {
    Selector {
        nat_addr: Some(a.parse().unwrap()),
        interface: Some(statecull_proto::IfName(i.into())),
        ..Selector::default()
    }
}

fn request(selectors: Vec<Selector>, owners: Vec<usize>) -> SweepRequest {
    SweepRequest { action: Action::KillMatching { selectors, match_opposite: true }, owners }
}

#[test]
fn the_sweep_touches_only_gateways_still_down() {
    let mut policy = statecull_policy::load::parse(POLICY, "test policy").unwrap();
    policy.gateways[2].states.nat_addr = policy.gateways[1].states.nat_addr.clone();
    policy.gateways[2].states.interface = policy.gateways[1].states.interface.clone();
    let planned =
        vec![request(vec![rt("198.51.100.254"), nat("198.51.100.1", "igb1")], vec![0, 0])];
    let caps = caps();
    // (name, the down steps' gateways, usable when the sweep is due, caps known, expected)
    type Row = (&'static str, Vec<usize>, Vec<bool>, bool, Sweep);
    let table: Vec<Row> = vec![
        (
            "all still down: the plan's sweep as planned",
            vec![0],
            vec![false, true, true],
            true,
            Sweep::Run { requests: planned.clone(), gateways: vec![0] },
        ),
        (
            "a gateway listed by two requests stays listed twice",
            vec![0, 0],
            vec![false, true, true],
            false,
            Sweep::Run { requests: planned.clone(), gateways: vec![0, 0] },
        ),
        (
            "all back: skipped",
            vec![0, 1],
            vec![true, true, true],
            true,
            Sweep::AllBack { back: vec![0, 1] },
        ),
        (
            "some back: rebuilt for those still down",
            vec![0, 1],
            vec![true, false, true],
            true,
            Sweep::Run {
                requests: vec![request(
                    vec![rt("203.0.113.254"), nat("203.0.113.1", "igb2")],
                    vec![1, 1],
                )],
                gateways: vec![1],
            },
        ),
        (
            "some back, capabilities unknown: nothing",
            vec![0, 1],
            vec![true, false, true],
            false,
            Sweep::Nothing,
        ),
        (
            "a selector two gateways still down share is credited to the first",
            vec![0, 1, 2],
            vec![true, false, false],
            true,
            Sweep::Run {
                requests: vec![request(
                    vec![
                        rt("203.0.113.254"),
                        nat("203.0.113.1", "igb2"),
                        rt("203.0.113.253"),
                        nat("203.0.113.1", "igb2"),
                    ],
                    vec![1, 1, 2, 1],
                )],
                gateways: vec![1, 2],
            },
        ),
        (
            "an unknown gateway counts as down",
            vec![0, 7],
            vec![false, true, true],
            true,
            Sweep::Run { requests: planned.clone(), gateways: vec![0, 7] },
        ),
    ];
    for (name, gateways, usable, known, expected) in table {
        let got =
            batch::sweep(&policy, planned.clone(), &gateways, &usable, known.then_some(&caps));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn the_ticket_log_gives_the_reading_from_before_the_lookback() {
    use statecull_engine::batch::{TICKET_LOOKBACK_MS, TicketLog};
    let mut log = TicketLog::default();
    assert_eq!(log.baseline_for(10_000), None, "no readings");
    log.record(1_000, 5);
    log.record(2_000, 5);
    log.record(3_000, 6); // a reload between 2 s and 3 s
    log.record(4_000, 6);
    // Decided at 4.5 s: the reading at or before 2.5 s is 5, so ticket 6 means "reloaded".
    assert_eq!(log.baseline_for(2_000 + TICKET_LOOKBACK_MS + 500), Some(5));
    // Decided at 6 s: the reading at or before 4 s is 6.
    assert_eq!(log.baseline_for(4_000 + TICKET_LOOKBACK_MS), Some(6));
    // Decided too early for any reading that old.
    assert_eq!(log.baseline_for(TICKET_LOOKBACK_MS + 500), None);
    assert_eq!(log.baseline_for(500), None);
    // Readings out of order are ignored; a minute of them is kept, and always the last.
    log.record(3_500, 9);
    assert_eq!(log.at_or_before(3_600), Some(6));
    log.record(200_000, 7);
    assert_eq!(log.at_or_before(100_000), None, "old readings are dropped");
    assert_eq!(log.at_or_before(200_000), Some(7));
}
