//! Selector flags shared by `list`, `count` and `kill`.

use std::net::IpAddr;

use clap::Args;
use statecull_proto::{
    AddressFamily, IfName, Label, MarkMatch, PortRange, Prefix, ProtoError, Selector, ipproto,
};

fn proto(s: &str) -> Result<u8, String> {
    ipproto::parse(s).map_err(|e| e.why())
}

fn parse<T: std::str::FromStr<Err = ProtoError>>(s: &str) -> Result<T, String> {
    s.parse::<T>().map_err(|e| e.why())
}

/// Which states: every flag given must match (logical AND).
#[derive(Debug, Clone, Default, Args)]
pub struct SelectorArgs {
    /// Connection mark, MARK or MARK/MASK (decimal or 0x-hex): (ctmark & MASK) == MARK
    #[arg(long, value_name = "MARK[/MASK]", value_parser = parse::<MarkMatch>)]
    pub mark: Option<MarkMatch>,
    /// Translated address replies go to: a WAN's SNAT/masquerade address
    #[arg(long, value_name = "IP")]
    pub nat_addr: Option<IpAddr>,
    /// Route-to gateway of the state (pf only)
    #[arg(long, value_name = "IP")]
    pub gateway: Option<IpAddr>,
    /// Interface the state is bound to (pf only)
    #[arg(long, value_name = "NAME", value_parser = parse::<IfName>)]
    pub interface: Option<IfName>,
    /// Label of the rule that created the state (pf only)
    #[arg(long, value_name = "TEXT", value_parser = parse::<Label>)]
    pub label: Option<Label>,
    /// Protocol: tcp, udp, icmp, icmpv6, sctp, gre, ... or a number
    #[arg(long, value_name = "PROTO", value_parser = proto)]
    pub proto: Option<u8>,
    /// Source of the connection (its initiator), ADDR or ADDR/LEN
    #[arg(long, value_name = "PREFIX", value_parser = parse::<Prefix>)]
    pub src: Option<Prefix>,
    /// Destination of the connection, ADDR or ADDR/LEN
    #[arg(long, value_name = "PREFIX", value_parser = parse::<Prefix>)]
    pub dst: Option<Prefix>,
    /// Source port or range (needs --proto)
    #[arg(long, value_name = "PORT[-PORT]", value_parser = parse::<PortRange>)]
    pub sport: Option<PortRange>,
    /// Destination port or range (needs --proto)
    #[arg(long, value_name = "PORT[-PORT]", value_parser = parse::<PortRange>)]
    pub dport: Option<PortRange>,
    /// Address family: 4 or 6 (also spelt ipv4 or inet, ipv6 or inet6)
    #[arg(long, value_name = "4|6", value_parser = parse::<AddressFamily>)]
    pub family: Option<AddressFamily>,
}

impl SelectorArgs {
    /// Mistakes only the command line can name by their flags, found before the selector is
    /// built (the selector's own check names its fields, not the flags).
    pub fn check_flags(&self) -> Result<(), String> {
        let port_flags: Vec<&str> = [("--sport", self.sport), ("--dport", self.dport)]
            .into_iter()
            .filter_map(|(flag, range)| range.map(|_| flag))
            .collect();
        if port_flags.is_empty() {
            return Ok(());
        }
        let flags = port_flags.join(" and ");
        match self.proto {
            None => Err(format!(
                "{flags} needs --proto: ports belong to a protocol (--proto tcp, udp, sctp, dccp \
                 or udplite)"
            )),
            Some(p) if !ipproto::has_ports(p) => Err(format!(
                "{flags} cannot match: --proto {} has no ports (tcp, udp, sctp, dccp and \
                 udplite have)",
                ipproto::name(p)
            )),
            Some(_) => Ok(()),
        }
    }

    /// The selector, or `None` when no flag was given.
    pub fn to_selector(&self) -> Option<Selector> {
        let s = Selector {
            family: self.family,
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            src_port: self.sport,
            dst_port: self.dport,
            mark: self.mark,
            nat_addr: self.nat_addr,
            gateway: self.gateway,
            interface: self.interface.clone(),
            label: self.label.clone(),
        };
        (s != Selector::default()).then_some(s)
    }
}
