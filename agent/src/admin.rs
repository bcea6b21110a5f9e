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

use crate::tunnel::ConnState;

/// Shared state of the admin handlers.
#[derive(Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    conn: watch::Receiver<ConnState>,
    last_up: Arc<Mutex<Instant>>,
    grace: Duration,
    draining: watch::Receiver<bool>,
}

impl AdminState {
    /// State for a registry, the connection state and the readiness grace.
    pub fn new(
        registry: Arc<Registry>,
        conn: watch::Receiver<ConnState>,
        grace: Duration,
        draining: watch::Receiver<bool>,
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
        if *self.draining.borrow() {
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
    pub async fn track(self, mut shutdown: watch::Receiver<bool>) {
        let mut conn = self.conn.clone();
        loop {
            let _ = self.readiness();
            tokio::select! {
                _ = crate::signaled(&mut shutdown) => return,
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

/// Header-read deadline per request: a slow client cannot hold a connection.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Admin connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves until `shutdown`. Each connection gets a header-read timeout and
/// at most [`MAX_CONNECTIONS`] are served at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
) {
    let router = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            biased;
            _ = crate::signaled(&mut shutdown) => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, _) = tokio::select! {
            biased;
            _ = crate::signaled(&mut shutdown) => break,
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
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = conn.await {
                tracing::debug!(%error, "Admin connection ended with an error");
            }
        });
    }
    // In-flight probes are short; give them a moment, then stop.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}
