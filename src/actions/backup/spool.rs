//! The stream's spool: every segment is sealed here first (its encrypted object, signature and
//! manifest, under the keys it gets in the store: a local store, files 0600 in a 0700 dir) and
//! then copied to the store, manifest last, and removed. While the store fails, sealed segments
//! wait here (up to `--spool-max`); a restart copies what it finds before watching again.
//!
//! What is read back is treated as planted: a spooled manifest is only used when it parses,
//! continues the chain (sequence, `prev` link, first revision), carries this stream's own valid
//! signature when it signs, and its object's bytes match the manifest's size and sha256 while
//! they are copied ([`super::copy::copy_verified`]). Anything else is removed, and the revisions
//! are read again from etcd.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::chain::{self, SegmentManifest};
use super::create::Publication;
use super::signing;
use crate::error::{Error, Result};
use crate::signal::Shutdown;
use crate::store::{self, S3Options, Store};

pub struct Spool {
    pub dir: PathBuf,
    pub max: u64,
    local: Arc<dyn Store>,
}

/// A sealed segment in the spool.
pub struct Sealed {
    pub manifest: SegmentManifest,
    pub manifest_bytes: Vec<u8>,
    pub manifest_key: String,
}

impl Spool {
    /// Creates `dir` (0700) if needed; a dir others may enter is refused.
    pub async fn open(dir: &Path, max: u64) -> Result<Spool> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| Error::io(format!("creating the spool {}", dir.display()), e))?;
        let md = std::fs::symlink_metadata(dir)
            .map_err(|e| Error::io(format!("reading the spool {}", dir.display()), e))?;
        // SAFETY: geteuid has no preconditions
        let me = unsafe { libc::geteuid() };
        if !md.is_dir() || md.uid() != me {
            return Err(Error::usage(format!(
                "--spool-dir {}: not a directory owned by this user (a symlink or someone else's dir is refused: sealed segments are kept there)",
                dir.display()
            )));
        }
        if md.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| Error::io(format!("making {} private", dir.display()), e))?;
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| Error::io(format!("resolving the spool {}", dir.display()), e))?;
        let local =
            store::open(&format!("file://{}", dir.display()), &S3Options::default()).await?;
        Ok(Spool { dir, max, local })
    }

    /// Where segments are sealed (create::publish writes there as to any store).
    pub fn store(&self) -> &dyn Store {
        self.local.as_ref()
    }

    /// Bytes in the spool, sealed segments and leftovers alike.
    pub async fn size(&self) -> Result<u64> {
        Ok(self.local.list("").await?.iter().map(|o| o.size).sum())
    }

    /// The sealed segment whose manifest is at `key`.
    pub async fn read(&self, key: &str) -> Result<Sealed> {
        let bytes = self.local.get_bytes(key, super::list::MAX_MANIFEST).await?;
        match serde_json::from_slice::<SegmentManifest>(&bytes) {
            Ok(m) if m.format == chain::FORMAT => Ok(Sealed {
                manifest: m,
                manifest_bytes: bytes,
                manifest_key: key.to_string(),
            }),
            _ => Err(Error::VerifyFailed(format!(
                "the spooled manifest {} is not a segment manifest",
                self.dir.join(key).display()
            ))),
        }
    }

    /// The sealed segments (those whose manifest, written last, is there), by chain and
    /// sequence; a manifest that does not parse is removed with its files.
    pub async fn sealed(&self) -> Result<Vec<Sealed>> {
        let mut out = Vec::new();
        for o in self.local.list("").await? {
            if !o.key.ends_with(super::manifest::MANIFEST_SUFFIX) {
                continue;
            }
            match self.read(&o.key).await {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::error!("{e}: removed");
                    self.remove_keys(std::slice::from_ref(&o.key)).await;
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.manifest.chain, a.manifest.sequence).cmp(&(&b.manifest.chain, b.manifest.sequence))
        });
        Ok(out)
    }

    /// Copies a sealed segment to `dst` (object checked against the manifest, signature, manifest
    /// last), then removes it from the spool.
    pub async fn upload(&self, dst: &dyn Store, s: &Sealed) -> Result<()> {
        let m = &s.manifest;
        let p = Publication {
            object_key: m.object.clone(),
            manifest_key: s.manifest_key.clone(),
            manifest: s.manifest_bytes.clone(),
            signature: self.signature(s).await?,
        };
        let name = format!(
            "spooled segment {}",
            self.dir.join(&s.manifest_key).display()
        );
        let stage = crate::progress::NoProgress;
        let stage = crate::progress::Progress::stage(&stage, "spool", None);
        super::copy::copy_verified(
            &Shutdown::manual(),
            self.local.as_ref(),
            dst,
            (m.object_size, &m.object_sha256),
            &p,
            true,
            &*stage,
            &name,
        )
        .await?;
        self.remove(s).await;
        Ok(())
    }

    /// The spooled signature of `s`, if any.
    pub async fn signature(&self, s: &Sealed) -> Result<Option<Vec<u8>>> {
        let key = format!("{}{}", s.manifest_key, signing::SUFFIX);
        match self.local.get_bytes(&key, signing::MAX_SIGNATURE).await {
            Ok(sig) => Ok(Some(sig)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes a sealed segment's files (manifest first: without it the rest is a leftover).
    pub async fn remove(&self, s: &Sealed) {
        self.remove_keys(&[
            s.manifest_key.clone(),
            format!("{}{}", s.manifest_key, signing::SUFFIX),
            s.manifest.object.clone(),
        ])
        .await;
    }

    /// Removes everything that is not a sealed segment's file (objects whose manifest was never
    /// written: a seal cut short).
    pub async fn remove_leftovers(&self, sealed: &[Sealed]) -> Result<()> {
        let keep: std::collections::HashSet<String> = sealed
            .iter()
            .flat_map(|s| {
                [
                    s.manifest_key.clone(),
                    format!("{}{}", s.manifest_key, signing::SUFFIX),
                    s.manifest.object.clone(),
                ]
            })
            .collect();
        let gone: Vec<String> = self
            .local
            .list("")
            .await?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| !keep.contains(k))
            .collect();
        self.remove_keys(&gone).await;
        Ok(())
    }

    async fn remove_keys(&self, keys: &[String]) {
        for k in keys {
            match self.local.delete(k).await {
                Ok(()) | Err(Error::NotFound { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "could not remove {k} from the spool"),
            }
        }
    }
}

/// Whether a spooled segment continues `prev` at `sequence` from revision `first`, and carries
/// this stream's signature when it signs: `Err` says why not.
#[allow(clippy::too_many_arguments)]
pub fn continues(
    s: &Sealed,
    chain_base: &str,
    cluster: &str,
    prev: &chain::Link,
    sequence: u64,
    first: i64,
    signature: Option<&[u8]>,
    signer: Option<&minisign::PublicKey>,
) -> std::result::Result<(), String> {
    let m = &s.manifest;
    if m.cluster_name != cluster || m.chain != chain_base {
        return Err(format!("it belongs to {}/{}", m.cluster_name, m.chain));
    }
    if chain::manifest_key(cluster, chain_base, &m.id) != s.manifest_key
        || m.object != chain::object_key(cluster, chain_base, &m.id, m.encryption.is_some())
    {
        return Err("its keys do not match its id".into());
    }
    if m.sequence != sequence || m.prev != *prev || m.first_revision != first {
        return Err(format!(
            "it does not continue the chain (sequence {}, first revision {}; due {sequence}, {first})",
            m.sequence, m.first_revision
        ));
    }
    if m.last_revision < m.first_revision {
        return Err("its revisions run backwards".into());
    }
    if let Some(pk) = signer {
        signing::check(pk, &s.manifest_bytes, signature.unwrap_or_default())
            .map_err(|why| format!("its signature {why}"))?;
    }
    Ok(())
}
