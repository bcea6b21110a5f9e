//! One WebSocket to the hub, framed: sequence numbers both ways, the size
//! limits, and the frames every state of the connection may send (`Error`,
//! `Goodbye`, a shrinking `Hello` or `Inventory`).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vworkspace_protocol::{
    AppliedVersion, Envelope, ErrorCode, ErrorFrame, Frame, Goodbye, Hello, Inventory, Limits,
    Welcome,
};

use super::{TunnelError, Violation};
use crate::hub::metrics::Metrics;

/// Capabilities announced in `Hello`.
const CAPABILITIES: &[&str] = &["status-digest", "renew-cert", "delete"];

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// One message from the hub, once decoded and sequence-checked.
pub(super) enum Incoming {
    /// A frame.
    Envelope(Box<Envelope>),
    /// A WebSocket control message (ping, pong).
    Control,
    /// The hub closed the connection.
    Closed,
}

/// The framed connection.
pub(super) struct Conn {
    sink: futures::stream::SplitSink<Ws, Message>,
    pub(super) stream: futures::stream::SplitStream<Ws>,
    out_seq: u64,
    in_seq: u64,
    pub(super) last_rx: Instant,
    pub(super) limits: Limits,
    metrics: Metrics,
}

// === impl Conn ===

impl Conn {
    pub(super) fn new(ws: Ws, metrics: Metrics, limits: Limits) -> Self {
        let (sink, stream) = ws.split();
        Self {
            sink,
            stream,
            out_seq: 0,
            in_seq: 0,
            last_rx: Instant::now(),
            limits,
            metrics,
        }
    }

    /// Encodes and sends one frame; returns its seq. A frame that cannot be
    /// encoded (too large) is an [`TunnelError::Encode`] and nothing is sent.
    pub(super) async fn send(&mut self, body: Frame) -> Result<u64, TunnelError> {
        let seq = self.out_seq + 1;
        let type_name = body.type_name().to_owned();
        let env = Envelope::new(seq, self.in_seq, body);
        let bytes = vworkspace_protocol::encode(&env, &self.limits)?;
        self.out_seq = seq;
        self.send_msg(Message::Binary(bytes.into())).await?;
        self.metrics.frame("out", &type_name);
        Ok(seq)
    }

    pub(super) async fn send_msg(&mut self, msg: Message) -> Result<(), TunnelError> {
        // A hub that stops reading is dropped after the idle timeout, not buffered for.
        let idle = Duration::from_secs(u64::from(self.limits.idle_timeout_secs.max(2)));
        match tokio::time::timeout(idle, self.sink.send(msg)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(TunnelError::WebSocket(e)),
            Err(_) => Err(TunnelError::Idle(idle)),
        }
    }

    pub(super) async fn send_hello(
        &mut self,
        mut applied: Vec<AppliedVersion>,
    ) -> Result<(), TunnelError> {
        loop {
            let hello = Frame::Hello(Hello {
                agent_version: crate::AGENT_VERSION.to_owned(),
                capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                applied: applied.clone(),
            });
            match self.send(hello).await {
                Ok(_) => return Ok(()),
                // Too many objects for one frame: send fewer; the hub then
                // resends some applied intents, which are acked as noop.
                Err(TunnelError::Encode(_)) if !applied.is_empty() => {
                    applied.truncate(applied.len() / 2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn send_inventory(&mut self, mut inv: Inventory) -> Result<(), TunnelError> {
        loop {
            match self.send(Frame::Inventory(inv.clone())).await {
                Ok(_) => return Ok(()),
                Err(TunnelError::Encode(_)) if !inv.objects.is_empty() => {
                    inv.objects.truncate(inv.objects.len() / 2);
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) async fn expect_welcome(&mut self) -> Result<Welcome, TunnelError> {
        loop {
            let msg = self.stream.next().await;
            match self.incoming(msg).await? {
                Incoming::Envelope(env) => {
                    return match env.body {
                        Frame::Welcome(w) => Ok(w),
                        Frame::Goodbye(g) => Err(TunnelError::GoodbyeBeforeWelcome(
                            g.reason.chars().take(200).collect(),
                        )),
                        Frame::Error(e) if e.code == ErrorCode::Unauthorized.as_str() => {
                            Err(TunnelError::Rejected(e.message.chars().take(200).collect()))
                        }
                        other => Err(Violation::NotWelcome(other.type_name().to_owned()).into()),
                    };
                }
                Incoming::Control => continue,
                Incoming::Closed => return Err(TunnelError::ClosedBeforeWelcome),
            }
        }
    }

    /// Decodes and sequence-checks one message from the hub.
    pub(super) async fn incoming(
        &mut self,
        msg: Option<Result<Message, tungstenite::Error>>,
    ) -> Result<Incoming, TunnelError> {
        let msg = match msg {
            None => return Ok(Incoming::Closed),
            Some(Err(tungstenite::Error::Capacity(_))) => {
                self.fail(ErrorCode::FrameTooLarge, "frame exceeds max_frame_bytes")
                    .await;
                return Err(Violation::OversizedFrame.into());
            }
            Some(Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed)) => {
                return Ok(Incoming::Closed);
            }
            Some(Err(e)) => return Err(TunnelError::WebSocket(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(bytes) => {
                let env = match vworkspace_protocol::decode(&bytes, &self.limits) {
                    Ok(env) => env,
                    Err(e) => {
                        self.fail(e.error_code(), &e.to_string()).await;
                        return Err(TunnelError::Decode(e));
                    }
                };
                if env.seq != self.in_seq + 1 {
                    let v = Violation::Sequence {
                        expected: self.in_seq + 1,
                        got: env.seq,
                    };
                    self.fail(ErrorCode::SequenceError, &v.to_string()).await;
                    return Err(v.into());
                }
                if env.ack > self.out_seq {
                    let v = Violation::AckUnsent(env.ack);
                    self.fail(ErrorCode::SequenceError, &v.to_string()).await;
                    return Err(v.into());
                }
                self.in_seq = env.seq;
                self.metrics.frame("in", env.body.type_name());
                Ok(Incoming::Envelope(Box::new(env)))
            }
            Message::Text(_) => {
                self.fail(
                    ErrorCode::MalformedFrame,
                    "text frames are not part of the protocol",
                )
                .await;
                Err(Violation::TextFrame.into())
            }
            Message::Close(_) => Ok(Incoming::Closed),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(Incoming::Control),
        }
    }

    /// Sends an `Error` frame and closes (best effort).
    pub(super) async fn fail(&mut self, code: ErrorCode, message: &str) {
        let _ = self
            .send(Frame::Error(ErrorFrame {
                code: code.as_str().to_owned(),
                message: message.chars().take(200).collect(),
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }

    /// Sends `Goodbye` and closes (best effort).
    pub(super) async fn goodbye(&mut self, reason: &str) {
        let _ = self
            .send(Frame::Goodbye(Goodbye {
                reason: reason.to_owned(),
                retry_after_secs: None,
            }))
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.sink.close()).await;
    }
}
