//! The lab's env file and the skip rule: without a running lab a test fails with a message saying
//! how to start it; `KIRT_SKIP_LAB=1` (and only that) skips, loudly.

use std::collections::HashMap;
use std::path::PathBuf;

/// The running lab (its endpoints and credentials) plus a temp dir for this test alone.
pub struct Lab {
    pub env: HashMap<String, String>,
    pub dir: tempfile::TempDir,
}

/// Returns the lab, or `None` when the suite was told to skip lab tests.
pub fn lab() -> Option<Lab> {
    if std::env::var("KIRT_SKIP_LAB").as_deref() == Ok("1") {
        eprintln!("\n*** SKIPPED lab test (KIRT_SKIP_LAB=1): this test did NOT run ***\n");
        return None;
    }
    let path = std::env::var("KIRT_LAB_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let dir = std::env::var("KIRT_LAB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| super::repo_root().join(".lab"));
            dir.join("env")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "the kirt lab is not running ({} missing).\n  start it: make lab-up   (or run everything: make test)\n  \
             to skip lab tests on purpose: KIRT_SKIP_LAB=1",
            path.display()
        )
    });
    let env = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Lab {
        env,
        dir: tempfile::tempdir().expect("tempdir"),
    })
}

impl Lab {
    /// A value from the env file (`KIRT_LAB_…`).
    pub fn get(&self, key: &str) -> String {
        self.env
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing from the lab env file"))
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> String {
        self.get("KIRT_LAB_KUBECONFIG")
    }

    /// The directory of the apiserver's audit log (`audit.log` and its rotated, gzipped files).
    pub fn audit_dir(&self) -> std::path::PathBuf {
        match self.env.get("KIRT_LAB_AUDIT_DIR") {
            Some(d) => d.into(),
            None => panic!(
                "this lab's apiserver writes no audit log (the lab was started before audit logging \
                 was added to tests/lab/lab.sh): restart it with `make lab-down lab-up`"
            ),
        }
    }

    /// PATH with the lab's etcd 3.5 tools (etcdutl) first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.get("KIRT_LAB_ETCD35_BIN"),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}
