//! The namespace gate, shared by the intent path and the controllers.
//!
//! The agent acts only in namespaces labelled `managed-by=vworkspace` and, when
//! the operator gave an allow-list, named on it. One reflector of Namespaces
//! (started once per leadership term) answers both halves, so an intent and a
//! reconcile see the same labels, and a label removed by an operator takes
//! effect as soon as the watch delivers it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use vworkspace_crds::well_known::labels;

/// How long a check waits for the first list right after start.
const FIRST_LIST_WAIT: Duration = Duration::from_secs(30);

// === impl NamespaceList ===

/// A comma-separated list of namespace names; empty means "no extra restriction".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceList(pub Vec<String>);

/// Why a namespace list did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid namespace {0:?} in the list: namespaces are DNS labels")]
pub struct ParseNamespaceListError(String);

impl NamespaceList {
    /// Whether `ns` passes the list (an empty list passes everything).
    pub fn allows(&self, ns: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|n| n == ns)
    }

    /// Whether `ns` is named on the list (an empty list names nothing).
    pub fn names(&self, ns: &str) -> bool {
        self.0.iter().any(|n| n == ns)
    }
}

impl FromStr for NamespaceList {
    type Err = ParseNamespaceListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ok = part.len() <= 63
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-');
            if !ok {
                return Err(ParseNamespaceListError(part.to_owned()));
            }
            out.push(part.to_owned());
        }
        out.sort();
        out.dedup();
        Ok(Self(out))
    }
}

impl fmt::Display for NamespaceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

// === impl Refusal ===

/// Why the gate refused a namespace. The `Display` text goes into intent
/// rejections, so it names the half that failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No such namespace.
    #[error("namespace {0} does not exist (NamespaceNotGated)")]
    Missing(String),
    /// The namespace lacks the gate label.
    #[error(
        "namespace {ns} is not labelled {}={} (NamespaceNotGated)",
        labels::NAMESPACE_GATE,
        labels::NAMESPACE_GATE_VALUE
    )]
    NotLabelled {
        /// The namespace.
        ns: String,
    },
    /// The namespace is labelled but not on the allow-list.
    #[error("namespace {0} is not in the agent's allow-list (NamespaceNotGated)")]
    NotListed(String),
}

/// The gate as a pure function: the namespace must exist, carry
/// `managed-by=vworkspace`, and pass the allow-list. The list only narrows the
/// labelled namespaces, never widens them, so a namespace owner can always
/// withdraw consent by removing the label.
pub fn decide(
    ns: &str,
    ns_labels: Option<&BTreeMap<String, String>>,
    allow: &NamespaceList,
) -> Result<(), Refusal> {
    let Some(l) = ns_labels else {
        return Err(Refusal::Missing(ns.to_owned()));
    };
    let labelled = l
        .get(labels::NAMESPACE_GATE)
        .is_some_and(|v| v == labels::NAMESPACE_GATE_VALUE);
    if !labelled {
        return Err(Refusal::NotLabelled { ns: ns.to_owned() });
    }
    if !allow.allows(ns) {
        return Err(Refusal::NotListed(ns.to_owned()));
    }
    Ok(())
}

/// Whether the agent may act in this namespace (see [`decide`]).
pub fn namespace_is_gated(ns: &Namespace, allow: &NamespaceList) -> bool {
    let name = ns.metadata.name.as_deref().unwrap_or_default();
    let empty = BTreeMap::new();
    decide(
        name,
        Some(ns.metadata.labels.as_ref().unwrap_or(&empty)),
        allow,
    )
    .is_ok()
}

// === impl NamespaceGate ===

/// The gate with its one cache: a reflector of Namespaces and the allow-list.
#[derive(Clone)]
pub struct NamespaceGate {
    client: kube::Client,
    store: reflector::Store<Namespace>,
    allow: NamespaceList,
}

impl fmt::Debug for NamespaceGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NamespaceGate")
            .field("allow", &self.allow)
            .finish_non_exhaustive()
    }
}

impl NamespaceGate {
    /// A gate fed by `store`, which a reflector must keep current.
    pub fn new(
        client: kube::Client,
        store: reflector::Store<Namespace>,
        allow: NamespaceList,
    ) -> Self {
        Self {
            client,
            store,
            allow,
        }
    }

    /// A gate and the future that drives its Namespace watch; the caller runs
    /// that future for as long as the gate is used.
    pub fn watch(
        client: kube::Client,
        allow: NamespaceList,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store();
        let fut = watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .reflect(writer)
        .for_each(|ev| {
            if let Err(error) = ev {
                tracing::warn!(%error, "Namespace watch failed");
            }
            future::ready(())
        });
        (Self::new(client, store, allow), fut)
    }

    /// The allow-list.
    pub fn allow_list(&self) -> &NamespaceList {
        &self.allow
    }

    /// Labels of `ns`, `None` when it does not exist.
    async fn labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        // The first list may still be in flight right after start.
        let _ = tokio::time::timeout(FIRST_LIST_WAIT, self.store.wait_until_ready()).await;
        self.store
            .get(&reflector::ObjectRef::<Namespace>::new(ns))
            .map(|n| n.metadata.labels.clone().unwrap_or_default())
    }

    /// Labels of `ns` as the cache holds them, `None` when it holds no such
    /// namespace (waits for the first list right after start, bounded).
    pub async fn cached_labels(&self, ns: &str) -> Option<BTreeMap<String, String>> {
        self.labels(ns).await
    }

    /// Labels of `ns` read from the API server, `None` when it does not
    /// exist: for a namespace the cache does not hold, since it may have been
    /// created a moment ago.
    pub async fn read_labels(
        &self,
        ns: &str,
    ) -> Result<Option<BTreeMap<String, String>>, kube::Error> {
        Ok(Api::<Namespace>::all(self.client.clone())
            .get_opt(ns)
            .await?
            .map(|n| n.metadata.labels.unwrap_or_default()))
    }

    /// Why an intent may not write into `ns`, which carries `ns_labels`
    /// (`None`: it does not exist); `None` when it may.
    pub fn refusal(
        &self,
        ns: &str,
        ns_labels: Option<&BTreeMap<String, String>>,
    ) -> Option<Refusal> {
        decide(ns, ns_labels, &self.allow).err()
    }

    /// Whether the controllers may act in `ns`. A namespace not (yet) in the
    /// cache passes when the operator named it on the allow-list.
    pub async fn is_gated(&self, ns: &str) -> bool {
        match self.labels(ns).await {
            Some(l) => decide(ns, Some(&l), &self.allow).is_ok(),
            None => self.allow.names(ns),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    type Labels = BTreeMap<String, String>;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespace_lists_round_trip_and_reject_bad_names() {
        let l: NamespaceList = "team-b, team-a,,team-a".parse().unwrap();
        assert_eq!(l.0, ["team-a", "team-b"]);
        assert_eq!(l.to_string().parse::<NamespaceList>().unwrap(), l);
        assert!(l.allows("team-a") && !l.allows("team-c"));
        assert!(NamespaceList::default().allows("anything"));
        assert!("Team_A".parse::<NamespaceList>().is_err());
    }

    #[test]
    fn namespace_gate_needs_the_label_and_the_allow_list() {
        let gated = labels(&[("managed-by", "vworkspace")]);
        let other = labels(&[("managed-by", "someone-else")]);
        let any = NamespaceList::default();
        let only_a: NamespaceList = "team-a".parse().unwrap();
        let cases: &[(&str, Option<&Labels>, &NamespaceList, bool)] = &[
            ("team-a", Some(&gated), &any, true),
            ("team-a", Some(&gated), &only_a, true),
            ("team-b", Some(&gated), &only_a, false),
            ("team-a", Some(&other), &any, false),
            ("team-a", None, &any, false),
        ];
        for (ns, l, allow, ok) in cases {
            let d = decide(ns, *l, allow);
            assert_eq!(d.is_ok(), *ok, "{ns} {l:?} {allow:?}: {d:?}");
            if let Err(why) = d {
                assert!(why.to_string().contains("NamespaceNotGated"), "{why}");
            }
        }
    }

    #[test]
    fn namespace_gate_needs_the_label_and_a_listed_name_when_a_list_is_given() {
        let ns = |name: &str, label: Option<&str>| Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: label.map(|v| BTreeMap::from([("managed-by".to_string(), v.to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        let none = NamespaceList::default();
        let allow = NamespaceList(vec!["extra".to_string()]);
        assert!(namespace_is_gated(&ns("a", Some("vworkspace")), &none));
        assert!(!namespace_is_gated(&ns("a", Some("other")), &none));
        assert!(!namespace_is_gated(&ns("a", None), &allow));
        assert!(!namespace_is_gated(&ns("extra", None), &allow));
        assert!(namespace_is_gated(&ns("extra", Some("vworkspace")), &allow));
        assert!(!namespace_is_gated(&ns("a", Some("vworkspace")), &allow));
    }
}
