//! `kirt quarantine status [-n NS | -A]`: which pods are quarantined, since when, by whom, why,
//! where they run and whether they still run.

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::error::Result;
use crate::k8s::keys::{
    ORIGINAL_LABELS, QUARANTINED, QUARANTINED_AT, QUARANTINED_BY, QUARANTINED_REASON,
};
use crate::k8s::{annotation, ensure_namespace, name_of, node_of, PodTarget};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StatusSpec {
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// All namespaces (playbooks; on the command line use -A)
    #[arg(skip)]
    pub all_namespaces: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct QuarantinedPod {
    pub namespace: String,
    pub pod: String,
    pub since: String,
    pub by: String,
    pub reason: String,
    pub node: String,
    pub phase: String,
    /// Whether kirt's record (original labels) is present, i.e. `kirt release` can restore it.
    pub releasable: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The namespace looked at; empty for all namespaces.
    pub namespace: String,
    pub pods: Vec<QuarantinedPod>,
}

impl Render for StatusReport {
    fn table(&self) -> Table {
        let mut t = if self.pods.is_empty() {
            Table::default()
        } else {
            Table::new(["NAMESPACE", "POD", "SINCE", "BY", "REASON", "NODE", "PHASE"])
        };
        for p in &self.pods {
            t.row([
                &p.namespace,
                &p.pod,
                &p.since,
                &p.by,
                &p.reason,
                &p.node,
                &p.phase,
            ]);
        }
        let scope = if self.namespace.is_empty() {
            "any namespace".to_string()
        } else {
            format!("namespace {}", self.namespace)
        };
        if self.pods.is_empty() {
            t.note(format!("no quarantined pods in {scope}"));
        } else {
            t.note(format!(
                "\n{} quarantined pod(s) in {scope}; release with: kirt release POD -n NS",
                self.pods.len()
            ));
        }
        t
    }
}

pub async fn run(ctx: &Ctx, spec: StatusSpec) -> Result<StatusReport> {
    let cluster = ctx.cluster().await?;
    let target = PodTarget {
        namespace: spec.namespace.clone(),
        all_namespaces: spec.all_namespaces,
        ..Default::default()
    };
    let scope = target.scope(ctx).await?;
    let pods = cluster
        .scoped::<Pod>(scope.as_deref())
        .list_labelled(&format!("{QUARANTINED}=true"))
        .await?;
    if pods.is_empty() {
        if let Some(ns) = &scope {
            ensure_namespace(cluster, ns).await?;
        }
    }
    let mut rows: Vec<QuarantinedPod> = pods
        .iter()
        .map(|p| {
            let (namespace, pod) = name_of(p);
            let ann = |k| annotation(&p.metadata, k).unwrap_or_default().to_string();
            QuarantinedPod {
                namespace,
                pod,
                since: ann(QUARANTINED_AT),
                by: ann(QUARANTINED_BY),
                reason: ann(QUARANTINED_REASON),
                node: node_of(p).unwrap_or_default().to_string(),
                phase: p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                releasable: annotation(&p.metadata, ORIGINAL_LABELS).is_some(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    Ok(StatusReport {
        namespace: scope.unwrap_or_default(),
        pods: rows,
    })
}
