//! The engine's control protocol: what `statecull status|plan|gateway|events` ask the
//! engine over its control socket, and what it answers.
//!
//! Unlike the broker protocol this is JSON, one object per line (newline-delimited), so an
//! operator can also talk to it with `socat` and a script can read events without a Rust
//! client. A line is at most [`MAX_CONTROL_LINE`] bytes; the engine closes a connection
//! that sends a longer one. Every request gets exactly one [`ControlReply`] line, except
//! `Events { follow: true }`, which is answered by one `Events` reply (the recent backlog)
//! and then one [`Event`] line per event until the client disconnects.
//!
//! This crate only defines the types (no I/O, no JSON encoder): the engine and the CLI
//! encode them with `serde_json`. It is its own crate, apart from the broker protocol
//! (`statecull-proto`), so that the broker, which never speaks it, does not carry it.
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};

/// Where the engine listens unless told otherwise (per target OS: `statecull_proto::paths`).
pub const DEFAULT_CONTROL_SOCKET: &str = statecull_proto::paths::CONTROL_SOCKET;

/// Longest accepted request or reply line, in bytes (without the newline). Replies with a
/// long plan explanation stay far below this.
pub const MAX_CONTROL_LINE: usize = 1 << 20;

/// A request from the CLI (or a script) to the engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Gateways, their health and evidence, states per gateway, recent events.
    Status,
    /// Dry run: what the engine would kill if these gateways went down / came up now,
    /// counted per selector by the broker, without killing anything.
    Plan {
        #[serde(default)]
        down: Vec<String>,
        #[serde(default)]
        up: Vec<String>,
    },
    /// An external health verdict or routing signal for one gateway (mwan3 hotplug,
    /// keepalived notify, pfSense's gateway alarm, or the routing manager saying "routed").
    Gateway { name: String, action: GatewayAction },
    /// The recent events; with `follow`, then every new event as it happens.
    Events {
        #[serde(default)]
        follow: bool,
    },
    /// Read the policy file again and use it (as SIGHUP does). Answered with `Done` (what
    /// changed) once the new policy is in force, or `Error` (why not: the old one stays).
    Reload,
}

/// What `statecull gateway NAME ...` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayAction {
    /// The gateway is down (external health source). Takes effect at once.
    Down,
    /// The gateway is up again (clears an earlier external `down`); used once it has stood
    /// for the gateway's hold-down and flap damping does not hold the gateway down.
    Up,
    /// Routing has moved off the gateway: the executor may kill its states now
    /// (`confirm = "signal"`, or to cut an rtnetlink/delay wait short).
    Routed,
}

/// One line answering a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlReply {
    Status(StatusReply),
    Plan(PlanReply),
    /// A `Gateway` request was taken; the text says what it changed.
    Done {
        message: String,
    },
    /// The backlog of recent events (oldest first).
    Events {
        events: Vec<Event>,
    },
    /// The request was refused; the text says why and what would be right.
    Error {
        message: String,
    },
}

/// Answer to `Status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub engine_version: String,
    /// Where the policy came from.
    pub policy: String,
    /// Seconds since the engine started.
    pub uptime_s: f64,
    pub broker: BrokerStatus,
    pub gateways: Vec<GatewayStatus>,
    /// Most recent events, oldest first (at most a few dozen).
    pub recent_events: Vec<Event>,
    /// How the states-per-gateway figure ([`GatewayStatus::states`]) is kept up to date.
    /// Absent from engines before it was added.
    #[serde(default)]
    pub states_refresh: Option<StatesRefreshStatus>,
}

/// The background count behind [`GatewayStatus::states`]. `status` never counts: it shows
/// the last figure and how old it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatesRefreshStatus {
    /// The policy's `[engine] states_refresh`: "auto", "off" or a minimum interval ("1m").
    pub setting: String,
    /// False when counting is off.
    pub enabled: bool,
    /// Milliseconds since the last count finished; None if there has been none.
    pub age_ms: Option<u64>,
    /// How long the broker took for the last count, in milliseconds.
    pub last_count_ms: Option<u64>,
    /// Milliseconds until the next count may start (by the budget and the minimum); None
    /// when counting is off or the broker has not been reached yet.
    pub next_in_ms: Option<u64>,
}

/// The engine's view of its broker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerStatus {
    pub socket: String,
    pub connected: bool,
    /// "conntrack on kernel 6.18", when connected.
    pub backend: Option<String>,
    /// Plans waiting for the broker to come back.
    pub pending_plans: u32,
    pub last_error: Option<String>,
}

/// One gateway as the engine sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub interface: String,
    pub address: String,
    /// "icmp", "dpinger", "external".
    pub health_source: String,
    /// "up", "degraded" or "down" (effective: a suppressed gateway is down).
    pub state: String,
    pub suppressed: bool,
    /// True when the state was set with `statecull gateway NAME down|up`.
    pub forced: bool,
    /// Milliseconds since the last transition.
    pub since_ms: u64,
    /// Reason of the last transition ("loss 35% over the last 20 probes (threshold 20%)").
    pub last_reason: Option<String>,
    pub loss_pct: f64,
    pub latency_ms: Option<f64>,
    pub samples: u64,
    pub flap_penalty: f64,
    /// States of this gateway in the broker's table at the last background count (None
    /// when never counted, counting is off, or the gateway's states cannot be recognised on
    /// this backend).
    pub states: Option<u64>,
    /// Milliseconds since `states` was counted; None when it never was. Absent from engines
    /// before it was added.
    #[serde(default)]
    pub states_age_ms: Option<u64>,
}

/// Answer to `Plan` (a dry run).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanReply {
    /// The planner's explanation with the broker's counts filled in.
    pub explanation: String,
    pub steps: Vec<PlanStepSummary>,
    /// Gateways or groups the plan leaves alone, with the reason.
    pub skipped: Vec<(String, String)>,
    /// True when the broker answered the counts; false when they are unknown.
    pub counted: bool,
}

/// One step of a dry-run plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanStepSummary {
    /// "gateway-down", "flush-all" or "fail-back".
    pub purpose: String,
    /// "kill-matching", "flush" or "kill-except".
    pub action: String,
    pub why: String,
    /// Each selector (in `statecull broker` flag syntax) with the states it matches now.
    pub selectors: Vec<(String, Option<u64>)>,
    pub match_opposite: bool,
    /// States that would die (matching any selector; for a flush, the table size).
    pub would_kill: Option<u64>,
    /// Flows spared by name (`kill-except`).
    pub spared_flows: Vec<String>,
}

/// Something that happened in the engine, as `statecull events` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing from 1 for the engine's lifetime.
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub kind: EventKind,
    /// The gateway concerned, if one is.
    pub gateway: Option<String>,
    /// One human sentence.
    pub message: String,
    /// States killed by this step (plan-done, sweep-done).
    pub killed: Option<u64>,
    /// How long the step took, or waited (routed: decision to confirmation).
    pub elapsed_ms: Option<f64>,
    /// Extra facts as (name, value) pairs, also exported to `--exec` commands.
    pub fields: Vec<(String, String)>,
}

/// Kinds of [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    EngineStarted,
    GatewayDown,
    GatewayDegraded,
    GatewayUp,
    /// An external `up` the gateway's hold-down or flap damping holds back (the gateway
    /// stays down; the message says which rule and until when).
    VerdictHeld,
    /// Routing confirmed off a down gateway (or the wait timed out; see `fields`).
    Routed,
    PlanStarted,
    PlanDone,
    /// A plan that could not be carried out, or only in part.
    PlanFailed,
    /// Transitions that needed no kill (e.g. every member of the group is down).
    PlanSkipped,
    SweepDone,
    BrokerConnected,
    BrokerLost,
    /// The policy was reloaded (SIGHUP or `statecull reload`); the message says what changed.
    PolicyReloaded,
    /// A reload was refused: the old policy stays; the message says why (file:line: field,
    /// or the key that needs a restart).
    PolicyReloadFailed,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::EngineStarted => "engine-started",
            EventKind::GatewayDown => "gateway-down",
            EventKind::GatewayDegraded => "gateway-degraded",
            EventKind::GatewayUp => "gateway-up",
            EventKind::VerdictHeld => "verdict-held",
            EventKind::Routed => "routed",
            EventKind::PlanStarted => "plan-started",
            EventKind::PlanDone => "plan-done",
            EventKind::PlanFailed => "plan-failed",
            EventKind::PlanSkipped => "plan-skipped",
            EventKind::SweepDone => "sweep-done",
            EventKind::BrokerConnected => "broker-connected",
            EventKind::BrokerLost => "broker-lost",
            EventKind::PolicyReloaded => "policy-reloaded",
            EventKind::PolicyReloadFailed => "policy-reload-failed",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
