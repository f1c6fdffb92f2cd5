//! `kirt rollout wait KIND/NAME` (and `kirt rollback --wait`): follows a rollout the way
//! `kubectl rollout status` judges it, reports progress, and when it fails (ProgressDeadlineExceeded
//! or the timeout) says which pods are not ready and why.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;

use serde::{Deserialize, Serialize};

use super::{label_selector, Kind, Target, WAIT_TIMEOUT};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::k8s::Cluster;
use crate::output::{Render, Table};

/// The Progressing condition reason the Deployment controller sets when the deadline passes.
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["target"]))]
pub struct WaitSpec {
    /// The workload: deployment/NAME, statefulset/NAME or daemonset/NAME (deploy, sts, ds too)
    #[arg(value_name = "KIND/NAME")]
    pub target: String,
    /// Give up after this long (e.g. 90s, 5m) [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
}

/// Replica counts at the moment the rollout was judged.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    /// All pods, old and new (Deployments: old ones still pending termination).
    pub total: i32,
}

#[derive(Debug, Clone, Serialize)]
pub struct WaitResult {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub complete: bool,
    pub message: String,
    pub seconds: f64,
    pub counts: Counts,
}

impl Render for WaitResult {
    fn table(&self) -> Table {
        Table::fields([
            ("workload", format!("{}/{}", self.kind, self.name)),
            ("namespace", self.namespace.clone()),
            ("complete", self.complete.to_string()),
            ("status", self.message.clone()),
            (
                "replicas",
                format!(
                    "{} desired, {} updated, {} ready, {} available",
                    self.counts.desired,
                    self.counts.updated,
                    self.counts.ready,
                    self.counts.available
                ),
            ),
            ("waited", format!("{:.1}s", self.seconds)),
        ])
    }
}

/// kubectl's verdict on a rollout at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Waiting(String),
    Done(String),
    Failed(String),
}

pub async fn run(ctx: &Ctx, spec: WaitSpec) -> Result<WaitResult> {
    let target: Target = spec.target.parse()?;
    let ns = ctx.namespace_or(&spec.namespace).await?;
    wait_for(ctx, &ns, &target, spec.timeout.unwrap_or(WAIT_TIMEOUT)).await
}

/// Polls the workload until kubectl would call the rollout complete; fails on the progress
/// deadline or the timeout with the not-ready pods and their reasons.
pub async fn wait_for(
    ctx: &Ctx,
    ns: &str,
    target: &Target,
    timeout: Duration,
) -> Result<WaitResult> {
    let cluster = ctx.cluster().await?;
    let start = Instant::now();
    let stage = ctx.progress.stage("rollout", None);
    let mut last = String::new();
    loop {
        let (verdict, counts, selector) = match judge(cluster, ns, target).await {
            Ok(j) => j,
            // A blip (apiserver restarting, a 5xx) is not the rollout's verdict: keep polling
            // until the timeout; missing objects and permissions end the wait at once.
            Err(e @ (Error::Unreachable { .. } | Error::Kube { .. }))
                if start.elapsed() < timeout =>
            {
                tracing::warn!("{target}: cannot read the rollout status, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            Err(e) => {
                stage.finish();
                return Err(e);
            }
        };
        let msg = match &verdict {
            Verdict::Waiting(m) | Verdict::Done(m) | Verdict::Failed(m) => m.clone(),
        };
        let line = format!(
            "{target}: {msg} [generation {}/{} observed; {} desired, {} updated, {} ready, {} available]",
            counts.observed_generation,
            counts.generation,
            counts.desired,
            counts.updated,
            counts.ready,
            counts.available
        );
        if line != last {
            stage.message(&line);
            last = line;
        }
        match verdict {
            Verdict::Done(message) => {
                stage.finish();
                return Ok(WaitResult {
                    kind: target.kind.lower().into(),
                    name: target.name.clone(),
                    namespace: ns.into(),
                    complete: true,
                    message,
                    seconds: start.elapsed().as_secs_f64(),
                    counts,
                });
            }
            Verdict::Failed(message) => {
                stage.finish();
                let pods = not_ready_pods(cluster, ns, &selector).await;
                return Err(Error::failed(format!(
                    "rollout of {target} in namespace {ns} failed: {message}{}",
                    pods_suffix(&pods)
                )));
            }
            Verdict::Waiting(message) => {
                if start.elapsed() >= timeout {
                    stage.finish();
                    let pods = not_ready_pods(cluster, ns, &selector).await;
                    return Err(Error::failed(format!(
                        "rollout of {target} in namespace {ns} did not complete within {}: {message}{}",
                        humantime::format_duration(timeout),
                        pods_suffix(&pods)
                    )));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn pods_suffix(pods: &[String]) -> String {
    if pods.is_empty() {
        String::new()
    } else {
        format!("\npods not ready:\n  {}", pods.join("\n  "))
    }
}

/// Reads the workload once and judges it; also returns its pod selector.
async fn judge(cluster: &Cluster, ns: &str, target: &Target) -> Result<(Verdict, Counts, String)> {
    match target.kind {
        Kind::Deployment => {
            let d = cluster
                .namespaced::<Deployment>(ns)
                .get(&target.name)
                .await?;
            let sel = selector_of(&d.spec.selector)?;
            let (v, c) = deployment_verdict(&d);
            Ok((v, c, sel))
        }
        Kind::StatefulSet => {
            let s = cluster
                .namespaced::<StatefulSet>(ns)
                .get(&target.name)
                .await?;
            let sel = selector_of(&s.spec.selector)?;
            let (v, c) = statefulset_verdict(&s);
            Ok((v, c, sel))
        }
        Kind::DaemonSet => {
            let d = cluster
                .namespaced::<DaemonSet>(ns)
                .get(&target.name)
                .await?;
            let sel = selector_of(&d.spec.selector)?;
            let (v, c) = daemonset_verdict(&d);
            Ok((v, c, sel))
        }
    }
}

fn selector_of(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<String> {
    let v = serde_json::to_value(sel).unwrap_or_default();
    label_selector(&v).map_err(Error::failed)
}

/// kubectl's DeploymentStatusViewer.
pub fn deployment_verdict(d: &Deployment) -> (Verdict, Counts) {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    let desired = d.spec.replicas;
    let c = Counts {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        desired: desired.unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        total: st.replicas.unwrap_or(0),
    };
    if c.generation > c.observed_generation {
        return (
            Verdict::Waiting("waiting for the deployment spec update to be observed".into()),
            c,
        );
    }
    let deadline = st.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some(PROGRESS_DEADLINE_EXCEEDED)
    });
    if let Some(cond) = deadline {
        return (
            Verdict::Failed(format!(
                "deployment {name:?} exceeded its progress deadline ({PROGRESS_DEADLINE_EXCEEDED}: {})",
                cond.message.as_deref().unwrap_or("no message")
            )),
            c,
        );
    }
    if let Some(want) = desired {
        if c.updated < want {
            return (
                Verdict::Waiting(format!(
                    "{} out of {want} new replicas have been updated",
                    c.updated
                )),
                c,
            );
        }
    }
    if c.total > c.updated {
        return (
            Verdict::Waiting(format!(
                "{} old replicas are pending termination",
                c.total - c.updated
            )),
            c,
        );
    }
    if c.available < c.updated {
        return (
            Verdict::Waiting(format!(
                "{} of {} updated replicas are available",
                c.available, c.updated
            )),
            c,
        );
    }
    (
        Verdict::Done(format!("deployment {name:?} successfully rolled out")),
        c,
    )
}

/// kubectl's StatefulSetStatusViewer.
pub fn statefulset_verdict(s: &StatefulSet) -> (Verdict, Counts) {
    let spec = s.spec.clone();
    let st = s.status.clone().unwrap_or_default();
    let c = Counts {
        generation: s.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        desired: spec.replicas.unwrap_or(1),
        updated: st.updated_replicas.unwrap_or(0),
        ready: st.ready_replicas.unwrap_or(0),
        available: st
            .available_replicas
            .unwrap_or(st.ready_replicas.unwrap_or(0)),
        total: st.replicas,
    };
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let kind = strategy
        .type_
        .clone()
        .unwrap_or_else(|| "RollingUpdate".into());
    if kind != "RollingUpdate" {
        return (
            Verdict::Failed(format!(
                "rollout status is only available for the RollingUpdate strategy (this one uses {kind})"
            )),
            c,
        );
    }
    if c.observed_generation == 0 || c.generation > c.observed_generation {
        return (
            Verdict::Waiting("waiting for the statefulset spec update to be observed".into()),
            c,
        );
    }
    if c.ready < c.desired {
        return (
            Verdict::Waiting(format!(
                "waiting for {} pods to be ready",
                c.desired - c.ready
            )),
            c,
        );
    }
    if let Some(partition) = strategy.rolling_update.and_then(|r| r.partition) {
        if spec.replicas.is_some() {
            if c.updated < c.desired - partition {
                return (
                    Verdict::Waiting(format!(
                        "waiting for partitioned roll out to finish: {} out of {} new pods have been updated",
                        c.updated,
                        c.desired - partition
                    )),
                    c,
                );
            }
            return (
                Verdict::Done(format!(
                    "partitioned roll out complete: {} new pods have been updated",
                    c.updated
                )),
                c,
            );
        }
    }
    let (cur, upd) = (
        st.current_revision.unwrap_or_default(),
        st.update_revision.unwrap_or_default(),
    );
    if cur != upd {
        return (
            Verdict::Waiting(format!(
                "waiting for statefulset rolling update to complete {} pods at revision {upd}",
                c.updated
            )),
            c,
        );
    }
    (
        Verdict::Done(format!(
            "statefulset rolling update complete {} pods at revision {upd}",
            c.ready
        )),
        c,
    )
}

/// kubectl's DaemonSetStatusViewer.
pub fn daemonset_verdict(d: &DaemonSet) -> (Verdict, Counts) {
    let name = d.metadata.name.as_deref().unwrap_or_default();
    let st = d.status.clone().unwrap_or_default();
    let c = Counts {
        generation: d.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        desired: st.desired_number_scheduled,
        updated: st.updated_number_scheduled.unwrap_or(0),
        ready: st.number_ready,
        available: st.number_available.unwrap_or(0),
        total: st.current_number_scheduled,
    };
    let kind = d
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.clone())
        .unwrap_or_else(|| "RollingUpdate".into());
    if kind != "RollingUpdate" {
        return (
            Verdict::Failed(format!(
                "rollout status is only available for the RollingUpdate strategy (this one uses {kind})"
            )),
            c,
        );
    }
    if c.generation > c.observed_generation {
        return (
            Verdict::Waiting("waiting for the daemon set spec update to be observed".into()),
            c,
        );
    }
    if c.updated < c.desired {
        return (
            Verdict::Waiting(format!(
                "{} out of {} new pods have been updated",
                c.updated, c.desired
            )),
            c,
        );
    }
    if c.available < c.desired {
        return (
            Verdict::Waiting(format!(
                "{} of {} updated pods are available",
                c.available, c.desired
            )),
            c,
        );
    }
    (
        Verdict::Done(format!("daemon set {name:?} successfully rolled out")),
        c,
    )
}

/// The workload's pods that are not Ready, each with why (best effort: a failure to list is
/// reported in the list rather than hiding the rollout's own error).
async fn not_ready_pods(cluster: &Cluster, ns: &str, selector: &str) -> Vec<String> {
    match cluster.namespaced::<Pod>(ns).list_labelled(selector).await {
        Ok(list) => {
            let mut pods: Vec<String> = list.iter().filter_map(describe_not_ready).collect();
            pods.sort();
            pods
        }
        Err(e) => vec![format!("(cannot list pods: {e})")],
    }
}

/// `web-abc: Running, not ready; container web: waiting ImagePullBackOff (…), restarts 3`, or
/// `None` for a ready pod.
pub fn describe_not_ready(p: &Pod) -> Option<String> {
    let st = p.status.clone().unwrap_or_default();
    let ready = st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready || p.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let mut parts = vec![format!(
        "{}: {}, not ready",
        p.metadata.name.as_deref().unwrap_or_default(),
        st.phase.as_deref().unwrap_or("Pending")
    )];
    let statuses: Vec<_> = st
        .init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .collect();
    for cs in &statuses {
        if cs.ready {
            continue;
        }
        let state = cs.state.clone().unwrap_or_default();
        let why = if let Some(w) = state.waiting {
            format!(
                "waiting {}{}",
                w.reason.as_deref().unwrap_or("(no reason)"),
                w.message.map(|m| format!(" ({m})")).unwrap_or_default()
            )
        } else if let Some(t) = state.terminated {
            format!(
                "terminated {} (exit code {})",
                t.reason.as_deref().unwrap_or("(no reason)"),
                t.exit_code
            )
        } else {
            "running but not ready (readiness probe failing)".into()
        };
        parts.push(format!(
            "container {}: {why}, restarts {}",
            cs.name, cs.restart_count
        ));
    }
    if statuses.is_empty() {
        if let Some(c) = st
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status != "True")
        {
            parts.push(format!(
                "not scheduled: {}",
                c.message
                    .as_deref()
                    .or(c.reason.as_deref())
                    .unwrap_or("unknown")
            ));
        }
    }
    Some(parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(v: serde_json::Value) -> Deployment {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_verdicts_follow_kubectl() {
        let base = |status: serde_json::Value, gen: i64| {
            deploy(json!({"metadata": {"name": "web", "generation": gen},
                          "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "w"}}, "template": {}},
                          "status": status}))
        };
        let (v, _) = deployment_verdict(&base(json!({"observedGeneration": 1}), 2));
        assert!(matches!(v, Verdict::Waiting(m) if m.contains("observed")));
        let (v, _) = deployment_verdict(&base(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1}),
            2,
        ));
        assert_eq!(
            v,
            Verdict::Waiting("1 out of 2 new replicas have been updated".into())
        );
        let (v, _) = deployment_verdict(&base(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2}),
            2,
        ));
        assert_eq!(
            v,
            Verdict::Waiting("1 old replicas are pending termination".into())
        );
        let (v, _) = deployment_verdict(&base(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}),
            2,
        ));
        assert_eq!(
            v,
            Verdict::Waiting("1 of 2 updated replicas are available".into())
        );
        let (v, _) = deployment_verdict(&base(
            json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}),
            2,
        ));
        assert!(matches!(v, Verdict::Done(_)));
        let (v, _) = deployment_verdict(&base(
            json!({"observedGeneration": 2, "conditions": [{"type": "Progressing", "status": "False",
                   "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]}),
            2,
        ));
        assert!(
            matches!(v, Verdict::Failed(m) if m.contains("ProgressDeadlineExceeded") && m.contains("timed out"))
        );
    }

    #[test]
    fn not_ready_pods_say_why() {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1"},
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                       "containerStatuses": [{"name": "web", "ready": false, "restartCount": 2, "image": "x", "imageID": "",
                                              "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }))
        .unwrap();
        assert_eq!(
            describe_not_ready(&p).unwrap(),
            "web-1: Pending, not ready; container web: waiting ImagePullBackOff, restarts 2"
        );
        let ready: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-2"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert!(describe_not_ready(&ready).is_none());
    }
}
