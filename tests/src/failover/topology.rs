//! The lab's network: five private namespaces making a two-WAN firewall between a LAN and a
//! server network, with SNAT per WAN, a conntrack mark per WAN set when a connection is
//! created, and policy routing.
//!
//! ```text
//!  lan (clients)      fw (broker + engine)          isp1 / isp2                 net (servers)
//!  eth0 192.0.2.10 ── lan0 192.0.2.1/24
//!       192.0.2.11    wan1 198.51.100.1/24 ── up0 198.51.100.254  dn0 198.18.1.1/30 ── isp1 198.18.1.2/30
//!       192.0.2.12    wan2 203.0.113.1/24  ── up0 203.0.113.254   dn0 198.18.2.1/30 ── isp2 198.18.2.2/30
//!       .13-.19 spare                                                                 lo 198.18.100.10/32
//! ```
//!
//! * `fw` routes by default via WAN1 (main table); `from 192.0.2.11` and `from 192.0.2.12`
//!   look up table 102, whose default route is via WAN2. nftables (table
//!   `inet statecull_lab`) SNATs to the WAN's address (optionally with random ports, as pf
//!   does) and marks each new connection forwarded from the LAN with its WAN's mark (the firewall's own
//!   traffic, such as the engine's probes, stays unmarked).
//! * `net` routes each WAN's public prefix back through the ISP that owns it, so a
//!   connection NATed to WAN1's address dies with ISP1 even if its packets leave via WAN2.
//! * [`Layout::Mwan3`] (`cargo xtask lab --mwan3`) lays `fw` out as OpenWrt's mwan3 does
//!   (`mwan3_create_iface_rules`, `mwan3_create_iface_route`, `mwan3_set_general_rules` and
//!   its mangle hook, in nftables): mark mask 0x3f00, WAN1 is interface 1 (mark 0x100, table
//!   1), WAN2 interface 2 (0x200, table 2); rules `1000+id iif DEV lookup id`, `2000+id
//!   fwmark MARK/0x3f00 lookup id`, `3000+id fwmark MARK/0x3f00 unreachable`, 2061
//!   blackhole and 2062 unreachable marks; each table has its default route and the LAN and
//!   link routes; the main table keeps netifd's default routes (WAN1 metric 10, WAN2 20).
//!   New LAN connections get their mark in prerouting (the connection mark restored, else
//!   [`CLIENT_WAN2`] and [`CLIENT_VOIP`] by a rule, else the `mwan3_policy` chain) and keep it
//!   as their conntrack mark. [`Topology::mwan3_policy`] is mwan3's switch on `disconnected`:
//!   the policy chain marks new connections for the other WAN; rules and tables stay.
//! * Addresses are from the documentation and benchmarking ranges and exist only inside
//!   these namespaces; nothing here touches the host's own namespace. Every namespace is
//!   removed when the [`Topology`] (or, during `build`, the partly built set) is dropped.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::Netns;
use statecull_conntrack::{Conntrack, KernelFeatures};
use statecull_proto::{StateDetail, StateRecord};

use crate::tools::{self as util, SYSCTL, Tool};

/// The server in `net` (on its loopback device).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 10);
/// A LAN client that follows the main table's default route (WAN1 until it moves).
pub const CLIENT_WAN1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// A LAN client sent to WAN2 by a policy rule (`from 192.0.2.11 lookup 102`).
pub const CLIENT_WAN2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// The VoIP/RTP client, sent to WAN2 by a policy rule (`from 192.0.2.12 lookup 102`).
pub const CLIENT_VOIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
/// Every address of `lan`'s `eth0`: the three clients above, then spares (.13-.19) that
/// follow the main table's default route.
pub const LAN_ADDRS: [Ipv4Addr; 10] = [
    CLIENT_WAN1,
    CLIENT_WAN2,
    CLIENT_VOIP,
    Ipv4Addr::new(192, 0, 2, 13),
    Ipv4Addr::new(192, 0, 2, 14),
    Ipv4Addr::new(192, 0, 2, 15),
    Ipv4Addr::new(192, 0, 2, 16),
    Ipv4Addr::new(192, 0, 2, 17),
    Ipv4Addr::new(192, 0, 2, 18),
    Ipv4Addr::new(192, 0, 2, 19),
];
/// `fw`'s address on the LAN: the clients' default gateway.
pub const LAN_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// The routing table of `fw` whose default route is via WAN2.
pub const WAN2_TABLE: u32 = 102;
/// The nftables table in `fw` (family `inet`).
pub const NFT_TABLE: &str = "statecull_lab";
/// The nftables table an ISP gets while it blackholes (family `inet`).
const BLACKHOLE_TABLE: &str = "statecull_blackhole";

/// One WAN of the firewall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wan {
    /// Gateway name as in the lab's policy: "WAN1", "WAN2".
    pub name: &'static str,
    /// Device in `fw`.
    pub device: &'static str,
    /// `fw`'s address on the link, and the SNAT address of connections leaving through it.
    pub fw_addr: Ipv4Addr,
    /// The ISP's end of the link: the gateway.
    pub gateway: Ipv4Addr,
    /// The conntrack mark of connections created through this WAN.
    pub mark: u32,
}

pub const WANS: [Wan; 2] = [
    Wan {
        name: "WAN1",
        device: "wan1",
        fw_addr: Ipv4Addr::new(198, 51, 100, 1),
        gateway: Ipv4Addr::new(198, 51, 100, 254),
        mark: 0x1,
    },
    Wan {
        name: "WAN2",
        device: "wan2",
        fw_addr: Ipv4Addr::new(203, 0, 113, 1),
        gateway: Ipv4Addr::new(203, 0, 113, 254),
        mark: 0x2,
    },
];

/// How `fw` routes and marks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Default route in `main`, source rules to table 102, marks set after routing.
    #[default]
    Main,
    /// mwan3's: marks set before routing, fwmark rules, one table per WAN.
    Mwan3,
}

/// mwan3's default mark mask (`globals.mmx_mask`).
pub const MWAN3_MASK: u32 = 0x3f00;

/// Prefix length of the LAN and WAN links.
const LINK_PREFIX: u8 = 24;
/// ISP `i`'s point-to-point link to `net`: (ISP side, net side), /30.
const TRANSIT: [(Ipv4Addr, Ipv4Addr); 2] = [
    (Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 1, 2)),
    (Ipv4Addr::new(198, 18, 2, 1), Ipv4Addr::new(198, 18, 2, 2)),
];
/// The server network the ISPs route to `net`.
const SERVER_NET: &str = "198.18.100.0/24";

/// Tools `build` needs; `util::ensure_tools(&TOOLS)` installs missing ones.
pub const TOOLS: [Tool; 3] = [util::IP, util::NFT, SYSCTL];

/// How long one round trip may take before it counts as lost.
const TRIP_TIMEOUT: Duration = Duration::from_secs(1);
/// Round trips `check` tries per client before giving up (the first packets on fresh links
/// wait for ARP).
const CHECK_ATTEMPTS: usize = 3;

/// The lab's five namespaces; all are removed on drop.
#[derive(Debug)]
pub struct Topology {
    pub layout: Layout,
    pub lan: Netns,
    pub fw: Netns,
    pub isp: [Netns; 2],
    pub net: Netns,
}

/// One UDP request/echo between a LAN client and the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    /// The client's socket (address and port as sent from `lan`).
    pub client: SocketAddrV4,
    /// The peer the server saw: the SNAT address and port.
    pub seen_as: SocketAddrV4,
}

impl Topology {
    /// Create the five namespaces (`{tag}lan`, `{tag}fw`, `{tag}isp1`, `{tag}isp2`,
    /// `{tag}net`), link, address and route them, and load the firewall's nftables ruleset.
    /// `snat_random` adds `random` to the SNAT rules (random source ports, as pf does).
    /// Call [`Topology::check`] afterwards to prove the paths work.
    pub fn build(tag: &str, snat_random: bool) -> io::Result<Topology> {
        Self::build_with(tag, snat_random, Layout::Main)
    }

    /// [`Topology::build`] with `fw` routed and marked as `layout` says.
    pub fn build_with(tag: &str, snat_random: bool, layout: Layout) -> io::Result<Topology> {
        let tools = Tools::find()?;
        let topo = Topology {
            layout,
            lan: Netns::create(&format!("{tag}lan"))?,
            fw: Netns::create(&format!("{tag}fw"))?,
            isp: [Netns::create(&format!("{tag}isp1"))?, Netns::create(&format!("{tag}isp2"))?],
            net: Netns::create(&format!("{tag}net"))?,
        };
        // On error `topo` drops here and takes every namespace with it.
        topo.wire(&tools, snat_random)
            .map_err(|e| io::Error::new(e.kind(), format!("building the lab topology: {e}")))?;
        Ok(topo)
    }

    fn wire(&self, tools: &Tools, snat_random: bool) -> io::Result<()> {
        let Topology { lan, fw, isp, net, .. } = self;

        // Knobs first, so devices created afterwards inherit `default`.
        tools.sysctl(
            fw,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
                // Datagram ICMP sockets for the unprivileged engine's probes.
                ("net.ipv4.ping_group_range", "0 2147483647"),
            ],
        )?;
        for ns in isp {
            tools.sysctl(
                ns,
                &[
                    ("net.ipv4.ip_forward", "1"),
                    ("net.ipv4.conf.all.rp_filter", "0"),
                    ("net.ipv4.conf.default.rp_filter", "0"),
                ],
            )?;
        }
        tools.sysctl(
            net,
            &[("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.conf.default.rp_filter", "0")],
        )?;

        // Links.
        veth(
            fw,
            "lan0",
            &cidr(LAN_GATEWAY, LINK_PREFIX),
            lan,
            "eth0",
            &cidr(CLIENT_WAN1, LINK_PREFIX),
        )?;
        for addr in &LAN_ADDRS[1..] {
            run(lan.command("ip").args(["addr", "add", &cidr(*addr, LINK_PREFIX), "dev", "eth0"]))?;
        }
        for (i, (wan, ns)) in WANS.iter().zip(isp).enumerate() {
            let (isp_side, net_side) = TRANSIT[i];
            veth(
                fw,
                wan.device,
                &cidr(wan.fw_addr, LINK_PREFIX),
                ns,
                "up0",
                &cidr(wan.gateway, LINK_PREFIX),
            )?;
            veth(
                ns,
                "dn0",
                &cidr(isp_side, 30),
                net,
                &format!("isp{}", i + 1),
                &cidr(net_side, 30),
            )?;
            tools.sysctl(
                ns,
                &[("net.ipv4.conf.up0.rp_filter", "0"), ("net.ipv4.conf.dn0.rp_filter", "0")],
            )?;
            tools.sysctl(net, &[(&format!("net.ipv4.conf.isp{}.rp_filter", i + 1), "0")])?;
        }
        tools.sysctl(
            fw,
            &[
                ("net.ipv4.conf.lan0.rp_filter", "0"),
                ("net.ipv4.conf.wan1.rp_filter", "0"),
                ("net.ipv4.conf.wan2.rp_filter", "0"),
            ],
        )?;

        // Routes. lan: everything via fw.
        run(lan.command("ip").args(["route", "add", "default", "via", &LAN_GATEWAY.to_string()]))?;
        // ISPs: the server network via net.
        for (i, ns) in isp.iter().enumerate() {
            let via = TRANSIT[i].1.to_string();
            run(ns.command("ip").args(["route", "add", SERVER_NET, "via", &via, "dev", "dn0"]))?;
        }
        // net: the server, and each WAN's prefix back through the ISP that owns it.
        run(net.command("ip").args(["addr", "add", &cidr(SERVER, 32), "dev", "lo"]))?;
        for (i, wan) in WANS.iter().enumerate() {
            let prefix = format!("{}/{LINK_PREFIX}", network(wan.fw_addr, LINK_PREFIX));
            let via = TRANSIT[i].0.to_string();
            let dev = format!("isp{}", i + 1);
            run(net.command("ip").args(["route", "add", &prefix, "via", &via, "dev", &dev]))?;
        }
        if self.layout == Layout::Mwan3 {
            return self.wire_mwan3(tools, snat_random);
        }
        // fw: default via WAN1, table 102 via WAN2, the WAN2 clients by policy.
        let [wan1, wan2] = &WANS;
        run(fw.command("ip").args(["route", "add", "default"]).args(via_args(wan1)))?;
        let table = WAN2_TABLE.to_string();
        run(fw
            .command("ip")
            .args(["route", "add", "default"])
            .args(via_args(wan2))
            .args(["table", &table]))?;
        for (client, priority) in [(CLIENT_WAN2, "1000"), (CLIENT_VOIP, "1001")] {
            run(fw
                .command("ip")
                .args(["rule", "add", "from", &client.to_string()])
                .args(["lookup", &table, "priority", priority]))?;
        }

        // nftables.
        tools.nft(fw, &fw_ruleset(snat_random))
    }

    /// `fw` as mwan3 lays it out (see the module's documentation).
    fn wire_mwan3(&self, tools: &Tools, snat_random: bool) -> io::Result<()> {
        let fw = &self.fw;
        let ip = |args: &[&str]| run(fw.command("ip").args(args));
        let lan = format!("{}/{LINK_PREFIX}", network(LAN_GATEWAY, LINK_PREFIX));
        for (i, wan) in WANS.iter().enumerate() {
            let id = i + 1;
            let (table, mark) = (id.to_string(), format!("{:#x}/{MWAN3_MASK:#x}", id << 8));
            let metric = (10 * id).to_string();
            let gw = wan.gateway.to_string();
            // netifd's default route in main, mwan3's copy in the interface's table, with
            // the routes of devices mwan3 does not manage (the LAN) and of its own.
            ip(&["route", "add", "default", "via", &gw, "dev", wan.device, "metric", &metric])?;
            ip(&["route", "add", "default", "via", &gw, "dev", wan.device, "table", &table])?;
            ip(&["route", "add", &lan, "dev", "lan0", "table", &table])?;
            let link = format!("{}/{LINK_PREFIX}", network(wan.fw_addr, LINK_PREFIX));
            ip(&["route", "add", &link, "dev", wan.device, "table", &table])?;
            let pref = |base: usize| (base + id).to_string();
            ip(&["rule", "add", "pref", &pref(1000), "iif", wan.device, "lookup", &table])?;
            ip(&["rule", "add", "pref", &pref(2000), "fwmark", &mark, "lookup", &table])?;
            ip(&["rule", "add", "pref", &pref(3000), "fwmark", &mark, "unreachable"])?;
        }
        ip(&["rule", "add", "pref", "2061", "fwmark", "0x3d00/0x3f00", "blackhole"])?;
        ip(&["rule", "add", "pref", "2062", "fwmark", "0x3e00/0x3f00", "unreachable"])?;
        tools.nft(fw, &fw_ruleset_mwan3(snat_random))
    }

    /// The conntrack mark (and mask) of connections through WAN `wan` (0 or 1).
    pub fn mark(&self, wan: usize) -> statecull_proto::MarkMatch {
        match self.layout {
            Layout::Main => statecull_proto::MarkMatch {
                value: WANS.get(wan).map_or(0, |w| w.mark),
                mask: 0xff,
            },
            Layout::Mwan3 => statecull_proto::MarkMatch {
                value: u32::try_from(wan + 1).unwrap_or(0) << 8,
                mask: MWAN3_MASK,
            },
        }
    }

    /// mwan3's switch (`mwan3_set_policies_iptables` after `disconnected`/`connected`): new
    /// LAN connections are marked for WAN `wan` (0 or 1). Rules and tables do not change.
    pub fn mwan3_policy(&self, wan: usize) -> io::Result<()> {
        if self.layout != Layout::Mwan3 || wan >= WANS.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no mwan3 policy for WAN {wan} in a {:?} layout", self.layout),
            ));
        }
        let nft = tool_path(util::NFT)?;
        let rules = format!(
            "flush chain inet {NFT_TABLE} mwan3_policy\n\
             add rule inet {NFT_TABLE} mwan3_policy meta mark set {:#x}\n",
            self.mark(wan).value
        );
        run_with_stdin(self.fw.command(nft).args(["-f", "-"]), &rules)
    }

    /// ISP `isp` (0 or 1) silently drops everything it receives, sends or forwards (an
    /// nftables table in its namespace); its links stay up. `false` restores it. Idempotent.
    pub fn blackhole(&self, isp: usize, on: bool) -> io::Result<()> {
        let ns = self.isp.get(isp).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no ISP {isp} (0 or 1)"))
        })?;
        let nft = tool_path(util::NFT)?;
        // `add` + `delete` makes both directions idempotent in one transaction.
        let mut rules =
            format!("add table inet {BLACKHOLE_TABLE}\ndelete table inet {BLACKHOLE_TABLE}\n");
        if on {
            rules.push_str(&format!("table inet {BLACKHOLE_TABLE} {{\n"));
            for hook in ["input", "forward", "output"] {
                rules.push_str(&format!(
                    "\tchain {hook} {{ type filter hook {hook} priority filter; policy drop; }}\n"
                ));
            }
            rules.push_str("}\n");
        }
        run_with_stdin(ns.command(nft).args(["-f", "-"]), &rules)
    }

    /// The routing manager's move: `fw`'s main-table default route via WAN `wan` (0 or 1).
    pub fn default_via(&self, wan: usize) -> io::Result<()> {
        let wan = WANS.get(wan).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("no WAN {wan} (0 or 1)"))
        })?;
        run(self.fw.command("ip").args(["route", "replace", "default"]).args(via_args(wan)))
    }

    /// Which WAN (0 or 1) the main table's default route in `fw` uses now.
    pub fn default_wan(&self) -> io::Result<usize> {
        let mut cmd = self.fw.command("ip");
        cmd.args(["-j", "route", "show", "default"]);
        let out = run_output(&mut cmd)?;
        let routes: serde_json::Value = serde_json::from_str(&out).map_err(|e| {
            io::Error::other(format!("`{}`: unreadable JSON ({e}): {out}", show(&cmd)))
        })?;
        let dev = routes
            .as_array()
            .and_then(|r| r.first())
            .and_then(|r| r.get("dev"))
            .and_then(|d| d.as_str())
            .ok_or_else(|| {
                io::Error::other(format!("{}: no default route in the main table", self.fw.name()))
            })?;
        WANS.iter().position(|w| w.device == dev).ok_or_else(|| {
            io::Error::other(format!("{}: the default route uses {dev}, not a WAN", self.fw.name()))
        })
    }

    /// One UDP request from `client` (an address of `lan`, fresh ephemeral port) to a fresh
    /// port on [`SERVER`], echoed back. Returns the sockets the server and client saw; an
    /// error says which leg was lost.
    pub fn round_trip(&self, client: Ipv4Addr, timeout: Duration) -> io::Result<RoundTrip> {
        self.round_trip_from(&self.lan, client, timeout)
    }

    /// Whether the server answers `fw` over WAN `wan` (0 or 1) within `timeout`: a UDP
    /// round trip from the WAN's own address, which the main table sends out of it (what
    /// mwan3track's pings through an interface tell).
    pub fn wan_answers(&self, wan: usize, timeout: Duration) -> bool {
        WANS.get(wan).is_some_and(|w| self.round_trip_from(&self.fw, w.fw_addr, timeout).is_ok())
    }

    fn round_trip_from(
        &self,
        ns: &Netns,
        client: Ipv4Addr,
        timeout: Duration,
    ) -> io::Result<RoundTrip> {
        static NONCE: AtomicU64 = AtomicU64::new(0);
        let server = self
            .net
            .enter(|| UdpSocket::bind(SocketAddrV4::new(SERVER, 0)))
            .and_then(|s| s)
            .map_err(|e| io::Error::new(e.kind(), format!("UDP socket on {SERVER} in net: {e}")))?;
        let sock = ns
            .enter(|| UdpSocket::bind(SocketAddrV4::new(client, 0)))
            .and_then(|s| s)
            .map_err(|e| {
                io::Error::new(e.kind(), format!("UDP socket on {client} in {}: {e}", ns.name()))
            })?;
        let server_addr = v4(server.local_addr()?)?;
        let client_addr = v4(sock.local_addr()?)?;
        let payload =
            format!("statecull lab {client_addr} {}", NONCE.fetch_add(1, Ordering::Relaxed));
        let what = format!("UDP {client_addr} -> {server_addr}");
        sock.send_to(payload.as_bytes(), server_addr)
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: send: {e}")))?;

        let deadline = Instant::now() + timeout;
        let seen_as = recv_matching(&server, payload.as_bytes(), deadline, None)
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: request: {e}")))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what}: the server received nothing within {timeout:?}"),
                )
            })?;
        server
            .send_to(payload.as_bytes(), seen_as)
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: echo: {e}")))?;
        let deadline = Instant::now() + timeout;
        recv_matching(&sock, payload.as_bytes(), deadline, Some(server_addr))
            .map_err(|e| io::Error::new(e.kind(), format!("{what}: reply: {e}")))?
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{what}: the server got the request (from {seen_as}) but its echo did \
                         not come back within {timeout:?}"
                    ),
                )
            })?;
        Ok(RoundTrip { client: client_addr, seen_as })
    }

    /// Prove the lab works as built: from `lan`, [`CLIENT_WAN1`] reaches the server via the
    /// WAN of the main table's default route, [`CLIENT_WAN2`] and [`CLIENT_VOIP`] via WAN2
    /// (policy rules); the server sees each WAN's SNAT address; `fw` marked each of those
    /// connections with its WAN's mark.
    pub fn check(&self) -> io::Result<()> {
        let cases = match self.layout {
            Layout::Main => [
                (CLIENT_WAN1, self.default_wan()?, "the main table's default route"),
                (CLIENT_WAN2, 1, "policy rule 1000"),
                (CLIENT_VOIP, 1, "policy rule 1001"),
            ],
            Layout::Mwan3 => [
                (CLIENT_WAN1, 0, "the mwan3 policy's mark 0x100"),
                (CLIENT_WAN2, 1, "the mwan3 rule's mark 0x200"),
                (CLIENT_VOIP, 1, "the mwan3 rule's mark 0x200"),
            ],
        };
        let mut trips = Vec::new();
        for (client, wan_index, why) in cases {
            let wan = &WANS[wan_index];
            let fail = |detail: String| {
                io::Error::other(format!(
                    "lab check: {client} should reach {SERVER} via {} ({why}): {detail}",
                    wan.name
                ))
            };
            let mut last = None;
            let mut trip = None;
            for _ in 0..CHECK_ATTEMPTS {
                match self.round_trip(client, TRIP_TIMEOUT) {
                    Ok(t) => {
                        trip = Some(t);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let trip = trip.ok_or_else(|| {
                fail(format!(
                    "{} ({CHECK_ATTEMPTS} attempts)",
                    last.map(|e| e.to_string()).unwrap_or_default()
                ))
            })?;
            if *trip.seen_as.ip() != wan.fw_addr {
                return Err(fail(format!(
                    "the server saw {}, not {}'s SNAT address {}",
                    trip.seen_as, wan.name, wan.fw_addr
                )));
            }
            trips.push((trip, (wan_index, wan)));
        }
        let states = self.fw_states(|r| {
            r.key.proto == 17 && r.key.dst == IpAddr::V4(SERVER) && r.key.src.is_ipv4()
        })?;
        for (trip, (wan_index, wan)) in trips {
            let port = trip.client.port();
            let state = states.iter().find(|r| {
                r.key.src == IpAddr::V4(*trip.client.ip()) && r.key.src_port() == Some(port)
            });
            let mark = match state.map(|s| &s.detail) {
                Some(StateDetail::Conntrack { mark, .. }) => *mark,
                _ => {
                    return Err(io::Error::other(format!(
                        "lab check: no conntrack entry in {} for {} -> {SERVER}",
                        self.fw.name(),
                        trip.client
                    )));
                }
            };
            let want = self.mark(wan_index);
            if !want.matches(mark) {
                return Err(io::Error::other(format!(
                    "lab check: {} -> {SERVER} left via {} but its conntrack mark is {mark:#x}, \
                     not {want} (nftables table {NFT_TABLE} in {})",
                    trip.client,
                    wan.name,
                    self.fw.name()
                )));
            }
        }
        Ok(())
    }

    /// The entries of `fw`'s conntrack table that `keep` accepts (read through ctnetlink
    /// from a thread inside `fw`).
    pub fn fw_states(
        &self,
        keep: impl Fn(&StateRecord) -> bool + Send,
    ) -> io::Result<Vec<StateRecord>> {
        self.fw
            .enter(move || {
                let mut kept = Vec::new();
                Conntrack::with_features(KernelFeatures::NONE)
                    .snapshot(None, 2048, &mut |batch| {
                        kept.extend(batch.into_iter().filter(|r| keep(r)));
                        Ok(())
                    })
                    .map(|_| kept)
                    .map_err(|e| e.to_string())
            })?
            .map_err(|e| {
                io::Error::other(format!("listing {}'s conntrack table: {e}", self.fw.name()))
            })
    }

    /// Names of all namespaces: lan, fw, isp1, isp2, net.
    pub fn names(&self) -> Vec<String> {
        [&self.lan, &self.fw, &self.isp[0], &self.isp[1], &self.net]
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }
}

/// The firewall's ruleset: SNAT per WAN, and a ct mark per WAN set on the first packet of a
/// connection forwarded from the LAN. The mark chain hooks postrouting at mangle priority
/// (-150): after routing chose the output device, before SNAT (srcnat, 100) and before the
/// entry is confirmed, so `ct state new` is exactly the first packet. The firewall's own
/// traffic (the engine's gateway probes) stays unmarked: those are not client connections to
/// move, and killing them would only show up as sweep "leftovers".
fn fw_ruleset(snat_random: bool) -> String {
    let random = if snat_random { " random" } else { "" };
    let mut snat = String::new();
    let mut mark = String::new();
    for w in &WANS {
        snat.push_str(&format!("\t\toifname \"{}\" snat ip to {}{random}\n", w.device, w.fw_addr));
        mark.push_str(&format!(
            "\t\tct state new iifname \"lan0\" oifname \"{}\" ct mark set {:#x}\n",
            w.device, w.mark
        ));
    }
    format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain postrouting_mark {{\n\
         \t\ttype filter hook postrouting priority mangle; policy accept;\n\
         {mark}\
         \t}}\n\
         \tchain postrouting_nat {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {snat}\
         \t}}\n\
         }}\n"
    )
}

/// The firewall's ruleset in the mwan3 layout: SNAT per WAN as in [`fw_ruleset`]; marks as
/// mwan3's `mwan3_hook` sets them, before routing, with its mask: the connection's mark
/// restored, else [`CLIENT_WAN2`] and [`CLIENT_VOIP`] to WAN2 (an mwan3 `rule` with
/// `src_ip`), else the `mwan3_policy` chain (WAN1 while it is up); then saved as the
/// connection mark. Only connections from the LAN are marked, so the engine's own probes
/// stay unmarked.
fn fw_ruleset_mwan3(snat_random: bool) -> String {
    let random = if snat_random { " random" } else { "" };
    let mut snat = String::new();
    for w in &WANS {
        snat.push_str(&format!("\t\toifname \"{}\" snat ip to {}{random}\n", w.device, w.fw_addr));
    }
    format!(
        "table inet {NFT_TABLE} {{\n\
         \tchain mwan3_hook {{\n\
         \t\ttype filter hook prerouting priority mangle; policy accept;\n\
         \t\tiifname != \"lan0\" return\n\
         \t\tmeta mark set ct mark and {MWAN3_MASK:#x}\n\
         \t\tmeta mark and {MWAN3_MASK:#x} == 0x0 ip saddr {{ {CLIENT_WAN2}, {CLIENT_VOIP} }} meta mark set 0x200\n\
         \t\tmeta mark and {MWAN3_MASK:#x} == 0x0 jump mwan3_policy\n\
         \t\tct mark set meta mark and {MWAN3_MASK:#x}\n\
         \t}}\n\
         \tchain mwan3_policy {{\n\
         \t\tmeta mark set 0x100\n\
         \t}}\n\
         \tchain postrouting_nat {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {snat}\
         \t}}\n\
         }}\n"
    )
}

/// Paths of the tools run inside namespaces (`ip netns exec` searches PATH, which a
/// non-login root shell may lack /usr/sbin on).
struct Tools {
    nft: PathBuf,
    sysctl: PathBuf,
}

impl Tools {
    fn find() -> io::Result<Self> {
        let missing: Vec<Tool> =
            TOOLS.iter().copied().filter(|t| util::find_bin(t.bin).is_none()).collect();
        if !missing.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the lab needs {}; install the Debian package(s): apt-get install -y {}",
                    missing.iter().map(|t| format!("`{}`", t.bin)).collect::<Vec<_>>().join(", "),
                    missing.iter().map(|t| t.package).collect::<Vec<_>>().join(" ")
                ),
            ));
        }
        Ok(Self { nft: tool_path(util::NFT)?, sysctl: tool_path(SYSCTL)? })
    }

    fn sysctl(&self, ns: &Netns, settings: &[(&str, &str)]) -> io::Result<()> {
        let mut cmd = ns.command(&self.sysctl);
        cmd.args(["-q", "-w"]);
        cmd.args(settings.iter().map(|(k, v)| format!("{k}={v}")));
        run(&mut cmd)
    }

    fn nft(&self, ns: &Netns, rules: &str) -> io::Result<()> {
        run_with_stdin(ns.command(&self.nft).args(["-f", "-"]), rules)
    }
}

/// Where `tool` is, or an error naming its Debian package.
fn tool_path(tool: Tool) -> io::Result<PathBuf> {
    util::find_bin(tool.bin).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the lab needs `{}`; install the Debian package: apt-get install -y {}",
                tool.bin, tool.package
            ),
        )
    })
}

/// A veth pair: `a_dev` in `a`, `b_dev` in `b`, addressed and up.
fn veth(
    a: &Netns,
    a_dev: &str,
    a_cidr: &str,
    b: &Netns,
    b_dev: &str,
    b_cidr: &str,
) -> io::Result<()> {
    run(a.command("ip").args([
        "link",
        "add",
        a_dev,
        "type",
        "veth",
        "peer",
        "name",
        b_dev,
        "netns",
        b.name(),
    ]))?;
    run(a.command("ip").args(["addr", "add", a_cidr, "dev", a_dev]))?;
    run(b.command("ip").args(["addr", "add", b_cidr, "dev", b_dev]))?;
    run(a.command("ip").args(["link", "set", a_dev, "up"]))?;
    run(b.command("ip").args(["link", "set", b_dev, "up"]))
}

fn via_args(wan: &Wan) -> [String; 4] {
    ["via".into(), wan.gateway.to_string(), "dev".into(), wan.device.into()]
}

fn cidr(addr: Ipv4Addr, len: u8) -> String {
    format!("{addr}/{len}")
}

fn network(addr: Ipv4Addr, len: u8) -> Ipv4Addr {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) & mask)
}

fn v4(addr: SocketAddr) -> io::Result<SocketAddrV4> {
    match addr {
        SocketAddr::V4(a) => Ok(a),
        SocketAddr::V6(a) => Err(io::Error::other(format!("unexpected IPv6 socket {a}"))),
    }
}

/// Receive on `sock` until a datagram equal to `payload` (from `from`, if given) arrives:
/// its sender, or `None` at `deadline`. Other datagrams (late answers to earlier attempts)
/// are skipped.
fn recv_matching(
    sock: &UdpSocket,
    payload: &[u8],
    deadline: Instant,
    from: Option<SocketAddrV4>,
) -> io::Result<Option<SocketAddrV4>> {
    let mut buf = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        sock.set_read_timeout(Some(left))?;
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                let peer = v4(peer)?;
                if &buf[..n] == payload && from.is_none_or(|f| f == peer) {
                    return Ok(Some(peer));
                }
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Ok(None);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `cmd` as a shell-like line, for messages.
fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn failed(cmd: &Command, out: &std::process::Output) -> io::Error {
    io::Error::other(format!(
        "`{}` failed ({}): {}",
        show(cmd),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

fn spawn_error(cmd: &Command, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("`{}` could not run: {e}", show(cmd)))
}

/// Run `cmd`; on failure, say which command failed and what it printed on stderr.
fn run(cmd: &mut Command) -> io::Result<()> {
    run_output(cmd).map(drop)
}

/// Run `cmd` and return its stdout.
fn run_output(cmd: &mut Command) -> io::Result<String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| spawn_error(cmd, e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(failed(cmd, &out))
    }
}

/// Run `cmd` with `input` on its stdin (`nft -f -`).
fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error(cmd, e))?;
    let written = match child.stdin.take() {
        Some(mut stdin) => stdin.write_all(input.as_bytes()),
        None => Err(io::Error::other("no stdin pipe")),
    };
    let out = child.wait_with_output().map_err(|e| spawn_error(cmd, e))?;
    if !out.status.success() {
        return Err(io::Error::other(format!("{}; input was:\n{input}", failed(cmd, &out))));
    }
    written.map_err(|e| io::Error::new(e.kind(), format!("`{}`: writing stdin: {e}", show(cmd))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::skip_unless_root;
    use std::collections::BTreeMap;

    fn netns_list() -> String {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn ruleset_has_snat_and_marks_per_wan() {
        let r = fw_ruleset(true);
        assert!(r.contains("oifname \"wan1\" snat ip to 198.51.100.1 random\n"), "{r}");
        assert!(r.contains("oifname \"wan2\" snat ip to 203.0.113.1 random\n"), "{r}");
        assert!(
            r.contains("ct state new iifname \"lan0\" oifname \"wan1\" ct mark set 0x1\n"),
            "{r}"
        );
        assert!(
            r.contains("ct state new iifname \"lan0\" oifname \"wan2\" ct mark set 0x2\n"),
            "{r}"
        );
        assert!(!fw_ruleset(false).contains("random"));
        assert_eq!(network(WANS[1].fw_addr, 24), Ipv4Addr::new(203, 0, 113, 0));
    }

    /// The whole topology: paths, SNAT, policy routing, a blackholed ISP, the routing
    /// manager's move, ct marks for forwarded connections and none for the firewall's own.
    #[test]
    fn lab_topology_fails_over() {
        if skip_unless_root("lab_topology_fails_over") {
            return;
        }
        let names;
        {
            let topo = Topology::build("topo", true).unwrap();
            names = topo.names();
            assert_eq!(names.len(), 5);
            let listed = netns_list();
            for n in &names {
                assert!(listed.contains(n.as_str()), "{n} missing from:\n{listed}");
            }
            topo.check().unwrap();
            assert_eq!(topo.default_wan().unwrap(), 0);

            // fw-originated traffic (the engine's probes go this way) is not marked.
            let probes = topo
                .fw
                .enter(|| -> io::Result<Vec<u16>> {
                    let mut ports = Vec::new();
                    for w in &WANS {
                        let s = UdpSocket::bind(SocketAddrV4::new(w.fw_addr, 0))?;
                        s.send_to(b"probe", SocketAddrV4::new(w.gateway, 9))?;
                        ports.push(s.local_addr()?.port());
                    }
                    Ok(ports)
                })
                .unwrap()
                .unwrap();
            for (w, port) in WANS.iter().zip(probes) {
                let found = topo
                    .fw_states(|r| {
                        r.key.src == IpAddr::V4(w.fw_addr) && r.key.src_port() == Some(port)
                    })
                    .unwrap();
                assert_eq!(found.len(), 1, "{found:?}");
                assert!(
                    matches!(found[0].detail, StateDetail::Conntrack { mark: 0, .. }),
                    "{} fw-originated: {:?}",
                    w.name,
                    found[0]
                );
            }

            // ISP1 blackholes: WAN1's path is dead, WAN2's works.
            topo.blackhole(0, true).unwrap();
            topo.blackhole(0, true).unwrap(); // idempotent
            let dead = topo.round_trip(CLIENT_WAN1, TRIP_TIMEOUT);
            assert!(dead.is_err(), "{dead:?}");
            assert!(dead.unwrap_err().to_string().contains("received nothing"));
            let t = topo.round_trip(CLIENT_WAN2, TRIP_TIMEOUT).unwrap();
            assert_eq!(*t.seen_as.ip(), WANS[1].fw_addr);

            // The routing manager moves the default route: CLIENT_WAN1 goes out via WAN2.
            topo.default_via(1).unwrap();
            assert_eq!(topo.default_wan().unwrap(), 1);
            let t = topo.round_trip(CLIENT_WAN1, TRIP_TIMEOUT).unwrap();
            assert_eq!(*t.seen_as.ip(), WANS[1].fw_addr, "{t:?}");
            let spare = topo.round_trip(LAN_ADDRS[9], TRIP_TIMEOUT).unwrap();
            assert_eq!(*spare.seen_as.ip(), WANS[1].fw_addr, "{spare:?}");
            topo.check().unwrap(); // check follows the current default route

            // Restore.
            topo.blackhole(0, false).unwrap();
            topo.blackhole(0, false).unwrap(); // idempotent
            topo.default_via(0).unwrap();
            assert_eq!(topo.default_wan().unwrap(), 0);
            topo.check().unwrap();

            // Marks 1 and 2 in fw's table (what `conntrack -L -m 1` / `-m 2` would show).
            let mut marks = BTreeMap::new();
            for r in topo.fw_states(|_| true).unwrap() {
                if let StateDetail::Conntrack { mark, .. } = r.detail {
                    *marks.entry(mark).or_insert(0u64) += 1;
                }
            }
            assert!(marks.get(&1).is_some_and(|n| *n > 0), "{marks:?}");
            assert!(marks.get(&2).is_some_and(|n| *n > 0), "{marks:?}");

            assert!(topo.blackhole(2, true).is_err());
            assert!(topo.default_via(2).is_err());
        }
        let listed = netns_list();
        for n in &names {
            assert!(!listed.contains(n.as_str()), "{n} left behind:\n{listed}");
        }
    }

    /// Without `random`, SNAT keeps the client's source port (Linux's default), so the
    /// lab can show the difference pf's port randomisation makes.
    #[test]
    fn lab_topology_without_random_snat_keeps_ports() {
        if skip_unless_root("lab_topology_without_random_snat_keeps_ports") {
            return;
        }
        let topo = Topology::build("toponr", false).unwrap();
        topo.check().unwrap();
        for client in [CLIENT_WAN1, CLIENT_WAN2] {
            let t = topo.round_trip(client, TRIP_TIMEOUT).unwrap();
            assert_eq!(t.seen_as.port(), t.client.port(), "{t:?}");
        }
        let nft = tool_path(util::NFT).unwrap();
        let out = topo.fw.command(nft).args(["list", "table", "inet", NFT_TABLE]).output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("snat ip to 198.51.100.1"), "{listing}");
        assert!(!listing.contains("random"), "{listing}");
    }
}
