//! Hostile input must not make the decoder or the frame assembler allocate without bound: a few
//! bytes claiming an enormous collection fail after at most about one frame's worth.
//!
//! Allocation is counted by `stats_alloc`'s instrumented system allocator, whose counters are
//! process-wide. So this binary holds exactly ONE `#[test]`, which runs every case in turn:
//! no other test can allocate while a case is being measured. Add cases to `allocation_is_bounded`
//! rather than new `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::System;
use std::time::{Duration, Instant};

use statecull_proto::frame::{FrameAssembler, decode_request, decode_response};
use statecull_proto::{MAX_FRAME_LEN, ProtoError};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const FRAME: usize = MAX_FRAME_LEN as usize;

/// What one measured call allocated (in total; `stats_alloc` has no per-allocation maximum).
#[derive(Debug)]
struct AllocStats {
    /// Bytes requested from the allocator, including growth by `realloc`.
    bytes_allocated: usize,
    /// How many allocations and reallocations that took.
    allocations: usize,
    /// Reported only; tests do not assert on time.
    elapsed: Duration,
}

impl std::fmt::Display for AllocStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self { bytes_allocated, allocations, elapsed } = self;
        write!(f, "{bytes_allocated} bytes in {allocations} (re)allocations, {elapsed:?}")
    }
}

fn measure<R>(f: impl FnOnce() -> R) -> (R, AllocStats) {
    let region = Region::new(GLOBAL);
    let start = Instant::now();
    let r = f();
    let elapsed = start.elapsed();
    let change = region.change();
    (
        r,
        AllocStats {
            bytes_allocated: change.bytes_allocated,
            allocations: change.allocations + change.reallocations,
            elapsed,
        },
    )
}

/// bincode varint for a u64 length: marker 253 then 8 bytes little-endian.
fn varint_u64(n: u64) -> Vec<u8> {
    let mut v = vec![253];
    v.extend_from_slice(&n.to_le_bytes());
    v
}

/// xorshift64*: deterministic, dependency-free randomness.
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

/// The only test in this binary (see the module comment).
#[test]
fn allocation_is_bounded() {
    oversized_header_is_refused_without_buffering_the_payload();
    forged_huge_lengths_fail_fast_without_allocating();
    count_claiming_two_to_the_sixty_selectors();
    short_payloads_allocate_boundedly();
}

/// A header over the frame limit followed by payload bytes in the same push is refused, and
/// the payload is not buffered although the header claims over a megabyte.
fn oversized_header_is_refused_without_buffering_the_payload() {
    let mut stream = (MAX_FRAME_LEN + 1).to_be_bytes().to_vec();
    stream.extend_from_slice(&[0xaa; 4096]);
    let mut asm = FrameAssembler::new();
    let (r, stats) = measure(|| asm.push(&stream));
    assert_eq!(r, Err(ProtoError::FrameTooLarge { len: FRAME + 1, max: FRAME }));
    assert!(stats.bytes_allocated < 4096, "{stats}");
}

/// A few bytes claiming an enormous collection must fail, without aborting and without
/// allocating more than about one frame's worth (the decoder bounds pre-allocation).
fn forged_huge_lengths_fail_fast_without_allocating() {
    let huge = [1u64 << 60, u64::MAX, u64::MAX / 2, 1 << 32];
    let mut cases: Vec<(&str, Vec<u8>, bool)> = Vec::new();
    for n in huge {
        // Request::Count { selectors: Vec of n }
        cases.push(("Count", [vec![2], varint_u64(n)].concat(), true));
        // Request::KillHandles { handles: Vec of n }
        cases.push(("KillHandles", [vec![3], varint_u64(n)].concat(), true));
        // Request::KillMatching { selectors: Vec of n, .. } with a few selector-ish bytes
        cases.push(("KillMatching", [vec![4], varint_u64(n), vec![0; 5]].concat(), true));
        // Request::Hello { client: String of n bytes }
        cases.push(("Hello", [vec![0, 1], varint_u64(n)].concat(), true));
        // Request::Flush { interface: Some(IfName(String of n bytes)) }
        cases.push(("Flush", [vec![5, 1], varint_u64(n)].concat(), true));
        // Response::SnapshotBatch(Vec of n)
        cases.push(("SnapshotBatch", [vec![1], varint_u64(n)].concat(), false));
        // Response::Count(CountReply { per_selector: Vec<u64> of n, .. })
        cases.push(("CountReply", [vec![3], varint_u64(n), vec![1, 2, 3]].concat(), false));
        // Response::Error(ErrorReply { code, message: String of n })
        cases.push(("ErrorReply", [vec![5, 0], varint_u64(n)].concat(), false));
    }
    // A u32-marker length just under the frame limit: allowed to be claimed, never satisfied.
    let near = u32::try_from(FRAME - 16).unwrap();
    cases.push(("Hello near limit", [vec![0, 1, 252], near.to_le_bytes().to_vec()].concat(), true));

    for (what, bytes, is_request) in cases {
        let (r, stats) = measure(|| {
            if is_request {
                decode_request(&bytes).map(|_| ())
            } else {
                decode_response(&bytes).map(|_| ())
            }
        });
        let e = r.expect_err(what);
        assert!(matches!(e, ProtoError::Malformed(_)), "{what}: {e:?}");
        assert!(stats.bytes_allocated <= 2 * FRAME, "{what} ({} bytes): {stats}", bytes.len());
        eprintln!("{what} ({} bytes): {stats}", bytes.len());
    }
}

/// The Count case spelled out: variant 2, then a varint claiming 2^60 selectors, and nothing
/// else.
fn count_claiming_two_to_the_sixty_selectors() {
    let bytes = [2, 253, 0, 0, 0, 0, 0, 0, 0, 0x10];
    let (r, stats) = measure(|| decode_request(&bytes));
    eprintln!("Count with 2^60 selectors: {r:?}, {stats}");
    assert!(matches!(r, Err(ProtoError::Malformed(_))));
    assert!(stats.bytes_allocated <= 2 * FRAME, "{stats}");
}

/// Whatever a short payload claims, decoding it either way allocates at most about one frame's
/// worth.
fn short_payloads_allocate_boundedly() {
    let mut rng = Rng(0x0a11_0c8b_0dd5_eed5);
    let mut most = 0;
    for case in 0..512 {
        let len = rng.below(48);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Half the time, a plausible variant tag followed by a varint length marker, so the
        // decoder gets as far as a length claim more often than random bytes would.
        if case % 2 == 0 && bytes.len() >= 2 {
            bytes[0] %= 8;
            bytes[1] = [251, 252, 253, 254][rng.below(4)];
        }
        let (_, req) = measure(|| decode_request(&bytes).map(|_| ()));
        let (_, resp) = measure(|| decode_response(&bytes).map(|_| ()));
        for (what, stats) in [("request", req), ("response", resp)] {
            assert!(stats.bytes_allocated <= 2 * FRAME, "{what} from {bytes:?}: {stats}");
            most = most.max(stats.bytes_allocated);
        }
    }
    eprintln!("512 short payloads: at most {most} bytes allocated by one decode");
}
