//! The allow-list files and the compiled seccomp filters agree.
//!
//! The expectation is built here from the file *on disk*, read with the format's parser, and
//! with constant values from this test's own table (not from the generated code): the
//! compiled rule map must equal it, and the BPF programs, run by a small classic-BPF
//! interpreter over every syscall number and many argument vectors, must answer exactly what
//! the file says. No root needed.

#![cfg(target_os = "linux")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::cast_possible_truncation)] // test code

use std::collections::{BTreeMap, BTreeSet};

use statecull_sandbox::Role;
use statecull_sandbox::linux::seccomp::{self, CmpOp, Cond, Default};
use statecull_sandbox::profile::{self, Action, DefaultAction, Op, Value};

/// Constant values, independent of the generated code. A new constant in an allow-list must
/// be added here too (the test says so).
fn constant(name: &str) -> u32 {
    let v: i64 = match name {
        "AF_UNIX" => libc::AF_UNIX.into(),
        "AF_NETLINK" => libc::AF_NETLINK.into(),
        "NETLINK_NETFILTER" => libc::NETLINK_NETFILTER.into(),
        "PROT_EXEC" => libc::PROT_EXEC.into(),
        "PR_SET_NAME" => libc::PR_SET_NAME.into(),
        "SOL_SOCKET" => libc::SOL_SOCKET.into(),
        "SOL_NETLINK" => libc::SOL_NETLINK.into(),
        "SO_RCVTIMEO" => libc::SO_RCVTIMEO.into(),
        "SO_SNDTIMEO" => libc::SO_SNDTIMEO.into(),
        "SO_RCVBUF" => libc::SO_RCVBUF.into(),
        "SO_SNDBUF" => libc::SO_SNDBUF.into(),
        "SO_RCVBUFFORCE" => libc::SO_RCVBUFFORCE.into(),
        "SO_SNDBUFFORCE" => libc::SO_SNDBUFFORCE.into(),
        "SO_PEERCRED" => libc::SO_PEERCRED.into(),
        "NETLINK_CAP_ACK" => 10, // linux/netlink.h
        "F_GETFD" => libc::F_GETFD.into(),
        "F_GETFL" => libc::F_GETFL.into(),
        "F_SETFL" => libc::F_SETFL.into(),
        "FIONBIO" => libc::FIONBIO as i64,
        "O_RDONLY" => libc::O_RDONLY.into(),
        "O_ACCMODE" => libc::O_ACCMODE.into(),
        "O_CREAT" => libc::O_CREAT.into(),
        "O_TRUNC" => libc::O_TRUNC.into(),
        "O_APPEND" => libc::O_APPEND.into(),
        "CLONE_THREAD" => libc::CLONE_THREAD.into(),
        "CLONE_VM" => libc::CLONE_VM.into(),
        "CLONE_NEWNS" => libc::CLONE_NEWNS.into(),
        "CLONE_NEWUSER" => libc::CLONE_NEWUSER.into(),
        "CLONE_NEWPID" => libc::CLONE_NEWPID.into(),
        "CLONE_NEWNET" => libc::CLONE_NEWNET.into(),
        "CLONE_NEWIPC" => libc::CLONE_NEWIPC.into(),
        "CLONE_NEWUTS" => libc::CLONE_NEWUTS.into(),
        "CLONE_NEWCGROUP" => libc::CLONE_NEWCGROUP.into(),
        other => panic!("constant {other} is used by an allow-list: add it to this test's table"),
    };
    v as u32
}

fn errno(name: &str) -> i32 {
    match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        other => panic!("errno {other} is used by an allow-list: add it to this test's table"),
    }
}

fn value(v: &Value) -> u32 {
    match v {
        Value::Number(n) => *n,
        Value::Symbols(s) => s.iter().fold(0, |acc, name| acc | constant(name)),
    }
}

/// What the file says, for this architecture and plan.
#[derive(Debug)]
struct Expected {
    default: Default,
    /// nr → set of alternatives (each a sorted list of conditions); empty = always.
    allowed: BTreeMap<i64, BTreeSet<Vec<Cond>>>,
    errno: BTreeMap<i64, i32>,
}

fn expected(role: Role, readable: bool) -> Expected {
    let (file, compiled_text) = seccomp::profile_source(role);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, compiled_text, "{file} changed since it was compiled; rebuild");
    let prof = profile::parse(file, &text).unwrap();
    let numbers: BTreeMap<usize, (&str, i64)> =
        seccomp::generated_syscalls(role).into_iter().map(|(l, n, nr)| (l, (n, nr))).collect();
    let default = match &prof.default {
        DefaultAction::KillProcess => Default::KillProcess,
        DefaultAction::Errno(e) => Default::Errno { name: "", errno: errno(e) },
    };
    let mut allowed: BTreeMap<i64, BTreeSet<Vec<Cond>>> = BTreeMap::new();
    let mut errnos = BTreeMap::new();
    for line in &prof.lines {
        if !line.applies(std::env::consts::ARCH, readable) {
            continue;
        }
        let (name, nr) = numbers
            .get(&line.line)
            .unwrap_or_else(|| panic!("{file}:{} ({}) was not compiled", line.line, line.name));
        assert_eq!(*name, line.name, "{file}:{}", line.line);
        let mut conds: Vec<Cond> = line
            .conditions
            .iter()
            .map(|c| Cond {
                arg: c.arg,
                op: match c.op {
                    Op::Eq => CmpOp::Eq,
                    Op::Ne => CmpOp::Ne,
                    Op::Lt => CmpOp::Lt,
                    Op::Le => CmpOp::Le,
                    Op::Gt => CmpOp::Gt,
                    Op::Ge => CmpOp::Ge,
                    Op::MaskedEq => CmpOp::MaskedEq(value(c.mask.as_ref().unwrap())),
                },
                value: value(&c.value),
            })
            .collect();
        conds.sort();
        let alts = allowed.entry(*nr).or_default();
        if !conds.is_empty() {
            alts.insert(conds);
        }
        if let Action::Errno(e) = &line.action {
            errnos.insert(*nr, errno(e));
        }
    }
    Expected { default, allowed, errno: errnos }
}

fn compiled_map(c: &seccomp::Compiled) -> BTreeMap<i64, BTreeSet<Vec<Cond>>> {
    c.allowed
        .iter()
        .map(|(nr, alts)| {
            let set = alts
                .iter()
                .map(|a| {
                    let mut a = a.clone();
                    a.sort();
                    a
                })
                .collect();
            (*nr, set)
        })
        .collect()
}

const CASES: [(Role, bool); 4] =
    [(Role::Engine, false), (Role::Engine, true), (Role::Broker, false), (Role::Broker, true)];

#[test]
fn compiled_rule_map_equals_the_file() {
    for (role, readable) in CASES {
        let want = expected(role, readable);
        let got = seccomp::compile(role, readable).unwrap();
        let got_map = compiled_map(&got);
        let missing: Vec<_> = want.allowed.keys().filter(|k| !got_map.contains_key(k)).collect();
        let extra: Vec<_> = got_map.keys().filter(|k| !want.allowed.contains_key(k)).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{role} readable={readable}: syscalls missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(got_map, want.allowed, "{role} readable={readable}: conditions differ");
        let got_errno: BTreeMap<i64, i32> = got.errno.iter().map(|(k, (_, e))| (*k, *e)).collect();
        assert_eq!(got_errno, want.errno, "{role}: errno lines differ");
        match (got.default, want.default) {
            (Default::KillProcess, Default::KillProcess) => {}
            (Default::Errno { errno: a, .. }, Default::Errno { errno: b, .. }) => assert_eq!(a, b),
            (a, b) => panic!("{role}: default {a:?}, file says {b:?}"),
        }
        assert_eq!(
            got.programs.len(),
            1 + got.errno.values().map(|(_, e)| *e).collect::<BTreeSet<_>>().len()
        );
    }
}

#[test]
fn readable_paths_add_only_read_only_file_access() {
    let without = seccomp::compile(Role::Engine, false).unwrap();
    let with = seccomp::compile(Role::Engine, true).unwrap();
    let added: BTreeSet<&str> = with
        .allowed
        .keys()
        .filter(|k| !without.allowed.contains_key(k))
        .map(|k| with.names[k])
        .collect();
    assert_eq!(added, BTreeSet::from(["openat", "statx", "lseek", "getdents64"]));
    assert!(
        !without.allowed.contains_key(&libc::SYS_openat),
        "the engine must not open files when it reads none"
    );
}

/// Syscalls no profile may allow, whatever a future edit adds.
#[test]
fn profiles_never_allow_dangerous_syscalls() {
    let forbidden = [
        ("execve", libc::SYS_execve),
        ("execveat", libc::SYS_execveat),
        ("ptrace", libc::SYS_ptrace),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("capset", libc::SYS_capset),
        ("setuid", libc::SYS_setuid),
        ("setresuid", libc::SYS_setresuid),
        ("setgid", libc::SYS_setgid),
        ("setresgid", libc::SYS_setresgid),
        ("setgroups", libc::SYS_setgroups),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("mount", libc::SYS_mount),
        ("bpf", libc::SYS_bpf),
        ("seccomp", libc::SYS_seccomp),
        ("landlock_restrict_self", libc::SYS_landlock_restrict_self),
        ("kill", libc::SYS_kill),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("memfd_create", libc::SYS_memfd_create),
        ("fork", libc::SYS_fork),
        ("vfork", libc::SYS_vfork),
    ];
    for (role, readable) in CASES {
        let c = seccomp::compile(role, readable).unwrap();
        for (name, nr) in forbidden {
            assert!(!c.allowed.contains_key(&nr), "{role} allows {name}");
        }
        // These are allowed only with their argument checked.
        for (name, nr) in [
            ("socket", libc::SYS_socket),
            ("clone", libc::SYS_clone),
            ("prctl", libc::SYS_prctl),
            ("mmap", libc::SYS_mmap),
            ("mprotect", libc::SYS_mprotect),
            ("setsockopt", libc::SYS_setsockopt),
            ("ioctl", libc::SYS_ioctl),
            ("fcntl", libc::SYS_fcntl),
        ] {
            if let Some(alts) = c.allowed.get(&nr) {
                assert!(!alts.is_empty(), "{role} allows {name} without conditions");
            }
        }
        // clone3's flags cannot be checked: it must fail (ENOSYS), never run.
        assert_eq!(c.errno.get(&libc::SYS_clone3).map(|e| e.1), Some(libc::ENOSYS), "{role}");
    }
}

// ---------------------------------------------------------------------------------------
// A classic-BPF interpreter for seccomp programs, and the filters run against the file.

const SECCOMP_RET_ACTION_FULL: u32 = 0xffff_0000;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

fn audit_arch() -> u32 {
    match std::env::consts::ARCH {
        "x86_64" => 0xc000_003e,
        "aarch64" => 0xc000_00b7,
        other => panic!("no audit arch for {other}"),
    }
}

/// Run one program on `struct seccomp_data { int nr; u32 arch; u64 ip; u64 args[6]; }`.
fn run_bpf(prog: &[seccompiler::sock_filter], nr: u32, arch: u32, args: &[u64; 6]) -> u32 {
    let word = |k: u32| -> u32 {
        match k {
            0 => nr,
            4 => arch,
            8 | 12 => 0,
            16..=60 if k.is_multiple_of(4) => {
                let a = args[((k - 16) / 8) as usize];
                if (k - 16).is_multiple_of(8) { a as u32 } else { (a >> 32) as u32 }
            }
            _ => panic!("load from offset {k}"),
        }
    };
    let mut acc: u32 = 0;
    let mut pc = 0usize;
    loop {
        let i = &prog[pc];
        pc += 1;
        match i.code {
            0x20 => acc = word(i.k),                                         // LD|W|ABS
            0x54 => acc &= i.k,                                              // ALU|AND|K
            0x05 => pc += i.k as usize,                                      // JMP|JA
            0x15 => pc += usize::from(if acc == i.k { i.jt } else { i.jf }), // JEQ|K
            0x25 => pc += usize::from(if acc > i.k { i.jt } else { i.jf }),  // JGT|K
            0x35 => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }), // JGE|K
            0x45 => pc += usize::from(if acc & i.k != 0 { i.jt } else { i.jf }), // JSET|K
            0x06 => return i.k,                                              // RET|K
            other => panic!("unsupported BPF instruction {other:#x}"),
        }
    }
}

/// All filters, combined as the kernel does: the most restrictive action wins
/// (`ACTION_ONLY` compared as signed 32-bit).
fn run_all(progs: &[Vec<seccompiler::sock_filter>], nr: u32, args: &[u64; 6]) -> u32 {
    let mut best = SECCOMP_RET_ALLOW;
    for p in progs.iter().rev() {
        let r = run_bpf(p, nr, audit_arch(), args);
        if ((r & SECCOMP_RET_ACTION_FULL) as i32) < ((best & SECCOMP_RET_ACTION_FULL) as i32) {
            best = r;
        }
    }
    best
}

fn holds(c: &Cond, a: u64) -> bool {
    let a = a as u32;
    match c.op {
        CmpOp::Eq => a == c.value,
        CmpOp::Ne => a != c.value,
        CmpOp::Lt => a < c.value,
        CmpOp::Le => a <= c.value,
        CmpOp::Gt => a > c.value,
        CmpOp::Ge => a >= c.value,
        CmpOp::MaskedEq(m) => a & m == c.value,
    }
}

fn answer_from_file(want: &Expected, nr: i64, args: &[u64; 6]) -> u32 {
    let denied = match want.default {
        Default::KillProcess => SECCOMP_RET_KILL_PROCESS,
        Default::Errno { errno, .. } => SECCOMP_RET_ERRNO | errno as u32,
    };
    if let Some(e) = want.errno.get(&nr) {
        return SECCOMP_RET_ERRNO | *e as u32;
    }
    match want.allowed.get(&nr) {
        None => denied,
        Some(alts) if alts.is_empty() => SECCOMP_RET_ALLOW,
        Some(alts) => {
            if alts.iter().any(|alt| alt.iter().all(|c| holds(c, args[usize::from(c.arg)]))) {
                SECCOMP_RET_ALLOW
            } else {
                denied
            }
        }
    }
}

/// A deterministic generator (no dependency).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
}

#[test]
fn compiled_bpf_answers_what_the_file_says() {
    for (role, readable) in CASES {
        let want = expected(role, readable);
        let got = seccomp::compile(role, readable).unwrap();
        // Interesting argument values: every constant, mask and neighbour in the file, plus
        // extremes; each also with garbage in the upper half (only 32 bits are compared).
        let mut pool: BTreeSet<u64> = BTreeSet::from([0, 1, 2, u64::from(u32::MAX)]);
        for alts in want.allowed.values() {
            for c in alts.iter().flatten() {
                for v in [c.value, c.value.wrapping_add(1), c.value.wrapping_sub(1)] {
                    pool.insert(u64::from(v));
                }
                if let CmpOp::MaskedEq(m) = c.op {
                    pool.insert(u64::from(m));
                    pool.insert(u64::from(m | c.value));
                    pool.insert(u64::from(!m | c.value));
                }
            }
        }
        let pool: Vec<u64> = pool.into_iter().collect();
        let mut rng = Lcg(0x5eed);
        let mut checked = 0u64;
        for nr in 0u32..1024 {
            let trials = if want.allowed.contains_key(&i64::from(nr)) { 400 } else { 4 };
            for _ in 0..trials {
                let mut args = [0u64; 6];
                for a in &mut args {
                    let v = pool[(rng.next() % pool.len() as u64) as usize];
                    let high = if rng.next().is_multiple_of(3) { rng.next() << 32 } else { 0 };
                    *a = v | high;
                }
                let expect = answer_from_file(&want, i64::from(nr), &args);
                let actual = run_all(&got.programs, nr, &args);
                assert_eq!(
                    actual, expect,
                    "{role} readable={readable}: syscall {nr} args {args:x?}: BPF says {actual:#x}, file says {expect:#x}"
                );
                checked += 1;
            }
        }
        // Each listed syscall with arguments satisfying one alternative is allowed.
        for (nr, alts) in &want.allowed {
            if want.errno.contains_key(nr) {
                continue;
            }
            for alt in alts {
                let mut args = [0u64; 6];
                for c in alt {
                    args[usize::from(c.arg)] = u64::from(c.value);
                }
                assert_eq!(
                    run_all(&got.programs, *nr as u32, &args),
                    SECCOMP_RET_ALLOW,
                    "{role}: syscall {nr} with {alt:?} must be allowed"
                );
            }
        }
        // x32 numbers and a foreign architecture never pass.
        assert_ne!(run_all(&got.programs, 0x4000_0000, &[0; 6]), SECCOMP_RET_ALLOW);
        for p in &got.programs {
            assert_eq!(run_bpf(p, 0, 0x4000_0003, &[0; 6]), SECCOMP_RET_KILL_PROCESS);
        }
        assert!(checked > 10_000);
    }
}
