//! `kirt backup objects`, `kirt backup diff`, `kirt restore objects` and their `kirt undo`:
//! objects decoded from a real etcd backup agree with the apiserver's own JSON; a deleted
//! namespace comes back through the apiserver; a changed ConfigMap is refused, replaced, and
//! put back by undo; a dry run changes nothing.

use std::time::Duration;

use serde_json::Value;

use crate::common::keys::{age_key, signing_keys};
use crate::common::{self, lab, unique, wait_until, Lab};

/// A signed, encrypted backup of the lab's etcd in a directory of the test's own.
struct Backup {
    dir: String,
    id: String,
    key: String,
    trusted: String,
}

impl Backup {
    fn take(lab: &Lab, name: &str) -> Backup {
        let (key, recipient) = age_key(lab);
        let (sign_key, trusted) = signing_keys(lab);
        let dir = lab.dir.path().join(name).to_str().unwrap().to_string();
        let mut cmd = lab.kirt_cmd([
            "backup",
            "create",
            "--etcd-endpoints",
            &lab.get("KIRT_LAB_ETCD"),
            "--to",
            &dir,
            "--cluster-name",
            "lab",
            "--recipient",
            &recipient,
            "--sign-key",
            &sign_key,
            "-o",
            "json",
        ]);
        cmd.env("KIRT_SIGN_PASSWORD", "pw");
        let r = common::run(cmd, "kirt backup create".into()).ok();
        Backup {
            dir,
            id: r.json()["id"].as_str().unwrap().to_string(),
            key,
            trusted,
        }
    }

    /// `kirt SUB… --from DIR ID` with the backup's keys and the lab's etcd binaries.
    fn kirt(&self, lab: &Lab, sub: &[&str], extra: &[&str]) -> common::Run {
        let mut args: Vec<&str> = sub.to_vec();
        args.extend([
            "--from",
            &self.dir,
            &self.id,
            "--identity",
            &self.key,
            "--trusted-key",
            &self.trusted,
        ]);
        args.extend(extra);
        let mut cmd = lab.kirt_cmd(&args);
        cmd.env("TMPDIR", lab.dir.path());
        common::run(cmd, format!("kirt {}", args.join(" ")))
    }
}

const APP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: app}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: app-view}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}
subjects: [{kind: ServiceAccount, name: app}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: web}}
data: {mode: blue, level: "3"}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
type: Opaque
stringData: {password: s3cr3t-k13-value}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: app
      containers: [{name: web, image: "nginx:1.25"}]
"#;

/// A namespaced CRD of a group of this test's own, Established.
struct Crd<'a> {
    lab: &'a Lab,
    name: String,
    group: String,
}

impl<'a> Crd<'a> {
    fn create(lab: &'a Lab) -> Crd<'a> {
        let group = format!("{}.example.com", unique("k13"));
        let name = format!("widgets.{group}");
        let yaml = format!(
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {name}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
"#
        );
        lab.apply("default", &yaml);
        lab.kubectl([
            "wait",
            "--for",
            "condition=established",
            &format!("crd/{name}"),
            "--timeout=60s",
        ])
        .ok();
        Crd { lab, name, group }
    }
}

impl Drop for Crd<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .kubectl(["delete", "crd", &self.name, "--wait=false"]);
    }
}

/// The built-in objects of the test's app, by `kind/name`.
const OURS: [(&str, &str); 7] = [
    ("serviceaccount", "app"),
    ("rolebinding", "app-view"),
    ("configmap", "settings"),
    ("secret", "creds"),
    ("service", "web"),
    ("deployment", "web"),
    ("namespace", ""),
];

fn get(lab: &Lab, ns: &str, kind: &str, name: &str) -> Value {
    if kind == "namespace" {
        lab.get_json(&["namespace", ns])
    } else {
        lab.get_json(&[kind, name, "-n", ns])
    }
}

/// Drops what the test expects to differ between an object before deletion and its restored
/// copy: the server-managed fields, listed here on purpose rather than taken from kirt.
fn comparable(kind: &str, obj: &Value) -> Value {
    let mut o = obj.clone();
    let m = o["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
        "selfLink",
    ] {
        m.remove(f);
    }
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("deployment.kubernetes.io/revision");
        if a.is_empty() {
            m.remove("annotations");
        }
    }
    let o2 = o.as_object_mut().unwrap();
    o2.remove("status");
    match kind {
        "service" => {
            o["spec"].as_object_mut().unwrap().remove("clusterIP");
            o["spec"].as_object_mut().unwrap().remove("clusterIPs");
        }
        "serviceaccount" => {
            o.as_object_mut().unwrap().remove("secrets");
        }
        _ => {}
    }
    o
}

fn widget(crd: &Crd, ns: &str) -> Value {
    crd.lab
        .get_json(&[&format!("widgets.{}", crd.group), "w1", "-n", ns])
}

/// Where two JSON values differ: `path: left | right`.
fn paths_differing(path: &str, a: &Value, b: &Value) -> Vec<String> {
    match (a, b) {
        _ if a == b => vec![],
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let null = Value::Null;
                    paths_differing(
                        &format!("{path}.{k}"),
                        x.get(k).unwrap_or(&null),
                        y.get(k).unwrap_or(&null),
                    )
                })
                .collect()
        }
        _ => vec![format!("{path}: {a} | {b}")],
    }
}

#[test]
fn a_deleted_namespace_comes_back_from_a_backup() {
    let Some(lab) = lab() else { return };
    let crd = Crd::create(&lab);
    let ns = lab.namespace("k13-restore");
    lab.apply(&ns, APP);
    lab.apply(
        &ns,
        &format!(
            "apiVersion: {}/v1\nkind: Widget\nmetadata: {{name: w1}}\nspec: {{size: 3}}\n",
            crd.group
        ),
    );
    lab.rollout_status(&ns, "deployment/web");
    let before: Vec<Value> = OURS.iter().map(|(k, n)| get(&lab, &ns, k, n)).collect();
    let widget_before = widget(&crd, &ns);
    let b = Backup::take(&lab, "backup");

    // decoded from the snapshot == the apiserver's JSON, field by field, for every built-in kind
    // of the namespace whose object did not change since the backup (same resourceVersion)
    let listed = b
        .kirt(
            &lab,
            &["backup", "objects", "-n", &ns],
            &["-o", "json", "--show-secrets"],
        )
        .ok()
        .json();
    let items = listed["items"].as_array().unwrap();
    let mut compared = std::collections::BTreeSet::new();
    for item in items {
        assert!(item.get("kirt").is_none(), "not decoded: {item}");
        let kind = item["kind"].as_str().unwrap();
        if kind == "Widget" || kind == "Event" {
            continue;
        }
        let name = item["metadata"]["name"].as_str().unwrap();
        let args: Vec<String> = if kind == "Namespace" {
            vec![
                "namespace".into(),
                name.into(),
                "--show-managed-fields".into(),
            ]
        } else {
            vec![
                kind.to_lowercase(),
                name.into(),
                "-n".into(),
                ns.to_string(),
            ]
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let live = lab.get_json(&args);
        if live["metadata"]["resourceVersion"] == item["metadata"]["resourceVersion"] {
            // kubectl get hides managedFields: compared only when it shows them
            let mut item = item.clone();
            if live["metadata"].get("managedFields").is_none() {
                item["metadata"]
                    .as_object_mut()
                    .unwrap()
                    .remove("managedFields");
            }
            // Go serves a zero time inside a pod template as `"creationTimestamp": null`; the
            // decoder leaves the field out (null and absent compare equal here, nowhere else)
            assert!(
                paths_differing("", &live, &item).is_empty(),
                "{kind}/{name}: decoded differs from the apiserver's JSON at {:?}",
                paths_differing("", &live, &item)
            );
            compared.insert(kind.to_string());
        }
    }
    for kind in [
        "Namespace",
        "ServiceAccount",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "ReplicaSet",
    ] {
        assert!(compared.contains(kind), "no {kind} compared: {compared:?}");
    }
    // Secret values stay out of output without --show-secrets
    let redacted = b
        .kirt(&lab, &["backup", "objects", "-n", &ns], &["-o", "json"])
        .ok();
    assert!(
        !redacted.stdout().contains("czNjcjN0LWsxMy12YWx1ZQ"),
        "{}",
        redacted.stdout()
    );

    // delete the namespace and wait until it is gone
    lab.kubectl(["delete", "namespace", &ns, "--wait=true", "--timeout=120s"])
        .ok();
    let diff = b
        .kirt(&lab, &["backup", "diff", "-n", &ns], &["-o", "json"])
        .code_is(3);
    let d = diff.json();
    let deleted: Vec<String> = d["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "RoleBinding",
        "ConfigMap",
        "Secret",
        "Service",
        "Deployment",
        "Widget",
    ] {
        assert!(
            deleted.iter().any(|k| k == kind),
            "{kind} not listed as deleted: {d:#}"
        );
    }

    // restore without secrets
    let r = b
        .kirt(
            &lab,
            &["restore", "objects", "-n", &ns],
            &["--deleted-only", "--yes", "-o", "json"],
        )
        .ok();
    let v = r.json();
    assert!(v["run"].is_string(), "{v:#}");
    assert!(
        v["skipped"].to_string().contains("include-secrets"),
        "{v:#}"
    );
    assert!(lab.kubectl(["get", "secret", "creds", "-n", &ns]).code() != 0);
    for ((kind, name), was) in OURS.iter().zip(&before) {
        if *kind == "secret" {
            continue;
        }
        let now = get(&lab, &ns, kind, name);
        assert_eq!(
            comparable(kind, &now),
            comparable(kind, was),
            "{kind}/{name}"
        );
    }
    assert_eq!(
        widget(&crd, &ns)["spec"],
        widget_before["spec"],
        "the custom resource"
    );
    // the controller manager re-creates the Deployment's ReplicaSet
    lab.wait_for_replicasets(&ns, 1);
    // now the Secret, with --include-secrets
    b.kirt(
        &lab,
        &["restore", "objects", "-n", &ns],
        &["--deleted-only", "--include-secrets", "--yes"],
    )
    .ok();
    let secret = get(&lab, &ns, "secret", "creds");
    assert_eq!(
        comparable("secret", &secret),
        comparable("secret", &before[3])
    );
}

#[test]
fn a_changed_configmap_is_refused_replaced_and_undone() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("k13-replace");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: blue}\n",
    );
    let b = Backup::take(&lab, "backup");
    lab.kubectl([
        "patch",
        "configmap",
        "settings",
        "-n",
        &ns,
        "-p",
        r#"{"data":{"mode":"red"}}"#,
    ])
    .ok();
    let d = b
        .kirt(&lab, &["backup", "diff", "-n", &ns], &["-o", "json"])
        .code_is(3)
        .json();
    let fields = d["changed"][0]["fields"].to_string();
    assert!(fields.contains("data.mode: blue → red"), "{d:#}");

    let rv =
        |lab: &Lab| get(lab, &ns, "configmap", "settings")["metadata"]["resourceVersion"].clone();
    let before = rv(&lab);
    // --dry-run changes nothing
    b.kirt(
        &lab,
        &["restore", "objects", "-n", &ns],
        &["--replace", "--dry-run", "-o", "json"],
    )
    .ok();
    assert_eq!(rv(&lab), before);
    // refused without --replace (exit 4), nothing changed
    let r = b
        .kirt(
            &lab,
            &["restore", "objects", "-n", &ns],
            &["--kind", "ConfigMap", "--yes"],
        )
        .code_is(4);
    assert!(r.stderr().contains("settings"), "{}", r.dump());
    assert_eq!(rv(&lab), before);
    // replaced with --replace
    let v = b
        .kirt(
            &lab,
            &["restore", "objects", "-n", &ns],
            &["--kind", "configmaps", "--replace", "--yes", "-o", "json"],
        )
        .ok()
        .json();
    assert_eq!(
        get(&lab, &ns, "configmap", "settings")["data"]["mode"],
        "blue"
    );
    let run = v["run"].as_str().unwrap().to_string();
    // undo puts the newer version back
    lab.kirt(["undo", &run, "--yes"]).ok();
    assert_eq!(
        get(&lab, &ns, "configmap", "settings")["data"]["mode"],
        "red"
    );
}

#[test]
fn a_dry_run_restore_changes_nothing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("k13-dry");
    lab.apply(&ns, APP);
    // the controllers' own writes (status, the token) are done before resourceVersions are taken
    lab.rollout_status(&ns, "deployment/web");
    wait_until(
        Duration::from_secs(30),
        "the token of ServiceAccount app",
        || get(&lab, &ns, "serviceaccount", "app")["secrets"].is_array(),
    );
    let b = Backup::take(&lab, "backup");
    lab.kubectl(["delete", "configmap", "settings", "-n", &ns])
        .ok();
    let rvs = |lab: &Lab| -> Vec<Value> {
        OURS.iter()
            .filter(|(k, _)| *k != "configmap")
            .map(|(k, n)| get(lab, &ns, k, n)["metadata"]["resourceVersion"].clone())
            .collect()
    };
    let before = rvs(&lab);
    let v = b
        .kirt(
            &lab,
            &["restore", "objects", "-n", &ns],
            &[
                "--deleted-only",
                "--dry-run",
                "--include-secrets",
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert!(v["objects"].to_string().contains("dry-run"), "{v:#}");
    assert!(v["run"].is_null(), "a dry run is not journaled: {v:#}");
    assert!(
        lab.kubectl(["get", "configmap", "settings", "-n", &ns])
            .code()
            != 0
    );
    assert_eq!(rvs(&lab), before);
}
