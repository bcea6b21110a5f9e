//! The outbound side: intents pumped from the store within the window,
//! signing (with fault switches), frame encoding and sends with deadlines.

use std::time::Duration;
use tokio::time::Instant;

use futures::SinkExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Message;
use vworkspace_protocol::{
    self as proto, Envelope, ErrorCode, Frame, IntentAction, IntentPayload, ObjectRef,
};

use super::{Conn, End, close_code, error_frame, kind_of};
use crate::store::{IntentRow, now};

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn check_drop(&self) -> Result<(), End> {
        match self.hub.faults_for(&self.id.cluster).drop_after_frames {
            Some(n) if self.frames_sent >= u64::from(n) => Err(End::Abrupt),
            _ => Ok(()),
        }
    }

    /// Sends pending intents until the window is full.
    pub(super) async fn pump(&mut self) -> Result<(), End> {
        if let Some(until) = self.hold_intents_until {
            if Instant::now() < until {
                return Ok(());
            }
            self.hold_intents_until = None;
        }
        let window = self.window;
        while self.in_flight.len() < window {
            let want = window - self.in_flight.len();
            // In-flight intents may sit after the cursor again after a requeue;
            // fetch enough to skip them (usually none, so a wide window does
            // not make every ack read the whole window again).
            let behind = self
                .in_flight
                .iter()
                .filter(|(_, seq, _)| *seq > self.cursor)
                .count();
            let fetched =
                match self
                    .hub
                    .store
                    .pending_intents(&self.id.cluster, self.cursor, want + behind)
                {
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
    pub(super) fn undeliverable(&self, intent: &IntentRow, why: &str) {
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
    pub(super) async fn send_intent(
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

    pub(super) fn sign(
        &self,
        intent: &IntentRow,
        faults: &crate::faults::Faults,
    ) -> Result<proto::SignedIntent, String> {
        let kind = kind_of(&intent.kind).ok_or_else(|| format!("unknown kind {}", intent.kind))?;
        let action = match intent.action {
            crate::store::IntentAction::Delete => IntentAction::Delete,
            crate::store::IntentAction::Apply => IntentAction::Apply {
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
    pub(super) async fn send_oversized(&mut self) -> Result<(), End> {
        let size = self.limits.max_frame_bytes + 1024;
        let mut junk = Vec::with_capacity(size);
        junk.push(0xc6); // bin32 header
        junk.extend_from_slice(&((size - 5) as u32).to_be_bytes());
        junk.resize(size, 0);
        self.send_msg(Message::Binary(junk.into())).await
    }

    /// Encodes and sends one frame; returns its envelope seq.
    pub(super) async fn send_frame(&mut self, body: Frame) -> Result<u64, End> {
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

    pub(super) async fn send_msg(&mut self, msg: Message) -> Result<(), End> {
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
