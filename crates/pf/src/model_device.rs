//! The pf model behind the byte-level device (feature `model`): [`ModelDevice`] decodes the
//! request bytes the kernel would get (libnv unpack with the kernel's key rules, pf netlink
//! attributes) and applies them to a [`PfModel`]; [`Release`] says which interfaces of which
//! FreeBSD release it answers to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use statecull_netlink::{MsgBuilder, NLM_F_ACK, NLM_F_DUMP, NLMSG_DONE, NLMSG_ERROR, NlMsgs};

use crate::abi::{
    DIOCCLRSTATESNV, DIOCKILLSTATESNV, PFIOC_RULE_ANCHOR, PFIOC_RULE_LEN, PFIOC_RULE_NR,
    PFIOC_RULE_RULE_ACTION, PFIOC_RULE_TICKET, STATE_EXPORT_LEN, encode_export,
};
use crate::device::{Errno, PfDevice, errno};
use crate::model::PfModel;
use crate::nl::{self, StateFilter, cmd, ctrl};
use crate::nv::{self, Nvlist};

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
    /// pf netlink `GETRULES` (15.0).
    pub netlink_rules: bool,
    /// `DIOCGETRULES` (every release).
    pub ioctl_rules: bool,
}

impl Release {
    pub const FREEBSD_13: Release = Release {
        netlink_list: false,
        netlink_kill: false,
        nv_kill: true,
        v2_list: true,
        netlink_rules: false,
        ioctl_rules: true,
    };
    pub const FREEBSD_14: Release = Release {
        netlink_list: true,
        netlink_kill: false,
        nv_kill: true,
        v2_list: true,
        netlink_rules: false,
        ioctl_rules: true,
    };
    pub const FREEBSD_15: Release = Release {
        netlink_list: true,
        netlink_kill: true,
        nv_kill: true,
        v2_list: false,
        netlink_rules: true,
        ioctl_rules: true,
    };
}

/// The pf family id the model's netlink answers with.
pub const MODEL_FAMILY_ID: u16 = 0x21;

/// The model behind the byte-level interface.
#[derive(Debug)]
pub struct ModelDevice {
    /// The table, shared by every handle on it ([`PfDevice::another`]); each request locks
    /// it for its own duration (a dump: per datagram), as the kernel locks rows.
    model: Arc<Mutex<PfModel>>,
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
        Self { model: Arc::new(Mutex::new(model)), release, queue: VecDeque::new(), dump: None }
    }

    /// The model (its states, its cost counters), locked while the guard lives.
    pub fn model(&self) -> MutexGuard<'_, PfModel> {
        // The model is only changed whole by one request at a time; a panic in one leaves
        // it consistent for the next.
        self.model.lock().unwrap_or_else(|p| p.into_inner())
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
                    let cursor = self.model().list_begin();
                    self.dump = Some(Dump { seq: msg.seq, filter, cursor });
                }
                cmd::KILLSTATES | cmd::CLRSTATES if self.release.netlink_kill => {
                    let Ok((c, k)) = nl::parse_kill_request(&msg) else {
                        self.ack(msg.seq, errno::EINVAL, raw);
                        continue;
                    };
                    let killed = if c == cmd::CLRSTATES {
                        self.model().clear_states(&k.ifname, k.kill_match)
                    } else {
                        self.model().kill_states(&k)
                    };
                    let mut b = MsgBuilder::new();
                    nl::kill_reply(&mut b, MODEL_FAMILY_ID, msg.seq, c, killed);
                    self.queue.push_back(b.as_bytes().to_vec());
                    if msg.flags & NLM_F_ACK != 0 {
                        self.ack(msg.seq, 0, raw);
                    }
                }
                cmd::GETRULES if self.release.netlink_rules => {
                    let Ok((anchor, action)) = nl::parse_getrules_request(&msg) else {
                        self.ack(msg.seq, errno::EINVAL, raw);
                        continue;
                    };
                    // Only the main filter ruleset exists in the model: another anchor is
                    // one `pf_find_kruleset` does not find, another ruleset is not modelled.
                    if !anchor.is_empty() || action != nl::PF_PASS {
                        self.ack(msg.seq, errno::EINVAL, raw);
                        continue;
                    }
                    let (rules, ticket) = self.model().ruleset();
                    let mut b = MsgBuilder::new();
                    nl::getrules_reply(&mut b, MODEL_FAMILY_ID, msg.seq, rules, ticket);
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
        let states = self.model().list_next(&mut dump.cursor, |s| filter.matches(s), 100);
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
            self.model().clear_states(&k.ifname, k.kill_match)
        } else {
            self.model().kill_states(&k)
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

    fn get_rules(&mut self, pr: &mut [u8]) -> Result<(), Errno> {
        if !self.release.ioctl_rules {
            return Err(Errno(errno::ENOTTY));
        }
        if pr.len() != PFIOC_RULE_LEN {
            // The ioctl number encodes the size: another size is another (unknown) ioctl.
            return Err(Errno(errno::ENOTTY));
        }
        // Only the main filter ruleset exists in the model (`pf_find_kruleset` of another
        // anchor fails; another action is another ruleset, not modelled).
        if pr[PFIOC_RULE_ANCHOR] != 0 || pr[PFIOC_RULE_RULE_ACTION] != nl::PF_PASS {
            return Err(Errno(errno::EINVAL));
        }
        let (rules, ticket) = self.model().ruleset();
        pr[PFIOC_RULE_NR..PFIOC_RULE_NR + 4].copy_from_slice(&rules.to_ne_bytes());
        pr[PFIOC_RULE_TICKET..PFIOC_RULE_TICKET + 4].copy_from_slice(&ticket.to_ne_bytes());
        Ok(())
    }

    fn get_states_v2(&mut self, buf: &mut [u8]) -> Result<usize, Errno> {
        if !self.release.v2_list {
            return Err(Errno(errno::ENOTTY));
        }
        if buf.is_empty() {
            return Ok(self.model().len() * STATE_EXPORT_LEN);
        }
        // The kernel copies whole rows and stops silently when the next one does not fit;
        // the model copies whole states, which is the same at row granularity 1.
        let states = self.model().list(|_| true);
        let fit = (buf.len() / STATE_EXPORT_LEN).min(states.len());
        for (i, s) in states.iter().take(fit).enumerate() {
            buf[i * STATE_EXPORT_LEN..(i + 1) * STATE_EXPORT_LEN]
                .copy_from_slice(&encode_export(s));
        }
        Ok(fit * STATE_EXPORT_LEN)
    }

    fn another(&self) -> Result<Self, Errno> {
        Ok(Self {
            model: Arc::clone(&self.model),
            release: self.release,
            queue: VecDeque::new(),
            dump: None,
        })
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
