//! A pf state table behind a [`PfDevice`], with the same face as `statecull-conntrack`'s
//! `Conntrack`: snapshot, count, kill by selectors, kill by handles, flush. The broker's pf
//! adapter only maps errors and describes capabilities.
//!
//! Kills: one kernel-filtered kill when one selector says it all; otherwise one listing, the
//! twins paired with the kernel's own rule, and kills by id (O(1) each). The report says
//! which path ran and how many full table passes it cost.
//!
//! Two lanes, each a client on its own device handle: reads (snapshots, counts, the listing of
//! protected states) on one, kills (and the listings a kill needs) on the other. A count's
//! listing of millions of states therefore never holds up a kill: the kernel interleaves the
//! two row by row. Each lane runs one request at a time (a handle's netlink socket carries
//! one conversation), and nothing here writes to a client while holding a lane (a snapshot
//! is listed into memory first).

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use statecull_proto::listing::{Batcher, Counts, Sink, Tally};
use statecull_proto::{
    AddressFamily, CheckedHandle, CheckedSelector, KillPath, KillReport, Prefix, StateHandle,
    StateRecord,
};

use crate::client::{PfClient, PfError};
use crate::device::PfDevice;
use crate::nl::StateFilter;
use crate::plan::{self, Path};
use crate::types::{Direction, PfKey, PfState, twin_search};

/// A pf state table.
#[derive(Debug)]
pub struct PfTable<D: PfDevice> {
    /// Kills, and the listings kills need (the broker runs one mutation at a time).
    writer: Mutex<PfClient<D>>,
    /// Snapshots and counts.
    reader: Mutex<PfClient<D>>,
    /// Ruleset tickets, on a handle of their own when one was given
    /// ([`PfTable::with_ticket_lane`]): the engine polls them while it waits to kill, and a
    /// poll must never queue behind a count's listing or another client's kill.
    ticket: Option<Mutex<PfClient<D>>>,
    /// Id-hash rows of the kernel's state table.
    rows: u64,
    /// States seen by the last full listing (none yet: unknown).
    last_size: Mutex<Option<u64>>,
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The kernel-side part of a selector for a listing: family, protocol, and one address the
/// state must name somewhere (the kernel keeps states with the address in any key slot, a
/// superset of what the selector means; the match here is exact). Interfaces are not passed
/// down: the kernel's listing compares the current interface, which is "all" for floating
/// states.
fn listing_filter(sel: Option<&CheckedSelector>) -> StateFilter {
    let Some(s) = sel else { return StateFilter::default() };
    let af = match s.family() {
        Some(AddressFamily::Ipv4) => crate::types::AF_INET,
        Some(AddressFamily::Ipv6) => crate::types::AF_INET6,
        None => 0,
    };
    let addr = s
        .nat_addr
        .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
        .or(s.src.map(|p| (p.addr, p.len)))
        .or(s.dst.map(|p| (p.addr, p.len)));
    StateFilter { ifname: None, af, proto: s.proto.unwrap_or(0), addr }
}

/// The states a kill by id must spare, keyed so that no spelling of a handle escapes them.
#[derive(Debug, Default)]
struct Shielded {
    exact: HashSet<(u64, u32)>,
    ids: HashSet<u64>,
}

impl Shielded {
    fn insert(&mut self, s: &PfState) {
        self.exact.insert((s.id, s.creatorid));
        self.ids.insert(s.id);
    }

    /// Would killing `(id, creator)` kill a protected state? pf's kill by id reads creator 0
    /// as this host's id (`pf_killstates`: `if (creatorid == 0) creatorid =
    /// V_pf_status.hostid`), and listings never show 0 (the host id is never 0), so a handle
    /// with creator 0 is spared when any protected state has its id.
    fn covers(&self, id: u64, creator: u32) -> bool {
        if creator == 0 { self.ids.contains(&id) } else { self.exact.contains(&(id, creator)) }
    }
}

/// Past this many protected prefixes one full listing is cheaper than one filtered listing
/// per prefix (each walks the whole table in the kernel).
const MAX_FILTERED_PROTECTION_LISTINGS: usize = 8;

fn refuse_labels(selectors: &[&CheckedSelector], what: &str) -> Result<(), PfError> {
    if selectors.iter().any(|s| s.label.is_some()) {
        return Err(PfError::Unsupported(format!(
            "pf cannot {what} by label: listings carry the rule number, not its labels (a kill \
             by label runs in the kernel)"
        )));
    }
    Ok(())
}

fn report(path: KillPath, table_passes: u32) -> KillReport {
    KillReport {
        requested: 0,
        killed: 0,
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: true,
        path,
        table_passes,
        elapsed_us: 0,
        note: None,
        per_selector: Vec::new(),
    }
}

/// What a listing kill did: states selected, killed, already gone, spared; and killed per
/// victim group (a twin counts with its victim).
#[derive(Debug, Default)]
struct ListedKill {
    /// States `group_of` picked (protected ones included), before twins.
    matched: u64,
    selected: u64,
    killed: u64,
    gone: u64,
    spared: u64,
    per_group: Vec<u64>,
}

/// The request-order index of each selector `plan::choose` put in a filter or a listing:
/// labelled selectors first (they always run filtered), then the others, each in request
/// order; `choose` builds its path in exactly that order.
fn choose_order(selectors: &[CheckedSelector]) -> (Vec<usize>, Vec<usize>) {
    let labelled = (0..selectors.len()).filter(|i| selectors[*i].label.is_some()).collect();
    let plain = (0..selectors.len()).filter(|i| selectors[*i].label.is_none()).collect();
    (labelled, plain)
}

impl<D: PfDevice> PfTable<D> {
    /// A table with its two lanes: `writer` for kills, `reader` for snapshots and counts
    /// (two clients on two handles of the same kernel: [`PfClient::another`]). `rows` is the
    /// kernel's `net.pf.states_hashsize` (131,072 by default).
    pub fn new(writer: PfClient<D>, reader: PfClient<D>, rows: u64) -> Self {
        Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            ticket: None,
            rows,
            last_size: Mutex::new(None),
        }
    }

    /// The same table with a third client (on its own handle) for ruleset tickets.
    pub fn with_ticket_lane(mut self, ticket: PfClient<D>) -> Self {
        self.ticket = Some(Mutex::new(ticket));
        self
    }

    /// Whether the kernel answers ruleset tickets (probed at start-up).
    pub fn has_ruleset_ticket(&self) -> bool {
        let t = self.client().transports();
        t.nl_rules || t.ioctl_rules
    }

    /// The active main filter ruleset: `(rules, ticket)` ([`PfClient::ruleset_ticket`]), on
    /// the ticket lane (the kill lane when there is none).
    pub fn ruleset_ticket(&self) -> Result<(u32, u32), PfError> {
        match &self.ticket {
            Some(lane) => lane.lock().unwrap_or_else(|p| p.into_inner()).ruleset_ticket(),
            None => self.client().ruleset_ticket(),
        }
    }

    /// Look at the device (the model's cost counters, for benchmarks and tests).
    pub fn with_device<R>(&self, f: impl FnOnce(&D) -> R) -> R {
        f(self.client().device())
    }

    /// The kill lane. A poisoned lock means a request panicked mid-way; a device holds no
    /// state between requests that a panic could leave half-changed.
    fn client(&self) -> MutexGuard<'_, PfClient<D>> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The read lane.
    fn reader(&self) -> MutexGuard<'_, PfClient<D>> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_size(&self, n: u64) {
        if let Ok(mut s) = self.last_size.lock() {
            *s = Some(n);
        }
    }

    fn shape(&self) -> Option<plan::TableShape> {
        let states = self.last_size.lock().ok().and_then(|s| *s)?;
        Some(plan::TableShape { states, rows: self.rows })
    }

    /// Stream the states matching `selector` to `sink`, `batch` records at a time. The
    /// listing is taken into memory under the device lock and written after it is released,
    /// so a slow consumer holds up nobody else.
    pub fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut Sink<'_>,
    ) -> Result<u64, PfError> {
        if let Some(s) = selector {
            refuse_labels(&[s], "list")?;
        }
        let mut batches: Vec<Vec<StateRecord>> = Vec::new();
        let listed = {
            let mut keep = |b: Vec<StateRecord>| -> Result<(), String> {
                batches.push(b);
                Ok(())
            };
            let mut batcher = Batcher::new(batch, &mut keep);
            let mut listed = 0u64;
            self.reader().list(&listing_filter(selector), &mut |s| {
                listed += 1;
                if selector.is_some_and(|sel| !plan::matches(sel, &s, None)) {
                    return Ok(());
                }
                batcher.push(plan::to_record(&s)).map_err(PfError::Aborted)
            })?;
            batcher.finish().map_err(PfError::Aborted)?;
            listed
        };
        if selector.is_none() {
            self.remember_size(listed);
        }
        let mut sent = 0u64;
        for b in batches {
            sent += b.len() as u64;
            sink(b).map_err(PfError::Aborted)?;
        }
        Ok(sent)
    }

    /// Count the states matching each selector, in one listing that keeps nothing.
    pub fn count(&self, selectors: &[CheckedSelector]) -> Result<Counts, PfError> {
        refuse_labels(&selectors.iter().collect::<Vec<_>>(), "count")?;
        let mut tally = Tally::new(selectors.len());
        self.reader().list(&StateFilter::default(), &mut |s| {
            tally.add(|i| plan::matches(&selectors[i], &s, None));
            Ok(())
        })?;
        let counts = tally.finish();
        self.remember_size(counts.table_entries);
        Ok(counts)
    }

    /// Every state touching a protected prefix, and how many listings it took. Over pf
    /// netlink the kernel filters each listing by one prefix, so only protected states are
    /// exported (a full export costs a message per state); without netlink, or with many
    /// prefixes, one full listing.
    fn protected_states(&self, protected: &[Prefix]) -> Result<(Shielded, u32), PfError> {
        let mut shielded = Shielded::default();
        let mut client = self.reader();
        let netlink = client.transports().nl_family.is_some();
        let filters: Vec<StateFilter> =
            if netlink && protected.len() <= MAX_FILTERED_PROTECTION_LISTINGS {
                protected
                    .iter()
                    .map(|p| StateFilter { addr: Some((p.addr, p.len)), ..StateFilter::default() })
                    .collect()
            } else {
                vec![StateFilter::default()]
            };
        for f in &filters {
            client.list(f, &mut |s| {
                if plan::touches(protected, &s) {
                    shielded.insert(&s);
                }
                Ok(())
            })?;
        }
        Ok((shielded, u32::try_from(filters.len()).unwrap_or(u32::MAX)))
    }

    /// Kill by id the states `group_of` picks from a listing (the group it returns is what
    /// the kill is credited to), sparing states that touch protected prefixes, and with
    /// `match_opposite` each victim's twin as [`plan::TwinIndex`] pairs them (the kernel's
    /// `kill_match` lookup, never killing a twin the kernel would spare).
    ///
    /// Memory is bounded by the victims, never the table: the first listing (kernel-filtered
    /// by `filter`) keeps only the victims; a second one, over the whole table, only counts
    /// the states on the key lists the victims' twin lookups walk.
    fn kill_listed(
        &self,
        filter: &StateFilter,
        group_of: &dyn Fn(&PfState) -> Option<usize>,
        groups: usize,
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<ListedKill, PfError> {
        struct Victim {
            id: (u64, u32),
            group: usize,
            twin: (PfKey, Direction),
        }
        let mut client = self.client();
        let mut spared = 0u64;
        let mut matched = 0u64;
        let mut victims: Vec<Victim> = Vec::new();
        client.list(filter, &mut |s| {
            let Some(group) = group_of(&s) else { return Ok(()) };
            matched += 1;
            if plan::touches(protected, &s) {
                spared += 1;
            } else {
                victims.push(Victim { id: (s.id, s.creatorid), group, twin: twin_search(&s) });
            }
            Ok(())
        })?;
        let mut chosen: Vec<((u64, u32), usize)> =
            victims.iter().map(|v| (v.id, v.group)).collect();
        if match_opposite && !victims.is_empty() {
            // Tag: the state's (id, creator) and whether it is protected.
            let mut index = plan::TwinIndex::for_lookups(victims.iter().map(|v| v.twin));
            let mut listed = 0u64;
            client.list(&StateFilter::default(), &mut |s| {
                listed += 1;
                index.add(&s, ((s.id, s.creatorid), plan::touches(protected, &s)));
                Ok(())
            })?;
            self.remember_size(listed);
            let mut seen: HashSet<(u64, u32)> = chosen.iter().map(|(id, _)| *id).collect();
            for v in &victims {
                let Some((twin, touches)) = index.twin(&v.twin) else { continue };
                if !seen.insert(twin) {
                    continue;
                }
                if touches {
                    spared += 1;
                } else {
                    chosen.push((twin, v.group));
                }
            }
        }
        let ids: Vec<(u64, u32)> = chosen.iter().map(|(id, _)| *id).collect();
        let each = client.kill_ids_each(&ids)?;
        let mut out = ListedKill {
            matched,
            selected: ids.len() as u64,
            spared,
            per_group: vec![0; groups],
            ..ListedKill::default()
        };
        for ((_, group), n) in chosen.iter().zip(each) {
            if n == 0 {
                out.gone += 1;
            } else {
                out.killed += u64::from(n);
                if let Some(g) = out.per_group.get_mut(*group) {
                    *g += u64::from(n);
                }
            }
        }
        Ok(out)
    }

    /// Kill every state matching any selector (and each victim's twin with
    /// `match_opposite`), sparing states that touch `protected`.
    pub fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, PfError> {
        let started = Instant::now();
        let path =
            plan::choose_with_rows(selectors, match_opposite, protected, self.shape(), self.rows)
                .map_err(|e| PfError::Unsupported(e.to_string()))?;
        // A listing that pairs twins walks the table twice (victims, then their twins).
        let twin_listing = usize::from(match_opposite && matches!(path, Path::ListThenIds { .. }));
        let passes = u32::try_from(path.passes() + twin_listing).unwrap_or(u32::MAX);
        let mut report = report(KillPath::KernelFilteredFlush, passes);
        report.per_selector = vec![0; selectors.len()];
        let (labelled, plain) = choose_order(selectors);
        let (filtered, listed, filtered_for) = match path {
            Path::Filtered(f) => (f, Vec::new(), labelled.into_iter().chain(plain).collect()),
            Path::ListThenIds { filtered, listed } => {
                report.path = KillPath::DumpAndDelete;
                (filtered, listed, labelled)
            }
        };
        let listed_for: Vec<usize> =
            (0..selectors.len()).filter(|i| !filtered_for.contains(i)).collect();
        for (n, k) in filtered.iter().enumerate() {
            match self.client().kill(k) {
                Ok(killed) => {
                    report.killed += u64::from(killed);
                    if let Some(slot) =
                        filtered_for.get(n).and_then(|i| report.per_selector.get_mut(*i))
                    {
                        *slot += u64::from(killed);
                    }
                }
                Err(e) if n == 0 => return Err(e),
                Err(e) => {
                    // Earlier passes already killed: report them, and the failure.
                    report.exact = false;
                    report.first_error = Some(e.to_string());
                    report.note =
                        Some(format!("stopped after {n} of {} kernel kills", filtered.len()));
                    report.elapsed_us = micros(started);
                    return Ok(report);
                }
            }
        }
        if !listed.is_empty() {
            // One selector: the kernel prefilters the listing by it (a superset; matched
            // exactly here); several: the whole table.
            let filter = listing_filter(listed.first().filter(|_| listed.len() == 1));
            let group_of = |s: &PfState| listed.iter().position(|sel| plan::matches(sel, s, None));
            let done =
                self.kill_listed(&filter, &group_of, listed.len(), match_opposite, protected)?;
            report.requested = done.selected;
            report.killed += done.killed;
            report.not_found = done.gone;
            report.spared = done.spared;
            for (g, n) in done.per_group.iter().enumerate() {
                if let Some(slot) = listed_for.get(g).and_then(|i| report.per_selector.get_mut(*i))
                {
                    *slot += n;
                }
            }
        }
        report.elapsed_us = micros(started);
        Ok(report)
    }

    /// Kill exactly these states by id, sparing protected ones whatever the handle's
    /// spelling. With `match_opposite` each one's twin goes too, paired as a listing kill
    /// pairs them ([`plan::TwinIndex`]): ids do not say what a state's keys are, so the
    /// states are found in one listing and their twins counted in a second; a handle no
    /// longer listed counts as not found. `Request::check` refuses creator 0 there (a handle
    /// must name its state exactly as listed).
    pub fn kill_handles(
        &self,
        handles: &[CheckedHandle],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, PfError> {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(handles.len());
        for h in handles {
            match h.get() {
                StateHandle::Pf { id, creator_id } => ids.push((*id, *creator_id)),
                StateHandle::Conntrack { .. } => {
                    return Err(PfError::Unsupported(
                        "a conntrack handle cannot name a pf state".into(),
                    ));
                }
            }
        }
        if match_opposite {
            if ids.iter().any(|(_, creator)| *creator == 0) {
                return Err(PfError::Unsupported(
                    "killing twins by handle needs each handle's creator id as listed".into(),
                ));
            }
            let wanted: HashSet<(u64, u32)> = ids.iter().copied().collect();
            let pick = |s: &PfState| wanted.contains(&(s.id, s.creatorid)).then_some(0);
            let done = self.kill_listed(&StateFilter::default(), &pick, 1, true, protected)?;
            let mut r = report(KillPath::Handles, 2);
            r.requested = handles.len() as u64;
            r.killed = done.killed;
            r.not_found = (wanted.len() as u64).saturating_sub(done.matched) + done.gone;
            r.spared = done.spared;
            r.elapsed_us = micros(started);
            return Ok(r);
        }
        let mut spared = 0u64;
        let mut passes = 0u32;
        if !protected.is_empty() {
            // Ids alone do not say what a state touches: list the protected states.
            let (shielded, listings) = self.protected_states(protected)?;
            passes = listings;
            ids.retain(|(id, creator)| {
                let keep = !shielded.covers(*id, *creator);
                spared += u64::from(!keep);
                keep
            });
        }
        let (killed, gone) = self.client().kill_ids(&ids)?;
        let mut r = report(KillPath::Handles, passes);
        r.requested = handles.len() as u64;
        r.killed = killed;
        r.not_found = gone;
        r.spared = spared;
        r.elapsed_us = micros(started);
        Ok(r)
    }

    /// Kill every state (on `interface` when given), sparing `protected` (which forces a
    /// listing and kills by id).
    pub fn flush(
        &self,
        interface: Option<&str>,
        protected: &[Prefix],
    ) -> Result<KillReport, PfError> {
        let started = Instant::now();
        let ifname = interface.unwrap_or_default();
        if protected.is_empty() {
            let killed = self.client().clear(ifname, false)?;
            let mut r = report(KillPath::KernelFlush, 1);
            r.killed = u64::from(killed);
            r.elapsed_us = micros(started);
            return Ok(r);
        }
        let in_scope = |s: &PfState| (ifname.is_empty() || s.kill_ifname() == ifname).then_some(0);
        let done = self.kill_listed(&StateFilter::default(), &in_scope, 0, false, protected)?;
        let mut r = report(KillPath::DumpAndDelete, 1);
        r.requested = done.selected;
        r.killed = done.killed;
        r.not_found = done.gone;
        r.spared = done.spared;
        r.elapsed_us = micros(started);
        Ok(r)
    }
}
