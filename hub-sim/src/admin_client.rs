//! A small HTTP/1.1 client for the admin API, used by the CLI and tests.

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error(
        "cannot reach the hub-sim admin API at {addr}: {source} (is `hub-sim serve` running? set --admin or HUB_SIM_ADMIN)"
    )]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API HTTP error: {0}")]
    Http(#[from] hyper::Error),
    #[error("admin API request could not be built: {0}")]
    Request(#[from] http::Error),
    #[error("admin API response too large or unreadable")]
    Body,
    #[error("admin API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("admin API answered invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Largest response body accepted.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// Client for one hub-sim admin endpoint.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Self {
            addr,
            token: token.into(),
        }
    }

    /// Sends one request and returns the JSON body of a 2xx answer.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|source| ClientError::Connect {
                addr: self.addr,
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(payload))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|_| ClientError::Body)?
            .to_bytes();
        conn.abort();
        let value: serde_json::Value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            return Err(ClientError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(value)
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(http::Method::GET, path, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(http::Method::POST, path, Some(body)).await
    }

    pub async fn put(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(http::Method::PUT, path, Some(body)).await
    }

    /// Posts a typed request body and reads a typed answer.
    pub async fn post_as<B, T>(&self, path: &str, body: &B) -> Result<T, ClientError>
    where
        B: serde::Serialize,
        T: serde::de::DeserializeOwned,
    {
        let body = serde_json::to_value(body)?;
        let answer = self.post(path, &body).await?;
        Ok(serde_json::from_value(answer)?)
    }
}
