//! The `statecull-broker` command line: flags, logging, signals, and the serve loop.
//!
//! Lives in the library so the binary is a one-line `main` and integration tests can build
//! a binary from exactly this code.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::BrokerError;
use crate::backend::Backend;
use crate::config::{self, BackendChoice, Config, LogFormat, LogLevel};
use crate::server::Server;
use nix::sys::signal::{SigSet, Signal};

struct Args {
    config: Config,
    check: bool,
    print_sandbox: bool,
    no_sandbox: bool,
}

/// What the command line asks for: run with these settings, or print something and exit.
enum Parsed {
    Run(Box<Args>),
    Help,
    Version,
}

/// The command line (without the program name) read into settings. The flags are found
/// first (`flags::parse`), then applied over the configuration file in the table's order,
/// not the command line's: `--model-states 10 --backend pf-model` means what
/// `--backend pf-model --model-states 10` means.
fn parse_args(argv: Vec<OsString>) -> Result<Parsed, String> {
    use crate::flags::{self, FlagId, values};
    let given = flags::parse(argv)?;
    if flags::has(&given, FlagId::Help) {
        return Ok(Parsed::Help);
    }
    if flags::has(&given, FlagId::Version) {
        return Ok(Parsed::Version);
    }
    let mut config = match flags::last(&given, FlagId::Config) {
        Some(p) => Config::from_file(std::path::Path::new(p)).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let mut model_flags: Vec<(&str, &str)> = Vec::new();
    for f in flags::FLAGS {
        // Repeatable flags add up; of the others, each value replaces the one before, so
        // the last counts.
        for v in values(&given, f.id) {
            let name = f.long;
            let bad = |m: String| format!("--{name} {v}: {m}");
            match f.id {
                FlagId::Socket => config.socket = PathBuf::from(v),
                FlagId::SocketGroup => {
                    config.socket_gid = Some(config::resolve_group(v).map_err(bad)?)
                }
                FlagId::AllowUser => {
                    config.allowed_uids.push(config::resolve_user(v).map_err(bad)?)
                }
                FlagId::AllowGroup => {
                    config.allowed_gids.push(config::resolve_group(v).map_err(bad)?)
                }
                FlagId::Protect => config
                    .protected
                    .push(v.parse().map_err(|e: statecull_proto::ProtoError| bad(e.why()))?),
                FlagId::MaxConnections => config.max_connections = at_least_one(v).map_err(bad)?,
                FlagId::MaxConnectionsPerUser => {
                    config.max_connections_per_user = Some(at_least_one(v).map_err(bad)?)
                }
                FlagId::EngineUser => {
                    config.engine_uid = Some(config::resolve_user(v).map_err(bad)?)
                }
                FlagId::Backend => config.backend = config::parse_backend(v).map_err(bad)?,
                FlagId::ModelStates | FlagId::ModelSeed | FlagId::ModelRelease => {
                    model_flags.push((name, v));
                    let BackendChoice::PfModel(spec) = &mut config.backend else {
                        continue;
                    };
                    match f.id {
                        FlagId::ModelStates => {
                            spec.states =
                                v.parse().map_err(|_| bad("expected a number of states".into()))?
                        }
                        FlagId::ModelSeed => {
                            spec.seed = v.parse().map_err(|_| bad("expected a number".into()))?
                        }
                        _ => spec.release = config::parse_release(v).map_err(bad)?,
                    }
                }
                FlagId::LogFormat => {
                    config.log_format = config::parse_log_format(v).map_err(bad)?
                }
                FlagId::LogLevel => config.log_level = config::parse_log_level(v).map_err(bad)?,
                FlagId::LogTarget => {
                    config.log_target = config::parse_log_target(v).map_err(bad)?
                }
                FlagId::User => config.user = Some(v.to_owned()),
                FlagId::Config
                | FlagId::Check
                | FlagId::PrintSandbox
                | FlagId::NoSandbox
                | FlagId::Help
                | FlagId::Version => {}
            }
        }
    }
    if let Some((name, v)) = model_flags.first()
        && !matches!(config.backend, BackendChoice::PfModel(_))
    {
        return Err(format!(
            "--{name} {v}: only for --backend pf-model (the backend is {})",
            config.backend.name()
        ));
    }
    let check = flags::has(&given, FlagId::Check);
    let print_sandbox = flags::has(&given, FlagId::PrintSandbox);
    let no_sandbox = flags::has(&given, FlagId::NoSandbox);
    if print_sandbox && no_sandbox {
        return Err("--print-sandbox and --no-sandbox contradict each other".into());
    }
    Ok(Parsed::Run(Box::new(Args { config, check, print_sandbox, no_sandbox })))
}

fn at_least_one(v: &str) -> Result<usize, String> {
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| "expected a number of at least 1".to_owned())
}

fn print_help() {
    print!("{}", crate::flags::help());
    println!(
        "\nThis build: --backend pf-model is {}.",
        if cfg!(feature = "model") {
            "available"
        } else {
            "not available (no simulator in a production broker)"
        }
    );
}

/// Logging as configured (`statecull_service::log`: journald priorities, syslog).
fn init_logging(config: &Config) -> Result<(), statecull_service::ServiceError> {
    use statecull_service::log::{Format, Settings};
    use tracing_subscriber::filter::LevelFilter;
    let level = match config.log_level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let format = match config.log_format {
        LogFormat::Json => Format::Json,
        LogFormat::Text => Format::Text,
    };
    statecull_service::log::init(&Settings {
        program: "statecull-broker",
        format,
        level,
        target: config.log_target,
    })
    .map(drop)
}

fn open_backend(choice: BackendChoice) -> Result<Box<dyn Backend>, BrokerError> {
    match choice {
        #[cfg(target_os = "linux")]
        BackendChoice::Conntrack => {
            Ok(Box::new(crate::backend::conntrack::ConntrackBackend::open()?))
        }
        #[cfg(not(target_os = "linux"))]
        BackendChoice::Conntrack => {
            Err(BrokerError::Config("the conntrack backend exists only on Linux".into()))
        }
        #[cfg(target_os = "freebsd")]
        BackendChoice::Pf => {
            use statecull_pf::device::PfDevice;
            let open = |what: &str| {
                statecull_pf::sys::FreeBsdDevice::open()
                    .map_err(|e| BrokerError::Backend(format!("cannot open pf ({what}): {e}")))
            };
            // Two handles, opened before confinement: kills and reads each get a lane.
            let dev = open("kill lane")?;
            let reads = dev.another().map_err(|e| {
                BrokerError::Backend(format!("cannot open pf (read lane): errno {}", e.0))
            })?;
            // A third for ruleset tickets: the engine polls them while a kill waits.
            let tickets = dev.another().map_err(|e| {
                BrokerError::Backend(format!("cannot open pf (ticket lane): errno {}", e.0))
            })?;
            // Capsicum: /dev/pf keeps exactly the ioctls the backend (and its probes) use,
            // the netlink socket send/receive; capability mode comes with `confine`.
            for d in [&dev, &reads, &tickets] {
                d.limit_capabilities().map_err(|e| {
                    BrokerError::Backend(format!("cannot limit the pf descriptors: {e}"))
                })?;
            }
            let client = statecull_pf::client::PfClient::probe(dev)
                .map_err(|e| BrokerError::Backend(format!("pf: {e}")))?;
            let reader = client.alongside(reads);
            let tickets = client.alongside(tickets);
            let kernel = statecull_pf::sys::kernel_release();
            // The id-hash rows the path choice weighs row restarts with: read, not assumed.
            let rows = match statecull_pf::sys::states_hashsize() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(
                        "cannot read net.pf.states_hashsize ({e}); assuming FreeBSD's default {}",
                        statecull_pf::types::DEFAULT_ROWS
                    );
                    statecull_pf::types::DEFAULT_ROWS as u64
                }
            };
            Ok(Box::new(
                crate::backend::pf::PfBackend::new(
                    client,
                    reader,
                    statecull_proto::BackendKind::Pf,
                    kernel,
                    rows,
                )
                .with_ticket_lane(tickets),
            ))
        }
        #[cfg(not(target_os = "freebsd"))]
        BackendChoice::Pf => Err(BrokerError::Config(
            "the pf backend exists only on FreeBSD; --backend pf-model runs pf's model anywhere"
                .into(),
        )),
        #[cfg(feature = "model")]
        BackendChoice::PfModel(spec) => open_model(spec),
        #[cfg(not(feature = "model"))]
        BackendChoice::PfModel(_) => Err(BrokerError::Config(config::NO_MODEL.into())),
    }
}

#[cfg(feature = "model")]
fn open_model(spec: config::ModelSpec) -> Result<Box<dyn Backend>, BrokerError> {
    use statecull_pf::client::PfClient;
    use statecull_pf::model_device::{ModelDevice, Release};
    let started = std::time::Instant::now();
    let generated = statecull_pf::table_gen::router_table(&statecull_pf::table_gen::Spec::new(
        spec.states,
        spec.seed,
    ))
    .map_err(|e| BrokerError::Backend(format!("pf model: {e}")))?;
    let states = generated.model.len();
    let rows = generated.model.rows() as u64;
    let release = match spec.release {
        13 => Release::FREEBSD_13,
        14 => Release::FREEBSD_14,
        _ => Release::FREEBSD_15,
    };
    let client = PfClient::probe(ModelDevice::new(generated.model, release))
        .map_err(|e| BrokerError::Backend(format!("pf model: {e}")))?;
    tracing::info!(
        states,
        seed = spec.seed,
        release = spec.release,
        build_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "pf model ready"
    );
    let kernel =
        format!("pf model of FreeBSD {}, {states} states (seed {})", spec.release, spec.seed);
    let backend = std::sync::Arc::new(crate::backend::pf::PfBackend::with_second_lane(
        client,
        statecull_proto::BackendKind::PfModel,
        kernel,
        rows,
    )?);
    let hook = std::sync::Arc::clone(&backend);
    let _ = MODEL_RULESET_COMMIT
        .set(Box::new(move || hook.with_device(|d| d.model().commit_ruleset())));
    Ok(Box::new(backend))
}

/// pf-model only: what SIGUSR1 does (a ruleset commit in the model; returns the new ticket).
/// The test harness's stand-in for pfSense or OPNsense reloading the filter.
#[cfg(feature = "model")]
type ModelCommit = Box<dyn Fn() -> u32 + Send + Sync>;
#[cfg(feature = "model")]
static MODEL_RULESET_COMMIT: std::sync::OnceLock<ModelCommit> = std::sync::OnceLock::new();

/// Signals that stop the broker the way SIGTERM does: stop accepting, finish the requests in
/// flight (never a kill half done), write their audit lines, exit 0.
const STOP_SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Signals whose default action would end the process (or stop it for no reason) and which
/// the broker has no use for: taken and logged, nothing else. Any process of the broker's uid
/// may send them, and dying on one in the middle of a kill would leave the kill half done and
/// unaudited. Synchronous faults (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS) keep
/// their defaults: they mean a bug (or a seccomp kill), and continuing would be wrong.
fn ignored_signals() -> Vec<Signal> {
    let mut v = vec![
        Signal::SIGHUP,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
        Signal::SIGIO,
        Signal::SIGXCPU,
        Signal::SIGXFSZ,
        Signal::SIGPIPE,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ];
    #[cfg(target_os = "linux")]
    v.extend([Signal::SIGPWR, Signal::SIGSTKFLT]);
    #[cfg(target_os = "freebsd")]
    v.push(Signal::SIGINFO);
    v
}

/// Every signal the signal thread takes: the stop signals, the ignored ones, and (Linux) the
/// real-time signals, whose default action also ends the process.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in STOP_SIGNALS.iter().chain(&ignored_signals()) {
        set.add(*s);
    }
    #[cfg(target_os = "linux")]
    {
        // nix names no real-time signal; start from "everything" and take out what must
        // keep its default action or is not a signal to wait for.
        let mut all = SigSet::all();
        for keep in [
            Signal::SIGSEGV,
            Signal::SIGBUS,
            Signal::SIGILL,
            Signal::SIGFPE,
            Signal::SIGTRAP,
            Signal::SIGSYS,
            Signal::SIGABRT,
            Signal::SIGKILL,
            Signal::SIGSTOP,
            Signal::SIGCHLD,
            Signal::SIGCONT,
            Signal::SIGWINCH,
            Signal::SIGURG,
        ] {
            all.remove(keep);
        }
        set = all;
    }
    set
}

/// Where the signal thread takes signals from. On Linux a signalfd, opened before
/// confinement: `sigwait` would have to name every signal it returns, and nix's wrapper
/// panics on the real-time ones. Elsewhere `sigwait` on the set (no real-time signals in it).
struct SignalSource {
    #[cfg(target_os = "linux")]
    fd: nix::sys::signalfd::SignalFd,
    #[cfg(not(target_os = "linux"))]
    set: SigSet,
}

impl SignalSource {
    fn open(set: SigSet) -> Result<Self, BrokerError> {
        #[cfg(target_os = "linux")]
        {
            use nix::sys::signalfd::{SfdFlags, SignalFd};
            let fd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC)
                .map_err(|e| BrokerError::io("signalfd", e.into()))?;
            Ok(Self { fd })
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(Self { set })
        }
    }

    /// The next signal's number and name.
    fn next(&mut self) -> Option<(i32, String)> {
        #[cfg(target_os = "linux")]
        {
            loop {
                match self.fd.read_signal() {
                    Ok(Some(info)) => {
                        let n = i32::try_from(info.ssi_signo).unwrap_or(0);
                        let name = Signal::try_from(n)
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_else(|_| format!("signal {n} (real-time)"));
                        return Some((n, name));
                    }
                    Ok(None) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return None,
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            self.set.wait().ok().map(|s| (s as i32, s.as_str().to_owned()))
        }
    }
}

/// Take signals on a thread of its own (all of them are blocked in every thread): a stop
/// signal writes to `stop` and ends the thread; the others are logged (once a minute per
/// signal at most) and otherwise ignored.
fn signal_thread(
    mut source: SignalSource,
    stop: std::os::fd::OwnedFd,
    notifier: std::sync::Arc<statecull_service::notify::Notifier>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut last_logged: std::collections::HashMap<i32, std::time::Instant> =
                std::collections::HashMap::new();
            while let Some((n, name)) = source.next() {
                if STOP_SIGNALS.iter().any(|s| *s as i32 == n) {
                    tracing::info!(signal = %name, "stop requested");
                    if let Err(e) = notifier
                        .stopping(&format!("stopping ({name}): finishing requests in flight"))
                    {
                        tracing::warn!("{e}");
                    }
                    let _ = nix::unistd::write(&stop, b"x");
                    return;
                }
                #[cfg(feature = "model")]
                if n == Signal::SIGUSR1 as i32
                    && let Some(commit) = MODEL_RULESET_COMMIT.get()
                {
                    let ticket = commit();
                    tracing::info!(ticket, "pf model: filter ruleset committed (SIGUSR1)");
                    continue;
                }
                let now = std::time::Instant::now();
                let quiet = last_logged
                    .get(&n)
                    .is_some_and(|t| now.duration_since(*t) < std::time::Duration::from_secs(60));
                if !quiet {
                    last_logged.insert(n, now);
                    tracing::info!(
                        signal = %name,
                        "signal ignored (the broker stops on SIGTERM, SIGINT or SIGQUIT; it has \
                         no configuration to reload)"
                    );
                }
            }
            // The signal source failed: stop rather than run on with stray signals blocked
            // forever and no way to be stopped but SIGKILL.
            tracing::error!("cannot read signals any more; stopping");
            let _ = nix::unistd::write(&stop, b"x");
        })
        .map(drop)
}

fn run(args: Args) -> Result<(), BrokerError> {
    // Block every handled signal in every thread (threads inherit the mask); one thread
    // waits for them synchronously. Signals that arrive before it starts stay pending.
    let signals = handled_signals();
    signals.thread_block().map_err(|e| BrokerError::io("block signals", e.into()))?;
    // Opened now: no descriptor can be created once confined.
    let signal_source = SignalSource::open(signals)?;

    // The pf model is memory, not a kernel table: it needs no capability at all.
    let kernel_table = !matches!(args.config.backend, BackendChoice::PfModel(_));
    let backend = open_backend(args.config.backend)?;
    if args.check {
        let info = backend.info();
        println!("backend: {} (kernel {})", info.kind, info.kernel);
        let c = &info.capabilities;
        println!(
            "selectors: {}",
            c.selector_fields.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
        );
        println!("kernel mark flush: {}", c.kernel_mark_flush);
        println!(
            "kernel tuple ({}) flush: {}",
            if c.listing_only.is_empty() { "NAT address" } else { "host, port, protocol" },
            if c.kernel_tuple_flush.is_empty() {
                "no".to_owned()
            } else {
                c.kernel_tuple_flush.iter().map(|f| f.to_string()).collect::<Vec<_>>().join(", ")
            }
        );
        if !c.listing_only.is_empty() {
            println!(
                "always a listing, then kills by id: {}",
                c.listing_only.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            );
        }
        println!("protected prefixes: {}", args.config.protected.len());
        return Ok(());
    }
    let user = args.config.user.clone();
    // The service manager's socket (Type=notify), connected while sockets may be created.
    let notifier = if args.print_sandbox {
        statecull_service::notify::Notifier::none()
    } else {
        statecull_service::notify::Notifier::from_env()
            .map_err(|e| BrokerError::Config(e.to_string()))?
    };
    let serving =
        format!("serving on {} ({} backend)", args.config.socket.display(), backend.info().kind);
    let server = Server::bind(args.config, backend)?;
    // Everything privileged is open (state table, socket): confine before the first client,
    // and before the signal thread exists (confinement applies per thread).
    let user =
        user.or_else(|| nix::unistd::geteuid().is_root().then(|| config::DEFAULT_USER.to_owned()));
    #[cfg(target_os = "freebsd")]
    if !args.no_sandbox {
        use statecull_sandbox::freebsd::{FdUse, limit};
        use std::os::fd::AsFd;
        let e = |e: statecull_sandbox::SandboxError| BrokerError::Config(e.to_string());
        limit(server.listener_fd(), &FdUse::Listener).map_err(e)?;
        limit(std::io::stdout().as_fd(), &FdUse::Output).map_err(e)?;
        limit(std::io::stderr().as_fd(), &FdUse::Output).map_err(e)?;
        // Notifications and syslog messages: sends on connected sockets.
        for fd in notifier.fd().into_iter().chain(statecull_service::log::syslog_fd()) {
            limit(fd, &FdUse::Output).map_err(e)?;
        }
    }
    let confinement = statecull_sandbox::DaemonConfinement {
        program: "statecull-broker",
        plan: statecull_sandbox::Plan {
            role: statecull_sandbox::Role::Broker,
            user,
            readable_paths: Vec::new(),
            net_admin: kernel_table,
        },
        no_sandbox: args.no_sandbox,
    };
    let report = statecull_sandbox::confine_daemon(&confinement).map_err(|e| {
        BrokerError::Config(format!(
            "cannot confine the broker: {e} (pass --user NAME for an existing user, or --no-sandbox for development)"
        ))
    })?;
    if let Some(report) = report
        && args.print_sandbox
    {
        println!("{report}");
        return Ok(());
    }
    let (stop_read, stop_write) =
        nix::unistd::pipe().map_err(|e| BrokerError::io("pipe", e.into()))?;
    let notifier = std::sync::Arc::new(notifier);
    signal_thread(signal_source, stop_write, std::sync::Arc::clone(&notifier))
        .map_err(|e| BrokerError::io("start the signal thread", e))?;
    // Bound, confined, signals taken: clients that connect now are served (the listener's
    // backlog holds them until the accept loop runs).
    if let Err(e) = notifier.ready(&serving) {
        tracing::error!("{e}");
    }
    server.run(stop_read)
}

/// Run the broker with these arguments (without the program name).
///
/// A broker that cannot start says why in one line, `statecull-broker: REASON`, on standard
/// error, whether the reason is found before logging starts (command line, configuration)
/// or after (the state table, the socket, confinement): exit status 2 for the command line
/// and the configuration, 1 for the rest.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let args = match parse_args(args.into_iter().collect()) {
        Ok(Parsed::Run(a)) => *a,
        Ok(Parsed::Help) => {
            print_help();
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("statecull-broker {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => return fatal(&e, 2),
    };
    if let Err(e) = init_logging(&args.config) {
        return fatal(&e, 1);
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ BrokerError::Config(_)) => fatal(&e, 2),
        Err(e) => fatal(&e, 1),
    }
}

/// The one form of a fatal error.
fn fatal(e: &dyn std::fmt::Display, code: u8) -> ExitCode {
    use statecull_service::log::{Priority, stderr_line};
    eprintln!("{}", stderr_line(Priority::ERR, &format!("statecull-broker: {e}")));
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Args, String> {
        match parse_args(line.split_whitespace().map(OsString::from).collect())? {
            Parsed::Run(a) => Ok(*a),
            Parsed::Help => Err("help".into()),
            Parsed::Version => Err("version".into()),
        }
    }

    #[test]
    fn flags_override_the_file_wherever_they_stand() {
        let dir = std::env::temp_dir().join(format!("statecull-broker-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("broker.toml");
        std::fs::write(&file, "socket = \"/run/from-file.sock\"\nmax_connections = 4\n").unwrap();
        let f = file.display();
        for line in [
            format!("-c {f} --socket /run/flag.sock"),
            format!("--socket /run/flag.sock -c {f}"),
            format!("--socket /run/flag.sock --config {f}"),
        ] {
            let a = parse(&line).unwrap();
            assert_eq!(a.config.socket, PathBuf::from("/run/flag.sock"), "{line}");
            assert_eq!(a.config.max_connections, 4, "{line}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn of_a_one_value_flag_given_twice_the_last_counts() {
        // As rc.d appends statecull_broker_flags after its fixed flags.
        let a = parse("--log-format json --socket /run/a.sock --log-format text -s /run/b.sock")
            .unwrap();
        assert_eq!(a.config.socket, PathBuf::from("/run/b.sock"));
        assert_eq!(a.config.log_format, LogFormat::Text);
    }

    #[test]
    fn repeatable_flags_add_up_in_order() {
        let a =
            parse("--protect 192.0.2.0/28 --socket /run/x.sock --protect 2001:db8::/48").unwrap();
        let p: Vec<String> = a.config.protected.iter().map(|p| p.to_string()).collect();
        assert_eq!(p, ["192.0.2.0/28", "2001:db8::/48"]);
    }

    #[test]
    fn model_flags_without_the_model_backend_are_refused_whatever_the_order() {
        for line in [
            "--model-states 10",
            "--model-states 10 --backend conntrack",
            "--backend conntrack --model-seed 3",
        ] {
            let e = parse(line).err().unwrap();
            assert!(
                e.contains("only for --backend pf-model (the backend is conntrack)"),
                "{line}: {e}"
            );
        }
    }

    #[cfg(feature = "model")]
    #[test]
    fn model_flags_work_before_or_after_the_backend() {
        for line in [
            "--model-states 10 --model-release 13 --backend pf-model --model-seed 7",
            "--backend pf-model --model-states 10 --model-seed 7 --model-release 13",
        ] {
            let a = parse(line).unwrap();
            let BackendChoice::PfModel(spec) = a.config.backend else { panic!("{line}") };
            assert_eq!((spec.states, spec.seed, spec.release), (10, 7, 13), "{line}");
        }
    }

    #[test]
    fn bad_values_name_their_flag() {
        assert_eq!(
            parse("--max-connections 0").err().unwrap(),
            "--max-connections 0: expected a number of at least 1"
        );
        assert!(parse("--log-level loud").err().unwrap().starts_with("--log-level loud: "));
        assert_eq!(
            parse("--no-sandbox --print-sandbox").err().unwrap(),
            "--print-sandbox and --no-sandbox contradict each other"
        );
        assert_eq!(parse("--check -h").err().unwrap(), "help");
        assert_eq!(parse("-V").err().unwrap(), "version");
    }
}
