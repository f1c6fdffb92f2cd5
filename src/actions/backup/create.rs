//! `kirt backup create`: one etcd member's snapshot stream → trailer check → zstd → age → store,
//! all stages overlapping, memory bounded by part size × concurrency plus small buffers. The
//! object is committed only if every stage succeeded and etcd's trailer checks out; the manifest
//! is written after it and is the commit marker.

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use etcd_client::GetOptions;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::manifest::{self, Manifest};
use super::metrics;
use super::EncryptOptions;
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::etcd::EtcdOptions;
use crate::output::{Render, Table};
use crate::pipeline::{ChannelWriter, Compression, Encoder, TrailerCheck, DEPTH};
use crate::store::{self, S3Options, Upload};
use crate::util::human_bytes;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackupCreateSpec {
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// Destination: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub s3: S3Options,
    #[command(flatten)]
    pub encryption: EncryptOptions,
    /// Name of the cluster in object keys (default: etcd's cluster id)
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// zstd level: negative levels are fastest, 19 the smallest. On etcd data 1 compresses as
    /// well as 3 at half the CPU (docs/backup.md)
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub compression_level: i32,
    /// zstd worker threads (default: number of CPUs)
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Write Prometheus textfile metrics here (atomically), on success and on failure
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Also push the metrics to this Prometheus Pushgateway (e.g. http://pushgateway:9091)
    #[arg(long, value_name = "URL")]
    pub pushgateway: Option<String>,
    /// Sign the manifest with this minisign secret key (detached ID.manifest.json.minisig;
    /// password from $KIRT_SIGN_PASSWORD if the key is encrypted)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackupResult {
    pub id: String,
    pub cluster: String,
    pub location: String,
    pub object: String,
    pub manifest: String,
    pub member: String,
    pub etcd_version: String,
    pub revision: i64,
    pub key_count: i64,
    pub snapshot_size: u64,
    pub stored_size: u64,
    pub duration_seconds: f64,
    pub encrypted: bool,
    pub dry_run: bool,
}

impl Render for BackupResult {
    fn table(&self) -> Table {
        let ratio = if self.stored_size > 0 {
            self.snapshot_size as f64 / self.stored_size as f64
        } else {
            0.0
        };
        let mut t = Table::fields([
            ("backup", self.id.clone()),
            ("cluster", self.cluster.clone()),
            ("stored at", format!("{}/{}", self.location, self.object)),
            (
                "member",
                format!("{} (etcd {})", self.member, self.etcd_version),
            ),
            ("revision", self.revision.to_string()),
            ("keys", self.key_count.to_string()),
            ("snapshot", human_bytes(self.snapshot_size)),
            (
                "stored",
                format!("{} ({ratio:.1}x smaller)", human_bytes(self.stored_size)),
            ),
            (
                "encrypted",
                if self.encrypted {
                    "yes (age)".into()
                } else {
                    "NO".to_string()
                },
            ),
            ("duration", format!("{:.2}s", self.duration_seconds)),
        ]);
        if self.dry_run {
            t.note("dry run: the snapshot was streamed and checked, nothing was stored");
        }
        t
    }
}

pub async fn run(ctx: &Ctx, spec: BackupCreateSpec) -> Result<BackupResult> {
    let started = jiff::Timestamp::now();
    let result = create(ctx, &spec, started).await;
    if spec.metrics_file.is_some() || spec.pushgateway.is_some() {
        let cluster = match &result {
            Ok(r) => r.cluster.clone(),
            Err(_) => spec
                .cluster_name
                .clone()
                .unwrap_or_else(|| "unknown".into()),
        };
        let outcome = metrics::Outcome {
            cluster: &cluster,
            now: jiff::Timestamp::now(),
            success: result
                .as_ref()
                .ok()
                .filter(|r| !r.dry_run)
                .map(|r| metrics::Success {
                    duration_seconds: r.duration_seconds,
                    snapshot_bytes: r.snapshot_size,
                    stored_bytes: r.stored_size,
                    revision: r.revision,
                }),
        };
        let text = match &spec.metrics_file {
            Some(path) => metrics::write(path, &outcome).unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not write the metrics file");
                metrics::render("", &outcome)
            }),
            None => metrics::render("", &outcome),
        };
        if let Some(gw) = &spec.pushgateway {
            if let Err(e) = metrics::push(gw, &cluster, &text).await {
                tracing::error!(error = %e, "could not push metrics to the pushgateway");
            }
        }
    }
    result
}

async fn create(
    ctx: &Ctx,
    spec: &BackupCreateSpec,
    started: jiff::Timestamp,
) -> Result<BackupResult> {
    let clock = Instant::now();
    // Everything that can be wrong with the input is checked before etcd is touched.
    if spec.to.is_empty() {
        return Err(Error::usage(
            "missing --to: where to store the backup (s3://BUCKET/PREFIX or a directory)",
        ));
    }
    spec.etcd.validate()?;
    let (encryption, enc_info) = spec.encryption.resolve()?;
    let threads = spec.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let compression = Compression::zstd(spec.compression_level, threads)?;
    if let Some(name) = &spec.cluster_name {
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(Error::usage(format!(
                "invalid --cluster-name {name:?}: no slashes, not empty"
            )));
        }
    }
    let signer = spec
        .sign_key
        .as_deref()
        .map(super::signing::load_secret_key)
        .transpose()?;
    let store = store::open(&spec.to, &spec.s3).await?;
    // Fail on a missing bucket, bad credentials or an unreachable store before etcd is touched.
    store.check().await?;

    let (client, status) = spec.etcd.connect_healthy().await?;
    let endpoint = status.endpoint.clone();
    let etcd_err = |context: &str, e: etcd_client::Error| Error::Etcd {
        endpoint: endpoint.clone(),
        context: context.into(),
        source: e,
    };
    let cluster = spec
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("etcd-{}", status.cluster_id));

    // The revision before the snapshot starts: the snapshot contains at least this revision, so
    // key count and HashKV at it can be reproduced from a restore.
    let mut kv = client.kv_client();
    let head = kv
        .get(
            "",
            Some(GetOptions::new().with_all_keys().with_count_only()),
        )
        .await
        .map_err(|e| etcd_err("reading the revision", e))?;
    let revision = head
        .header()
        .map(|h| h.revision())
        .unwrap_or(status.revision);
    let key_count = head.count();
    let prefix_counts = manifest::count_prefixes(&mut kv, revision)
        .await
        .map_err(|e| etcd_err("counting keys", e))?;
    // HashKV walks the whole keyspace: run it beside the snapshot stream.
    let mut maint = client.maintenance_client();
    let hash_task = tokio::spawn(async move { maint.hash_kv(revision).await });

    let id = manifest::backup_id(started, revision);
    let encrypted = enc_info.is_some();
    let object_key = manifest::object_key(&cluster, &id, encrypted);
    tracing::info!(member = %endpoint, revision, keys = key_count, object = %object_key, "streaming snapshot");

    let dry_run = ctx.dry_run;
    let upload: Option<Box<dyn Upload>> = if dry_run {
        None
    } else {
        Some(store.create(&object_key).await?)
    };

    // stage 2: compress + encrypt on a blocking thread
    let (plain_tx, mut plain_rx) = mpsc::channel::<Bytes>(64);
    let (stored_tx, stored_rx) = mpsc::channel::<Bytes>(DEPTH);
    let encoder = tokio::task::spawn_blocking(move || -> Result<crate::pipeline::EncodeStats> {
        let mut enc = Encoder::new(ChannelWriter::new(stored_tx), &compression, &encryption)?;
        while let Some(chunk) = plain_rx.blocking_recv() {
            enc.write_all(&chunk)
                .map_err(|e| Error::io("compressing/encrypting", e))?;
        }
        enc.finish()
            .map_err(|e| Error::io("finishing compression/encryption", e))
    });
    // stage 3: upload
    let uploader = store::spawn_uploader(upload, stored_rx);

    // stage 1: the snapshot stream, hashed on the fly
    let stage = ctx
        .progress
        .stage("snapshot", Some(status.db_size.max(0) as u64));
    let mut trailer = TrailerCheck::default();
    let stream_result: Result<()> = async {
        let mut maint = client.maintenance_client();
        let mut stream = maint.snapshot().await.map_err(|e| etcd_err("starting the snapshot", e))?;
        let mut remaining = u64::MAX;
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = shutdown_signal() => return Err(Error::failed("interrupted; nothing was published")),
            };
            match msg.map_err(|e| etcd_err("snapshot stream broke", e))? {
                Some(mut resp) => {
                    remaining = resp.remaining_bytes();
                    // Take the blob out of the message: no copy of the snapshot in kirt.
                    let blob = Bytes::from(std::mem::take(&mut resp.0.blob));
                    trailer.update(&blob);
                    stage.inc(blob.len() as u64);
                    if plain_tx.send(blob).await.is_err() {
                        return Ok(()); // a later stage failed; its error is reported below
                    }
                }
                None => break,
            }
        }
        if remaining != 0 && remaining != u64::MAX {
            return Err(Error::failed(format!("etcd {endpoint} ended the snapshot stream early ({remaining} bytes missing)")));
        }
        Ok(())
    }
    .await;
    stage.finish();
    drop(plain_tx);

    let encoded = encoder
        .await
        .map_err(|e| Error::failed(format!("encoder task: {e}")))?;
    let uploaded = uploader
        .await
        .map_err(|e| Error::failed(format!("upload task: {e}")))?;
    let digest = trailer.finish();

    // Decide: commit only if every stage succeeded. Report the root cause first.
    let upload = match (stream_result, encoded, uploaded) {
        (_, _, Err(e)) => return Err(e),
        (Err(e), _, Ok(up)) => {
            abort(up).await;
            return Err(e);
        }
        (Ok(()), Err(e), Ok(up)) => {
            abort(up).await;
            return Err(e);
        }
        (Ok(()), Ok(enc), Ok(up)) => {
            if !digest.trailer_ok {
                abort(up).await;
                return Err(Error::VerifyFailed(format!(
                    "etcd {endpoint} sent a snapshot whose sha256 trailer does not match its content ({} bytes); nothing was published",
                    digest.size
                )));
            }
            (up, enc)
        }
    };
    let (upload, enc) = upload;
    let hash = hash_task
        .await
        .map_err(|e| Error::failed(format!("HashKV task: {e}")))?
        .map_err(|e| etcd_err("HashKV", e));
    let hash = match hash {
        Ok(h) => h,
        Err(e) => {
            abort(upload).await;
            return Err(e);
        }
    };

    let finished = jiff::Timestamp::now();
    let m = Manifest {
        format: manifest::FORMAT.into(),
        id: id.clone(),
        cluster_name: cluster.clone(),
        object: object_key.clone(),
        object_size: enc.stored_size,
        object_sha256: enc.stored_sha256.clone(),
        snapshot: manifest::SnapshotInfo {
            size: digest.size,
            sha256: digest.file_sha256,
            db_sha256: digest.db_sha256,
        },
        etcd: manifest::EtcdInfo {
            endpoint: endpoint.clone(),
            version: status.version.clone(),
            cluster_id: status.cluster_id.clone(),
            member_id: status.member_id.clone(),
            revision,
            key_count,
            hash_kv: hash.hash(),
            compact_revision: hash.compact_version(),
            db_size: status.db_size,
            prefix_counts,
        },
        compression: manifest::CompressionInfo {
            algorithm: "zstd".into(),
            level: spec.compression_level,
        },
        encryption: enc_info,
        kirt_version: crate::actions::version::long(),
        started_at: started,
        finished_at: finished,
    };
    let manifest_key = manifest::manifest_key(&cluster, &id);
    if let Some(upload) = upload {
        upload.commit().await?;
        let json =
            serde_json::to_vec_pretty(&m).map_err(|e| Error::failed(format!("manifest: {e}")))?;
        if let Some(sk) = &signer {
            // the signature goes first: the manifest stays the last write, the commit marker
            let sig = super::signing::sign(sk, &json, &id)?;
            let sig_key = format!("{manifest_key}{}", super::signing::SUFFIX);
            if let Err(e) = store.put(&sig_key, Bytes::from(sig)).await {
                let _ = store.delete(&object_key).await;
                return Err(e);
            }
        }
        if let Err(e) = store.put(&manifest_key, Bytes::from(json)).await {
            // Without its manifest the object is not a backup; remove it rather than leave an orphan.
            let _ = store.delete(&object_key).await;
            return Err(e);
        }
    }
    let result = BackupResult {
        id,
        cluster,
        location: store.url(),
        object: object_key,
        manifest: manifest_key,
        member: endpoint,
        etcd_version: status.version,
        revision,
        key_count,
        snapshot_size: m.snapshot.size,
        stored_size: m.object_size,
        duration_seconds: clock.elapsed().as_secs_f64(),
        encrypted,
        dry_run,
    };
    tracing::info!(
        backup = %result.id, snapshot_bytes = result.snapshot_size, stored_bytes = result.stored_size,
        seconds = format!("{:.2}", result.duration_seconds), "backup complete"
    );
    Ok(result)
}

async fn abort(up: Option<Box<dyn Upload>>) {
    if let Some(up) = up {
        up.abort().await;
    }
}

/// Resolves on SIGINT or SIGTERM (cron and Kubernetes stop jobs with SIGTERM).
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
