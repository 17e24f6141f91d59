//! "Send this request to the pf kernel": a byte-level device trait, the model behind it, and
//! a client that speaks whichever interfaces the kernel has.
//!
//! [`PfDevice`] has exactly the three kernel interfaces the backend uses: the nvlist ioctls
//! on `/dev/pf`, `DIOCGETSTATESV2`, and a pf generic-netlink socket. The FreeBSD
//! implementation makes those syscalls; [`ModelDevice`] decodes the same bytes and applies
//! them to a [`PfModel`], so everything above the syscalls runs unchanged on Linux.

use std::collections::VecDeque;

use statecull_netlink::{MsgBuilder, NLM_F_ACK, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, NlMsgs};

use crate::abi::{
    DIOCCLRSTATESNV, DIOCKILLSTATESNV, STATE_EXPORT_LEN, decode_export, encode_export,
};
use crate::model::PfModel;
use crate::nl::{self, StateFilter, cmd, ctrl};
use crate::nv::{self, Nvlist};
use crate::types::{PfKill, PfState};

/// FreeBSD errno values (`sys/sys/errno.h`; several differ from Linux's).
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const E2BIG: i32 = 7;
    pub const ENOMEM: i32 = 12;
    pub const EACCES: i32 = 13;
    pub const EINVAL: i32 = 22;
    pub const ENOTTY: i32 = 25;
    pub const ENOSPC: i32 = 28;
    pub const ERANGE: i32 = 34;
    /// Also `ENOTSUP` on FreeBSD.
    pub const EOPNOTSUPP: i32 = 45;
    pub const EBADMSG: i32 = 89;
}

/// A failed kernel call (FreeBSD errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("errno {0}")]
pub struct Errno(pub i32);

/// The pf kernel interfaces, at the byte level.
pub trait PfDevice: Send {
    /// `ioctl(/dev/pf, cmd, &pfioc_nv { data, len, size })`: a packed nvlist request in, the
    /// packed reply (`len` bytes) out; `reply_size` is the buffer the caller offers.
    fn nv_ioctl(&mut self, cmd: u64, request: &[u8], reply_size: usize) -> Result<Vec<u8>, Errno>;
    /// `ioctl(/dev/pf, DIOCGETSTATESV2)` with `ps_len = buf.len()`: fills `buf` with whole
    /// records and returns the new `ps_len` (with an empty `buf`: the kernel's estimate).
    fn get_states_v2(&mut self, buf: &mut [u8]) -> Result<usize, Errno>;
    /// Send one datagram on the pf netlink socket.
    fn nl_send(&mut self, datagram: &[u8]) -> Result<(), Errno>;
    /// Receive one datagram from the pf netlink socket into `buf` (cleared first).
    fn nl_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), Errno>;
}

/// Which kernel interfaces a (modelled) FreeBSD release has (pf-kernel.md §7, §10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Release {
    /// pf generic netlink with `GETSTATES` (14.0+).
    pub netlink_list: bool,
    /// pf netlink `KILLSTATES`/`CLRSTATES` (15.0; maybe a late 14.x).
    pub netlink_kill: bool,
    /// `DIOCKILLSTATESNV`/`DIOCCLRSTATESNV` (13.1+).
    pub nv_kill: bool,
    /// `DIOCGETSTATESV2` (13.x, 14.x; 15 only with `COMPAT_FREEBSD14`).
    pub v2_list: bool,
}

impl Release {
    pub const FREEBSD_13: Release =
        Release { netlink_list: false, netlink_kill: false, nv_kill: true, v2_list: true };
    pub const FREEBSD_14: Release =
        Release { netlink_list: true, netlink_kill: false, nv_kill: true, v2_list: true };
    pub const FREEBSD_15: Release =
        Release { netlink_list: true, netlink_kill: true, nv_kill: true, v2_list: false };
}

/// Kill-by-id requests per netlink datagram.
const ID_BATCH: usize = 256;

/// The pf family id the model's netlink answers with.
pub const MODEL_FAMILY_ID: u16 = 0x21;

/// The model behind the byte-level interface.
#[derive(Debug)]
pub struct ModelDevice {
    pub model: PfModel,
    release: Release,
    queue: VecDeque<Vec<u8>>,
    /// A netlink dump being handed out a datagram at a time (see [`PfModel::list_begin`]).
    dump: Option<Dump>,
}

/// A `GETSTATES` dump in progress.
#[derive(Debug)]
struct Dump {
    seq: u32,
    filter: StateFilter,
    cursor: crate::model::ListCursor,
}

impl ModelDevice {
    pub fn new(model: PfModel, release: Release) -> Self {
        Self { model, release, queue: VecDeque::new(), dump: None }
    }

    fn ack(&mut self, seq: u32, error: i32, request: &[u8]) {
        // nlmsgerr: errno (negative), then the request's header (capped ACK).
        let mut d = Vec::with_capacity(36);
        d.extend_from_slice(&36u32.to_ne_bytes());
        d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        d.extend_from_slice(&0u16.to_ne_bytes());
        d.extend_from_slice(&seq.to_ne_bytes());
        d.extend_from_slice(&0u32.to_ne_bytes());
        d.extend_from_slice(&(-error).to_ne_bytes());
        let mut hdr = [0u8; 16];
        let n = request.len().min(16);
        hdr[..n].copy_from_slice(&request[..n]);
        d.extend_from_slice(&hdr);
        self.queue.push_back(d);
    }

    fn handle_netlink(&mut self, datagram: &[u8]) {
        for msg in NlMsgs::new(datagram) {
            let Ok(msg) = msg else { return };
            let raw_len = 16 + msg.payload.len();
            let raw = datagram.get(..raw_len.min(datagram.len())).unwrap_or(&[]);
            if msg.msg_type == ctrl::GENL_ID_CTRL {
                if !self.release.netlink_list {
                    self.ack(msg.seq, errno::ENOENT, raw);
                    continue;
                }
                let mut b = MsgBuilder::new();
                nl::family_reply(&mut b, msg.seq, MODEL_FAMILY_ID);
                self.queue.push_back(b.as_bytes().to_vec());
                if msg.flags & NLM_F_ACK != 0 {
                    self.ack(msg.seq, 0, raw);
                }
                continue;
            }
            if msg.msg_type != MODEL_FAMILY_ID {
                self.ack(msg.seq, errno::ENOENT, raw);
                continue;
            }
            let command = msg.payload.first().copied().unwrap_or(0);
            match command {
                cmd::GETSTATES if msg.flags & NLM_F_DUMP == NLM_F_DUMP => {
                    let Ok(filter) = nl::parse_getstates_request(&msg) else {
                        self.ack(msg.seq, errno::EINVAL, raw);
                        continue;
                    };
                    // Handed out as the reader asks (`nl_recv`), like a kernel dump that
                    // fills the socket buffer as it drains.
                    let cursor = self.model.list_begin();
                    self.dump = Some(Dump { seq: msg.seq, filter, cursor });
                }
                cmd::KILLSTATES | cmd::CLRSTATES if self.release.netlink_kill => {
                    let Ok((c, k)) = nl::parse_kill_request(&msg) else {
                        self.ack(msg.seq, errno::EINVAL, raw);
                        continue;
                    };
                    let killed = if c == cmd::CLRSTATES {
                        self.model.clear_states(&k.ifname, k.kill_match)
                    } else {
                        self.model.kill_states(&k)
                    };
                    let mut b = MsgBuilder::new();
                    nl::kill_reply(&mut b, MODEL_FAMILY_ID, msg.seq, c, killed);
                    self.queue.push_back(b.as_bytes().to_vec());
                    if msg.flags & NLM_F_ACK != 0 {
                        self.ack(msg.seq, 0, raw);
                    }
                }
                // An unknown command: "invalid cmd" (pf-kernel.md §4).
                _ => self.ack(msg.seq, errno::EOPNOTSUPP, raw),
            }
        }
    }
}

impl ModelDevice {
    /// Queue the dump's next datagram (about 100 states, whole rows), or its end.
    fn continue_dump(&mut self) {
        let Some(mut dump) = self.dump.take() else { return };
        let filter = &dump.filter;
        let states = self.model.list_next(&mut dump.cursor, |s| filter.matches(s), 100);
        let mut b = MsgBuilder::new();
        if states.is_empty() {
            let m = b.begin_with(NLMSG_DONE, statecull_netlink::NLM_F_MULTI, dump.seq, [0; 4]);
            b.end(m);
            self.queue.push_back(b.as_bytes().to_vec());
            return;
        }
        for s in &states {
            nl::state_message(&mut b, MODEL_FAMILY_ID, dump.seq, s);
        }
        self.queue.push_back(b.as_bytes().to_vec());
        self.dump = Some(dump);
    }
}

impl PfDevice for ModelDevice {
    fn nv_ioctl(
        &mut self,
        ioctl: u64,
        request: &[u8],
        reply_size: usize,
    ) -> Result<Vec<u8>, Errno> {
        if !self.release.nv_kill || (ioctl != DIOCKILLSTATESNV && ioctl != DIOCCLRSTATESNV) {
            return Err(Errno(errno::ENOTTY));
        }
        let nvl = Nvlist::unpack(request).map_err(|_| Errno(errno::EBADMSG))?;
        let k = nv::kill_from_request(&nvl).map_err(|e| Errno(e.errno()))?;
        let killed = if ioctl == DIOCCLRSTATESNV {
            self.model.clear_states(&k.ifname, k.kill_match)
        } else {
            self.model.kill_states(&k)
        };
        let reply = nv::killed_reply(killed).pack().map_err(|_| Errno(errno::ENOMEM))?;
        if reply_size == 0 {
            return Ok(Vec::new());
        }
        if reply_size < reply.len() {
            // The states are already gone; only the answer does not fit.
            return Err(Errno(errno::ENOSPC));
        }
        Ok(reply)
    }

    fn get_states_v2(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        if !self.release.v2_list {
            return Err(Errno(errno::ENOTTY));
        }
        if buf.is_empty() {
            return Ok(self.model.len() * STATE_EXPORT_LEN);
        }
        // The kernel copies whole rows and stops silently when the next one does not fit;
        // the model copies whole states, which is the same at row granularity 1.
        let states = self.model.list(|_| true);
        let fit = (buf.len() / STATE_EXPORT_LEN).min(states.len());
        for (i, s) in states.iter().take(fit).enumerate() {
            buf[i * STATE_EXPORT_LEN..(i + 1) * STATE_EXPORT_LEN]
                .copy_from_slice(&encode_export(s));
        }
        Ok(fit * STATE_EXPORT_LEN)
    }

    fn nl_send(&mut self, datagram: &[u8]) -> Result<(), Errno> {
        // A new request ends a dump nobody finished reading (its client gave up on it).
        self.dump = None;
        self.handle_netlink(datagram);
        Ok(())
    }

    fn nl_recv(&mut self, buf: &mut Vec<u8>) -> Result<(), Errno> {
        buf.clear();
        if self.queue.is_empty() {
            self.continue_dump();
        }
        match self.queue.pop_front() {
            Some(d) => {
                buf.extend_from_slice(&d);
                Ok(())
            }
            // Nothing queued: a real socket would block forever; say so instead.
            None => Err(Errno(errno::ENOENT)),
        }
    }
}

/// What went wrong talking to pf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PfError {
    #[error("pf refused {op}: errno {errno}")]
    Kernel { op: &'static str, errno: i32 },
    #[error("malformed answer from pf: {0}")]
    Codec(String),
    #[error("{0}")]
    Unsupported(String),
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
    /// match every state.
    pub fn kill(&mut self, k: &PfKill) -> Result<u32, PfError> {
        if k.is_everything() {
            return Err(PfError::Everything);
        }
        if self.transports.nl_kill {
            self.kill_netlink(cmd::KILLSTATES, k)
        } else {
            self.kill_nv(DIOCKILLSTATESNV, k)
        }
    }

    /// Kill states by id (O(1) each in the kernel). Returns (killed, not found). Over netlink
    /// many requests share one datagram.
    pub fn kill_ids(&mut self, ids: &[(u64, u32)]) -> Result<(u64, u64), PfError> {
        let (mut killed, mut gone) = (0u64, 0u64);
        if !self.transports.nl_kill {
            for (id, creator) in ids {
                match self.kill_nv(DIOCKILLSTATESNV, &PfKill::by_id(*id, *creator))? {
                    0 => gone += 1,
                    n => killed += u64::from(n),
                }
            }
            return Ok((killed, gone));
        }
        let family = self
            .transports
            .nl_family
            .ok_or_else(|| PfError::Unsupported("no pf netlink".into()))?;
        let op = "kill states by id";
        for chunk in ids.chunks(ID_BATCH) {
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
                    } else if seqs.contains(&msg.seq)
                        && let Some(n) =
                            nl::parse_kill_reply(&msg).map_err(|e| PfError::Codec(e.to_string()))?
                    {
                        match n {
                            0 => gone += 1,
                            n => killed += u64::from(n),
                        }
                    }
                }
            }
        }
        Ok((killed, gone))
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
