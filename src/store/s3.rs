//! S3 store: multipart uploads with bounded part size and concurrency (memory ≈ part size ×
//! (concurrency + 1)), aborted on any failure or drop, so nothing partial is ever visible.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::RequestChecksumCalculation;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ServerSideEncryption, StorageClass,
};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use tokio::task::JoinSet;

use super::{join_key, ObjectInfo, Store, Upload};
use crate::error::{Error, Result};

const MIN_PART: u64 = 5 * 1024 * 1024;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct S3Options {
    /// S3 endpoint URL for S3-compatible servers (default: AWS, or $AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// S3 region (default: the AWS config chain, else us-east-1)
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Use path-style bucket addressing (most S3-compatible servers need it)
    #[arg(long)]
    pub path_style: bool,
    /// Server-side encryption: AES256 or aws:kms
    #[arg(long, value_name = "ALGO")]
    pub sse: Option<String>,
    /// S3 storage class, e.g. STANDARD_IA
    #[arg(long, value_name = "CLASS")]
    pub storage_class: Option<String>,
    /// Multipart part size, e.g. 8MiB (minimum 5MiB); memory ≈ part size × (concurrency + 1)
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = crate::units::parse_size)]
    #[serde(with = "crate::units::size_serde")]
    #[schemars(with = "String")]
    pub part_size: u64,
    /// Parts uploaded at the same time
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub concurrency: usize,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            endpoint_url: None,
            region: None,
            path_style: false,
            sse: None,
            storage_class: None,
            part_size: 8 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    opts: S3Options,
    endpoint: String,
    /// Parts carry a CRC32 and an unsigned payload, unless checksums were turned down
    /// (AWS_REQUEST_CHECKSUM_CALCULATION=when_required, for servers that reject them): then
    /// the SigV4 payload signature protects them.
    part_checksums: bool,
    pending: pending::Pending,
}

impl S3Store {
    pub async fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<Self> {
        if opts.part_size < MIN_PART {
            return Err(Error::usage(format!(
                "--part-size {} is below S3's minimum of 5MiB",
                opts.part_size
            )));
        }
        if opts.concurrency == 0 {
            return Err(Error::usage("--concurrency must be at least 1"));
        }
        if let Some(v) = &opts.sse {
            if !ServerSideEncryption::values().contains(&v.as_str()) {
                return Err(Error::usage(format!(
                    "unknown --sse {v:?}: use one of {:?}",
                    ServerSideEncryption::values()
                )));
            }
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(5))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            );
        if let Some(r) = &opts.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        let sdk = loader.load().await;
        let mut b = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(opts.path_style);
        if sdk.region().is_none() {
            b = b.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(ep) = &opts.endpoint_url {
            b = b.endpoint_url(ep);
        }
        let endpoint = opts
            .endpoint_url
            .clone()
            .or_else(|| sdk.endpoint_url().map(str::to_string))
            .unwrap_or_else(|| "AWS S3".into());
        // Fail before any work starts when no credentials can be found.
        match sdk.credentials_provider() {
            Some(p) => {
                use aws_credential_types::provider::ProvideCredentials;
                if let Err(e) = p.provide_credentials().await {
                    return Err(Error::usage(format!(
                        "no usable AWS credentials for s3://{bucket}: {e} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a cloud identity)"
                    )));
                }
            }
            None => {
                return Err(Error::usage(format!(
                    "no AWS credentials for s3://{bucket} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a cloud identity)"
                )))
            }
        }
        let client = aws_sdk_s3::Client::from_conf(b.build());
        let prefix = prefix.trim_matches('/').to_string();
        let pending = pending::Pending {
            client: client.clone(),
            bucket: bucket.to_string(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        };
        pending.cleanup().await;
        Ok(S3Store {
            client,
            bucket: bucket.to_string(),
            prefix,
            opts: opts.clone(),
            endpoint,
            part_checksums: sdk.request_checksum_calculation()
                != Some(RequestChecksumCalculation::WhenRequired),
            pending,
        })
    }

    fn key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn loc(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }
}

/// Turns an SDK error into a kirt error that says what to do.
fn s3_err<E>(
    loc: &str,
    endpoint: &str,
    what: &str,
    e: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let with_source = |message: String, e| Error::Store {
        location: loc.to_string(),
        message,
        source: Some(Box::new(e)),
    };
    match &e {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => Error::Unreachable {
            what: "S3",
            endpoint: endpoint.to_string(),
            reason: format!("{what} {loc}: {}", DisplayErrorContext(&e)),
            hint: "check --endpoint-url and that the S3 server is up".into(),
        },
        _ => {
            let code = e.code().unwrap_or("");
            let status = match &e {
                SdkError::ServiceError(s) => s.raw().status().as_u16(),
                _ => 0,
            };
            match code {
                "NoSuchBucket" => Error::not_found(format!("bucket of {loc}"), "create the bucket or fix the URL"),
                "NoSuchKey" | "NotFound" => Error::not_found(format!("object {loc}"), "check the backup id (kirt backup list)"),
                "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => with_source(
                    format!("{what}: access denied ({code}); check the credentials and the bucket policy"),
                    e,
                ),
                _ if status == 404 && code.is_empty() => {
                    Error::not_found(loc.to_string(), "check the bucket and key")
                }
                _ => {
                    let message = format!("{what} failed: {}", DisplayErrorContext(&e));
                    with_source(message, e)
                }
            }
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        Ok(Box::new(S3Upload {
            pending: self.pending.clone(),
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.key(key),
            endpoint: self.endpoint.clone(),
            opts: Arc::new(self.opts.clone()),
            part_checksums: self.part_checksums,
            buf: BytesMut::new(),
            upload_id: None,
            next_part: 1,
            heartbeat: None,
            tasks: JoinSet::new(),
            free: Vec::new(),
            parts: Vec::new(),
            size: 0,
            done: false,
        }))
    }

    async fn get(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| s3_err(&self.loc(key), &self.endpoint, "GetObject", e))?;
        Ok(Box::new(out.body.into_async_read()))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let full = self.key(prefix);
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_err(&self.url(), &self.endpoint, "ListObjectsV2", e))?;
            for o in page.contents() {
                let Some(k) = o.key() else { continue };
                let rel = k.strip_prefix(&strip).unwrap_or(k).to_string();
                if rel.starts_with(".kirt/") {
                    continue; // kirt's own bookkeeping (pending-upload records), not objects
                }
                let modified = o
                    .last_modified()
                    .and_then(|t| jiff::Timestamp::from_second(t.secs()).ok());
                out.push(ObjectInfo {
                    key: rel,
                    size: o.size().unwrap_or(0) as u64,
                    modified,
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
            .map_err(|e| s3_err(&self.loc(key), &self.endpoint, "DeleteObject", e))?;
        Ok(())
    }

    async fn check(&self) -> Result<String> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| s3_err(&self.url(), &self.endpoint, "HeadBucket", e))?;
        Ok(format!(
            "bucket {} reachable at {} with the credentials found",
            self.bucket, self.endpoint
        ))
    }
}

struct S3Upload {
    pending: pending::Pending,
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    endpoint: String,
    opts: Arc<S3Options>,
    part_checksums: bool,
    buf: BytesMut,
    upload_id: Option<String>,
    next_part: i32,
    /// Part uploads in flight; each hands its buffer back for reuse when done.
    tasks: JoinSet<Result<(CompletedPart, Option<BytesMut>)>>,
    /// Buffers of finished parts, reused so memory stays flat (no allocator churn).
    free: Vec<BytesMut>,
    parts: Vec<CompletedPart>,
    size: u64,
    done: bool,
    /// Keeps the pending-upload record fresh while the upload runs.
    heartbeat: Option<pending::Heartbeat>,
}

impl S3Upload {
    fn loc(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    async fn start_multipart(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key);
        if self.part_checksums {
            // every part carries a CRC32 (see send_part); S3 then keeps the object's checksum
            req = req.checksum_algorithm(ChecksumAlgorithm::Crc32);
        }
        if let Some(sse) = &self.opts.sse {
            req = req.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
        }
        if let Some(sc) = &self.opts.storage_class {
            req = req.storage_class(StorageClass::from(sc.as_str()));
        }
        let out = req
            .send()
            .await
            .map_err(|e| s3_err(&self.loc(), &self.endpoint, "CreateMultipartUpload", e))?;
        let id = out.upload_id().ok_or_else(|| {
            Error::store(self.loc(), "CreateMultipartUpload returned no upload id")
        })?;
        self.upload_id = Some(id.to_string());
        self.heartbeat = self.pending.record(&self.key, id).await;
        Ok(id.to_string())
    }

    /// Sends one part in the background, waiting first while `concurrency` parts are in flight.
    async fn send_part(&mut self, data: Bytes) -> Result<()> {
        let id = self.start_multipart().await?;
        while self.tasks.len() >= self.opts.concurrency {
            self.join_one().await?;
        }
        let (client, bucket, key, endpoint, n, checksums) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.endpoint.clone(),
            self.next_part,
            self.part_checksums,
        );
        self.next_part += 1;
        self.tasks.spawn(async move {
            let loc = format!("s3://{bucket}/{key} part {n}");
            let req = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&id)
                .part_number(n)
                .body(ByteStream::from(data.clone()));
            let out = if checksums {
                // A CRC32 checksum protects the body (S3 checks it): signing the payload too
                // would hash every stored byte once more, on both ends.
                req.checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
            } else {
                req.send().await
            }
            .map_err(|e| s3_err(&loc, &endpoint, "UploadPart", e))?;
            let part = CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_string))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                .build();
            Ok((part, data.try_into_mut().ok()))
        });
        Ok(())
    }

    async fn join_one(&mut self) -> Result<()> {
        if let Some(r) = self.tasks.join_next().await {
            let (part, buf) =
                r.map_err(|e| Error::store(self.loc(), format!("upload task failed: {e}")))??;
            self.parts.push(part);
            if let Some(mut buf) = buf {
                buf.clear();
                self.free.push(buf);
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<u64> {
        if self.upload_id.is_none() {
            // Small object: one PUT, atomic by nature.
            let mut req = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .body(ByteStream::from(std::mem::take(&mut self.buf).freeze()));
            if let Some(sse) = &self.opts.sse {
                req = req.server_side_encryption(ServerSideEncryption::from(sse.as_str()));
            }
            if let Some(sc) = &self.opts.storage_class {
                req = req.storage_class(StorageClass::from(sc.as_str()));
            }
            req.send()
                .await
                .map_err(|e| s3_err(&self.loc(), &self.endpoint, "PutObject", e))?;
            return Ok(self.size);
        }
        if !self.buf.is_empty() {
            let last = std::mem::take(&mut self.buf).freeze();
            self.send_part(last).await?;
        }
        while !self.tasks.is_empty() {
            self.join_one().await?;
        }
        let mut parts = std::mem::take(&mut self.parts);
        parts.sort_by_key(|p| p.part_number());
        let id = self.upload_id.clone().unwrap_or_default();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_err(&self.loc(), &self.endpoint, "CompleteMultipartUpload", e))?;
        self.heartbeat = None;
        if let Some(id) = self.upload_id.take() {
            self.pending.forget(&self.key, &id).await;
        }
        Ok(self.size)
    }

    async fn abort_inner(&mut self) {
        self.heartbeat = None;
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            // The server may be restarting: try again once; if it stays away, the record next to
            // the backups makes the next kirt run against this store abort it.
            for delay in [0u64, 1] {
                tokio::time::sleep(Duration::from_secs(delay)).await;
                match self
                    .client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&id)
                    .send()
                    .await
                {
                    Ok(_) => {
                        self.pending.forget(&self.key, &id).await;
                        return;
                    }
                    Err(e) if pending::gone(&e) => {
                        self.pending.forget(&self.key, &id).await;
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %DisplayErrorContext(&e), "abort of the multipart upload failed, retrying")
                    }
                }
            }
            tracing::warn!(object = %self.loc(), upload_id = %id,
                "could not abort the multipart upload (S3 unreachable); it is invisible, and the next kirt run \
                 against this bucket aborts it (a bucket lifecycle rule AbortIncompleteMultipartUpload also cleans it)");
        }
    }
}

/// Multipart upload ids kirt started and has not yet completed or aborted, each a small object
/// `PREFIX/.kirt/pending/HASH.json` next to the backups: a run killed mid-upload (even by
/// SIGKILL, in a pod whose disk is gone) leaves the id where the next run — in any pod — finds
/// it and aborts the upload (ListMultipartUploads is not available on every S3 server). With
/// write-only credentials the record is written but cannot be listed or removed: the bucket's
/// AbortIncompleteMultipartUpload lifecycle rule is then what cleans up (docs/deploy.md).
///
/// Another run may be uploading to the same prefix right now (two clusters' CronJobs, a backup
/// beside an evidence collection): its upload must not be aborted. A record names the process
/// that owns it; a run on the same machine (same boot and PID namespace) sees exactly whether
/// that process is gone. Otherwise the owner refreshes its record every [`HEARTBEAT`] and a
/// record untouched for [`STALE`] (server time) belongs to a dead run.
mod pending {
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
            if let Err(e) = self
                .client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.record_key(key, id))
                .send()
                .await
            {
                tracing::debug!(error = %DisplayErrorContext(&e), "cannot remove the pending-upload record (write-only credentials?)");
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
                Err(e) => {
                    tracing::debug!(error = %DisplayErrorContext(&e), "cannot list pending-upload records (no ListBucket?)");
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
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, mut data: Bytes) -> Result<()> {
        self.size += data.len() as u64;
        let part = self.opts.part_size as usize;
        while !data.is_empty() {
            // Each part is one buffer of exactly the part size (no doubling growth), reused once
            // its upload is done: memory stays part size × (concurrency + 1) whatever the size.
            if self.buf.capacity() == 0 {
                self.buf = self
                    .free
                    .pop()
                    .unwrap_or_else(|| BytesMut::with_capacity(part));
            }
            let n = (part - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data.split_to(n));
            if self.buf.len() < part {
                break;
            }
            let chunk = std::mem::take(&mut self.buf).freeze();
            if let Err(e) = self.send_part(chunk).await {
                self.abort_inner().await;
                self.done = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<u64> {
        let r = self.finish().await;
        if r.is_err() {
            self.abort_inner().await;
        }
        self.done = true;
        r
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_inner().await;
        self.done = true;
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped mid-way (task cancelled, error path that forgot to abort): abort in the background.
        if !self.done {
            if let Some(id) = self.upload_id.take() {
                self.tasks.abort_all();
                let (client, bucket, key, pending) = (
                    self.client.clone(),
                    self.bucket.clone(),
                    self.key.clone(),
                    self.pending.clone(),
                );
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let aborted = client
                            .abort_multipart_upload()
                            .bucket(bucket)
                            .key(&key)
                            .upload_id(&id)
                            .send()
                            .await;
                        if aborted.is_ok() {
                            pending.forget(&key, &id).await;
                        }
                    });
                }
            }
        }
    }
}
