//! Signals: what stops the engine, and what it survives.
//!
//! Any process of the engine's uid may signal it, and every signal whose default action is
//! to terminate would otherwise stop failover without a trace. So every such catchable
//! signal is either a stop request (SIGTERM, SIGINT, SIGQUIT: stop as on SIGTERM, exit 0) or
//! caught and ignored with a log line, at most one per signal per [`LOG_EVERY`]:
//! SIGUSR1, SIGUSR2, SIGALRM, SIGVTALRM, SIGPROF,
//! SIGIO, SIGXCPU, SIGXFSZ (a write past the file size limit then fails with EFBIG instead
//! of killing the engine) and, on Linux, SIGPWR, SIGSTKFLT and the real-time signals
//! SIGRTMIN..=SIGRTMAX that tokio can register (glibc keeps the two below SIGRTMIN for
//! itself). Synchronous fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS) and
//! SIGABRT keep their default action: a process that faulted must not go on. SIGHUP
//! reloads the policy ([`RELOAD`], `Shared::reload`).
//!
//! [`Signals::install`] installs every handler; it runs before confinement, so `rt_sigaction`
//! is never needed for it afterwards.

use std::time::Duration;

use nix::libc::c_int;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;

use crate::error::EngineError;
use crate::sources::{RateLimited, also_text};

/// An ignored signal is logged at most this often (per signal).
pub const LOG_EVERY: Duration = Duration::from_secs(60);

/// The signals that stop the engine.
pub const STOP: [(c_int, &str); 3] = [
    (nix::libc::SIGTERM, "SIGTERM"),
    (nix::libc::SIGINT, "SIGINT"),
    (nix::libc::SIGQUIT, "SIGQUIT"),
];

/// The signal that reloads the policy.
pub const RELOAD: (c_int, &str) = (nix::libc::SIGHUP, "SIGHUP");

/// The signals ignored (with a log line) instead of their default action, by number and name.
pub fn ignored() -> Vec<(c_int, String)> {
    use nix::libc;
    #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
    let mut v: Vec<(c_int, String)> = [
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
    ]
    .into_iter()
    .map(|(n, s)| (n, s.to_owned()))
    .collect();
    #[cfg(target_os = "linux")]
    {
        v.push((libc::SIGPWR, "SIGPWR".to_owned()));
        v.push((libc::SIGSTKFLT, "SIGSTKFLT".to_owned()));
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        for n in min..=max {
            let name = if n == min {
                "SIGRTMIN".to_owned()
            } else if n == max {
                "SIGRTMAX".to_owned()
            } else {
                format!("SIGRTMIN+{}", n - min)
            };
            v.push((n, name));
        }
    }
    v
}

/// Real-time signals: registering them may fail where the platform or tokio does not
/// support one; that is reported, not fatal.
fn is_realtime(n: c_int) -> bool {
    #[cfg(target_os = "linux")]
    {
        n >= nix::libc::SIGRTMIN()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = n;
        false
    }
}

/// What to say when an ignored signal arrives.
fn ignored_text(name: &str) -> String {
    match name {
        "SIGXFSZ" => "SIGXFSZ ignored: a write past the file size limit fails with EFBIG \
                      instead of stopping the engine"
            .to_owned(),
        "SIGXCPU" => "SIGXCPU ignored: the engine reached its soft CPU time limit".to_owned(),
        other => format!("{other} ignored: the engine does not use it"),
    }
}

/// Installed handlers.
#[derive(Debug)]
pub struct Signals {
    stop: Vec<(&'static str, Signal)>,
    /// SIGHUP, until the daemon takes it ([`Signals::take_reload`]).
    reload: Option<Signal>,
    ignored: Vec<(String, Signal)>,
}

impl Signals {
    /// Install every handler. Must run inside the runtime, before confinement.
    pub fn install() -> Result<Self, EngineError> {
        let mut stop = Vec::new();
        for (n, name) in STOP {
            let s = signal(SignalKind::from_raw(n))
                .map_err(|e| EngineError::io(format!("installing the {name} handler"), e))?;
            stop.push((name, s));
        }
        let reload = Some(
            signal(SignalKind::from_raw(RELOAD.0))
                .map_err(|e| EngineError::io(format!("installing the {} handler", RELOAD.1), e))?,
        );
        let mut ignored = Vec::new();
        let mut missing = Vec::new();
        for (n, name) in self::ignored() {
            match signal(SignalKind::from_raw(n)) {
                Ok(s) => ignored.push((name, s)),
                Err(e) if is_realtime(n) => missing.push(format!("{name} ({e})")),
                Err(e) => {
                    return Err(EngineError::io(format!("installing the {name} handler"), e));
                }
            }
        }
        if !missing.is_empty() {
            tracing::warn!(
                "cannot catch {}: these signals still stop the engine",
                missing.join(", ")
            );
        }
        Ok(Signals { stop, reload, ignored })
    }

    /// The SIGHUP stream (once): each signal asks for a reload.
    pub fn take_reload(&mut self) -> Option<Signal> {
        self.reload.take()
    }

    /// Log ignored signals (on tasks in `tasks`, which run until aborted) and return when a
    /// stop signal arrives, with its name.
    pub async fn run(self, tasks: &mut JoinSet<()>) -> &'static str {
        for (name, mut s) in self.ignored {
            tasks.spawn(async move {
                let text = ignored_text(&name);
                let mut limit = RateLimited::new(LOG_EVERY);
                while s.recv().await.is_some() {
                    if let Some(held) = limit.allow() {
                        tracing::warn!(signal = %name, "{text}{}", also_text(held));
                    }
                }
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(STOP.len());
        let mut waiting = JoinSet::new();
        for (name, mut s) in self.stop {
            let tx = tx.clone();
            waiting.spawn(async move {
                if s.recv().await.is_some() {
                    let _ = tx.send(name).await;
                }
            });
        }
        drop(tx);
        let name = rx.recv().await.unwrap_or("stop signal");
        waiting.abort_all();
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_terminating_signal_is_covered_and_faults_are_not() {
        use nix::libc;
        let ign: Vec<c_int> = ignored().into_iter().map(|(n, _)| n).collect();
        let stop: Vec<c_int> = STOP.iter().map(|(n, _)| *n).collect();
        assert_eq!(RELOAD.0, libc::SIGHUP);
        assert!(!ign.contains(&libc::SIGHUP) && !stop.contains(&libc::SIGHUP));
        for n in [
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGALRM,
            libc::SIGVTALRM,
            libc::SIGPROF,
            libc::SIGIO,
            libc::SIGXCPU,
            libc::SIGXFSZ,
        ] {
            assert!(ign.contains(&n), "{n} not ignored");
        }
        for n in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
            assert!(stop.contains(&n) && !ign.contains(&n), "{n}");
        }
        for n in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGSYS,
            libc::SIGABRT,
            libc::SIGKILL,
            libc::SIGSTOP,
        ] {
            assert!(!ign.contains(&n) && !stop.contains(&n), "{n} must keep its default");
        }
        #[cfg(target_os = "linux")]
        {
            assert!(ign.contains(&libc::SIGPWR) && ign.contains(&libc::SIGSTKFLT));
            // glibc's own two real-time signals are never touched.
            assert!(!ign.contains(&(libc::SIGRTMIN() - 1)));
            assert!(ign.contains(&libc::SIGRTMIN()) && ign.contains(&libc::SIGRTMAX()));
        }
        assert!(ignored_text("SIGXFSZ").contains("EFBIG"));
    }
}
