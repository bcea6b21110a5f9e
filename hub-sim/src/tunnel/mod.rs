//! The tunnel: `GET /v1/tunnel` upgraded to a WebSocket speaking protocol v1.
//!
//! One task per connection drives everything (no reader/writer split): it
//! waits for `Hello`, answers `Welcome`, then delivers pending intents in
//! store order with at most `window` unacknowledged, takes acks, statuses,
//! inventory, events and renewal requests, pings, and enforces the idle
//! timeout. Nothing per connection grows without bound: the in-flight window
//! is negotiated once (at most `--window`), inbound frames are size-checked,
//! chunked Hello and Inventory frames are assembled within a chunk count, an
//! entry count and a deadline, and every send has a deadline.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use vworkspace_protocol::chunk::{Assembly, ChunkError};
use vworkspace_protocol::{
    ErrorCode, ErrorFrame, Frame, InventoryEntry, Limits, ObjectKind, digest, limits,
};

mod frames;
mod retry;
mod send;
mod session;
mod upgrade;

pub(crate) use upgrade::upgrade;

use crate::ca::Identity;
use crate::hub::Hub;

/// Objects named in one ResyncRequest (the rest follow on the next Inventory).
const MAX_RESYNC_OBJECTS: usize = 1000;

/// Renewals accepted per connection (a hostile agent cannot make the CA spin).
const MAX_RENEWALS_PER_CONN: u32 = 8;

/// In-flight window for agents whose `Hello` does not offer one (hub-sim's
/// window before it was negotiated).
const LEGACY_WINDOW: usize = 32;

/// How a connection ended.
enum End {
    /// Close with a WebSocket close frame (after an optional last frame).
    Close(Option<Box<Frame>>, CloseCode, &'static str),
    /// Drop the transport with nothing said (drop fault, dead peer).
    Abrupt,
}

struct Conn<S> {
    hub: Arc<Hub>,
    id: Identity,
    peer: SocketAddr,
    ws: WebSocketStream<S>,
    limits: Limits,
    out_seq: u64,
    in_seq: u64,
    frames_sent: u64,
    /// Intents this connection may have unacked (negotiated in Hello/Welcome).
    window: usize,
    /// Sent, unacked intents: (envelope seq, store seq, intent id).
    in_flight: VecDeque<(u64, i64, String)>,
    /// A chunked Inventory being assembled, and when it must be complete.
    inventory: Assembly<InventoryEntry>,
    inventory_deadline: Option<Instant>,
    /// The bucketed digest of this connection, once its summary arrived.
    digest: Option<DigestState>,
    /// After a summary-mode Hello, intents wait until the digest exchange
    /// has settled versions (or this deadline passes), so that intents the
    /// agent already applied are not resent.
    hold_intents_until: Option<Instant>,
    /// Store seq of the last intent sent on this connection.
    cursor: i64,
    /// Intents acked `apply_failed`, waiting to be sent again.
    resends: retry::Resends,
    renewals: u32,
    last_rx: Instant,
}

/// Runs one tunnel until it ends. `io` is the upgraded connection.
pub(crate) async fn run<S>(hub: Arc<Hub>, id: Identity, io: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = Limits::default()
        .with_max_in_flight(hub.cfg.window as u32)
        .with_heartbeat(
            hub.cfg.ping_interval.as_secs().max(1) as u32,
            hub.cfg.idle_timeout.as_secs().max(1) as u32,
        );
    let ws_cfg = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * limits.max_frame_bytes)
        .max_message_size(Some(limits.max_frame_bytes))
        .max_frame_size(Some(limits.max_frame_bytes));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_cfg)).await;
    let (conn_id, wake, kill) = hub.register_conn(&id.cluster);
    let mut conn = Conn {
        hub: hub.clone(),
        id: id.clone(),
        peer,
        ws,
        limits,
        out_seq: 0,
        in_seq: 0,
        frames_sent: 0,
        window: LEGACY_WINDOW.min(hub.cfg.window),
        in_flight: VecDeque::new(),
        inventory: Assembly::new(limits::MAX_CHUNKS, limits::MAX_CHUNKED_ENTRIES),
        inventory_deadline: None,
        digest: None,
        hold_intents_until: None,
        cursor: 0,
        resends: retry::Resends::default(),
        renewals: 0,
        last_rx: Instant::now(),
    };
    tracing::info!(cluster = %id.cluster, org = %id.org, %peer, "tunnel open");
    let end = conn.drive(wake, kill).await;
    hub.unregister_conn(&id.cluster, conn_id);
    if !hub.is_connected(&id.cluster) {
        let _ = hub.store.set_connected(&id.cluster, false, None);
    }
    match end {
        End::Abrupt => {
            tracing::info!(cluster = %id.cluster, %peer, "tunnel dropped");
        }
        End::Close(last, code, reason) => {
            if let Some(frame) = last {
                let _ = conn.send_frame(*frame).await;
            }
            let close = CloseFrame {
                code,
                reason: reason.into(),
            };
            // Send the close, then read until the peer answers it or goes
            // away (2 s at most): dropping the socket with the peer's frames
            // unread makes the kernel send a reset, and the peer would see
            // "connection reset" instead of the frame sent just before.
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                if conn.ws.close(Some(close)).await.is_ok() {
                    while let Some(Ok(_)) = conn.ws.next().await {}
                }
            })
            .await;
            tracing::info!(cluster = %id.cluster, %peer, reason, "tunnel closed");
        }
    }
}

fn error_frame(code: ErrorCode, message: impl Into<String>) -> Frame {
    Frame::Error(ErrorFrame {
        code: code.as_str().to_owned(),
        message: message.into(),
    })
}

/// A chunked Hello or Inventory broke the rules: `chunk_error`, then close.
fn chunk_end(hub: &Hub, what: &str, e: &ChunkError) -> End {
    hub.metrics.frame_refused(ErrorCode::ChunkError.as_str());
    End::Close(
        Some(Box::new(error_frame(
            ErrorCode::ChunkError,
            format!("{what}: {e}"),
        ))),
        close_code(ErrorCode::ChunkError),
        "chunk error",
    )
}

/// The summary an agent sent on this connection and the buckets asked for.
struct DigestState {
    /// `InventorySummary.bucket_count`.
    count: u32,
    /// Buckets requested and not yet answered (ascending; empty: none).
    requested: Vec<u32>,
}

/// What `Welcome.digest_buckets` announces for the configured limit: the
/// largest power of two within it and [`digest::MAX_BUCKETS`], or nothing
/// (whole inventories only) below [`digest::MIN_BUCKETS`].
fn announced_digest_buckets(configured: u32) -> Option<u32> {
    let n = configured.min(digest::MAX_BUCKETS);
    let pow2 = if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    };
    (pow2 >= digest::MIN_BUCKETS).then_some(pow2)
}

/// A bucketed digest broke the rules: `digest_error`, then close.
fn digest_end(hub: &Hub, e: &vworkspace_protocol::digest::DigestError) -> End {
    hub.metrics.frame_refused(ErrorCode::DigestError.as_str());
    End::Close(
        Some(Box::new(error_frame(ErrorCode::DigestError, e.to_string()))),
        close_code(ErrorCode::DigestError),
        "digest error",
    )
}

fn close_code(code: ErrorCode) -> CloseCode {
    CloseCode::from(code.close_code())
}

fn kind_of(s: &str) -> Option<ObjectKind> {
    match s {
        "ApplicationInstance" => Some(ObjectKind::ApplicationInstance),
        "Operation" => Some(ObjectKind::Operation),
        "Cluster" => Some(ObjectKind::Cluster),
        _ => None,
    }
}

/// What the HTTP layer hands the tunnel after a successful upgrade.
pub(crate) struct TunnelStart {
    pub identity: Identity,
    pub on_upgrade: hyper::upgrade::OnUpgrade,
}
