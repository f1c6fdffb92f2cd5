//! Quarantine: isolate compromised pods with NetworkPolicies while keeping them alive for forensics,
//! verify the isolation against every policy of the namespace, and release exactly.
//!
//! What kirt writes (and nothing else), so that release can remove precisely that:
//! - NetworkPolicy `kirt-quarantine` per namespace: deny-all (Ingress+Egress, no rules) for pods
//!   labelled `kirt.dev/quarantined=true`;
//! - NetworkPolicy `kirt-quarantine-POD` for allowances (`--allow-dns`, `--allow-from`,
//!   `--allow-from-namespace`), selecting the pod by `kirt.dev/quarantine-pod=POD`;
//! - on the pod: the quarantine label(s) and the annotations below, originals in
//!   `kirt.dev/original-labels`;
//! - with `--exclusive`: a `kirt.dev/quarantined DoesNotExist` requirement on other policies, the
//!   original spec saved in `kirt.dev/original-spec` on each;
//! - with `--cordon-node`: `spec.unschedulable` and `kirt.dev/cordoned-by-quarantine` on the node.

pub mod apply;
pub mod policies;
pub mod policy_eval;
pub mod release;
pub mod status;
pub mod verify;

use std::collections::BTreeMap;
use std::future::Future;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use kube::Client;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::k8s::{KubeContext, Op};

pub use apply::{QuarantineReport, QuarantineSpec};
pub use release::{ReleaseReport, ReleaseSpec};
pub use status::{StatusReport, StatusSpec};
pub use verify::{VerifyReport, VerifySpec};

/// The label that the namespace deny-all policy selects.
pub const LABEL: &str = "kirt.dev/quarantined";
/// Second label, only when the pod has allowances: lets the per-pod policy select just this pod.
pub const POD_LABEL: &str = "kirt.dev/quarantine-pod";
pub const ANN_ORIGINAL_LABELS: &str = "kirt.dev/original-labels";
pub const ANN_AT: &str = "kirt.dev/quarantined-at";
pub const ANN_BY: &str = "kirt.dev/quarantined-by";
pub const ANN_REASON: &str = "kirt.dev/quarantined-reason";
/// On policies narrowed by `--exclusive`: their spec before kirt touched them (JSON).
pub const ANN_ORIGINAL_SPEC: &str = "kirt.dev/original-spec";
/// On per-pod allowance policies: which pod they belong to (`NS/POD`).
pub const ANN_ALLOWANCE_FOR: &str = "kirt.dev/allowance-for";
/// On nodes cordoned by `--cordon-node`: JSON list of the `NS/POD`s that asked for it.
pub const ANN_CORDONED: &str = "kirt.dev/cordoned-by-quarantine";
/// The namespace-wide deny-all policy.
pub const NS_POLICY: &str = "kirt-quarantine";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Every pod annotation kirt adds (removed on release).
pub const POD_ANNOTATIONS: [&str; 4] = [ANN_ORIGINAL_LABELS, ANN_AT, ANN_BY, ANN_REASON];

/// How many pods are patched at once for `-l` / `-A`.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Attempts of a resourceVersion-guarded write before a conflict becomes an error.
const CONFLICT_ATTEMPTS: usize = 5;

/// Name of the per-pod allowance policy (object names may be 253 characters).
pub fn pod_policy_name(pod: &str) -> String {
    let name = format!("{NS_POLICY}-{pod}");
    if name.len() <= 253 {
        name
    } else {
        format!("{}-{}", &name[..240], short_hash(pod))
    }
}

/// Value of `kirt.dev/quarantine-pod` (label values may be 63 characters).
pub fn pod_label_value(pod: &str) -> String {
    if pod.len() <= 63 {
        pod.to_string()
    } else {
        format!(
            "{}-{}",
            pod[..50].trim_end_matches(['-', '.']),
            short_hash(pod)
        )
    }
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

/// Where the pods are: the spec's namespace (playbooks), else `-n`/the context's; `-A` for all.
pub(crate) async fn scope(
    ctx: &Ctx,
    namespace: &Option<String>,
    all: bool,
) -> Result<Option<String>> {
    if all || ctx.kube.all_namespaces {
        return Ok(None);
    }
    match namespace {
        Some(ns) => Ok(Some(ns.clone())),
        None => Ok(Some(ctx.namespace().await?)),
    }
}

pub(crate) fn labels_of(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

pub(crate) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

pub(crate) fn is_quarantined(pod: &Pod) -> bool {
    labels_of(pod).get(LABEL).map(String::as_str) == Some("true")
}

pub(crate) fn name_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// Reads one pod; a 404 says whether the pod or the whole namespace is missing.
pub(crate) async fn get_pod(client: &Client, ns: &str, name: &str) -> Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    match api.get(name).await {
        Ok(p) => Ok(p),
        Err(kube::Error::Api(s)) if s.code == 404 => {
            ensure_namespace(client, ns).await?;
            Err(Error::not_found(
                format!("pod {ns}/{name}"),
                format!("check the pod name (kubectl get pods -n {ns})"),
            ))
        }
        Err(e) => Err(Op::new("get", "pods").ns(ns).name(name).err(e)),
    }
}

/// NotFound naming the namespace when it does not exist; Ok when it does or when we may not look.
pub(crate) async fn ensure_namespace(client: &Client, ns: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get(ns).await {
        Err(kube::Error::Api(s)) if s.code == 404 => Err(Error::not_found(
            format!("namespace {ns}"),
            "check -n (kubectl get namespaces)",
        )),
        _ => Ok(()),
    }
}

/// Pods matching a label selector in one namespace or all; none is an error naming the scope.
pub(crate) async fn list_pods(
    client: &Client,
    ns: Option<&str>,
    selector: &str,
) -> Result<Vec<Pod>> {
    let api: Api<Pod> = match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut op = Op::new("list", "pods");
    if let Some(ns) = ns {
        op = op.ns(ns);
    }
    let list = api
        .list(&ListParams::default().labels(selector))
        .await
        .op(op)?;
    Ok(list.items)
}

pub(crate) fn no_pods_match(client_ns: Option<&str>, selector: &str) -> Error {
    Error::not_found(
        match client_ns {
            Some(ns) => format!("pods matching -l {selector} in namespace {ns}"),
            None => format!("pods matching -l {selector} in any namespace"),
        },
        "check the selector (kubectl get pods -l …)",
    )
}

/// Runs a resourceVersion-guarded write, re-reading and retrying on 409 Conflict. The closure gets
/// the attempt number (0 first) and should re-read the object when it is not 0.
pub(crate) async fn retry_conflict<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Err(Error::Kube {
                source: kube::Error::Api(s),
                context,
            }) if s.code == 409 => {
                if n + 1 >= CONFLICT_ATTEMPTS {
                    return Err(Error::failed(format!(
                        "{context}: the object kept changing under kirt ({CONFLICT_ATTEMPTS} conflicting writes): {}; re-run the command",
                        s.message
                    )));
                }
                tracing::debug!(attempt = n, "conflict, re-reading: {}", s.message);
                n += 1;
            }
            other => return other,
        }
    }
}

/// The object attempt `n` of `retry_conflict` works on: the one in hand first, then a fresh read.
pub(crate) async fn current<K>(api: &Api<K>, in_hand: &K, n: usize) -> Result<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if n == 0 {
        return Ok(in_hand.clone());
    }
    let meta = in_hand.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    let plural = K::plural(&());
    let mut op = Op::new("get", &plural).name(name);
    if let Some(ns) = &meta.namespace {
        op = op.ns(ns);
    }
    api.get(name).await.op(op)
}

/// Kubernetes timestamp (RFC 3339, seconds).
pub(crate) fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Who is acting, for `kirt.dev/quarantined-by` and Events.
pub(crate) async fn identity(ctx: &Ctx) -> Result<String> {
    let cluster = ctx.cluster().await?;
    Ok(
        match crate::actions::doctor::whoami(&cluster.client).await {
            Some(user) => user,
            None => cluster.configured_identity.clone(),
        },
    )
}

/// One row's outcome in multi-pod results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    WouldDo,
    Unchanged,
    Failed,
}

/// Runs `f` on every item with at most `n` in flight; results in input order.
pub(crate) async fn bounded<I, T, F, Fut>(items: Vec<I>, n: usize, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: Future<Output = T>,
{
    use futures::stream::{self, StreamExt};
    stream::iter(items.into_iter().map(f))
        .buffered(n.max(1))
        .collect()
        .await
}

/// Records a core/v1 Event on the pod (`kubectl describe pod` shows it). Best effort: a missing
/// `create events` permission is logged, not fatal — the pod change itself already happened.
pub(crate) async fn emit_event(
    client: &Client,
    pod: &Pod,
    reason: &str,
    message: &str,
    dry_run: bool,
) {
    let (ns, name) = name_of(pod);
    let at = now();
    let ev = serde_json::json!({
        "metadata": {"generateName": format!("{name}.kirt-"), "namespace": ns},
        "involvedObject": {
            "apiVersion": "v1", "kind": "Pod", "namespace": ns, "name": name,
            "uid": pod.metadata.uid, "resourceVersion": pod.metadata.resource_version,
        },
        "reason": reason,
        "message": message,
        "type": "Warning",
        "source": {"component": "kirt"},
        "reportingComponent": "kirt",
        "reportingInstance": gethostname::gethostname().to_string_lossy(),
        "firstTimestamp": at, "lastTimestamp": at, "count": 1,
    });
    let ev: k8s_openapi::api::core::v1::Event = match serde_json::from_value(ev) {
        Ok(ev) => ev,
        Err(e) => {
            tracing::warn!("cannot build the {reason} event for pod {ns}/{name}: {e}");
            return;
        }
    };
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&crate::k8s::post_params(dry_run), &ev).await {
        let e = Op::new("create", "events").ns(&ns).err(e);
        tracing::warn!("pod {ns}/{name} changed, but its {reason} event was not recorded: {e}");
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: objects recurse, removed keys
/// become null, anything else is replaced whole. (Specs never hold explicit nulls.)
pub fn merge_diff(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            for (k, v) in b {
                match a.get(k) {
                    Some(old) if old == v => {}
                    Some(old) => {
                        out.insert(k.clone(), merge_diff(old, v));
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

/// Rewrites a policy's spec and annotations with one merge patch guarded by the resourceVersion
/// of `cur` (so `patch networkpolicies` is the only write permission kirt needs on policies).
pub(crate) async fn patch_policy(
    api: &Api<k8s_openapi::api::networking::v1::NetworkPolicy>,
    ns: &str,
    cur: &k8s_openapi::api::networking::v1::NetworkPolicy,
    new_spec: &Option<k8s_openapi::api::networking::v1::NetworkPolicySpec>,
    new_annotations: &BTreeMap<String, String>,
    dry_run: bool,
) -> Result<k8s_openapi::api::networking::v1::NetworkPolicy> {
    let name = cur.metadata.name.clone().unwrap_or_default();
    let spec = merge_diff(&to_value(&cur.spec), &to_value(new_spec));
    let anns = merge_diff(
        &to_value(&cur.metadata.annotations.clone().unwrap_or_default()),
        &to_value(new_annotations),
    );
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": cur.metadata.resource_version, "annotations": anns},
        "spec": spec,
    });
    api.patch(
        &name,
        &crate::k8s::patch_params(dry_run),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .op(Op::new("patch", "networkpolicies").ns(ns).name(&name))
}

/// A plain API struct as JSON (Null if it cannot be serialized, which API structs always can).
fn to_value<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conflict() -> Error {
        Op::new("patch", "pods")
            .ns("prod")
            .name("web")
            .err(kube::Error::Api(
                kube::core::Status::failure("the object has been modified", "Conflict")
                    .with_code(409)
                    .boxed(),
            ))
    }

    #[tokio::test]
    async fn conflicts_are_retried_then_reported() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = retry_conflict(|n| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(conflict())
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(r, 2);
        let e = retry_conflict(|_| async { Err::<(), _>(conflict()) })
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("pods prod/web") && msg.contains("kept changing"),
            "{msg}"
        );
        // other errors are not retried
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let e = retry_conflict(|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(Error::failed("boom")) }
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn merge_diff_round_trips() {
        let narrowed = json!({"podSelector": {"matchExpressions": [{"key": LABEL, "operator": "DoesNotExist"}]}, "ingress": [{}], "policyTypes": ["Ingress"]});
        let original = json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]});
        let d = merge_diff(&narrowed, &original);
        assert_eq!(d, json!({"podSelector": {"matchExpressions": null}}));
        assert_eq!(merge_diff(&original, &original), json!({}));
        assert_eq!(
            merge_diff(&original, &narrowed),
            json!({"podSelector": {"matchExpressions": [{"key": LABEL, "operator": "DoesNotExist"}]}})
        );
    }
}
