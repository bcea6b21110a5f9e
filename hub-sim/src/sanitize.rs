//! Peer-supplied strings on their way into logs and the store.

/// `s` with control characters escaped and cut to `max_chars` (see
/// [`vworkspace_protocol::untrusted::escape`]).
pub fn for_log(s: &str, max_chars: usize) -> String {
    vworkspace_protocol::untrusted::escape(s, max_chars)
}
