//! Both drivers against an in-process fake broker speaking the real frame protocol
//! (`common::FakeBroker`): the handshake, every verb, answers written a byte at a time and
//! several frames per write, a snapshot stream and one ended by an error, refusals that keep
//! the connection, a refused Hello, a silent broker (timeout), a broker that hangs up, and a
//! missing socket.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use std::time::{Duration, Instant};

use common::{FakeBroker, Mode, TempDir, hello_reply, record};
use statecull_client::{AsyncBrokerClient, BrokerClient, ClientError, Exchange};
use statecull_proto::{ErrorCode, Request, Response, Selector};

fn sel() -> Selector {
    Selector { mark: Some("1".parse().unwrap()), ..Default::default() }
}

// ---------------------------------------------------------------------------------------
// Blocking

#[test]
fn blocking_every_verb() {
    let broker = FakeBroker::start(Mode::Normal);
    let mut c = BrokerClient::connect(&broker.path, "blocking test").unwrap();
    assert_eq!(c.hello(), &hello_reply());
    assert_eq!(c.connected().hello(), &hello_reply());

    assert_eq!(c.count(vec![sel(), sel()]).unwrap().per_selector, vec![1, 1]);
    // Written a byte at a time by the fake broker.
    assert_eq!(c.kill_matching(vec![sel(), sel(), sel()], false).unwrap().killed, 3);
    assert_eq!(c.kill_handles(vec![record(1).handle], false).unwrap().killed, 1);
    assert_eq!(c.flush(None).unwrap().killed, 7);

    // Three batches and Done, in one write.
    let mut seen = Vec::new();
    let done = c
        .snapshot(None, &mut |batch| {
            seen.push(batch.len());
            Ok(())
        })
        .unwrap();
    assert_eq!(seen, vec![1000, 1000, 1000]);
    assert_eq!(done.records, 3000);
    let (all, done) = c.run(Exchange::snapshot(None)).unwrap();
    assert_eq!((all.len(), done.records), (3000, 3000));
    assert_eq!(all[2999], record(2999));

    // The raw form.
    match c.call(&Request::Count { selectors: vec![sel()] }).unwrap() {
        Response::Count(r) => assert_eq!(r.per_selector, vec![1]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        broker.log(),
        [
            "hello",
            "count",
            "kill-matching",
            "kill-handles",
            "flush",
            "snapshot",
            "snapshot",
            "count"
        ]
    );
}

#[test]
fn blocking_refusals_keep_the_connection() {
    let broker = FakeBroker::start(Mode::Normal);
    let mut c = BrokerClient::connect(&broker.path, "blocking test").unwrap();
    // A Count without selectors is refused by the fake (Busy).
    assert!(matches!(c.count(vec![]), Err(ClientError::Refused(e)) if e.code == ErrorCode::Busy));
    assert_eq!(c.count(vec![sel()]).unwrap().per_selector, vec![1]);
    // A snapshot with a selector: one batch, then an error ending the stream.
    let mut batches = 0;
    let r = c.snapshot(Some(sel()), &mut |_| {
        batches += 1;
        Ok(())
    });
    assert!(matches!(&r, Err(ClientError::Refused(e)) if e.code == ErrorCode::Backend), "{r:?}");
    assert_eq!(batches, 1);
    assert_eq!(c.flush(None).unwrap().killed, 7, "still usable after the stream's error");
}

#[test]
fn blocking_refused_hello_silent_broker_hang_up_and_no_socket() {
    let refusing = FakeBroker::start(Mode::RefuseHello);
    let r = BrokerClient::connect(&refusing.path, "t");
    assert!(matches!(&r, Err(ClientError::Refused(e)) if e.code == ErrorCode::Busy), "{r:?}");

    let silent = FakeBroker::start(Mode::Silent);
    let t0 = Instant::now();
    let r = BrokerClient::connect_with_timeout(&silent.path, "t", Some(Duration::from_millis(200)));
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    let hangs_up = FakeBroker::start(Mode::CloseAfterHello);
    let mut c = BrokerClient::connect(&hangs_up.path, "t").unwrap();
    let r = c.count(vec![sel()]);
    assert!(matches!(&r, Err(e @ ClientError::Io(_)) if e.connection_lost()), "{r:?}");

    let dir = TempDir::new("client").unwrap();
    let r = BrokerClient::connect(&dir.path().join("nothing.sock"), "t");
    assert!(
        matches!(&r, Err(ClientError::Connect { hint, .. }) if hint.contains("is statecull-broker running")),
        "{r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// tokio

#[tokio::test]
async fn tokio_every_verb() {
    let broker = FakeBroker::start(Mode::Normal);
    let mut c =
        AsyncBrokerClient::connect(&broker.path, "tokio test", Some(Duration::from_secs(10)))
            .await
            .unwrap();
    assert_eq!(c.hello(), &hello_reply());
    assert!(c.usable());

    assert_eq!(c.count(vec![sel(), sel()]).await.unwrap().per_selector, vec![1, 1]);
    assert_eq!(c.kill_matching(vec![sel(), sel(), sel()], false).await.unwrap().killed, 3);
    assert_eq!(c.kill_handles(vec![record(1).handle], false).await.unwrap().killed, 1);
    assert_eq!(c.flush(None).await.unwrap().killed, 7);
    let mut seen = Vec::new();
    let done = c
        .snapshot(None, &mut |batch| {
            seen.push(batch.len());
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!((seen, done.records), (vec![1000, 1000, 1000], 3000));

    // Exchanges built by a closure from what the connection knows, as the engine's link
    // builds them.
    let build = |c: &statecull_client::Connected<'_>| c.snapshot(None);
    let ex = build(&c.connected());
    let (all, _) = c.run(ex).await.unwrap();
    assert_eq!(all.len(), 3000);
    let caps = c.run(Exchange::known(Ok(c.hello().backend.capabilities.clone()))).await.unwrap();
    assert!(caps.match_opposite);
    assert_eq!(
        broker.log(),
        ["hello", "count", "kill-matching", "kill-handles", "flush", "snapshot", "snapshot"],
        "a known value sends nothing"
    );
    assert!(c.usable());
}

#[tokio::test]
async fn tokio_refusals_keep_the_connection() {
    let broker = FakeBroker::start(Mode::Normal);
    let mut c = AsyncBrokerClient::connect(&broker.path, "t", None).await.unwrap();
    assert!(
        matches!(c.count(vec![]).await, Err(ClientError::Refused(e)) if e.code == ErrorCode::Busy)
    );
    assert!(c.usable());
    let r = c.run(Exchange::snapshot(Some(sel()))).await;
    assert!(matches!(&r, Err(ClientError::Refused(e)) if e.code == ErrorCode::Backend), "{r:?}");
    assert_eq!(c.flush(None).await.unwrap().killed, 7);
}

#[tokio::test]
async fn tokio_refused_hello_silent_broker_hang_up_and_no_socket() {
    let refusing = FakeBroker::start(Mode::RefuseHello);
    let r = AsyncBrokerClient::connect(&refusing.path, "t", None).await;
    assert!(matches!(&r, Err(ClientError::Refused(e)) if e.code == ErrorCode::Busy), "{r:?}");

    let silent = FakeBroker::start(Mode::Silent);
    let t0 = Instant::now();
    let r = AsyncBrokerClient::connect(&silent.path, "t", Some(Duration::from_millis(200))).await;
    assert!(matches!(r, Err(ClientError::Timeout)), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(3));

    let hangs_up = FakeBroker::start(Mode::CloseAfterHello);
    let mut c = AsyncBrokerClient::connect(&hangs_up.path, "t", None).await.unwrap();
    let r = c.count(vec![sel()]).await;
    assert!(matches!(&r, Err(e @ ClientError::Io(_)) if e.connection_lost()), "{r:?}");

    let dir = TempDir::new("client").unwrap();
    let r = AsyncBrokerClient::connect(&dir.path().join("nothing.sock"), "t", None).await;
    assert!(
        matches!(&r, Err(ClientError::Connect { hint, .. }) if hint.contains("is statecull-broker running")),
        "{r:?}"
    );
}

/// A call abandoned half-way (its future dropped by a timeout) leaves the connection out of
/// step: the next request is refused instead of reading the old answer as its own.
#[tokio::test]
async fn tokio_an_abandoned_call_is_never_mistaken_for_the_next() {
    let broker = FakeBroker::start(Mode::Slow);
    let mut c = AsyncBrokerClient::connect(&broker.path, "t", None).await.unwrap();
    // The kill is sent, and its answer given up on.
    let r =
        tokio::time::timeout(Duration::from_millis(100), c.kill_matching(vec![sel()], false)).await;
    assert!(r.is_err(), "the fake answers after 500 ms");
    assert!(!c.usable());
    let r = c.count(vec![sel()]).await;
    assert!(matches!(&r, Err(e @ ClientError::OutOfStep(_)) if e.connection_lost()), "{r:?}");
    assert_eq!(broker.log(), ["hello", "kill-matching"], "nothing sent after the abandoned kill");
}
