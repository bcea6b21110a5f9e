//! The admin server: `/healthz`, `/readyz`, `/metrics` on their own port.
//!
//! `/healthz` is always 200: liveness must not depend on the hub. `/readyz`
//! is 200 while the tunnel is up, while this replica is a standby (it is
//! healthy and waits for the Lease; failing it would block rollouts), and
//! for a grace period after start or after the tunnel was lost, so a short
//! hub outage does not flap every agent's readiness.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::hub::tunnel::ConnState;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    conn: watch::Receiver<ConnState>,
    last_up: Arc<Mutex<Instant>>,
    grace: Duration,
    draining: CancellationToken,
}

impl AdminState {
    /// State for a registry, the connection state and the readiness grace.
    pub fn new(
        registry: Arc<Registry>,
        conn: watch::Receiver<ConnState>,
        grace: Duration,
        draining: CancellationToken,
    ) -> Self {
        Self {
            registry,
            conn,
            last_up: Arc::new(Mutex::new(Instant::now())),
            grace,
            draining,
        }
    }

    /// Whether `/readyz` answers 200, and why.
    pub fn readiness(&self) -> (bool, &'static str) {
        if self.draining.is_cancelled() {
            return (false, "shutting down");
        }
        let state = *self.conn.borrow();
        let mut last = self.last_up.lock().unwrap_or_else(|e| e.into_inner());
        match state {
            ConnState::Connected => {
                *last = Instant::now();
                (true, "connected")
            }
            ConnState::Standby => {
                *last = Instant::now();
                (true, "standby")
            }
            _ if last.elapsed() < self.grace => (true, "within grace period"),
            _ => (false, "not connected to the hub"),
        }
    }

    /// Keeps `last_up` current when nobody polls `/readyz`.
    pub async fn track(self, shutdown: CancellationToken) {
        let mut conn = self.conn.clone();
        loop {
            let _ = self.readiness();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = conn.changed() => if r.is_err() { return },
            }
        }
    }
}

/// The router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ready, why) = s.readiness();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{why}\n"))
}

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Why the admin server could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the admin server on {addr} (--admin-addr): {source}")]
pub struct BindError {
    /// Address.
    pub addr: SocketAddr,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

/// Binds the admin listener (at build time, so port errors fail at startup).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// Header-read deadline per request. hyper restarts it for every request on
/// a connection, so it is also the keep-alive idle limit: a kubelet probe
/// sends its request at once, a connection that sends nothing is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest any admin connection lives (a Prometheus scraper reconnects).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
/// Admin connections served at once; beyond it the oldest is closed.
const MAX_CONNECTIONS: usize = 64;

/// The open admin connections, oldest first. Accepting never waits: when
/// [`MAX_CONNECTIONS`] are open, the oldest is told to close. Idle or slow
/// connections of a flood are always the oldest, while a probe's connection
/// lives for milliseconds, so probes keep being answered (a semaphore that
/// makes new connections wait lets 64 idle ones starve every probe).
#[derive(Default)]
struct Open {
    next_id: u64,
    conns: std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// A connection's place in [`Open`]; dropping it leaves.
struct Place {
    id: u64,
    open: Arc<Mutex<Open>>,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.conns.retain(|(id, _)| *id != self.id);
    }
}

/// Registers a connection, evicting the oldest when full.
fn admit(open: &Arc<Mutex<Open>>) -> (Place, tokio::sync::oneshot::Receiver<()>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut o = open.lock().unwrap_or_else(|e| e.into_inner());
    while o.conns.len() >= MAX_CONNECTIONS {
        if let Some((_, oldest)) = o.conns.pop_front() {
            let _ = oldest.send(());
        }
    }
    let id = o.next_id;
    o.next_id += 1;
    o.conns.push_back((id, tx));
    (
        Place {
            id,
            open: open.clone(),
        },
        rx,
    )
}

/// Serves until `shutdown`. Each connection gets a header-read timeout and a
/// lifetime deadline, and at most [`MAX_CONNECTIONS`] are open at once (the
/// oldest is closed to admit a new one).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) {
    let router = router(state);
    let open = Arc::new(Mutex::new(Open::default()));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "Admin server failed to accept");
                    // EMFILE and friends: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let (place, evicted) = admit(&open);
        conns.spawn(async move {
            let _place = place;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(16 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::select! {
                r = conn => {
                    if let Err(error) = r {
                        tracing::debug!(%error, "Admin connection ended with an error");
                    }
                }
                _ = evicted => tracing::debug!("Admin connection closed to make room for a newer one"),
                _ = tokio::time::sleep(CONNECTION_DEADLINE) => {}
            }
        });
    }
    // In-flight probes are short; give them a moment, then stop.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn healthz(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn probes_keep_answering_while_idle_connections_flood_the_port() {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_conn_tx, conn_rx) = watch::channel(ConnState::Connected);
        let shutdown = CancellationToken::new();
        let state = AdminState::new(
            Arc::new(Registry::default()),
            conn_rx,
            Duration::from_secs(60),
            CancellationToken::new(),
        );
        let server = tokio::spawn(serve(listener, state, shutdown.clone()));

        // Three times the connection cap, opened and left silent.
        let mut idle = Vec::new();
        for _ in 0..3 * MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Every probe (kubelet's default timeout is 1 s) is answered, and the
        // flood keeps coming back.
        for round in 0..20 {
            let answer = tokio::time::timeout(Duration::from_secs(1), healthz(addr))
                .await
                .unwrap_or_else(|_| panic!("probe {round} timed out"))
                .unwrap();
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            for _ in 0..8 {
                idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            }
        }
        shutdown.cancel();
        let _ = server.await;
    }
}
