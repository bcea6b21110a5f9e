//! Per-cluster fault injection, switched through the admin API
//! (`PUT /v1/clusters/{cluster}/faults`). Every switch acts on the hub → agent
//! direction of that cluster's tunnel, so tests can attack an agent from the
//! hub's side. All switches are off by default; they survive restarts.

use serde::{Deserialize, Serialize};

/// Fault switches for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Close the connection abruptly (no Goodbye, no close frame) after this
    /// many frames were sent on it; `0` drops right after the handshake,
    /// before Welcome. A live tunnel that already sent that many frames is
    /// dropped as soon as the switch is set.
    pub drop_after_frames: Option<u32>,
    /// Hold every outgoing frame this long before sending it.
    pub delay_ms: Option<u64>,
    /// Send every intent twice (same id, same signature).
    pub duplicate: bool,
    /// Send each batch of pending intents in reverse order (needs ≥ 2 pending).
    pub reorder: bool,
    /// Flip one bit of every intent signature.
    pub corrupt_signature: bool,
    /// Sign intents that expired before they were sent.
    pub expired: bool,
    /// Address intents to another cluster (`<cluster>-foreign`), correctly signed.
    pub foreign_cluster: bool,
    /// Send one binary frame larger than the protocol's maximum frame size
    /// right after Welcome.
    pub oversized_frame: bool,
}

impl Faults {
    /// True when no switch is on.
    pub fn is_clear(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_unknown_switch_refused() {
        let f: Faults = serde_json::from_str(r#"{"duplicate": true, "delay_ms": 5}"#).unwrap();
        assert!(f.duplicate && f.delay_ms == Some(5) && !f.reorder);
        let back: Faults = serde_json::from_value(serde_json::to_value(&f).unwrap()).unwrap();
        assert_eq!(back, f);
        assert!(serde_json::from_str::<Faults>(r#"{"explode": true}"#).is_err());
        assert!(Faults::default().is_clear());
    }
}
