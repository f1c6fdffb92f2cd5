//! `kirt drill`: a disaster-recovery rehearsal with a number at the end. verify → restore into a
//! scratch etcd → a scratch kube-apiserver on it → count objects per resource → compare → report
//! RPO (age of the backup) and RTO (restore-to-serving). Two comparisons, both exact on a busy
//! cluster: the restored keys per resource at the backup's revision against the counts recorded
//! then, and what the apiserver serves against the restored keys at the snapshot's head (the
//! snapshot may hold a few writes newer than the recorded revision).
//! Everything runs on free loopback ports and is stopped and removed afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};

use crate::actions::backup::scratch::{etcdutl_restore, terminate, Ports, ScratchEtcd};
use crate::actions::backup::verify::{locate, stream_and_check, Check, DecryptOptions};
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::output::{Render, Table};
use crate::store::S3Options;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct DrillSpec {
    /// Store: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Options,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(default_value = "latest", value_name = "ID")]
    pub backup: String,
    /// Only look at this cluster
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// kube-apiserver binary for the scratch control plane (default: kube-apiserver on PATH)
    #[arg(long, value_name = "PATH", default_value = "kube-apiserver")]
    pub apiserver_bin: PathBuf,
    /// etcd binary (default: etcd on PATH)
    #[arg(long, value_name = "PATH", default_value = "etcd")]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = "etcdutl")]
    pub etcdutl_bin: PathBuf,
    /// Service CIDR given to the scratch apiserver (use the source cluster's)
    #[arg(long, value_name = "CIDR", default_value = "10.0.0.0/16")]
    pub service_cluster_ip_range: String,
    /// Also write the report here (.md for Markdown, .html for HTML)
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResourceCount {
    pub resource: String,
    /// Recorded in the manifest, at the backup's revision.
    pub at_backup: i64,
    /// Keys in the restored etcd at that revision.
    pub restored: i64,
    /// Keys in the restored etcd at the snapshot's head.
    pub in_snapshot: i64,
    /// Objects the scratch apiserver lists.
    pub served: i64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub backup: String,
    pub cluster: String,
    pub ok: bool,
    /// Age of the backup when the drill started (what would be lost).
    pub rpo_seconds: f64,
    /// From the start of the restore to the scratch apiserver serving.
    pub rto_seconds: f64,
    pub verify_seconds: f64,
    pub apiserver_version: String,
    pub checks: Vec<Check>,
    pub resources: Vec<ResourceCount>,
}

impl Render for DrillReport {
    fn table(&self) -> Table {
        let mut t = Table::new(["RESOURCE", "AT BACKUP", "RESTORED", "SERVED", "RESULT"]);
        for r in &self.resources {
            t.row([
                r.resource.clone(),
                r.at_backup.to_string(),
                r.restored.to_string(),
                r.served.to_string(),
                if r.ok { "ok" } else { "MISMATCH" }.into(),
            ]);
        }
        for r in self.resources.iter().filter(|r| !r.ok) {
            t.note(format!(
                "MISMATCH {}: {} at backup, {} restored at that revision; {} served, {} in the snapshot",
                r.resource, r.at_backup, r.restored, r.served, r.in_snapshot
            ));
        }
        for c in self.checks.iter().filter(|c| !c.ok) {
            t.note(format!(
                "FAILED {}: expected {}, got {}",
                c.check, c.expected, c.actual
            ));
        }
        t.note(format!(
            "\nbackup {}/{}: {}\nRPO {}  (age of the backup)\nRTO {}  (restore to apiserver serving, {})\nverify {:.1}s, {} checks",
            self.cluster,
            self.backup,
            if self.ok { "drill passed" } else { "DRILL FAILED" },
            human_secs(self.rpo_seconds),
            human_secs(self.rto_seconds),
            self.apiserver_version,
            self.verify_seconds,
            self.checks.len()
        ));
        t
    }

    fn exit(&self) -> Exit {
        if self.ok {
            Exit::Ok
        } else {
            Exit::VerifyFailed
        }
    }
}

fn human_secs(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.1}s")
    } else {
        humantime::format_duration(Duration::from_secs(s as u64)).to_string()
    }
}

pub async fn run(ctx: &Ctx, spec: DrillSpec) -> Result<DrillReport> {
    let started = jiff::Timestamp::now();
    let t = Instant::now();
    let loc = locate(
        &spec.from,
        &spec.s3,
        &spec.backup,
        spec.cluster_name.as_deref(),
    )
    .await?;
    let decryption = spec.decrypt.resolve(&loc.manifest)?;
    let tmp = tempfile::Builder::new()
        .prefix("kirt-drill-")
        .tempdir()
        .map_err(|e| Error::io("creating a temp dir", e))?;
    let snap = tmp.path().join("snapshot.db");
    let streamed = stream_and_check(ctx, &loc, decryption, Some(snap.clone())).await?;
    let verify_seconds = t.elapsed().as_secs_f64();
    let mut checks = streamed.checks;
    if !streamed.ok {
        return Err(Error::VerifyFailed(format!(
            "backup {} does not match its manifest; drill stopped before restoring",
            loc.entry.id
        )));
    }

    let restore_started = Instant::now();
    let data = tmp.path().join("data");
    let ports = Ports::free()?;
    etcdutl_restore(
        &spec.etcdutl_bin,
        &snap,
        &data,
        &ports.restore_args("kirt-drill"),
    )
    .await?;
    let _ = std::fs::remove_file(&snap);
    let etcd = ScratchEtcd::start(&spec.etcd_bin, "kirt-drill", &data, &ports, tmp.path()).await?;
    let result = async {
        let observed = etcd.observe(loc.manifest.etcd.revision).await?;
        checks.push(check(
            "keys at revision",
            loc.manifest.etcd.key_count,
            observed.key_count,
        ));
        checks.push(check(
            "HashKV at revision",
            loc.manifest.etcd.hash_kv,
            observed.hash_kv,
        ));
        let api = ScratchApiserver::start(&spec, &etcd.endpoint, tmp.path()).await?;
        let rto = restore_started.elapsed().as_secs_f64();
        let counted = count_objects(&api.client).await;
        let version = api
            .client
            .apiserver_version()
            .await
            .map(|v| v.git_version)
            .unwrap_or_default();
        api.stop().await;
        Ok::<_, Error>((rto, counted?, version, observed))
    }
    .await;
    etcd.stop().await;
    let (rto, served_counts, version, observed) = result?;

    let mut resources = Vec::new();
    for (name, served) in served_counts {
        let (Some(&at_backup), Some(&restored), Some(&in_snapshot)) = (
            loc.manifest.etcd.prefix_counts.get(&name),
            observed.prefix_counts_at.get(&name),
            observed.prefix_counts_head.get(&name),
        ) else {
            continue;
        };
        resources.push(ResourceCount {
            ok: at_backup == restored && served == in_snapshot,
            resource: name,
            at_backup,
            restored,
            in_snapshot,
            served,
        });
    }
    let ok = checks.iter().all(|c| c.ok) && resources.iter().all(|r| r.ok);
    let rpo = started
        .duration_since(loc.manifest.finished_at)
        .as_secs_f64()
        .max(0.0);
    let report = DrillReport {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        ok,
        rpo_seconds: rpo,
        rto_seconds: rto,
        verify_seconds,
        apiserver_version: version,
        checks,
        resources,
    };
    if let Some(path) = &spec.report {
        write_report(path, &report)?;
    }
    Ok(report)
}

fn check(name: &str, expected: impl ToString, actual: impl ToString) -> Check {
    let (expected, actual) = (expected.to_string(), actual.to_string());
    Check {
        check: name.into(),
        ok: expected == actual,
        expected,
        actual,
    }
}

/// Object counts per resource, read as metadata only (Secret values are never fetched).
async fn count_objects(client: &kube::Client) -> Result<BTreeMap<String, i64>> {
    async fn n<K>(client: &kube::Client) -> Result<i64>
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let api: Api<K> = Api::all(client.clone());
        let list = api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| crate::k8s::Op::new("list", &K::plural(&())).err(e))?;
        Ok(list.items.len() as i64)
    }
    let mut m = BTreeMap::new();
    m.insert("namespaces".to_string(), n::<Namespace>(client).await?);
    m.insert("deployments".to_string(), n::<Deployment>(client).await?);
    m.insert("pods".to_string(), n::<Pod>(client).await?);
    m.insert("secrets".to_string(), n::<Secret>(client).await?);
    m.insert("configmaps".to_string(), n::<ConfigMap>(client).await?);
    m.insert("services".to_string(), n::<Service>(client).await?);
    m.insert(
        "networkpolicies".to_string(),
        n::<NetworkPolicy>(client).await?,
    );
    m.insert(
        "customresourcedefinitions".to_string(),
        n::<CustomResourceDefinition>(client).await?,
    );
    Ok(m)
}

struct ScratchApiserver {
    child: tokio::process::Child,
    client: kube::Client,
}

impl ScratchApiserver {
    async fn start(spec: &DrillSpec, etcd: &str, dir: &Path) -> Result<Self> {
        let pki = dir.join("apiserver");
        std::fs::create_dir_all(&pki)
            .map_err(|e| Error::io("creating the scratch apiserver dir", e))?;
        let key = rcgen::KeyPair::generate()
            .map_err(|e| Error::failed(format!("generating a service-account key: {e}")))?;
        std::fs::write(pki.join("sa.key"), key.serialize_pem())
            .map_err(|e| Error::io("writing sa.key", e))?;
        std::fs::write(pki.join("sa.pub"), key.public_key_pem())
            .map_err(|e| Error::io("writing sa.pub", e))?;
        let token = hex::encode(rand_bytes());
        std::fs::write(
            pki.join("tokens.csv"),
            format!("{token},kirt-drill,kirt-drill,\"system:masters\"\n"),
        )
        .map_err(|e| Error::io("writing tokens.csv", e))?;
        let port = Ports::free()?.client;
        let version = tokio::process::Command::new(&spec.apiserver_bin)
            .arg("--version")
            .output()
            .await
            .map_err(|e| {
                Error::usage(format!(
                    "cannot run {}: {e} (pass --apiserver-bin PATH)",
                    spec.apiserver_bin.display()
                ))
            })?;
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        // --insecure-port exists (and must be 0) only before Kubernetes 1.24.
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(99);
        let log = std::fs::File::create(dir.join("apiserver.log"))
            .map_err(|e| Error::io("creating the apiserver log", e))?;
        let mut cmd = tokio::process::Command::new(&spec.apiserver_bin);
        cmd.arg(format!("--etcd-servers={etcd}"))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={port}"),
            ])
            .arg(format!("--cert-dir={}", pki.display()))
            .arg(format!(
                "--token-auth-file={}",
                pki.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-cluster-ip-range={}",
                spec.service_cluster_ip_range
            ))
            .args(["--allow-privileged=true", "--endpoint-reconciler-type=none"]);
        if minor < 24 {
            cmd.arg("--insecure-port=0");
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::usage(format!(
                    "cannot run {}: {e} (pass --apiserver-bin PATH)",
                    spec.apiserver_bin.display()
                ))
            })?;
        let mut config = kube::Config::new(
            format!("https://127.0.0.1:{port}")
                .parse()
                .map_err(|e| Error::failed(format!("{e}")))?,
        );
        config.accept_invalid_certs = true;
        config.auth_info.token = Some(token.into());
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::failed(format!("scratch apiserver client: {e}")))?;
        let mut api = ScratchApiserver { child, client };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(Some(st)) = api.child.try_wait() {
                return Err(Error::VerifyFailed(format!(
                    "the scratch kube-apiserver exited ({st}) on the restored data; log: {}",
                    dir.join("apiserver.log").display()
                )));
            }
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .map_err(|e| Error::failed(e.to_string()))?;
            if api
                .client
                .request_text(req)
                .await
                .map(|t| t.trim() == "ok")
                .unwrap_or(false)
            {
                return Ok(api);
            }
            if Instant::now() > deadline {
                api.stop().await;
                return Err(Error::VerifyFailed(
                    "the scratch kube-apiserver did not become ready within 90s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(mut self) {
        terminate(&mut self.child, Duration::from_secs(15)).await;
    }
}

fn rand_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b
}

fn write_report(path: &Path, r: &DrillReport) -> Result<()> {
    let mut md = format!(
        "# DR drill: {}/{}\n\n**Result:** {}\n\n| | |\n|---|---|\n| RPO (age of the backup) | {} |\n| RTO (restore to apiserver serving) | {} |\n| verify | {:.1}s |\n| scratch apiserver | {} |\n\n## Objects\n\nAt backup: recorded at the backup's revision; restored: keys in the restored etcd at that revision; served: objects the scratch apiserver lists (the snapshot's head, which may hold a few newer writes).\n\n| resource | at backup | restored | served | |\n|---|---:|---:|---:|---|\n",
        r.cluster,
        r.backup,
        if r.ok { "passed" } else { "FAILED" },
        human_secs(r.rpo_seconds),
        human_secs(r.rto_seconds),
        r.verify_seconds,
        r.apiserver_version
    );
    for c in &r.resources {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            c.resource,
            c.at_backup,
            c.restored,
            c.served,
            if c.ok { "ok" } else { "MISMATCH" }
        ));
    }
    md.push_str("\n## Checks\n\n| check | expected | actual | |\n|---|---|---|---|\n");
    for c in &r.checks {
        md.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            c.check,
            c.expected,
            c.actual,
            if c.ok { "ok" } else { "MISMATCH" }
        ));
    }
    let text = if path.extension().is_some_and(|e| e == "html" || e == "htm") {
        let body: String = md
            .lines()
            .map(|l| {
                format!(
                    "<pre>{}</pre>",
                    l.replace('&', "&amp;").replace('<', "&lt;")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "<!doctype html><meta charset=utf-8><title>kirt drill {}</title>\n{body}\n",
            r.backup
        )
    } else {
        md
    };
    std::fs::write(path, text)
        .map_err(|e| Error::io(format!("writing the report {}", path.display()), e))
}
