//! Command line and environment: one clap `Args` with a subcommand per mode.
//!
//! Every operator knob has a `--flag` and a `VWS_AGENT_*` variable. Shared
//! groups (kube client, agent identity, logging) are flattened structs.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// The vWorkspace cluster agent.
#[derive(Debug, Parser)]
#[command(name = "vworkspace-agent", version, about)]
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

/// A duration flag: `500ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

/// Why a duration flag did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use a number with ms, s, m or h (e.g. 30s)")]
pub struct ParseDurError(String);

impl FromStr for Dur {
    type Err = ParseDurError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = || ParseDurError(s.to_owned());
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            _ => return Err(err()),
        };
        Ok(Dur(d))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            let s = ms / 1000;
            if s != 0 && s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s.is_multiple_of(60) {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        }
    }
}

// === impl NamespaceList ===

/// A comma-separated list of namespace names; empty means "no extra restriction".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceList(pub Vec<String>);

/// Why a namespace list did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid namespace {0:?} in the list: namespaces are DNS labels")]
pub struct ParseNamespaceListError(String);

impl NamespaceList {
    /// Whether `ns` passes the list (an empty list passes everything).
    pub fn allows(&self, ns: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == ns)
    }
}

impl FromStr for NamespaceList {
    type Err = ParseNamespaceListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ok = part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-');
            if !ok {
                return Err(ParseNamespaceListError(part.to_owned()));
            }
            out.push(part.to_owned());
        }
        out.sort();
        out.dedup();
        Ok(Self(out))
    }
}

impl fmt::Display for NamespaceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip_through_display() {
        for s in ["500ms", "30s", "5m", "2h", "0s", "90s", "1500ms"] {
            let d: Dur = s.parse().unwrap();
            assert_eq!(d.to_string(), s, "{s}");
            assert_eq!(d.to_string().parse::<Dur>().unwrap(), d);
        }
        assert_eq!("7".parse::<Dur>().unwrap().0, Duration::from_secs(7));
        assert!("5 minutes".parse::<Dur>().is_err());
        assert!("-1s".parse::<Dur>().is_err());
        assert!("".parse::<Dur>().is_err());
    }

    #[test]
    fn namespace_lists_round_trip_and_reject_bad_names() {
        let l: NamespaceList = "team-b, team-a,,team-a".parse().unwrap();
        assert_eq!(l.0, ["team-a", "team-b"]);
        assert_eq!(l.to_string().parse::<NamespaceList>().unwrap(), l);
        assert!(l.allows("team-a") && !l.allows("team-c"));
        assert!(NamespaceList::default().allows("anything"));
        assert!("Team_A".parse::<NamespaceList>().is_err());
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
