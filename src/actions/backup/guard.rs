//! The cluster-prefix guard: the backups under `PREFIX/CLUSTER/` are one etcd cluster's history.
//! Two clusters given the same `--cluster-name` (a copied CronJob, a staging cluster pointed at
//! production's bucket) would interleave their backups, and `latest` would flip between them. So
//! `backup create` refuses (exit 4) when the newest backup there (by id, the time it was made)
//! comes from another etcd cluster id, unless `--force` (a cluster that replaced that one, e.g. after a restore: once it has a
//! backup there, the next runs pass by themselves). With a signing key only backups signed by
//! it count — a planted manifest cannot stop backups. Credentials that may not list or read the
//! store (a write-only writer) cannot check: the run goes on and says so.

use super::list::{newest_usable, BackupEntry};
use crate::error::{Error, Result};
use crate::store::Store;

/// What the newest backup says about the prefix, for this etcd cluster: `None` when it is this
/// cluster's (or there is none), `Some(why)` when it is another cluster's.
pub fn foreign(newest: Option<&BackupEntry>, cluster: &str, cluster_id: &str) -> Option<String> {
    let b = newest?;
    let theirs = &b.manifest.as_ref()?.etcd.cluster_id;
    (theirs != cluster_id).then(|| {
        format!(
            "the newest backup under the cluster prefix {cluster}/ ({}) comes from etcd cluster {theirs}, this is etcd cluster {cluster_id}",
            b.id
        )
    })
}

/// Refuses (exit 4) to back `cluster_id` up under a prefix holding another cluster's history.
pub async fn check(
    store: &dyn Store,
    cluster: &str,
    cluster_id: &str,
    trusted: Option<&minisign::PublicKey>,
    force: bool,
) -> Result<()> {
    let newest = match newest_usable(store, cluster, trusted).await {
        Ok(n) => n,
        Err(e) if e.is_store_denied() => {
            tracing::warn!("{e}: cannot check that {}/{cluster}/ holds only this etcd cluster's backups (cluster-prefix guard skipped: write-only credentials?)", store.url());
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let Some(why) = foreign(newest.as_ref(), cluster, cluster_id) else {
        return Ok(());
    };
    if force {
        tracing::warn!("{why}; writing there anyway (--force)");
        return Ok(());
    }
    Err(Error::Refused(format!(
        "{why}: two clusters under one prefix mix their histories (and `latest`). Give this cluster its own --cluster-name, or --force if it replaced that cluster (after a restore); nothing was written"
    )))
}
