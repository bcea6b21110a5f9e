//! The life of one connection: the Hello/Welcome handshake, then the loop
//! that reads frames, pings, enforces the idle timeout and obeys kills.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use vworkspace_protocol::{self as proto, Envelope, ErrorCode, Frame, Goodbye, Welcome};

use super::{Conn, End, close_code, error_frame};
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
            ca_bundle_pem: Some(hub.ca_ring().bundle_pem()),
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
