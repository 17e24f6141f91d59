//! The per-gateway health state machine: sliding window, hysteresis, hold-down, flap
//! damping and external overrides.
//!
//! Pure and deterministic: time is a [`Millis`] value the caller passes to every call; the
//! machine never reads a clock, never allocates more than its window and never panics,
//! whatever the input (NaN or infinite summaries, huge round-trip times, `now` going
//! backwards, degenerate parameters).
//!
//! # Three layers
//!
//! A [`GatewayHealth`] keeps three things apart:
//!
//! * the **judged** state ([`GatewayHealth::judged`]): what the probes say, after
//!   thresholds, hysteresis and hold-down;
//! * the **damping** figure and the `suppressed` flag;
//! * the **external verdict**: the forced-down flag set by an external `down`, or an
//!   external `up` waiting for its hold-down ([`GatewayHealth::force`]).
//!
//! The **effective** state ([`GatewayHealth::state`]) is `Down` while the gateway is forced
//! down, suppressed or an external `up` is held, and the judged state otherwise. Every call that changes the
//! effective state returns exactly one [`Transition`] from the old effective state to the
//! new one; a call that changes only the judged state (while forced down or suppressed)
//! returns `None`. So `state()` is always the `to` of the last transition returned (or
//! `Up`, the initial state, if none was), and every transition's `from` is the previous
//! `state()`.
//!
//! # Time
//!
//! Every call first advances the machine's clock to `now`. A `now` earlier than the latest
//! one seen is treated as "no time has passed": the clock stays where it was, and
//! transitions carry the clock's value in `at`.
//!
//! # The window and its judgement
//!
//! * [`GatewayHealth::record`] appends one probe result to a sliding window of the last
//!   `params.window` results (at least 1); the oldest falls out. Results carry no time: the
//!   window is counted in probes, not seconds.
//! * With fewer than `min_samples` results in the window there is no judgement at all and
//!   the judged state stays as it is (`min_samples` is clamped to `1..=window`, so it can
//!   always be reached).
//! * Loss % = lost results × 100 / results in the window. Latency = mean RTT of the replies
//!   in the window (none when every result was lost; "no latency" never counts as high).
//! * [`GatewayHealth::record_summary`] (dpinger and the like: loss % and average latency
//!   over the monitor's own window) *replaces* the window: it clears the window and its
//!   values are the judgement until the next input. A later `record` drops the summary and
//!   starts a fresh window (the latest kind of input wins). A summary is always a judgement
//!   (`min_samples` does not apply). Loss is clamped to 0..=100 (+∞ is 100, −∞ is 0); a
//!   summary with a NaN loss is ignored: the call acts as `tick` and the previous judgement
//!   stands.
//!   Summaries are debounced exactly as probe results are: thresholds, hysteresis,
//!   hold-down (whose healthy stretch counts summaries, `min_samples` of them) and flap
//!   damping all apply; dpinger's own alarm flag is not used.
//!
//! # Thresholds and hysteresis (judged state)
//!
//! Every new result or summary is judged against the current judged state:
//!
//! | from | to | when | cause |
//! |---|---|---|---|
//! | Up or Degraded | Down | loss ≥ `loss_down_pct` | [`Cause::Loss`] |
//! | Up | Degraded | loss ≥ `loss_degraded_pct` | [`Cause::Loss`] |
//! | Up | Degraded | latency ≥ `latency_degraded` | [`Cause::Latency`] |
//! | Degraded | Up | every degradation cleared (below) | [`Cause::Recovered`] |
//! | Down | Up or Degraded | hold-down passed (below) | [`Cause::HoldDownPassed`] |
//!
//! A Degraded gateway is degraded **by loss**, **by latency** or both
//! ([`GatewayHealth::judgement`], what a group's trigger level looks at), each with its own
//! hysteresis: degraded by loss from loss ≥ `loss_degraded_pct` until loss ≤ `loss_up_pct`,
//! by latency from latency ≥ `latency_degraded` until latency ≤ `latency_up` (or no
//! replies). Either can start or end while the gateway stays Degraded (no transition); it is
//! Up again once both have ended. Anything else keeps the state: values between the "up" and
//! the "degraded" thresholds leave an up gateway up and a degradation as it is.
//! (Defensively, a degradation also needs its value below the degraded threshold to end,
//! so parameters whose "up" threshold is not below the "degraded" one cannot make the state
//! oscillate on every probe; validated policies always satisfy this.)
//!
//! # Hold-down (Down → Up)
//!
//! A judged-down gateway comes back only after a continuous *healthy stretch*:
//!
//! * a judgement is healthy when loss ≤ `loss_up_pct` (and below `loss_down_pct`); latency
//!   does not matter for leaving Down;
//! * the stretch starts at the first healthy judgement and counts the results (or
//!   summaries) judged in it; any judgement that is not healthy, or no judgement at all,
//!   ends it (the timer restarts from zero at the next healthy judgement);
//! * the gateway comes back at the first `record`, `record_summary` or `tick` at which the
//!   stretch has lasted at least `hold_down` **and** holds at least `min_samples` results
//!   (at least 1; not clamped to the window, as they accumulate over time), so a healthy
//!   verdict is always backed by fresh results and never by the clock alone: with
//!   `hold_down` = 0 it still takes `min_samples` healthy judgements in a row;
//! * it comes back Up, or Degraded if the judgement would take an up gateway to Degraded
//!   (loss ≥ `loss_degraded_pct` or latency ≥ `latency_degraded`).
//!
//! The window is **not** cleared when a gateway goes down. After an outage the window is
//! full of losses, so the loss figure only falls as replies push the losses out: with a
//! window of 20 full of losses and `loss_up_pct` = 5, it takes 19 replies in a row before
//! the stretch even starts, and `hold_down` runs from there. A single good reply can never
//! bring a gateway back, whatever the ticks say, unless both `window` and `min_samples`
//! are 1 (a window of one result decides on one result; it then still takes `hold_down`).
//!
//! # Flap damping (RFC 2439 style)
//!
//! With `damping.enabled`:
//!
//! * every judged Up/Degraded → Down transition (a *flap*) adds `damping.penalty` to the
//!   figure, capped at `max_penalty`, and so does an external `down` that follows an `up`
//!   (below). Flaps count while the gateway is forced down or already suppressed (a link
//!   that keeps flapping stays suppressed);
//! * the figure decays exponentially: `figure(now) = figure(t) × 2^(−(now − t) / half_life)`
//!   in f64, computed from the time of the last flap (a zero half-life decays to 0 as soon
//!   as any time passes);
//! * when a flap leaves the figure **above** `suppress_above`, the gateway is suppressed. The
//!   transition that flap causes has cause [`Cause::Suppressed`] instead of `Loss` (its
//!   reason names both), and `evidence.suppressed` is true;
//! * suppression ends at the first call at which the figure is **below** `reuse_below`
//!   ([`GatewayHealth::reuse_at`] says when). If the judged state is then usable (the probes
//!   say healthy and the hold-down has passed in the meantime), the gateway comes back
//!   with cause [`Cause::Reused`]; if the probes still say down, it stays down and comes
//!   back later through the hold-down as usual.
//!
//! Disabled damping keeps the figure at 0 and never suppresses.
//!
//! # External verdicts ([`GatewayHealth::force`])
//!
//! `statecull gateway NAME down|up` (an operator, mwan3 hotplug, keepalived notify, a
//! script) is debounced like the probes, with the same per-gateway `hold_down` and
//! `[gateway.damping]`, so a flapping hook cannot cause a kill per flap. Cause
//! [`Cause::External`] unless said otherwise:
//!
//! * **down** takes effect at once, always (a dead link is never kept in use to debounce
//!   it), and sets the forced-down flag: the gateway is Down until an external `up`.
//!   Probes keep being recorded and judged (the judged state, the evidence and the damping
//!   figure stay current for status), but nothing they say makes it usable. A `down` that
//!   follows an `up` verdict (or none) is a *flap* of the verdicts and adds
//!   `damping.penalty`, even while the gateway is held or suppressed (a hook that keeps
//!   flapping stays suppressed); not when the probes already judged the gateway down (they
//!   counted this outage), and the probes' own flap for the same outage, coming while it is
//!   still forced down, is not counted again. Repeated `down`s are one verdict. The
//!   transition's reason gives the penalty and says when damping starts suppressing.
//! * **up** clears the forced-down flag, the window and any summary (old losses are
//!   forgotten), ends any hold-down stretch and sets the judged state to Up. If the gateway
//!   was Down, it becomes usable only once the `up` has stood for `hold_down` with no `down`
//!   since (a repeated `up` does not restart it; a `down` cancels it) — [`Cause::HoldDownPassed`]
//!   at the first call at or after that time (`tick`; [`GatewayHealth::next_tick`] includes
//!   it) — **and** is not suppressed: an `up` never lifts suppression, which ends when the
//!   figure decays below `reuse_below` ([`Cause::Reused`]). With `hold_down` = 0 and no
//!   suppression it is usable at once. While an `up` is held,
//!   [`GatewayHealth::verdict_hold`] says which rule holds it. From then on the probes (if
//!   any) rule again, starting from an empty window (`min_samples` results before any
//!   judgement).
//!
//! So a single clean `down`/`up` acts at once and returns after `hold_down`; a hook that
//! flaps faster than `hold_down` causes one Up → Down transition (one kill) for the whole
//! flapping; one that flaps slower causes at most one per `hold_down` until damping
//! suppresses it (with the defaults the third flap when 30 s apart, the fourth at 50 s;
//! flaps a half-life or more apart are never suppressed), and none while it keeps flapping.
//! Forcing the state the gateway is already in returns `None` (an `up` still clears the
//! window).
//!
//! # Reasons
//!
//! Every [`Transition`] carries the [`Evidence`] at that moment and one human sentence,
//! for example `loss 35% over the last 20 probes (down at or above 20%)`.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::model::{HealthParams, Millis};

/// The effective health of a gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Health {
    Up,
    /// Usable, but losing or slow.
    Degraded,
    Down,
}

impl Health {
    /// `"up"`, `"degraded"` or `"down"` (the same as the serialised form).
    pub fn name(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One probe result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Probe {
    /// Answered after `rtt`.
    Reply { rtt: Duration },
    /// Not answered within the probe timeout.
    Lost,
}

/// What the machine judges a gateway to be, for a group's trigger level
/// ([`crate::model::Trigger`]): down (the effective state), or usable but degraded by loss
/// and/or by latency. `high_loss` and `high_latency` are false while down; the effective
/// state is Degraded exactly when one of them is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Judgement {
    pub down: bool,
    pub high_loss: bool,
    pub high_latency: bool,
}

impl Judgement {
    /// A usable, healthy gateway.
    pub const UP: Judgement = Judgement { down: false, high_loss: false, high_latency: false };
    /// A down gateway.
    pub const DOWN: Judgement = Judgement { down: true, high_loss: false, high_latency: false };
}

/// `up`, `down`, `degraded by loss`, `degraded by latency`, `degraded by loss and latency`.
impl fmt::Display for Judgement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.down, self.high_loss, self.high_latency) {
            (true, _, _) => "down",
            (false, false, false) => "up",
            (false, true, false) => "degraded by loss",
            (false, false, true) => "degraded by latency",
            (false, true, true) => "degraded by loss and latency",
        })
    }
}

/// What the machine knew when it decided.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Evidence {
    /// Loss in percent (0..=100): of the window, or as the external summary reported it.
    /// 0 when there are no results at all.
    pub loss_pct: f64,
    /// Mean RTT of the replies in the window (or the summary's average latency); `None`
    /// when there is no reply. Serialised as `latency_avg_ms`, a float number of
    /// milliseconds (`12.5`), or `null`.
    #[serde(rename = "latency_avg_ms", serialize_with = "serialize_ms")]
    pub latency_avg: Option<Duration>,
    /// Results in the window; 0 when the judgement comes from an external summary.
    pub samples: usize,
    /// The flap-damping figure at that moment (0 when damping is disabled).
    pub penalty: f64,
    /// Whether the gateway is suppressed by flap damping.
    pub suppressed: bool,
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// Loss reached the down or degraded threshold.
    Loss,
    /// Average latency reached the degraded threshold.
    Latency,
    /// A degraded gateway's loss and latency are back at or below the "up" thresholds.
    Recovered,
    /// A down gateway looked healthy for the whole hold-down.
    HoldDownPassed,
    /// A flap pushed the damping figure above `suppress_above`.
    Suppressed,
    /// The damping figure decayed below `reuse_below` and the probes say usable.
    Reused,
    /// `statecull gateway NAME down|up`.
    External,
}

impl Cause {
    /// The serialised form (`"hold-down-passed"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Cause::Loss => "loss",
            Cause::Latency => "latency",
            Cause::Recovered => "recovered",
            Cause::HoldDownPassed => "hold-down-passed",
            Cause::Suppressed => "suppressed",
            Cause::Reused => "reused",
            Cause::External => "external",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A change of a gateway's effective state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    pub from: Health,
    pub to: Health,
    /// The machine's clock when it happened (never earlier than a previous transition's).
    pub at: Millis,
    pub cause: Cause,
    pub evidence: Evidence,
    /// One human sentence: `loss 35% over the last 20 probes (down at or above 20%)`.
    pub reason: String,
}

/// The health state machine of one gateway. See the module documentation for the rules.
#[derive(Clone, Debug)]
pub struct GatewayHealth {
    params: HealthParams,
    /// The latest `now` seen.
    clock: Millis,
    /// Probe results, oldest first: `Some(rtt)` for a reply, `None` for a loss.
    window: VecDeque<Option<Duration>>,
    /// The latest external summary; when set, it is the judgement and the window is empty.
    summary: Option<Summary>,
    /// What the probes say.
    judged: Health,
    /// While judged Degraded: degraded by loss, by latency (at least one is set; both are
    /// clear in any other judged state).
    high_loss: bool,
    high_latency: bool,
    /// While judged down: the current healthy stretch.
    recovery: Option<Recovery>,
    forced_down: bool,
    /// An external `up` waiting for its hold-down: when it was received. The gateway is
    /// Down until it has stood for `hold_down` (and is not suppressed).
    verdict_up_since: Option<Millis>,
    /// An external `down` counted a flap: the probes' own flap for the same outage, if it
    /// comes while still forced down, is not counted again.
    absorb_flap: bool,
    /// Damping figure as of `figure_at`.
    figure: f64,
    figure_at: Millis,
    suppressed: bool,
    /// The effective state as of the latest call.
    state: Health,
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    loss_pct: f64,
    latency: Option<Duration>,
}

#[derive(Clone, Copy, Debug)]
struct Recovery {
    since: Millis,
    results: usize,
}

/// A judgement: the window's or a summary's figures.
#[derive(Clone, Copy, Debug)]
struct Reading {
    loss_pct: f64,
    latency: Option<Duration>,
    /// Results in the window (0 for a summary).
    samples: usize,
    /// Replies in the window (0 for a summary).
    replies: usize,
    /// From an external summary.
    external: bool,
}

/// A change of the judged state.
#[derive(Debug)]
struct Change {
    cause: Cause,
    reason: String,
}

/// The effective state and suppression before a call, and what the call's start released.
#[derive(Clone, Copy, Debug)]
struct Before {
    state: Health,
    suppressed: bool,
    /// A held external `up` passed its hold-down at the start of this call: (received at,
    /// released at).
    released: Option<(Millis, Millis)>,
}

impl GatewayHealth {
    /// A gateway assumed healthy (Up) until evidence says otherwise, with an empty window.
    pub fn new(params: HealthParams, now: Millis) -> Self {
        GatewayHealth {
            params,
            clock: now,
            window: VecDeque::new(),
            summary: None,
            judged: Health::Up,
            high_loss: false,
            high_latency: false,
            recovery: None,
            forced_down: false,
            verdict_up_since: None,
            absorb_flap: false,
            figure: 0.0,
            figure_at: now,
            suppressed: false,
            state: Health::Up,
        }
    }

    /// New thresholds and timers for a gateway kept across a policy reload: its state,
    /// window (trimmed to the new size, newest kept), damping figure and held verdicts stay;
    /// the new parameters judge from the next input or tick on.
    pub fn set_params(&mut self, params: HealthParams) {
        self.params = params;
        while self.window.len() > self.capacity() {
            self.window.pop_front();
        }
    }

    /// One probe result into the sliding window, then judge.
    pub fn record(&mut self, now: Millis, probe: Probe) -> Option<Transition> {
        let before = self.begin(now);
        self.summary = None;
        self.window.push_back(match probe {
            Probe::Reply { rtt } => Some(rtt),
            Probe::Lost => None,
        });
        while self.window.len() > self.capacity() {
            self.window.pop_front();
        }
        let change = self.judge();
        self.settle(before, None, change)
    }

    /// A summary from an external monitor (dpinger reports loss % and average latency over
    /// its own window): replaces the window's judgement (the window is cleared). A NaN loss
    /// is ignored (only the timers run); other values are clamped to 0..=100.
    pub fn record_summary(
        &mut self,
        now: Millis,
        loss_pct: f64,
        latency_avg: Option<Duration>,
    ) -> Option<Transition> {
        let before = self.begin(now);
        let change = if loss_pct.is_nan() {
            self.try_hold_down()
        } else {
            self.window.clear();
            self.summary =
                Some(Summary { loss_pct: loss_pct.clamp(0.0, 100.0), latency: latency_avg });
            self.judge()
        };
        self.settle(before, None, change)
    }

    /// Timers only: hold-down expiry, damping decay and reuse.
    pub fn tick(&mut self, now: Millis) -> Option<Transition> {
        let before = self.begin(now);
        let change = self.try_hold_down();
        self.settle(before, None, change)
    }

    /// An external verdict (`statecull gateway NAME down|up`: an operator, mwan3 hotplug,
    /// keepalived notify, a script). `down` takes effect at once, always, and sticks until an
    /// `up`; `up` is debounced by the hold-down and flap damping (see the module
    /// documentation, "External verdicts"). Returns the transition, if the effective state
    /// changed; a held `up` returns `None` and [`verdict_hold`](Self::verdict_hold) says why.
    pub fn force(&mut self, now: Millis, up: bool) -> Option<Transition> {
        let before = self.begin(now);
        if up {
            let was_down = self.forced_down || before.state == Health::Down;
            self.forced_down = false;
            self.absorb_flap = false;
            self.window.clear();
            self.summary = None;
            self.judged = Health::Up;
            self.high_loss = false;
            self.high_latency = false;
            self.recovery = None;
            if was_down && self.verdict_up_since.is_none() && self.hold_down_ms() > 0 {
                self.verdict_up_since = Some(self.clock);
            }
        } else {
            // Every down that follows an up verdict is a flap of the verdicts, even while
            // the gateway is held or suppressed (a hook that keeps flapping stays
            // suppressed); not when the probes already judged this outage (they counted it).
            let flap = !self.forced_down && self.judged != Health::Down;
            self.forced_down = true;
            self.verdict_up_since = None;
            if flap && self.add_flap() {
                self.absorb_flap = true;
            }
            // The timers still run for the judged state (it is Down in the effective state
            // whatever they say).
            let _ = self.try_hold_down();
        }
        self.settle(before, Some(up), None)
    }

    /// Why the gateway is down although the latest external verdict is `up`: the verdict's
    /// hold-down has not passed, or flap damping suppresses it. `None` when no `up` is held.
    pub fn verdict_hold(&self) -> Option<String> {
        if self.forced_down || self.state != Health::Down {
            return None;
        }
        let mut why = Vec::new();
        if let Some(since) = self.verdict_up_since {
            why.push(format!(
                "the external up has stood for {} of its hold-down {} (usable at {} ms if no \
                 down verdict comes)",
                dur(Duration::from_millis(self.clock.saturating_sub(since))),
                dur(self.params.hold_down),
                since.saturating_add(self.hold_down_ms())
            ));
        }
        if self.suppressed {
            let d = &self.params.damping;
            let until = self
                .reuse_at()
                .map_or_else(|| "never by decay".to_string(), |t| format!("at {t} ms"));
            why.push(format!(
                "flap damping suppresses it (penalty {} above reuse {}; reused {until})",
                num(self.penalty(self.clock)),
                num(d.reuse_below)
            ));
        }
        if why.is_empty() {
            if self.judged == Health::Down {
                why.push("the probes still say down".to_string());
            } else {
                return None;
            }
        }
        Some(format!("up verdict held: {}", why.join("; ")))
    }

    /// When a held external `up` passes its hold-down, if it is held.
    pub fn verdict_up_at(&self) -> Option<Millis> {
        self.verdict_up_since.map(|since| since.saturating_add(self.hold_down_ms()))
    }

    /// The effective state: Down while forced down, suppressed or an external `up` waits
    /// for its hold-down, else what the probes say.
    pub fn state(&self) -> Health {
        self.state
    }

    /// `state() != Down`.
    pub fn usable(&self) -> bool {
        self.state != Health::Down
    }

    /// Down, or degraded by what (as of the latest call), for trigger levels.
    pub fn judgement(&self) -> Judgement {
        let down = self.state == Health::Down;
        Judgement {
            down,
            high_loss: !down && self.high_loss,
            high_latency: !down && self.high_latency,
        }
    }

    /// What the probes alone say (thresholds, hysteresis and hold-down applied; forcing
    /// and suppression not).
    pub fn judged(&self) -> Health {
        self.judged
    }

    /// Whether an external `down` holds the gateway down.
    pub fn forced_down(&self) -> bool {
        self.forced_down
    }

    /// Whether an external `up` is waiting for its hold-down (the gateway is Down meanwhile).
    pub fn verdict_held(&self) -> bool {
        self.verdict_up_since.is_some()
    }

    /// The current figures. `suppressed` is as of the latest call; `penalty` is computed
    /// for `now`.
    pub fn evidence(&self, now: Millis) -> Evidence {
        let (loss_pct, latency_avg, samples) = match self.summary {
            Some(s) => (s.loss_pct, s.latency, 0),
            None => {
                let r = self.window_reading();
                (r.loss_pct, r.latency, r.samples)
            }
        };
        Evidence {
            loss_pct,
            latency_avg,
            samples,
            penalty: self.penalty(now),
            suppressed: self.suppressed,
        }
    }

    /// The flap-damping figure at `now` (a `now` before the latest call counts as the
    /// latest call's time). Always 0 with damping disabled.
    pub fn penalty(&self, now: Millis) -> f64 {
        if !self.params.damping.enabled {
            return 0.0;
        }
        self.decayed(now.max(self.clock))
    }

    /// Whether flap damping holds the gateway down (as of the latest call).
    pub fn suppressed(&self) -> bool {
        self.suppressed
    }

    pub fn params(&self) -> &HealthParams {
        &self.params
    }

    /// When suppression ends: the first millisecond at which the figure is below
    /// `reuse_below` (a call at or after it lifts suppression). `None` when not suppressed
    /// or when the figure can never get there.
    pub fn reuse_at(&self) -> Option<Millis> {
        if !self.suppressed {
            return None;
        }
        let reuse = self.params.damping.reuse_below;
        let below = |t: Millis| self.decayed(t) < reuse;
        let start = self.clock;
        if below(start) {
            return Some(start);
        }
        // Exponential search for a time that is below, then bisect; the decay is monotonic.
        let mut lo = start;
        let mut step: u64 = 1;
        let mut hi = loop {
            let t = start.checked_add(step)?;
            if below(t) {
                break t;
            }
            lo = t;
            step = step.checked_mul(2)?;
        };
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if below(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        Some(hi)
    }

    /// When the hold-down passes if the probes stay healthy: `None` unless the gateway is
    /// judged down, in a healthy stretch that already holds `min_samples` results.
    pub fn hold_down_at(&self) -> Option<Millis> {
        if self.judged != Health::Down {
            return None;
        }
        let rec = self.recovery?;
        if rec.results < self.stretch_quorum() {
            return None;
        }
        Some(rec.since.saturating_add(self.hold_down_ms()))
    }

    /// The earliest time at which [`tick`](Self::tick) may change something (hold-down
    /// expiry or reuse), for the caller's timer. `None`: only new results can.
    pub fn next_tick(&self) -> Option<Millis> {
        [self.hold_down_at(), self.reuse_at(), self.verdict_up_at()].into_iter().flatten().min()
    }

    // ---- internals ----

    fn capacity(&self) -> usize {
        self.params.window.max(1)
    }

    fn quorum(&self) -> usize {
        self.params.min_samples.clamp(1, self.capacity())
    }

    /// Results a healthy stretch must hold (not clamped to the window: they accumulate).
    fn stretch_quorum(&self) -> usize {
        self.params.min_samples.max(1)
    }

    fn hold_down_ms(&self) -> Millis {
        Millis::try_from(self.params.hold_down.as_millis()).unwrap_or(Millis::MAX)
    }

    /// Advances the clock (never backwards) and lifts suppression once the figure is below
    /// `reuse_below`. Returns what the state was before.
    fn begin(&mut self, now: Millis) -> Before {
        let mut before = Before { state: self.state, suppressed: self.suppressed, released: None };
        self.clock = self.clock.max(now);
        if self.suppressed && self.penalty(self.clock) < self.params.damping.reuse_below {
            self.suppressed = false;
        }
        if let Some(since) = self.verdict_up_since
            && self.clock.saturating_sub(since) >= self.hold_down_ms()
        {
            self.verdict_up_since = None;
            before.released = Some((since, self.clock));
        }
        before
    }

    /// The figure decayed to `t` (t ≥ figure_at), damping flag not consulted.
    fn decayed(&self, t: Millis) -> f64 {
        let dt = t.saturating_sub(self.figure_at);
        if dt == 0 {
            return self.figure;
        }
        let half_life = self.params.damping.half_life.as_millis();
        if half_life == 0 {
            return 0.0;
        }
        let v = self.figure * (-(dt as f64) / (half_life as f64)).exp2();
        if v.is_nan() { 0.0 } else { v }
    }

    fn window_reading(&self) -> Reading {
        let samples = self.window.len();
        let mut replies = 0usize;
        let mut total: u128 = 0;
        for rtt in self.window.iter().flatten() {
            replies += 1;
            total = total.saturating_add(rtt.as_nanos());
        }
        let lost = samples - replies;
        let loss_pct = if samples == 0 { 0.0 } else { lost as f64 * 100.0 / samples as f64 };
        let latency = match u128::try_from(replies) {
            Ok(n) if n > 0 => Some(duration_from_nanos(total / n)),
            _ => None,
        };
        Reading { loss_pct, latency, samples, replies, external: false }
    }

    /// The current judgement, if there is one.
    fn reading(&self) -> Option<Reading> {
        if let Some(s) = self.summary {
            return Some(Reading {
                loss_pct: s.loss_pct,
                latency: s.latency,
                samples: 0,
                replies: 0,
                external: true,
            });
        }
        let r = self.window_reading();
        (r.samples >= self.quorum()).then_some(r)
    }

    fn is_down(&self, r: &Reading) -> bool {
        r.loss_pct >= self.params.loss_down_pct
    }

    /// Loss at or above the degraded threshold.
    fn loss_high(&self, r: &Reading) -> bool {
        r.loss_pct >= self.params.loss_degraded_pct
    }

    /// Latency at or above the degraded threshold ("no latency" is never high).
    fn latency_high(&self, r: &Reading) -> bool {
        r.latency.is_some_and(|l| l >= self.params.latency_degraded)
    }

    /// Loss back at or below the "up" threshold (and, defensively, below the degraded one).
    fn loss_clear(&self, r: &Reading) -> bool {
        r.loss_pct <= self.params.loss_up_pct && !self.loss_high(r)
    }

    /// Latency back at or below the "up" threshold (and below the degraded one), or none.
    fn latency_clear(&self, r: &Reading) -> bool {
        r.latency.is_none_or(|l| l <= self.params.latency_up) && !self.latency_high(r)
    }

    /// Why this judgement would take an up gateway to Degraded.
    fn degraded_cause(&self, r: &Reading) -> Option<Cause> {
        if self.loss_high(r) {
            Some(Cause::Loss)
        } else if self.latency_high(r) {
            Some(Cause::Latency)
        } else {
            None
        }
    }

    /// A down gateway is in a healthy stretch.
    fn recovery_ok(&self, r: &Reading) -> bool {
        r.loss_pct <= self.params.loss_up_pct && !self.is_down(r)
    }

    /// Judges a new result or summary.
    fn judge(&mut self) -> Option<Change> {
        let Some(r) = self.reading() else {
            self.recovery = None;
            return None;
        };
        let p = &self.params;
        match self.judged {
            Health::Up | Health::Degraded if self.is_down(&r) => {
                let reason =
                    format!("{} (down at or above {})", loss_text(&r), pct(p.loss_down_pct));
                self.go_down();
                Some(Change { cause: Cause::Loss, reason })
            }
            Health::Up => {
                let cause = self.degraded_cause(&r)?;
                let reason = match cause {
                    Cause::Latency => format!(
                        "{} (degraded at or above {})",
                        latency_text(&r),
                        dur(p.latency_degraded)
                    ),
                    _ => format!(
                        "{} (degraded at or above {})",
                        loss_text(&r),
                        pct(p.loss_degraded_pct)
                    ),
                };
                self.judged = Health::Degraded;
                self.high_loss = self.loss_high(&r);
                self.high_latency = self.latency_high(&r);
                Some(Change { cause, reason })
            }
            Health::Degraded => {
                // Each degradation has its own hysteresis: set at the degraded threshold,
                // cleared at the "up" one; the gateway is up again once both are clear.
                self.high_loss =
                    if self.high_loss { !self.loss_clear(&r) } else { self.loss_high(&r) };
                self.high_latency =
                    if self.high_latency { !self.latency_clear(&r) } else { self.latency_high(&r) };
                if self.high_loss || self.high_latency {
                    return None;
                }
                let reason = format!(
                    "{} and {} (up at or below {} and {})",
                    loss_text(&r),
                    latency_short(&r),
                    pct(p.loss_up_pct),
                    dur(p.latency_up)
                );
                self.judged = Health::Up;
                Some(Change { cause: Cause::Recovered, reason })
            }
            Health::Down => {
                if self.recovery_ok(&r) {
                    let since = self.recovery.map_or(self.clock, |rec| rec.since);
                    let results = self.recovery.map_or(0, |rec| rec.results).saturating_add(1);
                    self.recovery = Some(Recovery { since, results });
                } else {
                    self.recovery = None;
                }
                self.try_hold_down()
            }
        }
    }

    /// Judged Up/Degraded → Down: a flap (unless an external down already counted this
    /// outage and still holds the gateway down).
    fn go_down(&mut self) {
        self.judged = Health::Down;
        self.high_loss = false;
        self.high_latency = false;
        self.recovery = None;
        if self.forced_down && self.absorb_flap {
            self.absorb_flap = false;
            return;
        }
        self.add_flap();
    }

    /// Adds one flap's penalty (and suppresses above `suppress_above`); false with damping
    /// disabled.
    fn add_flap(&mut self) -> bool {
        let d = &self.params.damping;
        if !d.enabled {
            return false;
        }
        let now = self.clock;
        let current = self.decayed(now);
        let sum = current + d.penalty;
        let next = if sum.is_nan() { current } else { sum.min(d.max_penalty).max(0.0) };
        self.figure = next;
        self.figure_at = now;
        if next > d.suppress_above {
            self.suppressed = true;
        }
        true
    }

    /// Judged Down → Up/Degraded if the healthy stretch is long enough.
    fn try_hold_down(&mut self) -> Option<Change> {
        if self.judged != Health::Down {
            return None;
        }
        let rec = self.recovery?;
        let Some(r) = self.reading().filter(|r| self.recovery_ok(r)) else {
            self.recovery = None;
            return None;
        };
        let elapsed = self.clock.saturating_sub(rec.since);
        if rec.results < self.stretch_quorum() || elapsed < self.hold_down_ms() {
            return None;
        }
        let p = &self.params;
        let mut reason = format!(
            "healthy for {} over {} {} (hold-down {}): {} (up at or below {})",
            dur(Duration::from_millis(elapsed)),
            rec.results,
            if r.external {
                plural(rec.results, "summary", "summaries")
            } else {
                plural(rec.results, "result", "results")
            },
            dur(p.hold_down),
            loss_text(&r),
            pct(p.loss_up_pct)
        );
        let to = match self.degraded_cause(&r) {
            None => Health::Up,
            Some(Cause::Latency) => {
                reason.push_str(&format!(
                    ", but {} is at or above {}, so degraded",
                    latency_short(&r),
                    dur(p.latency_degraded)
                ));
                Health::Degraded
            }
            Some(_) => {
                reason.push_str(&format!(
                    ", but at or above {}, so degraded",
                    pct(p.loss_degraded_pct)
                ));
                Health::Degraded
            }
        };
        self.judged = to;
        self.high_loss = to == Health::Degraded && self.loss_high(&r);
        self.high_latency = to == Health::Degraded && self.latency_high(&r);
        self.recovery = None;
        Some(Change { cause: Cause::HoldDownPassed, reason })
    }

    /// Recomputes the effective state and reports the change, if any. `verdict`: the call
    /// is an external verdict (`Some(up)`).
    fn settle(
        &mut self,
        before: Before,
        verdict: Option<bool>,
        change: Option<Change>,
    ) -> Option<Transition> {
        let held = self.forced_down || self.suppressed || self.verdict_up_since.is_some();
        let after = if held { Health::Down } else { self.judged };
        self.state = after;
        if after == before.state {
            return None;
        }
        let d = &self.params.damping;
        let released = before.released.map(|(since, at)| {
            format!(
                "the external up stood for {} with no down verdict (hold-down {})",
                dur(Duration::from_millis(at.saturating_sub(since))),
                dur(self.params.hold_down)
            )
        });
        let (cause, reason) = if verdict == Some(false) {
            let mut reason = "external down: down at once (a down verdict is never held back); \
                              it stays down until an external up"
                .to_string();
            if d.enabled {
                reason.push_str(&format!(
                    "; flap penalty {} (suppressed above {})",
                    num(self.penalty(self.clock)),
                    num(d.suppress_above)
                ));
                if self.suppressed && !before.suppressed {
                    reason.push_str(&format!(
                        "; flap damping now suppresses it: an up verdict waits until the \
                         penalty decays below {}",
                        num(d.reuse_below)
                    ));
                }
            }
            (Cause::External, reason)
        } else if verdict == Some(true) {
            let reason = if before.state == Health::Down {
                format!(
                    "external up: usable at once (hold-down {}); the probe window was cleared",
                    dur(self.params.hold_down)
                )
            } else {
                "external up: the probe window was cleared".to_string()
            };
            (Cause::External, reason)
        } else if after == Health::Down && self.suppressed && !before.suppressed {
            let base = change.map_or_else(|| "flapping".to_string(), |c| c.reason);
            (
                Cause::Suppressed,
                format!(
                    "{base}; flap damping suppresses the gateway (penalty {} above {})",
                    num(self.penalty(self.clock)),
                    num(d.suppress_above)
                ),
            )
        } else if before.state == Health::Down && before.suppressed && !self.suppressed {
            let mut reason = format!(
                "flap damping penalty decayed to {} (reuse below {}) and the probes say {}",
                num(self.penalty(self.clock)),
                num(d.reuse_below),
                after
            );
            if let Some(r) = released {
                reason.push_str(&format!("; {r}"));
            }
            (Cause::Reused, reason)
        } else if let Some(r) = released.filter(|_| after != Health::Down) {
            (Cause::HoldDownPassed, r)
        } else {
            match change {
                Some(c) => (c.cause, c.reason),
                // Not reachable with the rules above; kept total rather than panicking.
                None => (
                    if after == Health::Down { Cause::Loss } else { Cause::Recovered },
                    format!("the probes say {after}"),
                ),
            }
        };
        Some(Transition {
            from: before.state,
            to: after,
            at: self.clock,
            cause,
            evidence: self.evidence(self.clock),
            reason,
        })
    }
}

fn duration_from_nanos(nanos: u128) -> Duration {
    let secs = nanos / 1_000_000_000;
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    match u64::try_from(secs) {
        Ok(s) => Duration::new(s, sub),
        Err(_) => Duration::MAX,
    }
}

fn serialize_ms<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
        None => s.serialize_none(),
    }
}

/// A number with at most one decimal, without a trailing `.0`.
fn num(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r.fract() == 0.0 { format!("{r:.0}") } else { format!("{r:.1}") }
}

fn pct(v: f64) -> String {
    format!("{}%", num(v))
}

fn dur(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 { format!("{} ms", num(ms)) } else { format!("{} s", num(ms / 1000.0)) }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

fn loss_text(r: &Reading) -> String {
    if r.external {
        format!("loss {} reported by the external monitor", pct(r.loss_pct))
    } else {
        format!(
            "loss {} over the last {} {}",
            pct(r.loss_pct),
            r.samples,
            plural(r.samples, "probe", "probes")
        )
    }
}

fn latency_text(r: &Reading) -> String {
    match r.latency {
        None => "no replies".to_string(),
        Some(l) if r.external => {
            format!("average latency {} reported by the external monitor", dur(l))
        }
        Some(l) => format!(
            "average latency {} over the last {} {}",
            dur(l),
            r.replies,
            plural(r.replies, "reply", "replies")
        ),
    }
}

fn latency_short(r: &Reading) -> String {
    match r.latency {
        None => "no replies".to_string(),
        Some(l) => format!("average latency {}", dur(l)),
    }
}
