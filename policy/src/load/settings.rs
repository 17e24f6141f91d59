//! The two optional tables that are not lists: `[engine]` (paths and addresses the engine
//! uses, each overridable on its command line, and how often it counts states per gateway)
//! and `[routing]` (how a kill waits for routing to move off a dead gateway). A table or key
//! left out takes the model's default.

use std::net::SocketAddr;
use std::time::Duration;

use toml::{Spanned, Value};

use crate::PolicyError;
use crate::model::{EngineSettings, Routing, RoutingConfirm, StatesRefresh};

use super::Loader;
use super::duration::{Bounds, HOUR, MS};
use super::raw::{RawEngine, RawRouting};

/// Bounds of an explicit `states_refresh` minimum. Below a second the figure would be
/// refreshed faster than anyone reads it (the budget still applies); a day is the longest
/// a figure shown with its age is still worth keeping.
const STATES_REFRESH_BOUNDS: Bounds =
    Bounds { min: Duration::from_secs(1), max: Duration::from_secs(24 * 3600) };

impl Loader<'_> {
    pub(super) fn engine(&self, raw: Option<&RawEngine>) -> Result<EngineSettings, PolicyError> {
        let Some(raw) = raw else { return Ok(EngineSettings::default()) };
        let broker_socket = raw
            .broker_socket
            .as_ref()
            .map(|s| self.path(s, "engine.broker_socket", statecull_proto::paths::BROKER_SOCKET))
            .transpose()?;
        let control_socket = raw
            .control_socket
            .as_ref()
            .map(|s| self.path(s, "engine.control_socket", statecull_proto::paths::CONTROL_SOCKET))
            .transpose()?;
        let metrics_listen = raw
            .metrics_listen
            .as_ref()
            .map(|s| {
                s.get_ref().parse::<SocketAddr>().map_err(|_| {
                    self.err(
                        &s.span(),
                        "engine.metrics_listen",
                        format!(
                            "{:?} is not ADDR:PORT; expected e.g. \"127.0.0.1:9771\" or \
                             \"[::1]:9771\"",
                            s.get_ref()
                        ),
                    )
                })
            })
            .transpose()?;
        let mut readable_paths = Vec::with_capacity(raw.readable_paths.len());
        for (i, p) in raw.readable_paths.iter().enumerate() {
            let field = format!("engine.readable_paths[{}]", i + 1);
            readable_paths.push(self.path(p, &field, "/var/run/dpinger_WAN1.sock")?);
        }
        let states_refresh = self.states_refresh(raw.states_refresh.as_ref())?;
        Ok(EngineSettings {
            broker_socket,
            control_socket,
            metrics_listen,
            readable_paths,
            states_refresh,
        })
    }

    /// `"auto"`, `"off"`, or a minimum interval such as `"1m"`.
    fn states_refresh(&self, raw: Option<&Spanned<Value>>) -> Result<StatesRefresh, PolicyError> {
        const FIELD: &str = "engine.states_refresh";
        let Some(raw) = raw else { return Ok(StatesRefresh::default()) };
        match raw.get_ref() {
            Value::String(s) if s == "auto" => Ok(StatesRefresh::Auto),
            Value::String(s) if s == "off" => Ok(StatesRefresh::Off),
            // Something meant as a duration: the duration reader explains what is wrong
            // with it (a bare number has no unit, "5x" has an unknown unit, ...).
            Value::String(s) if s.trim_start().starts_with(|c: char| c.is_ascii_digit()) => {
                self.states_refresh_minimum(raw)
            }
            Value::Integer(_) => self.states_refresh_minimum(raw),
            // A word or another type: say what the three forms are.
            other => {
                let found = match other {
                    Value::String(s) => format!("{s:?}"),
                    other => format!("{} {other}", other.type_str()),
                };
                Err(self.err(
                    &raw.span(),
                    FIELD,
                    format!(
                        "{found} is not a refresh setting; expected \"auto\" (adaptive, the \
                         default), \"off\" (no background counts) or a minimum interval such as \
                         \"1m\""
                    ),
                ))
            }
        }
    }

    fn states_refresh_minimum(&self, raw: &Spanned<Value>) -> Result<StatesRefresh, PolicyError> {
        let bounds = STATES_REFRESH_BOUNDS;
        let d = self.opt_duration(Some(raw), "engine.states_refresh", Duration::ZERO, bounds)?;
        Ok(StatesRefresh::AtMostEvery(d))
    }

    pub(super) fn routing(&self, raw: Option<&RawRouting>) -> Result<Routing, PolicyError> {
        let default = Routing::default();
        let confirm = match raw.and_then(|r| r.confirm.as_ref()) {
            None => default.confirm,
            Some(c) => match c.get_ref().as_str() {
                "rtnetlink" => RoutingConfirm::Rtnetlink,
                "signal" => RoutingConfirm::Signal,
                "delay" => RoutingConfirm::Delay,
                "route-socket" => RoutingConfirm::RouteSocket,
                "pf-ruleset" => RoutingConfirm::PfRuleset,
                other => {
                    return Err(self.err(
                        &c.span(),
                        "routing.confirm",
                        format!(
                            "unknown confirmation {other:?}; expected \"rtnetlink\" (Linux: watch \
                             the routes), \"route-socket\" (FreeBSD: watch the routes), \
                             \"pf-ruleset\" (pf: wait for the firewall to reload its rules), \
                             \"signal\" (wait for `statecull gateway NAME down --routed`) or \
                             \"delay\" (wait settle_timeout)"
                        ),
                    ));
                }
            },
        };
        let settle_timeout = self.opt_duration(
            raw.and_then(|r| r.settle_timeout.as_ref()),
            "routing.settle_timeout",
            default.settle_timeout,
            Bounds { min: MS, max: HOUR },
        )?;
        let sweep_delay = self.opt_duration(
            raw.and_then(|r| r.sweep_delay.as_ref()),
            "routing.sweep_delay",
            default.sweep_delay,
            Bounds { min: Duration::ZERO, max: HOUR },
        )?;
        Ok(Routing { confirm, settle_timeout, sweep_delay })
    }
}
