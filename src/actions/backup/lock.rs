//! The run lock of `backup create` (and of other runs that write a cluster's backups): one run
//! per cluster prefix at a time. `--lock store` (the default) keeps it next to the backups —
//! a lock file on a local store, a conditional-PUT lock object on S3 — and `--lock lease` in a
//! Kubernetes Lease, for runs in a cluster whose store cannot hold one. A second run exits 4
//! naming the holder; a lock whose holder stopped renewing it longer than its lease ago is taken
//! over. Where the credentials cannot keep a lock in the store (write-only: no read of
//! `.kirt/*`), the run goes on without one and says so.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::error::Result;
use crate::runlock::{Attempt, Held, Holder};
use crate::store::Store;

/// Where the run lock is kept.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Next to the backups: a lock file, or an S3 object written with If-None-Match
    #[default]
    Store,
    /// A Kubernetes Lease (coordination.k8s.io/v1) in --lock-namespace
    Lease,
    /// No lock (overlapping runs are not prevented)
    None,
}

const LEASE: &str = "5m";

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LockOptions {
    /// Where the run lock that keeps a second run of the same cluster out is kept: store, lease
    /// (a Kubernetes Lease) or none
    #[arg(long, value_enum, value_name = "KIND", default_value_t = LockKind::Store)]
    pub lock: LockKind,
    /// A run lock not renewed for this long belongs to a run that is gone and is taken over
    #[arg(long, value_name = "DURATION", default_value = LEASE, value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::duration_serde")]
    #[schemars(with = "String")]
    pub lock_lease: Duration,
    /// Namespace of the Lease with --lock lease (default: the context's namespace)
    #[arg(long, value_name = "NS")]
    pub lock_namespace: Option<String>,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            lock: LockKind::Store,
            lock_lease: Duration::from_secs(300),
            lock_namespace: None,
        }
    }
}

/// Takes the lock of `task` (e.g. "backup") for `cluster`'s prefix in `store`. `Ok(None)`: no
/// lock is held (`--lock none`, or credentials that cannot keep one: said as a warning).
/// A lock held by another run is `Error::Refused` (exit 4) naming the holder.
pub async fn acquire(
    ctx: &Ctx,
    opts: &LockOptions,
    store: &dyn Store,
    cluster: &str,
    task: &str,
) -> Result<Option<Box<dyn Held>>> {
    if opts.lock_lease.is_zero() {
        return Err(crate::Error::usage("--lock-lease must be longer than 0s"));
    }
    let holder = Holder::me(&format!("kirt {task} of {cluster}"), opts.lock_lease);
    let attempt = match opts.lock {
        LockKind::None => return Ok(None),
        LockKind::Store => {
            match store
                .lock(&format!("{cluster}/{task}"), &holder, opts.lock_lease)
                .await
            {
                Err(e) if e.is_store_denied() => {
                    tracing::warn!(
                        "{e}: cannot take the run lock in {}; going on WITHOUT it, so an overlapping run is not kept out (allow s3:GetObject and s3:DeleteObject on PREFIX/.kirt/* as docs/deploy.md shows, or use --lock lease)",
                        store.url()
                    );
                    return Ok(None);
                }
                other => other?,
            }
        }
        LockKind::Lease => {
            let ns = ctx.namespace_or(&opts.lock_namespace).await?;
            let cluster_api = ctx.cluster().await?;
            crate::k8s::lease::lock(
                cluster_api,
                &ns,
                &lease_name(task, cluster),
                &holder,
                opts.lock_lease,
            )
            .await?
        }
    };
    match attempt {
        Attempt::Acquired(held) => {
            tracing::debug!(lock = %held.describe(), "run lock taken");
            Ok(Some(held))
        }
        Attempt::Busy(busy) => Err(busy.error()),
    }
}

/// `kirt-TASK-CLUSTER` as a valid object name (lower case, at most 63 characters).
fn lease_name(task: &str, cluster: &str) -> String {
    let raw = format!("kirt-{task}-{cluster}").to_lowercase();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.len() > 63 {
        use sha2::Digest;
        let h = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
        name = format!("{}-{}", &name[..54], &h[..8]);
    }
    name.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(lease_name("backup", "prod"), "kirt-backup-prod");
        assert_eq!(lease_name("backup", "Etcd_9A.x"), "kirt-backup-etcd-9a-x");
        let long = lease_name("backup", &"c".repeat(100));
        assert!(long.len() <= 63, "{long}");
        assert_ne!(long, lease_name("backup", &"c".repeat(101)));
    }
}
