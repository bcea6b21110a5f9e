//! Renders the agent's Helm chart (`deploy/chart/vworkspace-agent`) without Helm.
//!
//! Helm is not a dependency of this repository, so the chart's templates keep to
//! a small subset of Go template syntax, and this module renders exactly that
//! subset. Anything outside it is an error naming the template and line, so a
//! chart edit that would render differently here and in Helm fails loudly
//! instead of drifting. The subset:
//!
//! - `{{ .Values.a.b }}`, `{{ .Release.Name }}`, `{{ .Release.Namespace }}`,
//!   `{{ .Chart.Name }}`, `{{ .Chart.AppVersion }}`, and `$.`-rooted paths
//!   (`{{ $.Release.Name }}`) inside a range;
//! - `{{ . }}` and `{{ .field }}` inside a range;
//! - one function, `quote` (`{{ .Values.x | quote }}`);
//! - `{{ if PATH }}` … `{{ else }}` … `{{ end }}` with Go truthiness (false,
//!   0, "", empty list or map, and a missing value are false);
//! - `{{ range PATH }}` … `{{ end }}` over a list (a missing value is empty);
//! - `{{/* comments */}}` and the `{{-` / `-}}` whitespace trims.
//!
//! Where Helm's output could differ, this renderer refuses instead: an output
//! action whose value is missing or null is an error (Helm prints nothing), and
//! so is a number of a million or more (Helm prints `1e+06`). `quote` escapes
//! like JSON, which equals Go's `%q` for printable text (values with control
//! characters would be escaped differently).
//!
//! The plain manifests for kubectl users (`deploy/manifests/vworkspace-agent.yaml`)
//! are [`plain_bundle`] of the default values; the chart's `crds/` directory and
//! `templates/policies.yaml` are copies of `crds/manifests/`. [`check_committed`] fails when either is stale,
//! and `VWS_UPDATE_DEPLOY=1` with the test in [`REGENERATE`] rewrites them.

use kube::api::{DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The command that regenerates the committed deploy files (from the repository root).
pub const REGENERATE: &str = "VWS_UPDATE_DEPLOY=1 cargo test -p vworkspace-e2e --test deploy_rbac committed_deploy_files_are_up_to_date";

/// The CRD files the chart ships, copied from `crds/manifests/`.
pub const CRD_FILES: &[&str] = &[
    "applicationinstances.apps.vworkspace.io.yaml",
    "operations.ops.vworkspace.io.yaml",
    "clusters.ops.vworkspace.io.yaml",
];

/// Generated manifests the chart ships as templates (no template syntax in
/// them), copied from `crds/manifests/` into `templates/`.
pub const COPIED_TEMPLATES: &[&str] = &["policies.yaml"];

/// Release name and namespace of the committed plain manifests.
pub const DEFAULT_RELEASE: Release<'static> = Release {
    name: "vworkspace-agent",
    namespace: "vworkspace-system",
};

/// Why a chart could not be rendered, checked or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}: YAML: {message}")]
    Yaml { origin: String, message: String },
    /// Syntax outside the supported subset, or malformed.
    #[error("{template}:{line}: {message}")]
    Syntax {
        template: String,
        line: usize,
        message: String,
    },
    /// An output action names a value that is missing, null, a list or a map.
    #[error("{template}:{line}: {message}")]
    Value {
        template: String,
        line: usize,
        message: String,
    },
    /// A committed file differs from what the chart renders.
    #[error("{path} is stale or missing; regenerate from the repository root with `{REGENERATE}`")]
    Stale { path: PathBuf },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {what}: the API server does not serve {api_version} {kind}")]
    UnknownKind {
        what: String,
        api_version: String,
        kind: String,
    },
}

/// The release a chart is rendered for.
#[derive(Clone, Copy, Debug)]
pub struct Release<'a> {
    /// `.Release.Name`.
    pub name: &'a str,
    /// `.Release.Namespace`.
    pub namespace: &'a str,
}

/// One rendered template: its chart-relative path and text.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub source: String,
    pub text: String,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RenderError + '_ {
    move |source| RenderError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, RenderError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn yaml(text: &str, origin: &str) -> Result<Value, RenderError> {
    let v: Value = serde_saphyr::from_str(text).map_err(|e| RenderError::Yaml {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    Ok(if v.is_null() {
        Value::Object(Map::new())
    } else {
        v
    })
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    repo_root().join("deploy")
}

fn repo_root() -> &'static Path {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests)
}

/// The agent chart's directory.
pub fn chart_dir() -> PathBuf {
    deploy_dir().join("chart/vworkspace-agent")
}

/// The committed plain manifests.
pub fn plain_manifest_path() -> PathBuf {
    deploy_dir().join("manifests/vworkspace-agent.yaml")
}

fn crds_source_dir() -> PathBuf {
    repo_root().join("crds/manifests")
}

/// Deep-merges `over` into `base` as `helm -f override.yaml` does: maps merge
/// key by key, a null removes the key, anything else (lists included)
/// replaces. A null `over` as a whole means "no overrides".
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (_, Value::Null) => {}
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                    continue;
                }
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// The root context (`.`) of a chart for `release`, with `overrides` merged over `values.yaml`.
pub fn context(
    chart: &Path,
    release: Release<'_>,
    overrides: &Value,
) -> Result<Value, RenderError> {
    let values_path = chart.join("values.yaml");
    let mut values = yaml(&read(&values_path)?, &values_path.display().to_string())?;
    merge(&mut values, overrides);
    let chart_path = chart.join("Chart.yaml");
    let meta = yaml(&read(&chart_path)?, &chart_path.display().to_string())?;
    let field = |k: &str| meta.get(k).cloned().unwrap_or(Value::Null);
    Ok(serde_json::json!({
        "Values": values,
        "Release": {"Name": release.name, "Namespace": release.namespace, "Service": "Helm"},
        "Chart": {"Name": field("name"), "Version": field("version"), "AppVersion": field("appVersion")},
    }))
}

/// Renders every `templates/*.yaml` of `chart` (sorted by file name; `_*` partials
/// and NOTES.txt are not manifests), skipping templates that render to nothing.
pub fn render_chart(
    chart: &Path,
    release: Release<'_>,
    overrides: &Value,
) -> Result<Vec<Rendered>, RenderError> {
    let root = context(chart, release, overrides)?;
    let dir = chart.join("templates");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(io(&dir))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".yaml") || name.ends_with(".yml")) && !name.starts_with('_')
        })
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = format!(
            "templates/{}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        let text = render_template(&name, &read(&path)?, &root)?;
        if text.trim().is_empty() {
            continue;
        }
        out.push(Rendered { source: name, text });
    }
    Ok(out)
}

/// The plain manifests for `release`: the release Namespace, the chart's CRDs,
/// then every rendered template, as one multi-document YAML text.
///
/// Helm itself creates no namespace (`--create-namespace` does); kubectl users
/// get one here so a single `kubectl apply` works.
pub fn plain_bundle(
    chart: &Path,
    release: Release<'_>,
    overrides: &Value,
) -> Result<String, RenderError> {
    let root = context(chart, release, overrides)?;
    let chart_name = root["Chart"]["Name"]
        .as_str()
        .unwrap_or("chart")
        .to_string();
    let mut out = format!(
        "# Plain manifests of the {chart_name} Helm chart (deploy/chart/{chart_name}),\n\
         # rendered with its default values for release {name:?} in namespace {ns:?}.\n\
         # Generated; do not edit. Regenerate from the repository root:\n\
         #   {REGENERATE}\n\
         ---\n\
         apiVersion: v1\n\
         kind: Namespace\n\
         metadata:\n  name: {ns}\n",
        name = release.name,
        ns = release.namespace,
    );
    for file in CRD_FILES {
        let path = chart.join("crds").join(file);
        let text = read(&path)?;
        out.push_str(&format!("---\n# Source: {chart_name}/crds/{file}\n"));
        out.push_str(&strip_generated_header(&text));
        out.push('\n');
    }
    for r in render_chart(chart, release, overrides)? {
        out.push_str(&format!("---\n# Source: {chart_name}/{}\n", r.source));
        let copied = COPIED_TEMPLATES
            .iter()
            .any(|f| r.source == format!("templates/{f}"));
        let text = if copied {
            strip_generated_header(&r.text)
        } else {
            r.text.trim_start_matches("---\n").to_string()
        };
        out.push_str(text.trim_matches('\n'));
        out.push('\n');
    }
    Ok(out)
}

/// Drops a generated file's comment header and leading `---`.
fn strip_generated_header(text: &str) -> String {
    let body: Vec<&str> = text
        .lines()
        .skip_while(|l| l.starts_with('#') || l.trim() == "---")
        .collect();
    body.join("\n")
}

/// Parses a multi-document YAML text into its non-empty documents.
pub fn documents(text: &str) -> Result<Vec<Value>, RenderError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| RenderError::Yaml {
        origin: "rendered manifests".into(),
        message: e.to_string(),
    })?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every committed file copied from `crds/manifests/`: the chart's CRDs and admission policy.
pub fn expected_files() -> Result<Vec<(PathBuf, String)>, RenderError> {
    let chart = chart_dir();
    let mut files = Vec::new();
    for file in CRD_FILES {
        let src = crds_source_dir().join(file);
        files.push((chart.join("crds").join(file), read(&src)?));
    }
    for file in COPIED_TEMPLATES {
        let src = crds_source_dir().join(file);
        files.push((chart.join("templates").join(file), read(&src)?));
    }
    Ok(files)
}

/// Checks that the chart's CRDs match `crds/manifests/` and that the plain
/// manifests match the chart.
pub fn check_committed() -> Result<(), RenderError> {
    let compare = |path: &Path, want: &str| match std::fs::read_to_string(path) {
        Ok(have) if have == want => Ok(()),
        Ok(_) => Err(RenderError::Stale {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(RenderError::Stale {
            path: path.to_path_buf(),
        }),
        Err(source) => Err(RenderError::Io {
            path: path.to_path_buf(),
            source,
        }),
    };
    for (path, want) in expected_files()? {
        compare(&path, &want)?;
    }
    let bundle = plain_bundle(&chart_dir(), DEFAULT_RELEASE, &Value::Null)?;
    compare(&plain_manifest_path(), &bundle)
}

/// Rewrites the chart's CRD copies, then the plain manifests rendered from them.
pub fn write_committed() -> Result<Vec<PathBuf>, RenderError> {
    let mut written = Vec::new();
    let write = |path: &Path, text: &str| {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        std::fs::write(path, text).map_err(io(path))
    };
    for (path, text) in expected_files()? {
        write(&path, &text)?;
        written.push(path);
    }
    let bundle = plain_bundle(&chart_dir(), DEFAULT_RELEASE, &Value::Null)?;
    let path = plain_manifest_path();
    write(&path, &bundle)?;
    written.push(path);
    Ok(written)
}

/// Applies `docs` in order by server-side apply (field manager `field_manager`),
/// resolving each kind through discovery. CRDs in `docs` should be installed
/// and established first (see [`crate::crds::install`]); they are skipped here.
pub async fn apply(
    client: &kube::Client,
    docs: &[Value],
    field_manager: &str,
) -> Result<(), RenderError> {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .map_err(|source| RenderError::Apply {
            what: "discovery".into(),
            source,
        })?;
    for doc in docs {
        let api_version = doc["apiVersion"].as_str().unwrap_or_default().to_string();
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        if kind == "CustomResourceDefinition" {
            continue;
        }
        let name = doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
        let what = format!(
            "{kind} {}{name}",
            ns.as_deref().map(|n| format!("{n}/")).unwrap_or_default()
        );
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_string(), v.to_string()),
            None => (String::new(), api_version.clone()),
        };
        let found: Option<(ApiResource, ApiCapabilities)> = discovery.get(&group).and_then(|g| {
            g.versioned_resources(&version)
                .into_iter()
                .find(|(r, _)| r.kind == kind)
        });
        let Some((ar, caps)) = found else {
            return Err(RenderError::UnknownKind {
                what,
                api_version,
                kind,
            });
        };
        let api: kube::Api<DynamicObject> = match (caps.scope, ns.as_deref()) {
            (Scope::Namespaced, Some(ns)) => kube::Api::namespaced_with(client.clone(), ns, &ar),
            (Scope::Namespaced, None) => kube::Api::default_namespaced_with(client.clone(), &ar),
            (Scope::Cluster, _) => kube::Api::all_with(client.clone(), &ar),
        };
        api.patch(
            &name,
            &PatchParams::apply(field_manager).force(),
            &Patch::Apply(doc),
        )
        .await
        .map_err(|source| RenderError::Apply { what, source })?;
    }
    Ok(())
}

// === the template engine ===

#[derive(Debug, Clone, PartialEq)]
enum Root {
    Dot,
    Dollar,
}

#[derive(Debug, Clone, PartialEq)]
struct Path_ {
    root: Root,
    fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Pipe {
    path: Path_,
    quote: bool,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Out {
        pipe: Pipe,
        line: usize,
    },
    If {
        cond: Pipe,
        then: Vec<Node>,
        otherwise: Vec<Node>,
    },
    Range {
        over: Pipe,
        body: Vec<Node>,
        line: usize,
    },
}

enum Token {
    Text(String),
    Action { body: String, line: usize },
}

fn syntax(template: &str, line: usize, message: impl Into<String>) -> RenderError {
    RenderError::Syntax {
        template: template.to_string(),
        line,
        message: message.into(),
    }
}

/// Splits a template into text and actions, applying the `{{-` / `-}}` trims.
fn tokenize(template: &str, text: &str) -> Result<Vec<Token>, RenderError> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut line = 1;
    let mut trim_next = false;
    while let Some(start) = rest.find("{{") {
        let mut before = rest[..start].to_string();
        if trim_next {
            before = before.trim_start().to_string();
        }
        line += rest[..start].matches('\n').count();
        let after_open = &rest[start + 2..];
        let Some(end) = after_open.find("}}") else {
            return Err(syntax(template, line, "unclosed action: `{{` without `}}`"));
        };
        let mut body = &after_open[..end];
        if let Some(b) = body.strip_prefix('-') {
            if !b.starts_with(|c: char| c.is_whitespace()) {
                return Err(syntax(template, line, "`{{-` must be followed by a space"));
            }
            before = before.trim_end().to_string();
            body = b;
        }
        trim_next = false;
        if let Some(b) = body.strip_suffix('-') {
            if !b.ends_with(|c: char| c.is_whitespace()) {
                return Err(syntax(template, line, "`-}}` must follow a space"));
            }
            trim_next = true;
            body = b;
        }
        if !before.is_empty() {
            tokens.push(Token::Text(before));
        }
        tokens.push(Token::Action {
            body: body.trim().to_string(),
            line,
        });
        line += body.matches('\n').count();
        rest = &after_open[end + 2..];
    }
    let tail = if trim_next { rest.trim_start() } else { rest };
    if !tail.is_empty() {
        tokens.push(Token::Text(tail.to_string()));
    }
    Ok(tokens)
}

fn parse_path(template: &str, line: usize, word: &str) -> Result<Path_, RenderError> {
    let (root, rest) = if word == "." {
        return Ok(Path_ {
            root: Root::Dot,
            fields: vec![],
        });
    } else if let Some(r) = word.strip_prefix("$.") {
        (Root::Dollar, r)
    } else if word == "$" {
        return Ok(Path_ {
            root: Root::Dollar,
            fields: vec![],
        });
    } else if let Some(r) = word.strip_prefix('.') {
        (Root::Dot, r)
    } else {
        return Err(syntax(
            template,
            line,
            format!("`{word}` is outside the supported subset (a `.path` or `$.path`)"),
        ));
    };
    let fields: Vec<String> = rest.split('.').map(str::to_string).collect();
    let ok = fields.iter().all(|f| {
        !f.is_empty()
            && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !f.starts_with(|c: char| c.is_ascii_digit())
    });
    if !ok {
        return Err(syntax(
            template,
            line,
            format!("`{word}` is not a field path"),
        ));
    }
    Ok(Path_ { root, fields })
}

fn parse_pipe(template: &str, line: usize, text: &str) -> Result<Pipe, RenderError> {
    let mut parts = text.split('|').map(str::trim);
    let head = parts.next().unwrap_or_default();
    if head.split_whitespace().count() != 1 {
        return Err(syntax(
            template,
            line,
            format!("`{head}` is outside the supported subset (one path, then `| quote`)"),
        ));
    }
    let path = parse_path(template, line, head)?;
    let mut quote = false;
    for f in parts {
        match f {
            "quote" if !quote => quote = true,
            other => {
                return Err(syntax(
                    template,
                    line,
                    format!("function `{other}` is outside the supported subset (only `quote`)"),
                ));
            }
        }
    }
    Ok(Pipe { path, quote })
}

/// What closed a block: `end`, `else`, or the end of the template.
enum Close {
    End,
    Else(usize),
    Eof,
}

fn parse_nodes(
    template: &str,
    tokens: &mut std::iter::Peekable<std::vec::IntoIter<Token>>,
) -> Result<(Vec<Node>, Close), RenderError> {
    let mut nodes = Vec::new();
    while let Some(tok) = tokens.next() {
        let (body, line) = match tok {
            Token::Text(t) => {
                nodes.push(Node::Text(t));
                continue;
            }
            Token::Action { body, line } => (body, line),
        };
        if body.starts_with("/*") {
            if !body.ends_with("*/") {
                return Err(syntax(template, line, "comment must end with `*/`"));
            }
            continue;
        }
        let (word, rest) = body
            .split_once(char::is_whitespace)
            .map(|(w, r)| (w, r.trim()))
            .unwrap_or((body.as_str(), ""));
        match word {
            "end" if rest.is_empty() => return Ok((nodes, Close::End)),
            "else" if rest.is_empty() => return Ok((nodes, Close::Else(line))),
            "if" => {
                let cond = parse_pipe(template, line, rest)?;
                let (then, close) = parse_nodes(template, tokens)?;
                let otherwise = match close {
                    Close::End => Vec::new(),
                    Close::Else(_) => match parse_nodes(template, tokens)? {
                        (nodes, Close::End) => nodes,
                        (_, Close::Else(l)) => {
                            return Err(syntax(template, l, "a second `else` in one `if`"));
                        }
                        (_, Close::Eof) => {
                            return Err(syntax(template, line, "`if` without `end`"));
                        }
                    },
                    Close::Eof => return Err(syntax(template, line, "`if` without `end`")),
                };
                nodes.push(Node::If {
                    cond,
                    then,
                    otherwise,
                });
            }
            "range" => {
                if rest.contains(":=") {
                    return Err(syntax(
                        template,
                        line,
                        "range variables are outside the supported subset",
                    ));
                }
                let over = parse_pipe(template, line, rest)?;
                let body = match parse_nodes(template, tokens)? {
                    (nodes, Close::End) => nodes,
                    (_, Close::Else(l)) => {
                        return Err(syntax(
                            template,
                            l,
                            "`range … else` is outside the supported subset",
                        ));
                    }
                    (_, Close::Eof) => return Err(syntax(template, line, "`range` without `end`")),
                };
                nodes.push(Node::Range { over, body, line });
            }
            "end" | "else" | "with" | "define" | "template" | "include" | "block" => {
                return Err(syntax(
                    template,
                    line,
                    format!("`{body}` is outside the supported subset"),
                ));
            }
            _ => nodes.push(Node::Out {
                pipe: parse_pipe(template, line, &body)?,
                line,
            }),
        }
    }
    Ok((nodes, Close::Eof))
}

fn lookup<'v>(path: &Path_, dot: &'v Value, root: &'v Value) -> Option<&'v Value> {
    let mut v = match path.root {
        Root::Dot => dot,
        Root::Dollar => root,
    };
    for f in &path.fields {
        v = v.as_object()?.get(f)?;
    }
    Some(v)
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
    }
}

fn show(path: &Path_) -> String {
    let root = match path.root {
        Root::Dot => "",
        Root::Dollar => "$",
    };
    if path.fields.is_empty() {
        format!("{root}.")
    } else {
        format!("{root}.{}", path.fields.join("."))
    }
}

fn eval(
    template: &str,
    nodes: &[Node],
    dot: &Value,
    root: &Value,
    out: &mut String,
) -> Result<(), RenderError> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Out { pipe, line } => {
                let value_err = |message: String| RenderError::Value {
                    template: template.to_string(),
                    line: *line,
                    message,
                };
                let text = match lookup(&pipe.path, dot, root) {
                    None | Some(Value::Null) => {
                        return Err(value_err(format!(
                            "{} is missing or null (set it in values.yaml)",
                            show(&pipe.path)
                        )));
                    }
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Bool(b)) => b.to_string(),
                    // Helm reads YAML numbers as float64 and prints them with Go's
                    // %v, which switches to exponent form from one million on
                    // (1e+06); refuse those rather than print something else.
                    Some(Value::Number(n)) if n.as_f64().is_some_and(|f| f.abs() >= 1e6) => {
                        return Err(value_err(format!(
                            "{} is {n}, which Helm would print as a float in exponent form; \
                             make it a quoted string in values.yaml",
                            show(&pipe.path)
                        )));
                    }
                    Some(Value::Number(n)) => n.to_string(),
                    Some(_) => {
                        return Err(value_err(format!(
                            "{} is a list or map; print its fields one by one",
                            show(&pipe.path)
                        )));
                    }
                };
                if pipe.quote {
                    out.push_str(&Value::String(text).to_string());
                } else {
                    out.push_str(&text);
                }
            }
            Node::If {
                cond,
                then,
                otherwise,
            } => {
                let branch = if truthy(lookup(&cond.path, dot, root)) {
                    then
                } else {
                    otherwise
                };
                eval(template, branch, dot, root, out)?;
            }
            Node::Range { over, body, line } => match lookup(&over.path, dot, root) {
                None | Some(Value::Null) => {}
                Some(Value::Array(items)) => {
                    for item in items {
                        eval(template, body, item, root, out)?;
                    }
                }
                Some(_) => {
                    return Err(RenderError::Value {
                        template: template.to_string(),
                        line: *line,
                        message: format!(
                            "range over {}: only lists are supported",
                            show(&over.path)
                        ),
                    });
                }
            },
        }
    }
    Ok(())
}

/// Renders one template `text` (named `template` in errors) with root context `root`.
pub fn render_template(template: &str, text: &str, root: &Value) -> Result<String, RenderError> {
    let mut tokens = tokenize(template, text)?.into_iter().peekable();
    let (nodes, close) = parse_nodes(template, &mut tokens)?;
    match close {
        Close::Eof => {}
        Close::End => return Err(syntax(template, 0, "`end` without a block")),
        Close::Else(l) => return Err(syntax(template, l, "`else` without `if`")),
    }
    let mut out = String::new();
    eval(template, &nodes, root, root, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root() -> Value {
        json!({
            "Values": {
                "image": {"repository": "ghcr.io/x/agent", "tag": "0.1.0"},
                "gated": ["team-a", "team-b"],
                "empty": [],
                "on": true,
                "off": false,
                "port": 9990,
                "text": "say \"hi\"",
                "nothing": null,
            },
            "Release": {"Name": "rel", "Namespace": "sys"},
        })
    }

    fn render(text: &str) -> Result<String, RenderError> {
        render_template("t.yaml", text, &root())
    }

    #[test]
    fn values_release_and_quote_render() {
        let got = render(
            "image: {{ .Values.image.repository }}:{{ .Values.image.tag }}\n\
             ns: {{ .Release.Namespace }}\nport: {{ .Values.port }}\n\
             q: {{ .Values.text | quote }}\nn: {{ .Values.port | quote }}\n",
        )
        .unwrap();
        assert_eq!(
            got,
            "image: ghcr.io/x/agent:0.1.0\nns: sys\nport: 9990\nq: \"say \\\"hi\\\"\"\nn: \"9990\"\n"
        );
    }

    #[test]
    fn range_binds_dot_and_dollar_reaches_the_root() {
        let got = render(
            "list:\n{{- range .Values.gated }}\n- {{ . }} in {{ $.Release.Name }}\n{{- end }}\nafter: x\n",
        )
        .unwrap();
        assert_eq!(got, "list:\n- team-a in rel\n- team-b in rel\nafter: x\n");
        assert_eq!(
            render("[{{ range .Values.empty }}x{{ end }}]").unwrap(),
            "[]"
        );
        assert_eq!(
            render("[{{ range .Values.absent }}x{{ end }}]").unwrap(),
            "[]"
        );
        assert_eq!(
            render("{{ range .Values.gated }}{{ . }},{{ end }}").unwrap(),
            "team-a,team-b,"
        );
    }

    #[test]
    fn if_else_follows_go_truthiness() {
        for (path, want) in [
            (".Values.on", "yes"),
            (".Values.off", "no"),
            (".Values.gated", "yes"),
            (".Values.empty", "no"),
            (".Values.absent", "no"),
            (".Values.nothing", "no"),
            (".Values.port", "yes"),
        ] {
            let got = render(&format!(
                "{{{{ if {path} }}}}yes{{{{ else }}}}no{{{{ end }}}}"
            ))
            .unwrap();
            assert_eq!(got, want, "{path}");
        }
    }

    #[test]
    fn trims_and_comments_behave_like_go_templates() {
        assert_eq!(
            render("a  \n  {{- .Values.port -}}  \n b").unwrap(),
            "a9990b"
        );
        assert_eq!(render("a\n{{/* note */}}\nb").unwrap(), "a\n\nb");
        assert_eq!(render("a\n{{- /* note */}}\nb").unwrap(), "a\nb");
    }

    #[test]
    fn missing_values_and_unsupported_syntax_are_errors_with_a_line() {
        let err = render("a: 1\nb: {{ .Values.typo }}\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.yaml:2") && err.contains(".Values.typo"),
            "{err}"
        );
        let err = render("{{ .Values.nothing }}").unwrap_err().to_string();
        assert!(err.contains("missing or null"), "{err}");
        let err = render("{{ .Values.image }}").unwrap_err().to_string();
        assert!(err.contains("list or map"), "{err}");
        let big = json!({"Values": {"n": 1000000}});
        let err = render_template("t.yaml", "{{ .Values.n }}", &big).unwrap_err();
        assert!(err.to_string().contains("exponent form"), "{err}");
        for bad in [
            "{{ toYaml .Values.image }}",
            "{{ .Values.port | default 3 }}",
            "{{ include \"x\" . }}",
            "{{ with .Values.image }}{{ end }}",
            "{{ range $i, $v := .Values.gated }}{{ end }}",
            "{{ if .Values.on }}x",
            "x{{ end }}",
            "{{ .Values.port",
            "{{-.Values.port }}",
        ] {
            let err = render(bad).expect_err(bad);
            assert!(matches!(err, RenderError::Syntax { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn overrides_merge_maps_and_replace_lists() {
        let mut base = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge(&mut base, &json!({"a": {"c": [3]}, "e": true}));
        assert_eq!(base, json!({"a": {"b": 1, "c": [3]}, "d": "x", "e": true}));
        merge(&mut base, &json!({"a": {"b": null}}));
        assert_eq!(base, json!({"a": {"c": [3]}, "d": "x", "e": true}));
        let before = base.clone();
        merge(&mut base, &Value::Null);
        assert_eq!(base, before);
    }
}
