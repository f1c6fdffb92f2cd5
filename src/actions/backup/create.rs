//! `kirt backup create`: one etcd member's snapshot stream → trailer check → zstd → age → store,
//! all stages overlapping, memory bounded by part size × concurrency plus small buffers. The
//! object is committed only if every stage succeeded and etcd's trailer checks out; the manifest
//! is written after it and is the commit marker. Before any of it: the cluster-prefix guard
//! (another etcd cluster's history there refuses) and the run lock (another run of this
//! cluster refuses); with `--object-lock` everything is written under S3 Object Lock.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use etcd_client::HashKvResponse;
use serde::{Deserialize, Serialize};

use super::lock::LockOptions;
use super::manifest::{self, Manifest};
use super::metrics;
use crate::context::Ctx;
use crate::crypto::{EncryptOptions, EncryptionInfo};
use crate::error::{join, to_json, Error, Result};
use crate::etcd::{EtcdOptions, MemberStatus};
use crate::output::{Render, Table};
use crate::pipeline::{
    self, Compression, Encryption, Feed, Job, Pending, SnapshotDigest, TrailerCheck,
};
use crate::progress::Stage;
use crate::runlock::Held;
use crate::signal::Shutdown;
use crate::store::{self, ObjectLockOptions, Retention, S3Options, Store};
use crate::units::human_bytes;

/// zstd level when none is given: on etcd data as small as 3 at half the CPU (docs/backup.md).
const COMPRESSION_LEVEL: i32 = 1;

/// What the manifest records to prove a restore reproduces the keyspace (docs/backup.md).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HashKv {
    /// No HashKV: restores are checked by key counts (all and per resource) at the revision and
    /// the snapshot's digests; etcd only pays for sending the snapshot
    #[default]
    Off,
    /// Also etcd's HashKV at the revision: every key and value of the keyspace, but etcd reads
    /// its whole db once more and its writes wait meanwhile
    On,
}

/// Which live keys the manifest counts at the revision (docs/backup.md). Each count is a walk of
/// etcd's index under its lock: writes wait until it ends, about 0.35 s per million keys walked.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum CountKeys {
    /// Nothing counted: etcd's writes never wait for kirt; a trial restore compares the revision
    /// and the digests, a drill what the apiserver serves with what the restored member holds
    Off,
    /// The keys under each Kubernetes resource prefix (what drills compare), one walk each: the
    /// largest resource sets the longest wait
    #[default]
    Resources,
    /// Also every live key, in one walk of the whole keyspace: a lost key anywhere is caught,
    /// and etcd's writes wait for all of it
    All,
}

/// zstd workers when --threads is not given: leave a core to etcd, which usually shares the
/// machine (a control-plane node), on machines with few cores.
pub fn default_threads(cpus: u32) -> u32 {
    match cpus {
        0..=2 => 1,
        3..=8 => cpus - 1,
        _ => cpus - 2,
    }
}

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["to"]))]
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
        default_value_t = COMPRESSION_LEVEL,
        allow_negative_numbers = true
    )]
    pub compression_level: i32,
    /// zstd worker threads (default: one core left to etcd: 1 on 2 CPUs, CPUs - 1 up to 8,
    /// CPUs - 2 above)
    #[arg(long, value_name = "N")]
    pub threads: Option<u32>,
    /// Record etcd's HashKV at the revision (on: etcd reads its db a second time) or check
    /// restores by key counts and digests only (off)
    #[arg(long, value_enum, value_name = "on|off", default_value_t = HashKv::Off)]
    pub hash_kv: HashKv,
    /// Count the keys under each Kubernetes resource prefix at the revision (resources), also
    /// every live key (all: one walk of the whole keyspace, etcd's writes wait meanwhile), or
    /// nothing (off)
    #[arg(long, value_enum, value_name = "off|resources|all", default_value_t = CountKeys::Resources)]
    pub count_keys: CountKeys,
    /// Run at low CPU priority (nice 10) and in the idle I/O class, so that etcd and the
    /// apiserver beside it come first
    #[arg(long)]
    pub nice: bool,
    /// Cap the snapshot stream read from etcd, in bytes per second (e.g. 50MiB); 0: no cap
    #[arg(long, value_name = "BYTES/s", default_value = "0", value_parser = crate::units::parse_rate)]
    #[serde(with = "crate::units::size_serde")]
    #[schemars(with = "String")]
    pub max_rate: u64,
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
    #[command(flatten)]
    pub retention: ObjectLockOptions,
    #[command(flatten)]
    pub run_lock: LockOptions,
    /// Write even when the newest backup under the cluster's prefix comes from another etcd
    /// cluster (this one replaced it, e.g. after a restore)
    #[arg(long)]
    pub force: bool,
}

impl Default for BackupCreateSpec {
    fn default() -> Self {
        BackupCreateSpec {
            etcd: EtcdOptions::default(),
            to: String::new(),
            s3: S3Options::default(),
            encryption: EncryptOptions::default(),
            cluster_name: None,
            compression_level: COMPRESSION_LEVEL,
            threads: None,
            hash_kv: HashKv::Off,
            count_keys: CountKeys::Resources,
            nice: false,
            max_rate: 0,
            metrics_file: None,
            pushgateway: None,
            sign_key: None,
            retention: ObjectLockOptions::default(),
            run_lock: LockOptions::default(),
            force: false,
        }
    }
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
    /// Live keys at the revision (`--count-keys all`).
    pub key_count: Option<i64>,
    pub snapshot_size: u64,
    pub stored_size: u64,
    /// sha256 of the stored object (as its manifest records it).
    pub stored_sha256: String,
    /// sha256 of the manifest as written (the first link of a `backup stream` chain).
    #[serde(skip)]
    pub manifest_sha256: String,
    pub duration_seconds: f64,
    pub encrypted: bool,
    /// The manifest is signed (`ID.manifest.json.minisig`).
    pub signed: bool,
    /// The Object Lock retention everything was written with.
    pub object_lock: Option<Retention>,
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
            (
                "keys",
                self.key_count
                    .map_or("not counted (--count-keys all counts them)".into(), |n| {
                        n.to_string()
                    }),
            ),
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
            (
                "signed",
                if self.signed {
                    "yes (minisign)".into()
                } else {
                    "NO: anyone who can write to the store can plant a backup; restore and drill refuse unsigned backups by default".to_string()
                },
            ),
            (
                "object lock",
                match &self.object_lock {
                    Some(r) => store::Protection::Retained(*r).to_string(),
                    None => "no".into(),
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
    let result = create(ctx, &spec).await;
    // A dry run is neither a success nor a failure of the backup job.
    if !ctx.dry_run && (spec.metrics_file.is_some() || spec.pushgateway.is_some()) {
        report_metrics(&spec, &result).await;
    }
    result
}

/// Textfile and/or Pushgateway metrics of this run, success or failure (never fails the run).
async fn report_metrics(spec: &BackupCreateSpec, result: &Result<BackupResult>) {
    let cluster = match result {
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

/// Everything that can be wrong with the input, checked before etcd or the store is touched
/// (`backup stream` encodes and signs its segments with the same plan).
pub(super) struct Plan {
    pub(super) encryption: Encryption,
    pub(super) enc_info: Option<EncryptionInfo>,
    pub(super) compression: Compression,
    pub(super) signer: Option<minisign::SecretKey>,
    /// The signer's public key: only backups it signed count for the cluster-prefix guard.
    pub(super) trusted: Option<minisign::PublicKey>,
    pub(super) retention: Option<Retention>,
}

impl Plan {
    pub(super) fn check(spec: &BackupCreateSpec, started: jiff::Timestamp) -> Result<Plan> {
        if spec.to.is_empty() {
            return Err(Error::usage(
                "missing --to: where to store the backup (s3://BUCKET/PREFIX or a directory)",
            ));
        }
        spec.etcd.validate()?;
        if let Some(name) = &spec.cluster_name {
            if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
                return Err(Error::usage(format!(
                    "invalid --cluster-name {name:?}: no slashes, not empty"
                )));
            }
        }
        Plan::new(
            &spec.encryption,
            spec.compression_level,
            spec.threads,
            &spec.sign_key,
            &spec.retention,
            started,
        )
    }

    /// The encoding, signing and retention of a new full backup (`backup compact` writes one
    /// with the same plan).
    pub(super) fn new(
        encryption: &EncryptOptions,
        compression_level: i32,
        threads: Option<u32>,
        sign_key: &Option<PathBuf>,
        retention: &ObjectLockOptions,
        started: jiff::Timestamp,
    ) -> Result<Plan> {
        let (encryption, enc_info) = encryption.resolve(true)?;
        let threads = threads.unwrap_or_else(|| {
            default_threads(
                std::thread::available_parallelism()
                    .map(|n| n.get() as u32)
                    .unwrap_or(1),
            )
        });
        let compression = Compression::zstd(compression_level, threads)?;
        let signer = super::signing::sign_key_path(sign_key)
            .map(|p| super::signing::load_secret_key(&p))
            .transpose()?;
        if signer.is_none() {
            tracing::warn!(
                "this backup will NOT be signed: whoever can write to the store can plant a backup that decrypts and restores, and restore/drill refuse unsigned backups by default; give --sign-key or $KIRT_SIGN_KEY (docs/backup.md)"
            );
        }
        let trusted = signer
            .as_ref()
            .map(minisign::PublicKey::from_secret_key)
            .transpose()
            .map_err(|e| Error::usage(format!("--sign-key: {e}")))?;
        Ok(Plan {
            encryption,
            enc_info,
            compression,
            signer,
            trusted,
            retention: retention.retention(started)?,
        })
    }
}

/// The revision read before the snapshot starts, and what etcd holds at it: the snapshot
/// contains at least this revision, so a restore can reproduce these counts (and the HashKV).
struct AtRevision {
    revision: i64,
    /// every live key (`--count-keys all`)
    key_count: Option<i64>,
    prefix_counts: BTreeMap<String, i64>,
}

/// A count walks etcd's index over the range under its lock, and writes wait until it ends: the
/// revision comes from a linearizable read of one key (no walk), the resource prefixes are
/// counted one walk each (unless `--count-keys off`), the whole keyspace only when asked
/// (`--count-keys all`).
async fn read_revision(
    client: &etcd_client::Client,
    status: &MemberStatus,
    count_keys: CountKeys,
) -> Result<AtRevision> {
    let etcd_err = |context: &str, e| Error::Etcd {
        endpoint: status.endpoint.clone(),
        context: context.into(),
        source: e,
    };
    let mut kv = client.kv_client();
    let (revision, key_count) = if count_keys == CountKeys::All {
        let all = crate::etcd::count_all(&mut kv, 0)
            .await
            .map_err(|e| etcd_err("counting keys", e))?;
        (all.header().map(|h| h.revision()), Some(all.count()))
    } else {
        let head = crate::etcd::head_revision(&mut kv)
            .await
            .map_err(|e| etcd_err("reading the revision", e))?;
        (Some(head).filter(|&r| r > 0), None)
    };
    let revision = revision.unwrap_or(status.revision);
    let prefix_counts = if count_keys == CountKeys::Off {
        BTreeMap::new()
    } else {
        manifest::count_prefixes(&mut kv, revision)
            .await
            .map_err(|e| etcd_err("counting keys", e))?
    };
    Ok(AtRevision {
        revision,
        key_count,
        prefix_counts,
    })
}

async fn create(ctx: &Ctx, spec: &BackupCreateSpec) -> Result<BackupResult> {
    let started = jiff::Timestamp::now();
    let clock = Instant::now();
    let plan = Plan::check(spec, started)?;
    if spec.nice {
        crate::priority::lower();
    }
    let store = store::open_retained(&spec.to, &spec.s3, plan.retention).await?;
    // Fail on a missing bucket, bad credentials or an unreachable store before etcd is touched.
    store.check().await?;

    let (client, status, choice) = spec.etcd.connect_follower().await?;
    let cluster = spec
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("etcd-{}", status.cluster_id));
    super::guard::check(
        store.as_ref(),
        &cluster,
        &status.cluster_id,
        plan.trusted.as_ref(),
        spec.force,
    )
    .await?;
    // a dry run writes nothing, not even a lock
    let lock = if ctx.dry_run {
        None
    } else {
        super::lock::acquire(ctx, &spec.run_lock, store.as_ref(), &cluster, "backup").await?
    };
    let run = Run {
        ctx,
        spec,
        plan,
        store: store.as_ref(),
        cluster,
        started,
        clock,
        lock: lock.as_deref(),
    };
    let result = async {
        ctx.shutdown.hold("locked").await;
        backup(run, &client, status, choice).await
    }
    .await;
    if let Some(l) = lock {
        l.release().await;
    }
    result
}

/// One backup, once the store, the member and the lock are in hand.
struct Run<'a> {
    ctx: &'a Ctx,
    spec: &'a BackupCreateSpec,
    plan: Plan,
    store: &'a dyn Store,
    cluster: String,
    started: jiff::Timestamp,
    clock: Instant,
    lock: Option<&'a dyn Held>,
}

/// Streams, checks and publishes the backup (the store, the member and the lock in hand).
async fn backup(
    run: Run<'_>,
    client: &etcd_client::Client,
    status: MemberStatus,
    member_choice: String,
) -> Result<BackupResult> {
    let Run {
        ctx,
        spec,
        plan,
        store,
        cluster,
        started,
        clock,
        lock,
    } = run;
    let endpoint = status.endpoint.clone();
    let at = read_revision(client, &status, spec.count_keys).await?;
    // HashKV walks the whole keyspace: run it beside the snapshot stream.
    let hash_task = (spec.hash_kv == HashKv::On).then(|| {
        let mut maint = client.maintenance_client();
        let revision = at.revision;
        tokio::spawn(async move { maint.hash_kv(revision).await })
    });

    let id = manifest::backup_id(started, at.revision);
    let encrypted = plan.enc_info.is_some();
    let object_key = manifest::object_key(&cluster, &id, encrypted);
    tracing::info!(member = %endpoint, revision = at.revision, keys = ?at.key_count, object = %object_key, "streaming snapshot");

    let job = Job {
        compression: plan.compression,
        encryption: plan.encryption,
        upload: if ctx.dry_run {
            None
        } else {
            Some(store.create(&object_key).await?)
        },
        depth: 64,
    };
    let stage = ctx
        .progress
        .stage("snapshot", Some(status.db_size.max(0) as u64));
    let stop = &ctx.shutdown;
    let outcome = pipeline::run(job, stop, pipeline::copy_chunks, |feed| {
        stream_snapshot(client, &endpoint, feed, &*stage, spec.max_rate)
    })
    .await;
    stage.finish();
    let encoded = outcome.into_result(stop)?;
    let vouched = async {
        stop.hold("hashkv").await;
        vouch(&endpoint, &encoded.output, hash_task).await
    };
    let hash = match stop.guard("nothing was published", vouched).await {
        Ok(h) => h,
        Err(e) => {
            encoded.upload.abort().await;
            return Err(e);
        }
    };
    let digest = encoded.output;

    let m = Manifest {
        format: manifest::FORMAT.into(),
        id: id.clone(),
        cluster_name: cluster.clone(),
        object: object_key.clone(),
        object_size: encoded.stats.stored_size,
        object_sha256: encoded.stats.stored_sha256.clone(),
        snapshot: manifest::SnapshotInfo {
            size: digest.size,
            sha256: digest.file_sha256,
            db_sha256: digest.db_sha256,
        },
        etcd: manifest::EtcdInfo {
            endpoint: endpoint.clone(),
            member_choice,
            version: status.version.clone(),
            cluster_id: status.cluster_id.clone(),
            member_id: status.member_id.clone(),
            revision: at.revision,
            key_count: at.key_count,
            count_keys: Some(spec.count_keys),
            hash_kv: hash.as_ref().map(HashKvResponse::hash),
            compact_revision: hash.as_ref().map(HashKvResponse::compact_version),
            db_size: status.db_size,
            prefix_counts: at.prefix_counts,
        },
        compression: manifest::CompressionInfo {
            algorithm: "zstd".into(),
            level: spec.compression_level,
        },
        encryption: plan.enc_info,
        object_lock: plan.retention,
        kirt_version: crate::actions::version::long(),
        started_at: started,
        finished_at: jiff::Timestamp::now(),
        compacted_from: None,
    };
    let manifest_key = manifest::manifest_key(&cluster, &id);
    let json = to_json("the manifest", &m)?;
    let manifest_sha256 = super::chain::sha256(&json);
    if ctx.dry_run {
        encoded.upload.abort().await;
    } else {
        let signature = plan
            .signer
            .as_ref()
            .map(|sk| super::signing::sign(sk, &json, &super::signing::manifest_comment(&m.id)))
            .transpose()?;
        let p = Publication {
            object_key: m.object.clone(),
            manifest_key: manifest_key.clone(),
            manifest: json,
            signature,
        };
        publish(stop, store, encoded.upload, &p, lock).await?;
    }
    let result = BackupResult {
        id,
        cluster,
        location: store.url(),
        object: object_key,
        manifest: manifest_key,
        member: endpoint,
        etcd_version: status.version,
        revision: at.revision,
        key_count: at.key_count,
        snapshot_size: m.snapshot.size,
        stored_size: m.object_size,
        stored_sha256: m.object_sha256.clone(),
        manifest_sha256,
        duration_seconds: clock.elapsed().as_secs_f64(),
        encrypted,
        signed: plan.signer.is_some(),
        object_lock: plan.retention,
        dry_run: ctx.dry_run,
    };
    tracing::info!(
        backup = %result.id, snapshot_bytes = result.snapshot_size, stored_bytes = result.stored_size,
        seconds = format!("{:.2}", result.duration_seconds), "backup complete"
    );
    Ok(result)
}

/// What must hold before the stream becomes a backup: etcd's trailer matched the snapshot, and
/// HashKV at the recorded revision answered if asked for (its value goes into the manifest).
async fn vouch(
    endpoint: &str,
    digest: &SnapshotDigest,
    hash_task: Option<
        tokio::task::JoinHandle<std::result::Result<HashKvResponse, etcd_client::Error>>,
    >,
) -> Result<Option<HashKvResponse>> {
    if !digest.trailer_ok {
        if let Some(task) = &hash_task {
            task.abort();
        }
        return Err(Error::VerifyFailed(format!(
            "etcd {endpoint} sent a snapshot whose sha256 trailer does not match its content ({} bytes); nothing was published",
            digest.size
        )));
    }
    let Some(task) = hash_task else {
        return Ok(None);
    };
    join("HashKV", task)
        .await?
        .map(Some)
        .map_err(|e| Error::Etcd {
            endpoint: endpoint.to_string(),
            context: "HashKV".into(),
            source: e,
        })
}

/// How long to wait after `sent` bytes, `elapsed` into the stream, to stay at `rate` bytes/s
/// (0: no cap). Waiting after each chunk keeps the whole stream at or below the rate.
pub fn pace(sent: u64, rate: u64, elapsed: std::time::Duration) -> std::time::Duration {
    if rate == 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::from_secs_f64(sent as f64 / rate as f64).saturating_sub(elapsed)
}

/// The producer: one member's snapshot stream, its etcd trailer checked on the fly, paced to
/// `max_rate` bytes/s (0: as fast as it comes).
pub(super) async fn stream_snapshot(
    client: &etcd_client::Client,
    endpoint: &str,
    feed: Feed<Bytes>,
    stage: &dyn Stage,
    max_rate: u64,
) -> Result<SnapshotDigest> {
    let etcd_err = |context: &str, e| Error::Etcd {
        endpoint: endpoint.to_string(),
        context: context.into(),
        source: e,
    };
    let mut maint = client.maintenance_client();
    let mut stream = maint
        .snapshot()
        .await
        .map_err(|e| etcd_err("starting the snapshot", e))?;
    let mut trailer = TrailerCheck::default();
    let mut remaining = u64::MAX;
    let (began, mut sent) = (Instant::now(), 0u64);
    while let Some(mut resp) = stream
        .message()
        .await
        .map_err(|e| etcd_err("snapshot stream broke", e))?
    {
        remaining = resp.remaining_bytes();
        // Take the blob out of the message: no copy of the snapshot in kirt.
        let blob = Bytes::from(std::mem::take(&mut resp.0.blob));
        trailer.update(&blob);
        stage.inc(blob.len() as u64);
        sent += blob.len() as u64;
        feed.send(blob).await?;
        // pipeline::run drops this future on a signal, so the wait ends with it
        let wait = pace(sent, max_rate, began.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
    if remaining != 0 && remaining != u64::MAX {
        return Err(Error::failed(format!(
            "etcd {endpoint} ended the snapshot stream early ({remaining} bytes missing)"
        )));
    }
    Ok(trailer.finish())
}

/// What makes a backup exist once its object is uploaded: the manifest (exactly these bytes)
/// and its signature.
pub struct Publication {
    pub object_key: String,
    pub manifest_key: String,
    pub manifest: Vec<u8>,
    pub signature: Option<Vec<u8>>,
}

/// Makes the backup exist: the object, then its signature, then the manifest — the commit
/// marker, always the last write. If a later write fails, a signal arrives or the run lost its
/// lock before the manifest is written, the object (and signature) are removed again rather
/// than left behind (where the store allows: a locked or write-only store keeps them as an
/// incomplete object, never listed as a backup).
pub async fn publish(
    stop: &Shutdown,
    store: &dyn Store,
    upload: Pending,
    p: &Publication,
    lock: Option<&dyn Held>,
) -> Result<()> {
    let ready = stop
        .check("nothing was published")
        .and_then(|_| lock.map_or(Ok(()), |l| l.check()));
    if let Err(e) = ready {
        upload.abort().await;
        return Err(e);
    }
    upload.commit().await?;
    let sig_key = format!("{}{}", p.manifest_key, super::signing::SUFFIX);
    let written = async {
        if let Some(sig) = &p.signature {
            store.put(&sig_key, Bytes::from(sig.clone())).await?;
        }
        stop.hold("manifest").await;
        stop.check("nothing was published")?;
        if let Some(l) = lock {
            l.check()?;
        }
        store
            .put(&p.manifest_key, Bytes::from(p.manifest.clone()))
            .await
    }
    .await;
    if let Err(e) = written {
        // Without its manifest the object is not a backup: remove it rather than leave an orphan.
        for key in [&sig_key, &p.object_key] {
            if let Err(d) = store.delete(key).await {
                tracing::warn!("{d}: {key} stays behind as an incomplete object (never listed as a backup; prune removes it once it may)");
            }
        }
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_core_is_left_to_etcd_on_small_machines() {
        assert_eq!(default_threads(1), 1);
        assert_eq!(default_threads(2), 1);
        assert_eq!(default_threads(4), 3);
        assert_eq!(default_threads(8), 7);
        assert_eq!(default_threads(16), 14);
    }

    #[test]
    fn pacing_keeps_the_stream_at_the_rate() {
        assert_eq!(pace(1 << 30, 0, Duration::ZERO), Duration::ZERO);
        // 1 MiB at 1 MiB/s is due after one second
        assert_eq!(
            pace(1 << 20, 1 << 20, Duration::ZERO),
            Duration::from_secs(1)
        );
        assert_eq!(
            pace(1 << 20, 1 << 20, Duration::from_millis(400)),
            Duration::from_millis(600)
        );
        // behind schedule: no wait, and no burst to catch up beyond the rate
        assert_eq!(
            pace(1 << 20, 1 << 20, Duration::from_secs(3)),
            Duration::ZERO
        );
        // the sum of the waits: a stream of N bytes takes at least N / rate
        let (rate, chunk) = (10_000u64, 4096u64);
        let mut t = Duration::ZERO;
        for i in 1..=100 {
            t += pace(i * chunk, rate, t);
        }
        assert!(t.as_secs_f64() >= (100 * chunk) as f64 / rate as f64 - 1e-9);
    }
}
