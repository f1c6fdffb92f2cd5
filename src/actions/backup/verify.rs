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

use super::manifest::Manifest;
use super::source::{BackupSource, Located};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{join, Error, IoContext, Result};
use crate::output::{Render, Table};
use crate::pipeline::{open_reader, DecodeStats, Decoder, Decryption, TrailerCheck};
use crate::progress::Stage;
use crate::scratch::{Observed, ScratchEtcd};
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
    decryption: Decryption,
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
    decryption: Decryption,
    limit: u64,
    out: Option<PathBuf>,
    stage: &dyn Stage,
    stop: &Shutdown,
) -> Result<(TrailerCheck, Option<DecodeStats>)> {
    let mut dec = Decoder::new(source, decryption, true)?;
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
    let msg = e.to_string();
    if e.kind() == std::io::ErrorKind::UnexpectedEof || msg.contains("truncated") {
        Error::VerifyFailed(format!("the object is truncated: {msg}"))
    } else if msg.contains("checksum") || msg.contains("Unknown frame") || msg.contains("corrupt") {
        Error::VerifyFailed(format!("the object is corrupt (zstd: {msg})"))
    } else if msg.contains("decrypt") || msg.contains("MAC") || msg.contains("tag") {
        Error::VerifyFailed(format!(
            "the object was modified: age authentication failed ({msg})"
        ))
    } else {
        Error::VerifyFailed(format!("the object cannot be decoded: {msg}"))
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
    let streamed = stream_and_check(ctx, &loc, decryption, snap.clone()).await?;
    let mut checks = streamed.checks;
    let mut ok = streamed.ok;
    if let (true, Some(dir), Some(snap)) = (ok, tmp.as_ref(), snap) {
        let restore_checks = trial_restore(
            &ctx.shutdown,
            &spec.etcd_bin,
            &spec.etcdutl_bin,
            &snap,
            dir.path(),
            &loc.manifest,
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

/// Restores into `dir`, starts a throwaway etcd and compares with the manifest.
pub async fn trial_restore(
    stop: &Shutdown,
    etcd_bin: &Path,
    etcdutl_bin: &Path,
    snap: &Path,
    dir: &Path,
    m: &Manifest,
) -> Result<Vec<Check>> {
    let etcd = ScratchEtcd::restore(stop, etcd_bin, etcdutl_bin, snap, dir, "kirt-verify").await?;
    let observed = stop
        .guard("the throwaway etcd was stopped", async {
            stop.hold("scratch-etcd").await;
            etcd.observe(m.etcd.revision, m.etcd.hash_kv.is_some())
                .await
        })
        .await;
    etcd.stop().await;
    let observed = observed?;
    let mut checks = vec![Check::new(
        "restored revision >= recorded",
        true,
        observed.revision >= m.etcd.revision,
    )];
    checks.extend(keyspace_checks(m, &observed));
    Ok(checks)
}

/// What a restored member must reproduce at the recorded revision: the live keys, the keys per
/// resource prefix and, when the backup was made with `--hash-kv on`, etcd's HashKV.
pub fn keyspace_checks(m: &Manifest, observed: &Observed) -> Vec<Check> {
    let counts = |c: &std::collections::BTreeMap<String, i64>| {
        c.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut checks = vec![
        Check::new("keys at revision", m.etcd.key_count, observed.key_count),
        Check::new(
            "resource keys at revision",
            counts(&m.etcd.prefix_counts),
            counts(&observed.prefix_counts_at),
        ),
    ];
    if let Some(recorded) = m.etcd.hash_kv {
        let restored = observed.hash_kv.map_or("none".into(), |h| h.to_string());
        checks.push(Check::new("HashKV at revision", recorded, restored));
    }
    checks
}
