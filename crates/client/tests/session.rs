//! The sans-IO session, byte by byte: frames split anywhere, several frames in one read, an
//! impossible length refused before its payload, a snapshot stream, refusals that end a
//! request (the connection stays usable) and answers that break the conversation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use common::{count, frame, hello_reply, record, records, refusal, report};
use statecull_client::{ClientError, Session};
use statecull_proto::frame::decode_request;
use statecull_proto::{
    ErrorCode, HEADER_LEN, MAX_CLIENT_NAME_LEN, MAX_FRAME_LEN, PROTOCOL_VERSION, ProtoError,
    Request, Response, Selector, SnapshotDone, Verb,
};

/// The request a frame carries.
fn request_of(frame: &[u8]) -> Request {
    let len = u32::from_be_bytes(frame[..HEADER_LEN].try_into().unwrap()) as usize;
    assert_eq!(frame.len(), HEADER_LEN + len, "one whole frame");
    decode_request(&frame[HEADER_LEN..]).unwrap()
}

/// A session that has said Hello and read the answer.
fn greeted() -> Session {
    let mut s = Session::new();
    s.hello("test").unwrap();
    s.receive(&frame(&Response::Hello(hello_reply())));
    assert!(matches!(s.next_response().unwrap(), Some(Response::Hello(_))));
    s
}

fn sel() -> Selector {
    Selector { mark: Some("1".parse().unwrap()), ..Default::default() }
}

#[test]
fn hello_names_the_client_clipped_and_is_answered() {
    let mut s = Session::new();
    assert!(s.is_idle() && s.hello_reply().is_none());
    let long = "x".repeat(MAX_CLIENT_NAME_LEN + 10);
    let Request::Hello(h) = request_of(&s.hello(&long).unwrap()) else { panic!("not a Hello") };
    assert_eq!(h.protocol_version, PROTOCOL_VERSION);
    assert_eq!(h.client.chars().count(), MAX_CLIENT_NAME_LEN);
    assert!(!s.is_idle(), "the answer is due");
    assert!(s.next_response().unwrap().is_none(), "nothing received yet");
    s.receive(&frame(&Response::Hello(hello_reply())));
    assert_eq!(s.next_response().unwrap(), Some(Response::Hello(hello_reply())));
    assert_eq!(s.hello_reply(), Some(&hello_reply()));
    assert!(s.is_idle() && !s.is_broken());
}

#[test]
fn a_frame_split_at_every_byte_is_reassembled() {
    let answer = Response::Count(count(vec![3, 4]));
    let bytes = frame(&answer);
    for cut in 0..=bytes.len() {
        let mut s = greeted();
        s.request(&Request::Count { selectors: vec![sel(), sel()] }).unwrap();
        s.receive(&bytes[..cut]);
        if cut < bytes.len() {
            assert_eq!(s.next_response().unwrap(), None, "cut at {cut}: incomplete");
            assert!(!s.is_idle());
            s.receive(&bytes[cut..]);
        }
        assert_eq!(s.next_response().unwrap(), Some(answer.clone()), "cut at {cut}");
        assert!(s.is_idle(), "cut at {cut}");
        assert_eq!(s.next_response().unwrap(), None, "nothing more");
    }
}

#[test]
fn one_byte_at_a_time() {
    let mut s = greeted();
    s.request(&Request::Flush { interface: None }).unwrap();
    let bytes = frame(&Response::Killed(report(9)));
    let mut got = None;
    for (i, b) in bytes.iter().enumerate() {
        s.receive(&[*b]);
        got = s.next_response().unwrap();
        assert_eq!(got.is_some(), i + 1 == bytes.len(), "byte {i}");
    }
    assert_eq!(got, Some(Response::Killed(report(9))));
}

#[test]
fn two_frames_in_one_read_then_the_rest_of_a_third() {
    let mut s = greeted();
    s.request(&Request::Snapshot { selector: None }).unwrap();
    let mut bytes = frame(&Response::SnapshotBatch(records(0, 2)));
    bytes.extend(frame(&Response::SnapshotBatch(records(2, 2))));
    let done = frame(&Response::SnapshotDone(SnapshotDone { records: 4, elapsed_us: 5 }));
    bytes.extend(&done[..3]);
    s.receive(&bytes);
    assert_eq!(s.next_response().unwrap(), Some(Response::SnapshotBatch(records(0, 2))));
    assert_eq!(s.next_response().unwrap(), Some(Response::SnapshotBatch(records(2, 2))));
    assert_eq!(s.next_response().unwrap(), None, "the third frame is not complete");
    s.receive(&done[3..]);
    assert_eq!(
        s.next_response().unwrap(),
        Some(Response::SnapshotDone(SnapshotDone { records: 4, elapsed_us: 5 }))
    );
    assert!(s.is_idle());
}

#[test]
fn an_impossible_length_is_refused_before_its_payload() {
    for (header, want) in [
        ((MAX_FRAME_LEN + 1).to_be_bytes(), "exceeds"),
        (u32::MAX.to_be_bytes(), "exceeds"),
        (0u32.to_be_bytes(), "zero"),
    ] {
        let mut s = greeted();
        s.request(&Request::Count { selectors: vec![sel()] }).unwrap();
        // The header alone is enough to refuse: no payload is waited for, or buffered.
        s.receive(&header[..2]);
        assert_eq!(s.next_response().unwrap(), None);
        s.receive(&header[2..]);
        let e = s.next_response().unwrap_err();
        assert!(
            matches!(
                &e,
                ClientError::Protocol(ProtoError::FrameTooLarge { .. } | ProtoError::EmptyFrame)
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains(want), "{e}");
        assert!(s.is_broken());
        let e = s.request(&Request::Count { selectors: vec![sel()] }).unwrap_err();
        assert!(matches!(e, ClientError::OutOfStep(_)), "{e:?}");
    }
}

#[test]
fn a_snapshot_streams_batches_then_done() {
    let mut s = greeted();
    let f = s.request(&Request::Snapshot { selector: Some(sel()) }).unwrap();
    assert_eq!(request_of(&f).verb(), Verb::Snapshot);
    for b in 0..3u16 {
        s.receive(&frame(&Response::SnapshotBatch(records(b * 10, 10))));
        assert_eq!(s.next_response().unwrap(), Some(Response::SnapshotBatch(records(b * 10, 10))));
        assert!(!s.is_idle(), "batch {b}: the stream goes on");
    }
    s.receive(&frame(&Response::SnapshotDone(SnapshotDone { records: 0, elapsed_us: 1 })));
    assert!(matches!(s.next_response().unwrap(), Some(Response::SnapshotDone(_))));
    assert!(s.is_idle());
    // The connection carries the next request.
    s.request(&Request::Count { selectors: vec![sel()] }).unwrap();
    s.receive(&frame(&Response::Count(count(vec![1]))));
    assert!(matches!(s.next_response().unwrap(), Some(Response::Count(_))));
}

#[test]
fn no_request_in_the_middle_of_a_stream() {
    let mut s = greeted();
    s.request(&Request::Snapshot { selector: None }).unwrap();
    s.receive(&frame(&Response::SnapshotBatch(records(0, 1))));
    assert!(s.next_response().unwrap().is_some());
    let e = s.request(&Request::Count { selectors: vec![sel()] });
    assert!(matches!(e, Err(ClientError::OutOfStep(_))), "{e:?}");
    assert!(s.is_broken());
}

#[test]
fn an_error_ends_a_stream_and_leaves_the_connection_usable() {
    let mut s = greeted();
    s.request(&Request::Snapshot { selector: None }).unwrap();
    let mut bytes = frame(&Response::SnapshotBatch(vec![record(1)]));
    bytes.extend(frame(&Response::Error(refusal(ErrorCode::Backend))));
    s.receive(&bytes);
    assert!(matches!(s.next_response().unwrap(), Some(Response::SnapshotBatch(_))));
    match s.next_response() {
        Err(ClientError::Refused(e)) => assert_eq!(e.code, ErrorCode::Backend),
        other => panic!("{other:?}"),
    }
    assert!(s.is_idle() && !s.is_broken(), "a refusal is not a broken connection");
    s.request(&Request::KillHandles { handles: vec![record(1).handle], match_opposite: false })
        .unwrap();
    s.receive(&frame(&Response::Killed(report(1))));
    assert!(matches!(s.next_response().unwrap(), Some(Response::Killed(_))));
}

#[test]
fn a_refused_request_is_an_error_and_the_session_goes_on() {
    let mut s = greeted();
    s.request(&Request::KillMatching { selectors: vec![sel()], match_opposite: false }).unwrap();
    s.receive(&frame(&Response::Error(refusal(ErrorCode::ShuttingDown))));
    assert!(
        matches!(s.next_response(), Err(ClientError::Refused(e)) if e.code == ErrorCode::ShuttingDown)
    );
    assert!(s.is_idle() && !s.is_broken());
}

#[test]
fn a_refused_hello_breaks_the_conversation() {
    let mut s = Session::new();
    s.hello("test").unwrap();
    s.receive(&frame(&Response::Error(refusal(ErrorCode::PermissionDenied))));
    assert!(
        matches!(s.next_response(), Err(ClientError::Refused(e)) if e.code == ErrorCode::PermissionDenied)
    );
    assert!(s.is_broken());
    assert!(matches!(
        s.request(&Request::Count { selectors: vec![sel()] }),
        Err(ClientError::OutOfStep(_))
    ));
}

#[test]
fn answers_that_do_not_fit_break_the_conversation() {
    let cases: Vec<(Option<Request>, Response, &str)> = vec![
        (None, Response::Count(count(vec![1])), "to Hello"),
        (Some(Request::Count { selectors: vec![sel()] }), Response::Killed(report(1)), "to Count"),
        (Some(Request::Flush { interface: None }), Response::Count(count(vec![1])), "to flush"),
        (
            Some(Request::KillMatching { selectors: vec![sel()], match_opposite: false }),
            Response::SnapshotBatch(vec![]),
            "to kill-matching",
        ),
        (Some(Request::Snapshot { selector: None }), Response::Killed(report(1)), "in a snapshot"),
        (
            Some(Request::Count { selectors: vec![sel()] }),
            Response::Hello(hello_reply()),
            "to Count",
        ),
    ];
    for (req, answer, want) in cases {
        let mut s = Session::new();
        s.hello("test").unwrap();
        if let Some(req) = &req {
            s.receive(&frame(&Response::Hello(hello_reply())));
            s.next_response().unwrap();
            s.request(req).unwrap();
        }
        s.receive(&frame(&answer));
        match s.next_response() {
            Err(ClientError::Unexpected(m)) => assert!(m.contains(want), "{m} (wanted {want})"),
            other => panic!("{req:?} answered by {answer:?}: {other:?}"),
        }
        assert!(s.is_broken());
    }
    // An answer nobody asked for.
    let mut s = greeted();
    s.receive(&frame(&Response::Count(count(vec![1]))));
    assert!(
        matches!(s.next_response(), Err(ClientError::Unexpected(m)) if m.contains("no request"))
    );
}

#[test]
fn undecodable_payloads_break_the_conversation() {
    // An unknown variant, and a valid answer followed by a byte inside its frame.
    let mut trailing = frame(&Response::Count(count(vec![1])));
    trailing.push(0);
    let len = u32::try_from(trailing.len() - HEADER_LEN).unwrap();
    trailing[..HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    for bytes in [vec![0, 0, 0, 2, 200, 1], trailing] {
        let mut s = greeted();
        s.request(&Request::Count { selectors: vec![sel()] }).unwrap();
        s.receive(&bytes);
        assert!(matches!(s.next_response(), Err(ClientError::Protocol(_))), "{bytes:?}");
        assert!(s.is_broken());
    }
}

#[test]
fn requests_out_of_order_are_refused_without_bytes() {
    let mut s = Session::new();
    assert!(matches!(
        s.request(&Request::Count { selectors: vec![sel()] }),
        Err(ClientError::OutOfStep(m)) if m.contains("before")
    ));
    let mut s = Session::new();
    s.hello("a").unwrap();
    assert!(matches!(s.hello("b"), Err(ClientError::OutOfStep(_))));

    let mut s = greeted();
    let hello = Request::Hello(statecull_proto::Hello {
        protocol_version: PROTOCOL_VERSION,
        client: "again".into(),
    });
    assert!(matches!(s.request(&hello), Err(ClientError::OutOfStep(_))));

    let mut s = greeted();
    s.request(&Request::Count { selectors: vec![sel()] }).unwrap();
    assert!(matches!(
        s.request(&Request::Count { selectors: vec![sel()] }),
        Err(ClientError::OutOfStep(m)) if m.contains("unanswered")
    ));
}

#[test]
fn what_breaks_a_connection_and_what_does_not() {
    assert!(!ClientError::Refused(refusal(ErrorCode::Busy)).connection_lost());
    assert!(ClientError::Timeout.connection_lost());
    assert!(ClientError::OutOfStep("x".into()).connection_lost());
    assert!(ClientError::Unexpected("x".into()).connection_lost());
    assert!(ClientError::Protocol(ProtoError::EmptyFrame).connection_lost());
}
