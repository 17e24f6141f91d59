//! The client that speaks to a pf kernel through whichever interfaces it has: it probes them
//! once ([`PfClient::probe`]) and then builds, sends and reads requests as bytes over a
//! [`PfDevice`].

use statecull_netlink::{MsgBuilder, NLMSG_DONE, NLMSG_ERROR, NlMsgs};

use crate::abi::{DIOCCLRSTATESNV, DIOCKILLSTATESNV, STATE_EXPORT_LEN, decode_export};
use crate::device::PfDevice;
use crate::nl::{self, StateFilter, cmd};
use crate::nv::{self, Nvlist};
use crate::types::{PfKill, PfState};

/// Kill-by-id requests per netlink datagram.
const ID_BATCH: usize = 256;

/// What went wrong talking to pf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PfError {
    #[error("pf refused {op}: errno {errno}")]
    Kernel { op: &'static str, errno: i32 },
    #[error("malformed answer from pf: {0}")]
    Codec(String),
    #[error("{0}")]
    Unsupported(String),
    /// The consumer of a listing stopped taking it (a snapshot's client is gone).
    #[error("listing abandoned: {0}")]
    Aborted(String),
    /// A request that would kill every state; refused before it reaches the kernel.
    #[error("refusing a pf kill request that matches every state")]
    Everything,
}

/// Which interfaces a kernel answered to at start-up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transports {
    /// The resolved id of the "pfctl" generic-netlink family.
    pub nl_family: Option<u16>,
    pub nl_kill: bool,
    pub nv_kill: bool,
    pub v2_list: bool,
    /// Netlink `GETRULES` answers with the filter ruleset's ticket (read-only probe).
    pub nl_rules: bool,
    /// `DIOCGETRULES` answers with it (read-only probe).
    pub ioctl_rules: bool,
}

/// A kill that matches nothing, to probe kill interfaces safely: the id fast path with an
/// id and creator no state has (every other field is ignored on that path).
fn probe_kill() -> PfKill {
    PfKill::by_id(u64::MAX, u32::MAX)
}

/// Speaks to a pf kernel through whichever interfaces it has.
#[derive(Debug)]
pub struct PfClient<D: PfDevice> {
    dev: D,
    transports: Transports,
    seq: u32,
    buf: Vec<u8>,
}

impl<D: PfDevice> PfClient<D> {
    /// Probe which interfaces exist (netlink family, netlink kill, nvlist kill, V2 listing).
    pub fn probe(dev: D) -> Result<Self, PfError> {
        let mut c =
            Self { dev, transports: Transports::default(), seq: 1, buf: Vec::with_capacity(65536) };
        c.transports.nl_family = c.resolve_family().ok().flatten();
        if c.transports.nl_family.is_some() {
            c.transports.nl_kill = c.kill_netlink(cmd::KILLSTATES, &probe_kill()).is_ok();
        }
        c.transports.nv_kill = c.kill_nv(DIOCKILLSTATESNV, &probe_kill()).is_ok();
        if c.transports.nl_family.is_some() {
            c.transports.nl_rules = c.ruleset_ticket_netlink().is_ok();
        }
        c.transports.ioctl_rules = c.ruleset_ticket_ioctl().is_ok();
        c.transports.v2_list = c.dev.get_states_v2(&mut []).is_ok();
        if !c.transports.nl_kill && !c.transports.nv_kill {
            return Err(PfError::Unsupported(
                "this kernel answers neither pf netlink KILLSTATES nor DIOCKILLSTATESNV \
                 (FreeBSD 13.1 or newer is needed)"
                    .into(),
            ));
        }
        if c.transports.nl_family.is_none() && !c.transports.v2_list {
            return Err(PfError::Unsupported("no way to list pf states on this kernel".into()));
        }
        Ok(c)
    }

    /// A client on a second handle of the same kernel ([`PfDevice::another`]), speaking the
    /// interfaces this one found (no second probe).
    pub fn alongside(&self, dev: D) -> Self {
        Self { dev, transports: self.transports, seq: 1, buf: Vec::with_capacity(65536) }
    }

    /// A second client on its own handle of the same kernel.
    pub fn another(&self) -> Result<Self, PfError> {
        let dev = self
            .dev
            .another()
            .map_err(|e| PfError::Kernel { op: "open a second handle on pf", errno: e.0 })?;
        Ok(self.alongside(dev))
    }

    pub fn transports(&self) -> Transports {
        self.transports
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn resolve_family(&mut self) -> Result<Option<u16>, PfError> {
        let seq = self.next_seq();
        let mut b = MsgBuilder::new();
        nl::family_request(&mut b, seq);
        self.dev
            .nl_send(b.as_bytes())
            .map_err(|e| PfError::Kernel { op: "resolve the pf netlink family", errno: e.0 })?;
        let mut id = None;
        loop {
            self.dev
                .nl_recv(&mut self.buf)
                .map_err(|e| PfError::Kernel { op: "resolve the pf netlink family", errno: e.0 })?;
            for msg in NlMsgs::new(&self.buf) {
                let msg = msg.map_err(|e| PfError::Codec(e.to_string()))?;
                if msg.seq != seq {
                    continue;
                }
                if msg.msg_type == NLMSG_ERROR {
                    let (e, _) = msg.error().map_err(|e| PfError::Codec(e.to_string()))?;
                    if e != 0 {
                        return Ok(None);
                    }
                    return Ok(id);
                }
                if let Some(found) =
                    nl::parse_family_reply(&msg).map_err(|e| PfError::Codec(e.to_string()))?
                {
                    id = Some(found);
                }
            }
        }
    }

    fn kill_netlink(&mut self, command: u8, k: &PfKill) -> Result<u32, PfError> {
        let family = self
            .transports
            .nl_family
            .ok_or_else(|| PfError::Unsupported("no pf netlink".into()))?;
        let seq = self.next_seq();
        let mut b = MsgBuilder::new();
        nl::kill_request(&mut b, family, seq, command, k);
        let op = if command == cmd::CLRSTATES { "clear states" } else { "kill states" };
        self.dev.nl_send(b.as_bytes()).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
        let mut killed = None;
        loop {
            self.dev.nl_recv(&mut self.buf).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
            for msg in NlMsgs::new(&self.buf) {
                let msg = msg.map_err(|e| PfError::Codec(e.to_string()))?;
                if msg.seq != seq {
                    continue;
                }
                if msg.msg_type == NLMSG_ERROR {
                    let (e, _) = msg.error().map_err(|e| PfError::Codec(e.to_string()))?;
                    if e != 0 {
                        return Err(PfError::Kernel { op, errno: -e });
                    }
                    return killed
                        .ok_or_else(|| PfError::Codec("kill acknowledged without a count".into()));
                }
                if let Some(n) =
                    nl::parse_kill_reply(&msg).map_err(|e| PfError::Codec(e.to_string()))?
                {
                    killed = Some(n);
                }
            }
        }
    }

    /// The active main filter ruleset: `(rules, ticket)`, from netlink `GETRULES` where the
    /// kernel has it, otherwise `DIOCGETRULES` (both with an empty anchor and `PF_PASS`: the
    /// kernel's `pf_ioctl_getrules` / `DIOCGETRULES` case). Read-only. The kernel gives the
    /// ruleset a new ticket on every commit (`pfctl -f`), so a changed ticket means the
    /// ruleset was reloaded.
    pub fn ruleset_ticket(&mut self) -> Result<(u32, u32), PfError> {
        if self.transports.nl_rules {
            self.ruleset_ticket_netlink()
        } else if self.transports.ioctl_rules {
            self.ruleset_ticket_ioctl()
        } else {
            Err(PfError::Unsupported(
                "this kernel answered neither pf netlink GETRULES nor DIOCGETRULES at start-up, \
                 so the filter ruleset's ticket cannot be read"
                    .into(),
            ))
        }
    }

    fn ruleset_ticket_ioctl(&mut self) -> Result<(u32, u32), PfError> {
        let mut pr = crate::abi::getrules_request();
        self.dev.get_rules(&mut pr).map_err(|e| PfError::Kernel {
            op: "read the filter ruleset's ticket (DIOCGETRULES)",
            errno: e.0,
        })?;
        crate::abi::parse_getrules(&pr)
            .ok_or_else(|| PfError::Codec("DIOCGETRULES answered a short pfioc_rule".into()))
    }

    fn ruleset_ticket_netlink(&mut self) -> Result<(u32, u32), PfError> {
        const OP: &str = "read the filter ruleset's ticket";
        let family = self
            .transports
            .nl_family
            .ok_or_else(|| PfError::Unsupported("no pf netlink".into()))?;
        let seq = self.next_seq();
        let mut b = MsgBuilder::new();
        nl::getrules_request(&mut b, family, seq);
        self.dev.nl_send(b.as_bytes()).map_err(|e| PfError::Kernel { op: OP, errno: e.0 })?;
        let mut found = None;
        loop {
            self.dev.nl_recv(&mut self.buf).map_err(|e| PfError::Kernel { op: OP, errno: e.0 })?;
            for msg in NlMsgs::new(&self.buf) {
                let msg = msg.map_err(|e| PfError::Codec(e.to_string()))?;
                if msg.seq != seq {
                    continue;
                }
                if msg.msg_type == NLMSG_ERROR {
                    let (e, _) = msg.error().map_err(|e| PfError::Codec(e.to_string()))?;
                    if e != 0 {
                        return Err(PfError::Kernel { op: OP, errno: -e });
                    }
                    return found.ok_or_else(|| {
                        PfError::Codec("GETRULES acknowledged without a ticket".into())
                    });
                }
                if let Some(t) =
                    nl::parse_getrules_reply(&msg).map_err(|e| PfError::Codec(e.to_string()))?
                {
                    found = Some(t);
                }
            }
        }
    }

    fn kill_nv(&mut self, ioctl: u64, k: &PfKill) -> Result<u32, PfError> {
        let op = if ioctl == DIOCCLRSTATESNV { "clear states" } else { "kill states" };
        let req = nv::kill_request(k).pack().map_err(|e| PfError::Codec(e.to_string()))?;
        // 1024 bytes, as libpfctl offers; the reply is 53. ENOSPC is never retried: the kill
        // already happened.
        let reply =
            self.dev.nv_ioctl(ioctl, &req, 1024).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
        let nvl = Nvlist::unpack(&reply).map_err(|e| PfError::Codec(e.to_string()))?;
        nv::parse_killed_reply(&nvl).map_err(|e| PfError::Codec(e.to_string()))
    }

    /// One kill request (a filtered pass, or an id kill). Never sends a request that would
    /// match every state, nor a stack-key (`nat`) filter over `DIOCKILLSTATESNV`, whose
    /// decoder never reads that flag (`pf_nvstate_kill_to_kstate_kill`): the kernel would
    /// match the wire key instead and kill other states.
    pub fn kill(&mut self, k: &PfKill) -> Result<u32, PfError> {
        if k.is_everything() {
            return Err(PfError::Everything);
        }
        if self.transports.nl_kill {
            self.kill_netlink(cmd::KILLSTATES, k)
        } else if k.nat && k.id == 0 {
            Err(PfError::Unsupported(
                "this kernel has no pf netlink KILLSTATES, and DIOCKILLSTATESNV ignores the \
                 stack-key (nat) flag: list the states and kill them by id instead"
                    .into(),
            ))
        } else {
            self.kill_nv(DIOCKILLSTATESNV, k)
        }
    }

    /// Kill states by id (O(1) each in the kernel). Returns (killed, not found). Over netlink
    /// many requests share one datagram.
    pub fn kill_ids(&mut self, ids: &[(u64, u32)]) -> Result<(u64, u64), PfError> {
        let each = self.kill_ids_each(ids)?;
        let killed = each.iter().map(|n| u64::from(*n)).sum();
        let gone = each.iter().filter(|n| **n == 0).count() as u64;
        Ok((killed, gone))
    }

    /// Kill states by id; what each request killed, in order (0: the state was gone).
    pub fn kill_ids_each(&mut self, ids: &[(u64, u32)]) -> Result<Vec<u32>, PfError> {
        let mut out = vec![0u32; ids.len()];
        if !self.transports.nl_kill {
            for (slot, (id, creator)) in out.iter_mut().zip(ids) {
                *slot = self.kill_nv(DIOCKILLSTATESNV, &PfKill::by_id(*id, *creator))?;
            }
            return Ok(out);
        }
        let family = self
            .transports
            .nl_family
            .ok_or_else(|| PfError::Unsupported("no pf netlink".into()))?;
        let op = "kill states by id";
        for (c, chunk) in ids.chunks(ID_BATCH).enumerate() {
            let mut b = MsgBuilder::new();
            let mut seqs = Vec::with_capacity(chunk.len());
            for (id, creator) in chunk {
                let seq = self.next_seq();
                seqs.push(seq);
                nl::kill_request(
                    &mut b,
                    family,
                    seq,
                    cmd::KILLSTATES,
                    &PfKill::by_id(*id, *creator),
                );
            }
            self.dev.nl_send(b.as_bytes()).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
            let mut acked = 0usize;
            while acked < seqs.len() {
                self.dev.nl_recv(&mut self.buf).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
                for msg in NlMsgs::new(&self.buf) {
                    let msg = msg.map_err(|e| PfError::Codec(e.to_string()))?;
                    if msg.msg_type == NLMSG_ERROR {
                        let (e, seq) = msg.error().map_err(|e| PfError::Codec(e.to_string()))?;
                        if !seqs.contains(&seq) {
                            continue;
                        }
                        if e != 0 {
                            return Err(PfError::Kernel { op, errno: -e });
                        }
                        acked += 1;
                    } else if let Some(at) = seqs.iter().position(|s| *s == msg.seq)
                        && let Some(n) =
                            nl::parse_kill_reply(&msg).map_err(|e| PfError::Codec(e.to_string()))?
                        && let Some(slot) = out.get_mut(c * ID_BATCH + at)
                    {
                        *slot = n;
                    }
                }
            }
        }
        Ok(out)
    }

    /// `pf_clear_states`: every state (on `ifname` when given), with `kill_match`.
    pub fn clear(&mut self, ifname: &str, kill_match: bool) -> Result<u32, PfError> {
        let k = PfKill { ifname: ifname.to_owned(), kill_match, ..PfKill::default() };
        if self.transports.nl_kill {
            self.kill_netlink(cmd::CLRSTATES, &k)
        } else {
            self.kill_nv(DIOCCLRSTATESNV, &k)
        }
    }

    /// List states (kernel-side filter where netlink allows), one callback per state.
    pub fn list(
        &mut self,
        filter: &StateFilter,
        on_state: &mut dyn FnMut(PfState) -> Result<(), PfError>,
    ) -> Result<(), PfError> {
        if let Some(family) = self.transports.nl_family {
            return self.list_netlink(family, filter, on_state);
        }
        self.list_v2(filter, on_state)
    }

    fn list_netlink(
        &mut self,
        family: u16,
        filter: &StateFilter,
        on_state: &mut dyn FnMut(PfState) -> Result<(), PfError>,
    ) -> Result<(), PfError> {
        let op = "list states";
        let seq = self.next_seq();
        let mut b = MsgBuilder::new();
        nl::getstates_request(&mut b, family, seq, filter);
        self.dev.nl_send(b.as_bytes()).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
        loop {
            self.dev.nl_recv(&mut self.buf).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
            let buf = std::mem::take(&mut self.buf);
            let mut done = false;
            for msg in NlMsgs::new(&buf) {
                let msg = msg.map_err(|e| PfError::Codec(e.to_string()))?;
                if msg.seq != seq {
                    continue;
                }
                match msg.msg_type {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let (e, _) = msg.error().map_err(|e| PfError::Codec(e.to_string()))?;
                        if e != 0 {
                            return Err(PfError::Kernel { op, errno: -e });
                        }
                    }
                    _ => {
                        on_state(nl::parse_state(&msg).map_err(|e| PfError::Codec(e.to_string()))?)?
                    }
                }
            }
            self.buf = buf;
            if done {
                return Ok(());
            }
        }
    }

    fn list_v2(
        &mut self,
        filter: &StateFilter,
        on_state: &mut dyn FnMut(PfState) -> Result<(), PfError>,
    ) -> Result<(), PfError> {
        let op = "list states (DIOCGETSTATESV2)";
        // The kernel truncates silently at row granularity: ask for the size, allocate
        // generously, and retry if the answer came within a margin of the buffer.
        let mut want =
            self.dev.get_states_v2(&mut []).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
        for _ in 0..8 {
            let cap = (want + want / 4 + 64 * STATE_EXPORT_LEN)
                .min(i32::MAX as usize / STATE_EXPORT_LEN * STATE_EXPORT_LEN);
            let mut buf = vec![0u8; cap];
            let got =
                self.dev.get_states_v2(&mut buf).map_err(|e| PfError::Kernel { op, errno: e.0 })?;
            if got + 32 * STATE_EXPORT_LEN > cap && cap < i32::MAX as usize - STATE_EXPORT_LEN {
                want = cap * 2;
                continue;
            }
            for rec in buf[..got.min(buf.len())].chunks_exact(STATE_EXPORT_LEN) {
                let s = decode_export(rec).map_err(|e| PfError::Codec(e.to_string()))?;
                if filter.matches(&s) {
                    on_state(s)?;
                }
            }
            return Ok(());
        }
        Err(PfError::Unsupported(
            "the state table kept growing faster than it could be listed".into(),
        ))
    }
}
