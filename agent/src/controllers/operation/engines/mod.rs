//! Engines: one small module per kind of downstream workload, each with a pure
//! `desired_object` (Operation → workload) and a pure `outcome_from_status`
//! (workload status → [`Observation`]).

pub mod helm;
pub mod io;
pub mod job;
pub mod snapshot;
pub mod velero;
pub mod volsync;
pub mod workflow;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::DynamicObject;
use kube::{Resource, ResourceExt, api::ObjectMeta};
use serde_json::Value;
use vworkspace_crds::ApplicationInstance;
use vworkspace_crds::{Engine, Operation, OperationType, well_known::labels};

use self::io::Workload;
use crate::controllers::resources::Kind;
use crate::controllers::{Context, Error};

/// Engine outputs (`status.outputs`).
pub type Outputs = BTreeMap<String, Value>;

/// Where an engine stands, read from its workload.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Still working.
    Running {
        /// Running=True reason.
        reason: &'static str,
        /// Progress message.
        message: String,
    },
    /// Finished successfully.
    Succeeded {
        /// Succeeded=True reason.
        reason: &'static str,
        /// Message (warnings are mentioned here and listed in outputs).
        message: String,
    },
    /// Finished with an error.
    Failed {
        /// Failed=True reason.
        reason: &'static str,
        /// The engine's error message.
        message: String,
    },
}

/// An outcome plus the outputs known so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Where the engine stands.
    pub outcome: Outcome,
    /// Outputs to publish.
    pub outputs: Outputs,
}

/// A parameter or spec problem; permanent, since the spec is immutable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// Longest engine message copied into a condition (Velero docs: 1 KiB).
pub const MAX_ENGINE_MESSAGE: usize = 1024;

/// The kind of workload an engine writes (for `engineRef` and watches).
pub fn workload_kind(engine: Engine, type_: OperationType) -> Kind {
    required_kinds(engine, type_)[0]
}

/// Everything an engine needs to know about its Operation.
#[derive(Debug, Clone)]
pub struct OpInfo {
    /// Operation name.
    pub name: String,
    /// Operation (and target) namespace.
    pub namespace: String,
    /// Operation UID (the ownership label).
    pub uid: String,
    /// Target ApplicationInstance name.
    pub target: String,
    /// Verb.
    pub type_: OperationType,
    /// Executor.
    pub engine: Engine,
    /// Parameters.
    pub params: BTreeMap<String, Value>,
    /// Owner reference to the Operation.
    pub owner: Option<OwnerReference>,
}

// === impl OpInfo ===

impl OpInfo {
    /// Reads an Operation; `None` when it lacks namespace or uid.
    pub fn from_operation(op: &Operation) -> Option<Self> {
        let mut owner = op.controller_owner_ref(&())?;
        owner.block_owner_deletion = Some(true);
        Some(Self {
            name: op.name_any(),
            namespace: op.namespace()?,
            uid: op.uid()?,
            target: op.spec.target_ref.name.clone(),
            type_: op.spec.type_,
            engine: op.spec.engine,
            params: op.spec.parameters.clone().unwrap_or_default(),
            owner: Some(owner),
        })
    }

    /// Labels every workload carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::OPERATION.to_string(), self.uid.clone()),
            (labels::TARGET.to_string(), self.target.clone()),
            (
                labels::APPLICATION_INSTANCE.to_string(),
                self.target.clone(),
            ),
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_OPERATOR.to_string(),
            ),
        ])
    }

    /// Metadata of a workload; owned by the Operation only when `owned` and in
    /// the Operation's namespace (owner references cannot cross namespaces).
    pub fn meta(&self, name: &str, namespace: &str, owned: bool) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(self.labels()),
            owner_references: (owned && namespace == self.namespace)
                .then(|| self.owner.clone().into_iter().collect()),
            ..ObjectMeta::default()
        }
    }

    /// A string parameter.
    pub fn str_param(&self, key: &str) -> Result<Option<String>, ParamError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(ParamError(format!("parameters.{key} must be a string"))),
        }
    }

    /// A required string parameter.
    pub fn required_str(&self, key: &str) -> Result<String, ParamError> {
        self.str_param(key)?
            .ok_or_else(|| ParamError(format!("parameters.{key} is required")))
    }

    /// A boolean parameter.
    pub fn bool_param(&self, key: &str) -> Result<Option<bool>, ParamError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ParamError(format!("parameters.{key} must be a boolean"))),
        }
    }

    /// An integer parameter at least `min`.
    pub fn int_param(&self, key: &str, min: i64) -> Result<Option<i64>, ParamError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_i64() {
                Some(n) if n >= min => Ok(Some(n)),
                _ => Err(ParamError(format!(
                    "parameters.{key} must be an integer >= {min}"
                ))),
            },
        }
    }

    /// A list-of-strings parameter.
    pub fn strings_param(&self, key: &str) -> Result<Option<Vec<String>>, ParamError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| ParamError(format!("parameters.{key} must list strings")))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(ParamError(format!(
                "parameters.{key} must be a list of strings"
            ))),
        }
    }

    /// A string→string map parameter.
    pub fn map_param(&self, key: &str) -> Result<Option<BTreeMap<String, String>>, ParamError> {
        match self.params.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => {
                            return Err(ParamError(format!(
                                "parameters.{key}.{k} must be a string"
                            )));
                        }
                    };
                    Ok((k.clone(), v))
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(Some),
            Some(_) => Err(ParamError(format!("parameters.{key} must be an object"))),
        }
    }
}

/// A DNS-1123 name from parts, cut to `max` with a short hash suffix when too long.
pub fn bounded_name(parts: &[&str], max: usize) -> String {
    let joined = parts.join("-");
    if joined.len() <= max {
        return joined;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, joined.as_bytes());
    let suffix = hex::encode(&digest.as_ref()[..4]);
    let keep = max - suffix.len() - 1;
    let mut head = joined[..keep].to_string();
    while head.ends_with('-') || head.ends_with('.') {
        head.pop();
    }
    format!("{head}-{suffix}")
}

/// Cuts an engine message to [`MAX_ENGINE_MESSAGE`] bytes at a char boundary.
pub fn cut(message: &str) -> String {
    if message.len() <= MAX_ENGINE_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_ENGINE_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

// === the engine table ===

/// Every engine; the controller watches the workload kinds of all of them.
pub const ENGINES: &[Engine] = &[
    Engine::Velero,
    Engine::Snapshot,
    Engine::Volsync,
    Engine::Workflow,
    Engine::Job,
    Engine::Helm,
    Engine::HelmHookJob,
];

/// What an engine will create, prepared (and validated) before admission.
pub enum Prepared {
    /// Custom resources, applied in order; the first one is the `engineRef`.
    Dynamic(Vec<DynamicObject>),
    /// A Job, run by the operation-runner ServiceAccount.
    Job(Box<Job>),
    /// A chart version change of the target.
    Helm {
        /// The versions involved.
        plan: helm::Plan,
        /// The target's HelmRelease.
        release: String,
        /// The target.
        target: Box<ApplicationInstance>,
    },
}

/// The cluster side of one engine. The controller reaches an engine only
/// through [`driver`], so a new engine is a module in this folder, a
/// `Driver` impl in it, and one line in [`driver`] and [`ENGINES`].
pub trait Driver: Send + Sync {
    /// Which operation types the engine runs.
    fn supports(&self, type_: OperationType) -> bool;

    /// The downstream kinds the engine needs; missing ones block it with
    /// DependencyMissing. The first one is the kind of its workload.
    fn required_kinds(&self, type_: OperationType) -> Vec<Kind>;

    /// Custom-resource kinds whose objects carry the Operation UID label and
    /// wake the controller when they change.
    fn watched_kinds(&self) -> &'static [Kind] {
        &[]
    }

    /// Whether the workload's pods hold the logs (`status.logsRef`).
    fn has_logs(&self) -> bool {
        false
    }

    /// Builds (and validates) what the engine will create.
    fn prepare<'a>(
        &'a self,
        info: &'a OpInfo,
        target: &'a ApplicationInstance,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Result<Prepared, ParamError>, Error>>;

    /// Reads the workload; `None` when it is gone.
    fn read<'a>(
        &'a self,
        op: &'a Operation,
        info: &'a OpInfo,
        at: &'a Workload,
        ctx: &'a Context,
    ) -> BoxFuture<'a, Result<Option<Observation>, Error>>;

    /// Stops the workload (cancel, timeout); `orphan` also drops its owner
    /// reference so its logs outlive the Operation.
    fn stop<'a>(
        &'a self,
        op: &'a Operation,
        info: &'a OpInfo,
        ctx: &'a Context,
        orphan: bool,
    ) -> BoxFuture<'a, Result<(), Error>>;

    /// After a failure: keep what holds the logs when the Operation goes.
    fn keep_for_logs<'a>(
        &'a self,
        _info: &'a OpInfo,
        _ctx: &'a Context,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async { Ok(()) })
    }
}

/// The driver of `engine`: the one place the controller matches on engines.
pub fn driver(engine: Engine) -> &'static dyn Driver {
    match engine {
        Engine::Velero => &velero::Driver,
        Engine::Snapshot => &snapshot::Driver,
        Engine::Volsync => &volsync::Driver,
        Engine::Workflow => &workflow::Driver,
        Engine::Job => &job::Driver(Engine::Job),
        Engine::HelmHookJob => &job::Driver(Engine::HelmHookJob),
        Engine::Helm => &helm::Driver,
    }
}

/// Which (type, engine) pairs exist, as upstream's built-in templates plus
/// the engines this project adds.
pub fn supports(engine: Engine, type_: OperationType) -> bool {
    driver(engine).supports(type_)
}

/// The downstream kinds an engine needs; missing ones block it with DependencyMissing.
pub fn required_kinds(engine: Engine, type_: OperationType) -> Vec<Kind> {
    driver(engine).required_kinds(type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::resources::VELERO_RESTORE;

    #[test]
    fn support_table_covers_every_engine() {
        use OperationType as T;
        let table = [
            (Engine::Velero, T::Backup, true),
            (Engine::Velero, T::Restore, true),
            (Engine::Velero, T::Upgrade, false),
            (Engine::Snapshot, T::Backup, true),
            (Engine::Snapshot, T::Restore, false),
            (Engine::Volsync, T::Backup, true),
            (Engine::Workflow, T::Runbook, true),
            (Engine::Workflow, T::Migration, true),
            (Engine::Job, T::RunCommand, true),
            (Engine::Job, T::Backup, false),
            (Engine::Helm, T::Upgrade, true),
            (Engine::Helm, T::Rollback, true),
            (Engine::Helm, T::Backup, false),
            (Engine::HelmHookJob, T::Migration, true),
            (Engine::HelmHookJob, T::RunCommand, false),
        ];
        for (e, t, want) in table {
            assert_eq!(supports(e, t), want, "{e:?} {t:?}");
        }
        for e in Engine::ALL {
            assert!(!required_kinds(e, T::Backup).is_empty());
        }
        assert_eq!(workload_kind(Engine::Velero, T::Restore), VELERO_RESTORE);
    }

    #[test]
    fn bounded_names_fit_and_stay_unique() {
        assert_eq!(bounded_name(&["a", "b"], 63), "a-b");
        let long = "x".repeat(80);
        let a = bounded_name(&["ns", &long, "1"], 63);
        let b = bounded_name(&["ns", &long, "2"], 63);
        assert!(a.len() <= 63 && b.len() <= 63);
        assert_ne!(a, b);
    }

    #[test]
    fn messages_are_cut_to_one_kib() {
        let m = "é".repeat(1000);
        assert!(cut(&m).len() <= MAX_ENGINE_MESSAGE + "…".len());
        assert_eq!(cut("short"), "short");
    }
}
