//! `kirt version`: crate version and the git commit it was built from.

use serde::Serialize;

use crate::output::{Render, Table};

#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: &'static str,
    pub commit: &'static str,
    pub target: &'static str,
}

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("KIRT_GIT_COMMIT");

pub fn run() -> VersionInfo {
    VersionInfo {
        version: VERSION,
        commit: COMMIT,
        target: std::env::consts::ARCH,
    }
}

/// "kirt 0.1.0 (abc123)" for manifests and user agents.
pub fn long() -> String {
    format!("kirt {VERSION} ({COMMIT})")
}

impl Render for VersionInfo {
    fn table(&self) -> Table {
        let mut t = Table::default();
        t.note(format!(
            "kirt {} (commit {}, {})",
            self.version, self.commit, self.target
        ));
        t
    }
}
