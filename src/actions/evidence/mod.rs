//! Forensic evidence: `collect` streams one pod's state, logs and (optionally) checkpoints into a
//! single tar.zst[.age] bundle with a manifest and SHA256SUMS; `verify` re-checks every digest;
//! `list` shows the bundles in a store. The bundle format is documented in docs/evidence.md and
//! readable with plain `age -d | zstd -d | tar x` + `sha256sum -c`.

mod audit;
mod bundle;
pub mod collect;
mod gather;
pub mod list;
pub mod verify;

use serde::{Deserialize, Serialize};

/// Format tag of `manifest.json`.
pub const FORMAT: &str = "kirt.dev/evidence/v1";
pub const MANIFEST: &str = "manifest.json";
pub const SUMS: &str = "SHA256SUMS";

/// `manifest.json`: who collected what, when, from where, and what could not be collected.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format: String,
    /// Bundle name without extension; also the top directory inside the tar.
    pub bundle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub case_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub collector: Collector,
    pub cluster: ClusterInfo,
    pub pod: PodRef,
    pub options: Options,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    /// Every file in the bundle except manifest.json and SHA256SUMS (which covers manifest.json).
    pub files: Vec<FileEntry>,
    /// What could not be collected, and why.
    pub missing: Vec<Missing>,
    /// `--audit-log`: the files read, the window, whose events, what was redacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<audit::AuditRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Collector {
    /// Who kirt acted as (kubeconfig user or in-cluster service account).
    pub identity: String,
    pub host: String,
    pub kirt_version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// True when the pod was quarantined by kirt (its original labels were used).
    #[serde(default)]
    pub quarantined: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Options {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<i64>,
    pub checkpoint: bool,
    pub encrypted: bool,
    /// Forbidden parts were recorded as missing instead of failing the collection.
    #[serde(default)]
    pub best_effort: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    /// Path relative to the bundle's top directory.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Missing {
    /// The file that would have held it, e.g. `logs/app.previous.log`.
    pub item: String,
    pub reason: String,
}

/// `evidence-NS-POD-YYYYMMDDTHHMMSSZ`.
pub fn bundle_name(ns: &str, pod: &str, at: jiff::Timestamp) -> String {
    format!("evidence-{ns}-{pod}-{}", stamp(at))
}

pub fn stamp(at: jiff::Timestamp) -> String {
    at.strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// The bundle's file name in the store.
pub fn object_name(bundle: &str, encrypted: bool) -> String {
    if encrypted {
        format!("{bundle}.tar.zst.age")
    } else {
        format!("{bundle}.tar.zst")
    }
}

/// Splits a bundle object name into (bundle, encrypted); `None` if it is not a bundle.
pub fn parse_object_name(name: &str) -> Option<(&str, bool)> {
    if !name.starts_with("evidence-") {
        return None;
    }
    if let Some(b) = name.strip_suffix(".tar.zst.age") {
        return Some((b, true));
    }
    name.strip_suffix(".tar.zst").map(|b| (b, false))
}

/// The collection time encoded at the end of a bundle name.
pub fn bundle_time(bundle: &str) -> Option<jiff::Timestamp> {
    let s = bundle.rsplit('-').next()?;
    jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", s)
        .ok()?
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// One `sha256sum` line (text mode: two spaces).
pub fn sums_line(f: &FileEntry) -> String {
    format!("{}  {}\n", f.sha256, f.path)
}

/// Parses `sha256sum` output: `HEX  PATH` or `HEX *PATH`.
pub fn parse_sums(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hash, rest) = line
            .split_once(' ')
            .ok_or_else(|| format!("line {} is not `SHA256  PATH`", i + 1))?;
        let path = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'));
        match path {
            Some(p)
                if hash.len() == 64
                    && hash.bytes().all(|b| b.is_ascii_hexdigit())
                    && !p.is_empty() =>
            {
                out.push((hash.to_ascii_lowercase(), p.to_string()))
            }
            _ => return Err(format!("line {} is not `SHA256  PATH`", i + 1)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let at: jiff::Timestamp = "2026-11-23T13:04:05Z".parse().unwrap();
        let b = bundle_name("prod", "web-1", at);
        assert_eq!(b, "evidence-prod-web-1-20261123T130405Z");
        assert_eq!(bundle_time(&b), Some(at));
        let o = object_name(&b, true);
        assert_eq!(parse_object_name(&o), Some((b.as_str(), true)));
        assert_eq!(
            parse_object_name(&object_name(&b, false)),
            Some((b.as_str(), false))
        );
        assert_eq!(parse_object_name("backup.tar.zst"), None);
        assert_eq!(parse_object_name("evidence-x.zip"), None);
    }

    #[test]
    fn sums_format_matches_sha256sum() {
        let f = FileEntry {
            path: "logs/app.log".into(),
            size: 3,
            sha256: "a".repeat(64),
        };
        let line = sums_line(&f);
        assert_eq!(line, format!("{}  logs/app.log\n", "a".repeat(64)));
        let parsed = parse_sums(&line).unwrap();
        assert_eq!(parsed, vec![("a".repeat(64), "logs/app.log".to_string())]);
        assert!(parse_sums("nonsense\n").is_err());
        assert!(parse_sums(&format!("{} *bin", "B".repeat(64))).is_ok());
    }
}
