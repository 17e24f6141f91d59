//! The conntrack backend's kill paths give the same result whichever one runs.
//!
//! The fallbacks (dump + batched delete) are what older kernels get; here they are forced on
//! this kernel and compared with the in-kernel flushes. Root only.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use statecull_conntrack::fill::{TableSpec, WAN1};
use statecull_conntrack::{Conntrack, KernelFeatures};
use statecull_proto::{KillPath, MarkMatch, Selector};
use statecull_tests::{Netns, skip_unless_root};

fn fresh(tag: &str, spec: &TableSpec) -> Netns {
    statecull_tests::remove_stale_namespaces();
    let ns = Netns::create(tag).expect("namespace");
    ns.fill(spec).expect("fill");
    ns
}

fn checked(s: Selector) -> statecull_proto::CheckedSelector {
    s.check().expect("valid selector")
}

#[test]
fn every_path_kills_the_same_states() {
    if skip_unless_root("every_path_kills_the_same_states") {
        return;
    }
    let spec = TableSpec::two_wans(10_000);
    let wan1_v4 = spec.count_where(|i| spec.wan_of(i) == 0 && !spec.is_ipv6(i));
    let nat1 = checked(Selector { nat_addr: Some(WAN1.nat_v4.into()), ..Selector::default() });
    let cases = [
        (KernelFeatures::ALL, KillPath::KernelFilteredFlush),
        (KernelFeatures::MARK_ONLY, KillPath::DumpAndDelete),
        (KernelFeatures::NONE, KillPath::DumpAndDelete),
    ];
    for (features, path) in cases {
        let ns = fresh("paths", &spec);
        let report = ns
            .enter(|| {
                let ct = Conntrack::with_features(features);
                let r = ct.kill_matching(std::slice::from_ref(&nat1), &[]).expect("kill");
                (r, ct.table_entries().expect("entries"))
            })
            .expect("enter");
        let (r, left) = report;
        assert_eq!(r.path, path, "{features:?}");
        assert_eq!(r.killed, wan1_v4, "{features:?}: {r:?}");
        assert_eq!(left, spec.entries - wan1_v4);
        // The dump path confirms each delete; the flush path can only compare table sizes.
        assert_eq!(r.exact, path == KillPath::DumpAndDelete);
    }
}

#[test]
fn many_selectors_cost_one_pass_not_many() {
    if skip_unless_root("many_selectors_cost_one_pass_not_many") {
        return;
    }
    let spec = TableSpec::two_wans(10_000);
    let ns = fresh("multi", &spec);
    let (two, four, left) = ns
        .enter(|| {
            let ct = Conntrack::open().expect("open");
            let sel = |v: u32, proto: u8| {
                checked(Selector {
                    mark: Some(MarkMatch { value: v, mask: 0xff }),
                    proto: Some(proto),
                    family: Some(statecull_proto::AddressFamily::Ipv4),
                    ..Selector::default()
                })
            };
            // Two complete selectors: two kernel passes are still cheaper than a dump.
            let two = ct.kill_matching(&[sel(1, 6), sel(1, 17)], &[]).expect("two");
            // More than MAX_KERNEL_FLUSHES: one dump, deletes by handle.
            let many: Vec<_> = [6u8, 17]
                .into_iter()
                .chain(40..)
                .take(statecull_conntrack::MAX_KERNEL_FLUSHES + 1)
                .map(|p| sel(2, p))
                .collect();
            let four = ct.kill_matching(&many, &[]).expect("many");
            (two, four, ct.table_entries().expect("entries"))
        })
        .expect("enter");
    assert_eq!(two.path, KillPath::KernelFilteredFlush);
    assert_eq!(two.table_passes, 2);
    assert_eq!(two.killed, spec.count_where(|i| spec.wan_of(i) == 0 && !spec.is_ipv6(i)));
    assert_eq!(four.path, KillPath::DumpAndDelete);
    assert_eq!(four.table_passes, 1);
    assert_eq!(four.killed, spec.count_where(|i| spec.wan_of(i) == 1 && !spec.is_ipv6(i)));
    assert_eq!(left, spec.count_where(|i| spec.is_ipv6(i)));
}

/// Linux 6.18 accepts IPv6 `CTA_FILTER` address filters but inverts the comparison, so a
/// flush "by NAT address" would kill every *other* gateway's IPv6 states. The backend probes
/// address matching on live entries and must kill exactly the right IPv6 states whatever
/// the kernel does.
#[test]
fn ipv6_nat_kills_are_exact_whatever_the_kernel_filter_does() {
    if skip_unless_root("ipv6_nat_kills_are_exact_whatever_the_kernel_filter_does") {
        return;
    }
    let spec = TableSpec { marked: false, ..TableSpec::two_wans(10_000) };
    let ns = fresh("nat6", &spec);
    let nat6 = checked(Selector { nat_addr: Some(WAN1.nat_v6.into()), ..Selector::default() });
    let (r, left, features) = ns
        .enter(|| {
            let ct = Conntrack::open().expect("open");
            let r = ct.kill_matching(std::slice::from_ref(&nat6), &[]).expect("kill");
            let mut left = Vec::new();
            ct.snapshot(None, 4096, &mut |b| {
                left.extend(b);
                Ok(())
            })
            .expect("snapshot");
            (r, left, ct.features())
        })
        .expect("enter");
    let wan1_v6 = spec.count_where(|i| spec.wan_of(i) == 0 && spec.is_ipv6(i));
    eprintln!("IPv6 tuple filter trusted: {}; path {}", features.tuple_v6, r.path);
    assert_eq!(r.killed, wan1_v6, "{r:?}");
    assert_eq!(left.len() as u64, spec.entries - wan1_v6);
    assert!(left.iter().all(|e| e.reply_dst() != std::net::IpAddr::V6(WAN1.nat_v6)));
    if !features.tuple_v6 {
        assert_eq!(r.path, KillPath::DumpAndDelete);
    }
}

/// A conntrack DESTROY listener (conntrackd) can hold killed entries in the table count until
/// it reads their events; the kernel-flush count must notice the listener and wait for the
/// count to settle, and say so.
#[test]
fn kernel_flush_counts_wait_for_destroy_listeners() {
    if skip_unless_root("kernel_flush_counts_wait_for_destroy_listeners") {
        return;
    }
    let spec = TableSpec::two_wans(5_000);
    let wan1 = spec.count_where(|i| spec.wan_of(i) == 0);
    let ns = fresh("listener", &spec);
    let r = ns
        .enter(|| {
            let mut listener = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)
                .expect("listener socket");
            listener.bind_auto().expect("bind");
            // NFNLGRP_CONNTRACK_DESTROY
            listener.add_membership(3).expect("join the destroy group");
            let ct = Conntrack::open().expect("open");
            let mark1 = checked(Selector {
                mark: Some(MarkMatch { value: 1, mask: 0xff }),
                ..Selector::default()
            });
            let r = ct.kill_matching(&[mark1], &[]).expect("kill");
            drop(listener);
            r
        })
        .expect("enter");
    assert_eq!(r.path, KillPath::KernelFilteredFlush);
    assert_eq!(r.killed, wan1, "{r:?}");
    let note = r.note.unwrap_or_default();
    assert!(note.contains("event listener"), "the report says the count waited: {note:?}");
}
