//! Local-directory store: writes `.NAME.PID-RANDOM.part`, fsyncs, renames, fsyncs the directory —
//! the way `etcdutl snapshot save` does — so a crash never leaves a half-written object under its
//! name. Objects are readable by their owner only (0600), directories kirt creates are 0700:
//! backups hold every Secret of a cluster, evidence bundles memory images. Run locks are
//! `flock`ed files under `.kirt/locks/` (never listed): the kernel releases them when their
//! holder dies, however it dies.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt, BufWriter};

use super::{ObjectInfo, Store, Upload};
use crate::error::{Error, Result};
use crate::runlock::{Attempt, Busy, Held, Holder};

/// kirt's own bookkeeping below the root (run locks): never listed as objects.
const KIRT_DIR: &str = ".kirt";

pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if key.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(Error::usage(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    fn err(&self, key: &str, what: &str, e: std::io::Error) -> Error {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => " (check the directory's permissions)",
            std::io::ErrorKind::StorageFull => " (the disk is full)",
            _ => "",
        };
        Error::store(
            self.root.join(key).display().to_string(),
            format!("{what}: {e}{hint}"),
        )
    }
}

/// A partial file of its own for every upload, even two of the same object in the same second.
fn part_path(path: &Path) -> PathBuf {
    use std::hash::{BuildHasher, Hasher};
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::UNIX_EPOCH
            .elapsed()
            .unwrap_or_default()
            .as_nanos(),
    );
    path.with_file_name(format!(
        ".{name}.{}-{:08x}{PART}",
        std::process::id(),
        h.finish() as u32
    ))
}

/// The suffix of partial files (never listed as objects).
const PART: &str = ".part";

#[async_trait]
impl Store for LocalStore {
    fn url(&self) -> String {
        self.root.display().to_string()
    }

    async fn create(&self, key: &str) -> Result<Box<dyn Upload>> {
        let path = self.path(key)?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        crate::context::private_dir(&dir)?;
        let part = part_path(&path);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&part)
            .await
            .map_err(|e| self.err(key, "cannot create file", e))?;
        Ok(Box::new(LocalUpload {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            part,
            path,
            dir,
            size: 0,
        }))
    }

    async fn get(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>> {
        let path = self.path(key)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => Ok(Box::new(f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::not_found(
                format!("object {}", path.display()),
                "check the store location and backup id (kirt backup list)",
            )),
            Err(e) => Err(self.err(key, "cannot open", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        crate::error::join(
            "listing",
            tokio::task::spawn_blocking(move || list_dir(&root, &prefix)),
        )
        .await?
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(key, "cannot delete", e)),
        }
    }

    async fn remove_stale(
        &self,
        older_than: std::time::Duration,
        dry_run: bool,
    ) -> Result<Vec<String>> {
        let root = self.root.clone();
        crate::error::join(
            "listing",
            tokio::task::spawn_blocking(move || stale_parts(&root, older_than, dry_run)),
        )
        .await?
    }

    async fn lock(
        &self,
        name: &str,
        holder: &Holder,
        lease: std::time::Duration,
    ) -> Result<Attempt> {
        let path = self.path(&format!("{KIRT_DIR}/locks/{name}.lock"))?;
        let holder = holder.clone();
        crate::error::join(
            "locking",
            tokio::task::spawn_blocking(move || flock(&path, &holder, lease)),
        )
        .await?
    }

    async fn check(&self) -> Result<String> {
        crate::context::private_dir(&self.root)?;
        let probe = self
            .root
            .join(format!(".kirt-probe-{}", std::process::id()));
        tokio::fs::write(&probe, b"probe")
            .await
            .map_err(|e| self.err("", "directory not writable", e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(format!("directory {} is writable", self.root.display()))
    }
}

fn list_dir(root: &Path, prefix: &str) -> Result<Vec<ObjectInfo>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::store(
                    dir.display().to_string(),
                    format!("cannot list: {e}"),
                ))
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::store(dir.display().to_string(), format!("cannot list: {e}"))
            })?;
            let meta = entry
                .metadata()
                .map_err(|e| Error::store(entry.path().display().to_string(), e.to_string()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                if !(dir == root && name == KIRT_DIR) {
                    stack.push(entry.path());
                }
                continue;
            }
            if name.starts_with('.') {
                continue; // in-progress .part files and probes are not objects
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or(name);
            if rel.starts_with(prefix) {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| jiff::Timestamp::try_from(t).ok());
                out.push(ObjectInfo {
                    key: rel,
                    size: meta.len(),
                    modified,
                });
            }
        }
    }
    Ok(out)
}

/// Partial files older than `older_than` under `root` (removed unless `dry_run`).
fn stale_parts(root: &Path, older_than: std::time::Duration, dry_run: bool) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            if meta.is_dir() {
                stack.push(entry.path());
                continue;
            }
            let old = meta
                .modified()
                .ok()
                .and_then(|m| m.elapsed().ok())
                .is_some_and(|age| age > older_than);
            if name.starts_with('.') && name.ends_with(PART) && old {
                if !dry_run {
                    std::fs::remove_file(entry.path()).map_err(|e| {
                        Error::store(
                            entry.path().display().to_string(),
                            format!("cannot remove: {e}"),
                        )
                    })?;
                }
                out.push(entry.path().display().to_string());
            }
        }
    }
    Ok(out)
}

/// Takes the lock file at `path` (created 0600 in a 0700 directory) without waiting: the holder's
/// record is written into it once it is ours; a busy lock's record names its holder. Its holder
/// removes the file when it releases it, so a lock that was taken on a file that is no longer
/// the one at `path` is taken again on the new one.
fn flock(path: &Path, holder: &Holder, lease: std::time::Duration) -> Result<Attempt> {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let io = |what: &str, e: std::io::Error| {
        Error::store(path.display().to_string(), format!("{what}: {e}"))
    };
    if let Some(dir) = path.parent() {
        crate::context::private_dir(dir)?;
    }
    for _ in 0..5 {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("cannot open the lock file", e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("cannot lock", e));
            }
            // the holder writes its record right after taking the lock: give it a moment
            let mut holder = None;
            for _ in 0..25 {
                let mut text = Vec::new();
                let _ = (&file)
                    .take(crate::runlock::MAX_RECORD + 1)
                    .read_to_end(&mut text);
                holder = Holder::parse(&text);
                if holder.is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
                let _ = file.rewind();
            }
            return Ok(Attempt::Busy(Busy {
                lock: path.display().to_string(),
                holder,
                renewed_ago: None,
                lease,
            }));
        }
        let ours = file.metadata().map_err(|e| io("cannot stat", e))?;
        let current = std::fs::metadata(path).ok();
        if current.is_none_or(|c| (c.dev(), c.ino()) != (ours.dev(), ours.ino())) {
            continue; // released (removed) between our open and our lock
        }
        let written = file
            .set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(&holder.to_json()))
            .and_then(|_| file.sync_all());
        written.map_err(|e| io("cannot write the lock file", e))?;
        return Ok(Attempt::Acquired(Box::new(LockFile {
            path: path.to_path_buf(),
            file,
        })));
    }
    Err(Error::failed(format!(
        "the lock file {} kept changing while kirt tried to take it; try again",
        path.display()
    )))
}

/// A held lock file: removed, then closed (which releases the lock) when released; a holder
/// that dies leaves the file, unlocked.
struct LockFile {
    path: PathBuf,
    file: std::fs::File,
}

#[async_trait]
impl Held for LockFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn check(&self) -> Result<()> {
        Ok(())
    }
    async fn release(self: Box<Self>) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file);
    }
}

struct LocalUpload {
    file: Option<BufWriter<tokio::fs::File>>,
    part: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    size: u64,
}

impl LocalUpload {
    fn err(&self, what: &str, e: std::io::Error) -> Error {
        let hint = if e.kind() == std::io::ErrorKind::StorageFull {
            " (the disk is full)"
        } else {
            ""
        };
        Error::store(
            self.path.display().to_string(),
            format!("{what}: {e}{hint}; nothing was published"),
        )
    }
}

impl LocalUpload {
    /// flush, fsync, rename, fsync the directory
    async fn finish(&self, mut file: BufWriter<tokio::fs::File>) -> Result<u64> {
        if let Err(e) = file.flush().await {
            return Err(self.err("write failed", e));
        }
        if let Err(e) = file.get_mut().sync_all().await {
            return Err(self.err("fsync failed", e));
        }
        drop(file);
        if let Err(e) = tokio::fs::rename(&self.part, &self.path).await {
            return Err(self.err("rename failed", e));
        }
        // The rename is durable only once the directory is synced.
        if let Ok(d) = tokio::fs::File::open(&self.dir).await {
            let _ = d.sync_all().await;
        }
        Ok(self.size)
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Error::failed("write after commit"))?;
        if let Err(e) = file.write_all(&data).await {
            return Err(self.err("write failed", e));
        }
        self.size += data.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<u64> {
        let file = self
            .file
            .take()
            .ok_or_else(|| Error::failed("commit twice"))?;
        let r = self.finish(file).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&self.part).await;
        }
        r
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.part).await;
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        // Not committed: never leave the partial file behind.
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.part);
        }
    }
}
