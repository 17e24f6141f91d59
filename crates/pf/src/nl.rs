//! pf's generic-netlink family `"pfctl"` (pf-kernel.md §4): resolving the family id, the
//! KILLSTATES / CLRSTATES requests and replies, and the GETSTATES dump. Pure code on top of
//! [`statecull_netlink`]'s framing: no I/O, no `unsafe`, and every parser returns an error
//! (never panics) on any input.
//!
//! Each message has a builder and a parser. The builders of requests are what the backend
//! sends; the builders of replies ([`family_reply`], [`kill_reply`], [`state_message`]) and the
//! parsers of requests ([`parse_kill_request`], [`parse_getstates_request`]) are the kernel's
//! side, for the model and the tests.
//!
//! # Byte order (pf-kernel.md §1.6)
//!
//! * Framing and plain integers (`nlattr_add_u*` / `nlattr_get_uint*`) are host order.
//! * Ports are network order inside pf, and the kernel copies them with the u16 helpers, so
//!   the two payload bytes are the big-endian port ([`RuleAddr::port`] and [`PfKey::port`]
//!   hold host-order numbers; the codec converts).
//! * State ids are opaque raw u64s (big-endian inside the kernel): written and read in host
//!   order, never swapped, so an id goes back to the kernel with the bytes it came with.
//! * `creatorid`: dumps carry `htonl(raw)`; [`parse_state`] swaps it back so
//!   [`PfState::creatorid`] is the raw value that `PF_CS_CMP_CREATORID` (sent raw) compares.
//!
//! # Generic-netlink header
//!
//! `genlmsghdr` is {cmd u8, version u8, reserved u16}: the same four bytes as `nfgenmsg`
//! {family, version, res_id}, so requests are started with [`MsgBuilder::begin`] with the cmd
//! in the family slot and version 0. A request's `nlmsg_type` is the resolved family id; the
//! kernel's replies carry the same type and the request's cmd.
//!
//! # Decisions where the sources leave room
//!
//! * Attributes the parsers do not know are ignored, as the kernel's parsers do; a repeated
//!   attribute overrides the earlier one (nested rule addresses are merged field by field,
//!   because the kernel parses a repeated nest into the same struct).
//! * Strings are checked like the kernel's `nlattr_get_chara`: the text up to the first NUL
//!   must be shorter than the C buffer (`IFNAMSIZ`, `PF_RULE_LABEL_SIZE`); it must also be
//!   UTF-8 here.
//! * [`parse_state`] accepts both dump generations: `PF_ST_RT_ADDR` absent (newer kernels
//!   write it only when the state has a route) or all-zero (older kernels) means no gateway,
//!   and its width (4 or 16) gives its family (newer kernels allow a gateway of the other
//!   family). `PF_STK_AF` / `PF_STK_PROTO`, when present, give each key its own family and
//!   protocol (af-to states); otherwise the state's `PF_ST_AF` / `PF_ST_PROTO` apply.
//! * [`StateFilter`]: see its documentation for what the kernel does with each field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use statecull_netlink::{
    Attrs, MsgBuilder, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTI, NLM_F_REQUEST, NlError, NlMsg, get_be16,
    get_be32, get_u8, get_u16, get_u32, get_u64,
};

use crate::abi::PF_STATE_VERSION;
use crate::types::{
    AF_INET, AF_INET6, Direction, IFNAMSIZ, PF_ADDR_ADDRMASK, PF_RULE_LABEL_SIZE, PfKey, PfKill,
    PfState, RuleAddr, addr_from_pf, af_of, mask_bytes, pf_addr_bytes,
};

/// `PFNL_FAMILY_NAME`.
pub const PFNL_FAMILY_NAME: &str = "pfctl";

/// Message types below this are netlink control messages (`NLMSG_NOOP`, `NLMSG_ERROR`,
/// `NLMSG_DONE`, `NLMSG_OVERRUN`), never a generic-netlink family.
const NLMSG_MIN_TYPE: u16 = 0x10;

/// The generic-netlink controller (Linux-compatible values; pf-kernel.md §4).
pub mod ctrl {
    /// `GENL_ID_CTRL`: the controller's own message type.
    pub const GENL_ID_CTRL: u16 = 0x10;
    /// `CTRL_CMD_NEWFAMILY`: the controller's reply.
    pub const CMD_NEWFAMILY: u8 = 1;
    /// `CTRL_CMD_GETFAMILY`.
    pub const CMD_GETFAMILY: u8 = 3;
    /// `CTRL_ATTR_FAMILY_ID` (u16).
    pub const ATTR_FAMILY_ID: u16 = 1;
    /// `CTRL_ATTR_FAMILY_NAME` (string).
    pub const ATTR_FAMILY_NAME: u16 = 2;
}

/// `PFNL_CMD_*` (`pf_nl.h`).
pub mod cmd {
    pub const GETSTATES: u8 = 1;
    pub const GETCREATORS: u8 = 2;
    pub const START: u8 = 3;
    pub const STOP: u8 = 4;
    pub const ADDRULE: u8 = 5;
    pub const GETRULES: u8 = 6;
    pub const GETRULE: u8 = 7;
    pub const CLRSTATES: u8 = 8;
    pub const KILLSTATES: u8 = 9;
    pub const SET_STATUSIF: u8 = 10;
}

/// `enum pfstate_key_type_t`: inside `PF_ST_KEY_WIRE` / `PF_ST_KEY_STACK`.
pub mod stk {
    /// ip: 4 or 16 bytes, per the key's family.
    pub const ADDR0: u16 = 1;
    pub const ADDR1: u16 = 2;
    /// u16 payload holding the network-order port (big-endian bytes).
    pub const PORT0: u16 = 3;
    pub const PORT1: u16 = 4;
    /// u8 (newer kernels).
    pub const AF: u16 = 5;
    /// u16, host order (newer kernels).
    pub const PROTO: u16 = 6;
}

/// `enum pfstate_peer_type_t`: inside `PF_ST_PEER_SRC` / `PF_ST_PEER_DST`.
pub mod stp {
    pub const PFSS_FLAGS: u16 = 1;
    pub const PFSS_TTL: u16 = 2;
    pub const SCRUB_FLAG: u16 = 3;
    pub const PFSS_TS_MOD: u16 = 4;
    pub const SEQLO: u16 = 5;
    pub const SEQHI: u16 = 6;
    pub const SEQDIFF: u16 = 7;
    pub const MAX_WIN: u16 = 8;
    pub const MSS: u16 = 9;
    pub const STATE: u16 = 10;
    pub const WSCALE: u16 = 11;
}

/// `enum pfstate_type_t`: GETSTATES request filters and dump attributes.
pub mod st {
    /// Dump: raw u64, host order. Request: parsed as u32 (get one state).
    pub const ID: u16 = 1;
    /// Dump: `htonl(raw)`. Request: u32 compared raw.
    pub const CREATORID: u16 = 2;
    pub const IFNAME: u16 = 3;
    pub const ORIG_IFNAME: u16 = 4;
    pub const KEY_WIRE: u16 = 5;
    pub const KEY_STACK: u16 = 6;
    pub const PEER_SRC: u16 = 7;
    pub const PEER_DST: u16 = 8;
    pub const RT_ADDR: u16 = 9;
    pub const RULE: u16 = 10;
    pub const ANCHOR: u16 = 11;
    pub const NAT_RULE: u16 = 12;
    pub const CREATION: u16 = 13;
    pub const EXPIRE: u16 = 14;
    pub const PACKETS0: u16 = 15;
    pub const PACKETS1: u16 = 16;
    pub const BYTES0: u16 = 17;
    pub const BYTES1: u16 = 18;
    pub const AF: u16 = 19;
    /// Dump: u8. Request: **u16**.
    pub const PROTO: u16 = 21;
    pub const DIRECTION: u16 = 22;
    pub const LOG: u16 = 23;
    pub const TIMEOUT: u16 = 24;
    pub const STATE_FLAGS: u16 = 25;
    pub const SYNC_FLAGS: u16 = 26;
    pub const UPDATES: u16 = 27;
    pub const VERSION: u16 = 28;
    /// Request only: 16-byte `in6_addr`.
    pub const FILTER_ADDR: u16 = 29;
    pub const FILTER_MASK: u16 = 30;
    pub const RTABLEID: u16 = 31;
    pub const MIN_TTL: u16 = 32;
    pub const MAX_MSS: u16 = 33;
    pub const DNPIPE: u16 = 34;
    pub const DNRPIPE: u16 = 35;
    pub const RT: u16 = 36;
    pub const RT_IFNAME: u16 = 37;
    /// Newer kernels (later `pf_nl.h`).
    pub const SRC_NODE_FLAGS: u16 = 38;
    pub const RT_AF: u16 = 39;
}

/// `enum pf_addr_type_t`: a nested `pf_addr_wrap`.
pub mod at {
    /// 16-byte `in6_addr`.
    pub const ADDR: u16 = 1;
    pub const MASK: u16 = 2;
    pub const IFNAME: u16 = 3;
    pub const TABLENAME: u16 = 4;
    /// u8 `PF_ADDR_*`.
    pub const TYPE: u16 = 5;
    pub const IFLAGS: u16 = 6;
}

/// `enum pfrule_addr_type_t`: a nested `pf_rule_addr`.
pub mod rat {
    /// Nested [`at`](super::at).
    pub const ADDR: u16 = 1;
    /// u16 → `port[0]` (network order). Despite the name, a range bound.
    pub const SRC_PORT: u16 = 2;
    /// u16 → `port[1]`.
    pub const DST_PORT: u16 = 3;
    pub const NEG: u16 = 4;
    pub const OP: u16 = 5;
}

/// `enum pf_clear_states_type_t`: KILLSTATES / CLRSTATES.
pub mod cs {
    /// u64, raw id.
    pub const CMP_ID: u16 = 1;
    /// u32, raw (0 = this host).
    pub const CMP_CREATORID: u16 = 2;
    pub const CMP_DIR: u16 = 3;
    pub const AF: u16 = 4;
    /// u8 (stored into an int).
    pub const PROTO: u16 = 5;
    /// Nested [`rat`](super::rat).
    pub const SRC: u16 = 6;
    pub const DST: u16 = 7;
    pub const RT_ADDR: u16 = 8;
    pub const IFNAME: u16 = 9;
    pub const LABEL: u16 = 10;
    /// bool (one byte).
    pub const KILL_MATCH: u16 = 11;
    pub const NAT: u16 = 12;
    /// u32, reply only.
    pub const KILLED: u16 = 13;
}

/// A pf netlink message that cannot be built into a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NlCodecError {
    /// Framing: a truncated header, an attribute longer than its message, a wrong width.
    #[error(transparent)]
    Netlink(#[from] NlError),
    /// Not the kind of message this parser reads.
    #[error("not {expected}: message type {msg_type:#x}, genl cmd {cmd:?}")]
    Unexpected { expected: &'static str, msg_type: u16, cmd: Option<u8> },
    /// A required attribute is absent.
    #[error("missing attribute {0}")]
    Missing(&'static str),
    /// An attribute is well framed but its value is refused.
    #[error("{what}: {why}")]
    Invalid { what: &'static str, why: String },
}

fn invalid(what: &'static str, why: impl Into<String>) -> NlCodecError {
    NlCodecError::Invalid { what, why: why.into() }
}

// ---------------------------------------------------------------------------------------------
// Small readers and writers.

/// Start a generic-netlink message: `nlmsghdr`, then `genlmsghdr` {cmd, version 0, 0}.
fn begin_genl(
    b: &mut MsgBuilder,
    msg_type: u16,
    flags: u16,
    seq: u32,
    cmd: u8,
) -> statecull_netlink::Mark {
    b.begin(msg_type, flags, seq, cmd, 0)
}

/// The genl cmd and attributes of a family message (not a control message).
fn genl<'a>(msg: &NlMsg<'a>, expected: &'static str) -> Result<(u8, Attrs<'a>), NlCodecError> {
    if msg.msg_type < NLMSG_MIN_TYPE {
        return Err(NlCodecError::Unexpected { expected, msg_type: msg.msg_type, cmd: None });
    }
    Ok(msg.genl_attrs()?)
}

fn unexpected_cmd(expected: &'static str, msg: &NlMsg<'_>, cmd: u8) -> NlCodecError {
    NlCodecError::Unexpected { expected, msg_type: msg.msg_type, cmd: Some(cmd) }
}

fn bytes16(v: &[u8], what: &'static str) -> Result<[u8; 16], NlCodecError> {
    v.try_into().map_err(|_| invalid(what, format!("{} bytes, expected 16", v.len())))
}

/// `nlattr_get_chara`: the text up to the first NUL (or the whole payload) must fit a C
/// buffer of `size` bytes with its terminator.
fn chara(v: &[u8], size: usize, what: &'static str) -> Result<String, NlCodecError> {
    let len = v.iter().position(|c| *c == 0).unwrap_or(v.len());
    if len >= size {
        return Err(invalid(what, format!("{len} characters, at most {} fit", size - 1)));
    }
    let text = v.get(..len).unwrap_or_default();
    String::from_utf8(text.to_vec()).map_err(|_| invalid(what, "not UTF-8"))
}

fn flag(v: &[u8], what: &'static str) -> Result<bool, NlCodecError> {
    Ok(get_u8(v, what)? != 0)
}

/// An address of family `af` in the width the kernel's `dump_addr` uses (4 or 16 bytes).
fn ip_of_af(v: &[u8], af: u8, what: &'static str) -> Result<IpAddr, NlCodecError> {
    match af {
        AF_INET => {
            let o: [u8; 4] = v
                .try_into()
                .map_err(|_| invalid(what, format!("{} bytes, expected 4 (AF_INET)", v.len())))?;
            Ok(IpAddr::V4(Ipv4Addr::from(o)))
        }
        AF_INET6 => {
            let o: [u8; 16] = v
                .try_into()
                .map_err(|_| invalid(what, format!("{} bytes, expected 16 (AF_INET6)", v.len())))?;
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
        _ => Err(invalid(what, format!("address family {af} is neither AF_INET nor AF_INET6"))),
    }
}

/// `dump_addr`: 4 bytes for `AF_INET`, 16 for `AF_INET6`, nothing for another family.
fn put_addr_af(b: &mut MsgBuilder, kind: u16, a: &IpAddr, af: u8) {
    let bytes = pf_addr_bytes(a);
    match af {
        AF_INET => b.attr(kind, &bytes[..4]),
        AF_INET6 => b.attr(kind, &bytes),
        _ => {}
    }
}

fn put_ip(b: &mut MsgBuilder, kind: u16, a: &IpAddr) {
    put_addr_af(b, kind, a, af_of(a));
}

/// A prefix length from a contiguous mask (`bits` = 32 or 128).
fn prefix_len(mask: &[u8; 16], v4: bool) -> Result<u8, NlCodecError> {
    const WHAT: &str = "PF_ST_FILTER_MASK";
    let (ones, zeros, bits) = if v4 {
        if mask[4..].iter().any(|m| *m != 0) {
            return Err(invalid(WHAT, "an IPv4 mask with bits beyond the first 4 bytes"));
        }
        let m = u32::from_be_bytes([mask[0], mask[1], mask[2], mask[3]]);
        (m.leading_ones(), m.trailing_zeros(), 32)
    } else {
        let m = u128::from_be_bytes(*mask);
        (m.leading_ones(), m.trailing_zeros(), 128)
    };
    if ones + zeros != bits {
        return Err(invalid(WHAT, "not a prefix (non-contiguous mask)"));
    }
    u8::try_from(ones).map_err(|_| invalid(WHAT, "prefix length out of range"))
}

// ---------------------------------------------------------------------------------------------
// Family resolution.

/// `CTRL_CMD_GETFAMILY` for `"pfctl"`, with `NLM_F_REQUEST | NLM_F_ACK`.
pub fn family_request(b: &mut MsgBuilder, seq: u32) {
    let m = begin_genl(b, ctrl::GENL_ID_CTRL, NLM_F_REQUEST | NLM_F_ACK, seq, ctrl::CMD_GETFAMILY);
    b.attr_str(ctrl::ATTR_FAMILY_NAME, PFNL_FAMILY_NAME);
    b.end(m);
}

/// The controller's answer (for the model): `CTRL_CMD_NEWFAMILY` carrying the family id and
/// name, in the order FreeBSD's `netlink_generic.c` writes them (the real reply has more
/// attributes: version, ops, groups).
pub fn family_reply(b: &mut MsgBuilder, seq: u32, id: u16) {
    let m = begin_genl(b, ctrl::GENL_ID_CTRL, 0, seq, ctrl::CMD_NEWFAMILY);
    b.attr_u16(ctrl::ATTR_FAMILY_ID, id);
    b.attr_str(ctrl::ATTR_FAMILY_NAME, PFNL_FAMILY_NAME);
    b.end(m);
}

/// `Some(id)` for a controller `NEWFAMILY` message naming `"pfctl"`; `None` for any other
/// message (control messages such as the ACK, other commands, other families). A pfctl reply
/// without an id, or with an id that cannot be a family (≤ `GENL_ID_CTRL`), is an error.
pub fn parse_family_reply(msg: &NlMsg<'_>) -> Result<Option<u16>, NlCodecError> {
    if msg.msg_type != ctrl::GENL_ID_CTRL {
        return Ok(None);
    }
    let (cmd, attrs) = msg.genl_attrs()?;
    if cmd != ctrl::CMD_NEWFAMILY {
        return Ok(None);
    }
    let mut id = None;
    let mut ours = false;
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            ctrl::ATTR_FAMILY_ID => id = Some(get_u16(v, "CTRL_ATTR_FAMILY_ID")?),
            ctrl::ATTR_FAMILY_NAME => {
                let len = v.iter().position(|c| *c == 0).unwrap_or(v.len());
                ours = v.get(..len) == Some(PFNL_FAMILY_NAME.as_bytes());
            }
            _ => {}
        }
    }
    if !ours {
        return Ok(None);
    }
    match id {
        None => Err(NlCodecError::Missing("CTRL_ATTR_FAMILY_ID")),
        Some(id) if id <= ctrl::GENL_ID_CTRL => {
            Err(invalid("CTRL_ATTR_FAMILY_ID", format!("{id:#x} is not a family id")))
        }
        Some(id) => Ok(Some(id)),
    }
}

// ---------------------------------------------------------------------------------------------
// KILLSTATES / CLRSTATES.

/// A nested `pf_rule_addr` as the kernel's `rule_addr_parser` reads it: the address wrap
/// (address, mask, type ADDRMASK), both port bounds, negation and operator.
fn put_rule_addr(b: &mut MsgBuilder, kind: u16, r: &RuleAddr) {
    let outer = b.nest_begin(kind);
    let wrap = b.nest_begin(rat::ADDR);
    b.attr(at::ADDR, &r.addr);
    b.attr(at::MASK, &r.mask);
    b.attr_u8(at::TYPE, PF_ADDR_ADDRMASK);
    b.nest_end(wrap);
    b.attr_be16(rat::SRC_PORT, r.port[0]);
    b.attr_be16(rat::DST_PORT, r.port[1]);
    b.attr_u8(rat::NEG, u8::from(r.neg));
    b.attr_u8(rat::OP, r.port_op);
    b.nest_end(outer);
}

/// Parse a nested `pf_rule_addr` into `r` (fields absent from the nest keep their value, as
/// in the kernel, which parses into the same struct).
fn parse_rule_addr(r: &mut RuleAddr, v: &[u8]) -> Result<(), NlCodecError> {
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        match kind {
            rat::ADDR => parse_addr_wrap(r, v)?,
            rat::SRC_PORT => r.port[0] = get_be16(v, "PF_RAT_SRC_PORT")?,
            rat::DST_PORT => r.port[1] = get_be16(v, "PF_RAT_DST_PORT")?,
            rat::NEG => r.neg = flag(v, "PF_RAT_NEG")?,
            rat::OP => r.port_op = get_u8(v, "PF_RAT_OP")?,
            _ => {}
        }
    }
    Ok(())
}

/// Parse a nested `pf_addr_wrap`. Only `PF_ADDR_ADDRMASK` is representable in a
/// [`RuleAddr`]; an interface or table address is refused.
fn parse_addr_wrap(r: &mut RuleAddr, v: &[u8]) -> Result<(), NlCodecError> {
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        match kind {
            at::ADDR => r.addr = bytes16(v, "PF_AT_ADDR")?,
            at::MASK => r.mask = bytes16(v, "PF_AT_MASK")?,
            at::TYPE => {
                let t = get_u8(v, "PF_AT_TYPE")?;
                if t != PF_ADDR_ADDRMASK {
                    return Err(invalid("PF_AT_TYPE", format!("{t}: only ADDRMASK (0) is used")));
                }
            }
            at::IFNAME => return Err(invalid("PF_AT_IFNAME", "interface addresses are not used")),
            at::TABLENAME => return Err(invalid("PF_AT_TABLENAME", "tables are not used")),
            at::IFLAGS => {
                get_u8(v, "PF_AT_IFLAGS")?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// A KILLSTATES or CLRSTATES request (`cmd`), `NLM_F_REQUEST | NLM_F_ACK`, carrying every
/// field of `k` that is set (non-zero, non-empty, true; a rule address that differs from
/// [`RuleAddr::default`]). Absent attributes are zero to the kernel, so nothing is lost.
///
/// Nothing is refused here: an empty `PfKill` becomes an attribute-less request, which the
/// kernel treats as "every state". The safety checks live with the caller.
pub fn kill_request(b: &mut MsgBuilder, family: u16, seq: u32, cmd: u8, k: &PfKill) {
    let m = begin_genl(b, family, NLM_F_REQUEST | NLM_F_ACK, seq, cmd);
    if k.id != 0 {
        b.attr_u64(cs::CMP_ID, k.id);
    }
    if k.creatorid != 0 {
        b.attr_u32(cs::CMP_CREATORID, k.creatorid);
    }
    if k.direction != 0 {
        b.attr_u8(cs::CMP_DIR, k.direction);
    }
    if k.af != 0 {
        b.attr_u8(cs::AF, k.af);
    }
    if k.proto != 0 {
        b.attr_u8(cs::PROTO, k.proto);
    }
    for (kind, r) in [(cs::SRC, &k.src), (cs::DST, &k.dst), (cs::RT_ADDR, &k.rt_addr)] {
        if *r != RuleAddr::default() {
            put_rule_addr(b, kind, r);
        }
    }
    if !k.ifname.is_empty() {
        b.attr_str(cs::IFNAME, &k.ifname);
    }
    if !k.label.is_empty() {
        b.attr_str(cs::LABEL, &k.label);
    }
    if k.kill_match {
        b.attr_u8(cs::KILL_MATCH, 1);
    }
    if k.nat {
        b.attr_u8(cs::NAT, 1);
    }
    b.end(m);
}

/// The kernel's view of a KILLSTATES / CLRSTATES request (for the model): the cmd and the
/// `pf_kstate_kill` that `nla_p_clear_states` fills. Missing attributes are zero; a payload
/// of the wrong width, an over-long string or an address type other than ADDRMASK is an
/// error. Any other cmd is [`NlCodecError::Unexpected`].
pub fn parse_kill_request(msg: &NlMsg<'_>) -> Result<(u8, PfKill), NlCodecError> {
    const EXPECTED: &str = "a pf KILLSTATES/CLRSTATES request";
    let (cmd, attrs) = genl(msg, EXPECTED)?;
    if cmd != cmd::KILLSTATES && cmd != cmd::CLRSTATES {
        return Err(unexpected_cmd(EXPECTED, msg, cmd));
    }
    let mut k = PfKill::default();
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            cs::CMP_ID => k.id = get_u64(v, "PF_CS_CMP_ID")?,
            cs::CMP_CREATORID => k.creatorid = get_u32(v, "PF_CS_CMP_CREATORID")?,
            cs::CMP_DIR => k.direction = get_u8(v, "PF_CS_CMP_DIR")?,
            cs::AF => k.af = get_u8(v, "PF_CS_AF")?,
            cs::PROTO => k.proto = get_u8(v, "PF_CS_PROTO")?,
            cs::SRC => parse_rule_addr(&mut k.src, v)?,
            cs::DST => parse_rule_addr(&mut k.dst, v)?,
            cs::RT_ADDR => parse_rule_addr(&mut k.rt_addr, v)?,
            cs::IFNAME => k.ifname = chara(v, IFNAMSIZ, "PF_CS_IFNAME")?,
            cs::LABEL => k.label = chara(v, PF_RULE_LABEL_SIZE, "PF_CS_LABEL")?,
            cs::KILL_MATCH => k.kill_match = flag(v, "PF_CS_KILL_MATCH")?,
            cs::NAT => k.nat = flag(v, "PF_CS_NAT")?,
            _ => {}
        }
    }
    Ok((cmd, k))
}

/// The kernel's reply to a kill or clear (for the model): the request's family id and cmd,
/// carrying `PF_CS_KILLED`.
pub fn kill_reply(b: &mut MsgBuilder, family: u16, seq: u32, cmd: u8, killed: u32) {
    let m = begin_genl(b, family, 0, seq, cmd);
    b.attr_u32(cs::KILLED, killed);
    b.end(m);
}

/// `Some(killed)` for a KILLSTATES / CLRSTATES reply carrying `PF_CS_KILLED`; `None` for
/// control messages (the ACK, an error: read those with [`NlMsg::error`]), other commands and
/// replies without the count. The caller matches `seq` and the family id.
pub fn parse_kill_reply(msg: &NlMsg<'_>) -> Result<Option<u32>, NlCodecError> {
    if msg.msg_type < NLMSG_MIN_TYPE {
        return Ok(None);
    }
    let (cmd, attrs) = msg.genl_attrs()?;
    if cmd != cmd::KILLSTATES && cmd != cmd::CLRSTATES {
        return Ok(None);
    }
    let mut killed = None;
    for a in attrs {
        let (kind, v) = a?;
        if kind == cs::KILLED {
            killed = Some(get_u32(v, "PF_CS_KILLED")?);
        }
    }
    Ok(killed)
}

// ---------------------------------------------------------------------------------------------
// GETRULES: the active filter ruleset's ticket.

/// `enum pf_getrules_type_t` (`pf_nl.h`).
pub mod gr {
    /// string: the anchor path ("" is the main ruleset).
    pub const ANCHOR: u16 = 1;
    /// u8: a rule action choosing the ruleset (`pf_get_ruleset_number`: `PF_PASS` = 0 is
    /// the filter ruleset).
    pub const ACTION: u16 = 2;
    /// u32 (reply): rules in the ruleset (`tail->nr + 1`).
    pub const NR: u16 = 3;
    /// u32 (reply): the ruleset's active ticket.
    pub const TICKET: u16 = 4;
}

/// `PF_PASS`: the action whose ruleset is the filter ruleset.
pub const PF_PASS: u8 = 0;

/// `MAXPATHLEN`: an anchor path's buffer in `struct pfioc_rule`.
pub const MAXPATHLEN: usize = 1024;

/// A GETRULES request for the main filter ruleset (anchor "", action `PF_PASS`), as
/// libpfctl's `pfctl_get_rules_info` sends it, with `NLM_F_ACK`.
pub fn getrules_request(b: &mut MsgBuilder, family: u16, seq: u32) {
    let m = begin_genl(b, family, NLM_F_REQUEST | NLM_F_ACK, seq, cmd::GETRULES);
    b.attr_str(gr::ANCHOR, "");
    b.attr_u8(gr::ACTION, PF_PASS);
    b.end(m);
}

/// The kernel's view of a GETRULES request (for the model): the anchor path and the action
/// (`nla_p_getrules`; both optional, zero when absent).
pub fn parse_getrules_request(msg: &NlMsg<'_>) -> Result<(String, u8), NlCodecError> {
    const EXPECTED: &str = "a pf GETRULES request";
    let (cmd, attrs) = genl(msg, EXPECTED)?;
    if cmd != cmd::GETRULES {
        return Err(unexpected_cmd(EXPECTED, msg, cmd));
    }
    let (mut anchor, mut action) = (String::new(), 0);
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            gr::ANCHOR => anchor = chara(v, MAXPATHLEN, "PF_GR_ANCHOR")?,
            gr::ACTION => action = get_u8(v, "PF_GR_ACTION")?,
            _ => {}
        }
    }
    Ok((anchor, action))
}

/// The kernel's reply to GETRULES (for the model): `PF_GR_NR` then `PF_GR_TICKET`.
pub fn getrules_reply(b: &mut MsgBuilder, family: u16, seq: u32, nr: u32, ticket: u32) {
    let m = begin_genl(b, family, 0, seq, cmd::GETRULES);
    b.attr_u32(gr::NR, nr);
    b.attr_u32(gr::TICKET, ticket);
    b.end(m);
}

/// `Some((nr, ticket))` for a GETRULES reply carrying both; `None` for control messages
/// and other commands. A GETRULES reply without its ticket is an error, never a ticket of 0.
pub fn parse_getrules_reply(msg: &NlMsg<'_>) -> Result<Option<(u32, u32)>, NlCodecError> {
    if msg.msg_type < NLMSG_MIN_TYPE {
        return Ok(None);
    }
    let (cmd, attrs) = msg.genl_attrs()?;
    if cmd != cmd::GETRULES {
        return Ok(None);
    }
    let (mut nr, mut ticket) = (None, None);
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            gr::NR => nr = Some(get_u32(v, "PF_GR_NR")?),
            gr::TICKET => ticket = Some(get_u32(v, "PF_GR_TICKET")?),
            _ => {}
        }
    }
    match (nr, ticket) {
        (Some(n), Some(t)) => Ok(Some((n, t))),
        (_, None) => Err(NlCodecError::Missing("PF_GR_TICKET")),
        (None, _) => Err(NlCodecError::Missing("PF_GR_NR")),
    }
}

// ---------------------------------------------------------------------------------------------
// GETSTATES.

/// The kernel-side filter of a GETSTATES dump (`nla_p_state`, pf-kernel.md §4.2). Every
/// field narrows the dump; the default lists every state. The kernel keeps a state when all
/// of these hold:
///
/// * `ifname`: equals the state's interface (`s->kif`, "all" for floating states; **not**
///   `orig_ifname`). `None` and `Some("")` both mean any interface.
/// * `af`: equals the wire key's family (0 = any).
/// * `proto`: equals the wire key's protocol (0 = any).
/// * `addr` (address, prefix length): **any** of the state's four key addresses (wire and
///   stack, both ends) matches the address under the mask. An address filter implies its
///   family: the request then carries `PF_ST_AF` = the address's family, whatever `af` says,
///   because the kernel compares the 16 mask bytes against states of any family otherwise
///   (an IPv4 prefix would match IPv6 states whose first 4 bytes agree).
///
/// The kernel cannot filter by id or creator here (an id turns the dump into a single-state
/// get). Treat the result as a superset where it matters and check each state again in
/// userland with [`StateFilter::matches`], which reproduces the kernel's test.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFilter {
    pub ifname: Option<String>,
    pub af: u8,
    pub proto: u8,
    /// Address and prefix length (clamped to 32 / 128).
    pub addr: Option<(IpAddr, u8)>,
}

impl StateFilter {
    /// The family the request carries: the address's when there is one, else `af`.
    pub fn wire_af(&self) -> u8 {
        match &self.addr {
            Some((a, _)) => af_of(a),
            None => self.af,
        }
    }

    /// Would the kernel's `handle_dumpstates` keep `s` for the request
    /// [`getstates_request`] builds from this filter?
    pub fn matches(&self, s: &PfState) -> bool {
        if self.ifname.as_deref().is_some_and(|n| !n.is_empty() && n != s.ifname) {
            return false;
        }
        if self.proto != 0 && s.wire.proto != self.proto {
            return false;
        }
        let af = self.wire_af();
        if af != 0 && s.wire.af != af {
            return false;
        }
        let Some((addr, len)) = &self.addr else {
            return true;
        };
        // pf_match_addr(): AF_INET compares the first word only, AF_INET6 all four, any
        // other family nothing.
        let n = match s.wire.af {
            AF_INET => 4,
            AF_INET6 => 16,
            _ => return false,
        };
        let mask = mask_bytes(af_of(addr), *len);
        let want = pf_addr_bytes(addr);
        let hit = |a: &IpAddr| {
            let got = pf_addr_bytes(a);
            (0..n).all(|i| got[i] & mask[i] == want[i] & mask[i])
        };
        [s.wire.addr[0], s.wire.addr[1], s.stack.addr[0], s.stack.addr[1]].iter().any(hit)
    }
}

/// A GETSTATES dump request (`NLM_F_REQUEST | NLM_F_DUMP`) with the filter's set fields:
/// `PF_ST_IFNAME`, `PF_ST_AF` (u8), `PF_ST_PROTO` (u16: the width the kernel parses),
/// `PF_ST_FILTER_ADDR` and `PF_ST_FILTER_MASK` (16 bytes each).
///
/// `PF_ST_PROTO` is also sent, after `PF_ST_AF`, whenever a family is: an early `pf_nl.c`
/// stored `PF_ST_AF` into the `proto` field, so a family alone would have filtered by
/// protocol number 2 or 28 there; the explicit protocol overwrites it (the dump is then a
/// superset, which [`StateFilter::matches`] narrows).
pub fn getstates_request(b: &mut MsgBuilder, family: u16, seq: u32, f: &StateFilter) {
    let m = begin_genl(b, family, NLM_F_REQUEST | NLM_F_DUMP, seq, cmd::GETSTATES);
    if let Some(name) = f.ifname.as_deref().filter(|n| !n.is_empty()) {
        b.attr_str(st::IFNAME, name);
    }
    let af = f.wire_af();
    if af != 0 {
        b.attr_u8(st::AF, af);
    }
    if af != 0 || f.proto != 0 {
        b.attr_u16(st::PROTO, u16::from(f.proto));
    }
    if let Some((addr, len)) = &f.addr {
        b.attr(st::FILTER_ADDR, &pf_addr_bytes(addr));
        b.attr(st::FILTER_MASK, &mask_bytes(af_of(addr), *len));
    }
    b.end(m);
}

/// The kernel's view of a GETSTATES request (for the model). Widths as `nla_p_state` checks
/// them (ID and CREATORID u32, AF u8, PROTO u16, FILTER_ADDR / FILTER_MASK 16 bytes). The
/// filter address is read as IPv4 when `PF_ST_AF` is `AF_INET` and as IPv6 otherwise; a
/// filter the [`StateFilter`] cannot express is an error: a non-zero id (a single-state get)
/// or creator id, a protocol above 255, a mask that is not a prefix.
pub fn parse_getstates_request(msg: &NlMsg<'_>) -> Result<StateFilter, NlCodecError> {
    const EXPECTED: &str = "a pf GETSTATES request";
    let (cmd, attrs) = genl(msg, EXPECTED)?;
    if cmd != cmd::GETSTATES {
        return Err(unexpected_cmd(EXPECTED, msg, cmd));
    }
    let (mut id, mut creatorid, mut proto) = (0u32, 0u32, 0u16);
    let mut f = StateFilter::default();
    let (mut addr, mut mask) = (None, None);
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            st::ID => id = get_u32(v, "PF_ST_ID")?,
            st::CREATORID => creatorid = get_u32(v, "PF_ST_CREATORID")?,
            st::IFNAME => {
                let name = chara(v, IFNAMSIZ, "PF_ST_IFNAME")?;
                f.ifname = (!name.is_empty()).then_some(name);
            }
            st::AF => f.af = get_u8(v, "PF_ST_AF")?,
            st::PROTO => proto = get_u16(v, "PF_ST_PROTO")?,
            st::FILTER_ADDR => addr = Some(bytes16(v, "PF_ST_FILTER_ADDR")?),
            st::FILTER_MASK => mask = Some(bytes16(v, "PF_ST_FILTER_MASK")?),
            _ => {}
        }
    }
    if id != 0 {
        return Err(invalid("PF_ST_ID", "a single-state get, not a filtered dump"));
    }
    if creatorid != 0 {
        return Err(invalid("PF_ST_CREATORID", "creator filters are not expressed"));
    }
    f.proto = u8::try_from(proto)
        .map_err(|_| invalid("PF_ST_PROTO", format!("{proto} is not a protocol number")))?;
    if addr.is_some() || mask.is_some() {
        let (a, m) = (addr.unwrap_or_default(), mask.unwrap_or_default());
        let v4 = f.af == AF_INET;
        let len = prefix_len(&m, v4)?;
        f.addr = Some((addr_from_pf(if v4 { AF_INET } else { AF_INET6 }, &a), len));
    }
    Ok(f)
}

/// A key nest as `dump_state_key` writes it: both addresses (per the key's family), both
/// ports (network order), and the newer kernels' per-key family and protocol.
fn put_key(b: &mut MsgBuilder, kind: u16, k: &PfKey) {
    let n = b.nest_begin(kind);
    put_addr_af(b, stk::ADDR0, &k.addr[0], k.af);
    put_addr_af(b, stk::ADDR1, &k.addr[1], k.af);
    b.attr_be16(stk::PORT0, k.port[0]);
    b.attr_be16(stk::PORT1, k.port[1]);
    b.attr_u8(stk::AF, k.af);
    b.attr_u16(stk::PROTO, u16::from(k.proto));
    b.nest_end(n);
}

/// An all-zero peer nest (`dump_state_peer` without scrub data); [`PfState`] has no peers.
fn put_peer(b: &mut MsgBuilder, kind: u16) {
    let n = b.nest_begin(kind);
    b.attr_u32(stp::SEQLO, 0);
    b.attr_u32(stp::SEQHI, 0);
    b.attr_u32(stp::SEQDIFF, 0);
    b.attr_u16(stp::MAX_WIN, 0);
    b.attr_u16(stp::MSS, 0);
    b.attr_u8(stp::STATE, 0);
    b.attr_u8(stp::WSCALE, 0);
    b.nest_end(n);
}

/// One GETSTATES dump message (`NLM_F_MULTI`), attribute for attribute as the current
/// `pf_nl.c` `dump_state` writes it. Fields [`PfState`] does not hold are written with the
/// values of a plain state (no log, no route-table override, anchors none, empty peers).
/// `PF_ST_RT_ADDR` is written only for a state with a gateway, in the gateway's own width.
pub fn state_message(b: &mut MsgBuilder, family: u16, seq: u32, s: &PfState) {
    let m = begin_genl(b, family, NLM_F_MULTI, seq, cmd::GETSTATES);
    b.attr_u64(st::VERSION, PF_STATE_VERSION);
    put_key(b, st::KEY_WIRE, &s.wire);
    put_key(b, st::KEY_STACK, &s.stack);
    b.attr_u8(st::PROTO, s.wire.proto);
    b.attr_u8(st::AF, s.wire.af);
    b.attr_str(st::IFNAME, &s.ifname);
    b.attr_str(st::ORIG_IFNAME, &s.orig_ifname);
    if let Some(gw) = &s.rt_addr {
        put_ip(b, st::RT_ADDR, gw);
    }
    b.attr_u32(st::CREATION, s.creation);
    b.attr_u32(st::EXPIRE, s.expire);
    b.attr_u8(st::DIRECTION, s.direction.wire());
    b.attr_u8(st::LOG, 0);
    b.attr_u8(st::TIMEOUT, 0);
    b.attr_u16(st::STATE_FLAGS, 0);
    b.attr_u8(st::SYNC_FLAGS, 0);
    b.attr_u64(st::ID, s.id);
    // nlattr_add_u32(htonl(creatorid)): the host-order u32 htonl(raw) has the bytes of the
    // raw value in big-endian order.
    b.attr_be32(st::CREATORID, s.creatorid);
    b.attr_u32(st::RULE, s.rule);
    b.attr_u32(st::ANCHOR, u32::MAX);
    b.attr_u32(st::NAT_RULE, u32::MAX);
    b.attr_u64(st::PACKETS0, s.packets[0]);
    b.attr_u64(st::PACKETS1, s.packets[1]);
    b.attr_u64(st::BYTES0, s.bytes[0]);
    b.attr_u64(st::BYTES1, s.bytes[1]);
    b.attr_u32(st::RTABLEID, u32::MAX); // -1: no rtable override
    b.attr_u8(st::MIN_TTL, 0);
    b.attr_u16(st::MAX_MSS, 0);
    b.attr_u16(st::DNPIPE, 0);
    b.attr_u16(st::DNRPIPE, 0);
    b.attr_u8(st::RT, 0);
    b.attr_u8(st::SRC_NODE_FLAGS, 0);
    b.attr_u8(st::RT_AF, s.rt_addr.as_ref().map_or(0, af_of));
    put_peer(b, st::PEER_SRC);
    put_peer(b, st::PEER_DST);
    b.end(m);
}

/// A key nest's raw parts, resolved once the state's family is known.
#[derive(Default)]
struct RawKey<'a> {
    addr: [Option<&'a [u8]>; 2],
    port: [Option<u16>; 2],
    af: Option<u8>,
    proto: Option<u16>,
}

fn raw_key<'a>(v: &'a [u8], what: &'static str) -> Result<RawKey<'a>, NlCodecError> {
    let mut k = RawKey::default();
    for a in Attrs::new(v) {
        let (kind, v) = a?;
        match kind {
            stk::ADDR0 => k.addr[0] = Some(v),
            stk::ADDR1 => k.addr[1] = Some(v),
            stk::PORT0 => k.port[0] = Some(get_be16(v, what)?),
            stk::PORT1 => k.port[1] = Some(get_be16(v, what)?),
            stk::AF => k.af = Some(get_u8(v, what)?),
            stk::PROTO => k.proto = Some(get_u16(v, what)?),
            _ => {}
        }
    }
    Ok(k)
}

fn resolve_key(
    k: &RawKey<'_>,
    af: u8,
    proto: u8,
    what: &'static str,
) -> Result<PfKey, NlCodecError> {
    let af = k.af.unwrap_or(af);
    let proto = match k.proto {
        Some(p) => u8::try_from(p).map_err(|_| invalid(what, format!("protocol {p}")))?,
        None => proto,
    };
    let addr = |i: usize| -> Result<IpAddr, NlCodecError> {
        let v = k.addr[i].ok_or(NlCodecError::Missing(what))?;
        ip_of_af(v, af, what)
    };
    let port = |i: usize| k.port[i].ok_or(NlCodecError::Missing(what));
    Ok(PfKey { af, proto, addr: [addr(0)?, addr(1)?], port: [port(0)?, port(1)?] })
}

/// One state from a GETSTATES dump message. Strict: `PF_ST_ID`, `PF_ST_CREATORID`,
/// `PF_ST_IFNAME`, both keys (each with both addresses and both ports), `PF_ST_AF`,
/// `PF_ST_PROTO` and `PF_ST_DIRECTION` are required; the family must be `AF_INET` or
/// `AF_INET6` and the key addresses 4 or 16 bytes accordingly; the direction in or out.
/// Optional: `PF_ST_ORIG_IFNAME` (empty when absent), `PF_ST_RT_ADDR` (see the module
/// documentation), `PF_ST_RULE` (`u32::MAX` when absent), the counters and times (0).
/// The creator id is swapped back to its raw value.
pub fn parse_state(msg: &NlMsg<'_>) -> Result<PfState, NlCodecError> {
    const EXPECTED: &str = "a pf GETSTATES dump message";
    let (cmd, attrs) = genl(msg, EXPECTED)?;
    if cmd != cmd::GETSTATES {
        return Err(unexpected_cmd(EXPECTED, msg, cmd));
    }
    let (mut id, mut creatorid, mut ifname, mut orig_ifname) = (None, None, None, None);
    let (mut wire, mut stack, mut af, mut proto, mut direction) = (None, None, None, None, None);
    let mut rt_addr = None;
    let mut rule = u32::MAX;
    let (mut packets, mut bytes, mut creation, mut expire) = ([0u64; 2], [0u64; 2], 0, 0);
    for a in attrs {
        let (kind, v) = a?;
        match kind {
            st::ID => id = Some(get_u64(v, "PF_ST_ID")?),
            st::CREATORID => creatorid = Some(get_be32(v, "PF_ST_CREATORID")?),
            st::IFNAME => ifname = Some(chara(v, IFNAMSIZ, "PF_ST_IFNAME")?),
            st::ORIG_IFNAME => orig_ifname = Some(chara(v, IFNAMSIZ, "PF_ST_ORIG_IFNAME")?),
            st::KEY_WIRE => wire = Some(raw_key(v, "PF_ST_KEY_WIRE")?),
            st::KEY_STACK => stack = Some(raw_key(v, "PF_ST_KEY_STACK")?),
            st::AF => af = Some(get_u8(v, "PF_ST_AF")?),
            st::PROTO => proto = Some(get_u8(v, "PF_ST_PROTO")?),
            st::DIRECTION => direction = Some(get_u8(v, "PF_ST_DIRECTION")?),
            st::RT_ADDR => {
                let af = match v.len() {
                    4 => AF_INET,
                    16 => AF_INET6,
                    n => {
                        return Err(invalid(
                            "PF_ST_RT_ADDR",
                            format!("{n} bytes, expected 4 or 16"),
                        ));
                    }
                };
                rt_addr = Some(ip_of_af(v, af, "PF_ST_RT_ADDR")?);
            }
            st::RULE => rule = get_u32(v, "PF_ST_RULE")?,
            st::CREATION => creation = get_u32(v, "PF_ST_CREATION")?,
            st::EXPIRE => expire = get_u32(v, "PF_ST_EXPIRE")?,
            st::PACKETS0 => packets[0] = get_u64(v, "PF_ST_PACKETS0")?,
            st::PACKETS1 => packets[1] = get_u64(v, "PF_ST_PACKETS1")?,
            st::BYTES0 => bytes[0] = get_u64(v, "PF_ST_BYTES0")?,
            st::BYTES1 => bytes[1] = get_u64(v, "PF_ST_BYTES1")?,
            _ => {}
        }
    }
    let af = af.ok_or(NlCodecError::Missing("PF_ST_AF"))?;
    if af != AF_INET && af != AF_INET6 {
        return Err(invalid("PF_ST_AF", format!("{af} is neither AF_INET nor AF_INET6")));
    }
    let proto = proto.ok_or(NlCodecError::Missing("PF_ST_PROTO"))?;
    let wire = wire.ok_or(NlCodecError::Missing("PF_ST_KEY_WIRE"))?;
    let stack = stack.ok_or(NlCodecError::Missing("PF_ST_KEY_STACK"))?;
    let wire = resolve_key(&wire, af, proto, "PF_ST_KEY_WIRE")?;
    if wire.af != af || wire.proto != proto {
        return Err(invalid("PF_ST_KEY_WIRE", "family or protocol differs from the state's"));
    }
    let stack = resolve_key(&stack, af, proto, "PF_ST_KEY_STACK")?;
    let dir = direction.ok_or(NlCodecError::Missing("PF_ST_DIRECTION"))?;
    let direction = Direction::from_wire(dir)
        .ok_or_else(|| invalid("PF_ST_DIRECTION", format!("{dir} is neither in nor out")))?;
    Ok(PfState {
        id: id.ok_or(NlCodecError::Missing("PF_ST_ID"))?,
        creatorid: creatorid.ok_or(NlCodecError::Missing("PF_ST_CREATORID"))?,
        direction,
        ifname: ifname.ok_or(NlCodecError::Missing("PF_ST_IFNAME"))?,
        orig_ifname: orig_ifname.unwrap_or_default(),
        wire,
        stack,
        rt_addr: rt_addr.filter(|a: &IpAddr| !a.is_unspecified()),
        rule,
        packets,
        bytes,
        creation,
        expire,
    })
}
