//! The client of the hub admin API (hub-sim and the Python hub), shared with
//! hub-sim's CLI through the leaf `vworkspace-admin-client` crate.

pub use vworkspace_admin_client::{AdminClient, ClientError};
