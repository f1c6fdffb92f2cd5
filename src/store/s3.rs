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
        let store = S3Store {
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            opts: opts.clone(),
            endpoint,
            part_checksums: sdk.request_checksum_calculation()
                != Some(RequestChecksumCalculation::WhenRequired),
        };
        pending::cleanup(&store.client, &store.endpoint, &store.bucket).await;
        Ok(store)
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
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.key(key),
            endpoint: self.endpoint.clone(),
            opts: Arc::new(self.opts.clone()),
            part_checksums: self.part_checksums,
            buf: BytesMut::new(),
            upload_id: None,
            next_part: 1,
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
        pending::record(&self.endpoint, &self.bucket, &self.key, id);
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
        if let Some(id) = self.upload_id.take() {
            pending::forget(&self.endpoint, &self.bucket, &self.key, &id);
        }
        Ok(self.size)
    }

    async fn abort_inner(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            // The server may be restarting: retry patiently; if it stays away, the id is kept in
            // the state dir and the next kirt run against this bucket aborts it.
            for delay in [0u64, 1, 2, 4] {
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
                        pending::forget(&self.endpoint, &self.bucket, &self.key, &id);
                        return;
                    }
                    Err(e) if pending::gone(&e) => {
                        pending::forget(&self.endpoint, &self.bucket, &self.key, &id);
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

/// Multipart upload ids kirt started and has not yet completed or aborted, one file each under
/// the state dir, so that an upload interrupted while S3 was unreachable is aborted later
/// (ListMultipartUploads is not available on every S3 server).
mod pending {
    use std::path::PathBuf;

    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
    use serde::{Deserialize, Serialize};
    use sha2::{Digest, Sha256};

    #[derive(Serialize, Deserialize)]
    struct Record {
        endpoint: String,
        bucket: String,
        key: String,
        upload_id: String,
    }

    fn dir() -> PathBuf {
        crate::context::state_dir().join("pending-uploads")
    }

    fn path(endpoint: &str, bucket: &str, key: &str, id: &str) -> PathBuf {
        let h = Sha256::digest(format!("{endpoint}\n{bucket}\n{key}\n{id}").as_bytes());
        dir().join(format!("{}.json", &hex::encode(h)[..24]))
    }

    pub fn record(endpoint: &str, bucket: &str, key: &str, id: &str) {
        let rec = Record {
            endpoint: endpoint.into(),
            bucket: bucket.into(),
            key: key.into(),
            upload_id: id.into(),
        };
        let _ = std::fs::create_dir_all(dir());
        if let Ok(json) = serde_json::to_vec(&rec) {
            if let Err(e) = std::fs::write(path(endpoint, bucket, key, id), json) {
                tracing::debug!(error = %e, "cannot record the pending upload id");
            }
        }
    }

    pub fn forget(endpoint: &str, bucket: &str, key: &str, id: &str) {
        let _ = std::fs::remove_file(path(endpoint, bucket, key, id));
    }

    /// The upload no longer exists (S3: 404 NoSuchUpload; s3s-fs answers 403, moto 500 for
    /// uploads it already dropped).
    pub fn gone<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
        matches!(e.code(), Some("NoSuchUpload" | "AccessDenied"))
            || matches!(e, SdkError::ServiceError(s) if s.raw().status().as_u16() == 404)
    }

    /// Aborts recorded uploads of this bucket (best effort, quietly).
    pub async fn cleanup(client: &aws_sdk_s3::Client, endpoint: &str, bucket: &str) {
        let Ok(entries) = std::fs::read_dir(dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(bytes) = std::fs::read(entry.path()) else {
                continue;
            };
            let Ok(rec) = serde_json::from_slice::<Record>(&bytes) else {
                continue;
            };
            if rec.endpoint != endpoint || rec.bucket != bucket {
                continue;
            }
            match client
                .abort_multipart_upload()
                .bucket(&rec.bucket)
                .key(&rec.key)
                .upload_id(&rec.upload_id)
                .send()
                .await
            {
                Ok(_) => {
                    tracing::info!(bucket = %rec.bucket, key = %rec.key, "aborted a multipart upload left by an interrupted run");
                    let _ = std::fs::remove_file(entry.path());
                }
                Err(e) if gone(&e) => {
                    tracing::debug!(key = %rec.key, error = %DisplayErrorContext(&e), "recorded multipart upload is already gone");
                    let _ = std::fs::remove_file(entry.path());
                }
                Err(e) => {
                    tracing::debug!(key = %rec.key, error = %DisplayErrorContext(&e), "cannot abort a recorded multipart upload yet")
                }
            }
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
                let (client, bucket, key) =
                    (self.client.clone(), self.bucket.clone(), self.key.clone());
                if let Ok(h) = tokio::runtime::Handle::try_current() {
                    h.spawn(async move {
                        let _ = client
                            .abort_multipart_upload()
                            .bucket(bucket)
                            .key(key)
                            .upload_id(id)
                            .send()
                            .await;
                    });
                }
            }
        }
    }
}
