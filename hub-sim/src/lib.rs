//! hub-sim: a small, faithful vWorkspace hub for development and tests.
//!
//! It is the hub side of protocol v1 (`vworkspace-protocol`): a CA and an
//! enrollment endpoint that turns single-use join tokens plus CSRs into
//! short-lived client certificates, a mutual-TLS WebSocket tunnel server that
//! delivers signed intents at least once and in order, a durable SQLite store
//! that survives restarts, an admin HTTP API with a CLI on top, and per-cluster
//! fault injection. See `docs/hub-sim.md`.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

pub mod admin;
/// The admin API client lives in its own crate so the test harness can use it
/// without depending on hub-sim; this path keeps `hub_sim::admin_client` working.
pub use vworkspace_admin_client as admin_client;
pub mod api;
pub mod ca;
pub mod cli;
mod demo;
mod enroll;
pub mod faults;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod ratelimit;
pub mod recovery;
mod respond;
mod sanitize;
pub mod server;
pub mod sim_agent;
pub mod store;
pub mod table;
mod tunnel;
mod unauth;
pub mod wire;

pub use hub::{Config, Hub, HubError};
pub use server::{RunningHub, start};

/// Runs the hub until SIGINT/SIGTERM, then shuts down gracefully (agents get
/// `Goodbye{retry_after}`). A second signal aborts at once.
pub async fn serve_until_signal(cfg: Config) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let running = start(cfg).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down; agents get Goodbye");
    tokio::select! {
        _ = running.shutdown() => {}
        _ = term.recv() => tracing::warn!("second signal, aborting"),
        _ = int.recv() => tracing::warn!("second signal, aborting"),
    }
    Ok(())
}
