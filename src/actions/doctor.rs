//! `kirt doctor`: what an on-call engineer runs first. Every check is a row (ok/warn/fail + hint):
//! the apiserver and who kirt is there, each permission kirt's commands need, whether a
//! NetworkPolicy-enforcing CNI is recognisable, etcd members, the backup store (versioning,
//! Object Lock, which S3 permissions this identity has, whether the cluster's prefix holds
//! another etcd cluster's backups), local tools and keys.

use std::path::PathBuf;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::etcd::EtcdOptions;
use crate::k8s::Cluster;
use crate::output::{Render, Table};
use crate::store::S3Options;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct DoctorSpec {
    /// Skip the Kubernetes checks (hosts that only take etcd backups)
    #[arg(long)]
    pub no_kube: bool,
    #[command(flatten)]
    pub etcd: EtcdOptions,
    /// Check a backup/evidence store: s3://BUCKET/PREFIX, file:///DIR or a directory
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub s3: S3Options,
    /// Cluster name the backups of --etcd-endpoints go under in --store (default: etcd's
    /// cluster id), to check that no other etcd cluster's backups are there
    #[arg(long, value_name = "NAME")]
    pub cluster_name: Option<String>,
    /// age/SSH recipient that backups will be encrypted to (checked that it parses)
    #[arg(long = "recipient", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// age/SSH identity file that restores will use (checked that it loads)
    #[arg(long = "identity", value_name = "FILE")]
    pub identities: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub area: String,
    pub check: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
    /// Exit code class of a failure (first failure decides doctor's exit code).
    #[serde(skip)]
    pub exit: Exit,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub ok: bool,
    pub failed: usize,
    pub warnings: usize,
    pub checks: Vec<Check>,
}

impl Render for DoctorReport {
    fn table(&self) -> Table {
        let mut t = Table::new(["AREA", "CHECK", "STATUS", "DETAIL", "HINT"]);
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            t.row([
                c.area.as_str(),
                c.check.as_str(),
                status,
                c.detail.as_str(),
                c.hint.as_str(),
            ]);
        }
        t.note(format!(
            "\n{} checks: {} failed, {} warnings",
            self.checks.len(),
            self.failed,
            self.warnings
        ));
        t
    }

    fn exit(&self) -> Exit {
        self.checks
            .iter()
            .find(|c| c.status == Status::Fail)
            .map(|c| c.exit)
            .unwrap_or(Exit::Ok)
    }
}

struct Report(Vec<Check>);

impl Report {
    fn push(
        &mut self,
        area: &str,
        check: impl Into<String>,
        status: Status,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let exit = if status == Status::Fail {
            Exit::Failure
        } else {
            Exit::Ok
        };
        self.0.push(Check {
            area: area.into(),
            check: check.into(),
            status,
            detail: detail.into(),
            hint: hint.into(),
            exit,
        });
    }
    fn ok(&mut self, area: &str, check: impl Into<String>, detail: impl Into<String>) {
        self.push(area, check, Status::Ok, detail, "");
    }
    fn warn(
        &mut self,
        area: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(area, check, Status::Warn, detail, hint);
    }
    fn fail(&mut self, area: &str, check: impl Into<String>, err: &Error, hint: impl Into<String>) {
        self.push(area, check, Status::Fail, err.to_string(), hint);
        if let Some(last) = self.0.last_mut() {
            last.exit = err.exit();
        }
    }
}

/// A permission kirt uses: (verb, API group, resource, subresource, which command needs it, required).
struct Perm {
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    sub: &'static str,
    used_by: &'static str,
    required: bool,
}

const fn p(
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    sub: &'static str,
    used_by: &'static str,
    required: bool,
) -> Perm {
    Perm {
        verb,
        group,
        resource,
        sub,
        used_by,
        required,
    }
}

/// Every verb/resource kirt's Kubernetes commands use (keep in sync with deploy/ RBAC).
const PERMS: &[Perm] = &[
    p(
        "get",
        "",
        "namespaces",
        "",
        "all namespaced commands",
        false,
    ),
    p("get", "", "pods", "", "quarantine, evidence", true),
    p(
        "list",
        "",
        "pods",
        "",
        "quarantine -l, status, rollback wait",
        true,
    ),
    p("patch", "", "pods", "", "quarantine, release", true),
    p("get", "", "pods", "log", "evidence (logs)", true),
    p(
        "create",
        "",
        "events",
        "",
        "quarantine, rollback (audit events)",
        false,
    ),
    p("list", "", "events", "", "evidence", false),
    p(
        "get",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "quarantine",
        true,
    ),
    p(
        "list",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "quarantine verify/--exclusive, release, evidence",
        true,
    ),
    p(
        "create",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "quarantine",
        true,
    ),
    p(
        "patch",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "quarantine (--exclusive), release",
        true,
    ),
    p(
        "delete",
        "networking.k8s.io",
        "networkpolicies",
        "",
        "release",
        true,
    ),
    p(
        "get",
        "",
        "nodes",
        "",
        "evidence, quarantine --cordon-node",
        false,
    ),
    p(
        "patch",
        "",
        "nodes",
        "",
        "quarantine --cordon-node/--isolate-node, kirt node",
        false,
    ),
    p("delete", "", "pods", "", "quarantine --delete-pod", false),
    p(
        "patch",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "",
        "quarantine --revoke-credentials, release",
        false,
    ),
    p(
        "patch",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        "quarantine --revoke-credentials, release",
        false,
    ),
    p(
        "bind",
        "rbac.authorization.k8s.io",
        "roles",
        "",
        "quarantine --revoke-credentials, release (RBAC escalation check)",
        false,
    ),
    p(
        "bind",
        "rbac.authorization.k8s.io",
        "clusterroles",
        "",
        "quarantine --revoke-credentials, release (RBAC escalation check)",
        false,
    ),
    p(
        "list",
        "",
        "secrets",
        "",
        "quarantine --revoke-credentials (legacy token Secrets, metadata only), verify",
        false,
    ),
    p(
        "get",
        "",
        "secrets",
        "",
        "quarantine --revoke-credentials (the token, for the TokenReview)",
        false,
    ),
    p(
        "delete",
        "",
        "secrets",
        "",
        "quarantine --revoke-credentials (legacy token Secrets)",
        false,
    ),
    p(
        "patch",
        "",
        "serviceaccounts",
        "",
        "quarantine --revoke-credentials, release (kirt's record)",
        false,
    ),
    p(
        "list",
        "",
        "serviceaccounts",
        "",
        "release of a deleted pod (finds kirt's record)",
        false,
    ),
    p(
        "create",
        "authentication.k8s.io",
        "tokenreviews",
        "",
        "quarantine --revoke-credentials (deleted tokens are rejected)",
        false,
    ),
    p(
        "create",
        "authorization.k8s.io",
        "subjectaccessreviews",
        "",
        "quarantine verify (what the ServiceAccount may still do)",
        true,
    ),
    p(
        "create",
        "",
        "nodes",
        "proxy",
        "evidence --checkpoint",
        false,
    ),
    p("list", "", "services", "", "evidence", false),
    p("list", "", "endpoints", "", "evidence", false),
    p("get", "", "serviceaccounts", "", "evidence", false),
    p(
        "list",
        "rbac.authorization.k8s.io",
        "rolebindings",
        "",
        "evidence, quarantine verify/--revoke-credentials",
        true,
    ),
    p(
        "list",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
        "evidence, quarantine verify/--revoke-credentials",
        true,
    ),
    p("get", "apps", "deployments", "", "rollback", true),
    p("patch", "apps", "deployments", "", "rollback", true),
    p(
        "list",
        "apps",
        "replicasets",
        "",
        "rollback, evidence",
        true,
    ),
    p("get", "apps", "statefulsets", "", "rollback", false),
    p("patch", "apps", "statefulsets", "", "rollback", false),
    p("get", "apps", "daemonsets", "", "rollback", false),
    p("patch", "apps", "daemonsets", "", "rollback", false),
    p(
        "list",
        "apps",
        "controllerrevisions",
        "",
        "rollback (StatefulSet/DaemonSet)",
        false,
    ),
];

/// DaemonSet/pod name fragments of CNIs that enforce NetworkPolicy.
const ENFORCING_CNIS: &[&str] = &[
    "calico",
    "cilium",
    "antrea",
    "kube-router",
    "weave-net",
    "canal",
    "romana",
    "kube-ovn",
    "ovnkube",
    "ovn-kubernetes",
];

pub async fn run(ctx: &Ctx, spec: DoctorSpec) -> Result<DoctorReport> {
    let mut r = Report(Vec::new());
    if !spec.no_kube {
        kube_checks(ctx, &mut r).await;
    }
    if !spec.etcd.etcd_endpoints.is_empty() {
        etcd_checks(&spec.etcd, &mut r).await;
    }
    if let Some(url) = &spec.store {
        store_checks(url, &spec, &mut r).await;
    }
    for rc in &spec.recipients {
        match crate::crypto::parse_recipient(rc) {
            Ok(p) => r.ok("keys", format!("recipient {}", p.kind), p.fingerprint),
            Err(e) => r.fail(
                "keys",
                "recipient",
                &e,
                "use the output of age-keygen -y or an ssh-ed25519 public key",
            ),
        }
    }
    for id in &spec.identities {
        match crate::crypto::load_identities(id) {
            Ok(ids) => r.ok(
                "keys",
                format!("identity {}", id.display()),
                format!("{} identity(ies) loaded", ids.len()),
            ),
            Err(e) => r.fail(
                "keys",
                format!("identity {}", id.display()),
                &e,
                "restores need a readable identity file",
            ),
        }
    }
    tool_checks(&mut r).await;
    let failed = r.0.iter().filter(|c| c.status == Status::Fail).count();
    let warnings = r.0.iter().filter(|c| c.status == Status::Warn).count();
    Ok(DoctorReport {
        ok: failed == 0,
        failed,
        warnings,
        checks: r.0,
    })
}

async fn kube_checks(ctx: &Ctx, r: &mut Report) {
    let cluster = match ctx.cluster().await {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "kubernetes",
                "kubeconfig",
                &e,
                "pass --kubeconfig/--context, or --no-kube to skip these checks",
            );
            return;
        }
    };
    r.ok(
        "kubernetes",
        "kubeconfig",
        format!("server {} as {}", cluster.url, cluster.configured_identity),
    );
    let client = cluster.client.clone();
    match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
        Ok(Ok(v)) => r.ok(
            "kubernetes",
            "apiserver reachable",
            format!("version {} ({})", v.git_version, v.platform),
        ),
        Ok(Err(e)) => {
            let err = cluster.op("get", "version", "").err(e);
            r.fail(
                "kubernetes",
                "apiserver reachable",
                &err,
                "is the apiserver up? is the kubeconfig's server URL right?",
            );
            return;
        }
        Err(_) => {
            let err = Error::Unreachable {
                what: "Kubernetes API",
                endpoint: cluster.url.clone(),
                reason: "no answer within 10s".into(),
                hint: "check the network path to the apiserver".into(),
            };
            r.fail("kubernetes", "apiserver reachable", &err, "");
            return;
        }
    }
    match cluster.whoami().await {
        Some(user) => r.ok("kubernetes", "identity", user),
        None => r.ok(
            "kubernetes",
            "identity",
            format!(
                "{} (SelfSubjectReview needs Kubernetes 1.28+)",
                cluster.configured_identity
            ),
        ),
    }

    let ns = ctx.namespace().await.unwrap_or_else(|_| "default".into());
    rbac_checks(cluster, &ns, r).await;
    cni_check(cluster, r).await;
}

/// One SelfSubjectAccessReview per permission kirt's commands use, all at once.
async fn rbac_checks(cluster: &Cluster, ns: &str, r: &mut Report) {
    let ssar = cluster.all::<SelfSubjectAccessReview>();
    let reviews = PERMS.iter().map(|perm| {
        let ssar = &ssar;
        let ns = ns.to_string();
        async move {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        namespace: Some(ns),
                        verb: Some(perm.verb.into()),
                        group: Some(perm.group.into()),
                        resource: Some(perm.resource.into()),
                        subresource: (!perm.sub.is_empty()).then(|| perm.sub.into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            (perm, ssar.create(&review, false).await)
        }
    });
    for (perm, res) in join_all(reviews).await {
        let resource = if perm.sub.is_empty() {
            perm.resource.to_string()
        } else {
            format!("{}/{}", perm.resource, perm.sub)
        };
        let name = format!("can {} {}", perm.verb, resource);
        match res {
            Ok(rev) => {
                let st = rev.status.unwrap_or_default();
                if st.allowed {
                    r.ok(
                        "rbac",
                        name,
                        format!("namespace {ns}; used by {}", perm.used_by),
                    );
                } else if perm.required {
                    let err = Error::Forbidden(Box::new(crate::error::Denied {
                        identity: "kirt's identity".into(),
                        verb: perm.verb.into(),
                        resource: resource.clone(),
                        group: perm.group.into(),
                        namespace: Some(ns.to_string()),
                        detail: String::new(),
                    }));
                    r.push(
                        "rbac",
                        name,
                        Status::Fail,
                        format!(
                            "missing permission: {} {resource} in namespace {ns}",
                            perm.verb
                        ),
                        format!("needed by {}", perm.used_by),
                    );
                    if let Some(last) = r.0.last_mut() {
                        last.exit = err.exit();
                    }
                } else {
                    r.warn(
                        "rbac",
                        name,
                        format!(
                            "missing permission: {} {resource} in namespace {ns}",
                            perm.verb
                        ),
                        format!("{} will not work", perm.used_by),
                    );
                }
            }
            Err(e) => r.fail("rbac", name, &e, ""),
        }
    }
}

/// Whether a NetworkPolicy-enforcing CNI is recognisable in kube-system.
async fn cni_check(cluster: &Cluster, r: &mut Report) {
    match enforcing_cni(cluster).await {
        Some(found) => r.ok("network", "NetworkPolicy enforcement", found),
        None => r.warn("network", "NetworkPolicy enforcement", NO_CNI, NO_CNI_HINT),
    }
}

pub(crate) const NO_CNI: &str = "no NetworkPolicy-enforcing CNI recognised in kube-system";
pub(crate) const NO_CNI_HINT: &str = "quarantine policies are written but only a CNI that enforces NetworkPolicy (Calico, Cilium, Antrea, …) makes them isolate";

/// "calico found (calico-node in kube-system)", or None when no known enforcing CNI's
/// DaemonSet or pod is in kube-system (or kirt may not look).
pub(crate) async fn enforcing_cni(cluster: &Cluster) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    if let Ok(list) = cluster
        .namespaced::<DaemonSet>("kube-system")
        .list_all()
        .await
    {
        names.extend(list.into_iter().filter_map(|d| d.metadata.name));
    }
    if let Ok(list) = cluster.namespaced::<Pod>("kube-system").list_all().await {
        names.extend(list.into_iter().filter_map(|p| p.metadata.name));
    }
    names.iter().find_map(|n| {
        ENFORCING_CNIS
            .iter()
            .find(|c| n.contains(**c))
            .map(|c| format!("{c} found ({n} in kube-system)"))
    })
}

/// The store: reachable, its versioning and Object Lock, the permissions this identity has, and
/// whether the etcd cluster's prefix holds another cluster's backups.
async fn store_checks(url: &str, spec: &DoctorSpec, r: &mut Report) {
    let store = match crate::store::open(url, &spec.s3).await {
        Ok(s) => s,
        Err(e) => return r.fail("store", url, &e, "fix the URL or credentials"),
    };
    match store.check().await {
        Ok(detail) => r.ok("store", url, detail),
        Err(e) => {
            return r.fail(
                "store",
                url,
                &e,
                "kirt backup create/list will fail against this store",
            )
        }
    }
    for f in store.inspect().await {
        let status = if f.ok { Status::Ok } else { Status::Warn };
        r.push("store", f.check, status, f.detail, f.hint);
    }
    if !spec.etcd.etcd_endpoints.is_empty() {
        prefix_check(store.as_ref(), spec, r).await;
    }
}

/// The cluster-prefix guard of `backup create`, as a row.
async fn prefix_check(store: &dyn crate::store::Store, spec: &DoctorSpec, r: &mut Report) {
    use crate::actions::backup::{guard, list, signing};
    let Ok((_, status)) = spec.etcd.connect_healthy().await else {
        return; // the etcd rows say why
    };
    let cluster = spec
        .cluster_name
        .clone()
        .unwrap_or_else(|| format!("etcd-{}", status.cluster_id));
    let check = format!("cluster prefix {cluster}/");
    // the key backup create would count backups by: its signing key's, else the trusted key
    let trusted = match signing::sign_key_path(&None) {
        Some(p) => signing::load_secret_key(&p)
            .and_then(|sk| {
                minisign::PublicKey::from_secret_key(&sk).map_err(|e| Error::usage(e.to_string()))
            })
            .map(Some),
        None => signing::trusted_key_path(&None)
            .map(|p| signing::load_public_key(&p))
            .transpose(),
    };
    let trusted = match trusted {
        Ok(t) => t,
        Err(e) => return r.fail("store", check, &e, "fix $KIRT_SIGN_KEY / $KIRT_TRUSTED_KEY"),
    };
    match list::newest_usable(store, &cluster, trusted.as_ref()).await {
        Ok(newest) => match guard::foreign(newest.as_ref(), &cluster, &status.cluster_id) {
            Some(why) => r.fail(
                "store",
                check,
                &Error::Refused(why),
                "backup create refuses to write there (exit 4) without --force; give this cluster its own --cluster-name",
            ),
            None => r.ok(
                "store",
                check,
                match newest {
                    Some(b) => format!(
                        "newest backup {} is this etcd cluster's ({})",
                        b.id, status.cluster_id
                    ),
                    None => format!("no backups yet (etcd cluster {})", status.cluster_id),
                },
            ),
        },
        Err(e) if e.is_store_denied() => r.warn(
            "store",
            check,
            e.to_string(),
            "this identity cannot tell (write-only credentials); backup create then skips the check",
        ),
        Err(e) => r.fail("store", check, &e, ""),
    }
}

async fn etcd_checks(opts: &EtcdOptions, r: &mut Report) {
    if let Err(e) = opts.validate() {
        r.fail("etcd", "options", &e, "");
        return;
    }
    for ep in &opts.etcd_endpoints {
        match opts.connect_one(ep).await {
            Ok((_, st)) => r.ok(
                "etcd",
                ep.clone(),
                format!(
                    "etcd {} member {} cluster {} db {} revision {}{}",
                    st.version,
                    st.member_id,
                    st.cluster_id,
                    crate::units::human_bytes(st.db_size as u64),
                    st.revision,
                    if ep.starts_with("https") {
                        ", TLS ok"
                    } else {
                        ""
                    }
                ),
            ),
            Err(e) => r.fail("etcd", ep.clone(), &e, ""),
        }
    }
}

async fn tool_checks(r: &mut Report) {
    let tools: [(&str, &[&str], &str); 5] = [
        (
            "etcdutl",
            &["version"],
            "needed by backup verify --restore, restore and drill",
        ),
        (
            "etcdctl",
            &["version"],
            "handy for manual checks; not needed by kirt",
        ),
        (
            "age",
            &["--version"],
            "needed to decrypt backups without kirt",
        ),
        (
            "zstd",
            &["--version"],
            "needed to decompress backups without kirt",
        ),
        (
            "kube-apiserver",
            &["--version"],
            "needed by kirt drill (or pass --apiserver-bin)",
        ),
    ];
    for (tool, args, why) in tools {
        match which::which(tool) {
            Ok(path) => {
                let out = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::process::Command::new(&path).args(args).output(),
                )
                .await;
                let version = match out {
                    Ok(Ok(o)) => String::from_utf8_lossy(if o.stdout.is_empty() {
                        &o.stderr
                    } else {
                        &o.stdout
                    })
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_string(),
                    _ => "version unknown".into(),
                };
                r.ok("tools", tool, format!("{} ({})", version, path.display()));
            }
            Err(_) => r.warn("tools", tool, "not found on PATH", why),
        }
    }
}
