//! What `kirt quarantine` does beyond the network: `--revoke-credentials` (the ServiceAccount),
//! `--isolate-node` (the node; applied per pod beside the cordon) and `--delete-pod`. Everything
//! is planned and every permission checked before the confirmation, which shows the whole plan
//! (blast radius included); the changes come after the pods are quarantined.

use k8s_openapi::api::core::v1::Pod;

use super::apply::{QuarantineReport, QuarantineSpec};
use super::credentials::plan::AccountPlan;
use super::credentials::{plan, revoke};
use super::{pod_label_value, Outcome};
use crate::actions::evidence::{bundle_time, parse_object_name};
use crate::actions::node::Containment;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::k8s::access::{self, Access};
use crate::k8s::keys::{QUARANTINE_TAINT, UNDER_INVESTIGATION};
use crate::k8s::{name_of, node_of, Cluster};
use crate::store::{self, S3Options};

/// The plan made before confirmation.
pub struct Plan {
    pub accounts: Vec<AccountPlan>,
    /// Pods to delete and the evidence bundle found for each.
    pub deletions: Vec<(Pod, String)>,
    lines: Vec<String>,
}

impl Plan {
    /// The confirmation question: what quarantine does to the pods, then everything else.
    pub fn question(&self, pods: String) -> String {
        if self.lines.is_empty() {
            pods
        } else {
            format!("{pods}\n{}\n", self.lines.join("\n"))
        }
    }
}

impl QuarantineSpec {
    /// What to do to each pod's node, if anything.
    pub fn node_containment(&self) -> Option<Containment> {
        if self.isolate_node {
            Some(Containment::Isolate)
        } else if self.cordon_node {
            Some(Containment::Cordon)
        } else {
            None
        }
    }
}

/// Plans the credentials, node and deletion parts and checks their permissions (nothing is
/// changed here; a missing permission is a Forbidden error naming it).
pub async fn prepare(
    cluster: &Cluster,
    dry: bool,
    spec: &QuarantineSpec,
    pods: &[Pod],
) -> Result<Plan> {
    let mut lines = Vec::new();
    let mut deletions = Vec::new();
    if spec.delete_pod {
        for pod in pods {
            deletions.push((pod.clone(), evidence_for(spec, pod).await?));
        }
    }
    let accounts = if spec.revoke_credentials {
        plan::plan(cluster, pods).await?
    } else {
        Vec::new()
    };
    for a in &accounts {
        lines.extend(a.preview());
    }
    let mut needed: Vec<(Access, String)> = Vec::new();
    if spec.isolate_node {
        let mut nodes: Vec<&str> = pods.iter().filter_map(node_of).collect();
        nodes.sort();
        nodes.dedup();
        for n in nodes {
            lines.push(format!(
                "isolate node {n}: cordon it, taint it {QUARANTINE_TAINT}=POD:NoSchedule, label it {UNDER_INVESTIGATION}=true"
            ));
            needed.push((
                Access::new("patch", "", "nodes").name(n),
                format!("isolate node {n}"),
            ));
        }
    }
    for (pod, evidence) in &deletions {
        let (ns, name) = name_of(pod);
        lines.push(format!(
            "then delete pod {ns}/{name} (evidence: {evidence}): its bound tokens die with it"
        ));
        needed.push((
            Access::new("delete", "", "pods").ns(&ns),
            format!("delete pod {ns}/{name}"),
        ));
    }
    access::require_all(cluster, &needed).await?;
    revoke::preflight(cluster, &accounts, dry).await?;
    Ok(Plan {
        accounts,
        deletions,
        lines,
    })
}

/// The evidence bundle of `pod` that `--delete-pod` insists on (refused without one, unless
/// `--force`): a bundle named for this pod, collected after it was created.
async fn evidence_for(spec: &QuarantineSpec, pod: &Pod) -> Result<String> {
    let (ns, name) = name_of(pod);
    if spec.force {
        return Ok("none: --force".into());
    }
    let Some(url) = &spec.evidence_from else {
        return Err(Error::Refused(format!(
            "--delete-pod destroys what pod {ns}/{name} holds in memory, on disk and in its processes: \
             give --evidence-from STORE (where kirt evidence collect put its bundle), or --force"
        )));
    };
    let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let prefix = format!("evidence-{ns}-{name}-");
    let store = store::open(url, &S3Options::default()).await?;
    let found = store
        .list("")
        .await?
        .into_iter()
        .filter_map(|o| {
            let file = o.key.rsplit('/').next().unwrap_or(&o.key).to_string();
            let (bundle, _) = parse_object_name(&file)?;
            let stamp = bundle.strip_prefix(&prefix)?;
            let at = bundle_time(bundle).filter(|_| !stamp.contains('-'))?;
            created.is_none_or(|c| at >= c).then(|| o.key.clone())
        })
        .max();
    found.ok_or_else(|| {
        Error::Refused(format!(
            "no evidence bundle of pod {ns}/{name} collected since it started in {url}: \
             run kirt evidence collect {name} -n {ns} --to {url} first, or give --force"
        ))
    })
}

/// After the pods are quarantined: revoke the credentials, then delete the pods asked for.
pub async fn finish(
    ctx: &Ctx,
    plan: &Plan,
    report: &mut QuarantineReport,
    by: &str,
    at: &str,
) -> Result<()> {
    for a in &plan.accounts {
        report
            .credentials
            .push(revoke::execute(ctx, a, by, at).await);
    }
    let cluster = ctx.cluster().await?;
    for (pod, evidence) in &plan.deletions {
        let (ns, name) = name_of(pod);
        let Some(row) = report
            .pods
            .iter_mut()
            .find(|r| r.namespace == ns && r.pod == name && r.outcome != Outcome::Failed)
        else {
            continue;
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let what = match cluster.namespaced::<Pod>(&ns).delete_uid(&name, &uid, ctx.dry_run).await {
            Ok(()) => format!(
                "pod {}deleted (evidence: {evidence}); its bound tokens are rejected once it is gone",
                if ctx.dry_run { "would be " } else { "" }
            ),
            Err(e) => {
                row.exit = e.exit();
                row.outcome = Outcome::Failed;
                format!("quarantined, but deleting it failed: {e}")
            }
        };
        row.detail = format!("{}; {what}", row.detail);
        row.changes.push(what);
    }
    Ok(())
}

/// The taint value naming the pod that asked for its node's isolation.
pub fn taint_value(pod: &str) -> String {
    pod_label_value(pod)
}
