//! Kubernetes side of the lab: namespaces, manifests, identities (kubeconfigs and ServiceAccount
//! tokens) and reading objects back with the real kubectl.
//!
//! Comparing a resourceVersion proves that nobody wrote an object, which holds only for objects
//! no controller writes (NetworkPolicies, for example). Deployments, StatefulSets, DaemonSets and
//! ReplicaSets get status updates from their controllers, pods from the simulated kubelet and
//! ownerReferences from the ReplicaSet controller, each on its own schedule: to show that kirt
//! changed nothing there, compare [`desired_state`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{unique, wait_until, Lab};

/// The lab's nodes are shared: tests that cordon, taint or label one, or check that nothing was
/// cordoned, take turns — within this test binary (a mutex) and with any other test run or bench
/// against the same lab (an exclusive lock on `LAB_DIR/nodes.lock`).
static NODES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Held while a test owns the lab's nodes.
pub struct NodesLock {
    _file: std::fs::File,
    _here: std::sync::MutexGuard<'static, ()>,
}

pub fn nodes_to_myself(lab: &Lab) -> NodesLock {
    use std::os::fd::AsRawFd;
    let here = NODES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let path = std::path::Path::new(&lab.get("KIRT_LAB_DIR")).join("nodes.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: flock on a descriptor this function owns; released when the file is closed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(
        rc,
        0,
        "flock {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    NodesLock {
        _file: file,
        _here: here,
    }
}

/// Puts lab nodes back as the tests found them — not cordoned, without kirt's taint, label and
/// records — when dropped, also when a test fails half-way. Hold [`nodes_to_myself`] meanwhile.
pub struct NodeGuard<'a> {
    lab: &'a Lab,
    nodes: Vec<String>,
}

impl<'a> NodeGuard<'a> {
    pub fn new(lab: &'a Lab, nodes: Vec<String>) -> Self {
        NodeGuard { lab, nodes }
    }

    /// Every node of the lab.
    pub fn all(lab: &'a Lab) -> Self {
        let names = lab
            .kubectl(["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])
            .ok()
            .stdout();
        NodeGuard::new(lab, names.split_whitespace().map(String::from).collect())
    }
}

impl Drop for NodeGuard<'_> {
    fn drop(&mut self) {
        for n in &self.nodes {
            let lab = self.lab;
            let _ = lab.kubectl(["uncordon", n]);
            let _ = lab.kubectl(["taint", "node", n, "kirt.dev/quarantine:NoSchedule-"]);
            let _ = lab.kubectl(["label", "node", n, "kirt.dev/under-investigation-"]);
            let _ = lab.kubectl([
                "annotate",
                "node",
                n,
                "kirt.dev/isolated-by-",
                "kirt.dev/cordoned-by-quarantine-",
            ]);
        }
    }
}

/// A namespace for one test; deleted (without waiting) when dropped, unless `KIRT_KEEP_NS` is set.
pub struct Namespace<'a> {
    lab: &'a Lab,
    pub name: String,
}

impl std::ops::Deref for Namespace<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        if std::env::var("KIRT_KEEP_NS").is_err() {
            let _ = self
                .lab
                .kubectl(["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// The object's labels (empty when it has none).
pub fn labels(obj: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(obj["metadata"]["labels"].clone()).unwrap_or_default()
}

/// The object's annotations (empty when it has none).
pub fn annotations(obj: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(obj["metadata"]["annotations"].clone()).unwrap_or_default()
}

/// The object's resourceVersion: compare it only for objects that no controller writes.
pub fn resource_version(obj: &Value) -> String {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Everything a client such as kirt can change on an object — metadata (labels, annotations,
/// ownerReferences, generation …) and spec — without the status that controllers and the kubelet
/// keep updating, and without the bookkeeping that every such update changes (resourceVersion,
/// managedFields). Equal before and after means kirt wrote nothing a client can write.
pub fn desired_state(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

/// The real kubectl binary that makes exactly the requests asked for. Debian's (Google Cloud
/// SDK's) `kubectl` package installs a dispatcher that asks the server for `/version` before
/// every command and then runs a versioned `kubectl.1.NN` next to it: that one is used directly
/// when present, so that an audit log shows only the calls a test makes.
pub fn kubectl_binary() -> PathBuf {
    let resolved = which_kubectl().and_then(|p| std::fs::canonicalize(p).ok());
    let versioned = resolved.as_ref().and_then(|k| {
        let mut v: Vec<(u32, PathBuf)> = std::fs::read_dir(k.parent()?)
            .ok()?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let minor = name.strip_prefix("kubectl.1.")?.parse().ok()?;
                Some((minor, e.path()))
            })
            .collect();
        v.sort();
        v.into_iter().next().map(|(_, p)| p)
    });
    versioned.unwrap_or_else(|| PathBuf::from("kubectl"))
}

fn which_kubectl() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.is_file())
    })
}

impl Lab {
    /// The real kubectl ([`kubectl_binary`]) with a bearer token instead of the admin's, and a
    /// discovery cache (`cache_dir`, filled as admin first with [`Lab::warm_discovery`]) so that
    /// it asks the apiserver for nothing but the command itself.
    pub fn kubectl_as<I, S>(&self, token: &str, cache_dir: &std::path::Path, args: I) -> super::Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut c = Command::new(kubectl_binary());
        c.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(cache_dir)
            .arg("--token")
            .arg(token)
            .args(&args);
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        super::run(c, format!("kubectl --token … {}", shown.join(" ")))
    }

    /// Fills a kubectl discovery cache as admin (see [`Lab::kubectl_as`]).
    pub fn warm_discovery(&self, cache_dir: &std::path::Path) {
        let mut c = Command::new(kubectl_binary());
        c.env("KUBECONFIG", self.kubeconfig())
            .arg("--cache-dir")
            .arg(cache_dir)
            .arg("api-resources");
        super::run(c, "kubectl api-resources".into()).ok();
    }

    /// A fresh namespace (with its default ServiceAccount ready); deleted when dropped.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = unique(prefix);
        self.kubectl(["create", "namespace", &name]).ok();
        wait_until(
            Duration::from_secs(30),
            &format!("default ServiceAccount in {name}"),
            || {
                self.kubectl(["get", "serviceaccount", "default", "-n", &name])
                    .out
                    .status
                    .success()
            },
        );
        Namespace { lab: self, name }
    }

    /// `kubectl apply -f -` with the given YAML.
    #[track_caller]
    pub fn apply(&self, ns: &str, yaml: &str) {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig())
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ARGS -o json`, which must succeed.
    #[track_caller]
    pub fn get_json(&self, args: &[&str]) -> Value {
        let mut a: Vec<&str> = vec!["get"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["-o", "json"]);
        self.kubectl(&a).ok().json()
    }

    /// Names of the pods in `ns` that `selector` matches.
    #[track_caller]
    pub fn pod_names(&self, ns: &str, selector: &str) -> Vec<String> {
        let r = self
            .kubectl([
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                selector,
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ])
            .ok();
        r.stdout().split_whitespace().map(String::from).collect()
    }

    /// `kubectl rollout status TARGET` (e.g. `deployment/web`), which must complete.
    #[track_caller]
    pub fn rollout_status(&self, ns: &str, target: &str) {
        self.kubectl(["rollout", "status", target, "-n", ns, "--timeout=120s"])
            .ok();
    }

    /// Waits until the pod's phase is Running (the simulated kubelet has bound and started it).
    #[track_caller]
    pub fn wait_pod_running(&self, ns: &str, pod: &str) {
        wait_until(
            Duration::from_secs(60),
            &format!("pod {ns}/{pod} Running"),
            || {
                self.kubectl([
                    "get",
                    "pod",
                    pod,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.status.phase}",
                ])
                .stdout()
                    == "Running"
            },
        );
    }

    /// Waits until `ns` holds at least `n` ReplicaSets (the Deployment controller has caught up).
    #[track_caller]
    pub fn wait_for_replicasets(&self, ns: &str, n: usize) {
        wait_until(Duration::from_secs(30), &format!("{n} ReplicaSets"), || {
            self.kubectl(["get", "rs", "-n", ns, "-o", "name"])
                .ok()
                .stdout()
                .lines()
                .count()
                >= n
        });
    }

    /// The messages of the Events in `ns` that `field_selector` matches, space-separated.
    #[track_caller]
    pub fn event_messages(&self, ns: &str, field_selector: &str) -> String {
        self.kubectl([
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            field_selector,
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .ok()
        .stdout()
    }

    /// The admin kubeconfig pointed at a port where nothing listens (127.0.0.1:1), for the
    /// "apiserver unreachable" cases.
    pub fn unreachable_kubeconfig(&self) -> PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let path = self.dir.path().join("unreachable.kubeconfig");
        std::fs::write(
            &path,
            admin.replace(&self.get("KIRT_LAB_APISERVER"), "https://127.0.0.1:1"),
        )
        .unwrap();
        path
    }

    /// Writes a kubeconfig for a bearer token (e.g. a ServiceAccount's) and returns its path.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let server = self.get("KIRT_LAB_APISERVER");
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
            .expect("CA in lab kubeconfig")
            .to_string();
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: {name}}}\ncurrent-context: lab\n"
            ),
        )
        .unwrap();
        path
    }

    /// A SubjectAccessReview (created with the real kubectl) for `user` in `groups`: whether the
    /// apiserver allows `verb` on `resource` (in `ns`, or cluster-wide when empty).
    #[track_caller]
    pub fn subject_allowed(
        &self,
        user: &str,
        groups: &[&str],
        verb: &str,
        resource: &str,
        ns: &str,
    ) -> bool {
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": groups,
                     "resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}},
        });
        let path = self
            .dir
            .path()
            .join(format!("sar-{}.json", super::unique("r")));
        std::fs::write(&path, review.to_string()).unwrap();
        let v = self
            .kubectl(["create", "-f", path.to_str().unwrap(), "-o", "json"])
            .ok()
            .json();
        v["status"]["allowed"] == true
    }

    /// The same for ServiceAccount `ns`/`sa`, with the groups its tokens carry.
    #[track_caller]
    pub fn account_allowed(
        &self,
        ns: &str,
        sa: &str,
        verb: &str,
        resource: &str,
        in_ns: &str,
    ) -> bool {
        let groups = [
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".to_string(),
        ];
        let g: Vec<&str> = groups.iter().map(String::as_str).collect();
        self.subject_allowed(
            &format!("system:serviceaccount:{ns}:{sa}"),
            &g,
            verb,
            resource,
            in_ns,
        )
    }

    /// The real kubectl with a bearer token only (no admin credentials), e.g. a stolen token.
    pub fn kubectl_with_token<I, S>(&self, token: &str, args: I) -> super::Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let kc = self.kubeconfig_for_token(&super::unique("tok"), token);
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", kc).args(args);
        super::run(c, "kubectl --token=[redacted] …".into())
    }

    /// Creates a ServiceAccount in `ns` and returns its token (1.20 token controller secrets).
    pub fn service_account_token(&self, ns: &str, sa: &str) -> String {
        self.kubectl(["create", "serviceaccount", sa, "-n", ns])
            .ok();
        let mut secret = String::new();
        wait_until(
            Duration::from_secs(30),
            "ServiceAccount token secret",
            || {
                let r = self.kubectl([
                    "get",
                    "serviceaccount",
                    sa,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                secret = r.stdout().trim().to_string();
                !secret.is_empty()
            },
        );
        let r = self
            .kubectl([
                "get",
                "secret",
                &secret,
                "-n",
                ns,
                "-o",
                "jsonpath={.data.token}",
            ])
            .ok();
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .decode(r.stdout().trim())
            .expect("base64 token");
        String::from_utf8(token).expect("token utf8")
    }
}
