//! Where bytes go: a small async trait with a local-directory and an S3 implementation.
//! Objects become visible only when an upload commits; an aborted or dropped upload leaves nothing.
//! A store opened with a [`Retention`] writes every object under S3 Object Lock; a store also
//! says whether an object is protected from deletion now, and holds kirt's run locks.

mod local;
mod s3;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

use crate::error::{Error, Result};
use crate::runlock::{Attempt, Holder};

/// S3 Object Lock retention modes: governance can be lifted by an identity allowed
/// `s3:BypassGovernanceRetention`; compliance by nobody, not even the account's root user.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    Governance,
    Compliance,
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// Object Lock retention: what writes carry, or what an object has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retention {
    pub mode: LockMode,
    /// Nobody can delete the object (version) before this instant.
    pub retain_until: jiff::Timestamp,
}

/// `--object-lock MODE --retain-for DURATION`: what is written cannot be deleted (nor
/// overwritten in place) by anyone before the retention ends.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ObjectLockOptions {
    /// Write under S3 Object Lock in this mode: governance (an identity allowed
    /// s3:BypassGovernanceRetention can still delete) or compliance (nobody can); the bucket
    /// must have Object Lock enabled
    #[arg(long, value_enum, value_name = "MODE", requires = "retain_for")]
    pub object_lock: Option<LockMode>,
    /// How long what is written stays locked (with --object-lock), e.g. 30d
    #[arg(long, value_name = "DURATION", requires = "object_lock", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub retain_for: Option<Duration>,
}

impl ObjectLockOptions {
    /// The retention of writes made from `from` on (to the second); a usage error when only one
    /// of the two options is given.
    pub fn retention(&self, from: jiff::Timestamp) -> Result<Option<Retention>> {
        match (self.object_lock, self.retain_for) {
            (None, None) => Ok(None),
            (Some(mode), Some(d)) if !d.is_zero() => {
                let until = jiff::SignedDuration::try_from(d)
                    .ok()
                    .and_then(|d| from.checked_add(d).ok())
                    .and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok())
                    .ok_or_else(|| Error::usage(format!("--retain-for {d:?} is too long")))?;
                Ok(Some(Retention {
                    mode,
                    retain_until: until,
                }))
            }
            (Some(_), Some(_)) => Err(Error::usage("--retain-for must be longer than 0s")),
            _ => Err(Error::usage(
                "--object-lock and --retain-for go together: the mode and how long",
            )),
        }
    }
}

/// Why an object cannot be deleted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Object Lock retention in force.
    Retained(Retention),
    /// An Object Lock legal hold (no date: until someone lifts it).
    LegalHold,
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Retained(r) => write!(
                f,
                "locked until {} ({})",
                r.retain_until.strftime("%Y-%m-%dT%H:%M:%SZ"),
                r.mode
            ),
            Protection::LegalHold => f.write_str("under an Object Lock legal hold"),
        }
    }
}

/// One thing `kirt doctor --store` found out about a store (versioning, Object Lock, a
/// permission tried with a harmless request).
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: String,
    /// false: something a role may need is missing or off (a warning, not a failure).
    pub ok: bool,
    pub detail: String,
    pub hint: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectInfo {
    /// Key relative to the store's root/prefix.
    pub key: String,
    pub size: u64,
    pub modified: Option<jiff::Timestamp>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// The location as the user would write it (for messages and manifests).
    fn url(&self) -> String;

    /// Starts writing `key`; nothing is visible until `commit`.
    async fn create(&self, key: &str) -> Result<Box<dyn Upload>>;

    /// Reads `key` as a stream.
    async fn get(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>>;

    /// Every object under `prefix` (relative keys), in no particular order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    /// Removes `key` for good (on a versioned bucket: the version that is current, not merely
    /// hidden behind a delete marker). A key that does not exist is not an error.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Whether `key` is protected from deletion right now (Object Lock); `None` when it can be
    /// deleted. Stores without Object Lock never protect anything.
    async fn protection(&self, _key: &str) -> Result<Option<Protection>> {
        Ok(None)
    }

    /// Takes the run lock `name` for `holder`: an exclusive lock file on a local store, a
    /// conditional PUT (`If-None-Match: *`) of `.kirt/locks/NAME.json` on S3, renewed while held
    /// and taken over once not renewed for its lease.
    async fn lock(&self, name: &str, holder: &Holder, lease: Duration) -> Result<Attempt>;

    /// What `kirt doctor --store` reports beyond [`Store::check`]: versioning, Object Lock and
    /// which permissions this identity has (each tried with a request that changes nothing).
    async fn inspect(&self) -> Vec<Finding> {
        Vec::new()
    }

    /// Removes what interrupted uploads left behind that is older than `older_than` (a local
    /// store's partial files; an S3 store's pending uploads are aborted when it is opened).
    /// Returns what was (or in a dry run would be) removed.
    async fn remove_stale(
        &self,
        _older_than: std::time::Duration,
        _dry_run: bool,
    ) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Proves the store is usable (directory writable, bucket reachable with the credentials
    /// found); returns a one-line description for `kirt doctor`.
    async fn check(&self) -> Result<String>;

    /// Writes a small object in one go (manifests, signatures).
    async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let mut up = self.create(key).await?;
        if let Err(e) = up.write(data).await {
            up.abort().await;
            return Err(e);
        }
        up.commit().await.map(|_| ())
    }

    /// Reads a small object whole (manifests, signatures), at most `limit` bytes: anything
    /// larger is not what kirt writes there, and is refused without being read.
    async fn get_bytes(&self, key: &str, limit: u64) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let r = self.get(key).await?;
        let mut buf = Vec::new();
        r.take(limit.saturating_add(1))
            .read_to_end(&mut buf)
            .await
            .map_err(|e| Error::Store {
                location: format!("{}/{key}", self.url()),
                message: format!("read failed: {e}"),
                source: Some(Box::new(e)),
            })?;
        if buf.len() as u64 > limit {
            return Err(Error::VerifyFailed(format!(
                "{}/{key} is larger than {limit} bytes: not what kirt writes there (planted or corrupt); not read",
                self.url()
            )));
        }
        Ok(buf)
    }
}

/// An object being written. Dropping it without `commit` discards it.
#[async_trait]
pub trait Upload: Send {
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Makes the object visible; returns its size.
    async fn commit(self: Box<Self>) -> Result<u64>;
    /// Discards everything written (best effort; failures are logged).
    async fn abort(self: Box<Self>);
}

/// Opens `url`: `s3://bucket/prefix`, `file:///dir` or a plain directory path.
pub async fn open(url: &str, s3: &S3Options) -> Result<Arc<dyn Store>> {
    open_retained(url, s3, None).await
}

/// Opens `url` for writing objects that nobody can delete before `retention` ends (S3 Object
/// Lock); with `None`, as [`open`].
pub async fn open_retained(
    url: &str,
    s3: &S3Options,
    retention: Option<Retention>,
) -> Result<Arc<dyn Store>> {
    if retention.is_some() && !url.starts_with("s3://") {
        return Err(Error::usage(format!(
            "--object-lock needs an S3 store with Object Lock enabled; {url} is not one"
        )));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(Error::usage(format!(
                "bad store URL {url:?}: no bucket (expected s3://BUCKET/PREFIX)"
            )));
        }
        // S3's rules (legacy us-east-1 names allow upper case, underscores and up to 255 chars):
        // said here rather than as a bare 400 from the server
        let valid = (3..=255).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !valid {
            return Err(Error::usage(format!(
                "bad store URL {url:?}: {bucket:?} is not an S3 bucket name (3-63 lower-case letters, digits, dots and hyphens)"
            )));
        }
        return Ok(Arc::new(S3Store::new(bucket, prefix, s3, retention).await?));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(Error::usage(format!(
                "bad store URL {url:?}: no path (expected file:///DIR)"
            )));
        }
        return Ok(Arc::new(LocalStore::new(path)));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(Error::usage(format!(
            "unsupported store URL scheme {scheme:?} in {url:?}: use s3://BUCKET/PREFIX, file:///DIR or a directory path"
        )));
    }
    if url.is_empty() {
        return Err(Error::usage(
            "empty store location: give a directory, file:///DIR or s3://BUCKET/PREFIX",
        ));
    }
    Ok(Arc::new(LocalStore::new(url)))
}

/// Joins a prefix and a key with exactly one slash.
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    let p = prefix.trim_matches('/');
    let k = key.trim_start_matches('/');
    if p.is_empty() {
        k.to_string()
    } else {
        format!("{p}/{k}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rejects_unknown_schemes_and_empty_buckets() {
        let o = S3Options::default();
        let e = open("ftp://x/y", &o).await.err().unwrap();
        assert!(
            e.to_string()
                .contains("unsupported store URL scheme \"ftp\""),
            "{e}"
        );
        assert_eq!(e.exit(), crate::Exit::Usage);
        let e = open("s3:///x", &o).await.err().unwrap();
        assert!(e.to_string().contains("no bucket"), "{e}");
        for bad in ["s3://ck/x", "s3://my bucket/x", "s3://b:1/x"] {
            let e = open(bad, &o).await.err().unwrap();
            assert!(
                e.to_string().contains("is not an S3 bucket name"),
                "{bad}: {e}"
            );
            assert_eq!(e.exit(), crate::Exit::Usage);
        }
    }

    #[test]
    fn object_lock_options_give_a_retention_to_the_second() {
        let from: jiff::Timestamp = "2026-11-27T10:00:00.750Z".parse().unwrap();
        let none = ObjectLockOptions::default();
        assert_eq!(none.retention(from).unwrap(), None);
        let o = ObjectLockOptions {
            object_lock: Some(LockMode::Compliance),
            retain_for: Some(Duration::from_secs(14 * 86400)),
        };
        let r = o.retention(from).unwrap().unwrap();
        assert_eq!(r.mode, LockMode::Compliance);
        assert_eq!(r.retain_until, "2026-12-11T10:00:00Z".parse().unwrap());
        assert_eq!(
            Protection::Retained(r).to_string(),
            "locked until 2026-12-11T10:00:00Z (compliance)"
        );
        for bad in [
            ObjectLockOptions {
                object_lock: Some(LockMode::Governance),
                retain_for: None,
            },
            ObjectLockOptions {
                object_lock: None,
                retain_for: Some(Duration::from_secs(60)),
            },
            ObjectLockOptions {
                object_lock: Some(LockMode::Governance),
                retain_for: Some(Duration::ZERO),
            },
        ] {
            let e = bad.retention(from).unwrap_err();
            assert_eq!(e.exit(), crate::Exit::Usage, "{e}");
        }
    }

    #[tokio::test]
    async fn object_lock_is_refused_on_a_local_store() {
        let r = Some(Retention {
            mode: LockMode::Compliance,
            retain_until: jiff::Timestamp::now(),
        });
        let e = open_retained("/tmp/x", &S3Options::default(), r)
            .await
            .err()
            .unwrap();
        assert_eq!(e.exit(), crate::Exit::Usage);
        assert!(e.to_string().contains("needs an S3 store"), "{e}");
    }

    #[test]
    fn joins_keys() {
        assert_eq!(join_key("", "a/b"), "a/b");
        assert_eq!(join_key("p/", "/a"), "p/a");
        assert_eq!(join_key("/p/q", "a"), "p/q/a");
    }
}
