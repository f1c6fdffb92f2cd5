//! `kirt quarantine|release`: quarantine, verify, status and release against the lab apiserver;
//! every state is checked with the real kubectl. Each test has its own namespace. (No CNI
//! enforces NetworkPolicy in the lab: tests check the objects kirt writes and the verdicts of
//! `kirt quarantine verify`.)

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::k8s::{annotations, desired_state, labels, nodes_to_myself, resource_version};
use crate::common::{self, lab, wait_until, Lab};

const QLABEL: &str = "kirt.dev/quarantined";

fn pod(lab: &Lab, ns: &str, name: &str) -> Value {
    lab.get_json(&["pod", name, "-n", ns])
}

/// What kirt could change on the pod (metadata and spec). Not its resourceVersion: the simulated
/// kubelet writes the pod's status and the ReplicaSet controller its ownerReferences, each on
/// its own schedule.
fn pod_desired(lab: &Lab, ns: &str, name: &str) -> Value {
    desired_state(&pod(lab, ns, name))
}

/// name → resourceVersion of every NetworkPolicy in the namespace. (No controller writes
/// NetworkPolicies, so an unchanged resourceVersion means nobody wrote them.)
fn netpols(lab: &Lab, ns: &str) -> BTreeMap<String, String> {
    lab.get_json(&["networkpolicies", "-n", ns])["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                resource_version(p),
            )
        })
        .collect()
}

fn deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}, tier: front}}, annotations: {{team: blue}}}}
    spec: {{containers: [{{name: c, image: "nginx:1.25"}}]}}
"#
    )
}

const ALLOW_ALL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all}
spec:
  podSelector: {}
  ingress: [{}]
  egress: [{}]
  policyTypes: [Ingress, Egress]
"#;

fn standalone(name: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}, role: worker}}}}
spec: {{containers: [{{name: c, image: "busybox:1.36"}}]}}
"#
    )
}

#[test]
fn deployment_pod_quarantine_then_release_exactly_and_idempotently() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-deploy");
    lab.apply(
        &ns,
        &format!(
            "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n",
            deployment("web", 3)
        ),
    );
    lab.rollout_status(&ns, "deployment/web");
    let endpoints = || {
        lab.kubectl([
            "get",
            "endpoints",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].targetRef.name}",
        ])
        .stdout()
        .split_whitespace()
        .map(String::from)
        .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(30), "3 endpoints", || {
        endpoints().len() == 3
    });
    let victim = lab.pod_names(&ns, "app=web")[0].clone();
    let before = pod(&lab, &ns, &victim);

    let r = lab
        .kirt([
            "quarantine",
            &victim,
            "-n",
            &ns,
            "--reason",
            "crypto miner",
            "--yes",
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    assert_eq!(v["pods"][0]["outcome"], "done", "{v:#}");
    assert_eq!(v["quarantined"], 1);

    // only the quarantine label, the originals in the annotation, who/when/why recorded
    let after = pod(&lab, &ns, &victim);
    assert_eq!(
        labels(&after),
        BTreeMap::from([(QLABEL.to_string(), "true".to_string())])
    );
    let anns = annotations(&after);
    let saved: BTreeMap<String, String> =
        serde_json::from_str(&anns["kirt.dev/original-labels"]).unwrap();
    assert_eq!(saved, labels(&before));
    assert_eq!(anns["kirt.dev/quarantined-reason"], "crypto miner");
    assert!(
        anns["kirt.dev/quarantined-by"].contains("kirt-admin"),
        "{anns:?}"
    );
    assert!(anns.contains_key("kirt.dev/quarantined-at"));
    assert_eq!(anns["team"], "blue");

    // the deny-all policy selects quarantined pods only, both directions, no rules
    let np = lab.get_json(&["networkpolicy", "kirt-quarantine", "-n", &ns]);
    assert_eq!(
        np["spec"],
        serde_json::json!({"podSelector": {"matchLabels": {QLABEL: "true"}}, "policyTypes": ["Ingress", "Egress"]}),
        "{np:#}"
    );
    assert_eq!(
        lab.pod_names(&ns, &format!("{QLABEL}=true")),
        std::slice::from_ref(&victim)
    );
    // kirt's evaluation agrees: a sibling replica is not selected by the deny-all
    let sibling = lab
        .pod_names(&ns, "app=web")
        .into_iter()
        .find(|p| *p != victim)
        .unwrap();
    let v = lab
        .kirt(["quarantine", "verify", &sibling, "-n", &ns, "-o", "json"])
        .code_is(3)
        .json();
    assert_eq!(v["deny_all"], serde_json::json!([]), "{v:#}");
    assert_eq!(v["quarantined"], false);

    // out of the Service, replaced by its ReplicaSet, still alive
    wait_until(Duration::from_secs(60), "replacement in endpoints", || {
        let e = endpoints();
        e.len() == 3 && !e.contains(&victim)
    });
    let web = lab.pod_names(&ns, "app=web");
    assert_eq!(web.len(), 3, "{web:?}");
    assert!(!web.contains(&victim));
    // (the ReplicaSet controller drops its ownerReference after kirt has returned, in its own
    // time: wait for it rather than expect it in the version read right after the quarantine)
    wait_until(
        Duration::from_secs(60),
        "the ReplicaSet to release the pod",
        || {
            pod(&lab, &ns, &victim)["metadata"]["ownerReferences"]
                .as_array()
                .is_none_or(|o| o.is_empty())
        },
    );
    lab.wait_pod_running(&ns, &victim);

    // an Event on the pod
    let events = lab.event_messages(
        &ns,
        &format!("involvedObject.name={victim},reason=Quarantined"),
    );
    assert!(events.contains("crypto miner"), "{events}");

    // again: a no-op that says so
    let (pod_before, pols) = (pod_desired(&lab, &ns, &victim), netpols(&lab, &ns));
    let r = lab.kirt(["quarantine", &victim, "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("already quarantined"), "{}", r.dump());
    assert_eq!(pod_desired(&lab, &ns, &victim), pod_before);
    assert_eq!(netpols(&lab, &ns), pols);

    lab.kirt(["quarantine", "verify", &victim, "-n", &ns]).ok();
    let st = lab
        .kirt(["quarantine", "status", "-n", &ns, "-o", "json"])
        .ok()
        .json();
    assert_eq!(st["pods"][0]["pod"], victim.as_str(), "{st:#}");
    assert_eq!(st["pods"][0]["reason"], "crypto miner");
    assert_eq!(st["pods"][0]["phase"], "Running");
    assert!(!st["pods"][0]["node"].as_str().unwrap().is_empty());

    // release: labels exactly as before, kirt annotations and objects gone. The ReplicaSet then
    // re-adopts the pod, has one too many and may delete this very pod, so the released version
    // is taken from a watch rather than from a later read.
    let watch = PodWatch::start(&lab, &ns, &victim);
    let r = lab.kirt(["release", &victim, "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("released"), "{}", r.dump());
    let released = watch.first(|p| !labels(p).contains_key(QLABEL));
    assert_eq!(labels(&released), labels(&before));
    assert_eq!(annotations(&released), annotations(&before));
    assert!(netpols(&lab, &ns).is_empty(), "{:?}", netpols(&lab, &ns));
    let st = lab
        .kirt(["quarantine", "status", "-n", &ns, "-o", "json"])
        .ok()
        .json();
    assert_eq!(st["pods"], serde_json::json!([]));

    // release again: succeeds and changes nothing while the pod exists; once the ReplicaSet has
    // removed it and kirt has nothing left there, it is "not found"
    let r = lab.kirt(["release", &victim, "-n", &ns, "--yes"]);
    match r.code() {
        0 => assert!(r.stdout().contains("nothing to release"), "{}", r.dump()),
        6 => assert!(!lab
            .kubectl(["get", "pod", &victim, "-n", &ns])
            .out
            .status
            .success()),
        _ => panic!("unexpected exit:\n{}", r.dump()),
    }
    assert!(netpols(&lab, &ns).is_empty());
}

/// `kubectl get pod --watch -o json` in the background: every version of the pod it sees.
struct PodWatch {
    child: std::process::Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl PodWatch {
    /// Starts the watch and waits until it has printed the pod's current version.
    fn start(lab: &Lab, ns: &str, name: &str) -> Self {
        let mut child = std::process::Command::new("kubectl")
            .env("KUBECONFIG", lab.kubeconfig())
            .args(["get", "pod", name, "-n", ns, "--watch", "-o", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("kubectl watch");
        let mut out = child.stdout.take().expect("watch stdout");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 8192];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let watch = PodWatch { child, seen };
        wait_until(Duration::from_secs(30), "the pod watch to start", || {
            !watch.versions().is_empty()
        });
        watch
    }

    fn versions(&self) -> Vec<Value> {
        let bytes = self.seen.lock().unwrap().clone();
        serde_json::Deserializer::from_slice(&bytes)
            .into_iter::<Value>()
            .filter_map(Result::ok)
            .collect()
    }

    /// The first version seen that satisfies `f` (waits up to 30 s for it).
    fn first(mut self, f: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait_until(Duration::from_secs(30), "a matching pod version", || {
            found = self.versions().into_iter().find(|p| f(p));
            found.is_some()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        found.expect("found")
    }
}

#[test]
fn allow_all_policy_is_a_breach_until_exclusive_and_release_restores_it() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-excl");
    lab.apply(&ns, &standalone("suspect"));
    lab.apply(&ns, ALLOW_ALL);
    lab.apply(
        &ns,
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-app}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 5432}]}]
"#,
    );
    lab.wait_pod_running(&ns, "suspect");
    let spec_of = |name: &str| {
        lab.kubectl([
            "get",
            "networkpolicy",
            name,
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec}",
        ])
        .ok()
        .stdout()
    };
    let allow_spec = spec_of("allow-all");
    let other_rv = netpols(&lab, &ns)["db-from-app"].clone();

    // not yet quarantined: not isolated
    lab.kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .code_is(3);
    lab.kirt(["quarantine", "suspect", "-n", &ns, "--yes"]).ok();
    let r = lab
        .kirt(["quarantine", "verify", "suspect", "-n", &ns, "-o", "json"])
        .code_is(3);
    let v = r.json();
    assert_eq!(v["isolated"], false);
    assert_eq!(v["breaches"][0]["policy"], "allow-all", "{v:#}");
    assert_eq!(v["deny_all"], serde_json::json!(["kirt-quarantine"]));
    let t = lab
        .kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .code_is(3)
        .stdout();
    assert!(
        t.contains("allow-all") && t.contains("ingress from any source"),
        "{t}"
    );

    // --exclusive on the quarantined pod narrows the breaching policy only
    let r = lab
        .kirt(["quarantine", "suspect", "-n", &ns, "--exclusive", "--yes"])
        .ok();
    assert!(r.stdout().contains("allow-all: narrowed"), "{}", r.dump());
    let narrowed = lab.get_json(&["networkpolicy", "allow-all", "-n", &ns]);
    assert_eq!(
        narrowed["spec"]["podSelector"]["matchExpressions"],
        serde_json::json!([{"key": QLABEL, "operator": "DoesNotExist"}])
    );
    assert!(annotations(&narrowed).contains_key("kirt.dev/original-spec"));
    assert_eq!(netpols(&lab, &ns)["db-from-app"], other_rv);
    lab.kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .ok();

    // release puts the spec back exactly and removes kirt's annotation and policy
    lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert_eq!(spec_of("allow-all"), allow_spec);
    // twice: nothing changes
    let (pod_before, pols) = (pod_desired(&lab, &ns, "suspect"), netpols(&lab, &ns));
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("nothing to release"), "{}", r.dump());
    assert_eq!(pod_desired(&lab, &ns, "suspect"), pod_before);
    assert_eq!(netpols(&lab, &ns), pols);
    let restored = lab.get_json(&["networkpolicy", "allow-all", "-n", &ns]);
    assert!(!annotations(&restored).contains_key("kirt.dev/original-spec"));
    assert_eq!(netpols(&lab, &ns)["db-from-app"], other_rv);
    assert!(!netpols(&lab, &ns).contains_key("kirt-quarantine"));
    assert_eq!(
        labels(&pod(&lab, &ns, "suspect")),
        BTreeMap::from([
            ("app".to_string(), "suspect".to_string()),
            ("role".to_string(), "worker".to_string())
        ])
    );
}

#[test]
fn dry_run_changes_nothing_and_prints_the_policy_and_patch() {
    let Some(lab) = lab() else { return };
    let _nodes = nodes_to_myself(&lab);
    let ns = lab.namespace("quar-dry");
    lab.apply(&ns, &standalone("suspect"));
    lab.apply(&ns, ALLOW_ALL);
    lab.wait_pod_running(&ns, "suspect");
    let before = pod(&lab, &ns, "suspect");
    let pols = netpols(&lab, &ns);
    let node = before["spec"]["nodeName"].as_str().unwrap().to_string();

    // no --yes needed for a preview
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--dry-run",
            "--exclusive",
            "--allow-dns",
            "--cordon-node",
        ])
        .ok();
    let out = r.stdout();
    for want in [
        "would quarantine",
        "networkpolicy ",
        "kirt-quarantine: would create",
        "kirt-quarantine-suspect: would create",
        "allow-all: would narrow",
        "merge patch for pod",
        "kirt.dev/original-labels",
        "podSelector",
        "nothing was changed",
    ] {
        assert!(out.contains(want), "missing {want:?}:\n{}", r.dump());
    }
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&before));
    assert_eq!(netpols(&lab, &ns), pols);
    let unsched = lab
        .kubectl(["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"])
        .ok()
        .stdout();
    assert_ne!(unsched, "true");

    // the same for release of a really quarantined pod
    lab.kirt(["quarantine", "suspect", "-n", &ns, "--yes"]).ok();
    let (q, pols) = (pod(&lab, &ns, "suspect"), netpols(&lab, &ns));
    let r = lab
        .kirt(["release", "suspect", "-n", &ns, "--dry-run"])
        .ok();
    assert!(
        r.stdout().contains("would release") && r.stdout().contains("\"app\": \"suspect\""),
        "{}",
        r.dump()
    );
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&q));
    assert_eq!(netpols(&lab, &ns), pols);
}

#[test]
fn refuses_without_a_terminal_or_yes() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-tty");
    lab.apply(&ns, &standalone("suspect"));
    lab.wait_pod_running(&ns, "suspect");
    let before = pod(&lab, &ns, "suspect");
    let r = lab.kirt(["quarantine", "suspect", "-n", &ns]).code_is(4);
    assert!(r.stderr().contains("--yes"), "{}", r.dump());
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&before));
    assert!(netpols(&lab, &ns).is_empty());

    lab.kirt(["quarantine", "suspect", "-n", &ns, "--yes"]).ok();
    let q = pod(&lab, &ns, "suspect");
    lab.kirt(["release", "suspect", "-n", &ns]).code_is(4);
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&q));
}

#[test]
fn errors_name_what_is_missing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-errs");
    let r = lab
        .kirt(["quarantine", "nope", "-n", &ns, "--yes"])
        .code_is(6);
    assert!(
        r.stderr().contains(&format!("pod {}/nope", &*ns)),
        "{}",
        r.dump()
    );
    let r = lab
        .kirt([
            "quarantine",
            "nope",
            "-n",
            "quar-no-such-namespace",
            "--yes",
        ])
        .code_is(6);
    assert!(
        r.stderr().contains("namespace quar-no-such-namespace"),
        "{}",
        r.dump()
    );
    let r = lab
        .kirt(["quarantine", "-l", "app=none", "-n", &ns, "--yes"])
        .code_is(6);
    assert!(r.stderr().contains("app=none"), "{}", r.dump());
    lab.kirt(["quarantine", "verify", "nope", "-n", &ns])
        .code_is(6);
    lab.kirt(["release", "nope", "-n", &ns, "--yes"]).code_is(6);
    // a pod labelled by someone else: release refuses unless --force
    lab.apply(
        &ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: manual, labels: {app: manual, kirt.dev/quarantined: "true"}}
spec: {containers: [{name: c, image: "busybox:1.36"}]}
"#,
    );
    let r = lab
        .kirt(["release", "manual", "-n", &ns, "--yes"])
        .code_is(4);
    assert!(r.stderr().contains("--force"), "{}", r.dump());
    assert_eq!(labels(&pod(&lab, &ns, "manual"))[QLABEL], "true");
    lab.kirt(["release", "manual", "-n", &ns, "--yes", "--force"])
        .ok();
    assert_eq!(
        labels(&pod(&lab, &ns, "manual")),
        BTreeMap::from([("app".to_string(), "manual".to_string())])
    );
    // unreachable apiserver
    let path = lab.unreachable_kubeconfig();
    lab.kirt([
        "quarantine",
        "x",
        "-n",
        &ns,
        "--yes",
        "--kubeconfig",
        path.to_str().unwrap(),
    ])
    .code_is(8);
}

#[test]
fn identity_with_only_get_pods_is_told_what_is_missing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-rbac");
    lab.apply(&ns, &standalone("suspect"));
    lab.apply(
        &ns,
        &r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pod-reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: NS}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: no-patch}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, create, update, patch, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: no-patch}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: no-patch}
subjects: [{kind: ServiceAccount, name: nopatch, namespace: NS}]
"#
        .replace("NS", &ns),
    );
    lab.wait_pod_running(&ns, "suspect");
    let before = pod(&lab, &ns, "suspect");

    let token = lab.service_account_token(&ns, "reader");
    let kc = lab.kubeconfig_for_token("reader", &token);
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--yes",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .code_is(7);
    assert!(
        r.stderr().contains("cannot get networkpolicies")
            && r.stderr()
                .contains(&format!("serviceaccount:{}:reader", &*ns)),
        "{}",
        r.dump()
    );
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&before));

    // with policy rights but no `patch pods`: the verb named is patch
    let token = lab.service_account_token(&ns, "nopatch");
    let kc = lab.kubeconfig_for_token("nopatch", &token);
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--yes",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .code_is(7);
    assert!(r.stderr().contains("cannot patch pods"), "{}", r.dump());
    assert_eq!(pod_desired(&lab, &ns, "suspect"), desired_state(&before));
}

#[test]
fn selector_quarantines_fifty_pods_and_reports_each() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-many");
    lab.apply(&ns, &deployment("x", 50));
    lab.rollout_status(&ns, "deployment/x");
    let pods = lab.pod_names(&ns, "app=x");
    assert_eq!(pods.len(), 50);

    let t = Instant::now();
    let r = lab
        .kirt([
            "quarantine",
            "-l",
            "app=x",
            "-n",
            &ns,
            "--yes",
            "-o",
            "json",
        ])
        .ok();
    eprintln!("quarantine of 50 pods took {:?}", t.elapsed());
    let v = r.json();
    assert_eq!(v["quarantined"], 50, "{v:#}");
    assert_eq!(v["failed"], 0);
    let mut reported: Vec<String> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["outcome"], "done", "{p:#}");
            p["pod"].as_str().unwrap().to_string()
        })
        .collect();
    reported.sort();
    let mut want = pods.clone();
    want.sort();
    assert_eq!(reported, want);
    let mut q = lab.pod_names(&ns, &format!("{QLABEL}=true"));
    q.sort();
    assert_eq!(q, want);

    // release by the original selector
    let t = Instant::now();
    let r = lab
        .kirt(["release", "-l", "app=x", "-n", &ns, "--yes", "-o", "json"])
        .ok();
    eprintln!("release of 50 pods took {:?}", t.elapsed());
    assert_eq!(r.json()["released"], 50, "{}", r.dump());
    assert!(lab.pod_names(&ns, &format!("{QLABEL}=true")).is_empty());
    assert!(netpols(&lab, &ns).is_empty());
}

#[test]
fn standalone_statefulset_and_daemonset_pods_behave_as_the_runbook_says() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-kinds");
    lab.apply(&ns, &standalone("lone"));
    lab.apply(
        &ns,
        r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: db, image: "postgres:16"}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: agent, image: "busybox:1.36"}]}
"#,
    );
    lab.rollout_status(&ns, "statefulset/db");
    lab.rollout_status(&ns, "daemonset/agent");
    lab.wait_pod_running(&ns, "lone");
    let agents = lab.pod_names(&ns, "app=agent");
    let agent = agents[0].clone();
    let agent_node = pod(&lab, &ns, &agent)["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();

    for p in ["lone", "db-0", agent.as_str()] {
        lab.kirt(["quarantine", p, "-n", &ns, "--yes"]).ok();
    }
    // DaemonSet: a replacement on the same node
    wait_until(Duration::from_secs(60), "DaemonSet replacement", || {
        let now = lab.pod_names(&ns, "app=agent");
        now.len() == agents.len()
            && !now.contains(&agent)
            && now
                .iter()
                .any(|p| pod(&lab, &ns, p)["spec"]["nodeName"] == agent_node.as_str())
    });
    // StatefulSet: no replacement (the name db-0 is taken); standalone: nothing replaces it
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.pod_names(&ns, "app=db"), ["db-1"]);
    assert!(lab.pod_names(&ns, "app=lone").is_empty());
    for p in ["lone", "db-0", agent.as_str()] {
        lab.wait_pod_running(&ns, p);
        // each controller releases its pod in its own time (the DaemonSet's already has: it
        // made a replacement)
        wait_until(
            Duration::from_secs(60),
            &format!("{p} without an owner"),
            || {
                pod(&lab, &ns, p)["metadata"]["ownerReferences"]
                    .as_array()
                    .is_none_or(|o| o.is_empty())
            },
        );
    }
    let st = lab
        .kirt(["quarantine", "status", "-n", &ns, "-o", "json"])
        .ok()
        .json();
    assert_eq!(st["pods"].as_array().unwrap().len(), 3, "{st:#}");

    // release: the controllers adopt their pods again; the DaemonSet drops its surplus pod
    lab.kirt([
        "release",
        "-l",
        "app in (lone,db,agent)",
        "-n",
        &ns,
        "--yes",
    ])
    .ok();
    let owner_kind = |p: &str| pod(&lab, &ns, p)["metadata"]["ownerReferences"][0]["kind"].clone();
    wait_until(
        Duration::from_secs(60),
        "StatefulSet re-adopts db-0",
        || owner_kind("db-0") == "StatefulSet",
    );
    // the DaemonSet keeps one of the two pods on that node (its choice), each owned by it
    wait_until(Duration::from_secs(60), "one owned agent per node", || {
        let now = lab.pod_names(&ns, "app=agent");
        now.len() == agents.len()
            && now.iter().all(|p| {
                lab.kubectl([
                    "get",
                    "pod",
                    p,
                    "-n",
                    &ns,
                    "-o",
                    "jsonpath={.metadata.ownerReferences[0].kind}",
                ])
                .stdout()
                    == "DaemonSet"
            })
    });
    assert_eq!(lab.pod_names(&ns, "app=db").len(), 2);
    assert_eq!(lab.pod_names(&ns, "app=lone"), ["lone"]);
    assert!(netpols(&lab, &ns).is_empty());
}

#[test]
fn allowances_and_cordon_are_written_and_removed() {
    let Some(lab) = lab() else { return };
    let _nodes = nodes_to_myself(&lab);
    let ns = lab.namespace("quar-allow");
    lab.apply(&ns, &standalone("suspect"));
    lab.apply(&ns, &standalone("neighbour"));
    lab.wait_pod_running(&ns, "suspect");
    let node = pod(&lab, &ns, "suspect")["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();
    let node_unsched = || {
        lab.kubectl(["get", "node", &node, "-o", "jsonpath={.spec.unschedulable}"])
            .ok()
            .stdout()
    };
    // another test (or person) may have cordoned it; then kirt must leave it alone
    let was_cordoned = node_unsched() == "true";

    lab.kirt([
        "quarantine",
        "suspect",
        "-n",
        &ns,
        "--yes",
        "--allow-dns",
        "--allow-from",
        "198.51.100.7/32",
        "--cordon-node",
        "--keep-labels",
    ])
    .ok();
    let cordoned = node_unsched() == "true";
    let node_anns = annotations(&lab.get_json(&["node", &node]));
    // release first so the node is cordoned as briefly as possible, then check what was seen
    let q = pod(&lab, &ns, "suspect");
    let allow = lab.get_json(&["networkpolicy", "kirt-quarantine-suspect", "-n", &ns]);
    let verify = lab
        .kirt(["quarantine", "verify", "suspect", "-n", &ns, "-o", "json"])
        .json();
    lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    let uncordoned = node_unsched() != "true";

    assert!(cordoned);
    if !was_cordoned {
        assert!(
            node_anns["kirt.dev/cordoned-by-quarantine"].contains(&format!("{}/suspect", &*ns)),
            "{node_anns:?}"
        );
        assert!(uncordoned);
    }
    // --keep-labels: originals kept, quarantine labels added
    let l = labels(&q);
    assert_eq!(l["app"], "suspect");
    assert_eq!(l[QLABEL], "true");
    assert_eq!(l["kirt.dev/quarantine-pod"], "suspect");
    assert_eq!(
        allow["spec"]["ingress"][0]["from"][0]["ipBlock"]["cidr"],
        "198.51.100.7/32"
    );
    assert_eq!(allow["spec"]["egress"][0]["ports"][0]["port"], 53);
    // the allowance is declared, the pod is isolated apart from it
    assert_eq!(verify["isolated"], true, "{verify:#}");
    assert_eq!(verify["allowances"][0]["policy"], "kirt-quarantine-suspect");
    // released: everything gone, labels exact
    assert!(netpols(&lab, &ns).is_empty());
    assert_eq!(
        labels(&pod(&lab, &ns, "suspect")),
        BTreeMap::from([
            ("app".to_string(), "suspect".to_string()),
            ("role".to_string(), "worker".to_string())
        ])
    );
}

#[test]
fn release_of_a_deleted_pod_removes_what_kirt_left() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("quar-gone");
    lab.apply(&ns, &standalone("suspect"));
    lab.apply(&ns, ALLOW_ALL);
    lab.wait_pod_running(&ns, "suspect");
    let allow_spec = lab.get_json(&["networkpolicy", "allow-all", "-n", &ns])["spec"].clone();
    lab.kirt([
        "quarantine",
        "suspect",
        "-n",
        &ns,
        "--allow-dns",
        "--exclusive",
        "--yes",
    ])
    .ok();
    assert_eq!(netpols(&lab, &ns).len(), 3);
    lab.kubectl(["delete", "pod", "suspect", "-n", &ns, "--wait=true"])
        .ok();
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("no longer exists"), "{}", r.dump());
    assert_eq!(netpols(&lab, &ns).keys().collect::<Vec<_>>(), ["allow-all"]);
    assert_eq!(
        lab.get_json(&["networkpolicy", "allow-all", "-n", &ns])["spec"],
        allow_spec
    );
    // nothing left: now it is simply not found
    lab.kirt(["release", "suspect", "-n", &ns, "--yes"])
        .code_is(6);
}

/// Deletes cluster-scoped test objects when dropped (namespaces clean up the rest).
struct ClusterObjects<'a>(&'a Lab, Vec<String>);

impl Drop for ClusterObjects<'_> {
    fn drop(&mut self) {
        for o in &self.1 {
            let _ = self.0.kubectl(["delete", o, "--ignore-not-found"]);
        }
    }
}

#[test]
fn some_pods_failing_is_partial_with_a_row_each() {
    let Some(lab) = lab() else { return };
    let ok_ns = lab.namespace("quar-part-ok");
    let denied_ns = lab.namespace("quar-part-no");
    let app = common::unique("quar-p");
    for ns in [&ok_ns, &denied_ns] {
        for i in 0..2 {
            lab.apply(
                ns,
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: {app}}}}}\nspec: {{containers: [{{name: c, image: \"busybox:1.36\"}}]}}\n"
                ),
            );
        }
    }
    // list pods everywhere; write only in ok_ns
    let _cluster = ClusterObjects(
        &lab,
        vec![
            format!("clusterrole/{app}"),
            format!("clusterrolebinding/{app}"),
        ],
    );
    lab.apply(
        &ok_ns,
        &r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: APP}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: APP}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: APP}
subjects: [{kind: ServiceAccount, name: responder, namespace: NS}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: responder}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, patch]}
- {apiGroups: [""], resources: [events], verbs: [create]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, create, patch, delete]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: responder}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: responder}
subjects: [{kind: ServiceAccount, name: responder, namespace: NS}]
"#
        .replace("APP", &app)
        .replace("NS", &ok_ns),
    );
    let token = lab.service_account_token(&ok_ns, "responder");
    let kc = lab.kubeconfig_for_token("responder", &token);
    // the simulated kubelet binds the new pods (spec.nodeName) and starts them in its own time:
    // let it finish before taking the "before" picture
    for p in ["p0", "p1"] {
        lab.wait_pod_running(&denied_ns, p);
    }
    let before: Vec<Value> = ["p0", "p1"]
        .iter()
        .map(|p| pod_desired(&lab, &denied_ns, p))
        .collect();
    let sel = format!("app={app}");
    let r = lab
        .kirt([
            "quarantine",
            "-A",
            "-l",
            &sel,
            "--yes",
            "-o",
            "json",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ])
        .code_is(5);
    let v = r.json();
    assert_eq!(v["quarantined"], 2, "{v:#}");
    assert_eq!(v["failed"], 2, "{v:#}");
    for row in v["pods"].as_array().unwrap() {
        if row["namespace"] == denied_ns.name.as_str() {
            assert_eq!(row["outcome"], "failed");
            let d = row["detail"].as_str().unwrap();
            assert!(d.contains("cannot get networkpolicies"), "{d}");
        } else {
            assert_eq!(row["outcome"], "done", "{row:#}");
        }
    }
    assert_eq!(lab.pod_names(&ok_ns, &format!("{QLABEL}=true")).len(), 2);
    let after: Vec<Value> = ["p0", "p1"]
        .iter()
        .map(|p| pod_desired(&lab, &denied_ns, p))
        .collect();
    assert_eq!(before, after);
}

/// A pod deleted and re-created under the same name (a StatefulSet pod, an attacker's
/// replacement) between kirt's read and its patch is not quarantined: the patch carries the
/// UID kirt read (409 on the namesake), and the error says what happened.
#[test]
fn a_pod_recreated_under_the_same_name_is_not_quarantined() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("q-recreated");
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: victim, labels: {app: web}}\nspec: {containers: [{name: c, image: nginx}]}\n";
    lab.apply(&ns, yaml);
    let read: k8s_openapi::api::core::v1::Pod =
        serde_json::from_value(pod(&lab, &ns, "victim")).unwrap();
    lab.kubectl([
        "delete",
        "pod",
        "victim",
        "-n",
        &ns,
        "--grace-period=0",
        "--force",
    ])
    .ok();
    lab.apply(&ns, yaml);
    let now = pod(&lab, &ns, "victim");
    assert_ne!(
        now["metadata"]["uid"].as_str(),
        read.metadata.uid.as_deref(),
        "the pod was not re-created"
    );

    let _ = rustls::crypto::ring::default_provider().install_default();
    let err = common::block_on(async {
        let ctx = kirt::Ctx::new(kirt::k8s::KubeOptions {
            kubeconfig: Some(lab.kubeconfig().into()),
            ..Default::default()
        });
        let cluster = ctx.cluster().await.unwrap();
        let spec = kirt::actions::quarantine::QuarantineSpec::default();
        kirt::actions::quarantine::apply::quarantine_pod(
            cluster,
            false,
            &spec,
            &read,
            "kirt-test",
            "2026-11-27T00:00:00Z",
        )
        .await
    })
    .expect_err("the namesake was quarantined");
    assert!(err.to_string().contains("re-created"), "{err}");
    let after = pod(&lab, &ns, "victim");
    assert!(!labels(&after).contains_key(QLABEL), "{after:#}");
    assert_eq!(labels(&after).get("app").map(String::as_str), Some("web"));
}
