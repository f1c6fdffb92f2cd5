//! `kirt evidence collect`: one pod's object, status, events, logs (current and previous, every
//! container), node, owner chain, Services/Endpoints, NetworkPolicies, ServiceAccount + RBAC,
//! referenced ConfigMap/Secret names and optional checkpoints, streamed as a tar through the
//! shared zstd(+age) pipeline into a store. Logs and checkpoints are spooled to a temp file only
//! because a tar header needs the size first; memory stays bounded. Read-only towards the cluster.
//! Any failure aborts the upload: no partial bundle is ever visible.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::gather;
use super::{
    bundle_name, object_name, sums_line, ClusterInfo, Collector, FileEntry, Manifest, Missing,
    Options, PodRef, FORMAT, MANIFEST, SUMS,
};
use crate::context::Ctx;
use crate::crypto;
use crate::error::Exit;
use crate::error::{Error, IoContext, Result};
use crate::k8s::{KubeContext, Op};
use crate::output::{Render, Table};
use crate::pipeline::{ChannelWriter, Compression, EncodeStats, Encoder, Encryption, DEPTH};
use crate::progress::Stage;
use crate::store::{self, S3Options, Store, Upload};
use crate::util::human_bytes;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EvidenceCollectSpec {
    /// The pod to collect (or -l SELECTOR for one bundle per matching pod)
    #[arg(value_name = "POD", required_unless_present = "selector")]
    pub pod: Option<String>,
    /// Namespace of the pod (on the command line: the global -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// Label selector: one bundle per matching pod
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "pod")]
    pub selector: Option<String>,
    /// Destination: a directory, file:///DIR or s3://BUCKET/PREFIX
    #[arg(long, value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Encrypt the bundle to this age (age1…) or SSH public key; repeatable
    #[arg(long = "encrypt-to", value_name = "RECIPIENT")]
    pub encrypt_to: Vec<String>,
    /// Also checkpoint every container through the kubelet checkpoint API (KEP-2008)
    #[arg(long)]
    pub checkpoint: bool,
    /// Only log lines newer than this (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION")]
    pub since: Option<String>,
    /// Only the last N lines of each log
    #[arg(long, value_name = "N")]
    pub tail_lines: Option<i64>,
    /// Record parts kirt is not allowed to read (events, node, RBAC …) as missing in the manifest
    /// instead of failing (for least-privilege collectors). The pod itself must be readable.
    #[arg(long)]
    pub best_effort: bool,
    /// Case / incident id recorded in the manifest
    #[arg(long, value_name = "ID")]
    pub case_id: Option<String>,
    /// Free-text note recorded in the manifest
    #[arg(long, value_name = "TEXT")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleResult {
    pub namespace: String,
    pub pod: String,
    pub bundle: String,
    /// Store location + object name.
    pub location: String,
    pub stored_size: u64,
    /// sha256 of the stored bytes (record it in the case notes: chain of custody).
    pub stored_sha256: String,
    pub files: usize,
    pub missing: Vec<Missing>,
    pub encrypted: bool,
    pub duration_seconds: f64,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PodFailure {
    pub pod: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CollectResult {
    pub bundles: Vec<BundleResult>,
    pub failed: Vec<PodFailure>,
}

impl Render for CollectResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["POD", "BUNDLE", "FILES", "MISSING", "STORED", "SHA256"]);
        for b in &self.bundles {
            t.row([
                format!("{}/{}", b.namespace, b.pod),
                b.location.clone(),
                b.files.to_string(),
                b.missing.len().to_string(),
                human_bytes(b.stored_size),
                b.stored_sha256.clone(),
            ]);
        }
        for b in &self.bundles {
            for m in &b.missing {
                t.note(format!(
                    "{}: not collected: {}: {}",
                    b.pod, m.item, m.reason
                ));
            }
            if b.dry_run {
                t.note(format!(
                    "{}: dry run: collected and encoded, nothing stored",
                    b.pod
                ));
            }
        }
        for f in &self.failed {
            t.note(format!("FAILED {}: {}", f.pod, f.error));
        }
        t
    }
    fn exit(&self) -> Exit {
        if self.failed.is_empty() {
            Exit::Ok
        } else {
            Exit::Partial
        }
    }
}

enum Target {
    Pod(String),
    Selector(String),
}

/// Checked options shared by every pod of one run.
struct Plan {
    encrypted: bool,
    since_seconds: Option<i64>,
    spec: EvidenceCollectSpec,
}

pub async fn run(ctx: &Ctx, spec: EvidenceCollectSpec) -> Result<CollectResult> {
    // Input errors first: nothing is read or written before these pass.
    if spec.to.is_empty() {
        return Err(Error::usage(
            "missing --to: where to store the bundle (a directory, file:///DIR or s3://BUCKET/PREFIX)",
        ));
    }
    let target = match (spec.pod.clone(), spec.selector.clone()) {
        (Some(pod), None) => Target::Pod(pod),
        (None, Some(selector)) => Target::Selector(selector),
        _ => return Err(Error::usage("give either a POD name or -l SELECTOR")),
    };
    if spec.tail_lines.is_some_and(|n| n < 0) {
        return Err(Error::usage("--tail-lines must be 0 or more"));
    }
    let since_seconds = match &spec.since {
        Some(s) => Some(
            crate::util::parse_duration(s)
                .map_err(Error::usage)?
                .as_secs()
                .max(1) as i64,
        ),
        None => None,
    };
    let recipients = spec
        .encrypt_to
        .iter()
        .map(|r| crypto::parse_recipient(r))
        .collect::<Result<Vec<_>>>()?;
    let encrypted = !recipients.is_empty();
    let store = store::open(&spec.to, &spec.s3).await?;

    let cluster = ctx.cluster().await?;
    let ns = match &spec.namespace {
        Some(ns) => ns.clone(),
        None => ctx.namespace().await?,
    };
    let pods_api: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns);
    let pods = match &target {
        Target::Pod(name) => vec![pods_api
            .get(name)
            .await
            .op(Op::new("get", "pods").ns(&ns).name(name))?],
        Target::Selector(sel) => {
            let list = pods_api
                .list(&ListParams::default().labels(sel))
                .await
                .op(Op::new("list", "pods").ns(&ns))?;
            if list.items.is_empty() {
                return Err(Error::not_found(
                    format!("pods matching {sel:?} in namespace {ns}"),
                    "check the selector and namespace (-n)",
                ));
            }
            list.items
        }
    };
    let plan = Plan {
        encrypted,
        since_seconds,
        spec,
    };
    let mut result = CollectResult {
        bundles: Vec::new(),
        failed: Vec::new(),
    };
    let mut first_error = None;
    let several = pods.len() > 1;
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match collect_one(ctx, &store, &plan, &ns, pod).await {
            Ok(b) => result.bundles.push(b),
            Err(e) if !several => return Err(e),
            Err(e) => {
                tracing::error!(pod = %name, error = %e, "evidence collection failed");
                result.failed.push(PodFailure {
                    pod: format!("{ns}/{name}"),
                    error: e.to_string(),
                });
                first_error.get_or_insert(e);
            }
        }
    }
    if result.bundles.is_empty() {
        if let Some(e) = first_error {
            return Err(e);
        }
    }
    Ok(result)
}

/// One file going into the tar: small JSON in memory, or a spooled log/checkpoint.
pub(super) enum Part {
    Data {
        path: String,
        data: Vec<u8>,
    },
    File {
        path: String,
        file: std::fs::File,
        size: u64,
    },
}

const STOPPED: &str = "the bundle writer stopped";

/// The collecting side of a bundle: records each file's digest and hands it to the tar thread.
struct BundleWriter {
    tx: mpsc::Sender<Part>,
    /// Bytes of logs/checkpoints streamed so far (a bar on a terminal, log lines otherwise).
    stage: Box<dyn Stage>,
    files: Vec<FileEntry>,
    missing: Vec<Missing>,
}

impl BundleWriter {
    async fn send(&self, part: Part) -> Result<()> {
        self.tx.send(part).await.map_err(|_| Error::failed(STOPPED))
    }

    async fn data(&mut self, path: &str, data: Vec<u8>, listed: bool) -> Result<FileEntry> {
        let entry = FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        };
        if listed {
            self.files.push(entry.clone());
        }
        self.send(Part::Data {
            path: path.to_string(),
            data,
        })
        .await?;
        Ok(entry)
    }

    async fn json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<()> {
        let mut data = serde_json::to_vec_pretty(value)
            .map_err(|e| Error::failed(format!("encoding {path}: {e}")))?;
        data.push(b'\n');
        self.data(path, data, true).await.map(|_| ())
    }

    async fn spooled(&mut self, path: &str, s: Spooled) -> Result<()> {
        self.files.push(FileEntry {
            path: path.to_string(),
            size: s.size,
            sha256: s.sha256,
        });
        self.send(Part::File {
            path: path.to_string(),
            file: s.file,
            size: s.size,
        })
        .await
    }

    /// With `--best-effort`, a part kirt may not read is recorded as missing instead of failing.
    fn optional<T>(&mut self, item: &str, r: Result<T>, best_effort: bool) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e @ Error::Forbidden { .. }) if best_effort => {
                self.missing(item, e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn missing(&mut self, item: &str, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(item, %reason, "not collected");
        self.missing.push(Missing {
            item: item.to_string(),
            reason,
        });
    }
}

/// A stream copied to an anonymous temp file (deleted when dropped), hashed on the way.
struct Spooled {
    file: std::fs::File,
    size: u64,
    sha256: String,
    first: Option<u8>,
}

async fn spool<R: futures::AsyncRead + Unpin>(
    mut r: R,
    what: &str,
    stage: &dyn Stage,
) -> Result<Spooled> {
    use futures::AsyncReadExt;
    let file = tempfile::tempfile().ctx(|| format!("creating a temporary file for {what}"))?;
    let mut out = tokio::fs::File::from_std(
        file.try_clone()
            .ctx(|| format!("creating a temporary file for {what}"))?,
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut first = None;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .map_err(|e| Error::failed(format!("{what}: the stream broke: {e}")))?;
        if n == 0 {
            break;
        }
        first.get_or_insert(buf[0]);
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .ctx(|| format!("spooling {what} to a temporary file"))?;
        size += n as u64;
        stage.inc(n as u64);
    }
    out.flush()
        .await
        .ctx(|| format!("spooling {what} to a temporary file"))?;
    drop(out);
    Ok(Spooled {
        file,
        size,
        sha256: hex::encode(hasher.finalize()),
        first,
    })
}

/// The blocking side: tar entries → zstd(+age) → channel to the uploader.
pub(super) fn write_tar(
    mut rx: mpsc::Receiver<Part>,
    out: ChannelWriter,
    compression: Compression,
    encryption: &Encryption,
    top: &str,
    mtime: u64,
) -> Result<EncodeStats> {
    let enc = Encoder::new(out, &compression, encryption)?;
    let mut tar = tar::Builder::new(enc);
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let io = |e| Error::io("writing the evidence bundle", e);
    while let Some(part) = rx.blocking_recv() {
        match part {
            Part::Data { path, data } => tar
                .append_data(
                    &mut header(data.len() as u64),
                    format!("{top}/{path}"),
                    &data[..],
                )
                .map_err(io)?,
            Part::File {
                path,
                mut file,
                size,
            } => {
                file.rewind().map_err(io)?;
                tar.append_data(&mut header(size), format!("{top}/{path}"), file.take(size))
                    .map_err(io)?
            }
        }
    }
    let enc = tar.into_inner().map_err(io)?;
    enc.finish()
        .map_err(|e| Error::io("finishing compression/encryption", e))
}

async fn collect_one(
    ctx: &Ctx,
    store: &Arc<dyn Store>,
    plan: &Plan,
    ns: &str,
    pod: Pod,
) -> Result<BundleResult> {
    let clock = Instant::now();
    let cluster = ctx.cluster().await?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    let (started, bundle, object) = fresh_name(store.as_ref(), ns, &name, plan.encrypted).await;
    tracing::info!(pod = %format!("{ns}/{name}"), bundle = %object, "collecting evidence");

    let upload: Option<Box<dyn Upload>> = if ctx.dry_run {
        None
    } else {
        Some(store.create(&object).await?)
    };
    let (part_tx, part_rx) = mpsc::channel::<Part>(2);
    let (stored_tx, mut stored_rx) = mpsc::channel::<Bytes>(DEPTH);
    // Single-threaded zstd: multi-threaded zstd buffers several 8 MiB jobs, and a bundle's cost is
    // dominated by streaming the logs anyway. Keeps a 100 MB log well under 64 MiB RSS.
    let compression = Compression::zstd(3, 1)?;
    // Recipients are not Clone: each bundle's writer gets its own (checked once in `run`).
    let encryption = if plan.encrypted {
        Encryption::Recipients(
            plan.spec
                .encrypt_to
                .iter()
                .map(|r| crypto::parse_recipient(r))
                .collect::<Result<Vec<_>>>()?,
        )
    } else {
        Encryption::None
    };
    let top = bundle.clone();
    let mtime = started.as_second().max(0) as u64;
    let writer = tokio::task::spawn_blocking(move || {
        write_tar(
            part_rx,
            ChannelWriter::new(stored_tx),
            compression,
            &encryption,
            &top,
            mtime,
        )
    });
    let uploader = tokio::spawn(async move {
        let mut upload = upload;
        while let Some(chunk) = stored_rx.recv().await {
            if let Some(up) = upload.as_mut() {
                if let Err(e) = up.write(chunk).await {
                    if let Some(up) = upload.take() {
                        up.abort().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(upload)
    });

    let mut w = BundleWriter {
        tx: part_tx,
        stage: ctx.progress.stage(&format!("evidence {ns}/{name}"), None),
        files: Vec::new(),
        missing: Vec::new(),
    };
    let gathered = tokio::select! {
        r = gather_all(&mut w, &cluster.client, ns, &pod, plan) => r,
        _ = crate::actions::backup::create::shutdown_signal() => {
            Err(Error::failed("interrupted; no bundle was published"))
        }
    };
    let finished = jiff::Timestamp::now();
    let manifest_result = match gathered {
        Ok(quarantined) => {
            let server_version = cluster
                .client
                .apiserver_version()
                .await
                .ok()
                .map(|v| v.git_version);
            let m = Manifest {
                format: FORMAT.into(),
                bundle: bundle.clone(),
                case_id: plan.spec.case_id.clone(),
                note: plan.spec.note.clone(),
                collector: Collector {
                    identity: cluster.configured_identity.clone(),
                    host: gethostname::gethostname().to_string_lossy().into_owned(),
                    kirt_version: crate::actions::version::long(),
                },
                cluster: ClusterInfo {
                    url: cluster.url.clone(),
                    server_version,
                },
                pod: PodRef {
                    namespace: ns.to_string(),
                    name: name.clone(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                    node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                    quarantined,
                },
                options: Options {
                    since: plan.spec.since.clone(),
                    tail_lines: plan.spec.tail_lines,
                    checkpoint: plan.spec.checkpoint,
                    encrypted: plan.encrypted,
                    best_effort: plan.spec.best_effort,
                },
                started_at: started,
                finished_at: finished,
                files: w.files.clone(),
                missing: w.missing.clone(),
            };
            finish_bundle(&mut w, &m).await
        }
        Err(e) => Err(e),
    };
    w.stage.finish();
    let files = w.files.len() + 2;
    let missing = w.missing.clone();
    drop(w); // closes the tar: the writer finishes and the uploader drains

    let encoded = writer
        .await
        .map_err(|e| Error::failed(format!("bundle writer task: {e}")))?;
    let uploaded = uploader
        .await
        .map_err(|e| Error::failed(format!("upload task: {e}")))?;
    // Commit only if every stage succeeded; report the root cause first.
    let (upload, enc) = match (manifest_result, encoded, uploaded) {
        (_, _, Err(e)) => return Err(e),
        (Err(e), Err(we), Ok(up)) => {
            abort(up).await;
            return Err(if e.to_string() == STOPPED { we } else { e });
        }
        (Err(e), Ok(_), Ok(up)) | (Ok(()), Err(e), Ok(up)) => {
            abort(up).await;
            return Err(e);
        }
        (Ok(()), Ok(enc), Ok(up)) => (up, enc),
    };
    if let Some(up) = upload {
        up.commit().await?;
    }
    let result = BundleResult {
        namespace: ns.to_string(),
        pod: name,
        bundle,
        location: format!("{}/{object}", store.url().trim_end_matches('/')),
        stored_size: enc.stored_size,
        stored_sha256: enc.stored_sha256,
        files,
        missing,
        encrypted: plan.encrypted,
        duration_seconds: clock.elapsed().as_secs_f64(),
        dry_run: ctx.dry_run,
    };
    tracing::info!(bundle = %result.location, bytes = result.stored_size, sha256 = %result.stored_sha256,
        seconds = format!("{:.2}", result.duration_seconds), "evidence bundle stored");
    Ok(result)
}

/// A bundle name not yet in the store: never overwrite an earlier bundle of the same pod taken
/// within the same second. Best effort: a write-only bucket (no ListBucket) is not an error.
async fn fresh_name(
    store: &dyn Store,
    ns: &str,
    pod: &str,
    encrypted: bool,
) -> (jiff::Timestamp, String, String) {
    let mut tries = 0;
    loop {
        let started = jiff::Timestamp::now();
        let bundle = bundle_name(ns, pod, started);
        let object = object_name(&bundle, encrypted);
        let taken = match store.list(&object).await {
            Ok(found) => found.iter().any(|o| o.key == object),
            Err(e) => {
                tracing::debug!(error = %e, "cannot list the store to check the bundle name");
                false
            }
        };
        tries += 1;
        if !taken || tries > 3 {
            return (started, bundle, object);
        }
        let wait = 1_000_000_000 - i64::from(started.subsec_nanosecond()).clamp(0, 999_999_999);
        tokio::time::sleep(std::time::Duration::from_nanos(wait as u64 + 1_000_000)).await;
    }
}

async fn abort(up: Option<Box<dyn Upload>>) {
    if let Some(up) = up {
        up.abort().await;
    }
}

/// manifest.json, then SHA256SUMS covering every file including the manifest.
async fn finish_bundle(w: &mut BundleWriter, m: &Manifest) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(m)
        .map_err(|e| Error::failed(format!("encoding {MANIFEST}: {e}")))?;
    data.push(b'\n');
    let entry = w.data(MANIFEST, data, false).await?;
    let sums: String = w
        .files
        .iter()
        .chain(std::iter::once(&entry))
        .map(sums_line)
        .collect();
    w.data(SUMS, sums.into_bytes(), false).await?;
    Ok(())
}

/// Everything but the manifest. Returns whether the pod was quarantined (original labels used).
async fn gather_all(
    w: &mut BundleWriter,
    client: &Client,
    ns: &str,
    pod: &Pod,
    plan: &Plan,
) -> Result<bool> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let best_effort = plan.spec.best_effort;
    w.json("pod.json", pod).await?;
    w.json("status.json", &pod.status).await?;
    let events = gather::events(client, pod, ns).await;
    if let Some(v) = w.optional("events.json", events, best_effort)? {
        w.json("events.json", &v).await?;
    }

    logs(w, client, ns, pod, plan).await?;

    match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
        Some(node) => {
            let got = match Api::<Node>::all(client.clone()).get(&node).await {
                Ok(n) => Ok(Some(n)),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
                Err(e) => Err(Op::new("get", "nodes").name(&node).err(e)),
            };
            match w.optional("node.json", got, best_effort)? {
                Some(Some(n)) => w.json("node.json", &n).await?,
                Some(None) => w.missing("node.json", format!("node {node} no longer exists")),
                None => {}
            }
        }
        None => w.missing("node.json", "the pod is not scheduled to a node"),
    }

    let (labels, quarantined) = gather::effective_labels(pod);
    let mut missing = Vec::new();
    let owners = gather::owners(client, pod, ns, &labels, &mut missing).await;
    for owner in w
        .optional("owners/", owners, best_effort)?
        .unwrap_or_default()
    {
        w.json(&owner.file, &owner.object).await?;
    }
    for m in missing {
        w.missing(&m.item, m.reason);
    }
    let services = gather::services(client, ns, &labels).await;
    if let Some((services, endpoints)) = w.optional("services.json", services, best_effort)? {
        w.json("services.json", &services).await?;
        w.json("endpoints.json", &endpoints).await?;
    }
    let policies = gather::network_policies(client, ns).await;
    if let Some(v) = w.optional("networkpolicies.json", policies, best_effort)? {
        w.json("networkpolicies.json", &v).await?;
    }
    let sa = gather::service_account_name(pod);
    let account = gather::service_account(client, ns, &sa).await;
    match w.optional("serviceaccount.json", account, best_effort)? {
        Some(Some(obj)) => w.json("serviceaccount.json", &obj).await?,
        Some(None) => w.missing(
            "serviceaccount.json",
            format!("ServiceAccount {ns}/{sa} does not exist"),
        ),
        None => {}
    }
    let rbac = gather::rbac(client, ns, &sa).await;
    if let Some(v) = w.optional("rbac.json", rbac, best_effort)? {
        w.json("rbac.json", &v).await?;
    }
    w.json("references.json", &gather::references(pod)).await?;

    if plan.spec.checkpoint {
        checkpoints(w, client, ns, &name, pod).await?;
    }
    Ok(quarantined)
}

/// Every container of the pod with its kind, init containers first (they ran first).
fn containers(pod: &Pod) -> Vec<String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .chain(spec.containers.iter().map(|c| c.name.clone()))
        .chain(
            spec.ephemeral_containers
                .iter()
                .flatten()
                .map(|c| c.name.clone()),
        )
        .collect()
}

fn statuses(pod: &Pod) -> HashMap<String, ContainerStatus> {
    let Some(st) = pod.status.as_ref() else {
        return HashMap::new();
    };
    st.init_container_statuses
        .iter()
        .flatten()
        .chain(st.container_statuses.iter().flatten())
        .chain(st.ephemeral_container_statuses.iter().flatten())
        .map(|s| (s.name.clone(), s.clone()))
        .collect()
}

/// A previous instance exists when the container restarted or its last state says it ended.
fn has_previous(s: Option<&ContainerStatus>) -> bool {
    s.is_some_and(|s| {
        s.restart_count > 0
            || s.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
    })
}

async fn logs(
    w: &mut BundleWriter,
    client: &Client,
    ns: &str,
    pod: &Pod,
    plan: &Plan,
) -> Result<()> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let statuses = statuses(pod);
    for c in containers(pod) {
        let mut wanted = vec![(false, format!("logs/{c}.log"))];
        if has_previous(statuses.get(&c)) {
            wanted.push((true, format!("logs/{c}.previous.log")));
        }
        for (previous, path) in wanted {
            let lp = LogParams {
                container: Some(c.clone()),
                previous,
                since_seconds: plan.since_seconds,
                tail_lines: plan.spec.tail_lines,
                ..Default::default()
            };
            match api.log_stream(&name, &lp).await {
                Ok(stream) => {
                    let s = spool(
                        stream,
                        &format!("log of {ns}/{name} container {c}"),
                        &*w.stage,
                    )
                    .await?;
                    w.spooled(&path, s).await?;
                }
                // The API answered but has no such log (container waiting, no previous instance,
                // log rotated away): record why and go on.
                Err(kube::Error::Api(s)) if ![401, 403].contains(&s.code) => {
                    w.missing(&path, format!("the API answered {}: {}", s.code, s.message))
                }
                Err(e) => {
                    let e = Op::new("get", "pods/log").ns(ns).name(&name).err(e);
                    w.optional::<()>(&path, Err(e), plan.spec.best_effort)?;
                }
            }
        }
    }
    Ok(())
}

/// Checkpoints through the apiserver's node proxy (POST …/proxy/checkpoint/NS/POD/CONTAINER).
/// Unavailable is not a failure: the reason goes into the manifest.
async fn checkpoints(
    w: &mut BundleWriter,
    client: &Client,
    ns: &str,
    name: &str,
    pod: &Pod,
) -> Result<()> {
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let regular: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for c in regular {
        let path = format!("checkpoints/{c}.tar");
        let Some(node) = node.as_deref() else {
            w.missing(&path, "the pod is not scheduled to a node");
            continue;
        };
        let url = format!("/api/v1/nodes/{node}/proxy/checkpoint/{ns}/{name}/{c}");
        let req = http::Request::post(url)
            .body(Vec::new())
            .map_err(|e| Error::failed(format!("building the checkpoint request: {e}")))?;
        match client.request_stream(req).await {
            Ok(stream) => {
                let what = format!("checkpoint of {ns}/{name} container {c}");
                let s = spool(stream, &what, &*w.stage).await?;
                if s.first == Some(b'{') {
                    // A real kubelet writes the archive on the node and answers with its path.
                    let p = format!("checkpoints/{c}.json");
                    w.spooled(&p, s).await?;
                    w.missing(&path, format!("the kubelet wrote the archive on node {node} (see {p}); copy it from there"));
                } else {
                    w.spooled(&path, s).await?;
                }
            }
            Err(kube::Error::Api(s)) if s.code == 404 => w.missing(
                &path,
                format!(
                    "the kubelet on node {node} does not serve the checkpoint API (HTTP 404: {}); it needs the ContainerCheckpoint feature (KEP-2008) and a CRI runtime that supports it",
                    s.message
                ),
            ),
            Err(kube::Error::Api(s)) if s.code == 403 => w.missing(
                &path,
                Op::new("create", "nodes/proxy")
                    .name(node)
                    .err(kube::Error::Api(s))
                    .to_string(),
            ),
            Err(kube::Error::Api(s)) => w.missing(
                &path,
                format!("the checkpoint API answered {}: {}", s.code, s.message),
            ),
            Err(e) => return Err(Op::new("create", "nodes/proxy").name(node).err(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::verify::{compare, scan};
    use super::*;

    const BUNDLE: &str = "evidence-ns-pod-20261123T130405Z";

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    /// Files as collect records them, then the bytes actually put into the tar (maybe tampered).
    fn bundle(recorded: &[(&str, &[u8])], stored: &[(&str, &[u8])]) -> Vec<u8> {
        let files: Vec<FileEntry> = recorded.iter().map(|(p, d)| entry(p, d)).collect();
        let at: jiff::Timestamp = "2026-11-23T13:04:05Z".parse().unwrap();
        let m = Manifest {
            format: FORMAT.into(),
            bundle: BUNDLE.into(),
            case_id: None,
            note: None,
            collector: Collector {
                identity: "test".into(),
                host: "h".into(),
                kirt_version: "kirt test".into(),
            },
            cluster: ClusterInfo {
                url: "https://x".into(),
                server_version: None,
            },
            pod: PodRef {
                namespace: "ns".into(),
                name: "pod".into(),
                uid: "u".into(),
                node: None,
                quarantined: false,
            },
            options: Options::default(),
            started_at: at,
            finished_at: at,
            files: files.clone(),
            missing: vec![],
        };
        let manifest = serde_json::to_vec_pretty(&m).unwrap();
        let sums: String = files
            .iter()
            .chain(std::iter::once(&entry(MANIFEST, &manifest)))
            .map(sums_line)
            .collect();
        let mut parts: Vec<(String, Vec<u8>)> = stored
            .iter()
            .map(|(p, d)| (p.to_string(), d.to_vec()))
            .collect();
        parts.push((MANIFEST.into(), manifest));
        parts.push((SUMS.into(), sums.into_bytes()));

        let (part_tx, part_rx) = mpsc::channel(4);
        let (stored_tx, mut stored_rx) = mpsc::channel::<Bytes>(4);
        let writer = std::thread::spawn(move || {
            write_tar(
                part_rx,
                ChannelWriter::new(stored_tx),
                Compression::zstd(3, 1).unwrap(),
                &Encryption::None,
                BUNDLE,
                0,
            )
        });
        let sender = std::thread::spawn(move || {
            for (path, data) in parts {
                part_tx.blocking_send(Part::Data { path, data }).unwrap();
            }
        });
        let mut out = Vec::new();
        while let Some(chunk) = stored_rx.blocking_recv() {
            out.extend_from_slice(&chunk);
        }
        sender.join().unwrap();
        writer.join().unwrap().unwrap();
        out
    }

    fn problems(bytes: &[u8]) -> Vec<String> {
        let plain = zstd::decode_all(bytes).unwrap();
        let r = compare(BUNDLE, &scan(&plain[..]).unwrap());
        assert_eq!(r.ok, r.problems.is_empty());
        r.problems
    }

    #[test]
    fn round_trip_verifies_and_tampering_is_named() {
        let files: [(&str, &[u8]); 2] = [("pod.json", b"{}\n"), ("logs/app.log", b"line 1\n")];
        assert_eq!(problems(&bundle(&files, &files)), Vec::<String>::new());

        let changed = problems(&bundle(
            &files,
            &[("pod.json", b"{}\n"), ("logs/app.log", b"line X\n")],
        ));
        assert!(
            changed
                .iter()
                .any(|p| p.starts_with("changed: logs/app.log")),
            "{changed:?}"
        );
        let missing = problems(&bundle(&files, &files[..1]));
        assert!(
            missing
                .iter()
                .any(|p| p.starts_with("missing: logs/app.log")),
            "{missing:?}"
        );
        let mut more = files.to_vec();
        more.push(("evil.sh", b"rm -rf /"));
        let extra = problems(&bundle(&files, &more));
        assert!(
            extra.iter().any(|p| p.starts_with("extra: evil.sh")),
            "{extra:?}"
        );
    }
}
