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
    /// Only backups whose manifest is signed by the trusted key (--trusted-key or
    /// $KIRT_TRUSTED_KEY) and whose object is present
    #[arg(long)]
    pub verified: bool,
}

/// What is known about one backup id in the store. Everything here was read from the store and
/// may have been planted: only `Status::Complete` with a valid signature is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Manifest and object present, the manifest names this id.
    Complete,
    /// An object without manifest (an interrupted or failed run).
    Incomplete,
    /// A manifest that is not a kirt manifest (too large, not JSON, unknown format).
    UnreadableManifest,
    /// A manifest that describes another backup (edited or copied).
    MismatchedManifest,
    /// A manifest whose object is not in the store.
    ObjectMissing,
    /// A manifest that says it was written in the future (its clock is lying).
    FutureDated,
}

/// Whether the manifest is signed by the trusted key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Signature {
    /// No trusted key was given.
    Unchecked,
    Valid,
    Missing,
    Invalid,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupEntry {
    pub cluster: String,
    pub id: String,
    /// When the backup finished, from its manifest (for backups without one: from the id).
    pub time: Option<jiff::Timestamp>,
    pub status: Status,
    pub signature: Signature,
    pub revision: Option<i64>,
    pub keys: Option<i64>,
    pub snapshot_size: Option<u64>,
    pub stored_size: u64,
    pub encrypted: bool,
    /// The Object Lock retention its manifest records (what the backup was written with).
    pub object_lock: Option<crate::store::Retention>,
    pub object: String,
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// The manifest exactly as stored (what a signature covers).
    #[serde(skip)]
    pub manifest_bytes: Vec<u8>,
    /// Every key of this id, chain files included (what prune removes with it).
    #[serde(skip)]
    pub extra_keys: Vec<String>,
    /// The files in its chain directory (segments of `kirt backup stream`; chain.rs).
    #[serde(skip)]
    pub chain_files: Vec<crate::store::ObjectInfo>,
    /// The chain, when listed (`backup list`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<super::chain::Summary>,
}

impl BackupEntry {
    /// A backup kirt may act on: complete, and signed by the trusted key when one is given.
    pub fn usable(&self) -> bool {
        self.status == Status::Complete
            && matches!(self.signature, Signature::Unchecked | Signature::Valid)
    }

    /// A compacted backup (`kirt backup compact`) whose chain is among `others` and usable: that
    /// chain holds the same state and may reach further (the stream goes on extending it), so
    /// `latest` and `--to-time` prefer it. A revision target may still pick the compacted one.
    pub fn superseded<'a>(&self, mut others: impl Iterator<Item = &'a BackupEntry>) -> bool {
        let Some(from) = self
            .manifest
            .as_ref()
            .and_then(|m| m.compacted_from.as_ref())
        else {
            return false;
        };
        others.any(|o| o.cluster == self.cluster && o.id == from.base && o.usable())
    }
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
            "SIGNED",
            "REVISION",
            "KEYS",
            "SNAPSHOT",
            "STORED",
            "ENCRYPTED",
            "LOCKED",
            "SEGMENTS",
            "CHAIN REACHES",
        ]);
        for b in &self.backups {
            let (segments, reaches) = match &b.chain {
                None => ("-".to_string(), "-".to_string()),
                Some(c) => (
                    if c.incomplete > 0 {
                        format!("{} (+{} incomplete)", c.segments, c.incomplete)
                    } else {
                        c.segments.to_string()
                    },
                    match (c.last_revision, c.last_time) {
                        (Some(r), Some(t)) => {
                            format!("r{r} at {}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
                        }
                        _ => "no usable segment".into(),
                    },
                ),
            };
            t.row([
                b.cluster.clone(),
                b.id.clone(),
                name(&b.status),
                name(&b.signature),
                b.revision
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "-".into()),
                b.keys.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                b.snapshot_size
                    .map(human_bytes)
                    .unwrap_or_else(|| "-".into()),
                human_bytes(b.stored_size),
                if b.encrypted { "age" } else { "no" }.into(),
                match &b.object_lock {
                    Some(r) => {
                        format!("{} until {}", r.mode, crate::runlock::stamp(r.retain_until))
                    }
                    None => "-".into(),
                },
                segments,
                reaches,
            ]);
        }
        if self.backups.is_empty() {
            t.note(format!("no backups in {}", self.location));
        }
        t
    }
}

/// The kebab-case name serde gives a status.
fn name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub async fn run(_ctx: &Ctx, spec: BackupListSpec) -> Result<BackupList> {
    let trusted = spec.source.trusted_key()?;
    if spec.verified && trusted.is_none() {
        return Err(Error::usage(
            "--verified needs a trusted key: --trusted-key FILE or $KIRT_TRUSTED_KEY",
        ));
    }
    let store = spec.source.open().await?;
    let mut backups = spec.source.scan(store.as_ref(), trusted.as_ref()).await?;
    if spec.verified {
        backups.retain(|b| b.usable());
    }
    for b in backups
        .iter_mut()
        .filter(|b| b.usable() && !b.chain_files.is_empty())
    {
        b.chain = Some(super::chain::summary(store.as_ref(), b, trusted.as_ref()).await?);
    }
    Ok(BackupList {
        location: store.url(),
        backups,
    })
}

/// Manifests whose time is further ahead than this are not believed.
pub const CLOCK_SKEW: jiff::SignedDuration = jiff::SignedDuration::from_secs(600);

/// Reads every manifest (bounded), checks its signature when a trusted key is given, and notes
/// objects without a manifest; newest first by the manifest's own time.
pub async fn scan(
    store: &dyn Store,
    cluster: Option<&str>,
    trusted: Option<&minisign::PublicKey>,
) -> Result<Vec<BackupEntry>> {
    let now = jiff::Timestamp::now();
    let mut out = Vec::new();
    for ((c, id), files) in groups(store, cluster).await? {
        out.push(entry(store, trusted, now, c, id, files).await?);
    }
    out.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    Ok(out)
}

/// The newest usable backup of `cluster` by its id, reading manifests newest first only until
/// one is found (a nightly run need not read the whole history). Compacted backups are passed
/// over: they are not chains a restarted stream extends (it continues its own), and they carry
/// their base's cluster id, which the base (or a later chain) shows the guard anyway.
pub async fn newest_usable(
    store: &dyn Store,
    cluster: &str,
    trusted: Option<&minisign::PublicKey>,
) -> Result<Option<BackupEntry>> {
    let now = jiff::Timestamp::now();
    for ((c, id), files) in groups(store, Some(cluster)).await?.into_iter().rev() {
        if c != cluster {
            continue;
        }
        let e = entry(store, trusted, now, c, id, files).await?;
        let compacted = e
            .manifest
            .as_ref()
            .is_some_and(|m| m.compacted_from.is_some());
        if e.usable() && !compacted {
            return Ok(Some(e));
        }
    }
    Ok(None)
}

/// The objects under `cluster/` (or everywhere), grouped by CLUSTER/ID (ids in time order).
async fn groups(
    store: &dyn Store,
    cluster: Option<&str>,
) -> Result<BTreeMap<(String, String), Vec<crate::store::ObjectInfo>>> {
    let objects = store
        .list(cluster.map(|c| format!("{c}/")).as_deref().unwrap_or(""))
        .await?;
    // a chain directory's files go with its base's id
    let mut groups: BTreeMap<(String, String), Vec<crate::store::ObjectInfo>> = BTreeMap::new();
    for o in objects {
        if let Some((c, base, _)) = super::chain::split_key(&o.key) {
            let k = (c.to_string(), base.to_string());
            groups.entry(k).or_default().push(o);
            continue;
        }
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
    Ok(groups)
}

/// One backup id: its manifest read (bounded), judged and its signature checked.
async fn entry(
    store: &dyn Store,
    trusted: Option<&minisign::PublicKey>,
    now: jiff::Timestamp,
    cluster: String,
    id: String,
    files: Vec<crate::store::ObjectInfo>,
) -> Result<BackupEntry> {
    let extra_keys = files.iter().map(|f| f.key.clone()).collect();
    let (chain_files, files): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|f| super::chain::split_key(&f.key).is_some());
    let mkey = manifest::manifest_key(&cluster, &id);
    let object = files.iter().find(|f| f.key.contains(".etcd.zst"));
    let (status, manifest, manifest_bytes) = if !files.iter().any(|f| f.key == mkey) {
        (Status::Incomplete, None, Vec::new())
    } else {
        match read_manifest(store, &mkey).await {
            Err(e @ (Error::VerifyFailed(_) | Error::NotFound { .. })) => {
                tracing::warn!("{e}");
                (Status::UnreadableManifest, None, Vec::new())
            }
            Err(e) => return Err(e),
            Ok((m, bytes)) => {
                let status = if m.id != id || m.cluster_name != cluster {
                    Status::MismatchedManifest
                } else if !files.iter().any(|f| f.key == m.object) {
                    Status::ObjectMissing
                } else if m.finished_at > now + CLOCK_SKEW {
                    Status::FutureDated
                } else {
                    Status::Complete
                };
                (status, Some(m), bytes)
            }
        }
    };
    let signature = match (trusted, &manifest) {
        (None, _) => Signature::Unchecked,
        (Some(_), None) => Signature::Missing,
        (Some(pk), Some(_)) => {
            let sig_key = format!("{mkey}{}", super::signing::SUFFIX);
            match store
                .get_bytes(&sig_key, super::signing::MAX_SIGNATURE)
                .await
            {
                Ok(sig) => match super::signing::check(pk, &manifest_bytes, &sig) {
                    Ok(()) => Signature::Valid,
                    Err(why) => {
                        tracing::warn!("signature {sig_key} {why}");
                        Signature::Invalid
                    }
                },
                Err(Error::NotFound { .. }) => Signature::Missing,
                Err(e @ Error::VerifyFailed(_)) => {
                    tracing::warn!("{e}");
                    Signature::Invalid
                }
                Err(e) => return Err(e),
            }
        }
    };
    Ok(BackupEntry {
        cluster,
        time: manifest
            .as_ref()
            .map(|m| m.finished_at)
            .or_else(|| manifest::id_time(&id)),
        id,
        status,
        signature,
        revision: manifest.as_ref().map(|m| m.etcd.revision),
        keys: manifest.as_ref().and_then(|m| m.etcd.key_count),
        snapshot_size: manifest.as_ref().map(|m| m.snapshot.size),
        stored_size: object.map(|o| o.size).unwrap_or(0),
        encrypted: object.map(|o| o.key.ends_with(".age")).unwrap_or(false),
        object_lock: manifest.as_ref().and_then(|m| m.object_lock),
        object: object.map(|o| o.key.clone()).unwrap_or_default(),
        extra_keys,
        chain_files,
        chain: None,
        manifest,
        manifest_bytes,
    })
}

/// Largest manifest read back (a real one is a few KiB).
pub const MAX_MANIFEST: u64 = 1 << 20;

/// A manifest and its bytes as stored; anything too large or not a kirt manifest is a
/// verification failure.
pub async fn read_manifest(store: &dyn Store, key: &str) -> Result<(Manifest, Vec<u8>)> {
    let bytes = store.get_bytes(key, MAX_MANIFEST).await?;
    let m = parse_manifest(store, key, &bytes)?;
    Ok((m, bytes))
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
