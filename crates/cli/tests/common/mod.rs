//! What several CLI tests share: the Hello a fake broker answers with.

use statecull_proto::{
    BackendInfo, BackendKind, Capabilities, HelloReply, Limits, PROTOCOL_VERSION,
};

/// A conntrack broker's Hello with no optional capability.
pub(crate) fn hello_reply() -> HelloReply {
    HelloReply {
        protocol_version: PROTOCOL_VERSION,
        broker_version: "0.0.0".into(),
        backend: BackendInfo {
            kind: BackendKind::Conntrack,
            kernel: "6.1.0".into(),
            capabilities: Capabilities {
                selector_fields: vec![],
                kernel_mark_flush: true,
                kernel_tuple_flush: vec![],
                kernel_tuple_broken: vec![],
                listing_only: vec![],
                match_opposite: false,
                flush_by_interface: false,
                ruleset_ticket: false,
            },
        },
        limits: Limits::default(),
        protected: vec![],
    }
}
