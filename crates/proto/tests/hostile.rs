//! Hostile input: arbitrary bytes, forged lengths, unknown variants, trailing garbage and
//! arbitrary chunking of the stream. Nothing may panic or abort. (That nothing allocates
//! without bound is checked in `alloc_bound.rs`, which needs a binary of its own.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{request, response};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use statecull_proto::frame::{
    FrameAssembler, decode_request, decode_response, encode_request, encode_response, payload_len,
};
use statecull_proto::{ErrorCode, HEADER_LEN, MAX_FRAME_LEN, ProtoError, Request, Response};

const FRAME: usize = MAX_FRAME_LEN as usize;

// ---------------------------------------------------------------------------------------------
// Helpers.

/// Decode `bytes` both ways; whatever decodes must re-encode to something that decodes to the
/// same value and is no longer than the input (the encoder is canonical, so at most as long).
fn decode_both_and_recheck(bytes: &[u8]) {
    if let Ok(req) = decode_request(bytes) {
        let frame = encode_request(&req).expect("a decoded request re-encodes");
        assert!(frame.len() - HEADER_LEN <= bytes.len());
        assert_eq!(decode_request(&frame[HEADER_LEN..]).unwrap(), req);
        let _ =
            req.check(&statecull_proto::Limits::PROTOCOL, &statecull_proto::Capabilities::any());
    }
    if let Ok(resp) = decode_response(bytes) {
        let frame = encode_response(&resp).expect("a decoded response re-encodes");
        assert!(frame.len() - HEADER_LEN <= bytes.len());
        assert_eq!(decode_response(&frame[HEADER_LEN..]).unwrap(), resp);
    }
}

/// xorshift64*: deterministic, dependency-free randomness for the bulk loops.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Valid payloads of both kinds from the shared strategies.
fn sample_payloads(n: usize) -> Vec<Vec<u8>> {
    let mut runner = TestRunner::deterministic();
    let (req_s, resp_s) = (request(), response());
    let mut out = Vec::new();
    for _ in 0..n {
        let req = req_s.new_tree(&mut runner).unwrap().current();
        out.push(encode_request(&req).unwrap()[HEADER_LEN..].to_vec());
        let resp = resp_s.new_tree(&mut runner).unwrap().current();
        out.push(encode_response(&resp).unwrap()[HEADER_LEN..].to_vec());
    }
    out
}

fn assert_malformed(r: Result<impl std::fmt::Debug, ProtoError>, needle: &str) {
    match r {
        Err(e @ ProtoError::Malformed(_)) => {
            assert_eq!(e.code(), ErrorCode::Malformed);
            assert!(e.to_string().contains(needle), "{e:?} does not mention {needle:?}");
        }
        other => panic!("expected Malformed mentioning {needle:?}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary bytes.

proptest! {
    #![proptest_config(Config::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..256)) {
        decode_both_and_recheck(&bytes);
    }

    /// Arbitrary bytes behind a plausible variant tag, to get past the first byte more often.
    #[test]
    fn arbitrary_bodies_never_panic(tag in 0u8..8, body in vec(any::<u8>(), 0..256)) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        decode_both_and_recheck(&bytes);
    }
}

#[test]
fn thousands_of_random_inputs_never_panic() {
    let mut rng = Rng(0x5ca1_ab1e_d15e_a5e5);
    for _ in 0..5000 {
        let len = rng.below(96);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if let Some(first) = bytes.first_mut() {
            *first %= 8;
        }
        decode_both_and_recheck(&bytes);
    }
}

/// Mutations of valid messages reach far deeper than random bytes: flipped bits, varint
/// markers (251..=254) and 0xff in random places, truncations, insertions and deletions.
#[test]
fn thousands_of_mutated_messages_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    let mut decoded_ok = 0usize;
    let mut cases = 0usize;
    for payload in sample_payloads(150) {
        for _ in 0..12 {
            let mut m = payload.clone();
            let pos = rng.below(m.len());
            match rng.below(6) {
                0 => m[pos] ^= 1 << rng.below(8),
                1 => m[pos] = [0xff, 251, 252, 253, 254, 0][rng.below(6)],
                2 => m[pos] = rng.byte(),
                3 => m.truncate(pos),
                4 => m.insert(pos, rng.byte()),
                _ => {
                    m.remove(pos);
                }
            }
            let ok_before = decode_request(&m).is_ok() || decode_response(&m).is_ok();
            decoded_ok += usize::from(ok_before);
            decode_both_and_recheck(&m);
            cases += 1;
        }
    }
    eprintln!("{cases} mutated messages, {decoded_ok} still decoded");
    assert!(cases >= 3000);
}

// ---------------------------------------------------------------------------------------------
// Structure of valid messages.

proptest! {
    #![proptest_config(Config::with_cases(256))]

    /// The encoding is prefix-free: no strict prefix of a message is a message, and one extra
    /// byte is reported as exactly one trailing byte.
    #[test]
    fn truncated_or_extended_requests_are_refused(req in request(), extra in any::<u8>()) {
        let frame = encode_request(&req)?;
        let payload = &frame[HEADER_LEN..];
        for cut in 0..payload.len() {
            let r = decode_request(&payload[..cut]);
            prop_assert!(matches!(r, Err(ProtoError::Malformed(_))), "prefix {cut}: {r:?}");
        }
        let mut longer = payload.to_vec();
        longer.push(extra);
        prop_assert_eq!(
            decode_request(&longer),
            Err(ProtoError::TrailingBytes { consumed: payload.len(), trailing: 1 })
        );
    }

    #[test]
    fn truncated_or_extended_responses_are_refused(resp in response(), extra in vec(any::<u8>(), 1..9)) {
        let frame = encode_response(&resp)?;
        let payload = &frame[HEADER_LEN..];
        for cut in 0..payload.len() {
            let r = decode_response(&payload[..cut]);
            prop_assert!(matches!(r, Err(ProtoError::Malformed(_))), "prefix {cut}: {r:?}");
        }
        let mut longer = payload.to_vec();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(
            decode_response(&longer),
            Err(ProtoError::TrailingBytes { consumed: payload.len(), trailing: extra.len() })
        );
    }
}

// ---------------------------------------------------------------------------------------------
// FrameAssembler.

/// Feed `stream` to an assembler in pieces of the given sizes (cycled) and collect payloads.
fn assemble(
    stream: &[u8],
    sizes: &[usize],
) -> Result<(Vec<Vec<u8>>, FrameAssembler), TestCaseError> {
    let mut asm = FrameAssembler::new();
    let mut frames = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let end = pos.saturating_add(sizes[i % sizes.len()]).min(stream.len());
        i += 1;
        let mut chunk = &stream[pos..end];
        while !chunk.is_empty() {
            let wanted = asm.wanted()?;
            let taken = asm.push(chunk)?;
            prop_assert!(taken <= chunk.len());
            prop_assert_eq!(taken, wanted.min(chunk.len()), "push takes what the frame needs");
            chunk = &chunk[taken..];
            let before = frames.len();
            while let Some(p) = asm.next_frame()? {
                frames.push(p);
            }
            prop_assert!(taken > 0 || frames.len() > before, "no progress");
        }
        pos = end;
    }
    Ok((frames, asm))
}

fn chunk_size() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 1usize..=8, 3 => 1usize..=300, 1 => Just(usize::MAX)]
}

proptest! {
    #![proptest_config(Config::with_cases(256))]

    #[test]
    fn assembler_yields_exactly_the_payloads(
        reqs in vec(request(), 0..5),
        resps in vec(response(), 0..5),
        sizes in vec(chunk_size(), 1..40),
    ) {
        let mut frames: Vec<Vec<u8>> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            frames.push(encode_request(r)?);
            if let Some(resp) = resps.get(i) {
                frames.push(encode_response(resp)?);
            }
        }
        for resp in resps.iter().skip(reqs.len()) {
            frames.push(encode_response(resp)?);
        }
        let stream: Vec<u8> = frames.concat();
        let (got, asm) = assemble(&stream, &sizes)?;
        let expected: Vec<Vec<u8>> = frames.iter().map(|f| f[HEADER_LEN..].to_vec()).collect();
        prop_assert_eq!(&got, &expected);
        prop_assert!(asm.is_idle());
        prop_assert_eq!(asm.wanted()?, HEADER_LEN);
    }
}

#[test]
fn assembler_byte_by_byte() {
    let req = Request::Snapshot { selector: None };
    let frame = encode_request(&req).unwrap();
    let mut asm = FrameAssembler::new();
    assert!(asm.is_idle());
    for (i, b) in frame.iter().enumerate() {
        assert_eq!(asm.next_frame().unwrap(), None);
        let wanted = asm.wanted().unwrap();
        let expected = if i < HEADER_LEN { HEADER_LEN - i } else { frame.len() - i };
        assert_eq!(wanted, expected, "after {i} bytes");
        assert_eq!(asm.push(std::slice::from_ref(b)).unwrap(), 1);
        assert!(!asm.is_idle());
    }
    assert_eq!(asm.wanted().unwrap(), 0);
    assert_eq!(asm.push(&[1, 2, 3]).unwrap(), 0, "a complete frame takes no more bytes");
    assert_eq!(decode_request(&asm.next_frame().unwrap().unwrap()).unwrap(), req);
    assert!(asm.is_idle());
    assert_eq!(asm.next_frame().unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Headers.

#[test]
fn oversized_header_is_refused_by_payload_len() {
    let max = u32::try_from(FRAME).unwrap();
    assert_eq!(payload_len(max.to_be_bytes()), Ok(FRAME));
    assert_eq!(payload_len(1u32.to_be_bytes()), Ok(1));
    for len in [max + 1, max * 2, u32::MAX] {
        let e = payload_len(len.to_be_bytes()).unwrap_err();
        assert_eq!(e, ProtoError::FrameTooLarge { len: usize::try_from(len).unwrap(), max: FRAME });
        assert_eq!(e.code(), ErrorCode::Malformed);
    }
}

#[test]
fn oversized_header_is_refused_by_push_before_any_payload() {
    let header = (MAX_FRAME_LEN + 1).to_be_bytes();
    let too_large = ProtoError::FrameTooLarge { len: FRAME + 1, max: FRAME };

    // The four header bytes alone are enough to refuse.
    let mut asm = FrameAssembler::new();
    assert_eq!(asm.push(&header), Err(too_large.clone()));
    assert_eq!(asm.wanted(), Err(too_large.clone()));
    assert_eq!(asm.next_frame(), Err(too_large.clone()));
    // And the assembler stays refused: it never starts buffering the payload.
    assert_eq!(asm.push(&[0; 64]), Err(too_large.clone()));

    // Header split across pushes: refused by the push that completes it.
    let mut asm = FrameAssembler::new();
    assert_eq!(asm.push(&header[..3]), Ok(3));
    assert_eq!(asm.push(&header[3..]), Err(too_large.clone()));

    // Header followed by payload bytes in the same push: refused (that the payload is not
    // buffered is measured in `alloc_bound.rs`).
    let mut stream = header.to_vec();
    stream.extend_from_slice(&[0xaa; 4096]);
    let mut asm = FrameAssembler::new();
    assert_eq!(asm.push(&stream), Err(too_large));

    // u32::MAX as well.
    let mut asm = FrameAssembler::new();
    assert!(matches!(asm.push(&[0xff; 4]), Err(ProtoError::FrameTooLarge { .. })));
}

#[test]
fn largest_allowed_header_is_accepted_by_push() {
    let mut asm = FrameAssembler::new();
    assert_eq!(asm.push(&MAX_FRAME_LEN.to_be_bytes()), Ok(HEADER_LEN));
    assert_eq!(asm.wanted(), Ok(FRAME));
    assert_eq!(asm.next_frame(), Ok(None));
}

#[test]
fn zero_length_header_is_refused() {
    assert_eq!(payload_len([0; 4]), Err(ProtoError::EmptyFrame));
    assert_eq!(ProtoError::EmptyFrame.code(), ErrorCode::Malformed);
    let mut asm = FrameAssembler::new();
    assert_eq!(asm.push(&[0, 0]), Ok(2));
    assert_eq!(asm.push(&[0, 0, 1, 2]), Err(ProtoError::EmptyFrame));
    assert_eq!(asm.next_frame(), Err(ProtoError::EmptyFrame));
}

// ---------------------------------------------------------------------------------------------
// Payloads.

#[test]
fn trailing_bytes_are_refused() {
    let mut payload =
        encode_request(&Request::Flush { interface: None }).unwrap()[HEADER_LEN..].to_vec();
    assert_eq!(payload, [5, 0]);
    payload.extend_from_slice(&[0, 0, 0]);
    let e = decode_request(&payload).unwrap_err();
    assert_eq!(e, ProtoError::TrailingBytes { consumed: 2, trailing: 3 });
    assert_eq!(e.code(), ErrorCode::Malformed);

    let done = Response::SnapshotDone(statecull_proto::SnapshotDone { records: 1, elapsed_us: 2 });
    let mut payload = encode_response(&done).unwrap()[HEADER_LEN..].to_vec();
    payload.push(0);
    assert_eq!(
        decode_response(&payload),
        Err(ProtoError::TrailingBytes { consumed: 3, trailing: 1 })
    );
}

#[test]
fn unknown_top_level_variant_is_malformed() {
    assert_malformed(decode_request(&[200]), "unknown variant");
    assert_malformed(decode_request(&[7]), "unknown variant");
    // Variant 6 is `RulesetTicket` (protocol 3), a request without a body.
    assert_eq!(decode_request(&[6]).unwrap(), Request::RulesetTicket);
    assert_malformed(decode_request(&[200, 0, 0, 0]), "unknown variant");
    assert_malformed(decode_response(&[200]), "unknown variant");
    assert_malformed(decode_response(&[7, 0]), "unknown variant");
    // A variant index beyond one byte (varint marker 252 + u32 little-endian).
    assert_malformed(decode_request(&[252, 0xff, 0xff, 0xff, 0xff]), "unknown variant");
}

#[test]
fn unknown_nested_variant_is_malformed() {
    // Snapshot { selector: Some(Selector { family: Some(<variant 9>) .. }) }
    assert_malformed(decode_request(&[1, 1, 1, 9]), "unknown variant");
    // KillHandles with one handle whose StateHandle variant is 3.
    assert_malformed(decode_request(&[3, 1, 3]), "unknown variant");
    // Snapshot with an Option tag of 2.
    assert_malformed(decode_request(&[1, 2]), "unknown variant");
    // Killed report with KillPath variant 4 (all integers 0, first_error None, exact false).
    assert_malformed(decode_response(&[4, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0]), "unknown variant");
}

#[test]
fn invalid_scalars_are_malformed() {
    // KillMatching { selectors: [], match_opposite: <2> }: not a bool.
    assert!(matches!(decode_request(&[4, 0, 2]), Err(ProtoError::Malformed(_))));
    // Hello with a client name that is not UTF-8.
    assert!(matches!(decode_request(&[0, 1, 2, 0xc3, 0x28]), Err(ProtoError::Malformed(_))));
    // A u16 (protocol_version) encoded with the u32 varint marker and too large a value.
    assert!(matches!(decode_request(&[0, 252, 0, 0, 1, 0, 0]), Err(ProtoError::Malformed(_))));
    // Empty payload.
    assert!(matches!(decode_request(&[]), Err(ProtoError::Malformed(_))));
    assert!(matches!(decode_response(&[]), Err(ProtoError::Malformed(_))));
}

#[test]
fn payload_over_the_frame_limit_is_refused_before_decoding() {
    let big = vec![0u8; FRAME + 1];
    let e = decode_request(&big).unwrap_err();
    assert_eq!(e, ProtoError::FrameTooLarge { len: FRAME + 1, max: FRAME });
    assert_eq!(decode_response(&big).unwrap_err(), e);
}
