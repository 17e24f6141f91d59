//! `plan` against the model of pf's kill semantics (pf-kernel.md §2.3, §2.4, §10.4): a
//! listed state matches a selector exactly when the kernel's filter for it would; NAT
//! addresses; the choice of kill path; twins paired from a listing as `kill_match` pairs
//! them; and the records a listing turns into.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use statecull_pf::model::PfModel;
use statecull_pf::plan::{self, Path, PlanError, TableShape};
use statecull_pf::table_gen::{Generated, Kind, ROUTER, Spec, router_table};
use statecull_pf::types::{AF_INET, AF_INET6, Direction, PfKey, PfKill, PfState, af_of, port_op};
use statecull_proto::{
    AddressFamily, CheckedSelector, Counters, IfName, L4, Label, PfDirection, PortRange, Prefix,
    Selector, StateDetail, StateHandle, StateKey, ipproto,
};

// ---------------------------------------------------------------------------------------
// Tables and helpers
// ---------------------------------------------------------------------------------------

/// A generated table and its states in listing order.
struct Table {
    g: Generated,
    states: Vec<PfState>,
    /// State id -> index into `states`.
    index: HashMap<u64, usize>,
}

impl Table {
    fn new(spec: &Spec) -> Self {
        let g = router_table(spec).unwrap();
        let states: Vec<PfState> = g.model.states().cloned().collect();
        let index = states.iter().enumerate().map(|(i, s)| (s.id, i)).collect::<HashMap<_, _>>();
        assert_eq!(index.len(), states.len(), "ids are unique in a generated table");
        Self { g, states, index }
    }

    fn model(&self) -> &PfModel {
        &self.g.model
    }

    fn state(&self, id: u64) -> &PfState {
        &self.states[self.index[&id]]
    }
}

/// Small tables with short id-hash rows (many states share a row) and plenty of IPv6 and
/// floating states.
fn tables() -> &'static [Table] {
    static TABLES: OnceLock<Vec<Table>> = OnceLock::new();
    TABLES.get_or_init(|| {
        vec![
            Table::new(&Spec { rows: 64, ipv6_percent: 40, ..Spec::new(2000, 11) }),
            Table::new(&Spec { rows: 16, ..Spec::new(1200, 0xfeed) }),
            Table::new(&Spec {
                rows: 256,
                ipv6_percent: 60,
                floating_percent: 80,
                ..Spec::new(2500, 3)
            }),
        ]
    })
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn checked(sel: Selector) -> CheckedSelector {
    sel.check().unwrap_or_else(|e| panic!("selector {sel} should be valid: {e}"))
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// (IPv4, IPv6) pair as the address of `family`.
fn of_family(pair: (Ipv4Addr, Ipv6Addr), af: u8) -> IpAddr {
    if af == AF_INET6 { v6(pair.1) } else { v4(pair.0) }
}

fn gw_selector(gw: IpAddr) -> CheckedSelector {
    checked(Selector { gateway: Some(gw), ..Selector::default() })
}

fn ids_of(m: &PfModel) -> HashSet<u64> {
    m.states().map(|s| s.id).collect()
}

/// What the listing path kills: every victim by id, then each victim's paired twin by id.
/// Returns the ids removed and the number of kills that removed a state.
fn kill_listed_by_id(
    m: &mut PfModel,
    states: &[PfState],
    victims: &[usize],
) -> (HashSet<u64>, u32) {
    let before = ids_of(m);
    let twins = plan::pair_twins(states, victims);
    assert_eq!(twins.len(), victims.len());
    let mut killed = 0;
    for (v, t) in victims.iter().zip(&twins) {
        let s = &states[*v];
        killed += m.kill_states(&PfKill::by_id(s.id, s.creatorid));
        if let Some(t) = t {
            let twin = &states[*t];
            killed += m.kill_states(&PfKill::by_id(twin.id, twin.creatorid));
        }
    }
    let after = ids_of(m);
    (before.difference(&after).copied().collect(), killed)
}

/// What the kernel's filtered pass kills.
fn kill_filtered(m: &mut PfModel, k: &PfKill) -> (HashSet<u64>, u32) {
    let before = ids_of(m);
    let killed = m.kill_states(k);
    let after = ids_of(m);
    (before.difference(&after).copied().collect(), killed)
}

/// Both paths on copies of one table, for one expressible label-free selector: they must
/// remove the same states.
fn assert_paths_agree(t: &Table, sel: &CheckedSelector) -> usize {
    let victims: Vec<usize> =
        (0..t.states.len()).filter(|i| plan::matches(sel, &t.states[*i], None)).collect();
    let mut by_ids = t.model().clone();
    let (listed, listed_killed) = kill_listed_by_id(&mut by_ids, &t.states, &victims);
    let k = plan::kill_filter(sel, true).expect("expressible");
    assert!(k.kill_match);
    let mut filtered = t.model().clone();
    let (gone, filtered_killed) = kill_filtered(&mut filtered, &k);
    assert_eq!(listed, gone, "selector {sel}: kills by id plus paired twins vs kill_match pass");
    assert_eq!(listed_killed, filtered_killed, "selector {sel}: kill counts");
    assert_eq!(ids_of(&by_ids), ids_of(&filtered));
    listed.len() - victims.len()
}

// ---------------------------------------------------------------------------------------
// 1. Semantic agreement with the kernel's filter
// ---------------------------------------------------------------------------------------

/// Raw random choices a selector is built from, around one state of a table.
#[derive(Clone, Debug)]
struct Raw {
    table: usize,
    state: Index,
    /// Which fields to set (bit per field).
    fields: u16,
    /// Take values the chosen state may not satisfy.
    noisy: bool,
    /// Prefix-length choices for src and dst.
    lens: [u8; 2],
    /// Port-range widths below/above for src and dst.
    widths: [u16; 4],
    /// Misc picks (address source, interface, gateway, protocol).
    picks: [u8; 4],
    label: Index,
}

fn raw() -> impl Strategy<Value = Raw> {
    (
        0..3usize,
        any::<Index>(),
        any::<u16>(),
        any::<bool>(),
        any::<[u8; 2]>(),
        any::<[u16; 4]>(),
        any::<[u8; 4]>(),
        any::<Index>(),
    )
        .prop_map(|(table, state, fields, noisy, lens, widths, picks, label)| Raw {
            table,
            state,
            fields,
            noisy,
            lens,
            widths,
            picks,
            label,
        })
}

const F_FAMILY: u16 = 1;
const F_PROTO: u16 = 1 << 1;
const F_SRC: u16 = 1 << 2;
const F_DST: u16 = 1 << 3;
const F_SPORT: u16 = 1 << 4;
const F_DPORT: u16 = 1 << 5;
const F_GATEWAY: u16 = 1 << 6;
const F_INTERFACE: u16 = 1 << 7;
const F_SPORT_RANGE: u16 = 1 << 8;
const F_DPORT_RANGE: u16 = 1 << 9;

/// A prefix length: often /0 and host prefixes, otherwise any length.
fn prefix_len(choice: u8, bits: u8) -> u8 {
    match choice % 4 {
        0 => 0,
        1 => bits,
        _ => (choice / 4) % (bits + 1),
    }
}

/// A range around `port`: one end often exactly at it (range bounds are inclusive).
fn port_range(port: u16, range: bool, below: u16, above: u16) -> PortRange {
    let width = |w: u16| if w.is_multiple_of(3) { 0 } else { (w / 3) % 3000 };
    if range {
        PortRange {
            first: port.saturating_sub(width(below)),
            last: port.saturating_add(width(above)),
        }
    } else {
        PortRange::single(port)
    }
}

/// A valid selector from the fields of `s`. When `raw.noisy` is false, `s` itself matches it.
fn build_selector(s: &PfState, raw: &Raw) -> CheckedSelector {
    let f = |bit: u16| raw.fields & bit != 0;
    let (ksrc, ksport, kdst, kdport) = s.kill_endpoints();
    let af = s.wire.af;
    let family = if af == AF_INET6 { AddressFamily::Ipv6 } else { AddressFamily::Ipv4 };
    let bits = family.bits();
    let [p_addr, p_if, p_gw, p_proto] = raw.picks;
    // Addresses of the same family the state names anywhere (wire and stack keys).
    let any_addr = |pick: u8| {
        [s.wire.addr[0], s.wire.addr[1], s.stack.addr[0], s.stack.addr[1], ksrc, kdst]
            [usize::from(pick) % 6]
    };
    let mut sel = Selector::default();
    if f(F_FAMILY) {
        sel.family = Some(family);
    }
    if f(F_PROTO) || f(F_SPORT) || f(F_DPORT) {
        sel.proto = Some(if raw.noisy && p_proto % 3 == 0 {
            if s.wire.proto == ipproto::TCP { ipproto::UDP } else { ipproto::TCP }
        } else {
            s.wire.proto
        });
    }
    if f(F_SRC) {
        let a = if raw.noisy { any_addr(p_addr) } else { ksrc };
        sel.src = Some(Prefix { addr: a, len: prefix_len(raw.lens[0], bits) }.network());
    }
    if f(F_DST) {
        let a = if raw.noisy { any_addr(p_addr / 8) } else { kdst };
        sel.dst = Some(Prefix { addr: a, len: prefix_len(raw.lens[1], bits) }.network());
    }
    if f(F_SPORT) {
        let p = if raw.noisy && p_addr % 5 == 0 { s.stack.port[0] } else { ksport };
        sel.src_port = Some(port_range(p, f(F_SPORT_RANGE), raw.widths[0], raw.widths[1]));
    }
    if f(F_DPORT) {
        let p = if raw.noisy && p_addr % 7 == 0 { s.stack.port[1] } else { kdport };
        sel.dst_port = Some(port_range(p, f(F_DPORT_RANGE), raw.widths[2], raw.widths[3]));
    }
    if f(F_GATEWAY) {
        sel.gateway = match s.rt_addr {
            Some(g) if !raw.noisy || p_gw % 2 == 0 => Some(g),
            // A state without a gateway only matches a selector without one.
            _ if !raw.noisy => None,
            _ => Some(of_family(ROUTER.gateway[usize::from(p_gw / 2) % 2], af)),
        };
    }
    if f(F_INTERFACE) {
        let name = if raw.noisy {
            // Floating states' "all" never matches the kill filter; their original one does.
            [
                s.ifname.as_str(),
                s.orig_ifname.as_str(),
                ROUTER.lan_if,
                ROUTER.wan_if[0],
                ROUTER.wan_if[1],
            ][usize::from(p_if) % 5]
        } else {
            s.kill_ifname()
        };
        sel.interface = Some(IfName(name.to_owned()));
    }
    match sel.check() {
        Ok(c) => c,
        // Nothing narrowing was picked (or only /0 prefixes): add the protocol.
        Err(_) => checked(Selector { proto: Some(s.wire.proto), ..sel }),
    }
}

/// Every label of the generated ruleset, and one no rule has.
fn all_labels(m: &PfModel) -> Vec<String> {
    let mut out: Vec<String> = (0..16).flat_map(|r| m.rule_labels(r).to_vec()).collect();
    out.sort();
    out.dedup();
    out.push("no such label".into());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// `matches` on a listed state says what the kernel's filter for the selector says, for
    /// every state of the table; the listing path (victims and paired twins by id) removes
    /// what one `kill_match` pass removes.
    #[test]
    fn matches_agrees_with_kernel_filter(raw in raw()) {
        let t = &tables()[raw.table];
        let m = t.model();
        let s0 = &t.states[raw.state.index(t.states.len())];
        let sel = build_selector(s0, &raw);
        let k = plan::kill_filter(&sel, false).expect("no NAT address: expressible");
        prop_assert!(!k.is_everything(), "{sel} -> {k:?}");
        prop_assert!(!k.kill_match);
        if !raw.noisy {
            prop_assert!(plan::matches(&sel, s0, None), "{sel} must match the state it came from: {s0:?}");
        }
        let mut hits = 0usize;
        for s in &t.states {
            let ours = plan::matches(&sel, s, None);
            prop_assert_eq!(ours, m.kill_matches(&k, s), "selector {} filter {:?} state {:?}", sel, k, s);
            hits += usize::from(ours);
        }
        prop_assert!(raw.noisy || hits > 0);

        // The same selector with a label: matches with the rule's labels = the kernel.
        let labels = all_labels(m);
        let label = if raw.label.index(3) == 0 {
            labels[raw.label.index(labels.len())].clone()
        } else {
            // Mostly a label of the state's own rule, so that something matches.
            let own = m.rule_labels(s0.rule);
            own[raw.label.index(own.len())].clone()
        };
        let lsel = checked(Selector { label: Some(Label(label)), ..sel.get().clone() });
        let lk = plan::kill_filter(&lsel, false).expect("label selectors are expressible");
        prop_assert!(!lk.is_everything());
        for s in &t.states {
            prop_assert_eq!(
                plan::matches(&lsel, s, Some(m.rule_labels(s.rule))),
                m.kill_matches(&lk, s),
                "selector {} state {:?} labels {:?}", lsel, s, m.rule_labels(s.rule)
            );
            // Without the rule's labels, a label selector never matches.
            prop_assert!(!plan::matches(&lsel, s, None));
        }

        assert_paths_agree(t, &sel);
    }
}

/// The generator makes what the property needs: floating states, both families, gateways.
#[test]
fn tables_have_floating_states_both_families_and_gateways() {
    for t in tables() {
        assert!(t.states.len() <= 3000);
        assert!(t.states.iter().any(|s| s.ifname == "all" && s.orig_ifname != "all"));
        assert!(t.states.iter().any(|s| s.ifname != "all"));
        assert!(t.states.iter().any(|s| s.wire.af == AF_INET6));
        assert!(t.states.iter().any(|s| s.wire.af == AF_INET));
        assert!(t.states.iter().any(|s| s.rt_addr.is_some()));
        assert!(t.g.model.rows() < t.states.len() / 2, "rows are shared");
    }
}

/// Hand-picked cases where a careless translation would differ from the kernel.
#[test]
fn kill_filter_translation_details() {
    let gw = v4(ROUTER.gateway[0].0);
    // Gateway: a /32 route-to address, and the family it implies.
    let k = plan::kill_filter(&gw_selector(gw), true).unwrap();
    assert_eq!(k.af, AF_INET);
    assert_eq!(k.rt_addr.mask[..4], [255; 4]);
    assert_eq!(k.rt_addr.mask[4..], [0; 12]);
    assert_eq!(k.rt_addr.addr[..4], [198, 51, 100, 254]);
    assert!(k.src.is_any() && k.dst.is_any());
    assert!(k.kill_match);
    let k6 = plan::kill_filter(&gw_selector(v6(ROUTER.gateway[0].1)), false).unwrap();
    assert_eq!(k6.af, AF_INET6);
    assert_eq!(k6.rt_addr.mask, [255; 16]);
    assert!(!k6.kill_match);

    // A single port is EQ; a range is the inclusive RRG.
    let sel = checked(Selector {
        proto: Some(ipproto::TCP),
        src_port: Some(PortRange::single(443)),
        dst_port: Some(PortRange { first: 1000, last: 2000 }),
        ..Selector::default()
    });
    let k = plan::kill_filter(&sel, false).unwrap();
    assert_eq!(k.proto, ipproto::TCP);
    assert_eq!((k.src.port_op, k.src.port[0]), (port_op::EQ, 443));
    assert_eq!((k.dst.port_op, k.dst.port), (port_op::RRG, [1000, 2000]));
    assert_eq!(k.af, 0, "no address named: any family");

    // A /0 prefix names a family only: the filter must keep it, or the other family's
    // states would match.
    let sel = checked(Selector {
        src: Some(Prefix { addr: ip("0.0.0.0"), len: 0 }),
        proto: Some(ipproto::UDP),
        ..Selector::default()
    });
    let k = plan::kill_filter(&sel, false).unwrap();
    assert_eq!(k.af, AF_INET);
    assert!(k.src.is_any());
    let t = &tables()[0];
    let v6_udp = t.states.iter().find(|s| s.wire.af == AF_INET6 && s.wire.proto == ipproto::UDP);
    let v6_udp = v6_udp.expect("an IPv6 UDP state");
    assert!(!plan::matches(&sel, v6_udp, None));
    assert!(!t.model().kill_matches(&k, v6_udp));

    // Interface and label are copied verbatim.
    let sel = checked(Selector {
        interface: Some(IfName("igb1".into())),
        label: Some(Label("gw=WAN1".into())),
        ..Selector::default()
    });
    let k = plan::kill_filter(&sel, false).unwrap();
    assert_eq!((k.ifname.as_str(), k.label.as_str()), ("igb1", "gw=WAN1"));
    assert_eq!(k.id, 0, "never a kill by id");
}

/// The interface a floating state is matched on is the one it was created on, both ways.
#[test]
fn floating_states_match_on_their_original_interface() {
    let t = &tables()[2];
    let floating: Vec<&PfState> = t.states.iter().filter(|s| s.ifname == "all").collect();
    assert!(!floating.is_empty());
    let all = checked(Selector { interface: Some(IfName("all".into())), ..Selector::default() });
    let k_all = plan::kill_filter(&all, false).unwrap();
    for s in &floating {
        let orig = checked(Selector {
            interface: Some(IfName(s.orig_ifname.clone())),
            ..Selector::default()
        });
        let k = plan::kill_filter(&orig, false).unwrap();
        assert!(plan::matches(&orig, s, None));
        assert!(t.model().kill_matches(&k, s));
        assert!(!plan::matches(&all, s, None), "\"all\" is not what the kill path compares");
        assert!(!t.model().kill_matches(&k_all, s));
    }
}

// ---------------------------------------------------------------------------------------
// 2. NAT addresses
// ---------------------------------------------------------------------------------------

/// The states a NAT address selector must select, from the generator's connections: the
/// WAN-side state of every connection through that WAN, in the address's family.
fn wan_side_states(t: &Table, w: usize, af: u8) -> (HashSet<u64>, HashSet<Kind>) {
    let mut ids = HashSet::new();
    let mut kinds = HashSet::new();
    for c in &t.g.connections {
        if c.kind.wan() != Some(w) {
            continue;
        }
        let id = match c.kind {
            Kind::PolicyWan1 | Kind::PolicyWan2 | Kind::VoipWan2 | Kind::DefaultWan1 => c.ids[1],
            Kind::ForwardWan1 | Kind::ForwardWan2 | Kind::OwnWan1 | Kind::OwnWan2 => c.ids[0],
            Kind::LanToFirewall => unreachable!("no WAN"),
        };
        if t.state(id).wire.af == af {
            ids.insert(id);
            kinds.insert(c.kind);
        }
    }
    (ids, kinds)
}

#[test]
fn nat_addr_selects_the_wan_side_states_of_that_address_only() {
    for t in tables() {
        for w in 0..2 {
            for af in [AF_INET, AF_INET6] {
                let nat = of_family(ROUTER.wan_addr[w], af);
                let sel = checked(Selector { nat_addr: Some(nat), ..Selector::default() });
                assert_eq!(plan::kill_filter(&sel, false), None, "{sel}");
                assert_eq!(plan::kill_filter(&sel, true), None, "{sel}");
                let got: HashSet<u64> = t
                    .states
                    .iter()
                    .filter(|s| plan::matches(&sel, s, None))
                    .map(|s| s.id)
                    .collect();
                let by_wire: HashSet<u64> =
                    t.states.iter().filter(|s| s.wire.addr[1] == nat).map(|s| s.id).collect();
                let (expected, kinds) = wan_side_states(t, w, af);
                assert_eq!(got, by_wire, "{sel}: the wire key's addr[1]");
                assert_eq!(got, expected, "{sel}: WAN-side states of WAN{}", w + 1);
                // Outbound NAT, the firewall's own and port-forward states all occur.
                if af == AF_INET {
                    let (out, fwd, own) = if w == 0 {
                        (Kind::PolicyWan1, Kind::ForwardWan1, Kind::OwnWan1)
                    } else {
                        (Kind::PolicyWan2, Kind::ForwardWan2, Kind::OwnWan2)
                    };
                    assert!(kinds.contains(&out) && kinds.contains(&fwd) && kinds.contains(&own));
                }
                // With another field, still not expressible; and the field still applies.
                let tcp = checked(Selector {
                    nat_addr: Some(nat),
                    proto: Some(ipproto::TCP),
                    ..Selector::default()
                });
                assert_eq!(plan::kill_filter(&tcp, true), None);
                for s in &t.states {
                    assert_eq!(
                        plan::matches(&tcp, s, None),
                        expected.contains(&s.id) && s.wire.proto == ipproto::TCP
                    );
                }
            }
        }
    }
}

#[test]
fn nat_addr_never_selects_lan_side_states() {
    let t = &tables()[0];
    let nat = v4(ROUTER.wan_addr[0].0);
    let sel = checked(Selector { nat_addr: Some(nat), ..Selector::default() });
    for c in &t.g.connections {
        let lan = t.state(c.ids[0]);
        if matches!(c.kind, Kind::PolicyWan1 | Kind::DefaultWan1) {
            // The LAN-side state's stack and wire keys never name the NAT address...
            assert!(!plan::matches(&sel, lan, None), "{:?}", lan);
            // ...but its twin's wire key does (as the source the kill filter sees).
            let wan = t.state(c.ids[1]);
            assert_eq!(plan::matches(&sel, wan, None), wan.wire.af == AF_INET);
            if wan.wire.af == AF_INET {
                assert_eq!(wan.kill_endpoints().0, nat);
            }
        }
        if c.kind == Kind::ForwardWan1 && lan.wire.af == AF_INET {
            // An inbound port-forward: the NAT address is the filter's *destination*.
            assert_eq!(lan.direction, Direction::In);
            assert_eq!(lan.kill_endpoints().2, nat);
            assert!(plan::matches(&sel, lan, None));
        }
    }
}

// ---------------------------------------------------------------------------------------
// 3. Choosing the path
// ---------------------------------------------------------------------------------------

const SHORT: Option<TableShape> = Some(TableShape { states: 200, rows: 100 });
const LONG: Option<TableShape> = Some(TableShape { states: 201, rows: 100 });

fn label_sel(l: &str) -> CheckedSelector {
    checked(Selector { label: Some(Label(l.into())), ..Selector::default() })
}

fn nat_sel() -> CheckedSelector {
    checked(Selector { nat_addr: Some(v4(ROUTER.wan_addr[0].0)), ..Selector::default() })
}

fn lan_prefix() -> Prefix {
    Prefix { addr: ip("192.0.2.0"), len: 24 }
}

/// A big router: two million states in FreeBSD's default 131,072 id-hash rows.
const BIG: Option<TableShape> = Some(TableShape { states: 2_000_000, rows: 131_072 });

/// `n` distinct expressible selectors (one LAN host each).
fn hosts(n: usize) -> Vec<CheckedSelector> {
    (0..n)
        .map(|i| {
            let host = Ipv4Addr::new(192, 0, 2, u8::try_from(i % 250).unwrap_or(0));
            checked(Selector {
                src: Some(Prefix { addr: host.into(), len: 32 }),
                ..Selector::default()
            })
        })
        .collect()
}

#[test]
fn a_handful_of_expressible_selectors_run_one_filtered_pass_each() {
    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    let gw2 = gw_selector(v4(ROUTER.gateway[1].0));
    let gw1v6 = gw_selector(v6(ROUTER.gateway[0].1));
    let gws = [gw1, gw2, gw1v6];
    for table in [SHORT, LONG, BIG, None] {
        for km in [true, false] {
            for k in 1..=gws.len() {
                let p = plan::choose(&gws[..k], km, &[], table).unwrap();
                let expected: Vec<_> =
                    gws[..k].iter().map(|s| plan::kill_filter(s, km).unwrap()).collect();
                assert!(expected.iter().all(|f| f.kill_match == km));
                assert_eq!(p, Path::Filtered(expected), "{k} gateways, {table:?}");
                assert_eq!(p.passes(), k);
            }
        }
    }
}

#[test]
fn many_selectors_take_one_listing() {
    let sels = hosts(40);
    for table in [SHORT, BIG, None] {
        let p = plan::choose(&sels, true, &[], table).unwrap();
        assert_eq!(p, Path::ListThenIds { filtered: vec![], listed: sels.clone() }, "{table:?}");
        assert_eq!(p.passes(), 1, "however many selectors");
    }
}

#[test]
fn very_long_rows_tip_even_one_selector_to_the_listing() {
    // Two million states in 16 rows: every kill restarts a row of 125,000 states.
    let crowded = Some(TableShape { states: 2_000_000, rows: 16 });
    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    let p = plan::choose(std::slice::from_ref(&gw1), true, &[], crowded).unwrap();
    assert_eq!(p, Path::ListThenIds { filtered: vec![], listed: vec![gw1] });
}

/// The choice is exactly the priced comparison, for every selector count and table.
#[test]
fn the_choice_follows_the_prices() {
    for table in [SHORT, LONG, BIG, None, Some(TableShape { states: 5_000_000, rows: 65_536 })] {
        for k in 1..=64 {
            for km in [true, false] {
                let sels = hosts(k);
                let p = plan::choose(&sels, km, &[], table).unwrap();
                let priced = plan::price(k, km, table, 131_072);
                let filtered = matches!(p, Path::Filtered(_));
                assert_eq!(
                    filtered,
                    priced.filtered_us <= priced.listing_us,
                    "{k} selectors, kill_match {km}, {table:?}: {priced:?}"
                );
            }
        }
    }
}

#[test]
fn nat_addr_and_protected_prefixes_take_the_listing() {
    let nat = nat_sel();
    let p = plan::choose(std::slice::from_ref(&nat), true, &[], SHORT).unwrap();
    assert_eq!(p, Path::ListThenIds { filtered: vec![], listed: vec![nat.clone()] });
    assert_eq!(p.passes(), 1);

    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    let p = plan::choose(std::slice::from_ref(&gw1), true, &[lan_prefix()], SHORT).unwrap();
    assert_eq!(p, Path::ListThenIds { filtered: vec![], listed: vec![gw1] });
    assert_eq!(p.passes(), 1);
}

#[test]
fn a_nat_address_never_reaches_a_kernel_filter_whatever_the_price() {
    // DIOCKILLSTATESNV never reads the kernel's stack-key flag, so a NAT-address kill is
    // never a kernel filter: on every table shape, alone or beside cheap gateway selectors.
    let nat = nat_sel();
    assert_eq!(plan::kill_filter(&nat, true), None);
    assert_eq!(plan::kill_filter(&nat, false), None);
    assert!(plan::LISTING_ONLY_FIELDS.iter().all(|f| nat.fields().contains(f)));
    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    for table in [SHORT, LONG, BIG, None] {
        for sels in [vec![nat.clone()], vec![gw1.clone(), nat.clone()]] {
            let p = plan::choose(&sels, true, &[], table).unwrap();
            let Path::ListThenIds { filtered, listed } = &p else { panic!("{p:?}") };
            assert!(filtered.is_empty() && listed.contains(&nat), "{table:?}: {p:?}");
        }
    }
    // No filter statecull builds sets the flag.
    for sel in [gw1, checked(Selector { src: Some(lan_prefix()), ..Selector::default() })] {
        assert!(!plan::kill_filter(&sel, true).unwrap().nat);
    }
}

#[test]
fn label_selectors_always_run_filtered() {
    let voip = label_sel("voip");
    for table in [SHORT, LONG, None] {
        let p = plan::choose(std::slice::from_ref(&voip), true, &[], table).unwrap();
        assert_eq!(p, Path::Filtered(vec![plan::kill_filter(&voip, true).unwrap()]), "{table:?}");
        assert_eq!(p.passes(), 1);
    }
    let two = [voip.clone(), label_sel("gw=WAN2")];
    let p = plan::choose(&two, false, &[], LONG).unwrap();
    let Path::Filtered(f) = &p else { panic!("{p:?}") };
    assert_eq!(f.len(), 2);
    assert_eq!((f[0].label.as_str(), f[1].label.as_str()), ("voip", "gw=WAN2"));
    assert!(f.iter().all(|k| !k.kill_match));
    assert_eq!(p.passes(), 2);
}

#[test]
fn label_selectors_cannot_honour_protected_prefixes_or_nat_addresses() {
    let voip = label_sel("voip");
    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    for sels in [vec![voip.clone()], vec![gw1.clone(), voip.clone()]] {
        for table in [SHORT, LONG, None] {
            let e = plan::choose(&sels, true, &[lan_prefix()], table).unwrap_err();
            assert!(matches!(e, PlanError::Unsupported(_)), "{e:?}");
        }
    }
    let nat_label = checked(Selector {
        label: Some(Label("voip".into())),
        nat_addr: Some(v4(ROUTER.wan_addr[1].0)),
        ..Selector::default()
    });
    let e = plan::choose(&[nat_label], true, &[], SHORT).unwrap_err();
    assert!(matches!(e, PlanError::Unsupported(_)), "{e:?}");
}

#[test]
fn label_and_plain_selectors_mix_a_filtered_pass_and_a_listing() {
    let voip = label_sel("voip");
    let gw1 = gw_selector(v4(ROUTER.gateway[0].0));
    // An expressible plain selector runs filtered too (labels first, as `choose` builds it).
    for table in [SHORT, BIG, None] {
        let p = plan::choose(&[gw1.clone(), voip.clone()], true, &[], table).unwrap();
        assert_eq!(
            p,
            Path::Filtered(vec![
                plan::kill_filter(&voip, true).unwrap(),
                plan::kill_filter(&gw1, true).unwrap(),
            ]),
            "{table:?}"
        );
        assert_eq!(p.passes(), 2);
    }
    // A NAT address needs the listing: the label still runs in the kernel.
    let nat = nat_sel();
    let p = plan::choose(&[voip.clone(), nat.clone(), gw1.clone()], false, &[], SHORT).unwrap();
    assert_eq!(
        p,
        Path::ListThenIds {
            filtered: vec![plan::kill_filter(&voip, false).unwrap()],
            listed: vec![nat, gw1],
        }
    );
    assert_eq!(p.passes(), 2);
}

/// Every single-field selector (the narrowest ones) still gives a filter that narrows.
#[test]
fn kill_filter_never_means_everything() {
    let sels = [
        Selector { proto: Some(ipproto::ICMP), ..Selector::default() },
        Selector { src: Some(Prefix { addr: ip("128.0.0.0"), len: 1 }), ..Selector::default() },
        Selector { dst: Some(Prefix { addr: ip("::"), len: 1 }), ..Selector::default() },
        Selector {
            family: Some(AddressFamily::Ipv6),
            src: Some(Prefix { addr: ip("::"), len: 0 }),
            proto: Some(ipproto::TCP),
            ..Selector::default()
        },
        Selector {
            proto: Some(ipproto::UDP),
            dst_port: Some(PortRange { first: 0, last: 65535 }),
            ..Selector::default()
        },
        Selector { gateway: Some(ip("10.0.0.1")), ..Selector::default() },
        Selector { interface: Some(IfName("lo0".into())), ..Selector::default() },
        Selector { label: Some(Label("x".into())), ..Selector::default() },
    ];
    for sel in sels {
        let sel = checked(sel);
        for km in [false, true] {
            let k = plan::kill_filter(&sel, km).unwrap();
            assert!(!k.is_everything(), "{sel} -> {k:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. Twins
// ---------------------------------------------------------------------------------------

#[test]
fn pair_twins_pairs_the_halves_of_each_outbound_connection() {
    for t in tables() {
        let all: Vec<usize> = (0..t.states.len()).collect();
        let twins = plan::pair_twins(&t.states, &all);
        assert_eq!(twins.len(), all.len());
        let (mut pairs, mut singles) = (0, 0);
        for c in &t.g.connections {
            let idx: Vec<usize> = c.ids.iter().map(|id| t.index[id]).collect();
            match c.kind {
                Kind::PolicyWan1 | Kind::PolicyWan2 | Kind::VoipWan2 | Kind::DefaultWan1 => {
                    let (lan, wan) = (idx[0], idx[1]);
                    assert_eq!(t.states[lan].direction, Direction::In);
                    assert_eq!(t.states[wan].direction, Direction::Out);
                    assert_eq!(twins[lan], Some(wan), "{:?}", c);
                    assert_eq!(twins[wan], Some(lan), "{:?}", c);
                    pairs += 1;
                }
                Kind::OwnWan1 | Kind::OwnWan2 | Kind::LanToFirewall => {
                    assert_eq!(idx.len(), 1);
                    assert_eq!(twins[idx[0]], None, "{:?}", c);
                    singles += 1;
                }
                Kind::ForwardWan1 | Kind::ForwardWan2 => {}
            }
        }
        assert!(pairs > 100 && singles > 10);
        // A subset of victims gets the same answers, in its own order.
        let some: Vec<usize> = all.iter().rev().step_by(7).copied().collect();
        let sub = plan::pair_twins(&t.states, &some);
        for (v, tw) in some.iter().zip(&sub) {
            assert_eq!(*tw, twins[*v]);
        }
        assert!(plan::pair_twins(&t.states, &[]).is_empty());
    }
}

fn tcp_key(a0: &str, p0: u16, a1: &str, p1: u16) -> PfKey {
    let a0 = ip(a0);
    PfKey { af: af_of(&a0), proto: ipproto::TCP, addr: [a0, ip(a1)], port: [p0, p1] }
}

fn hand_state(dir: Direction, ifname: &str, wire: PfKey, stack: PfKey) -> PfState {
    PfState {
        id: 0,
        creatorid: 0,
        direction: dir,
        ifname: ifname.into(),
        orig_ifname: ifname.into(),
        wire,
        stack,
        rt_addr: None,
        rule: 0,
        packets: [0; 2],
        bytes: [0; 2],
        creation: 0,
        expire: 0,
    }
}

/// Insert into a fresh model; return it and its listing with each inserted state's index.
fn hand_table(states: Vec<PfState>) -> (PfModel, Vec<PfState>, Vec<usize>) {
    let mut m = PfModel::new(8, 0x1234);
    let ids: Vec<u64> = states.into_iter().map(|s| m.insert(s).unwrap()).collect();
    let listing: Vec<PfState> = m.states().cloned().collect();
    let idx = ids.iter().map(|id| listing.iter().position(|s| s.id == *id).unwrap()).collect();
    (m, listing, idx)
}

/// Kill one state by a filter that matches exactly it, with `kill_match`.
fn kill_one_with_match(m: &PfModel, s: &PfState) -> HashSet<u64> {
    let (src, sport, dst, dport) = s.kill_endpoints();
    let sel = checked(Selector {
        proto: Some(s.wire.proto),
        src: Some(Prefix::host(src)),
        dst: Some(Prefix::host(dst)),
        src_port: Some(PortRange::single(sport)),
        dst_port: Some(PortRange::single(dport)),
        interface: Some(IfName(s.kill_ifname().to_owned())),
        ..Selector::default()
    });
    let mut m = m.clone();
    let states: Vec<PfState> = m.states().cloned().collect();
    assert_eq!(
        states.iter().filter(|x| plan::matches(&sel, x, None)).map(|x| x.id).collect::<Vec<_>>(),
        vec![s.id],
        "the filter picks exactly one state"
    );
    kill_filtered(&mut m, &plan::kill_filter(&sel, true).unwrap()).0
}

#[test]
fn an_ambiguous_twin_is_not_paired() {
    // LAN client C -> S:443 leaves on two WANs with the same stack key (two OUT states).
    let lan = tcp_key("192.0.2.10", 40000, "198.18.0.5", 443);
    let (m, listing, idx) = hand_table(vec![
        hand_state(Direction::In, "igb0", lan, lan),
        hand_state(
            Direction::Out,
            "igb1",
            tcp_key("198.18.0.5", 443, "198.51.100.1", 40000),
            lan.swapped(),
        ),
        hand_state(
            Direction::Out,
            "igb2",
            tcp_key("198.18.0.5", 443, "203.0.113.1", 40000),
            lan.swapped(),
        ),
    ]);
    let (a, b1, b2) = (idx[0], idx[1], idx[2]);
    let twins = plan::pair_twins(&listing, &[a, b1, b2]);
    assert_eq!(twins, vec![None, Some(a), Some(a)]);
    // The kernel agrees: the LAN state alone; each WAN state with the (single) LAN state.
    let id = |i: usize| listing[i].id;
    assert_eq!(kill_one_with_match(&m, &listing[a]), HashSet::from([id(a)]));
    assert_eq!(kill_one_with_match(&m, &listing[b1]), HashSet::from([id(b1), id(a)]));
    assert_eq!(kill_one_with_match(&m, &listing[b2]), HashSet::from([id(b2), id(a)]));
}

#[test]
fn two_lan_states_with_one_key_make_the_wan_side_ambiguous() {
    let lan = tcp_key("192.0.2.10", 40000, "198.18.0.5", 443);
    let (m, listing, idx) = hand_table(vec![
        hand_state(Direction::In, "igb0", lan, lan),
        hand_state(Direction::In, "igb3", lan, lan),
        hand_state(
            Direction::Out,
            "igb1",
            tcp_key("198.18.0.5", 443, "198.51.100.1", 40000),
            lan.swapped(),
        ),
    ]);
    let (a1, a2, b) = (idx[0], idx[1], idx[2]);
    assert_eq!(plan::pair_twins(&listing, &[b, a1, a2]), vec![None, Some(b), Some(b)]);
    assert_eq!(kill_one_with_match(&m, &listing[b]), HashSet::from([listing[b].id]));
}

/// Per victim: what the kernel kills with `kill_match` (the model's filtered pass) and what
/// statecull's listing kill takes (the victim and its paired twin), and that the second
/// never has a state the first spares.
fn kernel_and_listing(m: &PfModel, listing: &[PfState], v: usize) -> (HashSet<u64>, HashSet<u64>) {
    let kernel = kill_one_with_match(m, &listing[v]);
    let (listed, _) = kill_listed_by_id(&mut m.clone(), listing, &[v]);
    assert!(listed.is_subset(&kernel), "listing kills {listed:?}, the kernel {kernel:?}");
    (kernel, listed)
}

#[test]
fn twin_lookups_walk_a_key_list_and_count_every_state_on_it() {
    // pf_find_state_all walks the key's wire list (IN lookup) or stack list (OUT lookup),
    // never checks direction, and counts every state on the list into `more`.
    let lan = tcp_key("192.0.2.10", 40000, "198.18.0.5", 443);
    let (m, listing, idx) = hand_table(vec![
        // A: LAN side. B: its NAT twin (stack key = A's key swapped).
        hand_state(Direction::In, "igb0", lan, lan),
        hand_state(
            Direction::Out,
            "igb1",
            tcp_key("198.18.0.5", 443, "198.51.100.1", 40000),
            lan.swapped(),
        ),
        // D: an IN state keyed like B's stack key: on the same stack list as B, and its own
        // lookup (lan, OUT) finds A, of D's own direction: a same-direction key match.
        hand_state(Direction::In, "igb3", lan.swapped(), lan.swapped()),
        // E: an OUT state whose *wire* key equals B's stack key: not on the stack list.
        hand_state(
            Direction::Out,
            "igb2",
            lan.swapped(),
            tcp_key("198.18.0.5", 443, "192.0.2.99", 40000),
        ),
    ]);
    let (a, b, d, e) = (idx[0], idx[1], idx[2], idx[3]);
    let id = |i: usize| listing[i].id;
    assert_eq!(plan::pair_twins(&listing, &[a, b, d, e]), vec![None, Some(a), None, None]);
    // A's lookup (lan swapped, OUT) walks a stack list holding B and D: ambiguous for both.
    assert_eq!(
        kernel_and_listing(&m, &listing, a),
        (HashSet::from([id(a)]), HashSet::from([id(a)]))
    );
    // B's lookup (lan, IN) walks a wire list holding A alone: both kill the pair.
    let pair = HashSet::from([id(b), id(a)]);
    assert_eq!(kernel_and_listing(&m, &listing, b), (pair.clone(), pair));
    // D's lookup (lan, OUT) walks a stack list holding A alone, an IN state like D: the
    // kernel kills it; statecull's listing, by its documented choice, spares it.
    assert_eq!(
        kernel_and_listing(&m, &listing, d),
        (HashSet::from([id(d), id(a)]), HashSet::from([id(d)]))
    );
    // E's lookup finds nothing.
    assert_eq!(
        kernel_and_listing(&m, &listing, e),
        (HashSet::from([id(e)]), HashSet::from([id(e)]))
    );
}

#[test]
fn a_nat_twin_beside_an_unrelated_reverse_state_is_ambiguous_for_both() {
    let lan = tcp_key("192.0.2.10", 40000, "198.18.0.5", 443);
    let (m, listing, idx) = hand_table(vec![
        // A: LAN side of C -> S, B: its NAT twin on WAN1.
        hand_state(Direction::In, "igb0", lan, lan),
        hand_state(
            Direction::Out,
            "igb1",
            tcp_key("198.18.0.5", 443, "198.51.100.1", 40000),
            lan.swapped(),
        ),
        // R: an unrelated OUT state S:443 -> C:40000 leaving on igb3; its wire key is A's,
        // so it sits on the wire list B's lookup walks (the old model skipped it as OUT).
        hand_state(Direction::Out, "igb3", lan, lan),
    ]);
    let (a, b, r) = (idx[0], idx[1], idx[2]);
    let id = |i: usize| listing[i].id;
    assert_eq!(plan::pair_twins(&listing, &[a, b, r]), vec![Some(b), None, None]);
    for (v, kernel) in [
        (b, HashSet::from([id(b)])),
        (a, HashSet::from([id(a), id(b)])),
        (r, HashSet::from([id(r)])),
    ] {
        let (k, l) = kernel_and_listing(&m, &listing, v);
        assert_eq!(k, kernel, "kernel, victim {:?}", listing[v]);
        assert_eq!(l, kernel, "listing, victim {:?}", listing[v]);
    }
}

#[test]
fn twins_must_agree_on_family_and_protocol() {
    let lan = tcp_key("192.0.2.10", 40000, "198.18.0.5", 443);
    let mut udp_stack = lan.swapped();
    udp_stack.proto = ipproto::UDP;
    let (_, listing, idx) = hand_table(vec![
        hand_state(Direction::In, "igb0", lan, lan),
        hand_state(
            Direction::Out,
            "igb1",
            PfKey { proto: ipproto::UDP, ..tcp_key("198.18.0.5", 443, "198.51.100.1", 40000) },
            udp_stack,
        ),
    ]);
    assert_eq!(plan::pair_twins(&listing, &idx), vec![None, None]);
}

/// Gateway-1 selectors: the listing path (victims and paired twins by id) removes exactly
/// what one filtered `kill_match` pass removes, WAN-side twins included.
#[test]
fn listing_path_kills_what_kill_match_kills_for_gateway_selectors() {
    let (gw4, gw6) = (v4(ROUTER.gateway[0].0), v6(ROUTER.gateway[0].1));
    let sels = [
        Selector { gateway: Some(gw4), ..Selector::default() },
        Selector { gateway: Some(gw6), ..Selector::default() },
        Selector { gateway: Some(gw4), proto: Some(ipproto::TCP), ..Selector::default() },
        Selector {
            gateway: Some(gw4),
            proto: Some(ipproto::UDP),
            dst_port: Some(PortRange::single(443)),
            ..Selector::default()
        },
        Selector {
            gateway: Some(gw4),
            interface: Some(IfName("igb0".into())),
            ..Selector::default()
        },
        Selector {
            gateway: Some(gw4),
            interface: Some(IfName("igb1".into())),
            ..Selector::default()
        },
        Selector {
            gateway: Some(gw4),
            src: Some(Prefix { addr: ip("192.0.2.0"), len: 25 }),
            ..Selector::default()
        },
        Selector { gateway: Some(v4(ROUTER.gateway[1].0)), ..Selector::default() },
    ];
    for t in tables() {
        let mut twins_killed = 0;
        for sel in &sels {
            twins_killed += assert_paths_agree(t, &checked(sel.clone()));
        }
        assert!(twins_killed > 50, "the WAN-side twins are part of the comparison");
    }
}

// ---------------------------------------------------------------------------------------
// 5. Records
// ---------------------------------------------------------------------------------------

fn ports_of(k: &StateKey) -> (u16, u16) {
    match k.l4 {
        L4::Ports { src, dst } => (src, dst),
        other => panic!("{other:?}"),
    }
}

fn detail(
    r: &statecull_proto::StateRecord,
) -> (PfDirection, &str, &str, StateKey, StateKey, Option<IpAddr>, Option<u32>) {
    match &r.detail {
        StateDetail::Pf { direction, interface, orig_interface, wire, stack, gateway, rule } => {
            (*direction, interface, orig_interface, *wire, *stack, *gateway, *rule)
        }
        other => panic!("{other:?}"),
    }
}

/// The key spelled out as the brief has it: IN addr[0] -> addr[1], OUT addr[1] -> addr[0].
fn spelled(k: &PfKey, dir: Direction) -> (IpAddr, u16, IpAddr, u16) {
    match dir {
        Direction::In => (k.addr[0], k.port[0], k.addr[1], k.port[1]),
        Direction::Out => (k.addr[1], k.port[1], k.addr[0], k.port[0]),
    }
}

#[test]
fn records_orient_keys_from_source_to_destination() {
    for t in tables() {
        for s in &t.states {
            let r = plan::to_record(s);
            assert_eq!(r.handle, StateHandle::Pf { id: s.id, creator_id: s.creatorid });
            let (dir, ifname, orig, wire, stack, gw, rule) = detail(&r);
            assert_eq!(r.key, stack, "the record's key is the stack key");
            for (rec, k) in [(&stack, &s.stack), (&wire, &s.wire)] {
                let (src, sport, dst, dport) = spelled(k, s.direction);
                assert_eq!((rec.src, rec.dst, rec.proto), (src, dst, k.proto));
                assert_eq!(ports_of(rec), (sport, dport));
            }
            assert_eq!(
                dir,
                if s.direction == Direction::In { PfDirection::In } else { PfDirection::Out }
            );
            assert_eq!((ifname, orig), (s.ifname.as_str(), s.orig_ifname.as_str()));
            assert_eq!(gw, s.rt_addr);
            assert_eq!(rule, Some(s.rule));
            assert_eq!(r.expires_in_secs, Some(s.expire));
            assert_eq!(
                r.counters,
                Some(Counters {
                    orig_packets: s.packets[0],
                    orig_bytes: s.bytes[0],
                    reply_packets: s.packets[1],
                    reply_bytes: s.bytes[1],
                })
            );
            // The wire key as a record is what the kill filter's src/dst see.
            let (ksrc, ksport, kdst, kdport) = s.kill_endpoints();
            assert_eq!((wire.src, wire.dst, ports_of(&wire)), (ksrc, kdst, (ksport, kdport)));
        }
    }
}

#[test]
fn both_halves_of_a_connection_report_the_same_connection() {
    let lan4 = Prefix { addr: ip("192.0.2.0"), len: 24 };
    let lan6 = Prefix { addr: ip("2001:db8:1::"), len: 64 };
    let on_lan = |a: &IpAddr| lan4.contains(a) || lan6.contains(a);
    for t in tables() {
        let mut floating = 0;
        for c in &t.g.connections {
            let recs: Vec<_> = c.ids.iter().map(|id| plan::to_record(t.state(*id))).collect();
            let first = t.state(c.ids[0]);
            let af = first.wire.af;
            floating += recs.iter().filter(|r| detail(r).1 == "all").count();
            match c.kind {
                Kind::PolicyWan1 | Kind::PolicyWan2 | Kind::VoipWan2 | Kind::DefaultWan1 => {
                    let w = c.kind.wan().unwrap();
                    let (lan, wan) = (&recs[0], &recs[1]);
                    assert_eq!(lan.key, wan.key, "{:?}", c);
                    assert!(on_lan(&lan.key.src), "the client is the source: {:?}", lan.key);
                    let (_, lan_if, _, _, _, lan_gw, _) = detail(lan);
                    let (_, wan_if, wan_orig, wan_wire, _, wan_gw, _) = detail(wan);
                    // The WAN side's wire key starts at the NAT address, same ports.
                    assert_eq!(wan_wire.src, of_family(ROUTER.wan_addr[w], af));
                    assert_eq!(
                        (wan_wire.dst, ports_of(&wan_wire)),
                        (wan.key.dst, ports_of(&wan.key))
                    );
                    let expect_gw =
                        (c.kind != Kind::DefaultWan1).then(|| of_family(ROUTER.gateway[w], af));
                    assert_eq!((lan_gw, wan_gw), (expect_gw, None));
                    if lan_if != "all" {
                        assert_eq!((lan_if, wan_if), (ROUTER.lan_if, ROUTER.wan_if[w]));
                    } else {
                        assert_eq!((wan_if, wan_orig), ("all", ROUTER.wan_if[w]));
                    }
                }
                Kind::ForwardWan1 | Kind::ForwardWan2 => {
                    let w = c.kind.wan().unwrap();
                    let (wan, lan) = (&recs[0], &recs[1]);
                    assert_eq!(wan.key, lan.key);
                    assert_eq!(wan.key.dst, of_family(ROUTER.server, af));
                    assert_eq!(ports_of(&wan.key).1, 8443);
                    let wire = detail(wan).3;
                    assert_eq!(
                        (wire.dst, ports_of(&wire).1),
                        (of_family(ROUTER.wan_addr[w], af), 443)
                    );
                    assert_eq!(detail(wan).5, Some(of_family(ROUTER.gateway[w], af)));
                }
                Kind::OwnWan1 | Kind::OwnWan2 => {
                    let w = c.kind.wan().unwrap();
                    assert_eq!(recs[0].key.src, of_family(ROUTER.wan_addr[w], af));
                    assert_eq!(detail(&recs[0]).3, recs[0].key, "no NAT");
                }
                Kind::LanToFirewall => {
                    assert_eq!(recs[0].key.dst, of_family(ROUTER.lan_addr, af));
                    assert_eq!(ports_of(&recs[0].key).1, 443);
                    assert!(on_lan(&recs[0].key.src));
                }
            }
        }
        assert!(floating > 0);
    }
}

#[test]
fn record_handles_and_layer4_details() {
    let mut s = hand_state(
        Direction::Out,
        "all",
        PfKey {
            af: AF_INET,
            proto: ipproto::ICMP,
            addr: [ip("198.18.0.9"), ip("198.51.100.1")],
            port: [77, 77],
        },
        PfKey {
            af: AF_INET,
            proto: ipproto::ICMP,
            addr: [ip("198.18.0.9"), ip("192.0.2.10")],
            port: [77, 77],
        },
    );
    s.orig_ifname = "igb1".into();
    s.id = 0x0102_0304_0506_0708;
    s.creatorid = 0xdead_beef;
    s.rule = u32::MAX;
    s.expire = 42;
    let r = plan::to_record(&s);
    assert_eq!(r.handle, StateHandle::Pf { id: 0x0102_0304_0506_0708, creator_id: 0xdead_beef });
    assert_eq!(
        r.key,
        StateKey {
            proto: ipproto::ICMP,
            src: ip("192.0.2.10"),
            dst: ip("198.18.0.9"),
            l4: L4::Icmp { id: 77, kind: 0, code: 0 },
        }
    );
    let (dir, ifname, orig, wire, _, gw, rule) = detail(&r);
    assert_eq!((dir, ifname, orig), (PfDirection::Out, "all", "igb1"));
    assert_eq!((wire.src, wire.dst), (ip("198.51.100.1"), ip("198.18.0.9")));
    assert_eq!((gw, rule, r.expires_in_secs), (None, None, Some(42)));

    let k6 = |proto: u8| PfKey {
        af: AF_INET6,
        proto,
        addr: [ip("2001:db8:1::10"), ip("2001:db8:ff::1")],
        port: [5, 9],
    };
    let icmp6 = plan::to_record(&hand_state(
        Direction::In,
        "igb0",
        k6(ipproto::ICMPV6),
        k6(ipproto::ICMPV6),
    ));
    assert_eq!(icmp6.key.l4, L4::Icmp { id: 5, kind: 0, code: 0 });
    assert_eq!((icmp6.key.src, icmp6.key.dst), (ip("2001:db8:1::10"), ip("2001:db8:ff::1")));
    let gre =
        plan::to_record(&hand_state(Direction::In, "igb0", k6(ipproto::GRE), k6(ipproto::GRE)));
    assert_eq!(gre.key.l4, L4::Ports { src: 5, dst: 9 });
    let esp = plan::to_record(&hand_state(Direction::Out, "igb0", k6(50), k6(50)));
    assert_eq!(esp.key.l4, L4::None);
    assert_eq!((esp.key.src, esp.key.dst), (ip("2001:db8:ff::1"), ip("2001:db8:1::10")));
}
