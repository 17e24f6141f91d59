//! Framing: a 4-byte big-endian length, then one bincode-encoded message.
//!
//! This is the only module that calls bincode, so the wire encoding can change in one place.
//! Lengths are checked before anything is allocated; decoding runs under a byte limit; a
//! message must use every byte of its frame; unknown enum variants are errors.

use bincode::config::{Config, standard};
use bincode::error::{DecodeError, EncodeError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ProtoError;
use crate::verbs::{Request, Response};
use crate::{HEADER_LEN, MAX_FRAME_LEN};

/// bincode 2 "standard" (varint) encoding, never reading more than a frame can hold. A forged
/// container length cannot make the decoder allocate much either: the limit rejects strings
/// longer than the frame, and serde caps what a sequence pre-allocates (measured: a 10-byte
/// payload claiming 2^60 selectors fails in ~0.1 ms after at most 1 MiB).
fn config() -> impl Config {
    standard().with_limit::<{ MAX_FRAME_LEN as usize }>()
}

/// Check a frame header and return the payload length it announces.
pub fn payload_len(header: [u8; HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(header);
    if len == 0 {
        return Err(ProtoError::EmptyFrame);
    }
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::FrameTooLarge { len: len as usize, max: MAX_FRAME_LEN as usize });
    }
    Ok(len as usize)
}

fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let mut out = vec![0u8; HEADER_LEN];
    bincode::serde::encode_into_std_write(msg, &mut out, config()).map_err(encode_error)?;
    let len = out.len() - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|l| *l <= MAX_FRAME_LEN)
        .ok_or_else(|| ProtoError::Encode(format!("{len} bytes exceed the frame limit")))?;
    out[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

fn encode_error(e: EncodeError) -> ProtoError {
    ProtoError::Encode(e.to_string())
}

fn decode_payload<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, ProtoError> {
    if payload.len() > MAX_FRAME_LEN as usize {
        return Err(ProtoError::FrameTooLarge { len: payload.len(), max: MAX_FRAME_LEN as usize });
    }
    let (value, consumed) =
        bincode::serde::decode_from_slice::<T, _>(payload, config()).map_err(|e| {
            ProtoError::Malformed(match e {
                DecodeError::UnexpectedVariant { type_name, found, .. } => {
                    format!("unknown variant {found} of {type_name} in a {what}")
                }
                DecodeError::UnexpectedEnd { additional } => {
                    format!("{what} ends {additional} byte(s) early")
                }
                DecodeError::LimitExceeded => format!("{what} claims more than the frame holds"),
                // serde-derived enums report an unknown index through `de::Error::invalid_value`
                // ("invalid value: integer `200`, expected variant index 0 <= i < 6").
                DecodeError::OtherString(msg) if msg.contains("expected variant index") => {
                    format!("unknown variant in a {what}: {msg}")
                }
                DecodeError::OtherString(msg) => format!("{what}: {msg}"),
                other => format!("{what}: {other}"),
            })
        })?;
    if consumed != payload.len() {
        return Err(ProtoError::TrailingBytes { consumed, trailing: payload.len() - consumed });
    }
    Ok(value)
}

/// Encode a request as a complete frame (header included).
pub fn encode_request(req: &Request) -> Result<Vec<u8>, ProtoError> {
    encode_frame(req)
}

/// Encode a response as a complete frame (header included).
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, ProtoError> {
    encode_frame(resp)
}

/// Decode a request from a frame payload (header removed).
pub fn decode_request(payload: &[u8]) -> Result<Request, ProtoError> {
    decode_payload(payload, "request")
}

/// Decode a response from a frame payload (header removed).
pub fn decode_response(payload: &[u8]) -> Result<Response, ProtoError> {
    decode_payload(payload, "response")
}

/// Payload size of a value once encoded, without framing (for batch sizing and tests).
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, ProtoError> {
    let mut counter = ByteCounter(0);
    bincode::serde::encode_into_std_write(value, &mut counter, config()).map_err(encode_error)?;
    Ok(counter.0)
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces (for non-blocking
/// readers). It never buffers more than one header plus one announced payload.
#[derive(Debug, Default)]
pub struct FrameAssembler {
    buf: Vec<u8>,
}

impl FrameAssembler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes needed before the next call to [`FrameAssembler::next_frame`] can make
    /// progress; the header is checked as soon as it is complete.
    pub fn wanted(&self) -> Result<usize, ProtoError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(HEADER_LEN - self.buf.len());
        }
        let total = HEADER_LEN + payload_len(self.header())?;
        Ok(total.saturating_sub(self.buf.len()))
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&self.buf[..HEADER_LEN]);
        h
    }

    /// Feed bytes; returns how many were taken. Takes at most what the current frame needs,
    /// so the caller keeps the rest for the next frame.
    pub fn push(&mut self, bytes: &[u8]) -> Result<usize, ProtoError> {
        let take = self.wanted()?.min(bytes.len());
        self.buf.extend_from_slice(&bytes[..take]);
        // Check the header as soon as it is complete, before any payload is buffered.
        self.wanted()?;
        Ok(take)
    }

    /// The next complete payload, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, ProtoError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = payload_len(self.header())?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf.split_off(HEADER_LEN);
        self.buf.clear();
        Ok(Some(payload))
    }

    /// True when no partial frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty()
    }
}
