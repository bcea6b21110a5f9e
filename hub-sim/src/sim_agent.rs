//! A minimal protocol-level agent for `hub-sim demo`: it enrolls, opens the
//! tunnel, verifies intents with the key ring from `Welcome`, acks them and
//! reports a status. It writes nothing anywhere; the real agent lives in
//! `vworkspace-agent`.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
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
use vworkspace_protocol::enrollment::{EnrollRequest, EnrollResponse};
use vworkspace_protocol::{
    self as proto, Envelope, Frame, Hello, IntentAck, KeyRing, Limits, VerifiedIntent,
    VerifyContext, Welcome,
};

/// Credentials after enrollment. `Debug` hides the key.
pub struct Credentials {
    /// What the enrollment endpoint answered (certificate, CA bundle, cluster id).
    pub response: EnrollResponse,
    /// PEM private key the certificate was issued for.
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("cluster_id", &self.response.cluster_id)
            .finish_non_exhaustive()
    }
}

fn client_config(ca_pem: &str, auth: Option<(&str, &str)>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    Ok(match auth {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes())?)?
        }
    })
}

async fn tls(addr: SocketAddr, cfg: rustls::ClientConfig) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    Ok(TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// Enrolls with a join token: generates a key, sends a CSR, returns credentials.
pub async fn enroll(addr: SocketAddr, ca_pem: &str, token: &str) -> anyhow::Result<Credentials> {
    let key = KeyPair::generate()?;
    let csr = CertificateParams::new(Vec::<String>::new())?.serialize_request(&key)?;
    let body = serde_json::to_vec(&EnrollRequest {
        token: token.to_owned(),
        csr_pem: csr.pem()?,
    })?;
    let stream = tls(addr, client_config(ca_pem, None)?).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let req = http::Request::post(proto::enrollment::ENROLL_PATH)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    conn.abort();
    if !status.is_success() {
        bail!(
            "enrollment answered {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(Credentials {
        response: serde_json::from_slice(&bytes)?,
        key_pem: key.serialize_pem(),
    })
}

/// An open tunnel.
pub struct Tunnel {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    seq: u64,
    peer_seq: u64,
    limits: Limits,
    /// The hub's Welcome.
    pub welcome: Welcome,
    /// Intent-signing keys from the Welcome, for verifying intents.
    pub ring: KeyRing,
}

impl Tunnel {
    /// Opens the tunnel and exchanges Hello/Welcome.
    pub async fn open(addr: SocketAddr, creds: &Credentials) -> anyhow::Result<Self> {
        let cfg = client_config(
            &creds.response.ca_bundle_pem,
            Some((&creds.response.certificate_pem, &creds.key_pem)),
        )?;
        let stream = tls(addr, cfg).await?;
        let mut req = format!("wss://localhost{}", proto::TUNNEL_PATH).into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        let (ws, _) = tokio_tungstenite::client_async(req, stream).await?;
        let mut t = Self {
            ws,
            seq: 0,
            peer_seq: 0,
            limits: Limits::default(),
            welcome: Welcome {
                cluster_id: String::new(),
                org: String::new(),
                server_time: 0,
                heartbeat_secs: 0,
                idle_timeout_secs: 0,
                max_frame_bytes: 0,
                max_in_flight: 0,
                signing_keys: vec![],
                max_chunks: None,
                recovery_window_secs: None,
                ca_bundle_pem: None,
                digest_buckets: None,
            },
            ring: KeyRing::new(),
        };
        t.send(Frame::Hello(Hello {
            agent_version: concat!("hub-sim-demo/", env!("CARGO_PKG_VERSION")).into(),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }))
        .await?;
        match t.recv().await?.body {
            Frame::Welcome(w) => {
                t.ring = KeyRing::from_infos(&w.signing_keys)?;
                t.welcome = w;
            }
            other => bail!("expected welcome, got {}", other.type_name()),
        }
        Ok(t)
    }

    /// Sends one frame (with the next sequence number).
    pub async fn send(&mut self, body: Frame) -> anyhow::Result<()> {
        self.seq += 1;
        let env = Envelope::new(self.seq, self.peer_seq, body);
        let bytes = proto::encode(&env, &self.limits)?;
        self.ws.send(Message::Binary(bytes.into())).await?;
        Ok(())
    }

    /// Receives the next frame, skipping non-binary WebSocket messages.
    pub async fn recv(&mut self) -> anyhow::Result<Envelope> {
        loop {
            match self.ws.next().await.context("tunnel closed")?? {
                Message::Binary(b) => {
                    let env = proto::decode(&b, &self.limits)?;
                    self.peer_seq = env.seq;
                    return Ok(env);
                }
                Message::Close(c) => bail!("tunnel closed: {c:?}"),
                _ => {}
            }
        }
    }

    /// Receives one intent, verifies it and acks it (applied, or the rejection).
    pub async fn take_intent(
        &mut self,
    ) -> anyhow::Result<Result<VerifiedIntent, proto::Rejection>> {
        let env = self.recv().await?;
        let Frame::Intent(signed) = env.body else {
            bail!("expected an intent, got {}", env.body.type_name());
        };
        let ctx = VerifyContext::new(&self.welcome.cluster_id, proto::unix_now())
            .with_org(&self.welcome.org);
        let verdict = self.ring.verify(&signed, &ctx);
        let peek = signed.peek_payload().ok();
        let ack = IntentAck {
            intent_id: peek
                .as_ref()
                .map(|p| p.intent_id.clone())
                .unwrap_or_default(),
            intent_seq: env.seq,
            object: peek.as_ref().map(|p| p.object.clone()),
            version: peek.as_ref().map(|p| p.version),
            outcome: match &verdict {
                Ok(_) => proto::IntentOutcome::Applied,
                Err(r) => r.to_outcome(),
            },
        };
        self.send(Frame::IntentAck(ack)).await?;
        Ok(verdict)
    }
}
