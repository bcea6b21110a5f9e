//! Command line and environment: one clap `Args` with a subcommand per mode.
//!
//! Every operator knob has a `--flag` and a `VWS_AGENT_*` variable. Shared
//! groups (kube client, agent identity, logging) are flattened structs.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::controllers::namespaces::NamespaceList;

/// The vWorkspace cluster agent.
#[derive(Debug, Parser)]
#[command(name = "vworkspace-agent", version, about)]
// The flattened groups and the subcommand carry no doc comment: clap would
// turn it into help text.
#[allow(missing_docs)]
pub struct Args {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the agent: enrollment, tunnel, intent apply, status stream, controllers.
    Run(RunArgs),
    /// Store a join token in a Secret and create the Cluster object that names it.
    Join(JoinArgs),
    /// Print connection state, identity, certificate expiry and last contact.
    Status(StatusArgs),
}

/// How logs are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable text.
    Plain,
}

/// Logging flags.
#[derive(Clone, Debug, clap::Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(
        long,
        env = "VWS_AGENT_LOG_FORMAT",
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "VWS_AGENT_LOG_LEVEL",
        default_value = "info,kube=warn,hyper=warn,rustls=warn,tungstenite=warn",
        global = true
    )]
    pub log_level: String,
}

/// How to reach the Kubernetes API server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KubeArgs {
    /// Kubeconfig context to use (default: in-cluster config, else the current context).
    #[arg(long, env = "VWS_AGENT_KUBE_CONTEXT")]
    pub context: Option<String>,
}

/// Where the agent keeps its own objects.
#[derive(Clone, Debug, clap::Args)]
pub struct IdentityArgs {
    /// Namespace the agent runs in; holds the token and credentials Secrets and the Lease.
    #[arg(long, env = "VWS_AGENT_NAMESPACE", default_value = "vworkspace-system")]
    pub namespace: String,

    /// Name of the cluster-scoped Cluster object that drives enrollment.
    #[arg(long, env = "VWS_AGENT_CLUSTER_OBJECT", default_value = "vworkspace")]
    pub cluster_object: String,

    /// Name of the Secret holding key, certificate, CA bundle and signing keys.
    #[arg(
        long,
        env = "VWS_AGENT_CREDENTIALS_SECRET",
        default_value = "vworkspace-agent-credentials"
    )]
    pub credentials_secret: String,
}

impl Default for IdentityArgs {
    fn default() -> Self {
        Self {
            namespace: "vworkspace-system".into(),
            cluster_object: "vworkspace".into(),
            credentials_secret: "vworkspace-agent-credentials".into(),
        }
    }
}

/// `run` flags.
#[derive(Clone, Debug, clap::Args)]
// The flattened groups and the subcommand carry no doc comment: clap would
// turn it into help text.
#[allow(missing_docs)]
pub struct RunArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    /// Override of the hub tunnel URL (`wss://HOST:PORT/v1/tunnel`); default: the one enrollment returned.
    #[arg(long, env = "VWS_AGENT_HUB_ENDPOINT")]
    pub hub_endpoint: Option<String>,

    /// Comma-separated namespaces intents may write to, on top of the `managed-by=vworkspace` label (empty: any labelled namespace).
    #[arg(long, env = "VWS_AGENT_ALLOWED_NAMESPACES", default_value = "")]
    pub allowed_namespaces: NamespaceList,

    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "VWS_AGENT_ADMIN_ADDR", default_value = "0.0.0.0:9990")]
    pub admin_addr: SocketAddr,

    /// First reconnect delay; doubles per failed attempt (full jitter).
    #[arg(long, env = "VWS_AGENT_BACKOFF_MIN", default_value = "1s")]
    pub backoff_min: Dur,

    /// Cap of the reconnect delay.
    #[arg(long, env = "VWS_AGENT_BACKOFF_MAX", default_value = "5m")]
    pub backoff_max: Dur,

    /// `/readyz` stays ready this long after start or after losing the tunnel.
    #[arg(long, env = "VWS_AGENT_READY_GRACE", default_value = "2m")]
    pub ready_grace: Dur,

    /// Name of the coordination.k8s.io Lease that elects the active replica.
    #[arg(long, env = "VWS_AGENT_LEASE_NAME", default_value = "vworkspace-agent")]
    pub lease_name: String,

    /// How long a Lease holder stays leader without renewing.
    #[arg(long, env = "VWS_AGENT_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: Dur,

    /// How often the leader renews the Lease.
    #[arg(long, env = "VWS_AGENT_LEASE_RENEW", default_value = "5s")]
    pub lease_renew: Dur,

    /// Identity of this replica in the Lease (the pod name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Run the ApplicationInstance/Operation controllers (behind the Lease).
    #[arg(long, env = "VWS_AGENT_CONTROLLERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,

    /// Namespace Velero runs in (Backups and Restores are created there).
    #[arg(long, env = "VWS_AGENT_VELERO_NAMESPACE", default_value = "velero")]
    pub velero_namespace: String,

    /// Finished Operations kept per target; older ones are deleted.
    #[arg(long, env = "VWS_AGENT_OPERATION_HISTORY_LIMIT", default_value_t = 10)]
    pub operation_history_limit: usize,

    /// Timeout of an Operation whose spec sets none.
    #[arg(long, env = "VWS_AGENT_OPERATION_TIMEOUT", default_value = "1h")]
    pub operation_timeout: Dur,

    /// Periodic re-reconcile of the controllers, on top of their watches.
    #[arg(long, env = "VWS_AGENT_CONTROLLER_RESYNC", default_value = "10m")]
    pub controller_resync: Dur,

    /// Reconciles running at once, per controller.
    #[arg(long, env = "VWS_AGENT_CONTROLLER_CONCURRENCY", default_value_t = 16)]
    pub controller_concurrency: u16,

    /// File holding the shared secret of `vws1.` approval claims (unset: approvals always block).
    #[arg(long, env = "VWS_AGENT_APPROVAL_SECRET_FILE")]
    pub approval_secret_file: Option<std::path::PathBuf>,
}

/// `join` flags.
#[derive(Clone, Debug, clap::Args)]
// The flattened groups and the subcommand carry no doc comment: clap would
// turn it into help text.
#[allow(missing_docs)]
pub struct JoinArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    /// The join token issued by the hub (a secret: prefer the environment variable).
    #[arg(long, env = "VWS_AGENT_JOIN_TOKEN", hide_env_values = true)]
    pub token: String,

    /// Secret (in --namespace) the token is stored in.
    #[arg(
        long,
        env = "VWS_AGENT_TOKEN_SECRET",
        default_value = "vworkspace-join-token"
    )]
    pub token_secret: String,

    /// Wait this long for the Cluster to become Connected (0: do not wait).
    #[arg(long, env = "VWS_AGENT_JOIN_WAIT", default_value = "0s")]
    pub wait: Dur,
}

/// Output format of `status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

/// `status` flags.
#[derive(Clone, Debug, clap::Args)]
// The flattened groups and the subcommand carry no doc comment: clap would
// turn it into help text.
#[allow(missing_docs)]
pub struct StatusArgs {
    #[command(flatten)]
    pub kube: KubeArgs,

    #[command(flatten)]
    pub identity: IdentityArgs,

    /// Output format.
    #[arg(long, short, default_value = "text")]
    pub output: OutputFormat,
}

// === impl Dur ===

/// A duration flag in jiff's friendly format (`500ms`, `30s`, `5m`,
/// `1h 30m`), or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Why a duration flag did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use e.g. 500ms, 30s, 5m or 1h 30m")]
pub struct ParseDurError(String);

impl FromStr for Dur {
    type Err = ParseDurError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || ParseDurError(s.to_owned());
        // A bare number has always meant seconds.
        if let Ok(secs) = t.parse::<u64>() {
            return Ok(Dur(Duration::from_secs(secs)));
        }
        let d: jiff::SignedDuration = t.parse().map_err(|_| err())?;
        Duration::try_from(d).map(Dur).map_err(|_| err())
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match jiff::SignedDuration::try_from(self.0) {
            // The alternate form is jiff's friendly format ("1h 30m").
            Ok(d) => write!(f, "{d:#}"),
            Err(_) => write!(f, "{}s", self.0.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_display() {
        for s in ["500ms", "30s", "5m", "2h", "0s", "1h 30m", "1s 500ms"] {
            let d: Dur = s.parse().unwrap();
            assert_eq!(d.to_string(), s, "{s}");
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
        // jiff's friendly printer normalises to the largest units.
        assert_eq!("90s".parse::<Dur>().unwrap().to_string(), "1m 30s");
        assert_eq!("7".parse::<Dur>().unwrap().0, Duration::from_secs(7));
        assert_eq!(
            "5 minutes".parse::<Dur>().unwrap().0,
            Duration::from_secs(300)
        );
        assert!("-1s".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
        assert!("5 parsecs".parse::<Dur>().is_err());
    }

    #[test]
    fn every_run_flag_has_a_default_or_is_optional() {
        let args = Args::try_parse_from(["vworkspace-agent", "run"]).unwrap();
        let Command::Run(run) = args.command else {
            panic!("expected run")
        };
        assert_eq!(run.backoff_max.0, Duration::from_secs(300));
        assert!(run.controllers);
        let args = Args::try_parse_from(["vworkspace-agent", "join"]);
        assert!(args.is_err(), "join requires --token");
    }
}
