//! `statecull-sandbox-selftest ROLE ACTION [--user USER] [--readable PATH] [--dir DIR] [--host-netns]`
//!
//! Root-only test helper (driven by `sandbox/tests/selftest.rs`): moves into a private network
//! namespace of its own (nothing it tries can touch the host's network, and the namespace
//! dies with it), prepares what ACTION needs, confines itself with exactly the code the
//! daemons use (`statecull_sandbox::confine`, user `nobody` by default), prints the report,
//! then tries ACTION once and says what happened:
//!
//! * exit 0, `RESULT: ALLOWED …`: the action worked;
//! * exit 1, `RESULT: DENIED …`: refused with EPERM or EACCES (seccomp or Landlock), or, for
//!   the broker's kill-process profile, the process dies of SIGSYS before printing;
//! * exit 2: confinement itself failed; exit 3: the action failed for another reason (the
//!   test is inconclusive); exit 64: usage.
//!
//! Actions: `ok` (nothing), `open-passwd`, `exec`, `netlink-socket`, `raw-socket`,
//! `tcp-connect` (TCP socket created before confinement), `ptrace`, `regain-caps`,
//! `netfilter-socket`, `spawn-thread`, `spawn-process`, `unix-connect` (listener in DIR,
//! created before confinement), `abstract-connect` (abstract listener created before),
//! `read-allowed` and `write-readable` (on the `--readable` file), `threads-refused` (a thread
//! is started before confinement, which must then refuse with exit 2).

#![allow(clippy::print_stderr)] // a test helper reports on stdout/stderr

use std::process::ExitCode;

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    {
        imp::main()
    }
    #[cfg(not(target_os = "linux"))]
    {
        eprintln!("statecull-sandbox-selftest exercises the Linux sandbox only");
        ExitCode::from(64)
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io::Write as _;
    use std::os::fd::OwnedFd;
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::process::ExitCode;

    use nix::errno::Errno;
    use nix::sys::socket::{
        AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType, SockaddrIn, bind, connect,
        socket,
    };
    use statecull_sandbox::{Plan, Role, confine};

    const USAGE: &str = "usage: statecull-sandbox-selftest engine|broker ACTION [--user USER] [--readable PATH] [--dir DIR] [--host-netns]";

    /// What an action needs prepared before confinement.
    enum Prepared {
        Nothing,
        Tcp(OwnedFd),
        /// The listener stays open (and bound) until the process ends.
        Listener {
            _keep: UnixListener,
            path: PathBuf,
        },
        Abstract {
            _keep: UnixListener,
            addr: SocketAddr,
        },
    }

    enum Outcome {
        Allowed(String),
        Denied(String),
        Error(String),
    }

    fn judge(what: &str, e: Errno) -> Outcome {
        if e == Errno::EPERM || e == Errno::EACCES {
            Outcome::Denied(format!("{what}: {e}"))
        } else {
            Outcome::Error(format!("{what}: {e}"))
        }
    }

    fn judge_io(what: &str, e: &std::io::Error) -> Outcome {
        match e.raw_os_error() {
            Some(n) => judge(what, Errno::from_raw(n)),
            None => Outcome::Error(format!("{what}: {e}")),
        }
    }

    fn prepare(action: &str, dir: Option<&PathBuf>) -> Result<Prepared, String> {
        Ok(match action {
            "tcp-connect" => Prepared::Tcp(
                socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
                    .map_err(|e| format!("TCP socket: {e}"))?,
            ),
            "unix-connect" => {
                let dir = dir.ok_or("unix-connect needs --dir DIR (reachable by the user)")?;
                let path = dir.join("selftest.sock");
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path)
                    .map_err(|e| format!("bind {}: {e}", path.display()))?;
                std::fs::set_permissions(
                    &path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o777),
                )
                .map_err(|e| format!("chmod {}: {e}", path.display()))?;
                Prepared::Listener { _keep: l, path }
            }
            "abstract-connect" => {
                let name = format!("statecull-selftest-{}", std::process::id());
                let addr = SocketAddr::from_abstract_name(name.as_bytes())
                    .map_err(|e| format!("abstract name: {e}"))?;
                let l = UnixListener::bind_addr(&addr).map_err(|e| format!("bind @{name}: {e}"))?;
                Prepared::Abstract { _keep: l, addr }
            }
            "threads-refused" => {
                std::thread::Builder::new()
                    .name("idle".into())
                    .spawn(|| {
                        loop {
                            std::thread::park();
                        }
                    })
                    .map_err(|e| format!("starting a thread: {e}"))?;
                Prepared::Nothing
            }
            _ => Prepared::Nothing,
        })
    }

    fn act(action: &str, prepared: &Prepared, readable: Option<&PathBuf>) -> Outcome {
        match action {
            "ok" => Outcome::Allowed("nothing to do".into()),
            "open-passwd" => match std::fs::File::open("/etc/passwd") {
                Ok(_) => Outcome::Allowed("opened /etc/passwd".into()),
                Err(e) => judge_io("open /etc/passwd", &e),
            },
            "exec" => match nix::unistd::execv(c"/bin/true", &[c"/bin/true"]) {
                Err(e) => judge("execve /bin/true", e),
                Ok(never) => match never {},
            },
            "netlink-socket" => match socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkRoute,
            ) {
                Ok(_) => Outcome::Allowed("created a NETLINK_ROUTE socket".into()),
                Err(e) => judge("socket(AF_NETLINK, NETLINK_ROUTE)", e),
            },
            "raw-socket" => match socket(
                AddressFamily::Inet,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::Icmp,
            ) {
                Ok(_) => Outcome::Allowed("created a raw ICMP socket".into()),
                Err(e) => judge("socket(AF_INET, SOCK_RAW, ICMP)", e),
            },
            "tcp-connect" => {
                let Prepared::Tcp(fd) = prepared else {
                    return Outcome::Error("not prepared".into());
                };
                match connect(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    &SockaddrIn::new(127, 0, 0, 1, 9),
                ) {
                    Ok(()) => Outcome::Allowed("connected to 127.0.0.1:9".into()),
                    Err(e @ (Errno::EPERM | Errno::EACCES)) => judge("connect 127.0.0.1:9", e),
                    // The connect ran (refused by the peer): not confined.
                    Err(e) => Outcome::Allowed(format!("connect ran and got {e}")),
                }
            }
            "ptrace" => match nix::sys::ptrace::traceme() {
                Ok(()) => Outcome::Allowed("PTRACE_TRACEME worked".into()),
                Err(e) => judge("ptrace(PTRACE_TRACEME)", e),
            },
            "regain-caps" => {
                let raise =
                    caps::raise(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_ADMIN);
                let setuid = nix::unistd::setresuid(
                    nix::unistd::Uid::from_raw(0),
                    nix::unistd::Uid::from_raw(0),
                    nix::unistd::Uid::from_raw(0),
                );
                match (raise, setuid) {
                    (Err(r), Err(e)) if e == Errno::EPERM || e == Errno::EACCES => {
                        Outcome::Denied(format!("raising CAP_SYS_ADMIN: {r}; setresuid(0): {e}"))
                    }
                    (Err(r), Err(e)) => {
                        Outcome::Error(format!("raising CAP_SYS_ADMIN: {r}; setresuid(0): {e}"))
                    }
                    (Ok(()), _) => Outcome::Allowed("raised CAP_SYS_ADMIN".into()),
                    (_, Ok(())) => Outcome::Allowed("setresuid(0) worked".into()),
                }
            }
            "netfilter-socket" => match socket(
                AddressFamily::Netlink,
                SockType::Raw,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkNetFilter,
            ) {
                Ok(fd) => match bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &NetlinkAddr::new(0, 0))
                {
                    Ok(()) => {
                        Outcome::Allowed("created and bound a NETLINK_NETFILTER socket".into())
                    }
                    Err(e) => judge("bind(NETLINK_NETFILTER)", e),
                },
                Err(e) => judge("socket(AF_NETLINK, NETLINK_NETFILTER)", e),
            },
            "spawn-thread" => {
                match std::thread::Builder::new().name("selftest".into()).spawn(|| 42) {
                    Ok(h) => match h.join() {
                        Ok(42) => Outcome::Allowed("a thread ran and was joined".into()),
                        _ => Outcome::Error("the thread failed".into()),
                    },
                    Err(e) => judge_io("spawning a thread", &e),
                }
            }
            "spawn-process" => match std::process::Command::new("/bin/true").status() {
                Ok(s) => Outcome::Allowed(format!("/bin/true ran: {s}")),
                Err(e) => judge_io("starting /bin/true", &e),
            },
            "unix-connect" => {
                let Prepared::Listener { path, .. } = prepared else {
                    return Outcome::Error("not prepared".into());
                };
                match UnixStream::connect(path) {
                    Ok(_) => Outcome::Allowed(format!("connected to {}", path.display())),
                    Err(e) => judge_io("connect to a Unix socket path", &e),
                }
            }
            "abstract-connect" => {
                let Prepared::Abstract { addr, .. } = prepared else {
                    return Outcome::Error("not prepared".into());
                };
                match UnixStream::connect_addr(addr) {
                    Ok(_) => {
                        Outcome::Allowed("connected to an abstract socket made outside".into())
                    }
                    Err(e) => judge_io("connect to an abstract Unix socket", &e),
                }
            }
            "read-allowed" => match readable {
                Some(p) => match std::fs::read(p) {
                    Ok(b) => Outcome::Allowed(format!("read {} bytes of {}", b.len(), p.display())),
                    Err(e) => judge_io(&format!("read {}", p.display()), &e),
                },
                None => Outcome::Error("read-allowed needs --readable PATH".into()),
            },
            "write-readable" => match readable {
                Some(p) => match std::fs::OpenOptions::new().write(true).open(p) {
                    Ok(_) => Outcome::Allowed(format!("opened {} for writing", p.display())),
                    Err(e) => judge_io(&format!("open {} for writing", p.display()), &e),
                },
                None => Outcome::Error("write-readable needs --readable PATH".into()),
            },
            other => Outcome::Error(format!("unknown action {other:?}\n{USAGE}")),
        }
    }

    pub(crate) fn main() -> ExitCode {
        let mut args = std::env::args().skip(1);
        let (Some(role), Some(action)) = (args.next(), args.next()) else {
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        };
        let role = match role.as_str() {
            "engine" => Role::Engine,
            "broker" => Role::Broker,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(64);
            }
        };
        let mut user = "nobody".to_owned();
        let mut readable: Option<PathBuf> = None;
        let mut dir: Option<PathBuf> = None;
        let mut own_netns = true;
        while let Some(a) = args.next() {
            if a == "--host-netns" {
                // For starts without CAP_SYS_ADMIN (a unit's bounding set); use with `ok` only.
                own_netns = false;
                continue;
            }
            let value = args.next();
            match (a.as_str(), value) {
                ("--user", Some(v)) => user = v,
                ("--readable", Some(v)) => readable = Some(PathBuf::from(v)),
                ("--dir", Some(v)) => dir = Some(PathBuf::from(v)),
                _ => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(64);
                }
            }
        }
        if own_netns && let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
            println!("RESULT: ERROR entering a private network namespace (needs root): {e}");
            return ExitCode::from(3);
        }
        let prepared = match prepare(&action, dir.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                println!("RESULT: ERROR preparing {action}: {e}");
                return ExitCode::from(3);
            }
        };
        let plan = Plan {
            role,
            user: Some(user),
            readable_paths: readable.iter().cloned().collect(),
            net_admin: role == Role::Broker,
        };
        match confine(&plan) {
            Ok(report) => println!("{report}"),
            Err(e) => {
                println!("RESULT: CONFINE FAILED: {e}");
                return ExitCode::from(2);
            }
        }
        let _ = std::io::stdout().flush();
        let outcome = act(&action, &prepared, readable.as_ref());
        let code = match outcome {
            Outcome::Allowed(m) => {
                println!("RESULT: ALLOWED {action}: {m}");
                0
            }
            Outcome::Denied(m) => {
                println!("RESULT: DENIED {action}: {m}");
                1
            }
            Outcome::Error(m) => {
                println!("RESULT: ERROR {action}: {m}");
                3
            }
        };
        let _ = std::io::stdout().flush();
        ExitCode::from(code)
    }
}
