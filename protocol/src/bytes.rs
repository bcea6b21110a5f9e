//! Serde helper that puts `Vec<u8>` on the wire as MessagePack `bin`
//! (not as an array of integers) and accepts only `bin` back.

use serde::de::{Error as _, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    struct BinVisitor;
    impl<'de> Visitor<'de> for BinVisitor {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a MessagePack bin value")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
            Ok(v)
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Self::Value, E> {
            Ok(v.to_vec())
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Err(E::custom("expected bin, found str"))
        }
    }
    d.deserialize_byte_buf(BinVisitor).map_err(D::Error::custom)
}

/// The same for a list of byte strings: an array of `bin`.
pub(crate) mod list {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    struct BinRef<'a>(&'a [u8]);

    impl Serialize for BinRef<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(self.0)
        }
    }

    #[derive(Deserialize)]
    #[serde(transparent)]
    struct Bin(#[serde(with = "super")] Vec<u8>);

    pub(crate) fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|b| BinRef(b)))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<Bin>::deserialize(d)?
            .into_iter()
            .map(|b| b.0)
            .collect())
    }
}
