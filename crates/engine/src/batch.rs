//! The executor's batching, pure: which decisions form one plan, how long routing is waited
//! for, and which gateways the trailing sweep may still touch. No I/O and no clock: time is
//! a [`Millis`] the executor passes in (milliseconds since the engine started, the clock of
//! the health machines), so every rule here is tested with table-driven traces
//! (`tests/batch.rs`), as the health machine is. The executor (`executor.rs`) does the
//! waiting, the route dumps, the broker calls and the events, and asks this module what to
//! do at each turn.
//!
//! One batch, from its first decision to its plan:
//!
//! 1. [`Batch::new`] with the first decision; every decision already queued is
//!    [`Batch::absorb`]ed (merged: one that cancels an earlier one removes the gateway).
//! 2. A [`RoutingWait`] over the batch ([`Batch::wait`]): [`RoutingWait::next`] says whether
//!    routing has moved ([`Next::Done`]), whether the main table must be looked at
//!    ([`Next::CheckRoutes`], answered with [`RoutingWait::routes`]), or how long to sleep
//!    ([`Next::Sleep`]). A decision arriving meanwhile [`RoutingWait::join`]s the batch and
//!    extends the deadline to its own settle timeout, never past twice the settle timeout
//!    from the batch's first decision.
//! 3. Decisions queued while the wait ended are absorbed; if they brought a gateway the wait
//!    did not cover ([`Batch::covered`]), it is waited for too (step 2 again).
//! 4. Once the broker's capabilities are in hand, what is queued is absorbed again and the
//!    batch is [`Batch::settle`]d against the health as it is then: the plan is made from
//!    that, and an empty batch is no plan.
//!
//! After the plan, [`sweep`] decides what the trailing sweep may still kill: only the
//! gateways still down when it runs.

use std::collections::BTreeSet;
use std::time::Duration;

use statecull_policy::Millis;
use statecull_policy::model::{Policy, Routing, RoutingConfirm};
use statecull_policy::plan::{self, Action, OwnedSelectors, SweepRequest};
use statecull_proto::Capabilities;

/// A change of usability the executor must act on. Decisions that arrive while it waits
/// for routing are merged into one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub went_down: Vec<usize>,
    pub came_up: Vec<usize>,
    /// Usability of every gateway (by policy index) right after this decision.
    pub usable: Vec<bool>,
    /// The `routed` signal counters when the decision was made: a signal sent right after
    /// (`statecull gateway WAN1 down --routed`) counts even if the executor is still busy.
    pub routed_marks: Vec<u64>,
    /// When it was decided.
    pub at: Millis,
}

/// Merge `d` into `batch`: a gateway that went down and came back before anything was
/// killed leaves both lists.
pub fn merge(batch: &mut Decision, d: Decision) {
    for &g in &d.went_down {
        if let Some(p) = batch.came_up.iter().position(|&x| x == g) {
            batch.came_up.remove(p);
        } else if !batch.went_down.contains(&g) {
            batch.went_down.push(g);
        }
    }
    for &g in &d.came_up {
        if let Some(p) = batch.went_down.iter().position(|&x| x == g) {
            batch.went_down.remove(p);
        } else if !batch.came_up.contains(&g) {
            batch.came_up.push(g);
        }
    }
    for &g in d.went_down.iter().chain(d.came_up.iter()) {
        if let (Some(slot), Some(v)) = (batch.routed_marks.get_mut(g), d.routed_marks.get(g)) {
            *slot = *v;
        }
    }
    batch.usable = d.usable;
}

fn millis(d: Duration) -> Millis {
    u64::try_from(d.as_millis()).unwrap_or(Millis::MAX)
}

/// The decisions the executor has taken in hand for one plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Every decision taken so far, merged.
    decision: Decision,
    /// How many decisions were taken (each one a pending plan until this batch is done).
    taken: u32,
}

impl Batch {
    /// A batch starting with its first decision.
    pub fn new(first: Decision) -> Self {
        Batch { decision: first, taken: 1 }
    }

    /// A decision found queued: merged in.
    pub fn absorb(&mut self, d: Decision) {
        self.taken += 1;
        merge(&mut self.decision, d);
    }

    /// The decisions merged so far.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }

    /// When the first decision was made (waits and reports count from it).
    pub fn decided(&self) -> Millis {
        self.decision.at
    }

    /// Decisions taken off the queue for this batch.
    pub fn taken(&self) -> u32 {
        self.taken
    }

    /// The gateways the batch is about (went down, then came up), in that order.
    pub fn gateways(&self) -> Vec<usize> {
        self.decision.went_down.iter().chain(&self.decision.came_up).copied().collect()
    }

    /// The gateways the batch is about, as a set.
    pub fn targets(&self) -> BTreeSet<usize> {
        self.gateways().into_iter().collect()
    }

    /// Nothing left to do: every gateway is back as it was before anything was killed.
    pub fn is_empty(&self) -> bool {
        self.decision.went_down.is_empty() && self.decision.came_up.is_empty()
    }

    /// True when every gateway of the batch was among `known`, those a routing wait covered;
    /// otherwise one joined after it and must be waited for too.
    pub fn covered(&self, known: &BTreeSet<usize>) -> bool {
        self.gateways().iter().all(|g| known.contains(g))
    }

    /// Bring the batch up to date with the gateways' health `now`: a gateway that is usable
    /// again is no longer "down", one that failed again is no longer "up". True when that
    /// changed the batch.
    pub fn settle(&mut self, now: Vec<bool>) -> bool {
        let b = &mut self.decision;
        let before = (b.went_down.len(), b.came_up.len());
        b.went_down.retain(|&g| !now.get(g).copied().unwrap_or(true));
        b.came_up.retain(|&g| now.get(g).copied().unwrap_or(false));
        b.usable = now;
        before != (b.went_down.len(), b.came_up.len())
    }

    /// A routing wait for this batch: until `settle_timeout` after its first decision.
    /// Without a route watcher, `rtnetlink` confirmation falls back to the settle delay.
    pub fn wait(&self, routing: &Routing, watcher: bool) -> RoutingWait {
        let settle = millis(routing.settle_timeout);
        let at = self.decided();
        let confirm = match routing.confirm {
            RoutingConfirm::Rtnetlink | RoutingConfirm::RouteSocket if !watcher => {
                RoutingConfirm::Delay
            }
            c => c,
        };
        RoutingWait {
            confirm,
            settle,
            deadline: at.saturating_add(settle),
            latest: at.saturating_add(settle.saturating_mul(2)),
            baseline: None,
        }
    }
}

/// How a routing wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routed {
    /// Routing was seen to move (or, with `confirm = "delay"`, the delay is the
    /// confirmation); false: the plan runs anyway, and the sweep reports stragglers.
    pub confirmed: bool,
    /// How, for the `routed` events ("routed signal", "settle delay elapsed", ...).
    pub how: &'static str,
}

/// What the executor does next while it waits for routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// The wait is over.
    Done(Routed),
    /// Dump the main table and report with [`RoutingWait::routes`].
    CheckRoutes,
    /// Read pf's main filter ruleset ticket from the broker and report with
    /// [`RoutingWait::ticket`].
    ReadTicket,
    /// Sleep until `until` unless something happens first: a decision (then
    /// [`RoutingWait::join`]), a routed signal, or, when `routes`, a route change; then ask
    /// [`RoutingWait::next`] again.
    Sleep { until: Millis, routes: bool },
}

/// What a look at the main table found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteCheck {
    /// No default route of the main table uses a down gateway, and every recovered one is
    /// used again.
    Moved,
    /// Not yet.
    NotYet,
    /// The route watcher failed: the rest of this wait is a settle delay.
    Failed,
}

/// How often the ruleset ticket is read while a `pf-ruleset` wait lasts: one broker round
/// trip and one kernel lookup each, so a reload is seen within this much.
pub const TICKET_POLL_MS: Millis = 50;

/// How far before a decision a background ticket reading may be to serve as the wait's
/// first ticket: a firewall that reloaded up to this long before the engine decided (its
/// dpinger alarm came first) is seen to have moved.
pub const TICKET_LOOKBACK_MS: Millis = 2_000;
/// How often the background task reads the ruleset ticket (`confirm = "pf-ruleset"`).
pub const TICKET_BACKGROUND_MS: Millis = 1_000;

/// Background readings of pf's ruleset ticket (`confirm = "pf-ruleset"`), so that a wait
/// can start from the ticket as it was shortly *before* its decision: the firewall may have
/// reloaded before the engine decided. Keeps a minute of readings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TicketLog {
    readings: std::collections::VecDeque<(Millis, u32)>,
}

impl TicketLog {
    const KEEP_MS: Millis = 60_000;

    /// A reading of `ticket` taken at `at` (readings arrive in time order).
    pub fn record(&mut self, at: Millis, ticket: u32) {
        if self.readings.back().is_some_and(|(t, _)| *t > at) {
            return;
        }
        self.readings.push_back((at, ticket));
        while self.readings.len() > 1
            && self.readings.front().is_some_and(|(t, _)| t.saturating_add(Self::KEEP_MS) < at)
        {
            self.readings.pop_front();
        }
    }

    /// The ticket as last read at or before `at`, if a reading is that old.
    pub fn at_or_before(&self, at: Millis) -> Option<u32> {
        self.readings.iter().rev().find(|(t, _)| *t <= at).map(|(_, ticket)| *ticket)
    }

    /// The first ticket for a wait whose decision was made at `decided`: the reading
    /// [`TICKET_LOOKBACK_MS`] before it, when there is one.
    pub fn baseline_for(&self, decided: Millis) -> Option<u32> {
        decided.checked_sub(TICKET_LOOKBACK_MS).and_then(|t| self.at_or_before(t))
    }
}

/// Waiting for routing to move for every gateway of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoutingWait {
    confirm: RoutingConfirm,
    settle: Millis,
    deadline: Millis,
    /// However many decisions join, nothing waits past twice the settle timeout from the
    /// batch's first decision.
    latest: Millis,
    /// `pf-ruleset`: the ticket read when the wait started, or when the last decision joined
    /// (a commit after that read is after every gateway's decision). `None`: not read yet.
    baseline: Option<u32>,
}

impl RoutingWait {
    /// How routing is being confirmed (rtnetlink falls back to the delay without a watcher,
    /// or once it failed).
    pub fn confirm(&self) -> RoutingConfirm {
        self.confirm
    }

    /// When the wait gives up, as things stand.
    pub fn deadline(&self) -> Millis {
        self.deadline
    }

    /// Where the wait stands at `now`, given every gateway's `routed` signal count.
    pub fn next(&mut self, batch: &Batch, now: Millis, routed: &[u64]) -> Next {
        let targets = batch.targets();
        if targets.is_empty() {
            return Next::Done(Routed { confirmed: true, how: "" });
        }
        let marks = &batch.decision.routed_marks;
        let signalled = targets
            .iter()
            .all(|&g| routed.get(g).is_some_and(|n| *n > marks.get(g).copied().unwrap_or(0)));
        if signalled {
            return Next::Done(Routed { confirmed: true, how: "routed signal" });
        }
        match self.confirm {
            RoutingConfirm::Rtnetlink | RoutingConfirm::RouteSocket => Next::CheckRoutes,
            RoutingConfirm::PfRuleset => Next::ReadTicket,
            RoutingConfirm::Signal | RoutingConfirm::Delay => self.timed(now),
        }
    }

    /// `pf-ruleset`: start from a ticket read before the decision ([`TicketLog::baseline_for`])
    /// instead of the first read, so a reload that came before the decision counts.
    pub fn seed_ticket(&mut self, before: Option<u32>) {
        if self.baseline.is_none() {
            self.baseline = before;
        }
    }

    /// What the broker said the ruleset ticket is (after [`Next::ReadTicket`]), at `now`;
    /// `None`: it could not be read (then the rest of this wait is a settle delay). The first
    /// read is the baseline; a later one that differs means the ruleset was committed since.
    pub fn ticket(&mut self, read: Option<u32>, now: Millis) -> Next {
        let Some(t) = read else {
            self.confirm = RoutingConfirm::Delay;
            return self.timed(now);
        };
        match self.baseline {
            Some(b) if b != t => Next::Done(Routed { confirmed: true, how: "pf ruleset reloaded" }),
            Some(_) => self.poll(now),
            None => {
                self.baseline = Some(t);
                self.poll(now)
            }
        }
    }

    /// Until the deadline, sleep one poll interval; then end unconfirmed.
    fn poll(&self, now: Millis) -> Next {
        if now >= self.deadline {
            return self.timed(now);
        }
        Next::Sleep { until: now.saturating_add(TICKET_POLL_MS).min(self.deadline), routes: false }
    }

    /// What the main table showed (after [`Next::CheckRoutes`]), at `now`.
    pub fn routes(&mut self, check: RouteCheck, now: Millis) -> Next {
        match check {
            RouteCheck::Moved if self.confirm == RoutingConfirm::RouteSocket => {
                Next::Done(Routed { confirmed: true, how: "route socket: default route moved" })
            }
            RouteCheck::Moved => {
                Next::Done(Routed { confirmed: true, how: "rtnetlink: main table moved" })
            }
            RouteCheck::NotYet => self.timed(now),
            RouteCheck::Failed => {
                self.confirm = RoutingConfirm::Delay;
                self.timed(now)
            }
        }
    }

    /// Past the deadline the wait ends (confirmed only by a delay); before it, sleep.
    fn timed(&self, now: Millis) -> Next {
        if now >= self.deadline {
            let how = match self.confirm {
                RoutingConfirm::Delay => "settle delay elapsed",
                RoutingConfirm::Signal => "no routed signal",
                RoutingConfirm::Rtnetlink => "main table still uses it",
                RoutingConfirm::RouteSocket => "default route still uses it",
                RoutingConfirm::PfRuleset => "pf ruleset not reloaded",
            };
            return Next::Done(Routed { confirmed: self.confirm == RoutingConfirm::Delay, how });
        }
        let routes =
            matches!(self.confirm, RoutingConfirm::Rtnetlink | RoutingConfirm::RouteSocket);
        Next::Sleep { until: self.deadline, routes }
    }

    /// A decision arrived during the wait: it joins the batch, and its gateways get their
    /// own settle timeout (within the cap).
    /// With `pf-ruleset`, the ticket is read again (the next [`RoutingWait::next`] asks for
    /// it): the newcomer's routing moves with a commit after its own decision.
    pub fn join(&mut self, batch: &mut Batch, d: Decision) {
        self.deadline = self.deadline.max(d.at.saturating_add(self.settle)).min(self.latest);
        self.baseline = None;
        batch.absorb(d);
    }

    /// The decision queue closed (shutdown): the wait ends unconfirmed.
    pub fn closed(&self) -> Routed {
        Routed { confirmed: false, how: "" }
    }
}

/// What the trailing sweep does, decided when it is due.
#[derive(Clone, Debug, PartialEq)]
pub enum Sweep {
    /// Run these requests, crediting kills to `gateways`.
    Run { requests: Vec<SweepRequest>, gateways: Vec<usize> },
    /// Every gateway came back during the delay: their new states are healthy ones.
    AllBack { back: Vec<usize> },
    /// Some came back and the others' selectors cannot be rebuilt (the broker's
    /// capabilities are unknown): nothing is swept.
    Nothing,
}

/// The trailing sweep for the down steps' `gateways` (as the plan lists them), given the
/// plan's sweep `requests`, usability when the sweep is due and the broker's capabilities.
/// A gateway that came back during the delay has new, healthy states, which the sweep must
/// not touch: when some did, the sweep is rebuilt from the selectors of those still down.
pub fn sweep(
    policy: &Policy,
    requests: Vec<SweepRequest>,
    gateways: &[usize],
    usable: &[bool],
    caps: Option<&Capabilities>,
) -> Sweep {
    let (back, still_down): (Vec<usize>, Vec<usize>) =
        gateways.iter().partition(|&&g| usable.get(g).copied().unwrap_or(false));
    if back.is_empty() {
        return Sweep::Run { requests, gateways: still_down };
    }
    if still_down.is_empty() {
        return Sweep::AllBack { back };
    }
    let Some(caps) = caps else { return Sweep::Nothing };
    let owned = first_owners(plan::owned_selectors(policy, &still_down, caps));
    let requests = owned
        .selectors
        .chunks(plan::MAX_SELECTORS_PER_REQUEST)
        .zip(owned.owners.chunks(plan::MAX_SELECTORS_PER_REQUEST))
        .map(|(s, o)| SweepRequest {
            action: Action::KillMatching {
                selectors: s.to_vec(),
                match_opposite: caps.match_opposite,
            },
            owners: o.to_vec(),
        })
        .collect();
    Sweep::Run { requests, gateways: still_down }
}

/// Selectors of several gateways with, for a selector two of them share, the first one as
/// owner of every copy: kills are credited as the plan's steps credit them.
fn first_owners(mut owned: OwnedSelectors) -> OwnedSelectors {
    let firsts: Vec<usize> = owned
        .selectors
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let first = owned.selectors.iter().position(|x| x == s).unwrap_or(i);
            owned.owners.get(first).copied().unwrap_or_default()
        })
        .collect();
    owned.owners = firsts;
    owned
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(down: &[usize], up: &[usize]) -> Decision {
        Decision {
            went_down: down.to_vec(),
            came_up: up.to_vec(),
            usable: vec![],
            routed_marks: vec![0; 4],
            at: 0,
        }
    }

    #[test]
    fn merging_coalesces_and_cancels() {
        let mut b = d(&[0], &[]);
        merge(&mut b, d(&[1], &[]));
        assert_eq!(b.went_down, vec![0, 1]);
        merge(&mut b, d(&[], &[0]));
        assert_eq!(b.went_down, vec![1]);
        assert!(b.came_up.is_empty());
        merge(&mut b, d(&[], &[2]));
        merge(&mut b, d(&[2], &[]));
        assert!(b.came_up.is_empty());
        assert_eq!(b.went_down, vec![1]);
    }
}
