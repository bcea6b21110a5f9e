//! JSON answers of the TLS listener (enrollment and tunnel refusals), shared
//! by `server`, `enroll` and `tunnel` so that none of them imports another.

use bytes::Bytes;
use http_body_util::Full;

/// A response with `status` and `body` as `application/json`.
pub(crate) fn json_response(
    status: http::StatusCode,
    body: &serde_json::Value,
) -> hyper::Response<Full<Bytes>> {
    let mut resp = hyper::Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
