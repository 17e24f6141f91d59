//! dpinger status sockets (pfSense, OPNsense).
//!
//! dpinger started with `-u SOCKET` answers every connection on that Unix socket with one
//! report line and closes it. The line is written by `usocket_thread()` in dpinger.c as
//! `"%s%lu %lu %lu\n"`: the identifier given with `-i NAME` followed by one space (empty
//! without `-i`), the average latency in microseconds, its standard deviation in
//! microseconds, and the loss in whole percent (0..=100). pfSense and OPNsense always pass
//! `-i <gateway name>`, so their lines are `"<name> <avg_us> <stddev_us> <loss_pct>\n"`.
//!
//! When no reply arrived in dpinger's averaging window it reports latency 0 (and loss 100);
//! right after it starts, before any probe resolved, it reports `0 0 0`. Both mean "no
//! latency known", which [`DpingerStatus::latency_or_none`] expresses.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::dial::Dialer;
use crate::error::EngineError;

/// Longest answer read from a status socket. dpinger's own buffer is about 170 bytes.
pub const MAX_STATUS_BYTES: usize = 1024;
/// Longest line [`parse_status`] accepts.
pub const MAX_LINE_LEN: usize = 256;
/// Longest identifier dpinger accepts (`char identifier[64]` holds it, a space and a NUL).
pub const MAX_NAME_LEN: usize = 62;

/// One dpinger report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DpingerStatus {
    /// The `-i` identifier (pfSense/OPNsense: the gateway name); empty if dpinger runs
    /// without `-i`.
    pub name: String,
    pub latency_avg: Duration,
    pub latency_stddev: Duration,
    pub loss_pct: u32,
}

impl DpingerStatus {
    /// The average latency, or `None` when dpinger had no reply to average (it then reports
    /// 0: with loss 100 when nothing answers, with loss 0 before its first probe resolved).
    pub fn latency_or_none(&self) -> Option<Duration> {
        (!self.latency_avg.is_zero()).then_some(self.latency_avg)
    }
}

fn invalid(what: &str, message: impl Into<String>) -> EngineError {
    EngineError::Dpinger { path: what.to_string(), message: message.into() }
}

/// A decimal number of at most 19 digits (no sign, no spaces), as `%lu` prints it.
fn number(field: &str, what: &str) -> Result<u64, EngineError> {
    if field.is_empty() || field.len() > 19 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            "status line",
            format!("{what} {:?} is not a decimal number", clip(field)),
        ));
    }
    field.parse::<u64>().map_err(|e| invalid("status line", format!("{what}: {e}")))
}

/// At most 40 characters of untrusted text for an error message.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Parse one status line (one trailing `\n` allowed).
///
/// Strict: fields separated by single spaces, either `NAME AVG STDDEV LOSS` (dpinger with
/// `-i NAME`, as pfSense and OPNsense run it) or `AVG STDDEV LOSS` (without `-i`; the name is
/// then empty); numbers decimal; loss at most 100; the name at most [`MAX_NAME_LEN`]
/// printable characters; the whole line at most [`MAX_LINE_LEN`] bytes.
pub fn parse_status(line: &str) -> Result<DpingerStatus, EngineError> {
    if line.len() > MAX_LINE_LEN {
        return Err(invalid(
            "status line",
            format!("{} bytes, more than {MAX_LINE_LEN}", line.len()),
        ));
    }
    let body = line.strip_suffix('\n').unwrap_or(line);
    if body.chars().any(char::is_control) {
        return Err(invalid(
            "status line",
            format!("control character in {:?} (expected one line)", clip(body)),
        ));
    }
    let fields: Vec<&str> = body.split(' ').collect();
    let (name, nums) = match fields.as_slice() {
        [name, a, s, l] => (*name, [*a, *s, *l]),
        [a, s, l] => ("", [*a, *s, *l]),
        _ => {
            return Err(invalid(
                "status line",
                format!(
                    "{:?}: expected \"NAME LATENCY_US STDDEV_US LOSS_PCT\" (single spaces), got {} fields",
                    clip(body),
                    fields.len()
                ),
            ));
        }
    };
    if fields.len() == 4 && name.is_empty() {
        return Err(invalid("status line", "empty name field"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid(
            "status line",
            format!("name of {} bytes, more than {MAX_NAME_LEN}", name.len()),
        ));
    }
    let avg = number(nums[0], "latency")?;
    let stddev = number(nums[1], "latency stddev")?;
    let loss = number(nums[2], "loss")?;
    let loss_pct = match u32::try_from(loss) {
        Ok(l) if l <= 100 => l,
        _ => return Err(invalid("status line", format!("loss {loss}% is more than 100"))),
    };
    Ok(DpingerStatus {
        name: name.to_string(),
        latency_avg: Duration::from_micros(avg),
        latency_stddev: Duration::from_micros(stddev),
        loss_pct,
    })
}

/// Connect to a dpinger status socket through `dialer` (where it was registered before
/// confinement) and read its report.
///
/// The whole exchange (connect, read to EOF) must finish within `timeout`; at most
/// [`MAX_STATUS_BYTES`] are read; the answer must be exactly one line ending in `\n`.
pub async fn read_status(
    dialer: &Dialer,
    path: &Path,
    timeout: Duration,
) -> Result<DpingerStatus, EngineError> {
    let shown = path.display().to_string();
    let err = |message: String| EngineError::Dpinger { path: shown.clone(), message };
    let exchange = async {
        let stream = dialer.connect(path).await.map_err(|e| {
            if crate::sources::out_of_descriptors(&e) {
                // Not dpinger's fault, and not something to wait out quietly.
                return EngineError::Exhausted {
                    what: format!("dpinger {shown}: connect"),
                    source: e,
                };
            }
            err(format!("connect: {e} (is dpinger running with -u {}?)", path.display()))
        })?;
        let mut buf = Vec::with_capacity(256);
        // One byte more than allowed, to tell "exactly the limit" from "too long".
        let limit = u64::try_from(MAX_STATUS_BYTES + 1).unwrap_or(u64::MAX);
        stream.take(limit).read_to_end(&mut buf).await.map_err(|e| err(format!("read: {e}")))?;
        Ok::<_, EngineError>(buf)
    };
    let buf = match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(err(format!(
                "no complete status within {timeout:?} (dpinger answers one line and closes; \
                 is this a dpinger status socket?)"
            )));
        }
    };
    if buf.len() > MAX_STATUS_BYTES {
        return Err(err(format!("answer longer than {MAX_STATUS_BYTES} bytes")));
    }
    let text = std::str::from_utf8(&buf).map_err(|_| err("answer is not UTF-8".into()))?;
    if text.is_empty() {
        return Err(err("empty answer".into()));
    }
    let Some(line) = text.strip_suffix('\n') else {
        return Err(err(format!("answer {:?} does not end in a newline", clip(text))));
    };
    parse_status(line).map_err(|e| match e {
        EngineError::Dpinger { message, .. } => err(message),
        other => other,
    })
}

/// Check that a report comes from the dpinger watching gateway `expected`.
///
/// dpinger's identifier (`-i NAME`) is the gateway's name on pfSense and OPNsense, and the
/// policy has no other name for it: a report naming another gateway means the policy points
/// at the wrong socket, and taking its figures would judge this gateway by another one's
/// link. A report without an identifier (dpinger started without `-i`) cannot be checked
/// and passes. Returns the refusal's text.
pub fn check_identifier(status: &DpingerStatus, expected: &str) -> Result<(), String> {
    if status.name.is_empty() || status.name == expected {
        return Ok(());
    }
    Err(format!(
        "the dpinger report is for {:?}, not for {expected:?}: refusing its figures (is \
         dpinger_socket pointing at another gateway's socket? dpinger's -i NAME must be the \
         gateway's name in the policy)",
        clip(&status.name)
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixListener;

    static NEXT: AtomicU32 = AtomicU32::new(0);

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> Self {
            let p = std::env::temp_dir().join(format!(
                "statecull-dpinger-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn parses_pfsense_lines() {
        let s = parse_status("WAN1_DHCP 12345 678 2\n").unwrap();
        assert_eq!(s.name, "WAN1_DHCP");
        assert_eq!(s.latency_avg, Duration::from_micros(12345));
        assert_eq!(s.latency_stddev, Duration::from_micros(678));
        assert_eq!(s.loss_pct, 2);
        assert_eq!(s.latency_or_none(), Some(Duration::from_micros(12345)));

        let dead = parse_status("WAN2 0 0 100").unwrap();
        assert_eq!(dead.loss_pct, 100);
        assert_eq!(dead.latency_or_none(), None);
        let fresh = parse_status("WAN2 0 0 0").unwrap();
        assert_eq!(fresh.latency_or_none(), None);

        // dpinger without -i: no name.
        let anon = parse_status("250 10 0\n").unwrap();
        assert_eq!(anon.name, "");
        assert_eq!(anon.latency_avg, Duration::from_micros(250));
        // %lu is 64-bit on amd64.
        let big = parse_status("GW 18446744073709551 0 0").unwrap();
        assert_eq!(big.latency_avg, Duration::from_micros(18_446_744_073_709_551));
    }

    #[test]
    fn rejects_bad_lines() {
        for bad in [
            "",
            "\n",
            "WAN1",
            "WAN1 1 2",                      // three fields, "WAN1" is no number
            "WAN1 1 2 3 4",                  // too many
            "WAN 1 1 2 3",                   // a name with a space
            "WAN1  1 2 3",                   // double space
            " 1 2 3",                        // empty name
            "WAN1 1 2 3 ",                   // trailing space
            "WAN1 1 2 101",                  // loss > 100
            "WAN1 -1 2 3",                   // sign
            "WAN1 +1 2 3",                   // sign
            "WAN1 1.5 2 3",                  // not an integer
            "WAN1 0x10 2 3",                 // not decimal
            "WAN1 1 2 3\n\n",                // two lines
            "WAN1 1 2 3\r\n",                // CR
            "WAN1\t1 2 3",                   // tab
            "WAN1 99999999999999999999 2 3", // overflow
        ] {
            assert!(parse_status(bad).is_err(), "accepted {bad:?}");
        }
        let long_name = format!("{} 1 2 3", "n".repeat(MAX_NAME_LEN + 1));
        assert!(parse_status(&long_name).is_err());
        let ok_name = format!("{} 1 2 3", "n".repeat(MAX_NAME_LEN));
        assert!(parse_status(&ok_name).is_ok());
        let long_line = format!("GW 1 2 3{}", " ".repeat(MAX_LINE_LEN));
        assert!(parse_status(&long_line).is_err());
        let e = parse_status("WAN1 1 2 250").unwrap_err().to_string();
        assert!(e.contains("250"), "{e}");
    }

    /// A one-shot server: answers each connection with `answer` (or nothing, holding the
    /// connection open, when `None`).
    fn server(dir: &TempDir, answer: Option<&'static [u8]>) -> PathBuf {
        let path = dir.0.join("gw.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                match answer {
                    Some(a) => {
                        let _ = s.write_all(a).await;
                    }
                    None => held.push(s),
                }
            }
        });
        path
    }

    fn direct(path: &Path) -> Dialer {
        Dialer::direct([("dpinger".to_owned(), path.to_owned())])
    }

    /// A status socket that answers, but was not registered with the dialer before
    /// confinement, is never connected to.
    #[tokio::test]
    async fn an_unregistered_socket_is_not_read() {
        let dir = TempDir::new();
        let path = server(&dir, Some(b"WAN1 20500 1500 0\n"));
        let other = Dialer::direct([("the broker".to_owned(), dir.0.join("broker.sock"))]);
        let e = read_status(&other, &path, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(e.contains("gw.sock was not registered"), "{e}");
    }

    #[tokio::test]
    async fn reads_a_status_socket() {
        let dir = TempDir::new();
        let path = server(&dir, Some(b"WAN1 20500 1500 0\n"));
        let s = read_status(&direct(&path), &path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(s.name, "WAN1");
        assert_eq!(s.latency_or_none(), Some(Duration::from_micros(20500)));
        assert_eq!(s.loss_pct, 0);
        // A second read works too (dpinger answers every connection).
        assert!(read_status(&direct(&path), &path, Duration::from_secs(5)).await.is_ok());
    }

    #[tokio::test]
    async fn silent_server_times_out_clearly() {
        let dir = TempDir::new();
        let path = server(&dir, None);
        let started = std::time::Instant::now();
        let e = read_status(&direct(&path), &path, Duration::from_millis(200)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        let msg = e.to_string();
        assert!(msg.contains("no complete status within 200ms"), "{msg}");
        assert!(msg.contains("gw.sock"), "{msg}");
    }

    #[test]
    fn identifiers_are_checked() {
        let st = |name: &str| parse_status(&format!("{name} 1000 10 0")).unwrap();
        assert!(check_identifier(&st("WAN1"), "WAN1").is_ok());
        let e = check_identifier(&st("WAN2"), "WAN1").unwrap_err();
        assert!(e.contains("\"WAN2\"") && e.contains("\"WAN1\""), "{e}");
        assert!(check_identifier(&st("wan1"), "WAN1").is_err(), "names are compared exactly");
        // dpinger without -i: nothing to check.
        assert!(check_identifier(&parse_status("1000 10 0").unwrap(), "WAN1").is_ok());
    }

    /// Issue 10e: WAN1's policy points at WAN2's dpinger socket. Its reports (WAN2 dead,
    /// 100 % loss) must be refused loudly, never judged as WAN1's health.
    #[tokio::test]
    async fn a_report_for_another_gateway_is_refused() {
        let dir = TempDir::new();
        let path = server(&dir, Some(b"WAN2 0 0 100\n"));
        let policy = format!(
            r#"
[routing]
confirm = "delay"
settle_timeout = "1s"

[[gateway]]
name = "WAN1"
interface = "igb1"
address = "198.51.100.254"
health_source = "dpinger"
dpinger_socket = "{}"
window = 2
min_samples = 1
[gateway.states]
nat_addr = ["198.51.100.1"]

[[gateway]]
name = "WAN2"
interface = "igb2"
address = "203.0.113.254"
health_source = "external"
[gateway.states]
nat_addr = ["203.0.113.1"]

[[group]]
name = "failover"
members = [ {{ gateway = "WAN1", tier = 1 }}, {{ gateway = "WAN2", tier = 2 }} ]
on_down = "gateway"
"#,
            path.display()
        );
        let policy = statecull_policy::load::parse(&policy, "test").unwrap();
        let broker = crate::broker::BrokerLink::new(dir.0.join("no-broker.sock"));
        let (shared, _decisions, metrics) = crate::state::Shared::new(policy, broker);
        let shared = std::sync::Arc::new(shared);
        let poll = tokio::spawn(crate::sources::poll_dpinger(
            std::sync::Arc::clone(&shared),
            direct(&path),
            "WAN1".to_owned(),
            path,
            Duration::from_millis(20),
            Duration::from_secs(2),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        poll.abort();
        let facts = shared.gateway_facts();
        assert_eq!(facts[0].probes_total, 0, "WAN2's report was taken for WAN1's");
        assert_eq!(facts[0].state.name(), "up", "WAN1 judged by WAN2's link");
        assert!(facts[0].source_errors_total >= 2, "{:?}", facts[0]);
        let err = facts[0].source_error.clone().unwrap_or_default();
        assert!(err.contains("\"WAN2\"") && err.contains("refusing"), "{err}");
        let m = metrics.borrow();
        assert!(!m.gateways[0].health_source_up, "the metric must show the source failing");
    }

    #[tokio::test]
    async fn bad_answers_are_errors() {
        let dir = TempDir::new();
        let path = server(&dir, Some(b"WAN1 1 2 3"));
        let e = read_status(&direct(&path), &path, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("newline"), "{e}");

        let dir = TempDir::new();
        let huge: &'static [u8] = Box::leak(vec![b'1'; 4096].into_boxed_slice());
        let path = server(&dir, Some(huge));
        let e = read_status(&direct(&path), &path, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("longer than"), "{e}");

        let dir = TempDir::new();
        let path = server(&dir, Some(b"WAN1 1 2 300\n"));
        let e = read_status(&direct(&path), &path, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("gw.sock") && e.contains("300"), "{e}");

        let dir = TempDir::new();
        let missing = dir.0.join("missing.sock");
        let e = read_status(&direct(&missing), &missing, Duration::from_secs(5))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("connect"), "{e}");
    }
}
