//! The broker's dispatcher (`statecull_broker::dispatch::Session`), as a hostile peer drives
//! it: a sequence of frame payloads on one connection, against a fake backend (and
//! protected prefixes configured), optionally after a valid Hello so the fuzzer spends its
//! time past the door.
//!
//! Invariants checked on every input:
//! * nothing reaches the backend before the connection said a valid Hello;
//! * every request that does not close the connection gets at least one answer, and every
//!   frame written is one well-formed response no larger than the frame limit, with an error
//!   message of at most `MAX_ERROR_MESSAGE` bytes;
//! * once `handle` says `Close`, the connection is over (the driver stops);
//! * nothing panics.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use statecull_broker::config::Config;
use statecull_broker::dispatch::{Broker, Flow, Output, Peer, Session};
use statecull_broker::fake::FakeBackend;
use statecull_proto::frame::{decode_response, encode_request};
use statecull_proto::text::MAX_ERROR_MESSAGE;
use statecull_proto::{Hello, MAX_FRAME_LEN, PROTOCOL_VERSION, Request, Response};

struct Frames(Vec<Vec<u8>>);

impl Output for Frames {
    fn send_frame(&mut self, frame: &[u8], _deadline: Instant) -> Result<(), String> {
        self.0.push(frame.to_vec());
        Ok(())
    }
}

fn broker() -> &'static (FakeBackend, Broker) {
    static BROKER: OnceLock<(FakeBackend, Broker)> = OnceLock::new();
    BROKER.get_or_init(|| {
        let fake = FakeBackend::new(3);
        let config = Config {
            protected: vec!["192.0.2.0/28".parse().expect("a prefix")],
            ..Config::default()
        };
        let broker = Broker::new(config, Box::new(fake.clone()));
        (fake, broker)
    })
}

fn hello_payload() -> Vec<u8> {
    let hello = Request::Hello(Hello { protocol_version: PROTOCOL_VERSION, client: "fuzz".into() });
    encode_request(&hello).expect("hello encodes")[4..].to_vec()
}

/// Split the input into payloads: each is a 2-byte big-endian length and that many bytes
/// (the last one takes what is left).
fn payloads(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 && out.len() < 16 {
        let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
        data = &data[2..];
        let take = len.min(data.len());
        out.push(&data[..take]);
        data = &data[take..];
    }
    if !data.is_empty() {
        out.push(data);
    }
    out
}

fn check_frames(frames: &Frames) -> Vec<Response> {
    frames
        .0
        .iter()
        .map(|f| {
            assert!(f.len() >= 4, "a frame without a header");
            let len = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
            assert_eq!(len, f.len() - 4, "the header does not say the payload's length");
            assert!(len <= MAX_FRAME_LEN as usize, "a frame over the limit");
            let r = decode_response(&f[4..]).expect("every frame is a response");
            if let Response::Error(e) = &r {
                assert!(
                    e.message.len() <= MAX_ERROR_MESSAGE,
                    "an error message of {} bytes",
                    e.message.len()
                );
            }
            r
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (fake, broker) = broker();
    fake.clear_calls();
    let peer = Peer { uid: u32::from(mode >> 1), gid: 0, pid: 1 };
    let mut session = Session::new(broker, peer);
    let hello = hello_payload();
    let mut inputs: Vec<&[u8]> = Vec::new();
    if mode & 1 == 1 {
        inputs.push(&hello);
    }
    inputs.extend(payloads(rest));
    for payload in inputs {
        let was_greeted = session.said_hello();
        let calls = fake.calls().len();
        let mut out = Frames(Vec::new());
        let flow = session.handle(payload, &mut out);
        let responses = check_frames(&out);
        if !was_greeted {
            assert_eq!(fake.calls().len(), calls, "the backend was used before Hello");
        }
        assert!(!responses.is_empty() || flow == Flow::Close, "a request got no answer");
        if flow == Flow::Close {
            break;
        }
    }
});
