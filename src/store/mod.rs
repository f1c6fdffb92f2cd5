//! Where bytes go: a small async trait with a local-directory and an S3 implementation.
//! Objects become visible only when an upload commits; an aborted or dropped upload leaves nothing.

mod local;
mod s3;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::io::AsyncRead;

pub use local::LocalStore;
pub use s3::{S3Options, S3Store};

use crate::error::{Error, Result};

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

    async fn delete(&self, key: &str) -> Result<()>;

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
        return Ok(Arc::new(S3Store::new(bucket, prefix, s3).await?));
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
    fn joins_keys() {
        assert_eq!(join_key("", "a/b"), "a/b");
        assert_eq!(join_key("p/", "/a"), "p/a");
        assert_eq!(join_key("/p/q", "a"), "p/q/a");
    }
}
