//! `kirt evidence collect`: one pod's object, status, events, logs (current and previous, every
//! container), node, owner chain, Services/Endpoints, NetworkPolicies, ServiceAccount + RBAC,
//! referenced ConfigMap/Secret names and optional checkpoints, streamed as a tar through the
//! shared zstd(+age) pipeline into a store. Logs and checkpoints are spooled to a temp file only
//! because a tar header needs the size first; memory stays bounded. Read-only towards the cluster
//! (except the optional `--record-event`). Any failure aborts the upload: no partial bundle is
//! ever visible.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};
use kube::api::LogParams;
use kube::Resource;
use serde::{Deserialize, Serialize};

use super::audit::{self, AuditPlan, AuditResult, PodAudit};
use super::bundle::{finish_bundle, spool, write_tar, BundleWriter};
use super::gather;
use super::{
    bundle_name, object_name, ClusterInfo, Collector, Manifest, Missing, Options, PodRef, FORMAT,
};
use crate::actions::backup::signing;
use crate::context::Ctx;
use crate::crypto::EncryptOptions;
use crate::error::{Error, Exit, Result};
use crate::k8s::{name_of, node_of, status_code, Cluster, EventType, PodTarget, Recorder};
use crate::output::{Render, Table};
use crate::pipeline::{self, Compression, Encryption, Job};
use crate::store::{self, S3Options, Store};
use crate::units::human_bytes;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["to"]))]
pub struct EvidenceCollectSpec {
    /// The pod to collect (one bundle per pod with -l)
    #[command(flatten)]
    #[serde(flatten)]
    pub target: PodTarget,
    /// Destination: a directory, file:///DIR or s3://BUCKET/PREFIX
    #[arg(long, value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Bundles are plain unless recipients (or a passphrase) are given
    #[command(flatten)]
    pub encryption: EncryptOptions,
    /// Also checkpoint every container through the kubelet checkpoint API (KEP-2008)
    #[arg(long)]
    pub checkpoint: bool,
    /// Only log lines newer than this (e.g. 1h, 30m)
    #[arg(long, value_name = "DURATION", value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub since: Option<Duration>,
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
    /// Sign the bundle's sha256 with this minisign secret key (detached BUNDLE.minisig, checked by
    /// `evidence verify --trusted-key`; default: $KIRT_SIGN_KEY)
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<std::path::PathBuf>,
    /// The apiserver's audit log (--audit-log-path): a file, or a directory of rotated files,
    /// plain or gzipped; repeatable. The events of the pod's ServiceAccount, on the pod, its
    /// ServiceAccount and the Secrets/ConfigMaps it uses, and from its IP go into audit/
    #[arg(long = "audit-log", value_name = "PATH")]
    pub audit_log: Vec<std::path::PathBuf>,
    /// Only audit events since this time (RFC 3339) or this long ago (24h)
    #[arg(long, value_name = "DURATION|TIME")]
    pub audit_since: Option<String>,
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
    /// A detached signature BUNDLE.minisig was stored next to it.
    pub signed: bool,
    pub duration_seconds: f64,
    pub dry_run: bool,
    /// Name of the Event recorded on the pod (`--record-event`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// `--audit-log`: what the pod's identity did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditResult>,
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
            if let Some(a) = &b.audit {
                for n in audit::notes(&format!("{}/{}", b.namespace, b.pod), a) {
                    t.note(n);
                }
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

/// Checked options shared by every pod of one run.
struct Plan {
    encryption: Encryption,
    signer: Option<minisign::SecretKey>,
    store: Arc<dyn Store>,
    spec: EvidenceCollectSpec,
}

pub async fn run(ctx: &Ctx, spec: EvidenceCollectSpec) -> Result<CollectResult> {
    let begun = jiff::Timestamp::now();
    // Input errors first: nothing is read or written before these pass.
    if spec.to.is_empty() {
        return Err(Error::usage(
            "missing --to: where to store the bundle (a directory, file:///DIR or s3://BUCKET/PREFIX)",
        ));
    }
    spec.target.validate()?;
    if spec.tail_lines.is_some_and(|n| n < 0) {
        return Err(Error::usage("--tail-lines must be 0 or more"));
    }
    let (encryption, _) = spec.encryption.resolve(false)?;
    let signer = signing::sign_key_path(&spec.sign_key)
        .map(|p| signing::load_secret_key(&p))
        .transpose()?;
    let audit_plan = AuditPlan::check(&spec.audit_log, spec.audit_since.as_deref(), begun)?;
    let store = store::open(&spec.to, &spec.s3).await?;
    let pods = spec.target.resolve(ctx).await?;
    // Read before any bundle is started: one pass over the logs for every pod.
    let mut audits: Vec<Option<PodAudit>> = match audit_plan {
        Some(p) => audit::select(ctx, ctx.cluster().await?, p, &pods)
            .await?
            .into_iter()
            .map(Some)
            .collect(),
        None => pods.iter().map(|_| None).collect(),
    };
    let plan = Plan {
        encryption,
        signer,
        store,
        spec,
    };
    let mut result = CollectResult {
        bundles: Vec::new(),
        failed: Vec::new(),
    };
    let mut first_error = None;
    let several = pods.len() > 1;
    for (pod, audit) in pods.into_iter().zip(audits.drain(..)) {
        let (ns, name) = name_of(&pod);
        match collect_one(ctx, &plan, pod, audit).await {
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

/// One pod's bundle: gathered into the pipeline, committed only when everything succeeded.
async fn collect_one(
    ctx: &Ctx,
    plan: &Plan,
    pod: Pod,
    audit: Option<PodAudit>,
) -> Result<BundleResult> {
    let clock = Instant::now();
    let cluster = ctx.cluster().await?;
    let (ns, name) = name_of(&pod);
    let encrypted = !matches!(plan.encryption, Encryption::None);
    let (started, bundle, object) = fresh_name(plan.store.as_ref(), &ns, &name, encrypted).await;
    tracing::info!(pod = %format!("{ns}/{name}"), bundle = %object, "collecting evidence");

    let job = Job {
        // Single-threaded zstd: multi-threaded zstd buffers several 8 MiB jobs, and a bundle's
        // cost is dominated by streaming the logs anyway. Keeps a 100 MB log well under 64 MiB RSS.
        compression: Compression::zstd(3, 1)?,
        encryption: plan.encryption.clone(),
        upload: if ctx.dry_run {
            None
        } else {
            Some(plan.store.create(&object).await?)
        },
        depth: 2,
    };
    let top = bundle.clone();
    let mtime = started.as_second().max(0) as u64;
    let stage = ctx.progress.stage(&format!("evidence {ns}/{name}"), None);
    let outcome = pipeline::run(
        job,
        &ctx.shutdown,
        move |rx, enc| write_tar(rx, enc, &top, mtime),
        |feed| async {
            let mut w = BundleWriter {
                feed,
                stage: &*stage,
                files: Vec::new(),
                missing: Vec::new(),
            };
            let quarantined = gather_all(&mut w, cluster, &ns, &pod, &plan.spec).await?;
            let (record, audit) = match audit {
                Some(a) => a.write(&mut w).await.map(|(r, a)| (Some(r), Some(a)))?,
                None => (None, None),
            };
            let mut m = manifest(cluster, plan, &pod, &bundle, started, quarantined, &w).await;
            m.audit = record;
            finish_bundle(&mut w, &m).await?;
            Ok((w.files.len() + 2, w.missing, audit))
        },
    )
    .await;
    stage.finish();
    let encoded = outcome.into_result(&ctx.shutdown)?;
    let (files, missing, audit) = encoded.output;
    let signed = match (&plan.signer, ctx.dry_run) {
        (Some(sk), false) => {
            publish_signed(
                plan.store.as_ref(),
                &object,
                sk,
                &encoded.stats.stored_sha256,
                encoded.upload,
            )
            .await?;
            true
        }
        _ => {
            encoded.upload.commit().await?;
            false
        }
    };
    let mut result = BundleResult {
        namespace: ns.clone(),
        pod: name,
        bundle,
        location: format!("{}/{object}", plan.store.url().trim_end_matches('/')),
        stored_size: encoded.stats.stored_size,
        stored_sha256: encoded.stats.stored_sha256,
        files,
        missing,
        encrypted,
        signed,
        duration_seconds: clock.elapsed().as_secs_f64(),
        dry_run: ctx.dry_run,
        event: None,
        audit,
    };
    tracing::info!(bundle = %result.location, bytes = result.stored_size, sha256 = %result.stored_sha256,
        seconds = format!("{:.2}", result.duration_seconds), "evidence bundle stored");
    if plan.spec.record_event {
        // The bundle is already stored: failing to annotate the cluster is a warning, not a failure.
        match record_event(ctx, cluster, &pod, &result, plan).await {
            Ok(name) => result.event = Some(name),
            Err(e) => tracing::warn!(error = %e, "the bundle is stored but no Event was recorded"),
        }
    }
    Ok(result)
}

/// The signature of the bundle's sha256 first, then the bundle: a bundle never appears unsigned
/// when a key was given. If the bundle cannot be committed, its signature goes again.
async fn publish_signed(
    store: &dyn Store,
    object: &str,
    sk: &minisign::SecretKey,
    sha256: &str,
    upload: crate::pipeline::Pending,
) -> Result<()> {
    let sig_key = format!("{object}{}", signing::SUFFIX);
    let signed = async {
        let sig = signing::sign(
            sk,
            sha256.as_bytes(),
            &format!("kirt evidence bundle {object}"),
        )?;
        store.put(&sig_key, bytes::Bytes::from(sig)).await
    }
    .await;
    if let Err(e) = signed {
        upload.abort().await;
        return Err(e);
    }
    if let Err(e) = upload.commit().await {
        let _ = store.delete(&sig_key).await;
        return Err(e);
    }
    Ok(())
}

/// `manifest.json`: who collected what, when, from where, and what is missing.
async fn manifest(
    cluster: &Cluster,
    plan: &Plan,
    pod: &Pod,
    bundle: &str,
    started: jiff::Timestamp,
    quarantined: bool,
    w: &BundleWriter<'_>,
) -> Manifest {
    let (ns, name) = name_of(pod);
    let server_version = cluster
        .client
        .apiserver_version()
        .await
        .ok()
        .map(|v| v.git_version);
    Manifest {
        format: FORMAT.into(),
        bundle: bundle.to_string(),
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
            namespace: ns,
            name,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: node_of(pod).map(str::to_string),
            quarantined,
        },
        options: Options {
            since: plan.spec.since.map(crate::units::human_duration),
            tail_lines: plan.spec.tail_lines,
            checkpoint: plan.spec.checkpoint,
            encrypted: !matches!(plan.encryption, Encryption::None),
            best_effort: plan.spec.best_effort,
        },
        started_at: started,
        finished_at: jiff::Timestamp::now(),
        files: w.files.clone(),
        missing: w.missing.clone(),
        audit: None,
    }
}

/// One Event on the pod saying that evidence was taken, where it went and its digest.
async fn record_event(
    ctx: &Ctx,
    cluster: &Cluster,
    pod: &Pod,
    b: &BundleResult,
    plan: &Plan,
) -> Result<String> {
    let case = plan
        .spec
        .case_id
        .as_deref()
        .map(|c| format!(" for case {c}"))
        .unwrap_or_default();
    Recorder::new(cluster, ctx.dry_run)
        .publish(
            pod.object_ref(&()),
            EventType::Normal,
            "EvidenceCollected",
            &format!(
                "kirt collected evidence{case}: {} (sha256 {})",
                b.location, b.stored_sha256
            ),
        )
        .await
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

/// Everything but the manifest. Returns whether the pod was quarantined (original labels used).
async fn gather_all(
    w: &mut BundleWriter<'_>,
    cluster: &Cluster,
    ns: &str,
    pod: &Pod,
    spec: &EvidenceCollectSpec,
) -> Result<bool> {
    let best_effort = spec.best_effort;
    w.json("pod.json", pod).await?;
    w.json("status.json", &pod.status).await?;
    let events = gather::events(cluster, pod, ns).await;
    if let Some(v) = w.optional("events.json", events, best_effort)? {
        w.json("events.json", &v).await?;
    }

    logs(w, cluster, ns, pod, spec).await?;

    match node_of(pod) {
        Some(node) => {
            let got = cluster.all::<Node>().get_opt(node).await;
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
    let owners = gather::owners(cluster, pod, ns, &labels, &mut missing).await;
    for owner in w
        .optional("owners/", owners, best_effort)?
        .unwrap_or_default()
    {
        w.json(&owner.file, &owner.object).await?;
    }
    for m in missing {
        w.missing(&m.item, m.reason);
    }
    let services = gather::services(cluster, ns, &labels).await;
    if let Some((services, endpoints)) = w.optional("services.json", services, best_effort)? {
        w.json("services.json", &services).await?;
        w.json("endpoints.json", &endpoints).await?;
    }
    let policies = gather::network_policies(cluster, ns).await;
    if let Some(v) = w.optional("networkpolicies.json", policies, best_effort)? {
        w.json("networkpolicies.json", &v).await?;
    }
    let sa = gather::service_account_name(pod);
    let account = gather::service_account(cluster, ns, &sa).await;
    match w.optional("serviceaccount.json", account, best_effort)? {
        Some(Some(obj)) => w.json("serviceaccount.json", &obj).await?,
        Some(None) => w.missing(
            "serviceaccount.json",
            format!("ServiceAccount {ns}/{sa} does not exist"),
        ),
        None => {}
    }
    let rbac = gather::rbac(cluster, ns, &sa).await;
    if let Some(v) = w.optional("rbac.json", rbac, best_effort)? {
        w.json("rbac.json", &v).await?;
    }
    w.json("references.json", &gather::references(pod)).await?;

    if spec.checkpoint {
        checkpoints(w, cluster, ns, pod).await?;
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
    w: &mut BundleWriter<'_>,
    cluster: &Cluster,
    ns: &str,
    pod: &Pod,
    spec: &EvidenceCollectSpec,
) -> Result<()> {
    let (_, name) = name_of(pod);
    let pods = cluster.namespaced::<Pod>(ns);
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
                since_seconds: spec.since.map(|d| d.as_secs().max(1) as i64),
                tail_lines: spec.tail_lines,
                ..Default::default()
            };
            match pods.api().log_stream(&name, &lp).await {
                Ok(stream) => {
                    let s = spool(
                        stream,
                        &format!("log of {ns}/{name} container {c}"),
                        w.stage,
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
                    let e = pods.sub_op("get", "log", &name).err(e);
                    w.optional::<()>(&path, Err(e), spec.best_effort)?;
                }
            }
        }
    }
    Ok(())
}

/// Checkpoints through the apiserver's node proxy (POST …/proxy/checkpoint/NS/POD/CONTAINER).
/// Unavailable is not a failure: the reason goes into the manifest.
async fn checkpoints(
    w: &mut BundleWriter<'_>,
    cluster: &Cluster,
    ns: &str,
    pod: &Pod,
) -> Result<()> {
    let (_, name) = name_of(pod);
    let node = node_of(pod);
    let regular: Vec<String> = pod
        .spec
        .as_ref()
        .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    for c in regular {
        let path = format!("checkpoints/{c}.tar");
        let Some(node) = node else {
            w.missing(&path, "the pod is not scheduled to a node");
            continue;
        };
        let op = cluster.op("create", "nodes/proxy", "").name(node);
        let url = format!("/api/v1/nodes/{node}/proxy/checkpoint/{ns}/{name}/{c}");
        let req = http::Request::post(url)
            .body(Vec::new())
            .map_err(|e| Error::failed(format!("building the checkpoint request: {e}")))?;
        match cluster.client.request_stream(req).await {
            Ok(stream) => {
                let what = format!("checkpoint of {ns}/{name} container {c}");
                let s = spool(stream, &what, w.stage).await?;
                if s.first == Some(b'{') {
                    // A real kubelet writes the archive on the node and answers with its path.
                    let p = format!("checkpoints/{c}.json");
                    w.spooled(&p, s).await?;
                    w.missing(&path, format!("the kubelet wrote the archive on node {node} (see {p}); copy it from there"));
                } else {
                    w.spooled(&path, s).await?;
                }
            }
            Err(e) => match (status_code(&e), e) {
                (Some(404), kube::Error::Api(s)) => w.missing(
                    &path,
                    format!(
                        "the kubelet on node {node} does not serve the checkpoint API (HTTP 404: {}); it needs the ContainerCheckpoint feature (KEP-2008) and a CRI runtime that supports it",
                        s.message
                    ),
                ),
                (Some(403), e) => w.missing(&path, op.err(e).to_string()),
                (Some(code), kube::Error::Api(s)) => w.missing(
                    &path,
                    format!("the checkpoint API answered {code}: {}", s.message),
                ),
                (_, e) => return Err(op.err(e)),
            },
        }
    }
    Ok(())
}
