//! The kill planner: from the policy, one batch of gateway health transitions and the
//! broker's capabilities to a [`Plan`] (which requests, in what order, and why), with a
//! human explanation. Pure and deterministic: the same input gives the same plan, byte for
//! byte (gateways are taken in policy index order, groups in policy order).
//!
//! # Rules and the decisions behind them
//!
//! **Usable** means what [`Policy::usable`] says: not down, and not failed by the trigger
//! level of every group that contains the gateway (a group with `trigger = "latency"` fails a
//! member degraded by latency, and so on; see [`crate::model::Trigger`]). A failed member
//! is handled exactly as a down one below: "went down" is "became unusable".
//!
//! **Never a healthy gateway's states.** Selectors only come from
//! * gateways that are down now (not usable): those that went down in this batch, and those
//!   whose kill was held back earlier because no member of their groups was usable (the
//!   *catch-up* below);
//! * on fail-back, the usable members of the failing-back group whose tier is worse than the
//!   recovered one — except a member that is the best usable tier of *another* group that
//!   contains it: its states there are that group's legitimate traffic, which has no better
//!   place to go, so the fail-back leaves it alone (and says so in `skipped`);
//! * and a selector of a target is dropped when it could also match the states of a gateway
//!   that is not a target of the same step (two gateways sharing a NAT address on one
//!   interface, equal or overlapping marks): states that cannot be told apart are not
//!   killed. A target left without selectors is skipped with the reason.
//!
//! **Nothing when nothing can take over** (OPNsense #9789). A down gateway's states are
//! killed only if at least one group containing it, with `on_down` other than `none`, still
//! has a usable member. Otherwise the gateway is skipped with the reason; a gateway in no
//! group is skipped as "monitored only". Killing connections that have nowhere to go only
//! turns a flaky monitor into self-inflicted outages.
//!
//! **Catch-up.** Held-back states stay pointed at the dead gateway: once a member of the
//! group is usable again they are stale (clients keep sending into the void). So a gateway
//! that is still down, whose groups (with `on_down` other than `none`) had no usable member
//! before this batch and have one now, is killed in this batch's down step. This is always a
//! gateway-scoped kill: a late `on_down = all` flush would drop the connections of the
//! gateway that just came back, so it is never run late (the held-back gateway's own states
//! are killed instead when they can be recognised; otherwise it is skipped). When the
//! gateway's states were in fact killed already (it went down while a backup was usable),
//! the catch-up kills what little was re-created since: still only a dead gateway's states.
//!
//! **`on_down` per group; the strongest wins** (`all` > `gateway` > `none`) among the groups
//! that contain the gateway and still have a usable member. A dead gateway's states are dead
//! whichever group routed them, so `none` in one group does not veto another group's kill,
//! and a flush kills a superset of the gateway kill. `all` plans one `Flush` step (what
//! pfSense's "kill all states" does; the explanation warns that it drops the healthy links'
//! connections too); a flush subsumes every other kill of the batch, down or fail-back (they
//! would find nothing), and is not followed by a sweep.
//!
//! **One pass.** Every gateway killed in one batch goes into one `KillMatching` step: one
//! broker request, whose cheapest path the broker picks for all of them at once (not a
//! table pass per gateway). More than [`MAX_SELECTORS_PER_REQUEST`] selectors are
//! split into several requests, and each step's `why` says so. `match_opposite` is the
//! backend's `match_opposite` capability (pf twins; conntrack entries cover both
//! directions).
//!
//! **Fail-back.** For each group (in order) where a gateway that came up in this batch is
//! now the best usable tier, and that tier is strictly better than the best usable tier
//! before the batch (traffic was on a lower tier): `keep` → skipped with the reason; `kill` →
//! `KillMatching` of the usable members with a worse tier; `kill-unprotected` → `KillExcept`
//! with the policy's protected flows (a plain `KillMatching` when the policy protects
//! nothing). Members that are down are not targeted: their states were handled when they
//! went down (killed, or held back and caught up by the rule above), and the fail-back's
//! purpose is moving *working* connections back. Nothing was usable before the batch →
//! nothing to move back. Down steps come before fail-back steps.
//!
//! **Selectors per gateway** ([`gateway_selectors`]). A pf-style backend (one that matches
//! on `gateway`) gets `gateway = rt_addr` and, per NAT address, `nat-addr` restricted to the
//! configured interface (states that left by the default route have `rt_addr` 0 and are
//! found only this way). A conntrack-style backend gets the connection mark when one is
//! configured, else one `nat-addr` selector per NAT address. Every selector passes
//! [`Selector::check`]; a configured value that fails it is an error, never a silent
//! partial kill.
//!
//! **Inconsistent input** is resolved towards killing less: a gateway listed in both
//! `went_down` and `came_up` counts as whichever its `usable` entry says it ended as; a
//! gateway "down" but usable, or "up" but not usable, is skipped with the reason.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use statecull_proto::{
    Capabilities, MAX_SELECTORS, MarkMatch, Selector, SelectorField, StateDetail, StateHandle,
    StateRecord,
};

use crate::PolicyError;
use crate::model::{Gateway, Group, OnDown, OnRecovery, Policy, ProtectedFlow};

/// Most selectors in one `KillMatching` request (the protocol's ceiling).
pub const MAX_SELECTORS_PER_REQUEST: usize = MAX_SELECTORS as usize;

/// What the planner is told.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    pub policy: &'a Policy,
    /// Usable per gateway index, AFTER the transitions below took effect: not down and not
    /// failed by its groups' trigger levels ([`Policy::usable`] decides, from the health
    /// machine's judgement).
    pub usable: &'a [bool],
    /// Gateways (indices) that went down in this batch (several at once = one plan).
    pub went_down: &'a [usize],
    /// Gateways that came back up in this batch.
    pub came_up: &'a [usize],
    /// The broker's backend capabilities (from Hello).
    pub caps: &'a Capabilities,
}

/// What to do, in order, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub skipped: Vec<Skipped>,
    /// First line: a summary; then one line per step; then notes; then one line per
    /// skipped item with its reason.
    pub explanation: Vec<String>,
}

/// One thing to ask of the broker.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    pub purpose: Purpose,
    pub action: Action,
    pub why: String,
    /// The gateways (policy indices) the step is about, in the order the purpose names them:
    /// the down ones, or a fail-back's lower tiers. Kills are credited to them.
    pub gateways: Vec<usize>,
    /// For each selector of `action`, in order, the gateway (policy index, one of
    /// `gateways`) whose states it was built to recognise; when two of them share a
    /// selector, the first. Empty for a flush. With per-selector counts, this is what
    /// attributes a kill of several gateways to each ([`attribute`]).
    pub owners: Vec<usize>,
}

/// Why a step exists.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Purpose {
    /// Kill the states of these down gateways.
    GatewayDown { gateways: Vec<String> },
    /// Flush the table because these gateways went down (at least one with `on_down = all`;
    /// the others' kills are covered by the flush).
    FlushAll { gateways: Vec<String> },
    /// Move connections of `group` back from its `lower` tiers to `recovered`.
    FailBack { group: String, recovered: Vec<String>, lower: Vec<String> },
}

/// How a step is carried out.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Action {
    /// One broker KillMatching request for all of them.
    KillMatching { selectors: Vec<Selector>, match_opposite: bool },
    /// Broker Flush (whole table).
    Flush,
    /// Snapshot per selector (the broker's matching is authoritative), drop records that
    /// match a protected flow ([`resolve_except`]), kill the rest by handle (and, when
    /// `match_opposite`, their opposite-direction twins, which belong to the same
    /// connection and so are unprotected too).
    KillExcept { selectors: Vec<Selector>, match_opposite: bool, except: Vec<ProtectedFlow> },
}

/// One request of the trailing sweep ([`Plan::sweep_requests`]).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepRequest {
    pub action: Action,
    /// The gateway owning each selector of `action` (see [`Step::owners`]).
    pub owners: Vec<usize>,
}

/// Something the policy could have acted on and did not, with the reason.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Skipped {
    /// A gateway or group name.
    pub subject: String,
    pub reason: String,
}

/// The result of [`resolve_except`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// The states to kill, deduplicated, in order of first appearance.
    pub handles: Vec<StateHandle>,
    /// Distinct states spared because they match a protected flow.
    pub spared: u64,
}

impl Action {
    /// The selectors of a kill (none for a flush).
    pub fn selectors(&self) -> &[Selector] {
        match self {
            Action::KillMatching { selectors, .. } | Action::KillExcept { selectors, .. } => {
                selectors
            }
            Action::Flush => &[],
        }
    }
}

// ---------------------------------------------------------------------------------------
// Selectors per gateway

/// Selectors, each with the gateway (policy index) whose states it recognises: what turns
/// the broker's per-selector counts into per-gateway figures.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OwnedSelectors {
    pub selectors: Vec<Selector>,
    /// `owners[i]` owns `selectors[i]`.
    pub owners: Vec<usize>,
}

/// The selectors of each of `gateways` on this backend ([`gateway_selectors`]), in that
/// order, each with the gateway it came from; a gateway whose states cannot be recognised
/// contributes none (per-gateway figures show it as unknown). Nothing is deduplicated: a
/// count then credits each gateway with what its own selectors match.
pub fn owned_selectors(policy: &Policy, gateways: &[usize], caps: &Capabilities) -> OwnedSelectors {
    let mut out = OwnedSelectors::default();
    for &g in gateways {
        if let Ok(selectors) = gateway_selectors(policy, g, caps) {
            out.owners.extend(std::iter::repeat_n(g, selectors.len()));
            out.selectors.extend(selectors);
        }
    }
    out
}

/// Per-gateway totals of per-selector `counts` (`counts[i]` for the selector `owners[i]`
/// owns): one entry per gateway of the policy (`gateways` of them), `None` for a gateway
/// that owns no counted selector.
pub fn per_gateway(owners: &[usize], counts: &[u64], gateways: usize) -> Vec<Option<u64>> {
    let mut out = vec![None; gateways];
    for (&g, &n) in owners.iter().zip(counts) {
        if let Some(slot) = out.get_mut(g) {
            *slot = Some(slot.unwrap_or(0) + n);
        }
    }
    out
}

/// A step's kill credited to its `gateways` (in that order, each starting at 0) from
/// per-selector `counts` and the selectors' `owners` ([`Step::owners`]).
pub fn attribute(gateways: &[usize], owners: &[usize], counts: &[u64]) -> Vec<(usize, u64)> {
    let mut acc: Vec<(usize, u64)> = gateways.iter().map(|&g| (g, 0)).collect();
    for (&owner, &n) in owners.iter().zip(counts) {
        if let Some(slot) = acc.iter_mut().find(|(g, _)| *g == owner) {
            slot.1 += n;
        }
    }
    acc
}

fn supports(caps: &Capabilities, field: SelectorField) -> bool {
    caps.selector_fields.contains(&field)
}

/// A backend that matches on the route-to gateway is pf-style.
fn pf_style(caps: &Capabilities) -> bool {
    supports(caps, SelectorField::Gateway)
}

fn unknown_index(policy: &Policy, index: usize) -> PolicyError {
    PolicyError::UnknownGateway(format!("#{index}"), policy.gateway_names())
}

/// The selectors this backend style would use for `gw`, before support and checks.
fn candidates(gw: &Gateway, caps: &Capabilities) -> Vec<Selector> {
    let m = &gw.states;
    let mut out = Vec::new();
    if pf_style(caps) {
        if let Some(addr) = m.rt_addr {
            out.push(Selector { gateway: Some(addr), ..Selector::default() });
        }
        for addr in &m.nat_addr {
            out.push(Selector {
                nat_addr: Some(*addr),
                interface: m.interface.clone(),
                ..Selector::default()
            });
        }
    } else {
        match m.mark {
            Some(mark) if supports(caps, SelectorField::Mark) => {
                out.push(Selector { mark: Some(mark), ..Selector::default() });
            }
            _ => {
                for addr in &m.nat_addr {
                    out.push(Selector { nat_addr: Some(*addr), ..Selector::default() });
                }
            }
        }
    }
    out
}

/// Every way the policy identifies a gateway's states, whatever the backend: its
/// `rt_addr`, its mark, and each NAT address (on its interface when one is configured).
/// The conflict guard compares against all of them: a marked gateway's states still carry
/// its NAT address on conntrack, even though the mark is what is used to kill them.
fn identities(gw: &Gateway) -> Vec<Selector> {
    let m = &gw.states;
    let mut out = Vec::new();
    if let Some(addr) = m.rt_addr {
        out.push(Selector { gateway: Some(addr), ..Selector::default() });
    }
    if let Some(mark) = m.mark {
        out.push(Selector { mark: Some(mark), ..Selector::default() });
    }
    for addr in &m.nat_addr {
        out.push(Selector {
            nat_addr: Some(*addr),
            interface: m.interface.clone(),
            ..Selector::default()
        });
    }
    out
}

/// What the policy offers to recognise a gateway's states, for messages.
fn offered(gw: &Gateway) -> String {
    let m = &gw.states;
    let mut parts = Vec::new();
    if let Some(a) = m.rt_addr {
        parts.push(format!("rt_addr {a}"));
    }
    if let Some(mark) = m.mark {
        parts.push(format!("mark {mark}"));
    }
    for a in &m.nat_addr {
        match &m.interface {
            Some(i) => parts.push(format!("nat_addr {a} on {i}")),
            None => parts.push(format!("nat_addr {a}")),
        }
    }
    if parts.is_empty() {
        "nothing (no rt_addr, mark or nat_addr)".into()
    } else {
        parts.join(", ")
    }
}

fn field_list(fields: &[SelectorField]) -> String {
    if fields.is_empty() {
        return "nothing".into();
    }
    fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}

/// The selectors that recognise one gateway's states on this backend (those whose fields
/// `caps.selector_fields` supports; each passes [`Selector::check`]). Error
/// [`PolicyError::Unrecognisable`] when none is usable, naming what the policy offers and
/// what the backend supports, or when a configured value does not make a valid selector.
///
/// pf-style backends (matching on `gateway`): `gateway = rt_addr`, and one
/// `interface + nat-addr` selector per NAT address (`nat-addr` alone when no interface is
/// configured). conntrack-style backends: the mark when configured, else one `nat-addr`
/// selector per NAT address.
pub fn gateway_selectors(
    policy: &Policy,
    gateway: usize,
    caps: &Capabilities,
) -> Result<Vec<Selector>, PolicyError> {
    let gw = policy.gateways.get(gateway).ok_or_else(|| unknown_index(policy, gateway))?;
    let mut out: Vec<Selector> = Vec::new();
    let mut refused = Vec::new();
    for candidate in candidates(gw, caps) {
        let missing: Vec<SelectorField> =
            candidate.fields().into_iter().filter(|f| !supports(caps, *f)).collect();
        if !missing.is_empty() {
            refused.push(format!(
                "{} needs {}",
                describe_selector(&candidate),
                field_list(&missing)
            ));
            continue;
        }
        if let Err(e) = candidate.check() {
            return Err(PolicyError::Unrecognisable {
                gateway: gw.name.clone(),
                message: format!("{} is not a valid selector: {e}", describe_selector(&candidate)),
            });
        }
        if !out.contains(&candidate) {
            out.push(candidate);
        }
    }
    if out.is_empty() {
        let style = if pf_style(caps) {
            "a pf-style backend recognises states by rt_addr or by nat_addr (on the interface)"
        } else {
            "a conntrack-style backend recognises states by mark or by nat_addr"
        };
        let refused =
            if refused.is_empty() { String::new() } else { format!(" ({})", refused.join("; ")) };
        return Err(PolicyError::Unrecognisable {
            gateway: gw.name.clone(),
            message: format!(
                "its states cannot be recognised on this backend: the policy offers {}; the \
                 backend matches on {}; {style}{refused}",
                offered(gw),
                field_list(&caps.selector_fields),
            ),
        });
    }
    Ok(out)
}

/// Whether a state could match both selectors, judged on the fields that identify a
/// gateway (`gateway`, `nat-addr`, `interface`, `mark`, `label`): they share at least one
/// such field and no shared field tells them apart. Two different fields (`rt_addr` vs a
/// NAT address) are not compared: they are different gateways' configured identities.
fn may_overlap(a: &Selector, b: &Selector) -> bool {
    fn cmp<T: PartialEq>(x: &Option<T>, y: &Option<T>, shared: &mut bool) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => {
                *shared = true;
                x == y
            }
            _ => true,
        }
    }
    fn marks(x: Option<MarkMatch>, y: Option<MarkMatch>, shared: &mut bool) -> bool {
        match (x, y) {
            (Some(x), Some(y)) => {
                *shared = true;
                (x.value ^ y.value) & x.mask & y.mask == 0
            }
            _ => true,
        }
    }
    let mut shared = false;
    let compatible = cmp(&a.gateway, &b.gateway, &mut shared)
        & cmp(&a.nat_addr, &b.nat_addr, &mut shared)
        & cmp(&a.interface, &b.interface, &mut shared)
        & cmp(&a.label, &b.label, &mut shared)
        & marks(a.mark, b.mark, &mut shared);
    shared && compatible
}

/// Human form of a selector the planner built: `ct mark 0x1/0xff`, `route-to 192.0.2.1`,
/// `NAT 198.51.100.1 on igb0`, `NAT address 198.51.100.1`; anything else in operator syntax.
pub fn describe_selector(s: &Selector) -> String {
    let only = |fields: &[SelectorField]| s.fields() == fields;
    match (s.mark, s.gateway, s.nat_addr, &s.interface) {
        (Some(m), _, _, _) if only(&[SelectorField::Mark]) => format!("ct mark {m}"),
        (_, Some(g), _, _) if only(&[SelectorField::Gateway]) => format!("route-to {g}"),
        (_, _, Some(n), Some(i)) if only(&[SelectorField::NatAddr, SelectorField::Interface]) => {
            format!("NAT {n} on {i}")
        }
        (_, _, Some(n), _) if only(&[SelectorField::NatAddr]) => format!("NAT address {n}"),
        _ => s.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// Protected flows

/// Does `record` belong to `flow`? Every field the flow gives must match (a flow giving
/// none matches everything: when in doubt, spare):
/// * `proto`: the state's protocol;
/// * `ports`: any port of the state, in either direction or key (conntrack: original and
///   reply tuples; pf: wire and stack keys), lies in one of the ranges;
/// * `prefixes`: any address of the state (both tuples or keys) lies in one of them.
///
/// The two halves of a forwarded pf connection carry the same server port and the same
/// LAN address (in the WAN state's stack key), so twins are protected alike.
pub fn flow_matches(flow: &ProtectedFlow, record: &StateRecord) -> bool {
    if flow.proto.is_some_and(|p| p != record.key.proto) {
        return false;
    }
    if !flow.ports.is_empty() {
        let keys = match &record.detail {
            StateDetail::Conntrack { reply, .. } => [record.key, *reply, *reply],
            StateDetail::Pf { wire, stack, .. } => [record.key, *wire, *stack],
        };
        let hit = keys
            .iter()
            .flat_map(|k| [k.src_port(), k.dst_port()])
            .flatten()
            .any(|port| flow.ports.iter().any(|r| r.contains(port)));
        if !hit {
            return false;
        }
    }
    if !flow.prefixes.is_empty() {
        let mut addrs: Vec<IpAddr> = record.addresses().to_vec();
        addrs.extend([record.key.src, record.key.dst]);
        let hit = addrs.iter().any(|a| flow.prefixes.iter().any(|p| p.contains(a)));
        if !hit {
            return false;
        }
    }
    true
}

/// `KillExcept` resolution, pure: from the records the snapshots returned (which may repeat
/// a state matched by several selectors), the handles to kill (deduplicated, in order of
/// first appearance) and how many distinct states were spared.
pub fn resolve_except(records: &[StateRecord], except: &[ProtectedFlow]) -> Resolved {
    let mut seen: HashSet<StateHandle> = HashSet::with_capacity(records.len());
    let mut out = Resolved::default();
    for record in records {
        if !seen.insert(record.handle) {
            continue;
        }
        if except.iter().any(|flow| flow_matches(flow, record)) {
            out.spared += 1;
        } else {
            out.handles.push(record.handle);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Planning

/// The input, checked and with the "before this batch" view derived.
struct Ctx<'a> {
    policy: &'a Policy,
    caps: &'a Capabilities,
    usable: &'a [bool],
    /// Usable before this batch.
    before: Vec<bool>,
    /// Went down in this batch (consistent with `usable`).
    down: Vec<bool>,
    /// Came up in this batch (consistent with `usable`).
    up: Vec<bool>,
}

impl<'a> Ctx<'a> {
    fn name(&self, g: usize) -> &str {
        &self.policy.gateways[g].name
    }

    fn names(&self, gs: &[usize]) -> Vec<String> {
        gs.iter().map(|g| self.name(*g).to_owned()).collect()
    }

    fn groups_of(&self, g: usize) -> Vec<&'a Group> {
        self.policy.groups_of(g).collect()
    }
}

fn best_tier(group: &Group, usable: &[bool]) -> Option<u8> {
    group.members.iter().filter(|m| usable[m.gateway]).map(|m| m.tier).min()
}

fn tier_in(group: &Group, g: usize) -> Option<u8> {
    group.members.iter().filter(|m| m.gateway == g).map(|m| m.tier).min()
}

/// "a", "a and b", "a, b and c".
fn and_list<S: AsRef<str>>(items: &[S]) -> String {
    match items {
        [] => String::new(),
        [one] => one.as_ref().to_owned(),
        [init @ .., last] => format!(
            "{} and {}",
            init.iter().map(|s| s.as_ref()).collect::<Vec<_>>().join(", "),
            last.as_ref()
        ),
    }
}

fn group_names(groups: &[&Group]) -> String {
    and_list(&groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>())
}

fn on_down_name(d: OnDown) -> &'static str {
    match d {
        OnDown::None => "none",
        OnDown::Gateway => "gateway",
        OnDown::All => "all",
    }
}

fn strength(d: OnDown) -> u8 {
    match d {
        OnDown::None => 0,
        OnDown::Gateway => 1,
        OnDown::All => 2,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DownKind {
    /// Went down in this batch.
    Went,
    /// Still down; its kill was held back and its groups are viable again.
    CatchUp,
}

/// A down gateway whose states are to be killed.
struct DownTarget<'p> {
    gateway: usize,
    kind: DownKind,
    /// `Gateway` or `All` (the strongest among the viable groups).
    mode: OnDown,
    /// The groups that decided: containing it, `on_down` not `none`, a usable member now.
    viable: Vec<&'p Group>,
}

/// Outcome of looking at one down gateway.
enum DownDecision<'p> {
    Kill(DownTarget<'p>),
    Skip(String),
}

fn decide_went_down<'p>(ctx: &Ctx<'p>, g: usize) -> DownDecision<'p> {
    let groups = ctx.groups_of(g);
    if groups.is_empty() {
        return DownDecision::Skip(
            "monitored only: it is in no group, so no policy says what to do with its states"
                .into(),
        );
    }
    let acting: Vec<&Group> =
        groups.iter().copied().filter(|gr| gr.on_down != OnDown::None).collect();
    if acting.is_empty() {
        return DownDecision::Skip(format!(
            "on_down = none in {} {}: its states are left to time out",
            if groups.len() == 1 { "group" } else { "groups" },
            group_names(&groups)
        ));
    }
    let viable: Vec<&Group> =
        acting.iter().copied().filter(|gr| best_tier(gr, ctx.usable).is_some()).collect();
    if viable.is_empty() {
        return DownDecision::Skip(format!(
            "no member of {} {} is usable: killing its states would only destroy connections \
             that have nowhere to go (OPNsense #9789); they are kept, and killed once a member \
             is usable again",
            if acting.len() == 1 { "group" } else { "groups" },
            group_names(&acting)
        ));
    }
    let mode =
        viable.iter().map(|gr| gr.on_down).max_by_key(|d| strength(*d)).unwrap_or(OnDown::Gateway);
    DownDecision::Kill(DownTarget { gateway: g, kind: DownKind::Went, mode, viable })
}

/// A gateway still down whose held-back kill becomes due in this batch.
fn catch_up<'p>(ctx: &Ctx<'p>, g: usize) -> Option<DownTarget<'p>> {
    if ctx.usable[g] || ctx.down[g] || ctx.before[g] {
        return None;
    }
    let acting: Vec<&Group> =
        ctx.groups_of(g).into_iter().filter(|gr| gr.on_down != OnDown::None).collect();
    if acting.is_empty() || acting.iter().any(|gr| best_tier(gr, &ctx.before).is_some()) {
        return None;
    }
    let viable: Vec<&Group> =
        acting.into_iter().filter(|gr| best_tier(gr, ctx.usable).is_some()).collect();
    if viable.is_empty() {
        return None;
    }
    let mode =
        viable.iter().map(|gr| gr.on_down).max_by_key(|d| strength(*d)).unwrap_or(OnDown::Gateway);
    Some(DownTarget { gateway: g, kind: DownKind::CatchUp, mode, viable })
}

/// Collects the plan.
#[derive(Default)]
struct Builder {
    steps: Vec<Step>,
    skipped: Vec<Skipped>,
    notes: Vec<String>,
    summary: Vec<String>,
}

impl Builder {
    fn skip(&mut self, subject: &str, reason: impl Into<String>) {
        self.skipped.push(Skipped { subject: subject.to_owned(), reason: reason.into() });
    }
}

/// Per-target selectors with the conflict guard applied: a selector that may match the
/// states of a gateway outside `targets` is dropped. Returns the targets that kept at least
/// one selector, in order.
fn guarded(
    ctx: &Ctx<'_>,
    targets: Vec<(usize, Vec<Selector>)>,
    b: &mut Builder,
) -> Vec<(usize, Vec<Selector>)> {
    let in_targets: HashSet<usize> = targets.iter().map(|(g, _)| *g).collect();
    // Everything the other gateways' states are identified by, on any backend.
    let others: Vec<(usize, Vec<Selector>)> = (0..ctx.policy.gateways.len())
        .filter(|o| !in_targets.contains(o))
        .map(|o| (o, identities(&ctx.policy.gateways[o])))
        .collect();
    let mut kept = Vec::new();
    for (g, selectors) in targets {
        let mut keep = Vec::new();
        for s in selectors {
            let clash: Vec<usize> = others
                .iter()
                .filter(|(_, theirs)| theirs.iter().any(|t| may_overlap(&s, t)))
                .map(|(o, _)| *o)
                .collect();
            if clash.is_empty() {
                keep.push(s);
            } else {
                b.notes.push(format!(
                    "{}: {} is not used: it may also match the states of {}, which are not to \
                     be killed",
                    ctx.name(g),
                    describe_selector(&s),
                    and_list(&ctx.names(&clash))
                ));
            }
        }
        if keep.is_empty() {
            b.skip(
                ctx.name(g),
                "its states cannot be told apart from those of gateways that are not to be \
                 killed (shared NAT address or overlapping mark): nothing is killed for it",
            );
        } else {
            kept.push((g, keep));
        }
    }
    kept
}

/// One or more steps for a set of selectors; `why` is completed with the request split.
fn kill_steps(
    purpose: &Purpose,
    gateways: &[usize],
    owned: OwnedSelectors,
    match_opposite: bool,
    why: &str,
) -> Vec<Step> {
    let OwnedSelectors { selectors, owners } = owned;
    let total = selectors.len();
    let chunks: Vec<(Vec<Selector>, Vec<usize>)> = selectors
        .chunks(MAX_SELECTORS_PER_REQUEST)
        .zip(owners.chunks(MAX_SELECTORS_PER_REQUEST))
        .map(|(s, o)| (s.to_vec(), o.to_vec()))
        .collect();
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, (chunk, owners))| {
            let split = if n == 1 {
                format!(
                    "{total} {} in one request: the broker picks one path for all of them, \
                     not a pass per gateway",
                    if total == 1 { "selector" } else { "selectors" }
                )
            } else {
                format!(
                    "request {} of {n}: {} of {total} selectors (the broker takes at most \
                     {MAX_SELECTORS_PER_REQUEST} per request, so {n} requests)",
                    i + 1,
                    chunk.len()
                )
            };
            Step {
                purpose: purpose.clone(),
                action: Action::KillMatching { selectors: chunk, match_opposite },
                why: format!("{why}; {split}"),
                gateways: gateways.to_vec(),
                owners,
            }
        })
        .collect()
}

fn twins_note(caps: &Capabilities) -> &'static str {
    if caps.match_opposite {
        "each victim's opposite-direction twin is killed with it (pf kill_match)"
    } else {
        "one entry covers both directions (no twins)"
    }
}

/// Selectors with their owners, deduplicated in order: a selector two gateways share is
/// kept once, owned by the first.
fn dedup_owned(owned: impl IntoIterator<Item = (Selector, usize)>) -> OwnedSelectors {
    let mut out = OwnedSelectors::default();
    for (s, g) in owned {
        if !out.selectors.contains(&s) {
            out.selectors.push(s);
            out.owners.push(g);
        }
    }
    out
}

/// The targets' selectors as one request's worth, deduplicated, each owned by its target.
fn merged(per_gateway: &[(usize, Vec<Selector>)]) -> OwnedSelectors {
    dedup_owned(per_gateway.iter().flat_map(|(g, s)| s.iter().map(|s| (s.clone(), *g))))
}

/// "(ct mark 0x1/0xff)" for one gateway; "(WAN1: ..., WAN2: ...)" for several.
fn selector_summary(ctx: &Ctx<'_>, per_gateway: &[(usize, Vec<Selector>)]) -> String {
    let one =
        |sels: &[Selector]| sels.iter().map(describe_selector).collect::<Vec<_>>().join(" or ");
    match per_gateway {
        [(_, sels)] => format!("({})", one(sels)),
        many => format!(
            "({})",
            many.iter()
                .map(|(g, sels)| format!("{}: {}", ctx.name(*g), one(sels)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The best usable members of the groups that decided, as "WAN2 (tier 2) takes over".
fn takeover(ctx: &Ctx<'_>, targets: &[&DownTarget<'_>]) -> String {
    let mut seen: Vec<usize> = Vec::new();
    let mut parts = Vec::new();
    for t in targets {
        for gr in &t.viable {
            let Some(best) = best_tier(gr, ctx.usable) else { continue };
            for m in gr.members.iter().filter(|m| m.tier == best && ctx.usable[m.gateway]) {
                if !seen.contains(&m.gateway) {
                    seen.push(m.gateway);
                    parts.push(format!("{} (tier {})", ctx.name(m.gateway), m.tier));
                }
            }
        }
    }
    let verb = if parts.len() == 1 { "takes" } else { "take" };
    format!("{} {verb} over", and_list(&parts))
}

fn possessive(names: &[String]) -> String {
    match names {
        [one] => format!("{one}'s"),
        _ => "their".into(),
    }
}

fn down_reason(ctx: &Ctx<'_>, t: &DownTarget<'_>) -> String {
    let usable_list = |gr: &Group| {
        let best = best_tier(gr, ctx.usable);
        gr.members
            .iter()
            .filter(|m| ctx.usable[m.gateway] && Some(m.tier) == best)
            .map(|m| format!("{} (tier {})", ctx.name(m.gateway), m.tier))
            .collect::<Vec<_>>()
    };
    let groups = t
        .viable
        .iter()
        .map(|gr| {
            format!(
                "group {} (on_down = {}) has {} usable",
                gr.name,
                on_down_name(gr.on_down),
                and_list(&usable_list(gr))
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    match t.kind {
        DownKind::Went => format!("{} went down; {groups}", ctx.name(t.gateway)),
        DownKind::CatchUp => format!(
            "{} is still down and its states were held back while no member of its groups was \
             usable; now {groups}",
            ctx.name(t.gateway)
        ),
    }
}

fn plan_down(ctx: &Ctx<'_>, b: &mut Builder) -> Result<bool, PolicyError> {
    let n = ctx.policy.gateways.len();
    let mut targets: Vec<DownTarget<'_>> = Vec::new();
    for g in 0..n {
        if ctx.down[g] {
            match decide_went_down(ctx, g) {
                DownDecision::Kill(t) => targets.push(t),
                DownDecision::Skip(reason) => {
                    b.summary.push(format!("{} down: nothing killed, {reason}", ctx.name(g)));
                    b.skip(ctx.name(g), reason);
                }
            }
        } else if let Some(t) = catch_up(ctx, g) {
            targets.push(t);
        }
    }
    if targets.is_empty() {
        return Ok(false);
    }

    let flushers: Vec<&DownTarget<'_>> =
        targets.iter().filter(|t| t.kind == DownKind::Went && t.mode == OnDown::All).collect();
    if !flushers.is_empty() {
        let all: Vec<usize> = targets.iter().map(|t| t.gateway).collect();
        let names = ctx.names(&all);
        let flusher_names = ctx.names(&flushers.iter().map(|t| t.gateway).collect::<Vec<_>>());
        let groups: Vec<&Group> = flushers
            .iter()
            .flat_map(|t| t.viable.iter().copied())
            .filter(|gr| gr.on_down == OnDown::All)
            .fold(Vec::new(), |mut acc, gr| {
                if !acc.iter().any(|x: &&Group| x.name == gr.name) {
                    acc.push(gr);
                }
                acc
            });
        let covered: Vec<String> =
            names.iter().filter(|x| !flusher_names.contains(x)).cloned().collect();
        let mut why = format!(
            "{} down with on_down = all in {} {}: flush every state, as pfSense's \"kill all \
             states\" does; WARNING: this also drops the healthy links' connections (calls on \
             the backup, LAN-to-LAN, port forwards)",
            and_list(&flusher_names),
            if groups.len() == 1 { "group" } else { "groups" },
            group_names(&groups)
        );
        if !covered.is_empty() {
            let _ = write!(why, "; the flush also covers {}", and_list(&covered));
        }
        why.push_str("; no trailing sweep follows a flush");
        b.summary.push(format!(
            "{} down: flush the whole state table (on_down = all), the healthy links' \
             connections too, once routing has moved; {}",
            and_list(&names),
            takeover(ctx, &targets.iter().collect::<Vec<_>>())
        ));
        b.steps.push(Step {
            purpose: Purpose::FlushAll { gateways: names },
            action: Action::Flush,
            why,
            gateways: all,
            owners: Vec::new(),
        });
        return Ok(true);
    }

    // Gateway-scoped kills: one request for all of them.
    let mut per_gateway: Vec<(usize, Vec<Selector>)> = Vec::new();
    for t in &targets {
        match gateway_selectors(ctx.policy, t.gateway, ctx.caps) {
            Ok(sels) => per_gateway.push((t.gateway, sels)),
            // A catch-up that stands in for a flush never required recognisable states.
            Err(e) if t.kind == DownKind::CatchUp && t.mode == OnDown::All => {
                b.skip(
                    ctx.name(t.gateway),
                    format!(
                        "still down with on_down = all; a late flush would drop the connections \
                         that just recovered, and its own states cannot be recognised: {e}"
                    ),
                );
            }
            Err(e) => return Err(e),
        }
    }
    for t in targets.iter().filter(|t| t.kind == DownKind::CatchUp && t.mode == OnDown::All) {
        b.notes.push(format!(
            "{}: on_down = all, but a flush held back is never run late (it would drop the \
             connections of the gateway that just came back); only its own states are killed",
            ctx.name(t.gateway)
        ));
    }
    let per_gateway = guarded(ctx, per_gateway, b);
    if per_gateway.is_empty() {
        return Ok(false);
    }
    let kept: Vec<usize> = per_gateway.iter().map(|(g, _)| *g).collect();
    let kept_targets: Vec<&DownTarget<'_>> =
        targets.iter().filter(|t| kept.contains(&t.gateway)).collect();
    let names = ctx.names(&kept);
    let reasons = kept_targets.iter().map(|t| down_reason(ctx, t)).collect::<Vec<_>>().join("; ");
    let why = format!(
        "{reasons}; kill {} states {}; {}",
        possessive(&names),
        selector_summary(ctx, &per_gateway),
        twins_note(ctx.caps)
    );
    let went: Vec<String> = kept_targets
        .iter()
        .filter(|t| t.kind == DownKind::Went)
        .map(|t| ctx.name(t.gateway).to_owned())
        .collect();
    let still: Vec<String> = kept_targets
        .iter()
        .filter(|t| t.kind == DownKind::CatchUp)
        .map(|t| ctx.name(t.gateway).to_owned())
        .collect();
    let mut subject = Vec::new();
    if !went.is_empty() {
        subject.push(format!("{} down", and_list(&went)));
    }
    if !still.is_empty() {
        subject.push(format!("{} still down", and_list(&still)));
    }
    let owned = merged(&per_gateway);
    let passes = owned.selectors.len().div_ceil(MAX_SELECTORS_PER_REQUEST);
    let pass_note = match (names.len(), passes) {
        (1, 1) => String::new(),
        (_, 1) => " in one pass".into(),
        (_, p) => format!(" in {p} passes"),
    };
    b.summary.push(format!(
        "{}: kill {} states {}{pass_note} once routing has moved; {}",
        subject.join(", "),
        possessive(&names),
        selector_summary(ctx, &per_gateway),
        takeover(ctx, &kept_targets)
    ));
    let purpose = Purpose::GatewayDown { gateways: names };
    b.steps.extend(kill_steps(&purpose, &kept, owned, ctx.caps.match_opposite, &why));
    Ok(false)
}

fn plan_fail_back(ctx: &Ctx<'_>, flushed: bool, b: &mut Builder) -> Result<(), PolicyError> {
    for group in &ctx.policy.groups {
        let came_up: Vec<usize> =
            group.members.iter().filter(|m| ctx.up[m.gateway]).map(|m| m.gateway).collect();
        if came_up.is_empty() {
            continue;
        }
        let (Some(now), before) = (best_tier(group, ctx.usable), best_tier(group, &ctx.before))
        else {
            continue;
        };
        let recovered: Vec<usize> = group
            .members
            .iter()
            .filter(|m| ctx.up[m.gateway] && m.tier == now && before.is_none_or(|b| m.tier < b))
            .map(|m| m.gateway)
            .collect();
        let back = and_list(&ctx.names(&came_up));
        let Some(before) = before else {
            b.notes.push(format!(
                "{back} back in group {}: no member was usable before, so no connections have \
                 to move back",
                group.name
            ));
            continue;
        };
        if recovered.is_empty() {
            b.notes.push(format!(
                "{back} back in group {}: tier {before} was already the best usable tier, \
                 nothing to move back",
                group.name
            ));
            continue;
        }
        let rec_names = ctx.names(&recovered);
        // Usable members with a worse tier than the recovered one, less those that are the
        // best usable tier of another group (their connections there belong on them).
        let mut lower: Vec<usize> = Vec::new();
        let mut spared: Vec<(usize, Vec<&Group>)> = Vec::new();
        for m in group.members.iter().filter(|m| ctx.usable[m.gateway] && m.tier > now) {
            if lower.contains(&m.gateway)
                || recovered.contains(&m.gateway)
                || spared.iter().any(|(g, _)| *g == m.gateway)
            {
                continue;
            }
            let best_elsewhere: Vec<&Group> = ctx
                .policy
                .groups
                .iter()
                .filter(|other| other.name != group.name)
                .filter(|other| {
                    tier_in(other, m.gateway)
                        .is_some_and(|t| Some(t) == best_tier(other, ctx.usable))
                })
                .collect();
            if best_elsewhere.is_empty() {
                lower.push(m.gateway);
            } else {
                spared.push((m.gateway, best_elsewhere));
            }
        }
        let lower_names = ctx.names(&lower);
        if group.on_recovery == OnRecovery::Keep {
            let on = if lower_names.is_empty() {
                "the lower tiers".to_owned()
            } else {
                and_list(&lower_names)
            };
            let reason = format!(
                "on_recovery = keep: {} back (tier {now}), connections stay on {on} until they \
                 end; new ones use tier {now}",
                and_list(&rec_names)
            );
            b.summary.push(format!(
                "{} back in group {}: connections stay on {on} (on_recovery = keep)",
                and_list(&rec_names),
                group.name
            ));
            b.skip(&group.name, reason);
            continue;
        }
        if flushed {
            b.skip(
                &group.name,
                format!(
                    "fail-back to {} not needed: the flush already drops every state",
                    and_list(&rec_names)
                ),
            );
            continue;
        }
        for (g, groups) in &spared {
            b.skip(
                ctx.name(*g),
                format!(
                    "not moved back in group {}: it is the best usable tier of {} {}, whose \
                     connections are legitimately on it",
                    group.name,
                    if groups.len() == 1 { "group" } else { "groups" },
                    group_names(groups)
                ),
            );
        }
        if lower.is_empty() {
            b.skip(
                &group.name,
                format!(
                    "{} back (tier {now}), but no usable lower-tier member has connections to \
                     move back",
                    and_list(&rec_names)
                ),
            );
            continue;
        }
        let mut per_gateway = Vec::new();
        for g in &lower {
            per_gateway.push((*g, gateway_selectors(ctx.policy, *g, ctx.caps)?));
        }
        let per_gateway = guarded(ctx, per_gateway, b);
        if per_gateway.is_empty() {
            b.skip(&group.name, "no lower-tier member's states can be told apart");
            continue;
        }
        let lower: Vec<usize> = per_gateway.iter().map(|(g, _)| *g).collect();
        let lower_names = ctx.names(&lower);
        let OwnedSelectors { selectors, owners } = merged(&per_gateway);
        let purpose = Purpose::FailBack {
            group: group.name.clone(),
            recovered: rec_names.clone(),
            lower: lower_names.clone(),
        };
        let head = format!(
            "{} back in group {} (tier {now}, better than tier {before} that carried the \
             traffic): kill {} states {} so connections move back; {}",
            and_list(&rec_names),
            group.name,
            possessive(&lower_names),
            selector_summary(ctx, &per_gateway),
            twins_note(ctx.caps)
        );
        let protected = &ctx.policy.protected;
        match group.on_recovery {
            OnRecovery::KillUnprotected if !protected.is_empty() => {
                let flows =
                    and_list(&protected.iter().map(|f| f.name.as_str()).collect::<Vec<_>>());
                b.summary.push(format!(
                    "{} back in group {}: kill {} states except protected flows ({flows}) so \
                     connections move back to tier {now}",
                    and_list(&rec_names),
                    group.name,
                    possessive(&lower_names)
                ));
                b.steps.push(Step {
                    purpose,
                    action: Action::KillExcept {
                        selectors,
                        match_opposite: ctx.caps.match_opposite,
                        except: protected.clone(),
                    },
                    why: format!(
                        "{head}; on_recovery = kill-unprotected: snapshot, spare the protected \
                         flows ({flows}), kill the rest by handle; {}",
                        twins_note(ctx.caps)
                    ),
                    gateways: lower,
                    owners,
                });
            }
            _ => {
                let mode = if group.on_recovery == OnRecovery::Kill {
                    "on_recovery = kill"
                } else {
                    "on_recovery = kill-unprotected, but the policy protects no flow"
                };
                b.summary.push(format!(
                    "{} back in group {}: kill {} states so connections move back to tier {now}",
                    and_list(&rec_names),
                    group.name,
                    possessive(&lower_names)
                ));
                b.steps.extend(kill_steps(
                    &purpose,
                    &lower,
                    OwnedSelectors { selectors, owners },
                    ctx.caps.match_opposite,
                    &format!("{head}; {mode}"),
                ));
            }
        }
    }
    Ok(())
}

fn check_input<'a>(input: &PlanInput<'a>, b: &mut Builder) -> Result<Ctx<'a>, PolicyError> {
    let policy = input.policy;
    let n = policy.gateways.len();
    if input.usable.len() != n {
        return Err(PolicyError::Invalid {
            file: policy.source.clone(),
            line: None,
            field: Some("usable".into()),
            message: format!(
                "the planner was given the health of {} gateways, the policy has {n}",
                input.usable.len()
            ),
        });
    }
    if let Some(&bad) = input.went_down.iter().chain(input.came_up).find(|&&g| g >= n) {
        return Err(unknown_index(policy, bad));
    }
    let mut down = vec![false; n];
    let mut up = vec![false; n];
    for &g in input.went_down {
        down[g] = true;
    }
    for &g in input.came_up {
        up[g] = true;
    }
    for g in 0..n {
        let name = &policy.gateways[g].name;
        if down[g] && up[g] {
            // Both in one batch: what it ended as decides.
            let ended = if input.usable[g] { "up" } else { "down" };
            b.notes.push(format!(
                "{name} went down and came back up in this batch; it ended {ended}, so it \
                 counts as having {}",
                if input.usable[g] { "come up" } else { "gone down" }
            ));
            if input.usable[g] {
                down[g] = false;
            } else {
                up[g] = false;
            }
        }
        if down[g] && input.usable[g] {
            down[g] = false;
            b.skipped.push(Skipped {
                subject: name.clone(),
                reason: "reported down but usable: its states are left alone".into(),
            });
        }
        if up[g] && !input.usable[g] {
            up[g] = false;
            b.skipped.push(Skipped {
                subject: name.clone(),
                reason: "reported up but not usable: no fail-back".into(),
            });
        }
    }
    let before = (0..n)
        .map(|g| {
            if up[g] {
                false
            } else if down[g] {
                true
            } else {
                input.usable[g]
            }
        })
        .collect();
    Ok(Ctx { policy, caps: input.caps, usable: input.usable, before, down, up })
}

/// Plan the reaction to one batch of health transitions.
///
/// Errors: [`PolicyError::UnknownGateway`] for an index the policy does not have;
/// [`PolicyError::Invalid`] when `usable` does not have one entry per gateway;
/// [`PolicyError::Unrecognisable`] when a gateway whose states are to be killed cannot be
/// recognised on this backend (the engine should call [`gateway_selectors`] for every
/// gateway at start-up and refuse a policy that fails there).
pub fn plan(input: &PlanInput<'_>) -> Result<Plan, PolicyError> {
    let mut b = Builder::default();
    let ctx = check_input(input, &mut b)?;
    let flushed = plan_down(&ctx, &mut b)?;
    plan_fail_back(&ctx, flushed, &mut b)?;

    let summary =
        if b.summary.is_empty() { "nothing to do".to_owned() } else { b.summary.join(". ") };
    let mut explanation = vec![summary];
    for (i, step) in b.steps.iter().enumerate() {
        explanation.push(format!("{}. {}: {}", i + 1, action_name(&step.action), step.why));
    }
    explanation.extend(b.notes.iter().map(|n| format!("note: {n}")));
    explanation.extend(b.skipped.iter().map(|s| format!("skipped {}: {}", s.subject, s.reason)));
    Ok(Plan { steps: b.steps, skipped: b.skipped, explanation })
}

fn action_name(action: &Action) -> &'static str {
    match action {
        Action::KillMatching { .. } => "kill-matching",
        Action::Flush => "flush",
        Action::KillExcept { .. } => "kill-except",
    }
}

impl Plan {
    /// No step: nothing will be asked of the broker.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Human text: what, why, and expected counts when given (`counts[i][j]` = matches of
    /// step `i`'s selector `j`, e.g. from a broker `Count` request; `None`: unknown).
    pub fn explain(&self, counts: Option<&[Vec<u64>]>) -> String {
        let mut out = String::new();
        if let Some(summary) = self.explanation.first() {
            out.push_str(summary);
            out.push('\n');
        }
        for (i, step) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "{}. {}: {}", i + 1, action_name(&step.action), step.why);
            let step_counts = counts.and_then(|c| c.get(i));
            match &step.action {
                Action::Flush => {
                    out.push_str("   every state of the table, on every link\n");
                }
                Action::KillMatching { selectors, match_opposite }
                | Action::KillExcept { selectors, match_opposite, .. } => {
                    for (j, s) in selectors.iter().enumerate() {
                        let count = step_counts.and_then(|c| c.get(j));
                        match count {
                            Some(c) => {
                                let _ = writeln!(out, "   {}: {c} states", describe_selector(s));
                            }
                            None => {
                                let _ = writeln!(out, "   {}", describe_selector(s));
                            }
                        }
                    }
                    if let Some(c) = step_counts {
                        let total: u64 = c.iter().sum();
                        let twins = if *match_opposite { ", plus their twins" } else { "" };
                        let spare = if matches!(step.action, Action::KillExcept { .. }) {
                            ", less the protected flows spared"
                        } else {
                            ""
                        };
                        let _ = writeln!(
                            out,
                            "   expected: up to {total} states{twins}{spare} (a state matching \
                             two selectors is counted twice)"
                        );
                    }
                }
            }
        }
        for line in self.explanation.iter().skip(1 + self.steps.len()) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// The same steps' selectors for the trailing sweep (only `GatewayDown` steps, only
    /// `KillMatching`/`KillExcept` selectors), deduplicated, as one `KillMatching`; `None`
    /// when there is nothing to sweep. When the down kill needed several requests, so does
    /// the sweep: use [`Plan::sweep_actions`], which splits it the same way.
    pub fn sweep(&self) -> Option<Action> {
        self.sweep_owned().map(|(owned, match_opposite)| Action::KillMatching {
            selectors: owned.selectors,
            match_opposite,
        })
    }

    /// The sweep's selectors with their owners (the first step's owner when steps share a
    /// selector), and whether twins are killed too.
    fn sweep_owned(&self) -> Option<(OwnedSelectors, bool)> {
        let mut owned = Vec::new();
        let mut match_opposite = false;
        for step in &self.steps {
            if !matches!(step.purpose, Purpose::GatewayDown { .. }) {
                continue;
            }
            if let Action::KillMatching { match_opposite: m, .. }
            | Action::KillExcept { match_opposite: m, .. } = &step.action
            {
                match_opposite |= *m;
            }
            owned.extend(step.action.selectors().iter().cloned().zip(step.owners.iter().copied()));
        }
        let owned = dedup_owned(owned);
        if owned.selectors.is_empty() { None } else { Some((owned, match_opposite)) }
    }

    /// [`Plan::sweep_actions`] with the gateway owning each selector of each request.
    pub fn sweep_requests(&self) -> Vec<SweepRequest> {
        let Some((owned, match_opposite)) = self.sweep_owned() else { return Vec::new() };
        owned
            .selectors
            .chunks(MAX_SELECTORS_PER_REQUEST)
            .zip(owned.owners.chunks(MAX_SELECTORS_PER_REQUEST))
            .map(|(s, o)| SweepRequest {
                action: Action::KillMatching { selectors: s.to_vec(), match_opposite },
                owners: o.to_vec(),
            })
            .collect()
    }

    /// [`Plan::sweep`] split into requests the broker accepts (at most
    /// [`MAX_SELECTORS_PER_REQUEST`] selectors each).
    pub fn sweep_actions(&self) -> Vec<Action> {
        self.sweep_requests().into_iter().map(|r| r.action).collect()
    }
}
