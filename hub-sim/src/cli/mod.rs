//! Command line: `hub-sim serve` runs the hub; every other subcommand is a
//! thin client of the admin API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

mod duration;
mod manifests;

pub use crate::table::{GetWhat, render_table};
pub use duration::HumanDuration;
pub use manifests::parse_manifests;

use manifests::canonical_kind;

use crate::admin_client::AdminClient;
use crate::api::{DeleteRequest, IntentRow, IssuedToken, TokenRequest};
use crate::hub::Config;

/// Printed when `--admin-token` is given on the command line.
pub const ADMIN_TOKEN_FLAG_WARNING: &str = "--admin-token on the command line is visible to every user in the process list; use HUB_SIM_ADMIN_TOKEN, --admin-token-file or <state-dir>/admin-token instead";

/// hub-sim: a small, faithful vWorkspace hub for development and tests.
#[derive(Parser, Debug)]
#[command(name = "hub-sim", version)]
pub struct Args {
    /// State directory (database, admin token, CA certificate).
    #[arg(
        long,
        env = "HUB_SIM_STATE_DIR",
        default_value = ".hub-sim",
        global = true
    )]
    pub state_dir: PathBuf,
    /// Admin API address (default: read from <state-dir>/admin-addr).
    #[arg(long, env = "HUB_SIM_ADMIN", global = true)]
    pub admin: Option<SocketAddr>,
    /// Admin API token (default: read from <state-dir>/admin-token). Prefer
    /// the environment variable or --admin-token-file: a command-line flag
    /// is visible to every user in the process list.
    #[arg(
        long,
        env = "HUB_SIM_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// File holding the admin API token.
    #[arg(long, env = "HUB_SIM_ADMIN_TOKEN_FILE", global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `Serve` does not matter.
/// What `hub-sim` does: serve, or act on a running hub through its admin API.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the hub: TLS listener (enrollment + tunnel) and admin API.
    Serve(ServeArgs),
    /// Run the whole loop once in a temporary state dir with a simulated agent.
    Demo,
    /// Join tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Declare an ApplicationInstance or Operation on a cluster (signed intent, next version).
    Apply {
        /// YAML or JSON manifest; several YAML documents are applied in order. `-` reads stdin.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Target cluster (otherwise the hub.vworkspace.io/cluster annotation).
        #[arg(long)]
        cluster: Option<String>,
    },
    /// Declare that an object must be deleted: `delete KIND NAMESPACE/NAME --cluster C`.
    Delete {
        /// ApplicationInstance (appinst) or Operation (op).
        kind: String,
        /// NAMESPACE/NAME
        target: String,
        /// Cluster the object is on.
        #[arg(long)]
        cluster: String,
    },
    /// Show clusters, apps, operations, intents, keys or the audit log.
    Get {
        /// What to show.
        what: GetWhat,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Revoke a cluster: its certificates are refused and its tunnel closed.
    Revoke {
        /// Cluster to revoke.
        cluster: String,
    },
    /// Add a new intent-signing key (old keys stay valid until retired).
    RotateKeys {
        /// Retire this key id instead of adding a key.
        #[arg(long)]
        retire: Option<String>,
    },
    /// Rotate the hub CA in stages (docs/operations.md): `add` puts a new CA
    /// into the bundle, `switch` issues from it, `retire` drops the old one;
    /// `status` shows the stage and the clusters still on the old CA.
    RotateCa {
        /// The rotation step to run.
        #[arg(value_parser = ["add", "switch", "retire", "status"])]
        step: String,
    },
    /// Show or set a cluster's fault-injection switches (JSON, see docs/hub-sim.md).
    Faults {
        /// Cluster whose switches to show or set.
        cluster: String,
        /// e.g. '{"duplicate":true,"delay_ms":200}'; '{}' clears every switch.
        set: Option<String>,
    },
}

/// `hub-sim token` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a single-use join token; prints only the token on stdout.
    Create {
        /// Cluster the token enrolls (created if new).
        #[arg(long)]
        cluster: String,
        /// Organisation of that cluster.
        #[arg(long)]
        org: String,
        /// Lifetime (default 1h, at most 24h).
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
}

/// Output format of `hub-sim get`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// kubectl-style table.
    Table,
    /// The admin API's JSON, pretty-printed.
    Json,
}

/// Flags of `hub-sim serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// TLS listener for /v1/enroll and /v1/tunnel.
    #[arg(long, env = "HUB_SIM_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Admin API listener (keep it on loopback).
    #[arg(long, env = "HUB_SIM_ADMIN_LISTEN", default_value = "127.0.0.1:8080")]
    pub admin_listen: SocketAddr,
    /// Hub URL put into join tokens (default https://<listen>).
    #[arg(long, env = "HUB_SIM_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Extra DNS names or IPs for the server certificate (localhost and 127.0.0.1 are always there).
    #[arg(
        long = "server-name",
        env = "HUB_SIM_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// Lifetime of issued client certificates.
    #[arg(long, env = "HUB_SIM_CERT_LIFETIME", default_value = "24h")]
    pub cert_lifetime: HumanDuration,
    /// Default join-token lifetime.
    #[arg(long, env = "HUB_SIM_TOKEN_TTL", default_value = "1h")]
    pub token_ttl: HumanDuration,
    /// Lifetime of a signed intent from the moment it is sent.
    #[arg(long, env = "HUB_SIM_INTENT_TTL", default_value = "10m")]
    pub intent_ttl: HumanDuration,
    /// Maximum concurrent TLS connections.
    #[arg(long, env = "HUB_SIM_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Most unacked intents in flight per tunnel (the agent's offer in Hello
    /// can lower it; agents that offer none get at most 32).
    #[arg(long, env = "HUB_SIM_WINDOW", default_value_t = 1024)]
    pub window: usize,
    /// Most buckets of a bucketed reconnect digest the hub compares (a power
    /// of two from 16 to 32768; 0: ask agents for the whole inventory, as
    /// hubs without bucketed digests do).
    #[arg(long, env = "HUB_SIM_DIGEST_BUCKETS", default_value_t = vworkspace_protocol::digest::MAX_BUCKETS)]
    pub digest_buckets: u32,
    /// WebSocket ping interval.
    #[arg(long, env = "HUB_SIM_PING_INTERVAL", default_value = "20s")]
    pub ping_interval: HumanDuration,
    /// Drop a tunnel silent for this long.
    #[arg(long, env = "HUB_SIM_IDLE_TIMEOUT", default_value = "60s")]
    pub idle_timeout: HumanDuration,
    /// Goodbye.retry_after sent to agents on shutdown.
    #[arg(long, env = "HUB_SIM_RETRY_AFTER", default_value = "5s")]
    pub retry_after: HumanDuration,
    /// Deadline for everything on a connection before a tunnel upgrade
    /// (request headers and bodies, keep-alive idling).
    #[arg(long, env = "HUB_SIM_REQUEST_TIMEOUT", default_value = "30s")]
    pub request_timeout: HumanDuration,
    /// Connections without a verified client certificate kept at once (the
    /// oldest is closed beyond this).
    #[arg(long, env = "HUB_SIM_MAX_UNAUTHENTICATED", default_value_t = 1024)]
    pub max_unauthenticated: usize,
    /// Enrollment requests one peer address may send in a burst.
    #[arg(long, env = "HUB_SIM_ENROLL_PEER_BURST", default_value_t = 20)]
    pub enroll_peer_burst: u32,
    /// Enrollment requests per second one peer address gets back.
    #[arg(long, env = "HUB_SIM_ENROLL_PEER_RATE", default_value_t = 1.0)]
    pub enroll_peer_rate: f64,
    /// Enrollment requests the whole hub takes in a burst.
    #[arg(long, env = "HUB_SIM_ENROLL_BURST", default_value_t = 200)]
    pub enroll_burst: u32,
    /// Enrollment requests per second the whole hub gets back.
    #[arg(long, env = "HUB_SIM_ENROLL_RATE", default_value_t = 50.0)]
    pub enroll_rate: f64,
    /// Recovery and clock-simulation flags.
    #[command(flatten)]
    pub recovery: crate::recovery::RecoveryArgs,
}

impl ServeArgs {
    /// The hub configuration these flags describe, with state in `state_dir`.
    pub fn into_config(self, state_dir: PathBuf) -> Config {
        let Self {
            listen,
            admin_listen,
            public_url,
            server_names,
            cert_lifetime,
            token_ttl,
            intent_ttl,
            max_connections,
            window,
            digest_buckets,
            ping_interval,
            idle_timeout,
            retry_after,
            request_timeout,
            max_unauthenticated,
            enroll_peer_burst,
            enroll_peer_rate,
            enroll_burst,
            enroll_rate,
            recovery,
        } = self;
        let mut cfg = Config::new(state_dir);
        recovery.apply(&mut cfg);
        cfg.listen = listen;
        cfg.admin_listen = admin_listen;
        cfg.public_url = public_url;
        for n in server_names {
            if !cfg.server_names.contains(&n) {
                cfg.server_names.push(n);
            }
        }
        cfg.client_cert_lifetime = cert_lifetime.0;
        cfg.token_ttl = token_ttl.0;
        cfg.intent_ttl = intent_ttl.0;
        cfg.max_connections = max_connections;
        cfg.window = window.max(1);
        cfg.digest_buckets = digest_buckets;
        cfg.ping_interval = ping_interval.0;
        cfg.idle_timeout = idle_timeout.0;
        cfg.shutdown_retry_after = retry_after.0;
        cfg.request_timeout = request_timeout.0;
        cfg.max_unauthenticated = max_unauthenticated.max(1);
        cfg.enroll_rate = crate::ratelimit::RateLimits {
            per_peer: crate::ratelimit::Budget {
                burst: enroll_peer_burst,
                per_sec: enroll_peer_rate.max(0.0),
            },
            global: crate::ratelimit::Budget {
                burst: enroll_burst,
                per_sec: enroll_rate.max(0.0),
            },
        };
        cfg
    }
}

impl Args {
    /// Parses the command line; also returns warnings about how it was given
    /// (to be logged once logging is set up).
    pub fn parse_with_warnings() -> (Self, Vec<String>) {
        use clap::{CommandFactory, FromArgMatches};
        let matches = Self::command().get_matches();
        let args = match Self::from_arg_matches(&matches) {
            Ok(a) => a,
            Err(e) => e.exit(),
        };
        let mut warnings = Vec::new();
        if matches.value_source("admin_token") == Some(clap::parser::ValueSource::CommandLine) {
            warnings.push(ADMIN_TOKEN_FLAG_WARNING.to_owned());
        }
        (args, warnings)
    }

    fn client(&self) -> anyhow::Result<AdminClient> {
        let addr = match self.admin {
            Some(a) => a,
            None => {
                let path = self.state_dir.join("admin-addr");
                let text = std::fs::read_to_string(&path).with_context(|| {
                    format!(
                        "no admin address: pass --admin / HUB_SIM_ADMIN or run `hub-sim serve` with --state-dir {}",
                        self.state_dir.display()
                    )
                })?;
                text.trim()
                    .parse()
                    .with_context(|| format!("{} holds no socket address", path.display()))?
            }
        };
        let token = match (&self.admin_token, &self.admin_token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading --admin-token-file {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                let path = self.state_dir.join("admin-token");
                std::fs::read_to_string(&path)
                    .with_context(|| {
                        format!(
                            "no admin token: pass --admin-token / HUB_SIM_ADMIN_TOKEN or make {} readable",
                            path.display()
                        )
                    })?
                    .trim()
                    .to_owned()
            }
        };
        Ok(AdminClient::new(addr, token))
    }

    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<()> {
        match &self.command {
            Command::Serve(serve) => {
                let cfg = serve.clone().into_config(self.state_dir.clone());
                crate::serve_until_signal(cfg).await
            }
            Command::Demo => crate::demo::run().await,
            Command::Token(TokenCommand::Create { cluster, org, ttl }) => {
                let request = TokenRequest {
                    cluster: cluster.clone(),
                    org: org.clone(),
                    ttl_seconds: ttl.map(|t| t.0.as_secs()),
                };
                let issued: IssuedToken = self.client()?.post_as("/v1/tokens", &request).await?;
                println!("{}", issued.token);
                Ok(())
            }
            Command::Apply { file, cluster } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin()).context("reading stdin")?
                } else {
                    std::fs::read_to_string(file)
                        .with_context(|| format!("reading {}", file.display()))?
                };
                let docs = parse_manifests(&text)?;
                let client = self.client()?;
                for doc in docs {
                    if let Some(why) = manifests::spec_mismatch(&doc) {
                        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
                        eprintln!(
                            "warning: {} {name:?} does not match the CRD schema ({why}); sending it anyway, the agent will judge it",
                            doc["kind"].as_str().unwrap_or_default()
                        );
                    }
                    let path = match cluster {
                        Some(c) => format!("/v1/clusters/{c}/apply"),
                        None => "/v1/apply".to_owned(),
                    };
                    let intent: IntentRow = client.post_as(&path, &doc).await?;
                    println!(
                        "{}/{} {}/{} applied to {} as version {} (intent {})",
                        intent.kind,
                        intent.name,
                        intent.namespace,
                        intent.name,
                        intent.cluster,
                        intent.version,
                        intent.id,
                    );
                }
                Ok(())
            }
            Command::Delete {
                kind,
                target,
                cluster,
            } => {
                let kind = canonical_kind(kind)?;
                let (namespace, name) = target
                    .split_once('/')
                    .context("target must be NAMESPACE/NAME")?;
                let request = DeleteRequest {
                    kind: kind.to_owned(),
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                };
                let intent: IntentRow = self
                    .client()?
                    .post_as(&format!("/v1/clusters/{cluster}/delete"), &request)
                    .await?;
                println!(
                    "{kind} {namespace}/{name} deletion sent to {cluster} as version {}",
                    intent.version
                );
                Ok(())
            }
            Command::Get {
                what,
                cluster,
                output,
            } => {
                let client = self.client()?;
                let q = cluster
                    .as_ref()
                    .map(|c| format!("cluster={c}&"))
                    .unwrap_or_default();
                let value = match what {
                    GetWhat::Clusters => client.get("/v1/clusters").await?,
                    GetWhat::Apps => {
                        client
                            .get(&format!("/v1/objects?{q}kind=ApplicationInstance"))
                            .await?
                    }
                    GetWhat::Operations => {
                        client
                            .get(&format!("/v1/objects?{q}kind=Operation"))
                            .await?
                    }
                    GetWhat::Intents => client.get(&format!("/v1/intents?{q}limit=200")).await?,
                    GetWhat::Keys => client.get("/v1/keys").await?,
                    GetWhat::Audit => client.get("/v1/audit?limit=200").await?,
                    GetWhat::Events => client.get(&format!("/v1/events?{q}limit=200")).await?,
                };
                match output {
                    Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
                    Output::Table => print!("{}", render_table(*what, &value)),
                }
                Ok(())
            }
            Command::Revoke { cluster } => {
                let resp = self
                    .client()?
                    .post(&format!("/v1/clusters/{cluster}/revoke"), &json!({}))
                    .await?;
                println!(
                    "cluster {cluster} revoked ({} certificate(s))",
                    resp["revoked_certificates"]
                        .as_array()
                        .map(|a| a.len())
                        .unwrap_or(0)
                );
                Ok(())
            }
            Command::RotateKeys { retire } => {
                let client = self.client()?;
                match retire {
                    Some(kid) => {
                        client
                            .post(&format!("/v1/keys/{kid}/retire"), &json!({}))
                            .await?;
                        println!("intent key {kid} retired");
                    }
                    None => {
                        let resp = client.post("/v1/keys/rotate", &json!({})).await?;
                        println!(
                            "new intent-signing key {} (older keys stay valid until retired)",
                            resp["active"].as_str().unwrap_or("?")
                        );
                    }
                }
                Ok(())
            }
            Command::RotateCa { step } => {
                let client = self.client()?;
                let resp = if step == "status" {
                    client.get("/v1/ca/rotation").await?
                } else {
                    client
                        .post(&format!("/v1/ca/rotation/{step}"), &json!({}))
                        .await?
                };
                let view: crate::hub::CaRotationView =
                    serde_json::from_value(resp).context("unexpected rotate-ca answer")?;
                println!("stage: {}", view.stage);
                println!(
                    "issuing CA (new join tokens pin it): {}",
                    view.issuing_sha256
                );
                println!("bundle: {}", view.bundle_sha256.join(" "));
                if view.clusters_on_old_ca.is_empty() {
                    println!("clusters still on a certificate from the old CA: none");
                } else {
                    println!(
                        "clusters still on a certificate from the old CA (retire cuts them off): {}",
                        view.clusters_on_old_ca.join(" ")
                    );
                }
                Ok(())
            }
            Command::Faults { cluster, set } => {
                let client = self.client()?;
                let path = format!("/v1/clusters/{cluster}/faults");
                let value = match set {
                    Some(body) => {
                        let body: Value =
                            serde_json::from_str(body).context("fault switches must be JSON")?;
                        client.put(&path, &body).await?
                    }
                    None => client.get(&path).await?,
                };
                println!("{}", serde_json::to_string_pretty(&value)?);
                Ok(())
            }
        }
    }
}
