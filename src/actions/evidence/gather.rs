//! Read-only queries that find what belongs to a pod's evidence: events, owner chain, Services and
//! Endpoints selecting it, NetworkPolicies, its ServiceAccount and the RBAC bindings that grant it
//! anything, and the names of the ConfigMaps/Secrets it references. Nothing here writes to the
//! cluster, and no Secret is ever read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde_json::{json, Value};

use super::Missing;
use crate::error::{Error, Result};
use crate::k8s::keys::ORIGINAL_LABELS;
use crate::k8s::rbac::{self, Account};
use crate::k8s::selector::{self, Labels};
use crate::k8s::Cluster;

/// A k8s-style `List` that `kubectl` and `jq` users recognise.
pub fn list_of<T: Serialize>(items: &[T]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The labels that select this pod: the original ones if kirt quarantined it.
pub fn effective_labels(pod: &Pod) -> (Labels, bool) {
    let original = crate::k8s::annotation(&pod.metadata, ORIGINAL_LABELS)
        .and_then(|s| serde_json::from_str::<Labels>(s).ok());
    match original {
        Some(labels) => (labels, true),
        None => (pod.metadata.labels.clone().unwrap_or_default(), false),
    }
}

/// A controller's selector selects this pod (an empty one selects nothing useful here).
fn controller_selects(sel: &LabelSelector, labels: &Labels) -> bool {
    !selector::is_empty(sel) && selector::matches(sel, labels)
}

pub async fn events(cluster: &Cluster, pod: &Pod, ns: &str) -> Result<Value> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let items =
        crate::k8s::involving(cluster, ns, "Pod", &name, pod.metadata.uid.as_deref()).await?;
    Ok(list_of(&items))
}

/// One owner in the chain, as a file under `owners/`.
pub struct Owner {
    pub file: String,
    pub object: Value,
}

fn api_resource(owner: &OwnerReference) -> ApiResource {
    let (group, version) = owner
        .api_version
        .split_once('/')
        .unwrap_or(("", owner.api_version.as_str()));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &owner.kind))
}

fn owner_file(kind: &str, name: &str) -> String {
    format!("owners/{}-{name}.json", kind.to_ascii_lowercase())
}

/// Follows ownerReferences upwards (ReplicaSet → Deployment, Job → CronJob …). A quarantined pod
/// was released by its controller, so its owners are found by matching the original labels
/// against the namespace's ReplicaSets, StatefulSets and DaemonSets instead.
pub async fn owners(
    cluster: &Cluster,
    pod: &Pod,
    ns: &str,
    labels: &Labels,
    missing: &mut Vec<Missing>,
) -> Result<Vec<Owner>> {
    let mut out = Vec::new();
    let mut queue: Vec<OwnerReference> = pod.metadata.owner_references.clone().unwrap_or_default();
    if queue.is_empty() && crate::k8s::annotation(&pod.metadata, ORIGINAL_LABELS).is_some() {
        queue = inferred_owners(cluster, ns, labels).await?;
    }
    let mut seen = BTreeSet::new();
    while let Some(r) = queue.pop() {
        if !seen.insert((r.kind.clone(), r.name.clone())) || seen.len() > 16 {
            continue;
        }
        let file = owner_file(&r.kind, &r.name);
        match cluster
            .dynamic(ns, &api_resource(&r))
            .get_opt(&r.name)
            .await?
        {
            Some(obj) => {
                queue.extend(obj.metadata.owner_references.clone().unwrap_or_default());
                let object = serde_json::to_value(&obj)
                    .map_err(|e| Error::json(format!("encoding {file}"), e))?;
                out.push(Owner { file, object });
            }
            None => missing.push(Missing {
                item: file,
                reason: format!(
                    "owner {} {} no longer exists (or its API is not served)",
                    r.kind, r.name
                ),
            }),
        }
    }
    Ok(out)
}

async fn inferred_owners(
    cluster: &Cluster,
    ns: &str,
    labels: &Labels,
) -> Result<Vec<OwnerReference>> {
    fn owner_ref(kind: &str, name: Option<String>) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.unwrap_or_default(),
            ..Default::default()
        }
    }
    let mut refs = Vec::new();
    for o in cluster.namespaced::<ReplicaSet>(ns).list_all().await? {
        if controller_selects(&o.spec.selector, labels) {
            refs.push(owner_ref("ReplicaSet", o.metadata.name));
        }
    }
    for o in cluster.namespaced::<StatefulSet>(ns).list_all().await? {
        if controller_selects(&o.spec.selector, labels) {
            refs.push(owner_ref("StatefulSet", o.metadata.name));
        }
    }
    for o in cluster.namespaced::<DaemonSet>(ns).list_all().await? {
        if controller_selects(&o.spec.selector, labels) {
            refs.push(owner_ref("DaemonSet", o.metadata.name));
        }
    }
    Ok(refs)
}

/// Services whose selector matches the labels, and their Endpoints.
pub async fn services(cluster: &Cluster, ns: &str, labels: &Labels) -> Result<(Value, Value)> {
    let matched: Vec<Service> = cluster
        .namespaced::<Service>(ns)
        .list_all()
        .await?
        .into_iter()
        .filter(|s| {
            selector::map_selects(s.spec.as_ref().and_then(|s| s.selector.as_ref()), labels)
        })
        .collect();
    let names: BTreeSet<String> = matched
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let eps: Vec<Endpoints> = cluster
        .namespaced::<Endpoints>(ns)
        .list_all()
        .await?
        .into_iter()
        .filter(|e| e.metadata.name.as_ref().is_some_and(|n| names.contains(n)))
        .collect();
    Ok((list_of(&matched), list_of(&eps)))
}

pub async fn network_policies(cluster: &Cluster, ns: &str) -> Result<Value> {
    let list = cluster.namespaced::<NetworkPolicy>(ns).list_all().await?;
    Ok(list_of(&list))
}

pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The ServiceAccount object (it lists its token Secrets by name only; they are never read).
pub async fn service_account(cluster: &Cluster, ns: &str, sa: &str) -> Result<Option<Value>> {
    match cluster.namespaced::<ServiceAccount>(ns).get_opt(sa).await? {
        Some(o) => {
            Ok(Some(serde_json::to_value(&o).map_err(|e| {
                Error::json("encoding the ServiceAccount", e)
            })?))
        }
        None => Ok(None),
    }
}

/// Every RoleBinding (any namespace) and ClusterRoleBinding that grants the ServiceAccount
/// something — naming it or a group it belongs to — each with the rules of the role it refers to.
pub async fn rbac(cluster: &Cluster, ns: &str, sa: &str) -> Result<Value> {
    let account = Account::new(ns, sa);
    let mut rules_of: HashMap<(String, Option<String>, String), Value> = HashMap::new();
    let mut bindings = Vec::new();
    for b in rbac::list_bindings(cluster).await? {
        let matched = b.matches(&account);
        if matched.is_empty() {
            continue;
        }
        // A Role lives in its binding's namespace; a ClusterRole is cluster-wide (bound by a
        // RoleBinding its rules apply in that namespace only, which `namespace` records).
        let role_ns = b
            .namespace()
            .map(String::from)
            .filter(|_| b.role_ref.kind == "Role");
        let key = (b.role_ref.kind.clone(), role_ns, b.role_ref.name.clone());
        let rules = match rules_of.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = role_rules(cluster, &key.0, key.1.as_deref(), &key.2).await?;
                rules_of.insert(key, r.clone());
                r
            }
        };
        bindings.push(json!({
            "kind": b.kind.as_str(),
            "namespace": b.namespace(),
            "name": b.name(),
            "matchedSubjects": matched,
            "roleRef": b.role_ref,
            "rules": rules,
        }));
    }
    Ok(json!({"serviceAccount": format!("{ns}/{sa}"), "bindings": bindings}))
}

async fn role_rules(cluster: &Cluster, kind: &str, ns: Option<&str>, name: &str) -> Result<Value> {
    let rules = if kind == "Role" {
        let ns = ns.unwrap_or_default();
        cluster
            .namespaced::<Role>(ns)
            .get_opt(name)
            .await?
            .map(|r| r.rules)
    } else {
        cluster
            .all::<ClusterRole>()
            .get_opt(name)
            .await?
            .map(|r| r.rules)
    };
    Ok(match rules {
        Some(r) => json!(r.unwrap_or_default()),
        None => {
            json!({"error": format!("{kind} {name} does not exist: the binding grants nothing until it is created")})
        }
    })
}

/// (kind, name, env, envFrom) of every container of every kind.
type ContainerEnv = (
    &'static str,
    String,
    Option<Vec<k8s_openapi::api::core::v1::EnvVar>>,
    Option<Vec<k8s_openapi::api::core::v1::EnvFromSource>>,
);

fn container_env(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<ContainerEnv> {
    let regular = spec.containers.iter().map(|c| {
        (
            "container",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        )
    });
    let init = spec.init_containers.iter().flatten().map(|c| {
        (
            "initContainer",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        )
    });
    let ephemeral = spec.ephemeral_containers.iter().flatten().map(|c| {
        (
            "ephemeralContainer",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        )
    });
    regular.chain(init).chain(ephemeral).collect()
}

/// Names of the ConfigMaps and Secrets the pod refers to, and where from. Names only: values
/// are never read.
pub fn references(pod: &Pod) -> Value {
    let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut config_maps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else {
        return json!({"secrets": [], "configMaps": []});
    };
    let add = |map: &mut BTreeMap<String, BTreeSet<String>>, name: &str, via: String| {
        map.entry(name.to_string()).or_default().insert(via);
    };
    for (kind, cname, env, env_from) in container_env(spec) {
        for e in env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.secret_key_ref {
                add(
                    &mut secrets,
                    &r.name,
                    format!("{kind} {cname} env {}", e.name),
                );
            }
            if let Some(r) = &from.config_map_key_ref {
                add(
                    &mut config_maps,
                    &r.name,
                    format!("{kind} {cname} env {}", e.name),
                );
            }
        }
        for f in env_from.iter().flatten() {
            if let Some(r) = &f.secret_ref {
                add(&mut secrets, &r.name, format!("{kind} {cname} envFrom"));
            }
            if let Some(r) = &f.config_map_ref {
                add(&mut config_maps, &r.name, format!("{kind} {cname} envFrom"));
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_ref()) {
            add(&mut secrets, name, format!("volume {}", v.name));
        }
        if let Some(cm) = &v.config_map {
            add(&mut config_maps, &cm.name, format!("volume {}", v.name));
        }
        for p in v
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(s) = &p.secret {
                add(
                    &mut secrets,
                    &s.name,
                    format!("projected volume {}", v.name),
                );
            }
            if let Some(cm) = &p.config_map {
                add(
                    &mut config_maps,
                    &cm.name,
                    format!("projected volume {}", v.name),
                );
            }
        }
    }
    for r in spec.image_pull_secrets.iter().flatten() {
        add(&mut secrets, &r.name, "imagePullSecrets".into());
    }
    let render = |m: BTreeMap<String, BTreeSet<String>>| -> Vec<Value> {
        m.into_iter()
            .map(|(name, via)| json!({"name": name, "referencedBy": via}))
            .collect()
    };
    json!({
        "note": "names only: kirt never reads Secret or ConfigMap contents",
        "secrets": render(secrets),
        "configMaps": render(config_maps),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "In".into(),
                values: Some(vec!["front".into()]),
            }]),
        };
        assert!(controller_selects(&sel, &l));
        let mut sel2 = sel.clone();
        sel2.match_expressions.as_mut().unwrap()[0].operator = "NotIn".into();
        assert!(!controller_selects(&sel2, &l));
        assert!(!controller_selects(&LabelSelector::default(), &l));
        assert!(selector::map_selects(Some(&labels(&[("app", "web")])), &l));
        assert!(!selector::map_selects(Some(&labels(&[("app", "db")])), &l));
        assert!(!selector::map_selects(Some(&BTreeMap::new()), &l));
        assert!(!selector::map_selects(None, &l));
    }

    #[test]
    fn references_are_names_only() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "app", "env": [
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "db-pw", "key": "pw"}}},
                    {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}
                ], "envFrom": [{"secretRef": {"name": "bulk"}}]}],
                "volumes": [{"name": "creds", "secret": {"secretName": "db-pw"}},
                            {"name": "c", "configMap": {"name": "cfg2"}}],
                "imagePullSecrets": [{"name": "regcred"}]
            }
        }))
        .unwrap();
        let r = references(&pod);
        let secrets: Vec<&str> = r["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(secrets, vec!["bulk", "db-pw", "regcred"]);
        let db = &r["secrets"][1]["referencedBy"];
        assert_eq!(db.as_array().unwrap().len(), 2, "{r}");
        let cms: Vec<&str> = r["configMaps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(cms, vec!["cfg", "cfg2"]);
    }
}
