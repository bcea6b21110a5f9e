//! A minimal client of the hub-sim admin API (plain HTTP/1.1 on loopback).
//!
//! The harness library depends on no project crate, so it cannot use
//! `hub_sim::admin_client`; this speaks the same JSON routes over a raw socket.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest admin answer read (intent lists of long fault loops stay far below).
const MAX_RESPONSE: u64 = 32 * 1024 * 1024;
/// Deadline of one admin call.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No connection or a broken one.
    #[error("hub-sim admin API at {addr}: {source}")]
    Io {
        /// Admin address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The call took longer than its deadline.
    #[error("hub-sim admin API at {0}: no answer within {CALL_TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// Not an HTTP answer this client understands.
    #[error("hub-sim admin API: malformed answer ({0})")]
    Malformed(&'static str),
    /// A non-2xx status.
    #[error("hub-sim admin API answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The `error` field or the body.
        message: String,
    },
}

/// Admin API address and bearer token.
#[derive(Clone)]
pub struct AdminClient {
    addr: SocketAddr,
    token: String,
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
    /// A client for `addr` with the admin `token`.
    pub fn new(addr: SocketAddr, token: impl Into<String>) -> Self {
        Self {
            addr,
            token: token.into(),
        }
    }

    /// The admin address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, AdminError> {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        self.call("POST", path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, AdminError> {
        self.call("PUT", path, Some(body)).await
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| AdminError::Timeout(self.addr))?
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, AdminError> {
        let io = |source| AdminError::Io {
            addr: self.addr,
            source,
        };
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(io)?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.addr,
            self.token,
            payload.len()
        );
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        (&mut s)
            .take(MAX_RESPONSE)
            .read_to_end(&mut buf)
            .await
            .map_err(io)?;
        let (status, body) = parse_response(&buf)?;
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
        };
        if !(200..300).contains(&status) {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            return Err(AdminError::Status { status, message });
        }
        Ok(value)
    }
}

/// Splits an HTTP/1.1 answer into status and (de-chunked) body.
fn parse_response(buf: &[u8]) -> Result<(u16, Vec<u8>), AdminError> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(AdminError::Malformed("no end of headers"))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(AdminError::Malformed("no status code"))?;
    let mut body = &buf[split + 4..];
    if !head.contains("transfer-encoding: chunked") {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or(AdminError::Malformed("truncated chunk size"))?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| AdminError::Malformed("bad chunk size"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        if body.len() < size {
            return Err(AdminError::Malformed("truncated chunk"));
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_answers_parse() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]";
        assert_eq!(parse_response(plain).unwrap(), (200, b"[]".to_vec()));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (404, b"{\"a\":1}".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
