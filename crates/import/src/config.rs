//! The parts of `config.xml` the importer uses, read into one model for both systems.
//!
//! Layouts (from the systems' sources):
//! * interfaces: `<interfaces><wan><if>igb0</if><descr>WAN</descr><enable/>
//!   <ipaddr>198.51.100.1|dhcp|pppoe|...</ipaddr><subnet>24</subnet>
//!   <ipaddrv6>2001:db8::1|dhcp6|slaac|track6|...</ipaddrv6><subnetv6>64</subnetv6>`; a PPPoE
//!   WAN's `<if>` is the ppp device (`pppoe0`), the one pf keeps its states on;
//! * gateways: `<gateways><gateway_item>` (pfSense, OPNsense before the MVC model); recent
//!   OPNsense keeps them under `<OPNsense><Gateways><gateway_item uuid=..>` and then ignores
//!   the legacy list (`Gateways::gatewayIterator()` in `models/OPNsense/Routing/Gateways.php`);
//! * groups: `<gateways><gateway_group>` with `<item>GW|tier[|vip]</item>` (pfSense, old
//!   OPNsense) or `<item>GW1,GW2</item><item2>..</item2>..<item5>` (tier = the number,
//!   OPNsense `GatewayGroupItemField`), and `<trigger>`;
//! * virtual IPs: `<virtualip><vip><mode/><interface/><subnet/><subnet_bits/>`;
//! * outbound NAT: `<nat><outbound><mode>automatic|hybrid|advanced|disabled</mode>
//!   <rule><interface/><target/><targetip/><targetip_subnet/><disabled/><nonat/>`, and on
//!   OPNsense also `<OPNsense><Firewall><Filter><snatrules><rule>` (same modes);
//! * state killing: pfSense `<system><gw_down_kill_states>`, `<keep_failover_states>`,
//!   `<remove_failover_states_default>`, `<skip_rules_gw_down>`, per gateway
//!   `<gw_down_kill_states>`, per group `<keep_failover_states>`; OPNsense per gateway
//!   `<monitor_killstates>`, `<monitor_killstates_priority>`, `<system><skip_rules_gw_down>`,
//!   `<gw_switch_default>`.

use std::net::IpAddr;

use roxmltree::Node;

use crate::System;
use crate::xml::{child, children, descend, flag, own_text, path, path_of, text};

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(a: &IpAddr) -> Family {
        if a.is_ipv4() { Family::V4 } else { Family::V6 }
    }
    pub(crate) fn word(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// How an interface gets an address of one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum IfAddr {
    /// Written in the configuration.
    Static(IpAddr),
    /// Learnt at run time (`dhcp`, `pppoe`, `dhcp6`, `slaac`, ...): the word.
    Dynamic(String),
    /// Anything else (`track6`, a tunnel, none).
    None,
}

pub(crate) struct Iface<'a, 'i> {
    /// The logical name (`wan`, `opt1`).
    pub(crate) key: String,
    pub(crate) node: Node<'a, 'i>,
    /// The real device (`igb0`, `pppoe0`), `<if>`.
    pub(crate) device: Option<String>,
    pub(crate) descr: Option<String>,
    pub(crate) enabled: bool,
    pub(crate) v4: IfAddr,
    pub(crate) v6: IfAddr,
    /// An upstream gateway is set on the interface (`<gateway>`, `<gatewayv6>`): what makes
    /// a static interface a WAN to pfSense (`interface_has_gateway()`) and OPNsense
    /// (`filter_auto_source_nat()`), whose automatic outbound NAT then uses its address.
    pub(crate) upstream_v4: bool,
    pub(crate) upstream_v6: bool,
}

impl Iface<'_, '_> {
    /// Whether the system treats the interface as a WAN of `family`: an upstream gateway is
    /// set, or the address is learnt from the provider.
    pub(crate) fn is_wan(&self, family: Family) -> bool {
        match family {
            Family::V4 => self.upstream_v4 || matches!(self.v4, IfAddr::Dynamic(_)),
            Family::V6 => self.upstream_v6 || matches!(self.v6, IfAddr::Dynamic(_)),
        }
    }

    pub(crate) fn addr(&self, family: Family) -> &IfAddr {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

pub(crate) struct GatewayItem<'a, 'i> {
    pub(crate) node: Node<'a, 'i>,
    pub(crate) name: String,
    pub(crate) iface: Option<String>,
    /// `<gateway>`: an address, `dynamic`, or empty (dynamic).
    pub(crate) gateway: Option<String>,
    pub(crate) ipprotocol: Option<String>,
    pub(crate) monitor: Option<String>,
    pub(crate) disabled: bool,
    pub(crate) monitor_disable: bool,
    pub(crate) action_disable: bool,
    pub(crate) force_down: bool,
    /// `(value, path)` of latencylow, latencyhigh, losslow, losshigh when written.
    pub(crate) latencylow: Option<(String, String)>,
    pub(crate) latencyhigh: Option<(String, String)>,
    pub(crate) losslow: Option<(String, String)>,
    pub(crate) losshigh: Option<(String, String)>,
    /// pfSense `<gw_down_kill_states>`: "", "none", "down".
    pub(crate) kill_states: Option<String>,
    /// OPNsense `<monitor_killstates>`, `<monitor_killstates_priority>`.
    pub(crate) killstates: bool,
    pub(crate) killstates_priority: bool,
    pub(crate) weight: Option<String>,
    /// OPNsense: `<priority>` (lower is preferred) and `<defaultgw>` ("upstream gateway"),
    /// the order of default gateway switching.
    pub(crate) priority: Option<String>,
    pub(crate) defaultgw: bool,
    /// Not in the configuration: the gateway the system makes for a dynamic interface.
    pub(crate) implicit: bool,
}

pub(crate) struct GroupMember<'a, 'i> {
    pub(crate) node: Node<'a, 'i>,
    pub(crate) gateway: String,
    pub(crate) tier: Result<u8, String>,
    pub(crate) vip: Option<String>,
}

pub(crate) struct Group<'a, 'i> {
    pub(crate) node: Node<'a, 'i>,
    pub(crate) name: Option<String>,
    pub(crate) members: Vec<GroupMember<'a, 'i>>,
    pub(crate) trigger: Option<String>,
    pub(crate) keep_failover_states: Option<String>,
}

pub(crate) struct Vip<'a, 'i> {
    pub(crate) node: Node<'a, 'i>,
    pub(crate) iface: String,
    pub(crate) subnet: Option<String>,
    /// `<type>`: `single` or `network` (proxy ARP and "other" VIPs may be networks; for
    /// CARP and IP aliases `<subnet_bits>` is the prefix of the subnet the address is in).
    pub(crate) network: bool,
    pub(crate) bits: Option<String>,
    pub(crate) uniqid: Option<String>,
}

pub(crate) struct NatRule<'a, 'i> {
    pub(crate) node: Node<'a, 'i>,
    pub(crate) iface: String,
    pub(crate) target: Option<String>,
    pub(crate) targetip: Option<String>,
    pub(crate) targetip_subnet: Option<String>,
}

pub(crate) struct Config<'a, 'i> {
    pub(crate) system: System,
    pub(crate) root: Node<'a, 'i>,
    pub(crate) interfaces: Vec<Iface<'a, 'i>>,
    pub(crate) gateways: Vec<GatewayItem<'a, 'i>>,
    /// Where the gateways were read from, and a legacy list that was ignored.
    pub(crate) gateways_from: &'static str,
    pub(crate) ignored_legacy: Option<Node<'a, 'i>>,
    pub(crate) groups: Vec<Group<'a, 'i>>,
    pub(crate) vips: Vec<Vip<'a, 'i>>,
    /// `(mode, node)` of `<nat><outbound><mode>`; absent means automatic.
    pub(crate) outbound_mode: Option<(String, Node<'a, 'i>)>,
    pub(crate) nat_rules: Vec<NatRule<'a, 'i>>,
    pub(crate) system_node: Option<Node<'a, 'i>>,
    /// Element children of gateway items and groups this importer does not know.
    pub(crate) unknown: Vec<Node<'a, 'i>>,
}

/// Gateway item elements of pfSense (`system_gateways_edit.php`, `gwlb.inc`) and OPNsense
/// (`Gateways.xml`, legacy items).
const GATEWAY_FIELDS: &[&str] = &[
    "interface",
    "gateway",
    "name",
    "weight",
    "ipprotocol",
    "descr",
    "monitor",
    "monitor_disable",
    "action_disable",
    "force_down",
    "latencylow",
    "latencyhigh",
    "losslow",
    "losshigh",
    "interval",
    "loss_interval",
    "time_period",
    "alert_interval",
    "data_payload",
    "data_length",
    "gw_down_kill_states",
    "disabled",
    "nonlocalgateway",
    "fargw",
    "dpinger_dont_add_static_route",
    "defaultgw",
    "monitor_noroute",
    "monitor_killstates",
    "monitor_killstates_priority",
    "nosync",
    "priority",
    "friendlyiface",
];

/// Gateway group elements (`system_gateway_groups_edit.php`, `GatewayGroups.xml`).
const GROUP_FIELDS: &[&str] = &[
    "name",
    "item",
    "item2",
    "item3",
    "item4",
    "item5",
    "trigger",
    "descr",
    "keep_failover_states",
    "poolopts",
];

fn owned(s: Option<&str>) -> Option<String> {
    s.map(str::to_owned)
}

fn if_addr(node: Node<'_, '_>, tag: &str) -> IfAddr {
    match text(node, tag) {
        None => IfAddr::None,
        Some(t) => match t.parse::<IpAddr>() {
            Ok(a) => IfAddr::Static(a),
            Err(_) => match t {
                "dhcp" | "pppoe" | "pptp" | "l2tp" | "ppp" | "dhcp6" | "slaac" | "6rd" | "6to4" => {
                    IfAddr::Dynamic(t.to_owned())
                }
                _ => IfAddr::None,
            },
        },
    }
}

fn with_path(node: Node<'_, '_>, tag: &str) -> Option<(String, String)> {
    text(node, tag).map(|t| (t.to_owned(), path_of(node, tag)))
}

fn gateway_item<'a, 'i>(
    node: Node<'a, 'i>,
    unknown: &mut Vec<Node<'a, 'i>>,
) -> Option<GatewayItem<'a, 'i>> {
    for c in node.children().filter(Node::is_element) {
        if !GATEWAY_FIELDS.contains(&c.tag_name().name()) {
            unknown.push(c);
        }
    }
    if node.children().all(|c| !c.is_element()) {
        return None;
    }
    Some(GatewayItem {
        node,
        name: text(node, "name").unwrap_or_default().to_owned(),
        iface: owned(text(node, "interface")),
        gateway: owned(text(node, "gateway")),
        ipprotocol: owned(text(node, "ipprotocol")),
        monitor: owned(text(node, "monitor")),
        disabled: flag(node, "disabled"),
        monitor_disable: flag(node, "monitor_disable"),
        action_disable: flag(node, "action_disable"),
        force_down: flag(node, "force_down"),
        latencylow: with_path(node, "latencylow"),
        latencyhigh: with_path(node, "latencyhigh"),
        losslow: with_path(node, "losslow"),
        losshigh: with_path(node, "losshigh"),
        kill_states: owned(text(node, "gw_down_kill_states")),
        killstates: flag(node, "monitor_killstates"),
        killstates_priority: flag(node, "monitor_killstates_priority"),
        weight: owned(text(node, "weight")),
        priority: owned(text(node, "priority")),
        defaultgw: flag(node, "defaultgw"),
        implicit: false,
    })
}

fn group<'a, 'i>(node: Node<'a, 'i>, unknown: &mut Vec<Node<'a, 'i>>) -> Group<'a, 'i> {
    let mut members = Vec::new();
    for c in node.children().filter(Node::is_element) {
        let tag = c.tag_name().name();
        if !GROUP_FIELDS.contains(&tag) {
            unknown.push(c);
            continue;
        }
        let Some(tier_of_tag) = (match tag {
            "item" => Some(1u8),
            "item2" => Some(2),
            "item3" => Some(3),
            "item4" => Some(4),
            "item5" => Some(5),
            _ => None,
        }) else {
            continue;
        };
        let Some(value) = own_text(c) else { continue };
        if value.contains('|') {
            // pfSense and legacy OPNsense: GW|tier[|vip], one per <item>.
            let mut parts = value.split('|');
            let gateway = parts.next().unwrap_or_default().trim().to_owned();
            let tier_text = parts.next().unwrap_or_default().trim();
            let tier = tier_text
                .parse::<u8>()
                .map_err(|_| format!("tier {tier_text:?} of {value:?} is not a number"));
            let vip = parts.next().map(str::trim).filter(|v| !v.is_empty() && *v != "address");
            members.push(GroupMember { node: c, gateway, tier, vip: owned(vip) });
        } else {
            // OPNsense MVC: <item>GW1,GW2</item> is tier 1, <item2> tier 2, ...
            for gw in value.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                members.push(GroupMember {
                    node: c,
                    gateway: gw.to_owned(),
                    tier: Ok(tier_of_tag),
                    vip: None,
                });
            }
        }
    }
    Group {
        node,
        name: owned(text(node, "name")),
        members,
        trigger: owned(text(node, "trigger")),
        keep_failover_states: owned(text(node, "keep_failover_states")),
    }
}

/// Read `root` (already known to be `system`'s). Errors are `(path, message)`.
pub(crate) fn read<'a, 'i>(
    system: System,
    root: Node<'a, 'i>,
) -> Result<Config<'a, 'i>, (String, String)> {
    let mut interfaces = Vec::new();
    if let Some(ifs) = child(root, "interfaces") {
        for n in ifs.children().filter(Node::is_element) {
            interfaces.push(Iface {
                key: n.tag_name().name().to_owned(),
                node: n,
                device: owned(text(n, "if")),
                descr: owned(text(n, "descr")),
                enabled: flag(n, "enable"),
                v4: if_addr(n, "ipaddr"),
                v6: if_addr(n, "ipaddrv6"),
                upstream_v4: text(n, "gateway").is_some(),
                upstream_v6: text(n, "gatewayv6").is_some(),
            });
        }
    }
    if interfaces.is_empty() {
        return Err((
            path(root),
            "no <interfaces>: without them no gateway's interface can be found".to_owned(),
        ));
    }
    let mut unknown = Vec::new();
    let legacy = child(root, "gateways");
    let mvc = descend(root, &["OPNsense", "Gateways"])
        .filter(|g| children(*g, "gateway_item").any(|i| i.children().any(|c| c.is_element())));
    let (source, gateways_from, ignored_legacy) = match (system, mvc) {
        (System::OpnSense, Some(m)) => {
            let ignored = legacy.filter(|l| children(*l, "gateway_item").next().is_some());
            (Some(m), "<OPNsense><Gateways> (the MVC model)", ignored)
        }
        (System::OpnSense, None) => (legacy, "<gateways> (the legacy list)", None),
        (System::PfSense, _) => (legacy, "<gateways>", None),
    };
    let mut gateways = Vec::new();
    if let Some(src) = source {
        for n in children(src, "gateway_item") {
            if let Some(g) = gateway_item(n, &mut unknown) {
                gateways.push(g);
            }
        }
    }
    let groups = legacy
        .map(|l| children(l, "gateway_group").map(|g| group(g, &mut unknown)).collect())
        .unwrap_or_default();
    let mut vips = Vec::new();
    if let Some(v) = child(root, "virtualip") {
        for n in children(v, "vip") {
            vips.push(Vip {
                node: n,
                iface: text(n, "interface").unwrap_or_default().to_owned(),
                subnet: owned(text(n, "subnet")),
                network: text(n, "type") == Some("network"),
                bits: owned(text(n, "subnet_bits")),
                uniqid: owned(text(n, "uniqid")),
            });
        }
    }
    let outbound = descend(root, &["nat", "outbound"]);
    let outbound_mode = outbound
        .and_then(|o| child(o, "mode"))
        .and_then(|m| own_text(m).map(|t| (t.to_owned(), m)));
    let mut nat_rules = Vec::new();
    if let Some(o) = outbound {
        for r in children(o, "rule") {
            if flag(r, "disabled") || flag(r, "nonat") {
                continue;
            }
            nat_rules.push(NatRule {
                node: r,
                iface: text(r, "interface").unwrap_or_default().to_owned(),
                target: owned(text(r, "target")),
                targetip: owned(text(r, "targetip")),
                targetip_subnet: owned(text(r, "targetip_subnet")),
            });
        }
    }
    // OPNsense's MVC source NAT rules (Firewall > NAT > Source NAT), registered with the
    // legacy ones in hybrid and advanced modes (`pf.inc`); `<enabled>` defaults to 1.
    if system == System::OpnSense
        && let Some(snat) = descend(root, &["OPNsense", "Firewall", "Filter", "snatrules"])
    {
        {
            for r in children(snat, "rule") {
                if text(r, "enabled") == Some("0") || flag(r, "nonat") {
                    continue;
                }
                nat_rules.push(NatRule {
                    node: r,
                    iface: text(r, "interface").unwrap_or_default().to_owned(),
                    target: owned(text(r, "target")),
                    targetip: None,
                    targetip_subnet: None,
                });
            }
        }
    }
    Ok(Config {
        system,
        root,
        interfaces,
        gateways,
        gateways_from,
        ignored_legacy,
        groups,
        vips,
        outbound_mode,
        nat_rules,
        system_node: child(root, "system"),
        unknown,
    })
}

impl<'a, 'i> Config<'a, 'i> {
    pub(crate) fn iface(&self, key: &str) -> Option<&Iface<'a, 'i>> {
        self.interfaces.iter().find(|i| i.key == key)
    }

    /// A `<system>` setting's text: `Some("")` when the element is present but empty.
    pub(crate) fn system_setting(&self, tag: &str) -> Option<(String, String)> {
        let s = self.system_node?;
        let c = child(s, tag)?;
        Some((own_text(c).unwrap_or_default().to_owned(), path(c)))
    }
}
