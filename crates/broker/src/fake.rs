//! A backend that owns no table, for the hostile-peer tests and the dispatch fuzzer (cargo
//! feature `fake`, never in a release build).
//!
//! It records every call, can hold calls until released (to see what runs concurrently and
//! what waits), and lists a fixed number of made-up conntrack records. Where the backend's
//! meaning matters (protected prefixes), tests use the real pf backend over the pf model.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use statecull_proto::{
    AddressFamily, BackendInfo, BackendKind, Capabilities, CheckedHandle, CheckedIfName,
    CheckedSelector, CountReply, KillPath, KillReport, L4, Prefix, RulesetTicket, SelectorField,
    StateDetail, StateHandle, StateKey, StateRecord,
};

use crate::backend::{Backend, Sink};
use crate::error::BrokerError;

/// One call the broker made on the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Snapshot { selector: bool },
    Count { selectors: usize },
    KillMatching { selectors: usize, protected: usize },
    KillHandles { handles: usize, protected: usize },
    Flush { interface: bool, protected: usize },
}

#[derive(Debug, Default)]
struct Inner {
    records: usize,
    calls: Mutex<Vec<Call>>,
    held: Mutex<bool>,
    released: Condvar,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

/// A fake state table; clones share it, so a test keeps one and gives one to the broker.
#[derive(Clone, Debug, Default)]
pub struct FakeBackend(Arc<Inner>);

impl FakeBackend {
    /// A table whose snapshot lists `records` records.
    pub fn new(records: usize) -> Self {
        Self(Arc::new(Inner { records, ..Inner::default() }))
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forget the calls so far (a fuzzer drives one backend through millions of inputs).
    pub fn clear_calls(&self) {
        self.0.calls.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// From now on, counts and kills wait in the backend until [`Self::release`].
    pub fn hold(&self) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }

    pub fn release(&self) {
        *self.0.held.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.released.notify_all();
    }

    /// Calls inside the backend right now.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::SeqCst)
    }

    /// The most calls that were ever inside the backend at once.
    pub fn max_running(&self) -> usize {
        self.0.max_running.load(Ordering::SeqCst)
    }

    /// Wait until `n` calls are inside the backend (at most `within`).
    pub fn wait_running(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.running() < n {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    fn enter(&self, call: Call) -> Running<'_> {
        self.0.calls.lock().unwrap_or_else(|p| p.into_inner()).push(call);
        let now = self.0.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.0.max_running.fetch_max(now, Ordering::SeqCst);
        let mut held = self.0.held.lock().unwrap_or_else(|p| p.into_inner());
        while *held {
            held = self.0.released.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        Running(&self.0)
    }

    /// The i-th made-up record: a TCP connection from 192.0.2.x via NAT address 198.51.100.1.
    pub fn record(i: usize) -> StateRecord {
        let host = u8::try_from(i % 250).unwrap_or(0) + 1;
        let port = u16::try_from(i % 60_000).unwrap_or(0) + 1024;
        let key = StateKey {
            proto: statecull_proto::ipproto::TCP,
            src: IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)),
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 80)),
            l4: L4::Ports { src: port, dst: 443 },
        };
        let reply = StateKey {
            proto: key.proto,
            src: key.dst,
            dst: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
            l4: L4::Ports { src: 443, dst: port },
        };
        StateRecord {
            handle: StateHandle::Conntrack {
                orig: key,
                id: u32::try_from(i).unwrap_or(u32::MAX),
                zone: 0,
            },
            key,
            detail: StateDetail::Conntrack { reply, mark: 1, zone: 0, status: 0, tcp_state: None },
            expires_in_secs: Some(300),
            counters: None,
        }
    }
}

/// Counts a call out however it ends.
struct Running<'a>(&'a Inner);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

fn report(path: KillPath, killed: u64) -> KillReport {
    KillReport {
        requested: 0,
        killed,
        not_found: 0,
        spared: 0,
        failed: 0,
        first_error: None,
        exact: true,
        path,
        table_passes: 1,
        elapsed_us: 1,
        note: None,
        per_selector: Vec::new(),
    }
}

impl Backend for FakeBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            kind: BackendKind::Conntrack,
            kernel: "fake".into(),
            capabilities: Capabilities {
                selector_fields: SelectorField::ALL
                    .iter()
                    .copied()
                    .filter(|f| !matches!(f, SelectorField::Label | SelectorField::Gateway))
                    .collect(),
                kernel_mark_flush: true,
                kernel_tuple_flush: vec![AddressFamily::Ipv4],
                kernel_tuple_broken: Vec::new(),
                listing_only: Vec::new(),
                match_opposite: false,
                flush_by_interface: false,
                ruleset_ticket: false,
            },
        }
    }

    fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut Sink<'_>,
    ) -> Result<u64, BrokerError> {
        let _in = self.enter(Call::Snapshot { selector: selector.is_some() });
        let batch = batch.max(1);
        let mut sent = 0u64;
        let mut i = 0;
        while i < self.0.records {
            let end = (i + batch).min(self.0.records);
            sink((i..end).map(Self::record).collect())
                .map_err(|e| BrokerError::Backend(format!("snapshot consumer stopped: {e}")))?;
            sent += (end - i) as u64;
            i = end;
        }
        Ok(sent)
    }

    fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError> {
        let _in = self.enter(Call::Count { selectors: selectors.len() });
        let n = self.0.records as u64;
        Ok(CountReply {
            per_selector: vec![n; selectors.len()],
            matching_any: if selectors.is_empty() { 0 } else { n },
            table_entries: n,
            elapsed_us: 1,
        })
    }

    fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        _match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let _in = self
            .enter(Call::KillMatching { selectors: selectors.len(), protected: protected.len() });
        let mut r = report(KillPath::KernelFilteredFlush, 0);
        r.per_selector = vec![0; selectors.len()];
        Ok(r)
    }

    fn kill_handles(
        &self,
        handles: &[CheckedHandle],
        _match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let _in =
            self.enter(Call::KillHandles { handles: handles.len(), protected: protected.len() });
        let mut r = report(KillPath::Handles, 0);
        r.requested = handles.len() as u64;
        r.not_found = handles.len() as u64;
        Ok(r)
    }

    fn flush(
        &self,
        interface: Option<&CheckedIfName>,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        let _in =
            self.enter(Call::Flush { interface: interface.is_some(), protected: protected.len() });
        if interface.is_some() {
            return Err(BrokerError::Unsupported("the fake table has no interfaces".into()));
        }
        Ok(report(KillPath::KernelFlush, 0))
    }

    fn ruleset_ticket(&self) -> Result<RulesetTicket, BrokerError> {
        // Conntrack-like: no ruleset (`Request::check` refuses the verb first).
        Err(BrokerError::Unsupported("the fake table has no filter ruleset".into()))
    }
}
