//! `kirt backup stream`: continuous backups for point-in-time recovery. A full backup made
//! exactly as `backup create` makes it (the same function), then etcd's watch of every key from
//! the next revision, committed as segments (segment.rs, chain.rs) every `--segment-every` or
//! `--segment-max`: the object first, then its manifest — the commit marker, linked by sha256 to
//! the previous one. A new full backup (a new chain) every `--full-every`, and at once when the
//! chain cannot go on (etcd compacted the revisions the watch still needed, or a hole in the
//! revisions): never a silent gap. SIGTERM commits what was received and exits 0; a restart
//! continues the newest chain from its last committed segment (no gap, no duplicate).
//!
//! Every segment is sealed (encrypted, signed) into a local spool first, then copied to the
//! store (spool.rs). While the store fails, sealed segments wait in the spool and the watch goes
//! on; they are committed in order once it answers, and a full spool (`--spool-max`) fails the
//! stream (exit 1). A restart commits what is spooled before it watches again. When the member
//! the watch reads from is lost, the watch continues on another `--etcd-endpoints` member from
//! the next revision due.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{WatchOptions, WatchResponse};
use serde::{Deserialize, Serialize};

use super::chain::{self, Link, Plaintext, SegmentManifest, Source};
use super::create::{self, BackupCreateSpec, Plan, Publication};
use super::manifest::CompressionInfo;
use super::segment::{Revision, Tally};
use super::spool::{self, Spool};
use crate::context::Ctx;
use crate::error::{to_json, Error, Result};
use crate::etcd::MemberStatus;
use crate::output::{Render, Table};
use crate::pipeline::{self, Job};
use crate::signal::Shutdown;
use crate::store::{self, Store};

/// Largest watch response accepted (etcd's own limit for a request is 1.5 MiB by default).
/// How long SIGTERM's last commit may take (main's grace period is 5 s).
const SHUTDOWN_COMMIT: Duration = Duration::from_secs(3);
/// While the store is failing, a drain first asks whether it answers, for at most this long: the
/// S3 client's own retries against a dead store take many seconds, and the stream's loop (which
/// seals segments) must not wait for them every tick.
const STORE_PROBE: Duration = Duration::from_secs(2);
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
    /// Seal segments in this directory before they go to the store; they wait there while the
    /// store fails (default: spool/CLUSTER under kirt's state dir)
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Fail (exit 1) rather than spool more than this while the store fails
    #[arg(long, value_name = "BYTES", default_value = "1GiB", value_parser = crate::units::parse_size)]
    #[serde(with = "crate::units::size_serde")]
    #[schemars(with = "String")]
    pub spool_max: u64,
    /// Serve the metrics on http://ADDR:PORT/metrics (loopback unless --metrics-allow-remote)
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// Allow --metrics-listen on an address other than loopback (the metrics name the cluster
    /// and its revisions; nothing secret, no authentication)
    #[arg(long)]
    pub metrics_allow_remote: bool,
}

impl Default for BackupStreamSpec {
    fn default() -> Self {
        BackupStreamSpec {
            full: BackupCreateSpec::default(),
            full_every: Duration::from_secs(24 * 3600),
            segment_every: Duration::from_secs(10),
            segment_max: 64 << 20,
            spool_dir: None,
            spool_max: 1 << 30,
            metrics_listen: None,
            metrics_allow_remote: false,
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
    let listener = match &spec.metrics_listen {
        Some(addr) => Some(
            crate::serve::metrics::bind("--metrics-listen", addr, spec.metrics_allow_remote)
                .await?,
        ),
        None => None,
    };
    let store = store::open(&spec.full.to, &spec.full.s3).await?;
    store.check().await?;
    let (client, status) = spec.full.etcd.connect_healthy().await?;
    let cluster = spec
        .full
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("etcd-{}", status.cluster_id));
    let spool_dir = match &spec.spool_dir {
        Some(d) => d.clone(),
        None => crate::context::state_dir()?.join("spool").join(&cluster),
    };
    let spool = Spool::open(&spool_dir, spec.spool_max).await?;
    let shared = Arc::new(Mutex::new(Metrics::default()));
    // served until run returns (the handle aborts the server when dropped)
    let _server = listener.map(|l| {
        let (shared, cluster) = (shared.clone(), cluster.clone());
        let render = Arc::new(move || {
            let m = shared.lock().map(|m| m.clone()).unwrap_or_default();
            m.render(&cluster, jiff::Timestamp::now())
        });
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(crate::serve::metrics::serve_text(
            l, render,
        )))
    });
    let mut s = Stream {
        ctx,
        spec: &spec,
        plan,
        store: store.as_ref(),
        cluster,
        client,
        status,
        metrics: Metrics::default(),
        shared,
        spool,
        queue: VecDeque::new(),
        store_error: None,
    };
    let mut chain = s.resume().await?;
    loop {
        let c = match chain.take() {
            Some(c) => c,
            None => s.full().await?,
        };
        match s.follow(c).await? {
            Next::Full(c, why) => {
                tracing::warn!(chain = %c.base, revision = c.end, "starting a new chain: {why}");
            }
            Next::Stopped(c) => {
                return Ok(StreamResult {
                    cluster: s.cluster.clone(),
                    location: s.store.url(),
                    full_backups: s.metrics.full_backups,
                    segments: s.metrics.segments,
                    chain: c.base,
                    last_revision: c.end,
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
    /// The chain's last revision (sealed: in the spool or in the store), and its segments.
    end: i64,
    segments: u64,
    /// The last revision of the chain in the store.
    stored: i64,
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
    /// What `/metrics` serves (a copy of `metrics`, updated with the textfile).
    shared: Arc<Mutex<Metrics>>,
    spool: Spool,
    /// Segments sealed into the spool and not yet in the store, in order: manifest key and
    /// the sha256 of the manifest as sealed (what is read back must be what was sealed).
    queue: VecDeque<(String, String)>,
    /// The store's last error while segments wait in the spool.
    store_error: Option<String>,
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
    /// The chain to continue: the store's (see [`Stream::stored_chain`]) extended by the
    /// segments found in the spool, which are committed first. A spooled segment that is not
    /// what was sealed (its object's digest) is removed with the rest of the spool, and the
    /// chain continues from the store's end: the watch reads those revisions again.
    async fn resume(&mut self) -> Result<Option<Chain>> {
        loop {
            let mut c = self.stored_chain().await?;
            self.adopt_spool(c.as_mut()).await?;
            if let Some(c) = c.as_mut() {
                match self.drain(c, true).await {
                    Err(Error::VerifyFailed(why)) => {
                        tracing::error!("{why}; continuing from the store's end of the chain");
                        continue;
                    }
                    r => r?,
                }
            }
            return Ok(c);
        }
    }

    /// Queues the spooled segments that continue `c` (advancing it) and removes the rest.
    async fn adopt_spool(&mut self, mut c: Option<&mut Chain>) -> Result<()> {
        let sealed = self.spool.sealed().await?;
        let signer = self.plan.signer.as_ref().and(self.plan.trusted.as_ref());
        let mut kept = Vec::new();
        for s in sealed {
            let file = self.spool.dir.join(&s.manifest_key);
            let m = &s.manifest;
            let verdict = match c.as_deref() {
                Some(c) if m.chain == c.base && m.sequence < c.sequence => {
                    // committed, then the process stopped before it removed it
                    tracing::info!(file = %file.display(), "spooled segment already in the store: removed");
                    self.spool.remove(&s).await;
                    continue;
                }
                Some(c) => {
                    let sig = self.spool.signature(&s).await?;
                    spool::continues(
                        &s,
                        &c.base,
                        &self.cluster,
                        &c.prev,
                        c.sequence,
                        c.end + 1,
                        sig.as_deref(),
                        signer,
                    )
                }
                None => Err("no chain of this cluster in the store to continue".into()),
            };
            let verdict = match (verdict, c.as_deref_mut()) {
                (Ok(()), Some(c)) => Ok(c),
                (Ok(()), None) => Err("no chain to continue".to_string()),
                (Err(why), _) => Err(why),
            };
            match verdict {
                Ok(c) => {
                    tracing::info!(file = %file.display(), first = m.first_revision, last = m.last_revision, "committing a spooled segment");
                    c.prev = Link {
                        id: m.id.clone(),
                        manifest_sha256: chain::sha256(&s.manifest_bytes),
                    };
                    c.sequence += 1;
                    c.end = m.last_revision;
                    c.segments += 1;
                    self.queue
                        .push_back((s.manifest_key.clone(), chain::sha256(&s.manifest_bytes)));
                    kept.push(s);
                }
                Err(why) => {
                    self.metrics.failures += 1;
                    tracing::error!(file = %file.display(), "removing a spooled segment: {why}; its revisions are read from etcd again");
                    self.spool.remove(&s).await;
                }
            }
        }
        self.spool.remove_leftovers(&kept).await
    }

    /// The newest usable chain of this cluster in the store, to continue from its last
    /// committed segment; None (a new full backup) when there is none, it is another etcd
    /// cluster's, or it is broken (a restore could not cross the break, so the stream must not
    /// extend it).
    async fn stored_chain(&self) -> Result<Option<Chain>> {
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
            end: view.end(),
            segments: view.segments.len() as u64,
            stored: view.end(),
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
                self.write_metrics(None);
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
            end: r.revision,
            segments: 0,
            stored: r.revision,
        };
        self.write_metrics(Some(&c));
        Ok(c)
    }

    /// Watches from the revision after the chain's end and commits segments until a new chain
    /// is due or a signal arrives (then what was received is committed).
    async fn follow(&mut self, mut c: Chain) -> Result<Next> {
        let mut expect = c.end + 1;
        tracing::info!(member = %self.status.member_id, endpoint = %self.status.endpoint, "watching etcd member {} at {} from revision {expect}", self.status.member_id, self.status.endpoint);
        let mut watch = self.watch(expect).await?;
        let mut pending = Pending::default();
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
                    self.seal(&mut c, &mut pending).await?;
                    // within the 5 s grace period: a store that does not answer (its client
                    // retrying a dead server) leaves the sealed segments in the spool, exit 1
                    match tokio::time::timeout(SHUTDOWN_COMMIT, self.drain(&mut c, true)).await {
                        Ok(r) => r?,
                        Err(_) => return Err(Error::failed(format!(
                            "the store {} did not answer within {} s of the signal; {} sealed segments (to revision {}) stay in the spool {} and the next `kirt backup stream` commits them first",
                            self.store.url(),
                            SHUTDOWN_COMMIT.as_secs(),
                            self.queue.len(),
                            c.end,
                            self.spool.dir.display()
                        ))),
                    }
                    return Ok(Next::Stopped(c));
                }
                _ = &mut full_due => {
                    self.seal(&mut c, &mut pending).await?;
                    self.drain(&mut c, false).await?;
                    if self.queue.is_empty() {
                        return Ok(Next::Full(c, format!("--full-every {} has passed", crate::units::human_duration(self.spec.full_every))));
                    }
                    // the full backup needs the store too: the next tick tries again
                    full_due.as_mut().reset(tokio::time::Instant::now() + every);
                }
                _ = tick.tick() => {
                    self.seal(&mut c, &mut pending).await?;
                    self.drain(&mut c, false).await?;
                }
                msg = watch.message() => {
                    let resp = match msg {
                        Ok(Some(r)) => { reconnects = 0; r }
                        lost => {
                            let why = match lost {
                                Err(e) => e.to_string(),
                                _ => "the member ended the watch".to_string(),
                            };
                            self.metrics.failures += 1;
                            if reconnects == RECONNECTS {
                                return Err(Error::failed(format!("the watch on etcd broke {RECONNECTS} times in a row (one reconnection a second to every --etcd-endpoints member), last on {}: {why}; everything up to revision {} was committed or spooled", self.status.endpoint, c.end)));
                            }
                            reconnects += 1;
                            if let Some(w) = self.reconnect(expect, &why).await {
                                watch = w;
                            }
                            continue;
                        }
                    };
                    if resp.compact_revision() > 0 || resp.canceled() {
                        self.seal(&mut c, &mut pending).await?;
                        self.drain(&mut c, false).await?;
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
                            self.seal(&mut c, &mut pending).await?;
                            self.drain(&mut c, false).await?;
                            return Ok(Next::Full(c, format!("the watch sent revision {} where {expect} was due", r.revision)));
                        }
                        pending.add(&r)?;
                        expect += 1;
                    }
                    tracing::debug!("received through revision {}", expect - 1);
                    if pending.tally.size() >= self.spec.segment_max {
                        self.seal(&mut c, &mut pending).await?;
                        self.drain(&mut c, false).await?;
                    }
                }
            }
        }
    }

    /// After the watch broke: a second's pause, then a connection to a healthy member of the
    /// same cluster, the one that failed tried last, and a new watch from `from` (the revision
    /// after the last one received: nothing lost, nothing twice). None: not re-established.
    async fn reconnect(&mut self, from: i64, why: &str) -> Option<etcd_client::WatchStream> {
        let lost = self.status.clone();
        tracing::warn!(member = %lost.member_id, endpoint = %lost.endpoint, "the watch on etcd member {} at {} broke: {why}; reconnecting from revision {from}", lost.member_id, lost.endpoint);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut etcd = self.spec.full.etcd.clone();
        etcd.etcd_endpoints.sort_by_key(|ep| *ep == lost.endpoint);
        match etcd.connect_healthy().await {
            Ok((client, status)) if status.cluster_id == lost.cluster_id => {
                if status.member_id != lost.member_id {
                    self.metrics.failovers += 1;
                    tracing::warn!(member = %status.member_id, endpoint = %status.endpoint, "failing over: continuing the watch on etcd member {} at {} from revision {from} (member {} at {} was lost: {why})", status.member_id, status.endpoint, lost.member_id, lost.endpoint);
                }
                self.client = client;
                self.status = status;
            }
            Ok((_, status)) => {
                tracing::error!(endpoint = %status.endpoint, "not used: it belongs to etcd cluster {}, the stream to {}", status.cluster_id, lost.cluster_id)
            }
            Err(e) => tracing::warn!(error = %e, "no etcd member answered"),
        }
        match self.watch(from).await {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "watch not re-established");
                None
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

    /// Seals what is pending as the chain's next segment into the spool (object, signature,
    /// manifest last) and queues it for the store. A full spool fails the stream (exit 1): it
    /// only fills while the store fails (segments wait in it), so an empty queue takes any segment. A signal does not cut a seal short (SIGTERM means
    /// "commit and exit"; main's grace period bounds it).
    async fn seal(&mut self, c: &mut Chain, pending: &mut Pending) -> Result<()> {
        if pending.tally.is_empty() {
            return Ok(());
        }
        let used = self.spool.size().await?;
        // nothing waiting: the store is not failing, and a segment larger than --spool-max (a
        // backlog read at once after a restart) goes through the spool to the store
        if !self.queue.is_empty() && used + pending.tally.size() > self.spool.max {
            self.metrics.failures += 1;
            self.metrics.spool_bytes = used;
            self.write_metrics(Some(c));
            return Err(Error::failed(format!(
                "the spool {} is full ({} of --spool-max {}, {} segments waiting) while the store {} fails: {}; revisions from {} on were received but not kept (a restart commits the spool, then reads them from etcd again)",
                self.spool.dir.display(),
                crate::units::human_bytes(used),
                crate::units::human_bytes(self.spool.max),
                self.queue.len(),
                self.store.url(),
                self.store_error.as_deref().unwrap_or("no error recorded"),
                c.end + 1,
            )));
        }
        let m = self.publish(c, pending).await?;
        c.prev = Link {
            id: m.id.clone(),
            manifest_sha256: m.manifest_sha256.clone(),
        };
        c.sequence += 1;
        c.end = m.last_revision;
        c.segments += 1;
        *pending = Pending::default();
        tracing::debug!(segment = %m.id, "segment sealed into the spool");
        self.queue.push_back((m.manifest_key, m.manifest_sha256));
        Ok(())
    }

    /// Copies the queued segments from the spool to the store, in order (each object checked
    /// against its manifest, the manifest last), and updates the metrics. When the store fails
    /// they stay queued: `Err` only with `must` (at exit: the message says what stays spooled)
    /// and when the spool no longer holds what was sealed (exit 3: the spool is emptied and a
    /// restart reads those revisions from etcd again).
    async fn drain(&mut self, c: &mut Chain, must: bool) -> Result<()> {
        if !must && !self.queue.is_empty() && self.store_error.is_some() {
            let answer = tokio::time::timeout(STORE_PROBE, self.store.check()).await;
            if !matches!(answer, Ok(Ok(_))) {
                if let Ok(Err(e)) = answer {
                    self.store_error = Some(e.to_string());
                }
                tracing::debug!(error = ?self.store_error, "the store still fails; the sealed segments wait in the spool");
                self.metrics.spool_bytes = self.spool.size().await.unwrap_or(0);
                self.write_metrics(Some(c));
                return Ok(());
            }
        }
        while let Some((key, sha)) = self.queue.front().cloned() {
            let sealed = match self.spool.read(&key).await {
                Ok(s) if chain::sha256(&s.manifest_bytes) == sha => Ok(s),
                Ok(_) => Err(Error::VerifyFailed(format!(
                    "the spooled manifest {} changed after it was sealed",
                    self.spool.dir.join(&key).display()
                ))),
                Err(Error::NotFound { .. }) => Err(Error::VerifyFailed(format!(
                    "the spooled manifest {} disappeared after it was sealed",
                    self.spool.dir.join(&key).display()
                ))),
                Err(e) => Err(e),
            };
            let r = match sealed {
                Ok(s) => self.spool.upload(self.store, &s).await.map(|()| s),
                Err(e) => Err(e),
            };
            match r {
                Ok(s) => {
                    let m = &s.manifest;
                    self.queue.pop_front();
                    self.store_error = None;
                    if m.chain == c.base {
                        c.stored = m.last_revision;
                    }
                    self.metrics.segments += 1;
                    self.metrics.last = Some(Committed {
                        at: jiff::Timestamp::now(),
                        events: m.events,
                        stored_bytes: m.object_size,
                    });
                    tracing::info!(segment = %m.id, events = m.events, stored_bytes = m.object_size, "segment committed");
                }
                Err(e @ Error::VerifyFailed(_)) => {
                    self.metrics.failures += 1;
                    for (key, _) in std::mem::take(&mut self.queue) {
                        if let Ok(s) = self.spool.read(&key).await {
                            self.spool.remove(&s).await;
                        }
                    }
                    let sealed = self.spool.sealed().await.unwrap_or_default();
                    let _ = self.spool.remove_leftovers(&sealed).await;
                    self.write_metrics(Some(c));
                    return Err(e);
                }
                Err(e) => {
                    self.metrics.failures += 1;
                    let waiting = self.queue.len();
                    tracing::error!(error = %e, waiting, "the store failed: the sealed segments wait in the spool {}", self.spool.dir.display());
                    self.store_error = Some(e.to_string());
                    self.metrics.spool_bytes = self.spool.size().await.unwrap_or(0);
                    self.write_metrics(Some(c));
                    if must {
                        return Err(Error::failed(format!(
                            "the store {} failed: {e}; {waiting} sealed segments (to revision {}) stay in the spool {} and the next `kirt backup stream` commits them first",
                            self.store.url(),
                            c.end,
                            self.spool.dir.display()
                        )));
                    }
                    return Ok(());
                }
            }
        }
        self.metrics.spool_bytes = self.spool.size().await?;
        self.write_metrics(Some(c));
        Ok(())
    }

    /// Rewrites `--metrics-file` and what `--metrics-listen` serves.
    fn write_metrics(&mut self, c: Option<&Chain>) {
        self.metrics.chain = c.map(|c| ChainStat {
            base_time: c.base_time,
            segments: c.segments,
            stored: c.stored,
        });
        if let Ok(mut m) = self.shared.lock() {
            *m = self.metrics.clone();
        }
        self.metrics.write(self.spec, &self.cluster);
    }

    /// Encodes what is pending and publishes it into the spool under the keys it gets in the
    /// store.
    async fn publish(&self, c: &Chain, pending: &Pending) -> Result<CommitInfo> {
        let stop = &Shutdown::manual();
        let spool = self.spool.store();
        let w = pending.tally.clone().finish();
        let first_time = jiff::Timestamp::from_millisecond(w.first_time_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let id = chain::segment_id(first_time, w.first_revision, w.last_revision);
        let encrypted = self.plan.enc_info.is_some();
        let object_key = chain::object_key(&self.cluster, &c.base, &id, encrypted);
        let job = Job {
            compression: self.plan.compression.clone(),
            encryption: self.plan.encryption.clone(),
            upload: Some(spool.create(&object_key).await?),
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
        create::publish(stop, spool, encoded.upload, &p, None).await?;
        Ok(CommitInfo {
            manifest_sha256: chain::sha256(&p.manifest),
            manifest_key: p.manifest_key,
            id,
            last_revision: w.last_revision,
        })
    }
}

struct CommitInfo {
    id: String,
    manifest_key: String,
    manifest_sha256: String,
    last_revision: i64,
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

#[derive(Clone)]
struct Committed {
    at: jiff::Timestamp,
    events: u64,
    stored_bytes: u64,
}

/// The chain being extended, as the metrics report it.
#[derive(Clone)]
struct ChainStat {
    base_time: jiff::Timestamp,
    segments: u64,
    stored: i64,
}

/// What the metrics report (this process's counters).
#[derive(Default, Clone)]
struct Metrics {
    full_backups: u64,
    segments: u64,
    failures: u64,
    compactions: u64,
    failovers: u64,
    spool_bytes: u64,
    last: Option<Committed>,
    chain: Option<ChainStat>,
}

impl Metrics {
    /// Rewrites `--metrics-file` (at every tick, so the age of the last segment stays current);
    /// a write failure is logged, never fatal.
    fn write(&self, spec: &BackupStreamSpec, cluster: &str) {
        let Some(path) = &spec.full.metrics_file else {
            return;
        };
        let text = self.render(cluster, jiff::Timestamp::now());
        if let Err(e) = super::metrics::write_text(path, &text) {
            tracing::error!(error = %e, "could not write the metrics file");
        }
    }

    fn render(&self, cluster: &str, now: jiff::Timestamp) -> String {
        let c = self.chain.as_ref();
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
                "The last etcd revision committed to the store.",
                "gauge",
                c.stored as f64,
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
            "Failed commits, full backups, broken watches and rejected spool files of this process.",
            "counter",
            self.failures as f64,
        );
        metric(
            "kirt_stream_failovers_total",
            "Times the watch moved to another etcd member after the one it read from was lost.",
            "counter",
            self.failovers as f64,
        );
        metric(
            "kirt_stream_spool_bytes",
            "Bytes of sealed segments waiting in the spool for the store.",
            "gauge",
            self.spool_bytes as f64,
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
        let mut m = Metrics {
            chain: Some(ChainStat {
                base_time: t("2026-11-01T00:00:00Z"),
                segments: 3,
                stored: 99,
            }),
            ..Metrics::default()
        };
        let text = m.render("prod", t("2026-11-01T00:00:30Z"));
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
        let text = m.render("prod", t("2026-11-01T00:00:30Z"));
        assert!(
            text.contains("kirt_stream_seconds_since_last_commit{cluster=\"prod\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("kirt_stream_segment_events{cluster=\"prod\"} 7\n"));
        assert!(text.contains("kirt_stream_chain_segments{cluster=\"prod\"} 3\n"));
        assert!(text.contains("kirt_stream_last_revision{cluster=\"prod\"} 99\n"));
        assert!(text.contains("kirt_stream_failures_total{cluster=\"prod\"} 2\n"));
        assert!(text.contains("kirt_stream_spool_bytes{cluster=\"prod\"} 0\n"));
    }
}
