//! Frame decoding must never panic, whatever the bytes; what decodes must
//! re-encode, and re-encoding must be stable. Intents run through the full
//! verifier too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vworkspace_protocol::{Frame, IntentSigner, KeyRing, Limits, VerifyContext, decode, encode};

fn ring() -> &'static KeyRing {
    static RING: OnceLock<KeyRing> = OnceLock::new();
    RING.get_or_init(|| {
        let mut r = KeyRing::new();
        r.insert(IntentSigner::from_seed(&[7; 32]).expect("seed").public_key());
        r
    })
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(env) = decode(data, &limits) else { return };
    if let Frame::Intent(signed) = &env.body {
        let _ = signed.peek_payload();
        let _ = ring().verify(signed, &VerifyContext::new("c-1", 1_800_000_000).with_applied_version(Some(3)));
    }
    if matches!(env.body, Frame::Unsupported { .. }) {
        return;
    }
    // Floats may widen when re-encoded, so allow headroom over the input limit.
    let wide = Limits::default().with_max_frame_bytes(8 * limits.max_frame_bytes);
    let once = encode(&env, &wide).expect("a decoded envelope re-encodes");
    let again = decode(&once, &wide).expect("a re-encoded envelope decodes");
    assert_eq!(encode(&again, &wide).expect("re-encodes"), once, "re-encoding is stable");
});
