//! kubectl-style tables of admin API answers, for `hub-sim get` and the demo.

use clap::ValueEnum;
use serde_json::Value;

/// What `hub-sim get` shows.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum GetWhat {
    /// Registered clusters, with connection state and agent version.
    Clusters,
    /// ApplicationInstance objects with their version, state and conditions.
    Apps,
    /// Operation objects with their version, state, phase and conditions.
    Operations,
    /// Recent intents and their outcomes.
    Intents,
    /// Intent-signing keys, marking the active one.
    Keys,
    /// The hub's audit log.
    Audit,
    /// Events the agents sent (kept apart from the hub's audit log).
    Events,
}

fn age(ts: Option<i64>) -> String {
    match ts {
        None => "-".into(),
        Some(t) => {
            let secs = (crate::store::now() - t).max(0);
            match secs {
                s if s < 120 => format!("{s}s"),
                s if s < 7200 => format!("{}m", s / 60),
                s if s < 172_800 => format!("{}h", s / 3600),
                s => format!("{}d", s / 86400),
            }
        }
    }
}

fn conditions_summary(conds: &Value) -> String {
    let Some(list) = conds.as_array() else {
        return "-".into();
    };
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|c| {
            let t = c["type"].as_str().unwrap_or("?");
            let s = c["status"].as_str().unwrap_or("?");
            match c["reason"].as_str() {
                Some(r) if !r.is_empty() => format!("{t}={s}({r})"),
                _ => format!("{t}={s}"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                out.push_str(c);
            } else {
                out.push_str(&format!("{:<w$}   ", c, w = widths[i]));
            }
        }
        out.push('\n');
    };
    line(headers.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

/// Renders an admin API answer as a kubectl-style table.
pub fn render_table(what: GetWhat, value: &Value) -> String {
    let items: Vec<Value> = value.as_array().cloned().unwrap_or_default();
    match what {
        GetWhat::Clusters => table(
            &[
                "NAME",
                "ORG",
                "CONNECTED",
                "ENROLLED",
                "REVOKED",
                "PENDING",
                "LAST-SEEN",
                "AGENT",
                "FAULTS",
            ],
            items
                .iter()
                .map(|c| {
                    let faults = c["faults"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(_, v)| !v.is_null() && **v != Value::Bool(false))
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "-".into());
                    vec![
                        s(&c["name"]),
                        s(&c["org"]),
                        if c["connected"] == Value::Bool(true) {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        age(c["enrolled_at"].as_i64()),
                        if c["revoked_at"].is_null() {
                            "no".into()
                        } else {
                            format!("yes ({} ago)", age(c["revoked_at"].as_i64()))
                        },
                        s(&c["pending_intents"]),
                        age(c["last_seen"].as_i64()),
                        s(&c["agent_version"]),
                        faults,
                    ]
                })
                .collect(),
        ),
        GetWhat::Apps | GetWhat::Operations => {
            let ops = matches!(what, GetWhat::Operations);
            let mut headers = vec!["CLUSTER", "NAMESPACE", "NAME", "VERSION", "STATE", "ACK"];
            if ops {
                headers.push("PHASE");
            }
            headers.push("CONDITIONS");
            table(
                &headers,
                items
                    .iter()
                    .map(|o| {
                        let mut row = vec![
                            s(&o["cluster"]),
                            s(&o["namespace"]),
                            s(&o["name"]),
                            s(&o["version"]),
                            if o["deleted"] == Value::Bool(true) {
                                "deleted"
                            } else {
                                "declared"
                            }
                            .into(),
                            s(&o["last_outcome"]),
                        ];
                        if ops {
                            row.push(s(&o["status"]["phase"]));
                        }
                        row.push(conditions_summary(&o["status"]["conditions"]));
                        row
                    })
                    .collect(),
            )
        }
        GetWhat::Intents => table(
            &[
                "SEQ", "CLUSTER", "KIND", "OBJECT", "VERSION", "ACTION", "OUTCOME", "AGE",
            ],
            items
                .iter()
                .map(|i| {
                    let outcome = match (i["outcome"].as_str(), i["outcome_message"].as_str()) {
                        (Some(o), Some(m)) if o == "rejected" => format!("{o}: {m}"),
                        (Some(o), _) => o.into(),
                        (None, _) => "pending".into(),
                    };
                    vec![
                        s(&i["seq"]),
                        s(&i["cluster"]),
                        s(&i["kind"]),
                        format!("{}/{}", s(&i["namespace"]), s(&i["name"])),
                        s(&i["version"]),
                        s(&i["action"]),
                        outcome,
                        age(i["created_at"].as_i64()),
                    ]
                })
                .collect(),
        ),
        GetWhat::Keys => {
            let active = value["active"].as_str().unwrap_or("");
            let rows = value["intent"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|k| {
                    let kid = s(&k["kid"]);
                    let state = if kid == active {
                        "active (signing)"
                    } else if k["retired_at"].is_null() {
                        "valid"
                    } else {
                        "retired"
                    };
                    vec![kid, state.into(), age(k["created_at"].as_i64())]
                })
                .collect();
            table(&["KID", "STATE", "AGE"], rows)
        }
        GetWhat::Events => table(
            &[
                "ID", "AGE", "CLUSTER", "SEVERITY", "REASON", "OBJECT", "MESSAGE",
            ],
            items
                .iter()
                .map(|e| {
                    vec![
                        s(&e["id"]),
                        age(e["received_at"].as_i64()),
                        s(&e["cluster"]),
                        s(&e["severity"]),
                        s(&e["reason"]),
                        s(&e["object"]),
                        s(&e["message"]),
                    ]
                })
                .collect(),
        ),
        GetWhat::Audit => table(
            &["ID", "AGE", "EVENT", "CLUSTER", "OUTCOME", "DETAIL"],
            items
                .iter()
                .map(|a| {
                    vec![
                        s(&a["id"]),
                        age(a["ts"].as_i64()),
                        s(&a["event"]),
                        s(&a["cluster"]),
                        s(&a["outcome"]),
                        s(&a["detail"]),
                    ]
                })
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_show_conditions() {
        let v = json!([{
            "cluster": "c", "kind": "ApplicationInstance", "namespace": "n", "name": "a",
            "version": 2, "deleted": false, "last_outcome": "applied",
            "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "HelmReleaseReady"}]}
        }]);
        let t = render_table(GetWhat::Apps, &v);
        assert!(t.contains("Ready=True(HelmReleaseReady)"), "{t}");
        assert!(t.starts_with("CLUSTER"));
    }
}
