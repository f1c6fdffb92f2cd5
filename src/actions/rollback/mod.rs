//! Rollback: go back to a workload's earlier pod template exactly as `kubectl rollout undo` would
//! (same revision selection, same resulting template, same refusals), list revisions, and wait for a
//! rollout to become healthy. This module holds what history, undo and wait share: the target
//! (`KIND/NAME`), the workload as the server has it, and its revisions (ReplicaSets for a
//! Deployment, ControllerRevisions for a StatefulSet or DaemonSet).

pub mod diff;
pub mod history;
pub mod revert;
pub mod wait;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use kube::api::{ApiResource, DynamicObject, ListParams};
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::k8s::Cluster;

/// Label the Deployment controller adds to each ReplicaSet's template; never part of a Deployment's.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Annotation holding a ReplicaSet's (and the Deployment's) revision number.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl Kind {
    /// The plural resource name (for API paths and permission messages).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Deployment => "deployments",
            Kind::StatefulSet => "statefulsets",
            Kind::DaemonSet => "daemonsets",
        }
    }

    /// The API kind (`Deployment`).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
        }
    }

    /// The lower-case name used in `KIND/NAME` (as kubectl prints it).
    pub fn lower(self) -> &'static str {
        match self {
            Kind::Deployment => "deployment",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
        }
    }

    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Deployment => ApiResource::erase::<Deployment>(&()),
            Kind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            Kind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
        }
    }
}

/// `deployment/web`, `deploy/web`, `sts/db`, `daemonset.apps/agent`, …
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.lower(), self.name)
    }
}

impl FromStr for Target {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let (kind, name) = s.split_once('/').ok_or_else(|| {
            Error::usage(format!(
                "{s:?}: expected KIND/NAME, e.g. deployment/web, statefulset/db or daemonset/agent"
            ))
        })?;
        let kind = match kind.to_ascii_lowercase().trim_end_matches(".apps") {
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => Kind::DaemonSet,
            other => {
                return Err(Error::usage(format!(
                    "{other:?} cannot be rolled back: only deployment, statefulset and daemonset have revisions"
                )))
            }
        };
        if name.is_empty() || name.contains('/') {
            return Err(Error::usage(format!("{s:?}: expected KIND/NAME")));
        }
        Ok(Target {
            kind,
            name: name.to_string(),
        })
    }
}

/// One revision of a workload, as `kirt rollback history` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    pub revision: i64,
    /// The ReplicaSet or ControllerRevision that holds it.
    pub source: String,
    pub current: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_cause: Option<String>,
    pub images: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The pod template this revision restores (hash label / `$patch` directive removed).
    #[serde(skip)]
    pub template: Value,
    /// The ReplicaSet's annotations (Deployments copy some of them back).
    #[serde(skip)]
    pub annotations: BTreeMap<String, String>,
    /// The ControllerRevision's data: the strategic merge patch kubectl applies (StatefulSet/DaemonSet).
    #[serde(skip)]
    pub data: Option<Value>,
}

/// A workload as the server has it, with its revisions (ascending).
#[derive(Debug, Clone)]
pub struct Workload {
    pub target: Target,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    /// `metadata.generation`: moves on with every change of the spec.
    pub generation: i64,
    /// `.spec`, raw from the server.
    pub spec: Value,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub revisions: Vec<Revision>,
}

impl Workload {
    /// `.spec.template`, raw from the server.
    pub fn template(&self) -> &Value {
        &self.spec["template"]
    }

    /// Whether the Deployment's rollout is paused.
    pub fn paused(&self) -> bool {
        self.spec["paused"].as_bool().unwrap_or(false)
    }

    /// Whether `now` is this workload with only its status (and resourceVersion) moved on: what a
    /// rollback confirmed against it still holds.
    pub fn same_spec(&self, now: &Workload) -> bool {
        self.uid == now.uid
            && self.generation == now.generation
            && self.spec == now.spec
            && self.labels == now.labels
            && self.annotations == now.annotations
    }

    /// Reads the workload and every revision it controls. Only reads: safe before any confirmation.
    pub async fn load(cluster: &Cluster, namespace: &str, target: &Target) -> Result<Self> {
        let obj = cluster
            .dynamic(namespace, &target.kind.api_resource())
            .get(&target.name)
            .await?;
        let uid = obj.metadata.uid.clone().unwrap_or_default();
        let spec = &obj.data["spec"];
        let template = &spec["template"];
        let selector = label_selector(&spec["selector"])
            .map_err(|e| Error::failed(format!("{target} in namespace {namespace}: {e}")))?;
        let lp = ListParams::default().labels(&selector);
        let mut revisions = match target.kind {
            Kind::Deployment => {
                let list = cluster
                    .dynamic(namespace, &ApiResource::erase::<ReplicaSet>(&()))
                    .list(&lp)
                    .await?;
                let mut owned: Vec<DynamicObject> = list
                    .into_iter()
                    .filter(|r| controlled_by(&r.metadata, &uid))
                    .collect();
                // FindNewReplicaSet: the oldest ReplicaSet whose template matches is the current one.
                owned.sort_by(|a, b| {
                    let ta = ts(&a.metadata.creation_timestamp);
                    let tb = ts(&b.metadata.creation_timestamp);
                    ta.cmp(&tb).then(a.metadata.name.cmp(&b.metadata.name))
                });
                let mut found_current = false;
                let mut out = Vec::new();
                for r in owned {
                    let annotations: BTreeMap<String, String> =
                        r.metadata.annotations.clone().unwrap_or_default();
                    let Some(revision) = annotations
                        .get(REVISION_ANNOTATION)
                        .and_then(|v| v.parse::<i64>().ok())
                    else {
                        continue;
                    };
                    let mut tpl = r.data["spec"]["template"].clone();
                    remove_hash_label(&mut tpl);
                    let current = !found_current && templates_equal(&tpl, template);
                    found_current |= current;
                    out.push(Revision {
                        revision,
                        source: r.metadata.name.clone().unwrap_or_default(),
                        current,
                        change_cause: annotations.get(CHANGE_CAUSE).cloned(),
                        images: images(&tpl),
                        created: ts(&r.metadata.creation_timestamp),
                        template: tpl,
                        annotations,
                        data: None,
                    });
                }
                out
            }
            Kind::StatefulSet | Kind::DaemonSet => {
                let list = cluster
                    .dynamic(namespace, &ApiResource::erase::<ControllerRevision>(&()))
                    .list(&lp)
                    .await?;
                let current_patch = revision_patch(template);
                list.into_iter()
                    .filter(|r| controlled_by(&r.metadata, &uid))
                    .map(|r| {
                        let data = r.data["data"].clone();
                        let mut tpl = data["spec"]["template"].clone();
                        if let Some(m) = tpl.as_object_mut() {
                            m.remove("$patch");
                        }
                        let annotations = r.metadata.annotations.clone().unwrap_or_default();
                        Revision {
                            revision: r.data["revision"].as_i64().unwrap_or(0),
                            source: r.metadata.name.clone().unwrap_or_default(),
                            current: templates_equal(&data, &current_patch),
                            change_cause: annotations.get(CHANGE_CAUSE).cloned(),
                            images: images(&tpl),
                            created: ts(&r.metadata.creation_timestamp),
                            template: tpl,
                            annotations,
                            data: Some(data),
                        }
                    })
                    .collect()
            }
        };
        revisions.sort_by_key(|r| r.revision);
        Ok(Workload {
            target: target.clone(),
            namespace: namespace.to_string(),
            uid,
            resource_version: obj.metadata.resource_version.clone().unwrap_or_default(),
            generation: obj.metadata.generation.unwrap_or_default(),
            spec: spec.clone(),
            labels: obj.metadata.labels.clone().unwrap_or_default(),
            annotations: obj.metadata.annotations.clone().unwrap_or_default(),
            revisions,
        })
    }

    /// The revision the workload runs now: the Deployment's revision annotation, else the revision
    /// whose template matches.
    pub fn current_revision(&self) -> Option<i64> {
        if self.target.kind == Kind::Deployment {
            if let Some(r) = self
                .annotations
                .get(REVISION_ANNOTATION)
                .and_then(|v| v.parse().ok())
            {
                return Some(r);
            }
        }
        self.revisions
            .iter()
            .rev()
            .find(|r| r.current)
            .map(|r| r.revision)
    }
}

/// The strategic merge patch the StatefulSet/DaemonSet controllers record for a template
/// (`{"spec":{"template":{…,"$patch":"replace"}}}`), used to tell which revision is current.
pub fn revision_patch(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(m) = t.as_object_mut() {
        m.insert("$patch".into(), Value::String("replace".into()));
    }
    serde_json::json!({ "spec": { "template": t } })
}

/// Whether `meta` names the object with `uid` as its controller (metav1.IsControlledBy).
fn controlled_by(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    uid: &str,
) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

fn ts(t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> Option<String> {
    t.as_ref().map(|t| t.0.to_string())
}

pub fn remove_hash_label(template: &mut Value) {
    if let Some(labels) = template
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
}

/// Semantic equality of two templates (apiequality.Semantic.DeepEqual ignoring the hash label):
/// nulls, empty maps and empty lists count as absent, as Go's omitempty and nil/empty slices do.
pub fn templates_equal(a: &Value, b: &Value) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    remove_hash_label(&mut a);
    remove_hash_label(&mut b);
    normalize(&a) == normalize(&b)
}

/// Drops nulls, empty objects and empty arrays (recursively).
pub fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalize(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Container images of a pod template, init containers first.
pub fn images(template: &Value) -> Vec<String> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|k| {
            template["spec"][k]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
        })
        .filter_map(|c| c["image"].as_str().map(str::to_string))
        .collect()
}

/// A LabelSelector (JSON) as a label-selector query string.
pub fn label_selector(sel: &Value) -> std::result::Result<String, String> {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        for (k, v) in m {
            parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        match e["operator"].as_str().unwrap_or_default() {
            "In" => parts.push(format!("{key} in ({})", values.join(","))),
            "NotIn" => parts.push(format!("{key} notin ({})", values.join(","))),
            "Exists" => parts.push(key.to_string()),
            "DoesNotExist" => parts.push(format!("!{key}")),
            op => return Err(format!("unsupported selector operator {op:?}")),
        }
    }
    if parts.is_empty() {
        return Err(
            "the workload has an empty selector; refusing to guess which objects it owns".into(),
        );
    }
    Ok(parts.join(","))
}

/// How long `--wait` waits for a rollout unless told otherwise.
pub const WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_accept_kubectl_short_names() {
        for (s, kind) in [
            ("deployment/web", Kind::Deployment),
            ("deploy/web", Kind::Deployment),
            ("deployments.apps/web", Kind::Deployment),
            ("sts/web", Kind::StatefulSet),
            ("StatefulSet/web", Kind::StatefulSet),
            ("ds/web", Kind::DaemonSet),
            ("daemonset.apps/web", Kind::DaemonSet),
        ] {
            let t: Target = s.parse().unwrap();
            assert_eq!((t.kind, t.name.as_str()), (kind, "web"), "{s}");
        }
        assert!("pod/web".parse::<Target>().is_err());
        assert!("web".parse::<Target>().is_err());
        assert!("deploy/".parse::<Target>().is_err());
    }

    #[test]
    fn equality_ignores_hash_label_and_empty_fields() {
        let a = json!({"metadata": {"labels": {"app": "w", "pod-template-hash": "abc"}, "creationTimestamp": null},
                       "spec": {"containers": [{"name": "w", "image": "x", "resources": {}}]}});
        let b = json!({"metadata": {"labels": {"app": "w"}},
                       "spec": {"containers": [{"name": "w", "image": "x"}]}});
        assert!(templates_equal(&a, &b));
        let c = json!({"metadata": {"labels": {"app": "w"}},
                       "spec": {"containers": [{"name": "w", "image": "y"}]}});
        assert!(!templates_equal(&a, &c));
    }

    #[test]
    fn selectors_render_like_kubectl() {
        let s = json!({"matchLabels": {"app": "web"},
                       "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                            {"key": "canary", "operator": "DoesNotExist"}]});
        assert_eq!(label_selector(&s).unwrap(), "app=web,tier in (a,b),!canary");
        assert!(label_selector(&json!({})).is_err());
    }

    #[test]
    fn revision_patch_marks_replace() {
        let p = revision_patch(&json!({"spec": {}}));
        assert_eq!(p["spec"]["template"]["$patch"], "replace");
    }
}
