//! One WebSocket to the hub, framed: sequence numbers both ways, the size
//! limits, and the frames every state of the connection may send (`Error`,
//! `Goodbye`, `Hello` and `Inventory` split to fit the frame limit).

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vworkspace_protocol::{
    AppliedVersion, Chunk, Envelope, ErrorCode, ErrorFrame, Frame, Goodbye, Hello, Inventory,
    Limits, Welcome, chunk, digest, limits,
};

use super::{TunnelError, Violation};
use crate::hub::metrics::Metrics;

/// Capabilities announced in `Hello`.
const CAPABILITIES: &[&str] = &["status-digest", "renew-cert", "delete"];

/// Intents the agent offers to hold unacknowledged (`Hello.max_in_flight`).
/// Bounds the agent's intent queue: twice this many intents at most.
pub(super) const AGENT_MAX_IN_FLIGHT: u32 = 256;

/// Size of `frame` in an envelope with the largest sequence numbers.
fn encoded_len(frame: &Frame) -> usize {
    let unbounded = Limits::default().with_max_frame_bytes(usize::MAX);
    let env = Envelope::new(u64::MAX, u64::MAX, frame.clone());
    vworkspace_protocol::encode(&env, &unbounded).map_or(usize::MAX, |b| b.len())
}

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Splits `entries` into frames made by `make` that each fit the frame
/// limit: one unchunked frame when everything fits, else at most
/// `max_chunks` chunks (entries beyond them are left out).
fn chunked<T: Clone>(
    limits: &Limits,
    entries: Vec<T>,
    max_chunks: u32,
    make: impl Fn(Option<Chunk>, Vec<T>) -> Frame,
) -> Vec<Frame> {
    let limit = limits.max_frame_bytes;
    let whole = make(None, entries.clone());
    let size = encoded_len(&whole);
    if size <= limit || entries.is_empty() {
        return vec![whole];
    }
    // Entries per frame from the average entry size, with room for the
    // envelope and the chunk field; halved until every frame fits.
    let budget = limit.saturating_sub(1024) as u128;
    let n = entries.len() as u128;
    let mut per = ((n * budget * 9 / 10) / size as u128).max(1) as usize;
    loop {
        let mut part = entries.clone();
        part.truncate(per.saturating_mul(max_chunks.max(1) as usize));
        let frames: Vec<Frame> = if max_chunks <= 1 {
            vec![make(None, part)]
        } else {
            chunk::split(part, per)
                .into_iter()
                .map(|(c, p)| make(Some(c), p))
                .collect()
        };
        if per == 1 || frames.iter().all(|f| encoded_len(f) <= limit) {
            return frames;
        }
        per /= 2;
    }
}

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
    /// Chunks per `Inventory` the hub assembles (1: it does not).
    pub(super) max_chunks: u32,
    /// The most buckets the hub compares (`Welcome.digest_buckets`); `None`:
    /// it wants the whole `Inventory`.
    pub(super) digest_buckets: Option<u32>,
    /// Bucket count of the `InventorySummary` sent on this connection.
    pub(super) summary_count: Option<u32>,
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
            max_chunks: 1,
            digest_buckets: None,
            summary_count: None,
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
        let len = bytes.len();
        self.send_msg(Message::Binary(bytes.into())).await?;
        self.metrics.frame("out", &type_name, len);
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

    /// The `Hello` frames announcing `applied`: one when it fits, else a
    /// chunked set of at most [`limits::MAX_CHUNKS`] (what every hub that
    /// assembles accepts). Only the first may be sent before `Welcome`.
    pub(super) fn hello_frames(&self, applied: Vec<AppliedVersion>) -> Vec<Frame> {
        chunked(
            &self.limits,
            applied,
            limits::MAX_CHUNKS,
            |chunk, applied| {
                Frame::Hello(Hello {
                    agent_version: crate::AGENT_VERSION.to_owned(),
                    capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
                    applied,
                    max_in_flight: Some(AGENT_MAX_IN_FLIGHT),
                    chunk,
                    digest_buckets: false,
                })
            },
        )
    }

    /// The `Hello` of a reconnect to a hub that announced bucketed digests
    /// before: no `applied`, the versions come with the buckets it asks for.
    pub(super) fn summary_hello(&self) -> Vec<Frame> {
        vec![Frame::Hello(Hello {
            agent_version: crate::AGENT_VERSION.to_owned(),
            capabilities: CAPABILITIES.iter().map(|s| s.to_string()).collect(),
            applied: Vec::new(),
            max_in_flight: Some(AGENT_MAX_IN_FLIGHT),
            chunk: None,
            digest_buckets: true,
        })]
    }

    /// Sends the digest after `Welcome`: a bucket summary to a hub that
    /// compares them, else the whole `Inventory`.
    pub(super) async fn send_digest(&mut self, inv: Inventory) -> Result<(), TunnelError> {
        match self.digest_buckets {
            Some(max) if self.summary_count.is_none() => {
                let count = digest::bucket_count_for(inv.objects.len(), max);
                let summary = digest::summarize(&inv.objects, count);
                self.send(Frame::InventorySummary(summary)).await?;
                self.summary_count = Some(count);
                Ok(())
            }
            _ => self.send_inventory(inv, None).await,
        }
    }

    /// Answers `ResyncRequest{buckets}`: the entries of those buckets of the
    /// summary sent on this connection, naming the buckets. A request that
    /// does not fit that summary is a protocol error.
    pub(super) async fn send_buckets(
        &mut self,
        inv: Inventory,
        buckets: Vec<u32>,
    ) -> Result<(), TunnelError> {
        let checked = match self.summary_count {
            None => Err(digest::DigestError::OutOfOrder(
                "bucket request without a summary on this connection",
            )),
            Some(count) => digest::check_buckets(&buckets, count).map(|()| count),
        };
        let count = match checked {
            Ok(count) => count,
            Err(e) => {
                self.fail(ErrorCode::DigestError, &e.to_string()).await;
                return Err(Violation::Digest(e).into());
            }
        };
        let entries = digest::entries_in(&inv.objects, &buckets, count);
        self.send_inventory(
            Inventory {
                objects: entries,
                chunk: None,
                buckets: None,
            },
            Some(buckets),
        )
        .await
    }

    /// Sends the digest (or, with `buckets`, the part of it those buckets
    /// hold): in one frame when it fits; else in chunks when the hub
    /// assembles them (`max_chunks` from its `Welcome`), entries beyond
    /// `max_chunks` full frames left out; else (an older hub) only what fits
    /// one frame. Objects left out are settled by the hub resending their
    /// intents, which are acked as `noop`.
    pub(super) async fn send_inventory(
        &mut self,
        inv: Inventory,
        buckets: Option<Vec<u32>>,
    ) -> Result<(), TunnelError> {
        let frames = chunked(
            &self.limits,
            inv.objects,
            self.max_chunks,
            |chunk, objects| {
                Frame::Inventory(Inventory {
                    objects,
                    chunk,
                    buckets: buckets.clone(),
                })
            },
        );
        for f in frames {
            self.send(f).await?;
        }
        Ok(())
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
                self.metrics.frame("in", env.body.type_name(), bytes.len());
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

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_protocol::{InventoryEntry, ObjectKind, ObjectRef};

    fn entries(n: usize) -> Vec<InventoryEntry> {
        (0..n)
            .map(|i| InventoryEntry {
                object: ObjectRef::new(
                    ObjectKind::ApplicationInstance,
                    format!("ns-{}", i % 50),
                    format!("app-{i:05}"),
                ),
                version: i as u64,
                status_hash: format!("{i:016x}"),
            })
            .collect()
    }

    fn inventory(chunk: Option<Chunk>, objects: Vec<InventoryEntry>) -> Frame {
        Frame::Inventory(Inventory {
            objects,
            chunk,
            buckets: None,
        })
    }

    fn parts(frames: &[Frame]) -> Vec<(Option<Chunk>, usize)> {
        frames
            .iter()
            .map(|f| match f {
                Frame::Inventory(i) => (i.chunk, i.objects.len()),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_digest_that_fits_goes_in_one_unchunked_frame() {
        let frames = chunked(&Limits::default(), entries(100), 16, inventory);
        assert_eq!(parts(&frames), vec![(None, 100)]);
    }

    #[test]
    fn fifty_thousand_objects_are_split_into_frames_under_the_limit() {
        let limits = Limits::default();
        let all = entries(50_000);
        let frames = chunked(&limits, all.clone(), 16, inventory);
        let p = parts(&frames);
        let count = p.len() as u32;
        assert!(count > 1 && count <= 16, "{count} chunks");
        for (i, (c, _)) in p.iter().enumerate() {
            assert_eq!(
                *c,
                Some(Chunk {
                    index: i as u32,
                    count
                })
            );
        }
        for f in &frames {
            assert!(encoded_len(f) <= limits.max_frame_bytes);
        }
        let back: Vec<InventoryEntry> = frames
            .into_iter()
            .flat_map(|f| match f {
                Frame::Inventory(i) => i.objects,
                _ => vec![],
            })
            .collect();
        assert_eq!(back, all, "every entry, in order");
    }

    #[test]
    fn an_older_hub_gets_what_fits_one_frame() {
        let limits = Limits::default();
        let frames = chunked(&limits, entries(50_000), 1, inventory);
        let p = parts(&frames);
        assert_eq!(p.len(), 1);
        assert!(p[0].0.is_none());
        assert!(p[0].1 > 1000 && p[0].1 < 50_000);
        assert!(encoded_len(&frames[0]) <= limits.max_frame_bytes);
    }
}
