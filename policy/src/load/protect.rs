//! One `[[protect]]` table: a flow (protocol, ports, prefixes; at least one of them) that
//! fail-back with `on_recovery = "kill-unprotected"` spares.

use std::ops::Range;

use statecull_proto::{Prefix, ipproto};
use toml::Spanned;

use crate::PolicyError;
use crate::model::ProtectedFlow;

use super::Loader;
use super::raw::RawProtect;

impl Loader<'_> {
    pub(super) fn protect(
        &self,
        index: usize,
        raw: &Spanned<RawProtect>,
    ) -> Result<(ProtectedFlow, Range<usize>), PolicyError> {
        let at = format!("protect[{}]", index + 1);
        let p = raw.get_ref();
        let (name, name_span) =
            self.name(p.name.as_ref(), &raw.span(), &at, "protected flow", "sip")?;
        let proto = match &p.proto {
            None => None,
            Some(v) => Some(self.proto(v, &format!("{at}.proto"))?),
        };
        let mut ports = Vec::new();
        if let Some(list) = &p.ports {
            let field = format!("{at}.ports");
            if list.get_ref().is_empty() {
                return Err(self.err(
                    &list.span(),
                    &field,
                    "ports is empty; list ports or \"A-B\" ranges, or leave ports out to match \
                     any port",
                ));
            }
            if let Some(n) = proto.filter(|n| !ipproto::has_ports(*n)) {
                return Err(self.err(
                    &list.span(),
                    &field,
                    format!(
                        "{} has no ports; ports apply to tcp, udp, sctp, dccp and udplite",
                        ipproto::name(n)
                    ),
                ));
            }
            for (k, v) in list.get_ref().iter().enumerate() {
                ports.push(self.port_range(v, &format!("{field}[{}]", k + 1))?);
            }
        }
        let mut prefixes = Vec::new();
        if let Some(list) = &p.prefixes {
            let field = format!("{at}.prefixes");
            if list.get_ref().is_empty() {
                return Err(self.err(
                    &list.span(),
                    &field,
                    "prefixes is empty; list prefixes like \"192.0.2.0/24\", or leave prefixes \
                     out to match any address",
                ));
            }
            for (k, v) in list.get_ref().iter().enumerate() {
                let prefix = v.get_ref().parse::<Prefix>().map_err(|e| {
                    self.err(
                        &v.span(),
                        &format!("{field}[{}]", k + 1),
                        format!(
                            "{:?} is not a prefix: {}; expected e.g. \"192.0.2.0/24\" or \
                             \"2001:db8::/32\"",
                            v.get_ref(),
                            e.why()
                        ),
                    )
                })?;
                prefixes.push(prefix);
            }
        }
        if proto.is_none() && ports.is_empty() && prefixes.is_empty() {
            return Err(self.err(
                &raw.span(),
                &at,
                format!(
                    "protected flow {name:?} gives no proto, ports or prefixes, so it would \
                     protect every connection; narrow it, e.g. proto = \"udp\", ports = [5060]"
                ),
            ));
        }
        Ok((ProtectedFlow { name, proto, ports, prefixes }, name_span))
    }
}
