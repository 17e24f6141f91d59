//! Prometheus metrics: the text exposition format (version 0.0.4) and a minimal HTTP/1.1
//! server for `GET /metrics`.
//!
//! [`render`] is pure. [`serve`] takes an already-bound listener, so the engine can bind it
//! before it confines itself, and reads the current values from a `watch` channel the rest of
//! the engine updates. The server is deliberately tiny: one request per connection, the
//! request head bounded in size and time, then the answer (bounded in time too) and close.
//! Connections are served concurrently and bounded in number; a full server makes room by
//! closing the oldest connection that has still not sent its request, so clients that
//! connect and say nothing cannot starve a scrape.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};

/// One gateway's figures.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GatewayMetrics {
    pub name: String,
    /// `up`, `degraded` or `down`.
    pub state: String,
    /// Flap damping holds the gateway's state (transitions are not acted on).
    pub suppressed: bool,
    /// Loss over the health window, 0..=100.
    pub loss_pct: f64,
    /// Mean round-trip time over the health window; `None` without any reply.
    pub latency_ms: Option<f64>,
    /// States through this gateway at the last background count; `None` if never counted
    /// (or not recognisable on the broker's backend).
    pub states: Option<u64>,
    pub kills_total: u64,
    pub sweep_leftovers_total: u64,
    pub probes_total: u64,
    pub probes_lost_total: u64,
    /// The gateway's health source answered at its last poll (always true for ICMP probes
    /// and external verdicts). False: the health shown is not being updated.
    pub health_source_up: bool,
    pub health_source_errors_total: u64,
}

/// Everything the engine exports.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct EngineMetrics {
    pub gateways: Vec<GatewayMetrics>,
    pub plans_total: u64,
    pub last_plan_duration_seconds: Option<f64>,
    pub last_sweep_leftovers: Option<u64>,
    pub broker_connected: bool,
    /// When the states per gateway were last counted (the age is computed at each scrape).
    #[serde(skip)]
    pub states_counted_at: Option<tokio::time::Instant>,
    /// How long the broker took for that count.
    pub states_count_seconds: Option<f64>,
}

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The states of the one-hot `statecull_gateway_state` family, in output order.
const STATES: [&str; 3] = ["up", "degraded", "down"];

/// Longest request head read (request line and headers).
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client gets to send its request head, and again to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once. A new connection past it takes the slot of the oldest one
/// still waiting for its request head; if every connection is already being answered, it is
/// closed.
pub const MAX_CONNECTIONS: usize = 64;
/// How often an accept error (out of descriptors, say) is logged at most.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// Escape a label value: backslash, double quote and line feed (exposition format 0.0.4).
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value as Prometheus spells it (`NaN`, `+Inf`, `-Inf`, otherwise decimal).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// Builds the text: each family's `# HELP` and `# TYPE`, then its samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Help texts are constants here, free of backslashes and line feeds.
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: &str) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// One family with one sample per gateway; `None` values are left out.
    fn per_gateway(
        &mut self,
        m: &EngineMetrics,
        name: &str,
        kind: &str,
        help: &str,
        value: impl Fn(&GatewayMetrics) -> Option<String>,
    ) {
        self.family(name, kind, help);
        for g in &m.gateways {
            if let Some(v) = value(g) {
                self.sample(name, &[("gateway", &g.name)], &v);
            }
        }
    }
}

fn flag(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// Render the metrics in the Prometheus text exposition format 0.0.4, as of now.
pub fn render(m: &EngineMetrics) -> String {
    render_at(m, tokio::time::Instant::now())
}

/// Render the metrics in the Prometheus text exposition format 0.0.4, as of `now` (the age
/// of the states figure is computed from it).
///
/// Families with no value (a gateway without latency, no plan yet) keep their `# HELP` and
/// `# TYPE` lines and simply have no sample. `statecull_gateway_up` is 1 unless the gateway is
/// `down` (a degraded gateway still carries traffic); `statecull_gateway_state` is one-hot over
/// `up`, `degraded`, `down` (all 0 for any other state string).
pub fn render_at(m: &EngineMetrics, now: tokio::time::Instant) -> String {
    let mut t = Text { out: String::with_capacity(1024 + 1024 * m.gateways.len()) };
    t.per_gateway(
        m,
        "statecull_gateway_up",
        "gauge",
        "Whether the gateway is usable: 1 unless its state is down (degraded counts as up).",
        |g| Some(flag(g.state != "down")),
    );
    t.family(
        "statecull_gateway_state",
        "gauge",
        "The gateway's health state, one-hot over up, degraded and down.",
    );
    for g in &m.gateways {
        for s in STATES {
            let v = flag(g.state == s);
            t.sample("statecull_gateway_state", &[("gateway", &g.name), ("state", s)], &v);
        }
    }
    t.per_gateway(
        m,
        "statecull_gateway_suppressed",
        "gauge",
        "Whether flap damping currently holds the gateway's state (1) or not (0).",
        |g| Some(flag(g.suppressed)),
    );
    t.per_gateway(
        m,
        "statecull_gateway_loss_ratio",
        "gauge",
        "Probe loss over the health window, 0 to 1.",
        |g| Some(float(g.loss_pct / 100.0)),
    );
    t.per_gateway(
        m,
        "statecull_gateway_latency_seconds",
        "gauge",
        "Mean probe round-trip time over the health window (absent without replies).",
        |g| g.latency_ms.map(|ms| float(ms / 1000.0)),
    );
    t.per_gateway(
        m,
        "statecull_gateway_states",
        "gauge",
        "Connection states through the gateway at the last count.",
        |g| g.states.map(|n| n.to_string()),
    );
    let age = m.states_counted_at.map(|at| now.saturating_duration_since(at).as_secs_f64());
    t.per_gateway(
        m,
        "statecull_gateway_states_age_seconds",
        "gauge",
        "Seconds since statecull_gateway_states was counted (every gateway is counted at once, in the background, within the states_refresh budget); absent before the first count.",
        |_| age.map(float),
    );
    t.per_gateway(
        m,
        "statecull_gateway_kills_total",
        "counter",
        "Connection states killed because of this gateway.",
        |g| Some(g.kills_total.to_string()),
    );
    t.per_gateway(
        m,
        "statecull_gateway_sweep_leftovers_total",
        "counter",
        "States the trailing sweeps still found for this gateway (non-zero: routing was late).",
        |g| Some(g.sweep_leftovers_total.to_string()),
    );
    t.per_gateway(
        m,
        "statecull_probes_total",
        "counter",
        "ICMP probes sent to this gateway's targets.",
        |g| Some(g.probes_total.to_string()),
    );
    t.per_gateway(
        m,
        "statecull_probes_lost_total",
        "counter",
        "ICMP probes to this gateway's targets that got no reply in time.",
        |g| Some(g.probes_lost_total.to_string()),
    );
    t.per_gateway(
        m,
        "statecull_gateway_health_source_up",
        "gauge",
        "Whether the gateway's health source (dpinger) answered at its last poll (0: its health is not being updated).",
        |g| Some(flag(g.health_source_up)),
    );
    t.per_gateway(
        m,
        "statecull_gateway_health_source_errors_total",
        "counter",
        "Polls of the gateway's health source (dpinger) that failed or were refused.",
        |g| Some(g.health_source_errors_total.to_string()),
    );
    t.family("statecull_plans_total", "counter", "Kill plans executed.");
    t.sample("statecull_plans_total", &[], &m.plans_total.to_string());
    t.family(
        "statecull_last_plan_duration_seconds",
        "gauge",
        "Wall-clock time of the last executed plan.",
    );
    if let Some(d) = m.last_plan_duration_seconds {
        t.sample("statecull_last_plan_duration_seconds", &[], &float(d));
    }
    t.family(
        "statecull_last_sweep_leftovers",
        "gauge",
        "States the last trailing sweep still found (non-zero: routing was late).",
    );
    if let Some(n) = m.last_sweep_leftovers {
        t.sample("statecull_last_sweep_leftovers", &[], &n.to_string());
    }
    t.family(
        "statecull_states_count_duration_seconds",
        "gauge",
        "How long the broker took for the last background count of states per gateway (the next waits at least 100 times as long).",
    );
    if let Some(d) = m.states_count_seconds {
        t.sample("statecull_states_count_duration_seconds", &[], &float(d));
    }
    t.family(
        "statecull_broker_connected",
        "gauge",
        "Whether the engine is connected to the broker (1) or not (0).",
    );
    t.sample("statecull_broker_connected", &[], &flag(m.broker_connected));
    t.out
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
///
/// Each connection gets [`IO_TIMEOUT`] to send a request head of at most
/// [`MAX_REQUEST_HEAD`] bytes, one answer (`200` with the current metrics, `404` for any other
/// path or method, `400` for a head that does not parse) written within [`IO_TIMEOUT`], and
/// is closed. Connections are served concurrently, at most [`MAX_CONNECTIONS`] at once; when
/// all are taken, the oldest one still silent is closed to make room (a waiting scrape is
/// never stuck behind silent clients, and silent clients cannot hold the slots). Errors only
/// end the connection concerned; accept errors (out of descriptors, say) are logged and
/// retried after a pause.
pub async fn serve(listener: TcpListener, rx: watch::Receiver<EngineMetrics>) {
    serve_with(listener, rx, MAX_CONNECTIONS).await;
}

async fn serve_with(listener: TcpListener, rx: watch::Receiver<EngineMetrics>, max: usize) {
    let slots = Arc::new(Semaphore::new(max));
    // Connections still waiting for their request head, oldest first; sending on the channel
    // closes that connection. A connection drops its receiver once its head is in, which
    // takes it off this list.
    let mut silent: VecDeque<oneshot::Sender<()>> = VecDeque::new();
    let mut accept_errors = crate::sources::RateLimited::new(ACCEPT_ERROR_LOG_EVERY);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                if let Some(held) = accept_errors.allow() {
                    tracing::error!(
                        error = %e,
                        "metrics listener: accept failed{}",
                        crate::sources::also_text(held)
                    );
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        silent.retain(|evict| !evict.is_closed());
        let permit = match Arc::clone(&slots).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let Some(oldest) = silent.pop_front() else {
                    // Every slot is answering a request (each within IO_TIMEOUT): no room.
                    continue;
                };
                let _ = oldest.send(());
                match tokio::time::timeout(IO_TIMEOUT, Arc::clone(&slots).acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => continue,
                }
            }
        };
        let (evict, evicted) = oneshot::channel();
        silent.push_back(evict);
        let rx = rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &rx, evicted).await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics { head_only: bool },
    NotFound,
    BadRequest,
}

/// Decide from the request head (bytes up to the blank line).
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else { return Route::BadRequest };
    let Some(line) = text.split("\r\n").next() else { return Route::BadRequest };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        _ => Route::NotFound,
    }
}

/// Read until the end of the request head (`\r\n\r\n`), at most [`MAX_REQUEST_HEAD`] bytes.
/// `None` when the peer closed early or sent too much.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        let searched_from = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[searched_from..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(searched_from + end);
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(None);
        }
    }
}

async fn handle(
    mut stream: TcpStream,
    rx: &watch::Receiver<EngineMetrics>,
    evicted: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let head = tokio::select! {
        r = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)) => match r {
            Ok(r) => r?,
            Err(_) => return Ok(()), // silent client: just close
        },
        // A newer connection needed the slot, and this one has still said nothing.
        _ = evicted => return Ok(()),
    };
    let (status, body, head_only) = match head.as_deref().map_or(Route::BadRequest, route) {
        Route::Metrics { head_only } => {
            let body = render(&rx.borrow());
            ("200 OK", body, head_only)
        }
        Route::NotFound => ("404 Not Found", "not found; try /metrics\n".to_string(), false),
        Route::BadRequest => ("400 Bad Request", "bad request\n".to_string(), false),
    };
    let content_type = if status.starts_with("200") { CONTENT_TYPE } else { "text/plain" };
    let mut answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if !head_only {
        answer.push_str(&body);
    }
    match tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Ok(()), // slow reader: give up
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn small() -> EngineMetrics {
        EngineMetrics {
            gateways: vec![
                GatewayMetrics {
                    name: "WAN1".into(),
                    state: "down".into(),
                    suppressed: false,
                    loss_pct: 100.0,
                    latency_ms: None,
                    states: Some(12),
                    kills_total: 3,
                    sweep_leftovers_total: 1,
                    probes_total: 40,
                    probes_lost_total: 20,
                    health_source_up: true,
                    health_source_errors_total: 0,
                },
                GatewayMetrics {
                    name: "WAN2".into(),
                    state: "up".into(),
                    suppressed: true,
                    loss_pct: 2.5,
                    latency_ms: Some(12.5),
                    states: None,
                    kills_total: 0,
                    sweep_leftovers_total: 0,
                    probes_total: 40,
                    probes_lost_total: 1,
                    health_source_up: false,
                    health_source_errors_total: 3,
                },
            ],
            plans_total: 1,
            last_plan_duration_seconds: Some(0.25),
            last_sweep_leftovers: None,
            broker_connected: true,
            states_counted_at: None,
            states_count_seconds: Some(1.5),
        }
    }

    const GOLDEN: &str = r#"# HELP statecull_gateway_up Whether the gateway is usable: 1 unless its state is down (degraded counts as up).
# TYPE statecull_gateway_up gauge
statecull_gateway_up{gateway="WAN1"} 0
statecull_gateway_up{gateway="WAN2"} 1
# HELP statecull_gateway_state The gateway's health state, one-hot over up, degraded and down.
# TYPE statecull_gateway_state gauge
statecull_gateway_state{gateway="WAN1",state="up"} 0
statecull_gateway_state{gateway="WAN1",state="degraded"} 0
statecull_gateway_state{gateway="WAN1",state="down"} 1
statecull_gateway_state{gateway="WAN2",state="up"} 1
statecull_gateway_state{gateway="WAN2",state="degraded"} 0
statecull_gateway_state{gateway="WAN2",state="down"} 0
# HELP statecull_gateway_suppressed Whether flap damping currently holds the gateway's state (1) or not (0).
# TYPE statecull_gateway_suppressed gauge
statecull_gateway_suppressed{gateway="WAN1"} 0
statecull_gateway_suppressed{gateway="WAN2"} 1
# HELP statecull_gateway_loss_ratio Probe loss over the health window, 0 to 1.
# TYPE statecull_gateway_loss_ratio gauge
statecull_gateway_loss_ratio{gateway="WAN1"} 1
statecull_gateway_loss_ratio{gateway="WAN2"} 0.025
# HELP statecull_gateway_latency_seconds Mean probe round-trip time over the health window (absent without replies).
# TYPE statecull_gateway_latency_seconds gauge
statecull_gateway_latency_seconds{gateway="WAN2"} 0.0125
# HELP statecull_gateway_states Connection states through the gateway at the last count.
# TYPE statecull_gateway_states gauge
statecull_gateway_states{gateway="WAN1"} 12
# HELP statecull_gateway_states_age_seconds Seconds since statecull_gateway_states was counted (every gateway is counted at once, in the background, within the states_refresh budget); absent before the first count.
# TYPE statecull_gateway_states_age_seconds gauge
# HELP statecull_gateway_kills_total Connection states killed because of this gateway.
# TYPE statecull_gateway_kills_total counter
statecull_gateway_kills_total{gateway="WAN1"} 3
statecull_gateway_kills_total{gateway="WAN2"} 0
# HELP statecull_gateway_sweep_leftovers_total States the trailing sweeps still found for this gateway (non-zero: routing was late).
# TYPE statecull_gateway_sweep_leftovers_total counter
statecull_gateway_sweep_leftovers_total{gateway="WAN1"} 1
statecull_gateway_sweep_leftovers_total{gateway="WAN2"} 0
# HELP statecull_probes_total ICMP probes sent to this gateway's targets.
# TYPE statecull_probes_total counter
statecull_probes_total{gateway="WAN1"} 40
statecull_probes_total{gateway="WAN2"} 40
# HELP statecull_probes_lost_total ICMP probes to this gateway's targets that got no reply in time.
# TYPE statecull_probes_lost_total counter
statecull_probes_lost_total{gateway="WAN1"} 20
statecull_probes_lost_total{gateway="WAN2"} 1
# HELP statecull_gateway_health_source_up Whether the gateway's health source (dpinger) answered at its last poll (0: its health is not being updated).
# TYPE statecull_gateway_health_source_up gauge
statecull_gateway_health_source_up{gateway="WAN1"} 1
statecull_gateway_health_source_up{gateway="WAN2"} 0
# HELP statecull_gateway_health_source_errors_total Polls of the gateway's health source (dpinger) that failed or were refused.
# TYPE statecull_gateway_health_source_errors_total counter
statecull_gateway_health_source_errors_total{gateway="WAN1"} 0
statecull_gateway_health_source_errors_total{gateway="WAN2"} 3
# HELP statecull_plans_total Kill plans executed.
# TYPE statecull_plans_total counter
statecull_plans_total 1
# HELP statecull_last_plan_duration_seconds Wall-clock time of the last executed plan.
# TYPE statecull_last_plan_duration_seconds gauge
statecull_last_plan_duration_seconds 0.25
# HELP statecull_last_sweep_leftovers States the last trailing sweep still found (non-zero: routing was late).
# TYPE statecull_last_sweep_leftovers gauge
# HELP statecull_states_count_duration_seconds How long the broker took for the last background count of states per gateway (the next waits at least 100 times as long).
# TYPE statecull_states_count_duration_seconds gauge
statecull_states_count_duration_seconds 1.5
# HELP statecull_broker_connected Whether the engine is connected to the broker (1) or not (0).
# TYPE statecull_broker_connected gauge
statecull_broker_connected 1
"#;

    #[test]
    fn render_golden() {
        let got = render(&small());
        if got != GOLDEN {
            for (i, (a, b)) in got.lines().zip(GOLDEN.lines()).enumerate() {
                assert_eq!(a, b, "line {}", i + 1);
            }
        }
        assert_eq!(got, GOLDEN);
    }

    #[test]
    fn every_family_has_help_and_type_once_and_samples_are_contiguous() {
        let text = render(&small());
        let mut seen = Vec::<String>::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&name), "{name} declared twice");
                seen.push(name.clone());
                current = name;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "sample outside its family: {line}");
            }
        }
        assert_eq!(seen.len(), 18);
    }

    /// The states figure's age is computed at each scrape from when it was counted, for
    /// every gateway (they are counted together), and absent before the first count.
    #[test]
    fn the_states_age_grows_between_counts() {
        let counted = tokio::time::Instant::now();
        let mut m = small();
        m.states_counted_at = Some(counted);
        let at = |secs: f64| render_at(&m, counted + Duration::from_secs_f64(secs));
        let text = at(180.5);
        for line in [
            "statecull_gateway_states_age_seconds{gateway=\"WAN1\"} 180.5",
            "statecull_gateway_states_age_seconds{gateway=\"WAN2\"} 180.5",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            at(3600.0).contains("statecull_gateway_states_age_seconds{gateway=\"WAN1\"} 3600\n")
        );
        // The count itself is kept as it was.
        assert!(text.contains("\nstatecull_gateway_states{gateway=\"WAN1\"} 12\n"), "{text}");
        m.states_counted_at = None;
        assert!(!render_at(&m, counted).contains("statecull_gateway_states_age_seconds{"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_label_value("WAN1 ü"), "WAN1 ü");
        let m = EngineMetrics {
            gateways: vec![GatewayMetrics {
                name: "evil\"} 1\nfake_metric 2\\".into(),
                state: "up".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render(&m);
        assert!(
            text.contains(r#"statecull_gateway_up{gateway="evil\"} 1\nfake_metric 2\\"} 1"#),
            "{text}"
        );
        assert!(!text.lines().any(|l| l.starts_with("fake_metric")));
    }

    #[test]
    fn degraded_counts_as_up_and_unknown_states_are_all_zero() {
        let gw = |name: &str, state: &str| GatewayMetrics {
            name: name.into(),
            state: state.into(),
            ..Default::default()
        };
        let m = EngineMetrics {
            gateways: vec![gw("A", "degraded"), gw("B", "weird")],
            ..Default::default()
        };
        let text = render(&m);
        for line in [
            "statecull_gateway_up{gateway=\"A\"} 1",
            "statecull_gateway_state{gateway=\"A\",state=\"degraded\"} 1",
            "statecull_gateway_state{gateway=\"A\",state=\"up\"} 0",
            "statecull_gateway_state{gateway=\"B\",state=\"up\"} 0",
            "statecull_gateway_state{gateway=\"B\",state=\"degraded\"} 0",
            "statecull_gateway_state{gateway=\"B\",state=\"down\"} 0",
            "statecull_plans_total 0",
            "statecull_broker_connected 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("statecull_gateway_latency_seconds{"), "{text}");
    }

    #[test]
    fn special_floats() {
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.0), "0");
        assert_eq!(float(1e-7), "0.0000001");
    }

    #[test]
    fn routing_of_request_heads() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics { head_only: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0"), Route::Metrics { head_only: false });
        assert_eq!(route(b"HEAD /metrics HTTP/1.1"), Route::Metrics { head_only: true });
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/2 extra"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }

    async fn request(addr: std::net::SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn serves_metrics_404_and_survives_garbage() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(small());
        let server = tokio::spawn(serve(listener, rx));

        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        assert!(head.contains(&format!("Content-Length: {}", body.len())), "{head}");
        assert_eq!(body, GOLDEN);

        let nf = request(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");

        // Garbage of every kind: binary, an oversized head, a client that hangs up early.
        let bad = request(addr, b"\x00\x01\x02\xff garbage\r\n\r\n").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let huge = vec![b'A'; 3 * MAX_REQUEST_HEAD];
        let _ = TcpStream::connect(addr).await.unwrap().write_all(&huge).await;
        {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metr").await.unwrap();
        }

        // The values follow the watch channel, and the server still answers.
        let mut m = small();
        m.broker_connected = false;
        tx.send(m).unwrap();
        let ok = request(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(ok.contains("\nstatecull_broker_connected 0\n"), "{ok}");
        let head = request(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"), "{head}");
        assert!(!server.is_finished());
        server.abort();
    }

    /// 64 clients that connect, say nothing and reconnect as soon as they are closed: a
    /// scrape must still be answered (a liveness bound, not a performance goal).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn silent_reconnecting_clients_do_not_starve_a_scrape() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_tx, rx) = watch::channel(small());
        let server = tokio::spawn(serve(listener, rx));
        let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut silent = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let reconnects = Arc::clone(&reconnects);
            silent.spawn(async move {
                loop {
                    let Ok(mut s) = TcpStream::connect(addr).await else { continue };
                    let mut sink = Vec::new();
                    let _ = s.read_to_end(&mut sink).await;
                    reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
        // Let them take every slot first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ok = request(addr, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with(GOLDEN), "{ok}");
        silent.abort_all();
        server.abort();
    }
}
