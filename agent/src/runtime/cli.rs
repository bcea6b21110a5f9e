//! The `join` and `status` subcommands.
//!
//! `join` parses the token (without verifying it: only the hub can) to learn
//! the hub URL, stores the token in a Secret and applies the Cluster object
//! that names it; the running agent does the rest. `status` reads the
//! Cluster status and the certificate from the credentials Secret (never
//! the key) and prints them.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use vworkspace_crds::well_known::values::REGISTRATION_TOKEN_KEY;
use vworkspace_crds::{Cluster, ClusterPhase};
use vworkspace_protocol::{JoinToken, unix_now};

use crate::hub::creds::{self, keys};
use crate::process::args::{JoinArgs, OutputFormat, StatusArgs};

/// Field manager of the CLI's writes (distinct from the agent's, as upstream).
pub const CLI_FIELD_MANAGER: &str = "vworkspace-cli";

/// Why `join` or `status` failed. Messages never contain the token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The token does not parse or has expired.
    #[error("--token is not a usable join token: {0}")]
    Token(#[from] vworkspace_protocol::JoinTokenError),
    /// API error.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The Cluster did not become Connected in time.
    #[error(
        "the Cluster {name} is {phase} after waiting {waited:?} (is the agent running? see `vworkspace-agent status`)"
    )]
    Timeout {
        /// Cluster object.
        name: String,
        /// Last phase seen.
        phase: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The Cluster object does not exist.
    #[error("Cluster {0} does not exist; run `vworkspace-agent join --token ...` first")]
    NoCluster(String),
}

/// Stores the token and applies the Cluster object; optionally waits for Connected.
pub async fn join(client: kube::Client, args: JoinArgs) -> Result<String, CliError> {
    let JoinArgs {
        kube: _,
        identity,
        token,
        token_secret,
        wait,
    } = args;
    let parsed = JoinToken::parse(&token, unix_now())?;
    let claims = parsed.claims();
    let pp = PatchParams::apply(CLI_FIELD_MANAGER).force();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &identity.namespace);
    let secret = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": token_secret, "namespace": identity.namespace},
        "type": "Opaque",
        "stringData": {REGISTRATION_TOKEN_KEY: parsed.expose_secret()},
    });
    secrets
        .patch(&token_secret, &pp, &Patch::Apply(secret))
        .await?;
    let clusters: Api<Cluster> = Api::all(client);
    let cluster = serde_json::json!({
        "apiVersion": "ops.vworkspace.io/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": identity.cluster_object},
        "spec": {
            "controlPlaneEndpoint": claims.hub_url,
            "registrationTokenSecretRef": {"name": token_secret, "key": REGISTRATION_TOKEN_KEY},
        },
    });
    clusters
        .patch(&identity.cluster_object, &pp, &Patch::Apply(cluster))
        .await?;
    let mut out = format!(
        "Cluster {} now points at {} (cluster {}, org {}); the join token is in Secret {}/{}.\n",
        identity.cluster_object,
        claims.hub_url,
        claims.cluster,
        claims.org,
        identity.namespace,
        token_secret
    );
    if wait.0.is_zero() {
        return Ok(out);
    }
    let deadline = tokio::time::Instant::now() + wait.0;
    loop {
        let c = clusters.get_opt(&identity.cluster_object).await?;
        let phase = c
            .as_ref()
            .and_then(|c| c.status.as_ref())
            .and_then(|s| s.phase);
        if phase == Some(ClusterPhase::Connected) {
            out.push_str("Connected.\n");
            return Ok(out);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Timeout {
                name: identity.cluster_object,
                phase: phase.map(|p| p.as_str()).unwrap_or("unknown").to_owned(),
                waited: wait.0,
            });
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// What `status` prints.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// Cluster object name.
    pub cluster_object: String,
    /// Phase.
    pub phase: Option<String>,
    /// Condition type → `status/reason: message`.
    pub conditions: BTreeMap<String, String>,
    /// Cluster id.
    pub cluster_id: Option<String>,
    /// Organisation.
    pub org: Option<String>,
    /// Hub URL.
    pub hub: Option<String>,
    /// Certificate expiry (RFC 3339).
    pub certificate_not_after: Option<String>,
    /// Last contact with the hub (RFC 3339).
    pub last_contact: Option<String>,
    /// Agent version that wrote the status.
    pub agent_version: Option<String>,
}

/// Reads the Cluster status and the credentials certificate.
pub async fn status(client: kube::Client, args: &StatusArgs) -> Result<StatusReport, CliError> {
    let clusters: Api<Cluster> = Api::all(client.clone());
    let c = clusters
        .get_opt(&args.identity.cluster_object)
        .await?
        .ok_or_else(|| CliError::NoCluster(args.identity.cluster_object.clone()))?;
    let st = c.status.clone().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client, &args.identity.namespace);
    let secret = secrets.get_opt(&args.identity.credentials_secret).await?;
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let field = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    let not_after = field(keys::TLS_CRT)
        .and_then(|pem| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()).find_map(Result::ok)
        })
        .and_then(|der| creds::cert_validity(der.as_ref()))
        .and_then(|(_, na)| crate::hub::enroll::time_from_unix(na))
        .map(|t| t.0.to_string())
        .or_else(|| st.certificate_not_after.as_ref().map(|t| t.0.to_string()));
    Ok(StatusReport {
        cluster_object: args.identity.cluster_object.clone(),
        phase: st.phase.map(|p| p.as_str().to_owned()),
        conditions: st
            .conditions
            .iter()
            .map(|c| {
                (
                    c.type_.clone(),
                    format!("{}/{}: {}", c.status, c.reason, c.message),
                )
            })
            .collect(),
        cluster_id: field(keys::CLUSTER_ID).or(st.cluster_id.clone()),
        org: field(keys::ORG).or(st.org.clone()),
        hub: field(keys::HUB_URL).or(c.spec.endpoint().map(str::to_owned)),
        certificate_not_after: not_after,
        last_contact: st.last_heartbeat.as_ref().map(|t| t.0.to_string()),
        agent_version: st.agent_version.clone(),
    })
}

/// Renders a report.
pub fn render(report: &StatusReport, format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => serde_json::to_string_pretty(report).unwrap_or_default() + "\n",
        OutputFormat::Text => {
            let dash = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
            let mut s = String::new();
            let mut line = |k: &str, v: String| s.push_str(&format!("{k:<22}{v}\n"));
            line("Cluster object:", report.cluster_object.clone());
            line("Phase:", dash(&report.phase));
            line("Cluster id:", dash(&report.cluster_id));
            line("Organisation:", dash(&report.org));
            line("Hub:", dash(&report.hub));
            line("Certificate expires:", dash(&report.certificate_not_after));
            line("Last contact:", dash(&report.last_contact));
            line("Agent version:", dash(&report.agent_version));
            for (t, v) in &report.conditions {
                line(&format!("  {t}:"), v.clone());
            }
            s
        }
    }
}
