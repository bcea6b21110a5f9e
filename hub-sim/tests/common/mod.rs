//! A minimal protocol-level test client: enrollment over HTTPS and a tunnel
//! over mutual TLS, written against `vworkspace-protocol` only (no agent code).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vworkspace_protocol::enrollment::{EnrollError, EnrollRequest, EnrollResponse};
use vworkspace_protocol::{
    self as proto, AppliedVersion, Envelope, Frame, Hello, IntentAck, IntentOutcome, IntentPayload,
    Limits, SignedIntent, Welcome,
};

pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    proto::install_jwt_crypto();
}

/// Starts an in-process hub on ephemeral loopback ports.
pub async fn start_hub(dir: &std::path::Path) -> hub_sim::RunningHub {
    init();
    let cfg = hub_sim::Config::ephemeral(dir);
    hub_sim::start(cfg).await.expect("hub starts")
}

/// Waits for `cond` to hold, polling, with a deadline.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while !cond().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Credentials an agent holds after enrollment.
#[derive(Clone)]
pub struct Creds {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    pub response: Option<EnrollResponse>,
}

fn root_store(ca_pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

fn client_config(ca_pem: &str, creds: Option<(&str, &str)>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(root_store(ca_pem));
    match creds {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(cert.as_bytes())
                    .map(|c| c.unwrap())
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

async fn tls_connect(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A TLS connection to the hub without a client certificate (what an
/// enrolling agent, or anybody, opens).
pub async fn tls_raw(addr: SocketAddr, ca_pem: &str) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect(addr, client_config(ca_pem, None)).await
}

/// Starts an in-process hub with a changed config.
pub async fn start_hub_with(
    dir: &std::path::Path,
    change: impl FnOnce(&mut hub_sim::Config),
) -> hub_sim::RunningHub {
    init();
    let mut cfg = hub_sim::Config::ephemeral(dir);
    change(&mut cfg);
    hub_sim::start(cfg).await.expect("hub starts")
}

/// A fresh RSA-2048 key, made by `openssl` at test time: ring (this tree's
/// one crypto provider) can sign with RSA but not generate RSA keys, and no
/// key material is committed.
pub fn rsa_2048_key() -> KeyPair {
    let out = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("running openssl (install Debian's openssl package)");
    assert!(
        out.status.success(),
        "openssl genpkey failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    KeyPair::from_pem(&String::from_utf8_lossy(&out.stdout)).expect("a PKCS#8 RSA key")
}

/// A fresh key and CSR (the hub ignores the CSR's subject).
pub fn new_csr() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec!["agent".to_owned()])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    (csr.pem().unwrap(), key.serialize_pem())
}

/// POSTs a raw body to /v1/enroll; returns status and JSON body.
pub async fn enroll_raw(addr: SocketAddr, ca_pem: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    let tls = tls_connect(addr, client_config(ca_pem, None))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method("POST")
        .uri("/v1/enroll")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// Enrolls with a token; Ok(creds) or Err((status, error body)).
pub async fn enroll(
    addr: SocketAddr,
    ca_pem: &str,
    token: &str,
) -> Result<Creds, (u16, EnrollError)> {
    let (csr, key_pem) = new_csr();
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.to_owned(),
        csr_pem: csr,
    })
    .unwrap();
    let (status, value) = enroll_raw(addr, ca_pem, body).await;
    if status != 200 {
        return Err((
            status,
            serde_json::from_value(value).expect("error body is EnrollError"),
        ));
    }
    let resp: EnrollResponse = serde_json::from_value(value).unwrap();
    Ok(Creds {
        cert_pem: resp.certificate_pem.clone(),
        key_pem,
        ca_pem: resp.ca_bundle_pem.clone(),
        response: Some(resp),
    })
}

/// Creates a token through the admin API and enrolls with it.
pub async fn enroll_cluster(hub: &hub_sim::RunningHub, cluster: &str, org: &str) -> Creds {
    let token = hub.hub.create_token(cluster, org, None).unwrap().token;
    enroll(hub.tls_addr, hub.hub.ca().cert_pem(), &token)
        .await
        .unwrap_or_else(|e| panic!("enrollment failed: {e:?}"))
}

/// A protocol-level agent stand-in.
pub struct TestAgent {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
    pub seq: u64,
    pub peer_seq: u64,
    pub limits: Limits,
    pub welcome: Option<Welcome>,
}

/// Why a tunnel could not be opened.
#[derive(Debug)]
pub enum ConnectError {
    Tls(std::io::Error),
    Ws(tokio_tungstenite::tungstenite::Error),
}

impl TestAgent {
    /// TLS + WebSocket upgrade with optional client credentials.
    pub async fn open(
        addr: SocketAddr,
        ca_pem: &str,
        creds: Option<(&str, &str)>,
    ) -> Result<Self, ConnectError> {
        let tls = tls_connect(addr, client_config(ca_pem, creds))
            .await
            .map_err(ConnectError::Tls)?;
        let mut req = format!("wss://localhost{}", proto::TUNNEL_PATH)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(req, tls, None)
            .await
            .map_err(ConnectError::Ws)?;
        Ok(Self {
            ws,
            seq: 0,
            peer_seq: 0,
            limits: Limits::default().with_max_frame_bytes(proto::limits::MAX_FRAME_BYTES),
            welcome: None,
        })
    }

    /// Opens the tunnel, says Hello with `applied`, and waits for Welcome.
    pub async fn connect(addr: SocketAddr, creds: &Creds, applied: Vec<AppliedVersion>) -> Self {
        let mut a = Self::open(addr, &creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem)))
            .await
            .unwrap_or_else(|e| panic!("tunnel open failed: {e:?}"));
        a.send(Frame::Hello(Hello {
            agent_version: "test-0".into(),
            capabilities: vec![],
            applied,
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }))
        .await;
        match a.recv().await.body {
            Frame::Welcome(w) => a.welcome = Some(w),
            other => panic!("expected welcome, got {other:?}"),
        }
        a
    }

    pub async fn send(&mut self, body: Frame) {
        self.seq += 1;
        let env = Envelope::new(self.seq, self.peer_seq, body);
        let bytes = proto::encode(&env, &self.limits).unwrap();
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Next envelope, or the reason the stream ended.
    pub async fn try_recv(&mut self) -> Result<Envelope, String> {
        loop {
            let msg = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .map_err(|_| "timed out".to_string())?;
            match msg {
                None => return Err("stream ended".into()),
                Some(Err(e)) => return Err(format!("ws error: {e}")),
                Some(Ok(Message::Binary(b))) => {
                    let env =
                        proto::decode(&b, &self.limits).map_err(|e| format!("decode: {e}"))?;
                    self.peer_seq = env.seq;
                    return Ok(env);
                }
                Some(Ok(Message::Close(c))) => return Err(format!("closed: {c:?}")),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Envelope {
        self.try_recv()
            .await
            .unwrap_or_else(|e| panic!("recv failed: {e}"))
    }

    /// Receives the next intent and returns it with its decoded payload (not verified).
    pub async fn recv_intent(&mut self) -> (u64, SignedIntent, IntentPayload) {
        let env = self.recv().await;
        match env.body {
            Frame::Intent(i) => {
                let p = i.peek_payload().unwrap();
                (env.seq, i, p)
            }
            other => panic!("expected intent, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, seq: u64, p: &IntentPayload, outcome: IntentOutcome) {
        self.send(Frame::IntentAck(IntentAck {
            intent_id: p.intent_id.clone(),
            intent_seq: seq,
            object: Some(p.object.clone()),
            version: Some(p.version),
            outcome,
        }))
        .await;
    }

    /// A key ring from the Welcome's signing keys.
    pub fn key_ring(&self) -> proto::KeyRing {
        proto::KeyRing::from_infos(&self.welcome.as_ref().unwrap().signing_keys).unwrap()
    }
}

/// A minimal ApplicationInstance manifest.
pub fn app(name: &str, ns: &str, marker: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps.vworkspace.io/v1alpha1",
        "kind": "ApplicationInstance",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "appRef": {"catalogId": "nextcloud"},
            "mode": "placeholder",
            "marker": marker,
        }
    })
}

/// The hub's answer to a broken frame: `Error{code}` mentioning `mentions`
/// (resync requests and intents may come first), then a close.
pub async fn expect_error_then_close(a: &mut TestAgent, code: &str, mentions: &str) {
    loop {
        match a.try_recv().await {
            Ok(env) => match env.body {
                Frame::Error(e) => {
                    assert_eq!(e.code, code, "{e:?}");
                    assert!(e.message.contains(mentions), "{e:?}");
                    break;
                }
                Frame::ResyncRequest(_) | Frame::Intent(_) => {}
                other => panic!("expected {code}, got {other:?}"),
            },
            Err(e) => panic!("closed without {code}: {e}"),
        }
    }
    let end = a
        .try_recv()
        .await
        .expect_err("the hub closes after the error");
    assert!(end.contains("closed") || end.contains("ended"), "{end}");
}
