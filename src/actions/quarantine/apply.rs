//! `kirt quarantine POD | -l SELECTOR [-A]`: ensure the namespace deny-all policy first, then
//! (optionally) narrow other policies and write the per-pod allowance policy, then change each
//! pod with one resourceVersion-guarded patch, then record an Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Patch;
use kube::Resource;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::contain;
use super::credentials::revoke::CredentialsReport;
use super::policies::{
    allowance_policy, ensure_policy, namespace_policy, narrow_policies, PolicyChange,
};
use super::policy_eval::Labels;
use super::{is_quarantined, pod_label_value, Outcome, DEFAULT_CONCURRENCY};
use crate::actions::node;
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::k8s::keys::{
    ORIGINAL_LABELS, QUARANTINED, QUARANTINED_AT, QUARANTINED_BY, QUARANTINED_REASON,
    QUARANTINE_POD,
};
use crate::k8s::write::{retry_conflict, Versions};
use crate::k8s::{bounded, labels_of, name_of, node_of, Cluster, EventType, PodTarget, Recorder};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct QuarantineSpec {
    /// The pod to quarantine (or every pod matching -l)
    #[command(flatten)]
    #[serde(flatten)]
    pub target: PodTarget,
    /// Why: recorded in the kirt.dev/quarantined-reason annotation and the Event
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Allow DNS (UDP+TCP 53) to kube-dns in kube-system
    #[arg(long)]
    pub allow_dns: bool,
    /// Allow ingress from this CIDR (repeatable), e.g. a forensics host
    #[arg(long = "allow-from", value_name = "CIDR")]
    pub allow_from: Vec<String>,
    /// Allow ingress from all pods of this namespace (repeatable; needs the
    /// kubernetes.io/metadata.name namespace label, Kubernetes 1.21+)
    #[arg(long = "allow-from-namespace", value_name = "NS")]
    pub allow_from_namespace: Vec<String>,
    /// Keep the pod's labels (only add the quarantine label): it stays in Services and owned by
    /// its controller, and other policies selecting it may still admit traffic
    #[arg(long)]
    pub keep_labels: bool,
    /// Narrow every other policy that admits traffic to the pod with
    /// `kirt.dev/quarantined DoesNotExist` (reverted on release)
    #[arg(long)]
    pub exclusive: bool,
    /// Cordon the pod's node (uncordoned on release if kirt cordoned it)
    #[arg(long)]
    pub cordon_node: bool,
    /// Contain the identity too: take the pod's ServiceAccount out of every binding that names it
    /// (restored exactly on release) and delete its legacy token Secrets
    #[arg(long)]
    pub revoke_credentials: bool,
    /// Isolate the pod's node: cordon it, taint it kirt.dev/quarantine=POD:NoSchedule, label it
    /// kirt.dev/under-investigation=true (only what kirt added is removed on release)
    #[arg(long)]
    pub isolate_node: bool,
    /// Then delete the pod (its bound tokens die with it): refused unless --evidence-from holds
    /// an evidence bundle of it, or --force
    #[arg(long)]
    pub delete_pod: bool,
    /// The store where `kirt evidence collect` put the pod's bundle (a directory or
    /// s3://BUCKET/PREFIX), for --delete-pod
    #[arg(long, value_name = "URL")]
    pub evidence_from: Option<String>,
    /// With --delete-pod: delete even without an evidence bundle
    #[arg(long)]
    pub force: bool,
    /// Pods changed at once with -l/-A
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
}

impl QuarantineSpec {
    pub fn has_allowances(&self) -> bool {
        self.allow_dns || !self.allow_from.is_empty() || !self.allow_from_namespace.is_empty()
    }

    fn validate(&self) -> Result<()> {
        self.target.validate()?;
        for cidr in &self.allow_from {
            validate_cidr(cidr)?;
        }
        if !self.delete_pod && (self.force || self.evidence_from.is_some()) {
            return Err(Error::usage(
                "--force and --evidence-from go with --delete-pod",
            ));
        }
        Ok(())
    }

    /// The labels the pod will carry once quarantined.
    fn future_labels(&self, pod: &Pod) -> Labels {
        let mut labels = if self.keep_labels {
            labels_of(pod)
        } else {
            Labels::new()
        };
        labels.insert(QUARANTINED.into(), "true".into());
        if self.has_allowances() {
            let (_, name) = name_of(pod);
            labels.insert(QUARANTINE_POD.into(), pod_label_value(&name));
        }
        labels
    }
}

fn validate_cidr(cidr: &str) -> Result<()> {
    let bad = || {
        Error::usage(format!(
            "--allow-from {cidr:?} is not a CIDR (e.g. 10.1.2.3/32)"
        ))
    };
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > if ip.is_ipv4() { 32 } else { 128 } {
        return Err(bad());
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct PodRow {
    pub namespace: String,
    pub pod: String,
    pub node: String,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// The merge patch applied (or, in dry-run, that would be applied) to the pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Value>,
    /// Which pod it was (a pod re-created under the same name is another one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The pod's ServiceAccount, whose audit events `kirt runs report` shows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The pod's resourceVersions around kirt's patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<Versions>,
    #[serde(skip)]
    pub exit: Exit,
}

impl PodRow {
    pub(crate) fn new(pod: &Pod, outcome: Outcome, detail: impl Into<String>) -> Self {
        let (namespace, name) = name_of(pod);
        PodRow {
            namespace,
            pod: name,
            node: node_of(pod).unwrap_or_default().to_string(),
            outcome,
            detail: detail.into(),
            changes: Vec::new(),
            patch: None,
            uid: pod.metadata.uid.clone(),
            service_account: pod.spec.as_ref().map(|s| {
                s.service_account_name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| "default".into())
            }),
            resource_version: None,
            exit: Exit::Ok,
        }
    }

    /// A pod kirt did not have to change: `state` and what else was done, or `nothing`.
    pub(crate) fn unchanged(pod: &Pod, state: &str, nothing: &str, changes: Vec<String>) -> Self {
        let detail = if changes.is_empty() {
            format!("{state}; {nothing}")
        } else {
            format!("{state}; {}", changes.join("; "))
        };
        let mut row = PodRow::new(pod, Outcome::Unchanged, detail);
        row.changes = changes;
        row
    }

    /// A pod changed (or, in a dry run, that would be) by `patch`.
    pub(crate) fn changed(
        pod: &Pod,
        dry: bool,
        changes: Vec<String>,
        patch: Value,
        versions: Versions,
    ) -> Self {
        let outcome = if dry { Outcome::WouldDo } else { Outcome::Done };
        let mut row = PodRow::new(pod, outcome, changes.join("; "));
        row.changes = changes;
        row.patch = Some(patch);
        row.resource_version = Some(versions);
        row
    }

    pub(crate) fn failed(pod: &Pod, e: &Error) -> Self {
        let mut row = PodRow::new(pod, Outcome::Failed, e.to_string());
        row.exit = e.exit();
        row
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantineReport {
    pub dry_run: bool,
    pub quarantined: usize,
    pub unchanged: usize,
    pub failed: usize,
    pub policies: Vec<PolicyChange>,
    pub pods: Vec<PodRow>,
    /// `--revoke-credentials`: one entry per ServiceAccount.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialsReport>,
}

impl Render for QuarantineReport {
    fn table(&self) -> Table {
        let mut t = pod_table(
            &self.pods,
            &self.policies,
            "quarantined",
            "would quarantine",
        );
        if self.dry_run {
            t.note("\ndry run (server-side dryRun=All): nothing was changed. Would apply:");
            for p in &self.policies {
                if let Some(obj) = &p.object {
                    t.note(format!("--- networkpolicy {}/{}", p.namespace, p.name));
                    t.note(serde_yaml_ng::to_string(obj).unwrap_or_default());
                }
            }
            note_patches(&mut t, &self.pods);
        }
        for c in &self.credentials {
            t.note(c.notes().join("\n"));
        }
        note_totals(
            &mut t,
            self.dry_run,
            "quarantined",
            self.quarantined,
            self.unchanged,
            self.failed,
        );
        t
    }

    fn exit(&self) -> Exit {
        let pods = aggregate_exit(self.pods.iter().map(|r| r.exit), self.failed);
        let credentials = self
            .credentials
            .iter()
            .map(|c| c.exit)
            .find(|e| *e != Exit::Ok);
        match (pods, credentials) {
            (Exit::Ok, Some(e)) => e,
            (p, _) => p,
        }
    }
}

/// The table `quarantine` and `release` both print: a row per pod, then the policies touched.
pub(crate) fn pod_table(
    pods: &[PodRow],
    policies: &[PolicyChange],
    done: &str,
    would: &str,
) -> Table {
    let mut t = Table::new(["NAMESPACE", "POD", "NODE", "RESULT", "DETAIL"]);
    for r in pods {
        let result = match r.outcome {
            Outcome::Done => done,
            Outcome::WouldDo => would,
            Outcome::Unchanged => "unchanged",
            Outcome::Failed => "FAILED",
        };
        t.row([&r.namespace, &r.pod, &r.node, result, &r.detail]);
    }
    for p in policies {
        t.note(format!(
            "networkpolicy {}/{}: {}",
            p.namespace, p.name, p.change
        ));
    }
    t
}

/// In a dry run: the merge patch each pod would get.
pub(crate) fn note_patches(t: &mut Table, pods: &[PodRow]) {
    for r in pods {
        if let Some(patch) = &r.patch {
            t.note(format!(
                "--- merge patch for pod {}/{}\n{}",
                r.namespace,
                r.pod,
                serde_json::to_string_pretty(patch).unwrap_or_default()
            ));
        }
    }
}

/// The closing line: how many pods were (or, in a dry run, would be) changed, unchanged, failed.
pub(crate) fn note_totals(
    t: &mut Table,
    dry_run: bool,
    past: &str,
    changed: usize,
    unchanged: usize,
    failed: usize,
) {
    let verb = if dry_run {
        format!("would be {past}")
    } else {
        past.to_string()
    };
    t.note(format!(
        "\n{changed} {verb}, {unchanged} unchanged, {failed} failed"
    ));
}

/// (changed or would be changed, unchanged, failed) pods.
pub(crate) fn tally(rows: &[PodRow]) -> (usize, usize, usize) {
    let n = |f: fn(Outcome) -> bool| rows.iter().filter(|r| f(r.outcome)).count();
    (
        n(|o| matches!(o, Outcome::Done | Outcome::WouldDo)),
        n(|o| o == Outcome::Unchanged),
        n(|o| o == Outcome::Failed),
    )
}

/// 0 if nothing failed, the failure's own code if everything failed, else 5 (partial).
pub(crate) fn aggregate_exit(exits: impl Iterator<Item = Exit>, failed: usize) -> Exit {
    let exits: Vec<Exit> = exits.collect();
    if failed == 0 {
        Exit::Ok
    } else if failed == exits.len() {
        exits
            .into_iter()
            .find(|e| *e != Exit::Ok)
            .unwrap_or(Exit::Failure)
    } else {
        Exit::Partial
    }
}

#[tracing::instrument(skip_all, fields(pod = ?spec.target.pod, selector = ?spec.target.selector))]
pub async fn run(ctx: &Ctx, spec: QuarantineSpec) -> Result<QuarantineReport> {
    spec.validate()?;
    let pods = spec.target.resolve(ctx).await?;
    let cluster = ctx.cluster().await?;
    let single = spec.target.pod.is_some();
    let plan = contain::prepare(cluster, ctx.dry_run, &spec, &pods).await?;
    ctx.confirm(&plan.question(describe(&spec, &pods)))?;
    let by = cluster.identity().await;
    let at = crate::k8s::now();

    let mut by_ns: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods {
        by_ns.entry(name_of(&pod).0).or_default().push(pod);
    }
    let mut report = QuarantineReport {
        dry_run: ctx.dry_run,
        quarantined: 0,
        unchanged: 0,
        failed: 0,
        policies: Vec::new(),
        pods: Vec::new(),
        credentials: Vec::new(),
    };
    let concurrency = spec.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    // The deny-all policy of each namespace exists before any pod carries the label it selects.
    let prepared = bounded(by_ns.into_iter().collect(), concurrency, |(ns, pods)| {
        let spec = &spec;
        async move {
            let res = prepare_namespace(cluster, ctx.dry_run, &ns, spec, &pods).await;
            (pods, res)
        }
    })
    .await;
    let mut ready = Vec::new();
    for (pods, res) in prepared {
        match res {
            Ok(changes) => {
                report.policies.extend(changes);
                ready.extend(pods);
            }
            Err(e) if single => return Err(e),
            Err(e) => report
                .pods
                .extend(pods.iter().map(|p| PodRow::failed(p, &e))),
        }
    }
    let results = bounded(ready, concurrency, |pod| {
        let (spec, by, at) = (&spec, &by, &at);
        async move {
            let res = quarantine_pod(cluster, ctx.dry_run, spec, &pod, by, at).await;
            (pod, res)
        }
    })
    .await;
    for (pod, res) in results {
        match res {
            Ok(row) => report.pods.push(row),
            Err(e) if single => return Err(e),
            Err(e) => report.pods.push(PodRow::failed(&pod, &e)),
        }
    }
    contain::finish(ctx, &plan, &mut report, &by, &at).await?;
    (report.quarantined, report.unchanged, report.failed) = tally(&report.pods);
    Ok(report)
}

/// What the confirmation asks about.
fn describe(spec: &QuarantineSpec, pods: &[Pod]) -> String {
    match (&spec.target.pod, pods) {
        (Some(_), [pod]) => {
            let (ns, name) = name_of(pod);
            format!("quarantine pod {ns}/{name} (deny all its traffic, replace its labels)")
        }
        _ => format!(
            "quarantine {} pods matching -l {} (deny all their traffic, replace their labels)",
            pods.len(),
            spec.target.selector.as_deref().unwrap_or_default()
        ),
    }
}

/// Namespace-level work before any pod is touched: the deny-all policy, then `--exclusive`.
async fn prepare_namespace(
    cluster: &Cluster,
    dry: bool,
    ns: &str,
    spec: &QuarantineSpec,
    pods: &[Pod],
) -> Result<Vec<PolicyChange>> {
    let mut changes = vec![ensure_policy(cluster, dry, ns, namespace_policy()).await?];
    if spec.exclusive {
        let future: Vec<Labels> = pods.iter().map(|p| spec.future_labels(p)).collect();
        changes.extend(narrow_policies(cluster, dry, ns, &future).await?);
    }
    Ok(changes)
}

/// The one merge patch that quarantines a pod. `resourceVersion` makes it conditional: if the pod
/// changed since it was read, the server answers 409 and nothing is applied.
pub fn pod_patch(pod: &Pod, spec: &QuarantineSpec, by: &str, at: &str) -> Value {
    let original = labels_of(pod);
    let mut labels = serde_json::Map::new();
    if !spec.keep_labels {
        for k in original.keys() {
            labels.insert(k.clone(), Value::Null);
        }
    }
    for (k, v) in spec.future_labels(pod) {
        if !spec.keep_labels || original.get(&k) != Some(&v) {
            labels.insert(k, Value::String(v));
        }
    }
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        ORIGINAL_LABELS.into(),
        Value::String(serde_json::to_string(&original).unwrap_or_else(|_| "{}".into())),
    );
    annotations.insert(QUARANTINED_AT.into(), Value::String(at.into()));
    annotations.insert(QUARANTINED_BY.into(), Value::String(by.into()));
    if let Some(reason) = &spec.reason {
        annotations.insert(QUARANTINED_REASON.into(), Value::String(reason.clone()));
    }
    // resourceVersion and UID are preconditions: a pod changed, or deleted and re-created
    // under the same name, since it was read is not patched (409)
    json!({"metadata": {
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
        "labels": labels,
        "annotations": annotations,
    }})
}

/// Quarantines one pod that `prepare_namespace` made ready: allowance policy, cordon, then the
/// pod patch (guarded by resourceVersion and UID), then the Event.
pub async fn quarantine_pod(
    cluster: &Cluster,
    dry: bool,
    spec: &QuarantineSpec,
    pod: &Pod,
    by: &str,
    at: &str,
) -> Result<PodRow> {
    let (ns, name) = name_of(pod);
    let mut changes = Vec::new();
    if let Some(policy) = allowance_policy(&ns, &name, spec) {
        let c = ensure_policy(cluster, dry, &ns, policy).await?;
        if c.change != "unchanged" {
            changes.push(format!("networkpolicy {}: {}", c.name, c.change));
        }
    }
    if let (Some(node), Some(what)) = (node_of(pod), spec.node_containment()) {
        let me = format!("{ns}/{name}");
        let value = contain::taint_value(&name);
        changes.extend(node::isolate(cluster, dry, node, &me, &value, what).await?);
    }
    let pods = cluster.namespaced::<Pod>(&ns);
    let applied: Option<(Versions, Pod, Value)> = retry_conflict(|n| {
        let (pods, name) = (&pods, &name);
        async move {
            let cur = pods.current(pod, n).await?;
            let patch = if !is_quarantined(&cur) {
                pod_patch(&cur, spec, by, at)
            } else if let Some(patch) = allowance_label_patch(&cur, spec) {
                // Quarantined earlier without allowances: the new per-pod policy needs its label.
                patch
            } else {
                return Ok(None);
            };
            let patched = pods.patch(name, &Patch::Merge(&patch), dry).await?;
            Ok(Some((
                Versions::between(Some(&cur), Some(&patched)),
                patched,
                patch,
            )))
        }
    })
    .await?;
    let already = is_quarantined(pod);
    let Some((versions, patched, patch)) = applied else {
        return Ok(PodRow::unchanged(
            pod,
            "already quarantined",
            "pod unchanged",
            changes,
        ));
    };
    let message = format!(
        "quarantined by kirt ({by}){}",
        spec.reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    if !already {
        Recorder::new(cluster, dry)
            .publish_or_warn(
                patched.object_ref(&()),
                EventType::Warning,
                "Quarantined",
                &message,
            )
            .await;
    }
    changes.insert(
        0,
        if already {
            format!("already quarantined; label {QUARANTINE_POD} added for the allowances")
        } else if spec.keep_labels {
            "label added".to_string()
        } else {
            "labels replaced (originals in kirt.dev/original-labels)".to_string()
        },
    );
    Ok(PodRow::changed(pod, dry, changes, patch, versions))
}

/// For a pod that is already quarantined: the patch adding the per-pod label when allowances are
/// asked for now and the label is missing.
fn allowance_label_patch(pod: &Pod, spec: &QuarantineSpec) -> Option<Value> {
    if !spec.has_allowances() {
        return None;
    }
    let (_, name) = name_of(pod);
    let want = pod_label_value(&name);
    if labels_of(pod).get(QUARANTINE_POD) == Some(&want) {
        return None;
    }
    Some(json!({"metadata": {
        "uid": pod.metadata.uid,
        "resourceVersion": pod.metadata.resource_version,
        "labels": {QUARANTINE_POD: want},
    }}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::quarantine::pod_policy_name;
    use crate::actions::quarantine::policy_eval;

    fn pod(labels: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "prod", "resourceVersion": "42", "labels": labels},
        }))
        .unwrap()
    }

    #[test]
    fn patch_replaces_labels_and_records_originals() {
        let p = pod(json!({"app": "web", "pod-template-hash": "abc"}));
        let spec = QuarantineSpec {
            reason: Some("cryptominer".into()),
            ..Default::default()
        };
        let patch = pod_patch(&p, &spec, "user alice", "2026-01-01T00:00:00Z");
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert_eq!(
            patch["metadata"]["labels"],
            json!({"app": null, "pod-template-hash": null, QUARANTINED: "true"})
        );
        let anns = &patch["metadata"]["annotations"];
        let orig: Labels = serde_json::from_str(anns[ORIGINAL_LABELS].as_str().unwrap()).unwrap();
        assert_eq!(orig, labels_of(&p));
        assert_eq!(anns[QUARANTINED_BY], "user alice");
        assert_eq!(anns[QUARANTINED_REASON], "cryptominer");
    }

    #[test]
    fn keep_labels_only_adds() {
        let p = pod(json!({"app": "web"}));
        let spec = QuarantineSpec {
            keep_labels: true,
            allow_dns: true,
            ..Default::default()
        };
        let patch = pod_patch(&p, &spec, "u", "t");
        assert_eq!(
            patch["metadata"]["labels"],
            json!({QUARANTINED: "true", QUARANTINE_POD: "web-1"})
        );
        assert!(patch["metadata"]["annotations"]
            .get(QUARANTINED_REASON)
            .is_none());
    }

    #[test]
    fn policies_have_the_documented_shape() {
        let ns = serde_json::to_value(namespace_policy()).unwrap();
        assert_eq!(
            ns["spec"],
            json!({"podSelector": {"matchLabels": {QUARANTINED: "true"}}, "policyTypes": ["Ingress", "Egress"]})
        );
        assert!(allowance_policy("prod", "web-1", &QuarantineSpec::default()).is_none());
        let spec = QuarantineSpec {
            allow_dns: true,
            allow_from: vec!["10.9.0.5/32".into()],
            ..Default::default()
        };
        let np = allowance_policy("prod", "web-1", &spec).unwrap();
        assert_eq!(np.metadata.name.as_deref(), Some("kirt-quarantine-web-1"));
        let s = serde_json::to_value(&np.spec).unwrap();
        assert_eq!(s["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(s["ingress"][0]["from"][0]["ipBlock"]["cidr"], "10.9.0.5/32");
        assert_eq!(
            s["egress"][0]["ports"][0],
            json!({"protocol": "UDP", "port": 53})
        );
        // it selects the pod once quarantined and nothing else
        let q: Labels = spec.future_labels(&pod(json!({"app": "web"})));
        assert!(policy_eval::evaluate(&np, &q).selects);
        let mut other = q.clone();
        other.insert(QUARANTINE_POD.into(), "web-2".into());
        assert!(!policy_eval::evaluate(&np, &other).selects);
    }

    #[test]
    fn validates_cidrs_and_targets() {
        assert!(validate_cidr("10.0.0.0/8").is_ok());
        assert!(validate_cidr("2001:db8::/32").is_ok());
        assert!(validate_cidr("10.0.0.0/33").is_err());
        assert!(validate_cidr("10.0.0.0").is_err());
        assert!(QuarantineSpec::default().validate().is_err());
        let both = QuarantineSpec {
            target: PodTarget {
                pod: Some("a".into()),
                selector: Some("app=x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn spec_is_usable_from_playbooks() {
        let spec: QuarantineSpec = serde_yaml_ng::from_str(
            "{namespace: prod, pod: web-1, reason: INC-1, allow-dns: true, allow-from: [10.0.0.1/32], keep-labels: true}",
        )
        .unwrap();
        assert_eq!(spec.target.namespace.as_deref(), Some("prod"));
        assert!(spec.allow_dns && spec.keep_labels && !spec.exclusive);
        assert!(spec.validate().is_ok());
        let err =
            serde_yaml_ng::from_str::<QuarantineSpec>("{pod: a, allowdns: true}").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let v: super::super::VerifySpec = serde_yaml_ng::from_str("{pod: a}").unwrap();
        assert_eq!(v.pod, "a");
        assert!(
            serde_yaml_ng::from_str::<super::super::ReleaseSpec>("{pod: a, force: true}")
                .unwrap()
                .force
        );
    }

    #[test]
    fn long_names_stay_valid() {
        let long = "a".repeat(250);
        assert!(pod_policy_name(&long).len() <= 253);
        assert!(pod_label_value(&long).len() <= 63);
        assert_eq!(pod_label_value("web-1"), "web-1");
    }

    #[test]
    fn exit_codes_aggregate() {
        assert_eq!(
            aggregate_exit([Exit::Ok, Exit::Ok].into_iter(), 0),
            Exit::Ok
        );
        assert_eq!(
            aggregate_exit([Exit::Ok, Exit::Forbidden].into_iter(), 1),
            Exit::Partial
        );
        assert_eq!(
            aggregate_exit([Exit::Forbidden, Exit::Forbidden].into_iter(), 2),
            Exit::Forbidden
        );
    }
}
