//! The policy file: TOML text to a validated [`Policy`]. (The plain-words explanation for
//! `statecull check-policy FILE` is [`crate::explain`]; it is re-exported here, where
//! callers have always found it.)
//!
//! Parsing happens in two steps. Serde reads the text into "file format" structs that
//! refuse unknown keys (a misspelt key is an error, never silently ignored); then every
//! value is checked and converted into the [`crate::model`] types. Values that are checked
//! after deserialisation keep their byte span ([`toml::Spanned`]) so that every error can
//! name the line. A key the file leaves out takes its value from [`crate::model`] (the
//! `Default` impls, and [`Gateway::DEFAULT_PROBE_INTERVAL`](crate::model::Gateway) and
//! `DEFAULT_PROBE_TIMEOUT`): the loader's code writes no default of its own, and a unit test
//! checks that the defaults the format below documents are those values.
//!
//! One module per concern:
//!
//! * `raw`: the file format as serde reads it;
//! * this module: the entry points, the `Loader` that turns spans into errors, and the
//!   assembly of a policy from its tables;
//! * `settings`: `[engine]` and `[routing]`;
//! * `gateway`: a `[[gateway]]` table, its health source and `[gateway.states]`;
//!   `thresholds`: its health thresholds and flap damping; `conflicts`: recognisers that
//!   would let one gateway's kill take another's states, found in linear time;
//! * `group`: a `[[group]]` and its members; `protect`: a `[[protect]]` flow;
//! * `names`: the syntax and uniqueness of names;
//! * `values`, `duration`: one scalar each (addresses, marks, ports, percentages,
//!   durations, ordered pairs), with messages that teach the right spelling;
//! * `span`: a byte offset to a 1-based line and to the dotted path of the key there;
//! * `words`: values written back as the file writes them, for messages and the
//!   explanation.
//!
//! Loading is linear in the size of the policy: nothing compares every pair of gateways
//! or rescans the text per error; [`parse_counted`] counts the steps so a test can prove it.
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
//! broker_socket = "/run/statecull/broker.sock"   # absolute paths (FreeBSD: /var/run/statecull/)
//! control_socket = "/run/statecull/engine.sock"
//! metrics_listen = "127.0.0.1:9771"              # ADDR:PORT; absent: no metrics listener
//! readable_paths = []                            # absolute paths
//!
//! [routing]                       # optional
//! confirm = "rtnetlink"           # rtnetlink (default) | route-socket | pf-ruleset | signal | delay
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
//! fib = 1                         # optional: FreeBSD routing table of the probes (SO_SETFIB);
//!                                 # 0..=65535; icmp only; ignored on Linux
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
//! nat_addr = ["198.51.100.1", "2001:db8:a::1"]   # SNAT addresses, either family, or
//!                                 # "interface": the gateway interface's own (DHCP, PPPoE)
//! interface = "em1"               # pf: narrows the nat_addr selectors; needs nat_addr
//!
//! [[group]]
//! name = "failover"               # required; unique
//! members = [ { gateway = "WAN1", tier = 1 }, { gateway = "WAN2", tier = 2 } ]
//!                                 # tier 1..=15, 1 is best, equal tiers share load
//! on_down = "gateway"             # none | gateway (default) | all
//! on_recovery = "kill-unprotected"   # keep (default) | kill | kill-unprotected
//! trigger = "loss"                # down (default) | loss | latency | loss-or-latency:
//!                                 #   when a member counts as failed (below)
//!
//! [[protect]]                     # flows spared by on_recovery = "kill-unprotected"
//! name = "sip"                    # required; unique
//! proto = "udp"                   # a name (tcp, udp, icmp, ...) or a number 1..=255
//! ports = [5060, "10000-20000"]   # numbers or "A-B" ranges; either end's port
//! prefixes = ["192.0.2.0/24"]     # either end's address
//! ```
//!
//! A group's `trigger` (pfSense's "Trigger Level") says when a member counts as failed, from
//! what the health machine judges (`crate::health`): `down` when the gateway is down (loss ≥
//! `loss_down`, an external `down`, or flap damping); `loss` also when it is degraded by
//! loss (loss ≥ `loss_degraded`, until loss ≤ `loss_up`); `latency` also when degraded by
//! latency (average ≥ `latency_degraded`, until ≤ `latency_up`); `loss-or-latency` when
//! degraded by either. A failed member is treated as down: its states are killed (when
//! another member is usable) and its return is a recovery. A gateway in several groups
//! fails only when every one of its groups' triggers says so (its states cannot be told
//! apart by group). An external verdict is only ever down or up: it is never degraded.
//!
//! Durations are strings with a unit: `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`, a whole
//! number of milliseconds. Names (gateways, groups, protected flows) use letters, digits and
//! `_ - . : @ +`, at most 32 characters, do not start with `-`, and are unique ignoring case.

mod conflicts;
mod duration;
mod gateway;
mod group;
mod names;
mod protect;
mod raw;
mod settings;
mod span;
mod thresholds;
mod values;
pub(crate) mod words;

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;
use std::ops::Range;

use statecull_proto::AddressFamily;

use crate::PolicyError;
use crate::model::Policy;

pub use crate::explain::{explain, explain_counted, warnings};

use self::conflicts::Recognisers;
use self::names::Names;
use self::raw::RawPolicy;
use self::span::locate;

/// Longest gateway, group or protected-flow name, in characters.
pub const MAX_NAME_LEN: usize = 32;
/// Highest (worst) tier a group member may have.
pub const MAX_TIER: u8 = 15;
/// Most probe results a gateway's sliding window may keep.
pub const MAX_WINDOW: usize = 3600;

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

impl Loader<'_> {
    fn step(&self, n: usize) {
        self.steps.set(self.steps.get().saturating_add(n as u64));
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
        // `nat_addr = "interface"`: one gateway per interface and family (the same addresses
        // otherwise; two families split the interface's addresses between them).
        let mut by_interface: HashMap<(String, AddressFamily), (String, usize)> = HashMap::new();
        for (i, g) in raw.gateway.iter().enumerate() {
            let (gateway, gs) = self.gateway(i, g)?;
            names.insert(self, &gateway.name, &gs.name, &format!("gateway[{}].name", i + 1))?;
            self.recogniser_conflicts(&gateway, &gs, &gateways, &spans, &mut recognisers)?;
            if let Some((span, field)) = &gs.states.nat_from_interface {
                let key = (gateway.interface.to_string(), gateway.family);
                if let Some((other, line)) = by_interface.get(&key) {
                    return Err(self.err(
                        span,
                        field,
                        format!(
                            "gateways {other} (line {line}) and {} both take their NAT addresses \
                             from interface {}: their states could not be told apart",
                            gateway.name, key.0
                        ),
                    ));
                }
                by_interface.insert(key, (gateway.name.clone(), self.line(span.start)));
            }
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

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::parse;

    /// `(table, key, example value, comment)` for each key of the file format documented at
    /// the top of this module.
    fn documented_keys() -> Vec<(String, String, String, String)> {
        let doc = include_str!("mod.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(str::trim_start)
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```");
        let mut table = String::new();
        let mut keys = Vec::new();
        for line in doc {
            let (code, comment) = line.split_once('#').unwrap_or((line, ""));
            let code = code.trim();
            if code.starts_with('[') {
                table = code.trim_matches(['[', ']']).to_owned();
            } else if let Some((key, value)) = code.split_once('=') {
                let [key, value, comment] = [key, value, comment].map(|s| s.trim().to_owned());
                keys.push((table.clone(), key, value, comment));
            }
        }
        keys
    }

    /// What the comments say each defaulted key's default is (`default 5s`, `defaults 20%
    /// / 10% / 5%` for this key and the next ones, `rtnetlink (default) | signal`), written
    /// as a value of the same TOML type as the key's example.
    fn documented_defaults() -> BTreeMap<(String, String), String> {
        let keys = documented_keys();
        let spell = |claim: &str, example: &str| {
            if example.starts_with('"') {
                format!("{:?}", claim.trim_matches('"'))
            } else {
                claim.to_owned()
            }
        };
        let mut claims = BTreeMap::new();
        for (i, (table, key, example, comment)) in keys.iter().enumerate() {
            if let Some(list) = comment.strip_prefix("defaults ") {
                let list = list.split(';').next().unwrap_or_default();
                for (claim, (table, key, example, _)) in list.split(" / ").zip(keys.iter().skip(i))
                {
                    claims.insert((table.clone(), key.clone()), spell(claim.trim(), example));
                }
            } else if let Some(rest) = comment.strip_prefix("default ") {
                let claim = rest.split([';', ' ']).next().unwrap_or_default();
                // `monitor`'s "default [address]" names another key, not a value.
                if !claim.starts_with('[') {
                    claims.insert((table.clone(), key.clone()), spell(claim, example));
                }
            } else if let Some((before, _)) = comment.split_once(" (default)") {
                let claim = before.rsplit(' ').next().unwrap_or_default();
                claims.insert((table.clone(), key.clone()), spell(claim, example));
            }
        }
        claims
    }

    /// The format documented above states each default; writing those values out must load
    /// the same policy as leaving the keys out (which takes the model's `Default`s).
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let claims = documented_defaults();
        let documented: BTreeSet<String> =
            claims.keys().map(|(table, key)| format!("{table}.{key}")).collect();
        let defaulted = [
            "routing.confirm",
            "routing.settle_timeout",
            "routing.sweep_delay",
            "gateway.health_source",
            "gateway.probe_interval",
            "gateway.probe_timeout",
            "gateway.window",
            "gateway.min_samples",
            "gateway.loss_down",
            "gateway.loss_degraded",
            "gateway.loss_up",
            "gateway.latency_degraded",
            "gateway.latency_up",
            "gateway.hold_down",
            "gateway.damping.enabled",
            "gateway.damping.penalty",
            "gateway.damping.suppress_above",
            "gateway.damping.reuse_below",
            "gateway.damping.half_life",
            "gateway.damping.max_penalty",
            "group.on_down",
            "group.on_recovery",
            "group.trigger",
        ];
        assert_eq!(documented, defaulted.iter().map(|k| (*k).to_owned()).collect());

        let lines = |table: &str, explicit: bool| {
            let mut out = String::new();
            for ((t, key), value) in &claims {
                if explicit && t == table {
                    out.push_str(&format!("{key} = {value}\n"));
                }
            }
            out
        };
        let policy = |explicit: bool| {
            let text = format!(
                "[routing]\n{}\n[[gateway]]\nname = \"WAN1\"\ninterface = \"em1\"\n\
                 address = \"198.51.100.254\"\n{}\n[gateway.damping]\n{}\n\
                 [gateway.states]\nnat_addr = [\"198.51.100.1\"]\n\n[[group]]\n\
                 name = \"failover\"\nmembers = [{{ gateway = \"WAN1\", tier = 1 }}]\n{}",
                lines("routing", explicit),
                lines("gateway", explicit),
                lines("gateway.damping", explicit),
                lines("group", explicit),
            );
            parse(&text, "<documented>").map_err(|e| format!("{e}\n{text}"))
        };
        assert_eq!(policy(true), policy(false));
    }
}
