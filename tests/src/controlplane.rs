//! A real etcd + kube-apiserver pair, started the way controller-runtime's envtest
//! starts it (see ../shared/CONTROL-PLANE.md section 4).
//!
//! Environment knobs (envtest's names): `KUBEBUILDER_CONTROLPLANE_START_TIMEOUT`
//! (per process, Go duration, default 60s here because 2-core CI machines are
//! slow), `KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT` (default 20s),
//! `KUBEBUILDER_ATTACH_CONTROL_PLANE_OUTPUT=true` (child output to the terminal
//! instead of log files in the temp dir).

use crate::assets::{self, Assets};
use crate::certs::{self, Pair};
use crate::process;
use base64::Engine as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Why the control plane could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Assets(#[from] assets::AssetError),
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The parser's message would quote the embedded private key, so it is dropped.
    #[error("the generated kubeconfig does not parse (details withheld: it embeds a private key)")]
    KubeconfigParse,
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    /// A process did not come up; carries the tail of its log.
    #[error("{what} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        what: &'static str,
        reason: String,
        log: String,
        tail: String,
    },
    #[error("at most {max} groups per client certificate, got {0}", max = certs::MAX_GROUPS)]
    TooManyGroups(usize),
    /// The shared instance failed to start earlier in this process.
    #[error("shared control plane failed to start: {0}")]
    Shared(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// A running etcd + kube-apiserver. Stopped (apiserver first) on drop.
pub struct ControlPlane {
    apiserver: Mutex<Option<Child>>,
    etcd: Mutex<Option<Child>>,
    exit_registration: u64,
    /// kube-apiserver's arguments, for [`ControlPlane::restart_apiserver`].
    apiserver_args: Vec<String>,
    /// Exit-hook registrations of restarted kube-apiservers.
    restart_registrations: Mutex<Vec<u64>>,
    url: String,
    assets: Assets,
    serving_ca: Pair,
    client_ca: Pair,
    kubeconfig: Kubeconfig,
    kubeconfig_path: PathBuf,
    config: kube::Config,
    // Last, so the directory outlives the processes writing into it.
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("url", &self.url)
            .field("kubeconfig_path", &self.kubeconfig_path)
            .finish_non_exhaustive()
    }
}

const START_ATTEMPTS: usize = 3;

fn start_timeout() -> Duration {
    process::env_duration(
        "KUBEBUILDER_CONTROLPLANE_START_TIMEOUT",
        Duration::from_secs(60),
    )
}

fn stop_timeout() -> Duration {
    process::env_duration(
        "KUBEBUILDER_CONTROLPLANE_STOP_TIMEOUT",
        Duration::from_secs(20),
    )
}

fn attach_output() -> bool {
    std::env::var("KUBEBUILDER_ATTACH_CONTROL_PLANE_OUTPUT").is_ok_and(|v| v == "true")
}

fn free_port() -> Result<(TcpListener, u16), Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("binding 127.0.0.1:0"))?;
    let port = l.local_addr().map_err(io_err("local_addr"))?.port();
    Ok((l, port))
}

/// Whether this etcd binary knows `--unsafe-no-fsync` (3.5+), as envtest checks.
fn etcd_supports_no_fsync(etcd: &Path) -> bool {
    static KNOWN: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, yes)) = known.iter().find(|(p, _)| p == etcd) {
        return *yes;
    }
    let yes = Command::new(etcd)
        .arg("--help")
        .output()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text)
                .lines()
                .any(|l| l.trim_start().starts_with("--unsafe-no-fsync"))
        })
        .unwrap_or(false);
    known.push((etcd.to_path_buf(), yes));
    yes
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A kubeconfig with embedded credentials for one user.
fn kubeconfig_yaml(url: &str, serving_ca: &Pair, user: &str, client: &Pair) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {url}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: envtest
  context:
    cluster: envtest
    user: {user}
    namespace: default
current-context: envtest
",
        ca = b64(&serving_ca.cert_pem),
        cert = b64(&client.cert_pem),
        key = b64(&client.key_pem),
        user = serde_json::to_string(user).unwrap_or_default(),
    )
}

fn parse_kubeconfig(text: &str) -> Result<Kubeconfig, Error> {
    Kubeconfig::from_yaml(text).map_err(|_| Error::KubeconfigParse)
}

async fn config_from(kubeconfig: &Kubeconfig) -> Result<kube::Config, Error> {
    Ok(
        kube::Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
            .await?,
    )
}

/// `GET /health` on etcd over plain HTTP; true when it reports healthy.
async fn etcd_healthy(port: u16) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.take(64 * 1024).read_to_end(&mut buf).await?;
        std::io::Result::Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    match tokio::time::timeout(Duration::from_secs(2), probe).await {
        Ok(Ok(resp)) => {
            resp.lines().next().is_some_and(|l| l.contains(" 200"))
                && resp.contains("\"health\":\"true\"")
        }
        _ => false,
    }
}

struct Log {
    path: PathBuf,
}

fn output_for(cmd: &mut Command, dir: &Path, name: &str) -> Result<Log, Error> {
    let path = dir.join(format!("{name}.log"));
    if attach_output() {
        cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
    } else {
        let file =
            fs::File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        let err = file.try_clone().map_err(io_err("cloning log handle"))?;
        cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
    }
    cmd.stdin(Stdio::null());
    Ok(Log { path })
}

fn not_ready(what: &'static str, reason: impl Into<String>, log: &Log) -> Error {
    let tail = if attach_output() {
        "(output attached to the terminal)".to_string()
    } else {
        process::tail(&log.path, 40)
    };
    Error::NotReady {
        what,
        reason: reason.into(),
        log: log.path.display().to_string(),
        tail,
    }
}

fn exited(child: &mut Child) -> Option<String> {
    match child.try_wait() {
        Ok(Some(status)) => Some(format!("process exited: {status}")),
        _ => None,
    }
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, retrying the whole start on failure (port races).
    ///
    /// Resolving the binaries may build them first (minutes, once per machine).
    pub async fn start() -> Result<Self, Error> {
        let assets = tokio::task::spawn_blocking(assets::resolve)
            .await
            .map_err(|e| Error::Shared(format!("asset resolution panicked: {e}")))??;
        let mut last = None;
        for attempt in 1..=START_ATTEMPTS {
            match Self::start_once(&assets).await {
                Ok(cp) => return Ok(cp),
                Err(e) => {
                    eprintln!("control plane start attempt {attempt}/{START_ATTEMPTS} failed: {e}");
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn start_once(assets: &Assets) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("vws-controlplane-")
            .tempdir()
            .map_err(io_err("creating the control-plane temp dir"))?;
        let root = dir.path().to_path_buf();
        let data_dir = root.join("etcd-data");
        let cert_dir = root.join("certs");
        for d in [&data_dir, &cert_dir] {
            fs::create_dir_all(d).map_err(io_err(format!("creating {}", d.display())))?;
        }

        let serving_ca = certs::ca("envtest-environment", "envtest")?;
        let serving = certs::serving(&serving_ca)?;
        let sa_signer = certs::ca("envtest-sa-signer", "envtest")?;
        let client_ca = certs::ca("envtest-client-ca", "envtest")?;
        let admin = certs::client(&client_ca, "admin", &["system:masters"])?;
        let write = |name: &str, body: &str| {
            let p = cert_dir.join(name);
            fs::write(&p, body).map_err(io_err(format!("writing {}", p.display())))?;
            Ok::<_, Error>(p)
        };
        write("apiserver.crt", &serving.cert_pem)?;
        write("apiserver.key", &serving.key_pem)?;
        let sa_crt = write("sa-signer.crt", &sa_signer.cert_pem)?;
        let sa_key = write("sa-signer.key", &sa_signer.key_pem)?;
        let client_ca_crt = write("client-cert-auth-ca.crt", &client_ca.cert_pem)?;

        // Hold the ports until just before spawning to narrow the race.
        let (l1, etcd_client_port) = free_port()?;
        let (l2, etcd_peer_port) = free_port()?;
        let (l3, secure_port) = free_port()?;
        let timeout = start_timeout();

        // etcd
        let etcd_url = format!("http://127.0.0.1:{etcd_client_port}");
        let mut cmd = Command::new(&assets.etcd);
        cmd.arg(format!("--data-dir={}", data_dir.display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ));
        if etcd_supports_no_fsync(&assets.etcd) {
            cmd.arg("--unsafe-no-fsync=true");
        }
        let etcd_log = output_for(&mut cmd, &root, "etcd")?;
        drop((l1, l2));
        let etcd =
            process::spawn(cmd).map_err(io_err(format!("spawning {}", assets.etcd.display())))?;
        let mut guard = StartGuard {
            children: vec![etcd],
            registration: None,
        };
        guard.register(&root);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = exited(&mut guard.children[0]) {
                return Err(not_ready("etcd", why, &etcd_log));
            }
            if etcd_healthy(etcd_client_port).await {
                break;
            }
            if Instant::now() > deadline {
                return Err(not_ready(
                    "etcd",
                    format!("no healthy /health within {timeout:?}"),
                    &etcd_log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // kube-apiserver
        let url = format!("https://127.0.0.1:{secure_port}");
        let apiserver_args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--cert-dir={}", cert_dir.display()),
            format!("--secure-port={secure_port}"),
            "--bind-address=127.0.0.1".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--allow-privileged=true".to_string(),
            "--disable-admission-plugins=ServiceAccount".to_string(),
            "--authorization-mode=RBAC".to_string(),
            format!("--service-account-issuer={url}/"),
            format!("--service-account-key-file={}", sa_crt.display()),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--client-ca-file={}", client_ca_crt.display()),
        ];
        let mut cmd = Command::new(&assets.kube_apiserver);
        cmd.args(&apiserver_args);
        let apiserver_log = output_for(&mut cmd, &root, "kube-apiserver")?;
        drop(l3);
        let apiserver = process::spawn(cmd).map_err(io_err(format!(
            "spawning {}",
            assets.kube_apiserver.display()
        )))?;
        guard.children.push(apiserver);
        guard.register(&root);

        let kubeconfig_text = kubeconfig_yaml(&url, &serving_ca, "admin", &admin);
        let kubeconfig = parse_kubeconfig(&kubeconfig_text)?;
        let kubeconfig_path = root.join("kubeconfig");
        fs::write(&kubeconfig_path, &kubeconfig_text)
            .map_err(io_err(format!("writing {}", kubeconfig_path.display())))?;
        let config = config_from(&kubeconfig).await?;
        let client = kube::Client::try_from(config.clone())?;

        let deadline = Instant::now() + timeout;
        let mut last_err: String;
        loop {
            if let Some(why) = exited(&mut guard.children[1]) {
                return Err(not_ready("kube-apiserver", why, &apiserver_log));
            }
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            match tokio::time::timeout(Duration::from_secs(5), client.request_text(req)).await {
                Ok(Ok(body)) if body.trim() == "ok" => break,
                Ok(Ok(body)) => last_err = body,
                Ok(Err(e)) => last_err = e.to_string(),
                Err(_) => last_err = "/readyz timed out".into(),
            }
            if Instant::now() > deadline {
                return Err(not_ready(
                    "kube-apiserver",
                    format!("/readyz not ok within {timeout:?}: {last_err}"),
                    &apiserver_log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // /readyz can pass before bootstrap objects exist; wait for `default`.
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        loop {
            match namespaces.get_opt("default").await {
                Ok(Some(_)) => break,
                Ok(None) => last_err = "namespace default not found".into(),
                Err(e) => last_err = e.to_string(),
            }
            if Instant::now() > deadline {
                return Err(not_ready(
                    "kube-apiserver",
                    format!("namespace `default` not readable within {timeout:?}: {last_err}"),
                    &apiserver_log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let registration = guard.registration.take().expect("registered above");
        let mut children = std::mem::take(&mut guard.children).into_iter();
        let etcd = children.next();
        let apiserver = children.next();
        Ok(Self {
            apiserver: Mutex::new(apiserver),
            etcd: Mutex::new(etcd),
            exit_registration: registration,
            apiserver_args,
            restart_registrations: Mutex::new(Vec::new()),
            url,
            assets: assets.clone(),
            serving_ca,
            client_ca,
            kubeconfig,
            kubeconfig_path,
            config,
            dir: Some(dir),
        })
    }

    /// A fresh admin (`system:masters`) client bound to the caller's tokio runtime.
    ///
    /// Clients are per call because a `kube::Client` belongs to the runtime that
    /// created it, and tests in one binary each run their own runtime.
    pub fn client(&self) -> Result<kube::Client, Error> {
        Ok(kube::Client::try_from(self.config.clone())?)
    }

    /// The admin client configuration.
    pub fn config(&self) -> &kube::Config {
        &self.config
    }

    /// The admin kubeconfig (credentials embedded).
    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// Path of the admin kubeconfig file, for `kubectl --kubeconfig` or `KUBECONFIG`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The binaries in use.
    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// PEM of the CA that signed the apiserver's serving certificate.
    pub fn serving_ca_pem(&self) -> &str {
        &self.serving_ca.cert_pem
    }

    /// A kubeconfig for another user (client cert CN = `user`, O = `groups`).
    ///
    /// Such users have no permissions until RBAC grants them some.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<Kubeconfig, Error> {
        if groups.len() > certs::MAX_GROUPS {
            return Err(Error::TooManyGroups(groups.len()));
        }
        let pair = certs::client(&self.client_ca, user, groups)?;
        parse_kubeconfig(&kubeconfig_yaml(&self.url, &self.serving_ca, user, &pair))
    }

    /// A client authenticated as `user` in `groups` (see [`Self::user_kubeconfig`]).
    pub async fn user_client(&self, user: &str, groups: &[&str]) -> Result<kube::Client, Error> {
        let kc = self.user_kubeconfig(user, groups)?;
        Ok(kube::Client::try_from(config_from(&kc).await?)?)
    }

    /// A `kubectl` command against this control plane, if kubectl is available.
    pub fn kubectl(&self) -> Option<Command> {
        let path = self.assets.kubectl.as_ref()?;
        let mut cmd = Command::new(path);
        cmd.arg("--kubeconfig").arg(&self.kubeconfig_path);
        Some(cmd)
    }

    /// Process ids of kube-apiserver and etcd (while running).
    pub fn pids(&self) -> Vec<u32> {
        [&self.apiserver, &self.etcd]
            .iter()
            .filter_map(|slot| {
                slot.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(|c| c.id())
            })
            .collect()
    }

    /// Directory holding the logs (`etcd.log`, `kube-apiserver.log`), certs and kubeconfig.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new(""))
    }

    /// SIGKILLs kube-apiserver and starts it again with the same port,
    /// certificates and etcd (the data survives); returns once `/readyz` is
    /// ok. Clients see refused connections meanwhile, as in a real restart.
    pub async fn restart_apiserver(&self) -> Result<(), Error> {
        if let Some(mut child) = self
            .apiserver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
        let root = self.dir().to_path_buf();
        let mut cmd = Command::new(&self.assets.kube_apiserver);
        cmd.args(&self.apiserver_args);
        let log = output_for(&mut cmd, &root, "kube-apiserver-restarted")?;
        let child = process::spawn(cmd).map_err(io_err(format!(
            "spawning {}",
            self.assets.kube_apiserver.display()
        )))?;
        self.restart_registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(process::register(vec![child.id() as i32], Vec::new()));
        *self.apiserver.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        let client = self.client()?;
        let timeout = start_timeout();
        let deadline = Instant::now() + timeout;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            let last_err = match tokio::time::timeout(
                Duration::from_secs(5),
                client.request_text(req),
            )
            .await
            {
                Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
                Ok(Ok(body)) => body,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "/readyz timed out".into(),
            };
            if Instant::now() > deadline {
                return Err(not_ready(
                    "kube-apiserver",
                    format!("/readyz not ok within {timeout:?} after a restart: {last_err}"),
                    &log,
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the apiserver, then etcd (SIGTERM, then SIGKILL after the stop timeout).
    pub fn stop(&mut self) {
        let grace = stop_timeout();
        for slot in [&self.apiserver, &self.etcd] {
            if let Some(mut child) = slot.lock().unwrap_or_else(|e| e.into_inner()).take() {
                process::stop(&mut child, grace);
            }
        }
        process::unregister(self.exit_registration);
        for id in self
            .restart_registrations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            process::unregister(id);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills children of a start attempt that did not finish.
struct StartGuard {
    children: Vec<Child>,
    registration: Option<u64>,
}

impl StartGuard {
    /// (Re)registers the current children and `dir` with the exit hook.
    fn register(&mut self, dir: &Path) {
        if let Some(id) = self.registration.take() {
            process::unregister(id);
        }
        self.registration = Some(process::register(
            self.children.iter().map(|c| c.id() as i32).collect(),
            vec![dir.to_path_buf()],
        ));
    }
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if let Some(id) = self.registration.take() {
            process::unregister(id);
        }
        for child in self.children.iter_mut().rev() {
            process::stop(child, Duration::from_secs(5));
        }
    }
}
