//! One method per inbound frame type; [`Conn::handle`] dispatches.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use tokio::time::Instant;
use vworkspace_protocol::{
    self as proto, CertIssued, Envelope, ErrorCode, Frame, Goodbye, IntentOutcome, ObjectRef,
    RejectionCode, ResyncRequest, limits,
};

use super::{
    Conn, DigestState, End, MAX_RENEWALS_PER_CONN, MAX_RESYNC_OBJECTS, chunk_end, close_code,
    digest_end, error_frame,
};
use crate::api::ConditionView;
use crate::sanitize::for_log;
use crate::store::{StatusRow, now};
use vworkspace_protocol::digest::{self, DigestError};

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Dispatches one inbound envelope to the method for its frame type.
    pub(super) async fn handle(&mut self, env: Envelope) -> Result<(), End> {
        match env.body {
            Frame::IntentAck(ack) => self.on_intent_ack(ack).await,
            Frame::Status(st) => {
                self.on_status(st);
                Ok(())
            }
            Frame::InventorySummary(s) => self.on_inventory_summary(s).await,
            Frame::Inventory(inv) => {
                if let Some(b) = &inv.buckets
                    && let Err(e) = self.check_bucket_inventory(b)
                {
                    return Err(digest_end(&self.hub, &e));
                }
                self.on_inventory_chunk(inv).await
            }
            Frame::Event(ev) => {
                self.on_event(ev);
                Ok(())
            }
            Frame::RenewCert(req) => self.on_renew_cert(req).await,
            Frame::Goodbye(g) => self.on_goodbye(g),
            Frame::Error(e) => {
                self.on_error(e);
                Ok(())
            }
            Frame::Unsupported { type_name } => self.on_unsupported(type_name).await,
            Frame::Hello(_) => Err(End::Close(
                Some(Box::new(error_frame(
                    ErrorCode::UnexpectedFrame,
                    "hello sent twice",
                ))),
                close_code(ErrorCode::UnexpectedFrame),
                "unexpected frame",
            )),
            other => Err(End::Close(
                Some(Box::new(error_frame(
                    ErrorCode::UnexpectedFrame,
                    format!("{} is a hub-to-agent frame", other.type_name()),
                ))),
                close_code(ErrorCode::UnexpectedFrame),
                "unexpected frame",
            )),
        }
    }

    /// An ack settles the intent in the store (a `replayed` rejection counts
    /// as noop; `apply_failed` stays pending and is sent again after a delay,
    /// see `retry.rs`), then sends more.
    pub(super) async fn on_intent_ack(&mut self, ack: proto::IntentAck) -> Result<(), End> {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
        let pos = self.in_flight.iter().position(|(es, _, id)| {
            *id == ack.intent_id || (ack.intent_id.is_empty() && *es == ack.intent_seq)
        });
        let (store_seq, intent_id) = match pos.and_then(|p| self.in_flight.remove(p)) {
            Some((_, seq, id)) => (Some(seq), id),
            // A duplicate's second ack, or an ack after a restart: settle by id.
            None => (None, ack.intent_id.clone()),
        };
        // The agent's rejection code, typed (unknown codes stay plain rejections).
        let rejection = match &ack.outcome {
            IntentOutcome::Rejected { code, .. } => RejectionCode::parse(code),
            _ => None,
        };
        let (outcome, message) = match &ack.outcome {
            IntentOutcome::Applied => ("applied", None),
            IntentOutcome::Noop => ("noop", None),
            IntentOutcome::Rejected { message, .. }
                if rejection == Some(RejectionCode::Replayed) =>
            {
                ("noop", Some(for_log(&format!("replayed: {message}"), 500)))
            }
            IntentOutcome::Rejected { code, message } => (
                "rejected",
                Some(for_log(&format!("{code}: {message}"), 500)),
            ),
        };
        hub.metrics.intent(outcome);
        let retry_later = rejection == Some(RejectionCode::ApplyFailed);
        if !intent_id.is_empty()
            && !retry_later
            && let Err(e) = hub
                .store
                .ack_intent(&cluster, &intent_id, outcome, message.as_deref())
        {
            tracing::error!(error = %e, "recording ack failed");
        }
        if retry_later {
            // Sent again on this connection after a jittered delay; without a
            // known store seq (an ack after a restart) the next connection does.
            if let Some(seq) = store_seq {
                let d = self.resends.schedule(
                    tokio::time::Instant::now(),
                    seq,
                    &intent_id,
                    rand::random::<f64>(),
                );
                tracing::info!(%cluster, intent = %for_log(&intent_id, 64), delay = ?d, "intent apply failed on the cluster; resending later");
            }
        } else {
            self.resends.settled(&intent_id);
        }
        tracing::debug!(%cluster, intent = %for_log(&intent_id, 64), outcome, "intent acked");
        self.pump().await?;
        Ok(())
    }

    /// A status is stored (within the storage limits).
    pub(super) fn on_status(&mut self, st: proto::Status) {
        let cluster = self.id.cluster.clone();
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
                    .map(ConditionView::from)
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

    /// One `Inventory` frame (or chunk of one); acts on the whole once the
    /// last chunk is in. A bucket inventory names its buckets in every chunk.
    async fn on_inventory_chunk(&mut self, inv: proto::Inventory) -> Result<(), End> {
        match self.inventory.push(inv.chunk, inv.objects) {
            Ok(Some(objects)) => {
                self.inventory_deadline = None;
                let whole = proto::Inventory {
                    objects,
                    chunk: None,
                    buckets: None,
                };
                match inv.buckets {
                    Some(buckets) => self.on_bucket_inventory(whole, buckets).await,
                    None => self.on_inventory(whole).await,
                }
            }
            Ok(None) => {
                self.inventory_deadline.get_or_insert_with(|| {
                    Instant::now() + Duration::from_secs(limits::CHUNK_TIMEOUT_SECS)
                });
                Ok(())
            }
            Err(e) => {
                self.inventory_deadline = None;
                Err(chunk_end(&self.hub, "inventory", &e))
            }
        }
    }

    /// A bucket inventory must answer the buckets asked for after this
    /// connection's summary, exactly.
    fn check_bucket_inventory(&self, buckets: &[u32]) -> Result<(), DigestError> {
        let Some(state) = &self.digest else {
            return Err(DigestError::OutOfOrder(
                "bucket inventory without a summary on this connection",
            ));
        };
        digest::check_buckets(buckets, state.count)?;
        if state.requested != buckets {
            return Err(DigestError::NotRequested);
        }
        Ok(())
    }

    /// A bucketed digest: compare it with the hub's own view and ask for the
    /// buckets that differ (all of them at once, or the whole inventory when
    /// more than [`digest::MAX_REQUESTED_BUCKETS`] differ).
    pub(super) async fn on_inventory_summary(
        &mut self,
        s: proto::InventorySummary,
    ) -> Result<(), End> {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
        let Some(max) = super::announced_digest_buckets(hub.cfg.digest_buckets) else {
            // Not announced: answered as a hub without bucketed digests would.
            return self.on_unsupported("inventory_summary".into()).await;
        };
        if self.digest.is_some() {
            return Err(digest_end(
                &hub,
                &DigestError::OutOfOrder("a second inventory_summary on one connection"),
            ));
        }
        if let Err(e) = digest::check_summary(&s, max) {
            return Err(digest_end(&hub, &e));
        }
        let view = match hub.store.digest_view(&cluster) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reading the digest view failed");
                Vec::new()
            }
        };
        let ours = digest::bucket_hashes(&view, s.bucket_count);
        let differing = digest::differing_buckets(&ours, &s.hashes);
        tracing::debug!(%cluster, buckets = s.bucket_count, differing = differing.len(), "bucketed digest compared");
        if differing.len() > digest::MAX_REQUESTED_BUCKETS {
            self.digest = Some(DigestState {
                count: s.bucket_count,
                requested: Vec::new(),
            });
            self.send_frame(Frame::ResyncRequest(ResyncRequest {
                reason: Some("too many digest buckets differ".into()),
                objects: vec![],
                buckets: vec![],
            }))
            .await?;
            return Ok(());
        }
        self.digest = Some(DigestState {
            count: s.bucket_count,
            requested: differing.clone(),
        });
        if differing.is_empty() {
            // Every bucket matched: the view is the agent's inventory, and
            // every version the agent holds is settled already.
            self.store_inventory(&view);
            self.hold_intents_until = None;
            self.pump().await?;
        } else {
            self.send_frame(Frame::ResyncRequest(ResyncRequest {
                reason: Some("digest buckets differ from the hub's view".into()),
                objects: vec![],
                buckets: differing,
            }))
            .await?;
        }
        Ok(())
    }

    /// The entries of the buckets asked for: reconciled like a whole
    /// inventory, but only within those buckets.
    async fn on_bucket_inventory(
        &mut self,
        inv: proto::Inventory,
        buckets: Vec<u32>,
    ) -> Result<(), End> {
        let count = match &mut self.digest {
            Some(state) => {
                state.requested.clear();
                state.count
            }
            None => return Ok(()),
        };
        if let Err(e) = digest::check_entries(&inv.objects, &buckets, count) {
            return Err(digest_end(&self.hub, &e));
        }
        self.reconcile(inv, Some((&buckets, count))).await
    }

    /// Stores the agent's inventory as last reported (admin API, and the
    /// base of the next bucketed comparison).
    fn store_inventory(&self, objects: &[proto::InventoryEntry]) {
        let body = serde_json::json!({
            "objects": objects.iter().map(|e| serde_json::json!({
                "kind": e.object.kind.as_str(),
                "namespace": e.object.namespace,
                "name": e.object.name,
                "version": e.version,
                "status_hash": e.status_hash,
            })).collect::<Vec<_>>()
        });
        if let Err(e) = self.hub.store.put_inventory(&self.id.cluster, &body) {
            tracing::error!(error = %e, "recording inventory failed");
        }
    }

    /// An inventory settles what the agent holds, requeues what it lost, asks
    /// for statuses whose digest differs, and is stored for the admin API.
    pub(super) async fn on_inventory(&mut self, inv: proto::Inventory) -> Result<(), End> {
        self.reconcile(inv, None).await
    }

    /// [`Self::on_inventory`], for the whole digest or (`scope`: buckets
    /// and bucket count) for the objects of those buckets only.
    async fn reconcile(
        &mut self,
        inv: proto::Inventory,
        scope: Option<(&[u32], u32)>,
    ) -> Result<(), End> {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
        let in_scope = |o: &ObjectRef| {
            scope.is_none_or(|(b, c)| b.binary_search(&digest::bucket_of(o, c)).is_ok())
        };
        // Versions are settled below: intents held since a summary-mode
        // Hello may go now.
        self.hold_intents_until = None;
        self.settle_many(inv.objects.iter().map(|e| (&e.object, e.version)));
        // Objects whose newest intent is newer than what the agent holds
        // get that intent again, even if it was acked before (the cluster
        // lost it). Intents the agent rejected are not resent.
        let held: std::collections::HashMap<(&str, &str, &str), &proto::InventoryEntry> = inv
            .objects
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
            let Some(kind) = super::kind_of(&obj.kind) else {
                continue;
            };
            if !in_scope(&ObjectRef::new(
                kind,
                obj.namespace.clone(),
                obj.name.clone(),
            )) {
                continue;
            }
            let held_version = held
                .get(&(obj.kind.as_str(), obj.namespace.as_str(), obj.name.as_str()))
                .map(|e| e.version);
            if (obj.deleted && held_version.is_none()) || held_version.unwrap_or(0) >= obj.version {
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
                buckets: vec![],
            }))
            .await?;
        }
        let mut objects = inv.objects;
        if scope.is_some() {
            // The other buckets matched: the hub's view of them is the
            // agent's inventory, so the stored one is complete again.
            let view = hub.store.digest_view(&cluster).unwrap_or_default();
            objects.extend(view.into_iter().filter(|e| !in_scope(&e.object)));
        }
        self.store_inventory(&objects);
        self.pump().await?;
        Ok(())
    }

    /// An agent event is stored (bounded, oldest evicted).
    pub(super) fn on_event(&mut self, ev: proto::Event) {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
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

    /// A renewal CSR is signed by the CA (a few per connection at most).
    pub(super) async fn on_renew_cert(&mut self, req: proto::RenewCert) -> Result<(), End> {
        let hub = self.hub.clone();
        let cluster = self.id.cluster.clone();
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
        match hub.ca().sign_client_csr(
            req.csr_pem.as_bytes(),
            &self.id.org,
            &self.id.cluster,
            hub.cfg.client_cert_lifetime,
        ) {
            Ok(cert) => {
                if let Err(e) = hub
                    .store
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
                    ca_bundle_pem: hub.ca_ring().bundle_pem(),
                }))
                .await?;
            }
            Err(e) => {
                hub.metrics.frame_refused("csr_invalid");
                let _ = hub
                    .store
                    .audit("cert.renew", Some(&cluster), "refused", &e.to_string());
                self.send_frame(error_frame(
                    ErrorCode::CsrInvalid,
                    format!("renewal refused: {e}"),
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// The agent is leaving: close normally.
    pub(super) fn on_goodbye(&mut self, g: Goodbye) -> Result<(), End> {
        let cluster = self.id.cluster.clone();
        tracing::info!(%cluster, reason = %for_log(&g.reason, 200), "agent said goodbye");
        Err(End::Close(None, CloseCode::Normal, "agent goodbye"))
    }

    /// The agent reported a protocol error: logged, nothing else.
    pub(super) fn on_error(&mut self, e: proto::ErrorFrame) {
        let cluster = self.id.cluster.clone();
        tracing::warn!(%cluster, code = %for_log(&e.code, 64), message = %for_log(&e.message, 200), "agent reported a protocol error");
    }

    /// A frame type this hub does not know: answered, the connection stays.
    pub(super) async fn on_unsupported(&mut self, type_name: String) -> Result<(), End> {
        let hub = self.hub.clone();
        let name = for_log(&type_name, 64);
        hub.metrics.frame_refused("unsupported_frame");
        self.send_frame(error_frame(
            ErrorCode::UnsupportedFrame,
            format!("frame type {name:?} is not supported"),
        ))
        .await?;
        Ok(())
    }

    /// Stores a status within the cluster's storage limits. A status over the
    /// size limit is stored as a stub that keeps its hash (so the inventory
    /// digest matches and the hub does not ask for it again and again); a
    /// status for an undeclared object beyond the per-cluster cap is dropped.
    pub(super) fn store_status(&self, row: &mut StatusRow) {
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

    /// The agent holds these versions: pending intents up to them are done.
    pub(super) fn settle_many<'a>(
        &self,
        held: impl IntoIterator<Item = (&'a ObjectRef, u64)>,
    ) -> usize {
        self.hub
            .store
            .settle_applied_many(
                &self.id.cluster,
                held.into_iter()
                    .map(|(o, v)| (o.kind.as_str(), o.namespace.as_str(), o.name.as_str(), v)),
            )
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "settling applied versions failed");
                0
            })
    }
}
