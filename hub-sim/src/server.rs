//! Listeners: one TLS listener serving `POST /v1/enroll` and
//! `GET /v1/tunnel` (routed by path), and the loopback admin API.
//!
//! The TLS listener asks every client for a certificate and verifies any
//! certificate presented against the hub CA and the revoked set, during the
//! handshake: a certificate from another CA or a revoked one never completes
//! TLS. A client with no certificate completes TLS (enrollment needs that) but
//! `/v1/tunnel` answers 401 before any upgrade.
//!
//! Deadlines and caps, so that nobody without credentials can hold the hub:
//! the TLS handshake has `handshake_timeout`; everything on a connection
//! before a tunnel upgrade (request headers and bodies, keep-alive idling)
//! has `request_timeout` in total; and of the `max_connections` slots, at
//! most `max_unauthenticated` may be held by connections that have not
//! presented a client certificate (handshakes in progress and enrollment),
//! so enrolled agents always find a slot. The admin listener has its own
//! cap, header timeout and per-connection deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ca::{Identity, identity_from_cert};
use crate::hub::{Config, Hub, HubError};
use crate::respond::json_response;
use crate::tunnel::TunnelStart;

/// Wraps the WebPKI verifier: after the chain checks out, refuse revoked serials.
#[derive(Debug)]
struct RevocationAwareVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<RwLock<HashSet<String>>>,
}

impl ClientCertVerifier for RevocationAwareVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    // Enrollment shares the listener and has no certificate yet; the tunnel
    // route enforces one (see module docs).
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = crate::ca::cert_serial_hex(end_entity).ok_or(
            rustls::Error::InvalidCertificate(CertificateError::BadEncoding),
        )?;
        if self
            .revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&serial)
        {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The TLS settings for the CA ring as it stands: server chain from the
/// issuing CA, client certificates from any CA of the bundle.
pub(crate) fn tls_acceptor(hub: &Hub) -> Result<TlsAcceptor, HubError> {
    Ok(TlsAcceptor::from(Arc::new(tls_config(hub)?)))
}

fn tls_config(hub: &Hub) -> Result<rustls::ServerConfig, HubError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ring = hub.ca_ring();
    let mut roots = rustls::RootCertStore::empty();
    for ca in ring.all() {
        roots
            .add(ca.cert_der().clone())
            .map_err(|e| HubError::Tls(e.to_string()))?;
    }
    let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| HubError::Tls(e.to_string()))?;
    let verifier = RevocationAwareVerifier {
        inner,
        revoked: hub.revoked.clone(),
    };
    let (chain, key) = ring.server_chain(&hub.cfg.server_names)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| HubError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(chain, key)
        .map_err(|e| HubError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No session resumption: every tunnel re-runs the client-cert check, so
    // a revoked certificate cannot ride on an old session ticket.
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    Ok(cfg)
}

/// A running hub-sim.
pub struct RunningHub {
    /// The hub's shared state: store, CA, connected agents, metrics.
    pub hub: Arc<Hub>,
    /// The TLS listener (enrollment + tunnel).
    pub tls_addr: SocketAddr,
    /// The admin API listener.
    pub admin_addr: SocketAddr,
    /// Bearer token for the admin API.
    pub admin_token: String,
    accept: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningHub")
            .field("tls_addr", &self.tls_addr)
            .field("admin_addr", &self.admin_addr)
            .finish_non_exhaustive()
    }
}

impl RunningHub {
    /// An admin client for this hub.
    pub fn admin_client(&self) -> crate::admin_client::AdminClient {
        crate::admin_client::AdminClient::new(self.admin_addr, self.admin_token.clone())
    }

    /// Graceful stop: every tunnel gets `Goodbye{retry_after}`, then listeners close.
    pub async fn shutdown(self) {
        self.hub.begin_shutdown();
        let max = self.hub.cfg.max_connections as u32;
        // Every connection holds a slot; all slots back means all tunnels said goodbye.
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            self.hub.conn_slots.acquire_many(max),
        )
        .await;
        // Whatever is still open after the grace period is cut off.
        self.accept.abort();
        let _ = self.accept.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.admin).await;
    }

    /// Abrupt stop, as close to a crash as in-process gets: every task is
    /// aborted, nothing is said to agents.
    pub async fn abort(self) {
        self.accept.abort();
        self.admin.abort();
        let _ = self.accept.await;
        let _ = self.admin.await;
    }
}

/// Binds the listeners, opens the state and starts serving.
pub async fn start(cfg: Config) -> Result<RunningHub, HubError> {
    let tls_listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| HubError::Bind {
            what: "TLS listener",
            addr: cfg.listen,
            source,
        })?;
    let tls_addr = tls_listener.local_addr().map_err(|source| HubError::Bind {
        what: "TLS listener",
        addr: cfg.listen,
        source,
    })?;
    let admin_listener = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|source| HubError::Bind {
            what: "admin API",
            addr: cfg.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| HubError::Bind {
            what: "admin API",
            addr: cfg.admin_listen,
            source,
        })?;
    let public_url = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| format!("https://{tls_addr}"));
    let state_dir = cfg.state_dir.clone();
    let hub = Hub::open(cfg, public_url)?;
    let state_err = |path: std::path::PathBuf| move |source| HubError::StateDir { path, source };
    let admin_token =
        crate::hub::admin_token(&state_dir).map_err(state_err(state_dir.join("admin-token")))?;
    // Written whole or not at all: scripts and tests wait for these files to
    // appear and read them at once.
    write_atomically(&state_dir.join("hub-url"), hub.public_url())
        .map_err(state_err(state_dir.join("hub-url")))?;
    write_atomically(&state_dir.join("admin-addr"), &admin_addr.to_string())
        .map_err(state_err(state_dir.join("admin-addr")))?;
    hub.set_acceptor(tls_acceptor(&hub)?);

    let router = crate::admin::router(hub.clone(), &admin_token);
    let admin = tokio::spawn(crate::admin::serve(hub.clone(), admin_listener, router));
    let accept = tokio::spawn(accept_loop(hub.clone(), tls_listener));
    tracing::info!(%tls_addr, %admin_addr, url = hub.public_url(), ca_sha256 = %hub.ca().sha256_hex(), ca_stage = hub.ca_ring().stage().as_str(), "hub-sim listening");
    Ok(RunningHub {
        hub,
        tls_addr,
        admin_addr,
        admin_token,
        accept,
        admin,
    })
}

async fn accept_loop(hub: Arc<Hub>, listener: TcpListener) {
    // Owning the connection tasks here means aborting this task aborts them all.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = hub.shutdown_signal() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Every connection starts unauthenticated and leaves that set
                // once its client certificate is verified; a full set makes
                // room by closing its oldest member. This also bounds the
                // tasks spawned here: at most `max_unauthenticated` plus the
                // authenticated connections holding a slot.
                let (ticket, evicted) = hub.unauth.admit();
                if evicted {
                    hub.metrics.connection_refused("unauthenticated_evicted");
                }
                let _ = tcp.set_nodelay(true);
                let hub = hub.clone();
                // Read per connection: a CA rotation step swaps it.
                let Some(acceptor) = hub.acceptor() else { continue };
                conns.spawn(serve_conn(hub, acceptor, tcp, peer, ticket));
            }
        }
    }
    // Let live tunnels send Goodbye and finish.
    while conns.join_next().await.is_some() {}
}

/// One TLS connection: handshake, identity, HTTP/1.1, then maybe a tunnel.
///
/// This is hand-written hyper, not axum like the admin API, on purpose: what
/// this listener needs happens around the HTTP layer, per connection, not per
/// request. The TLS handshake has its own deadline and a slot in the
/// unauthenticated cap, from which the connection may be evicted at any
/// moment; the client-certificate identity comes from the TLS session, once;
/// one deadline covers headers, bodies and keep-alive idling until an upgrade;
/// and the upgraded stream must be handed to the tunnel task raw, with that
/// identity. axum would only replace the two-route `route` match below (its
/// `serve` cannot take a TLS stream, and its WebSocket extractor would bring
/// its own tungstenite configuration), so the connection loop would stay as
/// it is; two small stacks are clearer than one stack bent around this.
async fn serve_conn(
    hub: Arc<Hub>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    ticket: crate::unauth::Ticket,
) {
    let mut anon = Some(ticket);
    let Ok(_permit) = hub.conn_slots.clone().try_acquire_owned() else {
        hub.metrics.connection_refused("max_connections");
        tracing::warn!(%peer, max = hub.cfg.max_connections, "connection limit reached, refusing");
        return;
    };
    let handshake = tokio::select! {
        _ = crate::unauth::evicted(&mut anon) => {
            tracing::debug!(%peer, "unauthenticated connection evicted during the TLS handshake");
            return;
        }
        r = tokio::time::timeout(hub.cfg.handshake_timeout, acceptor.accept(tcp)) => r,
    };
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            // TCP probes and port scans: connect, then close.
            tracing::debug!(%peer, "connection closed before the TLS handshake");
            return;
        }
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            hub.metrics.connection_refused("handshake_timeout");
            tracing::info!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let identity = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| identity_from_cert(c));
    let identity = match identity {
        None => None,
        Some(Ok(id)) => {
            // Authenticated: this connection no longer counts against the
            // unauthenticated cap.
            anon.take();
            Some(id)
        }
        Some(Err(e)) => {
            tracing::info!(%peer, error = %e, "client certificate has no vWorkspace identity");
            return;
        }
    };
    let slot: Arc<Mutex<Option<TunnelStart>>> = Arc::new(Mutex::new(None));
    let service = {
        let hub = hub.clone();
        let slot = slot.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let hub = hub.clone();
            let slot = slot.clone();
            let identity = identity.clone();
            async move { Ok::<_, std::convert::Infallible>(route(hub, identity, slot, peer, req).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(hub.cfg.handshake_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(hub.cfg.request_timeout);
    tokio::pin!(deadline);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::unauth::evicted(&mut anon) => {
            tracing::info!(%peer, "unauthenticated connection evicted to make room for a newer one");
            return;
        }
        _ = &mut deadline => {
            // Headers and body together: a client trickling a body, or
            // idling on keep-alive, is cut here.
            hub.metrics.connection_refused("request_timeout");
            tracing::info!(%peer, timeout = ?hub.cfg.request_timeout, "request deadline passed, closing connection");
            return;
        }
        _ = hub.shutdown_signal() => {
            // Idle keep-alive (enrollment) connections must not hold shutdown open.
            conn.as_mut().graceful_shutdown();
            tokio::time::timeout(Duration::from_secs(5), conn.as_mut())
                .await
                .unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    drop(anon);
    let start = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(start) = start {
        match start.on_upgrade.await {
            Ok(upgraded) => {
                crate::tunnel::run(hub, start.identity, TokioIo::new(upgraded), peer).await;
            }
            Err(e) => tracing::info!(%peer, error = %e, "tunnel upgrade failed"),
        }
    }
}

async fn route(
    hub: Arc<Hub>,
    identity: Option<Identity>,
    slot: Arc<Mutex<Option<TunnelStart>>>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&http::Method::POST, "/v1/enroll") => crate::enroll::handle(hub, peer, req).await,
        (&http::Method::POST, vworkspace_protocol::recovery::RECOVER_PATH) => {
            crate::recovery::handle(hub, peer, req).await
        }
        (&http::Method::GET, "/v1/tunnel") => {
            crate::tunnel::upgrade(hub, identity, slot, peer, req)
        }
        (_, "/v1/enroll") | (_, "/v1/tunnel") => json_response(
            http::StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "method_not_allowed", "message": "use POST /v1/enroll or GET /v1/tunnel"}),
        ),
        _ => json_response(
            http::StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "not_found", "message": "unknown path"}),
        ),
    }
}

/// Writes `path` through a temporary file renamed into place, so a reader
/// never sees it empty or half written.
fn write_atomically(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)
}
