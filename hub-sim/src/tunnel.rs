//! The tunnel: `GET /v1/tunnel` upgraded to a WebSocket speaking protocol v1.
//!
//! One task per connection drives everything (no reader/writer split): it
//! waits for `Hello`, answers `Welcome`, then delivers pending intents in
//! store order with at most `window` unacknowledged, takes acks, statuses,
//! inventory, events and renewal requests, pings, and enforces the idle
//! timeout. Nothing per connection grows without bound: the in-flight window
//! is fixed, inbound frames are size-checked, and every send has a deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use vworkspace_protocol::{
    self as proto, CertIssued, Envelope, ErrorCode, ErrorFrame, Frame, Goodbye, IntentAction,
    IntentOutcome, IntentPayload, Limits, ObjectKind, ObjectRef, ResyncRequest, Version, Welcome,
};

use crate::ca::Identity;
use crate::hub::{Hub, Kill};
use crate::sanitize::for_log;
use crate::server::{TunnelStart, json_response};
use crate::store::{IntentRow, StatusRow, now};

/// Objects named in one ResyncRequest (the rest follow on the next Inventory).
const MAX_RESYNC_OBJECTS: usize = 1000;

/// Renewals accepted per connection (a hostile agent cannot make the CA spin).
const MAX_RENEWALS_PER_CONN: u32 = 8;

fn refuse(status: http::StatusCode, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    json_response(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

/// Checks identity and WebSocket headers; on success parks the upgrade in
/// `slot` for the connection task and answers 101.
pub(crate) fn upgrade(
    hub: Arc<Hub>,
    identity: Option<Identity>,
    slot: Arc<Mutex<Option<TunnelStart>>>,
    peer: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let Some(identity) = identity else {
        tracing::info!(%peer, "tunnel refused: no client certificate");
        return refuse(
            http::StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "the tunnel needs a client certificate issued by this hub (enroll first)",
        );
    };
    // The verifier already refused revoked serials; this closes the window
    // between a revoke and a handshake that was in progress.
    let cluster = match hub.store.cluster(&identity.cluster) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            return refuse(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "store unavailable",
            );
        }
    };
    let allowed = cluster
        .as_ref()
        .is_some_and(|c| c.org == identity.org && c.revoked_at.is_none())
        && !hub.is_revoked_serial(&identity.serial);
    if !allowed {
        tracing::info!(%peer, cluster = %identity.cluster, "tunnel refused: unknown or revoked identity");
        let _ = hub.store.audit(
            "tunnel.refused",
            Some(&identity.cluster),
            "revoked",
            &format!("serial={}", identity.serial),
        );
        return refuse(
            http::StatusCode::FORBIDDEN,
            "unauthorized",
            "this identity is revoked or unknown",
        );
    }
    let headers = req.headers();
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade",
        );
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "Sec-WebSocket-Version must be 13",
        );
    }
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "Sec-WebSocket-Key missing",
        );
    };
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let offered_refs: Vec<&str> = offered.iter().map(String::as_str).collect();
    let Some(version) = proto::negotiate(&offered_refs, Version::SUPPORTED) else {
        // The protocol asks for a plain-text reason here.
        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
            "no common protocol version: offer WebSocket subprotocol {}\n",
            proto::SUBPROTOCOL_V1
        ))));
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(TunnelStart {
        identity,
        on_upgrade,
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(version.subprotocol()),
    );
    resp
}

/// How a connection ended.
enum End {
    /// Close with a WebSocket close frame (after an optional last frame).
    Close(Option<Box<Frame>>, CloseCode, &'static str),
    /// Drop the transport with nothing said (drop fault, dead peer).
    Abrupt,
}

struct Conn<S> {
    hub: Arc<Hub>,
    id: Identity,
    peer: SocketAddr,
    ws: WebSocketStream<S>,
    limits: Limits,
    out_seq: u64,
    in_seq: u64,
    frames_sent: u64,
    /// Sent, unacked intents: (envelope seq, store seq, intent id).
    in_flight: VecDeque<(u64, i64, String)>,
    /// Store seq of the last intent sent on this connection.
    cursor: i64,
    renewals: u32,
    last_rx: Instant,
}

/// Runs one tunnel until it ends. `io` is the upgraded connection.
pub(crate) async fn run<S>(hub: Arc<Hub>, id: Identity, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default()
        .with_max_in_flight(hub.cfg.window as u32)
        .with_heartbeat(
            hub.cfg.ping_interval.as_secs().max(1) as u32,
            hub.cfg.idle_timeout.as_secs().max(1) as u32,
        );
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * limits.max_frame_bytes)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_cfg)).await;
    let (conn_id, wake, kill) = hub.register_conn(&id.cluster);
    let mut conn = Conn {
        hub: hub.clone(),
        id: id.clone(),
        peer,
        ws,
        limits,
        out_seq: 0,
        in_seq: 0,
        frames_sent: 0,
        in_flight: VecDeque::new(),
        cursor: 0,
        renewals: 0,
        last_rx: Instant::now(),
    };
    tracing::info!(cluster = %id.cluster, org = %id.org, %peer, "tunnel open");
    let end = conn.drive(wake, kill).await;
    hub.unregister_conn(&id.cluster, conn_id);
    if !hub.is_connected(&id.cluster) {
        let _ = hub.store.set_connected(&id.cluster, false, None);
    }
    match end {
        End::Abrupt => {
            tracing::info!(cluster = %id.cluster, %peer, "tunnel dropped");
        }
        End::Close(last, code, reason) => {
            if let Some(frame) = last {
                let _ = conn.send_frame(*frame).await;
            }
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.ws.close(Some(close))).await;
            tracing::info!(cluster = %id.cluster, %peer, reason, "tunnel closed");
        }
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(ErrorFrame {
        code: code.as_str().to_owned(),
        message: message.into(),
    })
}

fn close_code(code: ErrorCode) -> CloseCode {
    CloseCode::from(code.close_code())
}

fn kind_of(s: &str) -> Option<ObjectKind> {
    match s {
        "ApplicationInstance" => Some(ObjectKind::ApplicationInstance),
        "Operation" => Some(ObjectKind::Operation),
        "Cluster" => Some(ObjectKind::Cluster),
        _ => None,
    }
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn drive(
        &mut self,
        wake: Arc<tokio::sync::Notify>,
        mut kill: tokio::sync::watch::Receiver<Option<Kill>>,
    ) -> End {
        let hub = self.hub.clone();
        if hub.faults_for(&self.id.cluster).drop_after_frames == Some(0) {
            return End::Abrupt;
        }
        // Hello first, within the handshake deadline.
        let hello =
            match tokio::time::timeout(hub.cfg.handshake_timeout, self.next_envelope()).await {
                Err(_) => return End::Close(None, CloseCode::Policy, "no Hello"),
                Ok(Err(end)) => return end,
                Ok(Ok(env)) => env,
            };
        let hello = match hello.body {
            Frame::Hello(h) => h,
            other => {
                return End::Close(
                    Some(Box::new(error_frame(
                        ErrorCode::UnexpectedFrame,
                        format!("expected hello, got {}", other.type_name()),
                    ))),
                    close_code(ErrorCode::UnexpectedFrame),
                    "expected Hello",
                );
            }
        };
        let mut settled = 0;
        for a in &hello.applied {
            settled += self.settle(&a.object, a.version);
        }
        let agent_version = for_log(&hello.agent_version, 64);
        let _ = hub
            .store
            .set_connected(&self.id.cluster, true, Some(&agent_version));
        let _ = hub.store.audit(
            "tunnel.connect",
            Some(&self.id.cluster),
            "ok",
            &format!(
                "peer={} agent_version={agent_version} applied={} settled={settled}",
                self.peer,
                hello.applied.len()
            ),
        );
        let welcome = Welcome {
            cluster_id: self.id.cluster.clone(),
            org: self.id.org.clone(),
            server_time: now() + hub.cfg.clock_offset_secs,
            heartbeat_secs: self.limits.heartbeat_secs,
            idle_timeout_secs: self.limits.idle_timeout_secs,
            max_frame_bytes: self.limits.max_frame_bytes as u64,
            max_in_flight: self.limits.max_in_flight,
            signing_keys: hub.signing_keys(),
            recovery_window_secs: crate::recovery::announced_window(hub.cfg.recovery_window),
        };
        if let Err(end) = self.send_frame(Frame::Welcome(welcome)).await {
            return end;
        }
        let faults = hub.faults_for(&self.id.cluster);
        if faults.oversized_frame
            && let Err(end) = self.send_oversized().await
        {
            return end;
        }
        if let Err(end) = self.pump().await {
            return end;
        }

        let mut ping = tokio::time::interval_at(
            Instant::now() + hub.cfg.ping_interval,
            hub.cfg.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let idle_deadline = self.last_rx + hub.cfg.idle_timeout;
            tokio::select! {
                biased;
                _ = hub.shutdown_signal() => {
                    return End::Close(
                        Some(Box::new(Frame::Goodbye(Goodbye {
                            reason: "hub shutting down".into(),
                            retry_after_secs: Some(hub.cfg.shutdown_retry_after.as_secs() as u32),
                        }))),
                        CloseCode::Away,
                        "hub shutting down",
                    );
                }
                changed = kill.changed() => {
                    // A dropped sender means the registry let go of this
                    // connection: treat it as replaced rather than spin.
                    let why = if changed.is_ok() {
                        *kill.borrow_and_update()
                    } else {
                        Some(Kill::Replaced)
                    };
                    match why {
                        Some(Kill::Revoked) => {
                            let _ = hub.store.audit("tunnel.close", Some(&self.id.cluster), "revoked", "live tunnel closed by revoke");
                            return End::Close(
                                Some(Box::new(error_frame(ErrorCode::Unauthorized, "cluster revoked"))),
                                close_code(ErrorCode::Unauthorized),
                                "revoked",
                            );
                        }
                        Some(Kill::Replaced) => {
                            return End::Close(
                                Some(Box::new(Frame::Goodbye(Goodbye {
                                    reason: "replaced by a newer connection of this cluster".into(),
                                    retry_after_secs: None,
                                }))),
                                CloseCode::Normal,
                                "replaced",
                            );
                        }
                        Some(Kill::KeysRotated) => {
                            return End::Close(
                                Some(Box::new(Frame::Goodbye(Goodbye {
                                    reason: "intent-signing keys changed; reconnect to receive them".into(),
                                    retry_after_secs: Some(1),
                                }))),
                                CloseCode::Normal,
                                "keys rotated",
                            );
                        }
                        None => {}
                    }
                }
                _ = tokio::time::sleep_until(idle_deadline) => {
                    tracing::info!(cluster = %self.id.cluster, "tunnel idle, dropping");
                    return End::Close(None, CloseCode::Policy, "idle timeout");
                }
                _ = ping.tick() => {
                    if let Err(end) = self.send_msg(Message::Ping(Bytes::new())).await {
                        return end;
                    }
                }
                _ = wake.notified() => {
                    if let Err(end) = self.check_drop() {
                        return end;
                    }
                    if let Err(end) = self.pump().await {
                        return end;
                    }
                }
                env = self.next_envelope() => {
                    let env = match env {
                        Ok(env) => env,
                        Err(end) => return end,
                    };
                    if let Err(end) = self.handle(env).await {
                        return end;
                    }
                }
            }
        }
    }

    /// Reads the next envelope, answering control frames and enforcing
    /// sequencing. Returns `End` when the connection must end.
    async fn next_envelope(&mut self) -> Result<Envelope, End> {
        loop {
            let msg = match self.ws.next().await {
                None => return Err(End::Abrupt),
                Some(Err(e)) => {
                    use tokio_tungstenite::tungstenite::Error as WsError;
                    use tokio_tungstenite::tungstenite::error::CapacityError;
                    return Err(match e {
                        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                            self.hub.metrics.frame_refused("frame_too_large");
                            End::Close(
                                Some(Box::new(error_frame(
                                    ErrorCode::FrameTooLarge,
                                    "frame exceeds max_frame_bytes",
                                ))),
                                close_code(ErrorCode::FrameTooLarge),
                                "frame too large",
                            )
                        }
                        other => {
                            tracing::debug!(cluster = %self.id.cluster, error = %other, "tunnel read error");
                            End::Abrupt
                        }
                    });
                }
                Some(Ok(m)) => m,
            };
            self.last_rx = Instant::now();
            match msg {
                Message::Binary(bytes) => {
                    let env = match proto::decode(&bytes, &self.limits) {
                        Ok(env) => env,
                        Err(e) => {
                            let code = e.error_code();
                            self.hub.metrics.frame_refused(code.as_str());
                            return Err(End::Close(
                                Some(Box::new(error_frame(code, e.to_string()))),
                                close_code(code),
                                "undecodable frame",
                            ));
                        }
                    };
                    if env.seq != self.in_seq + 1 {
                        return Err(End::Close(
                            Some(Box::new(error_frame(
                                ErrorCode::SequenceError,
                                format!("expected seq {}, got {}", self.in_seq + 1, env.seq),
                            ))),
                            close_code(ErrorCode::SequenceError),
                            "sequence error",
                        ));
                    }
                    if env.ack > self.out_seq {
                        return Err(End::Close(
                            Some(Box::new(error_frame(
                                ErrorCode::SequenceError,
                                format!(
                                    "ack {} names an unsent seq (last sent {})",
                                    env.ack, self.out_seq
                                ),
                            ))),
                            close_code(ErrorCode::SequenceError),
                            "sequence error",
                        ));
                    }
                    self.in_seq = env.seq;
                    return Ok(env);
                }
                Message::Text(_) => {
                    return Err(End::Close(
                        Some(Box::new(error_frame(
                            ErrorCode::MalformedFrame,
                            "text frames are not part of the protocol",
                        ))),
                        close_code(ErrorCode::MalformedFrame),
                        "text frame",
                    ));
                }
                Message::Close(_) => return Err(End::Abrupt),
                // tungstenite answers pings itself; pongs only refresh last_rx.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    async fn handle(&mut self, env: Envelope) -> Result<(), End> {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
        match env.body {
            Frame::IntentAck(ack) => {
                let pos = self.in_flight.iter().position(|(es, _, id)| {
                    *id == ack.intent_id || (ack.intent_id.is_empty() && *es == ack.intent_seq)
                });
                let intent_id = match pos {
                    Some(p) => self
                        .in_flight
                        .remove(p)
                        .map(|(_, _, id)| id)
                        .unwrap_or_default(),
                    // A duplicate's second ack, or an ack after a restart: settle by id.
                    None => ack.intent_id.clone(),
                };
                let (outcome, message) = match &ack.outcome {
                    IntentOutcome::Applied => ("applied", None),
                    IntentOutcome::Noop => ("noop", None),
                    IntentOutcome::Rejected { code, message } if code == "replayed" => {
                        ("noop", Some(for_log(&format!("replayed: {message}"), 500)))
                    }
                    IntentOutcome::Rejected { code, message } => (
                        "rejected",
                        Some(for_log(&format!("{code}: {message}"), 500)),
                    ),
                };
                hub.metrics.intent(outcome);
                let retry_later = matches!(&ack.outcome, IntentOutcome::Rejected { code, .. } if code == "apply_failed");
                if !intent_id.is_empty()
                    && !retry_later
                    && let Err(e) =
                        hub.store
                            .ack_intent(&cluster, &intent_id, outcome, message.as_deref())
                {
                    tracing::error!(error = %e, "recording ack failed");
                }
                tracing::debug!(%cluster, intent = %for_log(&intent_id, 64), outcome, "intent acked");
                self.pump().await?;
            }
            Frame::Status(st) => {
                let mut row = StatusRow {
                    cluster: cluster.clone(),
                    kind: st.object.kind.as_str().to_owned(),
                    namespace: st.object.namespace.clone(),
                    name: st.object.name.clone(),
                    generation: Some(st.generation),
                    phase: st.phase.clone(),
                    conditions: serde_json::to_value(
                        st.conditions
                            .iter()
                            .map(|c| {
                                serde_json::json!({
                                    "type": c.type_,
                                    "status": c.status,
                                    "reason": c.reason,
                                    "message": c.message,
                                    "observedGeneration": c.observed_generation,
                                    "lastTransitionTime": c.last_transition_time,
                                })
                            })
                            .collect::<Vec<_>>(),
                    )
                    .unwrap_or_default(),
                    outputs: if st.outputs.is_empty() && !st.deleted {
                        None
                    } else {
                        let mut o = serde_json::to_value(&st.outputs).unwrap_or_default();
                        if st.deleted {
                            o["deleted"] = serde_json::Value::Bool(true);
                        }
                        Some(o)
                    },
                    hash: Some(st.hash.clone()),
                    updated_at: now(),
                };
                self.store_status(&mut row);
            }
            Frame::Inventory(inv) => {
                for entry in &inv.objects {
                    self.settle(&entry.object, entry.version);
                }
                // Objects whose newest intent is newer than what the agent holds
                // get that intent again, even if it was acked before (the cluster
                // lost it). Intents the agent rejected are not resent.
                let held: std::collections::HashMap<(&str, &str, &str), &proto::InventoryEntry> =
                    inv.objects
                        .iter()
                        .map(|e| {
                            (
                                (
                                    e.object.kind.as_str(),
                                    e.object.namespace.as_str(),
                                    e.object.name.as_str(),
                                ),
                                e,
                            )
                        })
                        .collect();
                let declared = hub.store.objects(Some(&cluster), None).unwrap_or_default();
                for obj in declared {
                    let held_version = held
                        .get(&(obj.kind.as_str(), obj.namespace.as_str(), obj.name.as_str()))
                        .map(|e| e.version);
                    if (obj.deleted && held_version.is_none())
                        || held_version.unwrap_or(0) >= obj.version
                    {
                        continue;
                    }
                    match hub
                        .store
                        .requeue_latest(&cluster, &obj.kind, &obj.namespace, &obj.name)
                    {
                        Ok(Some(seq)) => self.cursor = self.cursor.min(seq - 1),
                        Ok(None) => {}
                        Err(e) => tracing::error!(error = %e, "requeue failed"),
                    }
                }
                self.pump().await?;
                // Status digest: ask only for objects whose status hash differs
                // from (or is missing in) the hub's copy.
                let known = hub.store.statuses(Some(&cluster), None).unwrap_or_default();
                let known: std::collections::HashMap<(&str, &str, &str), Option<&str>> = known
                    .iter()
                    .map(|s| {
                        (
                            (s.kind.as_str(), s.namespace.as_str(), s.name.as_str()),
                            s.hash.as_deref(),
                        )
                    })
                    .collect();
                let differing: Vec<ObjectRef> = inv
                    .objects
                    .iter()
                    .filter(|e| {
                        let key = (
                            e.object.kind.as_str(),
                            e.object.namespace.as_str(),
                            e.object.name.as_str(),
                        );
                        known.get(&key).copied().flatten() != Some(e.status_hash.as_str())
                    })
                    .map(|e| e.object.clone())
                    .take(MAX_RESYNC_OBJECTS)
                    .collect();
                if !differing.is_empty() {
                    self.send_frame(Frame::ResyncRequest(ResyncRequest {
                        reason: Some("status digest differs from the hub's copy".into()),
                        objects: differing,
                    }))
                    .await?;
                }
                let body = serde_json::json!({
                    "objects": inv.objects.iter().map(|e| serde_json::json!({
                        "kind": e.object.kind.as_str(),
                        "namespace": e.object.namespace,
                        "name": e.object.name,
                        "version": e.version,
                        "status_hash": e.status_hash,
                    })).collect::<Vec<_>>()
                });
                if let Err(e) = hub.store.put_inventory(&cluster, &body) {
                    tracing::error!(error = %e, "recording inventory failed");
                }
                self.pump().await?;
            }
            Frame::Event(ev) => {
                let row = crate::store::AgentEventRow {
                    id: 0,
                    cluster: cluster.clone(),
                    received_at: now(),
                    time: ev.time,
                    severity: for_log(&ev.severity, 16),
                    reason: for_log(&ev.reason, 128),
                    object: ev.object.map(|o| for_log(&o.to_string(), 300)),
                    intent_id: ev.intent_id.map(|i| for_log(&i, 64)),
                    message: for_log(&ev.message, 1000),
                };
                match hub.store.put_agent_event(&row, hub.cfg.storage.max_events) {
                    Ok(0) => {}
                    Ok(dropped) => hub
                        .metrics
                        .storage_refused_n("event_evicted", dropped as u64),
                    Err(e) => tracing::error!(error = %e, "recording agent event failed"),
                }
            }
            Frame::RenewCert(req) => {
                self.renewals += 1;
                if self.renewals > MAX_RENEWALS_PER_CONN {
                    return Err(End::Close(
                        Some(Box::new(error_frame(
                            ErrorCode::UnexpectedFrame,
                            "too many renewals on one connection",
                        ))),
                        close_code(ErrorCode::UnexpectedFrame),
                        "renewal flood",
                    ));
                }
                match hub.ca.sign_client_csr(
                    req.csr_pem.as_bytes(),
                    &self.id.org,
                    &self.id.cluster,
                    hub.cfg.client_cert_lifetime,
                ) {
                    Ok(cert) => {
                        if let Err(e) =
                            hub.store
                                .insert_cert(&cert.serial, &cluster, cert.not_after)
                        {
                            tracing::error!(error = %e, "recording renewed certificate failed");
                            self.send_frame(error_frame(ErrorCode::Internal, "renewal failed"))
                                .await?;
                            return Ok(());
                        }
                        let _ = hub.store.audit(
                            "cert.renew",
                            Some(&cluster),
                            "ok",
                            &format!("serial={} not_after={}", cert.serial, cert.not_after),
                        );
                        self.send_frame(Frame::CertIssued(CertIssued {
                            certificate_pem: cert.pem,
                            ca_bundle_pem: hub.ca.cert_pem().to_owned(),
                        }))
                        .await?;
                    }
                    Err(e) => {
                        hub.metrics.frame_refused("csr_invalid");
                        let _ = hub.store.audit(
                            "cert.renew",
                            Some(&cluster),
                            "refused",
                            &e.to_string(),
                        );
                        self.send_frame(error_frame(
                            ErrorCode::CsrInvalid,
                            format!("renewal refused: {e}"),
                        ))
                        .await?;
                    }
                }
            }
            Frame::Goodbye(g) => {
                tracing::info!(%cluster, reason = %for_log(&g.reason, 200), "agent said goodbye");
                return Err(End::Close(None, CloseCode::Normal, "agent goodbye"));
            }
            Frame::Error(e) => {
                tracing::warn!(%cluster, code = %for_log(&e.code, 64), message = %for_log(&e.message, 200), "agent reported a protocol error");
            }
            Frame::Unsupported { type_name } => {
                let name = for_log(&type_name, 64);
                hub.metrics.frame_refused("unsupported_frame");
                self.send_frame(error_frame(
                    ErrorCode::UnsupportedFrame,
                    format!("frame type {name:?} is not supported"),
                ))
                .await?;
            }
            Frame::Hello(_) => {
                return Err(End::Close(
                    Some(Box::new(error_frame(
                        ErrorCode::UnexpectedFrame,
                        "hello sent twice",
                    ))),
                    close_code(ErrorCode::UnexpectedFrame),
                    "unexpected frame",
                ));
            }
            other => {
                return Err(End::Close(
                    Some(Box::new(error_frame(
                        ErrorCode::UnexpectedFrame,
                        format!("{} is a hub-to-agent frame", other.type_name()),
                    ))),
                    close_code(ErrorCode::UnexpectedFrame),
                    "unexpected frame",
                ));
            }
        }
        Ok(())
    }

    /// Stores a status within the cluster's storage limits. A status over the
    /// size limit is stored as a stub that keeps its hash (so the inventory
    /// digest matches and the hub does not ask for it again and again); a
    /// status for an undeclared object beyond the per-cluster cap is dropped.
    fn store_status(&self, row: &mut StatusRow) {
        let limits = self.hub.cfg.storage;
        let size = serde_json::to_string(&row.conditions).map_or(0, |s| s.len())
            + row
                .outputs
                .as_ref()
                .and_then(|o| serde_json::to_string(o).ok())
                .map_or(0, |s| s.len())
            + row.phase.as_ref().map_or(0, String::len);
        if size > limits.max_status_bytes {
            self.hub.metrics.storage_refused("status_too_large");
            tracing::info!(cluster = %self.id.cluster, object = %for_log(&format!("{}/{}", row.namespace, row.name), 200), size, max = limits.max_status_bytes, "status over the size limit, stored as a stub");
            row.conditions = serde_json::json!([]);
            row.phase = None;
            row.outputs = Some(serde_json::json!({
                "hub.vworkspace.io/refused": format!(
                    "status of {size} bytes is over the hub's limit of {} bytes",
                    limits.max_status_bytes
                )
            }));
        }
        match self
            .hub
            .store
            .put_status_bounded(row, limits.max_unknown_objects)
        {
            Ok(crate::store::StatusPut::Stored) => {}
            Ok(crate::store::StatusPut::UnknownObjectLimit) => {
                self.hub.metrics.storage_refused("unknown_object_limit");
                tracing::debug!(cluster = %self.id.cluster, "status for an undeclared object dropped: per-cluster limit reached");
            }
            Err(e) => tracing::error!(error = %e, "recording status failed"),
        }
    }

    /// The agent holds `version` of `object`: pending intents up to it are done.
    fn settle(&self, object: &ObjectRef, version: u64) -> usize {
        self.hub
            .store
            .settle_applied(
                &self.id.cluster,
                object.kind.as_str(),
                &object.namespace,
                &object.name,
                version,
            )
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "settling applied versions failed");
                0
            })
    }

    fn check_drop(&self) -> Result<(), End> {
        match self.hub.faults_for(&self.id.cluster).drop_after_frames {
            Some(n) if self.frames_sent >= u64::from(n) => Err(End::Abrupt),
            _ => Ok(()),
        }
    }

    /// Sends pending intents until the window is full.
    async fn pump(&mut self) -> Result<(), End> {
        let window = self.hub.cfg.window;
        while self.in_flight.len() < window {
            let want = window - self.in_flight.len();
            // In-flight intents may sit after the cursor again after a requeue; skip them.
            let fetched = match self.hub.store.pending_intents(
                &self.id.cluster,
                self.cursor,
                want + self.in_flight.len(),
            ) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "reading pending intents failed");
                    return Ok(());
                }
            };
            if fetched.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::with_capacity(want);
            for intent in fetched {
                self.cursor = intent.seq;
                if self.in_flight.iter().any(|(_, _, id)| *id == intent.id) {
                    continue;
                }
                batch.push(intent);
                if batch.len() == want {
                    break;
                }
            }
            let faults = self.hub.faults_for(&self.id.cluster);
            if faults.reorder && batch.len() > 1 {
                batch.reverse();
            }
            for intent in batch {
                let signed = match self.sign(&intent, &faults) {
                    Ok(s) => s,
                    Err(e) => {
                        self.undeliverable(&intent, &format!("signing failed: {e}"));
                        continue;
                    }
                };
                let copies = if faults.duplicate { 2 } else { 1 };
                for copy in 0..copies {
                    match self.send_intent(signed.clone()).await? {
                        Ok(seq) if copy == 0 => {
                            self.in_flight
                                .push_back((seq, intent.seq, intent.id.clone()));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.undeliverable(&intent, &e.to_string());
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// An intent whose frame cannot be sent (over the frame limit) is settled
    /// as `undeliverable` instead of being retried forever: the intents queued
    /// behind it still go out, and the admin API shows the outcome.
    fn undeliverable(&self, intent: &IntentRow, why: &str) {
        let cluster = &self.id.cluster;
        tracing::error!(%cluster, intent = %intent.id, error = %why, "intent cannot be sent, settled as undeliverable");
        self.hub.metrics.intent("undeliverable");
        self.hub.metrics.frame_refused("intent_too_large");
        let message: String = why.chars().take(500).collect();
        if let Err(e) =
            self.hub
                .store
                .ack_intent(cluster, &intent.id, "undeliverable", Some(&message))
        {
            tracing::error!(error = %e, "recording undeliverable intent failed");
        }
        let _ = self.hub.store.audit(
            "intent.undeliverable",
            Some(cluster),
            "refused",
            &format!(
                "{} {}/{} v{} intent={}: {message}",
                intent.kind, intent.namespace, intent.name, intent.version, intent.id
            ),
        );
    }

    /// Sends one intent frame. `Ok(Err(_))` means it could not be encoded
    /// within the frame limit and nothing was sent (no seq used).
    async fn send_intent(
        &mut self,
        signed: proto::SignedIntent,
    ) -> Result<Result<u64, proto::EncodeError>, End> {
        let seq = self.out_seq + 1;
        let env = Envelope::new(seq, self.in_seq, Frame::Intent(signed));
        let bytes = match proto::encode(&env, &self.limits) {
            Ok(b) => b,
            Err(e) => return Ok(Err(e)),
        };
        self.out_seq = seq;
        self.send_msg(Message::Binary(bytes.into())).await?;
        Ok(Ok(seq))
    }

    fn sign(
        &self,
        intent: &IntentRow,
        faults: &crate::faults::Faults,
    ) -> Result<proto::SignedIntent, String> {
        let kind = kind_of(&intent.kind).ok_or_else(|| format!("unknown kind {}", intent.kind))?;
        let action = match intent.action.as_str() {
            "delete" => IntentAction::Delete,
            _ => IntentAction::Apply {
                spec: intent
                    .spec
                    .as_ref()
                    .and_then(|m| m.get("spec"))
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({})),
            },
        };
        let t = now();
        let (issued_at, expires_at) = if faults.expired {
            (t - 7200, t - 3600)
        } else {
            (t, t + self.hub.cfg.intent_ttl.as_secs() as i64)
        };
        let cluster_id = if faults.foreign_cluster {
            format!("{}-foreign", self.id.cluster)
        } else {
            self.id.cluster.clone()
        };
        let payload = IntentPayload {
            v: proto::intent::INTENT_PAYLOAD_VERSION,
            intent_id: intent.id.clone(),
            cluster_id,
            org: self.id.org.clone(),
            issued_at,
            expires_at,
            object: ObjectRef::new(kind, intent.namespace.clone(), intent.name.clone()),
            version: intent.version,
            action,
        };
        let mut signed = self
            .hub
            .signer()
            .sign(&payload)
            .map_err(|e| e.to_string())?;
        if faults.corrupt_signature
            && let Some(b) = signed.signature.first_mut()
        {
            *b ^= 0x01;
        }
        Ok(signed)
    }

    /// A binary message one KiB over the frame limit, of valid MessagePack
    /// framing but no meaning: the agent must refuse it by size.
    async fn send_oversized(&mut self) -> Result<(), End> {
        let size = self.limits.max_frame_bytes + 1024;
        let mut junk = Vec::with_capacity(size);
        junk.push(0xc6); // bin32 header
        junk.extend_from_slice(&((size - 5) as u32).to_be_bytes());
        junk.resize(size, 0);
        self.send_msg(Message::Binary(junk.into())).await
    }

    /// Encodes and sends one frame; returns its envelope seq.
    async fn send_frame(&mut self, body: Frame) -> Result<u64, End> {
        let seq = self.out_seq + 1;
        let env = Envelope::new(seq, self.in_seq, body);
        let bytes = match proto::encode(&env, &self.limits) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(cluster = %self.id.cluster, error = %e, "frame could not be encoded");
                return Err(End::Close(
                    Some(Box::new(error_frame(
                        ErrorCode::Internal,
                        "hub could not encode a frame",
                    ))),
                    close_code(ErrorCode::Internal),
                    "encode failure",
                ));
            }
        };
        self.out_seq = seq;
        self.send_msg(Message::Binary(bytes.into())).await?;
        Ok(seq)
    }

    async fn send_msg(&mut self, msg: Message) -> Result<(), End> {
        self.check_drop()?;
        let faults = self.hub.faults_for(&self.id.cluster);
        if let Some(ms) = faults.delay_ms
            && !matches!(msg, Message::Ping(_))
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        // A peer that stops reading gets dropped, not buffered for.
        match tokio::time::timeout(self.hub.cfg.idle_timeout, self.ws.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(cluster = %self.id.cluster, error = %e, "tunnel write failed");
                return Err(End::Abrupt);
            }
            Err(_) => {
                tracing::info!(cluster = %self.id.cluster, "peer not reading, dropping");
                return Err(End::Abrupt);
            }
        }
        self.frames_sent += 1;
        Ok(())
    }
}
