//! Everything a peer can send: a frame header, a byte stream cut into arbitrary pieces, and
//! payloads decoded as requests and responses. Nothing may panic; whatever decodes must
//! re-encode to a frame that decodes to the same value; checks must be total.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_proto::frame::{
    FrameAssembler, decode_request, decode_response, encode_request, encode_response, encoded_len,
    payload_len,
};
use statecull_proto::{HEADER_LEN, Limits, MAX_FRAME_LEN, ProtoError, Request, Response};

fuzz_target!(|data: &[u8]| {
    header(data);
    let frames = assemble(data);
    for payload in &frames {
        payload_roundtrip(payload);
    }
    payload_roundtrip(data);
});

/// The first four bytes as a frame header.
fn header(data: &[u8]) {
    let Some(h) = data.first_chunk::<HEADER_LEN>() else {
        return;
    };
    let announced = u32::from_be_bytes(*h);
    match payload_len(*h) {
        Ok(n) => assert!(announced != 0 && announced <= MAX_FRAME_LEN && n == announced as usize),
        Err(ProtoError::EmptyFrame) => assert_eq!(announced, 0),
        Err(ProtoError::FrameTooLarge { len, .. }) => {
            assert!(announced > MAX_FRAME_LEN && len == announced as usize);
        }
        Err(e) => panic!("unexpected header error {e:?}"),
    }
}

/// Reference splitter: the frames a correct reader finds in `data`, and whether it stops at a
/// bad header.
fn split(data: &[u8]) -> (Vec<&[u8]>, Option<ProtoError>) {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some(h) = rest.first_chunk::<HEADER_LEN>() {
        let len = match payload_len(*h) {
            Ok(len) => len,
            Err(e) => return (frames, Some(e)),
        };
        let Some(payload) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
            break;
        };
        frames.push(payload);
        rest = &rest[HEADER_LEN + len..];
    }
    (frames, None)
}

/// Feed `data` to a FrameAssembler in pieces whose sizes come from the data itself, and check
/// it against the reference splitter.
fn assemble(data: &[u8]) -> Vec<Vec<u8>> {
    let (expected, expected_err) = split(data);
    let mut asm = FrameAssembler::new();
    let mut frames = Vec::new();
    let mut err = None;
    let mut pos = 0;
    let mut i = 0;
    'feed: while pos < data.len() {
        // 1..=64 bytes, or everything left when the size byte is 0xff.
        let b = data[(i * 7 + 3) % data.len()];
        i += 1;
        let size = if b == 0xff {
            data.len()
        } else {
            usize::from(b % 64) + 1
        };
        let end = pos.saturating_add(size).min(data.len());
        let mut chunk = &data[pos..end];
        while !chunk.is_empty() {
            let wanted = match asm.wanted() {
                Ok(w) => w,
                Err(e) => {
                    err = Some(e);
                    break 'feed;
                }
            };
            let taken = match asm.push(chunk) {
                Ok(t) => t,
                Err(e) => {
                    err = Some(e);
                    break 'feed;
                }
            };
            assert_eq!(taken, wanted.min(chunk.len()));
            chunk = &chunk[taken..];
            let before = frames.len();
            loop {
                match asm.next_frame() {
                    Ok(Some(p)) => frames.push(p),
                    Ok(None) => break,
                    Err(e) => {
                        err = Some(e);
                        break 'feed;
                    }
                }
            }
            assert!(
                taken > 0 || frames.len() > before,
                "assembler made no progress"
            );
        }
        pos = end;
    }
    assert_eq!(
        frames, expected,
        "assembler and reference disagree on frames"
    );
    assert_eq!(
        err, expected_err,
        "assembler and reference disagree on errors"
    );
    if err.is_none() {
        assert_eq!(
            asm.is_idle(),
            frames.iter().map(|f| HEADER_LEN + f.len()).sum::<usize>() == data.len()
        );
    }
    frames
}

/// Decode as both message kinds; re-encode and decode again whatever succeeds.
fn payload_roundtrip(payload: &[u8]) {
    if let Ok(req) = decode_request(payload) {
        request_again(&req, payload.len());
    }
    if let Ok(resp) = decode_response(payload) {
        response_again(&resp, payload.len());
    }
}

fn request_again(req: &Request, decoded_from: usize) {
    let frame = encode_request(req).expect("a decoded request re-encodes");
    let body = &frame[HEADER_LEN..];
    // The encoder is canonical: never longer than what it was decoded from.
    assert!(body.len() <= decoded_from);
    assert_eq!(encoded_len(req).ok(), Some(body.len()));
    assert_eq!(
        &decode_request(body).expect("a re-encoded request decodes"),
        req
    );
    // Checks, and the methods on unchecked values, are total.
    let checked = req.clone().check(&Limits::PROTOCOL, &statecull_proto::Capabilities::any());
    if let Ok(checked) = &checked {
        assert_eq!(checked.verb(), req.verb());
        for s in checked.selectors() {
            let _ = s.to_string();
        }
    }
    let _ = req.verb().name();
    match req {
        Request::Snapshot { selector: Some(s) } => poke_selector(s),
        Request::Count { selectors } | Request::KillMatching { selectors, .. } => {
            selectors.iter().for_each(poke_selector);
        }
        Request::KillHandles { handles, .. } => {
            for h in handles {
                let _ = h.check();
                match h {
                    statecull_proto::StateHandle::Conntrack { orig, .. } => {
                        let _ = orig.to_string();
                    }
                    statecull_proto::StateHandle::Pf { id, creator_id } => {
                        let _ = (id, creator_id);
                    }
                }
            }
        }
        _ => {}
    }
}

fn poke_selector(s: &statecull_proto::Selector) {
    let _ = s.to_string();
    let _ = s.fields();
    let _ = s.implied_family();
    for p in [s.src, s.dst].into_iter().flatten() {
        let _ = p.check();
        let n = p.network();
        assert!(n.check().is_ok() || p.len > p.family().bits());
        let _ = p.contains(&p.addr);
        let _ = p.to_string();
    }
}

fn response_again(resp: &Response, decoded_from: usize) {
    let frame = encode_response(resp).expect("a decoded response re-encodes");
    let body = &frame[HEADER_LEN..];
    assert!(body.len() <= decoded_from);
    assert_eq!(encoded_len(resp).ok(), Some(body.len()));
    assert_eq!(
        &decode_response(body).expect("a re-encoded response decodes"),
        resp
    );
    if let Response::SnapshotBatch(records) = resp {
        for r in records {
            let _ = (r.is_nat(), r.reply_dst(), r.key.to_string(), r.key.check());
        }
    }
}
