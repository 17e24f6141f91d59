//! Who gets a connection slot, and how refusals are logged. Pure: the caller passes uids and
//! the time.
//!
//! Slots are few (one thread each). A shared pool of `max_connections` is split so that no
//! single uid can take it all (`max_connections_per_user`), and two slots stand outside the
//! pool: one for root (the operator must always get in, e.g. to kill by hand) and one for the
//! engine's uid (a reconnecting engine must never find the broker full). Idle connections
//! are closed by the server after the idle timeout, so even the pool frees itself.
//!
//! Refused peers (not allowed, or no slot) are logged at most once per uid per window, with
//! the number left out: a peer flooding connects cannot flood the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The slot a connection holds; give it back with [`Slots::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// From the shared pool.
    Pool { uid: u32 },
    /// The one slot kept for root or the engine's uid.
    Reserved { uid: u32 },
}

/// Why a connection got no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoSlot {
    pub open: usize,
    pub of_this_user: usize,
    pub reason: &'static str,
}

/// Connection slot bookkeeping.
#[derive(Debug)]
pub struct Slots {
    max_pool: usize,
    max_per_user: usize,
    engine_uid: Option<u32>,
    pool_used: usize,
    per_uid: HashMap<u32, usize>,
    reserved_used: HashMap<u32, bool>,
}

impl Slots {
    /// `max_pool` shared slots, at most `max_per_user` of them for one uid; one extra slot
    /// each for root and `engine_uid`.
    pub fn new(max_pool: usize, max_per_user: usize, engine_uid: Option<u32>) -> Self {
        Self {
            max_pool: max_pool.max(1),
            max_per_user: max_per_user.clamp(1, max_pool.max(1)),
            engine_uid,
            pool_used: 0,
            per_uid: HashMap::new(),
            reserved_used: HashMap::new(),
        }
    }

    fn has_reserve(&self, uid: u32) -> bool {
        uid == 0 || Some(uid) == self.engine_uid
    }

    /// Connections open now (pool and reserved).
    pub fn open(&self) -> usize {
        self.pool_used + self.reserved_used.values().filter(|u| **u).count()
    }

    /// A slot for a connection of `uid`, if there is one.
    pub fn admit(&mut self, uid: u32) -> Result<Slot, NoSlot> {
        let mine = self.per_uid.get(&uid).copied().unwrap_or(0);
        // Root and the engine are never held to the per-user share of the pool: they are
        // trusted, and their reserved slot is the floor, not the ceiling.
        let under_share = mine < self.max_per_user || self.has_reserve(uid);
        if self.pool_used < self.max_pool && under_share {
            self.pool_used += 1;
            *self.per_uid.entry(uid).or_insert(0) += 1;
            return Ok(Slot::Pool { uid });
        }
        if self.has_reserve(uid) {
            let used = self.reserved_used.entry(uid).or_insert(false);
            if !*used {
                *used = true;
                return Ok(Slot::Reserved { uid });
            }
        }
        let reason = if self.pool_used >= self.max_pool {
            "every connection slot is taken"
        } else {
            "this user holds its share of the connection slots"
        };
        Err(NoSlot { open: self.open(), of_this_user: mine, reason })
    }

    pub fn release(&mut self, slot: Slot) {
        match slot {
            Slot::Pool { uid } => {
                self.pool_used = self.pool_used.saturating_sub(1);
                if let Some(n) = self.per_uid.get_mut(&uid) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_uid.remove(&uid);
                    }
                }
            }
            Slot::Reserved { uid } => {
                self.reserved_used.insert(uid, false);
            }
        }
    }
}

/// What to do with one refusal's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLine {
    /// Write it; `left_out` refusals of this uid since the last line were not logged.
    Write { left_out: u64 },
    /// Leave it out (counted).
    Skip,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    left_out: u64,
}

/// At most one log line per uid per window.
#[derive(Debug)]
pub struct RefusalLog {
    window: Duration,
    uids: HashMap<u32, Window>,
}

/// Uids remembered at most; beyond that the oldest windows are forgotten (a line may then
/// be written early, never lost).
const MAX_TRACKED_UIDS: usize = 1024;

impl RefusalLog {
    pub fn new(window: Duration) -> Self {
        Self { window, uids: HashMap::new() }
    }

    /// A refusal of `uid` at `now`: log it or not.
    pub fn note(&mut self, uid: u32, now: Instant) -> LogLine {
        if let Some(w) = self.uids.get_mut(&uid) {
            if now.saturating_duration_since(w.started) < self.window {
                w.left_out += 1;
                return LogLine::Skip;
            }
            let left_out = w.left_out;
            *w = Window { started: now, left_out: 0 };
            return LogLine::Write { left_out };
        }
        if self.uids.len() >= MAX_TRACKED_UIDS {
            let window = self.window;
            self.uids.retain(|_, w| now.saturating_duration_since(w.started) < window);
            if self.uids.len() >= MAX_TRACKED_UIDS {
                self.uids.clear();
            }
        }
        self.uids.insert(uid, Window { started: now, left_out: 0 });
        LogLine::Write { left_out: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENGINE: u32 = 998;
    const OPERATOR: u32 = 1000;
    const OTHER: u32 = 1001;

    #[test]
    fn one_user_cannot_take_the_pool() {
        let mut s = Slots::new(16, 8, Some(ENGINE));
        let held: Vec<Slot> = (0..8).map(|_| s.admit(OPERATOR).unwrap()).collect();
        let e = s.admit(OPERATOR).unwrap_err();
        assert_eq!(e.reason, "this user holds its share of the connection slots");
        // Others still get in.
        assert!(matches!(s.admit(OTHER), Ok(Slot::Pool { .. })));
        assert!(matches!(s.admit(ENGINE), Ok(Slot::Pool { .. })));
        for h in held {
            s.release(h);
        }
        assert!(s.admit(OPERATOR).is_ok());
    }

    #[test]
    fn a_full_pool_still_admits_root_and_the_engine_once() {
        let mut s = Slots::new(4, 2, Some(ENGINE));
        for uid in [OPERATOR, OPERATOR, OTHER, OTHER] {
            s.admit(uid).unwrap();
        }
        assert_eq!(s.admit(OTHER).unwrap_err().reason, "every connection slot is taken");
        let e1 = s.admit(ENGINE).unwrap();
        assert_eq!(e1, Slot::Reserved { uid: ENGINE });
        assert!(s.admit(ENGINE).is_err(), "one reserved slot, not unlimited");
        assert_eq!(s.admit(0).unwrap(), Slot::Reserved { uid: 0 });
        assert!(s.admit(0).is_err());
        assert_eq!(s.open(), 6);
        s.release(e1);
        assert_eq!(s.admit(ENGINE).unwrap(), Slot::Reserved { uid: ENGINE });
    }

    #[test]
    fn the_engine_is_not_held_to_a_share() {
        let mut s = Slots::new(4, 1, Some(ENGINE));
        for _ in 0..4 {
            assert!(matches!(s.admit(ENGINE), Ok(Slot::Pool { .. })));
        }
        assert!(matches!(s.admit(ENGINE), Ok(Slot::Reserved { .. })));
    }

    #[test]
    fn refusals_are_logged_once_per_window_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.note(OTHER, t0), LogLine::Write { left_out: 0 });
        for i in 1..=1000 {
            assert_eq!(log.note(OTHER, t0 + Duration::from_millis(i)), LogLine::Skip);
        }
        // Another uid has its own window.
        assert_eq!(log.note(OPERATOR, t0), LogLine::Write { left_out: 0 });
        assert_eq!(
            log.note(OTHER, t0 + Duration::from_secs(10)),
            LogLine::Write { left_out: 1000 }
        );
    }

    #[test]
    fn refusal_log_memory_is_bounded() {
        let t0 = Instant::now();
        let mut log = RefusalLog::new(Duration::from_secs(10));
        for uid in 0..100_000 {
            log.note(uid, t0);
        }
        assert!(log.uids.len() <= MAX_TRACKED_UIDS);
    }
}
