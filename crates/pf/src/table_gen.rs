//! A realistic two-WAN router's pf state table, for the model's tests and benchmarks.
//!
//! The firewall has a LAN and two WANs with a gateway each. Connections, with their states:
//! * policy-routed out of WAN1 or WAN2 (`route-to`): a LAN-side state (IN on the LAN,
//!   `rt_addr` = the gateway) and its WAN-side NAT twin (OUT on the WAN, wire key with the
//!   WAN's address, `rt_addr` 0); some WAN2 ones are VoIP (UDP 5060 / RTP, label `voip`);
//! * default-route out of WAN1: the same two states, both with `rt_addr` 0;
//! * inbound port forwards on either WAN: a WAN-side state (IN, `reply-to` = that WAN's
//!   gateway, wire key to the public address, stack key to the internal server) and a
//!   LAN-side state (OUT on the LAN);
//! * the firewall's own connections out of a WAN (one state, no twin);
//! * LAN hosts talking to the firewall itself (one state).
//!
//! Addresses are documentation ranges: LAN 192.0.2.0/24 and 2001:db8:1::/64, WAN1
//! 198.51.100.0/24 and 2001:db8:a::/64, WAN2 203.0.113.0/24 and 2001:db8:b::/64, remote
//! hosts 198.18.0.0/15 and 2001:db8:ff::/48. Deterministic for a given seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::{ModelError, PfModel};
use crate::types::{AF_INET, AF_INET6, Direction, PfKey, PfState};

/// The router's interfaces and addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    pub lan_if: &'static str,
    pub wan_if: [&'static str; 2],
    /// Gateway of each WAN (IPv4, IPv6).
    pub gateway: [(Ipv4Addr, Ipv6Addr); 2],
    /// The firewall's own address on each WAN, used for NAT.
    pub wan_addr: [(Ipv4Addr, Ipv6Addr); 2],
    pub lan_addr: (Ipv4Addr, Ipv6Addr),
    /// The internal server behind the port forwards.
    pub server: (Ipv4Addr, Ipv6Addr),
}

/// The lab's router.
pub const ROUTER: Router = Router {
    lan_if: "igb0",
    wan_if: ["igb1", "igb2"],
    gateway: [
        (Ipv4Addr::new(198, 51, 100, 254), Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0xfe)),
        (Ipv4Addr::new(203, 0, 113, 254), Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0xfe)),
    ],
    wan_addr: [
        (Ipv4Addr::new(198, 51, 100, 1), Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1)),
        (Ipv4Addr::new(203, 0, 113, 1), Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1)),
    ],
    lan_addr: (Ipv4Addr::new(192, 0, 2, 1), Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1)),
    server: (Ipv4Addr::new(192, 0, 2, 200), Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0xc8)),
};

/// Kinds of connection the generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `route-to` WAN1's gateway.
    PolicyWan1,
    /// `route-to` WAN2's gateway.
    PolicyWan2,
    /// VoIP (SIP/RTP over UDP), `route-to` WAN2's gateway, label `voip`.
    VoipWan2,
    /// Out of WAN1 by the default route (no `route-to`: `rt_addr` 0).
    DefaultWan1,
    /// Port forward on WAN1 or WAN2 (`reply-to` that WAN's gateway).
    ForwardWan1,
    ForwardWan2,
    /// The firewall's own connection out of WAN1 or WAN2.
    OwnWan1,
    OwnWan2,
    /// A LAN host talking to the firewall.
    LanToFirewall,
}

impl Kind {
    /// The WAN (0 or 1) whose gateway carries this connection, if any.
    pub fn wan(self) -> Option<usize> {
        match self {
            Kind::PolicyWan1 | Kind::DefaultWan1 | Kind::ForwardWan1 | Kind::OwnWan1 => Some(0),
            Kind::PolicyWan2 | Kind::VoipWan2 | Kind::ForwardWan2 | Kind::OwnWan2 => Some(1),
            Kind::LanToFirewall => None,
        }
    }
}

/// Rule numbers (and so labels) of the generated ruleset.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub lan_wan1: u32,
    pub lan_wan2: u32,
    pub voip: u32,
    pub lan_default: u32,
    pub out_wan: [u32; 2],
    pub forward: [u32; 2],
    pub own: u32,
    pub antilockout: u32,
}

/// What to generate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// At least this many states (connections are added whole).
    pub states: usize,
    pub seed: u64,
    pub ipv6_percent: u8,
    /// Share of connections whose states are floating (`ifname` "all").
    pub floating_percent: u8,
    pub rows: usize,
}

impl Spec {
    pub fn new(states: usize, seed: u64) -> Self {
        Self {
            states,
            seed,
            ipv6_percent: 15,
            floating_percent: 50,
            rows: crate::model::DEFAULT_ROWS,
        }
    }
}

/// One generated connection: its kind and the ids of its states (LAN side first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub kind: Kind,
    pub ids: Vec<u64>,
}

/// A generated table.
#[derive(Debug)]
pub struct Generated {
    pub model: PfModel,
    pub rules: Rules,
    pub connections: Vec<Connection>,
    /// Connections dropped because their keys collided with an earlier one.
    pub collisions: usize,
}

/// splitmix64.
fn mix(i: u64, salt: u64) -> u64 {
    let mut z = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn pick_kind(r: u64) -> Kind {
    match r % 100 {
        0..35 => Kind::PolicyWan1,
        35..55 => Kind::PolicyWan2,
        55..60 => Kind::VoipWan2,
        60..78 => Kind::DefaultWan1,
        78..83 => Kind::ForwardWan1,
        83..86 => Kind::ForwardWan2,
        86..90 => Kind::OwnWan1,
        90..93 => Kind::OwnWan2,
        _ => Kind::LanToFirewall,
    }
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// Build the table.
pub fn router_table(spec: &Spec) -> Result<Generated, ModelError> {
    let r = &ROUTER;
    let mut model = PfModel::new(spec.rows, 0x5eed_0001);
    let rules = Rules {
        lan_wan1: model.add_rule(&["LAN via WAN1", "gw=WAN1"]),
        lan_wan2: model.add_rule(&["LAN via WAN2", "gw=WAN2"]),
        voip: model.add_rule(&["voip", "gw=WAN2"]),
        lan_default: model.add_rule(&["LAN default"]),
        out_wan: [model.add_rule(&["let out WAN1"]), model.add_rule(&["let out WAN2"])],
        forward: [model.add_rule(&["rdr WAN1 https"]), model.add_rule(&["rdr WAN2 https"])],
        own: model.add_rule(&["firewall itself"]),
        antilockout: model.add_rule(&["anti-lockout"]),
    };
    let mut out = Generated { model, rules, connections: Vec::new(), collisions: 0 };
    let mut i: u64 = 0;
    while out.model.len() < spec.states {
        i += 1;
        let kind = pick_kind(mix(i, spec.seed));
        let six = mix(i, spec.seed ^ 2) % 100 < u64::from(spec.ipv6_percent);
        let floating = mix(i, spec.seed ^ 3) % 100 < u64::from(spec.floating_percent);
        let states = connection(r, &out.rules, kind, i, six, mix(i, spec.seed ^ 4));
        let mut ids = Vec::new();
        let mut ok = true;
        for mut s in states {
            if floating {
                s.orig_ifname = s.ifname.clone();
                s.ifname = "all".into();
            }
            match out.model.insert(s) {
                Ok(id) => ids.push(id),
                Err(ModelError::Collision(_)) => {
                    ok = false;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if ok {
            out.connections.push(Connection { kind, ids });
        } else {
            // Take back the half already inserted: connections are whole or absent.
            for id in ids {
                out.model.kill_states(&crate::types::PfKill::by_id(id, 0));
            }
            out.collisions += 1;
        }
    }
    // Building the table is not part of any measured operation.
    out.model.reset_cost();
    Ok(out)
}

/// The states of connection number `i`.
fn connection(r: &Router, rules: &Rules, kind: Kind, i: u64, six: bool, rnd: u64) -> Vec<PfState> {
    let af = if six { AF_INET6 } else { AF_INET };
    let client_n = u16::try_from(i % 250).unwrap_or(0) + 2;
    let client = if six {
        v6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x100 + client_n))
    } else {
        v4(Ipv4Addr::new(192, 0, 2, u8::try_from(client_n).unwrap_or(2)))
    };
    let cport = 1024 + u16::try_from((i / 250) % 64_000).unwrap_or(0);
    let remote = if six {
        v6(Ipv6Addr::from((0x2001_0db8_00ff_u128 << 80) | u128::from(rnd & 0xffff_ffff)))
    } else {
        v4(Ipv4Addr::from(
            u32::from(Ipv4Addr::new(198, 18, 0, 0)) + u32::try_from(rnd % (1 << 17)).unwrap_or(0),
        ))
    };
    let pick = |pair: (Ipv4Addr, Ipv6Addr)| if six { v6(pair.1) } else { v4(pair.0) };
    let (proto, rport) = match kind {
        Kind::VoipWan2 => (
            17,
            if rnd.is_multiple_of(4) {
                5060
            } else {
                10_000 + u16::try_from(rnd % 20_000).unwrap_or(0)
            },
        ),
        Kind::OwnWan1 | Kind::OwnWan2 => (17, if rnd.is_multiple_of(2) { 53 } else { 123 }),
        _ if rnd.is_multiple_of(5) => (17, 443),
        _ => (6, [443u16, 80, 993, 22, 5223][usize::try_from(rnd % 5).unwrap_or(0)]),
    };
    let key = |a0: IpAddr, p0: u16, a1: IpAddr, p1: u16| PfKey {
        af,
        proto,
        addr: [a0, a1],
        port: [p0, p1],
    };
    let state =
        |dir: Direction, ifname: &str, wire: PfKey, stack: PfKey, rt: Option<IpAddr>, rule: u32| {
            PfState {
                id: 0,
                creatorid: 0,
                direction: dir,
                ifname: ifname.to_owned(),
                orig_ifname: ifname.to_owned(),
                wire,
                stack,
                rt_addr: rt,
                rule,
                packets: [rnd % 1000, rnd % 700],
                bytes: [rnd % 100_000, rnd % 70_000],
                creation: u32::try_from(rnd % 86_400).unwrap_or(0),
                expire: 86_400,
            }
        };
    // An outbound connection through WAN `w`: the LAN-side IN state keys C->S; the WAN-side
    // OUT state stores addr[0] = S (destination), addr[1] = the NATed source.
    let outbound = |w: usize, rt: Option<IpAddr>, lan_rule: u32| {
        let lan = key(client, cport, remote, rport);
        let nat = pick(r.wan_addr[w]);
        vec![
            state(Direction::In, r.lan_if, lan, lan, rt, lan_rule),
            state(
                Direction::Out,
                r.wan_if[w],
                key(remote, rport, nat, cport),
                key(remote, rport, client, cport),
                None,
                rules.out_wan[w],
            ),
        ]
    };
    match kind {
        Kind::PolicyWan1 => outbound(0, Some(pick(r.gateway[0])), rules.lan_wan1),
        Kind::PolicyWan2 => outbound(1, Some(pick(r.gateway[1])), rules.lan_wan2),
        Kind::VoipWan2 => outbound(1, Some(pick(r.gateway[1])), rules.voip),
        Kind::DefaultWan1 => outbound(0, None, rules.lan_default),
        Kind::ForwardWan1 | Kind::ForwardWan2 => {
            let w = usize::from(kind == Kind::ForwardWan2);
            let public = pick(r.wan_addr[w]);
            let inside = pick(r.server);
            vec![
                state(
                    Direction::In,
                    r.wan_if[w],
                    key(remote, cport, public, 443),
                    key(remote, cport, inside, 8443),
                    Some(pick(r.gateway[w])),
                    rules.forward[w],
                ),
                state(
                    Direction::Out,
                    r.lan_if,
                    key(inside, 8443, remote, cport),
                    key(inside, 8443, remote, cport),
                    None,
                    rules.forward[w],
                ),
            ]
        }
        Kind::OwnWan1 | Kind::OwnWan2 => {
            let w = usize::from(kind == Kind::OwnWan2);
            let me = pick(r.wan_addr[w]);
            let k = key(remote, rport, me, cport);
            vec![state(Direction::Out, r.wan_if[w], k, k, None, rules.own)]
        }
        Kind::LanToFirewall => {
            let k = key(client, cport, pick(r.lan_addr), 443);
            vec![state(Direction::In, r.lan_if, k, k, None, rules.antilockout)]
        }
    }
}
