//! Read-only queries that find what belongs to a pod's evidence: events, owner chain, Services and
//! Endpoints selecting it, NetworkPolicies, its ServiceAccount and the RBAC bindings that grant it
//! anything, and the names of the ConfigMaps/Secrets it references. Nothing here writes to the
//! cluster, and no Secret is ever read.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::apps::v1::{DaemonSet, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Event, Pod, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference};
use kube::api::{Api, ListParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde::Serialize;
use serde_json::{json, Value};

use super::Missing;
use crate::error::{Error, Result};
use crate::k8s::{KubeContext, Op};

/// A k8s-style `List` that `kubectl` and `jq` users recognise.
pub fn list_of<T: Serialize>(items: &[T]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The labels that select this pod: the original ones if kirt quarantined it.
pub fn effective_labels(pod: &Pod) -> (BTreeMap<String, String>, bool) {
    let original = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(super::ORIGINAL_LABELS))
        .and_then(|s| serde_json::from_str::<BTreeMap<String, String>>(s).ok());
    match original {
        Some(labels) => (labels, true),
        None => (pod.metadata.labels.clone().unwrap_or_default(), false),
    }
}

/// Kubernetes label-selector semantics (matchLabels AND every matchExpression).
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let empty = sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return false; // an empty controller selector selects nothing useful here
    }
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// A Service selector (plain map) matches when non-empty and a subset of the labels.
pub fn service_selects(
    sel: Option<&BTreeMap<String, String>>,
    labels: &BTreeMap<String, String>,
) -> bool {
    match sel {
        Some(s) if !s.is_empty() => s.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

pub async fn events(client: &Client, pod: &Pod, ns: &str) -> Result<Value> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let list = api.list(&lp).await.op(Op::new("list", "events").ns(ns))?;
    let mut items: Vec<Event> = list
        .items
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Pod"))
        .filter(|e| {
            // Events of an earlier pod with the same name are not this pod's.
            e.involved_object
                .uid
                .as_deref()
                .is_none_or(|u| u.is_empty() || u == uid)
        })
        .collect();
    items.sort_by(|a, b| {
        let t = |e: &Event| e.last_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
    });
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
    client: &Client,
    pod: &Pod,
    ns: &str,
    labels: &BTreeMap<String, String>,
    missing: &mut Vec<Missing>,
) -> Result<Vec<Owner>> {
    let mut out = Vec::new();
    let mut queue: Vec<OwnerReference> = pod.metadata.owner_references.clone().unwrap_or_default();
    if queue.is_empty()
        && pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(super::ORIGINAL_LABELS))
    {
        queue = inferred_owners(client, ns, labels).await?;
    }
    let mut seen = BTreeSet::new();
    while let Some(r) = queue.pop() {
        if !seen.insert((r.kind.clone(), r.name.clone())) || seen.len() > 16 {
            continue;
        }
        let ar = api_resource(&r);
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        let file = owner_file(&r.kind, &r.name);
        match api.get(&r.name).await {
            Ok(obj) => {
                queue.extend(obj.metadata.owner_references.clone().unwrap_or_default());
                let object = serde_json::to_value(&obj)
                    .map_err(|e| Error::failed(format!("encoding {file}: {e}")))?;
                out.push(Owner { file, object });
            }
            Err(kube::Error::Api(s)) if s.code == 404 => missing.push(Missing {
                item: file,
                reason: format!(
                    "owner {} {} no longer exists (or its API is not served)",
                    r.kind, r.name
                ),
            }),
            Err(e) => return Err(Op::new("get", &ar.plural).ns(ns).name(&r.name).err(e)),
        }
    }
    Ok(out)
}

async fn inferred_owners(
    client: &Client,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Result<Vec<OwnerReference>> {
    fn owner_ref(api_version: &str, kind: &str, name: Option<String>) -> OwnerReference {
        OwnerReference {
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.unwrap_or_default(),
            ..Default::default()
        }
    }
    let mut refs = Vec::new();
    let lp = ListParams::default();
    let rs = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .op(Op::new("list", "replicasets").ns(ns))?;
    for o in rs.items {
        if selector_matches(&o.spec.selector, labels) {
            refs.push(owner_ref("apps/v1", "ReplicaSet", o.metadata.name));
        }
    }
    let sts = Api::<StatefulSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .op(Op::new("list", "statefulsets").ns(ns))?;
    for o in sts.items {
        if selector_matches(&o.spec.selector, labels) {
            refs.push(owner_ref("apps/v1", "StatefulSet", o.metadata.name));
        }
    }
    let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .op(Op::new("list", "daemonsets").ns(ns))?;
    for o in ds.items {
        if selector_matches(&o.spec.selector, labels) {
            refs.push(owner_ref("apps/v1", "DaemonSet", o.metadata.name));
        }
    }
    Ok(refs)
}

/// Services whose selector matches the labels, and their Endpoints.
pub async fn services(
    client: &Client,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(Value, Value)> {
    let svcs = Api::<Service>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .op(Op::new("list", "services").ns(ns))?;
    let matched: Vec<Service> = svcs
        .items
        .into_iter()
        .filter(|s| service_selects(s.spec.as_ref().and_then(|s| s.selector.as_ref()), labels))
        .collect();
    let names: BTreeSet<String> = matched
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let eps = Api::<Endpoints>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .op(Op::new("list", "endpoints").ns(ns))?;
    let eps: Vec<Endpoints> = eps
        .items
        .into_iter()
        .filter(|e| e.metadata.name.as_ref().is_some_and(|n| names.contains(n)))
        .collect();
    Ok((list_of(&matched), list_of(&eps)))
}

pub async fn network_policies(client: &Client, ns: &str) -> Result<Value> {
    let list = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .op(Op::new("list", "networkpolicies").ns(ns))?;
    Ok(list_of(&list.items))
}

pub fn service_account_name(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The ServiceAccount object (it lists its token Secrets by name only; they are never read).
pub async fn service_account(client: &Client, ns: &str, sa: &str) -> Result<Option<Value>> {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    match api.get(sa).await {
        Ok(o) => Ok(Some(serde_json::to_value(&o).map_err(|e| {
            Error::failed(format!("encoding the ServiceAccount: {e}"))
        })?)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(Op::new("get", "serviceaccounts").ns(ns).name(sa).err(e)),
    }
}

/// Why a subject applies to the ServiceAccount `ns/sa`, following the apiserver's rules (a
/// ServiceAccount subject without namespace means the binding's own namespace).
pub fn subject_applies(
    s: &Subject,
    ns: &str,
    sa: &str,
    binding_ns: Option<&str>,
) -> Option<String> {
    match s.kind.as_str() {
        "ServiceAccount" => {
            let subject_ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .or(binding_ns)?;
            (subject_ns == ns && s.name == sa).then(|| format!("ServiceAccount {ns}/{sa}"))
        }
        "Group" => {
            let groups = [
                "system:serviceaccounts".to_string(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".to_string(),
            ];
            groups
                .contains(&s.name)
                .then(|| format!("Group {}", s.name))
        }
        "User" => (s.name == format!("system:serviceaccount:{ns}:{sa}"))
            .then(|| format!("User {}", s.name)),
        _ => None,
    }
}

/// A binding whose subjects include the ServiceAccount, before its role's rules are looked up.
struct Grant {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    matched: Vec<String>,
    role_ref: RoleRef,
}

fn matched_subjects(
    subjects: Option<&[Subject]>,
    ns: &str,
    sa: &str,
    binding_ns: Option<&str>,
) -> Vec<String> {
    subjects
        .unwrap_or_default()
        .iter()
        .filter_map(|s| subject_applies(s, ns, sa, binding_ns))
        .collect()
}

/// Every RoleBinding (any namespace) and ClusterRoleBinding that grants the ServiceAccount
/// something, each with the rules of the role it refers to.
pub async fn rbac(client: &Client, ns: &str, sa: &str) -> Result<Value> {
    let rbs = Api::<RoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await
        .op(Op::new("list", "rolebindings.rbac.authorization.k8s.io"))?;
    let crbs = Api::<ClusterRoleBinding>::all(client.clone())
        .list(&ListParams::default())
        .await
        .op(Op::new(
            "list",
            "clusterrolebindings.rbac.authorization.k8s.io",
        ))?;
    let mut grants = Vec::new();
    for b in rbs.items {
        let bns = b.metadata.namespace.clone();
        let matched = matched_subjects(b.subjects.as_deref(), ns, sa, bns.as_deref());
        if !matched.is_empty() {
            grants.push(Grant {
                kind: "RoleBinding",
                namespace: bns,
                name: b.metadata.name.unwrap_or_default(),
                matched,
                role_ref: b.role_ref,
            });
        }
    }
    for b in crbs.items {
        let matched = matched_subjects(b.subjects.as_deref(), ns, sa, None);
        if !matched.is_empty() {
            grants.push(Grant {
                kind: "ClusterRoleBinding",
                namespace: None,
                name: b.metadata.name.unwrap_or_default(),
                matched,
                role_ref: b.role_ref,
            });
        }
    }
    let mut rules_of: HashMap<(String, Option<String>, String), Value> = HashMap::new();
    let mut bindings = Vec::new();
    for g in grants {
        // A Role lives in its binding's namespace; a ClusterRole is cluster-wide (bound by a
        // RoleBinding its rules apply in that namespace only, which `namespace` records).
        let role_ns = g.namespace.clone().filter(|_| g.role_ref.kind == "Role");
        let key = (g.role_ref.kind.clone(), role_ns, g.role_ref.name.clone());
        let rules = match rules_of.get(&key) {
            Some(r) => r.clone(),
            None => {
                let r = role_rules(client, &key.0, key.1.as_deref(), &key.2).await?;
                rules_of.insert(key, r.clone());
                r
            }
        };
        bindings.push(json!({
            "kind": g.kind,
            "namespace": g.namespace,
            "name": g.name,
            "matchedSubjects": g.matched,
            "roleRef": g.role_ref,
            "rules": rules,
        }));
    }
    Ok(json!({"serviceAccount": format!("{ns}/{sa}"), "bindings": bindings}))
}

async fn role_rules(client: &Client, kind: &str, ns: Option<&str>, name: &str) -> Result<Value> {
    let not_found = || json!({"error": format!("{kind} {name} does not exist: the binding grants nothing until it is created")});
    if kind == "Role" {
        let ns = ns.unwrap_or_default();
        match Api::<Role>::namespaced(client.clone(), ns).get(name).await {
            Ok(r) => Ok(json!(r.rules.unwrap_or_default())),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(not_found()),
            Err(e) => Err(Op::new("get", "roles.rbac.authorization.k8s.io")
                .ns(ns)
                .name(name)
                .err(e)),
        }
    } else {
        match Api::<ClusterRole>::all(client.clone()).get(name).await {
            Ok(r) => Ok(json!(r.rules.unwrap_or_default())),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(not_found()),
            Err(e) => Err(Op::new("get", "clusterroles.rbac.authorization.k8s.io")
                .name(name)
                .err(e)),
        }
    }
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
    // (kind, name, env, envFrom) for every container kind
    let mut containers = Vec::new();
    for c in &spec.containers {
        containers.push((
            "container",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        ));
    }
    for c in spec.init_containers.iter().flatten() {
        containers.push((
            "initContainer",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        ));
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        containers.push((
            "ephemeralContainer",
            c.name.clone(),
            c.env.clone(),
            c.env_from.clone(),
        ));
    }
    for (kind, cname, env, env_from) in containers {
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
        assert!(selector_matches(&sel, &l));
        let mut sel2 = sel.clone();
        sel2.match_expressions.as_mut().unwrap()[0].operator = "NotIn".into();
        assert!(!selector_matches(&sel2, &l));
        assert!(!selector_matches(&LabelSelector::default(), &l));
        assert!(service_selects(Some(&labels(&[("app", "web")])), &l));
        assert!(!service_selects(Some(&labels(&[("app", "db")])), &l));
        assert!(!service_selects(Some(&BTreeMap::new()), &l));
        assert!(!service_selects(None, &l));
    }

    #[test]
    fn subjects_follow_apiserver_rules() {
        let sa = |name: &str, ns: Option<&str>| Subject {
            kind: "ServiceAccount".into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            api_group: None,
        };
        assert!(subject_applies(&sa("app", Some("prod")), "prod", "app", None).is_some());
        assert!(subject_applies(&sa("app", None), "prod", "app", Some("prod")).is_some());
        assert!(subject_applies(&sa("app", None), "prod", "app", None).is_none());
        assert!(subject_applies(&sa("app", Some("dev")), "prod", "app", None).is_none());
        let g = Subject {
            kind: "Group".into(),
            name: "system:serviceaccounts:prod".into(),
            namespace: None,
            api_group: None,
        };
        assert!(subject_applies(&g, "prod", "app", None).is_some());
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
