//! Durations: strings with a unit (`"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`), a whole
//! number of milliseconds, parsed with integers so that no float rounding changes what
//! was written; and the range each duration setting allows. A bare number is refused with
//! a hint, since `5` could mean seconds or milliseconds.

use std::time::Duration;

use toml::{Spanned, Value};

use crate::PolicyError;

use super::Loader;
use super::values::{Setting, article, short_key};
use super::words::fmt_duration;

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);

/// Allowed range of one duration field.
#[derive(Clone, Copy)]
pub(super) struct Bounds {
    pub(super) min: Duration,
    pub(super) max: Duration,
}

impl Loader<'_> {
    pub(super) fn opt_duration(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: Duration,
        bounds: Bounds,
    ) -> Result<Duration, PolicyError> {
        Ok(self.setting_duration(raw, field, default, bounds)?.value)
    }

    pub(super) fn setting_duration(
        &self,
        raw: Option<&Spanned<Value>>,
        field: &str,
        default: Duration,
        bounds: Bounds,
    ) -> Result<Setting<Duration>, PolicyError> {
        let field = field.to_owned();
        let Some(raw) = raw else { return Ok(Setting { value: default, span: None, field }) };
        let expected = "expected a duration like \"500ms\", \"2s\", \"1.5s\" or \"1m\"";
        let value = match raw.get_ref() {
            Value::String(s) => parse_duration(s).map_err(|why| {
                self.err(&raw.span(), &field, format!("{s:?} is not a duration: {why}; {expected}"))
            })?,
            Value::Integer(n) => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!(
                        "a bare number has no unit; write a quoted duration such as \"{n}s\" or \
                         \"{n}ms\""
                    ),
                ));
            }
            other => {
                return Err(self.err(
                    &raw.span(),
                    &field,
                    format!("found {} {other}; {expected}", article(other.type_str())),
                ));
            }
        };
        if value < bounds.min || value > bounds.max {
            let range = if bounds.min.is_zero() {
                format!("at most {}", fmt_duration(bounds.max))
            } else {
                format!("between {} and {}", fmt_duration(bounds.min), fmt_duration(bounds.max))
            };
            return Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "{} is out of range; {} must be {range}",
                    fmt_duration(value),
                    short_key(&field)
                ),
            ));
        }
        Ok(Setting { value, span: Some(raw.span()), field })
    }
}

/// `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"` to a duration: a whole number of
/// milliseconds, computed with integers (no float rounding).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    let unit_at = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(unit_at);
    let unit_ms: u64 = match unit.trim_start() {
        "ms" => 1,
        "s" => 1000,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        "" => return Err("it has no unit (ms, s, m or h)".into()),
        other => return Err(format!("unknown unit {other:?} (use ms, s, m or h)")),
    };
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) || (number.contains('.') && frac.is_empty())
    {
        return Err(format!("{number:?} is not a number"));
    }
    if number.len() > 12 {
        return Err("the number is too large".into());
    }
    let parse = |s: &str| if s.is_empty() { Some(0) } else { s.parse::<u64>().ok() };
    let scale = u32::try_from(frac.len()).ok().and_then(|n| 10u64.checked_pow(n));
    let scaled_ms = parse(int).zip(parse(frac)).zip(scale).and_then(|((i, f), scale)| {
        i.checked_mul(scale)?.checked_add(f)?.checked_mul(unit_ms).map(|n| (n, scale))
    });
    let Some((scaled_ms, scale)) = scaled_ms else {
        return Err("the number is too large".into());
    };
    if !scaled_ms.is_multiple_of(scale) {
        return Err("it is not a whole number of milliseconds".into());
    }
    Ok(Duration::from_millis(scaled_ms / scale))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_duration;
    use crate::load::words::fmt_duration;

    /// Messages and the explanation write durations with `fmt_duration`; an operator who
    /// copies one into the policy must get the same duration back.
    #[test]
    fn written_durations_read_back() {
        for ms in [0, 1, 10, 250, 999, 1000, 1001, 1500, 1250, 59_999, 60_000, 90_000, 3_600_000] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&fmt_duration(d)), Ok(d), "{ms} ms as {}", fmt_duration(d));
        }
    }
}
