//! The operations the admin API exposes: tokens, intents (apply, delete),
//! views of clusters and objects, revocation, key rotation, fault switches,
//! and the checks an intent passes before it is stored.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use vworkspace_protocol::{self as proto, IntentSigner};

use super::{Hub, HubError, Kill, token_hash};
use crate::faults::Faults;
use crate::keys;
use crate::store::{IntentAction, IntentRow, ObjectRow, StatusRow, StoreError, TokenRow};

/// A cluster as the admin API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterView {
    /// The stored cluster (with `connected` as the hub sees it now).
    #[serde(flatten)]
    pub row: crate::store::ClusterRow,
    /// Intents not yet acknowledged by the cluster's agent.
    pub pending_intents: usize,
    /// The cluster's fault-injection switches.
    pub faults: Faults,
}

/// Where a hub CA rotation stands, as `rotate-ca` prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaRotationView {
    /// `single`, `added` or `switched`.
    pub stage: String,
    /// SHA-256 of the CA that issues now: what new join tokens pin.
    pub issuing_sha256: String,
    /// SHA-256 of every CA in the bundle, issuing first.
    pub bundle_sha256: Vec<String>,
    /// Clusters (not revoked) whose newest client certificate comes from a
    /// CA that `retire` removes: retiring now cuts them off.
    pub clusters_on_old_ca: Vec<String>,
}

/// An object plus its latest reported status, for `get apps|operations`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ObjectView {
    /// The declared object.
    #[serde(flatten)]
    pub object: ObjectRow,
    /// The latest status its agent reported, if any.
    pub status: Option<StatusRow>,
    /// Outcome of the newest acked intent for this object, if any.
    pub last_outcome: Option<String>,
}

/// A newly issued join token. `token` is the secret: shown once, never logged.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The signed join token (a JWT); a secret.
    pub token: String,
    /// Token id (the `jti` claim).
    pub jti: String,
    /// Cluster the token enrolls.
    pub cluster: String,
    /// Organisation of that cluster.
    pub org: String,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("jti", &self.jti)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Kinds the hub can declare on a cluster.
pub const KINDS: &[(&str, &str)] = &[
    ("ApplicationInstance", "apps.vworkspace.io/v1alpha1"),
    ("Operation", "ops.vworkspace.io/v1alpha1"),
];

/// Annotation that addresses a manifest to a cluster when `--cluster` is not given.
pub const CLUSTER_ANNOTATION: &str = "hub.vworkspace.io/cluster";

/// Checks a cluster id / org: a DNS label (lowercase alphanumerics and '-', 1–63).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Refuses object names an agent could not use as Kubernetes names (and
/// that would otherwise reach logs and paths as they are, `../` or newlines
/// included).
fn check_object_names(namespace: &str, name: &str) -> Result<(), HubError> {
    for (what, value) in [("metadata.namespace", namespace), ("metadata.name", name)] {
        if !valid_name(value) {
            return Err(HubError::Invalid(format!(
                "{what} {:?} is not a DNS label (lowercase letters, digits, '-', 1-63 characters)",
                crate::sanitize::for_log(value, 80)
            )));
        }
    }
    Ok(())
}

/// Refuses, at the moment it is declared, an intent whose signed frame could
/// never be sent: the payload over `max_intent_payload_bytes`, or the
/// envelope over `max_frame_bytes` once encoded as MessagePack (JSON floats
/// grow from a few bytes to nine, so a manifest under the admin API's JSON
/// limit can still be too large). The check uses the largest values the
/// fields can take when the intent is sent (times, version, sequence numbers,
/// the foreign-cluster fault), so what passes here always fits.
pub(crate) fn check_deliverable(
    signer: &IntentSigner,
    cluster: &str,
    org: &str,
    kind: &str,
    namespace: &str,
    name: &str,
    spec: &serde_json::Value,
) -> Result<(), HubError> {
    let kind_ref = match kind {
        "ApplicationInstance" => proto::ObjectKind::ApplicationInstance,
        "Operation" => proto::ObjectKind::Operation,
        other => return Err(HubError::Invalid(format!("kind {other} cannot be applied"))),
    };
    let limits = proto::Limits::default();
    let payload = proto::IntentPayload {
        v: proto::intent::INTENT_PAYLOAD_VERSION,
        intent_id: uuid::Uuid::nil().to_string(),
        cluster_id: format!("{cluster}-foreign"),
        org: org.to_owned(),
        issued_at: i64::MIN,
        expires_at: i64::MIN,
        object: proto::ObjectRef::new(kind_ref, namespace.to_owned(), name.to_owned()),
        version: u64::MAX,
        action: proto::IntentAction::Apply { spec: spec.clone() },
    };
    let signed = signer
        .sign(&payload)
        .map_err(|e| HubError::Invalid(format!("spec cannot be encoded: {e}")))?;
    let payload_len = signed.payload.len();
    if payload_len > limits.max_intent_payload_bytes {
        return Err(HubError::Undeliverable(format!(
            "{kind} {namespace}/{name}: the intent payload would be {payload_len} bytes as MessagePack, \
             over the limit of {} bytes; make the spec smaller",
            limits.max_intent_payload_bytes
        )));
    }
    let env = proto::Envelope::new(u64::MAX, u64::MAX, proto::Frame::Intent(signed));
    match proto::encode(&env, &limits) {
        Ok(_) => Ok(()),
        Err(proto::EncodeError::Oversized { size, max }) => Err(HubError::Undeliverable(format!(
            "{kind} {namespace}/{name}: the intent frame would be {size} bytes as MessagePack, \
             over the tunnel's frame limit of {max} bytes; make the spec smaller"
        ))),
        Err(e) => Err(HubError::Invalid(format!("spec cannot be encoded: {e}"))),
    }
}

impl Hub {
    /// Issues a single-use join token for `cluster` in `org`, creating the
    /// cluster record. A revoked cluster is re-admitted (old certs stay revoked).
    pub fn create_token(
        &self,
        cluster: &str,
        org: &str,
        ttl: Option<Duration>,
    ) -> Result<IssuedToken, HubError> {
        if !valid_name(cluster) || !valid_name(org) {
            return Err(HubError::Invalid(
                "cluster and org must be DNS labels (lowercase letters, digits, '-', at most 63)"
                    .into(),
            ));
        }
        let ttl = ttl.unwrap_or(self.cfg.token_ttl);
        if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
            return Err(HubError::Invalid("--ttl must be between 1s and 24h".into()));
        }
        if let Some(existing) = self.store.cluster(cluster)?
            && existing.org != org
        {
            return Err(HubError::OrgMismatch {
                cluster: cluster.into(),
                existing: existing.org,
                requested: org.into(),
            });
        }
        self.store.ensure_cluster(cluster, org)?;
        self.store.unrevoke_cluster(cluster)?;
        let key = keys::active(&self.store, keys::JOIN)?;
        let jti = uuid::Uuid::new_v4().to_string();
        let expires_at = crate::store::now() + ttl.as_secs() as i64;
        let token = crate::wire::issue_join_token(
            &key,
            &self.public_url,
            &self.ca().sha256_hex(),
            cluster,
            org,
            &jti,
            expires_at,
        )
        .map_err(|e| HubError::Token(e.to_string()))?;
        self.store.insert_token(&TokenRow {
            jti: jti.clone(),
            token_sha256: token_hash(&token),
            cluster: cluster.into(),
            org: org.into(),
            expires_at,
            used_at: None,
        })?;
        self.store.audit(
            "token.create",
            Some(cluster),
            "ok",
            &format!("jti={jti} org={org} expires_at={expires_at}"),
        )?;
        Ok(IssuedToken {
            token,
            jti,
            cluster: cluster.into(),
            org: org.into(),
            expires_at,
        })
    }

    /// Declares (or re-declares) an object on a cluster from its manifest.
    pub fn apply(
        &self,
        cluster: Option<&str>,
        manifest: &serde_json::Value,
    ) -> Result<IntentRow, HubError> {
        let kind = manifest
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| HubError::Invalid("manifest has no kind".into()))?;
        let api_version = manifest
            .get("apiVersion")
            .and_then(|k| k.as_str())
            .ok_or_else(|| HubError::Invalid("manifest has no apiVersion".into()))?;
        match KINDS.iter().find(|(k, _)| *k == kind) {
            Some((_, v)) if *v == api_version => {}
            Some((_, v)) => {
                return Err(HubError::Invalid(format!(
                    "{kind} must have apiVersion {v}, not {api_version}"
                )));
            }
            None => {
                return Err(HubError::Invalid(format!(
                    "kind {kind} cannot be applied (ApplicationInstance or Operation)"
                )));
            }
        }
        let meta = manifest
            .get("metadata")
            .ok_or_else(|| HubError::Invalid("manifest has no metadata".into()))?;
        let name = meta
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| HubError::Invalid("metadata.name is required".into()))?;
        let namespace = meta
            .get("namespace")
            .and_then(|n| n.as_str())
            .ok_or_else(|| HubError::Invalid("metadata.namespace is required".into()))?;
        let annotated = meta
            .get("annotations")
            .and_then(|a| a.get(CLUSTER_ANNOTATION))
            .and_then(|c| c.as_str());
        let cluster = cluster.or(annotated).ok_or_else(|| {
            HubError::Invalid(format!(
                "no target cluster: pass --cluster or set annotation {CLUSTER_ANNOTATION}"
            ))
        })?;
        check_object_names(namespace, name)?;
        let Some(spec) = manifest.get("spec").filter(|s| s.is_object()) else {
            return Err(HubError::Invalid("manifest has no spec object".into()));
        };
        let org = self
            .store
            .cluster(cluster)?
            .ok_or_else(|| HubError::NotFound(cluster.into()))?
            .org;
        check_deliverable(&self.signer(), cluster, &org, kind, namespace, name, spec)?;
        let intent = self
            .store
            .create_intent(
                cluster,
                kind,
                namespace,
                name,
                IntentAction::Apply,
                Some(manifest),
            )
            .map_err(|e| match e {
                StoreError::UnknownCluster(c) => HubError::NotFound(c),
                e => e.into(),
            })?;
        self.store.audit(
            "intent.apply",
            Some(cluster),
            "ok",
            &format!("{kind} {namespace}/{name} v{}", intent.version),
        )?;
        self.signal(cluster, None);
        Ok(intent)
    }

    /// Declares that an object must be deleted.
    pub fn delete(
        &self,
        cluster: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<IntentRow, HubError> {
        if !KINDS.iter().any(|(k, _)| *k == kind) {
            return Err(HubError::Invalid(format!(
                "kind {kind} cannot be deleted (ApplicationInstance or Operation)"
            )));
        }
        check_object_names(namespace, name)?;
        let intent = self
            .store
            .create_intent(cluster, kind, namespace, name, IntentAction::Delete, None)
            .map_err(|e| match e {
                StoreError::UnknownCluster(c) => HubError::NotFound(c),
                e => e.into(),
            })?;
        self.store.audit(
            "intent.delete",
            Some(cluster),
            "ok",
            &format!("{kind} {namespace}/{name} v{}", intent.version),
        )?;
        self.signal(cluster, None);
        Ok(intent)
    }

    /// Every cluster with its pending-intent count and fault switches.
    pub fn clusters(&self) -> Result<Vec<ClusterView>, HubError> {
        let mut out = Vec::new();
        for mut row in self.store.clusters()? {
            row.connected = self.is_connected(&row.name);
            let pending = self.store.pending_intents(&row.name, 0, 100_000)?.len();
            let faults = self.faults_for(&row.name);
            out.push(ClusterView {
                row,
                pending_intents: pending,
                faults,
            });
        }
        Ok(out)
    }

    /// Declared objects (optionally of one cluster and/or kind) with their latest status and last intent outcome.
    pub fn objects(
        &self,
        cluster: Option<&str>,
        kind: Option<&str>,
    ) -> Result<Vec<ObjectView>, HubError> {
        let statuses = self.store.statuses(cluster, kind)?;
        let intents = self.store.intents(cluster, 100_000)?;
        let mut out = Vec::new();
        for object in self.store.objects(cluster, kind)? {
            let status = statuses
                .iter()
                .find(|s| {
                    s.cluster == object.cluster
                        && s.kind == object.kind
                        && s.namespace == object.namespace
                        && s.name == object.name
                })
                .cloned();
            let last_outcome = intents
                .iter()
                .rev()
                .find(|i| {
                    i.cluster == object.cluster
                        && i.kind == object.kind
                        && i.namespace == object.namespace
                        && i.name == object.name
                        && i.outcome.is_some()
                })
                .and_then(|i| i.outcome.clone());
            out.push(ObjectView {
                object,
                status,
                last_outcome,
            });
        }
        Ok(out)
    }

    /// Revokes a cluster: its certificates are refused at the TLS handshake
    /// from now on, and its live tunnel is closed.
    pub fn revoke(&self, cluster: &str) -> Result<Vec<String>, HubError> {
        let serials = self.store.revoke_cluster(cluster).map_err(|e| match e {
            StoreError::UnknownCluster(c) => HubError::NotFound(c),
            e => e.into(),
        })?;
        self.revoked
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .extend(serials.iter().cloned());
        self.signal(cluster, Some(Kill::Revoked));
        self.store.audit(
            "cluster.revoke",
            Some(cluster),
            "ok",
            &format!("{} certificate(s) revoked", serials.len()),
        )?;
        tracing::info!(cluster, certs = serials.len(), "cluster revoked");
        Ok(serials)
    }

    /// Adds a new intent-signing key; live tunnels get the new key set.
    pub fn rotate_keys(&self) -> Result<String, HubError> {
        let kid = keys::rotate(&self.store)?;
        self.keys_changed()?;
        self.store
            .audit("keys.rotate", None, "ok", &format!("new intent key {kid}"))?;
        tracing::info!(kid, "intent-signing key rotated");
        Ok(kid)
    }

    /// One step of a hub CA rotation (`add`, `switch`, `retire`), or `status`.
    /// Every step takes effect for new connections at once; live tunnels
    /// are asked to reconnect so their agents get the bundle in `Welcome`.
    pub fn rotate_ca(&self, step: &str) -> Result<CaRotationView, HubError> {
        use crate::ca::CaRing;
        let ring = match step {
            "status" => return self.ca_rotation_view(),
            "add" => CaRing::add(&self.store)?,
            "switch" => CaRing::switch(&self.store)?,
            "retire" => CaRing::retire(&self.store)?,
            other => {
                return Err(HubError::Invalid(format!(
                    "unknown rotate-ca step {other:?} (add, switch, retire, status)"
                )));
            }
        };
        let stage = ring.stage();
        let issuing = ring.issuing();
        self.set_ca_ring(ring);
        self.set_acceptor(crate::server::tls_acceptor(self)?);
        let ca_pem = self.cfg.state_dir.join("ca.pem");
        std::fs::write(&ca_pem, issuing.cert_pem()).map_err(|source| HubError::StateDir {
            path: ca_pem,
            source,
        })?;
        {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            for entry in conns.values() {
                let _ = entry.kill.send(Some(Kill::CaRotated));
            }
        }
        self.store.audit(
            "ca.rotate",
            None,
            "ok",
            &format!(
                "step={step} stage={} issuing_sha256={}",
                stage.as_str(),
                issuing.sha256_hex()
            ),
        )?;
        tracing::info!(step, stage = stage.as_str(), issuing_sha256 = %issuing.sha256_hex(), "hub CA rotation step");
        self.ca_rotation_view()
    }

    fn ca_rotation_view(&self) -> Result<CaRotationView, HubError> {
        let ring = self.ca_ring();
        let issuing = ring.issuing();
        let mut bundle_sha256 = vec![issuing.sha256_hex()];
        for ca in ring.all() {
            if ca.sha256_hex() != issuing.sha256_hex() {
                bundle_sha256.push(ca.sha256_hex());
            }
        }
        // Before `switch` every certificate comes from the old CA; after it,
        // those recorded up to the switch do.
        let mark = match ring.stage() {
            crate::ca::CaStage::Single => None,
            crate::ca::CaStage::Added => Some(i64::MAX),
            crate::ca::CaStage::Switched => ring.switch_mark(),
        };
        let clusters_on_old_ca = match mark {
            Some(m) => self.store.clusters_with_cert_upto(m)?,
            None => Vec::new(),
        };
        Ok(CaRotationView {
            stage: ring.stage().as_str().to_owned(),
            issuing_sha256: issuing.sha256_hex(),
            bundle_sha256,
            clusters_on_old_ca,
        })
    }

    /// Retires an intent-signing key and tells live tunnels to reconnect with the new key set.
    pub fn retire_key(&self, kid: &str) -> Result<(), HubError> {
        keys::retire(&self.store, kid)?;
        self.keys_changed()?;
        self.store.audit(
            "keys.retire",
            None,
            "ok",
            &format!("intent key {kid} retired"),
        )?;
        Ok(())
    }

    /// Sets a cluster's fault-injection switches; the live tunnel applies them when woken.
    pub fn set_faults(&self, cluster: &str, faults: Faults) -> Result<(), HubError> {
        if self.store.cluster(cluster)?.is_none() {
            return Err(HubError::NotFound(cluster.into()));
        }
        self.store.put_faults(
            cluster,
            &serde_json::to_value(&faults).map_err(StoreError::from)?,
        )?;
        self.faults
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster.to_owned(), faults.clone());
        self.store.audit(
            "faults.set",
            Some(cluster),
            "ok",
            &serde_json::to_string(&faults).unwrap_or_default(),
        )?;
        // The live tunnel re-reads its switches when woken.
        self.signal(cluster, None);
        Ok(())
    }
}
