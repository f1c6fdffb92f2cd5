//! `kirt backup stream`: continuous backups for point-in-time recovery. A full backup made
//! exactly as `backup create` makes it (the same function), then etcd's watch of every key from
//! the next revision, committed as segments (segment.rs, chain.rs) every `--segment-every` or
//! `--segment-max`: the object first, then its manifest — the commit marker, linked by sha256 to
//! the previous one. A new full backup (a new chain) every `--full-every`, and at once when the
//! chain cannot go on (etcd compacted the revisions the watch still needed, or a hole in the
//! revisions): never a silent gap. SIGTERM commits what was received and exits 0; a restart
//! continues the newest chain from its last committed segment (no gap, no duplicate).
//!
//! Received revisions wait in memory until committed. A failed commit (store down) is retried
//! at the next tick with everything received since; past [`BUFFER_SEGMENTS`] × `--segment-max`
//! the stream fails (exit 1) rather than grow — the restart continues where the store has it.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{WatchOptions, WatchResponse};
use serde::{Deserialize, Serialize};

use super::chain::{self, Link, Plaintext, SegmentManifest, Source};
use super::create::{self, BackupCreateSpec, Plan, Publication};
use super::manifest::CompressionInfo;
use super::segment::{Revision, Tally};
use crate::context::Ctx;
use crate::error::{to_json, Error, Result};
use crate::etcd::MemberStatus;
use crate::output::{Render, Table};
use crate::pipeline::{self, Job};
use crate::signal::Shutdown;
use crate::store::{self, Store};

/// Uncommitted data kept while the store fails, in multiples of `--segment-max`.
const BUFFER_SEGMENTS: u64 = 4;
/// Largest watch response accepted (etcd's own limit for a request is 1.5 MiB by default).
const MAX_WATCH_MESSAGE: usize = 256 << 20;
/// Reconnections in a row (one per second) before a lost watch fails the stream.
const RECONNECTS: u32 = 10;

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
#[schemars(extend("required" = ["to"]))]
pub struct BackupStreamSpec {
    /// The full backups' options, as for `kirt backup create` (`--metrics-file` gets the
    /// stream's metrics)
    #[command(flatten)]
    #[serde(flatten)]
    pub full: BackupCreateSpec,
    /// A new full backup, starting a new chain, after this long (e.g. 24h)
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::duration_serde")]
    #[schemars(with = "String")]
    pub full_every: Duration,
    /// Commit a segment this often when there were writes (the recovery point objective)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::duration_serde")]
    #[schemars(with = "String")]
    pub segment_every: Duration,
    /// Commit a segment early once its plaintext reaches this size
    #[arg(long, value_name = "BYTES", default_value = "64MiB", value_parser = crate::units::parse_size)]
    #[serde(with = "crate::units::size_serde")]
    #[schemars(with = "String")]
    pub segment_max: u64,
}

impl Default for BackupStreamSpec {
    fn default() -> Self {
        BackupStreamSpec {
            full: BackupCreateSpec::default(),
            full_every: Duration::from_secs(24 * 3600),
            segment_every: Duration::from_secs(10),
            segment_max: 64 << 20,
        }
    }
}

/// What a stream did before it was stopped.
#[derive(Debug, Clone, Serialize)]
pub struct StreamResult {
    pub cluster: String,
    pub location: String,
    /// Full backups made by this run (each starts a chain).
    pub full_backups: u64,
    pub segments: u64,
    /// The chain the stream extended last and the revision it reaches.
    pub chain: String,
    pub last_revision: i64,
}

impl Render for StreamResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["CLUSTER", "CHAIN", "REACHES", "FULL BACKUPS", "SEGMENTS"]);
        t.row([
            self.cluster.clone(),
            self.chain.clone(),
            format!("r{}", self.last_revision),
            self.full_backups.to_string(),
            self.segments.to_string(),
        ]);
        t.note(format!(
            "\nstream to {} stopped; every segment received was committed",
            self.location
        ));
        t
    }
}

pub async fn run(ctx: &Ctx, spec: BackupStreamSpec) -> Result<StreamResult> {
    if ctx.dry_run {
        return Err(Error::usage(
            "backup stream has no --dry-run (try kirt backup create --dry-run)",
        ));
    }
    if spec.full.retention.object_lock.is_some() {
        return Err(Error::usage(
            "backup stream does not write under --object-lock yet (segments would need a retention each); use backup create for locked backups",
        ));
    }
    if spec.segment_every.is_zero()
        || spec.segment_max < 4096
        || spec.full_every < spec.segment_every
    {
        return Err(Error::usage(
            "--segment-every must be more than 0, --segment-max at least 4KiB, --full-every at least --segment-every",
        ));
    }
    let plan = Plan::check(&spec.full, jiff::Timestamp::now())?;
    let store = store::open(&spec.full.to, &spec.full.s3).await?;
    store.check().await?;
    let (client, status) = spec.full.etcd.connect_healthy().await?;
    let cluster = spec
        .full
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("etcd-{}", status.cluster_id));
    let mut s = Stream {
        ctx,
        spec: &spec,
        plan,
        store: store.as_ref(),
        cluster,
        client,
        status,
        metrics: Metrics::default(),
    };
    let mut chain = s.resume().await?;
    loop {
        let c = match chain.take() {
            Some(c) => c,
            None => s.full().await?,
        };
        match s.follow(c).await? {
            Next::Full(c, why) => {
                tracing::warn!(chain = %c.base, revision = c.committed, "starting a new chain: {why}");
            }
            Next::Stopped(c) => {
                return Ok(StreamResult {
                    cluster: s.cluster.clone(),
                    location: s.store.url(),
                    full_backups: s.metrics.full_backups,
                    segments: s.metrics.segments,
                    chain: c.base,
                    last_revision: c.committed,
                })
            }
        }
    }
}

/// The chain being extended.
#[derive(Debug, Clone)]
struct Chain {
    base: String,
    /// When its full backup was made (the next one is due `--full-every` later).
    base_time: jiff::Timestamp,
    prev: Link,
    /// Sequence number of the next segment.
    sequence: u64,
    /// The last revision committed to the chain.
    committed: i64,
    segments: u64,
}

enum Next {
    /// Start a new chain (the reason is logged).
    Full(Chain, String),
    Stopped(Chain),
}

struct Stream<'a> {
    ctx: &'a Ctx,
    spec: &'a BackupStreamSpec,
    plan: Plan,
    store: &'a dyn Store,
    cluster: String,
    client: etcd_client::Client,
    status: MemberStatus,
    metrics: Metrics,
}

/// Revisions received and not yet committed.
#[derive(Default)]
struct Pending {
    lines: Vec<Bytes>,
    tally: Tally,
}

impl Pending {
    fn add(&mut self, r: &Revision) -> Result<()> {
        let line = self.tally.add(r)?;
        self.lines.push(Bytes::from(line));
        Ok(())
    }
}

impl Stream<'_> {
    /// The newest usable chain of this cluster, to continue from its last committed segment;
    /// None (a new full backup) when there is none, it is another etcd cluster's, or it is
    /// broken (a restore could not cross the break, so the stream must not extend it).
    async fn resume(&self) -> Result<Option<Chain>> {
        let trusted = self.plan.trusted.as_ref();
        let Some(entry) = super::list::newest_usable(self.store, &self.cluster, trusted).await?
        else {
            return Ok(None);
        };
        let Some(m) = entry.manifest.clone() else {
            return Ok(None);
        };
        if m.etcd.cluster_id != self.status.cluster_id {
            return Ok(None);
        }
        let view = chain::assemble(self.store, &entry, trusted, None).await?;
        if let Some(b) = &view.broken {
            tracing::warn!(
                "not continuing the chain of {}: {} (a new full backup starts a new chain)",
                entry.id,
                b.error(&entry.id)
            );
            return Ok(None);
        }
        let prev = match view.segments.last() {
            Some(s) => Link {
                id: s.manifest.id.clone(),
                manifest_sha256: s.manifest_sha256.clone(),
            },
            None => Link {
                id: entry.id.clone(),
                manifest_sha256: chain::sha256(&entry.manifest_bytes),
            },
        };
        tracing::info!(chain = %entry.id, segments = view.segments.len(), revision = view.end(), "continuing the chain");
        Ok(Some(Chain {
            base: entry.id.clone(),
            base_time: m.started_at,
            prev,
            sequence: view.segments.len() as u64 + 1,
            committed: view.end(),
            segments: view.segments.len() as u64,
        }))
    }

    /// A full backup, exactly as `backup create` makes it: the first link of a new chain.
    async fn full(&mut self) -> Result<Chain> {
        let mut spec = self.spec.full.clone();
        spec.metrics_file = None;
        spec.cluster_name = Some(self.cluster.clone());
        let made = create::run(self.ctx, spec).await;
        let r = match made {
            Ok(r) => r,
            Err(e) => {
                self.metrics.failures += 1;
                self.metrics.write(self.spec, &self.cluster, None);
                return Err(e);
            }
        };
        self.metrics.full_backups += 1;
        let c = Chain {
            base: r.id.clone(),
            base_time: jiff::Timestamp::now(),
            prev: Link {
                id: r.id,
                manifest_sha256: r.manifest_sha256,
            },
            sequence: 1,
            committed: r.revision,
            segments: 0,
        };
        self.metrics.write(self.spec, &self.cluster, Some(&c));
        Ok(c)
    }

    /// Watches from the revision after the chain's end and commits segments until a new chain
    /// is due or a signal arrives (then what was received is committed).
    async fn follow(&mut self, mut c: Chain) -> Result<Next> {
        let mut watch = self.watch(c.committed + 1).await?;
        let mut pending = Pending::default();
        let mut expect = c.committed + 1;
        let mut leases = LeaseTtls::default();
        let every = self.spec.segment_every;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let due = c.base_time
            + jiff::SignedDuration::try_from(self.spec.full_every)
                .unwrap_or(jiff::SignedDuration::MAX);
        let due_in = Duration::try_from(jiff::Timestamp::now().duration_until(due))
            .unwrap_or(Duration::ZERO);
        let full_due = tokio::time::sleep(due_in);
        tokio::pin!(full_due);
        let mut reconnects = 0;
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.requested() => {
                    self.commit(&mut c, &mut pending).await?;
                    return Ok(Next::Stopped(c));
                }
                _ = &mut full_due => {
                    self.commit(&mut c, &mut pending).await?;
                    return Ok(Next::Full(c, format!("--full-every {} has passed", crate::units::human_duration(self.spec.full_every))));
                }
                _ = tick.tick() => {
                    self.try_commit(&mut c, &mut pending).await?;
                }
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => { reconnects = 0; r }
                        Ok(None) | Err(_) if reconnects < RECONNECTS => {
                            reconnects += 1;
                            self.metrics.failures += 1;
                            tracing::warn!(endpoint = %self.status.endpoint, "the watch broke: reconnecting from revision {expect}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            if let Ok((client, status)) = self.spec.full.etcd.connect_healthy().await {
                                if status.cluster_id == self.status.cluster_id {
                                    self.client = client;
                                    self.status = status;
                                }
                            }
                            match self.watch(expect).await {
                                Ok(w) => watch = w,
                                Err(e) => tracing::warn!(error = %e, "watch not re-established"),
                            }
                            continue;
                        }
                        Ok(None) => return Err(Error::failed(format!("etcd {} ended the watch", self.status.endpoint))),
                        Err(e) => return Err(self.etcd_err("watch", e)),
                    };
                    if resp.compact_revision() > 0 || resp.canceled() {
                        self.commit(&mut c, &mut pending).await?;
                        self.metrics.compactions += 1;
                        let why = if resp.compact_revision() > 0 {
                            format!("etcd compacted its history to revision {} before the watch read revision {expect}", resp.compact_revision())
                        } else {
                            format!("etcd cancelled the watch ({})", resp.cancel_reason())
                        };
                        return Ok(Next::Full(c, why));
                    }
                    for r in self.revisions(&resp, &mut leases).await? {
                        if r.revision != expect {
                            // a hole (or a repeat): the chain cannot cover it
                            self.commit(&mut c, &mut pending).await?;
                            return Ok(Next::Full(c, format!("the watch sent revision {} where {expect} was due", r.revision)));
                        }
                        pending.add(&r)?;
                        expect += 1;
                    }
                    tracing::debug!("received through revision {}", expect - 1);
                    if pending.tally.size() >= self.spec.segment_max {
                        self.try_commit(&mut c, &mut pending).await?;
                    }
                }
            }
        }
    }

    async fn watch(&mut self, from: i64) -> Result<etcd_client::WatchStream> {
        let opts = WatchOptions::new()
            .with_all_keys()
            .with_start_revision(from);
        let mut w = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_WATCH_MESSAGE);
        w.watch("", Some(opts))
            .await
            .map_err(|e| self.etcd_err("starting the watch", e))
    }

    fn etcd_err(&self, what: &str, e: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoint: self.status.endpoint.clone(),
            context: what.into(),
            source: e,
        }
    }

    /// A watch response's events grouped by revision (etcd never splits a revision across
    /// responses unless asked to fragment), leases' TTLs looked up once.
    async fn revisions(
        &mut self,
        resp: &WatchResponse,
        leases: &mut LeaseTtls,
    ) -> Result<Vec<Revision>> {
        let now = jiff::Timestamp::now().as_millisecond();
        let events = resp.events();
        for ev in events {
            if let Some(kv) = ev.kv() {
                if kv.lease() != 0 {
                    leases.learn(&mut self.client, kv.lease()).await;
                }
            }
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < events.len() {
            let rev = events[start].kv().map(|kv| kv.mod_revision()).unwrap_or(0);
            let end = start
                + events[start..]
                    .iter()
                    .take_while(|e| e.kv().map(|kv| kv.mod_revision()) == Some(rev))
                    .count()
                    .max(1);
            out.push(Revision::from_watch(rev, now, &events[start..end], |id| {
                leases.get(id)
            })?);
            start = end;
        }
        Ok(out)
    }

    /// Commits at a tick or at the size limit; a failure keeps the revisions for the next try,
    /// until the buffer is full.
    async fn try_commit(&mut self, c: &mut Chain, pending: &mut Pending) -> Result<()> {
        match self.commit(c, pending).await {
            Ok(()) => Ok(()),
            Err(e) if pending.tally.size() < BUFFER_SEGMENTS * self.spec.segment_max => {
                tracing::error!(error = %e, buffered = pending.tally.size(), "committing a segment failed; retrying at the next tick");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes what is pending as the chain's next segment: object, signature, manifest. A signal
    /// does not cut a commit short (SIGTERM means "commit and exit"; main's grace period bounds
    /// it): [`Stream::follow`] sees it once this commit is done and commits the rest.
    async fn commit(&mut self, c: &mut Chain, pending: &mut Pending) -> Result<()> {
        if pending.tally.is_empty() {
            self.metrics.write(self.spec, &self.cluster, Some(c));
            return Ok(());
        }
        let r = self.publish(c, pending, &Shutdown::manual()).await;
        match r {
            Ok(m) => {
                c.prev = Link {
                    id: m.id.clone(),
                    manifest_sha256: m.manifest_sha256,
                };
                c.sequence += 1;
                c.committed = m.last_revision;
                c.segments += 1;
                self.metrics.segments += 1;
                self.metrics.last = Some(Committed {
                    at: jiff::Timestamp::now(),
                    events: m.events,
                    stored_bytes: m.stored_bytes,
                });
                *pending = Pending::default();
                tracing::info!(segment = %m.id, events = m.events, stored_bytes = m.stored_bytes, "segment committed");
                self.metrics.write(self.spec, &self.cluster, Some(c));
                Ok(())
            }
            Err(e) => {
                self.metrics.failures += 1;
                self.metrics.write(self.spec, &self.cluster, Some(c));
                Err(e)
            }
        }
    }

    async fn publish(&self, c: &Chain, pending: &Pending, stop: &Shutdown) -> Result<CommitInfo> {
        let w = pending.tally.clone().finish();
        let first_time = jiff::Timestamp::from_millisecond(w.first_time_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let id = chain::segment_id(first_time, w.first_revision, w.last_revision);
        let encrypted = self.plan.enc_info.is_some();
        let object_key = chain::object_key(&self.cluster, &c.base, &id, encrypted);
        let job = Job {
            compression: self.plan.compression.clone(),
            encryption: self.plan.encryption.clone(),
            upload: Some(self.store.create(&object_key).await?),
            depth: 64,
        };
        let lines = pending.lines.clone();
        let outcome = pipeline::run(job, stop, pipeline::copy_chunks, |feed| async move {
            for l in lines {
                feed.send(l).await?;
            }
            Ok(())
        })
        .await;
        let encoded = outcome.into_result(stop)?;
        let m = SegmentManifest {
            format: chain::FORMAT.into(),
            id: id.clone(),
            cluster_name: self.cluster.clone(),
            chain: c.base.clone(),
            sequence: c.sequence,
            prev: c.prev.clone(),
            object: object_key.clone(),
            object_size: encoded.stats.stored_size,
            object_sha256: encoded.stats.stored_sha256.clone(),
            plaintext: Plaintext {
                size: w.size,
                sha256: w.sha256.clone(),
            },
            first_revision: w.first_revision,
            last_revision: w.last_revision,
            revisions: w.revisions,
            events: w.events,
            first_time,
            last_time: jiff::Timestamp::from_millisecond(w.last_time_ms).unwrap_or(first_time),
            etcd: Source {
                endpoint: self.status.endpoint.clone(),
                cluster_id: self.status.cluster_id.clone(),
                member_id: self.status.member_id.clone(),
            },
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: self.spec.full.compression_level,
            },
            encryption: self.plan.enc_info.clone(),
            kirt_version: crate::actions::version::long(),
            finished_at: jiff::Timestamp::now(),
        };
        let json = to_json("the segment manifest", &m)?;
        let signature = self
            .plan
            .signer
            .as_ref()
            .map(|sk| super::signing::sign(sk, &json, &chain::signature_comment(&id)))
            .transpose()?;
        let p = Publication {
            object_key,
            manifest_key: chain::manifest_key(&self.cluster, &c.base, &id),
            manifest: json,
            signature,
        };
        create::publish(stop, self.store, encoded.upload, &p, None).await?;
        Ok(CommitInfo {
            manifest_sha256: chain::sha256(&p.manifest),
            id,
            last_revision: w.last_revision,
            events: w.events,
            stored_bytes: encoded.stats.stored_size,
        })
    }
}

struct CommitInfo {
    id: String,
    manifest_sha256: String,
    last_revision: i64,
    events: u64,
    stored_bytes: u64,
}

/// Granted TTLs of the leases keys are attached to (a replay grants them alike).
#[derive(Default)]
struct LeaseTtls(HashMap<i64, Option<i64>>);

impl LeaseTtls {
    async fn learn(&mut self, client: &mut etcd_client::Client, id: i64) {
        if self.0.contains_key(&id) {
            return;
        }
        if self.0.len() > 100_000 {
            self.0.clear(); // bounded: leases churn (Events), a miss costs one request
        }
        // a lease already gone has no TTL to tell (its keys' deletes follow in the stream)
        let ttl = client
            .lease_time_to_live(id, None)
            .await
            .ok()
            .map(|r| r.granted_ttl())
            .filter(|t| *t > 0);
        self.0.insert(id, ttl);
    }

    fn get(&self, id: i64) -> Option<i64> {
        self.0.get(&id).copied().flatten()
    }
}

struct Committed {
    at: jiff::Timestamp,
    events: u64,
    stored_bytes: u64,
}

/// What the metrics textfile reports (this process's counters).
#[derive(Default)]
struct Metrics {
    full_backups: u64,
    segments: u64,
    failures: u64,
    compactions: u64,
    last: Option<Committed>,
}

impl Metrics {
    /// Rewrites `--metrics-file` (at every tick, so the age of the last segment stays current);
    /// a write failure is logged, never fatal.
    fn write(&self, spec: &BackupStreamSpec, cluster: &str, c: Option<&Chain>) {
        let Some(path) = &spec.full.metrics_file else {
            return;
        };
        let text = self.render(cluster, c, jiff::Timestamp::now());
        if let Err(e) = super::metrics::write_text(path, &text) {
            tracing::error!(error = %e, "could not write the metrics file");
        }
    }

    fn render(&self, cluster: &str, c: Option<&Chain>, now: jiff::Timestamp) -> String {
        use std::fmt::Write as _;
        let label = super::metrics::cluster_label(cluster);
        let secs = |t: jiff::Timestamp| t.as_millisecond() as f64 / 1000.0;
        // the recovery point: the last commit, or the chain's full backup before any segment
        let last_commit = self.last.as_ref().map(|l| l.at).or(c.map(|c| c.base_time));
        let mut s = String::new();
        let mut metric = |name: &str, help: &str, kind: &str, value: f64| {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {value}"
            );
        };
        if let Some(t) = last_commit {
            metric(
                "kirt_stream_last_commit_timestamp_seconds",
                "Time of the last committed segment (or full backup).",
                "gauge",
                secs(t),
            );
            metric("kirt_stream_seconds_since_last_commit", "Seconds since the last commit when this file was written: the current recovery point.", "gauge", (secs(now) - secs(t)).max(0.0));
        }
        if let Some(l) = &self.last {
            metric(
                "kirt_stream_segment_events",
                "Events in the last committed segment.",
                "gauge",
                l.events as f64,
            );
            metric(
                "kirt_stream_segment_bytes",
                "Stored bytes of the last committed segment.",
                "gauge",
                l.stored_bytes as f64,
            );
        }
        if let Some(c) = c {
            metric(
                "kirt_stream_chain_segments",
                "Segments in the chain being extended.",
                "gauge",
                c.segments as f64,
            );
            metric(
                "kirt_stream_last_revision",
                "The last etcd revision committed.",
                "gauge",
                c.committed as f64,
            );
        }
        metric(
            "kirt_stream_segments_total",
            "Segments committed by this process.",
            "counter",
            self.segments as f64,
        );
        metric(
            "kirt_stream_full_backups_total",
            "Full backups (new chains) made by this process.",
            "counter",
            self.full_backups as f64,
        );
        metric(
            "kirt_stream_compactions_total",
            "New chains forced because etcd compacted revisions the watch still needed.",
            "counter",
            self.compactions as f64,
        );
        metric(
            "kirt_stream_failures_total",
            "Failed commits, full backups and broken watches of this process.",
            "counter",
            self.failures as f64,
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_state_the_recovery_point() {
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let c = Chain {
            base: "20261101T000000Z-r10".into(),
            base_time: t("2026-11-01T00:00:00Z"),
            prev: Link {
                id: String::new(),
                manifest_sha256: String::new(),
            },
            sequence: 4,
            committed: 99,
            segments: 3,
        };
        let mut m = Metrics::default();
        let text = m.render("prod", Some(&c), t("2026-11-01T00:00:30Z"));
        assert!(
            text.contains("kirt_stream_seconds_since_last_commit{cluster=\"prod\"} 30\n"),
            "{text}"
        );
        m.last = Some(Committed {
            at: t("2026-11-01T00:00:28Z"),
            events: 7,
            stored_bytes: 512,
        });
        m.failures = 2;
        let text = m.render("prod", Some(&c), t("2026-11-01T00:00:30Z"));
        assert!(
            text.contains("kirt_stream_seconds_since_last_commit{cluster=\"prod\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("kirt_stream_segment_events{cluster=\"prod\"} 7\n"));
        assert!(text.contains("kirt_stream_chain_segments{cluster=\"prod\"} 3\n"));
        assert!(text.contains("kirt_stream_last_revision{cluster=\"prod\"} 99\n"));
        assert!(text.contains("kirt_stream_failures_total{cluster=\"prod\"} 2\n"));
    }
}
