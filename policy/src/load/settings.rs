//! The two optional tables that are not lists: `[engine]` (paths and addresses the engine
//! uses, each overridable on its command line) and `[routing]` (how a kill waits for
//! routing to move off a dead gateway). A table or key left out takes the model's default.

use std::net::SocketAddr;
use std::time::Duration;

use crate::PolicyError;
use crate::model::{EngineSettings, Routing, RoutingConfirm};

use super::Loader;
use super::duration::{Bounds, HOUR, MS};
use super::raw::{RawEngine, RawRouting};

impl Loader<'_> {
    pub(super) fn engine(&self, raw: Option<&RawEngine>) -> Result<EngineSettings, PolicyError> {
        let Some(raw) = raw else { return Ok(EngineSettings::default()) };
        let broker_socket = raw
            .broker_socket
            .as_ref()
            .map(|s| self.path(s, "engine.broker_socket", "/run/statecull/broker.sock"))
            .transpose()?;
        let control_socket = raw
            .control_socket
            .as_ref()
            .map(|s| self.path(s, "engine.control_socket", "/run/statecull/engine.sock"))
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
        Ok(EngineSettings { broker_socket, control_socket, metrics_listen, readable_paths })
    }

    pub(super) fn routing(&self, raw: Option<&RawRouting>) -> Result<Routing, PolicyError> {
        let default = Routing::default();
        let confirm = match raw.and_then(|r| r.confirm.as_ref()) {
            None => default.confirm,
            Some(c) => match c.get_ref().as_str() {
                "rtnetlink" => RoutingConfirm::Rtnetlink,
                "signal" => RoutingConfirm::Signal,
                "delay" => RoutingConfirm::Delay,
                other => {
                    return Err(self.err(
                        &c.span(),
                        "routing.confirm",
                        format!(
                            "unknown confirmation {other:?}; expected \"rtnetlink\" (Linux: watch \
                             the routes), \"signal\" (wait for `statecull gateway NAME down \
                             --routed`) or \"delay\" (wait settle_timeout)"
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
