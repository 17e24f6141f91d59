//! Health sources the engine polls (dpinger status sockets), and reporting their failures.
//!
//! A source that cannot be read gives no evidence either way, so the gateway keeps its last
//! verdict; that must never pass silently. Each failure is recorded on the gateway (shown by
//! `statecull status` and the `statecull_gateway_health_source_up` metric) and logged: when
//! the error changes, and again at least every [`REPEAT_EVERY`] while it lasts. Running out of
//! descriptors is an error of the engine itself, logged at error level every
//! [`EXHAUSTED_EVERY`]. A report that names another gateway is refused (misconfigured path):
//! its figures are never taken for this gateway's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};

use crate::error::EngineError;
use crate::state::Shared;

/// A persisting source failure is logged again this often.
pub const REPEAT_EVERY: Duration = Duration::from_secs(60);
/// Running out of descriptors is logged this often while it lasts.
pub const EXHAUSTED_EVERY: Duration = Duration::from_secs(10);

/// Whether an I/O error means the process (`EMFILE`) or the system (`ENFILE`) has no
/// descriptor left.
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    e.raw_os_error().is_some_and(|c| {
        c == nix::errno::Errno::EMFILE as i32 || c == nix::errno::Errno::ENFILE as i32
    })
}

/// At most one log line per period; counts what it held back.
#[derive(Debug)]
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> Self {
        RateLimited { every, last: None, held_back: 0 }
    }

    /// May a line be logged now? `Some(n)`: yes, and `n` occurrences were held back since the
    /// last one.
    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`Self::allow`] at a given time (tests).
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }

    /// Start over: the next occurrence is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.held_back = 0;
    }
}

/// " (N more since the last report)" for a count of held-back lines, or nothing.
pub fn also_text(held_back: u64) -> String {
    if held_back == 0 {
        String::new()
    } else {
        format!(" ({held_back} more since the last report)")
    }
}

/// Why a poll gave nothing.
enum Failure {
    /// Reading the socket failed (dpinger not running, bad answer, no descriptor left).
    Read(EngineError),
    /// The answer names another gateway.
    Identity(String),
}

/// Poll gateway `name`'s dpinger status socket at `path` (registered with `dialer`) every `every` (each exchange
/// bounded by `timeout`) and feed the reports to its health machine, forever.
///
/// A report must carry the gateway's name as dpinger's identifier (`-i NAME`; pfSense and
/// OPNsense pass their gateway name): the policy has no separate field for it, so the
/// gateway's name in the policy must be the one dpinger was started with. A report without
/// an identifier (dpinger run without `-i`) cannot be checked; it is used, and that is logged
/// once.
pub async fn poll_dpinger(
    shared: Arc<Shared>,
    dialer: crate::dial::Dialer,
    name: String,
    path: PathBuf,
    every: Duration,
    timeout: Duration,
) {
    // By name: a reload may renumber the gateways (and one the policy in force no longer
    // reads from this socket ignores its reports, see `Shared::record_summary`).
    let gateway = name.as_str();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    let mut repeat = RateLimited::new(REPEAT_EVERY);
    let mut exhausted = RateLimited::new(EXHAUSTED_EVERY);
    let mut anonymous_noted = false;
    loop {
        tick.tick().await;
        let outcome = match crate::dpinger::read_status(&dialer, &path, timeout).await {
            Ok(st) => match crate::dpinger::check_identifier(&st, &name) {
                Ok(()) => Ok(st),
                Err(message) => Err(Failure::Identity(message)),
            },
            Err(e) => Err(Failure::Read(e)),
        };
        match outcome {
            Ok(st) => {
                if st.name.is_empty() && !anonymous_noted {
                    anonymous_noted = true;
                    tracing::warn!(
                        gateway = %name,
                        "dpinger at {} reports no identifier (started without -i): cannot check \
                         that it watches {name}",
                        path.display()
                    );
                }
                if last_error.take().is_some() {
                    tracing::info!(gateway = %name, "dpinger at {} answers again", path.display());
                }
                repeat.reset();
                exhausted.reset();
                shared.source_ok(gateway);
                shared.record_summary(gateway, f64::from(st.loss_pct), st.latency_or_none());
            }
            Err(failure) => {
                let (message, out_of_fds, identity) = match &failure {
                    Failure::Read(e) => {
                        (e.to_string(), matches!(e, EngineError::Exhausted { .. }), false)
                    }
                    Failure::Identity(m) => (m.clone(), false, true),
                };
                shared.source_failed(gateway, &message);
                let changed = last_error.as_deref() != Some(message.as_str());
                if changed {
                    repeat.reset();
                }
                let held = if out_of_fds { exhausted.allow() } else { repeat.allow() };
                if let Some(held) = held {
                    let also = also_text(held);
                    if out_of_fds || identity {
                        tracing::error!(
                            gateway = %name,
                            "{name}: health NOT updated: {message}{also}"
                        );
                    } else {
                        // No answer from dpinger is no evidence either way about the
                        // gateway; the engine keeps its last verdict, and says so.
                        tracing::warn!(
                            gateway = %name,
                            "{name}: health not updated (last verdict kept): {message}{also}"
                        );
                    }
                }
                last_error = Some(message);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_holds_back_and_counts() {
        let t0 = Instant::now();
        let mut r = RateLimited::new(Duration::from_secs(60));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(59)), None);
        assert_eq!(r.allow_at(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(r.allow_at(t0 + Duration::from_secs(61)), None);
        r.reset();
        assert_eq!(r.allow_at(t0 + Duration::from_secs(62)), Some(0));
        assert_eq!(also_text(0), "");
        assert_eq!(also_text(3), " (3 more since the last report)");
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32
        )));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::ENFILE as i32
        )));
        assert!(!out_of_descriptors(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::ENOENT as i32
        )));
        assert!(!out_of_descriptors(&std::io::Error::other("x")));
    }
}
