//! Chains: a full backup and the segments `kirt backup stream` wrote after it, which together
//! restore to any revision they cover.
//!
//! ```text
//! PREFIX/CLUSTER/FULL.etcd.zst.age, FULL.manifest.json[.minisig]        the base (a full backup)
//! PREFIX/CLUSTER/FULL.chain/SEG.seg.zst.age                            a segment (segment.rs)
//! PREFIX/CLUSTER/FULL.chain/SEG.manifest.json[.minisig]                its manifest: the commit marker
//! ```
//!
//! `SEG` is `YYYYMMDDTHHMMSSZ-rFIRST-LAST` (the time its first revision was received). Each
//! segment manifest names its chain's base, its sequence number, and the previous link (the base
//! for the first segment) with the sha256 of that link's manifest bytes: a hash chain, signed
//! link by link like full backups. The first segment starts at or before the revision after the
//! base's; every later one at the revision after its predecessor's last.
//!
//! Everything here is read from the store and may be planted or damaged. [`assemble`] follows the
//! links from the base and returns the verified prefix and, if anything in the chain directory
//! does not fit — a segment that is missing, edited, swapped, unsigned, from another chain, or a
//! second segment claiming the same place — the first such break, located by revision: a restore
//! may use the chain up to the break, never past it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::list::{BackupEntry, Signature, CLOCK_SKEW, MAX_MANIFEST};
use super::manifest::{self, CompressionInfo, EncryptionInfo};
use super::signing;
use crate::error::{Error, Result};
use crate::store::{ObjectInfo, Store};

pub const FORMAT: &str = "kirt.dev/etcd-segment/v1";
/// The directory of a base's segments: `CLUSTER/BASE.chain/`.
pub const DIR_SUFFIX: &str = ".chain";
const OBJECT_EXT: &str = ".seg.zst";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SegmentManifest {
    pub format: String,
    /// `YYYYMMDDTHHMMSSZ-rFIRST-LAST`
    pub id: String,
    pub cluster_name: String,
    /// Id of the full backup this chain starts from.
    pub chain: String,
    /// 1 for the first segment after the base.
    pub sequence: u64,
    /// The link before this one (the base for sequence 1).
    pub prev: Link,
    /// Object key relative to the store root.
    pub object: String,
    pub object_size: u64,
    pub object_sha256: String,
    /// The JSON lines (`age -d | zstd -d`).
    pub plaintext: Plaintext,
    pub first_revision: i64,
    pub last_revision: i64,
    pub revisions: u64,
    pub events: u64,
    /// When the watch received the first and the last revision.
    pub first_time: jiff::Timestamp,
    pub last_time: jiff::Timestamp,
    /// The member the events came from (the last one, if the stream moved).
    pub etcd: Source,
    pub compression: CompressionInfo,
    pub encryption: Option<EncryptionInfo>,
    pub kirt_version: String,
    /// When the manifest was written (the segment's commit).
    pub finished_at: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Link {
    pub id: String,
    pub manifest_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plaintext {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Source {
    pub endpoint: String,
    pub cluster_id: String,
    pub member_id: String,
}

/// `CLUSTER/BASE.chain`
pub fn dir(cluster: &str, base: &str) -> String {
    format!("{cluster}/{base}{DIR_SUFFIX}")
}

/// `YYYYMMDDTHHMMSSZ-rFIRST-LAST`
pub fn segment_id(first_time: jiff::Timestamp, first: i64, last: i64) -> String {
    format!("{}-{last}", manifest::backup_id(first_time, first))
}

pub fn object_key(cluster: &str, base: &str, id: &str, encrypted: bool) -> String {
    format!(
        "{}/{id}{OBJECT_EXT}{}",
        dir(cluster, base),
        if encrypted { ".age" } else { "" }
    )
}

pub fn manifest_key(cluster: &str, base: &str, id: &str) -> String {
    format!("{}/{id}{}", dir(cluster, base), manifest::MANIFEST_SUFFIX)
}

/// The trusted comment of a segment manifest's signature.
pub fn signature_comment(id: &str) -> String {
    format!("kirt etcd segment manifest {id}")
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// (time, first, last) from a segment id.
pub fn parse_id(id: &str) -> Option<(jiff::Timestamp, i64, i64)> {
    let (stamp, revs) = id.split_once("-r")?;
    let (first, last) = revs.split_once('-')?;
    let (first, last) = (first.parse().ok()?, last.parse().ok()?);
    let time = manifest::id_time(stamp)?;
    (first <= last).then_some((time, first, last))
}

/// For a key of the store: `(cluster, base id, file name)` if it lies in a chain directory.
pub fn split_key(key: &str) -> Option<(&str, &str, &str)> {
    let (rest, file) = key.rsplit_once('/')?;
    let (cluster, dir) = rest.rsplit_once('/')?;
    let base = dir.strip_suffix(DIR_SUFFIX)?;
    (!cluster.contains('/') && manifest::id_time(base).is_some()).then_some((cluster, base, file))
}

/// A segment as the listing shows it (names only: nothing read yet).
#[derive(Debug, Clone)]
pub struct Listed {
    pub id: String,
    pub time: jiff::Timestamp,
    pub first: i64,
    pub last: i64,
    pub manifest: bool,
    pub object: Option<ObjectInfo>,
}

/// The segments in a base's chain directory, by first revision; files that are not segments
/// are left out (and are not kirt's).
pub fn listed(entry: &BackupEntry) -> Vec<Listed> {
    let mut by_id: BTreeMap<String, Listed> = BTreeMap::new();
    for o in &entry.chain_files {
        let Some((_, _, file)) = split_key(&o.key) else {
            continue;
        };
        let Some(id) = file.split('.').next() else {
            continue;
        };
        let Some((time, first, last)) = parse_id(id) else {
            continue;
        };
        let l = by_id.entry(id.to_string()).or_insert_with(|| Listed {
            id: id.to_string(),
            time,
            first,
            last,
            manifest: false,
            object: None,
        });
        if file == format!("{id}{}", manifest::MANIFEST_SUFFIX) {
            l.manifest = true;
        } else if file.starts_with(&format!("{id}{OBJECT_EXT}")) && !file.ends_with(".minisig") {
            l.object = Some(o.clone());
        }
    }
    let mut v: Vec<Listed> = by_id.into_values().collect();
    v.sort_by(|a, b| (a.first, &a.id).cmp(&(b.first, &b.id)));
    v
}

/// A segment whose manifest was read and checked.
#[derive(Debug, Clone)]
pub struct Segment {
    pub manifest: SegmentManifest,
    pub manifest_sha256: String,
    /// Size of the object as listed.
    pub stored_size: u64,
}

/// Where a chain stops being usable, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Break {
    /// The segment (or gap) at fault.
    pub segment: String,
    /// The first revision that cannot be reached through the chain.
    pub revision: i64,
    pub reason: String,
}

impl Break {
    pub fn error(&self, base: &str) -> Error {
        Error::VerifyFailed(format!(
            "the chain of backup {base} breaks at segment {}: {}; restores can reach revision {} at most",
            self.segment,
            self.reason,
            self.revision - 1
        ))
    }
}

/// A chain as far as it verifies.
#[derive(Debug, Clone)]
pub struct ChainView {
    pub base: String,
    pub base_revision: i64,
    /// Verified segments in order (the prefix before `broken`).
    pub segments: Vec<Segment>,
    pub broken: Option<Break>,
    /// Segment objects without a manifest (an interrupted stream): not part of the chain.
    pub incomplete: Vec<String>,
}

impl ChainView {
    /// The last revision the verified prefix reaches (the base's for a chain of no segments).
    pub fn end(&self) -> i64 {
        self.segments
            .last()
            .map(|s| s.manifest.last_revision)
            .unwrap_or(self.base_revision)
    }

    /// Cuts the chain before segment `index` for `reason` (found while reading its object).
    pub fn break_at(&mut self, index: usize, reason: String) -> Break {
        let s = &self.segments[index].manifest;
        let b = Break {
            segment: s.id.clone(),
            revision: s.first_revision,
            reason,
        };
        self.segments.truncate(index);
        if self.broken.as_ref().is_none_or(|o| o.revision > b.revision) {
            self.broken = Some(b.clone());
        }
        b
    }
}

/// Reads and checks every segment manifest in `entry`'s chain directory (only those whose name
/// starts at or before `upto`, when given), follows the links from the base, and returns the
/// verified prefix with the first break. `entry` must be a usable full backup.
pub async fn assemble(
    store: &dyn Store,
    entry: &BackupEntry,
    trusted: Option<&minisign::PublicKey>,
    upto: Option<i64>,
) -> Result<ChainView> {
    let base = entry
        .manifest
        .as_ref()
        .ok_or_else(|| Error::VerifyFailed(format!("backup {} has no manifest", entry.id)))?;
    let now = jiff::Timestamp::now();
    let listing = listed(entry);
    let mut checked = Vec::new();
    let mut problems: Vec<Break> = Vec::new();
    let mut incomplete = Vec::new();
    for l in listing.iter().filter(|l| upto.is_none_or(|u| l.first <= u)) {
        if !l.manifest {
            incomplete.push(l.id.clone());
            continue;
        }
        match read_segment(store, entry, l, trusted, now).await? {
            Ok(s) => checked.push(s),
            Err(reason) => problems.push(Break {
                segment: l.id.clone(),
                revision: l.first,
                reason,
            }),
        }
    }
    let (segments, unlinked) = link(entry, &base.etcd, &entry.manifest_bytes, checked);
    problems.extend(unlinked);
    let broken = problems.into_iter().min_by_key(|b| b.revision);
    let mut view = ChainView {
        base: entry.id.clone(),
        base_revision: base.etcd.revision,
        segments,
        broken: None,
        incomplete,
    };
    if let Some(b) = broken {
        let keep = view
            .segments
            .iter()
            .take_while(|s| s.manifest.last_revision < b.revision)
            .count();
        view.segments.truncate(keep);
        view.broken = Some(b);
    }
    Ok(view)
}

/// One listed segment's manifest, read (bounded) and judged; `Err` says why it does not belong.
async fn read_segment(
    store: &dyn Store,
    entry: &BackupEntry,
    l: &Listed,
    trusted: Option<&minisign::PublicKey>,
    now: jiff::Timestamp,
) -> Result<std::result::Result<Segment, String>> {
    let key = manifest_key(&entry.cluster, &entry.id, &l.id);
    let bytes = match store.get_bytes(&key, MAX_MANIFEST).await {
        Ok(b) => b,
        Err(e @ (Error::VerifyFailed(_) | Error::NotFound { .. })) => {
            return Ok(Err(e.to_string()))
        }
        Err(e) => return Err(e),
    };
    let m: SegmentManifest = match serde_json::from_slice(&bytes) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Err(format!(
                "its manifest is not a kirt segment manifest ({e})"
            )))
        }
    };
    let encrypted = m.encryption.is_some();
    let why = if m.format != FORMAT {
        Some(format!("its manifest has unknown format {:?}", m.format))
    } else if m.id != l.id {
        Some(format!(
            "its manifest describes segment {} (swapped or renamed)",
            m.id
        ))
    } else if m.chain != entry.id || m.cluster_name != entry.cluster {
        Some(format!(
            "its manifest belongs to the chain of {}/{}, not this one",
            m.cluster_name, m.chain
        ))
    } else if m.object != object_key(&entry.cluster, &entry.id, &l.id, encrypted) {
        Some(format!("its manifest names another object ({})", m.object))
    } else if (m.first_revision, m.last_revision) != (l.first, l.last) {
        Some("its manifest states other revisions than its name".into())
    } else if l.object.is_none() {
        Some("its object is missing".into())
    } else if m.finished_at > now + CLOCK_SKEW {
        Some("its manifest says it was written in the future (planted?)".into())
    } else {
        None
    };
    if let Some(why) = why {
        return Ok(Err(why));
    }
    if let Some(pk) = trusted {
        let sig_key = format!("{key}{}", signing::SUFFIX);
        match store.get_bytes(&sig_key, signing::MAX_SIGNATURE).await {
            Ok(sig) => {
                if let Err(why) = signing::check(pk, &bytes, &sig) {
                    return Ok(Err(format!("its manifest signature {why}")));
                }
            }
            Err(Error::NotFound { .. }) => {
                return Ok(Err(
                    "its manifest is not signed, but a trusted key is configured (planted?)".into(),
                ))
            }
            Err(e @ Error::VerifyFailed(_)) => return Ok(Err(e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(Segment {
        stored_size: l.object.as_ref().map(|o| o.size).unwrap_or(0),
        manifest_sha256: sha256(&bytes),
        manifest: m,
    }))
}

/// Follows the links from the base through `checked` (manifests that passed on their own).
/// Returns the linked segments in order and a break for every checked segment left over.
fn link(
    entry: &BackupEntry,
    base: &manifest::EtcdInfo,
    base_bytes: &[u8],
    checked: Vec<Segment>,
) -> (Vec<Segment>, Vec<Break>) {
    let mut by_seq: BTreeMap<u64, Vec<Segment>> = BTreeMap::new();
    for s in checked {
        by_seq.entry(s.manifest.sequence).or_default().push(s);
    }
    let mut chain: Vec<Segment> = Vec::new();
    let mut problems = Vec::new();
    let mut prev = Link {
        id: entry.id.clone(),
        manifest_sha256: sha256(base_bytes),
    };
    let mut seq = 1u64;
    while let Some(mut candidates) = by_seq.remove(&seq) {
        if candidates.len() > 1 {
            candidates.sort_by_key(|s| s.manifest.first_revision);
            let names: Vec<&str> = candidates.iter().map(|s| s.manifest.id.as_str()).collect();
            problems.push(Break {
                segment: names.join(" and "),
                revision: candidates[0].manifest.first_revision,
                reason: format!(
                    "{} segments claim sequence {seq} (two streams, or planted)",
                    names.len()
                ),
            });
            break;
        }
        let s = candidates.remove(0);
        let m = &s.manifest;
        let first_ok = match chain.last() {
            None => m.first_revision >= 1 && m.first_revision <= base.revision + 1,
            Some(p) => m.first_revision == p.manifest.last_revision + 1,
        };
        let why = if m.prev != prev {
            Some(format!(
                "it does not link to {} (its previous link or that link's sha256 differs)",
                prev.id
            ))
        } else if !first_ok {
            Some(match chain.last() {
                None => format!(
                    "it starts at revision {}, after the base's revision {} + 1",
                    m.first_revision, base.revision
                ),
                Some(p) => format!(
                    "it starts at revision {}, not right after {} (revision {})",
                    m.first_revision, p.manifest.id, p.manifest.last_revision
                ),
            })
        } else {
            None
        };
        if let Some(reason) = why {
            problems.push(Break {
                segment: m.id.clone(),
                revision: m.first_revision,
                reason,
            });
            by_seq.insert(seq, Vec::new());
            break;
        }
        prev = Link {
            id: m.id.clone(),
            manifest_sha256: s.manifest_sha256.clone(),
        };
        chain.push(s);
        seq += 1;
    }
    // whatever did not link: a gap before it, or it does not belong
    for (n, left) in by_seq {
        for s in left {
            let m = &s.manifest;
            let reason = if n > seq {
                let after = chain
                    .last()
                    .map(|p| p.manifest.last_revision)
                    .unwrap_or(base.revision);
                format!(
                    "sequence {seq} (revisions {}..{}) is missing before it",
                    after + 1,
                    m.first_revision - 1
                )
            } else {
                "it does not link into the chain".into()
            };
            problems.push(Break {
                segment: m.id.clone(),
                revision: m.first_revision.min(
                    chain
                        .last()
                        .map(|p| p.manifest.last_revision + 1)
                        .unwrap_or(m.first_revision),
                ),
                reason,
            });
        }
    }
    (chain, problems)
}

/// The newest segment of a chain whose manifest checks out (signed, if a key is trusted), read
/// newest first: what the chain reaches, for `list`, `prune` and a resuming stream. Planted or
/// damaged newer entries are skipped (verify reports them).
pub async fn end(
    store: &dyn Store,
    entry: &BackupEntry,
    trusted: Option<&minisign::PublicKey>,
) -> Result<Option<Segment>> {
    let now = jiff::Timestamp::now();
    for l in listed(entry).iter().rev().filter(|l| l.manifest) {
        match read_segment(store, entry, l, trusted, now).await? {
            Ok(s) => return Ok(Some(s)),
            Err(why) => {
                tracing::warn!("segment {}/{}: {why}", dir(&entry.cluster, &entry.id), l.id)
            }
        }
    }
    Ok(None)
}

/// What `backup list` shows of a chain.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Segments with a manifest.
    pub segments: usize,
    /// Segment objects without one (an interrupted stream).
    pub incomplete: usize,
    /// The revision the newest checked segment reaches, and when it was received.
    pub last_revision: Option<i64>,
    pub last_time: Option<jiff::Timestamp>,
    /// Whether that segment's signature was checked with the trusted key.
    pub signature: Signature,
}

/// The summary of `entry`'s chain (reads one or a few manifests).
pub async fn summary(
    store: &dyn Store,
    entry: &BackupEntry,
    trusted: Option<&minisign::PublicKey>,
) -> Result<Summary> {
    let l = listed(entry);
    let newest = end(store, entry, trusted).await?;
    Ok(Summary {
        segments: l.iter().filter(|s| s.manifest).count(),
        incomplete: l.iter().filter(|s| !s.manifest).count(),
        last_revision: newest.as_ref().map(|s| s.manifest.last_revision),
        last_time: newest.as_ref().map(|s| s.manifest.last_time),
        signature: match (trusted, &newest) {
            (None, _) => Signature::Unchecked,
            (Some(_), Some(_)) => Signature::Valid,
            (Some(_), None) => Signature::Missing,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keys_split() {
        let t: jiff::Timestamp = "2026-11-23T02:00:05Z".parse().unwrap();
        let id = segment_id(t, 1001, 1500);
        assert_eq!(id, "20261123T020005Z-r1001-1500");
        assert_eq!(parse_id(&id), Some((t, 1001, 1500)));
        assert_eq!(parse_id("20261123T020005Z-r1500-1001"), None);
        assert_eq!(parse_id("20261123T020005Z-r12"), None);
        let k = object_key("prod", "20261123T020000Z-r1000", &id, true);
        assert_eq!(
            k,
            "prod/20261123T020000Z-r1000.chain/20261123T020005Z-r1001-1500.seg.zst.age"
        );
        assert_eq!(
            split_key(&k),
            Some((
                "prod",
                "20261123T020000Z-r1000",
                "20261123T020005Z-r1001-1500.seg.zst.age"
            ))
        );
        assert_eq!(split_key("prod/20261123T020000Z-r1000.manifest.json"), None);
        assert_eq!(split_key("a/b/20261123T020000Z-r1000.chain/x"), None);
        assert_eq!(split_key(".kirt/pending/x.json"), None);
    }

    fn entry(files: &[&str]) -> BackupEntry {
        BackupEntry {
            cluster: "c".into(),
            id: "20260101T000000Z-r100".into(),
            time: None,
            status: super::super::list::Status::Complete,
            signature: Signature::Unchecked,
            revision: Some(100),
            keys: None,
            snapshot_size: None,
            stored_size: 0,
            encrypted: false,
            object_lock: None,
            object: String::new(),
            manifest: None,
            manifest_bytes: b"base".to_vec(),
            extra_keys: vec![],
            chain_files: files
                .iter()
                .map(|f| ObjectInfo {
                    key: format!("c/20260101T000000Z-r100.chain/{f}"),
                    size: 1,
                    modified: None,
                })
                .collect(),
            chain: None,
        }
    }

    fn seg(seq: u64, first: i64, last: i64, prev: &Segment) -> Segment {
        let t: jiff::Timestamp = "2026-01-01T00:00:01Z".parse().unwrap();
        let id = segment_id(t, first, last);
        let m = SegmentManifest {
            format: FORMAT.into(),
            id: id.clone(),
            cluster_name: "c".into(),
            chain: "20260101T000000Z-r100".into(),
            sequence: seq,
            prev: Link {
                id: prev.manifest.id.clone(),
                manifest_sha256: prev.manifest_sha256.clone(),
            },
            object: object_key("c", "20260101T000000Z-r100", &id, false),
            object_size: 1,
            object_sha256: String::new(),
            plaintext: Plaintext {
                size: 0,
                sha256: String::new(),
            },
            first_revision: first,
            last_revision: last,
            revisions: 0,
            events: 0,
            first_time: t,
            last_time: t,
            etcd: Source {
                endpoint: String::new(),
                cluster_id: String::new(),
                member_id: String::new(),
            },
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: 1,
            },
            encryption: None,
            kirt_version: String::new(),
            finished_at: t,
        };
        Segment {
            manifest_sha256: sha256(&serde_json::to_vec(&m).unwrap()),
            manifest: m,
            stored_size: 1,
        }
    }

    /// The base as a pseudo-segment, so that `seg` can link to it.
    fn base() -> Segment {
        let mut b = seg(0, 1, 100, &dummy());
        b.manifest.id = "20260101T000000Z-r100".into();
        b.manifest_sha256 = sha256(b"base");
        b
    }

    fn dummy() -> Segment {
        Segment {
            manifest: SegmentManifest {
                format: String::new(),
                id: String::new(),
                cluster_name: String::new(),
                chain: String::new(),
                sequence: 0,
                prev: Link {
                    id: String::new(),
                    manifest_sha256: String::new(),
                },
                object: String::new(),
                object_size: 0,
                object_sha256: String::new(),
                plaintext: Plaintext {
                    size: 0,
                    sha256: String::new(),
                },
                first_revision: 0,
                last_revision: 0,
                revisions: 0,
                events: 0,
                first_time: jiff::Timestamp::UNIX_EPOCH,
                last_time: jiff::Timestamp::UNIX_EPOCH,
                etcd: Source {
                    endpoint: String::new(),
                    cluster_id: String::new(),
                    member_id: String::new(),
                },
                compression: CompressionInfo {
                    algorithm: String::new(),
                    level: 0,
                },
                encryption: None,
                kirt_version: String::new(),
                finished_at: jiff::Timestamp::UNIX_EPOCH,
            },
            manifest_sha256: String::new(),
            stored_size: 0,
        }
    }

    fn etcd_info() -> manifest::EtcdInfo {
        manifest::EtcdInfo {
            endpoint: String::new(),
            member_choice: String::new(),
            version: String::new(),
            cluster_id: String::new(),
            member_id: String::new(),
            revision: 100,
            key_count: Some(0),
            count_keys: None,
            hash_kv: None,
            compact_revision: None,
            db_size: 0,
            prefix_counts: Default::default(),
        }
    }

    #[test]
    fn links_follow_the_hash_chain_and_name_what_does_not_fit() {
        let e = entry(&[]);
        let b = base();
        let s1 = seg(1, 95, 150, &b); // starts before the base's revision + 1: allowed
        let s2 = seg(2, 151, 200, &s1);
        let s3 = seg(3, 201, 260, &s2);
        let (ok, bad) = link(
            &e,
            &etcd_info(),
            b"base",
            vec![s3.clone(), s1.clone(), s2.clone()],
        );
        assert_eq!(ok.len(), 3);
        assert!(bad.is_empty(), "{bad:?}");

        // a missing segment: the chain stops before it, the next one is named with the gap
        let (ok, bad) = link(&e, &etcd_info(), b"base", vec![s1.clone(), s3.clone()]);
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].segment, s3.manifest.id);
        assert!(
            bad[0]
                .reason
                .contains("sequence 2 (revisions 151..200) is missing"),
            "{bad:?}"
        );
        assert_eq!(bad[0].revision, 151);

        // a gap in revisions although the links hold
        let mut s2gap = seg(2, 155, 200, &s1);
        s2gap.manifest.prev = Link {
            id: s1.manifest.id.clone(),
            manifest_sha256: s1.manifest_sha256.clone(),
        };
        let (ok, bad) = link(&e, &etcd_info(), b"base", vec![s1.clone(), s2gap]);
        assert_eq!(ok.len(), 1);
        assert!(bad[0].reason.contains("not right after"), "{bad:?}");

        // an edited predecessor (its sha256 no longer matches what the next one recorded)
        let mut s1edit = s1.clone();
        s1edit.manifest_sha256 = sha256(b"edited");
        let (ok, bad) = link(&e, &etcd_info(), b"base", vec![s1edit, s2.clone()]);
        assert_eq!(ok.len(), 1);
        assert!(bad[0].reason.contains("does not link"), "{bad:?}");

        // two segments claiming the same place
        let fork = seg(2, 151, 170, &s1);
        let (ok, bad) = link(&e, &etcd_info(), b"base", vec![s1.clone(), s2, fork]);
        assert_eq!(ok.len(), 1);
        assert!(bad[0].reason.contains("claim sequence 2"), "{bad:?}");

        // a chain on another base does not link
        let (ok, bad) = link(&e, &etcd_info(), b"another base", vec![s1]);
        assert!(ok.is_empty());
        assert_eq!(bad.len(), 1);
    }

    #[test]
    fn listing_groups_files_by_segment() {
        let e = entry(&[
            "20260101T000001Z-r101-150.seg.zst.age",
            "20260101T000001Z-r101-150.manifest.json",
            "20260101T000001Z-r101-150.manifest.json.minisig",
            "20260101T000003Z-r151-170.seg.zst.age",
            "README",
        ]);
        let l = listed(&e);
        assert_eq!(l.len(), 2);
        assert!(l[0].manifest && l[0].object.is_some());
        assert!(!l[1].manifest && l[1].object.is_some());
        assert_eq!((l[1].first, l[1].last), (151, 170));
    }
}
