//! What of a decoded object can be compared with the live cluster and written back through the
//! API: the server-managed fields (one list, [`SERVER_MANAGED`]), the objects controllers make
//! by themselves ([`derived`]), the order objects are created in ([`tier`]), and Secret values
//! kept out of output ([`redact_secret`]).

use serde_json::{Map, Value};

/// Fields the apiserver or a controller sets: never written back, never compared. `metadata.*`
/// paths, then kind-specific ones (`Kind:path`). `status` is dropped from every object.
pub const SERVER_MANAGED: &[&str] = &[
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.generation",
    "metadata.creationTimestamp",
    "metadata.deletionTimestamp",
    "metadata.deletionGracePeriodSeconds",
    "metadata.managedFields",
    "metadata.selfLink",
    "status",
    // an address from the service CIDR: another Service may hold it by now ("None" is kept)
    "Service:spec.clusterIP",
    "Service:spec.clusterIPs",
    // the token controller adds a new token Secret; the old one is a credential (not restored)
    "ServiceAccount:secrets",
    // the controller's revision counter; it sets it again on the re-created object
    "Deployment:metadata.annotations.deployment.kubernetes.io/revision",
];

/// The object without its server-managed fields (what is written back, and what is compared).
pub fn clean(obj: &Value) -> Value {
    let mut o = obj.clone();
    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
    for f in SERVER_MANAGED {
        let path = match f.split_once(':') {
            Some((k, p)) if k == kind => p,
            Some(_) => continue,
            None => f,
        };
        if path == "spec.clusterIP" && o["spec"]["clusterIP"] == "None" {
            continue;
        }
        if path == "spec.clusterIPs" && o["spec"]["clusterIPs"][0] == "None" {
            continue;
        }
        remove(&mut o, path);
    }
    for m in ["labels", "annotations"] {
        if o["metadata"][m].as_object().is_some_and(Map::is_empty) {
            remove(&mut o, &format!("metadata.{m}"));
        }
    }
    drop_zero_timestamps(&mut o);
    o
}

/// A zero `creationTimestamp` inside an object (pod templates, volume claim templates) is served
/// as null by most apiservers and left out by the newest ones: neither is a difference.
fn drop_zero_timestamps(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
                if meta.get("creationTimestamp").is_some_and(Value::is_null) {
                    meta.remove("creationTimestamp");
                }
            }
            m.values_mut().for_each(drop_zero_timestamps);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_zero_timestamps),
        _ => {}
    }
}

/// Removes `a.b.c` (the last segment may contain dots: an annotation key).
fn remove(v: &mut Value, path: &str) {
    let mut cur = v;
    let mut rest = path;
    while let Some((head, tail)) = rest.split_once('.') {
        if cur.get(head).is_none() {
            break;
        }
        cur = &mut cur[head];
        rest = tail;
        if cur.get(rest).is_some() {
            break;
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(rest);
    }
}

/// Why an object is made by a controller rather than by people (not compared, not restored):
/// Events, objects a controller owns (ReplicaSets, Pods, EndpointSlices: re-created by their
/// controller), Endpoints the endpoints controller keeps, the ServiceAccount `default` and the
/// ConfigMap `kube-root-ca.crt` of every namespace, and ServiceAccount token Secrets (a
/// credential the token controller issues; an old one may have been stolen).
pub fn derived(obj: &Value) -> Option<&'static str> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let meta = &obj["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    let controlled = meta["ownerReferences"]
        .as_array()
        .is_some_and(|r| r.iter().any(|o| o["controller"] == true));
    match kind {
        "Event" => Some("events are not restored"),
        _ if controlled => Some("re-created by its controller"),
        "Endpoints"
            if meta["annotations"]
                .get("endpoints.kubernetes.io/last-change-trigger-time")
                .is_some() =>
        {
            Some("kept by the endpoints controller")
        }
        "ServiceAccount" if name == "default" => Some("created with every namespace"),
        "ConfigMap" if name == "kube-root-ca.crt" => Some("created with every namespace"),
        "Secret" if obj["type"] == "kubernetes.io/service-account-token" => {
            Some("a ServiceAccount token: issued again by the token controller, never restored")
        }
        _ => None,
    }
}

/// The order objects are created in: Namespaces and CRDs, then what workloads mount or run as
/// (ServiceAccounts, ConfigMaps, Secrets, PVCs, Roles), Services, workloads, then the rest
/// (bindings, custom resources, …).
pub fn tier(kind: &str) -> u8 {
    match kind {
        "Namespace" | "CustomResourceDefinition" => 0,
        "ServiceAccount"
        | "ConfigMap"
        | "Secret"
        | "PersistentVolumeClaim"
        | "Role"
        | "ClusterRole"
        | "LimitRange"
        | "ResourceQuota" => 1,
        "Service" => 2,
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "CronJob"
        | "Pod"
        | "ReplicationController" => 3,
        _ => 4,
    }
}

pub const REDACTED: &str = "[redacted]";

/// A Secret with its values (and kubectl's last-applied copy of them) replaced.
pub fn redact_secret(obj: &mut Value) {
    if obj["kind"] != "Secret" {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(m) = obj.get_mut(field).and_then(Value::as_object_mut) {
            for v in m.values_mut() {
                *v = Value::String(REDACTED.into());
            }
        }
    }
    if let Some(a) = obj["metadata"]
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    {
        if let Some(v) = a.get_mut("kubectl.kubernetes.io/last-applied-configuration") {
            *v = Value::String(REDACTED.into());
        }
    }
}

/// Field-level differences between two cleaned objects: `path: before → after` (Secret values
/// are never shown, only that they differ).
pub fn differences(before: &Value, after: &Value, secret: bool) -> Vec<String> {
    let mut out = Vec::new();
    walk("", before, after, secret, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, secret: bool, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            walk(
                &p,
                x.get(k).unwrap_or(&Value::Null),
                y.get(k).unwrap_or(&Value::Null),
                secret,
                out,
            );
        }
        return;
    }
    let hidden = secret
        && (path.starts_with("data.")
            || path.starts_with("stringData.")
            || path.ends_with("last-applied-configuration"));
    let show = |v: &Value| match v {
        Value::Null => "(none)".to_string(),
        _ if hidden => REDACTED.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    out.push(format!("{path}: {} → {}", show(a), show(b)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_managed_fields_are_dropped() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "uid": "u", "resourceVersion": "5", "labels": {},
                         "creationTimestamp": "t", "managedFields": []},
            "spec": {"clusterIP": "10.0.0.3", "clusterIPs": ["10.0.0.3"], "ports": [{"port": 80}]},
            "status": {"loadBalancer": {}}});
        assert_eq!(
            clean(&svc),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"ports": [{"port": 80}]}})
        );
        let headless = json!({"kind": "Service", "metadata": {},
                              "spec": {"clusterIP": "None", "clusterIPs": ["None"]}});
        assert_eq!(clean(&headless)["spec"]["clusterIP"], "None");
        let d = json!({"kind": "Deployment", "metadata": {"annotations": {
            "deployment.kubernetes.io/revision": "3", "team": "a"}}});
        assert_eq!(clean(&d)["metadata"]["annotations"], json!({"team": "a"}));
        // a pod template's zero creationTimestamp: null (apiservers before omitzero) and absent (newer) agree
        let served = |meta: Value| {
            clean(&json!({"kind": "Deployment", "metadata": {"name": "web"},
                "spec": {"template": {"metadata": meta, "spec": {}}}}))
        };
        assert_eq!(
            served(json!({"creationTimestamp": null, "labels": {"a": "b"}})),
            served(json!({"labels": {"a": "b"}}))
        );
        assert_ne!(
            served(json!({"creationTimestamp": "2024-01-01T00:00:00Z"})),
            served(json!({}))
        );
    }

    #[test]
    fn derived_objects_and_secrets() {
        let rs = json!({"kind": "ReplicaSet", "metadata": {"name": "web-1",
            "ownerReferences": [{"kind": "Deployment", "name": "web", "controller": true}]}});
        assert!(derived(&rs).is_some());
        let token = json!({"kind": "Secret", "type": "kubernetes.io/service-account-token", "metadata": {}});
        assert!(derived(&token).unwrap().contains("token"));
        assert!(derived(&json!({"kind": "ConfigMap", "metadata": {"name": "app"}})).is_none());
        let mut s = json!({"kind": "Secret", "data": {"k": "c2VjcmV0"}, "metadata": {"annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"k\":\"c2VjcmV0\"}}"}}});
        redact_secret(&mut s);
        assert!(!s.to_string().contains("c2VjcmV0"), "{s}");
        let d = differences(
            &json!({"data": {"k": "a"}}),
            &json!({"data": {"k": "b"}}),
            true,
        );
        assert_eq!(d, vec!["data.k: [redacted] → [redacted]"]);
        let d = differences(&json!({"data": {"k": "a"}}), &json!({"data": {}}), false);
        assert_eq!(d, vec!["data.k: a → (none)"]);
        assert!(tier("Namespace") < tier("ConfigMap") && tier("Service") < tier("Deployment"));
    }
}
