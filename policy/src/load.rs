//! The policy file: TOML text to a validated [`Policy`], and a plain-words explanation of
//! a policy for `statecull check-policy FILE`.
//!
//! Parsing happens in two steps. Serde reads the text into "file format" structs that
//! refuse unknown keys (a misspelt key is an error, never silently ignored); then every
//! value is checked and converted into the [`crate::model`] types. Values that are checked
//! after deserialisation keep their byte span ([`toml::Spanned`]) so that every error can
//! name the line.
//!
//! # Errors
//!
//! Every error is [`PolicyError::Invalid`] with the file, the 1-based line and the dotted
//! path of the offending key. **Indices in paths are 1-based, as an operator counts**: the
//! first `[[gateway]]` table is `gateway[1]`, its first monitor target is
//! `gateway[1].monitor[1]`, the second member of the first group is `group[1].members[2]`.
//! Messages say what was wrong and what would be right.
//!
//! # File format
//!
//! ```toml
//! [engine]                        # optional
//! broker_socket = "/run/statecull/broker.sock"   # absolute paths
//! control_socket = "/run/statecull/engine.sock"
//! metrics_listen = "127.0.0.1:9771"              # ADDR:PORT; absent: no metrics listener
//! readable_paths = []                            # absolute paths
//!
//! [routing]                       # optional
//! confirm = "rtnetlink"           # rtnetlink (default) | signal | delay
//! settle_timeout = "5s"           # default 5s; 1ms..=1h
//! sweep_delay = "2s"              # default 2s; 0 disables the trailing sweep; at most 1h
//!
//! [[gateway]]                     # at least one
//! name = "WAN1"                   # required; unique
//! interface = "em1"               # required
//! address = "198.51.100.254"      # required: the next hop; its family is the gateway's
//! family = "inet"                 # optional: "inet" | "inet6", must agree with address
//! monitor = ["198.51.100.254", "192.0.2.53"]     # default [address]; same family; icmp only
//! probe_source = "198.51.100.1"   # optional; same family; icmp only
//! health_source = "icmp"          # "icmp" (default) | "external" | "dpinger"
//! dpinger_socket = "/var/run/dpinger_WAN1~198.51.100.1~198.51.100.254.sock"
//!                                 # required with, and only with, health_source = "dpinger"
//! probe_interval = "500ms"        # default 500ms; 10ms..=60s
//! probe_timeout = "1s"            # default 1s; 1ms..=60s (may exceed the interval)
//! window = 20                     # default 20 probe results; 1..=3600
//! min_samples = 5                 # default 5 (or window, if smaller); 1..=window
//! loss_down = "20%"               # defaults 20% / 10% / 5%; "N%" or a number 0..=100;
//! loss_degraded = "10%"           #   loss_up < loss_degraded <= loss_down
//! loss_up = "5%"
//! latency_degraded = "500ms"      # defaults 500ms / 250ms; latency_up < latency_degraded;
//! latency_up = "250ms"            #   with icmp, latency_degraded < probe_timeout
//! hold_down = "10s"               # default 10s; 0..=1h
//!
//! [gateway.damping]               # optional
//! enabled = true                  # default true
//! penalty = 1000                  # defaults 1000 / 2000 / 750 / 60s / 6000;
//! suppress_above = 2000           #   reuse_below < suppress_above <= max_penalty
//! reuse_below = 750
//! half_life = "60s"
//! max_penalty = 6000
//!
//! [gateway.states]                # required: at least one of rt_addr, mark, nat_addr
//! rt_addr = "198.51.100.254"      # pf route-to gateway; same family as the gateway
//! mark = "0x1/0xff"               # conntrack mark[/mask], decimal or 0x hex; or an integer
//! nat_addr = ["198.51.100.1", "2001:db8:a::1"]   # SNAT addresses, either family
//! interface = "em1"               # pf: narrows the nat_addr selectors; needs nat_addr
//!
//! [[group]]
//! name = "failover"               # required; unique
//! members = [ { gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 } ]
//!                                 # tier 1..=15, 1 is best, equal tiers share load
//! on_down = "gateway"             # none | gateway (default) | all
//! on_recovery = "kill-unprotected"   # keep (default) | kill | kill-unprotected
//!
//! [[protect]]                     # flows spared by on_recovery = "kill-unprotected"
//! name = "sip"                    # required; unique
//! proto = "udp"                   # a name (tcp, udp, icmp, ...) or a number 1..=255
//! ports = [5060, "10000-20000"]   # numbers or "A-B" ranges; either end's port
//! prefixes = ["192.0.2.0/24"]     # either end's address
//! ```
//!
//! Durations are strings with a unit: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`, a whole
//! number of milliseconds. Names (gateways, groups, protected flows) use letters, digits and
//! `_ - . : @ +`, at most 32 characters, do not start with `-`, and are unique ignoring case.

use std::cell::{Cell, OnceCell};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use statecull_proto::{AddressFamily, IfName, MarkMatch, PortRange, Prefix, ipproto};
use toml::de::{DeTable, DeValue};
use toml::{Spanned, Value};

use crate::PolicyError;
use crate::model::{
    EngineSettings, FlapDamping, Gateway, Group, GroupMember, HealthParams, HealthSource, OnDown,
    OnRecovery, Policy, ProtectedFlow, Routing, RoutingConfirm, StateMatch,
};

/// Longest gateway, group or protected-flow name, in characters.
pub const MAX_NAME_LEN: usize = 32;
/// Highest (worst) tier a group member may have.
pub const MAX_TIER: u8 = 15;
/// Most probe results a gateway's sliding window may keep.
pub const MAX_WINDOW: usize = 3600;

const MS: Duration = Duration::from_millis(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Parse and validate a policy. `source` names the text in messages (a path, or
/// `<string>`) and becomes [`Policy::source`].
pub fn parse(text: &str, source: &str) -> Result<Policy, PolicyError> {
    parse_counted(text, source).0
}

/// [`parse`], also returning the number of steps taken by the loader's lookups and
/// cross-checks (bytes scanned for line numbers, gateways compared, list entries compared;
/// serde's own parse excluded). Tests use it to prove loading scales without timing it.
#[doc(hidden)]
pub fn parse_counted(text: &str, source: &str) -> (Result<Policy, PolicyError>, u64) {
    let loader = Loader { text, file: source, steps: Cell::new(0), newlines: OnceCell::new() };
    let result = toml::from_str::<RawPolicy>(text)
        .map_err(|e| loader.toml_error(&e))
        .and_then(|raw| loader.policy(&raw));
    (result, loader.steps.get())
}

// ---------------------------------------------------------------------------------------
// The file format, as serde reads it. Scalars that need checking are kept as
// `Spanned<Value>` (not as the final Rust type) so that a wrong type gets a message that
// teaches the right one instead of serde's "expected i64".

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    engine: Option<RawEngine>,
    routing: Option<RawRouting>,
    #[serde(default)]
    gateway: Vec<Spanned<RawGateway>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    protect: Vec<Spanned<RawProtect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    broker_socket: Option<Spanned<String>>,
    control_socket: Option<Spanned<String>>,
    metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    readable_paths: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouting {
    confirm: Option<Spanned<String>>,
    settle_timeout: Option<Spanned<Value>>,
    sweep_delay: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: Option<Spanned<String>>,
    interface: Option<Spanned<String>>,
    address: Option<Spanned<String>>,
    family: Option<Spanned<String>>,
    monitor: Option<Spanned<Vec<Spanned<String>>>>,
    probe_source: Option<Spanned<String>>,
    health_source: Option<Spanned<String>>,
    dpinger_socket: Option<Spanned<String>>,
    probe_interval: Option<Spanned<Value>>,
    probe_timeout: Option<Spanned<Value>>,
    window: Option<Spanned<Value>>,
    min_samples: Option<Spanned<Value>>,
    loss_down: Option<Spanned<Value>>,
    loss_degraded: Option<Spanned<Value>>,
    loss_up: Option<Spanned<Value>>,
    latency_degraded: Option<Spanned<Value>>,
    latency_up: Option<Spanned<Value>>,
    hold_down: Option<Spanned<Value>>,
    damping: Option<Spanned<RawDamping>>,
    states: Option<Spanned<RawStates>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDamping {
    enabled: Option<Spanned<bool>>,
    penalty: Option<Spanned<Value>>,
    suppress_above: Option<Spanned<Value>>,
    reuse_below: Option<Spanned<Value>>,
    half_life: Option<Spanned<Value>>,
    max_penalty: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStates {
    rt_addr: Option<Spanned<String>>,
    mark: Option<Spanned<Value>>,
    nat_addr: Option<Spanned<Vec<Spanned<String>>>>,
    interface: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Option<Spanned<String>>,
    members: Option<Spanned<Vec<Spanned<RawMember>>>>,
    on_down: Option<Spanned<String>>,
    on_recovery: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    gateway: Option<Spanned<String>>,
    tier: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProtect {
    name: Option<Spanned<String>>,
    proto: Option<Spanned<Value>>,
    ports: Option<Spanned<Vec<Spanned<Value>>>>,
    prefixes: Option<Spanned<Vec<Spanned<String>>>>,
}

// ---------------------------------------------------------------------------------------
// Validation.

/// The text being loaded, for turning spans into lines and building errors.
struct Loader<'a> {
    text: &'a str,
    file: &'a str,
    /// Work counter, see [`parse_counted`].
    steps: Cell<u64>,
    /// Offsets of the text's newlines, found on the first line lookup (an error's), so
    /// that a line number is a binary search, never a rescan of the text.
    newlines: OnceCell<Vec<usize>>,
}

/// Allowed range of one duration field.
#[derive(Clone, Copy)]
struct Bounds {
    min: Duration,
    max: Duration,
}

/// A setting that may come from the file or from the default, with where it came from
/// (for ordering errors that must blame a key the operator actually wrote).
struct Setting<T> {
    value: T,
    span: Option<Range<usize>>,
    field: String,
}

impl<T> Setting<T> {
    fn origin(&self) -> &'static str {
        if self.span.is_some() { "" } else { ", the default" }
    }
}

/// Where a gateway and its name were written, for messages about it.
struct GatewaySpans {
    table: Range<usize>,
    name: Range<usize>,
    states: RecogniserSpans,
}

/// Where (span and field path) a gateway's recognisers were written, for conflicts
/// between gateways.
#[derive(Default)]
struct RecogniserSpans {
    rt_addr: Option<(Range<usize>, String)>,
    mark: Option<(Range<usize>, String)>,
    nat_addr: Vec<(Range<usize>, String)>,
}

impl Loader<'_> {
    fn step(&self, n: usize) {
        self.steps.set(self.steps.get().saturating_add(n as u64));
    }

    fn line(&self, offset: usize) -> usize {
        let newlines = self.newlines.get_or_init(|| {
            self.step(self.text.len());
            self.text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect()
        });
        self.step(newlines.len().max(1).ilog2() as usize + 1);
        newlines.partition_point(|&nl| nl < offset) + 1
    }

    fn err(&self, span: &Range<usize>, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: Some(self.line(span.start)),
            field: Some(field.to_owned()),
            message: message.into(),
        }
    }

    /// A TOML syntax or shape error, with the path of the key it points at.
    fn toml_error(&self, e: &toml::de::Error) -> PolicyError {
        let span = e.span().unwrap_or(0..0);
        let field = locate(self.text, span.start);
        let mut message = e.message().trim_end().to_owned();
        if message.contains("expected a sequence") {
            message.push_str(" (write a list in brackets, e.g. [\"...\"])");
        }
        if let Some(hint) = did_you_mean(&message) {
            message.push_str(&hint);
        }
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: Some(self.line(span.start)),
            field: Some(field.unwrap_or_else(|| "policy".to_owned())),
            message,
        }
    }

    fn policy(&self, raw: &RawPolicy) -> Result<Policy, PolicyError> {
        let engine = self.engine(raw.engine.as_ref())?;
        let routing = self.routing(raw.routing.as_ref())?;
        if raw.gateway.is_empty() {
            return Err(self.err(
                &(0..0),
                "gateway",
                "the policy names no gateway: add at least one [[gateway]] table with name, \
                 interface, address and [gateway.states]",
            ));
        }
        let mut gateways = Vec::with_capacity(raw.gateway.len());
        let mut spans = Vec::with_capacity(raw.gateway.len());
        let mut names = Names::new("gateway");
        let mut recognisers = Recognisers::default();
        for (i, g) in raw.gateway.iter().enumerate() {
            let (gateway, gs) = self.gateway(i, g)?;
            names.insert(self, &gateway.name, &gs.name, &format!("gateway[{}].name", i + 1))?;
            self.recogniser_conflicts(&gateway, &gs, &gateways, &spans, &mut recognisers)?;
            gateways.push(gateway);
            spans.push(gs);
        }
        // Group members name gateways: one lookup each, not a scan of the gateways.
        let by_name: HashMap<&str, usize> =
            gateways.iter().enumerate().map(|(i, g)| (g.name.as_str(), i)).collect();
        let mut groups = Vec::with_capacity(raw.group.len());
        let mut names = Names::new("group");
        for (i, g) in raw.group.iter().enumerate() {
            let (group, name_span) = self.group(i, g, &gateways, &by_name)?;
            names.insert(self, &group.name, &name_span, &format!("group[{}].name", i + 1))?;
            groups.push(group);
        }
        let mut protected = Vec::with_capacity(raw.protect.len());
        let mut names = Names::new("protected flow");
        for (i, p) in raw.protect.iter().enumerate() {
            let (flow, name_span) = self.protect(i, p)?;
            names.insert(self, &flow.name, &name_span, &format!("protect[{}].name", i + 1))?;
            protected.push(flow);
        }
        Ok(Policy { source: self.file.to_owned(), engine, gateways, groups, protected, routing })
    }

    fn engine(&self, raw: Option<&RawEngine>) -> Result<EngineSettings, PolicyError> {
        let Some(raw) = raw else {
            return Ok(EngineSettings {
                broker_socket: None,
                control_socket: None,
                metrics_listen: None,
                readable_paths: Vec::new(),
            });
        };
        let broker_socket = raw
            .broker_socket
            .as_ref()
            .map(|s| self.path(s, "engine.broker_socket", "/run/statecull/broker.sock"))
            .transpose()?;
        let control_socket = raw
            .control_socket
            .as_ref()
            .map(|s| self.path(s, "engine.control_socket", "/run/statecull/engine.sock"))
            .transpose()?;
        let metrics_listen = raw
            .metrics_listen
            .as_ref()
            .map(|s| {
                s.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        &s.span(),
                        "engine.metrics_listen",
                        format!(
                            "{:?} is not ADDR:PORT; expected e.g. \"127.0.0.1:9771\" or \
                             \"[::1]:9771\"",
                            s.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let mut readable_paths = Vec::with_capacity(raw.readable_paths.len());
        for (i, p) in raw.readable_paths.iter().enumerate() {
            let field = format!("engine.readable_paths[{}]", i + 1);
            readable_paths.push(self.path(p, &field, "/var/run/dpinger_WAN1.sock")?);
        }
        Ok(EngineSettings { broker_socket, control_socket, metrics_listen, readable_paths })
    }

    fn routing(&self, raw: Option<&RawRouting>) -> Result<Routing, PolicyError> {
        let confirm = match raw.and_then(|r| r.confirm.as_ref()) {
            None => RoutingConfirm::Rtnetlink,
            Some(c) => match c.get_ref().as_str() {
                "rtnetlink" => RoutingConfirm::Rtnetlink,
                "signal" => RoutingConfirm::Signal,
                "delay" => RoutingConfirm::Delay,
                other => {
                    return Err(self.err(
                        &c.span(),
                        "routing.confirm",
                        format!(
                            "unknown confirmation {other:?}; expected \"rtnetlink\" (Linux: watch \
                             the routes), \"signal\" (wait for `statecull gateway NAME down \
                             --routed`) or \"delay\" (wait settle_timeout)"
                        ),
                    ));
                }
            },
        };
        let settle_timeout = self.opt_duration(
            raw.and_then(|r| r.settle_timeout.as_ref()),
            "routing.settle_timeout",
            Duration::from_secs(5),
            Bounds { min: MS, max: HOUR },
        )?;
        let sweep_delay = self.opt_duration(
            raw.and_then(|r| r.sweep_delay.as_ref()),
            "routing.sweep_delay",
            Duration::from_secs(2),
            Bounds { min: Duration::ZERO, max: HOUR },
        )?;
        Ok(Routing { confirm, settle_timeout, sweep_delay })
    }

    fn gateway(
        &self,
        index: usize,
        raw: &Spanned<RawGateway>,
    ) -> Result<(Gateway, GatewaySpans), PolicyError> {
        let at = format!("gateway[{}]", index + 1);
        let table = raw.span();
        let g = raw.get_ref();
        let f = |key: &str| format!("{at}.{key}");
        let (name, name_span) = self.name(g.name.as_ref(), &table, &at, "gateway", "WAN1")?;

        let interface = match &g.interface {
            Some(i) => self.ifname(i, &f("interface"))?,
            None => {
                return Err(self.err(
                    &table,
                    &at,
                    format!(
                        "gateway {name:?} has no interface: add interface = \"em1\" (the \
                         interface its next hop is reached through)"
                    ),
                ));
            }
        };
        let address = match &g.address {
            Some(a) => self.host_addr(a, &f("address"))?,
            None => {
                return Err(self.err(
                    &table,
                    &at,
                    format!(
                        "gateway {name:?} has no address: add address = \"198.51.100.254\" (its \
                         next hop; the family follows from it)"
                    ),
                ));
            }
        };
        let family = AddressFamily::of(&address);
        if let Some(fam) = &g.family {
            let declared = match fam.get_ref().to_ascii_lowercase().as_str() {
                "inet" | "ipv4" => AddressFamily::Ipv4,
                "inet6" | "ipv6" => AddressFamily::Ipv6,
                other => {
                    return Err(self.err(
                        &fam.span(),
                        &f("family"),
                        format!("unknown family {other:?}; expected \"inet\" or \"inet6\""),
                    ));
                }
            };
            if declared != family {
                return Err(self.err(
                    &fam.span(),
                    &f("family"),
                    format!(
                        "family {:?} does not agree with address {address} ({}); the family \
                         follows from the address, so family can be left out",
                        fam.get_ref(),
                        family_word(family),
                    ),
                ));
            }
        }

        let source = self.health_source(g, &name, &at)?;
        let is_icmp = source == HealthSource::Icmp;
        let monitor = match &g.monitor {
            None => vec![address],
            Some(list) => {
                if !is_icmp {
                    return Err(self.err(
                        &list.span(),
                        &f("monitor"),
                        format!(
                            "monitor targets are probed only with health_source = \"icmp\"; \
                             gateway {name:?} gets its health from {}; remove monitor",
                            source_word(&source)
                        ),
                    ));
                }
                if list.get_ref().is_empty() {
                    return Err(self.err(
                        &list.span(),
                        &f("monitor"),
                        format!(
                            "monitor is empty; list at least one address to probe, or leave \
                             monitor out to probe the next hop {address}"
                        ),
                    ));
                }
                let mut targets: Vec<IpAddr> = Vec::with_capacity(list.get_ref().len());
                let mut seen = HashSet::with_capacity(list.get_ref().len());
                for (k, m) in list.get_ref().iter().enumerate() {
                    let field = format!("{at}.monitor[{}]", k + 1);
                    let target = self.host_addr(m, &field)?;
                    self.same_family(target, family, &name, &m.span(), &field)?;
                    self.step(1);
                    if !seen.insert(target) {
                        return Err(self.err(
                            &m.span(),
                            &field,
                            format!("monitor target {target} is listed twice"),
                        ));
                    }
                    targets.push(target);
                }
                targets
            }
        };
        let probe_source = match &g.probe_source {
            None => None,
            Some(p) => {
                if !is_icmp {
                    return Err(self.err(
                        &p.span(),
                        &f("probe_source"),
                        format!(
                            "probe_source applies only to health_source = \"icmp\"; gateway \
                             {name:?} gets its health from {}; remove probe_source",
                            source_word(&source)
                        ),
                    ));
                }
                let a = self.host_addr(p, &f("probe_source"))?;
                self.same_family(a, family, &name, &p.span(), &f("probe_source"))?;
                Some(a)
            }
        };
        let probe_interval = self.opt_duration(
            g.probe_interval.as_ref(),
            &f("probe_interval"),
            Duration::from_millis(500),
            Bounds { min: Duration::from_millis(10), max: MINUTE },
        )?;
        let timeout = self.setting_duration(
            g.probe_timeout.as_ref(),
            &f("probe_timeout"),
            Duration::from_secs(1),
            Bounds { min: MS, max: MINUTE },
        )?;
        let health = self.health(g, &at, &name, is_icmp, &timeout)?;
        let (states, spans) = self.states(g, &table, &at, &name, family)?;
        let gateway = Gateway {
            name,
            interface,
            address,
            family,
            monitor,
            probe_source,
            source,
            probe_interval,
            probe_timeout: timeout.value,
            health,
            states,
        };
        Ok((gateway, GatewaySpans { table, name: name_span, states: spans }))
    }

    fn health_source(
        &self,
        g: &RawGateway,
        name: &str,
        at: &str,
    ) -> Result<HealthSource, PolicyError> {
        let kind = g.health_source.as_ref();
        let source = match kind.map(|k| k.get_ref().as_str()) {
            None | Some("icmp") => HealthSource::Icmp,
            Some("external") => HealthSource::External,
            Some("dpinger") => match &g.dpinger_socket {
                Some(s) => HealthSource::Dpinger {
                    socket: self.path(
                        s,
                        &format!("{at}.dpinger_socket"),
                        "/var/run/dpinger_WAN1~198.51.100.1~198.51.100.254.sock",
                    )?,
                },
                None => {
                    let span = kind.map_or(0..0, Spanned::span);
                    return Err(self.err(
                        &span,
                        &format!("{at}.health_source"),
                        format!(
                            "gateway {name:?} reads dpinger but names no socket: add \
                             dpinger_socket = \"/var/run/dpinger_{name}~SOURCE~TARGET.sock\" \
                             (pfSense/OPNsense keep them in /var/run)"
                        ),
                    ));
                }
            },
            Some(other) => {
                let span = kind.map_or(0..0, Spanned::span);
                return Err(self.err(
                    &span,
                    &format!("{at}.health_source"),
                    format!(
                        "unknown health source {other:?}; expected \"icmp\" (statecull probes), \
                         \"dpinger\" (with dpinger_socket) or \"external\" (only `statecull \
                         gateway NAME down|up`)"
                    ),
                ));
            }
        };
        if let (Some(s), false) =
            (&g.dpinger_socket, matches!(source, HealthSource::Dpinger { .. }))
        {
            return Err(self.err(
                &s.span(),
                &format!("{at}.dpinger_socket"),
                "dpinger_socket is read only with health_source = \"dpinger\"; add that, or \
                 remove dpinger_socket",
            ));
        }
        Ok(source)
    }

    fn health(
        &self,
        g: &RawGateway,
        at: &str,
        name: &str,
        is_icmp: bool,
        timeout: &Setting<Duration>,
    ) -> Result<HealthParams, PolicyError> {
        let f = |key: &str| format!("{at}.{key}");
        let window = self.opt_count(g.window.as_ref(), &f("window"), 20, 1, MAX_WINDOW)?;
        let min_samples =
            self.opt_count(g.min_samples.as_ref(), &f("min_samples"), 5.min(window), 1, window)?;
        let loss_down = self.setting_percent(g.loss_down.as_ref(), &f("loss_down"), 20.0)?;
        let loss_degraded =
            self.setting_percent(g.loss_degraded.as_ref(), &f("loss_degraded"), 10.0)?;
        let loss_up = self.setting_percent(g.loss_up.as_ref(), &f("loss_up"), 5.0)?;
        let why_loss = "a gateway is down at or above loss_down, degraded at or above \
                        loss_degraded, and up again at or below loss_up, so loss_up < \
                        loss_degraded <= loss_down";
        self.ordered(&loss_up, &loss_degraded, true, fmt_pct, why_loss)?;
        self.ordered(&loss_degraded, &loss_down, false, fmt_pct, why_loss)?;

        let latency = Bounds { min: MS, max: MINUTE };
        let lat_degraded = self.setting_duration(
            g.latency_degraded.as_ref(),
            &f("latency_degraded"),
            Duration::from_millis(500),
            latency,
        )?;
        let lat_up = self.setting_duration(
            g.latency_up.as_ref(),
            &f("latency_up"),
            Duration::from_millis(250),
            latency,
        )?;
        self.ordered(
            &lat_up,
            &lat_degraded,
            true,
            |d| fmt_duration(*d),
            "a gateway is degraded at or above latency_degraded and up again at or below \
             latency_up, so latency_up < latency_degraded",
        )?;
        if is_icmp && lat_degraded.value >= timeout.value {
            // An answer slower than the timeout is counted as lost, so such a latency is
            // never measured: the threshold would silently never fire.
            let (blame, field) = match (&lat_degraded.span, &timeout.span) {
                (Some(s), _) => (s.clone(), lat_degraded.field.as_str()),
                (None, Some(s)) => (s.clone(), timeout.field.as_str()),
                (None, None) => (0..0, at),
            };
            return Err(self.err(
                &blame,
                field,
                format!(
                    "gateway {name:?}: latency_degraded ({}{}) must be below probe_timeout \
                     ({}{}): a slower answer counts as lost, so that latency is never seen",
                    fmt_duration(lat_degraded.value),
                    lat_degraded.origin(),
                    fmt_duration(timeout.value),
                    timeout.origin(),
                ),
            ));
        }
        let hold_down = self.opt_duration(
            g.hold_down.as_ref(),
            &f("hold_down"),
            Duration::from_secs(10),
            Bounds { min: Duration::ZERO, max: HOUR },
        )?;
        let damping = self.damping(g.damping.as_ref(), at)?;
        Ok(HealthParams {
            window,
            min_samples,
            loss_down_pct: loss_down.value,
            loss_up_pct: loss_up.value,
            latency_degraded: lat_degraded.value,
            latency_up: lat_up.value,
            loss_degraded_pct: loss_degraded.value,
            hold_down,
            damping,
        })
    }

    fn damping(
        &self,
        raw: Option<&Spanned<RawDamping>>,
        at: &str,
    ) -> Result<FlapDamping, PolicyError> {
        let d = raw.map(Spanned::get_ref);
        let f = |key: &str| format!("{at}.damping.{key}");
        let enabled = d.and_then(|d| d.enabled.as_ref()).is_none_or(|e| *e.get_ref());
        let penalty =
            self.setting_number(d.and_then(|d| d.penalty.as_ref()), &f("penalty"), 1000.0)?;
        let suppress = self.setting_number(
            d.and_then(|d| d.suppress_above.as_ref()),
            &f("suppress_above"),
            2000.0,
        )?;
        let reuse =
            self.setting_number(d.and_then(|d| d.reuse_below.as_ref()), &f("reuse_below"), 750.0)?;
        let max =
            self.setting_number(d.and_then(|d| d.max_penalty.as_ref()), &f("max_penalty"), 6000.0)?;
        for s in [&penalty, &suppress] {
            if s.value <= 0.0 {
                let span = s.span.clone().unwrap_or(0..0);
                return Err(self.err(&span, &s.field, "must be above 0"));
            }
        }
        let why = "a gateway is suppressed once its penalty is above suppress_above and \
                   reused once it decays below reuse_below; the penalty never exceeds \
                   max_penalty, so reuse_below < suppress_above <= max_penalty";
        let fmt = |v: &f64| fmt_num(*v);
        self.ordered(&reuse, &suppress, true, fmt, why)?;
        self.ordered(&suppress, &max, false, fmt, why)?;
        let half_life = self.opt_duration(
            d.and_then(|d| d.half_life.as_ref()),
            &f("half_life"),
            MINUTE,
            Bounds { min: Duration::from_secs(1), max: HOUR },
        )?;
        Ok(FlapDamping {
            enabled,
            penalty: penalty.value,
            suppress_above: suppress.value,
            reuse_below: reuse.value,
            half_life,
            max_penalty: max.value,
        })
    }

    fn states(
        &self,
        g: &RawGateway,
        table: &Range<usize>,
        at: &str,
        name: &str,
        family: AddressFamily,
    ) -> Result<(StateMatch, RecogniserSpans), PolicyError> {
        let field = format!("{at}.states");
        let Some(raw) = &g.states else {
            return Err(self.err(
                table,
                &field,
                format!(
                    "gateway {name:?} has no [gateway.states] table: statecull must know how to \
                     recognise its states; set at least one of rt_addr (pf route-to gateway), \
                     mark (conntrack mark) or nat_addr (its SNAT addresses)"
                ),
            ));
        };
        let s = raw.get_ref();
        let f = |key: &str| format!("{field}.{key}");
        let mut spans = RecogniserSpans::default();
        let rt_addr = match &s.rt_addr {
            None => None,
            Some(r) => {
                let a = self.host_addr(r, &f("rt_addr"))?;
                self.same_family(a, family, name, &r.span(), &f("rt_addr"))?;
                spans.rt_addr = Some((r.span(), f("rt_addr")));
                Some(a)
            }
        };
        let mark = match &s.mark {
            None => None,
            Some(m) => {
                spans.mark = Some((m.span(), f("mark")));
                Some(self.mark(m, &f("mark"))?)
            }
        };
        let mut nat_addr: Vec<IpAddr> = Vec::new();
        let mut seen = HashSet::new();
        if let Some(list) = &s.nat_addr {
            if list.get_ref().is_empty() {
                return Err(self.err(
                    &list.span(),
                    &f("nat_addr"),
                    "nat_addr is empty; list the gateway's SNAT addresses, or leave nat_addr out",
                ));
            }
            for (k, a) in list.get_ref().iter().enumerate() {
                let key = format!("{}[{}]", f("nat_addr"), k + 1);
                let addr = self.host_addr(a, &key)?;
                self.step(1);
                if !seen.insert(addr) {
                    return Err(self.err(
                        &a.span(),
                        &key,
                        format!("NAT address {addr} is listed twice"),
                    ));
                }
                spans.nat_addr.push((a.span(), key));
                nat_addr.push(addr);
            }
        }
        let interface = match &s.interface {
            None => None,
            Some(i) => {
                if nat_addr.is_empty() {
                    return Err(self.err(
                        &i.span(),
                        &f("interface"),
                        "states.interface narrows the nat_addr selectors (pf), so it needs \
                         nat_addr; add nat_addr = [\"...\"] or remove interface",
                    ));
                }
                Some(self.ifname(i, &f("interface"))?)
            }
        };
        if rt_addr.is_none() && mark.is_none() && nat_addr.is_empty() {
            return Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "gateway {name:?}: [gateway.states] sets no recogniser; set at least one of \
                     rt_addr (pf route-to gateway), mark (conntrack mark, e.g. \"0x1/0xff\") or \
                     nat_addr (its SNAT addresses)"
                ),
            ));
        }
        Ok((StateMatch { rt_addr, mark, nat_addr, interface }, spans))
    }

    /// Two gateways whose recognisers overlap would have each other's states killed: the
    /// one thing statecull must never do (a healthy link's calls dropped).
    ///
    /// `index` holds the recognisers of the `earlier` gateways; it answers which earlier
    /// gateway is the first to conflict in a few lookups, so the whole policy is checked in
    /// linear time instead of comparing every pair. The message is the one a pairwise scan
    /// in file order would give (the first conflicting earlier gateway; rt_addr, then mark,
    /// then the NAT addresses in the order written).
    fn recogniser_conflicts(
        &self,
        gateway: &Gateway,
        spans: &GatewaySpans,
        earlier: &[Gateway],
        earlier_spans: &[GatewaySpans],
        index: &mut Recognisers,
    ) -> Result<(), PolicyError> {
        let first = index.first_conflict(&gateway.states, &self.steps);
        if let Some(j) = first
            && let (Some(other), Some(other_spans)) = (earlier.get(j), earlier_spans.get(j))
            && let Some(e) = self.pair_conflict(gateway, spans, other, other_spans)
        {
            return Err(e);
        }
        index.insert(&gateway.states, earlier.len(), &self.steps);
        Ok(())
    }

    /// The conflict between `gateway` and one earlier gateway, if they conflict.
    fn pair_conflict(
        &self,
        gateway: &Gateway,
        spans: &GatewaySpans,
        other: &Gateway,
        other_spans: &GatewaySpans,
    ) -> Option<PolicyError> {
        let other_line = || self.line(other_spans.table.start);
        if let (Some(a), Some(b), Some((span, field))) =
            (gateway.states.rt_addr, other.states.rt_addr, &spans.states.rt_addr)
            && a == b
        {
            return Some(self.err(
                span,
                field,
                format!(
                    "gateway {:?} has the same rt_addr {a} as gateway {:?} (line {}), so \
                     killing one's states would kill the other's; recognise them by nat_addr + \
                     interface instead",
                    gateway.name,
                    other.name,
                    other_line()
                ),
            ));
        }
        if let (Some(a), Some(b), Some((span, field))) =
            (gateway.states.mark, other.states.mark, &spans.states.mark)
            && marks_overlap(a, b)
        {
            return Some(self.err(
                span,
                field,
                format!(
                    "gateway {:?} mark {a} overlaps gateway {:?}'s mark {b} (line {}): a \
                     connection marked {:#x} matches both, so killing one's states would kill \
                     the other's; give each gateway its own mark bits (e.g. 0x1/0xff, 0x2/0xff)",
                    gateway.name,
                    other.name,
                    other_line(),
                    a.value | b.value
                ),
            ));
        }
        if nat_told_apart(gateway.states.interface.as_ref(), other.states.interface.as_ref()) {
            return None;
        }
        let (addr, (span, field)) = gateway
            .states
            .nat_addr
            .iter()
            .zip(&spans.states.nat_addr)
            .find(|(addr, _)| other.states.nat_addr.contains(addr))?;
        Some(self.err(
            span,
            field,
            format!(
                "gateway {:?} shares NAT address {addr} with gateway {:?} (line {}), so killing \
                 one's states would kill the other's; give each its own address, or set a \
                 different states.interface on both (pf)",
                gateway.name,
                other.name,
                other_line()
            ),
        ))
    }

    fn group(
        &self,
        index: usize,
        raw: &Spanned<RawGroup>,
        gateways: &[Gateway],
        by_name: &HashMap<&str, usize>,
    ) -> Result<(Group, Range<usize>), PolicyError> {
        let at = format!("group[{}]", index + 1);
        let g = raw.get_ref();
        let (name, name_span) =
            self.name(g.name.as_ref(), &raw.span(), &at, "group", "failover")?;
        let members_field = format!("{at}.members");
        let Some(list) = g.members.as_ref().filter(|l| !l.get_ref().is_empty()) else {
            let span = g.members.as_ref().map_or_else(|| raw.span(), Spanned::span);
            return Err(self.err(
                &span,
                &members_field,
                format!(
                    "group {name:?} has no members; list them with tiers (1 is best), e.g. \
                     members = [{{ gateway = \"WAN1\", tier = 1 }}, {{ gateway = \"WAN2\", tier \
                     = 2 }}]"
                ),
            ));
        };
        let mut members: Vec<GroupMember> = Vec::with_capacity(list.get_ref().len());
        let mut seen: HashMap<usize, usize> = HashMap::new();
        for (k, m) in list.get_ref().iter().enumerate() {
            let at_m = format!("{members_field}[{}]", k + 1);
            let raw_m = m.get_ref();
            let Some(gw) = &raw_m.gateway else {
                return Err(self.err(
                    &m.span(),
                    &at_m,
                    "a member needs a gateway, e.g. { gateway = \"WAN1\", tier = 1 }",
                ));
            };
            let gw_field = format!("{at_m}.gateway");
            let wanted = gw.get_ref();
            self.step(1);
            let Some(&gi) = by_name.get(wanted.as_str()) else {
                let hint = gateways
                    .iter()
                    .find(|x| x.name.eq_ignore_ascii_case(wanted))
                    .map(|x| format!("; did you mean {:?}? names are case-sensitive", x.name))
                    .unwrap_or_default();
                return Err(self.err(
                    &gw.span(),
                    &gw_field,
                    format!(
                        "unknown gateway {wanted:?} in group {name:?} (gateways: {}){hint}",
                        names_list(gateways.iter().map(|x| x.name.as_str()))
                    ),
                ));
            };
            if let Some(first) = seen.insert(gi, k) {
                return Err(self.err(
                    &gw.span(),
                    &gw_field,
                    format!(
                        "gateway {wanted:?} is listed twice in group {name:?} (members[{}] and \
                         members[{}]); a gateway has one tier per group",
                        first + 1,
                        k + 1
                    ),
                ));
            }
            let Some(tier) = &raw_m.tier else {
                return Err(self.err(
                    &m.span(),
                    &at_m,
                    format!(
                        "member {wanted:?} needs a tier: {{ gateway = {wanted:?}, tier = 1 }} \
                         (1 is best; equal tiers share load)"
                    ),
                ));
            };
            let tier = self.integer(tier, &format!("{at_m}.tier"), 1, i64::from(MAX_TIER))?;
            let tier = u8::try_from(tier).map_err(|_| {
                self.err(&m.span(), &format!("{at_m}.tier"), "tier out of range 1..=15")
            })?;
            members.push(GroupMember { gateway: gi, tier });
        }
        // Failover moves a connection to another gateway of the same family; a group that
        // mixes families would "fail over" IPv4 traffic to an IPv6-only gateway.
        let mut families = members
            .iter()
            .zip(list.get_ref())
            .filter_map(|(member, raw_m)| gateways.get(member.gateway).map(|g| (g, raw_m)));
        if let Some((first, _)) = families.next() {
            for (g, raw_m) in families {
                if g.family != first.family {
                    let span = raw_m
                        .get_ref()
                        .gateway
                        .as_ref()
                        .map_or_else(|| raw_m.span(), Spanned::span);
                    return Err(self.err(
                        &span,
                        &members_field,
                        format!(
                            "group {name:?} mixes families: {} is {} but {} is {}; connections \
                             cannot fail over between IPv4 and IPv6, so make one group per family",
                            first.name,
                            family_word(first.family),
                            g.name,
                            family_word(g.family)
                        ),
                    ));
                }
            }
        }
        // Stable: equal tiers keep file order, as the model documents.
        members.sort_by_key(|m| m.tier);
        let on_down = match &g.on_down {
            None => OnDown::Gateway,
            Some(v) => match v.get_ref().as_str() {
                "none" => OnDown::None,
                "gateway" => OnDown::Gateway,
                "all" => OnDown::All,
                other => {
                    return Err(self.err(
                        &v.span(),
                        &format!("{at}.on_down"),
                        format!(
                            "unknown on_down {other:?}; expected \"gateway\" (kill the failed \
                             gateway's states), \"none\" (kill nothing) or \"all\" (kill the \
                             whole table)"
                        ),
                    ));
                }
            },
        };
        let on_recovery = match &g.on_recovery {
            None => OnRecovery::Keep,
            Some(v) => match v.get_ref().as_str() {
                "keep" => OnRecovery::Keep,
                "kill" => OnRecovery::Kill,
                "kill-unprotected" => OnRecovery::KillUnprotected,
                other => {
                    return Err(self.err(
                        &v.span(),
                        &format!("{at}.on_recovery"),
                        format!(
                            "unknown on_recovery {other:?}; expected \"keep\" (leave connections \
                             on the lower tier), \"kill\" (move them back now) or \
                             \"kill-unprotected\" (move them back, sparing [[protect]] flows)"
                        ),
                    ));
                }
            },
        };
        Ok((Group { name, members, on_down, on_recovery }, name_span))
    }

    fn protect(
        &self,
        index: usize,
        raw: &Spanned<RawProtect>,
    ) -> Result<(ProtectedFlow, Range<usize>), PolicyError> {
        let at = format!("protect[{}]", index + 1);
        let p = raw.get_ref();
        let (name, name_span) =
            self.name(p.name.as_ref(), &raw.span(), &at, "protected flow", "sip")?;
        let proto = match &p.proto {
            None => None,
            Some(v) => Some(self.proto(v, &format!("{at}.proto"))?),
        };
        let mut ports = Vec::new();
        if let Some(list) = &p.ports {
            let field = format!("{at}.ports");
            if list.get_ref().is_empty() {
                return Err(self.err(
                    &list.span(),
                    &field,
                    "ports is empty; list ports or \"A-B\" ranges, or leave ports out to match \
                     any port",
                ));
            }
            if let Some(n) = proto.filter(|n| !ipproto::has_ports(*n)) {
                return Err(self.err(
                    &list.span(),
                    &field,
                    format!(
                        "{} has no ports; ports apply to tcp, udp, sctp, dccp and udplite",
                        ipproto::name(n)
                    ),
                ));
            }
            for (k, v) in list.get_ref().iter().enumerate() {
                ports.push(self.port_range(v, &format!("{field}[{}]", k + 1))?);
            }
        }
        let mut prefixes = Vec::new();
        if let Some(list) = &p.prefixes {
            let field = format!("{at}.prefixes");
            if list.get_ref().is_empty() {
                return Err(self.err(
                    &list.span(),
                    &field,
                    "prefixes is empty; list prefixes like \"192.0.2.0/24\", or leave prefixes \
                     out to match any address",
                ));
            }
            for (k, v) in list.get_ref().iter().enumerate() {
                let prefix = v.get_ref().parse::<Prefix>().map_err(|e| {
                    self.err(
                        &v.span(),
                        &format!("{field}[{}]", k + 1),
                        format!(
                            "{:?} is not a prefix: {}; expected e.g. \"192.0.2.0/24\" or \
                             \"2001:db8::/32\"",
                            v.get_ref(),
                            e.why()
                        ),
                    )
                })?;
                prefixes.push(prefix);
            }
        }
        if proto.is_none() && ports.is_empty() && prefixes.is_empty() {
            return Err(self.err(
                &raw.span(),
                &at,
                format!(
                    "protected flow {name:?} gives no proto, ports or prefixes, so it would \
                     protect every connection; narrow it, e.g. proto = \"udp\", ports = [5060]"
                ),
            ));
        }
        Ok((ProtectedFlow { name, proto, ports, prefixes }, name_span))
    }

    // --- scalar helpers -----------------------------------------------------------------

    fn name(
        &self,
        raw: Option<&Spanned<String>>,
        table: &Range<usize>,
        at: &str,
        what: &str,
        example: &str,
    ) -> Result<(String, Range<usize>), PolicyError> {
        let Some(raw) = raw else {
            return Err(self.err(
                table,
                at,
                format!("every {what} needs a name, e.g. name = {example:?}"),
            ));
        };
        let field = format!("{at}.name");
        let name = raw.get_ref();
        let why = if name.is_empty() {
            Some("is empty")
        } else if name.chars().count() > MAX_NAME_LEN {
            Some("is longer than 32 characters")
        } else if name.starts_with('-') {
            Some("starts with '-' (it would read as an option on the command line)")
        } else if !name.chars().all(|c| c.is_alphanumeric() || "_-.:@+".contains(c)) {
            Some("has a character other than letters, digits and _ - . : @ +")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "{what} name {name:?} {why}; a name uses letters, digits and _ - . : @ +, at \
                     most {MAX_NAME_LEN} characters, e.g. {example:?}"
                ),
            )),
            None => Ok((name.clone(), raw.span())),
        }
    }

    fn ifname(&self, raw: &Spanned<String>, field: &str) -> Result<IfName, PolicyError> {
        raw.get_ref().parse::<IfName>().map_err(|e| {
            self.err(
                &raw.span(),
                field,
                format!("{}; expected an interface name like \"em1\" or \"eth0\"", e.why()),
            )
        })
    }

    fn path(
        &self,
        raw: &Spanned<String>,
        field: &str,
        example: &str,
    ) -> Result<String, PolicyError> {
        let p = raw.get_ref();
        if !p.starts_with('/') || p.contains('\0') {
            return Err(self.err(
                &raw.span(),
                field,
                format!("{p:?} is not an absolute path; expected e.g. {example:?}"),
            ));
        }
        Ok(p.clone())
    }

    /// One unicast address (no prefix, no zone, not 0.0.0.0/::, not multicast).
    fn host_addr(&self, raw: &Spanned<String>, field: &str) -> Result<IpAddr, PolicyError> {
        let text = raw.get_ref();
        let addr = text.parse::<IpAddr>().map_err(|_| {
            let hint = if text.contains('/') {
                " (a single address is wanted here, not a prefix)"
            } else if text.contains('%') {
                " (write it without %zone: the gateway's interface is the zone)"
            } else {
                ""
            };
            self.err(
                &raw.span(),
                field,
                format!(
                    "{text:?} is not an IP address{hint}; expected e.g. \"198.51.100.254\" or \
                     \"2001:db8::1\""
                ),
            )
        })?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(self.err(
                &raw.span(),
                field,
                format!("{addr} is not a unicast address; expected a host's address"),
            ));
        }
        Ok(addr)
    }

    fn same_family(
        &self,
        addr: IpAddr,
        family: AddressFamily,
        gateway: &str,
        span: &Range<usize>,
        field: &str,
    ) -> Result<(), PolicyError> {
        if AddressFamily::of(&addr) == family {
            return Ok(());
        }
        Err(self.err(
            span,
            field,
            format!(
                "{addr} is {} but gateway {gateway:?} is {} (its address); use an {} address, \
                 or declare a separate gateway for the other family",
                family_word(AddressFamily::of(&addr)),
                family_word(family),
                family_word(family)
            ),
        ))
    }

    fn mark(&self, raw: &Spanned<Value>, field: &str) -> Result<MarkMatch, PolicyError> {
        let expected = "expected a conntrack mark like \"0x1/0xff\" (value/mask, decimal or 0x \
                        hex; the mask defaults to 0xffffffff)";
        let mark = match raw.get_ref() {
            Value::String(s) => s
                .parse::<MarkMatch>()
                .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why())))?,
            Value::Integer(n) => {
                let value = u32::try_from(*n).map_err(|_| {
                    self.err(&raw.span(), field, format!("{n} is not a 32-bit mark; {expected}"))
                })?;
                MarkMatch { value, mask: u32::MAX }
            }
            other => {
                return Err(self.err(
                    &raw.span(),
                    field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        mark.check()
            .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why())))?;
        Ok(mark)
    }

    fn proto(&self, raw: &Spanned<Value>, field: &str) -> Result<u8, PolicyError> {
        let expected = "expected tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number \
                        1..=255";
        match raw.get_ref() {
            Value::String(s) => ipproto::parse(s).map_err(|_| {
                self.err(&raw.span(), field, format!("unknown protocol {s:?}; {expected}"))
            }),
            Value::Integer(n) => u8::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| self.err(&raw.span(), field, format!("{n}: {expected}"))),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    fn port_range(&self, raw: &Spanned<Value>, field: &str) -> Result<PortRange, PolicyError> {
        let expected =
            "expected a port 0..=65535 or a range \"A-B\" (e.g. 5060 or \"10000-20000\")";
        match raw.get_ref() {
            Value::Integer(n) => u16::try_from(*n).map(PortRange::single).map_err(|_| {
                self.err(&raw.span(), field, format!("{n} is not a port; {expected}"))
            }),
            Value::String(s) => s
                .parse::<PortRange>()
                .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why()))),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    fn integer(
        &self,
        raw: &Spanned<Value>,
        field: &str,
        min: i64,
        max: i64,
    ) -> Result<i64, PolicyError> {
        let expected = format!("expected a whole number {min}..={max}");
        match raw.get_ref() {
            Value::Integer(n) if (min..=max).contains(n) => Ok(*n),
            Value::Integer(n) => {
                Err(self.err(&raw.span(), field, format!("{n} is out of range; {expected}")))
            }
            Value::String(s) if s.trim().parse::<i64>().is_ok() => Err(self.err(
                &raw.span(),
                field,
                format!("{s:?} is a string; write the number without quotes ({expected})"),
            )),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    fn opt_count(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, PolicyError> {
        let Some(raw) = raw else { return Ok(default) };
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let n = self.integer(raw, field, to_i64(min), to_i64(max))?;
        usize::try_from(n).map_err(|_| self.err(&raw.span(), field, "out of range"))
    }

    fn setting_number(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: f64,
    ) -> Result<Setting<f64>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a number 0..=1000000000";
        #[allow(clippy::cast_precision_loss)] // integers up to 1e9 are exact in an f64
        let value = match raw.get_ref() {
            Value::Integer(n) => *n as f64,
            Value::Float(x) => *x,
            other => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        if !(0.0..=1e9).contains(&value) {
            return Err(self.err(
                &raw.span(),
                &field,
                format!("{value} is out of range; {expected}"),
            ));
        }
        Ok(Setting { value, span: Some(raw.span()), field })
    }

    fn setting_percent(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: f64,
    ) -> Result<Setting<f64>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a percentage like \"20%\" or a number 0..=100";
        #[allow(clippy::cast_precision_loss)] // checked to be 0..=100 below
        let value = match raw.get_ref() {
            Value::Integer(n) => Some(*n as f64),
            Value::Float(x) => Some(*x),
            Value::String(s) => s
                .trim()
                .strip_suffix('%')
                .map(str::trim_end)
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .and_then(|n| n.parse::<f64>().ok()),
            _ => None,
        };
        match value {
            Some(v) if (0.0..=100.0).contains(&v) => {
                Ok(Setting { value: v, span: Some(raw.span()), field })
            }
            Some(v) => Err(self.err(
                &raw.span(),
                &field,
                format!("{}% is out of range; {expected}", fmt_num(v)),
            )),
            None => Err(self.err(
                &raw.span(),
                &field,
                format!("{} is not a percentage; {expected}", raw.get_ref()),
            )),
        }
    }

    fn opt_duration(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: Duration,
        bounds: Bounds,
    ) -> Result<Duration, PolicyError> {
        Ok(self.setting_duration(raw, field, default, bounds)?.value)
    }

    fn setting_duration(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: Duration,
        bounds: Bounds,
    ) -> Result<Setting<Duration>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a duration like \"500ms\", \"2s\", \"1.5s\" or \"1m\"";
        let value = match raw.get_ref() {
            Value::String(s) => parse_duration(s).map_err(|why| {
                self.err(&raw.span(), &field, format!("{s:?} is not a duration: {why}; {expected}"))
            })?,
            Value::Integer(n) => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!(
                        "a bare number has no unit; write a quoted duration such as \"{n}s\" or \
                         \"{n}ms\""
                    ),
                ));
            }
            other => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        if value < bounds.min || value > bounds.max {
            let range = if bounds.min.is_zero() {
                format!("at most {}", fmt_duration(bounds.max))
            } else {
                format!("between {} and {}", fmt_duration(bounds.min), fmt_duration(bounds.max))
            };
            return Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "{} is out of range; {} must be {range}",
                    fmt_duration(value),
                    short_key(&field)
                ),
            ));
        }
        Ok(Setting { value, span: Some(raw.span()), field })
    }

    /// Check `low < high` (or `low <= high` when `strict` is false), blaming whichever of
    /// the two the operator wrote (the later one when both were written).
    fn ordered<T: PartialOrd>(
        &self,
        low: &Setting<T>,
        high: &Setting<T>,
        strict: bool,
        show: impl Fn(&T) -> String,
        why: &str,
    ) -> Result<(), PolicyError> {
        let ok = if strict { low.value < high.value } else { low.value <= high.value };
        if ok {
            return Ok(());
        }
        let later_is_high = match (&low.span, &high.span) {
            (Some(l), Some(h)) => h.start >= l.start,
            (None, Some(_)) => true,
            _ => false,
        };
        let blamed = if later_is_high { high } else { low };
        let span = blamed.span.clone().unwrap_or(0..0);
        let relation = if strict { "below" } else { "at most" };
        Err(self.err(
            &span,
            &blamed.field,
            format!(
                "{} ({}{}) must be {relation} {} ({}{}): {why}",
                short_key(&low.field),
                show(&low.value),
                low.origin(),
                short_key(&high.field),
                show(&high.value),
                high.origin(),
            ),
        ))
    }
}

/// Whether two mark matches can both match one connection mark: they agree on every bit
/// both masks look at.
fn marks_overlap(a: MarkMatch, b: MarkMatch) -> bool {
    (a.value ^ b.value) & a.mask & b.mask == 0
}

/// The same NAT address on two interfaces can still be told apart on pf.
fn nat_told_apart(a: Option<&IfName>, b: Option<&IfName>) -> bool {
    matches!((a, b), (Some(x), Some(y)) if x != y)
}

/// The recognisers of the gateways loaded so far, indexed to find the first (in file order)
/// gateway that conflicts with a new one without comparing it to every earlier gateway.
/// Each map keeps the earliest gateway for its key.
#[derive(Default)]
struct Recognisers {
    rt_addr: HashMap<IpAddr, usize>,
    /// By mask.
    marks: HashMap<u32, MarkGroup>,
    nat_addr: HashMap<IpAddr, NatOwners>,
}

/// The gateways whose marks use one mask.
#[derive(Default)]
struct MarkGroup {
    /// `(value, gateway)` in file order.
    entries: Vec<(u32, usize)>,
    /// For each common mask `C` (a new mark's mask & this group's mask) asked about:
    /// `value & C` → earliest gateway. Two marks overlap exactly when their values agree
    /// under the common mask, so one lookup per group answers for the whole group. Built
    /// on first use and kept up to date, so the cost is O(gateways × distinct masks); real
    /// policies use one or two masks.
    by_common: HashMap<u32, HashMap<u32, usize>>,
}

/// The gateways that list one NAT address.
struct NatOwners {
    first: usize,
    /// The first without states.interface (conflicts with every later owner).
    first_without_interface: Option<usize>,
    /// The first per states.interface (conflicts with later owners on that interface or
    /// without one).
    first_on: HashMap<IfName, usize>,
}

impl Recognisers {
    /// The earliest gateway whose recognisers conflict with `states`.
    fn first_conflict(&mut self, states: &StateMatch, steps: &Cell<u64>) -> Option<usize> {
        let count = |n: usize| steps.set(steps.get().saturating_add(n as u64));
        let mut first: Option<usize> = None;
        let mut found = |j: usize| first = Some(first.map_or(j, |f| f.min(j)));
        if let Some(j) = states.rt_addr.and_then(|a| self.rt_addr.get(&a)) {
            count(1);
            found(*j);
        }
        if let Some(a) = states.mark {
            for (mask, group) in &mut self.marks {
                count(1);
                let common = a.mask & mask;
                let by_value = group.by_common.entry(common).or_insert_with(|| {
                    count(group.entries.len());
                    let mut m = HashMap::with_capacity(group.entries.len());
                    for (value, j) in &group.entries {
                        m.entry(value & common).or_insert(*j);
                    }
                    m
                });
                if let Some(j) = by_value.get(&(a.value & common)) {
                    found(*j);
                }
            }
        }
        for addr in &states.nat_addr {
            count(1);
            let Some(owners) = self.nat_addr.get(addr) else { continue };
            match &states.interface {
                None => found(owners.first),
                Some(i) => {
                    owners.first_without_interface.into_iter().for_each(&mut found);
                    owners.first_on.get(i).copied().into_iter().for_each(&mut found);
                }
            }
        }
        first
    }

    fn insert(&mut self, states: &StateMatch, gateway: usize, steps: &Cell<u64>) {
        let count = |n: usize| steps.set(steps.get().saturating_add(n as u64));
        if let Some(a) = states.rt_addr {
            count(1);
            self.rt_addr.entry(a).or_insert(gateway);
        }
        if let Some(m) = states.mark {
            let group = self.marks.entry(m.mask).or_default();
            count(1 + group.by_common.len());
            group.entries.push((m.value, gateway));
            for (common, by_value) in &mut group.by_common {
                by_value.entry(m.value & *common).or_insert(gateway);
            }
        }
        for addr in &states.nat_addr {
            count(1);
            let owners = self.nat_addr.entry(*addr).or_insert_with(|| NatOwners {
                first: gateway,
                first_without_interface: None,
                first_on: HashMap::new(),
            });
            match &states.interface {
                None => {
                    owners.first_without_interface.get_or_insert(gateway);
                }
                Some(i) => {
                    owners.first_on.entry(i.clone()).or_insert(gateway);
                }
            }
        }
    }
}

/// Names seen so far of one kind, unique ignoring case (a CLI user types `wan1` for `WAN1`).
struct Names {
    what: &'static str,
    /// Lowercased name → the name as written and the byte offset of its first use (its
    /// line is worked out only for an error).
    seen: HashMap<String, (String, usize)>,
}

impl Names {
    fn new(what: &'static str) -> Self {
        Self { what, seen: HashMap::new() }
    }

    fn insert(
        &mut self,
        loader: &Loader<'_>,
        name: &str,
        span: &Range<usize>,
        field: &str,
    ) -> Result<(), PolicyError> {
        loader.step(1);
        let key = name.to_lowercase();
        if let Some((first, first_offset)) = self.seen.get(&key) {
            let first_line = loader.line(*first_offset);
            let how = if first == name { "is already used" } else { "differs only in case from" };
            return Err(loader.err(
                span,
                field,
                format!(
                    "{} name {name:?} {how}{} on line {first_line}; names must be unique \
                     (ignoring case)",
                    self.what,
                    if first == name { String::new() } else { format!(" {first:?}") },
                ),
            ));
        }
        self.seen.insert(key, (name.to_owned(), span.start));
        Ok(())
    }
}

/// For serde's "unknown field `adress`, expected one of `name`, `address`, ..." message: a
/// "did you mean" for the closest expected key, when one is close (a typo, not a guess).
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let unknown = unknown.to_ascii_lowercase();
    let best = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|candidate| (edit_distance(&unknown, candidate), candidate))
        .min_by_key(|(d, _)| *d)?;
    let limit = if unknown.len() <= 4 { 1 } else { 2 };
    (best.0 <= limit).then(|| format!("; did you mean `{}`?", best.1))
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = i;
        let mut left = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row.get(j + 1).copied().unwrap_or(usize::MAX);
            let cost = if ca == *cb { diagonal } else { diagonal + 1 };
            let value = cost.min(above.saturating_add(1)).min(left + 1);
            diagonal = above;
            if let Some(slot) = row.get_mut(j + 1) {
                *slot = value;
            }
            left = value;
        }
        if let Some(first) = row.first_mut() {
            *first = i + 1;
        }
    }
    row.last().copied().unwrap_or(0)
}

/// `"gateway[1].loss_up"` → `"loss_up"`, for messages that already name the gateway.
fn short_key(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

fn article(type_str: &str) -> &'static str {
    if type_str.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

fn family_word(f: AddressFamily) -> &'static str {
    match f {
        AddressFamily::Ipv4 => "IPv4",
        AddressFamily::Ipv6 => "IPv6",
    }
}

fn source_word(s: &HealthSource) -> &'static str {
    match s {
        HealthSource::Icmp => "ICMP probes",
        HealthSource::Dpinger { .. } => "dpinger",
        HealthSource::External => "external signals",
    }
}

fn names_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` to a duration: a whole number of
/// milliseconds, computed with integers (no float rounding).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    let unit_at = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let unit_ms: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err("it has no unit (ms, s, m or h)".into()),
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (number.contains('.') && frac.is_empty())
    {
        return Err(format!("{number:?} is not a number"));
    }
    if number.len() > 12 {
        return Err("the number is too large".into());
    }
    let parse = |s: &str| if s.is_empty() { Some(0) } else { s.parse::<u64>().ok() };
    let scale = u32::try_from(frac.len()).ok().and_then(|n| 10u64.checked_pow(n));
    let scaled_ms = parse(int).zip(parse(frac)).zip(scale).and_then(|((i, f), scale)| {
        i.checked_mul(scale)?.checked_add(f)?.checked_mul(unit_ms).map(|n| (n, scale))
    });
    let Some((scaled_ms, scale)) = scaled_ms else {
        return Err("the number is too large".into());
    };
    if !scaled_ms.is_multiple_of(scale) {
        return Err("it is not a whole number of milliseconds".into());
    }
    Ok(Duration::from_millis(scaled_ms / scale))
}

/// A duration the way the file writes it (so [`parse_duration`] reads it back): `500ms`,
/// `2s`, `1.5s`, `90s`, `1m`, `1h`.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        return format!("{}h", ms / 3_600_000);
    }
    if ms.is_multiple_of(60_000) {
        return format!("{}m", ms / 60_000);
    }
    if ms.is_multiple_of(1000) {
        return format!("{}s", ms / 1000);
    }
    if ms > 1000 {
        let frac = format!("{:03}", ms % 1000);
        return format!("{}.{}s", ms / 1000, frac.trim_end_matches('0'));
    }
    format!("{ms}ms")
}

fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn fmt_pct(v: &f64) -> String {
    format!("{}%", fmt_num(*v))
}

// ---------------------------------------------------------------------------------------
// Turning a byte offset of a TOML error into the dotted path of the key it points at.

#[derive(Clone)]
enum Seg {
    Key(String),
    /// 1-based.
    Index(usize),
}

/// The dotted path (`gateway[2].states.mark`) of the key or value at `offset`: the node of
/// the (leniently parsed) document that starts last at or before the offset, the deepest
/// one on ties. Serde errors point at a key, a value or a table header, so that node is the
/// one the error is about; for syntax errors it is the last thing that parsed.
fn locate(text: &str, offset: usize) -> Option<String> {
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut best: Option<(usize, Vec<Seg>)> = None;
    let mut path = Vec::new();
    walk_table(root.get_ref(), &mut path, offset, &mut best);
    let (_, segs) = best?;
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn consider(
    span: &Range<usize>,
    path: &[Seg],
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    if span.start > offset || path.is_empty() {
        return;
    }
    let better = match best {
        None => true,
        Some((start, p)) => span.start > *start || (span.start == *start && path.len() > p.len()),
    };
    if better {
        *best = Some((span.start, path.to_vec()));
    }
}

fn walk_table(
    table: &DeTable<'_>,
    path: &mut Vec<Seg>,
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        consider(&key.span(), path, offset, best);
        walk_value(value, path, offset, best);
        path.pop();
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    path: &mut Vec<Seg>,
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    consider(&value.span(), path, offset, best);
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, path, offset, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i + 1));
                walk_value(item, path, offset, best);
                path.pop();
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Explanation.

/// A human explanation of a policy, several lines long, for `statecull check-policy FILE`:
/// each gateway (interface, next hop, how its health is judged, how its states are
/// recognised), each group (members by tier, what happens on down and on recovery),
/// protected flows, routing confirmation, and the [`warnings`] at the end.
pub fn explain(policy: &Policy) -> String {
    explain_counted(policy).0
}

/// [`explain`], also returning the steps its lookups took (see [`parse_counted`]).
#[doc(hidden)]
pub fn explain_counted(policy: &Policy) -> (String, u64) {
    let steps = Cell::new(0);
    let mut out = String::new();
    // Writing to a String cannot fail; the result is ignored on purpose.
    let _ = explain_into(policy, &mut out, &steps);
    (wrap(&out, WRAP_WIDTH), steps.get())
}

fn step(steps: &Cell<u64>, n: usize) {
    steps.set(steps.get().saturating_add(n as u64));
}

/// For each gateway, the groups it is a member of (in file order) with its tier there: one
/// pass over all members, so explaining a policy does not rescan every group per gateway.
fn memberships<'p>(p: &'p Policy, steps: &Cell<u64>) -> Vec<Vec<(&'p Group, u8)>> {
    let mut of = vec![Vec::new(); p.gateways.len()];
    for grp in &p.groups {
        for m in &grp.members {
            step(steps, 1);
            if let Some(list) = of.get_mut(m.gateway) {
                // A gateway counts once per group, with its first tier there.
                let listed = list.last().is_some_and(|(g, _): &(&Group, u8)| std::ptr::eq(*g, grp));
                if !listed {
                    list.push((grp, m.tier));
                }
            }
        }
    }
    of
}

/// Column at which [`explain`] wraps its lines (a terminal, with room to spare).
const WRAP_WIDTH: usize = 100;

/// Wrap every line longer than `width` at spaces, continuing with the line's indent plus
/// two (so a wrapped bullet or sentence stays visibly one item).
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let pad = " ".repeat(indent + 2);
        let mut current = String::new();
        for word in line.split(' ').filter(|w| !w.is_empty()) {
            if current.is_empty() {
                current.push_str(&" ".repeat(indent));
                current.push_str(word);
            } else if current.len() + 1 + word.len() > width {
                out.push_str(&current);
                out.push('\n');
                current = format!("{pad}{word}");
            } else {
                current.push(' ');
                current.push_str(word);
            }
        }
        out.push_str(&current);
        out.push('\n');
    }
    // Callers print it with println!.
    out.truncate(out.trim_end().len());
    out
}

/// Things in a valid policy that are probably not what the operator wants: a group with
/// one member, a gateway in no group, `on_down = "all"`, and similar. One sentence each.
pub fn warnings(policy: &Policy) -> Vec<String> {
    let steps = Cell::new(0);
    warnings_with(policy, &memberships(policy, &steps))
}

fn warnings_with(policy: &Policy, memberships: &[Vec<(&Group, u8)>]) -> Vec<String> {
    let mut w = Vec::new();
    if policy.gateways.len() >= 2 && policy.groups.is_empty() {
        w.push(format!(
            "{} gateways but no [[group]]: statecull will monitor them but never kill a state; \
             add a group to say which gateway backs up which",
            policy.gateways.len()
        ));
    }
    for (i, g) in policy.gateways.iter().enumerate() {
        if !policy.groups.is_empty() && memberships.get(i).is_none_or(Vec::is_empty) {
            w.push(format!(
                "gateway {} is in no group: it is only monitored (status, metrics, events); its \
                 failure kills nothing",
                g.name
            ));
        }
        if g.source == HealthSource::Icmp && g.monitor.iter().all(|m| *m == g.address) {
            w.push(format!(
                "gateway {} monitors only its next hop {}: a failure beyond it (the provider's \
                 network) goes unnoticed; add a monitor target further out",
                g.name, g.address
            ));
        }
        if g.source == HealthSource::External {
            w.push(format!(
                "gateway {} has health_source = \"external\": it changes state only when \
                 something runs `statecull gateway {} down|up`",
                g.name, g.name
            ));
        }
        if g.states.rt_addr.is_some() && g.states.nat_addr.is_empty() && g.states.mark.is_none() {
            w.push(format!(
                "gateway {} is recognised by rt_addr only: states that left by the default route \
                 (no route-to) carry no rt_addr and will be missed; add nat_addr (and interface)",
                g.name
            ));
        }
        if !g.health.damping.enabled {
            w.push(format!(
                "gateway {}: flap damping is off, so a flapping link kills its states at every \
                 flap",
                g.name
            ));
        }
    }
    for grp in &policy.groups {
        let tiers = distinct_tiers(grp);
        if grp.members.len() == 1 {
            w.push(format!(
                "group {} has a single member: it can never fail over (there is no other gateway \
                 to move connections to)",
                grp.name
            ));
        } else if tiers.len() == 1 && grp.on_recovery != OnRecovery::Keep {
            w.push(format!(
                "group {}: all members share tier {}, so there is no better tier to recover to \
                 and on_recovery = \"{}\" never acts",
                grp.name,
                tiers.first().copied().unwrap_or(1),
                on_recovery_word(grp.on_recovery)
            ));
        }
        match grp.on_down {
            OnDown::All => w.push(format!(
                "group {}: on_down = \"all\" kills the whole state table, including the \
                 connections (calls, VPNs, LAN-to-LAN) on the healthy links; \"gateway\" kills \
                 only the failed gateway's states",
                grp.name
            )),
            OnDown::None => w.push(format!(
                "group {}: on_down = \"none\" kills nothing: connections through a dead gateway \
                 hang until their states time out (phones may not re-register)",
                grp.name
            )),
            OnDown::Gateway => {}
        }
        if grp.on_recovery == OnRecovery::KillUnprotected && policy.protected.is_empty() {
            w.push(format!(
                "group {}: on_recovery = \"kill-unprotected\" but the policy has no [[protect]] \
                 flows, so it acts like \"kill\"",
                grp.name
            ));
        }
    }
    if !policy.protected.is_empty()
        && !policy.groups.iter().any(|g| g.on_recovery == OnRecovery::KillUnprotected)
    {
        w.push(
            "[[protect]] flows are spared only by on_recovery = \"kill-unprotected\", and no \
             group uses it"
                .to_owned(),
        );
    }
    let pf_only = policy.gateways.iter().any(|g| {
        (g.states.rt_addr.is_some() || g.states.interface.is_some()) && g.states.mark.is_none()
    });
    if policy.routing.confirm == RoutingConfirm::Rtnetlink && pf_only {
        w.push(
            "routing.confirm = \"rtnetlink\" works on Linux only, but some gateways are \
             recognised the pf way (rt_addr or states.interface, no mark); on FreeBSD use \
             \"signal\" or \"delay\""
                .to_owned(),
        );
    }
    w
}

fn distinct_tiers(g: &Group) -> Vec<u8> {
    let mut tiers: Vec<u8> = g.members.iter().map(|m| m.tier).collect();
    tiers.dedup();
    tiers
}

fn on_recovery_word(r: OnRecovery) -> &'static str {
    match r {
        OnRecovery::Keep => "keep",
        OnRecovery::Kill => "kill",
        OnRecovery::KillUnprotected => "kill-unprotected",
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn explain_into(p: &Policy, out: &mut String, steps: &Cell<u64>) -> std::fmt::Result {
    writeln!(
        out,
        "{}: {}, {}, {}",
        p.source,
        plural(p.gateways.len(), "gateway", "gateways"),
        plural(p.groups.len(), "group", "groups"),
        plural(p.protected.len(), "protected flow", "protected flows"),
    )?;

    writeln!(out, "\nGateways")?;
    let memberships = memberships(p, steps);
    for (g, groups) in p.gateways.iter().zip(&memberships) {
        explain_gateway(g, groups, out)?;
    }

    writeln!(out, "\nGroups")?;
    if p.groups.is_empty() {
        writeln!(out, "  none: gateways are monitored, nothing is ever killed")?;
    }
    // Joined once, not once per group.
    let protected = p.protected.iter().map(|f| f.name.as_str()).collect::<Vec<_>>().join(", ");
    for grp in &p.groups {
        explain_group(p, grp, &protected, out)?;
    }

    writeln!(out, "\nProtected flows (spared when a group's on_recovery is kill-unprotected)")?;
    if p.protected.is_empty() {
        writeln!(out, "  none")?;
    }
    for f in &p.protected {
        writeln!(out, "  {}: {}", f.name, describe_flow(f))?;
    }

    writeln!(out, "\nRouting")?;
    let wait = fmt_duration(p.routing.settle_timeout);
    match p.routing.confirm {
        RoutingConfirm::Rtnetlink => writeln!(
            out,
            "  before killing, wait until rtnetlink shows no default route through the failed \
             gateway (Linux), at most {wait}; past that, kill anyway and report routing as \
             unconfirmed"
        )?,
        RoutingConfirm::Signal => writeln!(
            out,
            "  before killing, wait for the routing manager to signal `statecull gateway NAME \
             down --routed`, at most {wait}; past that, kill anyway and report routing as \
             unconfirmed"
        )?,
        RoutingConfirm::Delay => {
            writeln!(out, "  before killing, wait {wait} for routing to move off the gateway")?;
        }
    }
    if p.routing.sweep_delay.is_zero() {
        writeln!(out, "  no trailing sweep")?;
    } else {
        writeln!(
            out,
            "  {} after the kill, a second sweep catches states created meanwhile (a non-zero \
             count means routing moved late)",
            fmt_duration(p.routing.sweep_delay)
        )?;
    }

    let e = &p.engine;
    if e.broker_socket.is_some()
        || e.control_socket.is_some()
        || e.metrics_listen.is_some()
        || !e.readable_paths.is_empty()
    {
        writeln!(out, "\nEngine")?;
        if let Some(s) = &e.broker_socket {
            writeln!(out, "  broker socket: {s}")?;
        }
        if let Some(s) = &e.control_socket {
            writeln!(out, "  control socket: {s}")?;
        }
        if let Some(a) = &e.metrics_listen {
            writeln!(out, "  metrics: http://{a}/metrics")?;
        }
        if !e.readable_paths.is_empty() {
            writeln!(out, "  may read: {}", e.readable_paths.join(", "))?;
        }
    }

    let warnings = warnings_with(p, &memberships);
    if warnings.is_empty() {
        writeln!(out, "\nNo warnings.")?;
    } else {
        writeln!(out, "\nWarnings")?;
        for w in warnings {
            writeln!(out, "  - {w}")?;
        }
    }
    Ok(())
}

fn explain_gateway(g: &Gateway, groups: &[(&Group, u8)], out: &mut String) -> std::fmt::Result {
    let h = &g.health;
    writeln!(
        out,
        "  {} ({}): next hop {} on {}",
        g.name,
        family_word(g.family),
        g.address,
        g.interface
    )?;
    match &g.source {
        HealthSource::Icmp => {
            let targets = g.monitor.iter().map(ToString::to_string).collect::<Vec<_>>();
            let from = g
                .probe_source
                .map_or_else(|| "the interface's address".to_owned(), |a| a.to_string());
            writeln!(
                out,
                "    health: ICMP echo to {} every {} from {from}; no answer within {} counts \
                 as lost",
                targets.join(", "),
                fmt_duration(g.probe_interval),
                fmt_duration(g.probe_timeout)
            )?;
        }
        HealthSource::Dpinger { socket } => writeln!(
            out,
            "    health: read from dpinger's status socket {socket} every {}",
            fmt_duration(g.probe_interval)
        )?,
        HealthSource::External => writeln!(
            out,
            "    health: external only (`statecull gateway {} down|up`); no probes",
            g.name
        )?,
    }
    writeln!(
        out,
        "    judged over the last {} results (no verdict before {}): down at {} loss or more; \
         degraded at {} loss or {} average latency or more, and up again from degraded at {} \
         loss or less with {} latency or less; a down gateway comes back once its loss has \
         stayed at or below {} for {}",
        h.window,
        h.min_samples,
        fmt_pct(&h.loss_down_pct),
        fmt_pct(&h.loss_degraded_pct),
        fmt_duration(h.latency_degraded),
        fmt_pct(&h.loss_up_pct),
        fmt_duration(h.latency_up),
        fmt_pct(&h.loss_up_pct),
        fmt_duration(h.hold_down),
    )?;
    let d = &h.damping;
    if d.enabled {
        writeln!(
            out,
            "    flap damping: each failure adds {} to a penalty (at most {}) that halves every \
             {}; a failure that takes it above {} holds the gateway down until it falls below {}",
            fmt_num(d.penalty),
            fmt_num(d.max_penalty),
            fmt_duration(d.half_life),
            fmt_num(d.suppress_above),
            fmt_num(d.reuse_below),
        )?;
    } else {
        writeln!(out, "    flap damping: off")?;
    }
    let s = &g.states;
    let mut ways = Vec::new();
    if let Some(a) = s.rt_addr {
        ways.push(format!("route-to gateway (rt_addr) {a} (pf)"));
    }
    if let Some(m) = s.mark {
        ways.push(format!("connection mark {m} (conntrack)"));
    }
    if !s.nat_addr.is_empty() {
        let addrs = s.nat_addr.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        match &s.interface {
            Some(i) => ways.push(format!("NAT address {addrs} on interface {i} (pf)")),
            None => ways.push(format!("NAT address {addrs}")),
        }
    }
    writeln!(out, "    its states are those with: {}", ways.join("; or "))?;
    let groups =
        groups.iter().map(|(grp, tier)| format!("{} (tier {tier})", grp.name)).collect::<Vec<_>>();
    if groups.is_empty() {
        writeln!(out, "    in no group: monitored only")?;
    } else {
        writeln!(out, "    member of: {}", groups.join(", "))?;
    }
    Ok(())
}

/// `protected`: the protected flows' names, joined.
fn explain_group(p: &Policy, grp: &Group, protected: &str, out: &mut String) -> std::fmt::Result {
    writeln!(out, "  {}", grp.name)?;
    for tier in distinct_tiers(grp) {
        let names = grp
            .members
            .iter()
            .filter(|m| m.tier == tier)
            .filter_map(|m| p.gateways.get(m.gateway).map(|g| g.name.as_str()))
            .collect::<Vec<_>>();
        let share = if names.len() > 1 { " (sharing the load)" } else { "" };
        writeln!(out, "    tier {tier}: {}{share}", names.join(", "))?;
    }
    let down = match grp.on_down {
        OnDown::None => {
            "nothing is killed; its connections hang until their states time out".to_owned()
        }
        OnDown::Gateway => "that gateway's states are killed, and no others, so its connections \
                            reconnect through the best member still up; other links' \
                            connections are untouched (nothing is killed while no other member \
                            is up)"
            .to_owned(),
        OnDown::All => {
            "every state of the table is killed, on every link (like pfSense's \"kill all \
             states\")"
                .to_owned()
        }
    };
    writeln!(out, "    when a member goes down: {down}")?;
    let recovery = match grp.on_recovery {
        OnRecovery::Keep => "connections stay on the lower tier until they end; new ones use \
                             the recovered gateway"
            .to_owned(),
        OnRecovery::Kill => {
            "the lower tiers' states are killed, so connections move back at once".to_owned()
        }
        OnRecovery::KillUnprotected if protected.is_empty() => {
            "the lower tiers' states are killed, so connections move back at once (no flow is \
             protected)"
                .to_owned()
        }
        OnRecovery::KillUnprotected => format!(
            "the lower tiers' states are killed, so connections move back at once, except \
             protected flows ({})",
            protected
        ),
    };
    writeln!(out, "    when a better tier recovers: {recovery}")?;
    Ok(())
}

fn describe_flow(f: &ProtectedFlow) -> String {
    let mut parts = Vec::new();
    if let Some(n) = f.proto {
        parts.push(ipproto::name(n).into_owned());
    }
    if !f.ports.is_empty() {
        let ports = f.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let word = if f.ports.len() == 1 && f.ports.iter().all(|r| r.first == r.last) {
            "port"
        } else {
            "ports"
        };
        parts.push(format!("{word} {ports} at either end"));
    }
    if !f.prefixes.is_empty() {
        let prefixes = f.prefixes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        parts.push(format!("either end in {prefixes}"));
    }
    parts.join(", ")
}
