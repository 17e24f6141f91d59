//! FreeBSD pf (and its in-memory model) through `statecull-pf`.
//!
//! One kernel-filtered kill when one selector says it all; otherwise one listing, the twins
//! paired here with the kernel's own rule, and kills by id (O(1) each). The reply says which
//! path ran and how many full table passes it cost.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Instant;

use statecull_pf::kernel::{PfClient, PfDevice, PfError};
use statecull_pf::nl::StateFilter;
use statecull_pf::plan::{self, Path};
use statecull_pf::types::{PfState, af_of};
use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CheckedSelector, CountReply, IfName,
    KillPath, KillReport, Prefix, SelectorField, StateHandle, StateRecord,
};

use crate::backend::{Backend, Sink};
use crate::error::BrokerError;

/// A pf state table behind a [`PfDevice`].
#[derive(Debug)]
pub struct PfBackend<D: PfDevice> {
    client: Mutex<PfClient<D>>,
    kind: BackendKind,
    kernel: String,
    /// Id-hash rows of the kernel's state table.
    rows: u64,
    /// States seen by the last full listing (none yet: unknown).
    last_size: Mutex<Option<u64>>,
}

fn map(e: PfError) -> BrokerError {
    match e {
        PfError::Unsupported(m) => BrokerError::Unsupported(m),
        other => BrokerError::Backend(other.to_string()),
    }
}

fn micros(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The kernel-side part of a selector for a listing: family, protocol, and one address the
/// state must name somewhere (the kernel keeps states with the address in any key slot, a
/// superset of what the selector means; the broker matches exactly afterwards). Interfaces
/// are not passed down: the kernel's listing compares the current interface, which is "all"
/// for floating states.
fn listing_filter(sel: Option<&CheckedSelector>) -> StateFilter {
    let Some(s) = sel else { return StateFilter::default() };
    let af = match s.family() {
        Some(AddressFamily::Ipv4) => statecull_pf::types::AF_INET,
        Some(AddressFamily::Ipv6) => statecull_pf::types::AF_INET6,
        None => 0,
    };
    let addr = s
        .nat_addr
        .map(|a| (a, if a.is_ipv4() { 32 } else { 128 }))
        .or(s.src.map(|p| (p.addr, p.len)))
        .or(s.dst.map(|p| (p.addr, p.len)));
    StateFilter { ifname: None, af, proto: s.proto.unwrap_or(0), addr }
}

impl<D: PfDevice> PfBackend<D> {
    /// `rows` is the kernel's `net.pf.states_hashsize` (131,072 by default).
    pub fn new(client: PfClient<D>, kind: BackendKind, kernel: String, rows: u64) -> Self {
        Self { client: Mutex::new(client), kind, kernel, rows, last_size: Mutex::new(None) }
    }

    /// Look at the device (the model's cost counters, for benchmarks).
    pub fn with_device<R>(&self, f: impl FnOnce(&D) -> R) -> R {
        f(self.client().device())
    }

    fn remember_size(&self, n: usize) {
        if let Ok(mut s) = self.last_size.lock() {
            *s = Some(n as u64);
        }
    }

    fn shape(&self) -> Option<plan::TableShape> {
        let states = self.last_size.lock().ok().and_then(|s| *s)?;
        Some(plan::TableShape { states, rows: self.rows })
    }

    fn client(&self) -> std::sync::MutexGuard<'_, PfClient<D>> {
        self.client.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn list(&self, sel: Option<&CheckedSelector>) -> Result<Vec<PfState>, BrokerError> {
        let mut out = Vec::new();
        self.client()
            .list(&listing_filter(sel), &mut |s| {
                out.push(s);
                Ok(())
            })
            .map_err(map)?;
        if sel.is_none() {
            self.remember_size(out.len());
        }
        Ok(out)
    }

    fn refuse_labels(selectors: &[&CheckedSelector], what: &str) -> Result<(), BrokerError> {
        if selectors.iter().any(|s| s.label.is_some()) {
            return Err(BrokerError::Unsupported(format!(
                "pf cannot {what} by label: listings carry the rule number, not its labels \
                 (a kill by label runs in the kernel)"
            )));
        }
        Ok(())
    }

    /// Kill the states and unambiguous twins (when asked) of a listing's victims by id,
    /// sparing states that touch protected prefixes. Returns (selected, killed, gone, spared).
    fn kill_listed(
        &self,
        all: &[PfState],
        victims: Vec<usize>,
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<(u64, u64, u64, u64), BrokerError> {
        let mut spared = 0u64;
        let mut chosen: Vec<usize> = Vec::with_capacity(victims.len() * 2);
        let mut seen: HashSet<usize> = HashSet::with_capacity(victims.len() * 2);
        let kept: Vec<usize> = victims
            .into_iter()
            .filter(|v| {
                let touches = plan::touches(protected, &all[*v]);
                spared += u64::from(touches);
                !touches
            })
            .collect();
        let twins =
            if match_opposite { plan::pair_twins(all, &kept) } else { vec![None; kept.len()] };
        for (v, twin) in kept.iter().zip(twins) {
            if seen.insert(*v) {
                chosen.push(*v);
            }
            if let Some(t) = twin
                && !seen.contains(&t)
            {
                seen.insert(t);
                if plan::touches(protected, &all[t]) {
                    spared += 1;
                } else {
                    chosen.push(t);
                }
            }
        }
        let ids: Vec<(u64, u32)> = chosen.iter().map(|i| (all[*i].id, all[*i].creatorid)).collect();
        let (killed, gone) = self.client().kill_ids(&ids).map_err(map)?;
        Ok((ids.len() as u64, killed, gone, spared))
    }
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

/// Past this many protected prefixes one full listing is cheaper than one filtered
/// listing per prefix (each walks the whole table in the kernel).
const MAX_FILTERED_PROTECTION_LISTINGS: usize = 8;

impl<D: PfDevice> PfBackend<D> {
    /// Every state touching a protected prefix, and how many listings it took. Over pf
    /// netlink the kernel filters each listing by one prefix, so only protected states are
    /// exported (a full export costs a message per state); without netlink, or with many
    /// prefixes, one full listing.
    fn protected_states(&self, protected: &[Prefix]) -> Result<(Shielded, u32), BrokerError> {
        let mut shielded = Shielded::default();
        let mut client = self.client();
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
            client
                .list(f, &mut |s| {
                    if plan::touches(protected, &s) {
                        shielded.insert(&s);
                    }
                    Ok(())
                })
                .map_err(map)?;
        }
        Ok((shielded, u32::try_from(filters.len()).unwrap_or(u32::MAX)))
    }
}

impl<D: PfDevice> Backend for PfBackend<D> {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: self.kind,
            kernel: self.kernel.clone(),
            capabilities: Capabilities {
                selector_fields: plan::SUPPORTED_FIELDS.to_vec(),
                kernel_mark_flush: false,
                // pf's kill filter takes addresses of either family directly.
                kernel_tuple_flush: vec![AddressFamily::Ipv4, AddressFamily::Ipv6],
                kernel_tuple_broken: Vec::new(),
                match_opposite: true,
                flush_by_interface: true,
            },
        }
    }

    fn unsupported_hint(&self, field: SelectorField) -> Option<String> {
        plan::unsupported_hint(field)
            .map(|h| format!("the pf backend cannot match on {field}: {h}"))
    }

    fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut Sink<'_>,
    ) -> Result<u64, BrokerError> {
        if let Some(s) = selector {
            Self::refuse_labels(&[s], "list")?;
        }
        let batch = batch.max(1);
        // The device is shared by every request (one /dev/pf descriptor, one netlink
        // socket, or the model), so the listing runs under its lock; a client that reads
        // slowly must not hold that lock (every count and kill would wait behind it). The
        // listing is therefore taken into memory first and written to the client after the
        // lock is released. The dispatcher allows one snapshot per uid at a time, which
        // bounds these buffers.
        let mut batches: Vec<Vec<StateRecord>> = Vec::new();
        let mut pending = Vec::with_capacity(batch);
        let mut sent = 0u64;
        self.client()
            .list(&listing_filter(selector), &mut |s| {
                if selector.is_some_and(|sel| !plan::matches(sel, &s, None)) {
                    return Ok(());
                }
                pending.push(plan::to_record(&s));
                if pending.len() >= batch {
                    batches.push(std::mem::replace(&mut pending, Vec::with_capacity(batch)));
                }
                Ok(())
            })
            .map_err(map)?;
        if !pending.is_empty() {
            batches.push(pending);
        }
        let listed: u64 = batches.iter().map(|b| b.len() as u64).sum();
        if selector.is_none() {
            self.remember_size(usize::try_from(listed).unwrap_or(usize::MAX));
        }
        for b in batches {
            sent += b.len() as u64;
            sink(b).map_err(|e| BrokerError::Backend(format!("snapshot consumer stopped: {e}")))?;
        }
        Ok(sent)
    }

    fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError> {
        let started = Instant::now();
        Self::refuse_labels(&selectors.iter().collect::<Vec<_>>(), "count")?;
        // Counted as the listing streams by: memory stays constant whatever the table size.
        let mut per_selector = vec![0u64; selectors.len()];
        let mut matching_any = 0u64;
        let mut table_entries = 0u64;
        self.client()
            .list(&StateFilter::default(), &mut |s| {
                table_entries += 1;
                let mut any = false;
                for (i, sel) in selectors.iter().enumerate() {
                    if plan::matches(sel, &s, None) {
                        per_selector[i] += 1;
                        any = true;
                    }
                }
                matching_any += u64::from(any);
                Ok(())
            })
            .map_err(map)?;
        self.remember_size(usize::try_from(table_entries).unwrap_or(usize::MAX));
        Ok(CountReply { per_selector, matching_any, table_entries, elapsed_us: micros(started) })
    }

    fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let started = Instant::now();
        let path = plan::choose(selectors, match_opposite, protected, self.shape())
            .map_err(|e| BrokerError::Unsupported(e.to_string()))?;
        let passes = u32::try_from(path.passes()).unwrap_or(u32::MAX);
        let mut report = KillReport {
            requested: 0,
            killed: 0,
            not_found: 0,
            spared: 0,
            failed: 0,
            first_error: None,
            exact: true,
            path: KillPath::KernelFilteredFlush,
            table_passes: passes,
            elapsed_us: 0,
            note: None,
        };
        let (filtered, listed) = match path {
            Path::Filtered(f) => (f, Vec::new()),
            Path::ListThenIds { filtered, listed } => {
                report.path = KillPath::DumpAndDelete;
                (filtered, listed)
            }
        };
        for (n, k) in filtered.iter().enumerate() {
            match self.client().kill(k) {
                Ok(killed) => report.killed += u64::from(killed),
                Err(e) if n == 0 => return Err(map(e)),
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
            // Twins may not match the selectors themselves: list everything when they count.
            let all = if match_opposite {
                self.list(None)?
            } else {
                self.list(listed.first().filter(|_| listed.len() == 1))?
            };
            let victims: Vec<usize> = all
                .iter()
                .enumerate()
                .filter(|(_, s)| listed.iter().any(|sel| plan::matches(sel, s, None)))
                .map(|(i, _)| i)
                .collect();
            let (selected, killed, gone, spared) =
                self.kill_listed(&all, victims, match_opposite, protected)?;
            report.requested = selected;
            report.killed += killed;
            report.not_found = gone;
            report.spared = spared;
        }
        report.elapsed_us = micros(started);
        Ok(report)
    }

    fn kill_handles(
        &self,
        handles: &[StateHandle],
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let started = Instant::now();
        let mut ids = Vec::with_capacity(handles.len());
        for h in handles {
            match h {
                StateHandle::Pf { id, creator_id } => ids.push((*id, *creator_id)),
                StateHandle::Conntrack { .. } => {
                    return Err(BrokerError::Unsupported(
                        "a conntrack handle cannot name a pf state".into(),
                    ));
                }
            }
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
        let (killed, gone) = self.client().kill_ids(&ids).map_err(map)?;
        Ok(KillReport {
            requested: handles.len() as u64,
            killed,
            not_found: gone,
            spared,
            failed: 0,
            first_error: None,
            exact: true,
            path: KillPath::Handles,
            table_passes: passes,
            elapsed_us: micros(started),
            note: None,
        })
    }

    fn flush(
        &self,
        interface: Option<&IfName>,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let started = Instant::now();
        let ifname = interface.map(|i| i.0.clone()).unwrap_or_default();
        if protected.is_empty() {
            let killed = self.client().clear(&ifname, false).map_err(map)?;
            return Ok(KillReport {
                requested: 0,
                killed: u64::from(killed),
                not_found: 0,
                spared: 0,
                failed: 0,
                first_error: None,
                exact: true,
                path: KillPath::KernelFlush,
                table_passes: 1,
                elapsed_us: micros(started),
                note: None,
            });
        }
        let all = self.list(None)?;
        let victims: Vec<usize> = all
            .iter()
            .enumerate()
            .filter(|(_, s)| ifname.is_empty() || s.kill_ifname() == ifname)
            .map(|(i, _)| i)
            .collect();
        let (selected, killed, gone, spared) = self.kill_listed(&all, victims, false, protected)?;
        Ok(KillReport {
            requested: selected,
            killed,
            not_found: gone,
            spared,
            failed: 0,
            first_error: None,
            exact: true,
            path: KillPath::DumpAndDelete,
            table_passes: 1,
            elapsed_us: micros(started),
            note: None,
        })
    }
}

/// pf's family number of an address, for callers building filters.
pub fn pf_af(a: &std::net::IpAddr) -> u8 {
    af_of(a)
}
