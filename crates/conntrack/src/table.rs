//! The conntrack backend's operations: list, count, kill and flush, each on its own socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use statecull_proto::{
    AddressFamily, CheckedSelector, KillPath, KillReport, Prefix, StateDetail, StateHandle,
    StateRecord,
};
use tracing::{debug, info, warn};

use crate::codec::{MsgBuilder, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NlMsgs};
use crate::ct::{
    self, CtEntry, IPCTNL_MSG_CT_GET_STATS, IPCTNL_MSG_CT_NEW, KernelFilter, msg_type,
};
use crate::error::CtError;
use crate::matcher::{self, KernelFeatures};
use crate::sys::{CtSocket, SEND_CHUNK, kernel_release};

/// Most kernel flushes one `KillMatching` may cost before a single dump-and-delete pass is
/// cheaper: each flush walks the whole table, while the dump path walks it once (measured:
/// a mark flush of half of 1M entries 0.84 s, a streamed dump + delete 1.6 s, so two or three
/// flushes still win; see `reference/conntrack-costs.md`).
pub const MAX_KERNEL_FLUSHES: usize = 3;
/// Handles looked up per round trip when protected prefixes must be checked.
const GET_CHUNK: usize = 512;
/// A dump interrupted by a table resize is retried this many times.
const DUMP_ATTEMPTS: usize = 3;
/// Largest delete-by-handle message (IPv6 tuple, zone, id).
const MAX_DELETE_MSG: usize = 160;

/// What is known about the kernel's `CTA_FILTER` address matching for one family.
const UNKNOWN: u8 = 0;
const TRUSTED: u8 = 1;
const BROKEN: u8 = 2;

/// The Linux conntrack table of the current network namespace.
#[derive(Debug, Clone)]
pub struct Conntrack {
    mark: bool,
    /// The kernel accepts `CTA_FILTER` on a flush (probed at open).
    tuple_accepted: bool,
    /// Per family (IPv4, IPv6): UNKNOWN, TRUSTED or BROKEN; probed on real entries.
    tuple_verdict: Arc<[AtomicU8; 2]>,
    /// Fixed features (tests of the fallback paths); no probing.
    forced: Option<KernelFeatures>,
    kernel: String,
}

/// Counts of a `Count` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    pub per_selector: Vec<u64>,
    pub matching_any: u64,
    pub table_entries: u64,
}

/// Summary of a dump.
#[derive(Debug, Clone, Copy, Default)]
struct DumpStats {
    entries: u64,
    interrupted: bool,
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let ma = parts.next().and_then(|p| p.parse::<u32>().ok());
    let mi = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (ma, mi) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

impl Conntrack {
    /// Open the backend: check that ctnetlink answers (and that we may use it), and probe
    /// which in-kernel filters this kernel supports.
    pub fn open() -> Result<Self, CtError> {
        let kernel = kernel_release();
        let mut sock = CtSocket::open()?;
        // A stats request proves access: every nfnetlink message needs CAP_NET_ADMIN.
        let entries = table_entries_on(&mut sock)?;

        // Mark filtering on flush exists since Linux 3.18-era kernels; before that a
        // CT_DELETE carrying only CTA_MARK flushed *everything*. It cannot be probed without
        // risk, so it is gated on the release: 4.19 (an LTS floor) or newer.
        let mark = kernel_at_least(&kernel, 4, 19);
        let started = Instant::now();
        let mut b = MsgBuilder::new();
        let seq = sock.next_seq();
        ct::probe_tuple_flush_request(&mut b, seq);
        sock.send(b.as_bytes())?;
        let tuple = match ack(&mut sock, seq, "probe tuple-filtered flush") {
            Ok(()) => true,
            Err(CtError::Kernel { errno, .. }) => {
                debug!(
                    errno,
                    "kernel refuses CTA_FILTER on flush; NAT-address kills will dump and delete"
                );
                false
            }
            Err(e) => return Err(e),
        };
        let ct = Self {
            mark,
            tuple_accepted: tuple,
            tuple_verdict: Arc::new([AtomicU8::new(UNKNOWN), AtomicU8::new(UNKNOWN)]),
            forced: None,
            kernel,
        };
        // Verify address matching on whatever entries exist now; families without entries
        // are verified when first needed.
        for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
            ct.verified(family);
        }
        let f = ct.features();
        info!(
            kernel = %ct.kernel,
            entries,
            kernel_mark_flush = f.mark,
            kernel_tuple_filter = tuple,
            ipv4_tuple_filter = verdict_name(ct.verdict(AddressFamily::Ipv4)),
            ipv6_tuple_filter = verdict_name(ct.verdict(AddressFamily::Ipv6)),
            probe_us = elapsed_us(started),
            "conntrack backend ready"
        );
        Ok(ct)
    }

    /// A backend with fixed features (tests of the fallback paths on a new kernel).
    pub fn with_features(features: KernelFeatures) -> Self {
        Self {
            mark: features.mark,
            tuple_accepted: features.family_flush,
            tuple_verdict: Arc::new([AtomicU8::new(UNKNOWN), AtomicU8::new(UNKNOWN)]),
            forced: Some(features),
            kernel: kernel_release(),
        }
    }

    fn verdict(&self, family: AddressFamily) -> u8 {
        self.tuple_verdict[family_index(family)].load(Ordering::SeqCst)
    }

    /// Is `CTA_FILTER` address matching trustworthy for `family`? Probes once on real
    /// entries if not known yet.
    fn verified(&self, family: AddressFamily) -> bool {
        if !self.tuple_accepted {
            return false;
        }
        match self.verdict(family) {
            TRUSTED => return true,
            BROKEN => return false,
            _ => {}
        }
        let verdict = match verify_tuple_filter(family) {
            Ok(v) => v,
            Err(e) => {
                debug!(%family, error = %e, "tuple filter probe failed; will retry");
                UNKNOWN
            }
        };
        if verdict == BROKEN {
            warn!(
                %family,
                kernel = %self.kernel,
                "this kernel's CTA_FILTER address matching selects the wrong entries for \
                 {family}; {family} NAT-address and host kills will dump and delete instead"
            );
        }
        if verdict != UNKNOWN {
            self.tuple_verdict[family_index(family)].store(verdict, Ordering::SeqCst);
        }
        verdict == TRUSTED
    }

    /// The kernel features usable now (without probing).
    pub fn features(&self) -> KernelFeatures {
        if let Some(f) = self.forced {
            return f;
        }
        KernelFeatures {
            mark: self.mark,
            family_flush: self.tuple_accepted,
            tuple_v4: self.tuple_accepted && self.verdict(AddressFamily::Ipv4) == TRUSTED,
            tuple_v6: self.tuple_accepted && self.verdict(AddressFamily::Ipv6) == TRUSTED,
        }
    }

    /// The kernel features for a request, probing the families its selectors need.
    fn features_for(&self, selectors: &[&CheckedSelector]) -> KernelFeatures {
        if self.forced.is_none() {
            for s in selectors {
                if let Some(f) = s.family() {
                    self.verified(f);
                }
            }
        }
        self.features()
    }

    pub fn kernel(&self) -> &str {
        &self.kernel
    }

    /// Entries in the table (cheap: one `GET_STATS`).
    pub fn table_entries(&self) -> Result<u64, CtError> {
        let mut sock = CtSocket::open()?;
        table_entries_on(&mut sock)
    }

    /// Stream the entries matching `selector` to `sink`, `batch` records at a time.
    /// Returns the number of records streamed. If `sink` fails the dump is abandoned.
    pub fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut dyn FnMut(Vec<StateRecord>) -> Result<(), String>,
    ) -> Result<u64, CtError> {
        let filter = match selector {
            Some(s) => matcher::kernel_plan(s, self.features_for(&[s])).filter,
            None => KernelFilter::default(),
        };
        let batch = batch.max(1);
        let mut pending = Vec::with_capacity(batch);
        let mut sent = 0u64;
        let stats = dump(&filter, &mut |e| {
            if selector.is_some_and(|s| !matcher::matches(s, &e)) {
                return Ok(());
            }
            pending.push(to_record(e));
            if pending.len() >= batch {
                sent += pending.len() as u64;
                sink(std::mem::replace(&mut pending, Vec::with_capacity(batch)))
                    .map_err(CtError::Aborted)?;
            }
            Ok(())
        })?;
        if stats.interrupted {
            // A resize moved entries while we walked: some may be missing or repeated.
            return Err(CtError::Incomplete(
                "the conntrack table was resized during the listing; run it again".into(),
            ));
        }
        if !pending.is_empty() {
            sent += pending.len() as u64;
            sink(pending).map_err(CtError::Aborted)?;
        }
        Ok(sent)
    }

    /// Count the entries matching each selector, in one dump.
    pub fn count(&self, selectors: &[CheckedSelector]) -> Result<Counts, CtError> {
        let table_entries = self.table_entries()?;
        let mut per_selector = vec![0u64; selectors.len()];
        let mut matching_any = 0u64;
        if selectors.is_empty() {
            return Ok(Counts { per_selector, matching_any, table_entries });
        }
        let filter = self.prefilter(selectors);
        for attempt in 1..=DUMP_ATTEMPTS {
            per_selector.iter_mut().for_each(|c| *c = 0);
            matching_any = 0;
            let stats = dump(&filter, &mut |e| {
                let mut any = false;
                for (i, s) in selectors.iter().enumerate() {
                    if matcher::matches(s, &e) {
                        per_selector[i] += 1;
                        any = true;
                    }
                }
                matching_any += u64::from(any);
                Ok(())
            })?;
            if !stats.interrupted {
                break;
            }
            if attempt == DUMP_ATTEMPTS {
                return Err(CtError::Incomplete(
                    "the table kept being resized while counting".into(),
                ));
            }
        }
        Ok(Counts { per_selector, matching_any, table_entries })
    }

    /// A kernel filter every selector implies (one selector: its own plan; several: their
    /// common family). Userspace matching stays authoritative.
    fn prefilter(&self, selectors: &[CheckedSelector]) -> KernelFilter {
        match selectors {
            [one] => matcher::kernel_plan(one, self.features_for(&[one])).filter,
            many => {
                KernelFilter { family: matcher::common_family(many), ..KernelFilter::default() }
            }
        }
    }

    /// Kill every entry matching any selector, sparing entries that touch `protected`.
    ///
    /// One in-kernel filtered flush per selector when the kernel can express each selector
    /// completely, nothing must be spared and there are at most [`MAX_KERNEL_FLUSHES`]
    /// selectors; otherwise one kernel-filtered dump with deletes streamed per chunk.
    pub fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        protected: &[Prefix],
    ) -> Result<KillReport, CtError> {
        let started = Instant::now();
        for s in selectors {
            matcher::check_supported(s).map_err(CtError::Unsupported)?;
        }
        if selectors.is_empty() {
            return Err(CtError::Unsupported("a kill needs at least one selector".into()));
        }
        let features = self.features_for(&selectors.iter().collect::<Vec<_>>());
        let plans: Vec<_> = selectors.iter().map(|s| matcher::kernel_plan(s, features)).collect();
        let kernel_can = features.mark
            && protected.is_empty()
            && plans.len() <= MAX_KERNEL_FLUSHES
            && plans.iter().all(|p| p.complete && !p.filter.is_empty());
        if kernel_can {
            let filters: Vec<_> = plans.into_iter().map(|p| p.filter).collect();
            return kernel_flush(&filters, KillPath::KernelFilteredFlush, started);
        }
        let filter = self.prefilter(selectors);
        let mut report = dump_and_delete(&filter, protected, started, &|e| {
            selectors.iter().any(|s| matcher::matches(s, e))
        })?;
        report.elapsed_us = elapsed_us(started);
        Ok(report)
    }

    /// Kill every entry (sparing `protected`, which forces the dump path).
    pub fn flush(&self, protected: &[Prefix]) -> Result<KillReport, CtError> {
        let started = Instant::now();
        if protected.is_empty() {
            return kernel_flush(&[KernelFilter::default()], KillPath::KernelFlush, started);
        }
        let mut report = dump_and_delete(&KernelFilter::default(), protected, started, &|_| true)?;
        report.elapsed_us = elapsed_us(started);
        Ok(report)
    }

    /// Kill exactly these entries. With protected prefixes, each entry is first fetched to
    /// learn its reply tuple (NAT and DNAT addresses), so a handle cannot be used to kill a
    /// protected connection.
    pub fn kill_handles(
        &self,
        handles: &[StateHandle],
        protected: &[Prefix],
    ) -> Result<KillReport, CtError> {
        let started = Instant::now();
        let mut deleter = Deleter::open()?;
        let mut spared = 0u64;
        let mut not_found_on_lookup = 0u64;
        if protected.is_empty() {
            for h in handles {
                let StateHandle::Conntrack { orig, id, zone } = h;
                deleter.push(orig, *id, *zone)?;
            }
        } else {
            let mut sock = CtSocket::open()?;
            for chunk in handles.chunks(GET_CHUNK) {
                let found = lookup(&mut sock, chunk)?;
                for (h, entry) in chunk.iter().zip(found) {
                    let StateHandle::Conntrack { orig, id, zone } = h;
                    match entry {
                        // A handle names one entry: the tuple *and* the id must agree.
                        Some(e) if e.id == *id => {
                            if matcher::touches(protected, &e) {
                                spared += 1;
                            } else {
                                deleter.push(orig, *id, *zone)?;
                            }
                        }
                        _ => not_found_on_lookup += 1,
                    }
                }
            }
        }
        let d = deleter.finish()?;
        Ok(KillReport {
            requested: handles.len() as u64,
            killed: d.killed(),
            not_found: d.not_found + not_found_on_lookup,
            spared,
            failed: d.failed,
            first_error: d.first_error,
            exact: d.exact,
            path: KillPath::Handles,
            table_passes: 0,
            elapsed_us: elapsed_us(started),
        })
    }
}

fn family_index(f: AddressFamily) -> usize {
    match f {
        AddressFamily::Ipv4 => 0,
        AddressFamily::Ipv6 => 1,
    }
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        TRUSTED => "verified",
        BROKEN => "broken (not used)",
        _ => "not verified yet",
    }
}

/// The first entry a (filtered) dump returns; the dump is abandoned after it.
fn first_entry(filter: &KernelFilter) -> Result<Option<CtEntry>, CtError> {
    const STOP: &str = "first entry found";
    let mut found = None;
    match dump(filter, &mut |e| {
        found = Some(e);
        Err(CtError::Aborted(STOP.into()))
    }) {
        Ok(_) => Ok(found),
        Err(CtError::Aborted(m)) if m == STOP => Ok(found),
        Err(e) => Err(e),
    }
}

/// Check on a live entry that a tuple-filtered dump returns entries with the filtered
/// addresses (read-only: two dumps, each abandoned after its first entry).
fn verify_tuple_filter(family: AddressFamily) -> Result<u8, CtError> {
    let base = KernelFilter { family: Some(family), ..KernelFilter::default() };
    let Some(e) = first_entry(&base)? else { return Ok(UNKNOWN) };
    let probe = KernelFilter {
        orig_src: Some(e.orig.src),
        orig_dst: Some(e.orig.dst),
        reply_dst: Some(e.reply.dst),
        ..base
    };
    Ok(match first_entry(&probe) {
        Ok(Some(r))
            if r.orig.src == e.orig.src
                && r.orig.dst == e.orig.dst
                && r.reply.dst == e.reply.dst =>
        {
            TRUSTED
        }
        Ok(Some(_)) => BROKEN,
        // The entry may have expired in between: decide another time.
        Ok(None) => UNKNOWN,
        Err(CtError::Kernel { .. }) => BROKEN,
        Err(e) => return Err(e),
    })
}

fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

fn table_entries_on(sock: &mut CtSocket) -> Result<u64, CtError> {
    let seq = sock.next_seq();
    let mut b = MsgBuilder::new();
    ct::stats_request(&mut b, seq);
    sock.send(b.as_bytes())?;
    loop {
        let Some(buf) = sock.recv(true)? else {
            continue;
        };
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            if msg.seq != seq {
                continue;
            }
            if msg.msg_type == NLMSG_ERROR {
                let (errno, _) = msg.error()?;
                if errno != 0 {
                    return Err(CtError::Kernel { op: "read conntrack statistics", errno: -errno });
                }
                continue;
            }
            if msg.msg_type == msg_type(IPCTNL_MSG_CT_GET_STATS) {
                let (_, attrs) = msg.nf_attrs()?;
                return ct::parse_stats(attrs);
            }
        }
    }
}

/// Wait for the ACK (or error) of request `seq`.
fn ack(sock: &mut CtSocket, seq: u32, op: &'static str) -> Result<(), CtError> {
    loop {
        let Some(buf) = sock.recv(true)? else {
            continue;
        };
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            if msg.msg_type != NLMSG_ERROR {
                continue;
            }
            let (errno, for_seq) = msg.error()?;
            if for_seq != seq {
                continue;
            }
            return if errno == 0 { Ok(()) } else { Err(CtError::Kernel { op, errno: -errno }) };
        }
    }
}

/// One or more in-kernel flushes, counted by the table size before and after (the kernel
/// returns no count). The delta is exact unless something else adds or removes entries
/// meanwhile, so the report says `exact: false`.
fn kernel_flush(
    filters: &[KernelFilter],
    path: KillPath,
    started: Instant,
) -> Result<KillReport, CtError> {
    let mut sock = CtSocket::open()?;
    let before = table_entries_on(&mut sock)?;
    let mut passes = 0u32;
    for f in filters {
        let seq = sock.next_seq();
        let mut b = MsgBuilder::new();
        ct::flush_request(&mut b, seq, f);
        sock.send(b.as_bytes())?;
        ack(&mut sock, seq, "filtered flush")?;
        passes += 1;
    }
    let after = table_entries_on(&mut sock)?;
    Ok(KillReport {
        requested: 0,
        killed: before.saturating_sub(after),
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: false,
        path,
        table_passes: passes,
        elapsed_us: elapsed_us(started),
    })
}

/// Run one dump, calling `on_entry` for every entry.
fn dump(
    filter: &KernelFilter,
    on_entry: &mut dyn FnMut(CtEntry) -> Result<(), CtError>,
) -> Result<DumpStats, CtError> {
    let mut sock = CtSocket::open()?;
    let seq = sock.next_seq();
    let mut b = MsgBuilder::new();
    ct::dump_request(&mut b, seq, filter);
    sock.send(b.as_bytes())?;
    let mut stats = DumpStats::default();
    loop {
        let Some(buf) = sock.recv(true)? else {
            continue;
        };
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            if msg.seq != seq {
                continue;
            }
            if msg.flags & NLM_F_DUMP_INTR != 0 {
                stats.interrupted = true;
            }
            match msg.msg_type {
                NLMSG_DONE => return Ok(stats),
                NLMSG_ERROR => {
                    let (errno, _) = msg.error()?;
                    if errno != 0 {
                        return Err(CtError::Kernel {
                            op: "dump the conntrack table",
                            errno: -errno,
                        });
                    }
                }
                NLMSG_OVERRUN => {
                    return Err(CtError::Incomplete("netlink reported an overrun".into()));
                }
                t if t == msg_type(IPCTNL_MSG_CT_NEW) => {
                    let (_, attrs) = msg.nf_attrs()?;
                    let entry = ct::parse_entry(attrs)?;
                    stats.entries += 1;
                    on_entry(entry)?;
                }
                _ => {}
            }
        }
    }
}

/// Fetch the entries for a chunk of handles in one round trip (`None` where missing).
fn lookup(sock: &mut CtSocket, handles: &[StateHandle]) -> Result<Vec<Option<CtEntry>>, CtError> {
    let mut b = MsgBuilder::with_capacity(handles.len() * MAX_DELETE_MSG);
    let first = sock.last_seq().wrapping_add(1);
    let mut seqs = Vec::with_capacity(handles.len());
    for h in handles {
        let StateHandle::Conntrack { orig, zone, .. } = h;
        let seq = sock.next_seq();
        seqs.push(seq);
        ct::get_request(&mut b, seq, orig, *zone);
    }
    sock.send(b.as_bytes())?;
    let mut out: Vec<Option<CtEntry>> = vec![None; handles.len()];
    let mut answered = 0usize;
    while answered < handles.len() {
        let Some(buf) = sock.recv(true)? else {
            continue;
        };
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            let seq = if msg.msg_type == NLMSG_ERROR { msg.error()?.1 } else { msg.seq };
            let idx = seq.wrapping_sub(first) as usize;
            if idx >= handles.len() || seqs[idx] != seq {
                continue;
            }
            if msg.msg_type == NLMSG_ERROR {
                let (errno, _) = msg.error()?;
                if errno != 0 && errno != -2 {
                    return Err(CtError::Kernel { op: "look up a state", errno: -errno });
                }
                answered += 1;
            } else if msg.msg_type == msg_type(IPCTNL_MSG_CT_NEW) {
                let (_, attrs) = msg.nf_attrs()?;
                out[idx] = Some(ct::parse_entry(attrs)?);
                answered += 1;
            }
        }
    }
    Ok(out)
}

/// Batched deletes by handle, many per `sendmsg`, without ACKs: the kernel answers only the
/// failures, which are drained after each send.
struct Deleter {
    sock: CtSocket,
    batch: MsgBuilder,
    sent: u64,
    not_found: u64,
    failed: u64,
    first_error: Option<String>,
    exact: bool,
}

impl Deleter {
    fn open() -> Result<Self, CtError> {
        Ok(Self {
            sock: CtSocket::open()?,
            batch: MsgBuilder::with_capacity(SEND_CHUNK),
            sent: 0,
            not_found: 0,
            failed: 0,
            first_error: None,
            exact: true,
        })
    }

    fn push(
        &mut self,
        orig: &statecull_proto::StateKey,
        id: u32,
        zone: u16,
    ) -> Result<(), CtError> {
        let seq = self.sock.next_seq();
        ct::delete_request(&mut self.batch, seq, orig, id, zone);
        self.sent += 1;
        if self.batch.len() + MAX_DELETE_MSG > SEND_CHUNK {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), CtError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        self.sock.send(self.batch.as_bytes())?;
        self.batch.clear();
        // sendmsg returned: every delete in the batch ran; collect the failures.
        loop {
            let buf = match self.sock.recv(false) {
                Ok(Some(buf)) => buf,
                Ok(None) => return Ok(()),
                Err(CtError::Io { source, .. }) if source.raw_os_error() == Some(105) => {
                    // ENOBUFS: some error answers were dropped, so counts are uncertain.
                    warn!("netlink receive queue overflowed; kill counts are approximate");
                    self.exact = false;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for msg in NlMsgs::new(buf) {
                let msg = msg?;
                if msg.msg_type != NLMSG_ERROR {
                    continue;
                }
                let (errno, _) = msg.error()?;
                match -errno {
                    0 => {}
                    2 => self.not_found += 1,
                    e => {
                        self.failed += 1;
                        if self.first_error.is_none() {
                            self.first_error = Some(crate::error::errno_text(e));
                        }
                    }
                }
            }
        }
    }

    fn finish(mut self) -> Result<Deleted, CtError> {
        self.send()?;
        Ok(Deleted {
            sent: self.sent,
            not_found: self.not_found,
            failed: self.failed,
            first_error: self.first_error,
            exact: self.exact,
        })
    }
}

struct Deleted {
    sent: u64,
    not_found: u64,
    failed: u64,
    first_error: Option<String>,
    exact: bool,
}

impl Deleted {
    fn killed(&self) -> u64 {
        self.sent.saturating_sub(self.not_found + self.failed)
    }
}

/// One kernel-filtered dump; every entry `wanted` accepts is deleted by handle unless it
/// touches a protected prefix. Deletes are sent while the dump is still running, on a second
/// socket, so memory stays bounded and the kill finishes soon after the walk.
fn dump_and_delete(
    filter: &KernelFilter,
    protected: &[Prefix],
    started: Instant,
    wanted: &dyn Fn(&CtEntry) -> bool,
) -> Result<KillReport, CtError> {
    let mut deleter = Deleter::open()?;
    let mut spared = 0u64;
    let mut passes = 0u32;
    let mut complete = false;
    for attempt in 1..=DUMP_ATTEMPTS {
        passes += 1;
        // Spared entries are seen again on a second walk; count them once.
        spared = 0;
        let mut err = None;
        let stats = dump(filter, &mut |e| {
            if !wanted(&e) {
                return Ok(());
            }
            if matcher::touches(protected, &e) {
                spared += 1;
                return Ok(());
            }
            if let Err(x) = deleter.push(&e.orig, e.id, e.zone) {
                err = Some(x);
                return Err(CtError::Aborted("delete failed".into()));
            }
            Ok(())
        });
        if let Some(e) = err {
            return Err(e);
        }
        if !stats?.interrupted {
            complete = true;
            break;
        }
        // A resize during the walk may have hidden entries: walk again. What is already
        // deleted is gone and will not be seen twice.
        warn!(attempt, "conntrack table resized during a kill; walking it again");
        deleter.send()?;
    }
    let d = deleter.finish()?;
    let killed = d.killed();
    let first_error = match (complete, d.first_error) {
        (false, None) => {
            Some("the table was resized during every walk; some states may remain".into())
        }
        (_, e) => e,
    };
    Ok(KillReport {
        requested: d.sent,
        killed,
        not_found: d.not_found,
        spared,
        failed: d.failed,
        first_error,
        exact: d.exact && complete,
        path: KillPath::DumpAndDelete,
        table_passes: passes,
        elapsed_us: elapsed_us(started),
    })
}

/// The protocol record for a dumped entry.
pub fn to_record(e: CtEntry) -> StateRecord {
    StateRecord {
        handle: StateHandle::Conntrack { orig: e.orig, id: e.id, zone: e.zone },
        key: e.orig,
        detail: StateDetail::Conntrack {
            reply: e.reply,
            mark: e.mark,
            zone: e.zone,
            status: e.status,
            tcp_state: e.tcp_state,
        },
        expires_in_secs: e.timeout,
        counters: e.counters,
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_at_least;

    #[test]
    fn kernel_release_parsing() {
        assert!(kernel_at_least("6.18.44-fc-v669", 4, 19));
        assert!(kernel_at_least("4.19.0", 4, 19));
        assert!(!kernel_at_least("4.14.300", 4, 19));
        assert!(!kernel_at_least("3.10.0-1160.el7", 4, 19));
        assert!(!kernel_at_least("unknown", 4, 19));
        assert!(kernel_at_least("10.0", 4, 19));
    }
}
