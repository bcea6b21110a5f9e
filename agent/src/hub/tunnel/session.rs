//! One welcomed connection: the loop that drives incoming frames, intents
//! handed to the scheduler through a bounded queue, acks and statuses going
//! out, pings, the idle timeout and certificate renewal, until the hub or the
//! agent ends it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vworkspace_protocol::untrusted::escape;
use vworkspace_protocol::{ErrorCode, ErrorFrame, Frame, IntentAck, SignedIntent};

use super::conn::{Conn, Incoming};
use super::handshake::Opened;
use super::renewal::Renewal;
use super::scheduler::{intent_worker, rejection_event};
use super::{
    ConnState, Ended, Tunnel, TunnelError, Violation, ended_by_goodbye, hub_error_text, set_state,
    sleep_until_opt, spawn_status_write,
};
use crate::hub::apply::Applier;
use crate::hub::creds::{self, Credentials};

/// How often `status.lastHeartbeat` of the Cluster is refreshed while connected.
const HEARTBEAT_STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// Statuses sent per loop turn, so incoming frames are never starved.
const STATUS_BATCH: usize = 64;

/// The queues between the connection loop and the intent scheduler.
struct Queues {
    intents: mpsc::Sender<(u64, SignedIntent)>,
    depth: usize,
    acks: mpsc::Receiver<IntentAck>,
}

// === impl Tunnel ===

impl Tunnel {
    /// Opens one connection and drives it until it ends. The intent scheduler
    /// of the connection has finished when this returns.
    pub(super) async fn connect_once(
        &mut self,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
        was_up: &AtomicBool,
    ) -> Result<Ended, TunnelError> {
        // A connection being opened is dropped on shutdown; there is no hub
        // session yet to say goodbye to.
        let Opened {
            mut conn,
            creds,
            welcome,
        } = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Ended::Shutdown),
            opened = self.open() => opened?,
        };
        let limits = conn.limits.clone();
        let keys = if welcome.signing_keys.is_empty() {
            creds.key_ring()
        } else {
            creds::key_ring(&welcome.signing_keys)
        };
        let applier = Applier {
            client: self.client.clone(),
            cluster_id: creds.cluster_id.clone(),
            org: creds.org.clone(),
            keys,
            gate: self.gate.clone(),
            limits: limits.clone(),
            metrics: self.metrics.clone(),
            tombstones: self.tombstones.clone(),
            finalize_instances: self.finalize_instances,
        };
        // Room for the hub's whole window twice over (duplicates); a hub that
        // exceeds it is broken and gets an error, not unbounded memory.
        let depth = (limits.max_in_flight as usize).saturating_mul(2) + 8;
        let (intent_tx, intent_rx) = mpsc::channel::<(u64, SignedIntent)>(depth);
        let (ack_tx, ack_rx) = mpsc::channel::<IntentAck>(depth);
        let stop_worker = CancellationToken::new();
        let worker = tasks.spawn(intent_worker(
            applier,
            intent_rx,
            ack_tx,
            self.metrics.clone(),
            stop_worker.clone(),
            depth,
        ));

        was_up.store(true, Ordering::Relaxed);
        set_state(&self.state, &self.metrics, ConnState::Connected);
        tracing::info!(cluster_id = %escape(&welcome.cluster_id, 253), org = %escape(&welcome.org, 253), heartbeat = welcome.heartbeat_secs, "Tunnel connected");
        spawn_status_write(tasks, self.cluster_status.clone(), true);
        self.outbox.connection_started();
        let queues = Queues {
            intents: intent_tx,
            depth,
            acks: ack_rx,
        };
        let result = match conn.send_digest(self.outbox.inventory()).await {
            Ok(()) => self.drive(&mut conn, &creds, queues, shutdown, tasks).await,
            Err(e) => Err(e),
        };
        // Intents already running finish; queued ones are resent by the hub.
        stop_worker.cancel();
        let _ = worker.await;
        result
    }

    /// The connection loop.
    async fn drive(
        &mut self,
        conn: &mut Conn,
        creds: &Credentials,
        mut queues: Queues,
        shutdown: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Ended, TunnelError> {
        let limits = conn.limits.clone();
        let heartbeat = Duration::from_secs(u64::from(limits.heartbeat_secs.max(1)));
        let idle = Duration::from_secs(u64::from(limits.idle_timeout_secs.max(2)));
        let mut ping = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval_at(
            Instant::now() + HEARTBEAT_STATUS_INTERVAL,
            HEARTBEAT_STATUS_INTERVAL,
        );
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renewal = Renewal::new(creds);
        let identity = (creds.cluster_id.clone(), creds.token_fingerprint.clone());
        self.creds.mark_unchanged();

        loop {
            let more_status = self.outbox.pending() > 0;
            let renew_at = renewal.at;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    conn.goodbye("agent shutting down").await;
                    return Ok(Ended::Shutdown);
                }
                r = self.creds.changed() => {
                    let changed = r.is_err() || self.creds.borrow().as_ref().is_none_or(|c| {
                        (c.cluster_id.clone(), c.token_fingerprint.clone()) != identity
                    });
                    if changed {
                        conn.goodbye("credentials changed").await;
                        return Ok(Ended::IdentityChanged);
                    }
                }
                msg = futures::StreamExt::next(&mut conn.stream) => {
                    conn.last_rx = Instant::now();
                    let env = match conn.incoming(msg).await? {
                        Incoming::Envelope(env) => *env,
                        Incoming::Control => continue,
                        Incoming::Closed => return Ok(Ended::Closed),
                    };
                    self.outbox.acked(env.ack);
                    if let Some(ended) = self.on_frame(conn, creds, &mut renewal, &queues, env.seq, env.body).await? {
                        return Ok(ended);
                    }
                }
                Some(ack) = queues.acks.recv() => {
                    let event = rejection_event(&ack);
                    conn.send(Frame::IntentAck(ack)).await?;
                    if let Some(ev) = event {
                        conn.send(Frame::Event(ev)).await?;
                    }
                }
                _ = tokio::time::sleep_until(conn.last_rx + idle) => {
                    return Err(TunnelError::Idle(idle));
                }
                _ = ping.tick() => {
                    conn.send_msg(Message::Ping(Default::default())).await?;
                }
                _ = beat.tick() => spawn_status_write(tasks, self.cluster_status.clone(), false),
                _ = sleep_until_opt(renew_at) => {
                    renewal.start(conn, &self.metrics, &self.redactor, creds).await?;
                }
                _ = self.outbox.changed(), if !more_status => {}
                _ = std::future::ready(()), if more_status => self.send_statuses(conn).await?,
            }
        }
    }

    /// Handles one frame from the hub; `Some` when it ends the connection.
    async fn on_frame(
        &mut self,
        conn: &mut Conn,
        creds: &Credentials,
        renewal: &mut Renewal,
        queues: &Queues,
        seq: u64,
        body: Frame,
    ) -> Result<Option<Ended>, TunnelError> {
        match body {
            Frame::Intent(si) => {
                if queues.intents.try_send((seq, si)).is_err() {
                    conn.fail(
                        ErrorCode::TooManyInFlight,
                        "more unacknowledged intents than max_in_flight",
                    )
                    .await;
                    return Err(Violation::TooManyInFlight.into());
                }
                self.metrics
                    .queue("intents", queues.depth - queues.intents.capacity());
            }
            Frame::ResyncRequest(r) => {
                tracing::info!(reason = %escape(r.reason.as_deref().unwrap_or(""), 200), objects = r.objects.len(), buckets = r.buckets.len(), "Hub asked for a resync");
                let whole = r.objects.is_empty() && r.buckets.is_empty();
                if !r.buckets.is_empty() {
                    conn.send_buckets(self.outbox.inventory(), r.buckets)
                        .await?;
                }
                if !r.objects.is_empty() {
                    self.outbox.resync(&r.objects);
                } else if whole {
                    conn.send_inventory(self.outbox.inventory(), None).await?;
                }
            }
            Frame::CertIssued(c) => self.renewed(creds, renewal, c).await,
            Frame::Goodbye(goodbye) => return Ok(Some(ended_by_goodbye(goodbye))),
            Frame::Error(e) => {
                let parsed = ErrorCode::parse(&e.code);
                let (code, message) = hub_error_text(e);
                tracing::warn!(%code, %message, "Hub reported a protocol error");
                if parsed == Some(ErrorCode::Unauthorized) {
                    return Err(TunnelError::Rejected(message));
                }
                if parsed.is_some_and(|c| c.is_fatal()) {
                    return Err(Violation::HubError { code, message }.into());
                }
            }
            Frame::Welcome(_) => tracing::warn!("Ignoring a second Welcome"),
            Frame::Unsupported { type_name } => {
                let name: String = type_name.chars().take(64).collect();
                conn.send(Frame::Error(ErrorFrame {
                    code: ErrorCode::UnsupportedFrame.as_str().into(),
                    message: format!("frame type {name:?} is not supported"),
                }))
                .await?;
            }
            other => {
                let v = Violation::AgentFrame(other.type_name().to_owned());
                conn.fail(ErrorCode::UnexpectedFrame, &v.to_string()).await;
                return Err(v.into());
            }
        }
        Ok(None)
    }

    /// Sends up to [`STATUS_BATCH`] statuses from the outbox.
    async fn send_statuses(&mut self, conn: &mut Conn) -> Result<(), TunnelError> {
        for st in self.outbox.take_dirty(STATUS_BATCH) {
            match conn.send(Frame::Status(st.clone())).await {
                Ok(seq) => self.outbox.sent(seq, &st),
                Err(TunnelError::Encode(error)) => {
                    // Too large to send: drop this status, keep the tunnel.
                    tracing::warn!(object = %st.object, %error, "Status not sent");
                    self.metrics.status_dropped.inc();
                }
                Err(e) => {
                    self.outbox.unsent(&st);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
