//! `kirt quarantine --revoke-credentials / --isolate-node / --delete-pod`, `kirt node`, and their
//! release, against the lab apiserver: a stolen legacy token is used with the real kubectl before
//! and after, SubjectAccessReviews (made with kubectl) say what the account may still do, and
//! every binding and node is compared with kubectl's JSON before and after.

use std::time::Duration;

use serde_json::Value;

use crate::common::k8s::{annotations, desired_state, labels, nodes_to_myself, NodeGuard};
use crate::common::{self, lab, wait_until, Lab};

/// A Namespace `ns` with ServiceAccount `victim` (and its legacy token), bound by
/// - RoleBinding `shared` (list secrets in `ns`) together with User alice,
/// - ClusterRoleBinding `<unique>` (list nodes) naming only the account,
///
/// and pods `suspect` and `sibling` running as it. Returns (stolen token, ClusterRoleBinding).
fn victim_setup<'a>(lab: &'a Lab, ns: &str) -> (String, ClusterObjects<'a>) {
    let token = lab.service_account_token(ns, "victim");
    let crb = common::unique("k11-nodes");
    lab.apply(
        ns,
        &r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: secret-lister}
rules: [{apiGroups: [""], resources: [secrets], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: shared}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: secret-lister}
subjects: [{kind: ServiceAccount, name: victim}, {kind: User, name: alice, apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: CRB}
rules: [{apiGroups: [""], resources: [nodes], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: CRB}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: CRB}
subjects: [{kind: ServiceAccount, name: victim, namespace: NS}]
---
apiVersion: v1
kind: Pod
metadata: {name: suspect, labels: {app: shop}}
spec: {serviceAccountName: victim, containers: [{name: c, image: "nginx:1.25"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sibling, labels: {app: shop}}
spec: {serviceAccountName: victim, containers: [{name: c, image: "nginx:1.25"}]}
"#
        .replace("CRB", &crb)
        .replace("NS", ns),
    );
    lab.wait_pod_running(ns, "suspect");
    lab.wait_pod_running(ns, "sibling");
    let objects = ClusterObjects(
        lab,
        vec![
            format!("clusterrolebinding/{crb}"),
            format!("clusterrole/{crb}"),
        ],
    );
    (token, objects)
}

/// Deletes cluster-scoped test objects when dropped (namespaces clean up the rest).
struct ClusterObjects<'a>(&'a Lab, Vec<String>);

impl ClusterObjects<'_> {
    fn crb(&self) -> &str {
        self.1[0].trim_start_matches("clusterrolebinding/")
    }
}

impl Drop for ClusterObjects<'_> {
    fn drop(&mut self) {
        for o in &self.1 {
            let _ = self.0.kubectl(["delete", o, "--ignore-not-found"]);
        }
    }
}

/// kubectl's JSON of both bindings, whole.
fn bindings(lab: &Lab, ns: &str, crb: &str) -> (Value, Value) {
    (
        lab.get_json(&["rolebinding", "shared", "-n", ns]),
        lab.get_json(&["clusterrolebinding", crb]),
    )
}

/// Asserts that the shared RoleBinding and the ClusterRoleBinding `crb` are again as `before`
/// (what kirt could change: metadata and subjects, not resourceVersion); returns them as they are.
fn assert_bindings_as(lab: &Lab, ns: &str, crb: &str, before: &(Value, Value)) -> (Value, Value) {
    let after = bindings(lab, ns, crb);
    assert_eq!(desired_state(&after.0), desired_state(&before.0));
    assert_eq!(desired_state(&after.1), desired_state(&before.1));
    after
}

fn lists_secrets(lab: &Lab, token: &str, ns: &str) -> common::Run {
    lab.kubectl_with_token(token, ["get", "secrets", "-n", ns, "-o", "name"])
}

#[test]
fn revoked_token_is_rejected_and_release_restores_the_bindings_exactly() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-main");
    let (token, objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let secret = lab
        .kubectl([
            "get",
            "sa",
            "victim",
            "-n",
            &ns,
            "-o",
            "jsonpath={.secrets[0].name}",
        ])
        .ok()
        .stdout();
    // the stolen token works before
    lists_secrets(&lab, &token, &ns).ok();
    let before = bindings(&lab, &ns, &crb);

    // without --yes and a terminal: refused, and the refusal shows the whole preview
    let r = lab
        .kirt(["quarantine", "suspect", "-n", &ns, "--revoke-credentials"])
        .code_is(4);
    let err = r.stderr();
    for want in [
        format!("{}/sibling", &*ns),
        format!("remove {}/victim from RoleBinding {}/shared", &*ns, &*ns),
        format!("ClusterRoleBinding {crb}"),
        format!("delete legacy token Secret {}/{secret}", &*ns),
    ] {
        assert!(err.contains(&want), "missing {want:?}:\n{}", r.dump());
    }
    // a dry run changes nothing (every binding's JSON, the token) and names the other pod too
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--dry-run",
        ])
        .ok();
    assert!(
        r.stdout().contains("sibling") && r.stdout().contains("would remove"),
        "{}",
        r.dump()
    );
    assert_eq!(bindings(&lab, &ns, &crb), before);
    lists_secrets(&lab, &token, &ns).ok();

    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--yes",
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    let c = &v["credentials"][0];
    assert_eq!(c["blast_radius"][0], format!("{}/sibling", &*ns), "{v:#}");
    let outcomes: Vec<&Value> = c["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| &b["outcome"])
        .collect();
    assert_eq!(outcomes, ["done", "done"], "{v:#}");
    let t = &c["token_secrets"][0];
    assert!(
        t["detail"].as_str().unwrap().contains("unauthenticated"),
        "{v:#}"
    );
    assert!(!r.stdout().contains(&token), "the token is printed");

    // the stolen token is rejected by the real kubectl: not forbidden, unauthenticated
    let r = lists_secrets(&lab, &token, &ns);
    assert_ne!(r.code(), 0, "{}", r.dump());
    assert!(r.stderr().contains("Unauthorized"), "{}", r.dump());
    // a SubjectAccessReview for the account is denied for both permissions
    assert!(!lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    assert!(!lab.account_allowed(&ns, "victim", "list", "nodes", ""));
    // the other subject of the shared binding keeps its access
    assert!(lab.subject_allowed("alice", &[], "list", "secrets", &ns));
    let rb = lab.get_json(&["rolebinding", "shared", "-n", &ns]);
    assert_eq!(
        rb["subjects"],
        serde_json::json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}])
    );
    // the binding that named only the account is kept, with no subject
    let crb_now = lab.get_json(&["clusterrolebinding", &crb]);
    assert!(
        crb_now["subjects"].as_array().is_none_or(|s| s.is_empty()),
        "{crb_now:#}"
    );
    assert!(annotations(&crb_now).contains_key("kirt.dev/original-subjects"));

    // verify: contained (SubjectAccessReviews, the token Secret gone)
    let v = lab
        .kirt(["quarantine", "verify", "suspect", "-n", &ns, "-o", "json"])
        .ok()
        .json();
    assert_eq!(v["credentials"]["contained"], true, "{v:#}");
    assert_eq!(v["credentials"]["revoked"], true, "{v:#}");
    assert_eq!(v["credentials"]["token_secrets"][0]["ok"], true, "{v:#}");

    // release: the bindings exactly as before (kubectl's JSON, all but resourceVersion and
    // managedFields), kirt's records gone, and the new token the token controller issued named
    wait_until(Duration::from_secs(30), "a new token Secret", || {
        let now = lab
            .kubectl([
                "get",
                "sa",
                "victim",
                "-n",
                &ns,
                "-o",
                "jsonpath={.secrets[*].name}",
            ])
            .ok()
            .stdout();
        !now.trim().is_empty() && !now.contains(&secret)
    });
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(
        r.stdout().contains("new tokens were issued"),
        "{}",
        r.dump()
    );
    let after = assert_bindings_as(&lab, &ns, &crb, &before);
    assert_eq!(after.0["subjects"], before.0["subjects"]);
    assert_eq!(after.1["subjects"], before.1["subjects"]);
    let sa = lab.get_json(&["sa", "victim", "-n", &ns]);
    assert!(
        !annotations(&sa).contains_key("kirt.dev/credentials-revoked"),
        "{sa:#}"
    );
    assert!(lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    // the old token stays dead
    assert_ne!(lists_secrets(&lab, &token, &ns).code(), 0);
}

#[test]
fn a_group_binding_is_reported_and_fails_verify() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-group");
    lab.apply(
        &ns,
        &r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-getter}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: every-account}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-getter}
subjects: [{kind: Group, name: "system:serviceaccounts:NS", apiGroup: rbac.authorization.k8s.io}]
---
apiVersion: v1
kind: Pod
metadata: {name: suspect}
spec: {containers: [{name: c, image: "nginx:1.25"}]}
"#
        .replace("NS", &ns),
    );
    lab.wait_pod_running(&ns, "suspect");
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--yes",
        ])
        .ok();
    let binding = format!("RoleBinding {}/every-account", &*ns);
    assert!(
        r.stdout()
            .contains(&format!("NOT removable per account: {binding}")),
        "{}",
        r.dump()
    );
    // the group binding is still there: verify fails naming it
    let r = lab
        .kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .code_is(3);
    assert!(
        r.stdout().contains(&binding) && r.stdout().contains("NOT contained"),
        "{}",
        r.dump()
    );
    lab.kubectl(["delete", "rolebinding", "every-account", "-n", &ns])
        .ok();
    lab.kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .ok();
}

/// A responder (impersonated) with what revocation needs, its `bind` on one ClusterRole granted
/// by a ClusterRoleBinding of its own (so that the test can take it away). Returns its user name
/// and the name of its ClusterRole (and `NAME-bind` of the `bind` grant).
fn responder(
    lab: &Lab,
    ns: &str,
    objects: &mut ClusterObjects<'_>,
    bind_cluster_role: &str,
) -> (String, String) {
    let name = common::unique("k11-resp");
    lab.apply(
        ns,
        &r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: responder}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: NAME}
rules:
- {apiGroups: [""], resources: [pods], verbs: [get, list, patch]}
- {apiGroups: [""], resources: [events], verbs: [create]}
- {apiGroups: [networking.k8s.io], resources: [networkpolicies], verbs: [get, list, create, patch, delete]}
- {apiGroups: [rbac.authorization.k8s.io], resources: [rolebindings, clusterrolebindings], verbs: [get, list, patch]}
- {apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [bind]}
- {apiGroups: [""], resources: [secrets], verbs: [get, list, delete]}
- {apiGroups: [""], resources: [serviceaccounts], verbs: [get, list, patch]}
- {apiGroups: [authentication.k8s.io], resources: [tokenreviews], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: NAME}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: NAME}
subjects: [{kind: ServiceAccount, name: responder, namespace: NS}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: NAME-bind}
rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind], resourceNames: [BIND]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: NAME-bind}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: NAME-bind}
subjects: [{kind: ServiceAccount, name: responder, namespace: NS}]
"#
        .replace("NAME", &name)
        .replace("BIND", bind_cluster_role)
        .replace("NS", ns),
    );
    for o in ["clusterrolebinding", "clusterrole"] {
        objects.1.push(format!("{o}/{name}"));
        objects.1.push(format!("{o}/{name}-bind"));
    }
    (format!("system:serviceaccount:{ns}:responder"), name)
}

#[test]
fn a_concurrent_change_is_merged_and_a_failed_binding_is_reported_and_undone() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-race");
    let (_token, mut objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let (who, role) = responder(&lab, &ns, &mut objects, &crb);
    let bind_binding = format!("clusterrolebinding/{role}-bind");
    let before = bindings(&lab, &ns, &crb);
    let as_flag = format!("--as={who}");
    // kirt reads the bindings, shows the preview and waits for the answer; meanwhile someone
    // adds carol to the shared binding, and the responder loses `bind` on the ClusterRole
    let (r, question) = lab.kirt_confirming(
        &[&as_flag, "quarantine", "suspect", "-n", &ns, "--revoke-credentials", "-o", "json"],
        || {
            lab.kubectl([
                "patch", "rolebinding", "shared", "-n", &ns, "--type", "json", "-p",
                r#"[{"op": "add", "path": "/subjects/-", "value": {"kind": "User", "name": "carol", "apiGroup": "rbac.authorization.k8s.io"}}]"#,
            ])
            .ok();
            lab.kubectl(["delete", &bind_binding]).ok();
            wait_until(Duration::from_secs(30), "the responder's bind to be gone", || {
                lab.kubectl(["auth", "can-i", "bind", &format!("clusterroles/{crb}"), "--as", &who])
                    .stdout()
                    .trim()
                    == "no"
            });
        },
    );
    assert!(question.contains("sibling"), "{question}");
    let r = r.code_is(5);
    let v = r.json();
    let b = &v["credentials"][0]["bindings"];
    // the shared binding: written from a fresh read (resourceVersion conflict), carol kept
    assert_eq!(b[0]["name"], "shared", "{v:#}");
    assert_eq!(b[0]["outcome"], "done", "{v:#}");
    let names = |x: &Value| -> Vec<String> {
        x["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&lab.get_json(&["rolebinding", "shared", "-n", &ns])),
        ["alice", "carol"]
    );
    // the ClusterRoleBinding failed, naming the missing permission, and is untouched
    assert_eq!(b[1]["outcome"], "failed", "{v:#}");
    let detail = b[1]["detail"].as_str().unwrap();
    assert!(detail.contains("cannot bind clusterroles"), "{detail}");
    assert_eq!(lab.get_json(&["clusterrolebinding", &crb]), before.1);
    // the record on the account claims only what changed
    let sa = lab.get_json(&["sa", "victim", "-n", &ns]);
    let rec = &annotations(&sa)["kirt.dev/credentials-revoked"];
    assert!(rec.contains("shared") && !rec.contains(&crb), "{rec}");

    // release (as admin) undoes what changed: the account back in, carol's addition kept
    lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert_eq!(
        names(&lab.get_json(&["rolebinding", "shared", "-n", &ns])),
        ["victim", "alice", "carol"]
    );
    assert_eq!(
        desired_state(&lab.get_json(&["clusterrolebinding", &crb])),
        desired_state(&before.1)
    );
}

#[test]
fn a_missing_permission_is_named_before_anything_changes() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-perm");
    let (token, mut objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    // `bind` only on some other ClusterRole: changing the ClusterRoleBinding would escalate
    let (who, role) = responder(&lab, &ns, &mut objects, "view");
    let before = bindings(&lab, &ns, &crb);
    let pod = desired_state(&lab.get_json(&["pod", "suspect", "-n", &ns]));
    let r = lab
        .kirt([
            &format!("--as={who}"),
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--yes",
        ])
        .code_is(7);
    let err = r.stderr();
    assert!(
        err.contains("cannot bind clusterroles") && err.contains(&format!("ClusterRole {crb}")),
        "{}",
        r.dump()
    );
    // nothing changed: bindings, pod, policies, token
    assert_eq!(bindings(&lab, &ns, &crb), before);
    assert_eq!(
        desired_state(&lab.get_json(&["pod", "suspect", "-n", &ns])),
        pod
    );
    let pols = lab
        .kubectl(["get", "networkpolicy", "-n", &ns, "-o", "name"])
        .ok()
        .stdout();
    assert!(pols.trim().is_empty(), "{pols}");
    lists_secrets(&lab, &token, &ns).ok();
    // without `create tokenreviews` (checked with a SelfSubjectAccessReview)
    lab.kubectl([
        "patch",
        "clusterrole",
        &role,
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/rules/7"}]"#,
    ])
    .ok();
    let r = lab
        .kirt([
            &format!("--as={who}"),
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--yes",
        ])
        .code_is(7);
    assert!(
        r.stderr().contains("cannot create tokenreviews"),
        "{}",
        r.dump()
    );
    assert_eq!(bindings(&lab, &ns, &crb), before);
}

/// What kirt may change on a node: spec, labels, annotations (not the status the kubelet writes).
fn node_state(lab: &Lab, node: &str) -> Value {
    let n = lab.get_json(&["node", node]);
    serde_json::json!({"spec": n["spec"], "labels": n["metadata"]["labels"], "annotations": n["metadata"]["annotations"]})
}

#[test]
fn node_isolation_is_exactly_undone_and_someone_elses_cordon_stays() {
    let Some(lab) = lab() else { return };
    let _nodes = nodes_to_myself(&lab);
    let ns = lab.namespace("cred-node");
    lab.apply(&ns, "apiVersion: v1\nkind: Pod\nmetadata: {name: suspect}\nspec: {containers: [{name: c, image: 'nginx:1.25'}]}\n");
    lab.wait_pod_running(&ns, "suspect");
    let node = lab.get_json(&["pod", "suspect", "-n", &ns])["spec"]["nodeName"]
        .as_str()
        .unwrap()
        .to_string();
    let _guard = NodeGuard::new(&lab, vec![node.clone()]);
    let before = node_state(&lab, &node);

    lab.kirt([
        "quarantine",
        "suspect",
        "-n",
        &ns,
        "--isolate-node",
        "--yes",
    ])
    .ok();
    // the node controller taints a cordoned node too: let it finish before the node changes again
    let controller_taint = || {
        lab.get_json(&["node", &node])["spec"]["taints"]
            .to_string()
            .contains("node.kubernetes.io/unschedulable")
    };
    wait_until(
        Duration::from_secs(30),
        "the node controller's unschedulable taint",
        controller_taint,
    );
    let n = lab.get_json(&["node", &node]);
    assert_eq!(n["spec"]["unschedulable"], true);
    assert!(
        n["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "kirt.dev/quarantine"
                && t["value"] == "suspect"
                && t["effect"] == "NoSchedule"),
        "{n:#}"
    );
    assert_eq!(labels(&n)["kirt.dev/under-investigation"], "true");
    lab.kirt(["quarantine", "verify", "suspect", "-n", &ns])
        .ok();
    // a person isolates it too: releasing the pod leaves it isolated for them
    lab.kirt(["node", "quarantine", &node, "--yes"]).ok();
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("stays isolated"), "{}", r.dump());
    assert_eq!(
        lab.get_json(&["node", &node])["spec"]["unschedulable"],
        true
    );
    lab.kirt(["node", "release", &node, "--yes"]).ok();
    assert_eq!(node_state(&lab, &node), before);

    // someone else cordons the node first: after quarantine and release it stays cordoned
    lab.kubectl(["cordon", &node]).ok();
    wait_until(
        Duration::from_secs(30),
        "the node controller's unschedulable taint",
        controller_taint,
    );
    let cordoned = node_state(&lab, &node);
    lab.kirt([
        "quarantine",
        "suspect",
        "-n",
        &ns,
        "--isolate-node",
        "--yes",
    ])
    .ok();
    lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert_eq!(node_state(&lab, &node), cordoned);
    lab.kubectl(["uncordon", &node]).ok();
}

#[test]
fn delete_pod_needs_evidence_and_release_of_the_gone_pod_restores_credentials() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-delete");
    let (_token, objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let before = bindings(&lab, &ns, &crb);
    let store = lab.dir.path().join("evidence");
    std::fs::create_dir_all(&store).unwrap();
    let store_arg = store.to_str().unwrap();
    let pod = desired_state(&lab.get_json(&["pod", "suspect", "-n", &ns]));
    let r = lab
        .kirt(["quarantine", "suspect", "-n", &ns, "--delete-pod", "--yes"])
        .code_is(4);
    assert!(r.stderr().contains("--evidence-from"), "{}", r.dump());
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--delete-pod",
            "--evidence-from",
            store_arg,
            "--yes",
        ])
        .code_is(4);
    assert!(r.stderr().contains("no evidence bundle"), "{}", r.dump());
    assert_eq!(
        desired_state(&lab.get_json(&["pod", "suspect", "-n", &ns])),
        pod
    );

    lab.kirt([
        "evidence", "collect", "suspect", "-n", &ns, "--to", store_arg,
    ])
    .ok();
    let r = lab
        .kirt([
            "quarantine",
            "suspect",
            "-n",
            &ns,
            "--revoke-credentials",
            "--delete-pod",
            "--evidence-from",
            store_arg,
            "--yes",
        ])
        .ok();
    assert!(
        r.stdout().contains("pod deleted (evidence: evidence-"),
        "{}",
        r.dump()
    );
    wait_until(Duration::from_secs(60), "the pod to be gone", || {
        !lab.kubectl(["get", "pod", "suspect", "-n", &ns])
            .out
            .status
            .success()
    });
    assert!(!lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    // the pod is gone: release still puts the account back
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("no longer exists"), "{}", r.dump());
    assert_bindings_as(&lab, &ns, &crb, &before);
}

#[test]
fn playbook_revokes_journals_the_subjects_and_undo_restores_the_bindings() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-playbook");
    let (token, objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let before = bindings(&lab, &ns, &crb);
    let journal = lab.dir.path().join("runs");
    let j = journal.to_str().unwrap();
    let (nsp, ev) = (
        format!("namespace={}", &*ns),
        format!("evidence_to={}", lab.dir.path().join("evidence").display()),
    );
    let r = lab
        .kirt([
            "--journal",
            j,
            "run",
            "isolate-compromised-pod",
            "-p",
            &nsp,
            "-p",
            "pod=suspect",
            "-p",
            &ev,
            "-p",
            "revoke_credentials=true",
            "--yes",
            "-o",
            "json",
        ])
        .ok();
    let s = r.json();
    let st = common::step_statuses(&s);
    assert_eq!(st, ["ok", "ok", "ok", "skipped"], "{}", r.dump());
    assert!(!lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    assert_ne!(lists_secrets(&lab, &token, &ns).code(), 0);

    // the journal holds each binding's subjects before and after, and never the token
    let run_id = s["run_id"].as_str().unwrap();
    let text = std::fs::read_to_string(journal.join(format!("{run_id}.jsonl"))).unwrap();
    assert!(!text.contains(&token), "the journal holds the token");
    let mutations: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "mutation" && v["object"]["kind"] != "Pod")
        .collect();
    let shared = mutations
        .iter()
        .find(|m| m["object"]["kind"] == "RoleBinding")
        .unwrap_or_else(|| panic!("no RoleBinding mutation:\n{text}"));
    assert_eq!(shared["object"]["before"], before.0["subjects"]);
    assert_eq!(shared["object"]["after"].as_array().unwrap().len(), 1);
    assert_eq!(shared["undo"]["action"], "quarantine.release");
    assert!(mutations.iter().any(
        |m| m["object"]["kind"] == "ClusterRoleBinding" && m["object"]["name"] == crb.as_str()
    ));

    let r = lab
        .kirt(["--journal", j, "undo", run_id, "--yes", "-o", "json"])
        .ok();
    let items = r.json()["items"].as_array().unwrap().clone();
    assert!(
        items.iter().all(|i| i["status"] == "undone"),
        "{}",
        r.dump()
    );
    assert_bindings_as(&lab, &ns, &crb, &before);
    assert!(lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    assert_eq!(
        labels(&lab.get_json(&["pod", "suspect", "-n", &ns]))["app"],
        "shop"
    );
}

#[test]
fn a_selector_revokes_once_per_account_and_the_last_release_restores() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-sel");
    let (_token, objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let before = bindings(&lab, &ns, &crb);
    let v = lab
        .kirt([
            "quarantine",
            "-l",
            "app=shop",
            "-n",
            &ns,
            "--revoke-credentials",
            "--yes",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let creds = v["credentials"].as_array().unwrap();
    assert_eq!(creds.len(), 1, "{v:#}");
    assert_eq!(creds[0]["pods"].as_array().unwrap().len(), 2, "{v:#}");
    assert!(
        creds[0]["blast_radius"].as_array().unwrap().is_empty(),
        "{v:#}"
    );
    // one pod released: the other is still quarantined, so the account stays revoked
    let r = lab.kirt(["release", "suspect", "-n", &ns, "--yes"]).ok();
    assert!(r.stdout().contains("stays revoked"), "{}", r.dump());
    assert!(!lab.account_allowed(&ns, "victim", "list", "secrets", &ns));
    lab.kirt(["release", "-l", "app=shop", "-n", &ns, "--yes"])
        .ok();
    assert_bindings_as(&lab, &ns, &crb, &before);
}

#[test]
fn an_edited_record_grants_nothing_on_release() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("cred-forged");
    let (_token, objects) = victim_setup(&lab, &ns);
    let crb = objects.crb().to_string();
    let before = bindings(&lab, &ns, &crb);
    lab.kirt([
        "quarantine",
        "suspect",
        "-n",
        &ns,
        "--revoke-credentials",
        "--yes",
    ])
    .ok();
    // someone adds mallory to kirt's record of the ClusterRoleBinding's original subjects
    let forged = serde_json::json!({
        "subjects": [{"kind": "ServiceAccount", "name": "victim", "namespace": &*ns},
                     {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}],
        "revokedFor": [format!("{}/victim", &*ns)],
    });
    lab.kubectl([
        "annotate",
        "clusterrolebinding",
        &crb,
        "--overwrite",
        &format!("kirt.dev/original-subjects={forged}"),
    ])
    .ok();
    let edited = lab.get_json(&["clusterrolebinding", &crb]);
    // release: the preview says what it will not restore; the shared binding comes back, the
    // edited one is left alone, and mallory gains nothing
    let r = lab
        .kirt(["release", "suspect", "-n", &ns, "--yes"])
        .code_is(5);
    assert!(
        r.stdout()
            .contains(&format!("NOT restored: ClusterRoleBinding {crb}")),
        "{}",
        r.dump()
    );
    assert_eq!(
        desired_state(&lab.get_json(&["rolebinding", "shared", "-n", &ns])),
        desired_state(&before.0)
    );
    assert_eq!(lab.get_json(&["clusterrolebinding", &crb]), edited);
    assert!(!lab.subject_allowed("mallory", &[], "list", "nodes", ""));
    assert!(!lab.account_allowed(&ns, "victim", "list", "nodes", ""));
}
