//! The kernel conversations behind the backend's operations: statistics, ACKs, dumps,
//! lookups, batched deletes and filtered flushes.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use statecull_proto::{CheckedHandle, KillPath, KillReport, Prefix, StateHandle, StateKey};
use tracing::warn;

use crate::codec::{MsgBuilder, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_OVERRUN, NlMsgs};
use crate::ct::{
    self, CtEntry, IPCTNL_MSG_CT_GET_STATS, IPCTNL_MSG_CT_NEW, KernelFilter, msg_type,
};
use crate::error::CtError;
use crate::matcher;
use crate::sys::{CtSocket, SEND_CHUNK};

/// A dump interrupted by a table resize is retried this many times.
pub(crate) const DUMP_ATTEMPTS: usize = 3;
/// Largest delete-by-handle message (IPv6 tuple, zone, id).
pub(crate) const MAX_DELETE_MSG: usize = 160;
/// Dumped entries remembered to drop repeats: when the entry a dump was to resume at has
/// gone, the kernel restarts that hash bucket and sends its first entries again.
const DEDUP_WINDOW: usize = 1024;
/// How long a kill may wait for an event listener to release killed entries.
const SETTLE_LIMIT: Duration = Duration::from_secs(60);
const SETTLE_STEP: Duration = Duration::from_millis(50);
/// `NFNLGRP_CONNTRACK_DESTROY` (3) as a bit of the first group word.
const DESTROY_GROUP_BIT: u32 = 1 << (3 - 1);
/// `NETLINK_NETFILTER`.
const NETLINK_NETFILTER: u32 = 12;

pub(crate) fn elapsed_us(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// The number of entries in this namespace's table (one `GET_STATS`).
pub(crate) fn table_entries_on(sock: &mut CtSocket) -> Result<u64, CtError> {
    let seq = sock.next_seq();
    let mut b = MsgBuilder::new();
    ct::stats_request(&mut b, seq);
    sock.send(b.as_bytes())?;
    loop {
        let Some(buf) = sock.recv(true)? else { continue };
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
pub(crate) fn ack(sock: &mut CtSocket, seq: u32, op: &'static str) -> Result<(), CtError> {
    loop {
        let Some(buf) = sock.recv(true)? else { continue };
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

/// Summary of a dump.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DumpStats {
    /// The kernel flagged the dump as interrupted (hash table resized while walking).
    pub(crate) interrupted: bool,
}

/// Drops entries a dump sends twice.
struct Dedup {
    seen: HashSet<(u32, StateKey)>,
    order: VecDeque<(u32, StateKey)>,
}

impl Dedup {
    fn new() -> Self {
        Self {
            seen: HashSet::with_capacity(DEDUP_WINDOW),
            order: VecDeque::with_capacity(DEDUP_WINDOW),
        }
    }

    /// True the first time an entry is seen (within the window).
    fn first_time(&mut self, e: &CtEntry) -> bool {
        let key = (e.id, e.orig);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > DEDUP_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// Run one dump, calling `on_entry` once per entry.
pub(crate) fn dump(
    filter: &KernelFilter,
    on_entry: &mut dyn FnMut(CtEntry) -> Result<(), CtError>,
) -> Result<DumpStats, CtError> {
    let mut sock = CtSocket::open()?;
    let seq = sock.next_seq();
    let mut b = MsgBuilder::new();
    ct::dump_request(&mut b, seq, filter);
    sock.send(b.as_bytes())?;
    let mut stats = DumpStats::default();
    let mut dedup = Dedup::new();
    loop {
        let Some(buf) = sock.recv(true)? else { continue };
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
                    if dedup.first_time(&entry) {
                        on_entry(entry)?;
                    }
                }
                _ => {}
            }
        }
    }
}

/// The first `limit` entries a (filtered) dump returns; the dump is abandoned after them.
pub(crate) fn first_entries(filter: &KernelFilter, limit: usize) -> Result<Vec<CtEntry>, CtError> {
    const STOP: &str = "enough entries";
    let mut found = Vec::new();
    match dump(filter, &mut |e| {
        found.push(e);
        if found.len() >= limit { Err(CtError::Aborted(STOP.into())) } else { Ok(()) }
    }) {
        Ok(_) => Ok(found),
        Err(CtError::Aborted(m)) if m == STOP => Ok(found),
        Err(e) => Err(e),
    }
}

/// Fetch the entries for a chunk of handles in one round trip (`None` where missing).
pub(crate) fn lookup(
    sock: &mut CtSocket,
    handles: &[CheckedHandle],
) -> Result<Vec<Option<CtEntry>>, CtError> {
    let mut b = MsgBuilder::with_capacity(handles.len() * MAX_DELETE_MSG);
    let mut seqs = Vec::with_capacity(handles.len());
    for h in handles {
        let StateHandle::Conntrack { orig, zone, .. } = h.get() else {
            return Err(not_conntrack());
        };
        let seq = sock.next_seq();
        seqs.push(seq);
        ct::get_request(&mut b, seq, orig, *zone);
    }
    sock.send(b.as_bytes())?;
    let mut out: Vec<Option<CtEntry>> = vec![None; handles.len()];
    let mut answered = 0usize;
    while answered < handles.len() {
        let Some(buf) = sock.recv(true)? else { continue };
        for msg in NlMsgs::new(buf) {
            let msg = msg?;
            let seq = if msg.msg_type == NLMSG_ERROR { msg.error()?.1 } else { msg.seq };
            let Some(idx) = seqs.iter().position(|s| *s == seq) else { continue };
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

/// A handle of another backend reached the conntrack backend.
pub(crate) fn not_conntrack() -> CtError {
    CtError::Unsupported("a pf state handle cannot name a conntrack entry".into())
}

/// Batched deletes by handle, many per `sendmsg`, without ACKs: the kernel answers only the
/// failures, which are drained after each send.
pub(crate) struct Deleter {
    sock: CtSocket,
    batch: MsgBuilder,
    in_batch: u64,
    /// Deletes the kernel processed (their `sendmsg` returned).
    pub(crate) delivered: u64,
    /// Deletes queued or sent but never processed because a send failed.
    pub(crate) lost: u64,
    pub(crate) not_found: u64,
    pub(crate) failed: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) exact: bool,
    /// Per selector: which selector each delete was for (one byte per delete, by sequence
    /// number from `first_seq`: at most 64 selectors), and the deletes delivered and refused
    /// per selector, so a kill can say what each selector killed. Empty without selectors.
    tags: Vec<u8>,
    first_seq: Option<u32>,
    delivered_per: Vec<u64>,
    refused_per: Vec<u64>,
}

impl Deleter {
    /// A deleter for deletes on behalf of `selectors` selectors (0: handles, a flush).
    pub(crate) fn open(selectors: usize) -> Result<Self, CtError> {
        Ok(Self {
            sock: CtSocket::open()?,
            batch: MsgBuilder::with_capacity(SEND_CHUNK),
            in_batch: 0,
            delivered: 0,
            lost: 0,
            not_found: 0,
            failed: 0,
            first_error: None,
            exact: true,
            tags: Vec::new(),
            first_seq: None,
            delivered_per: vec![0; selectors],
            refused_per: vec![0; selectors],
        })
    }

    /// Queue the delete of one entry, for selector `tag` (ignored without selectors).
    pub(crate) fn push(
        &mut self,
        tag: usize,
        orig: &StateKey,
        id: u32,
        zone: u16,
    ) -> Result<(), CtError> {
        let seq = self.sock.next_seq();
        if !self.delivered_per.is_empty() {
            self.first_seq.get_or_insert(seq);
            self.tags.push(u8::try_from(tag.min(self.delivered_per.len() - 1)).unwrap_or(u8::MAX));
        }
        ct::delete_request(&mut self.batch, seq, orig, id, zone);
        self.in_batch += 1;
        if self.batch.len() + MAX_DELETE_MSG > SEND_CHUNK {
            self.send()?;
        }
        Ok(())
    }

    /// Send what is queued and collect the failures it caused.
    pub(crate) fn send(&mut self) -> Result<(), CtError> {
        if self.in_batch == 0 {
            return Ok(());
        }
        let sent = self.sock.send(self.batch.as_bytes());
        let n = std::mem::take(&mut self.in_batch);
        self.batch.clear();
        if let Err(e) = sent {
            self.lost += n;
            return Err(e);
        }
        // sendmsg returned: every delete in the batch ran.
        let done = usize::try_from(self.delivered).unwrap_or(usize::MAX);
        for t in self.tags.iter().skip(done).take(usize::try_from(n).unwrap_or(usize::MAX)) {
            if let Some(d) = self.delivered_per.get_mut(usize::from(*t)) {
                *d += 1;
            }
        }
        self.delivered += n;
        loop {
            let buf = match self.sock.recv(false) {
                Ok(Some(buf)) => buf,
                Ok(None) => return Ok(()),
                Err(CtError::Io { source, .. }) if source.raw_os_error() == Some(105) => {
                    // ENOBUFS: some failure answers were dropped, so counts are uncertain.
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
                let (errno, seq) = msg.error()?;
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
                if errno != 0 {
                    refuse(&self.tags, self.first_seq, &mut self.refused_per, seq);
                }
            }
        }
    }

    pub(crate) fn killed(&self) -> u64 {
        self.delivered.saturating_sub(self.not_found + self.failed)
    }

    /// Killed per selector (empty without selectors).
    pub(crate) fn killed_per_selector(&self) -> Vec<u64> {
        self.delivered_per
            .iter()
            .zip(&self.refused_per)
            .map(|(d, r)| d.saturating_sub(*r))
            .collect()
    }

    /// The report for what this deleter did.
    pub(crate) fn report(&self, requested: u64, path: KillPath, started: Instant) -> KillReport {
        KillReport {
            requested,
            killed: self.killed(),
            not_found: self.not_found,
            spared: 0,
            failed: self.failed,
            first_error: self.first_error.clone(),
            exact: self.exact && self.lost == 0,
            path,
            table_passes: 0,
            elapsed_us: elapsed_us(started),
            note: None,
            per_selector: self.killed_per_selector(),
        }
    }
}

/// Count a refused delete (sequence number `seq`) against the selector it was for.
fn refuse(tags: &[u8], first_seq: Option<u32>, refused_per: &mut [u64], seq: u32) {
    let Some(first) = first_seq else { return };
    let at = usize::try_from(seq.wrapping_sub(first)).unwrap_or(usize::MAX);
    if let Some(t) = tags.get(at)
        && let Some(r) = refused_per.get_mut(usize::from(*t))
    {
        *r += 1;
    }
}

/// Turn a failure after the table was already changed into a report of what was done: the
/// caller must learn both that it failed and how much it killed.
pub(crate) fn partial(mut report: KillReport, err: &CtError) -> KillReport {
    report.exact = false;
    let text = err.to_string();
    report.note = Some(format!("stopped part way: {text}; the counts cover what was done before"));
    report.first_error.get_or_insert(text);
    report
}

/// Reads `/proc/self/net/netlink` (opened once, before any sandbox) to see whether a
/// conntrack DESTROY event listener exists in this namespace. A "reliable" listener such as
/// conntrackd keeps killed entries counted until their events are delivered (measured: the
/// count drains at ~25k entries/s), so a table-size count must wait for it.
#[derive(Debug)]
pub(crate) struct ListenerProbe {
    file: Mutex<Option<File>>,
}

impl ListenerProbe {
    pub(crate) fn open() -> Self {
        // thread-self: the namespace of the calling thread (tests enter namespaces per thread).
        let file = File::open("/proc/thread-self/net/netlink")
            .or_else(|_| File::open("/proc/self/net/netlink"))
            .ok();
        Self { file: Mutex::new(file) }
    }

    pub(crate) fn destroy_listener(&self) -> bool {
        let Ok(mut guard) = self.file.lock() else { return false };
        let Some(file) = guard.as_mut() else { return false };
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_string(&mut text).is_err() {
            return false;
        }
        destroy_listener_in(&text)
    }
}

/// Does this `/proc/net/netlink` text show a NETLINK_NETFILTER socket subscribed to
/// conntrack DESTROY events?
pub(crate) fn destroy_listener_in(text: &str) -> bool {
    text.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let proto = cols.get(1).and_then(|c| c.parse::<u32>().ok());
        let groups = cols.get(3).and_then(|c| u32::from_str_radix(c, 16).ok());
        proto == Some(NETLINK_NETFILTER) && groups.is_some_and(|g| g & DESTROY_GROUP_BIT != 0)
    })
}

/// One or more in-kernel flushes, counted by the table size before and after (the kernel
/// returns no count). The delta is exact unless something else adds or removes entries
/// meanwhile, so the report says `exact: false`. With a DESTROY listener present, the count
/// is read again until it stops falling.
pub(crate) fn kernel_flush(
    filters: &[KernelFilter],
    path: KillPath,
    started: Instant,
    listeners: &ListenerProbe,
) -> Result<KillReport, CtError> {
    let mut sock = CtSocket::open()?;
    let before = table_entries_on(&mut sock)?;
    let mut passes = 0u32;
    let mut failure = None;
    // Each flush's share: the table's size before and after it (one GET_STATS each).
    let mut per_filter = vec![0u64; filters.len()];
    let mut size = before;
    for (i, f) in filters.iter().enumerate() {
        let seq = sock.next_seq();
        let mut b = MsgBuilder::new();
        ct::flush_request(&mut b, seq, f);
        let done = sock.send(b.as_bytes()).and_then(|()| ack(&mut sock, seq, "filtered flush"));
        match done {
            Ok(()) => passes += 1,
            Err(e) if passes == 0 => return Err(e),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
        if filters.len() > 1 {
            let now = table_entries_on(&mut sock)?;
            per_filter[i] = size.saturating_sub(now);
            size = now;
        }
    }
    let mut after = table_entries_on(&mut sock)?;
    let mut note = None;
    if listeners.destroy_listener() {
        let waiting = Instant::now();
        loop {
            std::thread::sleep(SETTLE_STEP);
            let now = table_entries_on(&mut sock)?;
            if now >= after || waiting.elapsed() > SETTLE_LIMIT {
                after = after.min(now);
                break;
            }
            after = now;
        }
        note = Some(format!(
            "a conntrack event listener (conntrackd?) holds killed entries until it has read \
             their events; the count waited {} ms for the table to settle",
            waiting.elapsed().as_millis()
        ));
    }
    let killed = before.saturating_sub(after);
    let report = KillReport {
        requested: 0,
        killed,
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: false,
        path,
        table_passes: passes,
        elapsed_us: elapsed_us(started),
        note,
        per_selector: split(per_filter, killed, path),
    };
    Ok(match failure {
        Some(e) => partial(report, &e),
        None => report,
    })
}

/// Each flush's share of `killed`. One flush has it all; with several, what each one's
/// before/after sizes showed, and whatever an event listener released only after the last
/// one (the settled total is lower) is shared out in proportion, so the parts sum to the
/// total. A whole-table flush has no selectors: empty.
fn split(mut per_filter: Vec<u64>, killed: u64, path: KillPath) -> Vec<u64> {
    if path == KillPath::KernelFlush {
        return Vec::new();
    }
    match per_filter.len() {
        0 => Vec::new(),
        1 => vec![killed],
        _ => {
            let seen: u64 = per_filter.iter().sum();
            if seen != killed && seen > 0 {
                let mut given = 0u64;
                for p in per_filter.iter_mut() {
                    *p = u64::try_from(u128::from(*p) * u128::from(killed) / u128::from(seen))
                        .unwrap_or(u64::MAX);
                    given += *p;
                }
                if let Some(last) = per_filter.last_mut() {
                    *last += killed.saturating_sub(given);
                }
            }
            per_filter
        }
    }
}

/// Kernel-filtered dumps; every entry `wanted` accepts is deleted by handle unless it
/// touches a protected prefix. Deletes go out while the dump is still running, on a second
/// socket, so memory stays bounded and the kill ends soon after the walk. A walk interrupted
/// by a table resize is repeated (what is already deleted is gone).
pub(crate) fn dump_and_delete(
    filter: &KernelFilter,
    protected: &[Prefix],
    started: Instant,
    selectors: usize,
    wanted: &dyn Fn(&CtEntry) -> Option<usize>,
) -> Result<KillReport, CtError> {
    let mut deleter = Deleter::open(selectors)?;
    let mut spared = 0u64;
    let mut selected = 0u64;
    let mut passes = 0u32;
    let mut complete = false;
    let mut failure: Option<CtError> = None;
    for _ in 0..DUMP_ATTEMPTS {
        passes += 1;
        // Spared entries are seen again on a second walk; count them once.
        spared = 0;
        let mut push_error = None;
        let walked = dump(filter, &mut |e| {
            let Some(tag) = wanted(&e) else {
                return Ok(());
            };
            if matcher::touches(protected, &e) {
                spared += 1;
                return Ok(());
            }
            selected += 1;
            deleter.push(tag, &e.orig, e.id, e.zone).map_err(|x| {
                push_error = Some(x);
                CtError::Aborted("a delete failed".into())
            })
        });
        match (walked, push_error) {
            (_, Some(e)) | (Err(e), None) => {
                failure = Some(e);
                break;
            }
            (Ok(stats), None) if !stats.interrupted => {
                complete = true;
                break;
            }
            (Ok(_), None) => {
                warn!("conntrack table resized during a kill; walking it again");
                if let Err(e) = deleter.send() {
                    failure = Some(e);
                    break;
                }
            }
        }
    }
    // Deliver whatever is still queued, also after a failure.
    if let Err(e) = deleter.send() {
        failure.get_or_insert(e);
    }
    let mut report = deleter.report(selected, KillPath::DumpAndDelete, started);
    report.spared = spared;
    report.table_passes = passes;
    if let Some(e) = failure {
        if deleter.delivered == 0 {
            return Err(e);
        }
        return Ok(partial(report, &e));
    }
    if !complete {
        report.exact = false;
        report.note =
            Some("the table was resized during every walk; some matching states may remain".into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::destroy_listener_in;

    const HEADER: &str = "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n";

    #[test]
    fn destroy_listeners_are_recognised() {
        // conntrackd: NETLINK_NETFILTER (12) subscribed to NEW|UPDATE|DESTROY (0x7).
        let with = format!(
            "{HEADER}ffff8880 12  4242       00000007 0        0        0     2        0        1234\n"
        );
        assert!(destroy_listener_in(&with));
        // Only NEW events, or another protocol with the same bit: no.
        let new_only = format!(
            "{HEADER}ffff8880 12  4242       00000001 0        0        0     2        0        1234\n"
        );
        assert!(!destroy_listener_in(&new_only));
        let route = format!(
            "{HEADER}ffff8880 0   4242       00000004 0        0        0     2        0        1234\n"
        );
        assert!(!destroy_listener_in(&route));
        assert!(!destroy_listener_in(HEADER));
        assert!(!destroy_listener_in("garbage\nmore garbage with words\n"));
    }
}
