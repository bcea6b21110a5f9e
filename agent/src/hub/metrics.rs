//! Prometheus metrics of the connection half, registered explicitly into the
//! registry `run` creates (no global registry).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `intents_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IntentLabels {
    /// applied, noop or rejected.
    pub outcome: String,
    /// Rejection code (`bad_signature`, `forbidden`, ...); empty unless rejected.
    pub reason: String,
}

/// Labels of `frames_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// `in` (hub to agent) or `out`.
    pub direction: String,
    /// Frame type on the wire (`intent`, `status`, ...).
    pub r#type: String,
}

/// Labels of `queue_depth`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Which queue.
    pub queue: String,
}

/// Labels of `enrollments_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or an error class.
    pub result: String,
}

/// Handles to every metric of the agent's connection half.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// 1 connected, 0 connecting/standby, -1 disconnected.
    pub connection_state: Gauge,
    /// Tunnel connection attempts after the first.
    pub reconnects: Counter,
    /// Intents by outcome and rejection reason.
    pub intents: Family<IntentLabels, Counter>,
    /// Frames by direction and type.
    pub frames: Family<FrameLabels, Counter>,
    /// Encoded bytes of those frames, by direction and type.
    pub frame_bytes: Family<FrameLabels, Counter>,
    /// Depth of the bounded queues.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Status updates dropped because a bounded buffer was full.
    pub status_dropped: Counter,
    /// Client certificate expiry, Unix seconds (0: no certificate).
    pub cert_expiry: Gauge,
    /// Enrollment attempts by result.
    pub enrollments: Family<ResultLabels, Counter>,
    /// Certificate renewals by result.
    pub renewals: Family<ResultLabels, Counter>,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Writes skipped because this replica was not the leader.
    pub writes_skipped: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them under `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            connection_state: Gauge::default(),
            reconnects: Counter::default(),
            intents: Family::default(),
            frames: Family::default(),
            frame_bytes: Family::default(),
            queue_depth: Family::default(),
            status_dropped: Counter::default(),
            cert_expiry: Gauge::default(),
            enrollments: Family::default(),
            renewals: Family::default(),
            leader: Gauge::default(),
            writes_skipped: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("vworkspace_agent");
        r.register(
            "connection_state",
            "Tunnel state: 1 connected, 0 connecting or standby, -1 disconnected",
            m.connection_state.clone(),
        );
        r.register(
            "reconnects",
            "Tunnel reconnection attempts",
            m.reconnects.clone(),
        );
        r.register(
            "intents",
            "Intents handled, by outcome and rejection reason",
            m.intents.clone(),
        );
        r.register(
            "frames",
            "Tunnel frames by direction and type",
            m.frames.clone(),
        );
        r.register(
            "frame_bytes",
            "Encoded bytes of tunnel frames (envelopes) by direction and type",
            m.frame_bytes.clone(),
        );
        r.register(
            "queue_depth",
            "Entries waiting in bounded queues",
            m.queue_depth.clone(),
        );
        r.register(
            "status_dropped",
            "Status updates dropped because a bounded buffer was full",
            m.status_dropped.clone(),
        );
        r.register(
            "client_certificate_expiry_timestamp_seconds",
            "Expiry of the tunnel client certificate, Unix seconds",
            m.cert_expiry.clone(),
        );
        r.register(
            "enrollments",
            "Enrollment attempts by result",
            m.enrollments.clone(),
        );
        r.register(
            "certificate_renewals",
            "Certificate renewals by result",
            m.renewals.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the Lease",
            m.leader.clone(),
        );
        r.register(
            "writes_skipped",
            "Writes skipped because this replica was not the leader",
            m.writes_skipped.clone(),
        );
        m
    }

    /// Counts one intent outcome.
    pub fn intent(&self, outcome: &str, reason: &str) {
        self.intents
            .get_or_create(&IntentLabels {
                outcome: outcome.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts one frame of `bytes` encoded bytes.
    pub fn frame(&self, direction: &'static str, type_name: &str, bytes: usize) {
        let labels = FrameLabels {
            direction: direction.to_owned(),
            r#type: type_name.to_owned(),
        };
        self.frames.get_or_create(&labels).inc();
        self.frame_bytes
            .get_or_create(&labels)
            .inc_by(u64::try_from(bytes).unwrap_or(u64::MAX));
    }

    /// Sets one queue depth.
    pub fn queue(&self, queue: &'static str, depth: usize) {
        self.queue_depth
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// Counts one enrollment attempt.
    pub fn enrollment(&self, result: &str) {
        self.enrollments
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Counts one renewal attempt.
    pub fn renewal(&self, result: &str) {
        self.renewals
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}
