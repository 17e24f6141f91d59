//! What the kernel sends the conntrack backend: a received buffer of netlink messages,
//! walked as a dump walks it (`NlMsgs`, `NLMSG_ERROR`, `nfgenmsg`), every message's
//! attributes decoded as a dumped entry (`ct::parse_entry`) and as a stats reply. Nothing may
//! panic. Whatever decodes must encode again (tuples with the crate's own tuple encoder, the
//! rest as the kernel sends it) to a message that decodes to the same entry; its record must
//! carry the same facts; and a selector made of the entry's own fields must match it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_conntrack::codec::{Attrs, MsgBuilder, NLM_F_MULTI, NLMSG_ERROR, NlMsgs};
use statecull_conntrack::ct::{self, CtEntry};
use statecull_conntrack::{matcher, to_record};
use statecull_proto::{
    L4, MarkMatch, PortRange, Prefix, Selector, StateDetail, StateHandle, StateKey,
};

fuzz_target!(|data: &[u8]| {
    for msg in NlMsgs::new(data) {
        let Ok(msg) = msg else { break };
        if msg.msg_type == NLMSG_ERROR {
            let _ = msg.error();
            continue;
        }
        let Ok((_family, attrs)) = msg.nf_attrs() else { continue };
        let _ = ct::parse_stats(attrs.clone());
        if let Ok(e) = ct::parse_entry(attrs) {
            check(&e);
        }
    }
    // The same bytes as the attributes of one message.
    if let Ok(e) = ct::parse_entry(Attrs::new(data)) {
        check(&e);
    }
});

fn check(e: &CtEntry) {
    let again = decode(&encode(e));
    assert_eq!(&again, e, "decode(encode(entry)) differs");

    let record = to_record(e.clone());
    assert_eq!(record.key, e.orig);
    assert_eq!(record.expires_in_secs, e.timeout);
    assert_eq!(record.counters, e.counters);
    assert!(matches!(
        record.handle,
        StateHandle::Conntrack { orig, id, zone } if orig == e.orig && id == e.id && zone == e.zone
    ));
    assert!(matches!(
        &record.detail,
        StateDetail::Conntrack { reply, mark, zone, status, tcp_state }
            if *reply == e.reply && *mark == e.mark && *zone == e.zone && *status == e.status
                && *tcp_state == e.tcp_state
    ));

    // The entry's own fields select it, and its own addresses touch it.
    let (sport, dport) = match e.orig.l4 {
        L4::Ports { src, dst } => (Some(PortRange::single(src)), Some(PortRange::single(dst))),
        _ => (None, None),
    };
    let own = Selector {
        family: Some(e.orig.family()),
        proto: Some(e.orig.proto),
        src: Some(Prefix::host(e.orig.src)),
        dst: Some(Prefix::host(e.orig.dst)),
        src_port: sport,
        dst_port: dport,
        mark: Some(MarkMatch { value: e.mark, mask: u32::MAX }),
        nat_addr: Some(e.reply.dst),
        ..Selector::default()
    };
    assert!(matcher::matches(&own, e), "an entry's own fields do not select it");
    for addr in [e.orig.src, e.orig.dst, e.reply.src, e.reply.dst] {
        let p = [Prefix::host(addr)];
        assert!(matcher::touches(&p, e));
        assert!(statecull_proto::listing::touches(&p, &record.addresses()));
    }
}

/// The `CTA_TUPLE_ORIG` attribute value the crate encodes for `key` (it encodes tuples only
/// inside requests, so take it out of a delete request).
fn tuple(key: &StateKey) -> Vec<u8> {
    let mut b = MsgBuilder::new();
    ct::delete_request(&mut b, 1, key, 0, 0);
    let msg = NlMsgs::new(b.as_bytes()).next().expect("one message").expect("a valid message");
    let (_, attrs) = msg.nf_attrs().expect("an nfgenmsg");
    attrs
        .map(|a| a.expect("a valid attribute"))
        .find(|(kind, _)| *kind == ct::CTA_TUPLE_ORIG)
        .expect("the delete request carries the tuple")
        .1
        .to_vec()
}

/// The entry as the kernel would dump it.
fn encode(e: &CtEntry) -> Vec<u8> {
    let mut b = MsgBuilder::new();
    let m = b.begin(
        ct::msg_type(ct::IPCTNL_MSG_CT_NEW),
        NLM_F_MULTI,
        1,
        ct::nfproto(e.orig.family()),
        ct::NFNETLINK_V0,
    );
    b.attr(ct::CTA_TUPLE_ORIG, &tuple(&e.orig));
    b.attr(ct::CTA_TUPLE_REPLY, &tuple(&e.reply));
    b.attr_be32(ct::CTA_STATUS, e.status);
    if let Some(t) = e.timeout {
        b.attr_be32(ct::CTA_TIMEOUT, t);
    }
    b.attr_be32(ct::CTA_MARK, e.mark);
    if let Some(c) = e.counters {
        for (kind, packets, bytes) in [
            (ct::CTA_COUNTERS_ORIG, c.orig_packets, c.orig_bytes),
            (ct::CTA_COUNTERS_REPLY, c.reply_packets, c.reply_bytes),
        ] {
            let n = b.nest_begin(kind);
            b.attr(ct::CTA_COUNTERS_PACKETS, &packets.to_be_bytes());
            b.attr(ct::CTA_COUNTERS_BYTES, &bytes.to_be_bytes());
            b.nest_end(n);
        }
    }
    b.attr_be32(ct::CTA_ID, e.id);
    b.attr_be16(ct::CTA_ZONE, e.zone);
    if let Some(s) = e.tcp_state {
        let pi = b.nest_begin(ct::CTA_PROTOINFO);
        let tcp = b.nest_begin(ct::CTA_PROTOINFO_TCP);
        b.attr_u8(ct::CTA_PROTOINFO_TCP_STATE, s);
        b.nest_end(tcp);
        b.nest_end(pi);
    }
    b.end(m);
    b.as_bytes().to_vec()
}

fn decode(buf: &[u8]) -> CtEntry {
    let msg = NlMsgs::new(buf).next().expect("one message").expect("a valid message");
    let (_, attrs) = msg.nf_attrs().expect("an nfgenmsg");
    ct::parse_entry(attrs).expect("an encoded entry decodes")
}
