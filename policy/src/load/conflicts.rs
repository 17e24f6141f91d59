//! Two gateways whose state recognisers overlap would have each other's states killed: the
//! one thing statecull must never do (a healthy link's calls dropped). Same `rt_addr`,
//! marks that one connection mark can match both, or a shared NAT address that no
//! `states.interface` tells apart: the policy is refused, naming both gateways.
//!
//! A policy may have thousands of gateways, so the check is not a comparison of every pair:
//! `Recognisers` indexes the recognisers of the gateways loaded so far and answers which
//! earlier gateway conflicts first in a few lookups. Only that pair is then compared, to
//! build the message a pairwise scan in file order would give.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;

use statecull_proto::{IfName, MarkMatch};

use crate::PolicyError;
use crate::model::{Gateway, StateMatch};

use super::Loader;
use super::gateway::GatewaySpans;

impl Loader<'_> {
    /// Two gateways whose recognisers overlap would have each other's states killed: the
    /// one thing statecull must never do (a healthy link's calls dropped).
    ///
    /// `index` holds the recognisers of the `earlier` gateways; it answers which earlier
    /// gateway is the first to conflict in a few lookups, so the whole policy is checked in
    /// linear time instead of comparing every pair. The message is the one a pairwise scan
    /// in file order would give (the first conflicting earlier gateway; rt_addr, then mark,
    /// then the NAT addresses in the order written).
    pub(super) fn recogniser_conflicts(
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
pub(super) struct Recognisers {
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
