//! Pure mapping of Flux HelmRelease (and chart source) status to the
//! ApplicationInstance conditions Ready, Reconciling and Degraded.
//!
//! Ready is Unknown only while helm-controller has reported nothing for the
//! current HelmRelease; a Flux failure is Ready=False with Flux's reason (or a
//! vocabulary reason wrapping it) and message.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Deserialize;
use serde_json::Value;
use vworkspace_crds::conditions::{self, Status, reasons, types};

/// A condition as Flux writes it (only the fields read here).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct FluxCondition {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Flux reason.
    #[serde(default)]
    pub reason: String,
    /// Flux message.
    #[serde(default)]
    pub message: String,
    /// The generation this condition is about.
    #[serde(default, rename = "observedGeneration")]
    pub observed_generation: Option<i64>,
}

/// What the mapping reads from a HelmRelease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleaseView {
    /// metadata.generation.
    pub generation: Option<i64>,
    /// status.observedGeneration.
    pub observed_generation: Option<i64>,
    /// status.conditions.
    pub conditions: Vec<FluxCondition>,
    /// Chart versions in status.history, newest first, with their Helm status.
    pub history: Vec<(String, String)>,
}

/// Flux reasons relayed verbatim on Ready=False (they are in the vocabulary).
const RELAYED: [&str; 3] = [
    reasons::INSTALL_FAILED,
    reasons::UPGRADE_FAILED,
    reasons::RECONCILIATION_FAILED,
];
/// Flux reasons that mean the chart could not be fetched.
const SOURCE_FAILURES: [&str; 2] = ["ArtifactFailed", "SourceNotReady"];

// === impl ReleaseView ===

impl ReleaseView {
    /// Reads a HelmRelease object (as JSON); tolerant of missing fields.
    pub fn from_object(generation: Option<i64>, data: &Value) -> Self {
        let status = &data["status"];
        let conditions = flux_conditions(status);
        let history = status["history"]
            .as_array()
            .map(|h| {
                h.iter()
                    .map(|e| {
                        (
                            chart_version(e).to_string(),
                            e["status"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            generation,
            observed_generation: status["observedGeneration"].as_i64(),
            conditions,
            history,
        }
    }

    fn condition(&self, type_: &str) -> Option<&FluxCondition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Helm has deployed this release successfully at least once.
    pub fn had_success(&self) -> bool {
        self.history
            .iter()
            .any(|(_, s)| s == "deployed" || s == "superseded")
    }

    /// Chart version of the newest release, when it is deployed.
    pub fn deployed_version(&self) -> Option<&str> {
        self.history
            .first()
            .filter(|(_, s)| s == "deployed")
            .map(|(v, _)| v.as_str())
    }

    /// helm-controller has not yet looked at the current spec.
    ///
    /// `status.observedGeneration` alone is not enough: helm-controller leaves
    /// it at -1 (the CRD default) or the last settled generation while it
    /// retries or waits for the chart, yet stamps its Ready condition with the
    /// generation it judged.
    pub fn is_stale(&self) -> bool {
        let Some(g) = self.generation else {
            return false;
        };
        let observed = self.observed_generation.is_some_and(|o| o >= g);
        let judged = self
            .condition("Ready")
            .and_then(|c| c.observed_generation)
            .is_some_and(|o| o >= g);
        !(observed || judged)
    }

    /// Ready=True at the current generation.
    pub fn is_ready(&self) -> bool {
        !self.is_stale() && self.condition("Ready").is_some_and(|c| c.status == "True")
    }
}

/// The chart version of one `status.history` entry, as the instance names it.
///
/// For a chart from an OCIRepository, helm-controller appends the artifact's
/// digest as build metadata (`0.2.0` becomes `0.2.0+f75e78c5ee5d`) and records
/// the digest in `ociDigest`; the version the instance asked for is the part
/// before it.
pub fn chart_version(entry: &Value) -> &str {
    let version = entry["chartVersion"].as_str().unwrap_or_default();
    let from_oci = entry["ociDigest"].as_str().is_some_and(|d| !d.is_empty());
    match version.rsplit_once('+') {
        Some((base, digest))
            if from_oci
                || (digest.len() == 12
                    && digest
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))) =>
        {
            base
        }
        _ => version,
    }
}

/// Parses `status.conditions` of a Flux object.
pub fn flux_conditions(status: &Value) -> Vec<FluxCondition> {
    status["conditions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| serde_json::from_value(c.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Ready, Reconciling and Degraded for an instance whose HelmRelease is
/// `release` (None: not created or no status yet) and whose chart source
/// reports `source` conditions.
pub fn map(
    release: Option<&ReleaseView>,
    source: &[FluxCondition],
    generation: Option<i64>,
    at: &Time,
) -> Vec<Condition> {
    let c = |type_: &str, status: Status, reason: &str, message: String| {
        conditions::new_at(type_, status, reason, message, generation, at.clone())
    };
    let source_failure = source
        .iter()
        .find(|s| s.type_ == "Ready" && s.status == "False");

    let Some(hr) = release.filter(|r| !r.conditions.is_empty()) else {
        if let Some(sf) = source_failure {
            return vec![
                c(
                    types::READY,
                    Status::False,
                    reasons::CHART_UNREACHABLE,
                    format!("{}: {}", sf.reason, sf.message),
                ),
                c(
                    types::RECONCILING,
                    Status::True,
                    reasons::CHART_SOURCE_SYNCING,
                    "waiting for the chart source".into(),
                ),
                c(
                    types::DEGRADED,
                    Status::False,
                    reasons::RECOVERED,
                    String::new(),
                ),
            ];
        }
        return vec![
            c(
                types::READY,
                Status::Unknown,
                reasons::RECONCILING,
                "waiting for helm-controller to report status".into(),
            ),
            c(
                types::RECONCILING,
                Status::True,
                reasons::HELM_RELEASE_INSTALLING,
                "HelmRelease created".into(),
            ),
            c(
                types::DEGRADED,
                Status::False,
                reasons::RECOVERED,
                String::new(),
            ),
        ];
    };

    let upgrading = hr.had_success();
    let (progress_ready, progress_reconciling) = if upgrading {
        (reasons::UPGRADING, reasons::HELM_RELEASE_UPGRADING)
    } else {
        (reasons::INSTALLING, reasons::HELM_RELEASE_INSTALLING)
    };
    let ready = hr.condition("Ready");
    let flux_reconciling = hr
        .condition("Reconciling")
        .is_some_and(|c| c.status == "True");
    let stalled = hr.condition("Stalled").is_some_and(|c| c.status == "True");
    let released_false = hr
        .condition("Released")
        .is_some_and(|c| c.status == "False");
    let degraded_false = || {
        c(
            types::DEGRADED,
            Status::False,
            reasons::RECOVERED,
            String::new(),
        )
    };
    let stable = || {
        c(
            types::RECONCILING,
            Status::False,
            reasons::STABLE,
            String::new(),
        )
    };

    if hr.is_stale() || ready.is_none_or(|r| r.status == "Unknown") {
        let message = match ready {
            Some(r) if !hr.is_stale() && !r.message.is_empty() => r.message.clone(),
            _ => format!(
                "waiting for helm-controller to apply generation {}",
                hr.generation.unwrap_or_default()
            ),
        };
        let degraded = if released_false && upgrading {
            c(
                types::DEGRADED,
                Status::True,
                reasons::HELM_RELEASE_DEGRADED,
                "the previous release is failing".into(),
            )
        } else {
            degraded_false()
        };
        return vec![
            c(types::READY, Status::False, progress_ready, message.clone()),
            c(
                types::RECONCILING,
                Status::True,
                progress_reconciling,
                message,
            ),
            degraded,
        ];
    }
    let ready = ready.cloned().unwrap_or_default();
    let remediated = hr
        .condition("Remediated")
        .filter(|r| r.status == "True" && r.reason == "RollbackSucceeded");
    if ready.reason == "RollbackSucceeded" || (ready.status == "True" && remediated.is_some()) {
        let message = remediated.map_or(ready.message.clone(), |r| r.message.clone());
        return vec![
            c(
                types::READY,
                Status::True,
                reasons::ROLLED_BACK,
                message.clone(),
            ),
            stable(),
            c(
                types::DEGRADED,
                Status::True,
                reasons::UPGRADE_FAILED,
                message,
            ),
        ];
    }
    if ready.status == "True" {
        return vec![
            c(
                types::READY,
                Status::True,
                reasons::HELM_RELEASE_READY,
                ready.message,
            ),
            stable(),
            degraded_false(),
        ];
    }
    // Ready=False: a Flux failure.
    let (reason, message) = if SOURCE_FAILURES.contains(&ready.reason.as_str()) {
        let message = source_failure.map_or(ready.message.clone(), |s| s.message.clone());
        (reasons::CHART_UNREACHABLE, message)
    } else if let Some(r) = RELAYED.iter().find(|r| **r == ready.reason) {
        (*r, ready.message.clone())
    } else {
        (
            reasons::HELM_RELEASE_FAILED,
            format!("{}: {}", ready.reason, ready.message),
        )
    };
    let reconciling = if flux_reconciling && !stalled {
        c(
            types::RECONCILING,
            Status::True,
            progress_reconciling,
            "helm-controller is retrying".into(),
        )
    } else {
        stable()
    };
    let degraded = if upgrading {
        c(
            types::DEGRADED,
            Status::True,
            reasons::HELM_RELEASE_DEGRADED,
            message.clone(),
        )
    } else {
        degraded_false()
    };
    vec![
        c(types::READY, Status::False, reason, message),
        reconciling,
        degraded,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fc(t: &str, s: &str, r: &str, m: &str) -> FluxCondition {
        FluxCondition {
            type_: t.into(),
            status: s.into(),
            reason: r.into(),
            message: m.into(),
            observed_generation: None,
        }
    }

    fn at() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn view(g: i64, o: i64, conds: Vec<FluxCondition>, history: &[(&str, &str)]) -> ReleaseView {
        ReleaseView {
            generation: Some(g),
            observed_generation: Some(o),
            conditions: conds,
            history: history
                .iter()
                .map(|(v, s)| (v.to_string(), s.to_string()))
                .collect(),
        }
    }

    type Want = [(&'static str, &'static str); 3];

    #[test]
    fn mapping_table() {
        let deployed = [("1.0.0", "deployed")];
        let failed_upgrade = [("1.1.0", "failed"), ("1.0.0", "superseded")];
        let cases: Vec<(&str, Option<ReleaseView>, Vec<FluxCondition>, Want)> = vec![
            (
                "no HelmRelease status yet",
                None,
                vec![],
                [
                    ("Unknown", "Reconciling"),
                    ("True", "HelmReleaseInstalling"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "HelmRelease without conditions",
                Some(view(1, 1, vec![], &[])),
                vec![],
                [
                    ("Unknown", "Reconciling"),
                    ("True", "HelmReleaseInstalling"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "source cannot be fetched before any release status",
                None,
                vec![fc("Ready", "False", "FetchFailed", "404")],
                [
                    ("False", "ChartUnreachable"),
                    ("True", "ChartSourceSyncing"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "installing",
                Some(view(
                    1,
                    1,
                    vec![
                        fc(
                            "Ready",
                            "Unknown",
                            "Progressing",
                            "Fresh install in progress",
                        ),
                        fc("Reconciling", "True", "Progressing", ""),
                    ],
                    &[],
                )),
                vec![],
                [
                    ("False", "Installing"),
                    ("True", "HelmReleaseInstalling"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "upgrading",
                Some(view(
                    2,
                    2,
                    vec![fc("Ready", "Unknown", "Progressing", "Upgrade in progress")],
                    &deployed,
                )),
                vec![],
                [
                    ("False", "Upgrading"),
                    ("True", "HelmReleaseUpgrading"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "new generation not yet observed hides an old Ready=True",
                Some(view(
                    3,
                    2,
                    vec![fc("Ready", "True", "UpgradeSucceeded", "")],
                    &deployed,
                )),
                vec![],
                [
                    ("False", "Upgrading"),
                    ("True", "HelmReleaseUpgrading"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "ready",
                Some(view(
                    1,
                    1,
                    vec![
                        fc(
                            "Ready",
                            "True",
                            "InstallSucceeded",
                            "Helm install succeeded",
                        ),
                        fc("Released", "True", "InstallSucceeded", ""),
                    ],
                    &deployed,
                )),
                vec![],
                [
                    ("True", "HelmReleaseReady"),
                    ("False", "Stable"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "install failed relays the Flux reason",
                Some(view(
                    1,
                    1,
                    vec![
                        fc("Ready", "False", "InstallFailed", "timed out"),
                        fc("Stalled", "True", "RetriesExceeded", ""),
                    ],
                    &[("1.0.0", "failed")],
                )),
                vec![],
                [
                    ("False", "InstallFailed"),
                    ("False", "Stable"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "upgrade failed after an earlier success is degraded",
                Some(view(
                    2,
                    2,
                    vec![
                        fc("Ready", "False", "UpgradeFailed", "hook failed"),
                        fc("Released", "False", "UpgradeFailed", ""),
                    ],
                    &failed_upgrade,
                )),
                vec![],
                [
                    ("False", "UpgradeFailed"),
                    ("False", "Stable"),
                    ("True", "HelmReleaseDegraded"),
                ],
            ),
            (
                "failure while Flux retries keeps Reconciling",
                Some(view(
                    1,
                    1,
                    vec![
                        fc("Ready", "False", "InstallFailed", "x"),
                        fc("Reconciling", "True", "ProgressingWithRetry", ""),
                    ],
                    &[],
                )),
                vec![],
                [
                    ("False", "InstallFailed"),
                    ("True", "HelmReleaseInstalling"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "unknown Flux reason wraps into HelmReleaseFailed",
                Some(view(
                    1,
                    1,
                    vec![fc("Ready", "False", "TestFailed", "test pod failed")],
                    &[],
                )),
                vec![],
                [
                    ("False", "HelmReleaseFailed"),
                    ("False", "Stable"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "artifact failure is ChartUnreachable",
                Some(view(
                    1,
                    1,
                    vec![fc("Ready", "False", "ArtifactFailed", "no artifact")],
                    &[],
                )),
                vec![fc("Ready", "False", "FetchFailed", "401 from registry")],
                [
                    ("False", "ChartUnreachable"),
                    ("False", "Stable"),
                    ("False", "Recovered"),
                ],
            ),
            (
                "remediation rolled back",
                Some(view(
                    2,
                    2,
                    vec![
                        fc("Ready", "True", "UpgradeSucceeded", ""),
                        fc(
                            "Remediated",
                            "True",
                            "RollbackSucceeded",
                            "rolled back to v1",
                        ),
                    ],
                    &failed_upgrade,
                )),
                vec![],
                [
                    ("True", "RolledBack"),
                    ("False", "Stable"),
                    ("True", "UpgradeFailed"),
                ],
            ),
        ];
        for (name, hr, source, want) in cases {
            let got = map(hr.as_ref(), &source, Some(7), &at());
            let got: Vec<(String, String, String)> = got
                .iter()
                .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
                .collect();
            let want: Vec<(String, String, String)> = ["Ready", "Reconciling", "Degraded"]
                .iter()
                .zip(want)
                .map(|(t, (s, r))| (t.to_string(), s.to_string(), r.to_string()))
                .collect();
            assert_eq!(got, want, "{name}");
            for r in want.iter().map(|w| w.2.as_str()) {
                assert!(reasons::ALL.contains(&r), "{name}: {r} not in vocabulary");
            }
        }
    }

    #[test]
    fn the_digest_flux_appends_to_an_oci_chart_version_is_not_part_of_it() {
        let e = |v: &str, digest: Option<&str>| {
            let mut e = serde_json::json!({"chartVersion": v, "status": "deployed"});
            if let Some(d) = digest {
                e["ociDigest"] = serde_json::json!(d);
            }
            e
        };
        assert_eq!(
            chart_version(&e("0.2.0+f75e78c5ee5d", Some("sha256:f75e78c5ee5d0"))),
            "0.2.0"
        );
        assert_eq!(chart_version(&e("0.2.0+f75e78c5ee5d", None)), "0.2.0");
        assert_eq!(
            chart_version(&e("0.1.0+7061d6b", Some("sha256:7061d6b"))),
            "0.1.0"
        );
        // A chart's own build metadata from an HTTP repository stays.
        assert_eq!(chart_version(&e("1.2.3+build.7", None)), "1.2.3+build.7");
        assert_eq!(chart_version(&e("6.6.0", None)), "6.6.0");
    }

    #[test]
    fn a_failed_install_that_helm_controller_retries_is_not_stale() {
        // The status helm-controller v1.6.3 writes while it retries a chart
        // that cannot render (observed in tests/tests/upstream.rs).
        let data = serde_json::json!({"status": {
            "observedGeneration": -1,
            "lastAttemptedGeneration": 1,
            "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "Progressing",
                 "message": "Running 'install' action with timeout of 5m0s", "observedGeneration": 1},
                {"type": "Ready", "status": "False", "reason": "InstallFailed",
                 "message": "Helm install failed for release ns/broken with chart needs-value@0.1.0: execution error at (needs-value/templates/configmap.yaml:6:11): value 'must' is required",
                 "observedGeneration": 1},
            ],
        }});
        let hr = ReleaseView::from_object(Some(1), &data);
        assert!(!hr.is_stale());
        let got = map(Some(&hr), &[], Some(1), &at());
        assert_eq!(
            (got[0].status.as_str(), got[0].reason.as_str()),
            ("False", reasons::INSTALL_FAILED)
        );
        assert!(got[0].message.contains("value 'must' is required"));
        // A Ready condition about an older generation is still stale.
        let hr = ReleaseView::from_object(Some(2), &data);
        assert!(hr.is_stale());
    }

    #[test]
    fn failure_keeps_flux_message_and_observed_generation() {
        let hr = view(
            1,
            1,
            vec![fc("Ready", "False", "UpgradeFailed", "boom: hook failed")],
            &[],
        );
        let got = map(Some(&hr), &[], Some(4), &at());
        assert_eq!(got[0].message, "boom: hook failed");
        assert!(got.iter().all(|c| c.observed_generation == Some(4)));
    }

    /// What helm-controller writes while it retries a failed install: the
    /// status keeps observedGeneration -1, Ready carries the generation.
    #[test]
    fn a_failure_judged_at_the_current_generation_is_not_stale() {
        let data = serde_json::json!({"status": {
            "observedGeneration": -1,
            "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "Progressing", "message": "Running 'install' action with timeout of 5m0s", "observedGeneration": 1},
                {"type": "Ready", "status": "False", "reason": "InstallFailed", "message": "Helm install failed: value 'must' is required", "observedGeneration": 1},
            ],
        }});
        let v = ReleaseView::from_object(Some(1), &data);
        assert!(!v.is_stale());
        let got = map(Some(&v), &[], Some(1), &at());
        assert_eq!(
            (got[0].status.as_str(), got[0].reason.as_str()),
            ("False", "InstallFailed")
        );
        // A Ready written for an older generation does not count.
        assert!(ReleaseView::from_object(Some(2), &data).is_stale());
    }

    #[test]
    fn release_view_reads_history_newest_first() {
        let data = serde_json::json!({"status": {
            "observedGeneration": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "UpgradeSucceeded", "message": ""}],
            "history": [{"chartVersion": "1.1.0", "status": "deployed"}, {"chartVersion": "1.0.0", "status": "superseded"}],
        }});
        let v = ReleaseView::from_object(Some(2), &data);
        assert!(v.is_ready());
        assert_eq!(v.deployed_version(), Some("1.1.0"));
        assert!(v.had_success());
        let stale = ReleaseView::from_object(Some(3), &data);
        assert!(!stale.is_ready());
    }
}
