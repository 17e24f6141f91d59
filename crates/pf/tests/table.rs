//! The pf table's two kill paths agree: the listing path (victims listed, twins found in a
//! second listing, kills by id; memory bounded by the victims) kills exactly what the kernel's
//! own filtered pass with `kill_match` kills.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::collections::HashSet;

use statecull_pf::client::PfClient;
use statecull_pf::model_device::{ModelDevice, Release};
use statecull_pf::table::PfTable;
use statecull_pf::table_gen::{ROUTER, Spec, router_table};
use statecull_proto::{CheckedSelector, KillPath, Prefix, Selector};

fn table(states: usize, release: Release) -> PfTable<ModelDevice> {
    let g = router_table(&Spec::new(states, 3)).unwrap();
    let rows = g.model.rows() as u64;
    let writer = PfClient::probe(ModelDevice::new(g.model, release)).unwrap();
    let reader = writer.another().unwrap();
    PfTable::new(writer, reader, rows)
}

fn ids(t: &PfTable<ModelDevice>) -> HashSet<(u64, u32)> {
    t.with_device(|d| d.model().states().map(|s| (s.id, s.creatorid)).collect())
}

fn gw(i: usize) -> CheckedSelector {
    Selector { gateway: Some(ROUTER.gateway[i].0.into()), ..Selector::default() }.check().unwrap()
}

#[test]
fn the_listing_path_kills_what_the_kernels_kill_match_kills() {
    for release in [Release::FREEBSD_15, Release::FREEBSD_13] {
        for sels in [vec![gw(0)], vec![gw(0), gw(1)]] {
            let filtered = table(30_000, release);
            let listed = table(30_000, release);
            let before = ids(&filtered);
            assert_eq!(before, ids(&listed), "the same seed makes the same table");
            let r = filtered.kill_matching(&sels, true, &[]).unwrap();
            assert_eq!(r.path, KillPath::KernelFilteredFlush, "{r:?}");
            // A protected prefix nothing touches forces the listing and changes nothing else.
            let nowhere: Prefix = "2001:db8:ffff:ffff::/64".parse().unwrap();
            let l = listed.kill_matching(&sels, true, &[nowhere]).unwrap();
            assert_eq!(l.path, KillPath::DumpAndDelete, "{l:?}");
            assert_eq!(l.spared, 0);
            assert_eq!(ids(&filtered), ids(&listed), "{release:?}, {} selector(s)", sels.len());
            assert_eq!(r.killed, l.killed);
            for rep in [&r, &l] {
                assert_eq!(rep.per_selector.len(), sels.len());
                assert_eq!(rep.per_selector.iter().sum::<u64>(), rep.killed, "{rep:?}");
            }
            assert_eq!(l.table_passes, 2, "victims, then their twins");
        }
    }
}
