//! What a rollback changes in the pod template, in the terms an on-call engineer checks first:
//! images, environment, resources, then template labels/annotations and "anything else".
//! Pure functions over the templates' JSON, so they are unit-tested here.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{normalize, POD_TEMPLATE_HASH};

/// One line per difference between the `from` template and the `to` template.
pub fn template_diff(from: &Value, to: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        let what = if list == "initContainers" {
            "init container"
        } else {
            "container"
        };
        let a = by_name(&from["spec"][list]);
        let b = by_name(&to["spec"][list]);
        for (name, ca) in &a {
            let Some(cb) = b.get(name) else {
                out.push(format!("{what} {name}: removed"));
                continue;
            };
            let (ia, ib) = (str_or_none(&ca["image"]), str_or_none(&cb["image"]));
            if ia != ib {
                out.push(format!("{what} {name}: image {ia} → {ib}"));
            }
            diff_env(what, name, &ca["env"], &cb["env"], &mut out);
            diff_resources(what, name, &ca["resources"], &cb["resources"], &mut out);
            if normalize(&strip_container(ca)) != normalize(&strip_container(cb)) {
                out.push(format!(
                    "{what} {name}: other settings differ (command, ports, probes, mounts, …)"
                ));
            }
        }
        for (name, cb) in &b {
            if !a.contains_key(name) {
                out.push(format!(
                    "{what} {name}: added (image {})",
                    str_or_none(&cb["image"])
                ));
            }
        }
    }
    for field in ["labels", "annotations"] {
        let a = string_map(&from["metadata"][field]);
        let b = string_map(&to["metadata"][field]);
        for (k, va) in &a {
            if k == POD_TEMPLATE_HASH {
                continue;
            }
            match b.get(k) {
                None => out.push(format!("template {} {k}: {va:?} removed", singular(field))),
                Some(vb) if vb != va => {
                    out.push(format!("template {} {k}: {va:?} → {vb:?}", singular(field)))
                }
                _ => {}
            }
        }
        for (k, vb) in &b {
            if k != POD_TEMPLATE_HASH && !a.contains_key(k) {
                out.push(format!("template {} {k}: {vb:?} added", singular(field)));
            }
        }
    }
    let mut sa = from["spec"].clone();
    let mut sb = to["spec"].clone();
    for s in [&mut sa, &mut sb] {
        if let Some(m) = s.as_object_mut() {
            m.remove("containers");
            m.remove("initContainers");
        }
    }
    if normalize(&sa) != normalize(&sb) {
        out.push("pod spec: other fields differ (volumes, scheduling, security, …)".into());
    }
    out
}

fn singular(field: &str) -> &str {
    field.trim_end_matches('s')
}

fn str_or_none(v: &Value) -> String {
    v.as_str().unwrap_or("(none)").to_string()
}

fn by_name(list: &Value) -> BTreeMap<String, Value> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c.clone(),
            )
        })
        .collect()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect()
}

/// A container without the fields that get their own lines.
fn strip_container(c: &Value) -> Value {
    let mut c = c.clone();
    if let Some(m) = c.as_object_mut() {
        for k in ["image", "env", "resources"] {
            m.remove(k);
        }
    }
    c
}

/// `value` or a short rendering of `valueFrom` (never a Secret's content: only its reference).
fn env_value(e: &Value) -> String {
    if let Some(v) = e.get("value").and_then(Value::as_str) {
        return format!("{v:?}");
    }
    match e.get("valueFrom") {
        Some(from) => format!("from {}", serde_json::to_string(from).unwrap_or_default()),
        None => "\"\"".into(),
    }
}

fn diff_env(what: &str, name: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let a: BTreeMap<String, String> = by_name(a)
        .iter()
        .map(|(k, v)| (k.clone(), env_value(v)))
        .collect();
    let b: BTreeMap<String, String> = by_name(b)
        .iter()
        .map(|(k, v)| (k.clone(), env_value(v)))
        .collect();
    for (k, va) in &a {
        match b.get(k) {
            None => out.push(format!("{what} {name}: env {k} removed (was {va})")),
            Some(vb) if vb != va => out.push(format!("{what} {name}: env {k}: {va} → {vb}")),
            _ => {}
        }
    }
    for (k, vb) in &b {
        if !a.contains_key(k) {
            out.push(format!("{what} {name}: env {k} added ({vb})"));
        }
    }
}

fn diff_resources(what: &str, name: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    let flat = |v: &Value| -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        for kind in ["requests", "limits"] {
            for (k, q) in v[kind].as_object().into_iter().flatten() {
                m.insert(
                    format!("{kind}.{k}"),
                    q.as_str().unwrap_or_default().to_string(),
                );
            }
        }
        m
    };
    let (a, b) = (flat(a), flat(b));
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for k in keys {
        let va = a.get(k).map(String::as_str).unwrap_or("(none)");
        let vb = b.get(k).map(String::as_str).unwrap_or("(none)");
        if va != vb {
            out.push(format!("{what} {name}: resources {k}: {va} → {vb}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_image_env_resources_and_annotation_changes() {
        let from = json!({
            "metadata": {"labels": {"app": "w", "pod-template-hash": "x"}, "annotations": {"team": "a"}},
            "spec": {"containers": [{"name": "w", "image": "nginx:1.27",
                "env": [{"name": "MODE", "value": "blue"}, {"name": "OLD", "value": "1"}],
                "resources": {"limits": {"cpu": "200m"}}}]}
        });
        let to = json!({
            "metadata": {"labels": {"app": "w"}, "annotations": {"team": "b"}},
            "spec": {"containers": [{"name": "w", "image": "nginx:1.25",
                "env": [{"name": "MODE", "value": "green"}, {"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}
        });
        let d = template_diff(&from, &to);
        assert_eq!(
            d,
            [
                "container w: image nginx:1.27 → nginx:1.25",
                "container w: env MODE: \"blue\" → \"green\"",
                "container w: env OLD removed (was \"1\")",
                "container w: env KEY added (from {\"secretKeyRef\":{\"key\":\"k\",\"name\":\"s\"}})",
                "container w: resources limits.cpu: 200m → (none)",
                "template annotation team: \"a\" → \"b\"",
            ]
        );
    }

    #[test]
    fn identical_templates_have_no_diff() {
        let t = json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "w", "image": "x"}]}});
        assert!(template_diff(&t, &t).is_empty());
    }

    #[test]
    fn added_and_removed_containers_and_other_fields() {
        let from = json!({"spec": {"containers": [{"name": "a", "image": "x"}], "nodeSelector": {"k": "v"}}});
        let to = json!({"spec": {"containers": [{"name": "b", "image": "y", "args": ["-v"]}]}});
        let d = template_diff(&from, &to);
        assert!(d.contains(&"container a: removed".to_string()), "{d:?}");
        assert!(
            d.contains(&"container b: added (image y)".to_string()),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.starts_with("pod spec: other fields differ")),
            "{d:?}"
        );
    }
}
