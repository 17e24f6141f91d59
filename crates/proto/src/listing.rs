//! What every backend does with a listing of its state table, written once: hand records to
//! a snapshot sink in bounded batches ([`Batcher`]), count matches per selector in one pass
//! ([`Tally`]), and say whether a state touches a protected prefix ([`touches`]).
//!
//! Pure: the backends (conntrack, pf) walk their tables and feed these.

use std::net::IpAddr;

use crate::model::{Prefix, StateRecord};

/// Receives snapshot batches; an `Err` (the client is gone) abandons the listing.
pub type Sink<'a> = dyn FnMut(Vec<StateRecord>) -> Result<(), String> + 'a;

/// Records for a snapshot, handed to the sink `batch` at a time.
pub struct Batcher<'s, 'a> {
    batch: usize,
    pending: Vec<StateRecord>,
    sent: u64,
    sink: &'s mut Sink<'a>,
}

impl std::fmt::Debug for Batcher<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("batch", &self.batch)
            .field("pending", &self.pending.len())
            .field("sent", &self.sent)
            .finish()
    }
}

impl<'s, 'a> Batcher<'s, 'a> {
    /// Batches of `batch` records (at least one).
    pub fn new(batch: usize, sink: &'s mut Sink<'a>) -> Self {
        let batch = batch.max(1);
        Self { batch, pending: Vec::with_capacity(batch), sent: 0, sink }
    }

    /// Add a record; a full batch goes to the sink.
    pub fn push(&mut self, record: StateRecord) -> Result<(), String> {
        self.pending.push(record);
        if self.pending.len() >= self.batch {
            let full = std::mem::replace(&mut self.pending, Vec::with_capacity(self.batch));
            self.sent += full.len() as u64;
            (self.sink)(full)?;
        }
        Ok(())
    }

    /// Send what is left; the number of records sent in all.
    pub fn finish(mut self) -> Result<u64, String> {
        if !self.pending.is_empty() {
            let rest = std::mem::take(&mut self.pending);
            self.sent += rest.len() as u64;
            (self.sink)(rest)?;
        }
        Ok(self.sent)
    }
}

/// What a count found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Matches per selector, in request order.
    pub per_selector: Vec<u64>,
    /// States matching at least one selector.
    pub matching_any: u64,
    /// States in the table.
    pub table_entries: u64,
}

/// Per-selector counts over one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    counts: Counts,
}

impl Tally {
    /// A tally for `selectors` selectors.
    pub fn new(selectors: usize) -> Self {
        Self { counts: Counts { per_selector: vec![0; selectors], ..Counts::default() } }
    }

    /// One state; `matches(i)` says whether it matches selector `i`.
    pub fn add(&mut self, matches: impl Fn(usize) -> bool) {
        self.counts.table_entries += 1;
        let mut any = false;
        for (i, n) in self.counts.per_selector.iter_mut().enumerate() {
            if matches(i) {
                *n += 1;
                any = true;
            }
        }
        self.counts.matching_any += u64::from(any);
    }

    /// Start over (a listing that has to be repeated).
    pub fn reset(&mut self) {
        let n = self.counts.per_selector.len();
        *self = Self::new(n);
    }

    /// The counts; `table_entries` is the number of states added unless the caller knows
    /// the table's size better (a kernel-filtered listing sees only part of it).
    pub fn finish(self) -> Counts {
        self.counts
    }
}

/// Does a state with these addresses touch a protected prefix?
pub fn touches(protected: &[Prefix], addrs: &[IpAddr]) -> bool {
    protected.iter().any(|p| addrs.iter().any(|a| p.contains(a)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> StateRecord {
        let key = |src: [u8; 4], dst: [u8; 4]| crate::model::StateKey {
            proto: 17,
            src: src.into(),
            dst: dst.into(),
            l4: crate::model::L4::Ports { src: 1, dst: 2 },
        };
        StateRecord {
            handle: crate::model::StateHandle::Pf { id: 1, creator_id: 1 },
            key: key([192, 0, 2, 1], [198, 51, 100, 1]),
            detail: crate::model::StateDetail::Conntrack {
                reply: key([198, 51, 100, 1], [192, 0, 2, 1]),
                mark: 0,
                zone: 0,
                status: 0,
                tcp_state: None,
            },
            expires_in_secs: None,
            counters: None,
        }
    }

    #[test]
    fn batches_are_bounded_and_nothing_is_lost() {
        let mut got: Vec<usize> = Vec::new();
        let mut sink = |b: Vec<StateRecord>| -> Result<(), String> {
            got.push(b.len());
            Ok(())
        };
        let mut batcher = Batcher::new(3, &mut sink);
        let one = record();
        for _ in 0..7 {
            batcher.push(one.clone()).unwrap();
        }
        assert_eq!(batcher.finish().unwrap(), 7);
        assert_eq!(got, vec![3, 3, 1]);
    }

    #[test]
    fn a_sink_error_is_passed_on() {
        let mut sink = |_: Vec<StateRecord>| -> Result<(), String> { Err("gone".into()) };
        let batcher = Batcher::new(1, &mut sink);
        assert_eq!(batcher.finish(), Ok(0), "nothing pending, nothing sent");
        let mut sink = |_: Vec<StateRecord>| -> Result<(), String> { Err("gone".into()) };
        let mut batcher = Batcher::new(1, &mut sink);
        assert_eq!(batcher.push(record()), Err("gone".into()));
    }

    #[test]
    fn tally_counts_each_selector_and_any() {
        let mut t = Tally::new(2);
        t.add(|i| i == 0);
        t.add(|_| true);
        t.add(|_| false);
        assert_eq!(
            t.finish(),
            Counts { per_selector: vec![2, 1], matching_any: 2, table_entries: 3 }
        );
    }

    #[test]
    fn touches_any_address_in_any_prefix() {
        let p: Prefix = "192.0.2.0/28".parse().unwrap();
        assert!(touches(&[p], &["203.0.113.1".parse().unwrap(), "192.0.2.9".parse().unwrap()]));
        assert!(!touches(&[p], &["192.0.2.16".parse().unwrap()]));
        assert!(!touches(&[], &["192.0.2.9".parse().unwrap()]));
    }
}
