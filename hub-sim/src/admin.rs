//! The admin HTTP API: JSON over plain HTTP on loopback, every route behind
//! `Authorization: Bearer <admin token>` (the token is in `<state>/admin-token`),
//! except `GET /metrics` (Prometheus text, counts only, no secrets).
//!
//! The listener serves at most [`MAX_CONNECTIONS`] connections (more wait in
//! the listen backlog until one ends); each must send
//! its request headers within [`HEADER_READ_TIMEOUT`] (hyper restarts that
//! timer for every request, so an idle keep-alive connection is closed after
//! it too) and lives at most [`CONNECTION_DEADLINE`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::{DeleteRequest, TokenRequest};
use crate::faults::Faults;
use crate::hub::{Hub, HubError};
use crate::keys;

struct AdminState {
    hub: Arc<Hub>,
    token_sha256: Vec<u8>,
}

/// An error answer: `{"error": "..."}` with a fitting status.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> Self {
        let status = match &e {
            HubError::Invalid(_) | HubError::OrgMismatch { .. } => StatusCode::BAD_REQUEST,
            HubError::Undeliverable(_) => StatusCode::PAYLOAD_TOO_LARGE,
            HubError::NotFound(_) => StatusCode::NOT_FOUND,
            HubError::Keys(keys::KeyError::LastKey(_)) => StatusCode::CONFLICT,
            HubError::Keys(keys::KeyError::UnknownKey(_)) => StatusCode::NOT_FOUND,
            HubError::Rotation(crate::ca::RotationError::WrongStage { .. }) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin request failed");
        }
        ApiError(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        HubError::from(e).into()
    }
}

impl From<keys::KeyError> for ApiError {
    fn from(e: keys::KeyError) -> Self {
        HubError::from(e).into()
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// Builds the admin router.
pub fn router(hub: Arc<Hub>, admin_token: &str) -> Router {
    let state = Arc::new(AdminState {
        hub,
        token_sha256: ring::digest::digest(&ring::digest::SHA256, admin_token.as_bytes())
            .as_ref()
            .to_vec(),
    });
    Router::new()
        .route("/v1/health", get(health))
        .route("/v1/tokens", post(create_token))
        .route("/v1/clusters", get(list_clusters))
        .route("/v1/clusters/{cluster}/apply", post(apply))
        .route("/v1/clusters/{cluster}/delete", post(delete))
        .route("/v1/clusters/{cluster}/revoke", post(revoke))
        .route(
            "/v1/clusters/{cluster}/faults",
            get(get_faults).put(put_faults),
        )
        .route("/v1/clusters/{cluster}/inventory", get(inventory))
        .route("/v1/apply", post(apply_annotated))
        .route("/v1/objects", get(objects))
        .route("/v1/intents", get(intents))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/rotate", post(rotate_keys))
        .route("/v1/keys/{kid}/retire", post(retire_key))
        .route("/v1/ca/rotation", get(ca_rotation))
        .route("/v1/ca/rotation/{step}", post(rotate_ca))
        .route("/v1/audit", get(audit))
        .route("/v1/events", get(events))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .route("/metrics", get(metrics))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state)
}

/// Admin connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Deadline for a request's headers (also the keep-alive idle limit).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an admin connection may stay open, requests included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);

/// Serves the admin router on `listener` until the hub shuts down.
pub async fn serve(hub: Arc<Hub>, listener: tokio::net::TcpListener, router: Router) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        // A slot first, then the next connection: at the limit, newcomers
        // wait in the listen backlog until a connection ends (a burst of
        // short calls, such as a load generator minting thousands of tokens,
        // gets served instead of reset; the header timeout and the
        // connection deadline bound how long a slot can be held).
        let permit = tokio::select! {
            biased;
            _ = hub.shutdown_signal() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = hub.shutdown_signal() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(error) => {
                    tracing::warn!(%error, "admin API failed to accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let hub = hub.clone();
        conns.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(error) = r {
                        tracing::debug!(%peer, %error, "admin connection ended with an error");
                    }
                }
                _ = tokio::time::sleep(CONNECTION_DEADLINE) => {
                    hub.metrics().connection_refused("admin_deadline");
                    tracing::debug!(%peer, "admin connection deadline passed, closing");
                }
                _ = hub.shutdown_signal() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
                }
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    match s.hub.encode_metrics() {
        Ok(body) => (
            StatusCode::OK,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn auth(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare digests so the comparison time does not depend on the token.
    let digest = ring::digest::digest(&ring::digest::SHA256, presented.as_bytes());
    if digest.as_ref() != state.token_sha256.as_slice() {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token (see <state-dir>/admin-token)".into(),
        )
        .into_response();
    }
    next.run(req).await
}

async fn health(State(s): State<Arc<AdminState>>) -> ApiResult {
    Ok(Json(json!({
        "ok": true,
        "public_url": s.hub.public_url(),
        "tunnels": s.hub.tunnel_count(),
        "ca_sha256": s.hub.ca().sha256_hex(),
    })))
}

async fn create_token(
    State(s): State<Arc<AdminState>>,
    Json(req): Json<TokenRequest>,
) -> ApiResult {
    let issued = s.hub.create_token(
        &req.cluster,
        &req.org,
        req.ttl_seconds.map(Duration::from_secs),
    )?;
    Ok(Json(serde_json::to_value(issued).unwrap_or_default()))
}

async fn list_clusters(State(s): State<Arc<AdminState>>) -> ApiResult {
    Ok(Json(json!(s.hub.clusters()?)))
}

async fn apply(
    State(s): State<Arc<AdminState>>,
    Path(cluster): Path<String>,
    Json(manifest): Json<Value>,
) -> ApiResult {
    Ok(Json(json!(s.hub.apply(Some(&cluster), &manifest)?)))
}

async fn apply_annotated(
    State(s): State<Arc<AdminState>>,
    Json(manifest): Json<Value>,
) -> ApiResult {
    Ok(Json(json!(s.hub.apply(None, &manifest)?)))
}

async fn delete(
    State(s): State<Arc<AdminState>>,
    Path(cluster): Path<String>,
    Json(req): Json<DeleteRequest>,
) -> ApiResult {
    Ok(Json(json!(s.hub.delete(
        &cluster,
        &req.kind,
        &req.namespace,
        &req.name
    )?)))
}

async fn revoke(State(s): State<Arc<AdminState>>, Path(cluster): Path<String>) -> ApiResult {
    let serials = s.hub.revoke(&cluster)?;
    Ok(Json(
        json!({ "cluster": cluster, "revoked_certificates": serials }),
    ))
}

/// 404 for a cluster the hub does not know (rather than an empty answer).
fn known_cluster(s: &AdminState, cluster: &str) -> Result<(), ApiError> {
    match s.hub.store().cluster(cluster)? {
        Some(_) => Ok(()),
        None => Err(HubError::NotFound(cluster.to_owned()).into()),
    }
}

async fn get_faults(State(s): State<Arc<AdminState>>, Path(cluster): Path<String>) -> ApiResult {
    known_cluster(&s, &cluster)?;
    Ok(Json(json!(s.hub.faults_for(&cluster))))
}

async fn put_faults(
    State(s): State<Arc<AdminState>>,
    Path(cluster): Path<String>,
    Json(faults): Json<Faults>,
) -> ApiResult {
    s.hub.set_faults(&cluster, faults.clone())?;
    Ok(Json(json!(faults)))
}

async fn inventory(State(s): State<Arc<AdminState>>, Path(cluster): Path<String>) -> ApiResult {
    known_cluster(&s, &cluster)?;
    Ok(Json(
        s.hub.store().inventory(&cluster)?.unwrap_or(Value::Null),
    ))
}

#[derive(Deserialize)]
struct ObjectQuery {
    cluster: Option<String>,
    kind: Option<String>,
}

async fn objects(State(s): State<Arc<AdminState>>, Query(q): Query<ObjectQuery>) -> ApiResult {
    Ok(Json(json!(
        s.hub.objects(q.cluster.as_deref(), q.kind.as_deref())?
    )))
}

#[derive(Deserialize)]
struct IntentQuery {
    cluster: Option<String>,
    limit: Option<usize>,
}

async fn intents(State(s): State<Arc<AdminState>>, Query(q): Query<IntentQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(1000).min(100_000);
    Ok(Json(json!(
        s.hub.store().intents(q.cluster.as_deref(), limit)?
    )))
}

async fn list_keys(State(s): State<Arc<AdminState>>) -> ApiResult {
    let active = keys::active(s.hub.store(), keys::INTENT)?.kid;
    Ok(Json(json!({
        "active": active,
        "intent": keys::all(s.hub.store(), keys::INTENT)?,
        "join": keys::published(s.hub.store(), keys::JOIN)?,
    })))
}

async fn ca_rotation(State(s): State<Arc<AdminState>>) -> ApiResult {
    Ok(Json(
        serde_json::to_value(s.hub.rotate_ca("status")?).unwrap_or_default(),
    ))
}

async fn rotate_ca(State(s): State<Arc<AdminState>>, Path(step): Path<String>) -> ApiResult {
    if step == "status" {
        return Err(HubError::Invalid("use GET /v1/ca/rotation".into()).into());
    }
    Ok(Json(
        serde_json::to_value(s.hub.rotate_ca(&step)?).unwrap_or_default(),
    ))
}

async fn rotate_keys(State(s): State<Arc<AdminState>>) -> ApiResult {
    let kid = s.hub.rotate_keys()?;
    Ok(Json(
        json!({ "active": kid, "intent": keys::all(s.hub.store(), keys::INTENT)? }),
    ))
}

async fn retire_key(State(s): State<Arc<AdminState>>, Path(kid): Path<String>) -> ApiResult {
    s.hub.retire_key(&kid)?;
    Ok(Json(json!({ "retired": kid })))
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

#[derive(Deserialize)]
struct EventQuery {
    cluster: Option<String>,
    limit: Option<usize>,
}

/// Events the agents sent, kept apart from the hub's own audit log.
async fn events(State(s): State<Arc<AdminState>>, Query(q): Query<EventQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(200).min(10_000);
    Ok(Json(json!(
        s.hub.store().agent_events(q.cluster.as_deref(), limit)?
    )))
}

async fn audit(State(s): State<Arc<AdminState>>, Query(q): Query<AuditQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(200).min(10_000);
    Ok(Json(json!(s.hub.store().audit_log(limit)?)))
}
