//! The vWorkspace cluster agent: enrollment, the hub tunnel, signed-intent
//! apply, the controllers that turn CRDs into Flux/Velero/etc. objects, and the
//! status stream back to the hub.
//!
//! The folders follow the architecture:
//!
//! - [`hub`]: everything that faces the hub (enrollment, credentials, the
//!   tunnel, intent apply, the status outbox, the Cluster status);
//! - [`controllers`]: the ApplicationInstance and Operation reconcilers, and
//!   the namespace gate both halves share;
//! - [`runtime`]: one agent process (admin server, Lease, leader term, the
//!   `join`/`status` subcommands);
//! - [`process`]: flags and logging, which every other part may use.
//!
//! Data flow of [`Agent::run`]: the admin server starts at once; a Lease
//! elects one active replica; the leader runs enrollment (Cluster object +
//! token Secret → credentials Secret), the tunnel (credentials → mTLS
//! WebSocket → intents verified and applied → acks), the status stream
//! (watches → coalesced statuses → tunnel) and the controllers. Losing the
//! Lease stops all of it.

#![deny(rust_2018_idioms, missing_docs)]
#![forbid(unsafe_code)]

pub mod controllers;
pub mod hub;
pub mod process;
pub mod runtime;

pub use controllers::namespaces::NamespaceList;
pub use hub::tunnel::ConnState;
pub use process::args::{Args, Command};
pub use process::logging::Redactor;
pub use runtime::{Agent, Config, RunError, kube_client};

/// Field manager of every server-side apply the agent makes (intents, the
/// controllers, credentials, tombstones, the Cluster status).
pub const FIELD_MANAGER: &str = "vworkspace-agent";

/// Version reported in `Hello` and the Cluster status.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
