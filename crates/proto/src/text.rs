//! Untrusted text in messages and log lines.
//!
//! Anything a peer sent (an interface name, a label, a client name, a request line) may be a
//! megabyte of control characters. Before such text goes into an error message or a log line
//! it is clipped to a few dozen bytes and escaped, so a refused request costs the broker a
//! short line, not a copy of the attack, and an error reply always fits a frame.

use std::fmt;

/// Bytes of untrusted text kept in a message (before escaping).
pub const CLIP_BYTES: usize = 64;

/// Longest error message a broker sends (bytes); longer ones are cut (see [`clip_message`]).
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Untrusted text as it is shown: quoted, escaped like Rust's `{:?}`, cut after `max` bytes of
/// input with the number of bytes left out. Formatting never allocates more than about
/// `4 * max` bytes, whatever the input.
#[derive(Clone, Copy, Debug)]
pub struct Clipped<'a> {
    text: &'a str,
    max: usize,
}

/// Show untrusted `text` clipped to [`CLIP_BYTES`].
pub fn clip(text: &str) -> Clipped<'_> {
    clip_to(text, CLIP_BYTES)
}

/// Show untrusted `text` clipped to `max` bytes.
pub fn clip_to(text: &str, max: usize) -> Clipped<'_> {
    Clipped { text, max }
}

/// The longest prefix of `s` that is at most `max` bytes and ends on a character boundary.
pub fn prefix_at_most(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl fmt::Display for Clipped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kept = prefix_at_most(self.text, self.max);
        write!(f, "{kept:?}")?;
        let left = self.text.len() - kept.len();
        if left > 0 {
            write!(f, "... ({left} more bytes)")?;
        }
        Ok(())
    }
}

/// A message for the wire or a log: at most [`MAX_ERROR_MESSAGE`] bytes (cut on a character
/// boundary, with a marker). Messages built from [`clip`]ped parts never need it; it is the
/// last line of defence for an error reply, which must fit one frame.
pub fn clip_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        const MARK: &str = " [message cut]";
        let keep = prefix_at_most(&message, MAX_ERROR_MESSAGE - MARK.len()).len();
        message.truncate(keep);
        message.push_str(MARK);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_quoted_and_escaped() {
        assert_eq!(clip("eth0").to_string(), "\"eth0\"");
        assert_eq!(clip("a\nb\u{1b}").to_string(), "\"a\\nb\\u{1b}\"");
    }

    #[test]
    fn long_text_is_cut_with_a_count() {
        let s = "x".repeat(1 << 20);
        let shown = clip(&s).to_string();
        assert!(shown.len() < 100, "{shown}");
        assert!(shown.ends_with(&format!("... ({} more bytes)", (1 << 20) - CLIP_BYTES)));
    }

    #[test]
    fn escaping_is_bounded_too() {
        // Every control byte escapes to up to 6 characters; still bounded by the input cut.
        let s = "\u{1}".repeat(1 << 20);
        assert!(clip(&s).to_string().len() < 8 * CLIP_BYTES);
    }

    #[test]
    fn cuts_on_character_boundaries() {
        let s = "é".repeat(100); // 2 bytes each
        let kept = prefix_at_most(&s, 5);
        assert_eq!(kept, "éé");
        let m = clip_message("ü".repeat(MAX_ERROR_MESSAGE));
        assert!(m.len() <= MAX_ERROR_MESSAGE && m.ends_with("[message cut]"));
        assert_eq!(clip_message("short".into()), "short");
    }
}
