//! Command line: `hub-sim serve` runs the hub; every other subcommand is a
//! thin client of the admin API.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::admin_client::AdminClient;
use crate::hub::Config;

/// Printed when `--admin-token` is given on the command line.
pub const ADMIN_TOKEN_FLAG_WARNING: &str = "--admin-token on the command line is visible to every user in the process list; use HUB_SIM_ADMIN_TOKEN, --admin-token-file or <state-dir>/admin-token instead";

/// A duration written as `90s`, `15m`, `2h`, `1d` or plain seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => s.split_at(i),
            None => (s, "s"),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (use e.g. 90s, 15m, 2h, 1d)"))?;
        let mult = match unit {
            "ms" => return Ok(Self(Duration::from_millis(n))),
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => {
                return Err(format!(
                    "invalid duration unit in {s:?} (use ms, s, m, h or d)"
                ));
            }
        };
        Ok(Self(Duration::from_secs(n * mult)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_millis() != 0 || d.is_zero() {
            return write!(f, "{}ms", d.as_millis());
        }
        let s = d.as_secs();
        match s {
            s if s % 86400 == 0 => write!(f, "{}d", s / 86400),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

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
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `Serve` does not matter.
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
        #[arg(long)]
        cluster: String,
    },
    /// Show clusters, apps, operations, intents, keys or the audit log.
    Get {
        what: GetWhat,
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, default_value = "table")]
        output: Output,
    },
    /// Revoke a cluster: its certificates are refused and its tunnel closed.
    Revoke { cluster: String },
    /// Add a new intent-signing key (old keys stay valid until retired).
    RotateKeys {
        /// Retire this key id instead of adding a key.
        #[arg(long)]
        retire: Option<String>,
    },
    /// Show or set a cluster's fault-injection switches (JSON, see docs/hub-sim.md).
    Faults {
        cluster: String,
        /// e.g. '{"duplicate":true,"delay_ms":200}'; '{}' clears every switch.
        set: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Issue a single-use join token; prints only the token on stdout.
    Create {
        #[arg(long)]
        cluster: String,
        #[arg(long)]
        org: String,
        /// Lifetime (default 1h, at most 24h).
        #[arg(long)]
        ttl: Option<HumanDuration>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GetWhat {
    Clusters,
    Apps,
    Operations,
    Intents,
    Keys,
    Audit,
    /// Events the agents sent (kept apart from the hub's audit log).
    Events,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

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
    /// Maximum unacked intents in flight per tunnel.
    #[arg(long, env = "HUB_SIM_WINDOW", default_value_t = 32)]
    pub window: usize,
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
    #[command(flatten)]
    pub recovery: crate::recovery::RecoveryArgs,
}

impl ServeArgs {
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
                let resp = self
                    .client()?
                    .post(
                        "/v1/tokens",
                        &json!({ "cluster": cluster, "org": org, "ttl_seconds": ttl.map(|t| t.0.as_secs()) }),
                    )
                    .await?;
                let token = resp["token"]
                    .as_str()
                    .context("admin API returned no token")?;
                println!("{token}");
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
                    let path = match cluster {
                        Some(c) => format!("/v1/clusters/{c}/apply"),
                        None => "/v1/apply".to_owned(),
                    };
                    let intent = client.post(&path, &doc).await?;
                    println!(
                        "{}/{} {}/{} applied to {} as version {} (intent {})",
                        intent["kind"].as_str().unwrap_or("?"),
                        intent["name"].as_str().unwrap_or("?"),
                        intent["namespace"].as_str().unwrap_or("?"),
                        intent["name"].as_str().unwrap_or("?"),
                        intent["cluster"].as_str().unwrap_or("?"),
                        intent["version"],
                        intent["id"].as_str().unwrap_or("?"),
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
                let intent = self
                    .client()?
                    .post(
                        &format!("/v1/clusters/{cluster}/delete"),
                        &json!({ "kind": kind, "namespace": namespace, "name": name }),
                    )
                    .await?;
                println!(
                    "{kind} {namespace}/{name} deletion sent to {cluster} as version {}",
                    intent["version"]
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

/// Accepts full names, kubectl short names and plurals.
fn canonical_kind(kind: &str) -> anyhow::Result<&'static str> {
    match kind.to_ascii_lowercase().as_str() {
        "applicationinstance" | "applicationinstances" | "appinst" | "app" | "apps" => {
            Ok("ApplicationInstance")
        }
        "operation" | "operations" | "op" | "ops" => Ok("Operation"),
        _ => bail!("unknown kind {kind:?} (ApplicationInstance/appinst or Operation/op)"),
    }
}

/// Parses one or more YAML (or JSON) documents into JSON values.
pub fn parse_manifests(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in split_yaml_documents(text) {
        let value: Value = serde_saphyr::from_str(&doc).context("manifest is not valid YAML")?;
        if !value.is_null() {
            out.push(value);
        }
    }
    if out.is_empty() {
        bail!("manifest holds no document");
    }
    Ok(out)
}

fn split_yaml_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(d) = docs.last_mut() {
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter().filter(|d| !d.trim().is_empty()).collect()
}

fn age(ts: Option<i64>) -> String {
    match ts {
        None => "-".into(),
        Some(t) => {
            let secs = (crate::store::now() - t).max(0);
            match secs {
                s if s < 120 => format!("{s}s"),
                s if s < 7200 => format!("{}m", s / 60),
                s if s < 172_800 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86400),
            }
        }
    }
}

fn conditions_summary(conds: &Value) -> String {
    let Some(list) = conds.as_array() else {
        return "-".into();
    };
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|c| {
            let t = c["type"].as_str().unwrap_or("?");
            let s = c["status"].as_str().unwrap_or("?");
            match c["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("{t}={s}({r})"),
                _ => format!("{t}={s}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}   ", c, w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Renders an admin API answer as a kubectl-style table.
pub fn render_table(what: GetWhat, value: &Value) -> String {
    let items: Vec<Value> = value.as_array().cloned().unwrap_or_default();
    match what {
        GetWhat::Clusters => table(
            &[
                "NAME",
                "ORG",
                "CONNECTED",
                "ENROLLED",
                "REVOKED",
                "PENDING",
                "LAST-SEEN",
                "AGENT",
                "FAULTS",
            ],
            items
                .iter()
                .map(|c| {
                    let faults = c["faults"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(_, v)| !v.is_null() && **v != Value::Bool(false))
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".into());
                    vec![
                        s(&c["name"]),
                        s(&c["org"]),
                        if c["connected"] == Value::Bool(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        age(c["enrolled_at"].as_i64()),
                        if c["revoked_at"].is_null() {
                            "no".into()
                        } else {
                            format!("yes ({} ago)", age(c["revoked_at"].as_i64()))
                        },
                        s(&c["pending_intents"]),
                        age(c["last_seen"].as_i64()),
                        s(&c["agent_version"]),
                        faults,
                    ]
                })
                .collect(),
        ),
        GetWhat::Apps | GetWhat::Operations => {
            let ops = matches!(what, GetWhat::Operations);
            let mut headers = vec!["CLUSTER", "NAMESPACE", "NAME", "VERSION", "STATE", "ACK"];
            if ops {
                headers.push("PHASE");
            }
            headers.push("CONDITIONS");
            table(
                &headers,
                items
                    .iter()
                    .map(|o| {
                        let mut row = vec![
                            s(&o["cluster"]),
                            s(&o["namespace"]),
                            s(&o["name"]),
                            s(&o["version"]),
                            if o["deleted"] == Value::Bool(true) {
                                "deleted"
                            } else {
                                "declared"
                            }
                            .into(),
                            s(&o["last_outcome"]),
                        ];
                        if ops {
                            row.push(s(&o["status"]["phase"]));
                        }
                        row.push(conditions_summary(&o["status"]["conditions"]));
                        row
                    })
                    .collect(),
            )
        }
        GetWhat::Intents => table(
            &[
                "SEQ", "CLUSTER", "KIND", "OBJECT", "VERSION", "ACTION", "OUTCOME", "AGE",
            ],
            items
                .iter()
                .map(|i| {
                    let outcome = match (i["outcome"].as_str(), i["outcome_message"].as_str()) {
                        (Some(o), Some(m)) if o == "rejected" => format!("{o}: {m}"),
                        (Some(o), _) => o.into(),
                        (None, _) => "pending".into(),
                    };
                    vec![
                        s(&i["seq"]),
                        s(&i["cluster"]),
                        s(&i["kind"]),
                        format!("{}/{}", s(&i["namespace"]), s(&i["name"])),
                        s(&i["version"]),
                        s(&i["action"]),
                        outcome,
                        age(i["created_at"].as_i64()),
                    ]
                })
                .collect(),
        ),
        GetWhat::Keys => {
            let active = value["active"].as_str().unwrap_or("");
            let rows = value["intent"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|k| {
                    let kid = s(&k["kid"]);
                    let state = if kid == active {
                        "active (signing)"
                    } else if k["retired_at"].is_null() {
                        "valid"
                    } else {
                        "retired"
                    };
                    vec![kid, state.into(), age(k["created_at"].as_i64())]
                })
                .collect();
            table(&["KID", "STATE", "AGE"], rows)
        }
        GetWhat::Events => table(
            &[
                "ID", "AGE", "CLUSTER", "SEVERITY", "REASON", "OBJECT", "MESSAGE",
            ],
            items
                .iter()
                .map(|e| {
                    vec![
                        s(&e["id"]),
                        age(e["received_at"].as_i64()),
                        s(&e["cluster"]),
                        s(&e["severity"]),
                        s(&e["reason"]),
                        s(&e["object"]),
                        s(&e["message"]),
                    ]
                })
                .collect(),
        ),
        GetWhat::Audit => table(
            &["ID", "AGE", "EVENT", "CLUSTER", "OUTCOME", "DETAIL"],
            items
                .iter()
                .map(|a| {
                    vec![
                        s(&a["id"]),
                        age(a["ts"].as_i64()),
                        s(&a["event"]),
                        s(&a["cluster"]),
                        s(&a["outcome"]),
                        s(&a["detail"]),
                    ]
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_round_trip() {
        for text in ["90s", "15m", "2h", "1d", "250ms"] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.to_string(), text);
        }
        assert_eq!(
            "30".parse::<HumanDuration>().unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!("60m".parse::<HumanDuration>().unwrap().to_string(), "1h");
        assert!("1w".parse::<HumanDuration>().is_err());
        assert!("h".parse::<HumanDuration>().is_err());
    }

    #[test]
    fn multi_document_yaml_parses() {
        let docs = parse_manifests(
            "apiVersion: apps.vworkspace.io/v1alpha1\nkind: ApplicationInstance\nmetadata: {name: a, namespace: n}\nspec: {mode: placeholder}\n---\n---\nkind: Operation\n",
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0]["spec"]["mode"], "placeholder");
        assert_eq!(docs[1]["kind"], "Operation");
        assert!(parse_manifests("\n---\n").is_err());
    }

    #[test]
    fn tables_show_conditions() {
        let v = json!([{
            "cluster": "c", "kind": "ApplicationInstance", "namespace": "n", "name": "a",
            "version": 2, "deleted": false, "last_outcome": "applied",
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "HelmReleaseReady"}]}
        }]);
        let t = render_table(GetWhat::Apps, &v);
        assert!(t.contains("Ready=True(HelmReleaseReady)"), "{t}");
        assert!(t.starts_with("CLUSTER"));
        assert_eq!(canonical_kind("appinst").unwrap(), "ApplicationInstance");
        assert_eq!(canonical_kind("op").unwrap(), "Operation");
    }
}
