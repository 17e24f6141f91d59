//! From the configuration model to policy decisions. Every rule names the code of pfSense
//! (`gwlb.inc`, `filter.inc`) or OPNsense (`Gateways.php`, `dpinger.inc`) it follows; every
//! setting that does not translate becomes a [`Warning`] naming its XML path.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Config, Family, GatewayItem, Group, IfAddr, Iface};
use crate::dpinger;
use crate::xml::{path, path_of};
use crate::{Severity, System, Warning};

/// An address in the policy; a placeholder stands for one only known at run time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Addr {
    pub(crate) ip: IpAddr,
    pub(crate) placeholder: bool,
}

pub(crate) enum Health {
    Dpinger { socket: String, placeholder: bool },
    External { why: String },
}

pub(crate) struct GatewayOut {
    pub(crate) name: String,
    pub(crate) from: String,
    pub(crate) interface: String,
    pub(crate) address: Addr,
    /// What dpinger probes (the gateway itself unless `<monitor>` says otherwise).
    pub(crate) monitor: Addr,
    pub(crate) health: Health,
    /// loss_down, loss_degraded, loss_up in percent.
    pub(crate) loss: (u32, u32, u32),
    /// latency_degraded, latency_up in milliseconds.
    pub(crate) latency: (u32, u32),
    pub(crate) latencyhigh: u32,
    pub(crate) losshigh: u32,
    pub(crate) rt_addr: Option<Addr>,
    pub(crate) nat: Vec<Addr>,
    pub(crate) comments: Vec<String>,
}

pub(crate) struct GroupOut {
    pub(crate) name: String,
    pub(crate) members: Vec<(String, u8)>,
    pub(crate) on_down: &'static str,
    pub(crate) on_recovery: &'static str,
    pub(crate) comments: Vec<String>,
}

pub(crate) struct Out {
    pub(crate) gateways: Vec<GatewayOut>,
    pub(crate) groups: Vec<GroupOut>,
    pub(crate) warnings: Vec<Warning>,
    /// Sockets the confined engine must read.
    pub(crate) readable: Vec<String>,
}

type Fatal = (String, String);

/// dpinger's defaults: pfSense `return_dpinger_defaults()`, OPNsense
/// `GatewayField::getDpingerDefaults()` (the same four values).
const LATENCY_LOW: u32 = 200;
const LATENCY_HIGH: u32 = 500;
const LOSS_LOW: u32 = 10;
const LOSS_HIGH: u32 = 20;

/// Placeholder addresses for dynamic WANs: never routable (240.0.0.0/4 is reserved,
/// 100::/64 is the discard prefix), valid in a policy, distinct per interface so that two
/// dynamic WANs do not look alike to the loader's conflict checks.
fn placeholder(n: usize, family: Family, router: bool) -> Addr {
    let n = u8::try_from(n.min(255)).unwrap_or(255);
    let ip = match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::new(240, 0, n, if router { 254 } else { 1 })),
        Family::V6 => IpAddr::V6(Ipv6Addr::new(
            0x100,
            0,
            0,
            0,
            0,
            0,
            u16::from(n),
            if router { 0xfe } else { 1 },
        )),
    };
    Addr { ip, placeholder: true }
}

struct Cx<'c, 'a, 'i> {
    cfg: &'c Config<'a, 'i>,
    warnings: Vec<Warning>,
    /// Dynamic (interface, family) pairs in order of first use: the placeholder number.
    dynamic: Vec<(String, Family)>,
}

impl Cx<'_, '_, '_> {
    fn warn(&mut self, path: String, message: impl Into<String>) {
        self.warnings.push(Warning { severity: Severity::Warning, path, message: message.into() });
    }
    fn note(&mut self, path: String, message: impl Into<String>) {
        self.warnings.push(Warning { severity: Severity::Note, path, message: message.into() });
    }
    fn sys(&self) -> &'static str {
        self.cfg.system.name()
    }

    fn placeholder_no(&mut self, iface: &str, family: Family) -> usize {
        let key = (iface.to_owned(), family);
        if let Some(i) = self.dynamic.iter().position(|k| *k == key) {
            return i + 1;
        }
        self.dynamic.push(key);
        self.dynamic.len()
    }

    /// The interface's own address of `family`, or a placeholder for a dynamic one.
    fn if_address(&mut self, iface: &Iface<'_, '_>, family: Family) -> Option<Addr> {
        match iface.addr(family) {
            IfAddr::Static(a) if Family::of(a) == family => {
                Some(Addr { ip: *a, placeholder: false })
            }
            IfAddr::Dynamic(_) => {
                let n = self.placeholder_no(&iface.key, family);
                Some(placeholder(n, family, false))
            }
            _ => None,
        }
    }
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let bare = text.split('%').next().unwrap_or(text);
    let bare = bare.strip_suffix("/32").or_else(|| bare.strip_suffix("/128")).unwrap_or(bare);
    bare.parse().ok()
}

fn is_link_local(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// A name statecull accepts: letters, digits, `_ - . : @ +`, 1..=32, not starting with '-'.
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars().count() <= 32
        && !n.starts_with('-')
        && n.chars().all(|c| c.is_alphanumeric() || "_-.:@+".contains(c))
}

/// The gateways a system makes by itself for enabled dynamic interfaces that no gateway
/// item covers. pfSense (`return_gateways_array()`): `DESCR_DHCP`, `_PPPOE`, `_DHCP6`,
/// `_SLAAC`, ... with the description upper-cased; skipped when an item on that interface
/// and family is dynamic or has that name. OPNsense (`Gateways::getGateways()`):
/// `strtoupper(DESCR_TYPE)` the same way, but only monitored once configured.
fn implicit_gateways<'a, 'i>(cfg: &Config<'a, 'i>) -> Vec<GatewayItem<'a, 'i>> {
    let mut out = Vec::new();
    // pfSense makes IPv6 gateways only with IPv6 allowed (System > Advanced > Networking).
    let v6 = cfg.system != System::PfSense || cfg.system_setting("ipv6allow").is_some();
    for iface in cfg.interfaces.iter().filter(|i| i.enabled) {
        for (family, proto) in [(Family::V4, "inet"), (Family::V6, "inet6")] {
            if family == Family::V6 && !v6 {
                continue;
            }
            let IfAddr::Dynamic(kind) = iface.addr(family) else { continue };
            let descr = iface.descr.clone().unwrap_or_else(|| iface.key.clone());
            let name = format!("{descr}_{kind}").to_uppercase();
            let covered = cfg.gateways.iter().any(|g| {
                g.iface.as_deref() == Some(iface.key.as_str())
                    && (g.name.eq_ignore_ascii_case(&name)
                        || (gateway_family(g) == Some(family) && is_dynamic(g)))
            });
            if covered {
                continue;
            }
            out.push(GatewayItem {
                node: iface.node,
                name,
                iface: Some(iface.key.clone()),
                gateway: None,
                ipprotocol: Some(proto.to_owned()),
                monitor: None,
                disabled: false,
                // OPNsense: "monitor_disable" => '1', disable monitoring by default.
                monitor_disable: cfg.system == System::OpnSense,
                action_disable: false,
                force_down: false,
                latencylow: None,
                latencyhigh: None,
                losslow: None,
                losshigh: None,
                kill_states: None,
                killstates: false,
                killstates_priority: false,
                weight: None,
                // Gateways::getGateways(): 254, or 255 for tunnels.
                priority: Some(
                    if ["gre", "gif", "ovpn"]
                        .iter()
                        .any(|t| iface.device.as_deref().unwrap_or_default().contains(t))
                    {
                        "255"
                    } else {
                        "254"
                    }
                    .to_owned(),
                ),
                defaultgw: false,
                implicit: true,
            });
        }
    }
    out
}

fn is_dynamic(g: &GatewayItem<'_, '_>) -> bool {
    match g.gateway.as_deref() {
        None | Some("dynamic") => true,
        Some(t) => parse_ip(t).is_none(),
    }
}

fn gateway_family(g: &GatewayItem<'_, '_>) -> Option<Family> {
    if let Some(a) = g.gateway.as_deref().and_then(parse_ip) {
        return Some(Family::of(&a));
    }
    match g.ipprotocol.as_deref() {
        Some("inet6") => Some(Family::V6),
        _ => Some(Family::V4),
    }
}

/// A threshold in whole units, or the default with a warning when it is not a number.
fn number(
    cx: &mut Cx<'_, '_, '_>,
    raw: &Option<(String, String)>,
    default: u32,
    what: &str,
) -> u32 {
    match raw {
        None => default,
        Some((t, p)) => match t.parse::<u32>() {
            Ok(v) => v,
            Err(_) => {
                cx.warn(p.clone(), format!("{what} {t:?} is not a whole number; using {default}"));
                default
            }
        },
    }
}

/// The thresholds: pfSense (`get_dpinger_status()`) and OPNsense call a gateway down when
/// loss > losshigh (dpinger reports whole percent) or latency > latencyhigh, and warn above
/// losslow / latencylow, with no hysteresis. statecull is down at or above loss_down,
/// degraded at or above loss_degraded / latency_degraded, up at or below loss_up /
/// latency_up. So loss_down = losshigh + 1, loss_degraded = losslow + 1, loss_up = losslow,
/// latency_degraded = latencylow + 1 ms, latency_up = latencylow. statecull has no latency
/// level that means down (a later version adds `trigger`): latencyhigh is reported.
fn thresholds(
    cx: &mut Cx<'_, '_, '_>,
    g: &GatewayItem<'_, '_>,
) -> ((u32, u32, u32), (u32, u32), u32, u32) {
    let mut losslow = number(cx, &g.losslow, LOSS_LOW, "losslow");
    let mut losshigh = number(cx, &g.losshigh, LOSS_HIGH, "losshigh");
    if losslow >= losshigh || losshigh > 100 {
        cx.warn(
            path(g.node),
            format!(
                "losslow {losslow}% must be below losshigh {losshigh}% (at most 100%); using \
                 {}'s defaults {LOSS_LOW}% and {LOSS_HIGH}%",
                cx.sys()
            ),
        );
        (losslow, losshigh) = (LOSS_LOW, LOSS_HIGH);
    }
    let mut latlow = number(cx, &g.latencylow, LATENCY_LOW, "latencylow");
    let mut lathigh = number(cx, &g.latencyhigh, LATENCY_HIGH, "latencyhigh");
    if latlow >= lathigh || latlow == 0 || latlow > 59_000 {
        cx.warn(
            path(g.node),
            format!(
                "latencylow {latlow} ms must be between 1 ms and latencyhigh {lathigh} ms; using \
                 {}'s defaults {LATENCY_LOW} ms and {LATENCY_HIGH} ms",
                cx.sys()
            ),
        );
        (latlow, lathigh) = (LATENCY_LOW, LATENCY_HIGH);
    }
    if let Some((_, p)) = &g.latencyhigh {
        cx.warn(
            p.clone(),
            format!(
                "{} calls gateway {} down above {lathigh} ms latency; statecull judges down by \
                 loss only (latency makes it degraded), so this level is not translated",
                cx.sys(),
                g.name
            ),
        );
    }
    (
        (losshigh.saturating_add(1).min(100), losslow + 1, losslow),
        (latlow + 1, latlow),
        lathigh,
        losshigh,
    )
}

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

pub(crate) fn translate(cfg: &Config<'_, '_>) -> Result<Out, Fatal> {
    let mut cx = Cx { cfg, warnings: Vec::new(), dynamic: Vec::new() };
    let sys = cfg.system.name();
    if let Some(legacy) = cfg.ignored_legacy {
        cx.note(
            path(legacy),
            format!(
                "gateways are read from {}; {sys} ignores this legacy list once the MVC model has \
                 gateways, and so does the import",
                cfg.gateways_from
            ),
        );
    }
    for u in &cfg.unknown {
        cx.warn(path(*u), format!("unknown element <{}>: not read", u.tag_name().name()));
    }

    // Names must be unique (statecull: ignoring case) before anything refers to them.
    let implicit = implicit_gateways(cfg);
    let mut seen: HashMap<String, String> = HashMap::new();
    for g in cfg.gateways.iter().chain(&implicit) {
        let p = if g.implicit { path(g.node) } else { path_of(g.node, "name") };
        if g.name.is_empty() {
            return Err((p, "a gateway without a <name>".to_owned()));
        }
        if !valid_name(&g.name) {
            return Err((
                p,
                format!(
                    "gateway name {:?} cannot be a statecull name (letters, digits, _ - . : @ +, at \
                     most 32 characters)",
                    g.name
                ),
            ));
        }
        if let Some(first) = seen.insert(g.name.to_lowercase(), p.clone()) {
            return Err((
                p,
                format!(
                    "a second gateway named {:?} (the first is at {first}): which one do the groups mean?",
                    g.name
                ),
            ));
        }
    }

    let mut gateways: Vec<GatewayOut> = Vec::new();
    let mut items: Vec<&GatewayItem<'_, '_>> = Vec::new();
    let mut skipped: HashMap<String, String> = HashMap::new();
    let mut monitors: HashMap<String, String> = HashMap::new();
    for g in cfg.gateways.iter().chain(&implicit) {
        let gp = path(g.node);
        if g.disabled {
            cx.note(
                path_of(g.node, "disabled"),
                format!("gateway {} is disabled: skipped", g.name),
            );
            skipped.insert(g.name.clone(), "disabled".into());
            continue;
        }
        let Some(key) = g.iface.as_deref() else {
            cx.warn(gp, format!("gateway {} names no <interface>: skipped", g.name));
            skipped.insert(g.name.clone(), "without an interface".into());
            continue;
        };
        let Some(iface) = cfg.iface(key) else {
            cx.warn(
                path_of(g.node, "interface"),
                format!("gateway {} is on interface {key:?}, which <interfaces> does not define: skipped", g.name),
            );
            skipped.insert(g.name.clone(), format!("on the unknown interface {key}"));
            continue;
        };
        if !iface.enabled {
            cx.note(
                path(iface.node),
                format!("gateway {}: interface {key} is not enabled, so {sys} does not use the gateway: skipped", g.name),
            );
            skipped.insert(g.name.clone(), format!("on the disabled interface {key}"));
            continue;
        }
        let Some(device) = iface.device.clone() else {
            cx.warn(
                path(iface.node),
                format!("interface {key} has no <if> (device): gateway {} skipped", g.name),
            );
            skipped.insert(g.name.clone(), format!("on interface {key} without a device"));
            continue;
        };
        if let Err(e) = device.parse::<statecull_proto::IfName>() {
            cx.warn(
                path_of(iface.node, "if"),
                format!("interface {key}'s device: {e}; gateway {} skipped", g.name),
            );
            skipped
                .insert(g.name.clone(), format!("on interface {key} with an unusable device name"));
            continue;
        }
        let family = match (g.gateway.as_deref().and_then(parse_ip), g.ipprotocol.as_deref()) {
            (Some(a), proto) => {
                let f = Family::of(&a);
                let declared = match proto {
                    Some("inet6") => Some(Family::V6),
                    Some("inet") => Some(Family::V4),
                    _ => None,
                };
                if declared.is_some_and(|d| d != f) {
                    cx.warn(
                        path_of(g.node, "ipprotocol"),
                        format!(
                            "gateway {} has an {} address but ipprotocol {:?}; the address decides",
                            g.name,
                            f.word(),
                            proto.unwrap_or_default()
                        ),
                    );
                }
                f
            }
            (None, Some("inet6")) => Family::V6,
            (None, _) => Family::V4,
        };
        let mut comments = vec![format!("from {gp}")];
        if g.implicit {
            comments.push(format!(
                "{sys} makes this gateway itself for the dynamic interface {key} ({device})"
            ));
        }
        let dynamic = is_dynamic(g);
        if let (Some(t), true) = (g.gateway.as_deref(), dynamic)
            && t != "dynamic"
        {
            {
                cx.warn(
                    path_of(g.node, "gateway"),
                    format!(
                        "gateway {} address {t:?} is not an IP address; treated as dynamic",
                        g.name
                    ),
                );
            }
        }
        let address = match g.gateway.as_deref().and_then(parse_ip) {
            Some(a) => Addr { ip: a, placeholder: false },
            None => {
                let n = cx.placeholder_no(key, family);
                placeholder(n, family, true)
            }
        };
        if address.placeholder {
            let local = placeholder(cx.placeholder_no(key, family), family, false).ip;
            cx.warn(
                path_of(g.node, "gateway"),
                format!(
                    "gateway {} on {key} ({device}, {}) is dynamic: its next hop and the \
                     interface's address are learnt at run time, so the policy holds the \
                     placeholders {} (next hop) and {} (interface address); replace them with \
                     the current ones and again whenever they change (a later statecull follows \
                     them itself)",
                    g.name,
                    match iface.addr(family) {
                        IfAddr::Dynamic(k) => k.as_str(),
                        _ => "no static address",
                    },
                    address.ip,
                    local
                ),
            );
        }
        let (loss, latency, latencyhigh, losshigh) = thresholds(&mut cx, g);

        // Health: dpinger, as the system runs it, unless it does not.
        let monitor_text = g.monitor.clone().filter(|m| m != "dynamic");
        let monitor_ip = monitor_text.as_deref().and_then(parse_ip);
        if let (Some(t), None) = (&monitor_text, monitor_ip) {
            cx.warn(path_of(g.node, "monitor"), format!("monitor {t:?} of gateway {} is not an IP address; the gateway address is monitored", g.name));
        }
        let monitored =
            monitor_ip.map_or_else(|| address.clone(), |a| Addr { ip: a, placeholder: false });
        let health = if g.monitor_disable {
            let why = format!(
                "{sys} does not monitor gateway {} (monitoring disabled), so there is no dpinger to read",
                g.name
            );
            cx.warn(
                if g.implicit { path(g.node) } else { path_of(g.node, "monitor_disable") },
                format!(
                    "{why}: health_source = \"external\" (only `statecull gateway {} down|up`)",
                    g.name
                ),
            );
            Health::External { why }
        } else if g.action_disable {
            let why =
                format!("{sys} never acts on gateway {}'s monitoring (action disabled)", g.name);
            cx.warn(
                path_of(g.node, "action_disable"),
                format!("{why}: health_source = \"external\", so statecull does not act on it by itself either"),
            );
            Health::External { why }
        } else {
            let monitor_addr = monitor_ip
                .map(|a| Addr { ip: a, placeholder: false })
                .unwrap_or_else(|| address.clone());
            let mon_key = monitor_addr.ip.to_string();
            if let (Some(first), System::PfSense) = (monitors.get(&mon_key), cfg.system) {
                let why = format!(
                    "gateway {} monitors {mon_key} like gateway {first}; pfSense starts one dpinger per monitor address (setup_gateways_monitor), so this one has none",
                    g.name
                );
                cx.warn(path_of(g.node, "monitor"), format!("{why}: health_source = \"external\""));
                Health::External { why }
            } else {
                monitors.insert(mon_key, g.name.clone());
                match cfg.system {
                    System::OpnSense => Health::Dpinger {
                        socket: dpinger::opnsense_socket(&g.name),
                        placeholder: false,
                    },
                    System::PfSense => {
                        let zone = |a: &Addr| {
                            if is_link_local(&a.ip) {
                                format!("{}%{device}", a.ip)
                            } else {
                                a.ip.to_string()
                            }
                        };
                        let (source, unknown_source) = if is_link_local(&monitor_addr.ip) {
                            (format!("fe80::LINK-LOCAL%{device}"), true)
                        } else {
                            match cx.if_address(iface, family) {
                                Some(a) => (a.ip.to_string(), a.placeholder),
                                None => (format!("{}-ADDRESS-OF-{device}", family.word()), true),
                            }
                        };
                        let socket =
                            dpinger::pfsense_socket(&g.name, &source, &zone(&monitor_addr));
                        let placeholder = unknown_source || monitor_addr.placeholder;
                        if placeholder && !address.placeholder {
                            cx.warn(
                                gp.clone(),
                                format!("pfSense names gateway {}'s dpinger socket after the address dpinger binds on {device}, which config.xml does not hold; replace {source} in dpinger_socket (see `ls /var/run/dpinger_{}~*`)", g.name, g.name),
                            );
                        }
                        Health::Dpinger { socket, placeholder }
                    }
                }
            }
        };
        if g.force_down {
            cx.note(path_of(g.node, "force_down"), format!("gateway {} is marked down by hand in {sys}; statecull judges it by its own health source", g.name));
        }

        // States: route-to states carry the gateway (rt_addr); default-route states are
        // found by the WAN's NAT addresses on its device.
        let nat = nat_addresses(&mut cx, iface, family, &device);
        let rt_addr = Some(address.clone());
        gateways.push(GatewayOut {
            name: g.name.clone(),
            from: gp,
            interface: device,
            address,
            monitor: monitored,
            health,
            loss,
            latency,
            latencyhigh,
            losshigh,
            rt_addr,
            nat,
            comments,
        });
        items.push(g);
    }

    resolve_conflicts(&mut cx, &mut gateways, &mut items, &mut skipped);
    if gateways.is_empty() {
        return Err((
            path(cfg.root),
            format!(
                "no usable gateway in this {sys} configuration (see the warnings above): a policy needs at least one"
            ),
        ));
    }

    let mut groups = groups(&mut cx, &gateways, &items, &skipped);
    if cfg.system == System::OpnSense {
        switching_groups(&mut cx, &gateways, &items, &mut groups);
    }
    global_settings(&mut cx, &gateways, &items);
    let grouped: HashSet<&str> =
        groups.iter().flat_map(|g| g.members.iter().map(|m| m.0.as_str())).collect();
    for g in &gateways {
        if !grouped.contains(g.name.as_str()) {
            cx.note(g.from.clone(), format!("gateway {} is in no gateway group: statecull monitors it but kills none of its states (no group says where its traffic goes)", g.name));
        }
    }
    let readable = gateways
        .iter()
        .filter_map(|g| match &g.health {
            Health::Dpinger { socket, .. } => Some(socket.clone()),
            Health::External { .. } => None,
        })
        .collect();
    Ok(Out { gateways, groups, warnings: cx.warnings, readable })
}

/// The WAN's NAT addresses of `family`: its own address, its virtual IPs, and the targets
/// of outbound NAT rules on it (modes hybrid and advanced; automatic rules translate to the
/// interface address).
fn nat_addresses(
    cx: &mut Cx<'_, '_, '_>,
    iface: &Iface<'_, '_>,
    family: Family,
    device: &str,
) -> Vec<Addr> {
    let cfg = cx.cfg;
    let mut out: Vec<Addr> = Vec::new();
    let mut add = |a: Addr| {
        if Family::of(&a.ip) == family && !out.iter().any(|x| x.ip == a.ip) {
            out.push(a);
        }
    };
    if iface.is_wan(family) {
        if let Some(a) = cx.if_address(iface, family) {
            add(a);
        }
    } else if let Some(a) = cx.if_address(iface, family) {
        // Not a WAN to the system: its automatic outbound NAT does not use this address,
        // and on a LAN it would be the firewall's own address (an admin's session to it).
        cx.warn(
            path(iface.node),
            format!(
                "interface {} ({device}) has no upstream {} gateway set, so the system does not \
                 treat it as a WAN: its address {} is not taken as a NAT address",
                iface.key,
                family.word(),
                a.ip
            ),
        );
    }
    for v in &cfg.vips {
        let on = if let Some(id) = v.iface.strip_prefix("_vip") {
            // An IP alias stacked on a CARP VIP names it by its uniqid.
            cfg.vips.iter().find(|c| c.uniqid.as_deref() == Some(id)).map(|c| c.iface.as_str())
        } else {
            Some(v.iface.as_str())
        };
        if on != Some(iface.key.as_str()) {
            continue;
        }
        let Some(ip) = v.subnet.as_deref().and_then(parse_ip) else {
            cx.warn(
                path_of(v.node, "subnet"),
                format!("virtual IP on {} without an address: not read", iface.key),
            );
            continue;
        };
        let full = if ip.is_ipv4() { "32" } else { "128" };
        if v.network && v.bits.as_deref().is_some_and(|b| b != full) && Family::of(&ip) == family {
            cx.warn(
                path_of(v.node, "subnet_bits"),
                format!(
                    "virtual IP {ip}/{} on {} is a network; only {ip} is taken as a NAT address",
                    v.bits.as_deref().unwrap_or_default(),
                    iface.key
                ),
            );
        }
        add(Addr { ip, placeholder: false });
    }
    let mode = cfg.outbound_mode.as_ref().map(|(m, _)| m.as_str()).unwrap_or("automatic");
    if matches!(mode, "hybrid" | "advanced") {
        for r in cfg.nat_rules.iter().filter(|r| r.iface == iface.key) {
            match r.target.as_deref() {
                None => {}
                Some("other-subnet") => {
                    let Some(ip) = r.targetip.as_deref().and_then(parse_ip) else {
                        cx.warn(path_of(r.node, "targetip"), "outbound NAT rule to another subnet without a usable targetip: not read");
                        continue;
                    };
                    let full = if ip.is_ipv4() { "32" } else { "128" };
                    if r.targetip_subnet.as_deref().is_some_and(|b| b != full) {
                        cx.warn(
                            path_of(r.node, "targetip_subnet"),
                            format!("outbound NAT rule on {} translates to the pool {ip}/{}; only {ip} is taken, add the pool's other addresses to nat_addr by hand", iface.key, r.targetip_subnet.as_deref().unwrap_or_default()),
                        );
                    }
                    add(Addr { ip, placeholder: false });
                }
                Some(t) => {
                    if let Some(ip) = parse_ip(t) {
                        add(Addr { ip, placeholder: false });
                    } else if let Some(other) = t.strip_suffix("ip").and_then(|k| cfg.iface(k)) {
                        // OPNsense: "wanip", the address of interface wan.
                        if let Some(a) = cx.if_address(other, family) {
                            add(a);
                        }
                    } else {
                        cx.warn(
                            path_of(r.node, "target"),
                            format!("outbound NAT rule on {} translates to {t:?}, an alias the import cannot resolve: add its addresses to nat_addr by hand", iface.key),
                        );
                    }
                }
            }
        }
    }
    if out.is_empty() {
        cx.warn(
            path(iface.node),
            format!("no {} address is known for {} ({device}): its gateway's states are recognised only by rt_addr, so states that left by the default route (no route-to) are not found", family.word(), iface.key),
        );
    }
    out
}

/// The policy loader refuses two gateways with the same rt_addr or a NAT address on the
/// same interface (one's kill would take the other's states): the later one loses it.
fn resolve_conflicts(
    cx: &mut Cx<'_, '_, '_>,
    gateways: &mut Vec<GatewayOut>,
    items: &mut Vec<&GatewayItem<'_, '_>>,
    skipped: &mut HashMap<String, String>,
) {
    let mut rt: HashMap<IpAddr, String> = HashMap::new();
    let mut nat: HashMap<(IpAddr, String), String> = HashMap::new();
    let mut i = 0;
    while i < gateways.len() {
        let g = &mut gateways[i];
        if let Some(a) = g.rt_addr.clone() {
            if let Some(first) = rt.get(&a.ip) {
                let msg = format!(
                    "gateway {} has the same address {} as gateway {first}: not used to recognise {}'s states (it would take {first}'s)",
                    g.name, a.ip, g.name
                );
                cx.warn(g.from.clone(), msg);
                g.rt_addr = None;
            } else {
                rt.insert(a.ip, g.name.clone());
            }
        }
        let mut kept = Vec::new();
        for a in std::mem::take(&mut g.nat) {
            let key = (a.ip, g.interface.clone());
            if let Some(first) = nat.get(&key) {
                cx.warn(g.from.clone(), format!("NAT address {} on {} is already gateway {first}'s: not used for gateway {} (two gateways on one interface cannot be told apart by it)", a.ip, g.interface, g.name));
            } else {
                nat.insert(key, g.name.clone());
                kept.push(a);
            }
        }
        g.nat = kept;
        if g.rt_addr.is_none() && g.nat.is_empty() {
            cx.warn(
                g.from.clone(),
                format!(
                    "nothing recognises gateway {}'s states apart from another gateway's: skipped",
                    g.name
                ),
            );
            skipped.insert(g.name.clone(), "skipped (its states cannot be told apart)".into());
            gateways.remove(i);
            items.remove(i);
            continue;
        }
        i += 1;
    }
}

fn groups(
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
        match gr.trigger.as_deref() {
            None | Some("down") => {}
            Some(t) => {
                let what = match t {
                    "downloss" => "packet loss",
                    "downlatency" => "high latency",
                    "downlosslatency" => "packet loss or high latency",
                    _ => "an unknown level",
                };
                cx.warn(
                    path_of(gr.node, "trigger"),
                    format!("group {name} leaves a member on {what} (trigger {t:?}); statecull acts when a member is down only (a later version adds trigger = down|loss|latency|loss-or-latency): not translated"),
                );
                comments
                    .push(format!("{sys} trigger {t:?} (not translated: statecull acts on down)"));
            }
        }
        let tiers: HashSet<u8> = members.iter().map(|m| m.1).collect();
        if tiers.len() < members.len() {
            comments.push("members sharing a tier share load, as in the gateway group".to_owned());
        }
        let (on_down, on_recovery) = match cfg.system {
            System::PfSense => pfsense_group_modes(cx, gr, &members, items),
            System::OpnSense => opnsense_group_modes(cx, &name, &gp, &members, items),
        };
        out.push(GroupOut { name, members, on_down, on_recovery, comments });
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
fn global_settings(
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
        cx.note(String::new(), format!("{} also calls a gateway down above latencyhigh (default {LATENCY_HIGH} ms); statecull judges down by loss only, latency makes a gateway degraded", cfg.system.name()));
    }
}

/// OPNsense's default gateway switching (`<system><gw_switch_default>`) is a failover of
/// the default route: `Gateways::getDefaultGW()` takes the first gateway of a family that is
/// not down, in `getGateways()`'s order (upstream gateways first, then by priority, lower is
/// better, then the later one first). Its Failover/Failback States work with it, so it is
/// translated into one group per family with a tier per gateway in that order.
fn switching_groups(
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
            comments: vec![format!(
                "from {at}: OPNsense's default gateway switching (upstream first, then by priority)"
            )],
        });
    }
}
