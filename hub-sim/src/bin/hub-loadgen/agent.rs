//! One simulated agent: connects with the agent's backoff, says Hello,
//! exchanges Inventory, heartbeats, and reconnects when the link breaks.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use vworkspace_protocol::{
    self as proto, Envelope, Frame, Hello, Inventory, InventoryEntry, Limits, ObjectKind, ObjectRef,
};

use super::*;

/// Counters shared by every simulated agent.
pub(crate) struct Shared {
    /// Sessions past `Welcome` right now.
    pub(crate) connected: AtomicU64,
    /// Status frames sent.
    pub(crate) frames: AtomicU64,
    /// Sessions that ended while the run was not stopping.
    pub(crate) drops: AtomicU64,
    /// Restart number the agents are coming back from (0: none yet).
    pub(crate) epoch: AtomicU64,
    /// Agents back in the current epoch: Hello, Welcome, Inventory answered.
    pub(crate) back: AtomicU64,
    /// When the current epoch began (the signal to the hub).
    pub(crate) storm_start: std::sync::Mutex<Instant>,
    /// Per second of the current epoch: connection attempts.
    pub(crate) attempts: Vec<AtomicU64>,
    /// Per second of the current epoch: agents back.
    pub(crate) returns: Vec<AtomicU64>,
    /// The latest reason a session failed, for the report.
    pub(crate) last_error: std::sync::Mutex<Option<String>>,
    /// Sessions count as back only with an identity of at least this
    /// generation (a re-enrollment storm waits for the new certificates).
    pub(crate) min_generation: AtomicU64,
}

/// Seconds of reconnect history kept per storm.
pub(crate) const STORM_SECONDS: usize = 1800;

impl Shared {
    pub(crate) fn new() -> Self {
        Self {
            connected: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            back: AtomicU64::new(0),
            storm_start: std::sync::Mutex::new(Instant::now()),
            attempts: (0..STORM_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            returns: (0..STORM_SECONDS).map(|_| AtomicU64::new(0)).collect(),
            last_error: std::sync::Mutex::new(None),
            min_generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn second(&self) -> usize {
        let start = *self.storm_start.lock().unwrap_or_else(|e| e.into_inner());
        (start.elapsed().as_secs() as usize).min(STORM_SECONDS - 1)
    }

    /// A new storm: counters start again from the signal to the hub.
    pub(crate) fn begin_storm(&self) {
        *self.storm_start.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        for c in self.attempts.iter().chain(&self.returns) {
            c.store(0, Ordering::Relaxed);
        }
        self.back.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// How one session ended.
pub(crate) enum Ended {
    /// The run is over.
    Stop,
    /// The hub said `Goodbye`, with its `retry_after` if it gave one.
    Goodbye(Option<Duration>),
    /// The connection failed or closed.
    Failed(anyhow::Error),
    /// The agent has a new certificate: dial again with it at once.
    NewIdentity,
}

/// The client certificate a simulated agent dials with, replaced when it
/// re-enrolls.
#[derive(Clone)]
pub(crate) struct Tls {
    /// 0 for the first identity, counting up with each re-enrollment.
    pub(crate) generation: u64,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

/// What a simulated agent needs besides its identity.
#[derive(Clone)]
pub(crate) struct AgentCfg {
    pub(crate) addr: SocketAddr,
    pub(crate) heartbeat: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) shared: Arc<Shared>,
    pub(crate) stop: tokio::sync::watch::Receiver<bool>,
}

/// One simulated agent: sessions one after the other, spaced by the agent's
/// own reconnect policy (`agent/src/hub/backoff.rs`, compiled in as
/// [`backoff`]): `after_goodbye` after a `Goodbye{retry_after}`, otherwise
/// full jitter over attempts, the attempt count starting again after a
/// session that got its `Welcome` (as `agent/src/hub/tunnel` does).
pub(crate) async fn agent(
    cfg: AgentCfg,
    cluster: String,
    source: Option<IpAddr>,
    mut tls: tokio::sync::watch::Receiver<Tls>,
    ramp_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut ramp_permit = Some(ramp_permit);
    let mut attempt: u32 = 0;
    let mut back_epoch = 0u64;
    let mut session_no = 0u64;
    let mut stop = cfg.stop.clone();
    loop {
        cfg.shared.attempts[cfg.shared.second()].fetch_add(1, Ordering::Relaxed);
        session_no += 1;
        let mut was_up = false;
        let ended = session(
            &cfg,
            &cluster,
            source,
            &mut tls,
            session_no,
            &mut ramp_permit,
            &mut back_epoch,
            &mut was_up,
        )
        .await;
        // A failed first attempt gives its ramp-up slot back too.
        ramp_permit.take();
        if was_up {
            attempt = 0;
        }
        let delay = match ended {
            Ended::Stop => return,
            Ended::NewIdentity => {
                attempt = 0;
                continue;
            }
            Ended::Goodbye(Some(retry_after)) => {
                backoff::after_goodbye(retry_after, cfg.backoff_max)
            }
            Ended::Goodbye(None) => {
                attempt += 1;
                backoff::full_jitter(cfg.backoff_min, cfg.backoff_max, attempt)
            }
            Ended::Failed(e) => {
                *cfg.shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(format!("{e:#}"));
                attempt += 1;
                backoff::full_jitter(cfg.backoff_min, cfg.backoff_max, attempt)
            }
        };
        cfg.shared.drops.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection: TLS, `Hello`, `Welcome`, an `Inventory` whose status
/// digest differs from the hub's copy (so the hub compares, asks with
/// `ResyncRequest` and gets a `Status` back), then a `Status` every heartbeat.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn session(
    cfg: &AgentCfg,
    cluster: &str,
    source: Option<IpAddr>,
    tls_rx: &mut tokio::sync::watch::Receiver<Tls>,
    session_no: u64,
    ramp_permit: &mut Option<tokio::sync::OwnedSemaphorePermit>,
    back_epoch: &mut u64,
    was_up: &mut bool,
) -> Ended {
    let mut stop = cfg.stop.clone();
    if *stop.borrow() {
        return Ended::Stop;
    }
    let tls = tls_rx.borrow_and_update().clone();
    let generation = tls.generation;
    let open = async {
        let tcp = connect_from(source, cfg.addr).await?;
        let tls = TlsConnector::from(tls.config)
            .connect(ServerName::try_from("localhost")?, tcp)
            .await?;
        let mut req = format!("wss://localhost{}", proto::TUNNEL_PATH).into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(proto::SUBPROTOCOL_V1),
        );
        let ws_cfg = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let (ws, _) = tokio_tungstenite::client_async_with_config(req, tls, Some(ws_cfg)).await?;
        anyhow::Ok(ws)
    };
    let mut ws = tokio::select! {
        _ = stop.changed() => return Ended::Stop,
        r = tokio::time::timeout(OPEN_TIMEOUT, open) => match r {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => return Ended::Failed(e),
            Err(_) => return Ended::Failed(anyhow::anyhow!("no tunnel within {OPEN_TIMEOUT:?}")),
        },
    };
    let limits = Limits::default();
    let mut seq = 0u64;
    let mut peer_seq = 0u64;
    let cluster_ref = ObjectRef::new(ObjectKind::Cluster, "", cluster);
    let status_of = |seq: u64, peer_seq: u64, hash: String| {
        Envelope::new(
            seq,
            peer_seq,
            Frame::Status(proto::Status {
                object: cluster_ref.clone(),
                generation: 1,
                observed_generation: Some(1),
                version: None,
                phase: Some("Connected".into()),
                conditions: vec![],
                outputs: Default::default(),
                hash,
                deleted: false,
            }),
        )
    };
    seq += 1;
    let hello = Envelope::new(
        seq,
        0,
        Frame::Hello(Hello {
            agent_version: "hub-loadgen".into(),
            capabilities: vec![],
            applied: vec![],
            max_in_flight: None,
            chunk: None,
            digest_buckets: false,
        }),
    );
    let send = |env: &Envelope| -> anyhow::Result<Message> {
        Ok(Message::Binary(proto::encode(env, &limits)?.into()))
    };
    if let Err(e) = async { ws.send(send(&hello)?).await.map_err(anyhow::Error::from) }.await {
        return Ended::Failed(e);
    }
    let epoch = cfg.shared.epoch.load(Ordering::SeqCst);
    let inventory_hash = format!("inventory-{session_no}");
    let mut welcomed = false;
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + cfg.heartbeat, cfg.heartbeat);
    let mut identities_open = true;
    let ended = loop {
        tokio::select! {
            _ = stop.changed() => break Ended::Stop,
            changed = tls_rx.changed(), if identities_open => {
                if changed.is_ok() {
                    break Ended::NewIdentity;
                }
                identities_open = false;
            }
            _ = tick.tick() => {
                seq += 1;
                let r = async {
                    ws.send(send(&status_of(seq, peer_seq, format!("{seq}")))?).await?;
                    anyhow::Ok(())
                }.await;
                if let Err(e) = r {
                    break Ended::Failed(e);
                }
                cfg.shared.frames.fetch_add(1, Ordering::Relaxed);
            }
            msg = ws.next() => match msg {
                None => break Ended::Failed(anyhow::anyhow!("hub closed the tunnel")),
                Some(Err(e)) => break Ended::Failed(e.into()),
                Some(Ok(Message::Binary(b))) => {
                    let env = match proto::decode(&b, &limits) {
                        Ok(env) => env,
                        Err(e) => break Ended::Failed(e.into()),
                    };
                    peer_seq = env.seq;
                    let reply = match env.body {
                        Frame::Welcome(_) if !welcomed => {
                            welcomed = true;
                            *was_up = true;
                            ramp_permit.take();
                            cfg.shared.connected.fetch_add(1, Ordering::Relaxed);
                            seq += 1;
                            Some(Envelope::new(seq, peer_seq, Frame::Inventory(Inventory {
                                objects: vec![InventoryEntry {
                                    object: cluster_ref.clone(),
                                    version: 0,
                                    status_hash: inventory_hash.clone(),
                                }],
                                chunk: None,
                                buckets: None,
                            })))
                        }
                        Frame::ResyncRequest(_) if welcomed => {
                            if epoch > *back_epoch
                                && generation >= cfg.shared.min_generation.load(Ordering::SeqCst)
                            {
                                *back_epoch = epoch;
                                cfg.shared.back.fetch_add(1, Ordering::Relaxed);
                                cfg.shared.returns[cfg.shared.second()]
                                    .fetch_add(1, Ordering::Relaxed);
                            }
                            seq += 1;
                            Some(status_of(seq, peer_seq, inventory_hash.clone()))
                        }
                        Frame::Goodbye(g) => {
                            break Ended::Goodbye(
                                g.retry_after_secs.map(|s| Duration::from_secs(s.into())),
                            );
                        }
                        _ => None,
                    };
                    if let Some(reply) = reply {
                        let r = async { ws.send(send(&reply)?).await?; anyhow::Ok(()) }.await;
                        if let Err(e) = r {
                            break Ended::Failed(e);
                        }
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    };
    if welcomed {
        cfg.shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    ended
}

/// Longest a connection may take from TCP connect to the WebSocket upgrade.
pub(crate) const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
