//! Linux confinement: user switch, capabilities, `no_new_privs`, Landlock, seccomp; see the
//! crate documentation for the order and why.

pub mod landlock;
pub mod seccomp;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use caps::{CapSet, Capability, CapsHashSet};
use nix::unistd::{Gid, Uid, User};

use crate::status::ProcStatus;
use crate::{Plan, Report, Role, SandboxError};

/// What this process applied, for [`current`] (which must not look anything up by then: NSS
/// would open files or sockets the sandbox forbids).
#[derive(Debug)]
struct Applied {
    role: Role,
    user: String,
    uid: u32,
    landlock: String,
    seccomp: String,
}

static APPLIED: OnceLock<Applied> = OnceLock::new();

/// Set once confinement starts changing the process: from then on, even if it failed
/// half-way, [`current`] must not look names up (the sandbox may already forbid what NSS does,
/// and the broker's profile kills for it).
static STARTED: AtomicBool = AtomicBool::new(false);

/// `/proc/self/status`, opened before confinement and re-read with `pread` afterwards (the
/// sandbox forbids opening it again).
static STATUS: OnceLock<File> = OnceLock::new();

const STATUS_PATH: &str = "/proc/self/status";

fn status_file() -> Result<&'static File, SandboxError> {
    if let Some(f) = STATUS.get() {
        return Ok(f);
    }
    let f = File::open(STATUS_PATH)
        .map_err(|source| SandboxError::Io { what: STATUS_PATH.to_owned(), source })?;
    // A concurrent first call may have won; either descriptor reads the same file.
    let _ = STATUS.set(f);
    STATUS.get().ok_or_else(|| SandboxError::Status("descriptor lost".into()))
}

/// Read `/proc/self/status` through the kept descriptor (`pread64`, allowed by both
/// seccomp profiles for this).
fn read_status() -> Result<ProcStatus, SandboxError> {
    let f = status_file()?;
    let mut text = Vec::with_capacity(4096);
    let mut buf = [0u8; 4096];
    loop {
        let n = f
            .read_at(&mut buf, text.len() as u64)
            .map_err(|source| SandboxError::Io { what: STATUS_PATH.to_owned(), source })?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    ProcStatus::parse(&String::from_utf8_lossy(&text)).map_err(SandboxError::Status)
}

/// The capabilities a plan keeps (in bounding, permitted and effective).
fn kept(plan: &Plan) -> CapsHashSet {
    let mut set = CapsHashSet::new();
    if plan.role == Role::Broker && plan.net_admin {
        // ctnetlink: list, delete and flush conntrack entries; SO_RCVBUFFORCE.
        set.insert(Capability::CAP_NET_ADMIN);
    }
    set
}

fn mask_of(set: &CapsHashSet) -> u64 {
    set.iter().fold(0, |m, c| m | c.bitmask())
}

/// Capability names of a kernel bitmask, by number; bits this build cannot name show as
/// `cap_N`.
pub fn cap_names(mask: u64) -> Vec<String> {
    let mut known: Vec<Capability> = caps::all().into_iter().collect();
    known.sort_by_key(Capability::index);
    let mut names: Vec<String> =
        known.iter().filter(|c| mask & c.bitmask() != 0).map(ToString::to_string).collect();
    let unknown = mask & !mask_of(&caps::all());
    for bit in 0..64 {
        if unknown & (1u64 << bit) != 0 {
            names.push(format!("cap_{bit}"));
        }
    }
    names
}

fn caps_err(step: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Capabilities { step: step.to_owned(), reason: e.to_string() }
}

/// The user to switch to.
#[derive(Debug)]
struct Target {
    name: String,
    uid: Uid,
    gid: Gid,
}

fn resolve(user: &str) -> Result<Target, SandboxError> {
    let found = crate::lookup_user(user)?;
    Ok(Target { name: found.name, uid: found.uid, gid: found.gid })
}

fn switch_user(plan: &Plan, t: &Target, before: &ProcStatus) -> Result<(), SandboxError> {
    let (uid, gid) = (t.uid.as_raw(), t.gid.as_raw());
    let already = before.uids == [uid; 4] && before.gids == [gid; 4] && before.groups == [gid];
    if already {
        return Ok(());
    }
    let root = Uid::effective().is_root();
    let fail = |step: &'static str, source: nix::Error| SandboxError::SwitchUser {
        user: t.name.clone(),
        uid,
        gid,
        step,
        source,
        hint: if root {
            ""
        } else {
            "; only root (or CAP_SETUID/CAP_SETGID) can switch users: start as root, or as this user without --user"
        },
    };
    // The broker keeps CAP_NET_ADMIN across the uid change; the permitted set would be
    // cleared otherwise. Switched off again right after.
    let keep_caps = !kept(plan).is_empty() && before.uids[1] == 0 && uid != 0;
    if keep_caps {
        nix::sys::prctl::set_keepcaps(true).map_err(|e| fail("prctl(PR_SET_KEEPCAPS, 1)", e))?;
    }
    nix::unistd::setgroups(&[t.gid]).map_err(|e| fail("setgroups", e))?;
    nix::unistd::setresgid(t.gid, t.gid, t.gid).map_err(|e| fail("setresgid", e))?;
    nix::unistd::setresuid(t.uid, t.uid, t.uid).map_err(|e| fail("setresuid", e))?;
    if keep_caps {
        nix::sys::prctl::set_keepcaps(false).map_err(|e| fail("prctl(PR_SET_KEEPCAPS, 0)", e))?;
    }
    Ok(())
}

/// Drop the bounding set to `keep`. Needs CAP_SETPCAP, so it runs before the uid changes.
fn reduce_bounding(keep: &CapsHashSet, before: &ProcStatus) -> Result<(), SandboxError> {
    let unknown = before.cap_bounding & !mask_of(&caps::all());
    if unknown != 0 {
        return Err(caps_err(
            "reducing the bounding set",
            format!(
                "the kernel has capabilities this build cannot name or drop ({}); rebuild with a newer caps crate",
                cap_names(unknown).join(", ")
            ),
        ));
    }
    let bounding =
        caps::read(None, CapSet::Bounding).map_err(|e| caps_err("reading the bounding set", e))?;
    let mut extra: Vec<Capability> = bounding.difference(keep).copied().collect();
    if extra.is_empty() {
        return Ok(());
    }
    extra.sort_by_key(Capability::index);
    let can = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(|e| caps_err("reading the effective set", e))?;
    if !can {
        let names: Vec<String> = extra.iter().map(ToString::to_string).collect();
        return Err(SandboxError::BoundingSet { remaining: names.join(", ") });
    }
    for c in extra {
        caps::drop(None, CapSet::Bounding, c)
            .map_err(|e| caps_err(&format!("dropping {c} from the bounding set"), e))?;
    }
    Ok(())
}

fn missing_cap(role: Role, cap: Capability) -> SandboxError {
    caps_err(
        &format!("keeping {cap}"),
        format!(
            "the {role} needs {cap} and this process does not have it: start it as root (it switches user itself) with {cap} in its bounding set (systemd: CapabilityBoundingSet=)"
        ),
    )
}

/// Leave exactly `keep` in effective and permitted, nothing inheritable or ambient.
fn set_capabilities(role: Role, keep: &CapsHashSet) -> Result<(), SandboxError> {
    caps::clear(None, CapSet::Ambient).map_err(|e| caps_err("clearing the ambient set", e))?;
    let permitted = caps::read(None, CapSet::Permitted)
        .map_err(|e| caps_err("reading the permitted set", e))?;
    if let Some(missing) = keep.iter().find(|c| !permitted.contains(c)) {
        return Err(missing_cap(role, *missing));
    }
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, keep)
        .map_err(|e| caps_err("setting the effective set", e))?;
    caps::set(None, CapSet::Permitted, keep)
        .map_err(|e| caps_err("setting the permitted set", e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| caps_err("clearing the inheritable set", e))?;
    Ok(())
}

/// Check what the kernel says against what was meant.
fn verify(
    status: &ProcStatus,
    target: Option<&Target>,
    keep: u64,
    bounding: u64,
    filters: usize,
) -> Result<(), SandboxError> {
    let bad = |what: String| Err(SandboxError::Verify { what });
    if let Some(t) = target {
        let (uid, gid) = (t.uid.as_raw(), t.gid.as_raw());
        if status.uids != [uid; 4] {
            return bad(format!("uids {:?}, expected {uid} for {}", status.uids, t.name));
        }
        if status.gids != [gid; 4] {
            return bad(format!("gids {:?}, expected {gid}", status.gids));
        }
        if status.groups != [gid] {
            return bad(format!("groups {:?}, expected [{gid}]", status.groups));
        }
    }
    for (name, mask, want) in [
        ("effective", status.cap_effective, keep),
        ("permitted", status.cap_permitted, keep),
        ("bounding", status.cap_bounding, bounding),
        ("inheritable", status.cap_inheritable, 0),
        ("ambient", status.cap_ambient, 0),
    ] {
        if mask != want {
            return bad(format!(
                "{name} capabilities [{}], expected [{}]",
                cap_names(mask).join(", "),
                cap_names(want).join(", ")
            ));
        }
    }
    if !status.no_new_privs {
        return bad("NoNewPrivs 0".into());
    }
    if status.seccomp != 2 {
        return bad(format!("Seccomp mode {} (2 = filter)", status.seccomp));
    }
    // Seccomp_filters counts filters from parents too (systemd); ours are among them.
    if status.seccomp_filters != 0 && (status.seccomp_filters as usize) < filters {
        return bad(format!(
            "{} seccomp filters, expected at least {filters}",
            status.seccomp_filters
        ));
    }
    Ok(())
}

/// See [`crate::confine`].
pub(crate) fn confine(plan: &Plan) -> Result<Report, SandboxError> {
    // 1. The user, while NSS still works.
    let target = match &plan.user {
        Some(u) => Some(resolve(u)?),
        None if Uid::effective().is_root() => {
            return Err(SandboxError::RootWithoutUser { role: plan.role });
        }
        None => None,
    };
    // The filter is compiled before anything changes, so a failure here leaves the process
    // as it was.
    let compiled = seccomp::compile(plan.role, !plan.readable_paths.is_empty())?;
    // 2. One thread only; the status descriptor is kept for the checks at the end.
    let before = read_status()?;
    if before.threads != 1 {
        return Err(SandboxError::Threads { threads: before.threads });
    }
    // Started by an unprivileged user with no capabilities at all (a developer running the
    // pf-model broker or the engine by hand): there is nothing to keep and no CAP_SETPCAP to
    // shrink the bounding set with. That is harmless — with no permitted capabilities,
    // no_new_privs and no exec, the bounding set can never be used — and it is said so.
    let unprivileged = !nix::unistd::geteuid().is_root() && before.cap_permitted == 0;
    let keep = if unprivileged { CapsHashSet::new() } else { kept(plan) };
    if unprivileged {
        tracing::warn!(
            "started unprivileged: keeping no capability, the bounding set stays as inherited (unusable without permitted capabilities, under no_new_privs)"
        );
    }
    // What must stay must be there now (checked before anything changes).
    if let Some(missing) = keep.iter().find(|c| before.cap_permitted & c.bitmask() == 0) {
        return Err(missing_cap(plan.role, *missing));
    }
    tracing::debug!(role = %plan.role, user = ?target, "confining");
    STARTED.store(true, Ordering::SeqCst);
    // 3. Bounding set, while CAP_SETPCAP is still effective.
    if !unprivileged {
        reduce_bounding(&keep, &before)?;
    }
    // 4. User.
    if let Some(t) = &target {
        switch_user(plan, t, &before)?;
    }
    // 5. Capabilities. Not dumpable either: no other process of the same user may ptrace it
    // or read its memory through /proc (a uid change from root already did this; staying
    // as the same user would not).
    set_capabilities(plan.role, &keep)?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| caps_err("prctl(PR_SET_DUMPABLE, 0)", e))?;
    // 6. no_new_privs.
    nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)?;
    // 7. Landlock.
    let landlock = landlock::apply(plan)?;
    // 8. seccomp, last.
    seccomp::apply(&compiled)?;
    // 9. What the kernel says.
    let after = read_status()?;
    let bounding = if unprivileged { before.cap_bounding } else { mask_of(&keep) };
    verify(&after, target.as_ref(), mask_of(&keep), bounding, compiled.programs.len())?;
    let uid = after.uids[1];
    let user = target.as_ref().map_or_else(|| uid.to_string(), |t| t.name.clone());
    let applied = Applied {
        role: plan.role,
        user,
        uid,
        landlock: landlock.description,
        seccomp: format!("filter, {}", compiled.describe()),
    };
    let _ = APPLIED.set(applied);
    Ok(report(&after))
}

/// See [`crate::current`].
pub(crate) fn current() -> Report {
    match read_status() {
        Ok(s) => report(&s),
        Err(e) => Report {
            role: APPLIED.get().map(|a| a.role),
            user: "?".into(),
            uid: u32::MAX,
            gid: u32::MAX,
            groups: Vec::new(),
            caps_effective: Vec::new(),
            caps_permitted: Vec::new(),
            caps_bounding: Vec::new(),
            caps_inheritable: Vec::new(),
            caps_ambient: Vec::new(),
            no_new_privs: false,
            landlock: format!("unknown ({e})"),
            seccomp: format!("unknown ({e})"),
            capsicum: None,
        },
    }
}

fn report(s: &ProcStatus) -> Report {
    let uid = s.uids[1];
    let applied = APPLIED.get();
    let user = match applied {
        Some(a) if a.uid == uid => a.user.clone(),
        // Once confined, no lookup: NSS would open files and sockets the sandbox forbids.
        Some(_) => uid.to_string(),
        None if STARTED.load(Ordering::SeqCst) => uid.to_string(),
        None => User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map_or_else(|| uid.to_string(), |u| u.name),
    };
    let seccomp = match (s.seccomp, applied) {
        (2, Some(a)) => a.seccomp.clone(),
        (2, None) => format!(
            "filter, {} filter(s) installed before (not by this process)",
            s.seccomp_filters
        ),
        (1, _) => "strict mode".to_owned(),
        _ => "disabled".to_owned(),
    };
    Report {
        role: applied.map(|a| a.role),
        user,
        uid,
        gid: s.gids[1],
        groups: s.groups.clone(),
        caps_effective: cap_names(s.cap_effective),
        caps_permitted: cap_names(s.cap_permitted),
        caps_bounding: cap_names(s.cap_bounding),
        caps_inheritable: cap_names(s.cap_inheritable),
        caps_ambient: cap_names(s.cap_ambient),
        no_new_privs: s.no_new_privs,
        landlock: applied
            .map_or_else(|| "not applied by this process".to_owned(), |a| a.landlock.clone()),
        seccomp,
        capsicum: None,
    }
}
