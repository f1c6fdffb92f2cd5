//! The backup manifest: written last, it is the commit marker (a backup exists iff its manifest
//! exists) and records everything verify/restore/drill compare against. Never holds a key.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::crypto::{EncryptionInfo, RecipientInfo};

pub const FORMAT: &str = "kirt.dev/etcd-backup/v1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: String,
    /// `YYYYMMDDTHHMMSSZ-rREVISION`
    pub id: String,
    pub cluster_name: String,
    /// Object key relative to the store root.
    pub object: String,
    pub object_size: u64,
    pub object_sha256: String,
    pub snapshot: SnapshotInfo,
    pub etcd: EtcdInfo,
    pub compression: CompressionInfo,
    pub encryption: Option<EncryptionInfo>,
    /// The S3 Object Lock retention the object, its signature and this manifest were written
    /// with (`backup create --object-lock`). A copy's manifest is the original's, byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<crate::store::Retention>,
    pub kirt_version: String,
    /// When the snapshot was taken (for a compacted backup: when the stream received the
    /// revision it holds, so that `latest`, retention, RPO and the revision bump see the time of
    /// the state; the compaction's own time is in `compacted_from`).
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    /// Set by `kirt backup compact`: the chain this full backup was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compacted_from: Option<CompactedFrom>,
}

/// What a compacted full backup was made from: a full backup and its chain's segments replayed
/// up to `revision`. The compacted backup starts a chain of its own (no segments follow it).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompactedFrom {
    /// The chain's full backup.
    pub base: String,
    pub base_revision: i64,
    /// Segments replayed (the last one holds `revision`).
    pub segments: u64,
    pub last_segment: String,
    /// sha256 of that segment's manifest as stored (a link into the chain's hash chain).
    pub last_segment_manifest_sha256: String,
    /// The revision replayed to (the compacted backup's revision).
    pub revision: i64,
    /// When the source's watch received it (unknown only for chains written before kirt
    /// recorded it).
    pub time: Option<jiff::Timestamp>,
    /// When the compaction ran.
    pub compacted_at: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotInfo {
    /// Size of the plaintext stream (db + 32-byte sha256 trailer): the file `etcdutl` restores.
    pub size: u64,
    /// sha256 of that file.
    pub sha256: String,
    /// sha256 of the db alone, as etcd's trailer states it.
    pub db_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EtcdInfo {
    /// The member the snapshot was streamed from.
    pub endpoint: String,
    /// Why that member: a follower preferred over the leader, or the leader as the fallback
    /// (empty in manifests written before kirt recorded it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub member_choice: String,
    pub version: String,
    pub cluster_id: String,
    pub member_id: String,
    /// Revision read before the snapshot started; the snapshot contains at least this revision,
    /// so key count, prefix counts and HashKV at it are reproducible from a restore.
    pub revision: i64,
    /// Live keys at `revision` (`--count-keys all`, and every compacted backup); null when only
    /// the resource prefixes were counted.
    #[serde(default)]
    pub key_count: Option<i64>,
    /// What was counted (`--count-keys`); absent in manifests written before kirt recorded it,
    /// which counted everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_keys: Option<super::create::CountKeys>,
    /// etcd's HashKV at `revision` (`--hash-kv on`); null with `--hash-kv off`, when a restore
    /// is checked by its key counts and the snapshot's digests instead.
    #[serde(default)]
    pub hash_kv: Option<u32>,
    /// The compaction revision HashKV reported (null without HashKV).
    #[serde(default)]
    pub compact_revision: Option<i64>,
    pub db_size: i64,
    /// Key counts under Kubernetes resource prefixes at `revision` (for drills); empty with
    /// `--count-keys off`.
    pub prefix_counts: BTreeMap<String, i64>,
}

impl EtcdInfo {
    /// Made with `--count-keys off`: no per-resource counts by design (an empty map otherwise
    /// means the manifest was not made by kirt, or edited).
    pub fn uncounted(&self) -> bool {
        self.count_keys == Some(super::create::CountKeys::Off)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CompressionInfo {
    pub algorithm: String,
    pub level: i32,
}

/// Kubernetes resource prefixes counted at backup time.
pub const PREFIXES: &[(&str, &str)] = &[
    ("namespaces", "/registry/namespaces/"),
    ("deployments", "/registry/deployments/"),
    ("replicasets", "/registry/replicasets/"),
    ("statefulsets", "/registry/statefulsets/"),
    ("daemonsets", "/registry/daemonsets/"),
    ("pods", "/registry/pods/"),
    ("secrets", "/registry/secrets/"),
    ("configmaps", "/registry/configmaps/"),
    ("services", "/registry/services/specs/"),
    ("serviceaccounts", "/registry/serviceaccounts/"),
    ("networkpolicies", "/registry/networkpolicies/"),
    (
        "customresourcedefinitions",
        "/registry/apiextensions.k8s.io/customresourcedefinitions/",
    ),
];

/// Keys under each of `PREFIXES` at `revision` (0: the head), counted by etcd without values.
pub async fn count_prefixes(
    kv: &mut etcd_client::KvClient,
    revision: i64,
) -> Result<BTreeMap<String, i64>, etcd_client::Error> {
    let mut counts = BTreeMap::new();
    for (name, prefix) in PREFIXES {
        let opts = etcd_client::GetOptions::new()
            .with_prefix()
            .with_count_only()
            .with_revision(revision);
        let r = kv.get(*prefix, Some(opts)).await?;
        counts.insert((*name).to_string(), r.count());
    }
    Ok(counts)
}

pub const MANIFEST_SUFFIX: &str = ".manifest.json";

/// `CLUSTER/ID.manifest.json`
pub fn manifest_key(cluster: &str, id: &str) -> String {
    format!("{cluster}/{id}{MANIFEST_SUFFIX}")
}

/// `CLUSTER/ID.etcd.zst[.age]`
pub fn object_key(cluster: &str, id: &str, encrypted: bool) -> String {
    format!(
        "{cluster}/{id}.etcd.zst{}",
        if encrypted { ".age" } else { "" }
    )
}

/// `YYYYMMDDTHHMMSSZ-rREVISION`
pub fn backup_id(at: jiff::Timestamp, revision: i64) -> String {
    format!("{}-r{revision}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// Parses the time out of a backup id.
pub fn id_time(id: &str) -> Option<jiff::Timestamp> {
    let stamp = id.split('-').next()?;
    let dt = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", stamp).ok()?;
    dt.to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        let t: jiff::Timestamp = "2026-11-23T13:04:05Z".parse().unwrap();
        let id = backup_id(t, 42);
        assert_eq!(id, "20261123T130405Z-r42");
        assert_eq!(id_time(&id), Some(t));
        assert_eq!(
            manifest_key("c", &id),
            "c/20261123T130405Z-r42.manifest.json"
        );
        assert_eq!(
            object_key("c", &id, true),
            "c/20261123T130405Z-r42.etcd.zst.age"
        );
    }
}
