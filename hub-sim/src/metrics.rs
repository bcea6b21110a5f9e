//! Prometheus metrics of the hub, registered explicitly into the registry the
//! hub creates at start (no global registry) and served at `GET /metrics` on
//! the admin listener.
//!
//! Every refusal path counts here: enrollments by outcome, rate-limited
//! requests, frames refused by reason, and statuses or events the hub would
//! not store.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of the counters that have one `outcome` or `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok`, an enrollment error code, an intent outcome, ...
    pub outcome: String,
}

/// Labels of the counters keyed by why something was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why (`frame_too_large`, `status_too_large`, ...).
    pub reason: String,
}

/// Labels of `rate_limited_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Scope {
    /// `peer` (one address over its budget) or `global`.
    pub scope: String,
}

/// Handles to every hub metric.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Live tunnels.
    pub tunnels_open: Gauge,
    /// Enrollment requests by outcome (`ok` or the error code).
    pub enrollments: Family<Outcome, Counter>,
    /// Intents by outcome as the agent acked them, plus `undeliverable`.
    pub intents: Family<Outcome, Counter>,
    /// Intents sent again on a live connection after `apply_failed`.
    pub intent_resends: Counter,
    /// Frames or messages the hub refused or could not send, by reason.
    pub frames_refused: Family<Reason, Counter>,
    /// Requests answered 429 `rate_limited`, by which budget ran out.
    pub rate_limited: Family<Scope, Counter>,
    /// Agent-sent data the hub would not store, by reason.
    pub storage_refused: Family<Reason, Counter>,
    /// Connections closed because a listener's deadline or cap was reached.
    pub connections_refused: Family<Reason, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them under `registry` (prefix `hub`).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("hub");
        r.register("tunnels_open", "Live agent tunnels", m.tunnels_open.clone());
        r.register(
            "enrollments",
            "Enrollment requests by outcome (ok or the error code)",
            m.enrollments.clone(),
        );
        r.register(
            "intents",
            "Intents by outcome: applied, noop, rejected, undeliverable",
            m.intents.clone(),
        );
        r.register(
            "intent_resends",
            "Intents sent again on a live connection after the agent acked apply_failed",
            m.intent_resends.clone(),
        );
        r.register(
            "frames_refused",
            "Frames refused or not sent, by reason",
            m.frames_refused.clone(),
        );
        r.register(
            "rate_limited_requests",
            "Requests answered 429 rate_limited, by budget",
            m.rate_limited.clone(),
        );
        r.register(
            "storage_refused",
            "Agent-sent statuses or events not stored, by reason",
            m.storage_refused.clone(),
        );
        r.register(
            "connections_refused",
            "Connections closed by a listener cap or deadline, by reason",
            m.connections_refused.clone(),
        );
        m
    }

    /// Counts one enrollment outcome.
    pub fn enrollment(&self, outcome: &str) {
        self.enrollments
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one intent outcome.
    pub fn intent(&self, outcome: &str) {
        self.intents
            .get_or_create(&Outcome {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one refused frame.
    pub fn frame_refused(&self, reason: &str) {
        self.frames_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one rate-limited request.
    pub fn rate_limited(&self, scope: &str) {
        self.rate_limited
            .get_or_create(&Scope {
                scope: scope.to_owned(),
            })
            .inc();
    }

    /// Counts one status or event not stored.
    pub fn storage_refused(&self, reason: &str) {
        self.storage_refused_n(reason, 1);
    }

    /// Counts `n` statuses or events not stored.
    pub fn storage_refused_n(&self, reason: &str, n: u64) {
        self.storage_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts one connection closed by a cap or deadline.
    pub fn connection_refused(&self, reason: &str) {
        self.connections_refused
            .get_or_create(&Reason {
                reason: reason.to_owned(),
            })
            .inc();
    }
}
