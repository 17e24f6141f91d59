//! What a dpinger status socket answers, handled as the engine handles it: at most
//! `MAX_STATUS_BYTES`, UTF-8, one line ending in a newline, then `dpinger::parse_status`.
//! Nothing may panic. Whatever parses obeys the parser's own limits, and the line dpinger
//! would print for it parses to the same report.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecull_engine::dpinger::{
    DpingerStatus, MAX_LINE_LEN, MAX_NAME_LEN, MAX_STATUS_BYTES, parse_status,
};

fuzz_target!(|data: &[u8]| {
    // The parser on its own, as a string.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(s) = parse_status(text) {
            check(text, &s);
        }
    }
    // As read from the socket.
    if data.len() > MAX_STATUS_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Some(line) = text.strip_suffix('\n') else { return };
    if let Ok(s) = parse_status(line) {
        check(line, &s);
    }
});

fn check(line: &str, s: &DpingerStatus) {
    assert!(line.len() <= MAX_LINE_LEN);
    assert!(s.name.len() <= MAX_NAME_LEN);
    assert!(!s.name.contains(' ') && !s.name.chars().any(char::is_control));
    assert!(s.loss_pct <= 100);
    assert_eq!(s.latency_or_none().is_none(), s.latency_avg.is_zero());
    // dpinger prints "%s %lu %lu %lu\n" (the name and its space only with -i).
    let (avg, stddev) = (s.latency_avg.as_micros(), s.latency_stddev.as_micros());
    let printed = if s.name.is_empty() {
        format!("{avg} {stddev} {}\n", s.loss_pct)
    } else {
        format!("{} {avg} {stddev} {}\n", s.name, s.loss_pct)
    };
    let again = parse_status(&printed).expect("the line dpinger prints for a report parses");
    assert_eq!(&again, s);
}
