//! `POST /v1/enroll`: join token + CSR in, client certificate out.
//!
//! Checks, in order: the rate limits (per peer address and for the whole hub;
//! `429 rate_limited` with `Retry-After`, before the body is read), body shape, token signature (against the hub's join
//! keys), audience and claims, expiry, that the cluster is not revoked, that
//! the CSR parses and its signature verifies, and finally single use (the
//! token's hash must match the stored one and be unused; marked used in the
//! same transaction). Every outcome lands in the audit log with the token id,
//! never the token.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use vworkspace_protocol::enrollment::{
    EnrollError, EnrollErrorCode, EnrollRequest, EnrollResponse,
};

use crate::hub::{Hub, token_hash};
use crate::keys;
use crate::ratelimit::Decision;
use crate::respond::json_response;
use crate::store::TokenUse;

/// Largest enrollment request body.
const MAX_BODY: usize = 64 * 1024;

pub(crate) fn fail(
    hub: &Hub,
    peer: SocketAddr,
    cluster: Option<&str>,
    code: EnrollErrorCode,
    message: String,
) -> hyper::Response<Full<Bytes>> {
    hub.metrics.enrollment(code.as_str());
    let _ = hub.store.audit(
        "enroll",
        cluster,
        code.as_str(),
        &format!("peer={peer} {message}"),
    );
    tracing::info!(%peer, cluster, code = code.as_str(), message = %crate::sanitize::for_log(&message, 300), "enrollment refused");
    let body = EnrollError { code, message };
    let status = http::StatusCode::from_u16(code.http_status())
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &serde_json::to_value(body).unwrap_or_default())
}

/// `429 rate_limited` with `Retry-After` (whole seconds, at least 1). The audit
/// log gets one row per window, not one per refusal.
pub(crate) fn rate_limited(
    hub: &Hub,
    peer: SocketAddr,
    scope: &'static str,
    retry_after: std::time::Duration,
) -> hyper::Response<Full<Bytes>> {
    hub.metrics.rate_limited(scope);
    hub.metrics
        .enrollment(EnrollErrorCode::RateLimited.as_str());
    if let Some(detail) = hub.enroll_audit.record(peer.ip()) {
        let _ = hub.store.audit(
            "enroll",
            None,
            EnrollErrorCode::RateLimited.as_str(),
            &format!("{detail} (budget: {scope})"),
        );
        tracing::warn!(%peer, scope, "enrollment rate limit reached");
    }
    let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let body = EnrollError {
        code: EnrollErrorCode::RateLimited,
        message: format!("too many enrollment requests; retry after {secs}s"),
    };
    let mut resp = json_response(
        http::StatusCode::TOO_MANY_REQUESTS,
        &serde_json::to_value(body).unwrap_or_default(),
    );
    resp.headers_mut()
        .insert(http::header::RETRY_AFTER, http::HeaderValue::from(secs));
    resp
}

pub(crate) async fn handle(
    hub: Arc<Hub>,
    peer: SocketAddr,
    req: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    if let Decision::Limited { scope, retry_after } = hub.enroll_limiter.check(peer.ip()) {
        return rate_limited(&hub, peer, scope, retry_after);
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return fail(
                &hub,
                peer,
                None,
                EnrollErrorCode::BadRequest,
                format!("request body unreadable or larger than {MAX_BODY} bytes"),
            );
        }
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return fail(
                &hub,
                peer,
                None,
                EnrollErrorCode::BadRequest,
                "body must be JSON {\"token\": ..., \"csr_pem\": ...}".into(),
            );
        }
    };
    let join_keys = match keys::published(&hub.store, keys::JOIN) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "loading join keys failed");
            return fail(
                &hub,
                peer,
                None,
                EnrollErrorCode::Internal,
                "hub store unavailable".into(),
            );
        }
    };
    let ring = crate::wire::key_ring(&join_keys);
    let token =
        match vworkspace_protocol::verify_join_token(&request.token, &ring, crate::store::now()) {
            Ok(t) => t,
            Err(e) => return fail(&hub, peer, None, e.enroll_code(), e.to_string()),
        };
    let claims = token.claims();
    let cluster = claims.cluster.as_str();
    let jti = claims.jti.as_str();
    if hub.ca_ring().by_pin(&claims.ca_sha256).is_none() {
        return fail(
            &hub,
            peer,
            Some(cluster),
            EnrollErrorCode::TokenInvalid,
            format!("token jti={jti} pins another CA"),
        );
    }
    match hub.store.cluster(cluster) {
        Ok(Some(c)) if c.org != claims.org => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::TokenInvalid,
                format!(
                    "token jti={jti} names org {} but the cluster belongs to another org",
                    claims.org
                ),
            );
        }
        Ok(Some(c)) if c.revoked_at.is_some() => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::ClusterRevoked,
                format!("cluster is revoked (token jti={jti})"),
            );
        }
        Ok(Some(_)) => {}
        Ok(None) => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::TokenInvalid,
                format!("token jti={jti} names an unknown cluster"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "store read failed");
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::Internal,
                "hub store unavailable".into(),
            );
        }
    }
    // Sign first (cheap, and it validates the CSR) so a bad CSR does not burn the token.
    let cert = match hub.ca().sign_client_csr(
        request.csr_pem.as_bytes(),
        &claims.org,
        cluster,
        hub.cfg.client_cert_lifetime,
    ) {
        Ok(c) => c,
        Err(e) => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::CsrInvalid,
                format!("{e} (token jti={jti} not consumed)"),
            );
        }
    };
    match hub
        .store
        .consume_token(jti, &token_hash(token.expose_secret()))
    {
        Ok(TokenUse::Consumed) => {}
        Ok(TokenUse::AlreadyUsed) => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::TokenReused,
                format!("token jti={jti} was already used"),
            );
        }
        Ok(TokenUse::Unknown | TokenUse::Mismatch) => {
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::TokenInvalid,
                format!("token jti={jti} was not issued by this hub"),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "store write failed");
            return fail(
                &hub,
                peer,
                Some(cluster),
                EnrollErrorCode::Internal,
                "hub store unavailable".into(),
            );
        }
    }
    if let Err(e) = hub.store.insert_cert(&cert.serial, cluster, cert.not_after) {
        tracing::error!(error = %e, "recording certificate failed");
        return fail(
            &hub,
            peer,
            Some(cluster),
            EnrollErrorCode::Internal,
            "hub store unavailable".into(),
        );
    }
    let _ = hub.store.audit(
        "enroll",
        Some(cluster),
        "ok",
        &format!(
            "peer={peer} jti={jti} serial={} not_after={}",
            cert.serial, cert.not_after
        ),
    );
    hub.metrics.enrollment("ok");
    tracing::info!(%peer, cluster, org = %claims.org, serial = %cert.serial, "cluster enrolled");
    let resp = EnrollResponse {
        cluster_id: cluster.to_owned(),
        org: claims.org.clone(),
        certificate_pem: cert.pem,
        ca_bundle_pem: hub.ca_ring().bundle_pem(),
        signing_keys: hub.signing_keys(),
        tunnel_url: crate::wire::tunnel_url(hub.public_url()),
    };
    json_response(
        http::StatusCode::OK,
        &serde_json::to_value(resp).unwrap_or_default(),
    )
}
