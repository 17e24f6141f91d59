//! The client against the model through the real request bytes, on every modelled release.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::BTreeSet;

use statecull_pf::client::{PfClient, PfError};
use statecull_pf::device::{PfDevice, errno};
use statecull_pf::model_device::{ModelDevice, Release};
use statecull_pf::nl::StateFilter;
use statecull_pf::table_gen::{ROUTER, Spec, router_table};
use statecull_pf::types::{PfKill, PfState, RuleAddr, af_of};

fn client(release: Release, states: usize) -> PfClient<ModelDevice> {
    let g = router_table(&Spec::new(states, 5)).unwrap();
    PfClient::probe(ModelDevice::new(g.model, release)).unwrap()
}

fn list_all(c: &mut PfClient<ModelDevice>) -> Vec<PfState> {
    let mut out = Vec::new();
    c.list(&StateFilter::default(), &mut |s| {
        out.push(s);
        Ok(())
    })
    .unwrap();
    out
}

fn ids(states: &[PfState]) -> BTreeSet<u64> {
    states.iter().map(|s| s.id).collect()
}

fn gateway1() -> PfKill {
    let gw = ROUTER.gateway[0].0.into();
    PfKill {
        rt_addr: RuleAddr::prefix(&gw, 32),
        af: af_of(&gw),
        kill_match: true,
        ..PfKill::default()
    }
}

#[test]
fn probing_finds_each_releases_interfaces() {
    let t13 = client(Release::FREEBSD_13, 100).transports();
    assert_eq!(
        (t13.nl_family.is_some(), t13.nl_kill, t13.nv_kill, t13.v2_list),
        (false, false, true, true)
    );
    let t14 = client(Release::FREEBSD_14, 100).transports();
    assert_eq!(
        (t14.nl_family.is_some(), t14.nl_kill, t14.nv_kill, t14.v2_list),
        (true, false, true, true)
    );
    let t15 = client(Release::FREEBSD_15, 100).transports();
    assert_eq!(
        (t15.nl_family.is_some(), t15.nl_kill, t15.nv_kill, t15.v2_list),
        (true, true, true, false)
    );
    // The probes (a kill by an id no state has) killed nothing.
    let mut c = client(Release::FREEBSD_15, 100);
    let n = c.device().model().len();
    assert_eq!(n, list_all(&mut c).len());
    let none = Release {
        netlink_list: false,
        netlink_kill: false,
        nv_kill: false,
        v2_list: true,
        netlink_rules: false,
        ioctl_rules: false,
    };
    let g = router_table(&Spec::new(10, 1)).unwrap();
    assert!(matches!(
        PfClient::probe(ModelDevice::new(g.model, none)),
        Err(PfError::Unsupported(_))
    ));
}

#[test]
fn every_release_lists_and_kills_the_same_states() {
    let mut results = Vec::new();
    for release in [Release::FREEBSD_13, Release::FREEBSD_14, Release::FREEBSD_15] {
        let mut c = client(release, 5000);
        let before = list_all(&mut c);
        assert_eq!(before.len(), c.device().model().len(), "{release:?}: the listing is complete");
        let killed = c.kill(&gateway1()).unwrap();
        let after = list_all(&mut c);
        assert_eq!(before.len() - after.len(), killed as usize);
        results.push((ids(&before), ids(&after), killed));
    }
    assert!(results.windows(2).all(|w| w[0] == w[1]), "nvlist and netlink kills agree");
}

#[test]
fn kills_by_id_count_killed_and_gone() {
    let mut c = client(Release::FREEBSD_15, 2000);
    let some: Vec<(u64, u32)> =
        list_all(&mut c).iter().take(300).map(|s| (s.id, s.creatorid)).collect();
    assert_eq!(c.kill_ids(&some).unwrap(), (300, 0));
    assert_eq!(c.kill_ids(&some).unwrap(), (0, 300), "already gone");
    let cost = c.device().model().cost();
    assert_eq!(cost.passes, 1, "the one listing: probes and id kills walk no table");
    // The same over the nvlist ioctl.
    let mut c = client(Release::FREEBSD_13, 2000);
    let some: Vec<(u64, u32)> =
        list_all(&mut c).iter().take(50).map(|s| (s.id, s.creatorid)).collect();
    assert_eq!(c.kill_ids(&some).unwrap(), (50, 0));
}

#[test]
fn a_request_matching_everything_never_leaves_the_client() {
    let mut c = client(Release::FREEBSD_15, 100);
    let n = c.device().model().len();
    assert_eq!(c.kill(&PfKill::default()), Err(PfError::Everything));
    assert_eq!(c.kill(&PfKill { kill_match: true, ..PfKill::default() }), Err(PfError::Everything));
    assert_eq!(c.device().model().len(), n);
}

#[test]
fn a_too_small_reply_buffer_is_enospc_after_the_kill() {
    let g = router_table(&Spec::new(200, 2)).unwrap();
    let mut dev = ModelDevice::new(g.model, Release::FREEBSD_13);
    let k = statecull_pf::nv::kill_request(&gateway1()).pack().unwrap();
    let before = dev.model().len();
    let e = dev.nv_ioctl(statecull_pf::abi::DIOCKILLSTATESNV, &k, 16).unwrap_err();
    assert_eq!(e.0, errno::ENOSPC);
    assert!(dev.model().len() < before, "the kill happened anyway; it must not be retried");
    // Garbage is EBADMSG, a missing key EINVAL (FreeBSD errno values).
    assert_eq!(
        dev.nv_ioctl(statecull_pf::abi::DIOCKILLSTATESNV, b"junk", 1024).unwrap_err().0,
        errno::EBADMSG
    );
    let empty = statecull_pf::nv::Nvlist::new().pack().unwrap();
    assert_eq!(
        dev.nv_ioctl(statecull_pf::abi::DIOCKILLSTATESNV, &empty, 1024).unwrap_err().0,
        errno::EINVAL
    );
}

/// A filter on a NATed client's address with the stack-key flag (`nat`), and the states it
/// means on the wire key (flag ignored) and on the stack key (flag honoured).
fn nat_kill_and_meanings(
    m: &statecull_pf::model::PfModel,
) -> (PfKill, BTreeSet<u64>, BTreeSet<u64>) {
    use statecull_pf::types::Direction;
    let s = m
        .states()
        .find(|s| s.direction == Direction::Out && s.wire != s.stack)
        .expect("a NATed outbound state")
        .clone();
    let client = s.stack.addr[1];
    let k = PfKill {
        src: RuleAddr::prefix(&client, if client.is_ipv4() { 32 } else { 128 }),
        af: af_of(&client),
        nat: true,
        ..PfKill::default()
    };
    let on = |k: &PfKill| m.states().filter(|x| m.kill_matches(k, x)).map(|x| x.id).collect();
    let stack: BTreeSet<u64> = on(&k);
    let wire: BTreeSet<u64> = on(&PfKill { nat: false, ..k.clone() });
    assert!(stack.contains(&s.id) && !wire.contains(&s.id), "the NAT state tells them apart");
    (k, wire, stack)
}

fn killed_by(before: &[PfState], after: &[PfState]) -> BTreeSet<u64> {
    ids(before).difference(&ids(after)).copied().collect()
}

#[test]
fn the_nat_flag_is_read_over_netlink_and_never_over_the_nvlist_ioctl() {
    // DIOCKILLSTATESNV: pf_nvstate_kill_to_kstate_kill never reads "nat"; the same request
    // bytes kill by the wire key.
    let g = router_table(&Spec::new(400, 9)).unwrap();
    let (k, wire, stack) = nat_kill_and_meanings(&g.model);
    let mut dev = ModelDevice::new(g.model.clone(), Release::FREEBSD_14);
    let before: Vec<PfState> = dev.model().states().cloned().collect();
    let req = statecull_pf::nv::kill_request(&k).pack().unwrap();
    dev.nv_ioctl(statecull_pf::abi::DIOCKILLSTATESNV, &req, 1024).unwrap();
    let after: Vec<PfState> = dev.model().states().cloned().collect();
    assert_eq!(killed_by(&before, &after), wire);

    // pf netlink KILLSTATES carries PF_CS_NAT and the kernel honours it: the stack key.
    let mut c = PfClient::probe(ModelDevice::new(g.model.clone(), Release::FREEBSD_15)).unwrap();
    let before = list_all(&mut c);
    assert_eq!(c.kill(&k).unwrap() as usize, stack.len());
    assert_eq!(killed_by(&before, &list_all(&mut c)), stack);

    // The client never sends the flag where the kernel would drop it.
    let mut c = PfClient::probe(ModelDevice::new(g.model, Release::FREEBSD_14)).unwrap();
    let n = c.device().model().len();
    assert!(matches!(c.kill(&k), Err(PfError::Unsupported(_))));
    assert_eq!(c.device().model().len(), n);
}

/// The filter ruleset's ticket through the real GETRULES bytes: read-only, changed by a
/// ruleset commit and by nothing else (kills, listings), on every handle of the kernel, over
/// netlink GETRULES (15) or DIOCGETRULES (13, 14); a kernel with neither says so instead of
/// answering a ticket.
#[test]
fn ruleset_ticket_changes_on_a_commit_and_only_then() {
    let mut c = client(Release::FREEBSD_15, 2_000);
    assert!(c.transports().nl_rules);
    let (rules, t0) = c.ruleset_ticket().unwrap();
    assert!(rules > 0, "the generated table has rules");
    assert_eq!(c.ruleset_ticket().unwrap().1, t0, "reading does not change it");
    let before = list_all(&mut c).len();
    assert!(c.kill(&gateway1()).unwrap() > 0);
    assert!(list_all(&mut c).len() < before);
    assert_eq!(c.ruleset_ticket().unwrap().1, t0, "kills and listings do not change it");
    let mut other = c.another().unwrap();
    let t1 = c.device().model().commit_ruleset();
    assert_ne!(t1, t0);
    assert_eq!(c.ruleset_ticket().unwrap(), (rules, t1));
    assert_eq!(other.ruleset_ticket().unwrap(), (rules, t1), "the same kernel on every handle");

    // 13 and 14 have no netlink GETRULES: DIOCGETRULES answers the same ticket.
    for release in [Release::FREEBSD_13, Release::FREEBSD_14] {
        let mut old = client(release, 100);
        let t = old.transports();
        assert!(!t.nl_rules && t.ioctl_rules, "{release:?}: {t:?}");
        let (rules, t0) = old.ruleset_ticket().unwrap();
        assert!(rules > 0);
        let t1 = old.device().model().commit_ruleset();
        assert_ne!(t1, t0);
        assert_eq!(old.ruleset_ticket().unwrap(), (rules, t1), "{release:?}");
    }
    // A kernel with neither says so instead of answering a ticket.
    let g = router_table(&Spec::new(100, 5)).unwrap();
    let bare = Release { netlink_rules: false, ioctl_rules: false, ..Release::FREEBSD_14 };
    let mut c = PfClient::probe(ModelDevice::new(g.model, bare)).unwrap();
    assert!(matches!(c.ruleset_ticket(), Err(PfError::Unsupported(_))));

    // DIOCGETRULES takes exactly one struct pfioc_rule (its size is in the ioctl number).
    let mut short = vec![0u8; statecull_pf::abi::PFIOC_RULE_LEN - 8];
    let mut d = client(Release::FREEBSD_14, 10);
    assert!(d.device_mut().get_rules(&mut short).is_err());
}
