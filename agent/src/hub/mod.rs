//! The hub-facing half of the agent.
//!
//! Data flow: [`enroll`] turns the Cluster object and join token into the
//! credentials Secret ([`creds`]); [`tunnel`] dials the hub with them and
//! hands each intent to [`apply`] (verify → namespace gate → validate → SSA,
//! with [`tombstones`] for deleted objects); [`status`] watches the managed
//! objects and fills the outbox the tunnel drains; [`cluster_status`] keeps
//! the Cluster object's status; [`backoff`] spaces out retries.

pub mod apply;
pub mod backoff;
pub mod cluster_status;
pub mod creds;
pub mod enroll;
pub mod metrics;
pub mod recovery;
pub mod status;
pub mod tombstones;
pub mod tunnel;
