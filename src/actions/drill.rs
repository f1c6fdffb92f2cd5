//! `kirt drill`: a disaster-recovery rehearsal with a number at the end. verify → restore into a
//! scratch etcd → a scratch kube-apiserver on it → count objects per resource → compare → report
//! RPO (age of the backup) and RTO (restore-to-serving). Two comparisons, both exact on a busy
//! cluster: the restored keys per resource at the backup's revision against the counts recorded
//! then, and what the apiserver serves against the restored keys at the snapshot's head (the
//! snapshot may hold a few writes newer than the recorded revision).
//! With `--to-revision R` / `--to-time T` the drill rehearses a point-in-time restore: the chain
//! is replayed into the scratch etcd up to the target ([`replay::open`], as `kirt restore` does),
//! the full backup's counts are compared at its revision in that member (the replay keeps the
//! history), and what the apiserver serves against the replayed keys at the target; the RPO is
//! the age of the target's revision.
//! Everything runs on free loopback ports and is stopped and removed afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::{Deserialize, Serialize};

use crate::actions::backup::manifest::Manifest;
use crate::actions::backup::replay::{self, Reached, Target, Tools};
use crate::actions::backup::source::{BackupSource, Located, Unsigned};
use crate::actions::backup::verify::{
    keyspace_checks, refuse_failed, stream_and_check, Check, ETCDUTL_BIN, ETCD_BIN, LATEST,
};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{Error, Exit, Result};
use crate::k8s::Cluster;
use crate::output::{Render, Table};
use crate::scratch::{Observed, ScratchApiserver, ScratchEtcd};
use crate::signal::Shutdown;

const APISERVER_BIN: &str = "kube-apiserver";
const SERVICE_CIDR: &str = "10.0.0.0/16";

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct DrillSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    #[serde(flatten)]
    pub unsigned: Unsigned,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(default_value = LATEST, value_name = "ID")]
    pub backup: String,
    /// Drill a point-in-time restore: the state as of this etcd revision (the chain of ID, or
    /// with "latest" the newest chain that reaches it, replayed up to it)
    #[arg(long, value_name = "REVISION", conflicts_with = "to_time")]
    pub to_revision: Option<i64>,
    /// Drill a point-in-time restore: the newest revision the stream received at or before this
    /// time (RFC 3339)
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// kube-apiserver binary for the scratch control plane (default: kube-apiserver on PATH)
    #[arg(long, value_name = "PATH", default_value = APISERVER_BIN)]
    pub apiserver_bin: PathBuf,
    /// etcd binary (default: etcd on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Service CIDR given to the scratch apiserver (use the source cluster's)
    #[arg(long, value_name = "CIDR", default_value = SERVICE_CIDR)]
    pub service_cluster_ip_range: String,
    /// Also write the report here (.md for Markdown, .html for HTML)
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    /// Where the plaintext snapshot and the scratch control plane live (default: $TMPDIR);
    /// removed afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

impl Default for DrillSpec {
    fn default() -> Self {
        DrillSpec {
            source: BackupSource::default(),
            unsigned: Unsigned::default(),
            backup: LATEST.into(),
            to_revision: None,
            to_time: None,
            decrypt: DecryptOptions::default(),
            apiserver_bin: APISERVER_BIN.into(),
            etcd_bin: ETCD_BIN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            service_cluster_ip_range: SERVICE_CIDR.into(),
            report: None,
            work_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceCount {
    pub resource: String,
    /// Recorded in the manifest, at the backup's revision (null: made with `--count-keys off`).
    pub at_backup: Option<i64>,
    /// Keys in the restored etcd at that revision.
    pub restored: i64,
    /// Keys in the restored etcd at the snapshot's head.
    pub in_snapshot: i64,
    /// Objects the scratch apiserver lists.
    pub served: i64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub backup: String,
    pub cluster: String,
    pub ok: bool,
    /// Whether a trusted key vouched for the backup's manifest (else --allow-unsigned).
    pub signed: bool,
    /// With --to-revision/--to-time: the revision the replay reached and when it was received.
    pub point_in_time: Option<Reached>,
    /// Age of the backup (of the point in time) when the drill started (what would be lost).
    pub rpo_seconds: f64,
    /// From the start of the restore to the scratch apiserver serving.
    pub rto_seconds: f64,
    pub verify_seconds: f64,
    pub apiserver_version: String,
    pub checks: Vec<Check>,
    pub resources: Vec<ResourceCount>,
}

impl Render for DrillReport {
    fn table(&self) -> Table {
        let mut t = Table::new(["RESOURCE", "AT BACKUP", "RESTORED", "SERVED", "RESULT"]);
        for r in &self.resources {
            t.row([
                r.resource.clone(),
                r.at_backup.map_or("-".into(), |n| n.to_string()),
                r.restored.to_string(),
                r.served.to_string(),
                if r.ok { "ok" } else { "MISMATCH" }.into(),
            ]);
        }
        for r in self.resources.iter().filter(|r| !r.ok) {
            t.note(format!(
                "MISMATCH {}: {} at backup, {} restored at that revision; {} served, {} in the snapshot",
                r.resource,
                r.at_backup.map_or("not counted".into(), |n| n.to_string()),
                r.restored,
                r.served,
                r.in_snapshot
            ));
        }
        for c in self.checks.iter().filter(|c| !c.ok) {
            t.note(format!(
                "FAILED {}: expected {}, got {}",
                c.check, c.expected, c.actual
            ));
        }
        if let Some(p) = &self.point_in_time {
            t.note(format!(
                "\npoint in time: revision {} (received {})",
                p.revision,
                p.time
                    .map_or("at an unknown time".into(), |t| t.to_string())
            ));
        }
        t.note(format!(
            "\nbackup {}/{} ({}): {}\nRPO {}  (age of the backup or point in time)\nRTO {}  (restore to apiserver serving, {})\nverify {:.1}s, {} checks",
            self.cluster,
            self.backup,
            signed_text(self.signed),
            if self.ok { "drill passed" } else { "DRILL FAILED" },
            human_secs(self.rpo_seconds),
            human_secs(self.rto_seconds),
            self.apiserver_version,
            self.verify_seconds,
            self.checks.len()
        ));
        t
    }

    fn exit(&self) -> Exit {
        if self.ok {
            Exit::Ok
        } else {
            Exit::VerifyFailed
        }
    }
}

fn human_secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(s as u64)).to_string()
    }
}

pub async fn run(ctx: &Ctx, spec: DrillSpec) -> Result<DrillReport> {
    let started = jiff::Timestamp::now();
    let target = Target::from_flags(spec.to_revision, spec.to_time.as_deref())?;
    spec.unsigned.check(&spec.source, "drill")?;
    let tmp = crate::scratch::work_dir("kirt-drill-", spec.work_dir.as_deref())?;
    let restore_started = Instant::now();
    let (loc, etcd, rto_from, mut checks, verify_seconds, reached) = match target {
        Target::End => {
            let loc = spec.source.locate(&spec.backup).await?;
            has_counts(&loc)?;
            let decryption = loc.decryption(&spec.decrypt)?;
            let snap = tmp.path().join("snapshot.db");
            let streamed = stream_and_check(ctx, &loc, decryption, Some(snap.clone())).await?;
            let verify_seconds = restore_started.elapsed().as_secs_f64();
            if !streamed.ok {
                return Err(Error::VerifyFailed(format!(
                    "backup {} does not match its manifest; drill stopped before restoring",
                    loc.entry.id
                )));
            }
            let restore_started = Instant::now();
            let etcd = ScratchEtcd::restore(
                &ctx.shutdown,
                &spec.etcd_bin,
                &spec.etcdutl_bin,
                &snap,
                tmp.path(),
                "kirt-drill",
                &[],
            )
            .await?;
            (
                loc,
                etcd,
                restore_started,
                streamed.checks,
                verify_seconds,
                None,
            )
        }
        _ => {
            let tools = Tools {
                etcd: &spec.etcd_bin,
                etcdutl: &spec.etcdutl_bin,
            };
            let opened = replay::open(
                ctx,
                &spec.source,
                &spec.backup,
                target,
                &spec.decrypt,
                &tools,
                &tmp.path().join("replay"),
            )
            .await?;
            let refused = has_counts(&opened.base).and(refuse_failed(&opened.base, &opened.checks));
            if let Err(e) = refused {
                opened.member.stop().await;
                return Err(e);
            }
            let reached = opened.member.reached;
            (
                opened.base,
                opened.member.etcd,
                // the restore's clock starts once the full backup was fetched and checked
                restore_started + opened.verified_in,
                opened.checks,
                opened.verified_in.as_secs_f64(),
                Some(reached),
            )
        }
    };
    let restored = serve(
        &ctx.shutdown,
        &spec,
        &loc.manifest,
        &etcd,
        tmp.path(),
        rto_from,
    )
    .await;
    etcd.stop().await;
    let restored = restored?;
    checks.extend(restored.checks);
    let resources = compare_counts(&loc.manifest, &restored.observed, restored.served);
    let ok = checks.iter().all(|c| c.ok) && resources.iter().all(|r| r.ok);
    let point = reached
        .and_then(|r| r.time)
        .unwrap_or(loc.manifest.finished_at);
    let rpo = started.duration_since(point).as_secs_f64().max(0.0);
    let report = DrillReport {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        ok,
        signed: loc.signed,
        point_in_time: reached,
        rpo_seconds: rpo,
        rto_seconds: restored.rto_seconds,
        verify_seconds,
        apiserver_version: restored.version,
        checks,
        resources,
    };
    if let Some(path) = &spec.report {
        write_report(path, &report)?;
    }
    Ok(report)
}

/// A drill compares with the counts the manifest recorded; a manifest without them that does not
/// say it was made with `--count-keys off` was not made by kirt, or was edited.
fn has_counts(loc: &Located) -> Result<()> {
    if loc.manifest.etcd.prefix_counts.is_empty() && !loc.manifest.etcd.uncounted() {
        return Err(Error::VerifyFailed(format!(
            "backup {}'s manifest records no per-resource counts: there is nothing to compare the restored cluster with (not made by kirt, or edited)",
            loc.entry.id
        )));
    }
    Ok(())
}

/// What the scratch control plane on the restored snapshot showed.
struct Restored {
    checks: Vec<Check>,
    observed: Observed,
    served: BTreeMap<String, i64>,
    version: String,
    rto_seconds: f64,
}

/// Scratch etcd (keys and HashKV at the recorded revision; the head is the backup's snapshot or
/// the replayed point in time) → scratch apiserver (objects it serves), stopped before this
/// returns, also on failure. The caller stops the etcd.
async fn serve(
    stop: &Shutdown,
    spec: &DrillSpec,
    m: &Manifest,
    etcd: &ScratchEtcd,
    dir: &Path,
    restore_started: Instant,
) -> Result<Restored> {
    stop.guard("the scratch control plane was stopped", async {
        let observed = etcd
            .observe(m.etcd.revision, m.etcd.hash_kv.is_some())
            .await?;
        let checks = keyspace_checks(m, &observed);
        let api = ScratchApiserver::start(
            &spec.apiserver_bin,
            &spec.service_cluster_ip_range,
            &etcd.endpoint,
            &etcd.pki,
            dir,
        )
        .await?;
        stop.hold("scratch-apiserver").await;
        let rto_seconds = restore_started.elapsed().as_secs_f64();
        let served = count_objects(&api.cluster).await;
        let version = api
            .cluster
            .client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        api.stop().await;
        Ok::<_, Error>(Restored {
            checks,
            observed,
            served: served?,
            version,
            rto_seconds,
        })
    })
    .await
}

/// Per resource: recorded vs restored at the backup's revision, served vs restored at the head.
fn compare_counts(
    m: &Manifest,
    observed: &Observed,
    served: BTreeMap<String, i64>,
) -> Vec<ResourceCount> {
    let mut resources = Vec::new();
    for (name, served) in served {
        let (Some(&restored), Some(&in_snapshot)) = (
            observed.prefix_counts_at.get(&name),
            observed.prefix_counts_head.get(&name),
        ) else {
            continue;
        };
        let at_backup = m.etcd.prefix_counts.get(&name).copied();
        if at_backup.is_none() && !m.etcd.uncounted() {
            continue;
        }
        resources.push(ResourceCount {
            ok: at_backup.is_none_or(|a| a == restored) && served == in_snapshot,
            resource: name,
            at_backup,
            restored,
            in_snapshot,
            served,
        });
    }
    resources
}

/// Object counts per resource, read as metadata only (Secret values are never fetched).
async fn count_objects(client: &Cluster) -> Result<BTreeMap<String, i64>> {
    async fn n<K>(cluster: &Cluster) -> Result<i64>
    where
        K: kube::Resource<DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        Ok(cluster.all::<K>().count().await? as i64)
    }
    let mut m = BTreeMap::new();
    m.insert("namespaces".to_string(), n::<Namespace>(client).await?);
    m.insert("deployments".to_string(), n::<Deployment>(client).await?);
    m.insert("pods".to_string(), n::<Pod>(client).await?);
    m.insert("secrets".to_string(), n::<Secret>(client).await?);
    m.insert("configmaps".to_string(), n::<ConfigMap>(client).await?);
    m.insert("services".to_string(), n::<Service>(client).await?);
    m.insert(
        "networkpolicies".to_string(),
        n::<NetworkPolicy>(client).await?,
    );
    m.insert(
        "customresourcedefinitions".to_string(),
        n::<CustomResourceDefinition>(client).await?,
    );
    Ok(m)
}

fn signed_text(signed: bool) -> &'static str {
    if signed {
        "manifest signed by the trusted key"
    } else {
        "UNSIGNED: drilled with --allow-unsigned"
    }
}

fn write_report(path: &Path, r: &DrillReport) -> Result<()> {
    let mut md = format!(
        "# DR drill: {}/{}\n\n**Result:** {}\n\n| | |\n|---|---|\n| RPO (age of the backup) | {} |\n| RTO (restore to apiserver serving) | {} |\n| verify | {:.1}s |\n| scratch apiserver | {} |\n| signature | {} |\n\n## Objects\n\nAt backup: recorded at the backup's revision; restored: keys in the restored etcd at that revision; served: objects the scratch apiserver lists (the snapshot's head, which may hold a few newer writes).\n\n| resource | at backup | restored | served | |\n|---|---:|---:|---:|---|\n",
        r.cluster,
        r.backup,
        if r.ok { "passed" } else { "FAILED" },
        human_secs(r.rpo_seconds),
        human_secs(r.rto_seconds),
        r.verify_seconds,
        r.apiserver_version,
        signed_text(r.signed)
    );
    if let Some(p) = &r.point_in_time {
        md = md.replacen(
            "| RPO",
            &format!(
                "| point in time | revision {} (received {}) |\n| RPO",
                p.revision,
                p.time
                    .map_or("at an unknown time".into(), |t| t.to_string())
            ),
            1,
        );
    }
    for c in &r.resources {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.resource,
            c.at_backup.map_or("-".into(), |n| n.to_string()),
            c.restored,
            c.served,
            if c.ok { "ok" } else { "MISMATCH" }
        ));
    }
    md.push_str("\n## Checks\n\n| check | expected | actual | |\n|---|---|---|---|\n");
    for c in &r.checks {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.check,
            c.expected,
            c.actual,
            if c.ok { "ok" } else { "MISMATCH" }
        ));
    }
    let text = if path.extension().is_some_and(|e| e == "html" || e == "htm") {
        let body: String = md
            .lines()
            .map(|l| {
                format!(
                    "<pre>{}</pre>",
                    l.replace('&', "&amp;").replace('<', "&lt;")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "<!doctype html><meta charset=utf-8><title>kirt drill {}</title>\n{body}\n",
            r.backup
        )
    } else {
        md
    };
    std::fs::write(path, text)
        .map_err(|e| Error::io(format!("writing the report {}", path.display()), e))
}
