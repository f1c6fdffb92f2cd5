//! `kirt backup prune`: restic-style retention over manifests. For each removed backup the
//! manifest goes first (so it stops being a backup at once), then the object. Objects left without
//! a manifest by failed runs are removed after a grace period (a running backup may still be
//! writing its manifest).

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::retention::{self, KeepPolicy};
use super::source::BackupSource;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupPruneSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    pub keep: KeepPolicy,
    /// Incomplete objects younger than this are left alone (e.g. 24h)
    #[arg(long, value_name = "DURATION", default_value = ORPHAN_GRACE, value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::duration_serde")]
    #[schemars(with = "String")]
    pub orphan_grace: Duration,
}

const ORPHAN_GRACE: &str = "24h";

impl Default for BackupPruneSpec {
    fn default() -> Self {
        BackupPruneSpec {
            source: BackupSource::default(),
            keep: KeepPolicy::default(),
            orphan_grace: Duration::from_secs(24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneDecision {
    pub cluster: String,
    pub id: String,
    pub action: String,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneResult {
    pub location: String,
    pub kept: usize,
    pub removed: usize,
    pub orphans_removed: usize,
    pub dry_run: bool,
    pub decisions: Vec<PruneDecision>,
}

impl Render for PruneResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["CLUSTER", "BACKUP", "ACTION", "WHY"]);
        for d in &self.decisions {
            t.row([
                d.cluster.clone(),
                d.id.clone(),
                d.action.clone(),
                d.reasons.join(", "),
            ]);
        }
        t.note(format!(
            "\n{}kept {}, removed {}, orphans removed {}",
            if self.dry_run { "dry run: " } else { "" },
            self.kept,
            self.removed,
            self.orphans_removed
        ));
        t
    }
}

pub async fn run(ctx: &Ctx, spec: BackupPruneSpec) -> Result<PruneResult> {
    if spec.keep.is_empty() {
        return Err(Error::usage(
            "no retention rule given: pass at least one of --keep-last/--keep-daily/--keep-weekly/--keep-monthly (prune never removes everything)",
        ));
    }
    let store = spec.source.open().await?;
    let entries = spec.source.scan(store.as_ref()).await?;
    let now = jiff::Timestamp::now();
    let mut decisions = Vec::new();
    let (mut kept, mut removed, mut orphans) = (0, 0, 0);

    // Retention is per cluster.
    let mut clusters: Vec<String> = entries.iter().map(|e| e.cluster.clone()).collect();
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        let complete: Vec<_> = entries
            .iter()
            .filter(|e| e.cluster == cluster && e.status == "complete")
            .collect();
        let times: Vec<jiff::Timestamp> = complete.iter().map(|e| e.time.unwrap_or(now)).collect();
        let reasons = retention::apply(&spec.keep, &times);
        for (e, why) in complete.iter().zip(reasons) {
            if why.is_empty() {
                if !ctx.dry_run {
                    // manifest first: the backup stops existing atomically, then its bytes go
                    let manifest = super::manifest::manifest_key(&e.cluster, &e.id);
                    store.delete(&manifest).await?;
                    for k in e.extra_keys.iter().filter(|k| **k != manifest) {
                        store.delete(k).await?;
                    }
                }
                removed += 1;
                decisions.push(PruneDecision {
                    cluster: e.cluster.clone(),
                    id: e.id.clone(),
                    action: "remove".into(),
                    reasons: vec!["matches no keep rule".into()],
                });
            } else {
                kept += 1;
                decisions.push(PruneDecision {
                    cluster: e.cluster.clone(),
                    id: e.id.clone(),
                    action: "keep".into(),
                    reasons: why,
                });
            }
        }
        for e in entries
            .iter()
            .filter(|e| e.cluster == cluster && e.status != "complete")
        {
            let age = e.time.map(|t| now.duration_since(t)).unwrap_or_default();
            let grace = jiff::SignedDuration::try_from(spec.orphan_grace)
                .unwrap_or(jiff::SignedDuration::MAX);
            if age > grace {
                if !ctx.dry_run {
                    for k in &e.extra_keys {
                        store.delete(k).await?;
                    }
                }
                orphans += 1;
                decisions.push(PruneDecision {
                    cluster: e.cluster.clone(),
                    id: e.id.clone(),
                    action: "remove".into(),
                    reasons: vec![format!(
                        "{} without manifest, older than the grace period",
                        e.status
                    )],
                });
            } else {
                decisions.push(PruneDecision {
                    cluster: e.cluster.clone(),
                    id: e.id.clone(),
                    action: "keep".into(),
                    reasons: vec![
                        "incomplete but within the grace period (may still be running)".into(),
                    ],
                });
            }
        }
    }
    Ok(PruneResult {
        location: store.url(),
        kept,
        removed,
        orphans_removed: orphans,
        dry_run: ctx.dry_run,
        decisions,
    })
}
