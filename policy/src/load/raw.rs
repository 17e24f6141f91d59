//! The policy file's shape, as serde reads it: one struct per table, every key optional at
//! this stage (a missing required key gets a message that names the table and shows an
//! example, which serde's "missing field" cannot), unknown keys refused (a misspelt key is
//! an error, never silently ignored).
//!
//! Scalars that need checking are kept as `Spanned<Value>` (not as the final Rust type) so
//! that a wrong type gets a message that teaches the right one instead of serde's "expected
//! i64", and everything keeps its byte span so that every error can name the line. The
//! checks themselves live in the sibling modules; nothing here is validated.

use serde::Deserialize;
use toml::{Spanned, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) engine: Option<RawEngine>,
    pub(super) routing: Option<RawRouting>,
    #[serde(default)]
    pub(super) gateway: Vec<Spanned<RawGateway>>,
    #[serde(default)]
    pub(super) group: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    pub(super) protect: Vec<Spanned<RawProtect>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEngine {
    pub(super) broker_socket: Option<Spanned<String>>,
    pub(super) control_socket: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) readable_paths: Vec<Spanned<String>>,
    pub(super) states_refresh: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRouting {
    pub(super) confirm: Option<Spanned<String>>,
    pub(super) settle_timeout: Option<Spanned<Value>>,
    pub(super) sweep_delay: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    pub(super) name: Option<Spanned<String>>,
    pub(super) interface: Option<Spanned<String>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) family: Option<Spanned<String>>,
    pub(super) monitor: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) probe_source: Option<Spanned<String>>,
    pub(super) fib: Option<Spanned<Value>>,
    pub(super) health_source: Option<Spanned<String>>,
    pub(super) dpinger_socket: Option<Spanned<String>>,
    pub(super) probe_interval: Option<Spanned<Value>>,
    pub(super) probe_timeout: Option<Spanned<Value>>,
    pub(super) window: Option<Spanned<Value>>,
    pub(super) min_samples: Option<Spanned<Value>>,
    pub(super) loss_down: Option<Spanned<Value>>,
    pub(super) loss_degraded: Option<Spanned<Value>>,
    pub(super) loss_up: Option<Spanned<Value>>,
    pub(super) latency_degraded: Option<Spanned<Value>>,
    pub(super) latency_up: Option<Spanned<Value>>,
    pub(super) hold_down: Option<Spanned<Value>>,
    pub(super) damping: Option<Spanned<RawDamping>>,
    pub(super) states: Option<Spanned<RawStates>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDamping {
    pub(super) enabled: Option<Spanned<bool>>,
    pub(super) penalty: Option<Spanned<Value>>,
    pub(super) suppress_above: Option<Spanned<Value>>,
    pub(super) reuse_below: Option<Spanned<Value>>,
    pub(super) half_life: Option<Spanned<Value>>,
    pub(super) max_penalty: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStates {
    pub(super) rt_addr: Option<Spanned<String>>,
    pub(super) mark: Option<Spanned<Value>>,
    pub(super) nat_addr: Option<Spanned<RawNatAddr>>,
    pub(super) interface: Option<Spanned<String>>,
}

/// `nat_addr`: a list of addresses, or a word (`"interface"`). Read by a visitor, not an
/// untagged enum, so that each listed address keeps its span (toml's `Spanned` does not
/// survive serde's buffering of untagged enums).
#[derive(Debug)]
pub(super) enum RawNatAddr {
    List(Vec<Spanned<String>>),
    Word(String),
}

impl<'de> Deserialize<'de> for RawNatAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawNatAddr;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of addresses, or \"interface\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawNatAddr, E> {
                Ok(RawNatAddr::Word(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawNatAddr, A::Error> {
                let mut out = Vec::new();
                while let Some(a) = seq.next_element::<Spanned<String>>()? {
                    out.push(a);
                }
                Ok(RawNatAddr::List(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    pub(super) name: Option<Spanned<String>>,
    pub(super) members: Option<Spanned<Vec<Spanned<RawMember>>>>,
    pub(super) on_down: Option<Spanned<String>>,
    pub(super) on_recovery: Option<Spanned<String>>,
    pub(super) trigger: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMember {
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) tier: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProtect {
    pub(super) name: Option<Spanned<String>>,
    pub(super) proto: Option<Spanned<Value>>,
    pub(super) ports: Option<Spanned<Vec<Spanned<Value>>>>,
    pub(super) prefixes: Option<Spanned<Vec<Spanned<String>>>>,
}
