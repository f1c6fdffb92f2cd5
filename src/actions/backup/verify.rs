//! `kirt backup verify`: stream a backup back (never whole in memory) — stored bytes → sha256 →
//! age → zstd → sha256 + etcd trailer — and compare every digest with the manifest. `--restore`
//! goes further: `etcdutl snapshot restore` into a temp dir, a throwaway etcd on a free loopback
//! port, and revision / key counts (and HashKV, if recorded) compared with what was recorded at
//! backup time.
//! Every mismatch is its own message with exit code 3; nothing is left running or on disk.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::chain::{self, ChainView};
use super::manifest::Manifest;
use super::replay::{self, Member, Tools};
use super::source::{BackupSource, Located};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{join, Error, IoContext, Result};
use crate::output::{Render, Table};
use crate::pipeline::{open_reader, DecodeStats, Decoder, Decryption, TrailerCheck};
use crate::progress::Stage;
use crate::scratch::Observed;
use crate::signal::Shutdown;

/// Defaults shared by the commands that restore.
pub const LATEST: &str = "latest";
pub const ETCD_BIN: &str = "etcd";
pub const ETCDUTL_BIN: &str = "etcdutl";

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupVerifySpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(default_value = LATEST, value_name = "ID")]
    pub backup: String,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// Also restore into a throwaway etcd and compare revision, key counts and (if the backup
    /// recorded it) HashKV
    #[arg(long)]
    pub restore: bool,
    /// etcd binary for --restore (default: etcd on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Where --restore puts the plaintext snapshot and the throwaway etcd (default: $TMPDIR);
    /// removed afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

impl Default for BackupVerifySpec {
    fn default() -> Self {
        BackupVerifySpec {
            source: BackupSource::default(),
            backup: LATEST.into(),
            decrypt: DecryptOptions::default(),
            restore: false,
            etcd_bin: ETCD_BIN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            work_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

impl Check {
    /// A comparison of what was recorded with what was found.
    pub fn new(name: &str, expected: impl ToString, actual: impl ToString) -> Check {
        let (expected, actual) = (expected.to_string(), actual.to_string());
        Check {
            check: name.into(),
            ok: expected == actual,
            expected,
            actual,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub backup: String,
    pub cluster: String,
    pub ok: bool,
    /// The manifest is signed by the trusted key (without one, authenticity is not checked).
    pub signed: bool,
    pub restored: bool,
    /// Segments of its chain that verified, and the revision the chain reaches.
    pub segments: usize,
    pub reaches: i64,
    pub checks: Vec<Check>,
    pub seconds: f64,
}

impl Render for VerifyResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["CHECK", "RESULT", "EXPECTED", "ACTUAL"]);
        for c in &self.checks {
            t.row([
                c.check.clone(),
                if c.ok { "ok" } else { "MISMATCH" }.into(),
                c.expected.clone(),
                c.actual.clone(),
            ]);
        }
        if !self.signed {
            t.note(
                "\nauthenticity NOT checked (no --trusted-key / $KIRT_TRUSTED_KEY): whoever can write to the store could have made this backup",
            );
        }
        if self.segments > 0 {
            t.note(format!(
                "\nchain: {} segments, reaches revision {}",
                self.segments, self.reaches
            ));
        }
        t.note(format!(
            "\nbackup {}/{}: {} ({:.2}s)",
            self.cluster,
            self.backup,
            if self.ok {
                "verified"
            } else {
                "VERIFICATION FAILED"
            },
            self.seconds
        ));
        t
    }

    fn exit(&self) -> crate::Exit {
        if self.ok {
            crate::Exit::Ok
        } else {
            crate::Exit::VerifyFailed
        }
    }
}

/// What streaming a backup back found.
pub struct Streamed {
    pub checks: Vec<Check>,
    pub ok: bool,
}

/// Streams the object through decrypt + decompress, checks every digest, and writes the plaintext
/// snapshot to `out` if given. Errors while decoding (wrong key, corrupt or truncated object) are
/// verification failures with their own message.
pub async fn stream_and_check(
    ctx: &Ctx,
    loc: &Located,
    decryption: Arc<Decryption>,
    out: Option<PathBuf>,
) -> Result<Streamed> {
    let m = &loc.manifest;
    let size = loc.entry.stored_size;
    if size < m.object_size {
        return Err(Error::VerifyFailed(format!(
            "the object {} is shorter than its manifest records ({size} of {} bytes): truncated, or swapped with another object",
            m.object, m.object_size
        )));
    }
    if size > m.object_size {
        return Err(Error::VerifyFailed(format!(
            "the object {} is {} bytes longer than its manifest records: modified, or swapped with another object",
            m.object,
            size - m.object_size
        )));
    }
    let reader = loc.store.get(&m.object).await?;
    let stage: Arc<dyn Stage> = Arc::from(ctx.progress.stage("verify", Some(m.object_size)));
    let s = stage.clone();
    let limit = m.snapshot.size;
    let stop = ctx.shutdown.clone();
    let res = join(
        "verify",
        tokio::task::spawn_blocking(move || {
            decode(open_reader(reader), decryption, limit, out, &*s, &stop)
        }),
    )
    .await?;
    stage.finish();
    let (trailer, stored) = res?;
    let digest = trailer.finish();
    let stored = stored.ok_or_else(|| {
        Error::VerifyFailed(
            "the object ended before its encryption/compression stream did (truncated)".into(),
        )
    })?;
    let checks = vec![
        Check::new("stored size", m.object_size, stored.stored_size),
        Check::new("stored sha256", &m.object_sha256, &stored.stored_sha256),
        Check::new("snapshot size", m.snapshot.size, digest.size),
        Check::new("snapshot sha256", &m.snapshot.sha256, &digest.file_sha256),
        Check::new(
            "etcd trailer (db sha256)",
            &m.snapshot.db_sha256,
            &digest.db_sha256,
        ),
        Check::new("etcd trailer matches db", true, digest.trailer_ok),
    ];
    let ok = checks.iter().all(|c| c.ok);
    Ok(Streamed { checks, ok })
}

/// The blocking side: decrypt and decompress, check etcd's trailer on the fly, and write the
/// plaintext snapshot to `out` if given. Stops as soon as the plaintext grows past `limit` (the
/// manifest's snapshot size): a small object must not fill a disk (a decompression bomb).
fn decode(
    source: Box<dyn Read + Send>,
    decryption: Arc<Decryption>,
    limit: u64,
    out: Option<PathBuf>,
    stage: &dyn Stage,
    stop: &Shutdown,
) -> Result<(TrailerCheck, Option<DecodeStats>)> {
    let mut dec = Decoder::new(source, &decryption, true)?;
    let mut trailer = TrailerCheck::default();
    let mut file = match &out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).ctx(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match dec.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => return Err(decode_error(e)),
        };
        stop.check("nothing was restored")?;
        trailer.update(&buf[..n]);
        if trailer.len() > limit {
            return Err(Error::VerifyFailed(format!(
                "the object decompresses to more than the {limit} bytes its manifest records: corrupt, swapped, or a decompression bomb; stopped"
            )));
        }
        stage.inc(n as u64);
        if let Some(f) = file.as_mut() {
            f.write_all(&buf[..n])
                .ctx(|| "writing the restored snapshot".into())?;
        }
    }
    if let Some(mut f) = file {
        f.flush().ctx(|| "writing the restored snapshot".into())?;
    }
    Ok((trailer, dec.finish()))
}

fn decode_error(e: std::io::Error) -> Error {
    Error::VerifyFailed(decode_problem(&e))
}

/// What a read error while decrypting and decompressing a stored object means.
pub fn decode_problem(e: &std::io::Error) -> String {
    let msg = e.to_string();
    if e.kind() == std::io::ErrorKind::UnexpectedEof || msg.contains("truncated") {
        format!("the object is truncated: {msg}")
    } else if msg.contains("checksum") || msg.contains("Unknown frame") || msg.contains("corrupt") {
        format!("the object is corrupt (zstd: {msg})")
    } else if msg.contains("decrypt") || msg.contains("MAC") || msg.contains("tag") {
        format!("the object was modified: age authentication failed ({msg})")
    } else {
        format!("the object cannot be decoded: {msg}")
    }
}

pub async fn run(ctx: &Ctx, spec: BackupVerifySpec) -> Result<VerifyResult> {
    let t = Instant::now();
    let loc = spec.source.locate(&spec.backup).await?;
    let decryption = loc.decryption(&spec.decrypt)?;
    let tmp = if spec.restore {
        Some(crate::scratch::work_dir(
            "kirt-verify-",
            spec.work_dir.as_deref(),
        )?)
    } else {
        None
    };
    let snap = tmp.as_ref().map(|d| d.path().join("snapshot.db"));
    let streamed = stream_and_check(ctx, &loc, decryption.clone(), snap.clone()).await?;
    let mut checks = streamed.checks;
    let mut view =
        chain::assemble(loc.store.as_ref(), &loc.entry, loc.trusted.as_ref(), None).await?;
    checks.extend(check_segments(ctx, &loc, &mut view, decryption.clone()).await?);
    let mut ok = streamed.ok && checks.iter().all(|c| c.ok);
    if let (true, Some(dir), Some(snap)) = (ok, tmp.as_ref(), snap) {
        let tools = Tools {
            etcd: &spec.etcd_bin,
            etcdutl: &spec.etcdutl_bin,
        };
        let restore_checks = trial_restore(
            &ctx.shutdown,
            &tools,
            &snap,
            dir.path(),
            &loc,
            &mut view,
            decryption,
        )
        .await?;
        ok &= restore_checks.iter().all(|c| c.ok);
        checks.extend(restore_checks);
    }
    let result = VerifyResult {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        ok,
        signed: loc.signed,
        restored: spec.restore && ok,
        segments: view.segments.len(),
        reaches: view.end(),
        checks,
        seconds: t.elapsed().as_secs_f64(),
    };
    if !ok {
        let bad: Vec<String> = result
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} (expected {}, got {})", c.check, c.expected, c.actual))
            .collect();
        tracing::error!(backup = %result.backup, "verification failed: {}", bad.join("; "));
    }
    Ok(result)
}

/// Reads every segment of the chain back and checks it against its manifest; the chain's links
/// were checked by `assemble`. One check for the segments, one naming the break if there is one.
async fn check_segments(
    ctx: &Ctx,
    loc: &Located,
    view: &mut ChainView,
    decryption: Arc<Decryption>,
) -> Result<Vec<Check>> {
    let listed = chain::listed(&loc.entry)
        .iter()
        .filter(|l| l.manifest)
        .count();
    if listed == 0 && view.broken.is_none() {
        return Ok(Vec::new());
    }
    let stage = ctx
        .progress
        .stage("segments", Some(view.segments.len() as u64));
    let mut i = 0;
    while i < view.segments.len() {
        let s = view.segments[i].clone();
        if let Err(why) = replay::fetch(
            loc.store.as_ref(),
            &s,
            decryption.clone(),
            &ctx.shutdown,
            |_| Ok(()),
        )
        .await?
        {
            view.break_at(i, why);
            break;
        }
        stage.inc(1);
        i += 1;
    }
    stage.finish();
    for id in &view.incomplete {
        tracing::warn!(
            "segment {id} has no manifest (a stream was interrupted while writing it): not part of the chain"
        );
    }
    let mut checks = vec![Check::new("segments verified", listed, view.segments.len())];
    if let Some(b) = &view.broken {
        checks.push(Check {
            check: format!("chain at segment {}", b.segment),
            expected: "unbroken".into(),
            actual: b.reason.clone(),
            ok: false,
        });
    }
    Ok(checks)
}

/// Restores into `dir`, starts a throwaway etcd, compares with the manifest at its revision, and
/// replays the chain (if any) to its end.
pub async fn trial_restore(
    stop: &Shutdown,
    tools: &Tools<'_>,
    snap: &Path,
    dir: &Path,
    loc: &Located,
    view: &mut ChainView,
    decryption: Arc<Decryption>,
) -> Result<Vec<Check>> {
    let m = &loc.manifest;
    let mut member = Member::start(stop, tools, snap, dir, "kirt-verify").await?;
    let observed = stop
        .guard("the throwaway etcd was stopped", async {
            stop.hold("scratch-etcd").await;
            member
                .etcd
                .observe(m.etcd.revision, m.etcd.hash_kv.is_some())
                .await
        })
        .await;
    let observed = match observed {
        Ok(o) => o,
        Err(e) => {
            member.stop().await;
            return Err(e);
        }
    };
    let mut checks = vec![Check::new(
        "restored revision >= recorded",
        true,
        observed.revision >= m.etcd.revision,
    )];
    checks.extend(keyspace_checks(m, &observed));
    if !view.segments.is_empty() {
        let target = view.end().max(member.snapshot_revision);
        let replayed = member
            .replay(stop, loc, view, decryption, target, dir)
            .await;
        match replayed {
            Ok(more) => checks.extend(more),
            Err(e) => {
                member.stop().await;
                return Err(e);
            }
        }
    }
    member.stop().await;
    Ok(checks)
}

/// Exit 3 when any check failed: nothing is restored from a backup that does not verify.
pub fn refuse_failed(loc: &Located, checks: &[Check]) -> Result<()> {
    let bad: Vec<&str> = checks
        .iter()
        .filter(|c| !c.ok)
        .map(|c| c.check.as_str())
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    Err(Error::VerifyFailed(format!(
        "backup {} does not match its manifest ({}); nothing was restored",
        loc.entry.id,
        bad.join(", ")
    )))
}

/// What a restored member must reproduce at the recorded revision: the keys per resource prefix
/// (unless the backup was made with `--count-keys off`), and what the backup recorded beyond
/// them: all live keys (`--count-keys all`) and etcd's HashKV (`--hash-kv on`).
pub fn keyspace_checks(m: &Manifest, observed: &Observed) -> Vec<Check> {
    let counts = |c: &std::collections::BTreeMap<String, i64>| {
        c.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut checks = Vec::new();
    if let Some(recorded) = m.etcd.key_count {
        checks.push(Check::new("keys at revision", recorded, observed.key_count));
    }
    if !m.etcd.uncounted() {
        checks.push(Check::new(
            "resource keys at revision",
            counts(&m.etcd.prefix_counts),
            counts(&observed.prefix_counts_at),
        ));
    }
    if let Some(recorded) = m.etcd.hash_kv {
        let restored = observed.hash_kv.map_or("none".into(), |h| h.to_string());
        checks.push(Check::new("HashKV at revision", recorded, restored));
    }
    checks
}
