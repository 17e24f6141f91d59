//! The `statecull` command line. In the library so the binary is a one-line `main` and
//! integration tests can build a binary from exactly this code.

use std::io::{self, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::list_format::ListFormat;
use crate::output::{Output, to_stderr};
use crate::render;
use crate::selector_args::SelectorArgs;
use crate::{BrokerClient, ClientError, DEFAULT_BROKER_SOCKET};
use clap::{Parser, Subcommand};
use statecull_proto::{IfName, ProtoError};

#[derive(Debug, Parser)]
#[command(
    name = "statecull",
    version,
    about = "Kill exactly the connection states of a failed gateway, and only those.",
    long_about = "statecull: kill exactly the connection states of a failed gateway, and only those.\n\n\
        `statecull status|plan|gateway|events` talk to the unprivileged engine, which watches the\n\
        gateways and decides what to kill and when. `statecull check-policy FILE` explains a policy.\n\
        `statecull broker ...` talks straight to the privileged broker, like pfctl -k or conntrack -D:\n\
        list, count and kill states by mark, NAT address, protocol and prefixes.",
    after_help = concat!("EXAMPLES:\n  \
        statecull status\n  \
        statecull plan --down WAN1                     # dry run: what would be killed\n  \
        statecull gateway WAN1 down                    # external health verdict\n  \
        statecull events --follow --json\n  \
        statecull check-policy ", statecull_proto::policy_file!(), "\n  \
        statecull import pfsense /cf/conf/config.xml -o policy.toml\n  \
        statecull broker hello\n  \
        statecull broker count --mark 1/0xff\n  \
        statecull broker kill --mark 1/0xff            # WAN1's connections, one kernel pass\n  \
        statecull broker kill --nat-addr 198.51.100.1  # everything SNATed to WAN1's address\n  \
        statecull broker list --proto udp --dport 5060 --json\n\n\
        EXIT STATUS:\n  \
        0 done (also when the output is closed early, as by `statecull status | head`: the\n    \
        command stops quietly), 1 refused or failed (including partial kills), 2 usage")
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk straight to the broker: list, count, kill, flush
    Broker(BrokerArgs),
    /// Show the engine's gateways: health with evidence, states per gateway, recent events
    Status(EngineArgs),
    /// Dry run: what the engine would kill if gateways went down or came up now (counted
    /// by the broker, nothing killed)
    #[command(
        after_help = "EXAMPLES:\n  statecull plan --down WAN1\n  statecull plan --down WAN1 --down WAN2\n  statecull plan --up WAN1            # fail-back: what moves back to WAN1"
    )]
    Plan {
        #[command(flatten)]
        engine: EngineArgs,
        /// Simulate this gateway going down (repeat for several)
        #[arg(long, value_name = "GATEWAY")]
        down: Vec<String>,
        /// Simulate this gateway coming back up (repeat for several)
        #[arg(long, value_name = "GATEWAY")]
        up: Vec<String>,
    },
    /// Tell the engine a gateway is down or up (external health source: mwan3 hotplug,
    /// keepalived notify, pfSense's gateway alarm), or that routing has moved off it
    #[command(
        after_help = "EXAMPLES:\n  statecull gateway WAN1 down            # kill WAN1's states once routing has moved\n  statecull gateway WAN1 down --routed   # routing already moved: kill now\n  statecull gateway WAN1 routed          # the routing manager has switched\n  statecull gateway WAN1 up\n\n\
        Verdicts are debounced with the gateway's hold_down and [gateway.damping]: a down acts at\n\
        once and counts as a flap; an up is used once it has stood for hold_down with no down\n\
        since, and never while flap damping suppresses the gateway. A held up is answered with\n\
        the rule that holds it (and a verdict-held event): a hook flapping faster than hold_down\n\
        causes one kill."
    )]
    Gateway {
        #[command(flatten)]
        engine: EngineArgs,
        /// The gateway's name in the policy
        name: String,
        /// down, up or routed
        #[arg(value_enum)]
        action: GatewayVerb,
        /// With `down`: routing has already moved off the gateway, so the executor need
        /// not wait for it
        #[arg(long)]
        routed: bool,
    },
    /// Have the engine read its policy file again and use it (as SIGHUP does); says what
    /// changed, or why not
    #[command(
        after_help = concat!("The file is loaded as `statecull check-policy` loads it; a policy that does not load,\n\
        or that changes what the engine opened at start-up (its sockets, the metrics listener,\n\
        dpinger sockets, ICMP probes of a gateway, readable_paths, routing.confirm,\n\
        states_refresh), is refused naming the key, and the policy in force stays. A plan in\n\
        flight finishes under its policy first (the reload waits up to 30 s for it). Gateways\n\
        kept by name keep their health; new ones start as at start-up; removed ones are dropped.\n\
        Exit status 0: reloaded; 1: refused (the answer says why).\n\n\
        EXAMPLES:\n  statecull check-policy ", statecull_proto::policy_file!(), " && statecull reload\n  \
        systemctl reload statecull-engine      # Linux: the unit runs statecull reload\n  \
        service statecull_engine reload        # FreeBSD: SIGHUP to the engine")
    )]
    Reload(EngineArgs),
    /// Print the engine's events: the recent ones, and with --follow every new one
    #[command(
        after_help = "With --exec, CMD runs (via /bin/sh -c) once per NEW event, in order, with\n\
        STATECULL_EVENT (gateway-down, routed, plan-done, ...), STATECULL_GATEWAY, STATECULL_SEQ,\n\
        STATECULL_MESSAGE, STATECULL_KILLED, STATECULL_ELAPSED_MS, STATECULL_F_<FIELD> and\n\
        STATECULL_EVENT_JSON in its environment.\n\nEXAMPLE:\n  statecull events --follow --exec \'[ \"$STATECULL_EVENT\" = gateway-down ] && /usr/local/sbin/switch-route \"$STATECULL_GATEWAY\"\'"
    )]
    Events {
        #[command(flatten)]
        engine: EngineArgs,
        /// Keep printing new events until interrupted or the output is closed (with --exec,
        /// until interrupted: the commands keep running when nobody reads the output)
        #[arg(long, short = 'f')]
        follow: bool,
        /// Run CMD for every new event (needs --follow)
        #[arg(long, value_name = "CMD", requires = "follow")]
        exec: Option<String>,
    },
    /// Translate a pfSense or OPNsense config.xml into a statecull policy
    #[command(
        long_about = "Translate a pfSense or OPNsense config.xml into a statecull policy.\n\n\
            Gateways (with the real device of their interface, their dpinger status socket as the\n\
            system names it, its loss and latency levels), gateway groups with their tiers, the\n\
            WAN's NAT addresses (interface address, virtual IPs, outbound NAT targets) and the\n\
            system's own state-killing settings are translated. Whatever does not translate is a\n\
            warning on standard error naming the XML element (and listed in the policy's header).\n\
            Dynamic WANs (DHCP, PPPoE, DHCPv6) get nat_addr = \"interface\" (followed by the\n\
            engine) and a PLACEHOLDER next hop to replace by hand.\n\
            The policy is checked to load before it is written.",
        after_help = "EXAMPLES:\n  \
            statecull import pfsense /cf/conf/config.xml                 # policy on stdout\n  \
            statecull import opnsense /conf/config.xml -o /usr/local/etc/statecull/policy.toml\n  \
            statecull import pfsense config.xml --strict > policy.toml  # fail on any warning\n\n\
            IMPORTANT: turn the system's own state killing off (pfSense: System > Advanced >\n\
            Miscellaneous > State Killing on Gateway Failure; OPNsense: each gateway's Failover\n\
            and Failback States), else states are killed twice; the warnings say where.\n\n\
            EXIT STATUS:\n  0 written, 1 not translatable (or a warning with --strict), 2 usage"
    )]
    Import {
        /// Which system wrote the configuration
        #[arg(value_enum)]
        system: ImportSystem,
        /// Its config.xml (pfSense: /cf/conf/config.xml; OPNsense: /conf/config.xml)
        config: PathBuf,
        /// Write the policy to FILE (atomically) instead of standard output
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists
        #[arg(long, requires = "output")]
        force: bool,
        /// Fail (exit 1, nothing written) if anything gave a warning; notes do not count
        #[arg(long)]
        strict: bool,
    },
    /// Check a policy file and explain what it does (no engine needed)
    ///
    /// After the explanation comes what the target system makes of the policy: an error for
    /// a feature that can never work there (Linux connection marks on pf, rtnetlink on
    /// FreeBSD: the command then fails), a warning for one it ignores or does only in part
    /// (probes without probe_source on FreeBSD, which has no SO_BINDTODEVICE), a note for a
    /// start-up requirement (raw ICMP sockets opened as root on FreeBSD).
    #[command(after_help = concat!("EXAMPLES:\n  \
        statecull check-policy ", statecull_proto::policy_file!(), "\n  \
        statecull check-policy --target-os freebsd pfsense-two-wan.toml  # checked on Linux for pfSense"))]
    CheckPolicy {
        /// The policy file
        file: PathBuf,
        /// Print the validated policy as JSON (portability warnings and errors go to stderr)
        #[arg(long)]
        json: bool,
        /// The system the policy is for: linux (conntrack) or freebsd (pf: pfSense,
        /// OPNsense) [default: this host's system]
        #[arg(long, value_name = "OS", value_parser = ["linux", "freebsd"])]
        target_os: Option<String>,
    },
}

#[derive(Debug, clap::Args)]
struct EngineArgs {
    /// The engine's control socket
    #[arg(long, short = 'c', env = "STATECULL_CONTROL_SOCKET", default_value = statecull_control::DEFAULT_CONTROL_SOCKET)]
    control: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ImportSystem {
    Pfsense,
    Opnsense,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum GatewayVerb {
    Down,
    Up,
    Routed,
}

#[derive(Debug, clap::Args)]
struct BrokerArgs {
    /// The broker's socket
    #[arg(long, short = 's', global = true, env = "STATECULL_BROKER_SOCKET", default_value = DEFAULT_BROKER_SOCKET)]
    socket: PathBuf,
    /// Print one JSON object instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Give up if the broker does not answer within SECONDS (0: wait forever)
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    #[command(subcommand)]
    verb: BrokerVerb,
}

#[derive(Debug, Subcommand)]
enum BrokerVerb {
    /// Show the broker's version, backend, kernel capabilities, limits and protected prefixes
    Hello,
    /// List states (all, or those matching the selector flags)
    #[command(after_help = "FORMATS:\n  \
        --format conntrack prints the line of `conntrack -L`, --format pfctl the line of \
        `pfctl -ss`,\n  for the fields statecull's listing has, whatever the backend: the \
        greps written for those\n  tools keep working. Left out: conntrack's use=, pfctl's \
        state levels (ESTABLISHED:ESTABLISHED);\n  for pf states the mark and TCP state in \
        the conntrack layout.\n\nEXAMPLES:\n  \
        statecull broker list --format conntrack --proto udp --dport 5060\n  \
        statecull broker list --format pfctl --gateway 198.51.100.254 | grep igb0")]
    List {
        #[command(flatten)]
        selector: SelectorArgs,
        /// Line layout: text (statecull's), json (as --json), conntrack (`conntrack -L`),
        /// pfctl (`pfctl -ss`)
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        format: ListFormat,
    },
    /// Count states (the whole table, or those matching the selector flags)
    Count {
        #[command(flatten)]
        selector: SelectorArgs,
    },
    /// Kill the states matching ALL given selector flags (at least one is required)
    #[command(after_help = "The broker picks the cheapest exact way: one in-kernel filtered \
        pass when the kernel can express the selector, otherwise one filtered listing plus \
        batched deletes. States touching the broker's protected prefixes are always spared.")]
    Kill {
        #[command(flatten)]
        selector: SelectorArgs,
        /// Also kill each victim's twin in the other direction (pf; conntrack entries
        /// already cover both directions)
        #[arg(long)]
        opposite: bool,
    },
    /// Kill every state (except those touching protected prefixes)
    Flush {
        /// Only states on this interface (pf)
        #[arg(long, value_name = "NAME")]
        interface: Option<String>,
    },
    /// Show the ticket of pf's active main filter ruleset (read-only; pf only)
    #[command(after_help = "pf gives the main filter ruleset a new ticket on every commit \
        (pfctl -f): pfSense and OPNsense reload it when a gateway fails, which is what the \
        engine's confirm = \"pf-ruleset\" waits for. Run it before and after a filter reload to \
        see the ticket change. conntrack has no ruleset and refuses it.")]
    RulesetTicket,
}

/// Why a `statecull` command failed; [`CliError::exit_code`] gives its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line asks for something impossible (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Connecting to the broker, talking to it, or the broker refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Standard output could not be written.
    #[error("writing output: {0}")]
    Output(#[from] io::Error),
    /// An answer could not be turned into JSON.
    #[error("encoding the answer as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The kill ran, but states may be left alive: some deletes failed, or the kill stopped
    /// part way (reported after the kill report was printed).
    #[error("{}", partial_kill_message(*.failed, .reason))]
    PartialKill { failed: u64, reason: String },
    /// The engine is unreachable, refused, or answered something unreadable.
    #[error("{0}")]
    Engine(String),
    /// The policy file is invalid (the message names file, line and field).
    #[error("{0}")]
    Policy(String),
    /// `statecull import`: the configuration could not be translated or written.
    #[error("{0}")]
    Import(String),
}

impl CliError {
    /// 2 for usage errors, 1 for everything else (README: 0 done, 1 refused or failed,
    /// including partial kills, 2 usage).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Client(_)
            | CliError::Output(_)
            | CliError::Json(_)
            | CliError::PartialKill { .. }
            | CliError::Engine(_)
            | CliError::Policy(_)
            | CliError::Import(_) => 1,
        }
    }
}

fn partial_kill_message(failed: u64, reason: &str) -> String {
    if failed > 0 {
        format!("{failed} state(s) could not be killed: {reason}")
    } else {
        format!("the kill did not complete, matching states may be left: {reason}")
    }
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Connect with `--timeout` applied from the start, so it covers the `Hello` exchange too.
fn connect(args: &BrokerArgs) -> Result<BrokerClient, CliError> {
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    BrokerClient::connect_with_timeout(&args.socket, "statecull cli", timeout)
        .map_err(|e| not_the_broker(&args.socket, e))
}

/// A peer that answers the Hello with a JSON line (its first bytes read as a frame length
/// starting with `{`) is the engine's control socket, given by mistake: say so.
fn not_the_broker(path: &std::path::Path, e: ClientError) -> CliError {
    match e {
        ClientError::Protocol(ProtoError::FrameTooLarge { len, .. })
            if u32::try_from(len).is_ok_and(|l| l >> 24 == u32::from(b'{')) =>
        {
            CliError::Engine(format!(
                "{} answered in JSON lines: it is the engine's control socket; `statecull \
                 broker` talks to the broker's socket, default {DEFAULT_BROKER_SOCKET} \
                 (--socket, or STATECULL_BROKER_SOCKET)",
                path.display()
            ))
        }
        other => other.into(),
    }
}

fn broker(args: BrokerArgs, out: &mut Output) -> Result<(), CliError> {
    let started = Instant::now();
    match &args.verb {
        BrokerVerb::Hello => {
            let client = connect(&args)?;
            if args.json {
                let mut v = serde_json::to_value(client.hello())?;
                v["elapsed_ms"] = serde_json::json!(ms(started));
                writeln!(out, "{v}")?;
            } else {
                write!(out, "{}", render::hello_text(client.hello()))?;
            }
        }
        BrokerVerb::Count { selector } => {
            let sel = checked_selector(selector)?;
            let mut client = connect(&args)?;
            let c = client.count(sel.iter().cloned().collect())?;
            let count = if sel.is_some() {
                c.per_selector.first().copied().unwrap_or(0)
            } else {
                c.table_entries
            };
            if args.json {
                let v = serde_json::json!({
                    "count": count,
                    "table_entries": c.table_entries,
                    "broker_elapsed_ms": c.elapsed_us as f64 / 1000.0,
                    "elapsed_ms": ms(started),
                });
                writeln!(out, "{v}")?;
            } else if let Some(s) = &sel {
                writeln!(
                    out,
                    "{count} of {} states match {s} ({:.1} ms)",
                    c.table_entries,
                    ms(started)
                )?;
            } else {
                writeln!(out, "{} states ({:.1} ms)", c.table_entries, ms(started))?;
            }
        }
        BrokerVerb::List { selector, format } => {
            let format = match (args.json, *format) {
                (false, f) => f,
                (true, ListFormat::Text | ListFormat::Json) => ListFormat::Json,
                (true, _) => {
                    return Err(usage("--json and --format conntrack|pfctl contradict each other"));
                }
            };
            let sel = checked_selector(selector)?;
            let mut client = connect(&args)?;
            list(&mut client, sel, format, started, out)?;
        }
        BrokerVerb::Kill { selector, opposite } => {
            let Some(sel) = checked_selector(selector)? else {
                return Err(usage(
                    "kill needs at least one selector (--mark, --nat-addr, --src, ...); \
                     to kill every state use `statecull broker flush`",
                ));
            };
            let mut client = connect(&args)?;
            let report = client.kill_matching(vec![sel], *opposite)?;
            print_kill(&report, args.json, started, out)?;
            partial_kill(&report, out)?;
        }
        BrokerVerb::RulesetTicket => {
            let mut client = connect(&args)?;
            let t = client.ruleset_ticket()?;
            if args.json {
                let v = serde_json::json!({
                    "ticket": t.ticket,
                    "rules": t.rules,
                    "elapsed_ms": ms(started),
                });
                writeln!(out, "{v}")?;
            } else {
                writeln!(
                    out,
                    "ruleset ticket {} ({} rules in the main filter ruleset)",
                    t.ticket, t.rules
                )?;
            }
        }
        BrokerVerb::Flush { interface } => {
            let interface = interface
                .as_deref()
                .map(|i| i.parse::<IfName>().map_err(|e: ProtoError| usage(e.to_string())))
                .transpose()?;
            let mut client = connect(&args)?;
            let report = client.flush(interface)?;
            print_kill(&report, args.json, started, out)?;
            partial_kill(&report, out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The selector of the flags, checked here too, so mistakes get a usage error (naming the
/// flags where the command line can) before anything is sent.
fn checked_selector(args: &SelectorArgs) -> Result<Option<statecull_proto::Selector>, CliError> {
    args.check_flags().map_err(usage)?;
    let sel = args.to_selector();
    if let Some(s) = &sel {
        s.check().map_err(|e| usage(e.to_string()))?;
    }
    Ok(sel)
}

/// A kill that may have left matching states alive is a failure (exit 1), after the report
/// was printed: deletes that failed, or (not exact, with an error) a kill that stopped part
/// way or lost error answers.
fn partial_kill(
    report: &statecull_proto::KillReport,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let Some(err) = partial_kill_error(report) else {
        return Ok(());
    };
    out.flush()?;
    Err(err)
}

fn partial_kill_error(report: &statecull_proto::KillReport) -> Option<CliError> {
    let incomplete = !report.exact && report.first_error.is_some();
    if report.failed == 0 && !incomplete {
        return None;
    }
    Some(CliError::PartialKill {
        failed: report.failed,
        reason: report.first_error.clone().unwrap_or_else(|| "unknown error".to_owned()),
    })
}

fn print_kill(
    report: &statecull_proto::KillReport,
    json: bool,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), CliError> {
    if json {
        writeln!(out, "{}", render::kill_json(report, ms(started)))?;
    } else {
        write!(out, "{}", render::kill_text(report, ms(started)))?;
    }
    Ok(())
}

fn list(
    client: &mut BrokerClient,
    sel: Option<statecull_proto::Selector>,
    format: ListFormat,
    started: Instant,
    out: &mut Output,
) -> Result<(), CliError> {
    let json = format == ListFormat::Json;
    let progress = io::stderr().is_terminal();
    let mut last_progress = Instant::now();
    let mut n = 0u64;
    let mut write_err: Option<io::Error> = None;
    if json {
        write!(out, "{{\"states\":[")?;
    }
    let done = client.snapshot(sel, &mut |batch| {
        for r in &batch {
            let res = if json {
                let sep = if n == 0 { "" } else { "," };
                write!(out, "{sep}{}", render::record_json(r))
            } else {
                let line = match format {
                    ListFormat::Conntrack => crate::list_format::conntrack_line(r),
                    ListFormat::Pfctl => crate::list_format::pfctl_line(r),
                    ListFormat::Text | ListFormat::Json => render::record_line(r),
                };
                writeln!(out, "{line}")
            };
            if let Err(e) = res {
                write_err = Some(e);
                return Err(ClientError::Unexpected("output failed".into()));
            }
            n += 1;
        }
        // `statecull broker list | head`: nobody reads any more, so stop listing (the
        // broker abandons a snapshot whose reader goes away).
        if out.closed() {
            return Err(ClientError::Unexpected("output closed".into()));
        }
        if progress && last_progress.elapsed() > Duration::from_millis(200) {
            to_stderr(format_args!("\rlisting: {n} states so far ..."));
            last_progress = Instant::now();
        }
        Ok(())
    });
    if progress {
        to_stderr(format_args!("\r\x1b[K"));
    }
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if out.closed() {
        return Ok(());
    }
    let done = done?;
    if json {
        writeln!(
            out,
            "],\"count\":{},\"broker_elapsed_ms\":{},\"elapsed_ms\":{}}}",
            done.records,
            done.elapsed_us as f64 / 1000.0,
            ms(started)
        )?;
    } else {
        out.flush()?;
        if !out.closed() {
            to_stderr(format_args!("{} state(s) listed in {:.1} ms\n", done.records, ms(started)));
        }
    }
    Ok(())
}

fn fail(e: &CliError) -> ExitCode {
    to_stderr(format_args!("statecull: {e}\n"));
    ExitCode::from(e.exit_code())
}

/// The `statecull` command line as clap describes it (for man pages and completions).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

/// Run `statecull` with these arguments (including the program name, as clap expects).
///
/// Every command writes through one [`Output`]: when the reader of standard output goes
/// away, the command stops quietly and exits 0 unless it failed for another reason.
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let args: Vec<std::ffi::OsString> = args.into_iter().collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(mut e) => {
            // pfctl's `-k gateway -k IP` gets the statecull command that does the same.
            if e.kind() == clap::error::ErrorKind::UnknownArgument {
                let text: Vec<String> =
                    args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
                if let Some(hint) = crate::pfctl_hint::pfctl_hint(&text) {
                    e.insert(
                        clap::error::ContextKind::Suggested,
                        clap::error::ContextValue::StyledStrs(vec![hint.into()]),
                    );
                }
            }
            // --help and --version go to stdout, errors to stderr; a closed output is no
            // reason to fail (nor to panic).
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let mut out = Output::stdout();
    let result = run(cli.command, &mut out).and_then(|()| Ok(out.flush()?));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn run(command: Command, out: &mut Output) -> Result<(), CliError> {
    match command {
        Command::Broker(args) => broker(args, out),
        Command::Status(e) => crate::engine_cmds::status(&e.control, e.json, out),
        Command::Reload(e) => crate::engine_cmds::reload(&e.control, e.json, out),
        Command::Plan { engine, down, up } => {
            crate::engine_cmds::plan(&engine.control, down, up, engine.json, out)
        }
        Command::Gateway { engine, name, action, routed } => {
            use statecull_control::GatewayAction as A;
            let actions: Vec<A> = match (action, routed) {
                (GatewayVerb::Down, false) => vec![A::Down],
                (GatewayVerb::Down, true) => vec![A::Down, A::Routed],
                (GatewayVerb::Up, false) => vec![A::Up],
                (GatewayVerb::Routed, _) => vec![A::Routed],
                (GatewayVerb::Up, true) => {
                    return Err(usage("--routed goes with `down` (or use the `routed` action)"));
                }
            };
            crate::engine_cmds::gateway(&engine.control, name, &actions, engine.json, out)
        }
        Command::Events { engine, follow, exec } => {
            crate::engine_cmds::events(&engine.control, follow, engine.json, exec, out)
        }
        Command::CheckPolicy { file, json, target_os } => {
            crate::engine_cmds::check_policy(&file, json, target_os.as_deref(), out)
        }
        Command::Import { system, config, output, force, strict } => {
            let system = match system {
                ImportSystem::Pfsense => statecull_import::System::PfSense,
                ImportSystem::Opnsense => statecull_import::System::OpnSense,
            };
            let args = crate::import_cmd::ImportArgs { system, config, output, force, strict };
            crate::import_cmd::run(&args, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use statecull_proto::{KillPath, KillReport};

    fn report(failed: u64, exact: bool, first_error: Option<&str>) -> KillReport {
        KillReport {
            requested: 10,
            killed: 10 - failed,
            not_found: 0,
            spared: 0,
            failed,
            first_error: first_error.map(str::to_owned),
            exact,
            path: KillPath::DumpAndDelete,
            table_passes: 1,
            elapsed_us: 1000,
            note: None,
            per_selector: Vec::new(),
        }
    }

    #[test]
    fn clean_kills_exit_zero() {
        assert!(partial_kill_error(&report(0, true, None)).is_none());
        assert!(partial_kill_error(&report(0, false, None)).is_none());
        // An exact kill with an error but nothing failed is only a warning.
        assert!(partial_kill_error(&report(0, true, Some("ENOENT race"))).is_none());
    }

    #[test]
    fn failed_deletes_exit_one_with_the_reason() {
        let e = partial_kill_error(&report(3, true, Some("EPERM"))).expect("a failure");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(e.to_string(), "3 state(s) could not be killed: EPERM");
        let e = partial_kill_error(&report(1, true, None)).expect("a failure");
        assert_eq!(e.to_string(), "1 state(s) could not be killed: unknown error");
    }

    #[test]
    fn a_kill_that_stopped_part_way_exits_one() {
        let e = partial_kill_error(&report(0, false, Some("flush interrupted: ENOBUFS")))
            .expect("a failure");
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("did not complete"), "{e}");
        assert!(e.to_string().contains("flush interrupted: ENOBUFS"), "{e}");
    }

    #[test]
    fn partial_kill_flushes_the_report_first() {
        let mut out = Output::new(Vec::new());
        write!(out, "report").unwrap();
        assert!(partial_kill(&report(2, true, Some("x")), &mut out).is_err());
        assert_eq!(out.get_ref().as_slice(), b"report");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(usage("bad").exit_code(), 2);
        assert_eq!(CliError::from(io::Error::other("closed")).exit_code(), 1);
        assert_eq!(
            CliError::from(ClientError::Unexpected("x".into())).exit_code(),
            1,
            "refusals and protocol errors are failures, not usage"
        );
        let json_err = serde_json::from_str::<u8>("nope").unwrap_err();
        assert_eq!(CliError::from(json_err).exit_code(), 1, "JSON trouble is not a usage error");
    }

    #[test]
    fn kill_without_selector_is_a_usage_error() {
        let args = ["statecull", "broker", "--socket", "/nonexistent/statecull.sock", "kill"];
        let Command::Broker(b) = Cli::parse_from(args).command else {
            panic!("parsed as another command")
        };
        let e = broker(b, &mut Output::stdout()).expect_err("refused before connecting");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn timeout_covers_connect_to_a_silent_broker() {
        // A listener that accepts but never answers: the Hello exchange must time out.
        let dir = std::env::temp_dir().join(format!("statecull-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let r = BrokerClient::connect_with_timeout(&path, "test", Some(Duration::from_millis(200)));
        assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
        drop(listener);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
