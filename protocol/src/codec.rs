//! Encoding and decoding of envelopes, with size and shape checks first.
//!
//! Decoding never trusts a length claimed inside the bytes: a bounded scan
//! checks the whole MessagePack structure against the buffer (no truncation,
//! no trailing bytes, bounded nesting) before serde sees it.

use crate::frame::{Envelope, Frame};
use crate::limits::Limits;
use crate::version::Version;
use serde::Deserialize;
use std::fmt;

/// Stable codes of the `Error` frame (and of decode failures).
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The bytes were not a valid envelope.
    MalformedFrame,
    /// The envelope exceeded `max_frame_bytes`.
    FrameTooLarge,
    /// The envelope carried a version other than the negotiated one.
    UnsupportedVersion,
    /// The frame `type` is unknown to the receiver (the connection stays up).
    UnsupportedFrame,
    /// `seq` did not grow by one, or `ack` named an unsent `seq`.
    SequenceError,
    /// The hub sent more unacknowledged intents than `max_in_flight`.
    TooManyInFlight,
    /// A frame arrived that is not allowed in this state or direction.
    UnexpectedFrame,
    /// The peer's identity is not (or no longer) allowed.
    Unauthorized,
    /// The sender failed internally.
    Internal,
    /// A `RenewCert` CSR was refused (the connection stays up).
    CsrInvalid,
    /// A chunked frame broke the chunk rules (order, count, size or time).
    ChunkError,
    /// A bucketed digest broke its rules (count, hash length, bucket list).
    DigestError,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::UnsupportedFrame,
        ErrorCode::SequenceError,
        ErrorCode::TooManyInFlight,
        ErrorCode::UnexpectedFrame,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::CsrInvalid,
        ErrorCode::ChunkError,
        ErrorCode::DigestError,
    ];

    /// The code as written on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::SequenceError => "sequence_error",
            ErrorCode::TooManyInFlight => "too_many_in_flight",
            ErrorCode::UnexpectedFrame => "unexpected_frame",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::CsrInvalid => "csr_invalid",
            ErrorCode::ChunkError => "chunk_error",
            ErrorCode::DigestError => "digest_error",
        }
    }

    /// Parses a wire code; `None` for codes this build does not know.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// WebSocket close code to use when this error ends the connection.
    pub const fn close_code(self) -> u16 {
        match self {
            ErrorCode::FrameTooLarge => 1009,
            ErrorCode::Unauthorized | ErrorCode::ChunkError | ErrorCode::DigestError => 1008,
            ErrorCode::Internal => 1011,
            _ => 1002,
        }
    }

    /// Whether the connection must be closed after sending this error.
    pub const fn is_fatal(self) -> bool {
        !matches!(self, ErrorCode::UnsupportedFrame | ErrorCode::CsrInvalid)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why bytes from the peer could not be decoded into an [`Envelope`].
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the limit; nothing was parsed.
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Input size.
        size: usize,
        /// Limit in effect.
        max: usize,
    },
    /// The input ends inside a value.
    #[error("frame is truncated")]
    Truncated,
    /// Bytes follow the envelope.
    #[error("{0} trailing bytes after the envelope")]
    TrailingBytes(usize),
    /// The structure nests deeper than the limit.
    #[error("frame nests deeper than {0} levels")]
    TooDeep(usize),
    /// The envelope version is not the one this side speaks (values above
    /// `u16::MAX` are reported as `u16::MAX`).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// Valid MessagePack that is not a valid envelope.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl DecodeError {
    /// The `Error` frame code to send back.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::Oversized { .. } => ErrorCode::FrameTooLarge,
            DecodeError::UnsupportedVersion(_) => ErrorCode::UnsupportedVersion,
            _ => ErrorCode::MalformedFrame,
        }
    }
}

/// Why an envelope could not be encoded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The encoded envelope is larger than the limit; split or shrink it.
    #[error("encoded frame of {size} bytes exceeds the limit of {max} bytes")]
    Oversized {
        /// Encoded size.
        size: usize,
        /// Limit in effect.
        max: usize,
    },
    /// The value cannot be represented (e.g. an `Unsupported` frame).
    #[error("frame cannot be encoded: {0}")]
    Unencodable(String),
}

/// Encodes an envelope as named MessagePack and checks the size limit.
pub fn encode(env: &Envelope, limits: &Limits) -> Result<Vec<u8>, EncodeError> {
    let bytes =
        rmp_serde::to_vec_named(env).map_err(|e| EncodeError::Unencodable(e.to_string()))?;
    if bytes.len() > limits.max_frame_bytes {
        return Err(EncodeError::Oversized {
            size: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    Ok(bytes)
}

/// Decodes one envelope, checking size, structure and version.
///
/// An unknown frame `type` is not an error: it yields [`Frame::Unsupported`].
pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    if bytes.len() > limits.max_frame_bytes {
        return Err(DecodeError::Oversized {
            size: bytes.len(),
            max: limits.max_frame_bytes,
        });
    }
    scan(bytes, limits.max_depth)?;
    let env: Envelope = match from_slice(bytes, limits.max_depth) {
        Ok(env) => env,
        Err(e) => {
            // A future version may change the body; report the version, not the shape.
            if let Ok(h) = from_slice::<Header>(bytes, limits.max_depth)
                && u16::try_from(h.v)
                    .ok()
                    .and_then(Version::from_number)
                    .is_none()
            {
                return Err(DecodeError::UnsupportedVersion(
                    u16::try_from(h.v).unwrap_or(u16::MAX),
                ));
            }
            return Err(e);
        }
    };
    if Version::from_number(env.v).is_none() {
        return Err(DecodeError::UnsupportedVersion(env.v));
    }
    if let Frame::Unsupported { .. } = env.body {
        let t: TypeOnly = from_slice(bytes, limits.max_depth)?;
        return Ok(Envelope {
            body: Frame::Unsupported {
                type_name: t.body.type_name,
            },
            ..env
        });
    }
    Ok(env)
}

#[derive(Deserialize)]
struct Header {
    v: u64,
}

#[derive(Deserialize)]
struct TypeOnly {
    body: TypeName,
}

#[derive(Deserialize)]
struct TypeName {
    #[serde(rename = "type")]
    type_name: String,
}

/// Longest part of a serde message kept in an error (peer data may be echoed).
const MAX_ERROR_DETAIL: usize = 200;

pub(crate) fn from_slice<'a, T: Deserialize<'a>>(
    bytes: &'a [u8],
    max_depth: usize,
) -> Result<T, DecodeError> {
    let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
    de.set_max_depth(max_depth.saturating_add(2));
    T::deserialize(&mut de).map_err(|e| {
        use rmp_serde::decode::Error as E;
        match e {
            E::InvalidMarkerRead(ref io) | E::InvalidDataRead(ref io)
                if io.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                DecodeError::Truncated
            }
            E::DepthLimitExceeded => DecodeError::TooDeep(max_depth),
            other => {
                let mut s = other.to_string();
                if s.len() > MAX_ERROR_DETAIL {
                    let mut cut = MAX_ERROR_DETAIL;
                    while !s.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    s.truncate(cut);
                    s.push('…');
                }
                DecodeError::Malformed(s)
            }
        }
    })
}

/// Walks one MessagePack value without allocating per claimed length:
/// every length must fit in what remains, nesting is bounded, and the value
/// must end exactly at the end of the buffer. Time is linear in the input.
pub(crate) fn scan(buf: &[u8], max_depth: usize) -> Result<(), DecodeError> {
    let mut pos = 0usize;
    // Remaining child values at each open level; the root is one value.
    let mut stack: Vec<u64> = Vec::with_capacity(16);
    stack.push(1);
    while let Some(top) = stack.last_mut() {
        if *top == 0 {
            stack.pop();
            continue;
        }
        *top -= 1;
        let b = *buf.get(pos).ok_or(DecodeError::Truncated)?;
        pos += 1;
        let (skip, children): (usize, u64) = match b {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(b & 0x0f)),
            0x90..=0x9f => (0, u64::from(b & 0x0f)),
            0xa0..=0xbf => (usize::from(b & 0x1f), 0),
            0xc1 => return Err(DecodeError::Malformed("reserved marker 0xc1".into())),
            0xc4 | 0xd9 => (read_len(buf, &mut pos, 1)?, 0),
            0xc5 | 0xda => (read_len(buf, &mut pos, 2)?, 0),
            0xc6 | 0xdb => (read_len(buf, &mut pos, 4)?, 0),
            0xc7 => (read_len(buf, &mut pos, 1)?.saturating_add(1), 0),
            0xc8 => (read_len(buf, &mut pos, 2)?.saturating_add(1), 0),
            0xc9 => (read_len(buf, &mut pos, 4)?.saturating_add(1), 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (0, read_len(buf, &mut pos, 2)? as u64),
            0xdd => (0, read_len(buf, &mut pos, 4)? as u64),
            0xde => (0, 2 * read_len(buf, &mut pos, 2)? as u64),
            0xdf => (0, 2 * read_len(buf, &mut pos, 4)? as u64),
        };
        if skip > buf.len() - pos {
            return Err(DecodeError::Truncated);
        }
        pos += skip;
        if children > 0 {
            // Each child needs at least one byte: a claim beyond the input is a truncation.
            if children > (buf.len() - pos) as u64 {
                return Err(DecodeError::Truncated);
            }
            if stack.len() > max_depth {
                return Err(DecodeError::TooDeep(max_depth));
            }
            stack.push(children);
        }
    }
    if pos != buf.len() {
        return Err(DecodeError::TrailingBytes(buf.len() - pos));
    }
    Ok(())
}

fn read_len(buf: &[u8], pos: &mut usize, n: usize) -> Result<usize, DecodeError> {
    if n > buf.len() - *pos {
        return Err(DecodeError::Truncated);
    }
    let mut v: usize = 0;
    for &b in &buf[*pos..*pos + n] {
        v = (v << 8) | usize::from(b);
    }
    *pos += n;
    Ok(v)
}
