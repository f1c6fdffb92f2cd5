//! `kirt rollback KIND/NAME [--to-revision N]`: `kubectl rollout undo` reproduced step for step
//! (k8s.io/kubectl/pkg/polymorphichelpers/rollback.go) so the resulting pod template is the one
//! kubectl would produce, plus what kubectl does not do: a template diff before the confirmation,
//! a resourceVersion guard, an Event on the workload, and an optional wait for a healthy rollout.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Patch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::diff::template_diff;
use super::wait::{wait_for, WaitResult};
use super::{Kind, Revision, Target, Workload, WAIT_TIMEOUT};
use crate::context::Ctx;
use crate::error::{to_json, Error, Result};
use crate::k8s::write::Versions;
use crate::k8s::{status_code, Cluster, EventType, KubeContext, Recorder, FIELD_MANAGER};
use crate::output::{Render, Table};

/// Annotations a Deployment keeps from itself rather than taking from the ReplicaSet
/// (kubectl's annotationsToSkip).
pub const ANNOTATIONS_TO_SKIP: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "deployment.kubernetes.io/revision",
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
];

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["target"]))]
pub struct RollbackSpec {
    /// The workload: deployment/NAME, statefulset/NAME or daemonset/NAME (deploy, sts, ds too)
    #[arg(value_name = "KIND/NAME")]
    pub target: String,
    /// Revision to go back to; 0 (the default) means the previous one, as with kubectl
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub to_revision: i64,
    /// After rolling back, wait until the rollout is complete (fails on ProgressDeadlineExceeded)
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits (e.g. 90s, 5m) [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Only if the workload's spec is still at this metadata.generation (the one a rollback
    /// reported; `kirt undo` passes it): refuses, changing nothing, if it moved on since
    #[arg(long, value_name = "N")]
    pub if_generation: Option<i64>,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    RolledBack,
    /// The current template already is the requested revision: nothing changed.
    Skipped,
    /// `--dry-run`: the server accepted the patch but stored nothing.
    DryRun,
}

#[derive(Debug, Clone, Serialize)]
pub struct RollbackResult {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub outcome: Outcome,
    pub message: String,
    /// The revision running before (None when it cannot be told).
    pub from_revision: Option<i64>,
    /// The revision whose template was restored (the controller records it as a new revision).
    pub to_revision: i64,
    /// Pod-template differences from the current template to the restored one.
    pub changes: Vec<String>,
    /// The workload's metadata.generation after the rollback (what `--if-generation` checks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The workload's resourceVersions around the rollback patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<Versions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitResult>,
}

impl Render for RollbackResult {
    fn table(&self) -> Table {
        let rev = |r: Option<i64>| r.map(|r| r.to_string()).unwrap_or_else(|| "?".into());
        let mut t = Table::fields([
            ("workload", format!("{}/{}", self.kind, self.name)),
            ("namespace", self.namespace.clone()),
            (
                "result",
                match self.outcome {
                    Outcome::RolledBack => "rolled back",
                    Outcome::Skipped => "skipped",
                    Outcome::DryRun => "dry run (nothing changed)",
                }
                .to_string(),
            ),
            (
                "revision",
                format!("{} → {}", rev(self.from_revision), self.to_revision),
            ),
            ("message", self.message.clone()),
        ]);
        for c in &self.changes {
            t.row(["change", c.as_str()]);
        }
        if let Some(w) = &self.wait {
            t.row(["rollout", w.message.as_str()]);
        }
        t
    }
}

pub async fn run(ctx: &Ctx, spec: RollbackSpec) -> Result<RollbackResult> {
    let target: Target = spec.target.parse()?;
    let timeout = spec.timeout.unwrap_or(WAIT_TIMEOUT);
    if spec.to_revision < 0 {
        return Err(revision_not_found(spec.to_revision, &target));
    }
    let ns = ctx.namespace_or(&spec.namespace).await?;
    let cluster = ctx.cluster().await?;
    let w = Workload::load(cluster, &ns, &target).await?;
    if let Some(expected) = spec.if_generation {
        if w.generation != expected {
            return Err(Error::Refused(format!(
                "{target} in namespace {ns} changed since (generation {} now, {expected} expected): nothing was changed; see `kirt rollback history {target}` and roll back by hand if still wanted",
                w.generation
            )));
        }
    }
    let rev = select_revision(&w, spec.to_revision)?.clone();

    if target.kind == Kind::Deployment && w.paused() {
        return Err(Error::Refused(format!(
            "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume deployment/{}' and try again (nothing was changed)",
            target.name
        )));
    }

    let mut result = RollbackResult {
        kind: target.kind.lower().into(),
        name: target.name.clone(),
        namespace: ns.clone(),
        outcome: Outcome::Skipped,
        message: String::new(),
        from_revision: w.current_revision(),
        to_revision: rev.revision,
        changes: Vec::new(),
        generation: None,
        resource_version: None,
        wait: None,
    };

    if already_current(&w, &rev) {
        result.message = format!(
            "skipped rollback (current template already matches revision {})",
            rev.revision
        );
        tracing::info!("{target}: {}", result.message);
    } else {
        result.changes = template_diff(w.template(), &rev.template);
        eprintln!(
            "{target} in namespace {ns}: pod template changes, revision {} → {}:",
            result
                .from_revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into()),
            rev.revision
        );
        for c in &result.changes {
            eprintln!("  {c}");
        }
        if result.changes.is_empty() {
            eprintln!("  (none beyond metadata)");
        }
        ctx.confirm(&format!(
            "roll back {target} in namespace {ns} to revision {}",
            rev.revision
        ))?;
        let (w, after) = apply_guarded(cluster, ctx.dry_run, w, &rev, spec.to_revision).await?;
        result.generation = after["metadata"]["generation"].as_i64();
        result.resource_version = Some(Versions {
            before: Some(w.resource_version.clone()),
            after: after["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_string),
        });
        if ctx.dry_run {
            result.outcome = Outcome::DryRun;
            result.message = format!(
                "server-side dry run: would roll back to revision {}; nothing was changed",
                rev.revision
            );
        } else {
            result.outcome = Outcome::RolledBack;
            result.message = format!("rolled back to revision {}", rev.revision);
            record_event(cluster, &w, &result).await;
        }
    }

    if spec.wait && !ctx.dry_run {
        result.wait = Some(wait_for(ctx, &ns, &target, timeout).await?);
    }
    Ok(result)
}

fn revision_not_found(r: i64, target: &Target) -> Error {
    Error::not_found(
        format!("unable to find specified revision {r} in history"),
        format!("list the revisions of {target} with `kirt rollback history {target}`"),
    )
}

/// kubectl's revision selection: 0 = the second-highest revision, otherwise that exact revision.
pub fn select_revision(w: &Workload, to: i64) -> Result<&Revision> {
    if to > 0 {
        return w
            .revisions
            .iter()
            .find(|r| r.revision == to)
            .ok_or_else(|| revision_not_found(to, &w.target));
    }
    // revisions are sorted ascending; the previous one is the second from the end
    if w.revisions.len() < 2 {
        let what = match w.target.kind {
            Kind::Deployment => format!(
                "no rollout history found for deployment {:?}",
                w.target.name
            ),
            _ => format!("no last revision to roll back to for {}", w.target),
        };
        return Err(Error::not_found(
            what,
            "a rollback needs an earlier revision; see `kirt rollback history`",
        ));
    }
    Ok(&w.revisions[w.revisions.len() - 2])
}

/// Whether the workload already runs `rev`'s template (kubectl then skips the rollback).
fn already_current(w: &Workload, rev: &Revision) -> bool {
    match w.target.kind {
        Kind::Deployment => super::templates_equal(&rev.template, w.template()),
        _ => rev.current,
    }
}

/// The JSON patch kubectl sends for a Deployment, preceded by a resourceVersion test so that a
/// concurrent change makes the whole patch fail instead of being overwritten.
pub fn deployment_patch(w: &Workload, rev: &Revision) -> Value {
    let mut template = rev.template.clone();
    super::remove_hash_label(&mut template);
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for k in ANNOTATIONS_TO_SKIP {
        if let Some(v) = w.annotations.get(*k) {
            annotations.insert((*k).to_string(), v.clone());
        }
    }
    for (k, v) in &rev.annotations {
        if !ANNOTATIONS_TO_SKIP.contains(&k.as_str()) {
            annotations.insert(k.clone(), v.clone());
        }
    }
    // kubectl uses "replace", which fails when the Deployment has no annotations at all; "add"
    // sets the member either way with the same result.
    json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": w.resource_version},
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ])
}

/// The ControllerRevision's data (a strategic merge patch replacing the template) as kubectl
/// applies it, plus the resourceVersion as an optimistic-concurrency precondition.
pub fn controller_revision_patch(w: &Workload, rev: &Revision) -> Value {
    let mut p = rev.data.clone().unwrap_or(Value::Null);
    if let Some(m) = p.as_object_mut() {
        m.insert(
            "metadata".into(),
            json!({"resourceVersion": w.resource_version}),
        );
    }
    p
}

/// How many times a rollback patch is sent again after only the workload's status moved on.
const STATUS_RETRIES: u32 = 5;

/// What a guarded rollback patch did.
#[derive(Debug)]
enum Patched {
    /// Written (or accepted in a dry run): the workload as the server stored it.
    Done(Value),
    /// The resourceVersion moved on since `w` was read: nothing was written.
    Moved,
}

/// Sends the rollback patch; when the resourceVersion moved on only because a controller wrote
/// the status (spec, labels, annotations and the chosen revision as confirmed), reads the workload again and
/// sends it again. Any other change refuses, changing nothing: the confirmation covered the
/// preview, not whatever the workload became since. Returns the workload as last read and as the
/// server stored it after the patch.
pub async fn apply_guarded(
    cluster: &Cluster,
    dry_run: bool,
    mut w: Workload,
    rev: &Revision,
    to_revision: i64,
) -> Result<(Workload, Value)> {
    for _ in 0..=STATUS_RETRIES {
        if let Patched::Done(after) = apply(cluster, dry_run, &w, rev).await? {
            return Ok((w, after));
        }
        let now = Workload::load(cluster, &w.namespace, &w.target).await?;
        let same_revision = select_revision(&now, to_revision)
            .map(|r| r.revision == rev.revision && r.template == rev.template)
            .unwrap_or(false);
        if !(same_revision && w.same_spec(&now)) {
            break;
        }
        tracing::debug!(
            "{} in namespace {}: only its status moved on; sending the rollback again",
            w.target,
            w.namespace
        );
        w = now;
    }
    Err(Error::failed(format!(
        "{} in namespace {} changed while kirt was rolling it back (its spec, labels or annotations are no longer the ones shown); nothing was changed — look at it again and re-run",
        w.target, w.namespace
    )))
}

/// Sends kubectl's rollback patch for `rev` (guarded by the resourceVersion `w` was read at).
async fn apply(cluster: &Cluster, dry_run: bool, w: &Workload, rev: &Revision) -> Result<Patched> {
    let ns = w.namespace.as_str();
    let name = w.target.name.as_str();
    let workloads = cluster.dynamic(ns, &w.target.kind.api_resource());
    let res = match w.target.kind {
        Kind::Deployment => {
            let patch = deployment_patch(w, rev);
            let mut url = format!(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}?fieldManager={FIELD_MANAGER}"
            );
            if dry_run {
                url.push_str("&dryRun=All");
            }
            let body = to_json("the rollback patch", &patch)?;
            let req = http::Request::patch(url)
                .header("Content-Type", "application/json-patch+json")
                .body(body)
                .map_err(|e| Error::failed(format!("building the rollback request: {e}")))?;
            cluster
                .client
                .request::<Value>(req)
                .await
                .map(Patched::Done)
        }
        Kind::StatefulSet | Kind::DaemonSet => {
            let patch = controller_revision_patch(w, rev);
            workloads
                .api()
                .patch(
                    name,
                    &crate::k8s::patch_params(dry_run),
                    &Patch::Strategic(&patch),
                )
                .await
                .map(|o| Patched::Done(crate::k8s::write::to_value(&o)))
        }
    };
    match res {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Patched::Moved),
        Err(e) if matches!(status_code(&e), Some(422 | 400)) => {
            // A failed JSON-patch `test` answers 422 without saying which operation failed: look
            // whether the resourceVersion moved on.
            let moved = match workloads.get(name).await {
                Ok(o) => {
                    o.metadata.resource_version.as_deref() != Some(w.resource_version.as_str())
                }
                Err(_) => false,
            };
            if w.target.kind == Kind::Deployment && moved {
                return Ok(Patched::Moved);
            }
            let message = match e {
                kube::Error::Api(s) => s.message,
                other => other.to_string(),
            };
            Err(Error::failed(format!(
                "failed restoring revision {} of {} in namespace {ns}: {message} (nothing was changed)",
                rev.revision, w.target
            )))
        }
        other => other.op(&workloads.op("patch", Some(name))),
    }
}

/// Records the rollback on the workload (`kubectl describe` / `kubectl get events` show it).
/// Best effort: a missing `create events` permission is a warning, not a failed rollback.
async fn record_event(cluster: &Cluster, w: &Workload, r: &RollbackResult) {
    let mut message = format!(
        "kirt rolled back {} from revision {} to revision {}",
        w.target,
        r.from_revision
            .map(|v| v.to_string())
            .unwrap_or_else(|| "?".into()),
        r.to_revision
    );
    if !r.changes.is_empty() {
        message.push_str(": ");
        message.push_str(&r.changes.join("; "));
    }
    let regarding = ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(w.target.kind.name().into()),
        name: Some(w.target.name.clone()),
        namespace: Some(w.namespace.clone()),
        uid: Some(w.uid.clone()),
        ..Default::default()
    };
    Recorder::new(cluster, false)
        .publish_or_warn(regarding, EventType::Normal, "RolledBack", &message)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(n: i64, image: &str, ann: &[(&str, &str)]) -> Revision {
        Revision {
            revision: n,
            source: format!("web-{n}"),
            current: false,
            change_cause: None,
            images: vec![image.into()],
            created: None,
            template: json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "h"}},
                             "spec": {"containers": [{"name": "web", "image": image}]}}),
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            data: None,
        }
    }

    fn workload(revs: Vec<Revision>) -> Workload {
        Workload {
            target: "deploy/web".parse().unwrap(),
            namespace: "ns".into(),
            uid: "u".into(),
            resource_version: "42".into(),
            generation: 1,
            spec: json!({"template": {}}),
            labels: BTreeMap::new(),
            annotations: [
                ("deployment.kubernetes.io/revision", "3"),
                ("kubernetes.io/change-cause", "v3"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            revisions: revs,
        }
    }

    #[test]
    fn previous_is_second_highest_and_unknown_is_not_found() {
        let w = workload(vec![rev(1, "a", &[]), rev(2, "b", &[]), rev(5, "c", &[])]);
        assert_eq!(select_revision(&w, 0).unwrap().revision, 2);
        assert_eq!(select_revision(&w, 1).unwrap().revision, 1);
        let e = select_revision(&w, 4).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::NotFound);
        assert!(e
            .to_string()
            .contains("unable to find specified revision 4 in history"));
        let w1 = workload(vec![rev(1, "a", &[])]);
        assert!(select_revision(&w1, 0)
            .unwrap_err()
            .to_string()
            .contains("no rollout history found for deployment \"web\""));
    }

    #[test]
    fn deployment_patch_copies_annotations_like_kubectl() {
        let r = rev(
            1,
            "a",
            &[
                ("deployment.kubernetes.io/revision", "1"),
                ("deployment.kubernetes.io/desired-replicas", "2"),
                ("kubernetes.io/change-cause", "v1"),
                ("team", "x"),
            ],
        );
        let w = workload(vec![r.clone()]);
        let p = deployment_patch(&w, &r);
        assert_eq!(
            p[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "42"})
        );
        assert_eq!(p[1]["path"], "/spec/template");
        assert!(p[1]["value"]["metadata"]["labels"]
            .get("pod-template-hash")
            .is_none());
        assert_eq!(
            p[2]["value"],
            json!({
                "deployment.kubernetes.io/revision": "3",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                "kubernetes.io/change-cause": "v1",
                "team": "x",
            })
        );
    }
}
