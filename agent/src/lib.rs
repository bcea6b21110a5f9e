//! The vWorkspace cluster agent: enrollment, the hub tunnel, signed-intent
//! apply, the controllers that turn CRDs into Flux/Velero/etc. objects, and the
//! status stream back to the hub.

pub mod controllers;
