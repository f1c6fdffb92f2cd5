//! `kirt backup verify`: stream a backup back (never whole in memory) — stored bytes → sha256 →
//! age → zstd → sha256 + etcd trailer — and compare every digest with the manifest. `--restore`
//! goes further: `etcdutl snapshot restore` into a temp dir, a throwaway etcd on a free loopback
//! port, and revision / key count / HashKV compared with what was recorded at backup time.
//! Every mismatch is its own message with exit code 3; nothing is left running or on disk.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::list::{find, parse_manifest, BackupEntry};
use super::manifest::{self, Manifest};
use super::scratch::ScratchEtcd;
use crate::context::Ctx;
use crate::crypto;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::pipeline::{open_reader, Decoder, Decryption, TrailerCheck};
use crate::store::{self, S3Options, Store};

/// How to decrypt backups (restore side).
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct DecryptOptions {
    /// age or SSH identity file; repeatable
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// Decrypt with a passphrase ($KIRT_PASSPHRASE or asked on the terminal)
    #[arg(long)]
    pub passphrase: bool,
}

impl DecryptOptions {
    pub fn resolve(&self, m: &Manifest) -> Result<Decryption> {
        match &m.encryption {
            None => Ok(Decryption::None),
            Some(e) if e.mode == "passphrase" => {
                if !self.passphrase {
                    return Err(Error::usage(
                        "this backup is passphrase-encrypted: pass --passphrase ($KIRT_PASSPHRASE)",
                    ));
                }
                Ok(Decryption::Passphrase(crypto::passphrase(false)?))
            }
            Some(_) => {
                if self.identities.is_empty() {
                    return Err(Error::usage(
                        "this backup is encrypted: pass --identity FILE (age or SSH private key)",
                    ));
                }
                let mut ids = Vec::new();
                for f in &self.identities {
                    ids.extend(crypto::load_identities(f)?);
                }
                Ok(Decryption::Identities(ids))
            }
        }
    }
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct BackupVerifySpec {
    /// Store: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(default_value = "latest", value_name = "ID")]
    pub backup: String,
    /// Only look at this cluster
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// Also restore into a throwaway etcd and compare revision, key count and HashKV
    #[arg(long)]
    pub restore: bool,
    /// Require a valid minisign signature of the manifest by this public key
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Option<PathBuf>,
    /// etcd binary for --restore (default: etcd on PATH)
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = "etcdutl")]
    pub etcdutl_bin: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: String,
    pub expected: String,
    pub actual: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub backup: String,
    pub cluster: String,
    pub ok: bool,
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

/// A backup that was found and whose manifest was read.
pub struct Located {
    pub store: Arc<dyn Store>,
    pub entry: BackupEntry,
    pub manifest: Manifest,
    /// The manifest exactly as stored (what a signature covers).
    pub manifest_bytes: Vec<u8>,
}

/// Finds the backup and reads its manifest; a missing manifest or object is a verification failure.
pub async fn locate(
    from: &str,
    s3: &S3Options,
    which: &str,
    cluster: Option<&str>,
) -> Result<Located> {
    if from.is_empty() {
        return Err(Error::usage("missing --from: the store holding the backup"));
    }
    let store = store::open(from, s3).await?;
    let entry = find(&store, which, cluster).await?;
    if entry.status != "complete" {
        return Err(Error::VerifyFailed(format!(
            "backup {}/{} has no (readable) manifest: it is not a complete backup (an interrupted run, or the manifest was removed)",
            entry.cluster, entry.id
        )));
    }
    let mkey = manifest::manifest_key(&entry.cluster, &entry.id);
    let manifest_bytes = store.get_bytes(&mkey).await?;
    let manifest = parse_manifest(store.as_ref(), &mkey, &manifest_bytes)?;
    if manifest.id != entry.id || manifest.cluster_name != entry.cluster {
        return Err(Error::VerifyFailed(format!(
            "manifest {}/{} describes backup {}/{}: it was edited or swapped",
            entry.cluster, entry.id, manifest.cluster_name, manifest.id
        )));
    }
    if !entry.extra_keys.contains(&manifest.object) {
        return Err(Error::VerifyFailed(format!(
            "the object {} of backup {} is missing from {}",
            manifest.object,
            entry.id,
            store.url()
        )));
    }
    Ok(Located {
        store,
        entry,
        manifest,
        manifest_bytes,
    })
}

/// What streaming a backup back found.
pub struct Streamed {
    pub checks: Vec<Check>,
    pub ok: bool,
}

fn check(
    checks: &mut Vec<Check>,
    name: &str,
    expected: impl ToString,
    actual: impl ToString,
) -> bool {
    let (e, a) = (expected.to_string(), actual.to_string());
    let ok = e == a;
    checks.push(Check {
        check: name.into(),
        expected: e,
        actual: a,
        ok,
    });
    ok
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
    let m = loc.manifest.clone();
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
    let stage = ctx.progress.stage("verify", Some(m.object_size));
    let stage: Arc<dyn crate::progress::Stage> = Arc::from(stage);
    let s = stage.clone();
    let res = tokio::task::spawn_blocking(
        move || -> Result<(TrailerCheck, Option<crate::pipeline::DecodeStats>)> {
            let source = open_reader(reader);
            let mut dec = Decoder::new(source, decryption, true)?;
            let mut trailer = TrailerCheck::default();
            let mut file = match &out {
                Some(p) => Some(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .map_err(|e| Error::io(format!("creating {}", p.display()), e))?,
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
                trailer.update(&buf[..n]);
                s.inc(n as u64);
                if let Some(f) = file.as_mut() {
                    f.write_all(&buf[..n])
                        .map_err(|e| Error::io("writing the restored snapshot", e))?;
                }
            }
            if let Some(mut f) = file {
                f.flush()
                    .map_err(|e| Error::io("writing the restored snapshot", e))?;
            }
            Ok((trailer, dec.finish()))
        },
    )
    .await
    .map_err(|e| Error::failed(format!("verify task: {e}")))?;
    stage.finish();
    let (trailer, stored) = res?;
    let digest = trailer.finish();
    let stored = stored.ok_or_else(|| {
        Error::VerifyFailed(
            "the object ended before its encryption/compression stream did (truncated)".into(),
        )
    })?;

    let mut checks = Vec::new();
    let mut ok = true;
    ok &= check(
        &mut checks,
        "stored size",
        m.object_size,
        stored.stored_size,
    );
    ok &= check(
        &mut checks,
        "stored sha256",
        &m.object_sha256,
        &stored.stored_sha256,
    );
    ok &= check(&mut checks, "snapshot size", m.snapshot.size, digest.size);
    ok &= check(
        &mut checks,
        "snapshot sha256",
        &m.snapshot.sha256,
        &digest.file_sha256,
    );
    ok &= check(
        &mut checks,
        "etcd trailer (db sha256)",
        &m.snapshot.db_sha256,
        &digest.db_sha256,
    );
    ok &= check(
        &mut checks,
        "etcd trailer matches db",
        true,
        digest.trailer_ok,
    );
    Ok(Streamed { checks, ok })
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
    let loc = locate(
        &spec.from,
        &spec.s3,
        &spec.backup,
        spec.cluster_name.as_deref(),
    )
    .await?;
    if let Some(key) = &spec.trusted_key {
        super::signing::verify(&loc, key).await?;
    }
    let decryption = spec.decrypt.resolve(&loc.manifest)?;
    let tmp = if spec.restore {
        Some(
            tempfile::Builder::new()
                .prefix("kirt-verify-")
                .tempdir()
                .map_err(|e| Error::io("creating a temp dir", e))?,
        )
    } else {
        None
    };
    let snap = tmp.as_ref().map(|d| d.path().join("snapshot.db"));
    let streamed = stream_and_check(ctx, &loc, decryption, snap.clone()).await?;
    let mut checks = streamed.checks;
    let mut ok = streamed.ok;
    if let (true, Some(dir), Some(snap)) = (ok, tmp.as_ref(), snap) {
        let (restore_checks, restore_ok) = trial_restore(
            &spec.etcd_bin,
            &spec.etcdutl_bin,
            &snap,
            dir.path(),
            &loc.manifest,
        )
        .await?;
        checks.extend(restore_checks);
        ok &= restore_ok;
    }
    let result = VerifyResult {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        ok,
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
    etcd_bin: &Path,
    etcdutl_bin: &Path,
    snap: &Path,
    dir: &Path,
    m: &Manifest,
) -> Result<(Vec<Check>, bool)> {
    let data = dir.join("data");
    let ports = super::scratch::Ports::free()?;
    super::scratch::etcdutl_restore(etcdutl_bin, snap, &data, &ports.restore_args("kirt-verify"))
        .await?;
    let etcd = ScratchEtcd::start(etcd_bin, "kirt-verify", &data, &ports, dir).await?;
    let mut checks = Vec::new();
    let mut ok = true;
    let observed = etcd.observe(m.etcd.revision).await;
    etcd.stop().await;
    let observed = observed?;
    ok &= check(
        &mut checks,
        "restored revision >= recorded",
        true,
        observed.revision >= m.etcd.revision,
    );
    ok &= check(
        &mut checks,
        "keys at revision",
        m.etcd.key_count,
        observed.key_count,
    );
    ok &= check(
        &mut checks,
        "HashKV at revision",
        m.etcd.hash_kv,
        observed.hash_kv,
    );
    Ok((checks, ok))
}
