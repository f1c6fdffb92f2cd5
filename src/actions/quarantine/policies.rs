//! The NetworkPolicies kirt writes: the namespace deny-all, the per-pod allowances, and the
//! `--exclusive` narrowing of other policies. Every write is create-if-missing or a
//! resourceVersion-guarded patch, so concurrent runs and edits are detected, not overwritten.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use kube::api::Patch;
use serde::Serialize;
use serde_json::{json, Value};

use super::apply::QuarantineSpec;
use super::policy_eval::{self, Labels};
use super::{pod_label_value, pod_policy_name, NS_POLICY};
use crate::error::{Error, Result};
use crate::k8s::keys::{
    ALLOWANCE_FOR, DESCRIPTION, MANAGED_BY, ORIGINAL_SPEC, QUARANTINED, QUARANTINE_POD,
};
use crate::k8s::write::{merge_diff, retry_conflict, to_value, Versions};
use crate::k8s::{Cluster, Objects};

/// A policy kirt created, changed or would change.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyChange {
    pub namespace: String,
    pub name: String,
    pub change: String,
    /// The object as the server would store it (dry-run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// Its resourceVersions around kirt's write (none when nothing was written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<Versions>,
}

fn kirt_policy(name: &str, annotations: Value, spec: Value) -> NetworkPolicy {
    serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": {MANAGED_BY: "kirt"}, "annotations": annotations},
        "spec": spec,
    }))
    .expect("static NetworkPolicy shape")
}

/// Deny-all (no rules) for every quarantined pod of the namespace.
pub fn namespace_policy() -> NetworkPolicy {
    kirt_policy(
        NS_POLICY,
        json!({DESCRIPTION: "kirt quarantine: denies all traffic of pods labelled kirt.dev/quarantined=true; removed by `kirt release` when no quarantined pod remains"}),
        json!({
            "podSelector": {"matchLabels": {QUARANTINED: "true"}},
            "policyTypes": ["Ingress", "Egress"],
        }),
    )
}

/// The per-pod allowances; `None` when none were asked for.
pub fn allowance_policy(ns: &str, pod: &str, spec: &QuarantineSpec) -> Option<NetworkPolicy> {
    if !spec.has_allowances() {
        return None;
    }
    let mut ingress = Vec::new();
    if !spec.allow_from.is_empty() {
        let peers: Vec<Value> = spec
            .allow_from
            .iter()
            .map(|c| json!({"ipBlock": {"cidr": c}}))
            .collect();
        ingress.push(json!({ "from": peers }));
    }
    if !spec.allow_from_namespace.is_empty() {
        let peers: Vec<Value> = spec
            .allow_from_namespace
            .iter()
            .map(|n| json!({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": n}}}))
            .collect();
        ingress.push(json!({ "from": peers }));
    }
    let mut egress = Vec::new();
    if spec.allow_dns {
        egress.push(json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        }));
    }
    let mut types = Vec::new();
    let mut body = json!({
        "podSelector": {"matchLabels": {QUARANTINED: "true", QUARANTINE_POD: pod_label_value(pod)}},
    });
    if !ingress.is_empty() {
        types.push("Ingress");
        body["ingress"] = Value::Array(ingress);
    }
    if !egress.is_empty() {
        types.push("Egress");
        body["egress"] = Value::Array(egress);
    }
    body["policyTypes"] = json!(types);
    Some(kirt_policy(
        &pod_policy_name(pod),
        json!({ ALLOWANCE_FOR: format!("{ns}/{pod}") }),
        body,
    ))
}

/// Creates the policy, or replaces its spec when it differs; reports what happened.
pub(crate) async fn ensure_policy(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    desired: NetworkPolicy,
) -> Result<PolicyChange> {
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let name = desired.metadata.name.clone().unwrap_or_default();
    let change =
        |change: &str, before: Option<&NetworkPolicy>, obj: Option<NetworkPolicy>| PolicyChange {
            namespace: ns.to_string(),
            name: name.clone(),
            change: change.to_string(),
            resource_version: obj
                .as_ref()
                .map(|after| Versions::between(before, Some(after))),
            object: obj.filter(|_| dry).and_then(|o| preview(&o)),
        };
    retry_conflict(|_| {
        let (policies, desired, name, change) = (&policies, &desired, &name, &change);
        async move {
            match policies.get_opt(name).await? {
                None => {
                    let created = policies.create(desired, dry).await?;
                    let what = if dry { "would create" } else { "created" };
                    Ok(change(what, None, Some(created)))
                }
                Some(cur) if cur.spec == desired.spec => Ok(change("unchanged", None, None)),
                Some(cur) => {
                    let anns = cur.metadata.annotations.clone().unwrap_or_default();
                    let updated = patch_policy(policies, &cur, &desired.spec, &anns, dry).await?;
                    let what = if dry {
                        "would reset its spec"
                    } else {
                        "spec reset to kirt's"
                    };
                    Ok(change(what, Some(&cur), Some(updated)))
                }
            }
        }
    })
    .await
}

pub(crate) fn is_kirt_policy(np: &NetworkPolicy) -> bool {
    np.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY))
        .map(String::as_str)
        == Some("kirt")
}

/// `--exclusive`: adds `kirt.dev/quarantined DoesNotExist` to every other policy that would still
/// select one of the pods (with their quarantine labels) and admit traffic. The original spec is
/// saved once in `kirt.dev/original-spec`; release restores it when no quarantined pod remains.
pub(crate) async fn narrow_policies(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    future: &[Labels],
) -> Result<Vec<PolicyChange>> {
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let mut changes = Vec::new();
    for np in policies
        .list_all()
        .await?
        .iter()
        .filter(|np| !is_kirt_policy(np))
    {
        let breaches = future.iter().any(|l| {
            let v = policy_eval::evaluate(np, l);
            v.selects && v.admits_traffic()
        });
        if !breaches {
            continue;
        }
        let name = np.metadata.name.clone().unwrap_or_default();
        let (before, updated) = retry_conflict(|n| {
            let (policies, name) = (&policies, &name);
            async move {
                let cur = policies.current(np, n).await?;
                let Some(spec) = cur.spec.clone() else {
                    return Ok((cur.clone(), cur));
                };
                let mut anns = cur.metadata.annotations.clone().unwrap_or_default();
                if !anns.contains_key(ORIGINAL_SPEC) {
                    let original = serde_json::to_string(&spec)
                        .map_err(|e| Error::json(format!("encoding policy {name}"), e))?;
                    anns.insert(ORIGINAL_SPEC.into(), original);
                }
                let new_spec = Some(policy_eval::narrowed(&spec, QUARANTINED));
                let updated = patch_policy(policies, &cur, &new_spec, &anns, dry).await?;
                Ok((cur, updated))
            }
        })
        .await?;
        changes.push(PolicyChange {
            namespace: ns.into(),
            name,
            change: if dry {
                "would narrow (kirt.dev/quarantined DoesNotExist)".into()
            } else {
                "narrowed (kirt.dev/quarantined DoesNotExist; original spec saved)".into()
            },
            object: dry.then(|| preview(&updated)).flatten(),
            resource_version: Some(Versions::between(Some(&before), Some(&updated))),
        });
    }
    Ok(changes)
}

/// Rewrites a policy's spec and annotations with one merge patch guarded by the resourceVersion
/// of `cur` (so `patch networkpolicies` is the only write permission kirt needs on policies).
pub(crate) async fn patch_policy(
    policies: &Objects<'_, NetworkPolicy>,
    cur: &NetworkPolicy,
    new_spec: &Option<NetworkPolicySpec>,
    new_annotations: &BTreeMap<String, String>,
    dry: bool,
) -> Result<NetworkPolicy> {
    let name = cur.metadata.name.clone().unwrap_or_default();
    let spec = merge_diff(&to_value(&cur.spec), &to_value(new_spec));
    let anns = merge_diff(
        &to_value(&cur.metadata.annotations.clone().unwrap_or_default()),
        &to_value(new_annotations),
    );
    let patch = json!({
        "metadata": {"resourceVersion": cur.metadata.resource_version, "annotations": anns},
        "spec": spec,
    });
    policies.patch(&name, &Patch::Merge(&patch), dry).await
}

/// The object as the server would store it, without server bookkeeping (for dry-run output).
pub(crate) fn preview(obj: &impl Serialize) -> Option<Value> {
    let mut v = serde_json::to_value(obj).ok()?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "managedFields",
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
        ] {
            meta.remove(k);
        }
    }
    Some(v)
}
