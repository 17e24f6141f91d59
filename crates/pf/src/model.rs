//! An in-memory model of pf's state table and its kill semantics, as pf-kernel.md §2
//! describes the kernel (`pf_killstates`, `pf_killstates_row`, `kill_match`,
//! `pf_find_state_all`, `pf_clear_states`, the listing paths).
//!
//! States live in id-hash rows (one "lock" per row visited) and are attached to key objects
//! through wire and stack lists, like the kernel's `V_pf_idhash` and `V_pf_keyhash`. Every
//! operation counts what the kernel would pay: full passes, rows locked, states examined,
//! key-hash lookups, id lookups and states exported. This module works on decoded requests;
//! [`crate::model_device::ModelDevice`] puts the real request bytes in front of it.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::types::{
    AF_INET6, Direction, PfKey, PfKill, PfState, RuleAddr, pf_addr_bytes, port_op, twin_search,
};

pub use crate::types::DEFAULT_ROWS;

/// What the model's operations cost, in the kernel's terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Kill/clear requests and listings served.
    pub requests: u64,
    /// Full walks over every id-hash row.
    pub passes: u64,
    /// Row lock/unlock pairs taken.
    pub rows_locked: u64,
    /// States compared against a filter (a row restarts after every kill, as in the kernel).
    pub states_examined: u64,
    /// Key-hash lookups (one per `kill_match` twin search).
    pub key_lookups: u64,
    /// Id-hash lookups (kills by id).
    pub id_lookups: u64,
    /// States copied out by listings.
    pub states_exported: u64,
    /// States unlinked.
    pub killed: u64,
}

impl std::ops::Sub for Cost {
    type Output = Cost;
    fn sub(self, o: Cost) -> Cost {
        Cost {
            requests: self.requests - o.requests,
            passes: self.passes - o.passes,
            rows_locked: self.rows_locked - o.rows_locked,
            states_examined: self.states_examined - o.states_examined,
            key_lookups: self.key_lookups - o.key_lookups,
            id_lookups: self.id_lookups - o.id_lookups,
            states_exported: self.states_exported - o.states_exported,
            killed: self.killed - o.killed,
        }
    }
}

/// Why the model refused to insert a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Another state with the same key, direction and interface exists (the kernel's
    /// `pf_state_key_attach` collision).
    #[error("state key collision with state {0:#x}")]
    Collision(u64),
    #[error("a state with id {0:#x} exists")]
    DuplicateId(u64),
    #[error("wire and stack keys disagree on family or protocol")]
    BadKeys,
}

#[derive(Clone, Debug, Default)]
struct KeyLists {
    /// States using this key as their `PF_SK_WIRE` key.
    wire: Vec<u32>,
    /// States using this key as their `PF_SK_STACK` key.
    stack: Vec<u32>,
}

/// The model of one pf instance's state table.
#[derive(Clone, Debug)]
pub struct PfModel {
    hostid: u32,
    rows: Vec<Vec<u32>>,
    slots: Vec<Option<PfState>>,
    free: Vec<u32>,
    by_id: HashMap<(u64, u32), u32>,
    keys: HashMap<PfKey, KeyLists>,
    /// Labels of each rule, by rule number.
    rules: Vec<Vec<String>>,
    /// The active main filter ruleset's ticket: a commit gives it a new one, as the kernel's
    /// `pf_begin_rules` (`++inactive.ticket`) and `pf_commit_rules` (`active.ticket =
    /// inactive.ticket`) do.
    ruleset_ticket: u32,
    next_id: u64,
    live: usize,
    cost: Cost,
}

fn masked_eq(af: u8, a: &[u8; 16], m: &[u8; 16], b: &[u8; 16]) -> bool {
    // pf_match_addr: IPv4 compares only the first 32-bit word.
    let n = if af == AF_INET6 { 16 } else { 4 };
    (0..n).all(|i| a[i] & m[i] == b[i] & m[i])
}

/// `PF_MATCHA(neg, addr, mask, b, af)`.
fn match_addr(r: &RuleAddr, b: &IpAddr, af: u8) -> bool {
    masked_eq(af, &r.addr, &r.mask, &pf_addr_bytes(b)) != r.neg
}

/// `pf_match_port(op, a1, a2, p)` on host-order values.
pub fn match_port(op: u8, a1: u16, a2: u16, p: u16) -> bool {
    match op {
        port_op::IRG => p > a1 && p < a2,
        port_op::XRG => p < a1 || p > a2,
        port_op::RRG => p >= a1 && p <= a2,
        port_op::EQ => p == a1,
        port_op::NE => p != a1,
        port_op::LT => p < a1,
        port_op::LE => p <= a1,
        port_op::GT => p > a1,
        port_op::GE => p >= a1,
        _ => false,
    }
}

impl PfModel {
    /// An empty table with `rows` id-hash rows (rounded up to a power of two) and this host id.
    pub fn new(rows: usize, hostid: u32) -> Self {
        let rows = rows.max(1).next_power_of_two();
        Self {
            hostid,
            rows: vec![Vec::new(); rows],
            slots: Vec::new(),
            free: Vec::new(),
            by_id: HashMap::new(),
            keys: HashMap::new(),
            rules: Vec::new(),
            // The ruleset loaded at boot (`pfctl -f /etc/pf.conf`): one commit.
            ruleset_ticket: 1,
            next_id: 0,
            live: 0,
            cost: Cost::default(),
        }
    }

    /// The active main filter ruleset: `(rules, ticket)`, what `GETRULES` answers.
    pub fn ruleset(&self) -> (u32, u32) {
        (u32::try_from(self.rules.len()).unwrap_or(u32::MAX), self.ruleset_ticket)
    }

    /// Commit a new main filter ruleset with the same rules (what `pfctl -f` does when
    /// pfSense or OPNsense reload the filter): the ruleset gets a new ticket, which is
    /// returned. States keep their rule numbers (the model does not re-evaluate them).
    pub fn commit_ruleset(&mut self) -> u32 {
        self.ruleset_ticket = self.ruleset_ticket.wrapping_add(1);
        self.ruleset_ticket
    }

    pub fn hostid(&self) -> u32 {
        self.hostid
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// Forget what earlier operations cost (e.g. building the table).
    pub fn reset_cost(&mut self) {
        self.cost = Cost::default();
    }

    /// Add a rule with these labels (at most 5, as `PF_RULE_MAX_LABEL_COUNT`); returns its
    /// number.
    pub fn add_rule(&mut self, labels: &[&str]) -> u32 {
        self.rules.push(
            labels
                .iter()
                .take(crate::types::PF_RULE_MAX_LABEL_COUNT)
                .map(|l| (*l).to_owned())
                .collect(),
        );
        u32::try_from(self.rules.len() - 1).unwrap_or(u32::MAX)
    }

    pub fn rule_labels(&self, rule: u32) -> &[String] {
        self.rules.get(rule as usize).map_or(&[], |v| v.as_slice())
    }

    fn row_of(&self, id: u64) -> usize {
        // PF_IDHASH: the id is stored big-endian; the kernel hashes be64toh(id).
        // Rows are a power of two, so only the low bits matter.
        usize::try_from(u64::from_be(id) & (self.rows.len() as u64 - 1)).unwrap_or(0)
    }

    /// Insert a state. Id 0 means "assign one" (creator = this host), as the kernel does.
    pub fn insert(&mut self, mut s: PfState) -> Result<u64, ModelError> {
        if s.wire.af != s.stack.af || s.wire.proto != s.stack.proto {
            return Err(ModelError::BadKeys);
        }
        if s.id == 0 {
            self.next_id += 1;
            s.id = self.next_id.to_be();
            s.creatorid = self.hostid;
        }
        if self.by_id.contains_key(&(s.id, s.creatorid)) {
            return Err(ModelError::DuplicateId(s.id));
        }
        // pf_state_key_attach: one state per key, direction and interface.
        for (key, wire) in [(&s.wire, true), (&s.stack, false)] {
            if let Some(lists) = self.keys.get(key) {
                let list = if wire { &lists.wire } else { &lists.stack };
                for slot in list {
                    if let Some(o) = self.state_at(*slot)
                        && o.direction == s.direction
                        && o.ifname == s.ifname
                    {
                        return Err(ModelError::Collision(o.id));
                    }
                }
            }
        }
        let slot = match self.free.pop() {
            Some(f) => f,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let id = s.id;
        let row = self.row_of(id);
        self.rows[row].push(slot);
        self.by_id.insert((s.id, s.creatorid), slot);
        self.keys.entry(s.wire).or_default().wire.push(slot);
        self.keys.entry(s.stack).or_default().stack.push(slot);
        self.slots[slot as usize] = Some(s);
        self.live += 1;
        Ok(id)
    }

    fn state_at(&self, slot: u32) -> Option<&PfState> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Every live state, in id-hash row order.
    pub fn states(&self) -> impl Iterator<Item = &PfState> + '_ {
        self.rows.iter().flatten().filter_map(|slot| self.state_at(*slot))
    }

    pub fn get(&self, id: u64, creatorid: u32) -> Option<&PfState> {
        self.by_id.get(&(id, creatorid)).and_then(|s| self.state_at(*s))
    }

    /// `pf_unlink_state`.
    fn unlink(&mut self, slot: u32) -> Option<PfState> {
        let s = self.slots.get_mut(slot as usize)?.take()?;
        let row = self.row_of(s.id);
        self.rows[row].retain(|x| *x != slot);
        self.by_id.remove(&(s.id, s.creatorid));
        for (key, wire) in [(s.wire, true), (s.stack, false)] {
            if let Some(lists) = self.keys.get_mut(&key) {
                let list = if wire { &mut lists.wire } else { &mut lists.stack };
                list.retain(|x| *x != slot);
                if lists.wire.is_empty() && lists.stack.is_empty() {
                    self.keys.remove(&key);
                }
            }
        }
        self.free.push(slot);
        self.live -= 1;
        self.cost.killed += 1;
        Some(s)
    }

    /// `pf_find_state_all(key, dir, &more)` (sys/netpfil/pf/pf.c): the key looked up in the
    /// key hash, then the states that use it as their `PF_SK_WIRE` key (`dir` IN) or their
    /// `PF_SK_STACK` key (`dir` OUT), in list order. The kernel never checks a state's
    /// direction on this walk: the first state on the list is returned and every other one
    /// counts into `more`, whatever its direction.
    fn find_state_all(&mut self, key: &PfKey, dir: Direction) -> (Option<u32>, usize) {
        self.cost.key_lookups += 1;
        let Some(lists) = self.keys.get(key) else { return (None, 0) };
        let list = match dir {
            Direction::In => &lists.wire,
            Direction::Out => &lists.stack,
        };
        let mut live = list.iter().copied().filter(|slot| self.state_at(*slot).is_some());
        let first = live.next();
        (first, live.count())
    }

    /// `pf_kill_matching_state` (sys/netpfil/pf/pf_ioctl.c): unlink what
    /// `pf_find_state_all` returned unless `more` is non-zero.
    fn kill_twin(&mut self, key: &PfKey, dir: Direction) -> u64 {
        match self.find_state_all(key, dir) {
            (Some(slot), 0) => u64::from(self.unlink(slot).is_some()),
            _ => 0,
        }
    }

    /// `pf_killstates_row`'s match of one state against a kill filter.
    pub fn kill_matches(&self, k: &PfKill, s: &PfState) -> bool {
        let sk = if k.nat { &s.stack } else { &s.wire };
        let (src, sport, dst, dport) = match s.direction {
            Direction::Out => (sk.addr[1], sk.port[1], sk.addr[0], sk.port[0]),
            Direction::In => (sk.addr[0], sk.port[0], sk.addr[1], sk.port[1]),
        };
        let af = sk.af;
        let rt = s.rt_addr.unwrap_or_else(|| crate::types::unspecified(af));
        (k.af == 0 || af == k.af)
            && (k.proto == 0 || sk.proto == k.proto)
            && match_addr(&k.src, &src, af)
            && match_addr(&k.dst, &dst, af)
            && match_addr(&k.rt_addr, &rt, af)
            && (k.src.port_op == port_op::NONE
                || match_port(k.src.port_op, k.src.port[0], k.src.port[1], sport))
            && (k.dst.port_op == port_op::NONE
                || match_port(k.dst.port_op, k.dst.port[0], k.dst.port[1], dport))
            && (k.label.is_empty() || self.rule_labels(s.rule).contains(&k.label))
            && (k.ifname.is_empty() || k.ifname == s.kill_ifname())
    }

    /// `pf_killstates`: by id (O(1), every other field ignored), or one pass over all rows.
    pub fn kill_states(&mut self, k: &PfKill) -> u32 {
        self.cost.requests += 1;
        if k.id != 0 {
            let creator = if k.creatorid == 0 { self.hostid } else { k.creatorid };
            self.cost.id_lookups += 1;
            let slot = self.by_id.get(&(k.id, creator)).copied();
            return u32::from(slot.and_then(|s| self.unlink(s)).is_some());
        }
        self.pass(|m, s| m.kill_matches(k, s), k.kill_match)
    }

    /// `pf_clear_states`: only the interface and `kill_match` count.
    pub fn clear_states(&mut self, ifname: &str, kill_match: bool) -> u32 {
        self.cost.requests += 1;
        let ifname = ifname.to_owned();
        self.pass(move |_, s| ifname.is_empty() || s.kill_ifname() == ifname, kill_match)
    }

    /// One full pass: every row locked, each matching state unlinked (then the row scan
    /// restarts from its head), its twin looked up when `kill_match` is set.
    fn pass(&mut self, matches: impl Fn(&PfModel, &PfState) -> bool, kill_match: bool) -> u32 {
        self.cost.passes += 1;
        let mut killed = 0u64;
        for row in 0..self.rows.len() {
            self.cost.rows_locked += 1;
            'restart: loop {
                let mut victim = None;
                for slot in self.rows[row].iter().copied() {
                    self.cost.states_examined += 1;
                    if let Some(s) = self.state_at(slot)
                        && matches(self, s)
                    {
                        victim = Some(slot);
                        break;
                    }
                }
                let Some(slot) = victim else { break 'restart };
                let twin = self.state_at(slot).map(twin_search);
                if self.unlink(slot).is_some() {
                    killed += 1;
                }
                if kill_match && let Some((key, dir)) = twin {
                    killed += self.kill_twin(&key, dir);
                }
            }
        }
        u32::try_from(killed).unwrap_or(u32::MAX)
    }

    /// Listing (netlink `GETSTATES` / `DIOCGETSTATESV2`): one pass that skips empty rows
    /// without locking. `keep` is the kernel-side filter.
    pub fn list(&mut self, keep: impl Fn(&PfState) -> bool) -> Vec<PfState> {
        let mut cursor = self.list_begin();
        self.list_next(&mut cursor, keep, usize::MAX)
    }

    /// Start a listing that is handed out piece by piece, as a netlink dump is: the kernel
    /// fills the socket's buffer a row at a time while userland reads, so neither side ever
    /// holds the whole table. Counted as one request and one pass.
    pub fn list_begin(&mut self) -> ListCursor {
        self.cost.requests += 1;
        self.cost.passes += 1;
        ListCursor { row: 0 }
    }

    /// The next whole rows of a listing, until at least `at_least` states are kept or the
    /// table ends (an empty answer: the listing is over).
    pub fn list_next(
        &mut self,
        cursor: &mut ListCursor,
        keep: impl Fn(&PfState) -> bool,
        at_least: usize,
    ) -> Vec<PfState> {
        let mut out = Vec::new();
        while cursor.row < self.rows.len() && out.len() < at_least {
            let row = &self.rows[cursor.row];
            cursor.row += 1;
            if row.is_empty() {
                continue;
            }
            self.cost.rows_locked += 1;
            for slot in row {
                if let Some(s) = self.slots.get(*slot as usize).and_then(Option::as_ref)
                    && keep(s)
                {
                    out.push(s.clone());
                }
            }
        }
        self.cost.states_exported += out.len() as u64;
        out
    }
}

/// Where a piecewise listing stands (see [`PfModel::list_begin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    row: usize,
}
