//! Codec behaviour beyond the vectors: limits, bin encoding, hostile input.

use vworkspace_protocol::*;

fn hello() -> Envelope {
    Envelope::new(
        1,
        0,
        Frame::Hello(Hello {
            agent_version: "0.1.0".into(),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }),
    )
}

#[test]
fn intent_bytes_are_msgpack_bin_not_int_arrays() {
    let signer = IntentSigner::from_seed(&[3; 32]).unwrap();
    let signed = signer.sign_bytes(vec![0xaa; 40]);
    let bytes = encode(
        &Envelope::new(1, 0, Frame::Intent(signed)),
        &Limits::default(),
    )
    .unwrap();
    // bin8 header with length 40 followed by the payload, and bin8 of 64 for the signature.
    let needle = [&[0xc4, 40][..], &[0xaa; 40][..]].concat();
    assert!(
        bytes.windows(needle.len()).any(|w| w == needle.as_slice()),
        "payload is not bin8"
    );
    assert!(
        bytes.windows(2).any(|w| w == [0xc4, 64]),
        "signature is not bin8"
    );
}

#[test]
fn encode_refuses_oversized_and_unsupported() {
    let big = Envelope::new(
        1,
        0,
        Frame::RenewCert(RenewCert {
            csr_pem: "x".repeat(2000),
        }),
    );
    let err = encode(&big, &Limits::default().with_max_frame_bytes(1000)).unwrap_err();
    assert!(
        matches!(err, EncodeError::Oversized { max: 1000, .. }),
        "{err}"
    );
    let err = encode(
        &Envelope::new(
            1,
            0,
            Frame::Unsupported {
                type_name: "x".into(),
            },
        ),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, EncodeError::Unencodable(_)), "{err}");
}

#[test]
fn decode_checks_size_before_parsing() {
    // Garbage that would be malformed, but is too large: the size check wins.
    let err = decode(&[0xc1; 100], &Limits::default().with_max_frame_bytes(99)).unwrap_err();
    assert_eq!(err, DecodeError::Oversized { size: 100, max: 99 });
    assert_eq!(err.error_code(), ErrorCode::FrameTooLarge);
    assert_eq!(err.error_code().close_code(), 1009);
}

#[test]
fn every_prefix_of_a_frame_is_refused_without_panic() {
    let bytes = encode(&hello(), &Limits::default()).unwrap();
    for n in 0..bytes.len() {
        let err = decode(&bytes[..n], &Limits::default()).unwrap_err();
        assert_eq!(
            err.error_code(),
            ErrorCode::MalformedFrame,
            "prefix {n}: {err}"
        );
    }
    assert_eq!(decode(&bytes, &Limits::default()).unwrap(), hello());
}

#[test]
fn huge_claimed_lengths_are_truncations() {
    for header in [
        &[0xdd, 0xff, 0xff, 0xff, 0xff][..], // array32 of 4 Gi elements
        &[0xdf, 0xff, 0xff, 0xff, 0xff][..], // map32
        &[0xc6, 0xff, 0xff, 0xff, 0xff][..], // bin32
        &[0xdb, 0x7f, 0xff, 0xff, 0xff][..], // str32
        &[0xc9, 0xff, 0xff, 0xff, 0xff, 0x01][..], // ext32
    ] {
        assert_eq!(
            decode(header, &Limits::default()).unwrap_err(),
            DecodeError::Truncated,
            "{header:x?}"
        );
    }
}

#[test]
fn deep_nesting_is_refused() {
    let mut bytes = vec![0x91; 10_000];
    bytes.push(0xc0);
    let err = decode(&bytes, &Limits::default()).unwrap_err();
    assert!(matches!(err, DecodeError::TooDeep(_)), "{err}");
}

#[test]
fn error_detail_is_bounded() {
    // A hello whose agent_version is a map with a long key: serde names the
    // unexpected value; the message must stay short.
    let long = "k".repeat(5000);
    let v = serde_json::json!({"v": 1, "seq": 1, "ack": 0, "body": {"type": "hello", "agent_version": 5, long.clone(): 1}});
    let bytes = rmp_serde::to_vec_named(&v).unwrap();
    let err = decode(&bytes, &Limits::default()).unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn error_codes_round_trip_and_only_unsupported_frame_and_csr_are_not_fatal() {
    for c in ErrorCode::ALL {
        assert_eq!(ErrorCode::parse(c.as_str()), Some(*c));
        assert_eq!(
            c.is_fatal(),
            !matches!(c, ErrorCode::UnsupportedFrame | ErrorCode::CsrInvalid)
        );
    }
    assert_eq!(ErrorCode::parse("nope"), None);
}

#[test]
fn frame_type_names_match_the_wire() {
    let bytes = encode(&hello(), &Limits::default()).unwrap();
    let v: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(v["body"]["type"], hello().body.type_name());
}

#[test]
fn version_outside_u16_is_unsupported_and_negative_is_malformed() {
    let v = serde_json::json!({"v": 70000, "seq": 1, "ack": 0, "body": {"type": "hello", "agent_version": "x"}});
    let err = decode(&rmp_serde::to_vec_named(&v).unwrap(), &Limits::default()).unwrap_err();
    assert_eq!(err, DecodeError::UnsupportedVersion(u16::MAX));
    let v = serde_json::json!({"v": -1, "seq": 1, "ack": 0, "body": {"type": "hello", "agent_version": "x"}});
    let err = decode(&rmp_serde::to_vec_named(&v).unwrap(), &Limits::default()).unwrap_err();
    assert_eq!(err.error_code(), ErrorCode::MalformedFrame, "{err}");
}
