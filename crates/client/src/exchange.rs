//! Typed exchanges: one request and how to read its answer into a value, built without a
//! connection and run by either driver (`BrokerClient::run`, `AsyncBrokerClient::run`).
//!
//! This is what lets the engine hand work to its broker link as a plain closure
//! (`|c| c.kill_matching(selectors, false)`): the closure only *describes* the exchange,
//! given what the connection knows ([`Connected`]: the broker's Hello), and the link runs it
//! on whichever connection it holds, asynchronously, without a thread per call. A closure
//! may also answer without asking the broker at all (`|c| Ok(c.hello().clone())`), which
//! still needs a connection: that is how "wait until the broker is reachable" is spelt.

use statecull_proto::{
    CountReply, HelloReply, IfName, KillReport, Request, Response, RulesetTicket, Selector,
    SnapshotDone, StateHandle, StateRecord,
};

use crate::error::ClientError;

/// Reads the answers of one request: `Ok(None)` for "more to come" (snapshot batches),
/// `Ok(Some(value))` once the exchange is complete.
type Reader<T> = Box<dyn FnMut(Response) -> Result<Option<T>, ClientError> + Send>;

/// One request and how to turn its answer into a `T`, or a value known without asking.
pub struct Exchange<T> {
    kind: Kind<T>,
}

enum Kind<T> {
    /// Nothing to send: the value (or error) is already known.
    Known(Result<T, ClientError>),
    Ask {
        request: Request,
        read: Reader<T>,
    },
}

impl<T> std::fmt::Debug for Exchange<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Known(r) => f.debug_tuple("Exchange::Known").field(&r.is_ok()).finish(),
            Kind::Ask { request, .. } => {
                f.debug_struct("Exchange::Ask").field("verb", &request.verb()).finish()
            }
        }
    }
}

/// What a driver does with an exchange.
pub(crate) enum Parts<T> {
    Known(Result<T, ClientError>),
    Ask(Request, Reader<T>),
}

impl<T: 'static> Exchange<T> {
    /// A value known without asking the broker (the driver still needs its connection).
    pub fn known(value: Result<T, ClientError>) -> Self {
        Exchange { kind: Kind::Known(value) }
    }

    /// `request`, whose single answer `read` turns into the value.
    fn single(
        request: Request,
        mut read: impl FnMut(Response) -> Option<T> + Send + 'static,
    ) -> Self {
        let verb = request.verb();
        Exchange {
            kind: Kind::Ask {
                request,
                read: Box::new(move |r| match read(r) {
                    Some(v) => Ok(Some(v)),
                    None => Err(ClientError::Unexpected(format!("wrong answer to {verb}"))),
                }),
            },
        }
    }

    pub(crate) fn into_parts(self) -> Parts<T> {
        match self.kind {
            Kind::Known(r) => Parts::Known(r),
            Kind::Ask { request, read } => Parts::Ask(request, read),
        }
    }

    /// The request this exchange sends, if any.
    pub fn request(&self) -> Option<&Request> {
        match &self.kind {
            Kind::Known(_) => None,
            Kind::Ask { request, .. } => Some(request),
        }
    }
}

impl Exchange<CountReply> {
    /// How many states match each selector, and any.
    pub fn count(selectors: Vec<Selector>) -> Self {
        Exchange::single(Request::Count { selectors }, |r| match r {
            Response::Count(c) => Some(c),
            _ => None,
        })
    }
}

impl Exchange<KillReport> {
    pub fn kill_matching(selectors: Vec<Selector>, match_opposite: bool) -> Self {
        Self::killed(Request::KillMatching { selectors, match_opposite })
    }

    /// Kill these states; with `match_opposite` each one's twin too (pf).
    pub fn kill_handles(handles: Vec<StateHandle>, match_opposite: bool) -> Self {
        Self::killed(Request::KillHandles { handles, match_opposite })
    }

    pub fn flush(interface: Option<IfName>) -> Self {
        Self::killed(Request::Flush { interface })
    }

    fn killed(request: Request) -> Self {
        Exchange::single(request, |r| match r {
            Response::Killed(k) => Some(k),
            _ => None,
        })
    }
}

impl Exchange<RulesetTicket> {
    /// The active main filter ruleset's ticket (pf; refused on conntrack).
    pub fn ruleset_ticket() -> Self {
        Exchange::single(Request::RulesetTicket, |r| match r {
            Response::RulesetTicket(t) => Some(t),
            _ => None,
        })
    }
}

impl Exchange<(Vec<StateRecord>, SnapshotDone)> {
    /// Every record of a snapshot, collected, with the broker's summary.
    pub fn snapshot(selector: Option<Selector>) -> Self {
        let mut records = Vec::new();
        Exchange {
            kind: Kind::Ask {
                request: Request::Snapshot { selector },
                read: Box::new(move |r| match r {
                    Response::SnapshotBatch(batch) => {
                        records.extend(batch);
                        Ok(None)
                    }
                    Response::SnapshotDone(done) => Ok(Some((std::mem::take(&mut records), done))),
                    other => Err(ClientError::Unexpected(format!("{other:?} in a snapshot"))),
                }),
            },
        }
    }
}

/// What a closure handed to a driver sees of the connection: the broker's Hello, and
/// builders for the exchanges it can ask for.
#[derive(Clone, Copy, Debug)]
pub struct Connected<'a> {
    hello: &'a HelloReply,
}

impl<'a> Connected<'a> {
    pub fn new(hello: &'a HelloReply) -> Self {
        Connected { hello }
    }

    /// The broker's answer to this connection's Hello (backend, capabilities, limits).
    pub fn hello(&self) -> &'a HelloReply {
        self.hello
    }

    pub fn count(&self, selectors: Vec<Selector>) -> Exchange<CountReply> {
        Exchange::count(selectors)
    }

    pub fn kill_matching(
        &self,
        selectors: Vec<Selector>,
        match_opposite: bool,
    ) -> Exchange<KillReport> {
        Exchange::kill_matching(selectors, match_opposite)
    }

    pub fn kill_handles(
        &self,
        handles: Vec<StateHandle>,
        match_opposite: bool,
    ) -> Exchange<KillReport> {
        Exchange::kill_handles(handles, match_opposite)
    }

    pub fn flush(&self, interface: Option<IfName>) -> Exchange<KillReport> {
        Exchange::flush(interface)
    }

    pub fn ruleset_ticket(&self) -> Exchange<RulesetTicket> {
        Exchange::ruleset_ticket()
    }

    /// Every record matching `selector`, collected (see `Exchange::snapshot`).
    pub fn snapshot(
        &self,
        selector: Option<Selector>,
    ) -> Exchange<(Vec<StateRecord>, SnapshotDone)> {
        Exchange::snapshot(selector)
    }
}

/// What a closure given a [`Connected`] may return: an [`Exchange`], or a value computed
/// without asking the broker (`Ok(c.hello().clone())`).
pub trait IntoExchange {
    type Output: 'static;
    fn into_exchange(self) -> Exchange<Self::Output>;
}

impl<T: 'static> IntoExchange for Exchange<T> {
    type Output = T;
    fn into_exchange(self) -> Exchange<T> {
        self
    }
}

impl<T: 'static> IntoExchange for Result<T, ClientError> {
    type Output = T;
    fn into_exchange(self) -> Exchange<T> {
        Exchange::known(self)
    }
}
