//! Join-token parsing (agent side, unverified) and verification (hub side)
//! must never panic on any string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vworkspace_protocol::{JoinToken, KeyRing, verify_join_token};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let _ = JoinToken::parse(s, 1_800_000_000);
    let _ = verify_join_token(s, &KeyRing::new(), 1_800_000_000);
});
