//! `kirt backup copy`: replicates backups to a second store (offsite, another account or region)
//! so that losing one bucket — or one set of credentials — loses no history. Each object streams
//! from the source into the target's upload through the byte pipeline (stored as is), its
//! sha256 and size checked on the way against the manifest: a copy that does not match is
//! aborted and nothing of it is published. Then the signature and, last, the manifest — the same
//! bytes as the original's, so the copy verifies with the same trusted key. `--missing` copies
//! only what the target lacks (run it again and it copies nothing); the target's writes can be
//! put under Object Lock.

use std::collections::BTreeSet;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::create::Publication;
use super::list::{scan, BackupEntry, Signature, Status};
use super::manifest;
use super::signing;
use super::source::BackupSource;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::pipeline::{self, Compression, Encryption, Feed, Job, CHUNK};
use crate::progress::Stage;
use crate::store::{self, ObjectLockOptions, Retention, S3Options, Store};
use crate::units::human_bytes;

/// Where the copies go, when that is S3: its own endpoint, region, credentials (a profile: an
/// offsite account) and storage settings. Part size and concurrency are the source group's.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TargetS3Options {
    /// S3 endpoint URL of the target (default: AWS, or $AWS_ENDPOINT_URL)
    #[arg(long, value_name = "URL")]
    pub to_endpoint_url: Option<String>,
    /// S3 region of the target
    #[arg(long, value_name = "REGION")]
    pub to_region: Option<String>,
    /// Path-style addressing for the target
    #[arg(long)]
    pub to_path_style: bool,
    /// AWS profile with the target's credentials (default: the same chain as the source)
    #[arg(long, value_name = "NAME")]
    pub to_profile: Option<String>,
    /// Server-side encryption on the target: AES256 or aws:kms
    #[arg(long, value_name = "ALGO")]
    pub to_sse: Option<String>,
    /// Storage class on the target, e.g. GLACIER_IR
    #[arg(long, value_name = "CLASS")]
    pub to_storage_class: Option<String>,
}

impl TargetS3Options {
    fn s3(&self, source: &S3Options) -> S3Options {
        S3Options {
            endpoint_url: self.to_endpoint_url.clone(),
            region: self.to_region.clone(),
            path_style: self.to_path_style,
            sse: self.to_sse.clone(),
            storage_class: self.to_storage_class.clone(),
            part_size: source.part_size,
            concurrency: source.concurrency,
            profile: self.to_profile.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from", "to"]))]
pub struct BackupCopySpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    /// Target store: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub target: TargetS3Options,
    /// Object Lock of the copies on the target
    #[command(flatten)]
    pub retention: ObjectLockOptions,
    /// Backups to copy: ID, CLUSTER/ID or latest
    #[arg(value_name = "BACKUP")]
    pub backups: Vec<String>,
    /// Copy every usable backup of the source that the target does not have
    #[arg(long, conflicts_with = "backups")]
    pub missing: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyEntry {
    pub cluster: String,
    pub id: String,
    /// copied, present (the target has it, identical), conflict (the target has another backup
    /// under this id), skipped (not usable in the source), would-copy (dry run)
    pub outcome: String,
    pub bytes: u64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CopyResult {
    pub from: String,
    /// The target store.
    pub location: String,
    pub copied: usize,
    pub present: usize,
    pub bytes: u64,
    pub seconds: f64,
    pub object_lock: Option<Retention>,
    pub dry_run: bool,
    pub backups: Vec<CopyEntry>,
}

impl Render for CopyResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["CLUSTER", "BACKUP", "OUTCOME", "SIZE", "DETAIL"]);
        for b in &self.backups {
            t.row([
                b.cluster.clone(),
                b.id.clone(),
                b.outcome.clone(),
                human_bytes(b.bytes),
                b.detail.clone(),
            ]);
        }
        t.note(format!(
            "\n{}{} copied ({}), {} already there, from {} to {} in {:.2}s",
            if self.dry_run { "dry run: " } else { "" },
            self.copied,
            human_bytes(self.bytes),
            self.present,
            self.from,
            self.location,
            self.seconds
        ));
        t
    }

    fn exit(&self) -> crate::Exit {
        if self.backups.iter().any(|b| b.outcome == "conflict") {
            crate::Exit::Refused
        } else {
            crate::Exit::Ok
        }
    }
}

pub async fn run(ctx: &Ctx, spec: BackupCopySpec) -> Result<CopyResult> {
    let clock = Instant::now();
    if spec.to.is_empty() {
        return Err(Error::usage(
            "missing --to: the store to copy into (s3://BUCKET/PREFIX, file:///DIR or a directory)",
        ));
    }
    if spec.backups.is_empty() && !spec.missing {
        return Err(Error::usage(
            "name the backups to copy (ID, CLUSTER/ID or latest), or give --missing",
        ));
    }
    let retention = spec.retention.retention(jiff::Timestamp::now())?;
    let trusted = spec.source.trusted_key()?;
    if trusted.is_none() {
        tracing::warn!("no trusted key (--trusted-key, $KIRT_TRUSTED_KEY): backups are copied without checking who made them");
    }
    let src = spec.source.open().await?;
    let dst = store::open_retained(&spec.to, &spec.target.s3(&spec.source.s3), retention).await?;
    if src.url() == dst.url() {
        return Err(Error::usage(format!(
            "--from and --to are the same store ({})",
            src.url()
        )));
    }
    dst.check().await?;
    let all = spec.source.scan(src.as_ref(), trusted.as_ref()).await?;
    let mut out = CopyResult {
        from: src.url(),
        location: dst.url(),
        copied: 0,
        present: 0,
        bytes: 0,
        seconds: 0.0,
        object_lock: retention,
        dry_run: ctx.dry_run,
        backups: Vec::new(),
    };
    let wanted = if spec.missing {
        for b in all
            .iter()
            .filter(|b| b.status == Status::Complete && !b.usable())
        {
            out.backups.push(entry(
                b,
                "skipped",
                format!(
                    "not copied: its signature is {}",
                    signature_name(b.signature)
                ),
            ));
        }
        all.iter().filter(|b| b.usable()).cloned().collect()
    } else {
        let mut seen = BTreeSet::new();
        let mut wanted = Vec::new();
        for which in &spec.backups {
            let b = spec.source.find(src.as_ref(), &all, which)?;
            if seen.insert((b.cluster.clone(), b.id.clone())) {
                wanted.push(b);
            }
        }
        wanted
    };
    let there = target_backups(dst.as_ref(), &spec, &wanted).await?;
    for b in &wanted {
        match there
            .iter()
            .find(|t| t.cluster == b.cluster && t.id == b.id)
        {
            Some(t) if t.status == Status::Complete && t.manifest_bytes == b.manifest_bytes => {
                out.present += 1;
                out.backups
                    .push(entry(b, "present", "the target has it".into()));
                continue;
            }
            Some(t) if t.status == Status::Complete => {
                out.backups.push(entry(
                    b,
                    "conflict",
                    "the target holds a different backup under this id: not overwritten".into(),
                ));
                continue;
            }
            _ => {}
        }
        let bytes = copy_one(ctx, src.as_ref(), dst.as_ref(), b, trusted.as_ref()).await?;
        out.copied += 1;
        out.bytes += bytes;
        let outcome = if ctx.dry_run { "would-copy" } else { "copied" };
        let mut e = entry(b, outcome, String::new());
        e.bytes = bytes;
        out.backups.push(e);
    }
    out.seconds = clock.elapsed().as_secs_f64();
    Ok(out)
}

fn entry(b: &BackupEntry, outcome: &str, detail: String) -> CopyEntry {
    CopyEntry {
        cluster: b.cluster.clone(),
        id: b.id.clone(),
        outcome: outcome.into(),
        bytes: 0,
        detail,
    }
}

fn signature_name(s: Signature) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// What the target already has of these backups' clusters. Credentials that may only write
/// there cannot tell: then named backups are copied anyway (the same bytes again), and
/// `--missing` cannot work.
async fn target_backups(
    dst: &dyn Store,
    spec: &BackupCopySpec,
    wanted: &[BackupEntry],
) -> Result<Vec<BackupEntry>> {
    let clusters: BTreeSet<&str> = wanted.iter().map(|b| b.cluster.as_str()).collect();
    let mut there = Vec::new();
    for c in clusters {
        match scan(dst, Some(c), None).await {
            Ok(found) => there.extend(found),
            Err(e) if e.is_store_denied() && !spec.missing => {
                tracing::warn!("{e}: cannot see what the target already has; copying the named backups anyway");
                return Ok(Vec::new());
            }
            Err(e) if e.is_store_denied() => {
                return Err(Error::usage(format!(
                    "{e}: --missing needs to list the target (s3:ListBucket, s3:GetObject); name the backups to copy instead"
                )))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(there)
}

/// Streams one backup's object into the target (its digest checked against the manifest on the
/// way), then writes its signature and manifest. Returns the bytes copied.
async fn copy_one(
    ctx: &Ctx,
    src: &dyn Store,
    dst: &dyn Store,
    b: &BackupEntry,
    trusted: Option<&minisign::PublicKey>,
) -> Result<u64> {
    let m = b.manifest.as_ref().ok_or_else(|| {
        Error::VerifyFailed(format!("backup {}/{} has no manifest", b.cluster, b.id))
    })?;
    let name = format!("backup {}/{}", b.cluster, b.id);
    if b.stored_size != m.object_size {
        return Err(Error::VerifyFailed(format!(
            "{name}: the object {} in {} is {} bytes, its manifest records {}: modified or swapped; nothing was copied",
            m.object,
            src.url(),
            b.stored_size,
            m.object_size
        )));
    }
    let manifest_key = manifest::manifest_key(&b.cluster, &b.id);
    let sig_key = format!("{manifest_key}{}", signing::SUFFIX);
    let signature = match src.get_bytes(&sig_key, signing::MAX_SIGNATURE).await {
        Ok(sig) => Some(sig),
        Err(Error::NotFound { .. }) => None,
        Err(e) => return Err(e),
    };
    if let Some(pk) = trusted {
        // the signature read now, against the manifest bytes read by the scan (and copied)
        let sig = signature.as_deref().unwrap_or_default();
        signing::check(pk, &b.manifest_bytes, sig).map_err(|why| {
            Error::VerifyFailed(format!(
                "{name}: the signature {sig_key} {why}; nothing was copied"
            ))
        })?;
    }
    let p = Publication {
        object_key: m.object.clone(),
        manifest_key,
        manifest: b.manifest_bytes.clone(),
        signature,
    };
    let stage = ctx.progress.stage("copy", Some(m.object_size));
    let copied = copy_verified(
        &ctx.shutdown,
        src,
        dst,
        (m.object_size, &m.object_sha256),
        &p,
        !ctx.dry_run,
        &*stage,
        &name,
    )
    .await;
    stage.finish();
    copied?;
    tracing::info!(backup = %name, bytes = m.object_size, to = %dst.url(), "copied");
    Ok(m.object_size)
}

/// Copies `p.object_key` from `src` to `dst` and, with `publish`, publishes it there with its
/// signature and manifest (manifest last) once the bytes read match `(size, sha256)` as
/// recorded; a mismatch aborts the upload (exit 3, nothing published). `name` names it in errors.
#[allow(clippy::too_many_arguments)]
pub(super) async fn copy_verified(
    stop: &crate::signal::Shutdown,
    src: &dyn Store,
    dst: &dyn Store,
    (size, sha256): (u64, &str),
    p: &Publication,
    publish: bool,
    stage: &dyn Stage,
    name: &str,
) -> Result<()> {
    let reader = src.get(&p.object_key).await?;
    let job = Job {
        compression: Compression::none(),
        encryption: Encryption::None,
        upload: if publish {
            Some(dst.create(&p.object_key).await?)
        } else {
            None
        },
        depth: pipeline::DEPTH,
    };
    let outcome = pipeline::run(job, stop, pipeline::copy_chunks, |feed| {
        read_into(reader, feed, size, stage)
    })
    .await;
    let copied = outcome.into_result(stop)?;
    if copied.stats.stored_size != size || copied.stats.stored_sha256 != sha256 {
        copied.upload.abort().await;
        return Err(Error::VerifyFailed(format!(
            "{name}: the object {} read from {} does not match its manifest (sha256 {}, {} bytes; recorded {sha256}, {size} bytes): modified or corrupt; nothing was copied",
            p.object_key,
            src.url(),
            copied.stats.stored_sha256,
            copied.stats.stored_size,
        )));
    }
    if !publish {
        copied.upload.abort().await;
        return Ok(());
    }
    super::create::publish(stop, dst, copied.upload, p, None).await
}

/// The producer: the source object in chunks of [`CHUNK`], never more than `limit` bytes (the
/// manifest's size: a longer object is not the one it describes).
async fn read_into(
    mut reader: Box<dyn AsyncRead + Send + Unpin>,
    feed: Feed<Bytes>,
    limit: u64,
    stage: &dyn Stage,
) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let mut buf = BytesMut::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            let n = reader
                .read_buf(&mut buf)
                .await
                .map_err(|e| Error::io("reading the source object", e))?;
            if n == 0 {
                break;
            }
        }
        if buf.is_empty() {
            return Ok(total);
        }
        total += buf.len() as u64;
        if total > limit {
            return Err(Error::VerifyFailed(format!(
                "the source object is longer than the {limit} bytes its manifest records: modified or swapped; nothing was copied"
            )));
        }
        stage.inc(buf.len() as u64);
        feed.send(buf.freeze()).await?;
    }
}
