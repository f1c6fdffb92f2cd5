//! `kirt evidence verify`: streams a bundle back (store → age → zstd → tar), hashes every file and
//! checks it against SHA256SUMS *and* manifest.json. Any changed, missing or extra file is named
//! and the exit code is 3. Optionally also checks the stored bytes' sha256 that `collect` printed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{parse_sums, Manifest, FORMAT, MANIFEST, SUMS};
use crate::actions::backup::signing;
use crate::context::Ctx;
use crate::crypto::{DecryptOptions, MODE_PASSPHRASE, MODE_RECIPIENTS};
use crate::error::{join, Error, Exit, IoContext, Result};
use crate::output::{Render, Table};
use crate::pipeline::{open_reader, Decoder};
use crate::store::{self, S3Options};
use crate::units::human_bytes;

/// manifest.json and SHA256SUMS are read whole; anything bigger is not ours.
const SMALL_FILE_LIMIT: u64 = 16 << 20;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["bundle"]))]
pub struct EvidenceVerifySpec {
    /// The bundle: a local file, file:///PATH or s3://BUCKET/KEY
    #[arg(value_name = "BUNDLE")]
    pub bundle: String,
    /// How to decrypt an encrypted (.age) bundle
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// Also require the stored bytes to have this sha256 (as printed by `evidence collect`)
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// Require the bundle's signature (BUNDLE.minisig) by this minisign public key (default:
    /// $KIRT_TRUSTED_KEY)
    #[arg(long, value_name = "FILE")]
    pub trusted_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub s3: S3Options,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub path: String,
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// ok, changed, missing or extra
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyResult {
    pub bundle: String,
    pub ok: bool,
    pub stored_size: u64,
    pub stored_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collected_at: Option<jiff::Timestamp>,
    pub files: Vec<FileCheck>,
    pub problems: Vec<String>,
    /// Checked against something outside the bundle (a signature by the trusted key, or the
    /// sha256 recorded at collection): without it, a bundle rebuilt with consistent digests
    /// would pass.
    pub authenticated: bool,
}

impl Render for VerifyResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["FILE", "SIZE", "SHA256", "STATUS"]);
        for f in &self.files {
            t.row([
                f.path.clone(),
                f.size.map(human_bytes).unwrap_or_else(|| "-".into()),
                f.sha256
                    .as_deref()
                    .map(|s| s[..16.min(s.len())].to_string())
                    .unwrap_or_else(|| "-".into()),
                f.status.clone(),
            ]);
        }
        if self.ok {
            t.note(format!(
                "OK: {} files match SHA256SUMS and manifest.json (bundle sha256 {})",
                self.files.len(),
                self.stored_sha256
            ));
            if !self.authenticated {
                t.note("authenticity NOT checked: the digests only show the bundle is consistent with itself; give --trusted-key (signed bundles) or --sha256 (the digest recorded at collection)");
            }
        } else {
            t.note(format!("verification FAILED for {}:", self.bundle));
            for p in &self.problems {
                t.note(format!("  {p}"));
            }
        }
        t
    }
    fn exit(&self) -> Exit {
        if self.ok {
            Exit::Ok
        } else {
            Exit::VerifyFailed
        }
    }
}

/// Splits a bundle location into (store URL, object key).
fn split_location(loc: &str) -> Result<(String, String)> {
    let (scheme, rest) = if let Some(r) = loc.strip_prefix("s3://") {
        ("s3://", r)
    } else if let Some(r) = loc.strip_prefix("file://") {
        ("file://", r)
    } else {
        ("", loc)
    };
    match rest.rsplit_once('/') {
        Some((dir, name)) if !name.is_empty() => {
            let dir = if dir.is_empty() && scheme.is_empty() {
                "/"
            } else {
                dir
            };
            if scheme == "s3://" && dir.is_empty() {
                return Err(Error::usage(format!("bad bundle location {loc:?}")));
            }
            Ok((format!("{scheme}{dir}"), name.to_string()))
        }
        None if scheme.is_empty() && !rest.is_empty() => Ok((".".into(), rest.to_string())),
        _ => Err(Error::usage(format!(
            "bad bundle location {loc:?}: give a file path or s3://BUCKET/KEY"
        ))),
    }
}

/// What streaming through the tar found.
pub(super) struct Scan {
    top: Option<String>,
    /// relative path → (size, sha256)
    files: BTreeMap<String, (u64, String)>,
    /// entries outside the top directory, or not regular files
    strays: Vec<String>,
    manifest: Option<Vec<u8>>,
    sums: Option<Vec<u8>>,
}

pub(super) fn scan(reader: impl Read) -> std::io::Result<Scan> {
    let mut archive = tar::Archive::new(reader);
    let mut s = Scan {
        top: None,
        files: BTreeMap::new(),
        strays: Vec::new(),
        manifest: None,
        sums: None,
    };
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        let path = entry.path()?.into_owned();
        let parts: Vec<String> = path
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        if kind.is_dir() {
            continue;
        }
        let display = path.to_string_lossy().into_owned();
        if !kind.is_file() || parts.len() < 2 || path_escapes(&path) {
            s.strays.push(display);
            continue;
        }
        let top = s.top.get_or_insert_with(|| parts[0].clone()).clone();
        if parts[0] != top {
            s.strays.push(display);
            continue;
        }
        let rel = parts[1..].join("/");
        let keep = (rel == MANIFEST || rel == SUMS) && entry.size() <= SMALL_FILE_LIMIT;
        let mut hasher = Sha256::new();
        let mut kept = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            if keep {
                kept.extend_from_slice(&buf[..n]);
            }
            size += n as u64;
        }
        if rel == MANIFEST && keep {
            s.manifest = Some(kept);
        } else if rel == SUMS && keep {
            s.sums = Some(kept);
        }
        if s.files
            .insert(rel.clone(), (size, hex::encode(hasher.finalize())))
            .is_some()
        {
            s.strays.push(format!("{display} (appears twice)"));
        }
    }
    // Read to the very end so zstd's checksum and the stored-bytes digest cover everything.
    std::io::copy(&mut archive.into_inner(), &mut std::io::sink())?;
    Ok(s)
}

fn path_escapes(p: &Path) -> bool {
    p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::RootDir))
}

pub async fn run(_ctx: &Ctx, spec: EvidenceVerifySpec) -> Result<VerifyResult> {
    let (store_url, key) = split_location(&spec.bundle)?;
    let trusted = signing::trusted_key_path(&spec.trusted_key)
        .map(|p| signing::load_public_key(&p))
        .transpose()?;
    let store = store::open(&store_url, &spec.s3).await?;
    let reader = store.get(&key).await.map_err(|e| match e {
        Error::NotFound { .. } => Error::not_found(
            format!("evidence bundle {}", spec.bundle),
            "check the location; kirt evidence list --from DIR|s3://BUCKET/PREFIX shows the bundles",
        ),
        e => e,
    })?;
    // Whatever the file is called: its first bytes say whether it is age-encrypted.
    let (encrypted, reader) = sniff_age(reader).await?;
    let mode = encrypted.then_some(if spec.decrypt.passphrase {
        MODE_PASSPHRASE
    } else {
        MODE_RECIPIENTS
    });
    let decryption = spec.decrypt.resolve(mode, "the bundle (age-encrypted)")?;
    let location = spec.bundle.clone();
    let (scan, stats) = join("verify", tokio::task::spawn_blocking(move || -> Result<_> {
        let mut dec = Decoder::new(open_reader(reader), &decryption, true)?;
        let scan = scan(&mut dec).map_err(|e| {
            Error::VerifyFailed(format!(
                "{location} is not a readable evidence bundle (zstd/tar stream broken or truncated): {e}"
            ))
        })?;
        Ok((scan, dec.finish()))
    }))
    .await??;
    let stats = stats.ok_or_else(|| Error::failed("the bundle was not read to its end"))?;
    // The bundle is what its content says (top directory, manifest), not its file name.
    let bundle = scan.top.clone().unwrap_or_default();
    let mut result = compare(&bundle, &scan);
    result.stored_size = stats.stored_size;
    result.stored_sha256 = stats.stored_sha256.clone();
    if let Some(want) = &spec.sha256 {
        result.authenticated = true;
        if !want.eq_ignore_ascii_case(&stats.stored_sha256) {
            result.ok = false;
            result.problems.push(format!(
                "bundle sha256 is {} but {want} was expected: the stored object is not the one collected",
                stats.stored_sha256
            ));
        }
    }
    if let Some(pk) = &trusted {
        let sig_key = format!("{key}{}", signing::SUFFIX);
        let problem = match store.get_bytes(&sig_key, signing::MAX_SIGNATURE).await {
            Ok(sig) => signing::check(pk, stats.stored_sha256.as_bytes(), &sig)
                .err()
                .map(|why| format!("signature {sig_key} {why}")),
            Err(Error::NotFound { .. }) => Some(format!(
                "no signature {sig_key}, but a trusted key is configured: not signed by your collector"
            )),
            Err(e @ Error::VerifyFailed(_)) => Some(e.to_string()),
            Err(e) => return Err(e),
        };
        match problem {
            None => result.authenticated = true,
            Some(p) => {
                result.ok = false;
                result.problems.push(p);
            }
        }
    }
    Ok(result)
}

/// Reads the first bytes of an object to tell an age file (binary or armored) from a plain one,
/// and hands back a reader that still starts at byte 0.
async fn sniff_age(
    mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
) -> Result<(bool, Box<dyn tokio::io::AsyncRead + Send + Unpin>)> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::with_capacity(64);
    (&mut r)
        .take(64)
        .read_to_end(&mut head)
        .await
        .ctx(|| "reading the bundle".into())?;
    let age = head.starts_with(b"age-encryption.org/")
        || head.starts_with(b"-----BEGIN AGE ENCRYPTED FILE-----");
    Ok((
        age,
        Box::new(AsyncReadExt::chain(std::io::Cursor::new(head), r)),
    ))
}

/// What comparing a bundle with its own records found: a status per file (the first problem
/// found for a file is the one shown) and every problem.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    status: BTreeMap<String, &'static str>,
}

impl Findings {
    fn flag(&mut self, path: &str, s: &'static str, problem: String) {
        let e = self.status.entry(path.to_string()).or_insert("ok");
        if *e == "ok" {
            *e = s;
        }
        self.problems.push(problem);
    }

    /// SHA256SUMS: every listed file present with that digest, nothing unlisted.
    fn sums(&mut self, scan: &Scan) {
        let sums = match &scan.sums {
            None => {
                self.problems.push(format!("missing: {SUMS}"));
                Vec::new()
            }
            Some(text) => match parse_sums(&String::from_utf8_lossy(text)) {
                Ok(v) => v,
                Err(e) => {
                    self.problems
                        .push(format!("changed: {SUMS} is not in sha256sum format ({e})"));
                    Vec::new()
                }
            },
        };
        let listed: BTreeSet<&str> = sums.iter().map(|(_, p)| p.as_str()).collect();
        for (sha, path) in &sums {
            match scan.files.get(path) {
                None => self.flag(
                    path,
                    "missing",
                    format!("missing: {path} (listed in {SUMS})"),
                ),
                Some((_, actual)) if actual != sha => self.flag(
                    path,
                    "changed",
                    format!("changed: {path} (sha256 differs from {SUMS})"),
                ),
                Some(_) => {
                    self.status.entry(path.clone()).or_insert("ok");
                }
            }
        }
        for path in scan.files.keys() {
            if path != SUMS && !listed.contains(path.as_str()) && scan.sums.is_some() {
                self.flag(path, "extra", format!("extra: {path} (not in {SUMS})"));
            }
        }
    }

    /// manifest.json: an independent record of every file but itself and SHA256SUMS.
    fn manifest(&mut self, bundle: &str, scan: &Scan) -> Option<Manifest> {
        let m = match &scan.manifest {
            None => {
                let missing = format!("missing: {MANIFEST}");
                if !self.problems.iter().any(|p| p.starts_with(&missing)) {
                    self.problems.push(missing);
                }
                return None;
            }
            Some(bytes) => match serde_json::from_slice::<Manifest>(bytes) {
                Ok(m) if m.format == FORMAT => m,
                Ok(m) => {
                    self.problems.push(format!(
                        "changed: {MANIFEST} has unknown format {:?}",
                        m.format
                    ));
                    return None;
                }
                Err(e) => {
                    self.problems.push(format!(
                        "changed: {MANIFEST} is not a kirt evidence manifest ({e})"
                    ));
                    return None;
                }
            },
        };
        if m.bundle != bundle {
            self.problems.push(format!(
                "changed: {MANIFEST} names bundle {:?}, the file is {bundle:?}",
                m.bundle
            ));
        }
        let in_manifest: BTreeSet<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
        for f in &m.files {
            match scan.files.get(&f.path) {
                None => self.flag(
                    &f.path,
                    "missing",
                    format!("missing: {} (listed in {MANIFEST})", f.path),
                ),
                Some((size, sha)) if *size != f.size || *sha != f.sha256 => self.flag(
                    &f.path,
                    "changed",
                    format!("changed: {} (size/sha256 differ from {MANIFEST})", f.path),
                ),
                Some(_) => {}
            }
        }
        for path in scan.files.keys() {
            if path != SUMS && path != MANIFEST && !in_manifest.contains(path.as_str()) {
                self.flag(path, "extra", format!("extra: {path} (not in {MANIFEST})"));
            }
        }
        Some(m)
    }
}

pub(super) fn compare(bundle: &str, scan: &Scan) -> VerifyResult {
    let mut f = Findings::default();
    if scan.top.as_deref() != Some(bundle) {
        f.problems.push(format!(
            "top directory is {:?}, expected {bundle:?}",
            scan.top.as_deref().unwrap_or("(none)")
        ));
    }
    for s in &scan.strays {
        f.problems.push(format!("extra: {s}"));
    }
    f.sums(scan);
    let manifest = f.manifest(bundle, scan);
    let mut problems = f.problems;
    problems.dedup();

    let mut files: Vec<FileCheck> = Vec::new();
    let mut paths: BTreeSet<&str> = scan.files.keys().map(String::as_str).collect();
    paths.extend(f.status.keys().map(String::as_str));
    for path in paths {
        let actual = scan.files.get(path);
        let st = if path == SUMS && scan.sums.is_some() {
            "ok"
        } else {
            f.status.get(path).copied().unwrap_or("unverified")
        };
        files.push(FileCheck {
            path: path.to_string(),
            size: actual.map(|a| a.0),
            sha256: actual.map(|a| a.1.clone()),
            status: st.into(),
        });
    }
    if files.iter().any(|f| f.status == "unverified") && problems.is_empty() {
        problems.push("some files could not be checked".into());
    }
    VerifyResult {
        bundle: bundle.to_string(),
        ok: problems.is_empty(),
        stored_size: 0,
        stored_sha256: String::new(),
        case_id: manifest.as_ref().and_then(|m| m.case_id.clone()),
        pod: manifest
            .as_ref()
            .map(|m| format!("{}/{}", m.pod.namespace, m.pod.name)),
        collected_at: manifest.as_ref().map(|m| m.started_at),
        files,
        problems,
        authenticated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(
            split_location("s3://b/p/q/evidence-x.tar.zst").unwrap(),
            ("s3://b/p/q".to_string(), "evidence-x.tar.zst".to_string())
        );
        assert_eq!(
            split_location("s3://b/evidence-x.tar.zst").unwrap(),
            ("s3://b".to_string(), "evidence-x.tar.zst".to_string())
        );
        assert_eq!(
            split_location("/tmp/e/evidence-x.tar.zst").unwrap(),
            ("/tmp/e".to_string(), "evidence-x.tar.zst".to_string())
        );
        assert_eq!(
            split_location("evidence-x.tar.zst").unwrap(),
            (".".to_string(), "evidence-x.tar.zst".to_string())
        );
        assert_eq!(
            split_location("file:///d/evidence-x.tar.zst").unwrap(),
            ("file:///d".to_string(), "evidence-x.tar.zst".to_string())
        );
        assert!(split_location("s3://").is_err());
    }
}
