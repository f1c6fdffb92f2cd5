//! `evidence collect --audit-log`: what the pod's identity did, from the apiserver's audit log.
//! The log is read once for all pods of a collection (before any bundle is started), each pod's
//! events go into its bundle as `audit/events.jsonl` (time order, each event once, Secret
//! bodies redacted) with `audit/summary.json`, and the manifest records which files were read
//! (size, sha256), the window, what was selected and what was redacted.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use serde::{Deserialize, Serialize};

use super::bundle::{BundleWriter, Spooled};
use super::gather;
use crate::audit::{self, Object, ScanStats, Sources, Subject, Summary, Window};
use crate::context::Ctx;
use crate::error::{join, Result};
use crate::k8s::{name_of, Cluster};

/// What the manifest says about the audit events in the bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    /// The files read: size, sha256 (when read to the end), lines, corrupt and skipped lines.
    pub files: Vec<audit::FileStats>,
    pub window: Window,
    /// Whose events were selected.
    pub subject: Subject,
    /// Events in `audit/events.jsonl` (a request logs one per stage).
    pub events: u64,
    pub requests: u64,
    /// Events whose request/response bodies were replaced by their metadata.
    pub redacted: u64,
    pub redaction: String,
}

/// What collect reports about one pod's audit events.
#[derive(Debug, Clone, Serialize)]
pub struct AuditResult {
    pub summary: Summary,
    pub redacted: u64,
    pub scan: ScanStats,
}

const REDACTION: &str = "requestObject/responseObject of Secrets, ServiceAccount tokens \
     (serviceaccounts/token) and TokenReviews are replaced by their metadata (without \
     kubectl.kubernetes.io/last-applied-configuration); such events carry the kirt.dev/redacted \
     annotation. Every other event is kept byte for byte as the apiserver wrote it.";

/// The checked `--audit-log`/`--audit-since` of one collection.
pub struct AuditPlan {
    sources: Sources,
    window: Window,
}

impl AuditPlan {
    /// `None` without `--audit-log`. Events from the start of the command on are kirt's own
    /// reads: `begun` closes the window.
    pub fn check(
        logs: &[PathBuf],
        since: Option<&str>,
        begun: jiff::Timestamp,
    ) -> Result<Option<AuditPlan>> {
        if logs.is_empty() {
            if since.is_some() {
                return Err(crate::Error::usage("--audit-since goes with --audit-log"));
            }
            return Ok(None);
        }
        let since = since.map(|s| audit::parse_since(s, begun)).transpose()?;
        Ok(Some(AuditPlan {
            sources: Sources::resolve(logs)?,
            window: Window {
                since,
                until: Some(begun),
            },
        }))
    }
}

/// One pod's selected events, ready for its bundle.
pub struct PodAudit {
    written: audit::Written,
    record: AuditRecord,
    result: AuditResult,
}

/// Whose audit events belong to the pod: its ServiceAccount's requests (also impersonated), the
/// requests on the pod, its ServiceAccount and the Secrets and ConfigMaps it refers to, and the
/// requests from its IP (not for a host-network pod, whose IP is the node's).
pub fn subject(pod: &Pod, account: Option<&ServiceAccount>) -> Subject {
    let (ns, name) = name_of(pod);
    let sa = gather::service_account_name(pod);
    let mut objects = vec![
        Object::new("pods", &ns, &name),
        Object::new("serviceaccounts", &ns, &sa),
    ];
    let refs = gather::references(pod);
    for (key, resource) in [("secrets", "secrets"), ("configMaps", "configmaps")] {
        for r in refs[key].as_array().into_iter().flatten() {
            if let Some(n) = r["name"].as_str() {
                objects.push(Object::new(resource, &ns, n));
            }
        }
    }
    if let Some(a) = account {
        let names = a.secrets.iter().flatten().filter_map(|s| s.name.clone());
        let pulls = a
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|s| s.name.clone());
        for n in names.chain(pulls) {
            objects.push(Object::new("secrets", &ns, &n));
        }
    }
    objects.dedup();
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let status = pod.status.as_ref();
    let mut ips: Vec<String> = status
        .and_then(|s| s.pod_ip.clone())
        .into_iter()
        .chain(
            status
                .and_then(|s| s.pod_ips.clone())
                .into_iter()
                .flatten()
                .map(|p| p.ip),
        )
        .filter(|ip| !ip.is_empty() && !host_network)
        .collect();
    ips.sort();
    ips.dedup();
    Subject {
        users: vec![Subject::service_account_user(&ns, &sa)],
        objects,
        ips,
    }
}

/// Reads the logs once and returns each pod's events, in the order of `pods`.
pub async fn select(
    ctx: &Ctx,
    cluster: &Cluster,
    plan: AuditPlan,
    pods: &[Pod],
) -> Result<Vec<PodAudit>> {
    let mut subjects = Vec::new();
    for pod in pods {
        let (ns, _) = name_of(pod);
        let sa = gather::service_account_name(pod);
        // its token Secrets are named on the account; without `get serviceaccounts` the pod's
        // own references still count
        let account = match cluster.namespaced::<ServiceAccount>(&ns).get_opt(&sa).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("audit selection without the ServiceAccount's token Secrets: {e}");
                None
            }
        };
        subjects.push(subject(pod, account.as_ref()));
    }
    let (stats, found) = audit::select(
        ctx.progress.as_ref(),
        &ctx.shutdown,
        plan.sources,
        subjects.clone(),
        plan.window,
    )
    .await?;
    tracing::info!("{}", stats.describe());
    let mut out = Vec::new();
    for (f, subject) in found.into_iter().zip(subjects) {
        let redacted = f.redacted;
        let stop = ctx.shutdown.clone();
        let written = join(
            "writing the audit events",
            tokio::task::spawn_blocking(move || audit::write_events(f, &stop)),
        )
        .await??;
        out.push(PodAudit {
            record: AuditRecord {
                files: stats.files.clone(),
                window: plan.window,
                subject,
                events: written.summary.events,
                requests: written.summary.requests,
                redacted,
                redaction: REDACTION.into(),
            },
            result: AuditResult {
                summary: written.summary.clone(),
                redacted,
                scan: stats.clone(),
            },
            written,
        });
    }
    Ok(out)
}

impl PodAudit {
    /// `audit/events.jsonl` and `audit/summary.json` into the bundle; the manifest's record and
    /// collect's result back.
    pub async fn write(self, w: &mut BundleWriter<'_>) -> Result<(AuditRecord, AuditResult)> {
        let summary = serde_json::json!({
            "subject": self.record.subject,
            "window": self.record.window,
            "summary": self.result.summary,
            "redacted": self.result.redacted,
            "scan": self.result.scan,
        });
        w.spooled(
            "audit/events.jsonl",
            Spooled {
                file: self.written.file,
                size: self.written.size,
                sha256: self.written.sha256,
                first: None,
            },
        )
        .await?;
        w.json("audit/summary.json", &summary).await?;
        Ok((self.record, self.result))
    }
}

/// Notes for collect's table: the verb × resource counts and what was read.
pub fn notes(pod: &str, a: &AuditResult) -> Vec<String> {
    let mut t = a.summary.table();
    t.note(a.scan.describe());
    if a.redacted > 0 {
        t.note(format!(
            "{} event(s) with Secret or token bodies kept as metadata only",
            a.redacted
        ));
    }
    vec![format!(
        "\naudit events of {pod}:\n{}",
        t.render().trim_end()
    )]
}
