//! Which backups a command reads: the store (`--from` + S3 options) and the cluster name, and
//! finding one backup in it by `latest`, `ID` or `CLUSTER/ID`. Shared by list, prune, verify,
//! restore and drill.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::list::{parse_manifest, scan, BackupEntry};
use super::manifest::{self, Manifest};
use crate::crypto::DecryptOptions;
use crate::error::{Error, Result};
use crate::pipeline::Decryption;
use crate::store::{self, S3Options, Store};

/// The store holding the backups, and whose backups to look at.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
pub struct BackupSource {
    /// Store: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Only this cluster's backups
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
}

/// A backup that was found and whose manifest was read.
pub struct Located {
    pub store: Arc<dyn Store>,
    pub entry: BackupEntry,
    pub manifest: Manifest,
    /// The manifest exactly as stored (what a signature covers).
    pub manifest_bytes: Vec<u8>,
}

impl Located {
    /// How to decrypt this backup with the options given.
    pub fn decryption(&self, opts: &DecryptOptions) -> Result<Decryption> {
        let mode = self.manifest.encryption.as_ref().map(|e| e.mode.as_str());
        opts.resolve(mode, "this backup")
    }
}

impl BackupSource {
    /// Opens the store (a usage error when `--from` is missing or malformed).
    pub async fn open(&self) -> Result<Arc<dyn Store>> {
        if self.from.is_empty() {
            return Err(Error::usage(
                "missing --from: the store holding the backups (s3://BUCKET/PREFIX, file:///DIR or a directory)",
            ));
        }
        store::open(&self.from, &self.s3).await
    }

    /// Every backup (and incomplete object) in the store, newest first.
    pub async fn scan(&self, store: &dyn Store) -> Result<Vec<BackupEntry>> {
        scan(store, self.cluster_name.as_deref()).await
    }

    /// Finds backup `which` and reads its manifest; a missing manifest or object is a
    /// verification failure.
    pub async fn locate(&self, which: &str) -> Result<Located> {
        let store = self.open().await?;
        let entry = find(&store, which, self.cluster_name.as_deref()).await?;
        if entry.status != "complete" {
            return Err(Error::VerifyFailed(format!(
                "backup {}/{} has no (readable) manifest: it is not a complete backup (an interrupted run, or the manifest was removed)",
                entry.cluster, entry.id
            )));
        }
        let mkey = manifest::manifest_key(&entry.cluster, &entry.id);
        let manifest_bytes = store.get_bytes(&mkey).await?;
        let manifest = parse_manifest(store.as_ref(), &mkey, &manifest_bytes)?;
        if manifest.id != entry.id || manifest.cluster_name != entry.cluster {
            return Err(Error::VerifyFailed(format!(
                "manifest {}/{} describes backup {}/{}: it was edited or swapped",
                entry.cluster, entry.id, manifest.cluster_name, manifest.id
            )));
        }
        if !entry.extra_keys.contains(&manifest.object) {
            return Err(Error::VerifyFailed(format!(
                "the object {} of backup {} is missing from {}",
                manifest.object,
                entry.id,
                store.url()
            )));
        }
        Ok(Located {
            store,
            entry,
            manifest,
            manifest_bytes,
        })
    }
}

/// Finds a backup by `latest`, `ID` or `CLUSTER/ID`.
async fn find(store: &Arc<dyn Store>, which: &str, cluster: Option<&str>) -> Result<BackupEntry> {
    let (cluster, id) = match which.split_once('/') {
        Some((c, id)) => (Some(c), id),
        None => (cluster, which),
    };
    let all = scan(store.as_ref(), cluster).await?;
    let found = if id == "latest" {
        let mut complete = all.into_iter().filter(|b| b.status == "complete");
        let first = complete.next();
        if let (Some(f), None) = (&first, cluster) {
            if complete.any(|b| b.cluster != f.cluster) {
                return Err(Error::usage(format!(
                    "{} holds backups of several clusters: pass --cluster-name or CLUSTER/latest",
                    store.url()
                )));
            }
        }
        first
    } else {
        let matching: Vec<BackupEntry> = all.into_iter().filter(|b| b.id == id).collect();
        if matching.len() > 1 {
            let names: Vec<String> = matching
                .iter()
                .map(|b| format!("{}/{}", b.cluster, b.id))
                .collect();
            return Err(Error::usage(format!(
                "backup id {id} is ambiguous: use one of {}",
                names.join(", ")
            )));
        }
        matching.into_iter().next()
    };
    found.ok_or_else(|| {
        Error::not_found(
            format!("backup {which} in {}", store.url()),
            "list the backups with kirt backup list --from URL",
        )
    })
}
