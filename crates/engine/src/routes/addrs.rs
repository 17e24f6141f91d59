//! A WAN's own addresses from rtnetlink, pure: `RTM_NEWADDR`/`RTM_DELADDR` (an
//! `RTM_GETADDR` dump and the `RTNLGRP_IPV4_IFADDR`/`RTNLGRP_IPV6_IFADDR` notifications) and
//! `RTM_NEWLINK`/`RTM_DELLINK` (interface names, which IPv6 address messages do not carry)
//! in, [`AddressBook`] out. For `nat_addr = "interface"` (issue 13): a DHCP or PPPoE WAN's
//! NAT address is whatever the interface has now. Nothing here touches a socket; the
//! `rtnetlink_addrs` fuzz target drives [`fuzzing::decode`].
//!
//! Which address: `IFA_LOCAL` when present (on a point-to-point link such as PPPoE,
//! `IFA_ADDRESS` is the *peer's*), else `IFA_ADDRESS`. Only global-scope addresses
//! (`ifa_scope` 0) are kept: link-local and host addresses are never a NAT address.
//!
//! Retention (the choice, and why): an address that left the interface stays selectable for
//! [`RETAIN_MS`] (5 minutes). States NAT'd to it may outlive it: pf keeps them until they
//! time out, conntrack keeps SNAT (not MASQUERADE, which the kernel flushes with the
//! address) entries; a gateway failing right after a DHCP renumbering or a PPPoE reconnect
//! must still take them. Past five minutes idle TCP states through a dead address have been
//! retransmitting into nothing and most are gone; keeping addresses for ever would make
//! selectors grow with every lease. An old address that is now on *another* interface is
//! not retained for this one (it is that interface's now).

#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::BTreeMap;
use std::net::IpAddr;

use statecull_netlink::Attrs;

use super::parse::{AF_INET, AF_INET6, addr_of_len, bad, nl, walk};
use crate::error::EngineError;

pub(super) const RTM_NEWLINK: u16 = 16;
pub(super) const RTM_DELLINK: u16 = 17;
pub(super) const RTM_NEWADDR: u16 = 20;
pub(super) const RTM_DELADDR: u16 = 21;
pub(super) const RTM_GETADDR: u16 = 22;

/// `sizeof(struct ifaddrmsg)`.
pub(super) const IFADDRMSG_LEN: usize = 8;
/// `sizeof(struct ifinfomsg)`.
pub(super) const IFINFOMSG_LEN: usize = 16;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_LABEL: u16 = 3;
const IFLA_IFNAME: u16 = 3;

/// `RT_SCOPE_UNIVERSE`.
const SCOPE_GLOBAL: u8 = 0;

/// How long an address that left its interface stays selectable (see the module
/// documentation).
pub const RETAIN_MS: u64 = 5 * 60 * 1000;

/// One decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddrMsg {
    /// An interface has `address` (global scope) now.
    Added { ifindex: u32, label: Option<String>, address: IpAddr },
    /// `address` left the interface.
    Removed { ifindex: u32, address: IpAddr },
    /// Interface `ifindex` is called `name`.
    Link { ifindex: u32, name: String },
    /// Interface `ifindex` is gone.
    LinkGone { ifindex: u32 },
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]])
}

/// An interface name attribute: NUL-terminated text of at most `IFNAMSIZ - 1` bytes.
fn name_attr(v: &[u8], what: &str) -> Result<String, EngineError> {
    let text = v.split(|b| *b == 0).next().unwrap_or_default();
    if text.is_empty() || text.len() > 15 {
        return Err(bad(format!("{what}: an interface name of {} bytes", text.len())));
    }
    String::from_utf8(text.to_vec()).map_err(|_| bad(format!("{what}: not UTF-8")))
}

/// Decode one address message payload (`msg_type` `RTM_NEWADDR` or `RTM_DELADDR`); `None`
/// for other families and for addresses that are not global.
pub(super) fn parse_addr(msg_type: u16, payload: &[u8]) -> Result<Option<AddrMsg>, EngineError> {
    if payload.len() < IFADDRMSG_LEN {
        return Err(bad(format!("ifaddrmsg of {} bytes, expected {IFADDRMSG_LEN}", payload.len())));
    }
    let (family, prefix_len, scope) = (payload[0], payload[1], payload[3]);
    let want = match family {
        AF_INET => 4,
        AF_INET6 => 16,
        _ => return Ok(None),
    };
    if usize::from(prefix_len) > want * 8 {
        return Err(bad(format!("address prefix length {prefix_len} for family {family}")));
    }
    let ifindex = u32_at(payload, 4);
    let (mut local, mut address, mut label) = (None, None, None);
    for attr in Attrs::new(&payload[IFADDRMSG_LEN..]) {
        let (kind, value) = attr.map_err(nl)?;
        let of_family = |what| {
            if value.len() == want {
                addr_of_len(value, what)
            } else {
                Err(bad(format!("{what}: {} bytes, expected {want}", value.len())))
            }
        };
        match kind {
            IFA_LOCAL => local = Some(of_family("IFA_LOCAL")?),
            IFA_ADDRESS => address = Some(of_family("IFA_ADDRESS")?),
            IFA_LABEL => label = Some(name_attr(value, "IFA_LABEL")?),
            _ => {}
        }
    }
    let Some(address) = local.or(address) else {
        return Err(bad("address message without IFA_LOCAL or IFA_ADDRESS"));
    };
    if scope != SCOPE_GLOBAL {
        return Ok(None);
    }
    Ok(Some(if msg_type == RTM_DELADDR {
        AddrMsg::Removed { ifindex, address }
    } else {
        AddrMsg::Added { ifindex, label, address }
    }))
}

/// Decode one link message payload (`RTM_NEWLINK` or `RTM_DELLINK`).
pub(super) fn parse_link(msg_type: u16, payload: &[u8]) -> Result<Option<AddrMsg>, EngineError> {
    if payload.len() < IFINFOMSG_LEN {
        return Err(bad(format!("ifinfomsg of {} bytes, expected {IFINFOMSG_LEN}", payload.len())));
    }
    let ifindex = u32_at(payload, 4);
    if msg_type == RTM_DELLINK {
        return Ok(Some(AddrMsg::LinkGone { ifindex }));
    }
    for attr in Attrs::new(&payload[IFINFOMSG_LEN..]) {
        let (kind, value) = attr.map_err(nl)?;
        if kind == IFLA_IFNAME {
            return Ok(Some(AddrMsg::Link { ifindex, name: name_attr(value, "IFLA_IFNAME")? }));
        }
    }
    Ok(None)
}

/// Decode every address and link message of one received buffer (a dump's or a
/// notification's), skipping other message types.
pub(super) fn decode(buf: &[u8], seq: Option<u32>) -> Result<(Vec<AddrMsg>, bool), EngineError> {
    let mut out = Vec::new();
    let chunk = walk(buf, seq, |m| {
        let parsed = match m.msg_type {
            RTM_NEWADDR | RTM_DELADDR => parse_addr(m.msg_type, m.payload)?,
            RTM_NEWLINK | RTM_DELLINK => parse_link(m.msg_type, m.payload)?,
            _ => None,
        };
        out.extend(parsed);
        Ok(())
    })?;
    Ok((out, chunk.done))
}

/// Every interface's global addresses, as the messages told them, with the addresses that
/// left within [`RETAIN_MS`]. Time is the caller's (milliseconds).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressBook {
    /// Interface index → name.
    names: BTreeMap<u32, String>,
    /// Interface index → its addresses now.
    current: BTreeMap<u32, Vec<IpAddr>>,
    /// Interface name → addresses that left it, with when (the latest departure).
    gone: BTreeMap<String, Vec<(IpAddr, u64)>>,
}

impl AddressBook {
    /// Apply one message at `now`.
    pub fn apply(&mut self, msg: AddrMsg, now: u64) {
        match msg {
            AddrMsg::Link { ifindex, name } => {
                self.names.insert(ifindex, name);
            }
            AddrMsg::LinkGone { ifindex } => {
                // Its addresses leave with it (the kernel may not send RTM_DELADDR for each).
                for a in self.current.remove(&ifindex).unwrap_or_default() {
                    self.note_gone(ifindex, a, now);
                }
                self.names.remove(&ifindex);
            }
            AddrMsg::Added { ifindex, label, address } => {
                if let Some(label) = label.filter(|_| !self.names.contains_key(&ifindex)) {
                    // IPv4 labels are the interface name (or `name:alias`).
                    let name = label.split(':').next().unwrap_or(&label).to_owned();
                    self.names.insert(ifindex, name);
                }
                let list = self.current.entry(ifindex).or_default();
                if !list.contains(&address) {
                    list.push(address);
                }
            }
            AddrMsg::Removed { ifindex, address } => {
                if let Some(list) = self.current.get_mut(&ifindex) {
                    list.retain(|a| *a != address);
                }
                self.note_gone(ifindex, address, now);
            }
        }
    }

    fn note_gone(&mut self, ifindex: u32, address: IpAddr, now: u64) {
        let Some(name) = self.names.get(&ifindex) else { return };
        let list = self.gone.entry(name.clone()).or_default();
        list.retain(|(a, _)| *a != address);
        list.push((address, now));
    }

    /// The addresses interface `name` has now, in the order they came.
    pub fn current(&self, name: &str) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = Vec::new();
        let of_name = self.names.iter().filter(|(_, n)| n.as_str() == name);
        for a in
            of_name.flat_map(|(i, _)| self.current.get(i).map(Vec::as_slice).unwrap_or_default())
        {
            if !out.contains(a) {
                out.push(*a);
            }
        }
        out
    }

    /// What a selector for interface `name`'s NAT addresses uses at `now`: its addresses
    /// now, then those that left it within [`RETAIN_MS`] and are on no other interface.
    pub fn selectable(&self, name: &str, now: u64) -> Vec<IpAddr> {
        let mut out = self.current(name);
        let elsewhere = |a: &IpAddr| {
            self.names
                .iter()
                .filter(|(_, n)| n.as_str() != name)
                .any(|(i, _)| self.current.get(i).is_some_and(|l| l.contains(a)))
        };
        for (a, at) in self.gone.get(name).map(Vec::as_slice).unwrap_or_default() {
            if now.saturating_sub(*at) < RETAIN_MS && !out.contains(a) && !elsewhere(a) {
                out.push(*a);
            }
        }
        out
    }

    /// This book was read afresh (a dump after notifications were lost): carry over what
    /// `old` retained, and count every address `old` had on an interface that this book
    /// does not have there as having left at `now`.
    pub fn keep_departures_of(&mut self, old: &AddressBook, now: u64) {
        for (name, list) in &old.gone {
            for (a, at) in list {
                let mine = self.gone.entry(name.clone()).or_default();
                if !mine.iter().any(|(m, _)| m == a) {
                    mine.push((*a, *at));
                }
            }
        }
        for (index, addresses) in &old.current {
            let Some(name) = old.names.get(index) else { continue };
            let now_there = self.current(name);
            for a in addresses.iter().filter(|a| !now_there.contains(a)) {
                let list = self.gone.entry(name.clone()).or_default();
                list.retain(|(m, _)| m != a);
                list.push((*a, now));
            }
        }
    }

    /// Forget departures older than [`RETAIN_MS`] (the book stays bounded).
    pub fn expire(&mut self, now: u64) {
        for list in self.gone.values_mut() {
            list.retain(|(_, at)| now.saturating_sub(*at) < RETAIN_MS);
        }
        self.gone.retain(|_, l| !l.is_empty());
    }
}

/// For the `rtnetlink_addrs` fuzz target: the decoder and the book, as the watcher uses them.
pub mod fuzzing {
    use super::{AddressBook, EngineError};

    /// Decode a buffer and apply it to a fresh book at time 0; the book and whether the dump
    /// was done.
    pub fn decode(buf: &[u8], seq: Option<u32>) -> Result<(AddressBook, bool), EngineError> {
        let (msgs, done) = super::decode(buf, seq)?;
        let mut book = AddressBook::default();
        for m in msgs {
            book.apply(m, 0);
        }
        Ok((book, done))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// One netlink message: header, the fixed part `fixed`, then attributes, each aligned.
    fn msg(out: &mut Vec<u8>, msg_type: u16, fixed: &[u8], attrs: &[(u16, Vec<u8>)]) {
        let start = out.len();
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&msg_type.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&7u32.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(fixed);
        for (k, v) in attrs {
            let len = u16::try_from(4 + v.len()).unwrap();
            out.extend_from_slice(&len.to_ne_bytes());
            out.extend_from_slice(&k.to_ne_bytes());
            out.extend_from_slice(v);
            out.resize(statecull_netlink::align4(out.len()), 0);
        }
        let len = u32::try_from(out.len() - start).unwrap();
        out[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    /// An `ifaddrmsg` message as the kernel sends it.
    fn addr_msg(
        out: &mut Vec<u8>,
        msg_type: u16,
        ifindex: u32,
        scope: u8,
        attrs: &[(u16, Vec<u8>)],
        family: u8,
    ) {
        let mut fixed = vec![family, if family == AF_INET { 32 } else { 64 }, 0, scope];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        msg(out, msg_type, &fixed, attrs);
    }

    fn v4(s: &str) -> Vec<u8> {
        match ip(s) {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(_) => unreachable!(),
        }
    }

    fn v6(s: &str) -> Vec<u8> {
        match ip(s) {
            IpAddr::V6(a) => a.octets().to_vec(),
            IpAddr::V4(_) => unreachable!(),
        }
    }

    fn link_msg(out: &mut Vec<u8>, msg_type: u16, ifindex: u32, name: &str) {
        // ifinfomsg: family, pad, type (2), index (4), flags (4), change (4).
        let mut fixed = vec![0u8; 4];
        fixed.extend_from_slice(&ifindex.to_ne_bytes());
        fixed.extend_from_slice(&[0; 8]);
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        msg(out, msg_type, &fixed, &[(IFLA_IFNAME, n)]);
    }

    #[test]
    fn ppp_local_address_dhcp_v4_and_global_v6_are_read_link_local_is_not() {
        let mut b = Vec::new();
        link_msg(&mut b, RTM_NEWLINK, 7, "ppp0");
        link_msg(&mut b, RTM_NEWLINK, 3, "eth1");
        // PPPoE: IFA_ADDRESS is the peer, IFA_LOCAL ours.
        addr_msg(
            &mut b,
            RTM_NEWADDR,
            7,
            0,
            &[
                (IFA_ADDRESS, v4("203.0.113.1")),
                (IFA_LOCAL, v4("203.0.113.77")),
                (IFA_LABEL, b"ppp0\0".to_vec()),
            ],
            AF_INET,
        );
        addr_msg(
            &mut b,
            RTM_NEWADDR,
            3,
            0,
            &[(IFA_ADDRESS, v4("198.51.100.20")), (IFA_LOCAL, v4("198.51.100.20"))],
            AF_INET,
        );
        addr_msg(&mut b, RTM_NEWADDR, 3, 0, &[(IFA_ADDRESS, v6("2001:db8:1::20"))], AF_INET6);
        addr_msg(&mut b, RTM_NEWADDR, 3, 253, &[(IFA_ADDRESS, v6("fe80::1"))], AF_INET6);
        let (msgs, done) = decode(&b, Some(7)).unwrap();
        assert!(!done);
        let mut book = AddressBook::default();
        for m in msgs {
            book.apply(m, 0);
        }
        assert_eq!(book.current("ppp0"), [ip("203.0.113.77")]);
        assert_eq!(book.current("eth1"), [ip("198.51.100.20"), ip("2001:db8:1::20")]);
        assert!(book.current("eth2").is_empty());
    }

    #[test]
    fn a_renumbered_wan_keeps_its_old_address_for_five_minutes() {
        let mut book = AddressBook::default();
        book.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, 0);
        book.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.20") }, 0);
        // DHCP gives a new lease: the new address comes, the old one goes.
        book.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.21") }, 1000);
        book.apply(AddrMsg::Removed { ifindex: 3, address: ip("198.51.100.20") }, 1000);
        assert_eq!(book.current("eth1"), [ip("198.51.100.21")]);
        assert_eq!(book.selectable("eth1", 1000), [ip("198.51.100.21"), ip("198.51.100.20")]);
        assert_eq!(
            book.selectable("eth1", 1000 + RETAIN_MS - 1),
            [ip("198.51.100.21"), ip("198.51.100.20")]
        );
        assert_eq!(book.selectable("eth1", 1000 + RETAIN_MS), [ip("198.51.100.21")]);
        book.expire(1000 + RETAIN_MS);
        assert_eq!(book, {
            let mut b = AddressBook::default();
            b.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, 0);
            b.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.21") }, 0);
            b
        });
    }

    #[test]
    fn an_old_address_now_on_another_wan_is_not_retained_and_a_gone_link_takes_its_addresses() {
        let mut book = AddressBook::default();
        book.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, 0);
        book.apply(AddrMsg::Link { ifindex: 4, name: "eth2".into() }, 0);
        book.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.20") }, 0);
        book.apply(AddrMsg::Removed { ifindex: 3, address: ip("198.51.100.20") }, 10);
        book.apply(AddrMsg::Added { ifindex: 4, label: None, address: ip("198.51.100.20") }, 20);
        assert!(book.selectable("eth1", 30).is_empty());
        assert_eq!(book.selectable("eth2", 30), [ip("198.51.100.20")]);
        // PPPoE: ppp0 goes with its address, comes back with index 9 and a new one.
        book.apply(
            AddrMsg::Added { ifindex: 7, label: Some("ppp0".into()), address: ip("203.0.113.77") },
            40,
        );
        book.apply(AddrMsg::LinkGone { ifindex: 7 }, 50);
        book.apply(AddrMsg::Link { ifindex: 9, name: "ppp0".into() }, 60);
        book.apply(AddrMsg::Added { ifindex: 9, label: None, address: ip("203.0.113.78") }, 60);
        assert_eq!(book.selectable("ppp0", 70), [ip("203.0.113.78"), ip("203.0.113.77")]);
    }

    #[test]
    fn a_fresh_dump_after_lost_notifications_keeps_what_left() {
        let mut old = AddressBook::default();
        old.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, 0);
        old.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.20") }, 0);
        old.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.30") }, 0);
        old.apply(AddrMsg::Removed { ifindex: 3, address: ip("198.51.100.30") }, 100);
        // The dump at 500 shows a new address: .20 left unseen, .30 was already gone.
        let mut new = AddressBook::default();
        new.apply(AddrMsg::Link { ifindex: 3, name: "eth1".into() }, 500);
        new.apply(AddrMsg::Added { ifindex: 3, label: None, address: ip("198.51.100.21") }, 500);
        new.keep_departures_of(&old, 500);
        assert_eq!(
            new.selectable("eth1", 600),
            [ip("198.51.100.21"), ip("198.51.100.30"), ip("198.51.100.20")]
        );
        assert_eq!(
            new.selectable("eth1", 100 + RETAIN_MS),
            [ip("198.51.100.21"), ip("198.51.100.20")]
        );
    }

    #[test]
    fn malformed_messages_are_errors_never_a_wrong_address() {
        let mut b = Vec::new();
        addr_msg(&mut b, RTM_NEWADDR, 3, 0, &[(IFA_LOCAL, vec![1, 2, 3])], AF_INET);
        assert!(decode(&b, None).unwrap_err().to_string().contains("IFA_LOCAL: 3 bytes"));
        let mut b = Vec::new();
        addr_msg(&mut b, RTM_NEWADDR, 3, 0, &[(IFA_ADDRESS, v4("198.51.100.1"))], AF_INET6);
        assert!(decode(&b, None).is_err(), "an IPv4 address in an IPv6 message");
        let mut b = Vec::new();
        addr_msg(&mut b, RTM_NEWADDR, 3, 0, &[], AF_INET);
        assert!(decode(&b, None).is_err(), "no address at all");
        assert!(parse_addr(RTM_NEWADDR, &[2, 32, 0]).is_err());
        assert!(parse_link(RTM_NEWLINK, &[0; 8]).is_err());
        // Other families are skipped.
        assert_eq!(parse_addr(RTM_NEWADDR, &[7, 0, 0, 0, 1, 0, 0, 0]).unwrap(), None);
    }
}
