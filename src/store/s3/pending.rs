//! Multipart upload ids kirt started and has not yet completed or aborted, each a small object
//! `PREFIX/.kirt/pending/HASH.json` next to the backups: a run killed mid-upload (even by
//! SIGKILL, in a pod whose disk is gone) leaves the id where the next run — in any pod — finds
//! it and aborts the upload (ListMultipartUploads is not available on every S3 server). With
//! write-only credentials the record is written but cannot be listed or removed: the bucket's
//! AbortIncompleteMultipartUpload lifecycle rule is then what cleans up (docs/deploy.md).
//!
//! Another run may be uploading to the same prefix right now (two clusters' CronJobs, a backup
//! beside an evidence collection): its upload must not be aborted. A record names the process
//! that owns it; a run on the same machine (same boot and PID namespace) sees exactly whether
//! that process is gone. Otherwise the owner refreshes its record every [`HEARTBEAT`] and a
//! record untouched for [`STALE`] (server time) belongs to a dead run.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where records live, below the store's prefix; `list` never shows it.
pub const DIR: &str = ".kirt/pending/";
/// Largest record read back.
const MAX_RECORD: usize = 4096;
/// How often a running upload rewrites its record.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(60);
/// A record not rewritten for this long (by the server's clock) belongs to a dead run.
const STALE: std::time::Duration = std::time::Duration::from_secs(15 * 60);

#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    upload_id: String,
    started_at: jiff::Timestamp,
    #[serde(default)]
    owner: Option<Owner>,
}

/// The process that started an upload, precisely enough to tell on the same machine
/// whether it still runs (a PID alone may have been reused).
#[derive(Serialize, Deserialize, PartialEq, Clone, Debug)]
pub(super) struct Owner {
    boot_id: String,
    pid_ns: String,
    pid: u32,
    /// The process's start time (clock ticks after boot, /proc/PID/stat field 22).
    started: u64,
}

impl Owner {
    pub(super) fn me() -> Option<Owner> {
        let pid = std::process::id();
        Some(Owner {
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()?
                .trim()
                .to_string(),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()?
                .display()
                .to_string(),
            pid,
            started: process_start(pid)?,
        })
    }

    /// Whether the owner still runs: known only on the same machine and PID namespace.
    fn alive(&self) -> Option<bool> {
        let me = Owner::me()?;
        if me.boot_id != self.boot_id || me.pid_ns != self.pid_ns {
            return None;
        }
        Some(process_start(self.pid) == Some(self.started))
    }
}

/// A live (not zombie) process's start time.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // after the command name: field 3 (state) is index 0, field 22 (starttime) index 19
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Keeps an upload's record fresh while it runs; dropping it stops the refresh.
pub struct Heartbeat(tokio::task::AbortHandle);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
pub struct Pending {
    pub client: aws_sdk_s3::Client,
    pub bucket: String,
    /// The store's prefix, with a trailing slash (or empty).
    pub prefix: String,
}

impl Pending {
    fn record_key(&self, key: &str, id: &str) -> String {
        let h = Sha256::digest(format!("{key}\n{id}").as_bytes());
        format!("{}{DIR}{}.json", self.prefix, &hex::encode(h)[..32])
    }

    /// Notes an upload before its first part is sent, and keeps the note fresh until the
    /// returned heartbeat is dropped.
    pub async fn record(&self, key: &str, id: &str) -> Option<Heartbeat> {
        let rec = Record {
            key: key.into(),
            upload_id: id.into(),
            started_at: jiff::Timestamp::now(),
            owner: Owner::me(),
        };
        let body = serde_json::to_vec(&rec).ok()?;
        let put = {
            let (client, bucket, rkey) = (
                self.client.clone(),
                self.bucket.clone(),
                self.record_key(key, id),
            );
            move || {
                client
                    .put_object()
                    .bucket(&bucket)
                    .key(&rkey)
                    .body(ByteStream::from(body.clone()))
                    .send()
            }
        };
        if let Err(e) = put().await {
            tracing::warn!(error = %DisplayErrorContext(&e), "cannot record the pending upload next to the backups; if this run is killed, only a bucket lifecycle rule cleans it up");
            return None;
        }
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = put().await {
                    tracing::debug!(error = %DisplayErrorContext(&e), "cannot refresh the pending-upload record");
                }
            }
        });
        Some(Heartbeat(task.abort_handle()))
    }

    /// Removes the note of an upload that was completed or aborted.
    pub async fn forget(&self, key: &str, id: &str) {
        let rkey = self.record_key(key, id);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&rkey)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if super::denied(&e) => {
                tracing::warn!(record = %rkey, "cannot remove the pending-upload record (no s3:DeleteObject on {}{DIR}*: write-only credentials); it stays until the bucket's lifecycle rule expires it (docs/deploy.md)", self.prefix);
            }
            Err(e) => {
                tracing::debug!(error = %DisplayErrorContext(&e), "cannot remove the pending-upload record")
            }
        }
    }

    /// Aborts the uploads recorded by runs that are gone (best effort, quietly).
    pub async fn cleanup(&self) {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}{DIR}", self.prefix))
            .send()
            .await;
        let objects = match listed {
            Ok(out) => out.contents().to_vec(),
            Err(e) if super::denied(&e) => {
                tracing::warn!("cannot list the pending-upload records under {}{DIR} (no s3:ListBucket: write-only credentials); uploads left by killed runs are then aborted only by the bucket's AbortIncompleteMultipartUpload lifecycle rule (docs/deploy.md)", self.prefix);
                return;
            }
            Err(e) => {
                tracing::debug!(error = %DisplayErrorContext(&e), "cannot list pending-upload records");
                return;
            }
        };
        let now = std::time::SystemTime::now();
        for o in objects {
            let Some(rkey) = o.key() else { continue };
            let Some(rec) = self.read(rkey).await else {
                continue;
            };
            let stale = o
                .last_modified()
                .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                .and_then(|t| now.duration_since(t).ok())
                .is_some_and(|age| age > STALE);
            let dead = match rec.owner.as_ref().and_then(Owner::alive) {
                Some(alive) => !alive,
                None => stale,
            };
            if dead {
                self.abort_recorded(rkey, &rec).await;
            }
        }
    }

    async fn read(&self, rkey: &str) -> Option<Record> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(rkey)
            .send()
            .await
            .ok()?;
        if out.content_length().unwrap_or(0) as usize > MAX_RECORD {
            tracing::warn!(record = rkey, "pending-upload record too large; ignored");
            return None;
        }
        let bytes = out.body.collect().await.ok()?.into_bytes();
        serde_json::from_slice(&bytes).ok()
    }

    async fn abort_recorded(&self, rkey: &str, rec: &Record) {
        let full = rec.key.trim_start_matches('/');
        // A record names an upload under this store's prefix, nowhere else.
        if !full.starts_with(&self.prefix) {
            tracing::warn!(record = rkey, key = %rec.key, "pending-upload record names an object outside this store; ignored");
            return;
        }
        let res = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(&rec.upload_id)
            .send()
            .await;
        let remove = match &res {
            Ok(_) => {
                tracing::info!(key = %rec.key, "aborted a multipart upload left by an interrupted run");
                true
            }
            Err(e) if gone(e) => true,
            // s3s-fs answers 403 for uploads it no longer has; a real permission problem
            // keeps the record until it is old enough that only a lifecycle rule can help.
            Err(e) if e.code() == Some("AccessDenied") => {
                let age = jiff::Timestamp::now().duration_since(rec.started_at);
                age > jiff::SignedDuration::from_hours(24)
            }
            Err(e) => {
                tracing::debug!(key = %rec.key, error = %DisplayErrorContext(e), "cannot abort a recorded multipart upload yet");
                false
            }
        };
        if remove {
            let _ = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(rkey)
                .send()
                .await;
        }
    }
}

/// The upload no longer exists (S3: 404 NoSuchUpload; moto answers 500 for uploads it
/// already dropped).
pub fn gone<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    matches!(e.code(), Some("NoSuchUpload"))
        || matches!(e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404)
}
