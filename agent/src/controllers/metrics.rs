//! Controller metrics, registered explicitly (no global registry).

use std::time::Instant;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Labels naming the controller.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `application_instance` or `operation`.
    pub controller: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `application_instance` or `operation`.
    pub controller: &'static str,
    /// The error variant (`Error::metric_label`).
    pub error: &'static str,
}

/// Labels of the operation outcome counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Engine literal.
    pub engine: &'static str,
    /// Terminal phase.
    pub phase: &'static str,
}

/// Handles to every controller metric.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<ControllerLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    duration: Family<ControllerLabels, Histogram>,
    status_writes: Family<ControllerLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
}

// === impl Metrics ===

impl Metrics {
    /// Registers the metrics under `registry` (give it a `controllers` sub-registry).
    pub fn register(registry: &mut Registry) -> Self {
        let reconciles = Family::<ControllerLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by error",
            errors.clone(),
        );
        let duration = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        });
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconcile",
            Unit::Seconds,
            duration.clone(),
        );
        let status_writes = Family::<ControllerLabels, Counter>::default();
        registry.register(
            "status_writes",
            "Status patches sent (unchanged statuses are not sent)",
            status_writes.clone(),
        );
        let outcomes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "operations_finished",
            "Operations that reached a terminal phase",
            outcomes.clone(),
        );
        Self {
            reconciles,
            errors,
            duration,
            status_writes,
            outcomes,
        }
    }

    /// Counts a reconcile and returns a guard that records its duration on drop.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer {
        self.reconciles
            .get_or_create(&ControllerLabels { controller })
            .inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self
                .duration
                .get_or_create(&ControllerLabels { controller })
                .clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &'static str, error: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { controller, error })
            .inc();
    }

    /// Counts a status patch.
    pub fn status_write(&self, controller: &'static str) {
        self.status_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// Counts a finished operation.
    pub fn finished(&self, engine: &'static str, phase: &'static str) {
        self.outcomes
            .get_or_create(&OutcomeLabels { engine, phase })
            .inc();
    }
}

/// Records the reconcile duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}
