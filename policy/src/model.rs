//! The validated policy. [`crate::load`] builds these from TOML; every value here has been
//! checked (names unique and non-empty, references resolved, thresholds ordered, durations
//! in range), so the state machine and the planner never re-validate.
//!
//! The value of every setting a policy may leave out is written once, here: the `Default`
//! impls of the settings structs and enums, and [`Gateway::DEFAULT_PROBE_INTERVAL`] /
//! [`Gateway::DEFAULT_PROBE_TIMEOUT`] for the two gateway fields that have one (a gateway as
//! a whole has no default: its name, interface and address are required). The loader fills
//! in what the file leaves out from these, and the explanation shows what was loaded, so
//! `check-policy` cannot describe a default the engine does not use.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use statecull_proto::{AddressFamily, BackendKind, IfName, MarkMatch, PortRange, Prefix};

/// A point in time in milliseconds since an arbitrary epoch chosen by the caller (the
/// engine: its start; tests: zero). Pure code never reads a clock.
pub type Millis = u64;

/// A whole policy: what the engine watches and how it reacts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// Where the policy came from (a path, or `<string>`), for messages.
    pub source: String,
    pub engine: EngineSettings,
    /// In file order. Names are unique.
    pub gateways: Vec<Gateway>,
    /// In file order. Names are unique; every member names a gateway above.
    pub groups: Vec<Group>,
    /// Flows spared on fail-back (`on_recovery = "kill-unprotected"`).
    pub protected: Vec<ProtectedFlow>,
    pub routing: Routing,
}

/// Engine-wide settings (the `[engine]` table). Command-line flags override the paths and
/// the metrics address. The default (no `[engine]` table) sets no path (the engine uses its
/// own built-in ones) and counts states per gateway automatically ([`StatesRefresh::Auto`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct EngineSettings {
    /// The broker's Unix socket.
    pub broker_socket: Option<String>,
    /// The engine's control socket for `statecull status|plan|gateway|events`.
    pub control_socket: Option<String>,
    /// `ADDR:PORT` for Prometheus metrics (HTTP `GET /metrics`); none: no metrics listener.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Files the engine may read after it confines itself (issue 5's Landlock list).
    pub readable_paths: Vec<String>,
    /// How often the states-per-gateway figure (status, metrics) is counted.
    pub states_refresh: StatesRefresh,
}

/// How often the engine counts each gateway's states in the background, for `statecull
/// status` and the `statecull_gateway_states` metric (`[engine] states_refresh`).
///
/// A count is a full pass over the broker's state table: a conntrack dump, or on pf an
/// export of every state through `/dev/pf` under the broker's device lock (which a kill
/// waits for). At 4 million conntrack entries one takes seconds of a core. So counting is
/// budgeted: the next count starts no sooner than [`StatesRefresh::BUDGET_FACTOR`] times the
/// last count's duration after it ended (the broker's background work stays below 1 % of one
/// core on average), and never sooner than the minimum. Status and metrics show the last
/// figure and its age; they never count themselves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StatesRefresh {
    /// The minimum follows the broker's backend: [`StatesRefresh::AUTO_MIN_CONNTRACK`] on
    /// conntrack, the much longer [`StatesRefresh::AUTO_MIN_PF`] on pf (a pf count exports
    /// every state under the device lock, so it is kept rare).
    #[default]
    Auto,
    /// No background counts: status and metrics show no state counts (`statecull plan`
    /// still counts when asked).
    Off,
    /// Counts at most once per this interval, whatever the backend (and less often when
    /// counts are slow, by the budget).
    AtMostEvery(Duration),
}

impl StatesRefresh {
    /// The next count waits at least this many times the last count's duration (1 %).
    pub const BUDGET_FACTOR: u32 = 100;
    /// `auto` on conntrack: a dump of a small table costs little, and the figure is fresh.
    pub const AUTO_MIN_CONNTRACK: Duration = Duration::from_secs(15);
    /// `auto` on pf: every count exports the whole table under the device lock.
    pub const AUTO_MIN_PF: Duration = Duration::from_secs(600);

    /// The shortest interval between two counts on `backend`; `None` when counting is off.
    /// (Every count also waits [`Self::BUDGET_FACTOR`] times the last one's duration.)
    pub fn minimum(self, backend: BackendKind) -> Option<Duration> {
        match self {
            StatesRefresh::Off => None,
            StatesRefresh::AtMostEvery(d) => Some(d),
            StatesRefresh::Auto => Some(match backend {
                BackendKind::Conntrack => Self::AUTO_MIN_CONNTRACK,
                BackendKind::Pf | BackendKind::PfModel => Self::AUTO_MIN_PF,
            }),
        }
    }
}

/// Where a gateway's health comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum HealthSource {
    /// ICMP echo from the engine (datagram ICMP sockets), to each monitor target. The
    /// default: it needs nothing but the policy.
    #[default]
    Icmp,
    /// A dpinger status socket (pfSense / OPNsense), read every probe interval.
    Dpinger { socket: String },
    /// Only `statecull gateway NAME down|up` (mwan3 hotplug, keepalived notify, ...).
    External,
}

/// One gateway (next hop) of the firewall.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gateway {
    pub name: String,
    /// The interface the gateway is reached through (probes are bound to it).
    pub interface: IfName,
    /// The next hop's address. Its family is the gateway's family.
    pub address: IpAddr,
    pub family: AddressFamily,
    /// Addresses probed to judge the gateway (default: the gateway's own address). Same
    /// family as the gateway.
    pub monitor: Vec<IpAddr>,
    /// Source address for probes (default: chosen by the kernel for the interface).
    pub probe_source: Option<IpAddr>,
    /// FreeBSD: the routing table (FIB, `SO_SETFIB`) the probe sockets use (default: the
    /// engine's own, normally 0). Ignored on Linux, where probes are bound to the interface.
    pub fib: Option<u32>,
    pub source: HealthSource,
    pub probe_interval: Duration,
    /// A probe not answered within this time counts as lost.
    pub probe_timeout: Duration,
    pub health: HealthParams,
    /// How this gateway's states are recognised in the state table. At least one field set.
    pub states: StateMatch,
}

/// How a gateway's states are recognised. Each field that is set yields selectors; the
/// planner uses those the broker's backend supports (pf: `rt_addr`, interface + NAT
/// address; conntrack: mark/mask, NAT address).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateMatch {
    /// pf: the state's route-to gateway (`rt_addr`).
    pub rt_addr: Option<IpAddr>,
    /// conntrack: the connection mark the firewall sets per gateway.
    pub mark: Option<MarkMatch>,
    /// The SNAT address(es) the firewall uses on this gateway (IPv4 and/or IPv6). With
    /// [`StateMatch::nat_from_interface`] only those listed beside `"interface"`; the engine
    /// adds the interface's addresses when it plans ([`Policy::with_interface_addresses`]).
    pub nat_addr: Vec<IpAddr>,
    /// `nat_addr = "interface"`: the NAT addresses are whatever the gateway's interface has
    /// (a DHCP or PPPoE WAN), learnt by the engine at run time.
    pub nat_from_interface: bool,
    /// pf: restrict NAT-address selectors to this interface (states with `rt_addr` 0 that
    /// left by the default route are found this way).
    pub interface: Option<IfName>,
}

/// Thresholds and timers of the gateway health state machine ([`crate::health`]). The
/// default is what a `[[gateway]]` table that sets none of them gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthParams {
    /// Probe results kept in the sliding window.
    pub window: usize,
    /// Fewer results than this in the window: no decision yet (the gateway stays as it is).
    pub min_samples: usize,
    /// Loss (percent of the window) at or above which the gateway is down.
    pub loss_down_pct: f64,
    /// Loss at or below which a down gateway may come back up (hysteresis: < loss_down).
    pub loss_up_pct: f64,
    /// Average latency of answered probes at or above which the gateway is degraded.
    pub latency_degraded: Duration,
    /// Average latency at or below which a degraded gateway is up again (< latency_degraded).
    pub latency_up: Duration,
    /// Loss at or above which the gateway is degraded (< loss_down_pct); back to up at or
    /// below `loss_up_pct`.
    pub loss_degraded_pct: f64,
    /// A down gateway must look healthy for this long before it is declared up.
    pub hold_down: Duration,
    pub damping: FlapDamping,
}

/// Route-flap damping (RFC 2439 style): every up→down flap adds `penalty`; the figure
/// decays exponentially with `half_life`; above `suppress_above` the gateway is suppressed
/// (treated as down whatever the probes say) until it decays below `reuse_below`. The
/// default (no `[gateway.damping]` table) is on.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlapDamping {
    pub enabled: bool,
    pub penalty: f64,
    pub suppress_above: f64,
    pub reuse_below: f64,
    pub half_life: Duration,
    /// Upper bound of the figure (so a storm of flaps cannot suppress for ever).
    pub max_penalty: f64,
}

/// What happens to a group member's states when it goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnDown {
    /// Kill nothing (states time out on their own).
    None,
    /// Kill the states of the gateway that went down, and only those. The default: it is
    /// what statecull is for.
    #[default]
    Gateway,
    /// Kill every state of the table (what pfSense's "kill all states" does); for
    /// comparison and for users who want it.
    All,
}

/// What happens when a better tier comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnRecovery {
    /// Leave connections on the lower tier (they move back when they end). The default:
    /// killing working connections must be asked for.
    #[default]
    Keep,
    /// Kill the lower tiers' states so connections move back now.
    Kill,
    /// Like `Kill`, but spare the policy's protected flows (calls, SSH, ...).
    KillUnprotected,
}

/// When a group counts a member as failed (pfSense's "Trigger Level"), in terms of what the
/// health machine judges ([`crate::health::Judgement`]): down, or usable but degraded by
/// loss (loss ≥ `loss_degraded` until ≤ `loss_up`) and/or by latency (latency ≥
/// `latency_degraded` until ≤ `latency_up`).
///
/// | trigger | a member has failed when it is |
/// |---|---|
/// | `down` (default) | down |
/// | `loss` | down, or degraded by loss |
/// | `latency` | down, or degraded by latency |
/// | `loss-or-latency` | down, or degraded by loss or by latency |
///
/// A failed member is treated exactly like a down one by the planner (its states are
/// killed, it does not count as a usable member; its return is a recovery).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    #[default]
    Down,
    Loss,
    Latency,
    LossOrLatency,
}

impl Trigger {
    /// The policy's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Trigger::Down => "down",
            Trigger::Loss => "loss",
            Trigger::Latency => "latency",
            Trigger::LossOrLatency => "loss-or-latency",
        }
    }

    /// Whether a member judged `j` has failed for a group with this trigger.
    pub fn fails(self, j: crate::health::Judgement) -> bool {
        j.down
            || match self {
                Trigger::Down => false,
                Trigger::Loss => j.high_loss,
                Trigger::Latency => j.high_latency,
                Trigger::LossOrLatency => j.high_loss || j.high_latency,
            }
    }
}

/// A failover group: members with tiers (1 is best; equal tiers share load).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Group {
    pub name: String,
    /// Indices into [`Policy::gateways`], with their tiers; sorted by tier, then file order.
    pub members: Vec<GroupMember>,
    pub on_down: OnDown,
    pub on_recovery: OnRecovery,
    /// When a member counts as failed.
    pub trigger: Trigger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// Index into [`Policy::gateways`].
    pub gateway: usize,
    /// 1 = best. Lower numbers are preferred.
    pub tier: u8,
}

/// A flow that fail-back never kills under `kill-unprotected` (SIP signalling, RTP media,
/// SSH to the office, ...). All given fields must match; at least one is given.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProtectedFlow {
    pub name: String,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Either end's port in one of these ranges.
    pub ports: Vec<PortRange>,
    /// Either end's address in one of these prefixes.
    pub prefixes: Vec<Prefix>,
}

/// How the executor knows routing has moved off a dead gateway before it kills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoutingConfirm {
    /// Watch routes and rules over rtnetlink (read-only) until no rule or table would send
    /// the gateway's new connections through it (or a `routed` signal). The default (Linux).
    #[default]
    Rtnetlink,
    /// Wait for `statecull gateway NAME down --routed` / `routed` from the routing manager.
    Signal,
    /// Wait `settle_timeout`, then kill.
    Delay,
    /// FreeBSD: ask the routing socket (`PF_ROUTE`, read-only `RTM_GET` of the default
    /// route, re-asked on every route change) until no default route of the engine's FIB
    /// uses the gateway. Same meaning as `Rtnetlink`.
    RouteSocket,
    /// pf (pfSense, OPNsense): wait until the active main filter ruleset's ticket changes
    /// (the firewall reloaded its rules, moving `route-to` off the gateway). Read from the
    /// broker when the executor takes the decision, then polled.
    PfRuleset,
}

impl RoutingConfirm {
    /// The policy's word for it.
    pub fn word(self) -> &'static str {
        match self {
            RoutingConfirm::Rtnetlink => "rtnetlink",
            RoutingConfirm::Signal => "signal",
            RoutingConfirm::Delay => "delay",
            RoutingConfirm::RouteSocket => "route-socket",
            RoutingConfirm::PfRuleset => "pf-ruleset",
        }
    }

    /// The operating system the confirmation needs, if only one has it (the others
    /// confirm by waiting for routes or signals everywhere; `pf-ruleset` needs a pf broker).
    pub fn os_only(self) -> Option<&'static str> {
        match self {
            RoutingConfirm::Rtnetlink => Some("linux"),
            RoutingConfirm::RouteSocket | RoutingConfirm::PfRuleset => Some("freebsd"),
            RoutingConfirm::Signal | RoutingConfirm::Delay => None,
        }
    }
}

/// How a kill waits for routing (the `[routing]` table). The default is what a policy
/// without that table gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub confirm: RoutingConfirm,
    /// Longest wait for the confirmation; past it the plan runs anyway and the event says
    /// routing was not confirmed.
    pub settle_timeout: Duration,
    /// After the kill, one trailing sweep this much later catches states born in the race
    /// window; zero disables the sweep.
    pub sweep_delay: Duration,
}

impl Gateway {
    /// Probe interval when the gateway sets none.
    pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_millis(500);
    /// Probe timeout when the gateway sets none (it may exceed the interval).
    pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
}

/// As the policy writes it: `auto`, `off`, or the minimum interval (`1m`).
impl std::fmt::Display for StatesRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatesRefresh::Auto => f.write_str("auto"),
            StatesRefresh::Off => f.write_str("off"),
            StatesRefresh::AtMostEvery(d) => f.write_str(&crate::load::words::fmt_duration(*d)),
        }
    }
}

impl Default for HealthParams {
    fn default() -> Self {
        Self {
            window: 20,
            // The loader lowers it to the window when a gateway's window is smaller.
            min_samples: 5,
            loss_down_pct: 20.0,
            loss_up_pct: 5.0,
            latency_degraded: Duration::from_millis(500),
            latency_up: Duration::from_millis(250),
            loss_degraded_pct: 10.0,
            hold_down: Duration::from_secs(10),
            damping: FlapDamping::default(),
        }
    }
}

impl Default for FlapDamping {
    fn default() -> Self {
        Self {
            enabled: true,
            penalty: 1000.0,
            suppress_above: 2000.0,
            reuse_below: 750.0,
            half_life: Duration::from_secs(60),
            max_penalty: 6000.0,
        }
    }
}

impl Default for Routing {
    fn default() -> Self {
        Self {
            confirm: RoutingConfirm::default(),
            settle_timeout: Duration::from_secs(5),
            sweep_delay: Duration::from_secs(2),
        }
    }
}

impl Policy {
    /// Index of the gateway called `name`.
    pub fn gateway_index(&self, name: &str) -> Option<usize> {
        self.gateways.iter().position(|g| g.name == name)
    }

    /// Whether the gateway at `index`, judged `j`, is usable for the planner: not down, and
    /// not failed by the trigger of **every** group that contains it. A gateway in several
    /// groups whose triggers disagree (degraded by latency, in a `latency` group and a `down`
    /// group) stays usable while one of its groups still uses it: its states cannot be told
    /// apart by group, and killing them would cut that group's connections (killing less
    /// wins). A gateway in no group is usable unless down.
    pub fn usable(&self, index: usize, j: crate::health::Judgement) -> bool {
        if j.down {
            return false;
        }
        let mut groups = self.groups_of(index).peekable();
        if groups.peek().is_none() {
            return true;
        }
        !groups.all(|g| g.trigger.fails(j))
    }

    /// Groups that have the gateway at `index` as a member.
    pub fn groups_of(&self, index: usize) -> impl Iterator<Item = &Group> {
        self.groups.iter().filter(move |g| g.members.iter().any(|m| m.gateway == index))
    }

    /// Whether any gateway takes its NAT addresses from its interface.
    pub fn uses_interface_addresses(&self) -> bool {
        self.gateways.iter().any(|g| g.states.nat_from_interface)
    }

    /// This policy with every `nat_addr = "interface"` gateway's NAT addresses set to
    /// `addresses(interface)` (what the interface has now, and recently had), of the
    /// gateway's own family only when another such gateway of the other family shares the
    /// interface: what a plan, a count or a sweep is made from. Gateways with literal
    /// addresses only are unchanged.
    pub fn with_interface_addresses(&self, addresses: impl Fn(&IfName) -> Vec<IpAddr>) -> Policy {
        let mut p = self.clone();
        // A dual-stack WAN with one gateway per family (pfSense's WAN_DHCP and WAN_DHCP6):
        // each takes the interface's addresses of its own family only.
        let split: Vec<bool> = self
            .gateways
            .iter()
            .map(|g| {
                self.gateways.iter().any(|h| {
                    h.states.nat_from_interface
                        && h.interface == g.interface
                        && h.family != g.family
                })
            })
            .collect();
        for (g, split) in
            p.gateways.iter_mut().zip(split).filter(|(g, _)| g.states.nat_from_interface)
        {
            // The interface's first, then those listed beside "interface".
            let mut all = addresses(&g.interface);
            if split {
                all.retain(|a| AddressFamily::of(a) == g.family);
            }
            for a in std::mem::take(&mut g.states.nat_addr) {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
            g.states.nat_addr = all;
        }
        p
    }

    /// "WAN1, WAN2" — for error messages.
    pub fn gateway_names(&self) -> String {
        self.gateways.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ")
    }
}
