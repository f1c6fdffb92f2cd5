//! `kirt restore`: the real thing, for a new member or cluster. Verifies the backup first (every
//! digest), then runs `etcdutl snapshot restore` into an empty data dir (a non-empty one is moved
//! aside, with confirmation; never one an etcd is running on), raising the revision and marking it
//! compacted so that Kubernetes clients never see revisions go back, and prints the etcd command
//! line and the control-plane restart steps. With `--to-revision` / `--to-time` the state at that
//! point is rebuilt first: the newest full backup at or before it, its chain's segments replayed
//! into a scratch etcd on loopback up to exactly that revision (backup/replay.rs), whose snapshot
//! then takes the same path. `objects` puts chosen objects of a backup back through the apiserver
//! instead.

pub mod objects;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::actions::backup::replay::{self, Reached, Target, Tools};
use crate::actions::backup::source::{BackupSource, Located, Unsigned};
use crate::actions::backup::verify::{
    refuse_failed, stream_and_check, Check, ETCDUTL_BIN, ETCD_BIN,
};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::scratch::etcdutl_restore;

const CLUSTER_TOKEN: &str = "kirt-restored";
/// The least revision bump: etcd's maintainers advise at least 10^9 (etcd#16029) — 31 years of
/// one write a second, 11 days of a thousand.
const MIN_BUMP: u64 = 1_000_000_000;
/// The most: revisions are int64, and a planted history must not overflow them.
const MAX_BUMP: u64 = 1 << 52;
/// etcdutl learned `--bump-revision` and `--mark-compacted` in 3.5.10.
const BUMP_SINCE: (u64, u64, u64) = (3, 5, 10);

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from", "backup", "data-dir", "name", "initial-cluster", "initial-advertise-peer-urls"]))]
pub struct RestoreSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    #[serde(flatten)]
    pub unsigned: Unsigned,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(value_name = "ID", default_value = "", hide_default_value = true)]
    pub backup: String,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// Data directory for the restored member (a non-empty one is moved aside, with --yes)
    #[arg(long, value_name = "DIR", default_value = "", hide_default_value = true, value_parser = any_path)]
    pub data_dir: PathBuf,
    /// Member name
    #[arg(
        long,
        value_name = "NAME",
        default_value = "",
        hide_default_value = true
    )]
    pub name: String,
    /// Initial cluster, e.g. m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380
    #[arg(
        long,
        value_name = "NAME=URL,…",
        default_value = "",
        hide_default_value = true
    )]
    pub initial_cluster: String,
    /// This member's peer URLs
    #[arg(
        long,
        value_name = "URL",
        default_value = "",
        hide_default_value = true
    )]
    pub initial_advertise_peer_urls: String,
    /// Cluster token of the new cluster
    #[arg(long, value_name = "TOKEN", default_value = CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// Raise the restored revision by N and mark it compacted (needs etcdutl >= 3.5.10), so that
    /// Kubernetes clients' watches and caches never see revisions go back; 0 turns it off
    /// [default: sized from the backup's age and the cluster's write rate, at least 10^9]
    #[arg(long, value_name = "N")]
    pub bump_revision: Option<u64>,
    /// Restore the state as of this etcd revision: the newest full backup at or before it and
    /// its chain's segments (kirt backup stream) replayed up to it. ID names the chain, or
    /// "latest" lets kirt pick the newest chain that reaches the revision
    #[arg(long, value_name = "REVISION", conflicts_with = "to_time")]
    pub to_revision: Option<i64>,
    /// Restore the state as of this time (RFC 3339, e.g. 2026-11-23T14:05:00Z): the newest
    /// revision the stream received at or before it
    #[arg(long, value_name = "TIME")]
    pub to_time: Option<String>,
    /// etcd binary for the scratch member a point-in-time restore replays into
    #[arg(long, value_name = "PATH", default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Where the plaintext snapshot is spooled while restoring (default: $TMPDIR); removed
    /// afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// A path, where empty means "not given" (reported by `run`, not clap).
fn any_path(s: &str) -> std::result::Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl Default for RestoreSpec {
    fn default() -> Self {
        RestoreSpec {
            source: BackupSource::default(),
            unsigned: Unsigned::default(),
            backup: String::new(),
            decrypt: DecryptOptions::default(),
            data_dir: PathBuf::new(),
            name: String::new(),
            initial_cluster: String::new(),
            initial_advertise_peer_urls: String::new(),
            initial_cluster_token: CLUSTER_TOKEN.into(),
            bump_revision: None,
            to_revision: None,
            to_time: None,
            etcd_bin: ETCD_BIN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            work_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreResult {
    pub backup: String,
    pub cluster: String,
    pub revision: i64,
    /// With --to-revision / --to-time: the revision the restore reached (exactly the one asked
    /// for, or for a time the last one received at or before it) and when the stream received it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub point_in_time: Option<Reached>,
    /// How far the revision was raised (0: not), and the revision the member starts at (as
    /// `etcdutl snapshot status` reads it from the restored db).
    pub revision_bump: u64,
    pub restored_revision: Option<i64>,
    pub etcdutl_version: String,
    pub data_dir: String,
    /// Where the data dir that was there before went.
    pub moved_aside: Option<String>,
    pub checks: Vec<Check>,
    pub etcd_command: String,
    pub next_steps: Vec<String>,
}

impl Render for RestoreResult {
    fn table(&self) -> Table {
        let mut t = Table::fields([
            ("backup", format!("{}/{}", self.cluster, self.backup)),
            ("revision", self.revision.to_string()),
            (
                "point in time",
                self.point_in_time.map_or("-".into(), |p| {
                    format!(
                        "revision {} (received {})",
                        p.revision,
                        p.time
                            .map_or("at an unknown time".into(), |t| t.to_string())
                    )
                }),
            ),
            (
                "restored revision",
                format!(
                    "{} ({})",
                    self.restored_revision
                        .map_or("unknown".into(), |r| r.to_string()),
                    match self.revision_bump {
                        0 => "not bumped".into(),
                        n => format!("bumped by {n} and marked compacted"),
                    }
                ),
            ),
            ("data dir", self.data_dir.clone()),
            (
                "moved aside",
                self.moved_aside.clone().unwrap_or_else(|| "-".into()),
            ),
            ("verified", format!("{} checks ok", self.checks.len())),
        ]);
        t.note(format!(
            "\nstart the restored member with:\n  {}",
            self.etcd_command
        ));
        let steps: Vec<String> = self
            .next_steps
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  {}. {s}", i + 1))
            .collect();
        t.note(format!("\nthen:\n{}", steps.join("\n")));
        t
    }
}

pub async fn run(ctx: &Ctx, spec: RestoreSpec) -> Result<RestoreResult> {
    // checked here rather than by clap: `kirt restore objects` shares the command
    let data_dir = spec.data_dir.to_string_lossy().into_owned();
    for (flag, v) in [
        ("the backup ID", &spec.backup),
        ("--data-dir", &data_dir),
        ("--name", &spec.name),
        ("--initial-cluster", &spec.initial_cluster),
        (
            "--initial-advertise-peer-urls",
            &spec.initial_advertise_peer_urls,
        ),
    ] {
        if v.is_empty() {
            return Err(Error::usage(format!("missing {flag}")));
        }
    }
    let data = &spec.data_dir;
    let aside = match occupied(data)? {
        false => None,
        true => {
            let to = aside_path(data, jiff::Timestamp::now());
            ctx.confirm(&format!(
                "data dir {} is not empty: move it aside to {} and restore into a new one",
                data.display(),
                to.display()
            ))?;
            Some(to)
        }
    };
    let etcdutl_version = etcdutl_version(&spec.etcdutl_bin).await?;
    let can_bump = etcdutl_version.is_some_and(|v| v >= BUMP_SINCE);
    let version = etcdutl_version.map_or("unknown".into(), |(a, b, c)| format!("{a}.{b}.{c}"));
    if spec.bump_revision.is_some_and(|n| n > 0) && !can_bump {
        return Err(Error::usage(format!(
            "--bump-revision needs etcdutl >= 3.5.10 (found {version}); pass --bump-revision 0 to restore without it"
        )));
    }
    let target = Target::from_flags(spec.to_revision, spec.to_time.as_deref())?;
    spec.unsigned.check(&spec.source, "restore")?;
    // The plaintext snapshot is spooled in a private work dir (not next to the data dir: a disk
    // that fills up there takes the member down with it), removed afterwards.
    let tmp = crate::scratch::work_dir("kirt-restore-", spec.work_dir.as_deref())?;
    let snap = tmp.path().join("snapshot.db");
    let fetched = match target {
        Target::End => full_snapshot(ctx, &spec, &snap).await?,
        _ => point_in_time(ctx, &spec, target, tmp.path(), &snap).await?,
    };
    let Fetched {
        loc,
        checks,
        reached,
    } = fetched;
    let bump = match spec.bump_revision {
        Some(n) => n,
        None if can_bump => auto_bump(
            &loc.history,
            loc.manifest.finished_at,
            jiff::Timestamp::now(),
        ),
        None => {
            tracing::warn!(
                "etcdutl {version} cannot raise the restored revision (3.5.10 can): the restored \
                 member starts at the backup's revision, below what the old cluster's clients \
                 have seen; restart every kube-apiserver and controller, or their caches and \
                 watches keep objects the restore discarded and miss changes (kubernetes#118501)"
            );
            0
        }
    };
    let mut args = vec![
        "--name".to_string(),
        spec.name.clone(),
        "--initial-cluster".into(),
        spec.initial_cluster.clone(),
        "--initial-advertise-peer-urls".into(),
        spec.initial_advertise_peer_urls.clone(),
        "--initial-cluster-token".into(),
        spec.initial_cluster_token.clone(),
    ];
    if bump > 0 {
        args.extend(["--bump-revision".into(), bump.to_string()]);
        args.push("--mark-compacted".into());
    }
    if let Some(to) = &aside {
        // checked again: an etcd may have started on it while the backup was verified
        occupied(data)?;
        std::fs::rename(data, to).map_err(|e| {
            Error::io(
                format!("moving {} aside to {}", data.display(), to.display()),
                e,
            )
        })?;
    }
    if let Err(e) = etcdutl_restore(&ctx.shutdown, &spec.etcdutl_bin, &snap, data, &args).await {
        if let Some(to) = &aside {
            // etcdutl_restore removed what it wrote: the old data dir goes back where it was
            if let Err(back) = std::fs::rename(to, data) {
                tracing::error!(
                    "the old data dir stays at {}: moving it back to {} failed: {back}",
                    to.display(),
                    data.display()
                );
            }
        }
        return Err(e);
    }
    let restored_revision = db_revision(&spec.etcdutl_bin, &data.join("member/snap/db")).await;
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.clone());
    let peer = spec.initial_advertise_peer_urls.clone();
    let etcd_command = format!(
        "etcd --name {} --data-dir {} --initial-advertise-peer-urls {peer} --listen-peer-urls {peer} \
         --initial-cluster {} --initial-cluster-token {} --listen-client-urls CLIENT_URLS --advertise-client-urls CLIENT_URLS",
        spec.name,
        abs.display(),
        spec.initial_cluster,
        spec.initial_cluster_token
    );
    Ok(RestoreResult {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        revision: loc.manifest.etcd.revision,
        point_in_time: reached,
        revision_bump: bump,
        restored_revision,
        etcdutl_version: version,
        data_dir: abs.display().to_string(),
        moved_aside: aside.map(|p| p.display().to_string()),
        checks,
        etcd_command,
        next_steps: next_steps(bump > 0),
    })
}

/// The snapshot to restore, verified, and where it came from.
struct Fetched {
    loc: Located,
    checks: Vec<Check>,
    reached: Option<Reached>,
}

/// The full backup itself, every digest checked, into `snap`.
async fn full_snapshot(ctx: &Ctx, spec: &RestoreSpec, snap: &Path) -> Result<Fetched> {
    let loc = spec.source.locate(&spec.backup).await?;
    let decryption = loc.decryption(&spec.decrypt)?;
    let streamed = stream_and_check(ctx, &loc, decryption, Some(snap.to_path_buf())).await?;
    refuse_failed(&loc, &streamed.checks)?;
    Ok(Fetched {
        loc,
        checks: streamed.checks,
        reached: None,
    })
}

/// The state at `target`: a chain replayed into a scratch etcd (every segment checked before
/// it is applied, the revision reached checked), whose snapshot is written to `snap`.
async fn point_in_time(
    ctx: &Ctx,
    spec: &RestoreSpec,
    target: Target,
    work: &Path,
    snap: &Path,
) -> Result<Fetched> {
    let tools = Tools {
        etcd: &spec.etcd_bin,
        etcdutl: &spec.etcdutl_bin,
    };
    let opened = replay::open(
        ctx,
        &spec.source,
        &spec.backup,
        target,
        &spec.decrypt,
        &tools,
        &work.join("replay"),
    )
    .await?;
    let reached = opened.member.reached;
    let saved = match refuse_failed(&opened.base, &opened.checks) {
        Ok(()) => opened.member.etcd.save_snapshot(&ctx.shutdown, snap).await,
        Err(e) => Err(e),
    };
    opened.member.stop().await;
    saved?;
    tracing::info!(
        chain = %opened.base.entry.id,
        segments = opened.view.segments.len(),
        revision = reached.revision,
        "replayed to the point in time"
    );
    Ok(Fetched {
        loc: opened.base,
        checks: opened.checks,
        reached: Some(reached),
    })
}

/// Whether `data` holds anything; an etcd running on it (it holds the lock on its bbolt db) is a
/// refusal: a restore must never pull the data dir from under a live member.
fn occupied(data: &Path) -> Result<bool> {
    let empty = match std::fs::read_dir(data) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(format!("reading {}", data.display()), e)),
    };
    let db = data.join("member/snap/db");
    if let Ok(f) = std::fs::File::open(&db) {
        use std::os::fd::AsRawFd;
        // bbolt holds an exclusive flock on its db while etcd runs (ours is released when f
        // closes). SAFETY: flock on a descriptor this function owns.
        let locked = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK);
        if locked {
            return Err(Error::Refused(format!(
                "an etcd is running on {} (it holds {}): stop it before restoring over it",
                data.display(),
                db.display()
            )));
        }
    }
    Ok(!empty)
}

/// `DIR.kirt-old-TIMESTAMP` beside `DIR`.
fn aside_path(data: &Path, now: jiff::Timestamp) -> PathBuf {
    let mut name = data.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".kirt-old-{}", now.strftime("%Y%m%dT%H%M%SZ")));
    data.with_file_name(name)
}

/// `etcdutl version`'s "etcdutl version: X.Y.Z", or None when it does not say.
async fn etcdutl_version(bin: &Path) -> Result<Option<(u64, u64, u64)>> {
    let out = tokio::process::Command::new(bin)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| {
            Error::usage(format!(
                "cannot run {}: {e} (install etcdutl or pass --etcdutl-bin)",
                bin.display()
            ))
        })?;
    Ok(crate::scratch::parse_version(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

/// The revision of a bbolt db, from `etcdutl snapshot status -w json` (None, with a warning, when
/// etcdutl does not say).
async fn db_revision(bin: &Path, db: &Path) -> Option<i64> {
    #[derive(Deserialize)]
    struct Status {
        revision: i64,
    }
    let out = tokio::process::Command::new(bin)
        .args(["snapshot", "status", "-w", "json"])
        .arg(db)
        .stdin(std::process::Stdio::null())
        .output()
        .await;
    let status = out
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<Status>(&o.stdout).ok());
    if status.is_none() {
        tracing::warn!("etcdutl snapshot status could not read the restored db's revision");
    }
    status.map(|s| s.revision)
}

/// The revision bump: ten times the revisions the cluster may have written since the backup
/// (its age, plus an hour, at the fastest rate between two of its usable backups), at least
/// [`MIN_BUMP`], at most [`MAX_BUMP`]. Too small a bump lets a client that saw a newer revision
/// of the old cluster miss changes; too large costs nothing.
fn auto_bump(
    history: &[(jiff::Timestamp, i64)],
    backup: jiff::Timestamp,
    now: jiff::Timestamp,
) -> u64 {
    let mut points = history.to_vec();
    points.sort();
    let rate = points
        .windows(2)
        .filter_map(|w| {
            let secs = w[1].0.duration_since(w[0].0).as_secs_f64();
            let revs = (w[1].1 - w[0].1) as f64;
            (secs >= 1.0 && revs > 0.0).then_some(revs / secs)
        })
        .fold(0.0_f64, f64::max);
    let age = now.duration_since(backup).as_secs_f64().max(0.0) + 3600.0;
    let estimate = 10.0 * rate * age;
    (estimate.min(MAX_BUMP as f64) as u64).clamp(MIN_BUMP, MAX_BUMP)
}

/// What the operator does next, in order (docs/restore.md explains each).
fn next_steps(bumped: bool) -> Vec<String> {
    let mut steps = vec![
        "stop every kube-apiserver first (move its static Pod manifest out of the manifests dir) so nothing writes to the old cluster".to_string(),
        "stop every etcd member; restore each member's data dir from the same backup (one kirt restore per member, each with its own --name and the same --initial-cluster)".to_string(),
        "start the restored etcd members with the command above and check: etcdctl endpoint status --cluster".to_string(),
        "start the kube-apiservers: their watch caches are rebuilt from the restored data".to_string(),
        "restart kube-controller-manager, kube-scheduler and every kubelet: they cached objects the restore discarded".to_string(),
    ];
    if !bumped {
        steps.push("the revision was NOT raised: clients that watched the old cluster may miss changes until restarted; restart every controller and operator that watches the apiserver".into());
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn the_bump_needs_etcdutl_3_5_10() {
        use crate::scratch::parse_version;
        let out = "etcdutl version: 3.5.16\nAPI version: 3.5\n";
        assert!(parse_version(out).unwrap() >= BUMP_SINCE);
        assert!(parse_version("etcdutl version: 3.5.9\n").unwrap() < BUMP_SINCE);
    }

    #[test]
    fn the_bump_grows_with_the_write_rate_and_the_backups_age() {
        let backup = t("2026-11-01T00:00:00Z");
        // no history: the floor
        assert_eq!(auto_bump(&[], backup, t("2026-11-02T00:00:00Z")), MIN_BUMP);
        // 10 000 writes/s between two backups a day apart, restored 30 days later:
        // 10 × 10^4/s × (30 d + 1 h) ≈ 2.6 × 10^10, above the floor
        let h = [
            (t("2026-10-31T00:00:00Z"), 1_000),
            (backup, 1_000 + 864_000_000),
        ];
        let b = auto_bump(&h, backup, t("2026-12-01T00:00:00Z"));
        assert_eq!(b, (10.0 * 10_000.0 * (30.0 * 86400.0 + 3600.0)) as u64);
        // a planted history (a huge rate) cannot overflow the revision
        let h = [(t("2026-10-31T23:59:59Z"), 0), (backup, i64::MAX)];
        assert_eq!(auto_bump(&h, backup, t("2026-12-01T00:00:00Z")), MAX_BUMP);
    }

    #[test]
    fn the_old_data_dir_goes_beside_the_new_one() {
        let p = aside_path(Path::new("/var/lib/etcd"), t("2026-11-27T10:20:30Z"));
        assert_eq!(p, Path::new("/var/lib/etcd.kirt-old-20261127T102030Z"));
    }
}
