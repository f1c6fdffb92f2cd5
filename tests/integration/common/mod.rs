//! Shared harness for the integration tests.
//!
//! - [`lab`]: the lab's env file, [`lab()`] and the skip rule;
//! - [`process`]: running kirt, kubectl and shell pipelines ([`Run`]), waiting, server processes;
//! - [`k8s`]: namespaces, manifests, identities (kubeconfigs, ServiceAccount tokens) and reading
//!   objects back with kubectl;
//! - [`s3`]: S3 clients and buckets for the lab's moto and s3s-fs (and private s3s-fs servers);
//! - [`etcd`]: private etcd servers and data to back up;
//! - [`audit_log`]: the lab apiserver's audit log, read back;
//! - [`files`]: evidence bundles extracted with the real zstd and tar, JSON files;
//! - [`keys`]: age and SSH keys made with the real CLIs, minisign keys made by `kirt keygen`.
//!
//! Each test uses its own temp dir, namespace, bucket or key prefix ([`unique`]), so tests run
//! in parallel.

pub mod apiserver;
pub mod audit_log;
pub mod etcd;
pub mod files;
pub mod k8s;
pub mod keys;
pub mod lab;
pub mod process;
pub mod s3;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use lab::{lab, Lab};
pub use process::{kirt_bin, run, sh, wait_until, Proc, Run};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test process run (DNS-1123 safe, a valid bucket name).
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{prefix}-{}-{n}-{t:x}", std::process::id() % 100_000)
}

/// The repository's root (docs, deploy manifests, the Makefile).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a future on a fresh runtime (tests are sync; the S3 SDK and kirt's library are async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The status of each step in a `kirt run -o json` result, in order.
pub fn step_statuses(run: &serde_json::Value) -> Vec<&str> {
    run["steps"]
        .as_array()
        .expect("the run's result has steps")
        .iter()
        .map(|x| x["status"].as_str().expect("each step has a status"))
        .collect()
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    kirt::scratch::free_loopback_port().expect("a free loopback port")
}

/// Every file under `dir` (recursively, hidden ones too); empty when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                out.extend(files_under(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
