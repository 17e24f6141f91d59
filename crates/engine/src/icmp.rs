//! ICMP echo packets, pure: building requests, the Internet checksum, reading what a raw
//! socket receives, and matching replies to the requests in flight. No I/O.
//!
//! Used by the raw-socket prober (`raw_probe.rs`: FreeBSD, which has no unprivileged ICMP
//! sockets), and tested on Linux (unit tests with byte-exact vectors, property tests on the
//! parser, and the raw prober against the Linux kernel's own replies in a namespace).
//!
//! What a raw socket hands over:
//! * IPv4 (`SOCK_RAW`, `IPPROTO_ICMP`): the whole datagram, IPv4 header first. Its length is
//!   taken from the header's IHL field only; `ip_len` is not trusted (BSD kernels have
//!   delivered it in host order, minus the header, in some versions).
//! * IPv6 (`SOCK_RAW`, `IPPROTO_ICMPV6`): the ICMPv6 message alone; the kernel checks its
//!   checksum on input and computes it on output (RFC 3542 §3.1), so requests carry 0.
//!
//! A raw socket sees every ICMP message the host receives (narrowed by `connect` to one
//! peer): echo replies to other programs' pings, errors, and on loopback its own requests.
//! [`parse`] says which are echo replies; [`InFlight`] accepts only a reply from the target
//! with this socket's identifier, a sequence number still waiting, and the payload sent.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::EngineError;

/// ICMPv4 echo request and reply types (RFC 792).
pub const V4_ECHO_REQUEST: u8 = 8;
pub const V4_ECHO_REPLY: u8 = 0;
/// ICMPv6 echo request and reply types (RFC 4443).
pub const V6_ECHO_REQUEST: u8 = 128;
pub const V6_ECHO_REPLY: u8 = 129;
/// ICMP header: type, code, checksum, identifier, sequence.
pub const HEADER_LEN: usize = 8;
/// `IPPROTO_ICMP`.
const PROTO_ICMP: u8 = 1;

/// The address family of a probe socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(addr: IpAddr) -> Self {
        if addr.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// An echo message's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echo {
    pub id: u16,
    pub seq: u16,
    pub payload: Vec<u8>,
}

/// What one received packet is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// An echo reply (not yet matched to a request: see [`InFlight`]).
    EchoReply(Echo),
    /// Any other ICMP message (a request, an error, ...): not a probe's answer.
    Other { kind: u8 },
}

fn malformed(message: impl Into<String>) -> EngineError {
    EngineError::IcmpPacket(message.into())
}

/// The Internet checksum (RFC 1071): the ones' complement of the ones' complement sum of
/// the data as big-endian 16-bit words, an odd last byte padded with zero. A message whose
/// checksum field is right sums to 0 this way.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// An echo request: for IPv4 with its checksum, for IPv6 with 0 (the kernel fills it in).
pub fn echo_request(family: Family, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let kind = match family {
        Family::V4 => V4_ECHO_REQUEST,
        Family::V6 => V6_ECHO_REQUEST,
    };
    let mut p = Vec::with_capacity(HEADER_LEN + payload.len());
    p.extend_from_slice(&[kind, 0, 0, 0]);
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(payload);
    if family == Family::V4 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The ICMP message inside what a raw IPv4 socket received: the IPv4 header checked
/// (version 4, IHL at least 5 words and within the packet, protocol ICMP) and skipped.
pub fn skip_ipv4_header(packet: &[u8]) -> Result<&[u8], EngineError> {
    let Some(&first) = packet.first() else { return Err(malformed("empty packet")) };
    if first >> 4 != 4 {
        return Err(malformed(format!("IP version {} where 4 was expected", first >> 4)));
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < 20 || packet.len() < ihl {
        return Err(malformed(format!(
            "IPv4 header of {ihl} bytes in a packet of {} bytes",
            packet.len()
        )));
    }
    if packet[9] != PROTO_ICMP {
        return Err(malformed(format!("IP protocol {} is not ICMP", packet[9])));
    }
    Ok(&packet[ihl..])
}

/// The source address of an IPv4 packet whose header [`skip_ipv4_header`] accepts.
pub fn ipv4_source(packet: &[u8]) -> Option<std::net::Ipv4Addr> {
    skip_ipv4_header(packet).ok()?;
    let b: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
    Some(std::net::Ipv4Addr::from(b))
}

/// Read what a raw socket of `family` received (IPv4: with its IP header).
///
/// Errors: a packet too short, an IPv4 header that does not hold, an IPv4 checksum that
/// does not add up, or an echo reply with a non-zero code. Anything else that is well
/// formed but not an echo reply is [`Received::Other`].
pub fn parse(family: Family, packet: &[u8]) -> Result<Received, EngineError> {
    let icmp = match family {
        Family::V4 => skip_ipv4_header(packet)?,
        Family::V6 => packet,
    };
    if icmp.len() < HEADER_LEN {
        return Err(malformed(format!("ICMP message of {} bytes", icmp.len())));
    }
    if family == Family::V4 && checksum(icmp) != 0 {
        return Err(malformed("ICMP checksum does not add up"));
    }
    let reply = match family {
        Family::V4 => V4_ECHO_REPLY,
        Family::V6 => V6_ECHO_REPLY,
    };
    if icmp[0] != reply {
        return Ok(Received::Other { kind: icmp[0] });
    }
    if icmp[1] != 0 {
        return Err(malformed(format!("echo reply with code {}", icmp[1])));
    }
    Ok(Received::EchoReply(Echo {
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        payload: icmp[HEADER_LEN..].to_vec(),
    }))
}

/// Requests sent to one target from one socket and not yet answered or given up, each with
/// the caller's token (the engine: when it was sent).
#[derive(Debug)]
pub struct InFlight<T> {
    target: IpAddr,
    id: u16,
    payload: Vec<u8>,
    waiting: BTreeMap<u16, T>,
}

impl<T> InFlight<T> {
    pub fn new(target: IpAddr, id: u16, payload: &[u8]) -> Self {
        InFlight { target, id, payload: payload.to_vec(), waiting: BTreeMap::new() }
    }

    /// A request with sequence number `seq` went out. A number still waiting (after 65,536
    /// requests without an answer or timeout) is replaced.
    pub fn sent(&mut self, seq: u16, token: T) {
        self.waiting.insert(seq, token);
    }

    /// The token of the request `echo` (from `from`) answers, which stops waiting; `None`
    /// for a reply from another host, with another identifier, for a request not waiting
    /// (answered already, given up, never sent) or with another payload.
    pub fn answer(&mut self, from: IpAddr, echo: &Echo) -> Option<T> {
        if from != self.target || echo.id != self.id || echo.payload != self.payload {
            return None;
        }
        self.waiting.remove(&echo.seq)
    }

    /// Stop waiting for every request whose token `expired` says so; their tokens, in
    /// sequence order.
    pub fn expire(&mut self, mut expired: impl FnMut(&T) -> bool) -> Vec<T> {
        let gone: Vec<u16> =
            self.waiting.iter().filter(|(_, t)| expired(t)).map(|(s, _)| *s).collect();
        gone.into_iter().filter_map(|s| self.waiting.remove(&s)).collect()
    }

    /// Requests still waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    const PAYLOAD: &[u8] = b"statecull probe.";
    /// An echo reply from 203.0.113.254 to 203.0.113.1, id 0x1234, seq 1, with its IPv4
    /// header, as a raw IPv4 socket receives it (checksums computed independently).
    const V4_REPLY: &str =
        "4500002cabcd000040015603cb0071fecb00710100008cee12340001737461746563756c6c2070726f62652e";

    #[test]
    fn checksum_matches_rfc_1071() {
        // RFC 1071 §3's example words 0001 f203 f4f5 f6f7 sum to ddf2.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        // An odd length pads the last byte with zero.
        assert_eq!(checksum(&[8, 0, 0, 0, 0, 1, 0, 2, 0x61]), 0x96fc);
        assert_eq!(checksum(&[]), 0xffff);
    }

    #[test]
    fn echo_requests_are_byte_exact() {
        let v4 = echo_request(Family::V4, 0x1234, 1, PAYLOAD);
        assert_eq!(v4, hex("080084ee12340001737461746563756c6c2070726f62652e"));
        assert_eq!(checksum(&v4), 0);
        let v6 = echo_request(Family::V6, 0x1234, 1, PAYLOAD);
        assert_eq!(v6, hex("8000000012340001737461746563756c6c2070726f62652e"));
    }

    #[test]
    fn a_v4_reply_is_read_past_its_ip_header() {
        let r = parse(Family::V4, &hex(V4_REPLY)).unwrap();
        assert_eq!(r, Received::EchoReply(Echo { id: 0x1234, seq: 1, payload: PAYLOAD.into() }));
        // With 8 bytes of IP options (IHL 7) it is the same reply.
        let mut p = hex(V4_REPLY);
        p[0] = 0x47;
        p.splice(20..20, [1u8; 8]);
        assert_eq!(parse(Family::V4, &p).unwrap(), r);
        assert_eq!(ipv4_source(&p), Some("203.0.113.254".parse().unwrap()));
        assert_eq!(ipv4_source(&p[..10]), None);
    }

    #[test]
    fn broken_packets_are_errors_not_replies() {
        let good = hex(V4_REPLY);
        let mut bad_sum = good.clone();
        *bad_sum.last_mut().unwrap() ^= 1;
        let mut v6_hdr = good.clone();
        v6_hdr[0] = 0x65;
        let mut short_ihl = good.clone();
        short_ihl[0] = 0x44;
        let mut udp = good.clone();
        udp[9] = 17;
        let mut code = hex("00010000123400010000");
        let c = checksum(&code);
        code[2..4].copy_from_slice(&c.to_be_bytes());
        let mut with_hdr = good[..20].to_vec();
        with_hdr.extend_from_slice(&code);
        for (what, p, says) in [
            ("checksum", bad_sum, "checksum"),
            ("version", v6_hdr, "IP version 6"),
            ("ihl", short_ihl, "IPv4 header of 16 bytes"),
            ("protocol", udp, "protocol 17"),
            ("truncated", good[..24].to_vec(), "ICMP message of 4 bytes"),
            ("empty", Vec::new(), "empty"),
            ("code", with_hdr, "code 1"),
        ] {
            let e = parse(Family::V4, &p).unwrap_err().to_string();
            assert!(e.contains(says), "{what}: {e}");
        }
        assert!(parse(Family::V6, &[129, 0, 0]).is_err());
    }

    #[test]
    fn requests_and_errors_are_not_replies() {
        // Our own request, looped back on loopback.
        let mut with_hdr = hex(V4_REPLY)[..20].to_vec();
        with_hdr.extend(echo_request(Family::V4, 7, 9, PAYLOAD));
        assert_eq!(parse(Family::V4, &with_hdr).unwrap(), Received::Other { kind: 8 });
        let v6 = echo_request(Family::V6, 7, 9, PAYLOAD);
        assert_eq!(parse(Family::V6, &v6).unwrap(), Received::Other { kind: 128 });
        let mut v6_reply = v6.clone();
        v6_reply[0] = V6_ECHO_REPLY;
        assert_eq!(
            parse(Family::V6, &v6_reply).unwrap(),
            Received::EchoReply(Echo { id: 7, seq: 9, payload: PAYLOAD.into() })
        );
    }

    #[test]
    fn only_our_replies_are_matched() {
        let target: IpAddr = "203.0.113.254".parse().unwrap();
        let mut f = InFlight::new(target, 0x1234, PAYLOAD);
        f.sent(1, "one");
        f.sent(2, "two");
        let echo = |id, seq, payload: &[u8]| Echo { id, seq, payload: payload.to_vec() };
        // Another host's reply, another program's identifier, another payload, a sequence
        // never sent: none of them.
        assert_eq!(f.answer("203.0.113.9".parse().unwrap(), &echo(0x1234, 1, PAYLOAD)), None);
        assert_eq!(f.answer(target, &echo(0x4321, 1, PAYLOAD)), None);
        assert_eq!(f.answer(target, &echo(0x1234, 1, b"other")), None);
        assert_eq!(f.answer(target, &echo(0x1234, 3, PAYLOAD)), None);
        assert_eq!(f.answer(target, &echo(0x1234, 2, PAYLOAD)), Some("two"));
        // A duplicate is not counted twice.
        assert_eq!(f.answer(target, &echo(0x1234, 2, PAYLOAD)), None);
        assert_eq!(f.len(), 1);
        assert_eq!(f.expire(|t| *t == "one"), vec!["one"]);
        assert!(f.is_empty());
        // A late answer to a request given up is not taken either.
        assert_eq!(f.answer(target, &echo(0x1234, 1, PAYLOAD)), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(Family::V4, &bytes);
            let _ = parse(Family::V6, &bytes);
        }

        #[test]
        fn a_reply_round_trips_behind_any_ipv4_header(
            id in any::<u16>(),
            seq in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            options in 0usize..=10,
            ttl in any::<u8>(),
        ) {
            let mut icmp = echo_request(Family::V4, id, seq, &payload);
            icmp[0] = V4_ECHO_REPLY;
            icmp[2..4].copy_from_slice(&[0, 0]);
            let c = checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            let mut p = vec![0u8; 20 + options * 4];
            p[0] = 0x40 | u8::try_from(5 + options).unwrap();
            p[8] = ttl;
            p[9] = 1;
            p.extend_from_slice(&icmp);
            prop_assert_eq!(
                parse(Family::V4, &p).unwrap(),
                Received::EchoReply(Echo { id, seq, payload: payload.clone() })
            );
            // Any single flipped bit in the ICMP part is caught by the checksum.
            let at = p.len() - 1 - (usize::from(id) % icmp.len());
            p[at] ^= 1 << (seq % 8);
            prop_assert!(parse(Family::V4, &p).is_err());
        }
    }
}
