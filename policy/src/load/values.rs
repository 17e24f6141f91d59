//! One scalar value each: interface names, absolute paths, unicast addresses of the
//! gateway's family, conntrack marks, IP protocols, ports and port ranges, bounded
//! integers, numbers and percentages; and `ordered`, for a pair of settings that must be in
//! order. Every check turns a wrong type or value into a message that shows a right one
//! ("expected e.g. ...") rather than serde's type names. Durations are in `duration`.

use std::net::IpAddr;
use std::ops::Range;

use statecull_proto::{AddressFamily, IfName, MarkMatch, PortRange, ipproto};
use toml::{Spanned, Value};

use crate::PolicyError;

use super::Loader;
use super::words::{family_word, fmt_num};

/// A setting that may come from the file or from the default, with where it came from
/// (for ordering errors that must blame a key the operator actually wrote).
pub(super) struct Setting<T> {
    pub(super) value: T,
    pub(super) span: Option<Range<usize>>,
    pub(super) field: String,
}

impl<T> Setting<T> {
    pub(super) fn origin(&self) -> &'static str {
        if self.span.is_some() { "" } else { ", the default" }
    }
}

impl Loader<'_> {
    pub(super) fn ifname(&self, raw: &Spanned<String>, field: &str) -> Result<IfName, PolicyError> {
        raw.get_ref().parse::<IfName>().map_err(|e| {
            self.err(
                &raw.span(),
                field,
                format!("{}; expected an interface name like \"em1\" or \"eth0\"", e.why()),
            )
        })
    }

    pub(super) fn path(
        &self,
        raw: &Spanned<String>,
        field: &str,
        example: &str,
    ) -> Result<String, PolicyError> {
        let p = raw.get_ref();
        if !p.starts_with('/') || p.contains('\0') {
            return Err(self.err(
                &raw.span(),
                field,
                format!("{p:?} is not an absolute path; expected e.g. {example:?}"),
            ));
        }
        Ok(p.clone())
    }

    /// One unicast address (no prefix, no zone, not 0.0.0.0/::, not multicast).
    pub(super) fn host_addr(
        &self,
        raw: &Spanned<String>,
        field: &str,
    ) -> Result<IpAddr, PolicyError> {
        let text = raw.get_ref();
        let addr = text.parse::<IpAddr>().map_err(|_| {
            let hint = if text.contains('/') {
                " (a single address is wanted here, not a prefix)"
            } else if text.contains('%') {
                " (write it without %zone: the gateway's interface is the zone)"
            } else {
                ""
            };
            self.err(
                &raw.span(),
                field,
                format!(
                    "{text:?} is not an IP address{hint}; expected e.g. \"198.51.100.254\" or \
                     \"2001:db8::1\""
                ),
            )
        })?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(self.err(
                &raw.span(),
                field,
                format!("{addr} is not a unicast address; expected a host's address"),
            ));
        }
        Ok(addr)
    }

    pub(super) fn same_family(
        &self,
        addr: IpAddr,
        family: AddressFamily,
        gateway: &str,
        span: &Range<usize>,
        field: &str,
    ) -> Result<(), PolicyError> {
        if AddressFamily::of(&addr) == family {
            return Ok(());
        }
        Err(self.err(
            span,
            field,
            format!(
                "{addr} is {} but gateway {gateway:?} is {} (its address); use an {} address, \
                 or declare a separate gateway for the other family",
                family_word(AddressFamily::of(&addr)),
                family_word(family),
                family_word(family)
            ),
        ))
    }

    pub(super) fn mark(&self, raw: &Spanned<Value>, field: &str) -> Result<MarkMatch, PolicyError> {
        let expected = "expected a conntrack mark like \"0x1/0xff\" (value/mask, decimal or 0x \
                        hex; the mask defaults to 0xffffffff)";
        let mark = match raw.get_ref() {
            Value::String(s) => s
                .parse::<MarkMatch>()
                .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why())))?,
            Value::Integer(n) => {
                let value = u32::try_from(*n).map_err(|_| {
                    self.err(&raw.span(), field, format!("{n} is not a 32-bit mark; {expected}"))
                })?;
                MarkMatch { value, mask: u32::MAX }
            }
            other => {
                return Err(self.err(
                    &raw.span(),
                    field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        mark.check()
            .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why())))?;
        Ok(mark)
    }

    pub(super) fn proto(&self, raw: &Spanned<Value>, field: &str) -> Result<u8, PolicyError> {
        let expected = "expected tcp, udp, icmp, icmpv6, sctp, dccp, gre, udplite or a number \
                        1..=255";
        match raw.get_ref() {
            Value::String(s) => ipproto::parse(s).map_err(|_| {
                self.err(&raw.span(), field, format!("unknown protocol {s:?}; {expected}"))
            }),
            Value::Integer(n) => u8::try_from(*n)
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| self.err(&raw.span(), field, format!("{n}: {expected}"))),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    pub(super) fn port_range(
        &self,
        raw: &Spanned<Value>,
        field: &str,
    ) -> Result<PortRange, PolicyError> {
        let expected =
            "expected a port 0..=65535 or a range \"A-B\" (e.g. 5060 or \"10000-20000\")";
        match raw.get_ref() {
            Value::Integer(n) => u16::try_from(*n).map(PortRange::single).map_err(|_| {
                self.err(&raw.span(), field, format!("{n} is not a port; {expected}"))
            }),
            Value::String(s) => s
                .parse::<PortRange>()
                .map_err(|e| self.err(&raw.span(), field, format!("{}; {expected}", e.why()))),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    pub(super) fn integer(
        &self,
        raw: &Spanned<Value>,
        field: &str,
        min: i64,
        max: i64,
    ) -> Result<i64, PolicyError> {
        let expected = format!("expected a whole number {min}..={max}");
        match raw.get_ref() {
            Value::Integer(n) if (min..=max).contains(n) => Ok(*n),
            Value::Integer(n) => {
                Err(self.err(&raw.span(), field, format!("{n} is out of range; {expected}")))
            }
            Value::String(s) if s.trim().parse::<i64>().is_ok() => Err(self.err(
                &raw.span(),
                field,
                format!("{s:?} is a string; write the number without quotes ({expected})"),
            )),
            other => Err(self.err(
                &raw.span(),
                field,
                format!("found {} {other}; {expected}", article(other.type_str())),
            )),
        }
    }

    pub(super) fn opt_count(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: usize,
        min: usize,
        max: usize,
    ) -> Result<usize, PolicyError> {
        let Some(raw) = raw else { return Ok(default) };
        let to_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let n = self.integer(raw, field, to_i64(min), to_i64(max))?;
        usize::try_from(n).map_err(|_| self.err(&raw.span(), field, "out of range"))
    }

    pub(super) fn setting_number(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: f64,
    ) -> Result<Setting<f64>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a number 0..=1000000000";
        #[allow(clippy::cast_precision_loss)] // integers up to 1e9 are exact in an f64
        let value = match raw.get_ref() {
            Value::Integer(n) => *n as f64,
            Value::Float(x) => *x,
            other => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        if !(0.0..=1e9).contains(&value) {
            return Err(self.err(
                &raw.span(),
                &field,
                format!("{value} is out of range; {expected}"),
            ));
        }
        Ok(Setting { value, span: Some(raw.span()), field })
    }

    pub(super) fn setting_percent(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: f64,
    ) -> Result<Setting<f64>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a percentage like \"20%\" or a number 0..=100";
        #[allow(clippy::cast_precision_loss)] // checked to be 0..=100 below
        let value = match raw.get_ref() {
            Value::Integer(n) => Some(*n as f64),
            Value::Float(x) => Some(*x),
            Value::String(s) => s
                .trim()
                .strip_suffix('%')
                .map(str::trim_end)
                .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .and_then(|n| n.parse::<f64>().ok()),
            _ => None,
        };
        match value {
            Some(v) if (0.0..=100.0).contains(&v) => {
                Ok(Setting { value: v, span: Some(raw.span()), field })
            }
            Some(v) => Err(self.err(
                &raw.span(),
                &field,
                format!("{}% is out of range; {expected}", fmt_num(v)),
            )),
            None => Err(self.err(
                &raw.span(),
                &field,
                format!("{} is not a percentage; {expected}", raw.get_ref()),
            )),
        }
    }

    /// Check `low < high` (or `low <= high` when `strict` is false), blaming whichever of
    /// the two the operator wrote (the later one when both were written).
    pub(super) fn ordered<T: PartialOrd>(
        &self,
        low: &Setting<T>,
        high: &Setting<T>,
        strict: bool,
        show: impl Fn(&T) -> String,
        why: &str,
    ) -> Result<(), PolicyError> {
        let ok = if strict { low.value < high.value } else { low.value <= high.value };
        if ok {
            return Ok(());
        }
        let later_is_high = match (&low.span, &high.span) {
            (Some(l), Some(h)) => h.start >= l.start,
            (None, Some(_)) => true,
            _ => false,
        };
        let blamed = if later_is_high { high } else { low };
        let span = blamed.span.clone().unwrap_or(0..0);
        let relation = if strict { "below" } else { "at most" };
        Err(self.err(
            &span,
            &blamed.field,
            format!(
                "{} ({}{}) must be {relation} {} ({}{}): {why}",
                short_key(&low.field),
                show(&low.value),
                low.origin(),
                short_key(&high.field),
                show(&high.value),
                high.origin(),
            ),
        ))
    }
}

/// `"gateway[1].loss_up"` → `"loss_up"`, for messages that already name the gateway.
pub(super) fn short_key(field: &str) -> &str {
    field.rsplit('.').next().unwrap_or(field)
}

pub(super) fn article(type_str: &str) -> &'static str {
    if type_str.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}
