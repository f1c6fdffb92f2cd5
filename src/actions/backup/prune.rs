//! `kirt backup prune`: restic-style retention over manifests. For each removed backup the
//! manifest goes first (so it stops being a backup at once), then the object. Objects left without
//! a manifest by failed runs are removed after a grace period (a running backup may still be
//! writing its manifest). A backup any of whose objects is under S3 Object Lock (retention in
//! force or a legal hold) is kept whole — "kept: locked until …" — and removed by a later run
//! once the lock has passed: never a manifest without its object or the reverse.

use serde::{Deserialize, Serialize};

use std::time::Duration;

use super::list::{BackupEntry, Signature, Status};
use super::retention::{self, KeepPolicy};
use super::source::BackupSource;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::store::{Protection, Store};

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
    /// Backups (and incomplete objects) that would go but are under Object Lock.
    pub locked: usize,
    pub orphans_removed: usize,
    /// Partial files of interrupted uploads (local stores), older than the grace period.
    pub stale_parts_removed: usize,
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
            "\n{}kept {}, removed {}, kept while locked {}, orphans removed {}, stale partial files removed {}",
            if self.dry_run { "dry run: " } else { "" },
            self.kept,
            self.removed,
            self.locked,
            self.orphans_removed,
            self.stale_parts_removed
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
    let trusted = spec.source.trusted_key()?;
    let store = spec.source.open().await?;
    let entries = spec.source.scan(store.as_ref(), trusted.as_ref()).await?;
    let now = jiff::Timestamp::now();
    let grace =
        jiff::SignedDuration::try_from(spec.orphan_grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut result = PruneResult {
        location: store.url(),
        kept: 0,
        removed: 0,
        locked: 0,
        orphans_removed: 0,
        stale_parts_removed: 0,
        dry_run: ctx.dry_run,
        decisions: Vec::new(),
    };
    // Retention is per cluster, over the backups kirt may count: complete and, with a trusted
    // key, signed by it. Planted or damaged manifests neither fill keep slots nor get deleted.
    let mut clusters: Vec<String> = entries.iter().map(|e| e.cluster.clone()).collect();
    clusters.sort();
    clusters.dedup();
    for cluster in clusters {
        let usable: Vec<&BackupEntry> = entries
            .iter()
            .filter(|e| e.cluster == cluster && e.usable())
            .collect();
        let times: Vec<jiff::Timestamp> = usable.iter().map(|e| e.time.unwrap_or(now)).collect();
        for (e, why) in usable.iter().zip(retention::apply(&spec.keep, &times)) {
            if why.is_empty() {
                if let Some(lock) = locked(store.as_ref(), e, now).await? {
                    result.keep_locked(e, "matches no keep rule", &lock);
                    continue;
                }
                if !ctx.dry_run {
                    // manifest first: the backup stops existing atomically, then its bytes go
                    let manifest = super::manifest::manifest_key(&e.cluster, &e.id);
                    store.delete(&manifest).await?;
                    for k in e.extra_keys.iter().filter(|k| **k != manifest) {
                        store.delete(k).await?;
                    }
                }
                result.removed += 1;
                result.decide(e, "remove", vec!["matches no keep rule".into()]);
            } else {
                result.kept += 1;
                result.decide(e, "keep", why);
            }
        }
        for e in entries
            .iter()
            .filter(|e| e.cluster == cluster && !e.usable())
        {
            leftover(ctx, store.as_ref(), e, now, grace, &mut result).await?;
        }
    }
    let stale = store.remove_stale(spec.orphan_grace, ctx.dry_run).await?;
    result.stale_parts_removed = stale.len();
    Ok(result)
}

/// The Object Lock protecting any object of `e` now (the one that ends last), also where only
/// its manifest records one: a backup is removed whole or not at all.
async fn locked(
    store: &dyn Store,
    e: &BackupEntry,
    now: jiff::Timestamp,
) -> Result<Option<Protection>> {
    let mut found = e
        .object_lock
        .filter(|r| r.retain_until > now)
        .map(Protection::Retained);
    for k in &e.extra_keys {
        found = match (found, store.protection(k).await?) {
            (Some(Protection::LegalHold), _) | (_, Some(Protection::LegalHold)) => {
                Some(Protection::LegalHold)
            }
            (Some(Protection::Retained(a)), Some(Protection::Retained(b))) => {
                Some(Protection::Retained(if b.retain_until > a.retain_until {
                    b
                } else {
                    a
                }))
            }
            (a, b) => a.or(b),
        };
    }
    Ok(found)
}

/// What is not a usable backup: objects without a manifest go after the grace period (a run may
/// still be writing); suspicious manifests stay, uncounted, for a person to look at.
async fn leftover(
    ctx: &Ctx,
    store: &dyn Store,
    e: &BackupEntry,
    now: jiff::Timestamp,
    grace: jiff::SignedDuration,
    result: &mut PruneResult,
) -> Result<()> {
    let why = match (e.status, e.signature) {
        (Status::Incomplete | Status::UnreadableManifest, _) => {
            let age = e.time.map(|t| now.duration_since(t)).unwrap_or_default();
            if age <= grace {
                result.decide(
                    e,
                    "keep",
                    vec!["incomplete but within the grace period (may still be running)".into()],
                );
                return Ok(());
            }
            let what = if e.status == Status::Incomplete {
                "incomplete"
            } else {
                "unreadable manifest"
            };
            if let Some(lock) = locked(store, e, now).await? {
                result.keep_locked(e, &format!("{what}, older than the grace period"), &lock);
                return Ok(());
            }
            if !ctx.dry_run {
                for k in &e.extra_keys {
                    store.delete(k).await?;
                }
            }
            result.orphans_removed += 1;
            result.decide(
                e,
                "remove",
                vec![format!("{what}, older than the grace period")],
            );
            return Ok(());
        }
        (Status::ObjectMissing, _) => "its object is missing",
        (Status::MismatchedManifest, _) => "its manifest describes another backup",
        (Status::FutureDated, _) => "its manifest is dated in the future",
        (Status::Complete, Signature::Missing) => "not signed by the trusted key",
        (Status::Complete, _) => "its signature does not verify with the trusted key",
    };
    result.decide(
        e,
        "keep",
        vec![format!(
            "not counted: {why} (investigate; kirt does not delete it)"
        )],
    );
    Ok(())
}

impl PruneResult {
    /// A backup that would go, kept because it cannot be deleted yet.
    fn keep_locked(&mut self, e: &BackupEntry, why: &str, lock: &Protection) {
        self.locked += 1;
        self.decide(
            e,
            "keep",
            vec![format!(
                "kept: {lock} ({why}; removed by a later prune once the lock has passed)"
            )],
        );
    }

    fn decide(&mut self, e: &BackupEntry, action: &str, reasons: Vec<String>) {
        self.decisions.push(PruneDecision {
            cluster: e.cluster.clone(),
            id: e.id.clone(),
            action: action.into(),
            reasons,
        });
    }
}
