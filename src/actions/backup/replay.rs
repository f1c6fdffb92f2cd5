//! Point-in-time restores: choosing the chain that reaches a revision or a time, reading its
//! segments back (every digest checked before a byte is used), and replaying them into a scratch
//! etcd restored from the chain's full backup.
//!
//! [`open`] is the one entry point: "restore this backup, or the chain that reaches revision R /
//! time T, into a scratch etcd and hand me the member". `kirt restore --to-revision/--to-time`
//! snapshots that member into the real data dir; `kirt backup verify --restore` replays a chain
//! to its end with [`Member::replay`]; `kirt drill --to-revision/--to-time` serves that member
//! with a scratch apiserver; `kirt backup compact` snapshots it as a new full backup.
//!
//! A replay applies each source revision as one transaction, so the scratch member's revisions
//! are the source's: every transaction's revision is checked, and anything else writing to the
//! member (a lease it expired by itself) stops the replay. Leases: the keys' leases are granted
//! in the member with the TTL the source reported, and every lease is kept alive while the
//! replay runs; the member's own expiry would otherwise delete keys the source still had (the
//! source's expiries are in the stream, as deletes).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use etcd_client::{LeaseGrantOptions, PutOptions, Txn, TxnOp};

use super::chain::{self, ChainView, Segment};
use super::segment::{Continuity, Event, Reader, Revision};
use super::source::{BackupSource, Located};
use super::verify::{refuse_failed, stream_and_check, Check};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{join, Error, IoContext, Result};
use crate::pipeline::{open_reader, Decoder, Decryption};
use crate::scratch::{tool_version, ScratchEtcd};
use crate::signal::Shutdown;
use crate::store::Store;

/// Where a restore should end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    /// The end of the chain (the full backup itself when it has no segments).
    End,
    Revision(i64),
    /// The newest revision received at or before this time.
    Time(jiff::Timestamp),
}

impl Target {
    /// From `--to-revision` / `--to-time` (at most one).
    pub fn from_flags(revision: Option<i64>, time: Option<&str>) -> Result<Target> {
        match (revision, time) {
            (Some(_), Some(_)) => Err(Error::usage(
                "--to-revision and --to-time cannot be combined",
            )),
            (Some(r), None) if r < 1 => Err(Error::usage(format!(
                "--to-revision {r}: etcd revisions start at 1"
            ))),
            (Some(r), None) => Ok(Target::Revision(r)),
            (None, Some(t)) => parse_time(t).map(Target::Time),
            (None, None) => Ok(Target::End),
        }
    }
}

/// RFC 3339 (`2026-11-23T14:05:00Z`, `…+01:00`).
fn parse_time(t: &str) -> Result<jiff::Timestamp> {
    t.parse().map_err(|e| {
        Error::usage(format!(
            "--to-time {t:?} is not an RFC 3339 time (e.g. 2026-11-23T14:05:00Z): {e}"
        ))
    })
}

/// The etcd tools a replay runs.
pub struct Tools<'a> {
    pub etcd: &'a Path,
    pub etcdutl: &'a Path,
}

/// The revision a restore reached and when the source's watch received it (unknown for the
/// head of a full backup's snapshot).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Reached {
    pub revision: i64,
    pub time: Option<jiff::Timestamp>,
}

/// A scratch etcd on a restored full backup, replayed to some revision; stopped by [`Member::stop`]
/// (and killed if dropped, or if kirt dies).
pub struct Member {
    pub etcd: ScratchEtcd,
    /// The head revision of the full backup's snapshot (at least the revision its manifest
    /// records: writes during the snapshot are in it).
    pub snapshot_revision: i64,
    pub reached: Reached,
}

/// What a successful [`open`] hands back.
pub struct Opened {
    pub member: Member,
    pub base: Located,
    pub view: ChainView,
    /// The full backup's digests, then the replay's checks.
    pub checks: Vec<Check>,
    /// Time spent fetching and checking the full backup (before anything was restored).
    pub verified_in: std::time::Duration,
}

/// Restores `which` (an id, `CLUSTER/ID` or `latest`) — or, for a revision or time target with
/// `latest`, whichever chain of the cluster reaches it — into a scratch etcd in `dir` and replays
/// it to `target`. Refuses targets outside every chain (exit 6) and a chain that breaks before
/// its target (exit 3).
pub async fn open(
    ctx: &Ctx,
    source: &BackupSource,
    which: &str,
    target: Target,
    decrypt: &DecryptOptions,
    tools: &Tools<'_>,
    dir: &Path,
) -> Result<Opened> {
    let mut keys = Keys::new(decrypt);
    let candidates = plan(source, which, target, &mut keys).await?;
    let mut last_err = None;
    for (n, c) in candidates.into_iter().enumerate() {
        let attempt = dir.join(format!("attempt-{n}"));
        crate::context::private_dir(&attempt)?;
        match attempt_one(ctx, c, &mut keys, tools, &attempt).await {
            Ok(opened) => return Ok(opened),
            Err(Attempt::TooNew {
                base,
                holds,
                wanted,
            }) => {
                let _ = std::fs::remove_dir_all(&attempt);
                tracing::info!(
                    "backup {base}'s snapshot already holds revision {holds}, after {wanted}: trying an older chain"
                );
                last_err = Some(Error::not_found(
                    format!("revision {wanted} (backup {base}'s snapshot already holds revision {holds}, and no older chain reaches {wanted})"),
                    "pick a later revision, or list the chains with kirt backup list",
                ));
            }
            Err(Attempt::Failed(e)) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| Error::not_found("a backup to restore", "kirt backup list")))
}

/// One candidate chain and the revision to replay it to.
struct Candidate {
    loc: Located,
    view: ChainView,
    /// `None`: the end of the chain (or the snapshot's head if that is later).
    revision: Option<i64>,
    time: Option<jiff::Timestamp>,
}

enum Attempt {
    /// The full backup's snapshot is already past the target: an older chain may reach it.
    TooNew {
        base: String,
        holds: i64,
        wanted: i64,
    },
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Attempt::Failed(e)
    }
}

async fn attempt_one(
    ctx: &Ctx,
    c: Candidate,
    keys: &mut Keys<'_>,
    tools: &Tools<'_>,
    dir: &Path,
) -> std::result::Result<Opened, Attempt> {
    let Candidate {
        loc,
        mut view,
        revision,
        time,
    } = c;
    let decryption = keys.for_backup(&loc)?;
    let snap = dir.join("snapshot.db");
    let clock = std::time::Instant::now();
    let streamed = stream_and_check(ctx, &loc, decryption.clone(), Some(snap.clone())).await?;
    let verified_in = clock.elapsed();
    refuse_failed(&loc, &streamed.checks)?;
    let mut member = Member::start(&ctx.shutdown, tools, &snap, dir, "kirt-replay").await?;
    let target = revision.unwrap_or(member.snapshot_revision.max(view.end()));
    if member.snapshot_revision > target {
        let holds = member.snapshot_revision;
        member.stop().await;
        return Err(Attempt::TooNew {
            base: loc.entry.id.clone(),
            holds,
            wanted: target,
        });
    }
    let mut checks = streamed.checks;
    let replayed = member
        .replay(&ctx.shutdown, &loc, &mut view, decryption, target, dir)
        .await;
    match replayed {
        Ok(mut more) => {
            checks.append(&mut more);
            if member.reached.time.is_none() {
                member.reached.time = time;
            }
            Ok(Opened {
                member,
                base: loc,
                view,
                checks,
                verified_in,
            })
        }
        Err(e) => {
            member.stop().await;
            Err(e.into())
        }
    }
}

/// Decryptions resolved once per mode (a passphrase is asked once).
pub struct Keys<'a> {
    opts: &'a DecryptOptions,
    resolved: BTreeMap<Option<String>, Arc<Decryption>>,
}

impl<'a> Keys<'a> {
    pub fn new(opts: &'a DecryptOptions) -> Self {
        Keys {
            opts,
            resolved: BTreeMap::new(),
        }
    }

    pub fn for_backup(&mut self, loc: &Located) -> Result<Arc<Decryption>> {
        let mode = loc.manifest.encryption.as_ref().map(|e| e.mode.clone());
        if let Some(d) = self.resolved.get(&mode) {
            return Ok(d.clone());
        }
        let d = loc.decryption(self.opts)?;
        self.resolved.insert(mode, d.clone());
        Ok(d)
    }
}

/// The chains that can reach `target`, best first (the newest base: least to replay).
async fn plan(
    source: &BackupSource,
    which: &str,
    target: Target,
    keys: &mut Keys<'_>,
) -> Result<Vec<Candidate>> {
    let any_chain = which == super::verify::LATEST || which.ends_with("/latest");
    let locs = if target == Target::End || !any_chain {
        vec![source.locate(which).await?]
    } else {
        source.usable_backups(which).await?
    };
    if locs.is_empty() {
        return Err(Error::not_found(
            format!("a usable backup in {}", source.from),
            "list the backups with kirt backup list --from URL",
        ));
    }
    let (revision, time) = match target {
        Target::End => {
            let Some(loc) = locs.into_iter().next() else {
                return Err(Error::not_found("a backup to restore", "kirt backup list"));
            };
            let view = assemble(&loc, None).await?;
            if let Some(b) = &view.broken {
                return Err(b.error(&loc.entry.id));
            }
            return Ok(vec![Candidate {
                loc,
                view,
                revision: None,
                time: None,
            }]);
        }
        Target::Revision(r) => (r, None),
        Target::Time(t) => {
            let (r, at) = revision_at(&locs, t, keys).await?;
            (r, Some(at))
        }
    };
    let mut out = Vec::new();
    let mut refusal = None;
    for loc in locs {
        if loc.manifest.etcd.revision > revision {
            continue;
        }
        let view = assemble(&loc, Some(revision)).await?;
        if view.end() >= revision {
            out.push(Candidate {
                loc,
                view,
                revision: Some(revision),
                time,
            });
        } else if refusal.is_none() {
            refusal = Some(match &view.broken {
                Some(b) => b.error(&loc.entry.id),
                None => Error::not_found(
                    format!(
                        "revision {revision}: the newest chain that starts before it (backup {}) ends at revision {}",
                        loc.entry.id,
                        view.end()
                    ),
                    "pick a revision the chains cover (kirt backup list shows where each ends)",
                ),
            });
        }
    }
    if out.is_empty() {
        return Err(refusal.unwrap_or_else(|| {
            Error::not_found(
                format!("revision {revision}: every backup is newer"),
                "pick a revision the chains cover (kirt backup list)",
            )
        }));
    }
    Ok(out)
}

/// The verified chain of `loc` (its manifests, up to `upto` when given).
async fn assemble(loc: &Located, upto: Option<i64>) -> Result<ChainView> {
    chain::assemble(loc.store.as_ref(), &loc.entry, loc.trusted.as_ref(), upto).await
}

/// The newest revision received at or before `t`, and its time: in the newest chain whose full
/// backup started before `t`.
async fn revision_at(
    locs: &[Located],
    t: jiff::Timestamp,
    keys: &mut Keys<'_>,
) -> Result<(i64, jiff::Timestamp)> {
    let Some(loc) = locs
        .iter()
        .filter(|l| l.manifest.started_at <= t)
        .filter(|l| !l.entry.superseded(locs.iter().map(|o| &o.entry)))
        .max_by_key(|l| l.manifest.started_at)
    else {
        return Err(Error::not_found(
            format!("the state at {t}: every backup started later"),
            "pick a later time (kirt backup list)",
        ));
    };
    // manifests only as far as names say is needed (a name's time is its first revision's)
    let upto = chain::listed(&loc.entry)
        .iter()
        .filter(|l| l.time <= t)
        .map(|l| l.last)
        .max()
        .unwrap_or(loc.manifest.etcd.revision);
    let view = assemble(loc, Some(upto)).await?;
    let Some(i) = view
        .segments
        .iter()
        .rposition(|s| s.manifest.first_time <= t)
    else {
        return Ok((loc.manifest.etcd.revision, loc.manifest.started_at));
    };
    let s = &view.segments[i];
    if i + 1 == view.segments.len() && s.manifest.last_time < t {
        let why = match &view.broken {
            Some(b) => format!(
                "the chain of backup {} breaks at segment {} ({})",
                loc.entry.id, b.segment, b.reason
            ),
            None => format!(
                "the newest revision recorded is {} (received {})",
                s.manifest.last_revision, s.manifest.last_time
            ),
        };
        return Err(Error::not_found(
            format!("the state at {t}: {why}"),
            "give --to-revision for the newest recorded revision, or an earlier --to-time",
        ));
    }
    if s.manifest.last_time <= t {
        return Ok((s.manifest.last_revision, s.manifest.last_time));
    }
    // the time falls inside this segment: read it for the revision received last before `t`
    let decryption = keys.for_backup(loc)?;
    let found = Arc::new(std::sync::Mutex::new(None));
    let f = found.clone();
    let fetched = fetch(
        loc.store.as_ref(),
        s,
        decryption,
        &Shutdown::manual(),
        move |r: &Revision| {
            if r.time() <= t {
                *f.lock().unwrap_or_else(|p| p.into_inner()) = Some((r.revision, r.time()));
            }
            Ok(())
        },
    )
    .await?;
    if let Err(why) = fetched {
        return Err(Error::VerifyFailed(format!(
            "segment {} of backup {}: {why}",
            s.manifest.id, loc.entry.id
        )));
    }
    let found = *found.lock().unwrap_or_else(|p| p.into_inner());
    found.ok_or_else(|| Error::failed("no revision of the segment is at or before the time"))
}

/// Reads segment `s` back — stored bytes → sha256 → age → zstd → revisions — handing each
/// revision to `each` (on a blocking thread) and checking everything its manifest states: sizes,
/// digests, counts, and that the revisions run from its first to its last without a hole. `Err`
/// in the inner result says why the segment cannot be trusted; nothing `each` saw may be used
/// then (the caller applies revisions only after a successful read: see [`Member::replay`]).
pub async fn fetch<F>(
    store: &dyn Store,
    s: &Segment,
    decryption: Arc<Decryption>,
    stop: &Shutdown,
    mut each: F,
) -> Result<std::result::Result<u64, String>>
where
    F: FnMut(&Revision) -> Result<()> + Send + 'static,
{
    let m = s.manifest.clone();
    if s.stored_size != m.object_size {
        return Ok(Err(format!(
            "its object is {} bytes, its manifest says {}: truncated, modified or swapped",
            s.stored_size, m.object_size
        )));
    }
    let reader = store.get(&m.object).await?;
    let stop = stop.clone();
    join(
        "reading a segment",
        tokio::task::spawn_blocking(move || {
            let dec = match Decoder::new(open_reader(reader), &decryption, true) {
                Ok(d) => d,
                Err(Error::VerifyFailed(why)) => return Ok(Err(why)),
                Err(e) => return Err(e),
            };
            let mut lines = Reader::new(dec, m.plaintext.size);
            let mut order = Continuity::starting_at(m.first_revision);
            let (mut revisions, mut events) = (0u64, 0u64);
            loop {
                stop.check("nothing was restored")?;
                let r = match lines.next_revision() {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(why) => return Ok(Err(why)),
                };
                if let Err(why) = order.next(r.revision) {
                    return Ok(Err(why));
                }
                revisions += 1;
                events += r.events.len() as u64;
                each(&r)?;
            }
            let (size, sha, dec) = lines.finish();
            let Some(stored) = dec.finish() else {
                return Ok(Err(
                    "its object ended before its encryption/compression stream did (truncated)"
                        .into(),
                ));
            };
            let checks = [
                ("revisions", m.revisions.to_string(), revisions.to_string()),
                ("events", m.events.to_string(), events.to_string()),
                (
                    "last revision",
                    m.last_revision.to_string(),
                    order.last().unwrap_or(0).to_string(),
                ),
                (
                    "plaintext size",
                    m.plaintext.size.to_string(),
                    size.to_string(),
                ),
                ("plaintext sha256", m.plaintext.sha256.clone(), sha),
                (
                    "stored size",
                    m.object_size.to_string(),
                    stored.stored_size.to_string(),
                ),
                (
                    "stored sha256",
                    m.object_sha256.clone(),
                    stored.stored_sha256,
                ),
            ];
            for (what, want, got) in checks {
                if want != got {
                    return Ok(Err(format!(
                        "its {what} is {got}, its manifest says {want}"
                    )));
                }
            }
            Ok(Ok(revisions))
        }),
    )
    .await?
}

impl Member {
    /// Restores `snap` (a verified snapshot file, removed once restored) into `dir/data` and
    /// starts a scratch etcd on it, ready to replay into.
    pub async fn start(
        stop: &Shutdown,
        tools: &Tools<'_>,
        snap: &Path,
        dir: &Path,
        name: &str,
    ) -> Result<Member> {
        let etcd = ScratchEtcd::restore(
            stop,
            tools.etcd,
            tools.etcdutl,
            snap,
            dir,
            name,
            &replay_flags(tools.etcd).await,
        )
        .await?;
        let head = stop
            .guard("the scratch etcd was stopped", async {
                let c = etcd.client().await?;
                crate::etcd::head_revision(&mut c.kv_client())
                    .await
                    .map_err(|e| etcd.error("reading its revision", e))
            })
            .await;
        let revision = match head {
            Ok(r) => r,
            Err(e) => {
                etcd.stop().await;
                return Err(e);
            }
        };
        Ok(Member {
            etcd,
            snapshot_revision: revision,
            reached: Reached {
                revision,
                time: None,
            },
        })
    }

    pub async fn client(&self) -> Result<etcd_client::Client> {
        self.etcd.client().await
    }

    pub async fn stop(self) {
        self.etcd.stop().await
    }

    /// Replays `view`'s segments of `base` into this member up to `target`: each segment is read
    /// whole into `dir` and checked before any of it is applied. A segment that does not check
    /// out breaks the chain there (exit 3). Returns the checks of the replay.
    pub async fn replay(
        &mut self,
        stop: &Shutdown,
        base: &Located,
        view: &mut ChainView,
        decryption: Arc<Decryption>,
        target: i64,
        dir: &Path,
    ) -> Result<Vec<Check>> {
        let from = base.manifest.etcd.revision;
        let mut client = self.client().await?;
        let mut leases = Leases::start(&mut client).await?;
        // the base's live keys: as its manifest recorded them (`--count-keys all`), else as the
        // restored member holds them at the base's revision
        let base_keys = match base.manifest.etcd.key_count {
            Some(n) => n,
            None => crate::etcd::count_all(&mut client.kv_client(), from)
                .await
                .map_err(|e| self.etcd.error("counting the base's keys", e))?
                .count(),
        };
        let mut key_delta = 0i64;
        let mut covered = Continuity::starting_at(from + 1);
        let mut i = 0;
        while i < view.segments.len() {
            let s = view.segments[i].clone();
            if s.manifest.first_revision > target {
                break;
            }
            i += 1;
            if s.manifest.last_revision <= from {
                continue;
            }
            let spool = dir.join("segment.jsonl");
            let fetched =
                spool_segment(base.store.as_ref(), &s, decryption.clone(), stop, &spool).await;
            let fetched = match fetched {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(view.break_at(i - 1, why).error(&base.entry.id)),
                Err(e) => Err(e),
            };
            let applied = match fetched {
                Ok(()) => {
                    self.apply_file(
                        stop,
                        &mut client,
                        &mut leases,
                        &spool,
                        from,
                        target,
                        &mut key_delta,
                        &mut covered,
                    )
                    .await
                }
                Err(e) => Err(e),
            };
            let _ = std::fs::remove_file(&spool);
            applied?;
        }
        leases.stop();
        let revision = crate::etcd::head_revision(&mut client.kv_client())
            .await
            .map_err(|e| self.etcd.error("reading its revision", e))?;
        self.reached.revision = revision;
        let mut checks = vec![Check::new("revision reached", target, revision)];
        // live keys at the target = at the base's revision + what the chain created and deleted
        if covered.last().is_some_and(|l| l >= target) {
            let at = crate::etcd::count_all(&mut client.kv_client(), target)
                .await
                .map_err(|e| self.etcd.error("counting keys", e))?;
            checks.push(Check::new(
                "keys at the revision reached",
                base_keys + key_delta,
                at.count(),
            ));
        }
        Ok(checks)
    }

    /// Applies the revisions of one checked segment file: those in (`from`, `target`] count
    /// towards the key arithmetic, those past the snapshot's head are written.
    #[allow(clippy::too_many_arguments)]
    async fn apply_file(
        &mut self,
        stop: &Shutdown,
        client: &mut etcd_client::Client,
        leases: &mut Leases,
        file: &Path,
        from: i64,
        target: i64,
        key_delta: &mut i64,
        covered: &mut Continuity,
    ) -> Result<()> {
        let f = std::fs::File::open(file).ctx(|| format!("opening {}", file.display()))?;
        let mut lines = Reader::new(std::io::BufReader::new(f), u64::MAX);
        loop {
            stop.check("nothing was restored")?;
            let Some(r) = lines
                .next_revision()
                .map_err(|why| Error::failed(format!("re-reading {}: {why}", file.display())))?
            else {
                return Ok(());
            };
            if r.revision <= from {
                continue;
            }
            if r.revision > target {
                return Ok(());
            }
            covered.next(r.revision).map_err(|why| {
                Error::VerifyFailed(format!(
                    "the chain does not cover the revisions it claims: {why}"
                ))
            })?;
            *key_delta += r.events.iter().map(Event::key_delta).sum::<i64>();
            if r.revision == target {
                self.reached.time = Some(r.time());
            }
            if r.revision <= self.snapshot_revision {
                continue;
            }
            self.apply(client, leases, &r).await?;
        }
    }

    /// One source revision as one transaction; its revision must come out the same.
    async fn apply(
        &mut self,
        client: &mut etcd_client::Client,
        leases: &mut Leases,
        r: &Revision,
    ) -> Result<()> {
        let mut ops = Vec::with_capacity(r.events.len());
        for ev in &r.events {
            ops.push(match ev {
                Event::Put {
                    key,
                    value,
                    lease,
                    lease_ttl,
                    ..
                } => {
                    let opts = if *lease != 0 {
                        leases.ensure(client, *lease, *lease_ttl).await?;
                        Some(PutOptions::new().with_lease(*lease))
                    } else {
                        None
                    };
                    TxnOp::put(key.clone(), value.clone(), opts)
                }
                Event::Delete { key } => TxnOp::delete(key.clone(), None),
            });
        }
        let resp = client.txn(Txn::new().and_then(ops)).await.map_err(|e| {
            self.etcd
                .error(&format!("replaying revision {}", r.revision), e)
        })?;
        let got = resp.header().map(|h| h.revision()).unwrap_or(0);
        if got != r.revision {
            return Err(Error::VerifyFailed(format!(
                "replaying revision {} gave the scratch member revision {got}: {}",
                r.revision,
                if got > r.revision {
                    "something else wrote to it (a lease it expired by itself?)"
                } else {
                    "the revision deleted keys that were not there (the chain does not fit its full backup)"
                }
            )));
        }
        Ok(())
    }
}

/// Reads segment `s` whole into `file` (0600, in the private work dir) and checks it.
async fn spool_segment(
    store: &dyn Store,
    s: &Segment,
    decryption: Arc<Decryption>,
    stop: &Shutdown,
    file: &Path,
) -> Result<std::result::Result<(), String>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .ctx(|| format!("creating {}", file.display()))?;
    let out = Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(out)));
    let w = out.clone();
    let path = file.display().to_string();
    let r = fetch(store, s, decryption, stop, move |r: &Revision| {
        let line = r.line()?;
        w.lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&line)
            .ctx(|| format!("writing {path}"))
    })
    .await?;
    out.lock()
        .unwrap_or_else(|p| p.into_inner())
        .flush()
        .ctx(|| format!("writing {}", file.display()))?;
    Ok(r.map(|_| ()))
}

/// Flags for a scratch etcd that is written to: no fsync where etcd has the flag (≥ 3.5; the
/// member is thrown away), room for the source's largest transactions and for its db.
async fn replay_flags(etcd: &Path) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--max-txn-ops=1000000",
        "--max-request-bytes=67108864",
        "--quota-backend-bytes=8589934592",
    ]
    .map(String::from)
    .to_vec();
    if tool_version(etcd, &["--version"]).await >= Some((3, 5, 0)) {
        flags.push("--unsafe-no-fsync".into());
    }
    flags
}

/// TTL given to a lease whose TTL the stream could not learn (it was gone at the source when
/// first seen; its keys are deleted later in the chain): the apiserver's default event TTL.
const UNKNOWN_LEASE_TTL: i64 = 3600;

/// The scratch member's leases, kept alive while a replay runs.
struct Leases {
    known: HashSet<i64>,
    tx: tokio::sync::mpsc::UnboundedSender<i64>,
    task: tokio::task::JoinHandle<()>,
}

impl Leases {
    /// Keeps every lease of the restored snapshot alive from now on.
    async fn start(client: &mut etcd_client::Client) -> Result<Leases> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
        let mut c = client.clone();
        let task = tokio::spawn(async move {
            let mut keepers = Vec::new();
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
            loop {
                tokio::select! {
                    id = rx.recv() => {
                        let Some(id) = id else { return };
                        match c.lease_keep_alive(id).await {
                            Ok(k) => keepers.push(k),
                            Err(e) => tracing::warn!(lease = id, error = %e, "cannot keep a lease of the scratch member alive"),
                        }
                    }
                    _ = tick.tick() => {
                        for (k, s) in keepers.iter_mut() {
                            if k.keep_alive().await.is_ok() {
                                let _ = s.message().await;
                            }
                        }
                    }
                }
            }
        });
        let mut leases = Leases {
            known: HashSet::new(),
            tx,
            task,
        };
        let listed = client
            .leases()
            .await
            .map_err(|e| Error::failed(format!("listing the scratch member's leases: {e}")))?;
        for l in listed.leases() {
            leases.keep(l.id());
        }
        Ok(leases)
    }

    fn keep(&mut self, id: i64) {
        if self.known.insert(id) {
            let _ = self.tx.send(id);
        }
    }

    /// Grants lease `id` (with the source's TTL) unless the member has it.
    async fn ensure(
        &mut self,
        client: &mut etcd_client::Client,
        id: i64,
        ttl: Option<i64>,
    ) -> Result<()> {
        if self.known.contains(&id) {
            return Ok(());
        }
        let ttl = ttl.filter(|t| *t > 0).unwrap_or(UNKNOWN_LEASE_TTL);
        if let Err(e) = client
            .lease_grant(ttl, Some(LeaseGrantOptions::new().with_id(id)))
            .await
        {
            if !e.to_string().contains("already exists") {
                return Err(Error::failed(format!(
                    "granting lease {id:x} in the scratch member: {e}"
                )));
            }
        }
        self.keep(id);
        Ok(())
    }

    fn stop(self) {
        self.task.abort();
    }
}
