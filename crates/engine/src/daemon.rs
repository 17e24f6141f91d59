//! `statecull-engine`: command line, start-up order and the tasks.
//!
//! Start-up opens everything first (policy read into memory, broker link, probe sockets,
//! route watcher, control socket, metrics listener) and only then starts working, so that
//! issue 5's confinement can slot in between "opened" and "working".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use statecull_control::EventKind;
use statecull_policy::model::{HealthSource, RoutingConfirm};

use crate::broker::BrokerLink;
use crate::error::EngineError;
use crate::events::NewEvent;
use crate::executor::Executor;
use crate::probe::{ProbeResult, ProbeSpec, Prober};
use crate::raw_probe::RawProber;
use crate::routes::{RouteSocket, RouteWatcher, Routes};
use crate::state::Shared;

/// How often timers (hold-down, damping decay) are evaluated.
const TICK: Duration = Duration::from_millis(100);
/// How often the broker link is looked at (connected or lost events; a cheap Hello on the
/// background lane, which reconnects only when its connection has gone idle). The states
/// per gateway are counted by `crate::states` within their own budget.
const LINK_CHECK: Duration = Duration::from_secs(15);
/// How long a link check waits for the background lane (it stands aside during plans).
const LINK_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogTarget {
    /// Standard error; each line starts with its syslog priority (<3> error to <7> debug)
    /// when standard error is the journal (JOURNAL_STREAM), for `journalctl -p`
    Stderr,
    /// The local syslog socket (/var/run/log on FreeBSD, /dev/log on Linux), one message per
    /// event, facility daemon, tag statecull-engine, with its priority
    Syslog,
}

/// statecull-engine: watches gateways and, when one fails, has the broker kill exactly the
/// connection states that went through it, after routing has moved off it.
///
/// The policy file (TOML) names the gateways, how their health is judged, how their states
/// are recognised, the failover groups and what to do on failure and recovery; see
/// `statecull check-policy FILE` and the examples shipped with statecull. The engine needs
/// no privilege on Linux: ICMP probes use datagram sockets (the engine's group must be inside
/// `net.ipv4.ping_group_range`), kills go through the broker's socket. On FreeBSD it is
/// started as root with --user: it opens raw ICMP sockets and the socket directories of the
/// broker and dpinger, then drops to the user and enters Capsicum capability mode.
#[derive(Debug, Parser)]
#[command(
    name = "statecull-engine",
    version,
    max_term_width = 100,
    after_long_help = concat!(
        "SIGNALS:\n",
        "  SIGHUP     read the policy file again and put it in force, or refuse it and keep\n",
        "             the one in force (a refusal is logged at warning). `statecull reload`\n",
        "             does the same and waits for the answer; `systemctl reload` runs it.\n",
        "  SIGTERM, SIGINT, SIGQUIT\n",
        "             stop (systemd: STOPPING=1).\n",
        "  others     logged and ignored.\n",
        "\n",
        "EXIT STATUS:\n",
        "  0  stopped by a signal, or --check / --print-sandbox done\n",
        "  1  a start-up error (a policy that does not load, a socket that cannot be opened,\n",
        "     confinement that fails) or an engine task that failed (systemd's\n",
        "     Restart=on-failure restarts it)\n",
        "  2  bad flags",
    )
)]
struct Args {
    /// The policy file
    #[arg(long, short = 'p', value_name = "FILE", env = "STATECULL_POLICY")]
    policy: PathBuf,
    #[arg(
        long,
        value_name = "PATH",
        env = "STATECULL_BROKER_SOCKET",
        help = concat!(
            "The broker's socket [default: policy's engine.broker_socket, else ",
            statecull_proto::broker_socket!(),
            "]"
        )
    )]
    broker_socket: Option<PathBuf>,
    #[arg(
        long,
        value_name = "PATH",
        env = "STATECULL_CONTROL_SOCKET",
        help = concat!(
            "Where to listen for `statecull status|plan|gateway|events` [default: policy's \
             engine.control_socket, else ",
            statecull_proto::control_socket!(),
            "]"
        )
    )]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on ADDR:PORT (GET /metrics) [default: policy's engine.metrics_listen, else none]
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Log format (one JSON object per line with --log-format json)
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level: error, warn, info, debug, trace
    #[arg(long, default_value = "info")]
    log_level: tracing_subscriber::filter::LevelFilter,
    /// Where log lines go (rc.d: syslog, so each line keeps its priority)
    #[arg(long, value_enum, default_value = "stderr")]
    log_target: LogTarget,
    /// Check the policy and open every socket, print what would run, and exit
    #[arg(long)]
    check: bool,
    /// After opening everything, switch to USER (name or uid) with no capabilities,
    /// no_new_privs, no filesystem beyond the policy's engine.readable_paths (Landlock) and
    /// a seccomp allow-list [default when started as root: statecull]
    #[arg(long, value_name = "USER")]
    user: Option<String>,
    /// Start up, confine, print the confinement in force, and exit
    #[arg(long, conflicts_with_all = ["no_sandbox", "check"])]
    print_sandbox: bool,
    /// DEVELOPMENT ONLY: no user switch and no confinement (a loud warning is logged at
    /// every start)
    #[arg(long)]
    no_sandbox: bool,
    /// Close a control connection that sends no complete request line for this many
    /// milliseconds (tests use a short one)
    #[arg(long, value_name = "MS", hide = true)]
    control_idle_timeout_ms: Option<u64>,
}

/// The engine's own user (see sandbox/profiles/systemd/statecull.sysusers).
pub const DEFAULT_USER: &str = "statecull";

/// Logging as asked (`statecull_service::log`: journald priorities, syslog).
fn init_logging(args: &Args) -> Result<(), statecull_service::ServiceError> {
    use statecull_service::log::{Format, Settings, Target};
    statecull_service::log::init(&Settings {
        program: "statecull-engine",
        format: match args.log_format {
            LogFormat::Text => Format::Text,
            LogFormat::Json => Format::Json,
        },
        level: args.log_level,
        target: match args.log_target {
            LogTarget::Stderr => Target::Stderr,
            LogTarget::Syslog => Target::Syslog,
        },
    })
    .map(drop)
}

/// The engine's command line as clap describes it (for man pages and completions).
pub fn command() -> clap::Command {
    <Args as clap::CommandFactory>::command()
}

pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args = Args::parse_from(args);
    if let Err(e) = init_logging(&args) {
        return fatal(&e);
    }
    // A parent may have left signals blocked (a supervisor that waits for signals with
    // sigwait does); the mask is inherited across exec, and blocked signals never reach
    // tokio's handlers. Unblock the ones the engine handles before any thread exists, so
    // every thread inherits it. (Real-time signals cannot be named here; left blocked they
    // stay pending and harmless.)
    let handled: nix::sys::signal::SigSet = crate::signals::STOP
        .iter()
        .map(|(n, _)| *n)
        .chain(std::iter::once(crate::signals::RELOAD.0))
        .chain(crate::signals::ignored().into_iter().map(|(n, _)| n))
        .filter_map(|n| nix::sys::signal::Signal::try_from(n).ok())
        .collect();
    if let Err(e) = handled.thread_unblock() {
        return fatal(&format!("cannot unblock the signals it handles: {e}"));
    }
    // One thread until confinement: Landlock and capability changes apply per thread, so
    // `confine` refuses to run with more. Broker calls run on this thread (the tokio
    // driver); the blocking pool, whose threads are created after confinement and inherit
    // it, only matches large snapshots against protected flows.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fatal(&format!("cannot start the runtime: {e}"));
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fatal(&e),
    }
}

/// The one form of a fatal error: `statecull-engine: REASON` on standard error (at priority
/// error when that is the journal), exit status 1.
fn fatal(e: &dyn std::fmt::Display) -> ExitCode {
    use statecull_service::log::{Priority, stderr_line};
    eprintln!("{}", stderr_line(Priority::ERR, &format!("statecull-engine: {e}")));
    ExitCode::FAILURE
}

/// The engine's ICMP prober: datagram sockets on Linux (no privilege), raw sockets opened
/// as root on FreeBSD (which has no datagram ICMP sockets; `raw_probe.rs`).
#[derive(Debug)]
enum Probes {
    Datagram(Prober),
    Raw(RawProber),
}

impl Probes {
    async fn open(specs: Vec<ProbeSpec>) -> Result<Self, EngineError> {
        if cfg!(target_os = "freebsd") {
            Ok(Probes::Raw(RawProber::open(specs)?))
        } else {
            Ok(Probes::Datagram(Prober::open(specs).await?))
        }
    }

    fn start(self, tx: tokio::sync::mpsc::Sender<ProbeResult>) -> tokio::task::JoinSet<()> {
        match self {
            Probes::Datagram(p) => p.start(tx),
            Probes::Raw(p) => p.start(tx),
        }
    }
}

/// Everything the engine opens before it starts working.
struct Opened {
    shared: Arc<Shared>,
    decisions: tokio::sync::mpsc::UnboundedReceiver<crate::state::Decision>,
    metrics_rx: tokio::sync::watch::Receiver<crate::metrics::EngineMetrics>,
    prober: Option<Probes>,
    routes: Option<Routes>,
    control: tokio::net::UnixListener,
    control_path: PathBuf,
    control_limits: crate::control::ControlLimits,
    metrics: Option<tokio::net::TcpListener>,
    /// Every Unix socket the engine will ever connect to (the broker, dpinger status
    /// sockets), registered before confinement; see `dial.rs`.
    dialer: crate::dial::Dialer,
    /// Installed before confinement (see `signals.rs`).
    signals: crate::signals::Signals,
    /// `nat_addr = "interface"`: the interfaces' addresses.
    addresses: Option<crate::routes::Addresses>,
    /// The service manager's socket (`NOTIFY_SOCKET`), connected before confinement.
    notifier: statecull_service::notify::Notifier,
}

/// Raise the soft descriptor limit to the hard one: the soft limit (1024 by default) is
/// only a guard for programs that use `select`, which the engine does not, and running out
/// makes health sources unreadable. Bounded by the control socket's and the metrics
/// listener's connection caps, the engine needs far fewer; the systemd unit sets both limits
/// with `LimitNOFILE=`.
fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!("descriptor limit raised from {soft} to {hard}"),
            Err(e) => tracing::warn!("descriptor limit stays {soft} (hard {hard}): {e}"),
        },
        Ok((soft, _)) => tracing::info!("descriptor limit {soft}"),
        Err(e) => tracing::warn!("cannot read the descriptor limit: {e}"),
    }
}

async fn open(args: &Args) -> Result<Opened, EngineError> {
    let text = std::fs::read_to_string(&args.policy)
        .map_err(|source| EngineError::Read { path: args.policy.clone(), source })?;
    let policy = statecull_policy::load::parse(&text, &args.policy.display().to_string())?;
    let broker_socket = args
        .broker_socket
        .clone()
        .or_else(|| policy.engine.broker_socket.as_ref().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(statecull_client::DEFAULT_BROKER_SOCKET));
    let control_path = args
        .control_socket
        .clone()
        .or_else(|| policy.engine.control_socket.as_ref().map(PathBuf::from))
        .unwrap_or_else(crate::control::default_path);
    let metrics_addr = args.metrics.or(policy.engine.metrics_listen);

    let specs: Vec<ProbeSpec> = policy
        .gateways
        .iter()
        .enumerate()
        .filter(|(_, g)| g.source == HealthSource::Icmp)
        .map(|(i, g)| ProbeSpec {
            gateway: i,
            name: g.name.clone(),
            interface: Some(g.interface.to_string()),
            targets: g.monitor.clone(),
            source: g.probe_source,
            fib: g.fib,
            interval: g.probe_interval,
            timeout: g.probe_timeout,
        })
        .collect();
    let prober = if specs.is_empty() { None } else { Some(Probes::open(specs).await?) };
    let routes = match policy.routing.confirm {
        RoutingConfirm::Rtnetlink => match RouteWatcher::open() {
            Ok(w) => Some(Routes::Netlink(w)),
            Err(e) => {
                tracing::warn!(
                    "cannot watch routes ({e}); routing will be confirmed by `routed` signals or the settle delay"
                );
                None
            }
        },
        RoutingConfirm::RouteSocket => match RouteSocket::open() {
            Ok(s) => Some(Routes::Socket(s)),
            Err(e) => {
                tracing::warn!(
                    "cannot open the routing socket ({e}); routing will be confirmed by `routed` signals or the settle delay"
                );
                None
            }
        },
        _ => None,
    };
    // `nat_addr = "interface"`: the interfaces' addresses (rtnetlink, routing socket).
    let addresses = if policy.uses_interface_addresses() {
        Some(crate::routes::Addresses::open(0).await?)
    } else {
        None
    };
    raise_nofile_limit();
    let signals = crate::signals::Signals::install()?;
    let control = crate::control::bind(&control_path)?;
    let mut control_limits = crate::control::ControlLimits::default();
    if let Some(ms) = args.control_idle_timeout_ms {
        control_limits.idle_timeout = Duration::from_millis(ms.max(1));
    }
    let metrics = match metrics_addr {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| EngineError::io(format!("binding the metrics listener {a}"), e))?,
        ),
        None => None,
    };
    let dialer = crate::dial::Dialer::open(dial_targets(&policy, &broker_socket))?;
    let notifier = if args.check || args.print_sandbox {
        statecull_service::notify::Notifier::none()
    } else {
        statecull_service::notify::Notifier::from_env()
            .map_err(|e| EngineError::Config(e.to_string()))?
    };
    let broker =
        BrokerLink::with_dialer(broker_socket, dialer.clone(), crate::broker::DEFAULT_IDLE_LIMIT);
    let (shared, decisions, metrics_rx) = Shared::new(policy, broker);
    if let Some(w) = &addresses {
        shared.set_addresses(w.book().clone());
    }
    shared.set_start_up(crate::reload::StartUp {
        policy: crate::reload::PolicyFile::open(&args.policy)?,
        broker_socket_flag: args.broker_socket.is_some(),
        control_socket_flag: args.control_socket.is_some(),
        metrics_flag: args.metrics.is_some(),
    });
    Ok(Opened {
        shared: Arc::new(shared),
        decisions,
        metrics_rx,
        prober,
        routes,
        control,
        control_path,
        control_limits,
        metrics,
        dialer,
        signals,
        addresses,
        notifier,
    })
}

/// Every Unix socket the engine will connect to, for its dialer: the broker's, and each
/// dpinger status socket the policy names. Nothing else can be reached after confinement.
pub fn dial_targets(
    policy: &statecull_policy::Policy,
    broker_socket: &std::path::Path,
) -> Vec<(String, PathBuf)> {
    std::iter::once(("the broker".to_owned(), broker_socket.to_owned()))
        .chain(policy.gateways.iter().filter_map(|g| match &g.source {
            HealthSource::Dpinger { socket } => {
                Some((format!("dpinger of {}", g.name), PathBuf::from(socket)))
            }
            HealthSource::Icmp | HealthSource::External => None,
        }))
        .collect()
}

async fn run(args: Args) -> Result<(), EngineError> {
    let opened = open(&args).await?;
    if let Err(e) = confine(&args, &opened) {
        let _ = std::fs::remove_file(&opened.control_path);
        return Err(e);
    }
    if args.print_sandbox {
        println!("{}", statecull_sandbox::current());
        return Ok(());
    }
    let shared = Arc::clone(&opened.shared);
    if args.check {
        println!("{}", statecull_policy::load::explain(&shared.policy()));
        match shared.broker.hello().await {
            Ok(h) => println!(
                "broker at {}: {} on {}",
                shared.broker.path().display(),
                h.backend.kind,
                h.backend.kernel
            ),
            Err(e) => println!("broker at {}: NOT reachable: {e}", shared.broker.path().display()),
        }
        println!("sockets reachable after confinement (dialer):");
        for (path, what) in opened.dialer.targets() {
            println!("  {} ({what})", path.display());
        }
        let _ = std::fs::remove_file(&opened.control_path);
        return Ok(());
    }
    let control_path = opened.control_path.clone();
    let result = work(opened).await;
    let _ = std::fs::remove_file(&control_path);
    result
}

/// Everything is open: give up every privilege (unless --no-sandbox or --check).
fn confine(args: &Args, opened: &Opened) -> Result<(), EngineError> {
    if args.check {
        return Ok(());
    }
    let user = args
        .user
        .clone()
        .or_else(|| nix::unistd::geteuid().is_root().then(|| DEFAULT_USER.to_owned()));
    // FreeBSD: every kept descriptor gets only the rights it is used for before capability
    // mode. The dialer's socket directories were limited when it opened them (`dial.rs`):
    // every later broker or dpinger connection is a `connectat(2)` in one of them.
    #[cfg(target_os = "freebsd")]
    if !args.no_sandbox {
        use statecull_sandbox::freebsd::{FdUse, limit};
        use std::os::fd::AsFd;
        let e = |e: statecull_sandbox::SandboxError| EngineError::Config(e.to_string());
        limit(opened.control.as_fd(), &FdUse::Listener).map_err(e)?;
        if let Some(m) = &opened.metrics {
            limit(m.as_fd(), &FdUse::Listener).map_err(e)?;
        }
        // Raw ICMP sockets, opened as root and connected to their targets: send, receive,
        // events (capability mode refuses sendto with an address, and any new socket).
        if let Some(Probes::Raw(p)) = &opened.prober {
            for fd in p.descriptors() {
                limit(fd, &FdUse::Probe).map_err(e)?;
            }
        }
        limit(std::io::stdout().as_fd(), &FdUse::Output).map_err(e)?;
        limit(std::io::stderr().as_fd(), &FdUse::Output).map_err(e)?;
        // Notifications and syslog messages: sends on connected sockets.
        for fd in opened.notifier.fd().into_iter().chain(statecull_service::log::syslog_fd()) {
            limit(fd, &FdUse::Output).map_err(e)?;
        }
    }
    let confinement = statecull_sandbox::DaemonConfinement {
        program: "statecull-engine",
        plan: statecull_sandbox::Plan {
            role: statecull_sandbox::Role::Engine,
            net_admin: false,
            user,
            // The policy's own directory too, so that a reload can read it again.
            readable_paths: opened
                .shared
                .policy()
                .engine
                .readable_paths
                .iter()
                .map(PathBuf::from)
                .chain(crate::reload::policy_dirs(&args.policy))
                .collect(),
        },
        no_sandbox: args.no_sandbox,
    };
    statecull_sandbox::confine_daemon(&confinement).map_err(|e| {
        EngineError::Config(format!(
            "cannot confine the engine: {e} (pass --user NAME for an existing user, or --no-sandbox for development)"
        ))
    })?;
    Ok(())
}

async fn work(opened: Opened) -> Result<(), EngineError> {
    let Opened {
        shared,
        decisions,
        metrics_rx,
        prober,
        routes,
        control,
        control_path,
        control_limits,
        metrics,
        dialer,
        mut signals,
        addresses,
        notifier,
    } = opened;
    let mut tasks = tokio::task::JoinSet::new();
    // Gateways as start-up numbered them: probes and pollers name theirs, since a reload
    // may renumber the gateways (`Shared::reload`).
    let started = shared.policy();

    // Probes -> health machines.
    if let Some(prober) = prober {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        let probe_tasks = prober.start(tx);
        let s = Arc::clone(&shared);
        let names: Vec<String> = started.gateways.iter().map(|g| g.name.clone()).collect();
        tasks.spawn(async move {
            let _keep = probe_tasks;
            while let Some(r) = rx.recv().await {
                let sent = crate::events::unix_ms()
                    .saturating_sub(u64::try_from(r.sent_at.elapsed().as_millis()).unwrap_or(0));
                if let Some(name) = names.get(r.gateway) {
                    s.record_probe(name.as_str(), r.probe, sent);
                }
            }
        });
    }
    // dpinger status sockets.
    for g in &started.gateways {
        if let HealthSource::Dpinger { socket } = &g.source {
            tasks.spawn(crate::sources::poll_dpinger(
                Arc::clone(&shared),
                dialer.clone(),
                g.name.clone(),
                PathBuf::from(socket),
                g.probe_interval,
                g.probe_timeout,
            ));
        }
    }
    // Timers.
    {
        let s = Arc::clone(&shared);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                s.tick();
            }
        });
    }
    // States per gateway (status, metrics), within the policy's budget.
    tasks.spawn(crate::states::run(Arc::clone(&shared)));
    // Broker connection events.
    {
        let s = Arc::clone(&shared);
        tasks.spawn(async move {
            let mut was_connected: Option<bool> = None;
            loop {
                if !s.plan_pending() {
                    // Reaches the broker when the background connection is new or was
                    // idle too long; otherwise answered from the kept connection.
                    let _ = tokio::time::timeout(LINK_CHECK_TIMEOUT, s.broker.hello()).await;
                    s.refresh_metrics();
                }
                let link = s.broker.state();
                if was_connected != Some(link.connected) {
                    let e = if link.connected {
                        let backend = link
                            .hello
                            .as_ref()
                            .map(|h| format!("{} on {}", h.backend.kind, h.backend.kernel))
                            .unwrap_or_default();
                        NewEvent::new(
                            EventKind::BrokerConnected,
                            format!("broker connected: {backend}"),
                        )
                    } else {
                        NewEvent::new(
                            EventKind::BrokerLost,
                            format!(
                                "broker at {} unreachable: {}",
                                s.broker.path().display(),
                                link.last_error.as_deref().unwrap_or("not connected yet")
                            ),
                        )
                    };
                    s.bus().publish(e);
                    was_connected = Some(link.connected);
                }
                tokio::time::sleep(LINK_CHECK).await;
            }
        });
    }
    // Interface addresses (`nat_addr = "interface"`), followed as they change.
    if let Some(mut w) = addresses {
        let s = Arc::clone(&shared);
        tasks.spawn(async move {
            loop {
                match w.changed(|| s.now_ms()).await {
                    Ok(()) => {
                        let mut book = w.book().clone();
                        book.expire(s.now_ms());
                        s.set_addresses(book);
                    }
                    Err(e) => {
                        tracing::warn!("interface addresses not followed for a second: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }
    // `systemctl status` shows the last reload's outcome (STATUS=); the unit's
    // ExecReload (`statecull reload`) already waits for it and fails on a refusal.
    let notifier = Arc::new(notifier);
    if notifier.active() {
        let (_, mut rx) = shared.bus().subscribe_with_backlog();
        let n = Arc::clone(&notifier);
        tasks.spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(e) => {
                        let status = match e.kind {
                            EventKind::PolicyReloaded => format!("policy reloaded: {}", e.message),
                            EventKind::PolicyReloadFailed => {
                                format!(
                                    "policy reload refused, the previous policy stays: {}",
                                    e.message
                                )
                            }
                            _ => continue,
                        };
                        if let Err(e) = n.status(&status) {
                            tracing::warn!("{e}");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        // The bus lives as long as `shared`: parked, not ended (an ended
                        // task stops the engine).
                        std::future::pending::<()>().await;
                    }
                }
            }
        });
    }
    // SIGHUP: reload the policy (the same as `statecull reload`).
    if let Some(mut hup) = signals.take_reload() {
        let s = Arc::clone(&shared);
        tasks.spawn(async move {
            while hup.recv().await.is_some() {
                let _ = s.reload("SIGHUP").await;
            }
        });
    }
    tasks.spawn(crate::control::serve_with(control, Arc::clone(&shared), control_limits));
    if let Some(l) = metrics {
        tasks.spawn(crate::metrics::serve(l, metrics_rx));
    }
    if started.routing.confirm == RoutingConfirm::PfRuleset {
        tasks.spawn(crate::executor::watch_ruleset_ticket(Arc::clone(&shared)));
    }
    tasks.spawn(Executor::new(Arc::clone(&shared), decisions, routes).run());

    shared.bus().publish(
        NewEvent::new(
            EventKind::EngineStarted,
            format!(
                "statecull-engine {} watching {} gateway(s) from {}; control socket {}",
                env!("CARGO_PKG_VERSION"),
                shared.policy().gateways.len(),
                shared.policy().source,
                control_path.display()
            ),
        )
        .field("pid", std::process::id()),
    );

    // Ready: every task runs, the control socket serves, the engine is confined, and the
    // broker has been tried once (reached, or not within LINK_CHECK_TIMEOUT: the engine
    // works without it and keeps trying, so its absence does not hold readiness back).
    let mut quiet = tokio::task::JoinSet::new();
    let first_contact = tokio::time::timeout(LINK_CHECK_TIMEOUT, shared.broker.hello()).await;
    let broker_said = match first_contact {
        Ok(Ok(h)) => format!("broker connected ({} on {})", h.backend.kind, h.backend.kernel),
        Ok(Err(e)) => format!("broker not reachable yet: {e}"),
        Err(_) => "broker not answering yet".to_owned(),
    };
    if let Err(e) = notifier
        .ready(&format!("watching {} gateway(s); {broker_said}", shared.policy().gateways.len()))
    {
        tracing::error!("{e}");
    }

    // Loggers of ignored signals: they run until the engine stops.
    tokio::select! {
        name = signals.run(&mut quiet) => {
            tracing::info!("{name}: stopping");
            if let Err(e) = notifier.stopping(&format!("stopping ({name})")) {
                tracing::warn!("{e}");
            }
        }
        Some(r) = tasks.join_next() => {
            // Every task runs for the engine's lifetime: one that ends is a failure, and
            // the exit status must say so (systemd's Restart=on-failure).
            tasks.abort_all();
            return Err(EngineError::Control(match r {
                Err(e) => format!("an engine task failed: {e}"),
                Ok(()) => "an engine task stopped unexpectedly".into(),
            }));
        }
    }
    quiet.abort_all();
    tasks.abort_all();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The dialer is built from exactly the broker's socket and the policy's dpinger
    /// sockets: the engine can reach nothing else after confinement.
    #[test]
    fn the_dialer_knows_the_broker_and_the_policys_dpinger_sockets_only() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../policy/examples/pfsense-two-wan.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let policy = statecull_policy::load::parse(&text, path).unwrap();
        let targets = dial_targets(&policy, std::path::Path::new("/var/run/statecull/broker.sock"));
        let shown: Vec<(String, String)> =
            targets.iter().map(|(w, p)| (w.clone(), p.display().to_string())).collect();
        assert_eq!(
            shown,
            [
                ("the broker".to_owned(), "/var/run/statecull/broker.sock".to_owned()),
                (
                    "dpinger of WAN1".to_owned(),
                    "/var/run/dpinger_WAN1~198.51.100.1~192.0.2.53.sock".to_owned()
                ),
            ]
        );
        let dialer = crate::dial::Dialer::direct(targets);
        assert!(!dialer.knows(std::path::Path::new("/var/run/dpinger_WAN2.sock")));
    }
}
