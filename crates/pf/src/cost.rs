//! What a kill costs the kernel and the broker, in one place: the weights the path choice
//! ([`crate::plan::choose`]) prices each path with, and the same prices applied to what the
//! model counted ([`Weights::price`], for `cargo xtask bench pf-model`).
//!
//! # The weights, and why
//!
//! pf has two ways to kill a set of states:
//! * a **kernel-filtered pass** (`DIOCKILLSTATESNV` / netlink `KILLSTATES` with a filter): the
//!   kernel walks every id-hash row and compares each state with the filter, in C, under the
//!   row lock; after each kill it restarts the row (`pf_killstates_row`), so a victim costs
//!   a few extra comparisons ([`RESTART_DIVISOR`]); with `kill_match` each victim's twin is found by
//!   one key-hash lookup and unlinked too;
//! * a **listing and kills by id**: the kernel exports every state (netlink `GETSTATES`
//!   builds one message of a few hundred bytes per state; `DIOCGETSTATESV2` copies 384 bytes
//!   per state) and the broker decodes them all, then sends one small request per victim,
//!   each an O(1) id lookup and unlink.
//!
//! The two paths differ in what they pay per state of the table: a comparison or an export.
//! On this project's measuring machine the conntrack figures are the guide (pf's kernel work
//! per state is of the same kind: a hash-row walk, a compare, a netlink message per exported
//! state): one filtered flush of 1,000,000 entries that deletes half of them takes 0.83 s, a
//! whole-table flush 1.17 s, and a full dump to userland 1.67 s. That gives about 1.7 µs to
//! export and decode one state, about 1.1 µs to unlink one, and about 0.3 µs to compare one
//! during a walk. A kill by id is a request message, its parse, a lookup and an unlink:
//! about 1.5 µs. A key-hash lookup is a hash and a short chain walk: about 0.3 µs.
//!
//! So one filtered pass per selector costs `states × 0.3 µs` each, where the listing costs
//! `states × 1.7 µs` once (twice with twins, see below): a handful of selectors (down
//! gateways) run as filtered passes, many selectors as one listing. Row restarts make
//! filtered passes dearer on long rows (`states / net.pf.states_hashsize`, read at start-up),
//! which the prices include. Only the ratios matter for the choice; the absolute figures are
//! what the benchmark reports.
//!
//! Victims are not known before the kill; the choice assumes half the table (the most a
//! gateway's share plus its twins usually is), the same for both paths, so the assumption
//! only matters through row restarts and twin lookups.

/// Units of work a kill path makes the kernel (and the broker) do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// States compared against a filter in kernel walks (row restarts included).
    pub compared: u64,
    /// States exported by listings.
    pub exported: u64,
    /// States unlinked by filtered passes (twins included).
    pub unlinked_by_filter: u64,
    /// Kills by id.
    pub killed_by_id: u64,
    /// Key-hash lookups (twin searches).
    pub key_lookups: u64,
}

/// A filtered pass restarts its row after each kill: each victim costs about `rowlen /
/// RESTART_DIVISOR` more comparisons (the states before it that are compared again). Measured
/// on the model, whose walk is the kernel's: at 2,000,001 states in 131,072 rows (15 a row)
/// one gateway's kill looked at 1.7 states per state of the table, 2 extra per victim.
pub const RESTART_DIVISOR: u64 = 8;

/// A kill is assumed to take `1 / ASSUMED_VICTIM_DIVISOR` of the table before it runs (see
/// the module docs): half.
pub const ASSUMED_VICTIM_DIVISOR: u64 = 2;

impl Work {
    /// `selectors` filtered passes over `states` states in `rows` id-hash rows, killing
    /// `victims` states (and their twins with `kill_match`).
    pub fn filtered(
        selectors: u64,
        states: u64,
        rows: u64,
        victims: u64,
        kill_match: bool,
    ) -> Work {
        let rowlen = states / rows.max(1);
        Work {
            compared: selectors * states + victims * rowlen / RESTART_DIVISOR,
            unlinked_by_filter: victims * if kill_match { 2 } else { 1 },
            key_lookups: if kill_match { victims } else { 0 },
            ..Work::default()
        }
    }

    /// One listing of `states` states (a second one to find twins with `kill_match`: the
    /// broker keeps only the victims, never the table), then kills by id.
    pub fn listing(states: u64, victims: u64, kill_match: bool) -> Work {
        let twice = if kill_match { 2 } else { 1 };
        Work { exported: states * twice, killed_by_id: victims * twice, ..Work::default() }
    }
}

/// Microseconds per unit of work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// A state compared against a filter during a kernel walk.
    pub compare_us: f64,
    /// A state exported by a listing and decoded by the broker.
    pub export_us: f64,
    /// A state unlinked by a filtered pass.
    pub unlink_us: f64,
    /// One kill by id: request, id lookup, unlink, reply.
    pub kill_by_id_us: f64,
    /// One key-hash lookup (a `kill_match` twin search).
    pub key_lookup_us: f64,
}

impl Weights {
    /// The weights statecull prices paths with (see the module documentation).
    pub const MEASURED: Weights = Weights {
        compare_us: 0.3,
        export_us: 1.7,
        unlink_us: 1.1,
        kill_by_id_us: 1.5,
        key_lookup_us: 0.3,
    };

    /// The price of some work, in microseconds.
    pub fn price(&self, c: &Work) -> f64 {
        c.compared as f64 * self.compare_us
            + c.exported as f64 * self.export_us
            + c.unlinked_by_filter as f64 * self.unlink_us
            + c.killed_by_id as f64 * self.kill_by_id_us
            + c.key_lookups as f64 * self.key_lookup_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Weights = Weights::MEASURED;

    #[test]
    fn a_handful_of_gateways_run_filtered_and_many_selectors_one_listing() {
        // 2M states in the default 131,072 rows, half of them victims, with twins.
        let (n, rows) = (2_000_000u64, 131_072u64);
        let v = n / 2;
        let listing = W.price(&Work::listing(n, v, true));
        for k in 1..=8 {
            assert!(W.price(&Work::filtered(k, n, rows, v, true)) < listing, "{k} selectors");
        }
        assert!(W.price(&Work::filtered(30, n, rows, v, true)) > listing);
    }

    #[test]
    fn long_rows_make_filtered_passes_dearer() {
        let n = 2_000_000u64;
        let short = W.price(&Work::filtered(1, n, 1 << 20, n / 2, false));
        let long = W.price(&Work::filtered(1, n, 1 << 10, n / 2, false));
        assert!(long > short * 10.0, "{short} {long}");
    }
}
