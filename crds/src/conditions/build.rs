//! Building, storing and comparing conditions with `metav1` semantics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::types;

/// Longest condition message the API server accepts (metav1.Condition).
pub const MAX_MESSAGE_BYTES: usize = 32768;

/// Status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
    Unknown,
}

// === impl Status ===

impl Status {
    /// The wire literal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl From<bool> for Status {
    fn from(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

/// The current time at second precision, as metav1.Time serializes it.
pub fn now() -> Time {
    let now = k8s_openapi::jiff::Timestamp::now();
    Time(k8s_openapi::jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

/// Builds a condition stamped with `at`. Messages longer than
/// [`MAX_MESSAGE_BYTES`] are cut at a character boundary.
pub fn new_at(
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
    at: Time,
) -> Condition {
    let mut message = message.into();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    Condition {
        type_: type_.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message,
        observed_generation,
        last_transition_time: at,
    }
}

/// [`new_at`] stamped with [`now`].
pub fn new(
    type_: &str,
    status: Status,
    reason: &str,
    message: impl Into<String>,
    observed_generation: Option<i64>,
) -> Condition {
    new_at(type_, status, reason, message, observed_generation, now())
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $type_:path;)*) => {$(
        $(#[$doc])*
        pub fn $name(
            status: Status,
            reason: &str,
            message: impl Into<String>,
            observed_generation: Option<i64>,
        ) -> Condition {
            new($type_, status, reason, message, observed_generation)
        }
    )*};
}

constructors! {
    /// ApplicationInstance `Ready`.
    ready => types::READY;
    /// ApplicationInstance `Reconciling`.
    reconciling => types::RECONCILING;
    /// ApplicationInstance `Degraded`.
    degraded => types::DEGRADED;
    /// ApplicationInstance `Suspended`.
    suspended => types::SUSPENDED;
    /// ApplicationInstance or Operation `Blocked`.
    blocked => types::BLOCKED;
    /// ApplicationInstance `Deleting`.
    deleting => types::DELETING;
    /// Operation `Accepted`.
    accepted => types::ACCEPTED;
    /// Operation `Running`.
    running => types::RUNNING;
    /// Operation `Succeeded`.
    succeeded => types::SUCCEEDED;
    /// Operation `Failed`.
    failed => types::FAILED;
    /// Operation `Cancelled`.
    cancelled => types::CANCELLED;
    /// Cluster `Connected`.
    connected => types::CONNECTED;
    /// Cluster `Disconnected` (upstream compatibility).
    disconnected => types::DISCONNECTED;
    /// Cluster `Authenticated`.
    authenticated => types::AUTHENTICATED;
    /// Cluster `ControllersHealthy`.
    controllers_healthy => types::CONTROLLERS_HEALTHY;
    /// Cluster `BufferOverflow`.
    buffer_overflow => types::BUFFER_OVERFLOW;
    /// Cluster `ClockSkew`.
    clock_skew => types::CLOCK_SKEW;
}

/// Stores `new` in `conditions`, replacing the condition of the same type.
///
/// `lastTransitionTime` changes only when the status changes (it is kept from
/// the old condition otherwise); reason, message and observedGeneration always
/// take the new values. Returns whether anything but the time changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        None => {
            conditions.push(new);
            true
        }
        Some(old) => {
            let changed = !same_ignoring_time(old, &new);
            let keep_time = old.status == new.status;
            let last_transition_time = if keep_time {
                old.last_transition_time.clone()
            } else {
                new.last_transition_time.clone()
            };
            *old = Condition {
                last_transition_time,
                ..new
            };
            changed
        }
    }
}

/// Removes the condition of type `type_`; returns whether one was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

/// The condition of type `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == Status::True.as_str())
}

/// Two conditions are equal apart from `lastTransitionTime`.
pub fn same_ignoring_time(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

/// Two condition lists hold the same conditions (in any order) apart from
/// `lastTransitionTime`: nothing to write when true.
pub fn eq_ignoring_time(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|x| find(b, &x.type_).is_some_and(|y| same_ignoring_time(x, y)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::reasons;

    fn at(second: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
    }

    fn cond(type_: &str, status: Status, reason: &str, generation: i64, t: i64) -> Condition {
        new_at(type_, status, reason, "msg", Some(generation), at(t))
    }

    #[test]
    fn set_condition_keeps_transition_time_unless_status_changes() {
        // (old, new, expected stored, expected "changed")
        let cases = [
            (
                "same status, new reason and generation: time kept",
                Some(cond("Ready", Status::False, "Installing", 1, 10)),
                cond("Ready", Status::False, "HelmReleaseFailed", 2, 20),
                cond("Ready", Status::False, "HelmReleaseFailed", 2, 10),
                true,
            ),
            (
                "status flips: time taken from the new condition",
                Some(cond("Ready", Status::False, "Installing", 1, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 1, 20),
                cond("Ready", Status::True, "HelmReleaseReady", 1, 20),
                true,
            ),
            (
                "identical apart from time: nothing changed, time kept",
                Some(cond("Ready", Status::True, "HelmReleaseReady", 3, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 3, 99),
                cond("Ready", Status::True, "HelmReleaseReady", 3, 10),
                false,
            ),
            (
                "only observedGeneration moves: changed, time kept",
                Some(cond("Ready", Status::True, "HelmReleaseReady", 3, 10)),
                cond("Ready", Status::True, "HelmReleaseReady", 4, 99),
                cond("Ready", Status::True, "HelmReleaseReady", 4, 10),
                true,
            ),
            (
                "absent: appended as given",
                None,
                cond("Ready", Status::Unknown, "Reconciling", 1, 5),
                cond("Ready", Status::Unknown, "Reconciling", 1, 5),
                true,
            ),
        ];
        for (name, old, new, want, want_changed) in cases {
            let other = cond("Degraded", Status::False, "Recovered", 1, 1);
            let mut list = vec![other.clone()];
            list.extend(old);
            let changed = set_condition(&mut list, new);
            assert_eq!(changed, want_changed, "{name}");
            assert_eq!(list.len(), 2, "{name}: one condition per type");
            assert_eq!(find(&list, "Ready"), Some(&want), "{name}");
            assert_eq!(
                find(&list, "Degraded"),
                Some(&other),
                "{name}: others untouched"
            );
        }
    }

    #[test]
    fn eq_ignoring_time_ignores_order_and_time_only() {
        let a = vec![
            cond("Ready", Status::True, "HelmReleaseReady", 1, 1),
            cond("Blocked", Status::False, "Unblocked", 1, 2),
        ];
        let reordered_later = vec![
            cond("Blocked", Status::False, "Unblocked", 1, 50),
            cond("Ready", Status::True, "HelmReleaseReady", 1, 60),
        ];
        assert!(eq_ignoring_time(&a, &reordered_later));
        let cases = [
            cond("Ready", Status::False, "HelmReleaseReady", 1, 1),
            cond("Ready", Status::True, "Upgraded", 1, 1),
            cond("Ready", Status::True, "HelmReleaseReady", 2, 1),
            new_at(
                "Ready",
                Status::True,
                "HelmReleaseReady",
                "other",
                Some(1),
                at(1),
            ),
        ];
        for changed in cases {
            let mut b = a.clone();
            b[0] = changed.clone();
            assert!(!eq_ignoring_time(&a, &b), "{changed:?}");
        }
        assert!(!eq_ignoring_time(&a, &a[..1]));
    }

    #[test]
    fn constructors_set_type_status_reason_and_generation() {
        type Make = fn(Status, &str, String, Option<i64>) -> Condition;
        let cases: [(Make, &str); 16] = [
            (|s, r, m, g| ready(s, r, m, g), types::READY),
            (|s, r, m, g| reconciling(s, r, m, g), types::RECONCILING),
            (|s, r, m, g| degraded(s, r, m, g), types::DEGRADED),
            (|s, r, m, g| suspended(s, r, m, g), types::SUSPENDED),
            (|s, r, m, g| blocked(s, r, m, g), types::BLOCKED),
            (|s, r, m, g| deleting(s, r, m, g), types::DELETING),
            (|s, r, m, g| accepted(s, r, m, g), types::ACCEPTED),
            (|s, r, m, g| running(s, r, m, g), types::RUNNING),
            (|s, r, m, g| succeeded(s, r, m, g), types::SUCCEEDED),
            (|s, r, m, g| failed(s, r, m, g), types::FAILED),
            (|s, r, m, g| cancelled(s, r, m, g), types::CANCELLED),
            (|s, r, m, g| connected(s, r, m, g), types::CONNECTED),
            (|s, r, m, g| disconnected(s, r, m, g), types::DISCONNECTED),
            (|s, r, m, g| authenticated(s, r, m, g), types::AUTHENTICATED),
            (
                |s, r, m, g| controllers_healthy(s, r, m, g),
                types::CONTROLLERS_HEALTHY,
            ),
            (
                |s, r, m, g| buffer_overflow(s, r, m, g),
                types::BUFFER_OVERFLOW,
            ),
        ];
        for (make, type_) in cases {
            let c = make(Status::False, reasons::STABLE, "m".into(), Some(7));
            assert_eq!(c.type_, type_);
            assert_eq!(c.status, "False");
            assert_eq!(c.reason, "Stable");
            assert_eq!(c.message, "m");
            assert_eq!(c.observed_generation, Some(7));
        }
    }

    #[test]
    fn long_messages_are_cut_at_a_char_boundary() {
        let message = "é".repeat(MAX_MESSAGE_BYTES); // 2 bytes each
        let c = new(
            "Ready",
            Status::False,
            reasons::HELM_RELEASE_FAILED,
            message,
            None,
        );
        assert!(c.message.len() <= MAX_MESSAGE_BYTES);
        assert_eq!(c.message.len(), MAX_MESSAGE_BYTES);
        assert!(c.message.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn vocabulary_is_unique_and_matches_the_server_patterns() {
        fn reason_ok(r: &str) -> bool {
            // ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$ (metav1.Condition.reason)
            let b = r.as_bytes();
            !b.is_empty()
                && b.len() <= 1024
                && b[0].is_ascii_alphabetic()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"_,:".contains(c))
                && (b[b.len() - 1].is_ascii_alphanumeric() || b[b.len() - 1] == b'_')
        }
        let mut seen = std::collections::BTreeSet::new();
        for r in reasons::ALL {
            assert!(reason_ok(r), "{r}");
            assert!(seen.insert(*r), "duplicate reason {r}");
        }
        for list in [
            types::APPLICATION_INSTANCE,
            types::OPERATION,
            types::CLUSTER,
        ] {
            let unique: std::collections::BTreeSet<_> = list.iter().collect();
            assert_eq!(unique.len(), list.len());
            assert!(list.iter().all(|t| reason_ok(t)));
        }
        // The documented upstream names are spelled exactly so.
        for r in [
            "HelmReleaseReady",
            "HelmReleaseFailed",
            "ChartUnreachable",
            "ConflictingOperation",
            "AwaitingApproval",
            "NamespaceNotGated",
            "EngineCompleted",
            "EngineFailed",
            "UserCancelled",
            "WaitingForChildResources",
            "DependencyMissing",
            "Placeholder",
        ] {
            assert!(reasons::ALL.contains(&r), "{r}");
        }
    }

    #[test]
    fn helpers_find_and_remove() {
        let mut list = vec![cond("Ready", Status::True, "HelmReleaseReady", 1, 1)];
        assert!(is_true(&list, types::READY));
        assert!(!is_true(&list, types::DEGRADED));
        assert!(remove_condition(&mut list, types::READY));
        assert!(!remove_condition(&mut list, types::READY));
        assert!(list.is_empty());
        assert_eq!(Status::from(true), Status::True);
        assert_eq!(Status::from(false).as_str(), "False");
    }

    #[test]
    fn now_has_second_precision() {
        assert_eq!(now().0.subsec_nanosecond(), 0);
    }
}
