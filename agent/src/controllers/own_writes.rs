//! Watch events that only echo the controller's own writes.
//!
//! Every write the ApplicationInstance controller makes (a HelmRelease or
//! source apply, a status write) comes back as a watch event and, without
//! this filter, as one more reconcile of the instance, which reads again the
//! objects it has just written and finds nothing to do. At a thousand new
//! instances those echoes are two extra reconciles per instance.
//!
//! The resource version a write returns is remembered per object UID; a
//! watch event carrying exactly that version is the echo of the write and
//! triggers nothing (the reconcile that wrote it already acted on that
//! state). Any other change has another resource version and passes: Flux's
//! status updates, someone else's edit, a deletion, a relist after an API
//! server restart that found a newer object. The table is bounded: past
//! [`MAX_ENTRIES`] it is cleared, which only costs the reconciles it saved.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Writes remembered at once (one per object written and not yet echoed).
pub const MAX_ENTRIES: usize = 65_536;

/// Resource versions of this controller's own writes, until their echo.
#[derive(Debug, Default)]
pub struct OwnWrites {
    /// Object UID → resource version the write returned.
    versions: Mutex<HashMap<String, String>>,
}

impl OwnWrites {
    /// Remembers the object a write returned.
    pub fn record(&self, written: &ObjectMeta) {
        let (Some(uid), Some(rv)) = (&written.uid, &written.resource_version) else {
            return;
        };
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= MAX_ENTRIES && !v.contains_key(uid) {
            v.clear();
        }
        v.insert(uid.clone(), rv.clone());
    }

    /// Whether `seen` (from a watch event) is the echo of a remembered write;
    /// an echo is forgotten once seen, and so is the write of an object being
    /// deleted. Another version leaves the entry: it may be an older event
    /// still on its way before the echo.
    pub fn is_echo(&self, seen: &ObjectMeta) -> bool {
        let (Some(uid), Some(rv)) = (&seen.uid, &seen.resource_version) else {
            return false;
        };
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        match v.get(uid) {
            Some(mine) if mine == rv => {
                v.remove(uid);
                true
            }
            Some(_) if seen.deletion_timestamp.is_some() => {
                v.remove(uid);
                false
            }
            _ => false,
        }
    }

    /// Entries held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(uid: &str, rv: &str) -> ObjectMeta {
        ObjectMeta {
            uid: Some(uid.into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_echo_of_a_write_is_recognised_once() {
        let w = OwnWrites::default();
        w.record(&meta("u1", "10"));
        assert!(w.is_echo(&meta("u1", "10")));
        assert!(
            !w.is_echo(&meta("u1", "10")),
            "a second delivery is not swallowed"
        );
        assert!(w.is_empty());
    }

    #[test]
    fn other_versions_and_other_objects_pass() {
        let w = OwnWrites::default();
        w.record(&meta("u1", "10"));
        assert!(!w.is_echo(&meta("u1", "11")), "someone else's later change");
        assert!(!w.is_echo(&meta("u2", "10")), "another object");
        assert!(!w.is_echo(&ObjectMeta::default()), "no uid or version");
        // The entry stays until its echo comes (events arrive in order).
        assert!(w.is_echo(&meta("u1", "10")));
    }

    #[test]
    fn a_newer_write_replaces_the_older_one() {
        let w = OwnWrites::default();
        w.record(&meta("u1", "10"));
        w.record(&meta("u1", "12"));
        assert!(!w.is_echo(&meta("u1", "10")));
        assert!(w.is_echo(&meta("u1", "12")));
    }

    #[test]
    fn a_deletion_is_never_an_echo_and_clears_the_entry() {
        let w = OwnWrites::default();
        w.record(&meta("u1", "10"));
        let mut gone = meta("u1", "15");
        gone.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        assert!(!w.is_echo(&gone));
        assert!(w.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let w = OwnWrites::default();
        for i in 0..MAX_ENTRIES + 5 {
            w.record(&meta(&format!("u{i}"), "1"));
        }
        assert!(w.len() <= MAX_ENTRIES);
    }
}
