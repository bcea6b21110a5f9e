//! The life of one connection: the Hello/Welcome handshake, then the loop
//! that reads frames, pings, enforces the idle timeout and obeys kills.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use vworkspace_protocol::chunk::{Assembly, ChunkError};
use vworkspace_protocol::{
    self as proto, AppliedVersion, Envelope, ErrorCode, Frame, Goodbye, Welcome, limits,
};

use super::{Conn, End, LEGACY_WINDOW, chunk_end, close_code, error_frame};
use crate::hub::Kill;
use crate::sanitize::for_log;
use crate::store::now;

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) async fn drive(
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
        // The window: the agent's offer, at most ours; older agents keep 32.
        self.window = match hello.max_in_flight {
            Some(offer) => (offer as usize).clamp(1, hub.cfg.window.max(1)),
            None => LEGACY_WINDOW.min(hub.cfg.window.max(1)),
        };
        self.limits = self.limits.clone().with_max_in_flight(self.window as u32);
        let mut hellos: Assembly<AppliedVersion> =
            Assembly::new(limits::MAX_CHUNKS, limits::MAX_CHUNKED_ENTRIES);
        let first = match hellos.push(hello.chunk, hello.applied) {
            Ok(first) => first,
            Err(e) => return chunk_end(&hub, "hello", &e),
        };
        let agent_version = for_log(&hello.agent_version, 64);
        let _ = hub
            .store
            .set_connected(&self.id.cluster, true, Some(&agent_version));
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
            ca_bundle_pem: Some(hub.ca_ring().bundle_pem()),
            max_chunks: Some(limits::MAX_CHUNKS),
            digest_buckets: super::announced_digest_buckets(hub.cfg.digest_buckets),
        };
        if let Err(end) = self.send_frame(Frame::Welcome(welcome)).await {
            return end;
        }
        // A chunked Hello: the rest follow Welcome, before anything else.
        let applied = match first {
            Some(all) => all,
            None => match self.rest_of_hello(&mut hellos).await {
                Ok(all) => all,
                Err(end) => return end,
            },
        };
        // A summary-mode Hello has no `applied`: versions come with the
        // buckets asked for after its summary (docs/protocol.md §9).
        let settled = self.settle_many(applied.iter().map(|a| (&a.object, a.version)));
        let _ = hub.store.audit(
            "tunnel.connect",
            Some(&self.id.cluster),
            "ok",
            &format!(
                "peer={} agent_version={agent_version} applied={} settled={settled} window={} digest_buckets={}",
                self.peer,
                applied.len(),
                self.window,
                hello.digest_buckets
            ),
        );
        drop(applied);
        if hello.digest_buckets && super::announced_digest_buckets(hub.cfg.digest_buckets).is_some()
        {
            self.hold_intents_until =
                Some(Instant::now() + Duration::from_secs(limits::CHUNK_TIMEOUT_SECS));
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
            let inventory_deadline = self.inventory_deadline;
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
                        Some(Kill::CaRotated) => {
                            return End::Close(
                                Some(Box::new(Frame::Goodbye(Goodbye {
                                    reason: "hub CA rotation step; reconnect to receive the CA bundle".into(),
                                    retry_after_secs: Some(1),
                                }))),
                                CloseCode::Normal,
                                "ca rotated",
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
                    // A digest exchange that never came: stop holding intents.
                    if self.hold_intents_until.is_some_and(|t| Instant::now() >= t)
                        && let Err(end) = self.pump().await
                    {
                        return end;
                    }
                }
                _ = sleep_until_opt(inventory_deadline) => {
                    self.inventory.reset();
                    let e = ChunkError::TimedOut { secs: limits::CHUNK_TIMEOUT_SECS };
                    return chunk_end(&hub, "inventory", &e);
                }
                _ = sleep_until_opt(self.resends.next()) => {
                    let due = self.resends.take_due(Instant::now());
                    if let Some(first) = due.iter().min() {
                        hub.metrics.intent_resends.inc_by(due.len() as u64);
                        self.cursor = self.cursor.min(first - 1);
                        if let Err(end) = self.pump().await {
                            return end;
                        }
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

    /// Reads the chunks of a Hello after the first, within the chunk deadline.
    async fn rest_of_hello(
        &mut self,
        hellos: &mut Assembly<AppliedVersion>,
    ) -> Result<Vec<AppliedVersion>, End> {
        let hub = self.hub.clone();
        let deadline = Instant::now() + Duration::from_secs(limits::CHUNK_TIMEOUT_SECS);
        loop {
            let env = match tokio::time::timeout_at(deadline, self.next_envelope()).await {
                Ok(env) => env?,
                Err(_) => {
                    let e = ChunkError::TimedOut {
                        secs: limits::CHUNK_TIMEOUT_SECS,
                    };
                    return Err(chunk_end(&hub, "hello", &e));
                }
            };
            let h = match env.body {
                Frame::Hello(h) => h,
                other => {
                    return Err(End::Close(
                        Some(Box::new(error_frame(
                            ErrorCode::UnexpectedFrame,
                            format!("expected the next hello chunk, got {}", other.type_name()),
                        ))),
                        close_code(ErrorCode::UnexpectedFrame),
                        "expected Hello",
                    ));
                }
            };
            // Every chunk must say it is one; an unchunked Hello here is an error.
            match hellos.push(h.chunk, h.applied) {
                Ok(Some(all)) => return Ok(all),
                Ok(None) => {}
                Err(e) => return Err(chunk_end(&hub, "hello", &e)),
            }
        }
    }

    /// Reads the next envelope, answering control frames and enforcing
    /// sequencing. Returns `End` when the connection must end.
    pub(super) async fn next_envelope(&mut self) -> Result<Envelope, End> {
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
}

/// Sleeps until `at`, or forever when there is no deadline.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
