//! From the configuration model to policy decisions. Every rule names the code of pfSense
//! (`gwlb.inc`, `filter.inc`) or OPNsense (`Gateways.php`, `dpinger.inc`) it follows; every
//! setting that does not translate becomes a [`Warning`] naming its XML path.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::config::{Config, Family, GatewayItem, IfAddr, Iface};
use crate::xml::{path, path_of};
use crate::{Severity, System, Warning};
use crate::{dpinger, groups};

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
    /// `nat_addr = "interface"`: the WAN learns its address at run time (DHCP, PPPoE), so
    /// the engine follows the interface's addresses instead of a listed one.
    pub(crate) nat_from_interface: bool,
    pub(crate) comments: Vec<String>,
}

pub(crate) struct GroupOut {
    pub(crate) name: String,
    pub(crate) members: Vec<(String, u8)>,
    pub(crate) on_down: &'static str,
    pub(crate) on_recovery: &'static str,
    /// `down`, `loss`, `latency` or `loss-or-latency`.
    pub(crate) trigger: &'static str,
    pub(crate) comments: Vec<String>,
}

pub(crate) struct Out {
    pub(crate) gateways: Vec<GatewayOut>,
    pub(crate) groups: Vec<GroupOut>,
    pub(crate) warnings: Vec<Warning>,
}

type Fatal = (String, String);

/// dpinger's defaults: pfSense `return_dpinger_defaults()`, OPNsense
/// `GatewayField::getDpingerDefaults()` (the same four values).
const LATENCY_LOW: u32 = 200;
pub(crate) const LATENCY_HIGH: u32 = 500;
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

pub(crate) struct Cx<'c, 'a, 'i> {
    pub(crate) cfg: &'c Config<'a, 'i>,
    pub(crate) warnings: Vec<Warning>,
    /// Dynamic (interface, family) pairs in order of first use: the placeholder number.
    dynamic: Vec<(String, Family)>,
}

impl Cx<'_, '_, '_> {
    pub(crate) fn warn(&mut self, path: String, message: impl Into<String>) {
        self.warnings.push(Warning { severity: Severity::Warning, path, message: message.into() });
    }
    pub(crate) fn note(&mut self, path: String, message: impl Into<String>) {
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
pub(crate) fn valid_name(n: &str) -> bool {
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
/// level that means down (a group's `trigger = "latency"` fails a member from
/// latency_degraded): latencyhigh is reported.
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
                 loss only (latency makes it degraded, which a group's trigger = \"latency\" or \
                 \"loss-or-latency\" fails over on), so this level is not translated",
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
            cx.warn(
                path_of(g.node, "gateway"),
                format!(
                    "gateway {} address {t:?} is not an IP address; treated as dynamic",
                    g.name
                ),
            );
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
            // pfSense names the dpinger socket after the interface's address too.
            let named = if cx.cfg.system == System::PfSense {
                format!(
                    "placeholders {} (next hop: address and rt_addr, which the policy needs \
                     literally) and {local} (the interface's address in the name of pfSense's \
                     dpinger socket); replace them",
                    address.ip
                )
            } else {
                format!(
                    "placeholder {} (next hop: address and rt_addr, which the policy needs \
                     literally); replace it",
                    address.ip
                )
            };
            cx.warn(
                path_of(g.node, "gateway"),
                format!(
                    "gateway {} on {key} ({device}, {}) is dynamic: its next hop is learnt at run \
                     time, so the policy holds the {named} with the current one and again \
                     whenever it changes. Its NAT addresses need no hand: nat_addr = \
                     \"interface\" follows them",
                    g.name,
                    match iface.addr(family) {
                        IfAddr::Dynamic(k) => k.as_str(),
                        _ => "no static address",
                    },
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
        let mut nat = nat_addresses(&mut cx, iface, family, &device);
        // A dynamic interface address: the engine follows the interface's addresses
        // (`nat_addr = "interface"`) instead of a placeholder to replace by hand.
        let nat_from_interface = nat.iter().any(|a| a.placeholder);
        if nat_from_interface {
            nat.retain(|a| !a.placeholder);
            cx.note(
                path(iface.node),
                format!(
                    "interface {key} ({device}) of gateway {} learns its {} address at run time: \
                     nat_addr = \"interface\" has the engine follow {device}'s addresses (Linux: \
                     rtnetlink; FreeBSD: the routing socket, type-checked only)",
                    g.name,
                    family.word(),
                ),
            );
        }
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
            nat_from_interface,
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

    let mut groups = groups::groups(&mut cx, &gateways, &items, &skipped);
    if cfg.system == System::OpnSense {
        groups::switching_groups(&mut cx, &gateways, &items, &mut groups);
    }
    groups::global_settings(&mut cx, &gateways, &items);
    let grouped: HashSet<&str> =
        groups.iter().flat_map(|g| g.members.iter().map(|m| m.0.as_str())).collect();
    for g in &gateways {
        if !grouped.contains(g.name.as_str()) {
            cx.note(g.from.clone(), format!("gateway {} is in no gateway group: statecull monitors it but kills none of its states (no group says where its traffic goes)", g.name));
        }
    }
    Ok(Out { gateways, groups, warnings: cx.warnings })
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
    let mut by_interface: HashMap<(String, Family), String> = HashMap::new();
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
        if g.nat_from_interface {
            let key = (g.interface.clone(), Family::of(&g.address.ip));
            if let Some(first) = by_interface.get(&key) {
                cx.warn(g.from.clone(), format!("gateway {first} already takes its NAT addresses from {}: not used for gateway {} (two gateways of one family on one interface cannot be told apart by them)", g.interface, g.name));
                g.nat_from_interface = false;
            } else {
                by_interface.insert(key, g.name.clone());
            }
        }
        if g.rt_addr.is_none() && g.nat.is_empty() && !g.nat_from_interface {
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
