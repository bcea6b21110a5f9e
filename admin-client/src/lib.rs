//! The one HTTP/1.1 client of the hub admin API.
//!
//! hub-sim's CLI and the end-to-end tests both talk to this API (served by
//! hub-sim and by the Python hub, and the agent's `/metrics` endpoint is read
//! the same way), so they share this client instead of keeping two.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens at the address, or the connection broke while opening.
    #[error(
        "cannot reach the hub-sim admin API at {addr}: {source} (is `hub-sim serve` running? set --admin or HUB_SIM_ADMIN)"
    )]
    Connect {
        /// Admin address the call went to.
        addr: SocketAddr,
        /// Cause from the socket.
        source: std::io::Error,
    },
    /// The HTTP exchange failed after the connection was opened.
    #[error("admin API HTTP error: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built (a path that is no URI).
    #[error("admin API request could not be built: {0}")]
    Request(#[from] http::Error),
    /// The answer was larger than [`MAX_RESPONSE`] or broke off.
    #[error("admin API response too large or unreadable")]
    Body,
    /// A non-2xx answer; `message` is the `error` field or the whole body.
    #[error("admin API answered {status}: {message}")]
    Status {
        /// HTTP status code.
        status: u16,
        /// The `error` field of the answer, or the body.
        message: String,
    },
    /// A typed answer did not match its type, or a typed body did not encode.
    #[error("admin API answered invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No full answer within the call deadline (a hung server must not hang
    /// the CLI or a test).
    #[error("admin API at {addr}: no answer within {deadline:?}")]
    Timeout {
        /// Admin address the call went to.
        addr: SocketAddr,
        /// The deadline that passed.
        deadline: Duration,
    },
}

/// Largest response body accepted (intent lists of long fault loops stay far
/// below).
pub const MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// Deadline of one call unless [`AdminClient::with_deadline`] sets another.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// Client for one admin endpoint.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
    deadline: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("AdminClient")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdminClient {
    /// A client for `addr` that sends `token` as its bearer token (an empty
    /// token for endpoints without one, such as the agent's `/metrics`).
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Self {
            addr,
            token: token.into(),
            deadline: DEFAULT_DEADLINE,
        }
    }

    /// The same client with another per-call deadline.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The admin address, for messages and for starting a second client.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request and returns the JSON body of a 2xx answer (a body
    /// that is no JSON comes back as a JSON string, an empty one as null).
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        tokio::time::timeout(self.deadline, self.call_inner(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr,
                deadline: self.deadline,
            })?
    }

    async fn call_inner(
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
        let resp = sender.send_request(req).await;
        let result = match resp {
            Ok(resp) => read_answer(resp).await,
            Err(e) => Err(e.into()),
        };
        conn.abort();
        result
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call(http::Method::GET, path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.call(http::Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
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

/// The body of an answer as JSON, or its status and `error` field.
async fn read_answer(
    resp: http::Response<hyper::body::Incoming>,
) -> Result<serde_json::Value, ClientError> {
    let status = resp.status();
    let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|_| ClientError::Body)?
        .to_bytes();
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
