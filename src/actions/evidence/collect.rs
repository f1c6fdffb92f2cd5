//! `kirt evidence collect`: one pod's object, status, events, logs (current and previous, every
//! container), node, owner chain, Services/Endpoints, NetworkPolicies, ServiceAccount + RBAC,
//! referenced ConfigMap/Secret names and optional checkpoints, streamed as a tar through the
//! shared zstd(+age) pipeline into a store. Logs and checkpoints are spooled to a temp file only
//! because a tar header needs the size first; memory stays bounded. Read-only towards the cluster
//! (except the optional `--record-event`). Any failure aborts the upload: no partial bundle is
//! ever visible.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::Client;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::bundle::{finish_bundle, spool, write_tar, BundleWriter, Part, STOPPED};
use super::gather;
use super::{
    bundle_name, object_name, ClusterInfo, Collector, Manifest, Missing, Options, PodRef, FORMAT,
};
use crate::context::Ctx;
use crate::crypto;
use crate::error::{Error, Exit, Result};
use crate::k8s::{KubeContext, Op};
use crate::output::{Render, Table};
use crate::pipeline::{ChannelWriter, Compression, Encryption, DEPTH};
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
    /// After storing the bundle, emit one Event on the pod (reason EvidenceCollected, with the
    /// bundle name and its sha256) — the only write kirt makes while collecting
    #[arg(long)]
    pub record_event: bool,
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
    /// Name of the Event recorded on the pod (`--record-event`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
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
            if let Some(e) = &b.event {
                t.note(format!("{}: recorded Event {e}", b.pod));
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
    match collect(ctx, spec).await {
        // Name the apiserver that could not be reached (the API layer does not know its URL).
        Err(Error::Unreachable {
            what,
            endpoint,
            reason,
            hint,
        }) if endpoint.is_empty() => Err(Error::Unreachable {
            what,
            endpoint: match ctx.cluster().await {
                Ok(c) => c.url.trim_end_matches('/').to_string(),
                Err(_) => "(unknown)".into(),
            },
            reason,
            hint,
        }),
        other => other,
    }
}

async fn collect(ctx: &Ctx, spec: EvidenceCollectSpec) -> Result<CollectResult> {
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
    let all_namespaces = ctx.kube.all_namespaces && spec.namespace.is_none();
    let pods = match &target {
        Target::Pod(_) if all_namespaces => {
            return Err(Error::usage(
                "-A works with -l SELECTOR; for one pod give its namespace with -n",
            ))
        }
        Target::Pod(name) => vec![Api::<Pod>::namespaced(cluster.client.clone(), &ns)
            .get(name)
            .await
            .op(Op::new("get", "pods").ns(&ns).name(name))?],
        Target::Selector(sel) => {
            let (api, op, scope) = if all_namespaces {
                (
                    Api::<Pod>::all(cluster.client.clone()),
                    Op::new("list", "pods"),
                    "any namespace".to_string(),
                )
            } else {
                (
                    Api::<Pod>::namespaced(cluster.client.clone(), &ns),
                    Op::new("list", "pods").ns(&ns),
                    format!("namespace {ns}"),
                )
            };
            let list = api.list(&ListParams::default().labels(sel)).await.op(op)?;
            if list.items.is_empty() {
                return Err(Error::not_found(
                    format!("pods matching {sel:?} in {scope}"),
                    "check the selector and namespace (-n, -A)",
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
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| ns.clone());
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
    let (stored_tx, stored_rx) = mpsc::channel::<Bytes>(DEPTH);
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
    let uploader = store::spawn_uploader(upload, stored_rx);

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
    let mut result = BundleResult {
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
        event: None,
    };
    tracing::info!(bundle = %result.location, bytes = result.stored_size, sha256 = %result.stored_sha256,
        seconds = format!("{:.2}", result.duration_seconds), "evidence bundle stored");
    if plan.spec.record_event {
        // The bundle is already stored: failing to annotate the cluster is a warning, not a failure.
        match record_event(ctx, &cluster.client, &pod, &result, plan).await {
            Ok(name) => result.event = Some(name),
            Err(e) => tracing::warn!(error = %e, "the bundle is stored but no Event was recorded"),
        }
    }
    Ok(result)
}

/// One Event on the pod saying that evidence was taken, where it went and its digest.
async fn record_event(
    ctx: &Ctx,
    client: &Client,
    pod: &Pod,
    b: &BundleResult,
    plan: &Plan,
) -> Result<String> {
    use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let stamp = b
        .bundle
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = format!("{}.kirt-evidence-{stamp}", b.pod);
    let case = plan
        .spec
        .case_id
        .as_deref()
        .map(|c| format!(" for case {c}"))
        .unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(b.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: pod.metadata.name.clone(),
            namespace: Some(b.namespace.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some("EvidenceCollected".into()),
        message: Some(format!(
            "kirt collected evidence{case}: {} (sha256 {})",
            b.location, b.stored_sha256
        )),
        type_: Some("Normal".into()),
        source: Some(EventSource {
            component: Some(crate::k8s::FIELD_MANAGER.into()),
            host: None,
        }),
        reporting_component: Some(crate::k8s::FIELD_MANAGER.into()),
        reporting_instance: Some(gethostname::gethostname().to_string_lossy().into_owned()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    };
    Api::<Event>::namespaced(client.clone(), &b.namespace)
        .create(&crate::k8s::post_params(ctx.dry_run), &event)
        .await
        .op(Op::new("create", "events").ns(&b.namespace))?;
    Ok(name)
}

/// A bundle name not yet in the store: never overwrite an earlier bundle of the same pod taken
/// within the same second. Best effort: a write-only bucket (no GetObject) is not an error.
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
        // A direct lookup (not a listing: a local store would walk its whole directory tree).
        let taken = match store.get(&object).await {
            Ok(_) => true,
            Err(Error::NotFound { .. }) => false,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look up the bundle name in the store");
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
