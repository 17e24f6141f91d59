//! A gateway's health thresholds (sliding window, loss and latency thresholds, hold-down)
//! and its `[gateway.damping]` table, checked as a whole: each threshold in range, the
//! up/degraded/down thresholds in the order the hysteresis needs, and with ICMP a latency
//! threshold below the probe timeout (a slower answer is lost, so it would never fire).
//! When an ordering is broken the message blames a key the operator wrote, never a default.

use std::time::Duration;

use toml::Spanned;

use crate::PolicyError;
use crate::model::{FlapDamping, HealthParams};

use super::duration::{Bounds, HOUR, MINUTE, MS};
use super::raw::{RawDamping, RawGateway};
use super::values::Setting;
use super::words::{fmt_duration, fmt_num, fmt_pct};
use super::{Loader, MAX_WINDOW};

impl Loader<'_> {
    pub(super) fn health(
        &self,
        g: &RawGateway,
        at: &str,
        name: &str,
        is_icmp: bool,
        timeout: &Setting<Duration>,
    ) -> Result<HealthParams, PolicyError> {
        let f = |key: &str| format!("{at}.{key}");
        let default = HealthParams::default();
        let window =
            self.opt_count(g.window.as_ref(), &f("window"), default.window, 1, MAX_WINDOW)?;
        // A window smaller than the default minimum would never give a verdict.
        let min_samples = self.opt_count(
            g.min_samples.as_ref(),
            &f("min_samples"),
            default.min_samples.min(window),
            1,
            window,
        )?;
        let loss_down =
            self.setting_percent(g.loss_down.as_ref(), &f("loss_down"), default.loss_down_pct)?;
        let loss_degraded = self.setting_percent(
            g.loss_degraded.as_ref(),
            &f("loss_degraded"),
            default.loss_degraded_pct,
        )?;
        let loss_up =
            self.setting_percent(g.loss_up.as_ref(), &f("loss_up"), default.loss_up_pct)?;
        let why_loss = "a gateway is down at or above loss_down, degraded at or above \
                        loss_degraded, and up again at or below loss_up, so loss_up < \
                        loss_degraded <= loss_down";
        self.ordered(&loss_up, &loss_degraded, true, fmt_pct, why_loss)?;
        self.ordered(&loss_degraded, &loss_down, false, fmt_pct, why_loss)?;

        let latency = Bounds { min: MS, max: MINUTE };
        let lat_degraded = self.setting_duration(
            g.latency_degraded.as_ref(),
            &f("latency_degraded"),
            default.latency_degraded,
            latency,
        )?;
        let lat_up = self.setting_duration(
            g.latency_up.as_ref(),
            &f("latency_up"),
            default.latency_up,
            latency,
        )?;
        self.ordered(
            &lat_up,
            &lat_degraded,
            true,
            |d| fmt_duration(*d),
            "a gateway is degraded at or above latency_degraded and up again at or below \
             latency_up, so latency_up < latency_degraded",
        )?;
        if is_icmp && lat_degraded.value >= timeout.value {
            // An answer slower than the timeout is counted as lost, so such a latency is
            // never measured: the threshold would silently never fire.
            let (blame, field) = match (&lat_degraded.span, &timeout.span) {
                (Some(s), _) => (s.clone(), lat_degraded.field.as_str()),
                (None, Some(s)) => (s.clone(), timeout.field.as_str()),
                (None, None) => (0..0, at),
            };
            return Err(self.err(
                &blame,
                field,
                format!(
                    "gateway {name:?}: latency_degraded ({}{}) must be below probe_timeout \
                     ({}{}): a slower answer counts as lost, so that latency is never seen",
                    fmt_duration(lat_degraded.value),
                    lat_degraded.origin(),
                    fmt_duration(timeout.value),
                    timeout.origin(),
                ),
            ));
        }
        let hold_down = self.opt_duration(
            g.hold_down.as_ref(),
            &f("hold_down"),
            default.hold_down,
            Bounds { min: Duration::ZERO, max: HOUR },
        )?;
        let damping = self.damping(g.damping.as_ref(), at)?;
        Ok(HealthParams {
            window,
            min_samples,
            loss_down_pct: loss_down.value,
            loss_up_pct: loss_up.value,
            latency_degraded: lat_degraded.value,
            latency_up: lat_up.value,
            loss_degraded_pct: loss_degraded.value,
            hold_down,
            damping,
        })
    }

    fn damping(
        &self,
        raw: Option<&Spanned<RawDamping>>,
        at: &str,
    ) -> Result<FlapDamping, PolicyError> {
        let d = raw.map(Spanned::get_ref);
        let f = |key: &str| format!("{at}.damping.{key}");
        let default = FlapDamping::default();
        let enabled = d.and_then(|d| d.enabled.as_ref()).map_or(default.enabled, |e| *e.get_ref());
        let penalty = self.setting_number(
            d.and_then(|d| d.penalty.as_ref()),
            &f("penalty"),
            default.penalty,
        )?;
        let suppress = self.setting_number(
            d.and_then(|d| d.suppress_above.as_ref()),
            &f("suppress_above"),
            default.suppress_above,
        )?;
        let reuse = self.setting_number(
            d.and_then(|d| d.reuse_below.as_ref()),
            &f("reuse_below"),
            default.reuse_below,
        )?;
        let max = self.setting_number(
            d.and_then(|d| d.max_penalty.as_ref()),
            &f("max_penalty"),
            default.max_penalty,
        )?;
        for s in [&penalty, &suppress] {
            if s.value <= 0.0 {
                let span = s.span.clone().unwrap_or(0..0);
                return Err(self.err(&span, &s.field, "must be above 0"));
            }
        }
        if reuse.value <= 0.0 {
            let span = reuse.span.clone().unwrap_or(0..0);
            return Err(self.err(
                &span,
                &reuse.field,
                "must be above 0: a penalty never decays to 0, so a suppressed gateway would \
                 never be used again (an external up does not lift suppression)",
            ));
        }
        let why = "a gateway is suppressed once its penalty is above suppress_above and \
                   reused once it decays below reuse_below; the penalty never exceeds \
                   max_penalty, so reuse_below < suppress_above <= max_penalty";
        let fmt = |v: &f64| fmt_num(*v);
        self.ordered(&reuse, &suppress, true, fmt, why)?;
        self.ordered(&suppress, &max, false, fmt, why)?;
        let half_life = self.opt_duration(
            d.and_then(|d| d.half_life.as_ref()),
            &f("half_life"),
            default.half_life,
            Bounds { min: Duration::from_secs(1), max: HOUR },
        )?;
        Ok(FlapDamping {
            enabled,
            penalty: penalty.value,
            suppress_above: suppress.value,
            reuse_below: reuse.value,
            half_life,
            max_penalty: max.value,
        })
    }
}
