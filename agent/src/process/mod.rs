//! Process plumbing every other part may use: the command-line flags and the
//! redacting log setup. It depends on nothing else in the crate but the
//! namespace allow-list type, so the hub half and the runtime can both use it.

pub mod args;
pub mod logging;
