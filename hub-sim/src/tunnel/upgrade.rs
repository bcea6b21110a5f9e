//! `GET /v1/tunnel`: identity and header checks before the WebSocket upgrade.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use vworkspace_protocol::{self as proto, Version};

use super::TunnelStart;
use crate::ca::Identity;
use crate::hub::Hub;
use crate::respond::json_response;

fn refuse(status: http::StatusCode, code: &str, message: &str) -> hyper::Response<Full<Bytes>> {
    json_response(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}

/// Checks identity and WebSocket headers; on success parks the upgrade in
/// `slot` for the connection task and answers 101.
pub(crate) fn upgrade(
    hub: Arc<Hub>,
    identity: Option<Identity>,
    slot: Arc<Mutex<Option<TunnelStart>>>,
    peer: SocketAddr,
    mut req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let Some(identity) = identity else {
        tracing::info!(%peer, "tunnel refused: no client certificate");
        return refuse(
            http::StatusCode::UNAUTHORIZED,
            "client_certificate_required",
            "the tunnel needs a client certificate issued by this hub (enroll first)",
        );
    };
    // The verifier already refused revoked serials; this closes the window
    // between a revoke and a handshake that was in progress.
    let cluster = match hub.store.cluster(&identity.cluster) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            return refuse(
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "store unavailable",
            );
        }
    };
    let allowed = cluster
        .as_ref()
        .is_some_and(|c| c.org == identity.org && c.revoked_at.is_none())
        && !hub.is_revoked_serial(&identity.serial);
    if !allowed {
        tracing::info!(%peer, cluster = %identity.cluster, "tunnel refused: unknown or revoked identity");
        let _ = hub.store.audit(
            "tunnel.refused",
            Some(&identity.cluster),
            "revoked",
            &format!("serial={}", identity.serial),
        );
        return refuse(
            http::StatusCode::FORBIDDEN,
            "unauthorized",
            "this identity is revoked or unknown",
        );
    }
    let headers = req.headers();
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(http::header::UPGRADE, "websocket")
        || !has_token(http::header::CONNECTION, "upgrade")
    {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "expected a WebSocket upgrade",
        );
    }
    if headers
        .get(http::header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "Sec-WebSocket-Version must be 13",
        );
    }
    let Some(key) = headers.get(http::header::SEC_WEBSOCKET_KEY).cloned() else {
        return refuse(
            http::StatusCode::BAD_REQUEST,
            "not_websocket",
            "Sec-WebSocket-Key missing",
        );
    };
    let offered: Vec<String> = headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(',').map(|p| p.trim().to_owned()))
        .collect();
    let offered_refs: Vec<&str> = offered.iter().map(String::as_str).collect();
    let Some(version) = proto::negotiate(&offered_refs, Version::SUPPORTED) else {
        // The protocol asks for a plain-text reason here.
        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!(
            "no common protocol version: offer WebSocket subprotocol {}\n",
            proto::SUBPROTOCOL_V1
        ))));
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            http::header::SEC_WEBSOCKET_PROTOCOL,
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        return resp;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(TunnelStart {
        identity,
        on_upgrade,
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = hyper::Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert(http::header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        http::HeaderValue::from_static(version.subprotocol()),
    );
    resp
}
