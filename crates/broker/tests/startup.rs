//! `statecull-broker` that cannot start: one line, `statecull-broker: REASON`, on standard
//! error, the same form before logging starts (flags) and after (the backend), with text or
//! JSON logs; exit status 2 for the command line and the configuration.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::process::Command;

fn broker(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_statecull-broker")).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_flag_mistake_is_one_plain_line() {
    let (code, out, err) = broker(&["--model-states", "10"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err,
        "statecull-broker: --model-states 10: only for --backend pf-model (the backend is \
         conntrack)\n"
    );
    let (code, _, err) = broker(&["--max-connections", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(err, "statecull-broker: --max-connections 0: expected a number of at least 1\n");
}

#[test]
fn a_backend_that_cannot_open_is_the_same_form_with_any_log_format() {
    // pf exists only on FreeBSD: the error comes from start-up, after logging began.
    if cfg!(target_os = "freebsd") {
        return;
    }
    for format in ["text", "json"] {
        let (code, _, err) = broker(&[
            "--no-sandbox",
            "--backend",
            "pf",
            "--log-format",
            format,
            "--socket",
            "/nonexistent/statecull-broker-test.sock",
        ]);
        assert_eq!(code, Some(2), "{format}: {err}");
        let last = err.lines().last().unwrap();
        assert_eq!(
            last,
            "statecull-broker: configuration: the pf backend exists only on FreeBSD; \
             --backend pf-model runs pf's model anywhere",
            "{format}: {err}"
        );
        assert!(!err.contains("ERROR"), "no tracing form for the fatal error: {err}");
        assert_eq!(err.matches("pf backend exists only").count(), 1, "said once: {err}");
    }
}

#[test]
fn help_is_rendered_from_the_flag_table() {
    let (code, out, _) = broker(&["--help"]);
    assert_eq!(code, Some(0));
    for f in statecull_broker::flags::FLAGS {
        assert!(out.contains(&f.spelling()), "{} missing:\n{out}", f.long);
    }
    assert!(out.contains("Flags may come in any order"), "{out}");
}
