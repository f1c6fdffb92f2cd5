//! `kirt backup compact`: a full backup and its chain's segments merged into one new full
//! backup, as `etcdbrctl compact` does — the chain is replayed into a scratch etcd up to the
//! target ([`replay::open`], every digest and link checked), and that member's snapshot is
//! written like any `backup create`: the same pipeline (zstd → age → store), the same
//! publication (object, signature, then the manifest as the commit marker, nothing left on
//! failure or a signal). Its manifest records what it was compacted from
//! ([`CompactedFrom`]). A compacted backup starts a chain of its own; the stream goes on
//! extending its chain, and while that chain is usable `latest` keeps choosing it (it reaches
//! further: source.rs).

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::create::{publish, stream_snapshot, Plan, Publication};
use super::manifest::{self, CompactedFrom, Manifest};
use super::replay::{self, Opened, Target, Tools};
use super::source::{BackupSource, Unsigned};
use super::verify::{refuse_failed, ETCDUTL_BIN, ETCD_BIN, LATEST};
use crate::context::Ctx;
use crate::crypto::{DecryptOptions, EncryptOptions};
use crate::error::{to_json, Error, Result};
use crate::output::{Render, Table};
use crate::pipeline::{self, Job};
use crate::scratch::tool_version;
use crate::store::{self, ObjectLockOptions, Retention};
use crate::units::human_bytes;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupCompactSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    #[serde(flatten)]
    pub unsigned: Unsigned,
    /// The chain's full backup: id, CLUSTER/ID, or "latest" (with --to-revision: the newest
    /// chain that reaches it)
    #[arg(default_value = LATEST, value_name = "ID")]
    pub backup: String,
    /// Compact up to this revision (default: the end of the chain)
    #[arg(long, value_name = "REVISION")]
    pub to_revision: Option<i64>,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// age X25519 (age1…) or SSH public key the compacted backup is encrypted to; repeatable
    #[arg(long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// File with one recipient per line (as `age -R`)
    #[arg(long, value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
    /// Store the compacted backup unencrypted (not recommended)
    #[arg(long)]
    pub no_encrypt: bool,
    /// zstd level of the compacted backup
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        allow_negative_numbers = true
    )]
    pub compression_level: i32,
    /// Sign the compacted backup's manifest with this minisign secret key (default:
    /// $KIRT_SIGN_KEY; password from $KIRT_SIGN_PASSWORD)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    #[command(flatten)]
    pub retention: ObjectLockOptions,
    /// etcd binary for the scratch member the chain is replayed into
    #[arg(long, value_name = "PATH", default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Where the plaintext snapshot and the scratch member live meanwhile (default: $TMPDIR);
    /// removed afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

impl Default for BackupCompactSpec {
    fn default() -> Self {
        BackupCompactSpec {
            source: BackupSource::default(),
            unsigned: Unsigned::default(),
            backup: LATEST.into(),
            to_revision: None,
            decrypt: DecryptOptions::default(),
            recipients: Vec::new(),
            recipients_file: None,
            no_encrypt: false,
            compression_level: 1,
            sign_key: None,
            retention: ObjectLockOptions::default(),
            etcd_bin: ETCD_BIN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            work_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CompactResult {
    pub id: String,
    pub cluster: String,
    pub location: String,
    pub object: String,
    pub manifest: String,
    pub compacted_from: CompactedFrom,
    pub revision: i64,
    pub key_count: i64,
    pub snapshot_size: u64,
    pub stored_size: u64,
    pub encrypted: bool,
    pub signed: bool,
    pub object_lock: Option<Retention>,
    pub duration_seconds: f64,
    pub dry_run: bool,
}

impl Render for CompactResult {
    fn table(&self) -> Table {
        let c = &self.compacted_from;
        let mut t = Table::fields([
            ("backup", self.id.clone()),
            ("cluster", self.cluster.clone()),
            ("stored at", format!("{}/{}", self.location, self.object)),
            (
                "compacted from",
                format!(
                    "{} (r{}) + {} segments up to {}",
                    c.base, c.base_revision, c.segments, c.last_segment
                ),
            ),
            (
                "revision",
                format!(
                    "{} (received {})",
                    self.revision,
                    c.time
                        .map_or("at an unknown time".into(), |t| t.to_string())
                ),
            ),
            ("keys", self.key_count.to_string()),
            ("snapshot", human_bytes(self.snapshot_size)),
            ("stored", human_bytes(self.stored_size)),
            (
                "encrypted",
                if self.encrypted { "yes (age)" } else { "NO" }.into(),
            ),
            (
                "signed",
                if self.signed { "yes (minisign)" } else { "NO" }.into(),
            ),
            ("duration", format!("{:.2}s", self.duration_seconds)),
        ]);
        if self.dry_run {
            t.note("dry run: the chain was replayed and its snapshot encoded, nothing was stored");
        }
        t
    }
}

pub async fn run(ctx: &Ctx, spec: BackupCompactSpec) -> Result<CompactResult> {
    let clock = Instant::now();
    let now = jiff::Timestamp::now();
    let target = Target::from_flags(spec.to_revision, None)?;
    if spec.source.from.is_empty() {
        // the usage error BackupSource gives for a missing --from
        spec.source.open().await?;
    }
    spec.unsigned.check(&spec.source, "compact")?;
    let encrypt = EncryptOptions {
        recipients: spec.recipients.clone(),
        recipients_file: spec.recipients_file.clone(),
        passphrase: false,
        no_encrypt: spec.no_encrypt,
    };
    let plan = Plan::new(
        &encrypt,
        spec.compression_level,
        None,
        &spec.sign_key,
        &spec.retention,
        now,
    )?;
    // the store is written to: with the retention of every write, and checked before the work
    let store = store::open_retained(&spec.source.from, &spec.source.s3, plan.retention).await?;
    store.check().await?;
    let tmp = crate::scratch::work_dir("kirt-compact-", spec.work_dir.as_deref())?;
    let tools = Tools {
        etcd: &spec.etcd_bin,
        etcdutl: &spec.etcdutl_bin,
    };
    let opened = replay::open(
        ctx,
        &spec.source,
        &spec.backup,
        target,
        &spec.decrypt,
        &tools,
        &tmp.path().join("replay"),
    )
    .await?;
    let result = compact(ctx, &spec, plan, store.as_ref(), &opened, now, clock).await;
    opened.member.stop().await;
    result
}

/// Snapshots the replayed member into a new full backup (the member is stopped by the caller).
async fn compact(
    ctx: &Ctx,
    spec: &BackupCompactSpec,
    plan: Plan,
    store: &dyn store::Store,
    opened: &Opened,
    now: jiff::Timestamp,
    clock: Instant,
) -> Result<CompactResult> {
    let base = &opened.base;
    refuse_failed(base, &opened.checks)?;
    let reached = opened.member.reached;
    let applied: Vec<_> = opened
        .view
        .segments
        .iter()
        .filter(|s| {
            s.manifest.first_revision <= reached.revision
                && s.manifest.last_revision > base.manifest.etcd.revision
        })
        .collect();
    let Some(last) = applied.last() else {
        return Err(Error::Refused(format!(
            "nothing to compact: backup {} has no segments up to revision {} (it already is that full backup)",
            base.entry.id, reached.revision
        )));
    };
    let cluster = base.entry.cluster.clone();
    // the state's time: when the stream received the revision (the base's time if unknown)
    let state_time = reached.time.unwrap_or(base.manifest.finished_at);
    let id = manifest::backup_id(state_time, reached.revision);
    let all = super::list::scan(store, Some(&cluster), None).await?;
    if let Some(done) = all
        .iter()
        .find(|b| b.id == id && b.cluster == cluster && b.status == super::list::Status::Complete)
    {
        return Err(Error::Refused(format!(
            "backup {}/{} already holds revision {} compacted (remove it first to compact again)",
            done.cluster, done.id, reached.revision
        )));
    }
    let from = CompactedFrom {
        base: base.entry.id.clone(),
        base_revision: base.manifest.etcd.revision,
        segments: applied.len() as u64,
        last_segment: last.manifest.id.clone(),
        last_segment_manifest_sha256: last.manifest_sha256.clone(),
        revision: reached.revision,
        time: reached.time,
        compacted_at: now,
    };

    // what the manifest records, read from the replayed member at the revision it reached
    let member = &opened.member.etcd;
    let client = member.client().await?;
    let mut kv = client.kv_client();
    let head = crate::etcd::count_all(&mut kv, reached.revision)
        .await
        .map_err(|e| member.error("counting keys", e))?;
    let prefix_counts = manifest::count_prefixes(&mut kv, reached.revision)
        .await
        .map_err(|e| member.error("counting keys", e))?;
    let hash = client
        .maintenance_client()
        .hash_kv(reached.revision)
        .await
        .map_err(|e| member.error("HashKV", e))?;
    let status = client
        .maintenance_client()
        .status()
        .await
        .map_err(|e| member.error("status", e))?;
    let version = tool_version(&spec.etcd_bin, &["--version"])
        .await
        .map_or_else(
            || status.version().to_string(),
            |(a, b, c)| format!("{a}.{b}.{c}"),
        );

    let encrypted = plan.enc_info.is_some();
    let object_key = manifest::object_key(&cluster, &id, encrypted);
    tracing::info!(base = %base.entry.id, segments = from.segments, revision = reached.revision, object = %object_key, "writing the compacted backup");
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
        .stage("compacted snapshot", Some(status.db_size().max(0) as u64));
    let stop = &ctx.shutdown;
    let outcome = pipeline::run(job, stop, pipeline::copy_chunks, |feed| {
        stream_snapshot(&client, &member.endpoint, feed, &*stage, 0)
    })
    .await;
    stage.finish();
    let encoded = outcome.into_result(stop)?;
    let digest = encoded.output;
    // the snapshot must hold exactly the revision reached: a lease of the scratch member that
    // expired meanwhile would have written one more
    let after = crate::etcd::head_revision(&mut kv).await;
    let refusal = match after {
        _ if !digest.trailer_ok => Some(Error::VerifyFailed(
            "the replayed member's snapshot does not match its sha256 trailer; nothing was published"
                .into(),
        )),
        Ok(r) if r != reached.revision => Some(Error::failed(format!(
            "the scratch member moved from revision {} to {r} while it was snapshotted (a lease expired?); nothing was published",
            reached.revision
        ))),
        Ok(_) => None,
        Err(e) => Some(member.error("reading its revision", e)),
    };
    if let Some(e) = refusal {
        encoded.upload.abort().await;
        return Err(e);
    }
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
            endpoint: base.manifest.etcd.endpoint.clone(),
            member_choice: format!(
                "compacted: backup {} replayed to revision {} in a scratch member",
                base.entry.id, reached.revision
            ),
            version,
            // the source cluster's identity: the compacted backup is its history
            cluster_id: base.manifest.etcd.cluster_id.clone(),
            member_id: base.manifest.etcd.member_id.clone(),
            revision: reached.revision,
            key_count: Some(head.count()),
            count_keys: Some(super::create::CountKeys::All),
            hash_kv: Some(hash.hash()),
            compact_revision: Some(hash.compact_version()),
            db_size: status.db_size(),
            prefix_counts,
        },
        compression: manifest::CompressionInfo {
            algorithm: "zstd".into(),
            level: spec.compression_level,
        },
        encryption: plan.enc_info,
        object_lock: plan.retention,
        kirt_version: crate::actions::version::long(),
        started_at: state_time,
        finished_at: state_time,
        compacted_from: Some(from.clone()),
    };
    let manifest_key = manifest::manifest_key(&cluster, &id);
    let json = to_json("the manifest", &m)?;
    if ctx.dry_run {
        encoded.upload.abort().await;
    } else {
        let signature = plan
            .signer
            .as_ref()
            .map(|sk| super::signing::sign(sk, &json, &super::signing::manifest_comment(&m.id)))
            .transpose()?;
        let p = Publication {
            object_key: object_key.clone(),
            manifest_key: manifest_key.clone(),
            manifest: json,
            signature,
        };
        publish(stop, store, encoded.upload, &p, None).await?;
    }
    Ok(CompactResult {
        id,
        cluster,
        location: store.url(),
        object: object_key,
        manifest: manifest_key,
        compacted_from: from,
        revision: reached.revision,
        key_count: m.etcd.key_count.unwrap_or_default(),
        snapshot_size: m.snapshot.size,
        stored_size: m.object_size,
        encrypted,
        signed: plan.signer.is_some(),
        object_lock: plan.retention,
        duration_seconds: clock.elapsed().as_secs_f64(),
        dry_run: ctx.dry_run,
    })
}
