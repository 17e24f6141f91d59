//! `statecull status | plan | gateway | events | check-policy`: the commands that talk to
//! the engine's control socket (JSON lines, `statecull_control`), and the offline
//! policy check.

use std::io::ErrorKind;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use statecull_control::{
    ControlReply, ControlRequest, Event, GatewayAction, GatewayStatus, MAX_CONTROL_LINE, PlanReply,
    StatesRefreshStatus, StatusReply,
};

use crate::cli::CliError;
use crate::output::{Output, to_stderr};
use statecull_policy::portability::{Finding, Level, TargetOs};

/// A blocking connection to the engine's control socket.
#[derive(Debug)]
pub struct ControlClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
    /// The command talking (`status`, ...), named when the socket turns out to be another's.
    command: Option<&'static str>,
    /// Whether the engine has answered once: until it has, a failure may mean the socket
    /// is not the engine's at all, and is examined.
    answered: bool,
}

fn engine_error(message: impl Into<String>) -> CliError {
    CliError::Engine(message.into())
}

/// Why connecting to the engine failed, once: the operator's reason where there is one
/// (it says all the OS error would), the OS error otherwise.
fn control_connect_error(path: &Path, e: &std::io::Error) -> CliError {
    let why = if let Some(what) = statecull_client::not_a_socket(path) {
        format!(
            "it is {what}, not a socket; give the socket's own path (default {})",
            statecull_control::DEFAULT_CONTROL_SOCKET
        )
    } else {
        match e.kind() {
            ErrorKind::NotFound => {
                "no socket there; is statecull-engine running, and is --control right?".to_owned()
            }
            ErrorKind::PermissionDenied => {
                "permission denied; run as root or as a member of the socket's group".to_owned()
            }
            ErrorKind::ConnectionRefused => {
                "nobody is listening (a stale socket from a stopped engine?)".to_owned()
            }
            _ => e.to_string(),
        }
    };
    engine_error(format!("cannot connect to the engine at {}: {why}", path.display()))
}

/// Whether the statecull broker listens at `path`: it answers a broker Hello (or refuses
/// one, which only a broker does in its framing).
fn is_broker_socket(path: &Path) -> bool {
    match crate::BrokerClient::connect_with_timeout(
        path,
        "statecull cli (is this the broker?)",
        Some(Duration::from_secs(2)),
    ) {
        Ok(_) | Err(crate::ClientError::Refused(_)) => true,
        Err(_) => false,
    }
}

impl ControlClient {
    /// Connect to the engine's control socket at `path`.
    pub fn connect(path: &Path, timeout: Option<Duration>) -> Result<Self, CliError> {
        Self::connect_inner(path, None, timeout)
    }

    /// Connect for the CLI command `command` (`"status"`), which messages name.
    pub fn connect_for(
        path: &Path,
        command: &'static str,
        timeout: Option<Duration>,
    ) -> Result<Self, CliError> {
        Self::connect_inner(path, Some(command), timeout)
    }

    fn connect_inner(
        path: &Path,
        command: Option<&'static str>,
        timeout: Option<Duration>,
    ) -> Result<Self, CliError> {
        let stream = UnixStream::connect(path).map_err(|e| control_connect_error(path, &e))?;
        let talk = |e: std::io::Error| {
            engine_error(format!("talking to the engine at {}: {e}", path.display()))
        };
        stream.set_read_timeout(timeout).map_err(talk)?;
        stream.set_write_timeout(timeout).map_err(talk)?;
        let writer = stream.try_clone().map_err(talk)?;
        Ok(ControlClient {
            reader: BufReader::new(stream),
            writer,
            path: path.to_owned(),
            command,
            answered: false,
        })
    }

    /// The error for a failed exchange: before the first answer, a peer that is not the
    /// engine is named (the broker's socket, by mistake, above all).
    fn failed(&self, why: String) -> CliError {
        if !self.answered {
            let path = self.path.display();
            let who = match self.command {
                Some(c) => format!("`statecull {c}` talks"),
                None => "statecull status, plan, gateway, events and reload talk".to_owned(),
            };
            let hint = format!(
                "{who} to the engine's control socket, default {} (--control, or \
                 STATECULL_CONTROL_SOCKET)",
                statecull_control::DEFAULT_CONTROL_SOCKET
            );
            if is_broker_socket(&self.path) {
                return engine_error(format!("{path} is the broker's socket; {hint}"));
            }
            return engine_error(format!(
                "{path} did not answer as statecull-engine does ({why}); {hint}"
            ));
        }
        engine_error(format!("talking to the engine at {}: {why}", self.path.display()))
    }

    pub fn send(&mut self, req: &ControlRequest) -> Result<(), CliError> {
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        match self.writer.write_all(&line) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.failed(e.to_string())),
        }
    }

    /// One line from the engine, as raw JSON text (None at end of stream).
    pub fn read_line(&mut self) -> Result<Option<String>, CliError> {
        let mut buf = Vec::new();
        let read = (&mut self.reader).take(MAX_CONTROL_LINE as u64 + 1).read_until(b'\n', &mut buf);
        let n = match read {
            Ok(n) => n,
            // A read timeout is the caller's to judge (an event follower polls with one);
            // `reply` names a peer that never answered.
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(CliError::Output(e));
            }
            Err(e) => return Err(self.failed(e.to_string())),
        };
        if n == 0 {
            return Ok(None);
        }
        if buf.last() != Some(&b'\n') {
            return Err(self.failed("an over-long or unterminated line".into()));
        }
        String::from_utf8(buf).map(Some).map_err(|_| self.failed("invalid UTF-8".into()))
    }

    pub fn reply(&mut self) -> Result<ControlReply, CliError> {
        let line = match self.read_line() {
            Ok(Some(line)) => line,
            Ok(None) => {
                return Err(self.failed("it closed the connection without answering".into()));
            }
            Err(CliError::Output(e)) if !self.answered => return Err(self.failed(e.to_string())),
            Err(e) => return Err(e),
        };
        let reply: ControlReply = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => return Err(self.failed(format!("an answer that is not the engine's: {e}"))),
        };
        self.answered = true;
        if let ControlReply::Error { message } = reply {
            return Err(engine_error(format!("engine refused: {message}")));
        }
        Ok(reply)
    }

    pub fn call(&mut self, req: &ControlRequest) -> Result<ControlReply, CliError> {
        self.send(req)?;
        self.reply()
    }
}

fn unexpected(what: &str, r: &ControlReply) -> CliError {
    engine_error(format!("unexpected answer to {what}: {r:?}"))
}

fn ms_text(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1e3),
        120_000..=7_199_999 => format!("{} min", ms / 60_000),
        _ => format!("{:.1} h", ms as f64 / 3.6e6),
    }
}

fn count_text(n: Option<u64>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// `12345678` as `12,345,678`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A gateway's states as status shows them: the last background count and its age
/// ("12,345, 3 min ago"), "not counted yet" (a gateway a reload added after the last
/// count), "never counted", or "off". An engine that predates the age
/// (no `states_refresh` in its reply) counted at each status: its figure is shown bare.
fn states_cell(g: &GatewayStatus, refresh: Option<&StatesRefreshStatus>) -> String {
    let Some(refresh) = refresh else { return count_text(g.states) };
    match (g.states_age_ms, refresh.enabled) {
        (None, false) => "off".to_owned(),
        (None, true) => "never counted".to_owned(),
        (Some(age), _) => match g.states {
            Some(n) => format!("{}, {} ago", thousands(n), ms_text(age)),
            // Not in the last count (a gateway a reload added): its age is not this one's.
            None => "not counted yet".to_owned(),
        },
    }
}

/// The line under the gateway table that says how the states figure is kept up to date.
fn states_refresh_line(r: &StatesRefreshStatus) -> String {
    if !r.enabled {
        return format!(
            "states per gateway: not counted (states_refresh = {}); `statecull plan` counts on demand\n",
            r.setting
        );
    }
    let mut s = format!("states per gateway (states_refresh = {}): ", r.setting);
    match (r.age_ms, r.last_count_ms) {
        (Some(age), Some(took)) => {
            s.push_str(&format!("counted {} ago in {}", ms_text(age), ms_text(took)));
        }
        (Some(age), None) => s.push_str(&format!("counted {} ago", ms_text(age))),
        (None, _) => s.push_str("not counted yet"),
    }
    match r.next_in_ms {
        Some(0) => s.push_str("; next count due now"),
        Some(next) => s.push_str(&format!("; next count in {}", ms_text(next))),
        None => {}
    }
    s.push('\n');
    s
}

pub fn event_line(e: &Event) -> String {
    let mut s = format!("#{:<5} {:<17}", e.seq, e.kind.name());
    if let Some(g) = &e.gateway {
        s.push_str(&format!(" {g:<8}"));
    }
    s.push(' ');
    // One line per event: a multi-line message (a plan's explanation) shows its first line.
    let mut lines = e.message.lines();
    s.push_str(lines.next().unwrap_or(""));
    if lines.next().is_some() {
        s.push_str(" (...)");
    }
    if let Some(k) = e.killed
        && !e.message.contains("killed")
    {
        s.push_str(&format!(" [killed {k}]"));
    }
    if let Some(ms) = e.elapsed_ms {
        s.push_str(&format!(" [{ms:.1} ms]"));
    }
    s
}

pub fn status_text(st: &StatusReply) -> String {
    let mut out = format!(
        "statecull-engine {} up {}, policy {}\nbroker {}: {}\n\n",
        st.engine_version,
        ms_text(
            Duration::try_from_secs_f64(st.uptime_s)
                .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
        ),
        st.policy,
        st.broker.socket,
        if st.broker.connected {
            st.broker.backend.clone().unwrap_or_else(|| "connected".into())
        } else {
            format!(
                "NOT connected{}",
                st.broker.last_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
            )
        }
    );
    out.push_str(&format!(
        "{:<10} {:<9} {:>7} {:>9} {:>7} {:>22} {:>9}  {}\n",
        "gateway", "state", "loss", "latency", "samples", "states", "since", "evidence"
    ));
    for g in &st.gateways {
        let mut state = g.state.clone();
        if g.suppressed {
            state.push('*');
        }
        if g.forced {
            state.push('!');
        }
        out.push_str(&format!(
            "{:<10} {:<9} {:>6.1}% {:>9} {:>7} {:>22} {:>9}  {}\n",
            g.name,
            state,
            g.loss_pct,
            g.latency_ms.map_or_else(|| "-".into(), |l| format!("{l:.1}ms")),
            g.samples,
            states_cell(g, st.states_refresh.as_ref()),
            ms_text(g.since_ms),
            g.last_reason.as_deref().unwrap_or("no transition yet")
        ));
    }
    if st.gateways.iter().any(|g| g.suppressed || g.forced) {
        out.push_str("(* suppressed by flap damping, ! set by `statecull gateway`)\n");
    }
    if let Some(r) = &st.states_refresh {
        out.push_str(&states_refresh_line(r));
    }
    if !st.recent_events.is_empty() {
        out.push_str("\nrecent events:\n");
        for e in st.recent_events.iter().rev().take(10).rev() {
            out.push_str("  ");
            out.push_str(&event_line(e));
            out.push('\n');
        }
    }
    out
}

pub fn plan_text(p: &PlanReply) -> String {
    let mut out = String::from("DRY RUN: nothing is killed.\n\n");
    out.push_str(&p.explanation);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    if !p.steps.is_empty() {
        out.push_str("\ncounted now:\n");
        for (i, s) in p.steps.iter().enumerate() {
            out.push_str(&format!(
                "  step {}: {} ({}), would kill {}{}\n",
                i + 1,
                s.purpose,
                s.action,
                count_text(s.would_kill),
                if s.match_opposite { ", with twins" } else { "" }
            ));
            for (sel, n) in &s.selectors {
                out.push_str(&format!("    {:>10}  {sel}\n", count_text(*n)));
            }
            if !s.spared_flows.is_empty() {
                out.push_str(&format!("    spared flows: {}\n", s.spared_flows.join(", ")));
            }
        }
    }
    if !p.counted {
        out.push_str("\n(counts unknown: the broker did not answer in time)\n");
    }
    out
}

pub fn status(path: &Path, json: bool, out: &mut Output) -> Result<(), CliError> {
    let mut c = ControlClient::connect_for(path, "status", Some(Duration::from_secs(30)))?;
    match c.call(&ControlRequest::Status)? {
        ControlReply::Status(st) => {
            if json {
                writeln!(out, "{}", serde_json::to_string(&st)?)?;
            } else {
                write!(out, "{}", status_text(&st))?;
            }
            Ok(())
        }
        other => Err(unexpected("status", &other)),
    }
}

pub fn plan(
    path: &Path,
    down: Vec<String>,
    up: Vec<String>,
    json: bool,
    out: &mut Output,
) -> Result<(), CliError> {
    if down.is_empty() && up.is_empty() {
        return Err(CliError::Usage(
            "say what to simulate: --down NAME and/or --up NAME (e.g. statecull plan --down WAN1)"
                .into(),
        ));
    }
    let mut c = ControlClient::connect_for(path, "plan", Some(Duration::from_secs(60)))?;
    match c.call(&ControlRequest::Plan { down, up })? {
        ControlReply::Plan(p) => {
            if json {
                writeln!(out, "{}", serde_json::to_string(&p)?)?;
            } else {
                write!(out, "{}", plan_text(&p))?;
            }
            Ok(())
        }
        other => Err(unexpected("plan", &other)),
    }
}

pub fn gateway(
    path: &Path,
    name: String,
    actions: &[GatewayAction],
    json: bool,
    out: &mut Output,
) -> Result<(), CliError> {
    let mut c = ControlClient::connect_for(path, "gateway", Some(Duration::from_secs(30)))?;
    for &action in actions {
        match c.call(&ControlRequest::Gateway { name: name.clone(), action })? {
            ControlReply::Done { message } => {
                if json {
                    writeln!(
                        out,
                        "{}",
                        serde_json::json!({ "gateway": name, "action": action, "message": message })
                    )?;
                } else {
                    writeln!(out, "{message}")?;
                }
            }
            other => return Err(unexpected("gateway", &other)),
        }
    }
    Ok(())
}

/// `statecull reload`: the engine reloads its policy file and answers once the new policy is
/// in force (or why not); a plan in flight may make it wait up to 30 s.
pub fn reload(path: &Path, json: bool, out: &mut Output) -> Result<(), CliError> {
    let mut c = ControlClient::connect_for(path, "reload", Some(Duration::from_secs(60)))?;
    match c.call(&ControlRequest::Reload)? {
        ControlReply::Done { message } => {
            if json {
                writeln!(out, "{}", serde_json::json!({ "reloaded": true, "message": message }))?;
            } else {
                writeln!(out, "{message}")?;
            }
            Ok(())
        }
        other => Err(unexpected("reload", &other)),
    }
}

/// Environment for `--exec`: every fact of the event as STATECULL_* variables.
pub fn event_env(e: &Event) -> Vec<(String, String)> {
    let mut env = vec![
        ("STATECULL_EVENT".to_owned(), e.kind.name().to_owned()),
        ("STATECULL_SEQ".to_owned(), e.seq.to_string()),
        ("STATECULL_UNIX_MS".to_owned(), e.unix_ms.to_string()),
        ("STATECULL_MESSAGE".to_owned(), e.message.clone()),
        ("STATECULL_GATEWAY".to_owned(), e.gateway.clone().unwrap_or_default()),
    ];
    if let Some(k) = e.killed {
        env.push(("STATECULL_KILLED".into(), k.to_string()));
    }
    if let Some(ms) = e.elapsed_ms {
        env.push(("STATECULL_ELAPSED_MS".into(), format!("{ms:.3}")));
    }
    for (k, v) in &e.fields {
        let name: String = k
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
            .collect();
        env.push((format!("STATECULL_F_{name}"), v.clone()));
    }
    if let Ok(j) = serde_json::to_string(e) {
        env.push(("STATECULL_EVENT_JSON".into(), j));
    }
    env
}

fn run_exec(cmd: &str, e: &Event) {
    let status = Process::new("/bin/sh").arg("-c").arg(cmd).envs(event_env(e)).status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => to_stderr(format_args!(
            "statecull events: --exec command for event #{} exited with {s}\n",
            e.seq
        )),
        Err(err) => {
            to_stderr(format_args!("statecull events: cannot run --exec command: {err}\n"));
        }
    }
}

/// Print events; with `follow`, every new one as it comes (flushed per event), until the
/// engine closes the stream or, without `exec`, nobody reads the output any more. With
/// `exec` the commands are the job (routing hooks), so a closed output does not stop them.
pub fn events(
    path: &Path,
    follow: bool,
    json: bool,
    exec: Option<String>,
    out: &mut Output,
) -> Result<(), CliError> {
    let mut c = ControlClient::connect_for(
        path,
        "events",
        if follow { None } else { Some(Duration::from_secs(30)) },
    )?;
    c.send(&ControlRequest::Events { follow })?;
    let backlog = match c.reply()? {
        ControlReply::Events { events } => events,
        other => return Err(unexpected("events", &other)),
    };
    let show = |out: &mut Output, e: &Event| -> Result<(), CliError> {
        if json {
            writeln!(out, "{}", serde_json::to_string(e)?)?;
        } else {
            writeln!(out, "{}", event_line(e))?;
        }
        out.flush()?;
        Ok(())
    };
    let stop = |out: &Output| out.closed() && exec.is_none();
    // With --exec, only new events run the command (old ones already happened; re-running
    // them after a restart of this follower would replay routing changes).
    for e in &backlog {
        show(out, e)?;
        if stop(out) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    while let Some(line) = c.read_line()? {
        if let Ok(e) = serde_json::from_str::<Event>(&line) {
            show(out, &e)?;
            if let Some(cmd) = &exec {
                run_exec(cmd, &e);
            }
            if stop(out) {
                return Ok(());
            }
        } else if let Ok(ControlReply::Error { message }) =
            serde_json::from_str::<ControlReply>(&line)
        {
            to_stderr(format_args!("statecull events: {message}\n"));
        } else {
            to_stderr(format_args!("statecull events: ignoring a line this version cannot read\n"));
        }
    }
    Err(engine_error("the engine closed the event stream (stopped or restarted)"))
}

/// The system this `statecull` was built for: what `check-policy` checks for by default.
pub fn host_os() -> TargetOs {
    if cfg!(target_os = "freebsd") { TargetOs::FreeBsd } else { TargetOs::Linux }
}

/// The portability section of `check-policy`: a heading, one line per finding (most severe
/// first), and the count of errors.
pub fn portability_text(findings: &[Finding], target: TargetOs, asked: bool) -> (String, usize) {
    let how = if asked { "as asked with --target-os" } else { "this host's system" };
    let backend = match target {
        TargetOs::Linux => "conntrack",
        TargetOs::FreeBsd => "pf",
    };
    let mut s = format!("On {target} ({how}; state table: {backend}):\n");
    if findings.is_empty() {
        s.push_str("  every feature of this policy works there\n");
    }
    for f in findings {
        s.push_str(&format!("  {}: {}: {}\n", f.level.name(), f.at, f.feature));
        // The reason, wrapped at 100 columns under it.
        let mut line = String::from("     ");
        for word in f.reason.split_whitespace() {
            if line.len() + 1 + word.len() > 100 {
                s.push_str(&line);
                s.push('\n');
                line = String::from("     ");
            }
            line.push(' ');
            line.push_str(word);
        }
        s.push_str(&line);
        s.push('\n');
    }
    let errors = findings.iter().filter(|f| f.level == Level::Error).count();
    (s, errors)
}

pub fn check_policy(
    file: &PathBuf,
    json: bool,
    target_os: Option<&str>,
    out: &mut Output,
) -> Result<(), CliError> {
    let target = match target_os {
        Some(t) => t.parse::<TargetOs>().map_err(CliError::Usage)?,
        None => host_os(),
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let policy = statecull_policy::load::parse(&text, &file.display().to_string())
        .map_err(|e| CliError::Policy(e.to_string()))?;
    let findings = statecull_policy::portability::check(&policy, target);
    let (section, errors) = portability_text(&findings, target, target_os.is_some());
    if json {
        writeln!(out, "{}", serde_json::to_string(&policy)?)?;
        // Notes are for the reader of the explanation; warnings and errors are not lost.
        let serious: Vec<Finding> =
            findings.iter().filter(|f| f.level >= Level::Warning).cloned().collect();
        if !serious.is_empty() {
            to_stderr(format_args!(
                "{}",
                portability_text(&serious, target, target_os.is_some()).0
            ));
        }
    } else {
        writeln!(out, "{}", statecull_policy::load::explain(&policy))?;
        writeln!(out)?;
        write!(out, "{section}")?;
    }
    if errors > 0 {
        return Err(CliError::Policy(format!(
            "{} is valid, but {errors} of its features can never work on {target} (see above)",
            file.display()
        )));
    }
    if !json {
        writeln!(out, "OK: {} is a valid policy for {target}.", file.display())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use statecull_control::EventKind;

    fn ev() -> Event {
        Event {
            seq: 7,
            unix_ms: 1,
            kind: EventKind::GatewayDown,
            gateway: Some("WAN1".into()),
            message: "WAN1 up -> down".into(),
            killed: None,
            elapsed_ms: Some(1.5),
            fields: vec![("loss_pct".into(), "100.0".into()), ("via-x".into(), "y".into())],
        }
    }

    #[test]
    fn exec_environment_names_every_fact() {
        let env = event_env(&ev());
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("STATECULL_EVENT"), Some("gateway-down"));
        assert_eq!(get("STATECULL_GATEWAY"), Some("WAN1"));
        assert_eq!(get("STATECULL_SEQ"), Some("7"));
        assert_eq!(get("STATECULL_F_LOSS_PCT"), Some("100.0"));
        assert_eq!(get("STATECULL_F_VIA_X"), Some("y"));
        assert!(get("STATECULL_EVENT_JSON").is_some_and(|j| j.contains("\"seq\":7")));
    }

    fn gateway(states: Option<u64>, states_age_ms: Option<u64>) -> GatewayStatus {
        GatewayStatus {
            name: "WAN1".into(),
            interface: "eth1".into(),
            address: "198.51.100.254".into(),
            health_source: "icmp".into(),
            state: "up".into(),
            suppressed: false,
            forced: false,
            since_ms: 1000,
            last_reason: None,
            loss_pct: 0.0,
            latency_ms: None,
            samples: 0,
            flap_penalty: 0.0,
            states,
            states_age_ms,
        }
    }

    fn refresh(enabled: bool, age_ms: Option<u64>) -> StatesRefreshStatus {
        StatesRefreshStatus {
            setting: if enabled { "auto" } else { "off" }.into(),
            enabled,
            age_ms,
            last_count_ms: age_ms.map(|_| 1200),
            next_in_ms: enabled.then_some(540_000),
        }
    }

    /// Status shows the last count with its age, never a bare "?" for a figure that is
    /// only old, and says when there is none and why.
    #[test]
    fn states_are_shown_with_their_age() {
        let on = refresh(true, Some(180_000));
        let cases = [
            (gateway(Some(12_345), Some(180_000)), Some(&on), "12,345, 3 min ago"),
            (gateway(Some(7), Some(850)), Some(&on), "7, 850 ms ago"),
            (gateway(None, Some(180_000)), Some(&on), "not counted yet"),
            (gateway(None, None), Some(&refresh(true, None)), "never counted"),
            (gateway(None, None), Some(&refresh(false, None)), "off"),
            // An engine from before the age: its figure as it sent it.
            (gateway(Some(12_345), None), None, "12345"),
            (gateway(None, None), None, "?"),
        ];
        for (g, r, want) in cases {
            assert_eq!(states_cell(&g, r), want, "{g:?} {r:?}");
        }
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(4_000_000), "4,000,000");
        assert_eq!(
            states_refresh_line(&on),
            "states per gateway (states_refresh = auto): counted 3 min ago in 1.2 s; next count \
             in 9 min\n"
        );
        assert_eq!(
            states_refresh_line(&refresh(false, None)),
            "states per gateway: not counted (states_refresh = off); `statecull plan` counts on \
             demand\n"
        );
    }

    #[test]
    fn portability_errors_fail_and_are_listed() {
        let policy = statecull_policy::load::parse(
            "[[gateway]]\nname = \"WAN1\"\ninterface = \"em0\"\naddress = \"198.51.100.254\"\n\
             health_source = \"external\"\n[gateway.states]\nmark = \"0x1/0xff\"\n",
            "t.toml",
        )
        .unwrap();
        let f = statecull_policy::portability::check(&policy, TargetOs::FreeBsd);
        let (text, errors) = portability_text(&f, TargetOs::FreeBsd, true);
        assert_eq!(errors, 2, "{text}"); // marks on pf, rtnetlink (the default) on FreeBSD
        assert!(text.starts_with("On freebsd (as asked with --target-os; state table: pf):\n"));
        assert!(text.contains("  error: gateway WAN1: [gateway.states] mark as the only recogniser\n      connection marks are conntrack's;"), "{text}");
        assert!(text.lines().all(|l| l.len() <= 100), "{text}");
        let f = statecull_policy::portability::check(&policy, TargetOs::Linux);
        let (text, errors) = portability_text(&f, TargetOs::Linux, false);
        assert_eq!(
            (errors, text.as_str()),
            (
                0,
                "On linux (this host's system; state table: conntrack):\n  every feature of this policy works there\n"
            )
        );
    }

    #[test]
    fn event_lines_read_well() {
        let l = event_line(&ev());
        assert!(l.contains("gateway-down") && l.contains("WAN1") && l.contains("[1.5 ms]"), "{l}");
    }
}
