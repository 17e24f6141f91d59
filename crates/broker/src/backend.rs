//! The backend interface: the only way the broker touches a state table.

use statecull_proto::{
    BackendInfo, CheckedHandle, CheckedIfName, CheckedSelector, CountReply, KillReport, Prefix,
    RulesetTicket, Unsupported,
};

use crate::error::BrokerError;

pub use statecull_proto::listing::Sink;

/// A state table the broker can list and kill in. Implementations get only checked values
/// (`Request::check` decided limits, meaning and the fields against
/// [`BackendInfo::capabilities`]); they still refuse what they cannot do exactly.
pub trait Backend: Send + Sync {
    fn info(&self) -> BackendInfo;
    /// Why something is not supported and what to use instead, for error messages.
    fn unsupported_hint(&self, _what: Unsupported) -> Option<String> {
        None
    }
    fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut Sink<'_>,
    ) -> Result<u64, BrokerError>;
    fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError>;
    fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError>;
    /// Kill these states; with `match_opposite` each one's twin too, paired as the
    /// backend's `kill_matching` pairs them (pf; conntrack entries have none).
    fn kill_handles(
        &self,
        handles: &[CheckedHandle],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError>;
    fn flush(
        &self,
        interface: Option<&CheckedIfName>,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError>;
    /// The active main filter ruleset's ticket (read-only). Backends without rulesets say
    /// so in their capabilities (`ruleset_ticket: false`), and `Request::check` refuses the
    /// verb before it gets here.
    fn ruleset_ticket(&self) -> Result<RulesetTicket, BrokerError>;
}

/// The answer to a Count from what a table counted and when the count started.
fn count_reply(c: statecull_proto::listing::Counts, started: std::time::Instant) -> CountReply {
    CountReply {
        per_selector: c.per_selector,
        matching_any: c.matching_any,
        table_entries: c.table_entries,
        elapsed_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
    }
}

/// A shared backend is a backend (tests keep one handle and give the broker another).
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn info(&self) -> BackendInfo {
        (**self).info()
    }
    fn unsupported_hint(&self, what: Unsupported) -> Option<String> {
        (**self).unsupported_hint(what)
    }
    fn snapshot(
        &self,
        selector: Option<&CheckedSelector>,
        batch: usize,
        sink: &mut Sink<'_>,
    ) -> Result<u64, BrokerError> {
        (**self).snapshot(selector, batch, sink)
    }
    fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError> {
        (**self).count(selectors)
    }
    fn kill_matching(
        &self,
        selectors: &[CheckedSelector],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        (**self).kill_matching(selectors, match_opposite, protected)
    }
    fn kill_handles(
        &self,
        handles: &[CheckedHandle],
        match_opposite: bool,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        (**self).kill_handles(handles, match_opposite, protected)
    }
    fn flush(
        &self,
        interface: Option<&CheckedIfName>,
        protected: &[Prefix],
    ) -> Result<KillReport, BrokerError> {
        (**self).flush(interface, protected)
    }
    fn ruleset_ticket(&self) -> Result<RulesetTicket, BrokerError> {
        (**self).ruleset_ticket()
    }
}

#[cfg(target_os = "linux")]
pub mod conntrack {
    //! Linux conntrack through `statecull-conntrack`.

    use std::time::Instant;

    use statecull_conntrack::{Conntrack, CtError, TupleFilter};
    use statecull_proto::{
        AddressFamily, BackendInfo, BackendKind, Capabilities, CheckedHandle, CheckedIfName,
        CheckedSelector, CountReply, KillReport, Prefix, RulesetTicket, Unsupported,
    };

    use super::{Backend, Sink};
    use crate::error::BrokerError;

    /// The conntrack table of the broker's network namespace.
    #[derive(Debug)]
    pub struct ConntrackBackend {
        table: Conntrack,
    }

    impl ConntrackBackend {
        fn families(&self, status: TupleFilter) -> Vec<AddressFamily> {
            [AddressFamily::Ipv4, AddressFamily::Ipv6]
                .into_iter()
                .filter(|f| self.table.tuple_filter(*f) == status)
                .collect()
        }

        pub fn open() -> Result<Self, BrokerError> {
            let table = Conntrack::open().map_err(|e| {
                BrokerError::Backend(format!(
                    "cannot use conntrack: {e} (the broker needs CAP_NET_ADMIN and a kernel with \
                     nf_conntrack and ctnetlink)"
                ))
            })?;
            Ok(Self { table })
        }
    }

    fn map(e: CtError) -> BrokerError {
        match e {
            CtError::Unsupported(m) => BrokerError::Unsupported(m),
            other => BrokerError::Backend(other.to_string()),
        }
    }

    impl Backend for ConntrackBackend {
        fn info(&self) -> BackendInfo {
            let f = self.table.features();
            BackendInfo {
                kind: BackendKind::Conntrack,
                kernel: self.table.kernel().to_owned(),
                capabilities: Capabilities {
                    selector_fields: statecull_conntrack::matcher::SUPPORTED_FIELDS.to_vec(),
                    kernel_mark_flush: f.mark,
                    kernel_tuple_flush: self.families(TupleFilter::Verified),
                    kernel_tuple_broken: self.families(TupleFilter::Unusable),
                    listing_only: Vec::new(),
                    match_opposite: false,
                    flush_by_interface: false,
                    ruleset_ticket: false,
                },
            }
        }

        fn unsupported_hint(&self, what: Unsupported) -> Option<String> {
            match what {
                Unsupported::Field(field) => statecull_conntrack::matcher::unsupported_hint(field)
                    .map(|hint| format!("the conntrack backend cannot match on {field}: {hint}")),
                Unsupported::FlushByInterface => Some(
                    "conntrack entries do not record interfaces, so a flush cannot be limited \
                     to one; flush without --interface, or kill by --mark or --nat-addr"
                        .into(),
                ),
                Unsupported::RulesetTicket => Some(
                    "a ruleset ticket is not supported on conntrack: it has no filter ruleset; \
                     confirm routing with confirm = \"rtnetlink\" instead"
                        .into(),
                ),
            }
        }

        fn snapshot(
            &self,
            selector: Option<&CheckedSelector>,
            batch: usize,
            sink: &mut Sink<'_>,
        ) -> Result<u64, BrokerError> {
            self.table.snapshot(selector, batch, sink).map_err(map)
        }

        fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError> {
            let started = Instant::now();
            let c = self.table.count(selectors).map_err(map)?;
            Ok(super::count_reply(c, started))
        }

        fn kill_matching(
            &self,
            selectors: &[CheckedSelector],
            // A conntrack entry covers both directions of a connection, so the "opposite"
            // state is the entry itself: nothing more to do.
            _match_opposite: bool,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            self.table.kill_matching(selectors, protected).map_err(map)
        }

        fn kill_handles(
            &self,
            handles: &[CheckedHandle],
            // As for kill_matching: a conntrack entry is both directions at once.
            _match_opposite: bool,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            self.table.kill_handles(handles, protected).map_err(map)
        }

        fn flush(
            &self,
            interface: Option<&CheckedIfName>,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            // `Request::check` refuses a flush by interface: the capabilities say none.
            debug_assert!(interface.is_none(), "a conntrack flush by interface was let through");
            if interface.is_some() {
                return Err(BrokerError::Unsupported(
                    "conntrack entries do not record interfaces".into(),
                ));
            }
            self.table.flush(protected).map_err(map)
        }

        fn ruleset_ticket(&self) -> Result<RulesetTicket, BrokerError> {
            Err(BrokerError::Unsupported(
                "a ruleset ticket is not supported on conntrack: it has no filter ruleset".into(),
            ))
        }
    }
}

pub mod pf {
    //! FreeBSD pf (and its model) through `statecull-pf`'s [`PfTable`].

    use std::time::Instant;

    use statecull_pf::client::{PfClient, PfError};
    use statecull_pf::device::PfDevice;
    use statecull_pf::table::PfTable;
    use statecull_proto::{
        AddressFamily, BackendInfo, BackendKind, Capabilities, CheckedHandle, CheckedIfName,
        CheckedSelector, CountReply, KillReport, Prefix, RulesetTicket, Unsupported,
    };

    use super::{Backend, Sink};
    use crate::error::BrokerError;

    /// A pf state table behind a [`PfDevice`].
    #[derive(Debug)]
    pub struct PfBackend<D: PfDevice> {
        table: PfTable<D>,
        kind: BackendKind,
        kernel: String,
    }

    fn map(e: PfError) -> BrokerError {
        match e {
            PfError::Unsupported(m) => BrokerError::Unsupported(m),
            other => BrokerError::Backend(other.to_string()),
        }
    }

    impl<D: PfDevice> PfBackend<D> {
        /// `writer` kills, `reader` lists and counts: two clients on two handles of the same
        /// kernel ([`PfClient::another`]). `rows` is the kernel's `net.pf.states_hashsize`.
        pub fn new(
            writer: PfClient<D>,
            reader: PfClient<D>,
            kind: BackendKind,
            kernel: String,
            rows: u64,
        ) -> Self {
            Self { table: PfTable::new(writer, reader, rows), kind, kernel }
        }

        /// Ruleset tickets on a third client of their own handle (opened before confinement),
        /// so the engine's polls never wait behind a listing or a kill.
        pub fn with_ticket_lane(mut self, ticket: PfClient<D>) -> Self {
            self.table = self.table.with_ticket_lane(ticket);
            self
        }

        /// The same with the read lane opened from `writer` (the model; tests).
        pub fn with_second_lane(
            writer: PfClient<D>,
            kind: BackendKind,
            kernel: String,
            rows: u64,
        ) -> Result<Self, BrokerError> {
            let reader = writer.another().map_err(map)?;
            let ticket = writer.another().map_err(map)?;
            Ok(Self::new(writer, reader, kind, kernel, rows).with_ticket_lane(ticket))
        }

        /// Look at the device (the model's cost counters, for benchmarks and tests).
        pub fn with_device<R>(&self, f: impl FnOnce(&D) -> R) -> R {
            self.table.with_device(f)
        }
    }

    impl<D: PfDevice> Backend for PfBackend<D> {
        fn info(&self) -> BackendInfo {
            BackendInfo {
                kind: self.kind,
                kernel: self.kernel.clone(),
                capabilities: Capabilities {
                    selector_fields: statecull_pf::plan::SUPPORTED_FIELDS.to_vec(),
                    kernel_mark_flush: false,
                    // pf's kill filter takes host addresses of either family directly...
                    kernel_tuple_flush: vec![AddressFamily::Ipv4, AddressFamily::Ipv6],
                    kernel_tuple_broken: Vec::new(),
                    // ...but not a NAT address (the wire key's firewall-side end, the
                    // filter's source or destination by direction; and 13/14's nvlist kill
                    // never reads `nat`): those always run as a listing and kills by id.
                    listing_only: statecull_pf::plan::LISTING_ONLY_FIELDS.to_vec(),
                    match_opposite: true,
                    flush_by_interface: true,
                    ruleset_ticket: self.table.has_ruleset_ticket(),
                },
            }
        }

        fn unsupported_hint(&self, what: Unsupported) -> Option<String> {
            if what == Unsupported::RulesetTicket {
                return Some(
                    "this pf kernel answered neither netlink GETRULES nor DIOCGETRULES at \
                     start-up, so the ruleset ticket cannot be read; confirm routing by signal \
                     or delay"
                        .into(),
                );
            }
            let Unsupported::Field(field) = what else { return None };
            statecull_pf::plan::unsupported_hint(field)
                .map(|h| format!("the pf backend cannot match on {field}: {h}"))
        }

        fn snapshot(
            &self,
            selector: Option<&CheckedSelector>,
            batch: usize,
            sink: &mut Sink<'_>,
        ) -> Result<u64, BrokerError> {
            self.table.snapshot(selector, batch, sink).map_err(map)
        }

        fn count(&self, selectors: &[CheckedSelector]) -> Result<CountReply, BrokerError> {
            let started = Instant::now();
            let c = self.table.count(selectors).map_err(map)?;
            Ok(super::count_reply(c, started))
        }

        fn kill_matching(
            &self,
            selectors: &[CheckedSelector],
            match_opposite: bool,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            self.table.kill_matching(selectors, match_opposite, protected).map_err(map)
        }

        fn kill_handles(
            &self,
            handles: &[CheckedHandle],
            match_opposite: bool,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            self.table.kill_handles(handles, match_opposite, protected).map_err(map)
        }

        fn flush(
            &self,
            interface: Option<&CheckedIfName>,
            protected: &[Prefix],
        ) -> Result<KillReport, BrokerError> {
            self.table.flush(interface.map(CheckedIfName::as_str), protected).map_err(map)
        }

        fn ruleset_ticket(&self) -> Result<RulesetTicket, BrokerError> {
            let (rules, ticket) = self.table.ruleset_ticket().map_err(map)?;
            Ok(RulesetTicket { ticket, rules })
        }
    }
}
