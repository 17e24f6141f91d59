//! One `[[group]]` table: its members (gateways named earlier, each once, with a tier;
//! one family per group, since connections cannot fail over between IPv4 and IPv6) and
//! what happens on down and on recovery. Members are looked up by name in a map built once
//! per policy, not by scanning the gateways.

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use crate::PolicyError;
use crate::model::{Gateway, Group, GroupMember, OnDown, OnRecovery, Trigger};

use super::raw::RawGroup;
use super::words::family_word;
use super::{Loader, MAX_TIER};

impl Loader<'_> {
    pub(super) fn group(
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
            None => OnDown::default(),
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
            None => OnRecovery::default(),
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
        let trigger = match &g.trigger {
            None => Trigger::default(),
            Some(v) => match v.get_ref().as_str() {
                "down" => Trigger::Down,
                "loss" => Trigger::Loss,
                "latency" => Trigger::Latency,
                "loss-or-latency" => Trigger::LossOrLatency,
                other => {
                    return Err(self.err(
                        &v.span(),
                        &format!("{at}.trigger"),
                        format!(
                            "unknown trigger {other:?}; expected \"down\" (a member fails when \
                             it is down), \"loss\" (or degraded by loss), \"latency\" (or \
                             degraded by latency) or \"loss-or-latency\""
                        ),
                    ));
                }
            },
        };
        Ok((Group { name, members, on_down, on_recovery, trigger }, name_span))
    }
}

fn names_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}
