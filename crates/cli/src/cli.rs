//! The `statecull` command line. In the library so the binary is a one-line `main` and
//! integration tests can build a binary from exactly this code.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

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
        `statecull broker ...` talks straight to the privileged broker, like pfctl -k or conntrack -D:\n\
        list, count and kill states by mark, NAT address, protocol and prefixes.",
    after_help = "EXAMPLES:\n  \
        statecull broker hello\n  \
        statecull broker count --mark 1/0xff\n  \
        statecull broker kill --mark 1/0xff            # WAN1's connections, one kernel pass\n  \
        statecull broker kill --nat-addr 198.51.100.1  # everything SNATed to WAN1's address\n  \
        statecull broker list --proto udp --dport 5060 --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk straight to the broker: list, count, kill, flush
    Broker(BrokerArgs),
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
    List {
        #[command(flatten)]
        selector: SelectorArgs,
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
}

/// A failure with its exit status: 1 for errors, 2 for usage.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure { code: 1, message: e.to_string() }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure { code: 1, message: format!("writing output: {e}") }
    }
}

fn usage(message: impl Into<String>) -> Failure {
    Failure { code: 2, message: message.into() }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn connect(args: &BrokerArgs) -> Result<BrokerClient, Failure> {
    let client = BrokerClient::connect(&args.socket, "statecull cli")?;
    let timeout = (args.timeout > 0).then(|| Duration::from_secs(args.timeout));
    client.set_timeout(timeout).map_err(ClientError::Io)?;
    Ok(client)
}

fn broker(args: BrokerArgs) -> Result<(), Failure> {
    let started = Instant::now();
    let out = io::stdout();
    let mut out = BufWriter::new(out.lock());
    match &args.verb {
        BrokerVerb::Hello => {
            let client = connect(&args)?;
            if args.json {
                let mut v =
                    serde_json::to_value(client.hello()).map_err(|e| usage(e.to_string()))?;
                v["elapsed_ms"] = serde_json::json!(ms(started));
                writeln!(out, "{v}")?;
            } else {
                write!(out, "{}", render::hello_text(client.hello()))?;
            }
        }
        BrokerVerb::Count { selector } => {
            let sel = selector.to_selector();
            check_selector(sel.as_ref())?;
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
        BrokerVerb::List { selector } => {
            let sel = selector.to_selector();
            check_selector(sel.as_ref())?;
            let mut client = connect(&args)?;
            list(&mut client, sel, args.json, started, &mut out)?;
        }
        BrokerVerb::Kill { selector, opposite } => {
            let Some(sel) = selector.to_selector() else {
                return Err(usage(
                    "kill needs at least one selector (--mark, --nat-addr, --src, ...); \
                     to kill every state use `statecull broker flush`",
                ));
            };
            check_selector(Some(&sel))?;
            let mut client = connect(&args)?;
            let report = client.kill_matching(vec![sel], *opposite)?;
            print_kill(&report, args.json, started, &mut out)?;
            partial_kill(&report, &mut out)?;
        }
        BrokerVerb::Flush { interface } => {
            let interface = interface
                .as_deref()
                .map(|i| i.parse::<IfName>().map_err(|e: ProtoError| usage(e.to_string())))
                .transpose()?;
            let mut client = connect(&args)?;
            let report = client.flush(interface)?;
            print_kill(&report, args.json, started, &mut out)?;
            partial_kill(&report, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Check a selector here too, so mistakes get a usage error before anything is sent.
fn check_selector(sel: Option<&statecull_proto::Selector>) -> Result<(), Failure> {
    if let Some(s) = sel {
        s.check().map_err(|e| usage(e.to_string()))?;
    }
    Ok(())
}

/// A kill that left states alive is a failure (exit 1), after the report was printed.
fn partial_kill(report: &statecull_proto::KillReport, out: &mut impl Write) -> Result<(), Failure> {
    if report.failed == 0 {
        return Ok(());
    }
    out.flush()?;
    Err(Failure { code: 1, message: format!("{} state(s) could not be killed", report.failed) })
}

fn print_kill(
    report: &statecull_proto::KillReport,
    json: bool,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), Failure> {
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
    json: bool,
    started: Instant,
    out: &mut impl Write,
) -> Result<(), Failure> {
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
                writeln!(out, "{}", render::record_line(r))
            };
            if let Err(e) = res {
                write_err = Some(e);
                return Err(ClientError::Unexpected("output closed".into()));
            }
            n += 1;
        }
        if progress && last_progress.elapsed() > Duration::from_millis(200) {
            eprint!("\rlisting: {n} states so far ...");
            last_progress = Instant::now();
        }
        Ok(())
    });
    if progress {
        eprint!("\r\x1b[K");
    }
    if let Some(e) = write_err {
        // `statecull broker list | head` is fine.
        if e.kind() == io::ErrorKind::BrokenPipe {
            return Ok(());
        }
        return Err(e.into());
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
        eprintln!("{} state(s) listed in {:.1} ms", done.records, ms(started));
    }
    Ok(())
}

/// Run `statecull` with these arguments (including the program name, as clap expects).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Broker(args) => broker(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("statecull: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}
