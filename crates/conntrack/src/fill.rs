//! Building large, realistic conntrack tables for tests, the demo and benchmarks.
//!
//! Entries are inserted with batched `IPCTNL_MSG_CT_NEW` messages (no ACKs, ~128 KiB per
//! `sendmsg`), SNATed by the kernel itself (`CTA_NAT_SRC`) so they carry the NAT extension
//! like masqueraded traffic does. Only compiled with the `fill` feature; the broker never
//! creates states.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use statecull_proto::{L4, StateKey, ipproto};

use crate::codec::{MsgBuilder, NLMSG_ERROR, NlMsgs};
use crate::ct::{self, NewEntry};
use crate::error::CtError;
use crate::sys::{CtSocket, SEND_CHUNK};

/// One WAN of the generated firewall: its ct mark and SNAT addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wan {
    pub mark: u32,
    pub nat_v4: Ipv4Addr,
    pub nat_v6: Ipv6Addr,
}

/// The two WANs of the lab and demo (documentation addresses).
pub const WAN1: Wan = Wan {
    mark: 1,
    nat_v4: Ipv4Addr::new(198, 51, 100, 1),
    nat_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 1),
};
pub const WAN2: Wan = Wan {
    mark: 2,
    nat_v4: Ipv4Addr::new(203, 0, 113, 1),
    nat_v6: Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1),
};

/// Shape of a generated two-gateway table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub entries: u64,
    /// Percentage of entries leaving via `wans[0]`; the rest use `wans[1]`.
    pub wan1_percent: u8,
    pub ipv6_percent: u8,
    pub udp_percent: u8,
    pub wans: [Wan; 2],
    /// Set the ct mark of each entry to its WAN's mark (false: mark 0, as on a firewall that
    /// does not mark connections).
    pub marked: bool,
    /// Spread each WAN's entries over this many marks (the WAN's mark plus 16 × 0..n), like
    /// several gateways behind one uplink; 1: one mark per WAN.
    pub mark_spread: u32,
    pub timeout_secs: u32,
}

impl TableSpec {
    /// Half via each WAN, 20 % IPv6, 25 % UDP, marked, one-hour timeouts.
    pub fn two_wans(entries: u64) -> Self {
        Self {
            entries,
            wan1_percent: 50,
            ipv6_percent: 20,
            udp_percent: 25,
            wans: [WAN1, WAN2],
            marked: true,
            mark_spread: 1,
            timeout_secs: 3600,
        }
    }

    /// Which WAN entry `i` leaves through (0 or 1).
    pub fn wan_of(&self, i: u64) -> usize {
        usize::from(mix(i, 1) % 100 >= u64::from(self.wan1_percent))
    }

    /// The ct mark of entry `i` (when marked): its WAN's, shifted by its share of the spread.
    pub fn mark_of(&self, i: u64) -> u32 {
        let wan = self.wans[self.wan_of(i)];
        let share = u32::try_from(mix(i, 7) % u64::from(self.mark_spread.max(1))).unwrap_or(0);
        wan.mark + 16 * share
    }

    pub fn is_ipv6(&self, i: u64) -> bool {
        mix(i, 2) % 100 < u64::from(self.ipv6_percent)
    }

    /// Entry `i` of the table. Original tuples are unique for `i < 16,000,000`.
    pub fn entry(&self, i: u64) -> NewEntry {
        let wan = self.wans[self.wan_of(i)];
        let v6 = self.is_ipv6(i);
        let udp = mix(i, 3) % 100 < u64::from(self.udp_percent);
        // Unique (client, source port) per i: 250 clients x 64,000 ports.
        let client = u8::try_from(i % 250).unwrap_or(0) + 2;
        let sport = 1024 + u16::try_from((i / 250) % 64_000).unwrap_or(0);
        let server = mix(i, 4);
        let (proto, dport) = if udp {
            (ipproto::UDP, [53u16, 443, 123, 5060, 3478][(server % 5) as usize])
        } else {
            (ipproto::TCP, [443u16, 80, 8443, 993, 5223, 22][(server % 6) as usize])
        };
        let (src, dst, snat) = if v6 {
            (
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, u16::from(client))),
                // Servers in 2001:db8:ff::/48, 2^32 of them.
                IpAddr::V6(Ipv6Addr::from(
                    (0x2001_0db8_00ff_u128 << 80) | u128::from(server & 0xffff_ffff),
                )),
                IpAddr::V6(wan.nat_v6),
            )
        } else {
            let s = u32::try_from(server % (1 << 17)).unwrap_or(0); // 198.18.0.0/15
            (
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, client)),
                IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + s)),
                IpAddr::V4(wan.nat_v4),
            )
        };
        NewEntry {
            orig: StateKey { proto, src, dst, l4: L4::Ports { src: sport, dst: dport } },
            snat: Some(snat),
            mark: if self.marked { self.mark_of(i) } else { 0 },
            timeout_secs: self.timeout_secs,
            tcp_established: true,
        }
    }

    /// How many entries of the table satisfy `pred` (for exact expectations in tests).
    pub fn count_where(&self, pred: impl Fn(u64) -> bool) -> u64 {
        (0..self.entries).filter(|i| pred(*i)).count() as u64
    }
}

/// splitmix64 of `i` with a salt: cheap, deterministic, well spread.
fn mix(i: u64, salt: u64) -> u64 {
    let mut z = i
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(salt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// What a load did.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    pub inserted: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Insert `entries` into the current network namespace's table, calling `progress` with the
/// number sent so far after every batch.
pub fn load(
    entries: impl IntoIterator<Item = NewEntry>,
    progress: &mut dyn FnMut(u64),
) -> Result<LoadReport, CtError> {
    let started = Instant::now();
    let mut sock = CtSocket::open()?;
    let mut b = MsgBuilder::with_capacity(SEND_CHUNK);
    let mut report = LoadReport::default();
    let mut sent = 0u64;
    for e in entries {
        let seq = sock.next_seq();
        ct::new_request(&mut b, seq, &e);
        sent += 1;
        if b.len() + 256 > SEND_CHUNK {
            flush(&mut sock, &mut b, &mut report)?;
            progress(sent);
        }
    }
    flush(&mut sock, &mut b, &mut report)?;
    progress(sent);
    report.inserted = sent - report.failed;
    report.elapsed = started.elapsed();
    Ok(report)
}

fn flush(sock: &mut CtSocket, b: &mut MsgBuilder, report: &mut LoadReport) -> Result<(), CtError> {
    if b.is_empty() {
        return Ok(());
    }
    sock.send(b.as_bytes())?;
    b.clear();
    while let Some(buf) = sock.recv(false)? {
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            if msg.msg_type == NLMSG_ERROR {
                let (errno, _) = msg.error()?;
                if errno != 0 {
                    report.failed += 1;
                    if report.first_error.is_none() {
                        report.first_error = Some(crate::error::errno_text(-errno));
                    }
                }
            }
        }
    }
    Ok(())
}
