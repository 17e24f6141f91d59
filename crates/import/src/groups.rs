//! Gateway groups (members, tiers, trigger levels), the system's own state killing on failure
//! and on recovery (translated to `on_down` / `on_recovery`, and warned about: it must be
//! turned off), and OPNsense's default gateway switching as a group.

use std::collections::{HashMap, HashSet};

use crate::System;
use crate::config::{Config, Family, GatewayItem, Group};
use crate::translate::{Cx, GatewayOut, GroupOut, LATENCY_HIGH, valid_name};
use crate::xml::{path, path_of};

/// What pfSense does itself when a gateway goes down (`filter_delete_states_for_down_gateways()`
/// and `is_gateway_state_killing_enabled()` in filter.inc / gwlb.inc): "all" flushes the
/// table, "down" kills the gateway's states (`pfctl -M -k gateway -k IP`), "none" nothing.
fn pfsense_down_mode(cfg: &Config<'_, '_>, g: &GatewayItem<'_, '_>) -> &'static str {
    let global = cfg.system_setting("gw_down_kill_states");
    let global = match global.as_ref().map(|(v, _)| v.as_str()) {
        None | Some("none") => "none",
        Some("all") => return "all",
        // "down", and an empty element (the code compares it with 'none').
        Some(_) => "down",
    };
    match g.kill_states.as_deref() {
        Some("none") => "none",
        Some("down") => "down",
        _ => global,
    }
}

pub(crate) fn groups(
    cx: &mut Cx<'_, '_, '_>,
    gateways: &[GatewayOut],
    items: &[&GatewayItem<'_, '_>],
    skipped: &HashMap<String, String>,
) -> Vec<GroupOut> {
    let cfg = cx.cfg;
    let sys = cfg.system.name();
    let mut out: Vec<GroupOut> = Vec::new();
    let mut names: HashMap<String, String> = HashMap::new();
    for gr in &cfg.groups {
        let gp = path(gr.node);
        let Some(name) = gr.name.clone() else {
            cx.warn(gp, "gateway group without a <name>: skipped");
            continue;
        };
        if !valid_name(&name) {
            cx.warn(
                path_of(gr.node, "name"),
                format!("group name {name:?} cannot be a statecull name: skipped"),
            );
            continue;
        }
        if let Some(first) = names.insert(name.to_lowercase(), gp.clone()) {
            cx.warn(
                path_of(gr.node, "name"),
                format!("a second gateway group named {name:?} (the first is at {first}): skipped"),
            );
            continue;
        }
        let mut members: Vec<(String, u8)> = Vec::new();
        let mut family: Option<(Family, String)> = None;
        let mut comments = vec![format!("from {gp}")];
        for m in &gr.members {
            let mp = path(m.node);
            let tier = match &m.tier {
                Ok(t) if (1..=15).contains(t) => *t,
                Ok(t) => {
                    cx.warn(
                        mp,
                        format!(
                            "member {} of group {name} has tier {t}, outside 1..=15: left out",
                            m.gateway
                        ),
                    );
                    continue;
                }
                Err(e) => {
                    cx.warn(mp, format!("member {} of group {name}: {e}: left out", m.gateway));
                    continue;
                }
            };
            if let Some(vip) = &m.vip {
                cx.note(mp.clone(), format!("member {} of group {name} uses virtual IP {vip:?} as its address for services (VPNs); statecull has no equivalent and needs none", m.gateway));
            }
            let Some(gi) = gateways.iter().position(|g| g.name == m.gateway) else {
                match skipped.get(&m.gateway) {
                    Some(why) => cx.note(
                        mp,
                        format!(
                            "member {} of group {name} is left out: the gateway is {why}",
                            m.gateway
                        ),
                    ),
                    None => cx.warn(
                        mp,
                        format!(
                            "group {name} names gateway {:?}, which is not defined: left out",
                            m.gateway
                        ),
                    ),
                }
                continue;
            };
            let f = Family::of(&gateways[gi].address.ip);
            match &family {
                None => family = Some((f, m.gateway.clone())),
                Some((first, first_name)) if *first != f => {
                    cx.warn(mp, format!("group {name} mixes {} gateway {first_name} with {} gateway {}: connections cannot fail over between families; {} left out", first.word(), f.word(), m.gateway, m.gateway));
                    continue;
                }
                Some(_) => {}
            }
            if members.iter().any(|(n, _)| *n == m.gateway) {
                cx.warn(
                    mp,
                    format!(
                        "gateway {} is listed twice in group {name}: the first tier is kept",
                        m.gateway
                    ),
                );
                continue;
            }
            members.push((m.gateway.clone(), tier));
        }
        if members.is_empty() {
            cx.warn(gp, format!("gateway group {name} has no usable member: skipped"));
            continue;
        }
        // pfSense's and OPNsense's trigger levels, one to one. Theirs look at dpinger's high
        // thresholds; statecull's at the degraded ones (losslow / latencylow + 1 after
        // translation), so the group fails a member sooner: said in a comment.
        let trigger = match gr.trigger.as_deref() {
            None | Some("down") => "down",
            Some("downloss") => "loss",
            Some("downlatency") => "latency",
            Some("downlosslatency") => "loss-or-latency",
            Some(t) => {
                cx.warn(
                    path_of(gr.node, "trigger"),
                    format!(
                        "group {name} has an unknown trigger level {t:?} (expected down, \
                         downloss, downlatency or downlosslatency): translated as trigger = \
                         \"down\""
                    ),
                );
                "down"
            }
        };
        if trigger != "down" {
            let t = gr.trigger.as_deref().unwrap_or_default();
            comments.push(format!(
                "{sys} trigger {t:?}: a member fails when it is down or degraded by {} (at or \
                 above the gateway's {}, {sys}'s low threshold + 1), where {sys} waits for its \
                 high threshold",
                match trigger {
                    "loss" => "loss",
                    "latency" => "latency",
                    _ => "loss or latency",
                },
                match trigger {
                    "loss" => "loss_degraded",
                    "latency" => "latency_degraded",
                    _ => "loss_degraded / latency_degraded",
                },
            ));
        }
        let tiers: HashSet<u8> = members.iter().map(|m| m.1).collect();
        if tiers.len() < members.len() {
            comments.push("members sharing a tier share load, as in the gateway group".to_owned());
        }
        let (on_down, on_recovery) = match cfg.system {
            System::PfSense => pfsense_group_modes(cx, gr, &members, items),
            System::OpnSense => opnsense_group_modes(cx, &name, &gp, &members, items),
        };
        out.push(GroupOut { name, members, on_down, on_recovery, trigger, comments });
    }
    out
}

fn item_of<'x, 'a, 'i>(
    items: &'x [&'x GatewayItem<'a, 'i>],
    name: &str,
) -> Option<&'x GatewayItem<'a, 'i>> {
    items.iter().copied().find(|i| i.name == name)
}

/// pfSense: on_down from "State Killing on Gateway Failure", on_recovery from
/// `remove_failover_states()` (gwlb.inc): a group's lower-tier states are killed when a
/// better tier is back unless `<system><keep_failover_states>` is set and the group's
/// `<keep_failover_states>` is not "kill".
fn pfsense_group_modes(
    cx: &Cx<'_, '_, '_>,
    gr: &Group<'_, '_>,
    members: &[(String, u8)],
    items: &[&GatewayItem<'_, '_>],
) -> (&'static str, &'static str) {
    let cfg = cx.cfg;
    let modes: Vec<(&str, &'static str)> = members
        .iter()
        .filter_map(|(n, _)| item_of(items, n).map(|i| (n.as_str(), pfsense_down_mode(cfg, i))))
        .collect();
    let on_down = if modes.iter().any(|(_, m)| *m == "all") { "all" } else { "gateway" };
    let global_keep = cfg.system_setting("keep_failover_states").is_some();
    let group_keep = gr.keep_failover_states.as_deref().unwrap_or_default();
    let on_recovery = if global_keep && group_keep != "kill" { "keep" } else { "kill" };
    (on_down, on_recovery)
}

/// OPNsense: per gateway "Failover States" (`monitor_killstates`, kill on down) and
/// "Failback States" (`monitor_killstates_priority`, kill a lower-priority gateway's states
/// when a better one is back).
fn opnsense_group_modes(
    cx: &mut Cx<'_, '_, '_>,
    name: &str,
    gp: &str,
    members: &[(String, u8)],
    items: &[&GatewayItem<'_, '_>],
) -> (&'static str, &'static str) {
    let failback: Vec<&str> = members
        .iter()
        .filter(|(n, _)| item_of(items, n).is_some_and(|i| i.killstates_priority))
        .map(|(n, _)| n.as_str())
        .collect();
    if !failback.is_empty() && failback.len() < members.len() {
        cx.note(gp.to_owned(), format!("group {name}: only {} kill their states on failback in OPNsense; statecull's on_recovery = \"kill\" applies to the whole group", failback.join(", ")));
    }
    ("gateway", if failback.is_empty() { "keep" } else { "kill" })
}

/// The system's own state killing, which must be turned off (else states are killed twice),
/// and settings with no statecull equivalent.
pub(crate) fn global_settings(
    cx: &mut Cx<'_, '_, '_>,
    gateways: &[GatewayOut],
    items: &[&GatewayItem<'_, '_>],
) {
    let cfg = cx.cfg;
    match cfg.system {
        System::PfSense => {
            let global = cfg.system_setting("gw_down_kill_states");
            let killing: Vec<&str> = items
                .iter()
                .filter(|i| pfsense_down_mode(cfg, i) != "none")
                .map(|i| i.name.as_str())
                .collect();
            let at = global
                .as_ref()
                .map(|(_, p)| p.clone())
                .unwrap_or_else(|| path(cfg.system_node.unwrap_or(cfg.root)));
            if global.as_ref().is_some_and(|(v, _)| v == "all") {
                cx.warn(at, "pfSense flushes ALL states when any gateway goes down (State Killing on Gateway Failure = \"Flush all states\"); the policy keeps that (on_down = \"all\"), but statecull's point is on_down = \"gateway\". Either way TURN pfSense's OFF (System > Advanced > Miscellaneous > State Killing on Gateway Failure: \"Do not kill states\"), else states are killed twice".to_string());
            } else if !killing.is_empty() {
                let mut paths = vec![at];
                paths.extend(
                    items
                        .iter()
                        .filter(|i| i.kill_states.as_deref() == Some("down"))
                        .map(|i| path_of(i.node, "gw_down_kill_states")),
                );
                cx.warn(paths.join(", "), format!("pfSense kills the states of {} itself when they go down: TURN IT OFF (System > Advanced > Miscellaneous > State Killing on Gateway Failure: \"Do not kill states\", and each gateway's option to \"Use global behavior\"), else states are killed twice", killing.join(", ")));
            }
            let kills_back = cfg.groups.iter().any(|g| {
                cfg.system_setting("keep_failover_states").is_none()
                    || g.keep_failover_states.as_deref() == Some("kill")
            });
            if kills_back && !cfg.groups.is_empty() {
                cx.warn(
                    cfg.system_setting("keep_failover_states")
                        .map(|(_, p)| p)
                        .unwrap_or_else(|| path(cfg.system_node.unwrap_or(cfg.root))),
                    "pfSense 24.03 / CE 2.8 and later kill a group's lower-tier states when a better tier recovers (State Killing on Gateway Recovery); the policy does it instead (on_recovery = \"kill\"): TURN pfSense's OFF (check \"Don't kill policy routing states for lower-priority gateways\" and leave each group's Keep Failover States at its default), else states are killed twice",
                );
            }
            if let Some((v, p)) =
                cfg.system_setting("remove_failover_states_default").filter(|(v, _)| !v.is_empty())
            {
                cx.warn(p, format!("pfSense also kills the firewall's own default-gateway-group states on recovery ({v:?}); statecull's fail-back covers them only through the NAT address; set it to \"Don't kill states\" if on_recovery is kept"));
            }
            if let Some((_, p)) = cfg.system_setting("skip_rules_gw_down") {
                cx.note(p, "\"Skip rules when gateway is down\" changes which rules pfSense loads, not which states are killed: no statecull equivalent is needed");
            }
        }
        System::OpnSense => {
            let killing: Vec<&GatewayItem<'_, '_>> =
                items.iter().copied().filter(|i| i.killstates || i.killstates_priority).collect();
            if !killing.is_empty() {
                let paths: Vec<String> = killing
                    .iter()
                    .map(|i| {
                        if i.killstates {
                            path_of(i.node, "monitor_killstates")
                        } else {
                            path_of(i.node, "monitor_killstates_priority")
                        }
                    })
                    .collect();
                let names: Vec<&str> = killing.iter().map(|i| i.name.as_str()).collect();
                cx.warn(paths.join(", "), format!("OPNsense kills states itself for {} (Failover States / Failback States, `pfctl -k gateway` without -M): the policy does it instead; TURN THEM OFF in System > Gateways > Configuration, else states are killed twice", names.join(", ")));
            }
            if let Some((_, p)) = cfg.system_setting("skip_rules_gw_down") {
                cx.note(p, "\"Skip rules\" (when a gateway is down) changes which rules OPNsense loads, not which states are killed: no statecull equivalent is needed");
            }
        }
    }
    let weights: Vec<String> = items
        .iter()
        .filter(|i| i.weight.as_deref().is_some_and(|w| w != "1"))
        .map(|i| i.name.clone())
        .collect();
    if !weights.is_empty() {
        cx.note(
            String::new(),
            format!(
                "weights of {} balance load in the system's rules; statecull needs only the tiers",
                weights.join(", ")
            ),
        );
    }
    if items.iter().any(|i| i.latencyhigh.is_none()) && !gateways.is_empty() {
        cx.note(String::new(), format!("{} also calls a gateway down above latencyhigh (default {LATENCY_HIGH} ms); statecull judges down by loss only, latency makes a gateway degraded (a group's trigger = \"latency\" or \"loss-or-latency\" fails over on it)", cfg.system.name()));
    }
}

/// OPNsense's default gateway switching (`<system><gw_switch_default>`) is a failover of
/// the default route: `Gateways::getDefaultGW()` takes the first gateway of a family that is
/// not down, in `getGateways()`'s order (upstream gateways first, then by priority, lower is
/// better, then the later one first). Its Failover/Failback States work with it, so it is
/// translated into one group per family with a tier per gateway in that order.
pub(crate) fn switching_groups(
    cx: &mut Cx<'_, '_, '_>,
    gateways: &[GatewayOut],
    items: &[&GatewayItem<'_, '_>],
    groups: &mut Vec<GroupOut>,
) {
    let Some((_, at)) = cx.cfg.system_setting("gw_switch_default") else { return };
    for (family, name) in [(Family::V4, "default-gw4"), (Family::V6, "default-gw6")] {
        let mut order: Vec<(bool, u32, usize, &str)> = Vec::new();
        for (seq, (g, item)) in gateways.iter().zip(items).enumerate() {
            if Family::of(&g.address.ip) != family || item.force_down {
                continue;
            }
            let prio = item
                .priority
                .as_deref()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(255)
                .min(255);
            order.push((item.defaultgw, prio, seq, g.name.as_str()));
        }
        if order.len() < 2 {
            continue;
        }
        // Upstream first, then lower priority, then later in the list (krsort on the key).
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        if groups.iter().any(|g| g.name.eq_ignore_ascii_case(name)) {
            cx.warn(at.clone(), format!("default gateway switching is on, but a gateway group is already named {name}: the switching order is not translated"));
            continue;
        }
        if order.len() > 15 {
            cx.warn(at.clone(), format!("default gateway switching orders {} {} gateways; statecull has 15 tiers, so the last ones share tier 15", order.len(), family.word()));
        }
        let members: Vec<(String, u8)> = order
            .iter()
            .enumerate()
            .map(|(i, (_, _, _, n))| ((*n).to_owned(), u8::try_from(i + 1).unwrap_or(15).min(15)))
            .collect();
        let failback = order
            .iter()
            .any(|(_, _, _, n)| items.iter().any(|i| i.name == *n && i.killstates_priority));
        cx.note(
            at.clone(),
            format!(
                "default gateway switching is on: translated into group {name} ({}), one tier per gateway in the order OPNsense switches",
                members.iter().map(|(n, t)| format!("{n} tier {t}")).collect::<Vec<_>>().join(", ")
            ),
        );
        groups.push(GroupOut {
            name: name.to_owned(),
            members,
            on_down: "gateway",
            on_recovery: if failback { "kill" } else { "keep" },
            trigger: "down",
            comments: vec![format!(
                "from {at}: OPNsense's default gateway switching (upstream first, then by priority)"
            )],
        });
    }
}
