//! Loading and explaining a policy take work linear in its size (about n log n at most).
//! Counted, not timed: `parse_counted`/`explain_counted` report the steps of the loader's
//! lookups and cross-checks (line numbers, duplicate and conflict checks, group members,
//! group memberships). A policy with 1,000 gateways once took 13 s to load because line
//! numbers were found by rescanning the text for every pair of gateways.
//! Timings: `cargo bench -p statecull-policy --bench load_scale`.
// clippy.toml allows these inside #[test] functions only; the shared helpers assert too.
#![allow(clippy::panic)]

#[path = "common/scale.rs"]
mod scale;

use proptest::prelude::*;
use scale::policy_text;
use statecull_policy::load::{explain_counted, parse_counted};

fn work(n: usize) -> (u64, u64, usize) {
    let text = policy_text(n);
    let (policy, load_steps) = parse_counted(&text, "<scale>");
    let policy = match policy {
        Ok(p) => p,
        Err(e) => panic!("{n} gateways: {e}"),
    };
    assert_eq!(policy.gateways.len(), n);
    let (explanation, explain_steps) = explain_counted(&policy);
    assert!(explanation.contains(&format!("gw{}", n - 1)));
    (load_steps, explain_steps, text.len())
}

#[test]
fn loading_and_explaining_scale_linearly_with_gateways() {
    let (small_load, small_explain, _) = work(200);
    let (load, explain, text_len) = work(400);
    println!("200 gateways: {small_load} + {small_explain} steps; 400: {load} + {explain} steps");
    // Doubling the gateways may double the work, plus a little for logarithmic factors;
    // quadratic work would quadruple it, cubic multiply it by eight.
    assert!(
        load <= small_load * 5 / 2,
        "loading: {small_load} steps for 200 gateways, {load} for 400"
    );
    assert!(
        explain <= small_explain * 5 / 2,
        "explaining: {small_explain} steps for 200 gateways, {explain} for 400"
    );
    // And a few steps per byte of policy at most.
    let text_len = text_len as u64;
    assert!(load <= text_len, "loading: {load} steps for {text_len} bytes");
    assert!(explain <= text_len, "explaining: {explain} steps for {text_len} bytes");
}

/// One gateway's recognisers, drawn from small pools so that conflicts are common.
#[derive(Clone, Debug)]
struct Recog {
    rt_addr: Option<u8>,
    mark: Option<(u32, u32)>,
    nat_addr: Vec<u8>,
    interface: Option<u8>,
}

fn recog() -> impl Strategy<Value = Recog> {
    let masks = prop::sample::select(vec![0x3u32, 0x1, 0x2, 0xc, 0xff, 0xff00, u32::MAX]);
    (
        prop::option::of(0u8..3),
        prop::option::of((0u32..16, masks)),
        prop::collection::btree_set(0u8..4, 0..3),
        prop::option::of(0u8..2),
    )
        .prop_map(|(rt_addr, mark, nat, interface)| {
            let nat_addr: Vec<u8> = nat.into_iter().collect();
            let interface = interface.filter(|_| !nat_addr.is_empty());
            let mark = mark.map(|(v, m)| (v & m, m));
            // At least one recogniser.
            let mark =
                if rt_addr.is_none() && nat_addr.is_empty() { mark.or(Some((0, 0))) } else { mark };
            Recog { rt_addr, mark, nat_addr, interface }
        })
}

fn recog_policy(gateways: &[Recog]) -> String {
    let mut t = String::new();
    for (i, g) in gateways.iter().enumerate() {
        t.push_str(&format!(
            "[[gateway]]\nname = \"gw{i}\"\ninterface = \"eth{i}\"\naddress = \"192.0.2.{}\"\n\n\
             [gateway.states]\n",
            i + 1
        ));
        if let Some(r) = g.rt_addr {
            t.push_str(&format!("rt_addr = \"198.51.100.{}\"\n", r + 1));
        }
        if let Some((v, m)) = g.mark {
            // Mask 0 would be refused; it stands for "a mark that matches every value".
            let m = if m == 0 { 0x10 } else { m };
            t.push_str(&format!("mark = \"{v:#x}/{m:#x}\"\n"));
        }
        if !g.nat_addr.is_empty() {
            let list: Vec<String> =
                g.nat_addr.iter().map(|a| format!("\"203.0.113.{}\"", a + 1)).collect();
            t.push_str(&format!("nat_addr = [{}]\n", list.join(", ")));
        }
        if let Some(i) = g.interface {
            t.push_str(&format!("interface = \"em{i}\"\n"));
        }
        t.push('\n');
    }
    t
}

/// The reference: compare every pair in file order, rt_addr, then mark, then the NAT
/// addresses in the order written. `(gateway, earlier gateway, field)` of the first conflict.
fn first_conflict_by_pairs(gateways: &[Recog]) -> Option<(usize, usize, String)> {
    let mark = |g: &Recog| g.mark.map(|(v, m)| if m == 0 { (v, 0x10) } else { (v, m) });
    for (i, g) in gateways.iter().enumerate() {
        for (j, o) in gateways.iter().enumerate().take(i) {
            if g.rt_addr.is_some() && g.rt_addr == o.rt_addr {
                return Some((i, j, "rt_addr".into()));
            }
            if let (Some((av, am)), Some((bv, bm))) = (mark(g), mark(o))
                && (av ^ bv) & am & bm == 0
            {
                return Some((i, j, "mark".into()));
            }
            let told_apart = matches!((g.interface, o.interface), (Some(x), Some(y)) if x != y);
            if told_apart {
                continue;
            }
            if let Some(k) = g.nat_addr.iter().position(|a| o.nat_addr.contains(a)) {
                return Some((i, j, format!("nat_addr[{}]", k + 1)));
            }
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The indexed conflict check reports exactly the conflict a comparison of every pair
    /// would: same gateway, same earlier gateway, same field.
    #[test]
    fn indexed_conflicts_match_pairwise_comparison(gateways in prop::collection::vec(recog(), 1..9)) {
        let text = recog_policy(&gateways);
        let result = statecull_policy::load::parse(&text, "<conflicts>");
        match (first_conflict_by_pairs(&gateways), result) {
            (None, Ok(_)) => {}
            (None, Err(e)) => prop_assert!(false, "unexpected error {e}\n{text}"),
            (Some(c), Ok(_)) => prop_assert!(false, "conflict {c:?} not found\n{text}"),
            (Some((i, j, key)), Err(statecull_policy::PolicyError::Invalid { field, message, .. })) => {
                prop_assert_eq!(field, Some(format!("gateway[{}].states.{key}", i + 1)));
                prop_assert!(
                    message.contains(&format!("gateway \"gw{j}\"")),
                    "expected gw{} in {}", j, message
                );
            }
            (Some(c), Err(e)) => prop_assert!(false, "conflict {c:?}, other error {e}"),
        }
    }
}
