//! Values written back as an operator reads them, shared by the loader's messages and the
//! explanation (`crate::explain`) so that both spell a value the same way: durations as
//! the file writes them (`fmt_duration` is the inverse of `duration::parse_duration`),
//! numbers without trailing zeros, percentages, address families and health sources.

use std::time::Duration;

use statecull_proto::AddressFamily;

use crate::model::HealthSource;

pub(crate) fn family_word(f: AddressFamily) -> &'static str {
    match f {
        AddressFamily::Ipv4 => "IPv4",
        AddressFamily::Ipv6 => "IPv6",
    }
}

pub(crate) fn source_word(s: &HealthSource) -> &'static str {
    match s {
        HealthSource::Icmp => "ICMP probes",
        HealthSource::Dpinger { .. } => "dpinger",
        HealthSource::External => "external signals",
    }
}

/// A duration the way the file writes it (so `parse_duration` reads it back): `500ms`,
/// `2s`, `1.5s`, `90s`, `1m`, `1h`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms.is_multiple_of(3_600_000) {
        return format!("{}h", ms / 3_600_000);
    }
    if ms.is_multiple_of(60_000) {
        return format!("{}m", ms / 60_000);
    }
    if ms.is_multiple_of(1000) {
        return format!("{}s", ms / 1000);
    }
    if ms > 1000 {
        let frac = format!("{:03}", ms % 1000);
        return format!("{}.{}s", ms / 1000, frac.trim_end_matches('0'));
    }
    format!("{ms}ms")
}

pub(crate) fn fmt_num(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

pub(crate) fn fmt_pct(v: &f64) -> String {
    format!("{}%", fmt_num(*v))
}
