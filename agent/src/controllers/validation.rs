//! Admission-like checks on an ApplicationInstance spec that the CRD schema
//! cannot express. The controller runs them on every reconcile and the intent
//! path runs the same functions, so a bad spec is refused before it is applied.

use std::collections::BTreeMap;

use vworkspace_crds::{ApplicationInstanceSpec, ValuesSource};

/// Why a spec is refused. Messages name the field to fix and never carry values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// `spec.release.namespace` differs from the object's namespace.
    #[error("spec.release.namespace {release:?} must equal the object's namespace {object:?}")]
    ReleaseNamespaceMismatch {
        /// The namespace named in the spec.
        release: String,
        /// The object's own namespace.
        object: String,
    },
    /// `spec.chart.version` is not an exact semantic version.
    #[error(
        "spec.chart.version {0:?} must be an exact semantic version such as 1.2.3 (no ranges, no latest)"
    )]
    VersionNotExact(String),
    /// A field managed mode needs is missing.
    #[error("spec.{0} is required in managed mode")]
    MissingInManagedMode(&'static str),
    /// A field placeholder mode forbids is set.
    #[error("spec.{0} must be omitted in placeholder mode")]
    ForbiddenInPlaceholderMode(&'static str),
    /// `spec.appRef.catalogId` is blank.
    #[error("spec.appRef.catalogId must not be blank")]
    BlankCatalogId,
    /// `spec.values.source` names a field that is not set, or another is set too.
    #[error("spec.values.source {0} requires exactly spec.values.{0} to be set")]
    ValuesSourceMismatch(&'static str),
    /// The chart URL does not fit the source type.
    #[error("spec.chart.url must start with {0} for this sourceType")]
    BadChartUrl(&'static str),
    /// A key in inline values looks like a secret; only its dotted path is named.
    #[error(
        "spec.values.inline.{0} looks like a secret; put it in a Secret and use values.secretRef"
    )]
    InlineSecret(String),
}

/// Checks an ApplicationInstance spec the way the controller does, for the
/// object namespace `namespace`. Pure: usable at intent time.
pub fn validate_application_spec(
    namespace: &str,
    spec: &ApplicationInstanceSpec,
) -> Result<(), SpecError> {
    if spec.app_ref.catalog_id.trim().is_empty() {
        return Err(SpecError::BlankCatalogId);
    }
    if let Some(release) = &spec.release
        && release.namespace != namespace
    {
        return Err(SpecError::ReleaseNamespaceMismatch {
            release: release.namespace.clone(),
            object: namespace.to_string(),
        });
    }
    if spec.is_placeholder() {
        if spec.chart.is_some() {
            return Err(SpecError::ForbiddenInPlaceholderMode("chart"));
        }
        if spec.values.is_some() {
            return Err(SpecError::ForbiddenInPlaceholderMode("values"));
        }
        return Ok(());
    }
    let chart = spec
        .chart
        .as_ref()
        .ok_or(SpecError::MissingInManagedMode("chart"))?;
    if spec.release.is_none() {
        return Err(SpecError::MissingInManagedMode("release"));
    }
    let values = spec
        .values
        .as_ref()
        .ok_or(SpecError::MissingInManagedMode("values"))?;
    if !is_exact_semver(&chart.version) {
        return Err(SpecError::VersionNotExact(chart.version.clone()));
    }
    match chart.source_type {
        vworkspace_crds::ChartSourceType::Oci if !chart.url.starts_with("oci://") => {
            return Err(SpecError::BadChartUrl("oci://"));
        }
        vworkspace_crds::ChartSourceType::Helm
            if !(chart.url.starts_with("https://") || chart.url.starts_with("http://")) =>
        {
            return Err(SpecError::BadChartUrl("https://"));
        }
        _ => {}
    }
    let (inline, secret, config_map) = (
        values.inline.is_some(),
        values.secret_ref.is_some(),
        values.config_map_ref.is_some(),
    );
    match values.source {
        ValuesSource::Inline if secret || config_map => {
            return Err(SpecError::ValuesSourceMismatch("inline"));
        }
        ValuesSource::SecretRef if !secret || inline || config_map => {
            return Err(SpecError::ValuesSourceMismatch("secretRef"));
        }
        ValuesSource::ConfigMapRef if !config_map || inline || secret => {
            return Err(SpecError::ValuesSourceMismatch("configMapRef"));
        }
        _ => {}
    }
    if let Some(inline) = &values.inline {
        scan_inline_secrets(inline)?;
    }
    Ok(())
}

/// Exact semver 2.0.0 (with an optional leading `v`, as Helm accepts): no
/// ranges, no wildcards, no `latest`.
pub fn is_exact_semver(version: &str) -> bool {
    let v = version.strip_prefix('v').unwrap_or(version);
    let (rest, build) = match v.split_once('+') {
        Some((r, b)) => (r, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (rest, None),
    };
    let numeric = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'))
    };
    let ident =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) {
        return false;
    }
    if let Some(pre) = pre {
        let ok = pre
            .split('.')
            .all(|id| ident(id) && (!id.bytes().all(|b| b.is_ascii_digit()) || numeric(id)));
        if !ok {
            return false;
        }
    }
    build.is_none_or(|b| b.split('.').all(ident))
}

/// Placeholder values upstream allows in place of a secret.
const SECRET_PLACEHOLDERS: [&str; 2] = ["<set via externalsecret>", "<set via external-secret>"];

/// Walks inline values and refuses leaves that look like secrets (upstream's
/// webhook rules): keys ending in `password`/`secret`, keys `accesskey`,
/// `secretkey`, `apikey`, `token`, and PEM private keys. Only the path is reported.
pub fn scan_inline_secrets(values: &BTreeMap<String, serde_json::Value>) -> Result<(), SpecError> {
    fn walk(path: &str, key: &str, v: &serde_json::Value) -> Result<(), SpecError> {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    walk(&join(path, k), k, v)?;
                }
            }
            serde_json::Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&format!("{path}[{i}]"), key, v)?;
                }
            }
            serde_json::Value::String(s) => {
                if s.is_empty()
                    || SECRET_PLACEHOLDERS
                        .iter()
                        .any(|p| s.eq_ignore_ascii_case(p))
                {
                    return Ok(());
                }
                let k = key.to_ascii_lowercase();
                let secret_key = k.ends_with("password")
                    || k.ends_with("secret")
                    || matches!(k.as_str(), "accesskey" | "secretkey" | "apikey" | "token");
                let pem =
                    s.trim_start().starts_with("-----BEGIN") && s.contains("PRIVATE KEY-----");
                if secret_key || pem {
                    return Err(SpecError::InlineSecret(path.to_string()));
                }
            }
            _ => {}
        }
        Ok(())
    }
    fn join(path: &str, k: &str) -> String {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    }
    for (k, v) in values {
        walk(k, k, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vworkspace_crds::{
        AppRef, ChartSource, ChartSourceType, KeyRef, Mode, ReleaseRef, ValuesSpec,
    };

    fn managed(ns: &str) -> ApplicationInstanceSpec {
        ApplicationInstanceSpec {
            app_ref: AppRef {
                catalog_id: "nextcloud".into(),
            },
            mode: Mode::Managed,
            chart: Some(ChartSource {
                source_type: ChartSourceType::Helm,
                url: "https://charts.example.com".into(),
                name: "nextcloud".into(),
                version: "6.6.0".into(),
            }),
            release: Some(ReleaseRef {
                name: "nc".into(),
                namespace: ns.into(),
            }),
            values: Some(ValuesSpec {
                source: ValuesSource::Inline,
                inline: Some(BTreeMap::new()),
                secret_ref: None,
                config_map_ref: None,
            }),
            integrations: None,
        }
    }

    #[test]
    fn semver_accepts_exact_versions_only() {
        let table = [
            ("1.2.3", true),
            ("v1.2.3", true),
            ("0.0.0", true),
            ("1.2.3-rc.1", true),
            ("1.2.3-alpha-1.beta", true),
            ("1.2.3+build.5", true),
            ("1.2.3-rc.1+build", true),
            ("1.2", false),
            ("1.2.x", false),
            ("^1.2.3", false),
            (">=1.2.3", false),
            ("~1.2.3", false),
            ("latest", false),
            ("*", false),
            ("01.2.3", false),
            ("1.2.3-01", false),
            ("1.2.3-", false),
            ("1.2.3+", false),
            ("1.2.3 ", false),
            ("", false),
        ];
        for (v, ok) in table {
            assert_eq!(is_exact_semver(v), ok, "{v}");
        }
    }

    #[test]
    fn spec_checks_cover_every_error() {
        let ns = "team-a";
        let mut wrong_ns = managed(ns);
        wrong_ns.release.as_mut().unwrap().namespace = "other".into();
        let mut range = managed(ns);
        range.chart.as_mut().unwrap().version = ">=1.0.0".into();
        let mut no_chart = managed(ns);
        no_chart.chart = None;
        let mut no_release = managed(ns);
        no_release.release = None;
        let mut no_values = managed(ns);
        no_values.values = None;
        let mut placeholder_chart = managed(ns);
        placeholder_chart.mode = Mode::Placeholder;
        let mut placeholder_values = managed(ns);
        placeholder_values.mode = Mode::Placeholder;
        placeholder_values.chart = None;
        let mut placeholder_ok = placeholder_values.clone();
        placeholder_ok.values = None;
        let mut blank = managed(ns);
        blank.app_ref.catalog_id = "  ".into();
        let mut mismatch = managed(ns);
        mismatch.values.as_mut().unwrap().source = ValuesSource::SecretRef;
        let mut two = managed(ns);
        two.values.as_mut().unwrap().config_map_ref = Some(KeyRef {
            name: "c".into(),
            key: "k".into(),
        });
        let mut oci_url = managed(ns);
        oci_url.chart.as_mut().unwrap().source_type = ChartSourceType::Oci;
        let mut secret_inline = managed(ns);
        secret_inline.values.as_mut().unwrap().inline = Some(
            serde_json::from_value(serde_json::json!({"db": {"adminPassword": "hunter2"}}))
                .unwrap(),
        );

        let table: Vec<(&str, ApplicationInstanceSpec, Result<(), SpecError>)> = vec![
            ("valid managed", managed(ns), Ok(())),
            ("valid placeholder", placeholder_ok, Ok(())),
            (
                "release namespace",
                wrong_ns,
                Err(SpecError::ReleaseNamespaceMismatch {
                    release: "other".into(),
                    object: ns.into(),
                }),
            ),
            (
                "range",
                range,
                Err(SpecError::VersionNotExact(">=1.0.0".into())),
            ),
            (
                "no chart",
                no_chart,
                Err(SpecError::MissingInManagedMode("chart")),
            ),
            (
                "no release",
                no_release,
                Err(SpecError::MissingInManagedMode("release")),
            ),
            (
                "no values",
                no_values,
                Err(SpecError::MissingInManagedMode("values")),
            ),
            (
                "placeholder chart",
                placeholder_chart,
                Err(SpecError::ForbiddenInPlaceholderMode("chart")),
            ),
            (
                "placeholder values",
                placeholder_values,
                Err(SpecError::ForbiddenInPlaceholderMode("values")),
            ),
            ("blank catalog", blank, Err(SpecError::BlankCatalogId)),
            (
                "source mismatch",
                mismatch,
                Err(SpecError::ValuesSourceMismatch("secretRef")),
            ),
            (
                "two sources",
                two,
                Err(SpecError::ValuesSourceMismatch("inline")),
            ),
            ("oci url", oci_url, Err(SpecError::BadChartUrl("oci://"))),
            (
                "inline secret",
                secret_inline,
                Err(SpecError::InlineSecret("db.adminPassword".into())),
            ),
        ];
        for (name, spec, want) in table {
            assert_eq!(validate_application_spec(ns, &spec), want, "{name}");
        }
    }

    #[test]
    fn inline_secret_error_never_contains_the_value() {
        let v: BTreeMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "tls": [{"key": "-----BEGIN RSA PRIVATE KEY-----\nMIIsecretbytes"}],
            "apiKey": "sk-verysecret",
        }))
        .unwrap();
        let err = scan_inline_secrets(&v).unwrap_err().to_string();
        assert!(
            !err.contains("secretbytes") && !err.contains("sk-verysecret"),
            "{err}"
        );
        let ok: BTreeMap<String, serde_json::Value> = serde_json::from_value(serde_json::json!({
            "password": "<set via ExternalSecret>", "replicas": 2, "token": ""
        }))
        .unwrap();
        assert_eq!(scan_inline_secrets(&ok), Ok(()));
    }
}
