//! `kirt release POD | -l SELECTOR`: put back exactly what quarantine changed — the original labels
//! (one resourceVersion-guarded patch), kirt's annotations, the per-pod policy, kirt's cordon, and,
//! once no quarantined pod remains in the namespace, the deny-all policy and `--exclusive` edits.
//! Running it again finds nothing to do and says so.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use kube::api::Patch;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::apply::{aggregate_exit, note_patches, note_totals, pod_table, tally, PodRow};
use super::credentials::restore::{self, RestorePlan, RestoreReport};
use super::policies::{is_kirt_policy, patch_policy, PolicyChange};
use super::policy_eval::Labels;
use super::{is_quarantined, pod_policy_name, Outcome, DEFAULT_CONCURRENCY, NS_POLICY};
use crate::actions::node;
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::k8s::keys::{
    CORDONED_BY, ISOLATED_BY, ORIGINAL_LABELS, ORIGINAL_SPEC, POD_ANNOTATIONS, QUARANTINED,
    QUARANTINE_POD,
};
use crate::k8s::write::{retry_conflict, Versions};
use crate::k8s::{
    annotation, bounded, ensure_namespace, get_pod, labels_of, name_of, node_of, selector, Cluster,
    EventType, PodTarget, Recorder,
};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[command(mut_arg("selector", |a| a.help(
    "Release every quarantined pod whose current or original labels match this selector"
)))]
pub struct ReleaseSpec {
    /// The pod to release, or every quarantined pod whose current or original labels match -l
    #[command(flatten)]
    #[serde(flatten)]
    pub target: PodTarget,
    /// Also release a pod that carries the quarantine label without kirt's record of its original
    /// labels: removes the quarantine label and kirt's annotations, keeps its other labels
    #[arg(long)]
    pub force: bool,
    /// Pods changed at once with -l/-A
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReleaseReport {
    pub dry_run: bool,
    pub released: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub policies: Vec<PolicyChange>,
    pub pods: Vec<PodRow>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Namespace clean-up (deny-all policy, `--exclusive` edits) that failed: exit 5.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cleanup_errors: Vec<String>,
    /// Revoked credentials put back (one entry per ServiceAccount).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<RestoreReport>,
}

impl Render for ReleaseReport {
    fn table(&self) -> Table {
        let mut t = pod_table(&self.pods, &self.policies, "released", "would release");
        for n in &self.notes {
            t.note(n.clone());
        }
        for e in &self.cleanup_errors {
            t.note(format!("FAILED clean-up: {e}"));
        }
        for c in &self.credentials {
            t.note(c.notes());
        }
        if self.dry_run {
            t.note("\ndry run (server-side dryRun=All): nothing was changed. Would apply:");
            note_patches(&mut t, &self.pods);
        }
        note_totals(
            &mut t,
            self.dry_run,
            "released",
            self.released,
            self.unchanged,
            self.failed,
        );
        t
    }

    fn exit(&self) -> Exit {
        let credentials = self
            .credentials
            .iter()
            .map(|c| c.exit)
            .find(|e| *e != Exit::Ok);
        match aggregate_exit(self.pods.iter().map(|r| r.exit), self.failed) {
            Exit::Ok if !self.cleanup_errors.is_empty() => Exit::Partial,
            Exit::Ok => credentials.unwrap_or(Exit::Ok),
            other => other,
        }
    }
}

#[tracing::instrument(skip_all, fields(pod = ?spec.target.pod, selector = ?spec.target.selector))]
pub async fn run(ctx: &Ctx, spec: ReleaseSpec) -> Result<ReleaseReport> {
    spec.target.validate()?;
    let cluster = ctx.cluster().await?;
    let single = spec.target.pod.is_some();
    let mut report = ReleaseReport {
        dry_run: ctx.dry_run,
        released: 0,
        unchanged: 0,
        failed: 0,
        policies: Vec::new(),
        pods: Vec::new(),
        notes: Vec::new(),
        cleanup_errors: Vec::new(),
        credentials: Vec::new(),
    };
    let pods = match (&spec.target.pod, &spec.target.selector) {
        (Some(pod), _) => {
            let ns = spec.target.single_namespace(ctx).await?;
            match get_pod(cluster, &ns, pod).await {
                Ok(p) => vec![p],
                // The pod was deleted after the investigation: still remove what kirt left.
                Err(e @ Error::NotFound { .. }) => {
                    return release_leftovers(ctx, cluster, &ns, pod, e, report).await
                }
                Err(e) => return Err(e),
            }
        }
        (None, sel) => {
            let sel = sel.as_deref().unwrap_or_default();
            let pods = quarantined_matching(ctx, &spec.target, sel).await?;
            if pods.is_empty() {
                report.notes.push(format!(
                    "no quarantined pod matches -l {sel}; nothing to do"
                ));
                return Ok(report);
            }
            pods
        }
    };
    let what = match &pods[..] {
        [pod] if single => {
            let (ns, name) = name_of(pod);
            format!("release pod {ns}/{name} (restore its labels, remove kirt's policies)")
        }
        _ => format!("release {} quarantined pods", pods.len()),
    };
    let restores = restore::plan_for_pods(cluster, &pods).await?;
    ctx.confirm(&question(what, &restores))?;

    let mut by_ns: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        by_ns.entry(name_of(&pod).0).or_default().push(pod);
    }
    let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    let pods: Vec<Pod> = by_ns.values().flatten().cloned().collect();
    let results = bounded(pods, concurrency, |pod| {
        let spec = &spec;
        async move {
            let res = release_pod(cluster, ctx.dry_run, spec, &pod).await;
            (pod, res)
        }
    })
    .await;
    // namespace -> pods released in this run (still labelled in a dry run)
    let mut released: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (pod, res) in results {
        match res {
            Ok(row) => {
                if matches!(row.outcome, Outcome::Done | Outcome::WouldDo) {
                    released
                        .entry(row.namespace.clone())
                        .or_default()
                        .insert(row.pod.clone());
                }
                report.pods.push(row);
            }
            Err(e) if single => return Err(e),
            Err(e) => report.pods.push(PodRow::failed(&pod, &e)),
        }
    }
    let namespaces: Vec<String> = by_ns.into_keys().collect();
    let cleanups = bounded(namespaces, concurrency, |ns| {
        let released = &released;
        async move {
            let empty = BTreeSet::new();
            let released = released.get(&ns).unwrap_or(&empty);
            let res = cleanup_namespace(cluster, ctx.dry_run, &ns, released).await;
            (ns, res)
        }
    })
    .await;
    for (ns, res) in cleanups {
        match res {
            Ok((changes, note)) => {
                report.policies.extend(changes);
                report.notes.extend(note);
            }
            Err(e) if single => return Err(e),
            Err(e) => report.cleanup_errors.push(format!("namespace {ns}: {e}")),
        }
    }
    restore_credentials(cluster, ctx.dry_run, &restores, &mut report).await;
    (report.released, report.unchanged, report.failed) = tally(&report.pods);
    Ok(report)
}

/// Puts back the credentials of each account whose pods were released (an account whose pod
/// failed to release stays revoked).
async fn restore_credentials(
    cluster: &Cluster,
    dry: bool,
    restores: &[RestorePlan],
    report: &mut ReleaseReport,
) {
    for plan in restores {
        let failed = report.pods.iter().any(|r| {
            r.outcome == Outcome::Failed
                && plan
                    .releasing
                    .contains(&format!("{}/{}", r.namespace, r.pod))
        });
        if failed {
            report.notes.push(format!(
                "ServiceAccount {} stays revoked: its pod was not released",
                plan.account
            ));
            continue;
        }
        report
            .credentials
            .push(restore::execute(cluster, dry, plan).await);
    }
}

/// The confirmation question: the pods, then each ServiceAccount's restore plan.
fn question(pods: String, restores: &[RestorePlan]) -> String {
    let lines: Vec<String> = restores.iter().flat_map(RestorePlan::preview).collect();
    if lines.is_empty() {
        pods
    } else {
        format!("{pods}\n{}\n", lines.join("\n"))
    }
}

/// Quarantined pods whose current or original labels match `selector` (none: NotFound only
/// when the namespace itself does not exist).
async fn quarantined_matching(ctx: &Ctx, target: &PodTarget, selector: &str) -> Result<Vec<Pod>> {
    let wanted = selector::parse(selector).map_err(Error::usage)?;
    let scope = target.scope(ctx).await?;
    let cluster = ctx.cluster().await?;
    let quarantined = cluster
        .scoped::<Pod>(scope.as_deref())
        .list_labelled(&format!("{QUARANTINED}=true"))
        .await?;
    let pods: Vec<Pod> = quarantined
        .into_iter()
        .filter(|p| {
            selector::matches(&wanted, &labels_of(p))
                || original_labels(p).is_some_and(|l| selector::matches(&wanted, &l))
        })
        .collect();
    if pods.is_empty() {
        if let Some(ns) = &scope {
            ensure_namespace(cluster, ns).await?;
        }
    }
    Ok(pods)
}

fn original_labels(pod: &Pod) -> Option<Labels> {
    annotation(&pod.metadata, ORIGINAL_LABELS).and_then(|v| serde_json::from_str(v).ok())
}

/// The merge patch that restores `target` labels exactly and removes kirt's annotations.
pub fn release_patch(pod: &Pod, target: &Labels) -> Value {
    let current = labels_of(pod);
    let mut labels = serde_json::Map::new();
    for k in current.keys().filter(|k| !target.contains_key(*k)) {
        labels.insert(k.clone(), Value::Null);
    }
    for (k, v) in target {
        if current.get(k) != Some(v) {
            labels.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let annotations: serde_json::Map<String, Value> = POD_ANNOTATIONS
        .iter()
        .filter(|k| annotation(&pod.metadata, k).is_some())
        .map(|k| (k.to_string(), Value::Null))
        .collect();
    json!({"metadata": {
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
        "labels": labels,
        "annotations": annotations,
    }})
}

async fn release_pod(
    cluster: &Cluster,
    dry: bool,
    spec: &ReleaseSpec,
    pod: &Pod,
) -> Result<PodRow> {
    let (ns, name) = name_of(pod);
    let pods = cluster.namespaced::<Pod>(&ns);
    let applied: Option<(Versions, Pod, Value)> = retry_conflict(|n| {
        let (pods, ns, name) = (&pods, &ns, &name);
        async move {
            let cur = pods.current(pod, n).await?;
            let has_record = POD_ANNOTATIONS
                .iter()
                .any(|k| annotation(&cur.metadata, k).is_some());
            if !is_quarantined(&cur) && !has_record {
                return Ok(None);
            }
            let target = match original_labels(&cur) {
                Some(orig) => orig,
                None if spec.force => {
                    let mut l = labels_of(&cur);
                    l.remove(QUARANTINED);
                    l.remove(QUARANTINE_POD);
                    l
                }
                None => {
                    return Err(Error::Refused(format!(
                        "pod {ns}/{name} carries {QUARANTINED} but not kirt's record of its original labels \
                         ({ORIGINAL_LABELS}): kirt did not quarantine it, so it cannot restore it. \
                         --force removes the quarantine label and kirt's annotations and keeps the other labels"
                    )))
                }
            };
            let patch = release_patch(&cur, &target);
            let patched = pods.patch(name, &Patch::Merge(&patch), dry).await?;
            Ok(Some((
                Versions::between(Some(&cur), Some(&patched)),
                patched,
                patch,
            )))
        }
    })
    .await?;

    let mut changes = Vec::new();
    if let Some(c) = delete_allowance_policy(cluster, dry, &ns, &name).await? {
        changes.push(c);
    }
    if let Some(node) = node_of(pod) {
        changes.extend(uncordon(cluster, dry, node, &ns, &name).await?);
    }
    let Some((versions, patched, patch)) = applied else {
        return Ok(PodRow::unchanged(
            pod,
            "not quarantined",
            "nothing to release",
            changes,
        ));
    };
    Recorder::new(cluster, dry)
        .publish_or_warn(
            patched.object_ref(&()),
            EventType::Warning,
            "Released",
            "released from quarantine by kirt",
        )
        .await;
    changes.insert(
        0,
        "original labels restored, kirt annotations removed".into(),
    );
    Ok(PodRow::changed(pod, dry, changes, patch, versions))
}

async fn delete_allowance_policy(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    pod: &str,
) -> Result<Option<String>> {
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let name = pod_policy_name(pod);
    match policies.get_opt(&name).await? {
        Some(np) if is_kirt_policy(&np) => {
            policies.delete(&name, dry).await?;
            Ok(Some(format!("networkpolicy {name} deleted")))
        }
        _ => Ok(None),
    }
}

/// `kirt release POD` for a pod that no longer exists: removes its allowance policy, its share of
/// kirt's node cordons and, if no quarantined pod remains, the namespace objects. Nothing left
/// behind means the pod is simply unknown: `not_found` is returned.
async fn release_leftovers(
    ctx: &Ctx,
    cluster: &Cluster,
    ns: &str,
    pod: &str,
    not_found: Error,
    mut report: ReleaseReport,
) -> Result<ReleaseReport> {
    let dry = ctx.dry_run;
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let has_allowance = policies
        .get_opt(&pod_policy_name(pod))
        .await?
        .is_some_and(|np| is_kirt_policy(&np));
    let me = format!("{ns}/{pod}");
    let nodes: Vec<String> = match cluster.all::<Node>().list_all().await {
        Ok(list) => list
            .iter()
            .filter(|n| {
                [CORDONED_BY, ISOLATED_BY].iter().any(|k| {
                    annotation(&n.metadata, k).is_some_and(|v| v.contains(&format!("\"{me}\"")))
                })
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect(),
        Err(e) => {
            tracing::warn!("cannot look for nodes kirt cordoned for {me}: {e}");
            Vec::new()
        }
    };
    let ns_objects = policies
        .list_all()
        .await?
        .iter()
        .any(|np| is_kirt_policy(np) || annotation(&np.metadata, ORIGINAL_SPEC).is_some());
    let restore = match restore::plan(cluster, ns, &[pod.to_string()], None).await {
        Ok(p) => p,
        Err(e) => restore::readable(e)?,
    };
    if !has_allowance && nodes.is_empty() && !ns_objects && restore.is_none() {
        return Err(not_found);
    }
    let restores: Vec<RestorePlan> = restore.into_iter().collect();
    ctx.confirm(&question(
        format!("pod {me} is gone: remove the quarantine objects kirt left for it"),
        &restores,
    ))?;
    let mut changes = Vec::new();
    if let Some(c) = delete_allowance_policy(cluster, dry, ns, pod).await? {
        changes.push(c);
    }
    for node in &nodes {
        changes.extend(uncordon(cluster, dry, node, ns, pod).await?);
    }
    let (policies, note) = cleanup_namespace(cluster, dry, ns, &BTreeSet::new()).await?;
    report.policies.extend(policies);
    report.notes.extend(note);
    for plan in &restores {
        report
            .credentials
            .push(restore::execute(cluster, dry, plan).await);
    }
    let ghost: Pod = serde_json::from_value(json!({"metadata": {"name": pod, "namespace": ns}}))
        .map_err(|e| Error::json(format!("pod {me}"), e))?;
    let detail = if changes.is_empty() {
        "pod no longer exists".to_string()
    } else {
        format!("pod no longer exists; {}", changes.join("; "))
    };
    let mut row = PodRow::new(&ghost, Outcome::Unchanged, detail);
    row.changes = changes;
    report.unchanged = 1;
    report.pods.push(row);
    Ok(report)
}

/// Withdraws this pod's cordon/isolation of the node (the node stays cordoned and isolated while
/// another quarantined pod, or a person, still asks for it).
async fn uncordon(
    cluster: &Cluster,
    dry: bool,
    node: &str,
    ns: &str,
    pod: &str,
) -> Result<Vec<String>> {
    match node::release(cluster, dry, node, &format!("{ns}/{pod}")).await {
        // Reading nodes is optional for quarantine without --cordon-node; do not fail the release.
        Err(Error::Forbidden(_)) => {
            tracing::warn!(
                "cannot check node {node} for a kirt cordon (forbidden); uncordon it yourself if kirt cordoned it"
            );
            Ok(Vec::new())
        }
        other => other,
    }
}

/// When no quarantined pod remains in the namespace: delete the deny-all policy and restore every
/// policy narrowed by `--exclusive` to its recorded spec.
async fn cleanup_namespace(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    released: &BTreeSet<String>,
) -> Result<(Vec<PolicyChange>, Option<String>)> {
    let remaining: Vec<String> = cluster
        .namespaced::<Pod>(ns)
        .list_labelled(&format!("{QUARANTINED}=true"))
        .await?
        .iter()
        .map(|p| name_of(p).1)
        .filter(|n| !released.contains(n))
        .collect();
    if !remaining.is_empty() {
        return Ok((
            Vec::new(),
            Some(format!(
                "namespace {ns}: {} quarantined pod(s) remain, so {NS_POLICY} and --exclusive edits stay",
                remaining.len()
            )),
        ));
    }
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let mut changes = Vec::new();
    let change = |name: &str, what: &str, resource_version: Versions| PolicyChange {
        namespace: ns.into(),
        name: name.into(),
        change: what.into(),
        object: None,
        resource_version: Some(resource_version),
    };
    for np in &policies.list_all().await? {
        let name = np.metadata.name.clone().unwrap_or_default();
        if name == NS_POLICY && is_kirt_policy(np) {
            policies.delete(&name, dry).await?;
            let gone = Versions::between(Some(np), None);
            changes.push(change(
                &name,
                if dry { "would delete" } else { "deleted" },
                gone,
            ));
        } else if annotation(&np.metadata, ORIGINAL_SPEC).is_some() {
            let versions = restore_policy(cluster, dry, ns, np).await?;
            changes.push(change(
                &name,
                if dry {
                    "would restore its original spec"
                } else {
                    "original spec restored (--exclusive reverted)"
                },
                versions,
            ));
        }
    }
    Ok((changes, None))
}

async fn restore_policy(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    np: &NetworkPolicy,
) -> Result<Versions> {
    let policies = cluster.namespaced::<NetworkPolicy>(ns);
    let name = np.metadata.name.clone().unwrap_or_default();
    retry_conflict(|n| {
        let (policies, name) = (&policies, &name);
        async move {
            let cur = policies.current(np, n).await?;
            let mut anns = cur.metadata.annotations.clone().unwrap_or_default();
            let Some(raw) = anns.remove(ORIGINAL_SPEC) else {
                return Ok(Versions::default());
            };
            let original: NetworkPolicySpec = serde_json::from_str(&raw).map_err(|e| {
                Error::failed(format!(
                    "networkpolicy {ns}/{name}: annotation {ORIGINAL_SPEC} is not a valid spec ({e}); restore it by hand"
                ))
            })?;
            let restored = patch_policy(policies, &cur, &Some(original), &anns, dry).await?;
            Ok(Versions::between(Some(&cur), Some(&restored)))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_patch_restores_exactly() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {
            "name": "web-1", "resourceVersion": "7",
            "labels": {QUARANTINED: "true", "added-later": "x", "app": "other"},
            "annotations": {ORIGINAL_LABELS: "{\"app\":\"web\",\"tier\":\"front\"}", crate::k8s::keys::QUARANTINED_AT: "t", "keep": "me"},
        }}))
        .unwrap();
        let target = original_labels(&pod).unwrap();
        let patch = release_patch(&pod, &target);
        assert_eq!(
            patch["metadata"]["labels"],
            json!({QUARANTINED: null, "added-later": null, "app": "web", "tier": "front"})
        );
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({ORIGINAL_LABELS: null, crate::k8s::keys::QUARANTINED_AT: null})
        );
        assert_eq!(patch["metadata"]["resourceVersion"], "7");
    }
}
