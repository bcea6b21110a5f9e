//! The controllers' watch streams: each watch backs off on its own and hands
//! the controller objects only, never an error.
//!
//! `Controller::new`/`watches`/`owns` put every watch of a controller behind
//! one shared backoff (`Controller::trigger_backoff`, exponential from 0.8 s
//! to 30 s, reset only after 120 s without an error), and every error of
//! every watch sleeps the whole controller. A kube-apiserver restart breaks
//! all of them at once: the Operation controller has about ten watches, so it
//! slept one backoff step per broken watch (0.8 + 1.6 + … + 30 + 30 s), for
//! minutes after the API server was back, and an Operation created right
//! after the restart got no status in that time. Here each watch retries
//! after its own backoff (the same default), and its errors are logged and
//! dropped, so the shared backoff never runs and a broken watch delays no
//! other.

use std::fmt::Debug;

use futures::{Stream, StreamExt, future};
use kube::{
    Api, Resource,
    runtime::{WatchStreamExt, reflector::store::Writer, watcher},
};
use serde::de::DeserializeOwned;
use tracing::warn;

/// Objects touched (applied or deleted) in a watch of `api`, for
/// `Controller::watches_stream_with` and `Controller::owns_stream_with`.
pub fn touched<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    watcher(api, config)
        .default_backoff()
        .touched_objects()
        .filter_map(move |r| future::ready(keep(r, what)))
}

/// The controller's own objects: a watch of `api` kept in a store, for
/// `Controller::for_stream` with the writer's reader as the controller's store.
pub fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .filter_map(move |r| future::ready(keep(r, what)))
}

/// `stream` without the watch events that only echo `own`'s writes.
pub fn without_echoes<K, S>(
    stream: S,
    own: std::sync::Arc<crate::controllers::own_writes::OwnWrites>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    stream.filter(move |r| {
        future::ready(match r {
            Ok(o) => !own.is_echo(o.meta()),
            Err(_) => true,
        })
    })
}

/// Like [`reflected`], but hands on deletions too: for watches that trigger
/// reconciles of other objects (`Controller::watches_stream_with`) and whose
/// store the reconciler reads.
pub fn reflected_touched<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
    writer: Writer<K>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Clone + Eq + std::hash::Hash + Send + Sync,
{
    watcher(api, config)
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .filter_map(move |r| future::ready(keep(r, what)))
}

fn keep<K>(r: Result<K, watcher::Error>, what: &'static str) -> Option<Result<K, watcher::Error>> {
    match r {
        Ok(o) => Some(Ok(o)),
        Err(error) => {
            warn!(%error, watch = what, "Controller watch failed; retrying after its backoff");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_dropped_and_objects_pass() {
        let items: Vec<Result<u32, watcher::Error>> =
            vec![Ok(1), Err(watcher::Error::NoResourceVersion), Ok(2)];
        let out: Vec<u32> = futures::stream::iter(items)
            .filter_map(|r| future::ready(keep(r, "test")))
            .map(|r| r.expect("errors are dropped"))
            .collect()
            .await;
        assert_eq!(out, vec![1, 2]);
    }
}
