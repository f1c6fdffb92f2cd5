//! S3 store: multipart uploads with bounded part size and concurrency (memory ≈ part size ×
//! (concurrency + 1)), aborted on any failure or drop, so nothing partial is ever visible.
//! Objects can be written under Object Lock retention; deletes remove the current version for
//! good. kirt's own bookkeeping lives under `PREFIX/.kirt/` (never listed): records of open
//! multipart uploads ([`pending`]) and run locks ([`lock`]).

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

use super::{join_key, Finding, LockMode, ObjectInfo, Protection, Retention, Store, Upload};
use crate::error::{Error, Result};
use crate::runlock::{Attempt, Holder};

mod inspect;
mod lock;
mod pending;

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
    /// AWS shared-config profile whose credentials and region to use (default: the standard
    /// chain: environment, $AWS_PROFILE, cloud identity)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
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
            profile: None,
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
    /// Object Lock retention of every object this store writes.
    retention: Option<Retention>,
}

impl S3Store {
    pub async fn new(
        bucket: &str,
        prefix: &str,
        opts: &S3Options,
        retention: Option<Retention>,
    ) -> Result<Self> {
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
        if let Some(p) = &opts.profile {
            // the profile's credentials, even where the environment holds others
            loader = loader.profile_name(p).credentials_provider(
                aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(p)
                    .build(),
            );
        }
        let sdk = loader.load().await;
        // kirt checks what it reads against sha256 digests of its own (signed manifests): the
        // SDK's check of the response checksum adds nothing, and cannot check a multipart
        // object's part-level checksum anyway (it warns on every such download)
        let mut b = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.path_style)
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
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
                        "no usable AWS credentials for s3://{bucket}: {} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --profile, or run with a cloud identity)",
                        DisplayErrorContext(&e)
                    )));
                }
            }
            None => {
                return Err(Error::usage(format!(
                    "no AWS credentials for s3://{bucket} (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with a cloud identity)"
                )))
            }
        }
        let part_checksums =
            sdk.request_checksum_calculation() != Some(RequestChecksumCalculation::WhenRequired);
        if retention.is_some() && !part_checksums {
            // S3 takes Object Lock writes only with a Content-MD5 or checksum
            return Err(Error::usage(
                "--object-lock needs request checksums: unset AWS_REQUEST_CHECKSUM_CALCULATION=when_required",
            ));
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
            part_checksums,
            pending,
            retention,
        })
    }

    fn key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn loc(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(key))
    }

    /// The object's current version id and Object Lock state; `None` when it does not exist.
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<aws_sdk_s3::operation::head_object::HeadObjectOutput>> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(out) => Ok(Some(out)),
            Err(e) => match s3_err(&self.loc(key), &self.endpoint, "HeadObject", e) {
                Error::NotFound { .. } => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Object Lock must be on for a store that writes with retention: said before any upload
    /// (an identity that may not read the configuration is warned, and the first write tells).
    async fn check_object_lock(&self) -> Result<()> {
        if self.retention.is_none() {
            return Ok(());
        }
        let got = self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await;
        let e = match got {
            Ok(out) => {
                let on = out
                    .object_lock_configuration()
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                if on {
                    return Ok(());
                }
                return Err(no_object_lock(&self.bucket));
            }
            Err(e) => e,
        };
        match e.code() {
            Some("ObjectLockConfigurationNotFoundError") => Err(no_object_lock(&self.bucket)),
            Some("NotImplemented") => Err(Error::usage(format!(
                "the S3 server at {} does not implement Object Lock: --object-lock cannot protect backups there",
                self.endpoint
            ))),
            _ => match s3_err(&self.url(), &self.endpoint, "GetObjectLockConfiguration", e) {
                e if e.is_store_denied() => {
                    tracing::warn!("{e}: cannot check that bucket {} has Object Lock enabled; the first locked write will tell", self.bucket);
                    Ok(())
                }
                e => Err(e),
            },
        }
    }
}

fn no_object_lock(bucket: &str) -> Error {
    Error::usage(format!(
        "bucket {bucket} does not have Object Lock enabled: --object-lock needs a bucket created with it (aws s3api create-bucket --object-lock-enabled-for-bucket; docs/backup.md)"
    ))
}

/// Whether S3 refused for lack of permission.
fn denied<E: ProvideErrorMetadata>(
    e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    matches!(e.code(), Some("AccessDenied"))
        || matches!(e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 403)
}

/// The IAM action an S3 operation needs (what an AccessDenied means).
fn iam_action(op: &str) -> &'static str {
    match op {
        "GetObject" | "HeadObject" => "s3:GetObject",
        "ListObjectsV2" | "HeadBucket" => "s3:ListBucket",
        "DeleteObject" => "s3:DeleteObject",
        "DeleteObjectVersion" => "s3:DeleteObjectVersion",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "PutObjectRetention" => "s3:PutObjectRetention",
        "GetObjectLockConfiguration" => "s3:GetBucketObjectLockConfiguration",
        "GetBucketVersioning" => "s3:GetBucketVersioning",
        _ => "s3:PutObject", // PutObject, CreateMultipartUpload, UploadPart, Complete…
    }
}

fn aws_time(t: jiff::Timestamp) -> aws_sdk_s3::primitives::DateTime {
    aws_sdk_s3::primitives::DateTime::from_millis(t.as_millisecond())
}

fn jiff_time(t: &aws_sdk_s3::primitives::DateTime) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(t.to_millis().ok()?).ok()
}

fn lock_mode(r: &Retention) -> aws_sdk_s3::types::ObjectLockMode {
    match r.mode {
        LockMode::Governance => aws_sdk_s3::types::ObjectLockMode::Governance,
        LockMode::Compliance => aws_sdk_s3::types::ObjectLockMode::Compliance,
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
        _ if denied(&e) => Error::StoreDenied {
            location: loc.to_string(),
            action: iam_action(what).to_string(),
            source: Some(Box::new(e)),
        },
        _ => {
            let code = e.code().unwrap_or("");
            let status = match &e {
                SdkError::ServiceError(s) => s.raw().status().as_u16(),
                _ => 0,
            };
            match code {
                "NoSuchBucket" => Error::not_found(
                    format!("bucket of {loc}"),
                    "create the bucket or fix the URL",
                ),
                "NoSuchKey" | "NotFound" => Error::not_found(
                    format!("object {loc}"),
                    "check the backup id (kirt backup list)",
                ),
                "InvalidAccessKeyId" | "SignatureDoesNotMatch" => with_source(
                    format!("{what}: the credentials were refused ({code}); check them"),
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
            retention: self.retention,
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
                    continue; // kirt's own bookkeeping (upload records, run locks), not objects
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
        // On a versioned bucket a plain delete only hides the object behind a delete marker:
        // the version that is current goes, by its id.
        let Some(head) = self.head(key).await? else {
            return Ok(());
        };
        let version = head.version_id().filter(|v| *v != "null");
        let op = if version.is_some() {
            "DeleteObjectVersion"
        } else {
            "DeleteObject"
        };
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| s3_err(&self.loc(key), &self.endpoint, op, e))?;
        Ok(())
    }

    async fn protection(&self, key: &str) -> Result<Option<Protection>> {
        let Some(head) = self.head(key).await? else {
            return Ok(None);
        };
        if head.object_lock_legal_hold_status().map(|s| s.as_str()) == Some("ON") {
            return Ok(Some(Protection::LegalHold));
        }
        let until = head.object_lock_retain_until_date().and_then(jiff_time);
        let mode = match head.object_lock_mode().map(|m| m.as_str()) {
            Some("COMPLIANCE") => LockMode::Compliance,
            Some("GOVERNANCE") => LockMode::Governance,
            _ => return Ok(None),
        };
        Ok(until
            .filter(|u| *u > jiff::Timestamp::now())
            .map(|retain_until| Protection::Retained(Retention { mode, retain_until })))
    }

    async fn lock(&self, name: &str, holder: &Holder, lease: Duration) -> Result<Attempt> {
        lock::acquire(self, name, holder, lease).await
    }

    async fn inspect(&self) -> Vec<Finding> {
        inspect::run(self).await
    }

    async fn check(&self) -> Result<String> {
        let checked = self
            .client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| s3_err(&self.url(), &self.endpoint, "HeadBucket", e));
        let detail = match checked {
            Ok(_) => format!(
                "bucket {} reachable at {} with the credentials found",
                self.bucket, self.endpoint
            ),
            // write-only credentials (no s3:ListBucket) cannot look at the bucket: the writes tell
            Err(e) if e.is_store_denied() => {
                tracing::warn!("cannot check bucket {} at {} (no s3:ListBucket: write-only credentials?); going on, the first write will tell", self.bucket, self.endpoint);
                format!(
                    "bucket {} at {}: not checked (no s3:ListBucket: write-only credentials?)",
                    self.bucket, self.endpoint
                )
            }
            Err(e) => return Err(e),
        };
        self.check_object_lock().await?;
        Ok(detail)
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
    retention: Option<Retention>,
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
        if let Some(r) = &self.retention {
            req = req
                .object_lock_mode(lock_mode(r))
                .object_lock_retain_until_date(aws_time(r.retain_until));
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
            if let Some(r) = &self.retention {
                req = req
                    .object_lock_mode(lock_mode(r))
                    .object_lock_retain_until_date(aws_time(r.retain_until));
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
        let done = self
            .client
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
        if let Some(r) = &self.retention {
            self.retain(done.version_id(), r).await;
        }
        Ok(self.size)
    }

    /// Sets the retention of a completed multipart upload once more, on the version it made:
    /// S3 applies what CreateMultipartUpload asked for, but some S3-compatible servers ignore
    /// it there (moto does), and an unprotected backup must not pass silently.
    async fn retain(&self, version: Option<&str>, r: &Retention) {
        let set = self
            .client
            .put_object_retention()
            .bucket(&self.bucket)
            .key(&self.key)
            .set_version_id(version.map(str::to_string))
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(match r.mode {
                        LockMode::Governance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Governance
                        }
                        LockMode::Compliance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
                        }
                    })
                    .retain_until_date(aws_time(r.retain_until))
                    .build(),
            )
            .send()
            .await;
        if let Err(e) = set {
            let e = s3_err(&self.loc(), &self.endpoint, "PutObjectRetention", e);
            tracing::warn!("{e}: could not confirm the Object Lock retention of the uploaded object (S3 applies the one given when the upload started; some S3-compatible servers do not)");
        }
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
