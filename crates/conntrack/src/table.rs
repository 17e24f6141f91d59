//! The conntrack backend's operations: list, count, kill and flush, each on its own socket,
//! and what the kernel can be trusted to filter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use statecull_proto::listing::{Batcher, Sink, Tally};
use statecull_proto::{
    AddressFamily, CheckedHandle, CheckedSelector, KillPath, KillReport, Prefix, StateDetail,
    StateHandle, StateRecord,
};
use tracing::{debug, info, warn};

use crate::codec::MsgBuilder;
use crate::ct::{self, CtEntry, KernelFilter};
use crate::error::CtError;
use crate::matcher::{self, KernelFeatures};
use crate::ops::{
    DUMP_ATTEMPTS, Deleter, ListenerProbe, ack, dump, dump_and_delete, elapsed_us, first_entries,
    kernel_flush, lookup, not_conntrack, partial, table_entries_on,
};
use crate::sys::{CtSocket, kernel_release};

/// Most kernel flushes one `KillMatching` may cost before a single dump-and-delete pass is
/// cheaper. Each flush walks the whole table in the kernel (about 0.28 s per 1M entries
/// here); the dump path exports every entry to userland once and deletes the victims by
/// handle while the dump runs, which makes the kernel restart dump buckets. Measured with
/// `cargo xtask bench conntrack-paths --entries 1000000` (fresh tables, k of sixteen marks):
/// k flushes took 0.28 s (k = 1) to 2.76 s (k = 16), the dump 0.9 s (one selector, kernel
/// prefiltered) and 7.3–9.8 s (several, only the family prefiltered), so flushes won at every
/// k measured. The rule keeps flushes up to the largest k measured.
pub const MAX_KERNEL_FLUSHES: usize = 16;
/// Handles looked up per round trip when protected prefixes must be checked.
const GET_CHUNK: usize = 512;
/// Entries of each probe dump checked against the filter that produced them.
const PROBE_SAMPLE: usize = 64;
/// An undecided tuple-filter probe (no entries of that family yet) is retried at most this
/// often, so requests do not pay for probes on every call.
const PROBE_RETRY: Duration = Duration::from_secs(30);

/// What is known about the kernel's `CTA_FILTER` address matching for one family.
const UNKNOWN: u8 = 0;
const TRUSTED: u8 = 1;
const BROKEN: u8 = 2;

/// Whether the kernel's tuple filter may be used for one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TupleFilter {
    /// Tested on live entries: it selects exactly the right ones.
    Verified,
    /// Refused by the kernel, or tested and found to select wrong entries.
    Unusable,
    /// Not tested yet (no entries of that family to test on); not used until it is.
    Unverified,
}

/// The Linux conntrack table of the current network namespace.
#[derive(Debug, Clone)]
pub struct Conntrack {
    mark: bool,
    /// The kernel accepts `CTA_FILTER` on a flush (probed at open).
    tuple_accepted: bool,
    /// Per family (IPv4, IPv6): UNKNOWN, TRUSTED or BROKEN; probed on real entries.
    tuple_verdict: Arc<[AtomicU8; 2]>,
    last_probe: Arc<Mutex<[Option<Instant>; 2]>>,
    listeners: Arc<ListenerProbe>,
    /// Fixed features (tests of the fallback paths); no probing.
    forced: Option<KernelFeatures>,
    kernel: String,
}

/// Counts of a `Count` request (the same type as every backend's).
pub use statecull_proto::listing::Counts;

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let ma = parts.next().and_then(|p| p.parse::<u32>().ok());
    let mi = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (ma, mi) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
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

/// The same address with its last bit flipped: an address the probe entry does not have.
fn flip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v) ^ 1).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(v) ^ 1).into()),
    }
}

fn same_entry(a: &CtEntry, b: &CtEntry) -> bool {
    a.id == b.id && a.orig == b.orig
}

/// Check on live entries that tuple-filtered dumps return exactly what they were asked for
/// (read-only: a few dumps, each abandoned after a sample):
/// * filtered on one entry's own addresses, every answer has those addresses and the entry
///   is among them;
/// * with any one of the three addresses changed, that entry is absent and every answer still
///   satisfies the filter (a kernel that ignored a field would return it).
fn verify_tuple_filter(family: AddressFamily) -> Result<u8, CtError> {
    let base = KernelFilter { family: Some(family), ..KernelFilter::default() };
    let Some(e) = first_entries(&base, 1)?.into_iter().next() else { return Ok(UNKNOWN) };
    let exact = KernelFilter {
        orig_src: Some(e.orig.src),
        orig_dst: Some(e.orig.dst),
        reply_dst: Some(e.reply.dst),
        ..base
    };
    let sample = |f: &KernelFilter| match first_entries(f, PROBE_SAMPLE) {
        Ok(got) => Ok(Some(got)),
        Err(CtError::Kernel { .. }) => Ok(None),
        Err(x) => Err(x),
    };
    let Some(got) = sample(&exact)? else { return Ok(BROKEN) };
    if got.iter().any(|r| !exact.admits(r)) {
        return Ok(BROKEN);
    }
    if !got.iter().any(|r| same_entry(r, &e)) {
        // The entry expired in between: decide another time.
        return Ok(UNKNOWN);
    }
    let variants = [
        KernelFilter { orig_src: Some(flip(e.orig.src)), ..exact.clone() },
        KernelFilter { orig_dst: Some(flip(e.orig.dst)), ..exact.clone() },
        KernelFilter { reply_dst: Some(flip(e.reply.dst)), ..exact.clone() },
    ];
    for v in &variants {
        let Some(got) = sample(v)? else { return Ok(BROKEN) };
        if got.iter().any(|r| same_entry(r, &e) || !v.admits(r)) {
            return Ok(BROKEN);
        }
    }
    Ok(TRUSTED)
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
            last_probe: Arc::new(Mutex::new([None, None])),
            listeners: Arc::new(ListenerProbe::open()),
            forced: None,
            kernel,
        };
        // Verify address matching on whatever entries exist now; families without entries
        // are verified when first needed.
        for family in [AddressFamily::Ipv4, AddressFamily::Ipv6] {
            ct.verified(family);
        }
        info!(
            kernel = %ct.kernel,
            entries,
            kernel_mark_flush = mark,
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
            last_probe: Arc::new(Mutex::new([None, None])),
            listeners: Arc::new(ListenerProbe::open()),
            forced: Some(features),
            kernel: kernel_release(),
        }
    }

    fn verdict(&self, family: AddressFamily) -> u8 {
        self.tuple_verdict[family_index(family)].load(Ordering::SeqCst)
    }

    /// Whether tuple filters may be used for `family` (as known now, without probing).
    pub fn tuple_filter(&self, family: AddressFamily) -> TupleFilter {
        if let Some(f) = self.forced {
            return if f.tuple(family) { TupleFilter::Verified } else { TupleFilter::Unusable };
        }
        match (self.tuple_accepted, self.verdict(family)) {
            (false, _) | (_, BROKEN) => TupleFilter::Unusable,
            (true, TRUSTED) => TupleFilter::Verified,
            _ => TupleFilter::Unverified,
        }
    }

    /// Is `CTA_FILTER` address matching trustworthy for `family`? Probes on real entries if
    /// not known yet (at most every [`PROBE_RETRY`] while undecided).
    fn verified(&self, family: AddressFamily) -> bool {
        if !self.tuple_accepted {
            return false;
        }
        match self.verdict(family) {
            TRUSTED => return true,
            BROKEN => return false,
            _ => {}
        }
        if let Ok(mut last) = self.last_probe.lock() {
            let slot = &mut last[family_index(family)];
            if slot.is_some_and(|t| t.elapsed() < PROBE_RETRY) {
                return false;
            }
            *slot = Some(Instant::now());
        }
        let verdict = verify_tuple_filter(family).unwrap_or_else(|e| {
            debug!(%family, error = %e, "tuple filter probe failed; will retry");
            UNKNOWN
        });
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
            tuple_v4: self.tuple_filter(AddressFamily::Ipv4) == TupleFilter::Verified,
            tuple_v6: self.tuple_filter(AddressFamily::Ipv6) == TupleFilter::Verified,
        }
    }

    /// The kernel features for a request, probing only the families whose tuple filter the
    /// request would actually use.
    fn features_for(&self, selectors: &[&CheckedSelector]) -> KernelFeatures {
        if self.forced.is_none() {
            for s in selectors {
                if let Some(f) = s.family()
                    && matcher::uses_tuple_fields(s)
                {
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
        sink: &mut Sink<'_>,
    ) -> Result<u64, CtError> {
        let filter = match selector {
            Some(s) => matcher::kernel_plan(s, self.features_for(&[s])).filter,
            None => KernelFilter::default(),
        };
        let mut batcher = Batcher::new(batch, sink);
        let stats = dump(&filter, &mut |e| {
            if selector.is_some_and(|s| !matcher::matches(s, &e)) {
                return Ok(());
            }
            batcher.push(to_record(e)).map_err(CtError::Aborted)
        })?;
        if stats.interrupted {
            // A resize moved entries while we walked: some may be missing.
            return Err(CtError::Incomplete(
                "the conntrack table was resized during the listing; run it again".into(),
            ));
        }
        batcher.finish().map_err(CtError::Aborted)
    }

    /// Count the entries matching each selector, in one dump.
    pub fn count(&self, selectors: &[CheckedSelector]) -> Result<Counts, CtError> {
        debug_assert!(selectors.iter().all(|s| matcher::check_supported(s).is_ok()));
        let table_entries = self.table_entries()?;
        let mut tally = Tally::new(selectors.len());
        if selectors.is_empty() {
            return Ok(Counts { table_entries, ..tally.finish() });
        }
        let filter = self.prefilter(selectors);
        for attempt in 1..=DUMP_ATTEMPTS {
            tally.reset();
            let stats = dump(&filter, &mut |e| {
                tally.add(|i| matcher::matches(&selectors[i], &e));
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
        // The dump was kernel-prefiltered: the table's size comes from GET_STATS.
        Ok(Counts { table_entries, ..tally.finish() })
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
    /// selectors; otherwise one kernel-filtered dump with deletes streamed per chunk. A
    /// failure after the table changed comes back as a report of what was done, marked
    /// inexact, with the error.
    pub fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        protected: &[Prefix],
    ) -> Result<KillReport, CtError> {
        let started = Instant::now();
        // `Request::check` refused fields the capabilities do not list; this re-check is
        // only for the broker's tests.
        debug_assert!(selectors.iter().all(|s| matcher::check_supported(s).is_ok()));
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
            return kernel_flush(&filters, KillPath::KernelFilteredFlush, started, &self.listeners);
        }
        let filter = self.prefilter(selectors);
        dump_and_delete(&filter, protected, started, selectors.len(), &|e| {
            selectors.iter().position(|s| matcher::matches(s, e))
        })
    }

    /// For `cargo xtask bench conntrack-paths` only: kill by one kernel flush per selector
    /// (`flushes`, when the kernel can express each) or by one dump with deletes, whatever
    /// [`MAX_KERNEL_FLUSHES`] says, to measure where one becomes cheaper than the other.
    #[doc(hidden)]
    pub fn kill_matching_by(
        &self,
        selectors: &[CheckedSelector],
        flushes: bool,
    ) -> Result<KillReport, CtError> {
        let started = Instant::now();
        let features = self.features_for(&selectors.iter().collect::<Vec<_>>());
        let plans: Vec<_> = selectors.iter().map(|s| matcher::kernel_plan(s, features)).collect();
        if flushes {
            if !(features.mark && plans.iter().all(|p| p.complete && !p.filter.is_empty())) {
                return Err(CtError::Unsupported(
                    "the kernel cannot express these selectors as flushes".into(),
                ));
            }
            let filters: Vec<_> = plans.into_iter().map(|p| p.filter).collect();
            return kernel_flush(&filters, KillPath::KernelFilteredFlush, started, &self.listeners);
        }
        let filter = self.prefilter(selectors);
        dump_and_delete(&filter, &[], started, selectors.len(), &|e| {
            selectors.iter().position(|s| matcher::matches(s, e))
        })
    }

    /// Kill every entry (sparing `protected`, which forces the dump path).
    pub fn flush(&self, protected: &[Prefix]) -> Result<KillReport, CtError> {
        let started = Instant::now();
        if protected.is_empty() {
            return kernel_flush(
                &[KernelFilter::default()],
                KillPath::KernelFlush,
                started,
                &self.listeners,
            );
        }
        dump_and_delete(&KernelFilter::default(), protected, started, 0, &|_| Some(0))
    }

    /// Kill exactly these entries. With protected prefixes, each entry is first fetched to
    /// learn its reply tuple (NAT and DNAT addresses), so a handle cannot be used to kill a
    /// protected connection.
    pub fn kill_handles(
        &self,
        handles: &[CheckedHandle],
        protected: &[Prefix],
    ) -> Result<KillReport, CtError> {
        let started = Instant::now();
        let mut deleter = Deleter::open(0)?;
        let mut spared = 0u64;
        let mut gone = 0u64;
        let mut result = queue_handles(&mut deleter, handles, protected, &mut spared, &mut gone);
        // Deliver whatever is queued, also after a failure.
        if let Err(e) = deleter.send() {
            result = result.and(Err(e));
        }
        let mut report = deleter.report(handles.len() as u64, KillPath::Handles, started);
        report.spared = spared;
        report.not_found += gone;
        match result {
            Ok(()) => Ok(report),
            Err(e) if deleter.delivered == 0 => Err(e),
            Err(e) => Ok(partial(report, &e)),
        }
    }
}

fn queue_handles(
    deleter: &mut Deleter,
    handles: &[CheckedHandle],
    protected: &[Prefix],
    spared: &mut u64,
    gone: &mut u64,
) -> Result<(), CtError> {
    if protected.is_empty() {
        for h in handles {
            let StateHandle::Conntrack { orig, id, zone } = h.get() else {
                return Err(not_conntrack());
            };
            deleter.push(0, orig, *id, *zone)?;
        }
        return Ok(());
    }
    let mut sock = CtSocket::open()?;
    for chunk in handles.chunks(GET_CHUNK) {
        let found = lookup(&mut sock, chunk)?;
        for (h, entry) in chunk.iter().zip(found) {
            let StateHandle::Conntrack { orig, id, zone } = h.get() else {
                return Err(not_conntrack());
            };
            match entry {
                // A handle names one entry: the tuple *and* the id must agree.
                Some(e) if e.id == *id => {
                    if matcher::touches(protected, &e) {
                        *spared += 1;
                    } else {
                        deleter.push(0, orig, *id, *zone)?;
                    }
                }
                _ => *gone += 1,
            }
        }
    }
    Ok(())
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
    use super::{flip, kernel_at_least};

    #[test]
    fn kernel_release_parsing() {
        assert!(kernel_at_least("6.18.44-fc-v669", 4, 19));
        assert!(kernel_at_least("4.19.0", 4, 19));
        assert!(!kernel_at_least("4.14.300", 4, 19));
        assert!(!kernel_at_least("3.10.0-1160.el7", 4, 19));
        assert!(!kernel_at_least("unknown", 4, 19));
        assert!(kernel_at_least("10.0", 4, 19));
    }

    #[test]
    fn flipped_addresses_differ_in_one_bit() {
        let a: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(flip(a), "198.51.100.0".parse::<std::net::IpAddr>().unwrap());
        let b: std::net::IpAddr = "2001:db8::".parse().unwrap();
        assert_eq!(flip(b), "2001:db8::1".parse::<std::net::IpAddr>().unwrap());
    }
}
