//! The real `helm` CLI (Helm 4, built with the Flux set, see [`crate::assets`]).
//!
//! [`Helm`] runs it with `HELM_CACHE_HOME`, `HELM_CONFIG_HOME` and
//! `HELM_DATA_HOME` in a private temp dir, so no test reads or writes the
//! user's Helm state. Values travel as a JSON file (JSON is YAML) passed with
//! `-f`, merged over the chart's `values.yaml` by Helm itself. A failed run is
//! an error carrying everything helm printed.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// Why helm could not be run, or what it said when it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelmError {
    #[error(transparent)]
    Assets(#[from] crate::assets::AssetError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// helm ran and exited non-zero.
    #[error("{what} failed ({status}):\n{output}")]
    Failed {
        what: String,
        status: std::process::ExitStatus,
        output: String,
    },
}

// The chart servers of the upstream harness report helm failures in their own
// error type; this keeps its variants.
impl From<HelmError> for crate::upstream::UpstreamError {
    fn from(e: HelmError) -> Self {
        match e {
            HelmError::Assets(e) => Self::Assets(e),
            HelmError::Io { context, source } => Self::Io { context, source },
            HelmError::Failed { what, output, .. } => Self::Helm { what, output },
        }
    }
}

/// A release: `helm install NAME … --namespace NAMESPACE`.
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    /// `.Release.Name`.
    pub name: &'a str,
    /// `.Release.Namespace`.
    pub namespace: &'a str,
}

/// The helm binary with a private home; the home is removed on drop.
#[derive(Debug)]
pub struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
}

// === impl Helm ===

impl Helm {
    /// The pinned helm ([`crate::assets::resolve_helm`]) with a fresh home.
    pub fn resolve() -> Result<Self, HelmError> {
        Self::new(crate::assets::resolve_helm()?)
    }

    /// `bin` with a fresh home.
    pub fn new(bin: impl Into<PathBuf>) -> Result<Self, HelmError> {
        let home = tempfile::Builder::new()
            .prefix("vws-helm-")
            .tempdir()
            .map_err(|source| HelmError::Io {
                context: "creating helm's home dir".into(),
                source,
            })?;
        Ok(Self {
            bin: bin.into(),
            home,
        })
    }

    /// The helm binary.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A bare command (add the subcommand and its arguments).
    pub fn command(&self) -> HelmCommand {
        HelmCommand::new(&self.bin, self.home.path())
    }

    /// `helm lint --strict CHART` with `values` (null: the chart's own); returns helm's report.
    pub fn lint(&self, chart: &Path, values: &Value) -> Result<String, HelmError> {
        let mut cmd = self.command();
        cmd.arg("lint").arg("--strict").arg(chart);
        let _file = self.values_arg(&mut cmd, values)?;
        cmd.run(&format!("helm lint {}", chart.display()))
    }

    /// `helm template RELEASE CHART --namespace NS` with `values` (null: the
    /// chart's own) and `extra` arguments (e.g. `--include-crds`, `--set k=v`).
    pub fn template(
        &self,
        release: Release<'_>,
        chart: &Path,
        values: &Value,
        extra: &[&str],
    ) -> Result<String, HelmError> {
        let mut cmd = self.command();
        cmd.arg("template")
            .arg(release.name)
            .arg(chart)
            .arg("--namespace")
            .arg(release.namespace)
            .args(extra);
        let _file = self.values_arg(&mut cmd, values)?;
        cmd.run(&format!(
            "helm template {} {}",
            release.name,
            chart.display()
        ))
    }

    /// `helm SUBCOMMAND RELEASE CHART --namespace NS --kubeconfig KUBECONFIG`
    /// (`install` or `upgrade`) with `values` and `extra` arguments. Helm 4
    /// waits for nothing unless `extra` says `--wait`.
    pub async fn deploy(
        &self,
        subcommand: &str,
        kubeconfig: &Path,
        release: Release<'_>,
        chart: &Path,
        values: &Value,
        extra: &[&str],
    ) -> Result<String, HelmError> {
        let mut cmd = self.command();
        cmd.arg(subcommand)
            .arg(release.name)
            .arg(chart)
            .arg("--namespace")
            .arg(release.namespace)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(extra);
        let _file = self.values_arg(&mut cmd, values)?;
        cmd.run_async(&format!(
            "helm {subcommand} {} {} -n {}",
            release.name,
            chart.display(),
            release.namespace
        ))
        .await
    }

    /// Adds `-f FILE` holding `values` unless it is null; the file lives as
    /// long as the returned guard.
    fn values_arg(
        &self,
        cmd: &mut HelmCommand,
        values: &Value,
    ) -> Result<Option<tempfile::NamedTempFile>, HelmError> {
        if values.is_null() {
            return Ok(None);
        }
        let io = |context: &str| {
            let context = context.to_string();
            move |source| HelmError::Io { context, source }
        };
        let file = tempfile::Builder::new()
            .prefix("values-")
            .suffix(".json")
            .tempfile_in(self.home.path())
            .map_err(io("creating a values file"))?;
        std::fs::write(file.path(), values.to_string()).map_err(io("writing a values file"))?;
        cmd.arg("--values").arg(file.path());
        Ok(Some(file))
    }
}

/// One helm invocation whose failure carries its output.
pub struct HelmCommand(Command);

// === impl HelmCommand ===

impl HelmCommand {
    /// `bin` with its caches, config and registry logins under `home`, and no stdin.
    pub fn new(bin: &Path, home: &Path) -> Self {
        let mut cmd = Command::new(bin);
        cmd.env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .stdin(Stdio::null());
        Self(cmd)
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.0.arg(a);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.0.args(args);
        self
    }

    /// Runs to completion; stdout on success. `what` names the run in errors.
    pub fn run(&mut self, what: &str) -> Result<String, HelmError> {
        let out = self.0.output().map_err(|source| HelmError::Io {
            context: format!("running {what}"),
            source,
        })?;
        Self::finish(what, out)
    }

    /// [`Self::run`] without blocking the async runtime; helm is killed if
    /// the future is dropped.
    pub async fn run_async(self, what: &str) -> Result<String, HelmError> {
        let out = tokio::process::Command::from(self.0)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| HelmError::Io {
                context: format!("running {what}"),
                source,
            })?;
        Self::finish(what, out)
    }

    fn finish(what: &str, out: std::process::Output) -> Result<String, HelmError> {
        if !out.status.success() {
            return Err(HelmError::Failed {
                what: what.to_string(),
                status: out.status,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
