//! Where every command's output goes: a locked, buffered standard output that treats a
//! reader who went away (`statecull status | head`, EPIPE) as "stop quietly", and standard
//! error written without panicking.
//!
//! `println!` panics when standard output is a closed pipe (Rust ignores SIGPIPE, so the
//! write fails with EPIPE instead of killing the process). Here a broken pipe marks the
//! output closed and later writes are dropped, so the command runs to its natural end and
//! its exit status says whether *it* worked: 0 when it did, as ripgrep and most tools do,
//! 1 when it failed (a partial kill still exits 1 even if nobody reads the report).
//! Commands with long or endless output (`broker list`, `events --follow`) check
//! [`Output::closed`] and stop early. Any other write error (a full disk) is still an
//! error.

use std::fmt;
use std::io::{self, BufWriter, StdoutLock, Write};

/// Standard output for a command; see the module documentation.
#[derive(Debug)]
pub struct Output<W: Write = StdoutLock<'static>> {
    buf: BufWriter<StopOnClose<W>>,
}

impl Output {
    /// The process's standard output, locked for the command's lifetime.
    pub fn stdout() -> Self {
        Self::new(io::stdout().lock())
    }
}

impl<W: Write> Output<W> {
    pub fn new(inner: W) -> Self {
        Self { buf: BufWriter::new(StopOnClose { inner, closed: false }) }
    }

    /// True once a write found the reader gone; nothing written since went anywhere.
    /// Buffered text is noticed when it is written out, so callers that loop flush (or
    /// write more than a buffer's worth) before asking.
    pub fn closed(&self) -> bool {
        self.buf.get_ref().closed
    }

    /// The underlying writer (tests).
    pub fn get_ref(&self) -> &W {
        &self.buf.get_ref().inner
    }
}

impl<W: Write> Write for Output<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.write(data)
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.buf.write_all(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf.flush()
    }
}

/// Passes writes through until one fails with a broken pipe; from then on, accepts and
/// drops everything.
#[derive(Debug)]
struct StopOnClose<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> StopOnClose<W> {
    fn absorb<T>(&mut self, result: io::Result<T>, gone: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(gone)
            }
            other => other,
        }
    }
}

impl<W: Write> Write for StopOnClose<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(data.len());
        }
        let result = self.inner.write(data);
        self.absorb(result, data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.inner.flush();
        self.absorb(result, ())
    }
}

/// Write a message to standard error. Errors are ignored: a message nobody can read is no
/// reason to panic (`eprintln!` would) or to change the exit status.
pub fn to_stderr(args: fmt::Arguments<'_>) {
    let mut err = io::stderr().lock();
    let _ = err.write_fmt(args);
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `room` bytes, then fails every write with `error`.
    struct Pipe {
        written: Vec<u8>,
        room: usize,
        error: io::ErrorKind,
    }

    impl Write for Pipe {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            if self.written.len() >= self.room {
                return Err(io::Error::from(self.error));
            }
            let n = data.len().min(self.room - self.written.len());
            self.written.extend_from_slice(&data[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_pipe_closes_the_output_quietly() {
        let mut out =
            Output::new(Pipe { written: Vec::new(), room: 10, error: io::ErrorKind::BrokenPipe });
        writeln!(out, "0123456789abcdef").unwrap();
        assert!(!out.closed(), "still buffered");
        out.flush().unwrap();
        assert!(out.closed());
        assert_eq!(out.get_ref().written, b"0123456789");
        for _ in 0..10_000 {
            writeln!(out, "more text nobody reads").unwrap();
        }
        out.flush().unwrap();
        assert_eq!(out.get_ref().written.len(), 10);
    }

    #[test]
    fn other_write_errors_are_errors() {
        let mut out =
            Output::new(Pipe { written: Vec::new(), room: 0, error: io::ErrorKind::StorageFull });
        writeln!(out, "x").unwrap();
        let e = out.flush().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert!(!out.closed());
    }
}
