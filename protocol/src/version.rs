//! Protocol versions and their WebSocket subprotocol names.

use std::fmt;

/// Path of the tunnel endpoint on the hub (`wss://HOST:PORT/v1/tunnel`).
pub const TUNNEL_PATH: &str = "/v1/tunnel";

/// WebSocket subprotocol name of protocol v1 (MessagePack envelopes).
pub const SUBPROTOCOL_V1: &str = "vworkspace.v1+msgpack";

/// A protocol version this crate can speak.
///
/// The number travels in the envelope (`v`) and names the subprotocol.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// Protocol v1.
    V1,
}

impl Version {
    /// Every version this build supports, oldest first.
    pub const SUPPORTED: &'static [Version] = &[Version::V1];

    /// The newest version this build supports.
    pub const LATEST: Version = Version::V1;

    /// The number carried in [`crate::Envelope::v`].
    pub const fn number(self) -> u16 {
        match self {
            Version::V1 => 1,
        }
    }

    /// The version for an envelope number, if this build knows it.
    pub const fn from_number(n: u16) -> Option<Version> {
        match n {
            1 => Some(Version::V1),
            _ => None,
        }
    }

    /// The WebSocket subprotocol that selects this version.
    pub const fn subprotocol(self) -> &'static str {
        match self {
            Version::V1 => SUBPROTOCOL_V1,
        }
    }

    /// The version a subprotocol name selects, if this build knows it.
    pub fn from_subprotocol(name: &str) -> Option<Version> {
        Self::SUPPORTED
            .iter()
            .copied()
            .find(|v| v.subprotocol() == name.trim())
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.subprotocol())
    }
}

/// Picks the highest version both sides speak.
///
/// `offered` are the subprotocol names the client sent (in any order; unknown
/// names are ignored), `supported` the versions this side accepts. `None`
/// means the handshake must be refused.
pub fn negotiate(offered: &[&str], supported: &[Version]) -> Option<Version> {
    offered
        .iter()
        .filter_map(|name| Version::from_subprotocol(name))
        .filter(|v| supported.contains(v))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiate_picks_common_version_and_ignores_unknown_names() {
        assert_eq!(
            negotiate(
                &["vworkspace.v9+msgpack", SUBPROTOCOL_V1, "chat"],
                Version::SUPPORTED
            ),
            Some(Version::V1)
        );
        assert_eq!(
            negotiate(&["vworkspace.v2+msgpack"], Version::SUPPORTED),
            None
        );
        assert_eq!(negotiate(&[], Version::SUPPORTED), None);
        assert_eq!(negotiate(&[SUBPROTOCOL_V1], &[]), None);
    }

    #[test]
    fn numbers_and_names_round_trip() {
        for v in Version::SUPPORTED {
            assert_eq!(Version::from_number(v.number()), Some(*v));
            assert_eq!(Version::from_subprotocol(v.subprotocol()), Some(*v));
        }
        assert_eq!(Version::from_number(0), None);
        assert_eq!(Version::from_number(2), None);
    }
}
