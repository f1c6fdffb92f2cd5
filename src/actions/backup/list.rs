//! `kirt backup list`: backups are the manifests in the store; objects without a manifest are
//! flagged as incomplete (an interrupted or failed run), never shown as backups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::manifest::{self, Manifest};
use super::source::BackupSource;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::store::Store;
use crate::units::human_bytes;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupListSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub cluster: String,
    pub id: String,
    pub time: Option<jiff::Timestamp>,
    /// "complete" (manifest present) or "incomplete" (object without manifest)
    pub status: String,
    pub revision: Option<i64>,
    pub keys: Option<i64>,
    pub snapshot_size: Option<u64>,
    pub stored_size: u64,
    pub encrypted: bool,
    pub object: String,
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    #[serde(skip)]
    pub extra_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupList {
    pub location: String,
    pub backups: Vec<BackupEntry>,
}

impl Render for BackupList {
    fn table(&self) -> Table {
        let mut t = Table::new([
            "CLUSTER",
            "BACKUP",
            "STATUS",
            "REVISION",
            "KEYS",
            "SNAPSHOT",
            "STORED",
            "ENCRYPTED",
        ]);
        for b in &self.backups {
            t.row([
                b.cluster.clone(),
                b.id.clone(),
                b.status.clone(),
                b.revision
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                b.keys.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                b.snapshot_size
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                human_bytes(b.stored_size),
                if b.encrypted { "age" } else { "no" }.into(),
            ]);
        }
        if self.backups.is_empty() {
            t.note(format!("no backups in {}", self.location));
        }
        t
    }
}

pub async fn run(_ctx: &Ctx, spec: BackupListSpec) -> Result<BackupList> {
    let store = spec.source.open().await?;
    let backups = spec.source.scan(store.as_ref()).await?;
    Ok(BackupList {
        location: store.url(),
        backups,
    })
}

/// Reads every manifest (and notes objects without one), newest first.
pub async fn scan(store: &dyn Store, cluster: Option<&str>) -> Result<Vec<BackupEntry>> {
    let objects = store
        .list(cluster.map(|c| format!("{c}/")).as_deref().unwrap_or(""))
        .await?;
    // group keys by CLUSTER/ID
    let mut groups: BTreeMap<(String, String), Vec<crate::store::ObjectInfo>> = BTreeMap::new();
    for o in objects {
        let Some((c, file)) = o.key.rsplit_once('/') else {
            continue;
        };
        let Some(id) = file.split('.').next() else {
            continue;
        };
        if manifest::id_time(id).is_none() {
            continue; // not ours
        }
        groups
            .entry((c.to_string(), id.to_string()))
            .or_default()
            .push(o);
    }
    let mut out = Vec::new();
    for ((c, id), files) in groups {
        let mkey = manifest::manifest_key(&c, &id);
        let has_manifest = files.iter().any(|f| f.key == mkey);
        let manifest = if has_manifest {
            read_manifest(store, &mkey).await.ok()
        } else {
            None
        };
        let object = files.iter().find(|f| f.key.contains(".etcd.zst"));
        let entry = BackupEntry {
            cluster: c.clone(),
            id: id.clone(),
            time: manifest::id_time(&id),
            status: if manifest.is_some() {
                "complete"
            } else if has_manifest {
                "unreadable-manifest"
            } else {
                "incomplete"
            }
            .into(),
            revision: manifest.as_ref().map(|m| m.etcd.revision),
            keys: manifest.as_ref().map(|m| m.etcd.key_count),
            snapshot_size: manifest.as_ref().map(|m| m.snapshot.size),
            stored_size: object.map(|o| o.size).unwrap_or(0),
            encrypted: object.map(|o| o.key.ends_with(".age")).unwrap_or(false),
            object: object.map(|o| o.key.clone()).unwrap_or_default(),
            extra_keys: files.iter().map(|f| f.key.clone()).collect(),
            manifest,
        };
        out.push(entry);
    }
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    Ok(out)
}

pub async fn read_manifest(store: &dyn Store, key: &str) -> Result<Manifest> {
    let bytes = store.get_bytes(key).await?;
    parse_manifest(store, key, &bytes)
}

pub fn parse_manifest(store: &dyn Store, key: &str, bytes: &[u8]) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
        Error::VerifyFailed(format!(
            "manifest {}/{key} is not a valid kirt manifest: {e}",
            store.url()
        ))
    })?;
    if m.format != manifest::FORMAT {
        return Err(Error::VerifyFailed(format!(
            "manifest {key} has unknown format {:?}",
            m.format
        )));
    }
    Ok(m)
}
