//! One `[[gateway]]` table: its name, interface, next hop and family; where its health
//! comes from (ICMP probes to its monitor targets, a dpinger socket, or external verdicts)
//! and the probe timing; and `[gateway.states]`, how its connection states are recognised
//! in the table. The health thresholds are checked in `thresholds`; conflicts with other
//! gateways' recognisers in `conflicts`, which needs the spans kept here.

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::Range;
use std::time::Duration;

use statecull_proto::AddressFamily;
use toml::Spanned;

use crate::PolicyError;
use crate::model::{Gateway, HealthSource, StateMatch};

use super::Loader;
use super::duration::{Bounds, MINUTE, MS};
use super::raw::{RawGateway, RawNatAddr};
use super::words::{family_word, source_word};

/// Highest FIB number a policy may name (FreeBSD's `RT_MAXFIBS` is 65536; the kernel refuses
/// one at or above its `net.fibs` when the engine starts).
const MAX_FIB: i64 = 65535;

/// Where a gateway and its name were written, for messages about it.
pub(super) struct GatewaySpans {
    pub(super) table: Range<usize>,
    pub(super) name: Range<usize>,
    pub(super) states: RecogniserSpans,
}

/// Where (span and field path) a gateway's recognisers were written, for conflicts
/// between gateways.
#[derive(Default)]
pub(super) struct RecogniserSpans {
    pub(super) rt_addr: Option<(Range<usize>, String)>,
    pub(super) mark: Option<(Range<usize>, String)>,
    pub(super) nat_addr: Vec<(Range<usize>, String)>,
    /// `nat_addr = "interface"`.
    pub(super) nat_from_interface: Option<(Range<usize>, String)>,
}

fn raw_span<T>(v: &Option<Spanned<T>>) -> Range<usize> {
    v.as_ref().map_or(0..0, Spanned::span)
}

impl Loader<'_> {
    pub(super) fn gateway(
        &self,
        index: usize,
        raw: &Spanned<RawGateway>,
    ) -> Result<(Gateway, GatewaySpans), PolicyError> {
        let at = format!("gateway[{}]", index + 1);
        let table = raw.span();
        let g = raw.get_ref();
        let f = |key: &str| format!("{at}.{key}");
        let (name, name_span) = self.name(g.name.as_ref(), &table, &at, "gateway", "WAN1")?;

        let interface = match &g.interface {
            Some(i) => self.ifname(i, &f("interface"))?,
            None => {
                return Err(self.err(
                    &table,
                    &at,
                    format!(
                        "gateway {name:?} has no interface: add interface = \"em1\" (the \
                         interface its next hop is reached through)"
                    ),
                ));
            }
        };
        let address = match &g.address {
            Some(a) => self.host_addr(a, &f("address"))?,
            None => {
                return Err(self.err(
                    &table,
                    &at,
                    format!(
                        "gateway {name:?} has no address: add address = \"198.51.100.254\" (its \
                         next hop; the family follows from it)"
                    ),
                ));
            }
        };
        let family = AddressFamily::of(&address);
        if let Some(fam) = &g.family {
            let declared = match fam.get_ref().to_ascii_lowercase().as_str() {
                "inet" | "ipv4" => AddressFamily::Ipv4,
                "inet6" | "ipv6" => AddressFamily::Ipv6,
                other => {
                    return Err(self.err(
                        &fam.span(),
                        &f("family"),
                        format!("unknown family {other:?}; expected \"inet\" or \"inet6\""),
                    ));
                }
            };
            if declared != family {
                return Err(self.err(
                    &fam.span(),
                    &f("family"),
                    format!(
                        "family {:?} does not agree with address {address} ({}); the family \
                         follows from the address, so family can be left out",
                        fam.get_ref(),
                        family_word(family),
                    ),
                ));
            }
        }

        let source = self.health_source(g, &name, &at)?;
        let is_icmp = source == HealthSource::Icmp;
        let monitor = match &g.monitor {
            None => vec![address],
            Some(list) => {
                if !is_icmp {
                    return Err(self.err(
                        &list.span(),
                        &f("monitor"),
                        format!(
                            "monitor targets are probed only with health_source = \"icmp\"; \
                             gateway {name:?} gets its health from {}; remove monitor",
                            source_word(&source)
                        ),
                    ));
                }
                if list.get_ref().is_empty() {
                    return Err(self.err(
                        &list.span(),
                        &f("monitor"),
                        format!(
                            "monitor is empty; list at least one address to probe, or leave \
                             monitor out to probe the next hop {address}"
                        ),
                    ));
                }
                let mut targets: Vec<IpAddr> = Vec::with_capacity(list.get_ref().len());
                let mut seen = HashSet::with_capacity(list.get_ref().len());
                for (k, m) in list.get_ref().iter().enumerate() {
                    let field = format!("{at}.monitor[{}]", k + 1);
                    let target = self.host_addr(m, &field)?;
                    self.same_family(target, family, &name, &m.span(), &field)?;
                    self.step(1);
                    if !seen.insert(target) {
                        return Err(self.err(
                            &m.span(),
                            &field,
                            format!("monitor target {target} is listed twice"),
                        ));
                    }
                    targets.push(target);
                }
                targets
            }
        };
        let probe_source = match &g.probe_source {
            None => None,
            Some(p) => {
                if !is_icmp {
                    return Err(self.err(
                        &p.span(),
                        &f("probe_source"),
                        format!(
                            "probe_source applies only to health_source = \"icmp\"; gateway \
                             {name:?} gets its health from {}; remove probe_source",
                            source_word(&source)
                        ),
                    ));
                }
                let a = self.host_addr(p, &f("probe_source"))?;
                self.same_family(a, family, &name, &p.span(), &f("probe_source"))?;
                Some(a)
            }
        };
        let fib = match &g.fib {
            None => None,
            Some(raw) if !is_icmp => {
                return Err(self.err(
                    &raw.span(),
                    &f("fib"),
                    format!(
                        "fib applies only to health_source = \"icmp\" (the engine's own probe \
                         sockets); gateway {name:?} gets its health from {}; remove fib",
                        source_word(&source)
                    ),
                ));
            }
            Some(raw) => {
                let n = self.integer(raw, &f("fib"), 0, MAX_FIB)?;
                Some(
                    u32::try_from(n)
                        .map_err(|_| self.err(&raw.span(), &f("fib"), "out of range"))?,
                )
            }
        };
        let probe_interval = self.opt_duration(
            g.probe_interval.as_ref(),
            &f("probe_interval"),
            Gateway::DEFAULT_PROBE_INTERVAL,
            Bounds { min: Duration::from_millis(10), max: MINUTE },
        )?;
        let timeout = self.setting_duration(
            g.probe_timeout.as_ref(),
            &f("probe_timeout"),
            Gateway::DEFAULT_PROBE_TIMEOUT,
            Bounds { min: MS, max: MINUTE },
        )?;
        let health = self.health(g, &at, &name, is_icmp, &timeout)?;
        let (states, spans) = self.states(g, &table, &at, &name, family)?;
        let gateway = Gateway {
            name,
            interface,
            address,
            family,
            monitor,
            probe_source,
            fib,
            source,
            probe_interval,
            probe_timeout: timeout.value,
            health,
            states,
        };
        Ok((gateway, GatewaySpans { table, name: name_span, states: spans }))
    }

    fn health_source(
        &self,
        g: &RawGateway,
        name: &str,
        at: &str,
    ) -> Result<HealthSource, PolicyError> {
        let kind = g.health_source.as_ref();
        let source = match kind.map(|k| k.get_ref().as_str()) {
            None => HealthSource::default(),
            Some("icmp") => HealthSource::Icmp,
            Some("external") => HealthSource::External,
            Some("dpinger") => match &g.dpinger_socket {
                Some(s) => HealthSource::Dpinger {
                    socket: self.path(
                        s,
                        &format!("{at}.dpinger_socket"),
                        "/var/run/dpinger_WAN1~198.51.100.1~198.51.100.254.sock",
                    )?,
                },
                None => {
                    let span = kind.map_or(0..0, Spanned::span);
                    return Err(self.err(
                        &span,
                        &format!("{at}.health_source"),
                        format!(
                            "gateway {name:?} reads dpinger but names no socket: add \
                             dpinger_socket = \"/var/run/dpinger_{name}~SOURCE~TARGET.sock\" \
                             (pfSense/OPNsense keep them in /var/run)"
                        ),
                    ));
                }
            },
            Some(other) => {
                let span = kind.map_or(0..0, Spanned::span);
                return Err(self.err(
                    &span,
                    &format!("{at}.health_source"),
                    format!(
                        "unknown health source {other:?}; expected \"icmp\" (statecull probes), \
                         \"dpinger\" (with dpinger_socket) or \"external\" (only `statecull \
                         gateway NAME down|up`)"
                    ),
                ));
            }
        };
        if let (Some(s), false) =
            (&g.dpinger_socket, matches!(source, HealthSource::Dpinger { .. }))
        {
            return Err(self.err(
                &s.span(),
                &format!("{at}.dpinger_socket"),
                "dpinger_socket is read only with health_source = \"dpinger\"; add that, or \
                 remove dpinger_socket",
            ));
        }
        Ok(source)
    }

    fn states(
        &self,
        g: &RawGateway,
        table: &Range<usize>,
        at: &str,
        name: &str,
        family: AddressFamily,
    ) -> Result<(StateMatch, RecogniserSpans), PolicyError> {
        let field = format!("{at}.states");
        let Some(raw) = &g.states else {
            return Err(self.err(
                table,
                &field,
                format!(
                    "gateway {name:?} has no [gateway.states] table: statecull must know how to \
                     recognise its states; set at least one of rt_addr (pf route-to gateway), \
                     mark (conntrack mark) or nat_addr (its SNAT addresses)"
                ),
            ));
        };
        let s = raw.get_ref();
        let f = |key: &str| format!("{field}.{key}");
        let mut spans = RecogniserSpans::default();
        let rt_addr = match &s.rt_addr {
            None => None,
            Some(r) => {
                let a = self.host_addr(r, &f("rt_addr"))?;
                self.same_family(a, family, name, &r.span(), &f("rt_addr"))?;
                spans.rt_addr = Some((r.span(), f("rt_addr")));
                Some(a)
            }
        };
        let mark = match &s.mark {
            None => None,
            Some(m) => {
                spans.mark = Some((m.span(), f("mark")));
                Some(self.mark(m, &f("mark"))?)
            }
        };
        let mut nat_addr: Vec<IpAddr> = Vec::new();
        let mut nat_from_interface = false;
        let mut seen = HashSet::new();
        if let Some(raw_nat) = &s.nat_addr {
            let list = match raw_nat.get_ref() {
                RawNatAddr::Word(w) if w == "interface" => {
                    nat_from_interface = true;
                    &Vec::new()
                }
                RawNatAddr::Word(w) => {
                    return Err(self.err(
                        &raw_nat.span(),
                        &f("nat_addr"),
                        format!(
                            "nat_addr = {:?}: expected a list of the gateway's SNAT addresses \
                             ([\"198.51.100.1\"]) or \"interface\" (its interface's addresses, \
                             followed as they change: DHCP, PPPoE)",
                            statecull_proto::text::clip(w)
                        ),
                    ));
                }
                RawNatAddr::List(l) if l.is_empty() => {
                    return Err(self.err(
                        &raw_nat.span(),
                        &f("nat_addr"),
                        "nat_addr is empty; list the gateway's SNAT addresses, write \
                         \"interface\" for its interface's, or leave nat_addr out",
                    ));
                }
                RawNatAddr::List(l) => l,
            };
            for (k, a) in list.iter().enumerate() {
                let key = format!("{}[{}]", f("nat_addr"), k + 1);
                // ["interface", "203.0.113.9"]: the interface's addresses and listed ones.
                if a.get_ref() == "interface" {
                    if nat_from_interface {
                        return Err(self.err(&a.span(), &key, "\"interface\" is listed twice"));
                    }
                    nat_from_interface = true;
                    continue;
                }
                let addr = self.host_addr(a, &key)?;
                self.step(1);
                if !seen.insert(addr) {
                    return Err(self.err(
                        &a.span(),
                        &key,
                        format!("NAT address {addr} is listed twice"),
                    ));
                }
                spans.nat_addr.push((a.span(), key));
                nat_addr.push(addr);
            }
        }
        let interface = match &s.interface {
            None => None,
            Some(i) => {
                if nat_addr.is_empty() && !nat_from_interface {
                    return Err(self.err(
                        &i.span(),
                        &f("interface"),
                        "states.interface narrows the nat_addr selectors (pf), so it needs \
                         nat_addr; add nat_addr = [\"...\"] or remove interface",
                    ));
                }
                Some(self.ifname(i, &f("interface"))?)
            }
        };
        if rt_addr.is_none() && mark.is_none() && nat_addr.is_empty() && !nat_from_interface {
            return Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "gateway {name:?}: [gateway.states] sets no recogniser; set at least one of \
                     rt_addr (pf route-to gateway), mark (conntrack mark, e.g. \"0x1/0xff\") or \
                     nat_addr (its SNAT addresses)"
                ),
            ));
        }
        if nat_from_interface {
            spans.nat_from_interface = Some((raw_span(&s.nat_addr), f("nat_addr")));
        }
        Ok((StateMatch { rt_addr, mark, nat_addr, nat_from_interface, interface }, spans))
    }
}
