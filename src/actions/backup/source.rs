//! Which backups a command reads: the store (`--from` + S3 options), the cluster name, and the
//! key that vouches for them (`--trusted-key` or `$KIRT_TRUSTED_KEY`); and finding one backup by
//! `latest`, `ID` or `CLUSTER/ID`. Shared by list, prune, verify, restore and drill.
//!
//! Whoever can write to the bucket can plant a manifest and an object of their own. So `latest`
//! is the newest backup by the time its (signed) manifest states, among those whose object is
//! present and — with a trusted key — whose signature verifies; never the newest key name.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::list::{scan, BackupEntry, Signature, Status};
use super::manifest::Manifest;
use super::signing;
use crate::crypto::DecryptOptions;
use crate::error::{Error, Result};
use crate::pipeline::Decryption;
use crate::store::{self, S3Options, Store};

/// The store holding the backups, whose backups to look at, and whose signature to require.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
pub struct BackupSource {
    /// Store: s3://BUCKET/PREFIX, file:///DIR or a directory (required; checked when the store is
    /// opened, so that `kirt restore objects` can share the flag with `kirt restore`)
    #[arg(
        long,
        value_name = "URL",
        default_value = "",
        hide_default_value = true
    )]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Only this cluster's backups
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// Act only on backups whose manifest is signed by this minisign public key (default:
    /// $KIRT_TRUSTED_KEY)
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Option<PathBuf>,
}

/// A backup that was found and whose manifest was read.
pub struct Located {
    pub store: Arc<dyn Store>,
    pub entry: BackupEntry,
    pub manifest: Manifest,
    /// Whether a trusted key vouched for the manifest.
    pub signed: bool,
    /// (finish time, revision) of every usable backup of the same cluster, newest first: how
    /// fast the cluster's revision grows (a restore's revision bump is sized from it).
    pub history: Vec<(jiff::Timestamp, i64)>,
    /// The key that vouches for backups and segments (`--trusted-key`), if any.
    pub trusted: Option<minisign::PublicKey>,
}

impl Located {
    /// How to decrypt this backup (and its chain's segments, encrypted alike) with the options
    /// given; shared, so that a passphrase is asked once.
    pub fn decryption(&self, opts: &DecryptOptions) -> Result<Arc<Decryption>> {
        let mode = self.manifest.encryption.as_ref().map(|e| e.mode.as_str());
        opts.resolve(mode, "this backup").map(Arc::new)
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

    /// The trusted public key, if one is configured (flag, then environment).
    pub fn trusted_key(&self) -> Result<Option<minisign::PublicKey>> {
        signing::trusted_key_path(&self.trusted_key)
            .map(|p| signing::load_public_key(&p))
            .transpose()
    }

    /// Every backup (and incomplete object) in the store, newest first, signatures checked.
    pub async fn scan(
        &self,
        store: &dyn Store,
        trusted: Option<&minisign::PublicKey>,
    ) -> Result<Vec<BackupEntry>> {
        scan(store, self.cluster_name.as_deref(), trusted).await
    }

    /// Finds backup `which` and reads its manifest. A backup that is not complete, or — with a
    /// trusted key — not signed by it, is a verification failure.
    pub async fn locate(&self, which: &str) -> Result<Located> {
        let trusted = self.trusted_key()?;
        let store = self.open().await?;
        let (cluster, _) = self.split(which);
        let all = scan(store.as_ref(), cluster, trusted.as_ref()).await?;
        let entry = self.find(store.as_ref(), &all, which)?;
        let manifest = entry
            .manifest
            .clone()
            .ok_or_else(|| Error::VerifyFailed(format!("backup {} has no manifest", entry.id)))?;
        let history = all
            .iter()
            .filter(|b| b.cluster == entry.cluster && b.usable())
            .filter_map(|b| Some((b.time?, b.revision?)))
            .collect();
        Ok(Located {
            store,
            signed: entry.signature == Signature::Valid,
            entry,
            manifest,
            history,
            trusted,
        })
    }
}

impl BackupSource {
    /// `CLUSTER/ID` or `ID` (of `--cluster-name`, if given).
    fn split<'a>(&'a self, which: &'a str) -> (Option<&'a str>, &'a str) {
        match which.split_once('/') {
            Some((c, id)) => (Some(c), id),
            None => (self.cluster_name.as_deref(), which),
        }
    }

    /// Backup `which` (`latest`, `ID` or `CLUSTER/ID`) among `all` (a scan of `store`), if it
    /// may be acted on: complete and, with a trusted key, signed by it (else exit 3).
    pub fn find(&self, store: &dyn Store, all: &[BackupEntry], which: &str) -> Result<BackupEntry> {
        let (cluster, id) = self.split(which);
        let candidates: Vec<BackupEntry> = all
            .iter()
            .filter(|b| cluster.is_none_or(|c| b.cluster == c))
            .cloned()
            .collect();
        let entry = if id == "latest" {
            latest(store, candidates, cluster)?
        } else {
            by_id(store, candidates, id)?
        };
        let entry = entry.ok_or_else(|| {
            Error::not_found(
                format!("backup {which} in {}", store.url()),
                "list the backups with kirt backup list --from URL",
            )
        })?;
        vouch(&entry, store)?;
        Ok(entry)
    }

    /// Every usable backup of one cluster (`which` is `latest` or `CLUSTER/latest`; without a
    /// cluster, the store must hold only one), newest first by revision: the candidates for a
    /// point-in-time restore.
    pub async fn usable_backups(&self, which: &str) -> Result<Vec<Located>> {
        let trusted = self.trusted_key()?;
        let store = self.open().await?;
        let (cluster, _) = self.split(which);
        let all = scan(store.as_ref(), cluster, trusted.as_ref()).await?;
        let mut usable: Vec<BackupEntry> = all.into_iter().filter(BackupEntry::usable).collect();
        if let (Some(f), None) = (usable.first(), cluster) {
            if usable.iter().any(|b| b.cluster != f.cluster) {
                return Err(Error::usage(format!(
                    "{} holds backups of several clusters: pass --cluster-name or CLUSTER/latest",
                    store.url()
                )));
            }
        }
        usable.sort_by_key(|b| std::cmp::Reverse(b.revision));
        let history: Vec<(jiff::Timestamp, i64)> = usable
            .iter()
            .filter_map(|b| Some((b.time?, b.revision?)))
            .collect();
        Ok(usable
            .into_iter()
            .filter_map(|entry| {
                Some(Located {
                    store: store.clone(),
                    signed: entry.signature == Signature::Valid,
                    manifest: entry.manifest.clone()?,
                    entry,
                    history: history.clone(),
                    trusted: trusted.clone(),
                })
            })
            .collect())
    }
}

/// For restore and drill: they act only on signed backups, unless the operator says otherwise.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
pub struct Unsigned {
    /// Also act on backups that no trusted key vouches for (whoever can write to the store then
    /// chooses what is restored)
    #[arg(long)]
    pub allow_unsigned: bool,
}

impl Unsigned {
    /// Refuses (exit 4) when no trusted key is configured and unsigned backups are not allowed.
    pub fn check(&self, source: &BackupSource, what: &str) -> Result<()> {
        if self.allow_unsigned || signing::trusted_key_path(&source.trusted_key).is_some() {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "{what} acts only on signed backups: give --trusted-key FILE (or $KIRT_TRUSTED_KEY), or --allow-unsigned to accept that whoever can write to {} chooses what you {what}",
            source.from
        )))
    }
}

/// The newest usable backup (by its manifest's time); several clusters without a cluster name
/// are ambiguous.
fn latest(
    store: &dyn Store,
    all: Vec<BackupEntry>,
    cluster: Option<&str>,
) -> Result<Option<BackupEntry>> {
    for b in all
        .iter()
        .filter(|b| b.status == Status::Complete && !b.usable())
    {
        tracing::warn!(
            "skipping backup {}/{}: its signature is {:?} (not made with the trusted key?)",
            b.cluster,
            b.id,
            b.signature
        );
    }
    let mut usable = all
        .iter()
        .filter(|b| b.usable() && !b.superseded(all.iter()))
        .cloned();
    let first = usable.next();
    if let (Some(f), None) = (&first, cluster) {
        if usable.any(|b| b.cluster != f.cluster) {
            return Err(Error::usage(format!(
                "{} holds backups of several clusters: pass --cluster-name or CLUSTER/latest",
                store.url()
            )));
        }
    }
    Ok(first)
}

fn by_id(store: &dyn Store, all: Vec<BackupEntry>, id: &str) -> Result<Option<BackupEntry>> {
    let matching: Vec<BackupEntry> = all.into_iter().filter(|b| b.id == id).collect();
    if matching.len() > 1 {
        let names: Vec<String> = matching
            .iter()
            .map(|b| format!("{}/{}", b.cluster, b.id))
            .collect();
        return Err(Error::usage(format!(
            "backup id {id} is ambiguous in {}: use one of {}",
            store.url(),
            names.join(", ")
        )));
    }
    Ok(matching.into_iter().next())
}

/// The reasons a found backup may not be acted on, each its own message (exit 3).
fn vouch(b: &BackupEntry, store: &dyn Store) -> Result<()> {
    let name = format!("backup {}/{}", b.cluster, b.id);
    let why = match b.status {
        Status::Complete => None,
        Status::Incomplete | Status::UnreadableManifest => Some(format!(
            "{name} has no (readable) manifest: it is not a complete backup (an interrupted run, or the manifest was removed or replaced)"
        )),
        Status::MismatchedManifest => Some(format!(
            "the manifest of {name} describes another backup: it was edited or swapped"
        )),
        Status::ObjectMissing => Some(format!(
            "the object of {name} is missing from {}",
            store.url()
        )),
        Status::FutureDated => Some(format!(
            "{name}'s manifest says it was written in the future: its time cannot be believed (planted?)"
        )),
    };
    if let Some(why) = why {
        return Err(Error::VerifyFailed(why));
    }
    match b.signature {
        Signature::Unchecked | Signature::Valid => Ok(()),
        Signature::Missing => Err(Error::VerifyFailed(format!(
            "{name} has no manifest signature, but a trusted key is configured: kirt did not make it with your key (planted?)"
        ))),
        Signature::Invalid => Err(Error::VerifyFailed(format!(
            "{name}: manifest signature check failed with the trusted key: the manifest was modified or signed by another key"
        ))),
    }
}
