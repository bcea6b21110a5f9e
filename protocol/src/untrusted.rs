//! Printing strings that came from the peer.
//!
//! Everything in a frame body (`goodbye.reason`, `error.message`, rejection
//! messages, event text, `hello.agent_version`) and in an enrollment error is
//! chosen by the other side. Written to a log as it is, a newline starts a
//! forged log line and terminal escapes rewrite what an operator sees. Both
//! ends pass such strings through [`escape`] before logging or storing them.

use std::fmt::Write;

/// `s` with every control character (C0, DEL, C1), the Unicode line and
/// paragraph separators and the bidirectional overrides written as escapes
/// (`\n`, `\u{1b}`, ...), cut to at most `max_chars` characters (an ellipsis
/// marks a cut).
pub fn escape(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars.saturating_mul(4)));
    for (n, c) in s.chars().enumerate() {
        if n >= max_chars {
            out.push('…');
            break;
        }
        if needs_escape(c) {
            for e in c.escape_default() {
                out.push(e);
            }
        } else if c == '\\' {
            // Keep escapes unambiguous: a literal backslash-n is not a newline.
            out.push_str("\\\\");
        } else {
            let _ = out.write_char(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn newlines_and_terminal_escapes_cannot_start_a_line() {
        let forged = "bye\n2026-01-01T00:00:00Z  INFO cluster revoked\r\x1b[2J\u{2028}x\u{202e}";
        let out = escape(forged, 200);
        assert!(!out.chars().any(|c| c.is_control()), "{out}");
        assert_eq!(
            out,
            "bye\\n2026-01-01T00:00:00Z  INFO cluster revoked\\r\\u{1b}[2J\\u{2028}x\\u{202e}"
        );
    }

    #[test]
    fn long_strings_are_cut_and_backslashes_stay_distinct() {
        assert_eq!(escape("abcdef", 3), "abc…");
        assert_eq!(escape("a\\nb", 10), "a\\\\nb");
        assert_eq!(escape("grüße", 10), "grüße");
    }
}
