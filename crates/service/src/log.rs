//! Logging for both daemons: tracing's text or JSON lines, each with its syslog priority
//! where something reads it.
//!
//! * Standard error connected to the journal (systemd sets `JOURNAL_STREAM` to the
//!   `DEVICE:INODE` of the stream it gave the service; sd_journal_stream_fd(3)): every line
//!   starts with the sd-daemon prefix `<N>` (sd-daemon(3); `SD_ERR` 3 … `SD_DEBUG` 7), which
//!   journald strips and stores as `PRIORITY=`, so `journalctl -p warning` works. A JSON line
//!   stays a JSON object in `MESSAGE=` (the prefix is outside it) and keeps its `level`.
//! * Anything else on standard error (a terminal, a file, daemon(8)): lines unchanged.
//! * `--log-target syslog`: one datagram per event to the local syslog socket, with the
//!   priority in its header ([`crate::syslog`]).

use std::ffi::OsStr;
use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::ServiceError;
use crate::syslog::{SyslogSocket, SyslogWriter};

/// The syslog socket [`init`] connected, kept for [`syslog_fd`].
static SYSLOG: std::sync::OnceLock<std::sync::Arc<SyslogSocket>> = std::sync::OnceLock::new();

/// The syslog socket's descriptor, when logging goes there (FreeBSD: to limit its rights
/// before capability mode, like standard error's).
pub fn syslog_fd() -> Option<std::os::fd::BorrowedFd<'static>> {
    SYSLOG.get().map(|s| s.fd())
}

/// A syslog severity (RFC 5424), as sd-daemon(3)'s `<N>` prefix and syslog headers carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priority(u8);

impl Priority {
    /// `SD_ERR`, `LOG_ERR`.
    pub const ERR: Priority = Priority(3);
    /// `SD_WARNING`, `LOG_WARNING`.
    pub const WARNING: Priority = Priority(4);
    /// `SD_INFO`, `LOG_INFO`.
    pub const INFO: Priority = Priority(6);
    /// `SD_DEBUG`, `LOG_DEBUG`.
    pub const DEBUG: Priority = Priority(7);

    /// The one mapping from tracing's levels: ERROR 3, WARN 4, INFO 6, DEBUG and TRACE 7
    /// (syslog has nothing below debug; nothing is logged at notice, 5).
    pub fn of(level: &Level) -> Priority {
        match *level {
            Level::ERROR => Priority::ERR,
            Level::WARN => Priority::WARNING,
            Level::INFO => Priority::INFO,
            _ => Priority::DEBUG,
        }
    }

    /// The severity number, 0 (emergency) … 7 (debug).
    pub fn severity(self) -> u8 {
        self.0
    }
}

/// The lines' shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// tracing's human-readable lines.
    Text,
    /// One JSON object per line (fields flattened, `level` kept).
    Json,
}

/// Where the lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard error; with the `<N>` prefix when it is the journal.
    Stderr,
    /// The local syslog socket (`/var/run/log` on FreeBSD, `/dev/log` on Linux), facility
    /// daemon, tagged with the program's name; opened before confinement.
    Syslog,
}

/// What a daemon asks for.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The program's name: the syslog tag.
    pub program: &'static str,
    pub format: Format,
    pub level: LevelFilter,
    pub target: Target,
}

/// Where the log lines went, as [`init`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Standard error, lines unchanged.
    Stderr,
    /// Standard error is the journal's stream: lines carry `<N>`.
    Journal,
    /// The syslog socket at this path.
    Syslog(String),
}

/// Does `JOURNAL_STREAM`'s value name this stream (`DEVICE:INODE`, both decimal, as systemd
/// writes them)? Anything else, including a malformed value, means no: the variable is
/// inherited by children whose standard error may be something else entirely.
pub fn journal_stream_matches(value: Option<&OsStr>, dev: u64, ino: u64) -> bool {
    let Some(v) = value.and_then(OsStr::to_str) else { return false };
    let Some((d, i)) = v.split_once(':') else { return false };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// Is this process's standard error the journal stream systemd set up for it?
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let value = std::env::var_os("JOURNAL_STREAM");
    if value.is_none() {
        return false;
    }
    // fstat through a duplicate (std offers metadata on files only); before confinement.
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else { return false };
    let Ok(meta) = std::fs::File::from(fd).metadata() else { return false };
    journal_stream_matches(value.as_deref(), meta.dev(), meta.ino())
}

/// `text` (one formatted event, one or more lines) with `<N>` at the start of every line, so
/// journald files each line of a multi-line message at the event's priority.
pub fn prefix_lines(priority: Priority, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for line in text.split_inclusive('\n') {
        out.push('<');
        out.push(char::from(b'0' + priority.severity()));
        out.push('>');
        out.push_str(line);
    }
    out
}

/// A line written to standard error directly (a fatal error before or outside logging), with
/// its priority prefix when standard error is the journal, as the log lines have.
pub fn stderr_line(priority: Priority, line: &str) -> String {
    if stderr_is_journal() { prefix_lines(priority, line) } else { line.to_owned() }
}

/// An event formatter that puts each line's priority before it: `<N>` for the journal, or a
/// syslog header. Without either it is the inner formatter.
#[derive(Debug)]
pub struct WithPriority<F> {
    inner: F,
    header: Header,
}

/// What [`WithPriority`] writes before a line.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Header {
    None,
    Journal,
    Syslog { tag: &'static str, pid: u32 },
}

impl<S, N, F> FormatEvent<S, N> for WithPriority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let priority = Priority::of(event.metadata().level());
        match &self.header {
            Header::None => self.inner.format_event(ctx, writer, event),
            Header::Journal => {
                let mut line = String::new();
                self.inner.format_event(ctx, Writer::new(&mut line), event)?;
                writer.write_str(&prefix_lines(priority, &line))
            }
            Header::Syslog { tag, pid } => {
                write!(writer, "{}", crate::syslog::header(priority, tag, *pid))?;
                self.inner.format_event(ctx, writer, event)
            }
        }
    }
}

/// The subscriber both daemons run, writing to `writer`: the one construction, used by
/// [`init`] and by the tests. `ansi` only matters without a header.
fn subscriber<W>(
    format: Format,
    level: LevelFilter,
    header: Header,
    ansi: bool,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let ansi = ansi && header == Header::None;
    let builder = tracing_subscriber::fmt().with_max_level(level).with_ansi(ansi);
    match format {
        // The journal and syslog stamp each line themselves: a second time in the text
        // would only push the message right (JSON keeps its field, for who parses it).
        Format::Text if header != Header::None => {
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi).without_time();
            Box::new(
                builder.event_format(WithPriority { inner, header }).with_writer(writer).finish(),
            )
        }
        Format::Text => {
            let inner = tracing_subscriber::fmt::format().with_ansi(ansi);
            Box::new(
                builder.event_format(WithPriority { inner, header }).with_writer(writer).finish(),
            )
        }
        Format::Json => {
            let inner = tracing_subscriber::fmt::format()
                .json()
                .flatten_event(true)
                .with_current_span(false);
            Box::new(
                builder
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(WithPriority { inner, header })
                    .with_writer(writer)
                    .finish(),
            )
        }
    }
}

/// Install the process's logger. Call once, early, before confinement: it looks at standard
/// error and, for syslog, connects to the syslog socket.
pub fn init(settings: &Settings) -> Result<Sink, ServiceError> {
    let (sink, sub) = match settings.target {
        Target::Syslog => {
            let socket = std::sync::Arc::new(SyslogSocket::connect_default()?);
            let path = socket.path().to_owned();
            let _ = SYSLOG.set(std::sync::Arc::clone(&socket));
            let header = Header::Syslog { tag: settings.program, pid: std::process::id() };
            let sub = subscriber(
                settings.format,
                settings.level,
                header,
                false,
                SyslogWriter::new(socket),
            );
            (Sink::Syslog(path), sub)
        }
        Target::Stderr => {
            let journal = stderr_is_journal();
            let header = if journal { Header::Journal } else { Header::None };
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let sub = subscriber(settings.format, settings.level, header, ansi, std::io::stderr);
            (if journal { Sink::Journal } else { Sink::Stderr }, sub)
        }
    };
    tracing::subscriber::set_global_default(sub)
        .map_err(|e| ServiceError::Logger(e.to_string()))?;
    Ok(sink)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// One event at each level through the daemons' subscriber; the lines written.
    fn lines(format: Format, header: Header) -> Vec<String> {
        let buf = Buf::default();
        let sub = subscriber(format, LevelFilter::TRACE, header, false, buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::error!(gateway = "WAN1", "e-msg");
            tracing::warn!("w-msg");
            tracing::info!("i-msg");
            tracing::debug!("d-msg");
            tracing::trace!("t-msg");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn each_level_gets_its_sd_daemon_priority_on_the_journal() {
        for format in [Format::Text, Format::Json] {
            let got = lines(format, Header::Journal);
            assert_eq!(got.len(), 5, "{got:?}");
            for (line, (prefix, msg)) in got.iter().zip([
                ("<3>", "e-msg"),
                ("<4>", "w-msg"),
                ("<6>", "i-msg"),
                ("<7>", "d-msg"),
                ("<7>", "t-msg"),
            ]) {
                assert!(line.starts_with(prefix), "{format:?}: {line}");
                assert!(line.contains(msg), "{format:?}: {line}");
                assert!(!line[3..].contains('<'), "one prefix only: {line}");
            }
        }
    }

    /// journald and syslog stamp lines themselves; text carries no second time, and a
    /// terminal or file keeps it.
    #[test]
    fn text_has_no_timestamp_only_where_the_sink_stamps_lines() {
        let levels = ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"];
        for header in [Header::Journal, Header::Syslog { tag: "statecull-engine", pid: 1 }] {
            let got = lines(Format::Text, header.clone());
            assert_eq!(got.len(), 5, "{got:?}");
            for (line, level) in got.iter().zip(levels) {
                // What follows `<N>` (journal) or `<N>tag[pid]: ` (syslog) is the level.
                let body = line.split_once("]: ").map_or(&line[3..], |(_, b)| b);
                assert!(body.trim_start().starts_with(level), "{header:?}: {line}");
            }
        }
        for line in lines(Format::Text, Header::None) {
            assert!(line.starts_with(|c: char| c.is_ascii_digit()), "no timestamp: {line}");
        }
    }

    #[test]
    fn json_on_the_journal_is_still_one_json_object_with_its_level() {
        let got = lines(Format::Json, Header::Journal);
        let v: Vec<&str> = got.iter().map(|l| &l[3..]).collect();
        assert!(v[0].starts_with('{') && v[0].ends_with('}'), "{}", v[0]);
        assert!(v[0].contains(r#""level":"ERROR""#), "{}", v[0]);
        assert!(v[0].contains(r#""gateway":"WAN1""#), "{}", v[0]);
        assert!(v[1].contains(r#""level":"WARN""#), "{}", v[1]);
    }

    #[test]
    fn without_the_journal_lines_are_unchanged() {
        for format in [Format::Text, Format::Json] {
            let got = lines(format, Header::None);
            assert_eq!(got.len(), 5);
            for line in &got {
                assert!(!line.starts_with('<'), "{format:?}: {line}");
            }
        }
        let json = lines(Format::Json, Header::None);
        assert!(json[0].starts_with('{'), "{}", json[0]);
    }

    #[test]
    fn syslog_lines_carry_facility_daemon_and_the_severity() {
        let got = lines(Format::Text, Header::Syslog { tag: "statecull-broker", pid: 42 });
        assert!(got[0].starts_with("<27>statecull-broker[42]: "), "{}", got[0]);
        assert!(got[1].starts_with("<28>statecull-broker[42]: "), "{}", got[1]);
        assert!(got[2].starts_with("<30>statecull-broker[42]: "), "{}", got[2]);
        assert!(got[3].starts_with("<31>statecull-broker[42]: "), "{}", got[3]);
    }

    #[test]
    fn every_line_of_a_multi_line_event_is_prefixed() {
        assert_eq!(prefix_lines(Priority::WARNING, "a\nb\n"), "<4>a\n<4>b\n");
        assert_eq!(prefix_lines(Priority::ERR, "one"), "<3>one");
    }

    #[test]
    fn journal_stream_must_name_this_very_stream() {
        let m = |v: &str| journal_stream_matches(Some(OsStr::new(v)), 2049, 123_456);
        assert!(m("2049:123456"));
        assert!(!m("2049:123457"), "another inode");
        assert!(!m("2050:123456"), "another device");
        assert!(!m("2049"), "malformed");
        assert!(!m(":"), "malformed");
        assert!(!m("2049:123456:1"), "malformed");
        assert!(!m(" 2049:123456"), "malformed");
        assert!(!journal_stream_matches(None, 2049, 123_456), "not set");
    }

    #[test]
    fn levels_map_to_syslog_severities() {
        assert_eq!(Priority::of(&Level::ERROR).severity(), 3);
        assert_eq!(Priority::of(&Level::WARN).severity(), 4);
        assert_eq!(Priority::of(&Level::INFO).severity(), 6);
        assert_eq!(Priority::of(&Level::DEBUG).severity(), 7);
        assert_eq!(Priority::of(&Level::TRACE).severity(), 7);
    }
}
