//! `kirt backup objects`, `kirt backup diff`, `kirt restore objects` and their `kirt undo`:
//! objects decoded from a real etcd backup agree with the apiserver's own JSON; a deleted
//! namespace comes back through the apiserver; a changed ConfigMap is refused, replaced, and
//! put back by undo; a dry run changes nothing.

use std::time::Duration;

use serde_json::Value;

use crate::common::apiserver::OwnApiserver;
use crate::common::keys::{age_key, signing_keys};
use crate::common::{self, lab, unique, wait_until, Lab, Proc};

/// A signed, encrypted backup of the lab's etcd in a directory of the test's own.
struct Backup {
    dir: String,
    id: String,
    key: String,
    trusted: String,
}

impl Backup {
    fn take(lab: &Lab, name: &str) -> Backup {
        Backup::take_from(lab, name, &lab.get("KIRT_LAB_ETCD"))
    }

    fn take_from(lab: &Lab, name: &str, etcd: &str) -> Backup {
        let (key, recipient) = age_key(lab);
        let (sign_key, trusted) = signing_keys(lab);
        let dir = lab.dir.path().join(name).to_str().unwrap().to_string();
        let mut cmd = lab.kirt_cmd([
            "backup",
            "create",
            "--etcd-endpoints",
            etcd,
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

/// Waits until the controllers are done with the app (the ServiceAccount's token, the
/// Service's Endpoints), so that a backup taken now is what the namespace stays.
fn settled(lab: &Lab, ns: &str) {
    wait_until(
        Duration::from_secs(30),
        "the token of ServiceAccount app",
        || get(lab, ns, "serviceaccount", "app")["secrets"].is_array(),
    );
    wait_until(
        Duration::from_secs(30),
        "the endpoints controller's Endpoints of Service web",
        || {
            let e = lab.kubectl(["get", "endpoints", "web", "-n", ns, "-o", "json"]);
            e.code() == 0
                && e.json()["metadata"]["annotations"]
                    .get("endpoints.kubernetes.io/last-change-trigger-time")
                    .is_some()
        },
    );
}

fn widget(crd: &Crd, ns: &str) -> Value {
    crd.lab
        .get_json(&[&format!("widgets.{}", crd.group), "w1", "-n", ns])
}

/// Where two JSON values differ: `path: left | right` (a field left out differs from null).
fn paths_differing(path: &str, a: &Value, b: &Value) -> Vec<String> {
    match (a, b) {
        _ if a == b => vec![],
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .flat_map(|k| {
                    let p = format!("{path}.{k}");
                    match (x.get(k), y.get(k)) {
                        (Some(a), Some(b)) => paths_differing(&p, a, b),
                        (a, b) => vec![format!("{p}: {a:?} | {b:?}")],
                    }
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
    settled(&lab, &ns);
    let before: Vec<Value> = OURS.iter().map(|(k, n)| get(&lab, &ns, k, n)).collect();
    let widget_before = widget(&crd, &ns);
    let b = Backup::take(&lab, "backup");

    // nothing changed since the backup: no drift (exit 0), every object equal
    let same = b
        .kirt(&lab, &["backup", "diff", "-n", &ns], &["-o", "json"])
        .ok()
        .json();
    assert_eq!(same["equal"], 8, "{same:#}");

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
            assert!(
                paths_differing("", &live, &item).is_empty(),
                "{kind}/{name}: decoded differs from the apiserver's JSON at {:?}",
                paths_differing("", &live, &item)
            );
            if kind == "Deployment" {
                // Go's zero Time, as the apiserver serves it
                assert_eq!(
                    item["spec"]["template"]["metadata"].get("creationTimestamp"),
                    Some(&Value::Null),
                    "{item:#}"
                );
            }
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
    // every object people made, each once, under its own apiVersion; nothing else
    let deleted: std::collections::BTreeSet<String> = d["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("{} {} {}", i["api_version"], i["kind"], i["name"]).replace('"', ""))
        .collect();
    let widget_api = format!("{}/v1", crd.group);
    let expected: std::collections::BTreeSet<String> = [
        ("v1", "Namespace", &*ns),
        ("v1", "ServiceAccount", "app"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", "app-view"),
        ("v1", "ConfigMap", "settings"),
        ("v1", "Secret", "creds"),
        ("v1", "Service", "web"),
        ("apps/v1", "Deployment", "web"),
        (widget_api.as_str(), "Widget", "w1"),
    ]
    .iter()
    .map(|(a, k, n)| format!("{a} {k} {n}"))
    .collect();
    assert_eq!(deleted, expected, "{d:#}");
    assert!(
        d["created"].as_array().unwrap().is_empty() && d["changed"].as_array().unwrap().is_empty(),
        "{d:#}"
    );

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
    settled(&lab, &ns);
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

/// A kube-apiserver of this test's own on a private etcd, with Secrets encrypted at rest by
/// aescbc: `kubectl` with its token, and the etcd.
struct Encrypting {
    api: OwnApiserver,
    etcd: Proc,
}

impl Encrypting {
    fn start(lab: &Lab, config: &std::path::Path) -> Encrypting {
        let etcd = lab.private_etcd("3.5");
        let api = OwnApiserver::start(
            lab,
            &etcd.endpoint,
            &[format!("--encryption-provider-config={}", config.display())],
        );
        Encrypting { api, etcd }
    }

    fn kubectl(&self, args: &[&str]) -> common::Run {
        self.api.kubectl(args)
    }
}

fn encryption_config(dir: &std::path::Path, name: &str, secret: &[u8; 32]) -> std::path::PathBuf {
    use base64::Engine;
    let p = dir.join(name);
    let key = base64::engine::general_purpose::STANDARD.encode(secret);
    std::fs::write(
        &p,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys: [{{name: k1, secret: {key}}}]\n  - identity: {{}}\n"
        ),
    )
    .unwrap();
    p
}

#[test]
fn secrets_encrypted_at_rest_are_opened_only_with_the_apiservers_key() {
    let Some(lab) = lab() else { return };
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37) ^ (std::process::id() as u8);
    }
    let config = encryption_config(lab.dir.path(), "encryption.yaml", &secret);
    let api = Encrypting::start(&lab, &config);
    let value = "k13-at-rest-value";
    let b64 = "azEzLWF0LXJlc3QtdmFsdWU"; // base64 of the value, without its padding
    api.kubectl(&["create", "namespace", "enc"]).ok();
    api.kubectl(&[
        "create",
        "secret",
        "generic",
        "db",
        "-n",
        "enc",
        &format!("--from-literal=password={value}"),
    ])
    .ok();
    api.kubectl(&[
        "create",
        "configmap",
        "plain",
        "-n",
        "enc",
        "--from-literal=a=b",
    ])
    .ok();
    // etcd really holds it encrypted (read with etcdctl, not kirt)
    let mut c = std::process::Command::new(
        std::path::Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcdctl"),
    );
    c.env("ETCDCTL_API", "3")
        .args(["--endpoints", &api.etcd.endpoint])
        .args(["get", "/registry/secrets/enc/db", "--print-value-only"]);
    let raw = common::run(c, "etcdctl get".into()).ok();
    assert!(
        raw.stdout().starts_with("k8s:enc:aescbc:v1:k1:"),
        "{}",
        raw.stdout()
    );
    assert!(!raw.stdout().contains(value));

    let b = Backup::take_from(&lab, "backup", &api.etcd.endpoint);
    let objects = |extra: &[&str]| {
        let mut args = vec!["--kind", "Secret", "-o", "json"];
        args.extend(extra);
        b.kirt(&lab, &["backup", "objects", "-n", "enc"], &args)
            .ok()
    };
    let only = |r: &common::Run| -> Value {
        let v = r.json();
        let items = v["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "only the Secret db: {v:#}");
        items[0].clone()
    };

    // without the config: listed as encrypted, skipped, nothing guessed
    let r = objects(&["--show-secrets"]);
    let item = only(&r);
    assert_eq!(item["kirt"]["state"], "encrypted", "{item:#}");
    assert!(
        item["kirt"]["problem"]
            .as_str()
            .unwrap()
            .contains("--encryption-config"),
        "{item:#}"
    );
    assert!(!r.stdout().contains(b64) && !r.stdout().contains(value));
    let table = b.kirt(&lab, &["backup", "objects", "-n", "enc"], &[]).ok();
    assert!(
        table.stdout().contains("plain") && table.stderr().contains("1 encrypted (skipped"),
        "{}",
        table.dump()
    );

    // with the apiserver's config: decoded, values only with --show-secrets
    let with = ["--encryption-config", config.to_str().unwrap()];
    let r = objects(&with);
    let item = only(&r);
    assert!(item.get("kirt").is_none(), "{item:#}");
    assert_eq!(item["data"]["password"], "[redacted]");
    assert!(!r.stdout().contains(b64));
    let mut shown = with.to_vec();
    shown.push("--show-secrets");
    let item = only(&objects(&shown));
    assert_eq!(
        item["data"]["password"],
        format!("{b64}="),
        "decoded as the apiserver serves it"
    );
    let live = api
        .kubectl(&["get", "secret", "db", "-n", "enc", "-o", "json"])
        .ok()
        .json();
    assert_eq!(item["data"], live["data"]);

    // a config with another secret under the same key name: cannot decrypt, never garbage
    let mut other = secret;
    other[0] ^= 1;
    let wrong = encryption_config(lab.dir.path(), "wrong.yaml", &other);
    let r = objects(&[
        "--encryption-config",
        wrong.to_str().unwrap(),
        "--show-secrets",
    ]);
    let item = only(&r);
    assert_eq!(item["kirt"]["state"], "encrypted", "{item:#}");
    assert!(
        item["kirt"]["problem"]
            .as_str()
            .unwrap()
            .contains("does not open"),
        "{item:#}"
    );
    assert!(item.get("data").is_none(), "{item:#}");
    // a config that is not one: a usage error naming the file, before anything is decoded
    let junk = lab.dir.path().join("junk.yaml");
    std::fs::write(&junk, "kind: Pod\n").unwrap();
    let r = b
        .kirt(
            &lab,
            &["backup", "objects", "-n", "enc"],
            &["--encryption-config", junk.to_str().unwrap()],
        )
        .code_is(2);
    assert!(r.stderr().contains("junk.yaml"), "{}", r.dump());
}

/// Values too large for one page: 50 ConfigMaps of 1.4 MiB are more than the 64 MiB kirt takes
/// in one response, so the page is asked again with fewer keys, and every object is listed.
#[test]
fn values_too_large_for_one_page_are_read_in_smaller_ones() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    common::block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        let blob = "x".repeat(1_400_000);
        for i in 0..50 {
            let name = format!("big-{i:02}");
            let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": "big"}, "data": {"blob": blob}});
            let key = format!("/registry/configmaps/big/{name}");
            c.put(key, cm.to_string(), None).await.unwrap();
        }
    });
    let b = Backup::take_from(&lab, "big", &etcd.endpoint);
    let r = b.kirt(&lab, &["backup", "objects"], &["-A"]).ok();
    let rows = r
        .stdout()
        .lines()
        .filter(|l| l.starts_with("ConfigMap\tbig\t"))
        .count();
    assert_eq!(rows, 50, "{}", r.stderr());
    assert!(
        r.stderr().contains("50 objects: 50 decoded"),
        "{}",
        r.stderr()
    );
}
