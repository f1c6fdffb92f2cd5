//! `kirt rollback` and `kirt rollout wait` against the lab, compared with the real
//! `kubectl rollout undo` on twin namespaces with identical histories; refusals, dry-run, waits
//! and permission errors.

use std::path::Path;

use serde_json::Value;

use crate::common::k8s::desired_state;
use crate::common::process::kirt_without_lab;
use crate::common::{self, lab, Lab};

/// One revision of the test workloads: differs in image, env and a template annotation.
struct Rev {
    image: &'static str,
    mode: &'static str,
    team: &'static str,
    cause: &'static str,
}

const REVS: [Rev; 3] = [
    Rev {
        image: "nginx:1.25",
        mode: "one",
        team: "alpha",
        cause: "release 1",
    },
    Rev {
        image: "nginx:1.26",
        mode: "two",
        team: "beta",
        cause: "release 2",
    },
    Rev {
        image: "nginx:1.27",
        mode: "three",
        team: "gamma",
        cause: "release 3",
    },
];

fn workload_yaml(kind: &str, rev: &Rev, extra_template_annotations: &str) -> String {
    let (spec_extra, name) = match kind {
        "Deployment" => ("  replicas: 2\n  progressDeadlineSeconds: 30\n", "web"),
        "StatefulSet" => ("  replicas: 1\n  serviceName: web\n", "web"),
        _ => ("", "web"),
    };
    format!(
        r#"apiVersion: apps/v1
kind: {kind}
metadata:
  name: {name}
  annotations: {{kubernetes.io/change-cause: "{cause}"}}
spec:
{spec_extra}  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{team: "{team}"{extra_template_annotations}}}
    spec:
      containers:
      - name: web
        image: "{image}"
        env: [{{name: MODE, value: "{mode}"}}]
        resources: {{limits: {{cpu: 100m}}}}
"#,
        cause = rev.cause,
        team = rev.team,
        image = rev.image,
        mode = rev.mode,
    )
}

fn kubectl_ok(lab: &Lab, args: &[&str]) -> String {
    lab.kubectl(args).ok().stdout()
}

/// Creates the workload with three revisions, each rolled out before the next.
fn build_history(lab: &Lab, ns: &str, kind: &str) {
    let target = format!("{}/web", kind.to_lowercase());
    for rev in &REVS {
        lab.apply(ns, &workload_yaml(kind, rev, ""));
        lab.rollout_status(ns, &target);
    }
}

/// The workload `target` (e.g. `deployment/web`) in `ns`.
fn object(lab: &Lab, ns: &str, target: &str) -> Value {
    lab.get_json(&[target, "-n", ns])
}

/// What kirt could change on the workload (metadata and spec). Not its resourceVersion: the
/// workload's controller updates its status on its own schedule, e.g. after `rollout pause`.
fn desired(lab: &Lab, ns: &str, target: &str) -> Value {
    desired_state(&object(lab, ns, target))
}

/// `kubectl rollout history` without its first line (which names nothing namespace-specific anyway).
fn history(lab: &Lab, ns: &str, target: &str) -> String {
    kubectl_ok(lab, &["rollout", "history", target, "-n", ns])
}

/// The twins must agree on the pod template, the change-cause and the revisions kubectl shows.
#[track_caller]
fn assert_twins_equal(lab: &Lab, a: &str, b: &str, target: &str) {
    lab.rollout_status(a, target);
    lab.rollout_status(b, target);
    let (ja, jb) = (object(lab, a, target), object(lab, b, target));
    assert_eq!(
        ja["spec"]["template"], jb["spec"]["template"],
        "pod templates differ after kubectl (left) and kirt (right)"
    );
    // the workload's own annotations too (kubectl's copy rules), except kubectl apply's record,
    // which names the namespace
    let annotations = |j: &Value| {
        let mut a = j["metadata"]["annotations"].clone();
        a.as_object_mut()
            .unwrap()
            .remove("kubectl.kubernetes.io/last-applied-configuration");
        a
    };
    assert_eq!(annotations(&ja), annotations(&jb));
    // the revision history kubectl shows is the same in both namespaces
    common::wait_until(
        std::time::Duration::from_secs(30),
        "identical rollout histories",
        || history(lab, a, target) == history(lab, b, target),
    );
}

fn twin_test(kind: &str) {
    let Some(lab) = lab() else { return };
    let a = lab.namespace("rollback-kubectl");
    let b = lab.namespace("rollback-kirt");
    let target = format!("{}/web", kind.to_lowercase());
    build_history(&lab, &a, kind);
    build_history(&lab, &b, kind);
    assert_eq!(history(&lab, &a, &target), history(&lab, &b, &target));

    // a server-side dry run changes nothing
    let before = desired(&lab, &b, &target);
    let r = lab
        .kirt(["rollback", &target, "-n", &b, "--dry-run", "-o", "json"])
        .ok();
    assert_eq!(r.json()["outcome"], "dry-run", "{}", r.dump());
    assert!(
        r.stderr().contains("image nginx:1.27 → nginx:1.26"),
        "{}",
        r.dump()
    );
    assert_eq!(desired(&lab, &b, &target), before);

    // undo to the previous revision
    lab.kubectl(["rollout", "undo", &target, "-n", &a]).ok();
    let r = lab
        .kirt(["rollback", &target, "-n", &b, "--yes", "-o", "json"])
        .ok();
    let v = r.json();
    assert_eq!(v["outcome"], "rolled-back", "{}", r.dump());
    assert_eq!(v["from_revision"], 3, "{}", r.dump());
    assert_eq!(v["to_revision"], 2, "{}", r.dump());
    assert!(
        r.stderr().contains("image nginx:1.27 → nginx:1.26")
            && r.stderr().contains("env MODE: \"three\" → \"two\""),
        "{}",
        r.dump()
    );
    assert_twins_equal(&lab, &a, &b, &target);
    let ev = lab.event_messages(&b, &format!("reason=RolledBack,involvedObject.kind={kind}"));
    assert!(ev.contains("from revision 3 to revision 2"), "event: {ev}");
    let img =
        object(&lab, &b, &target)["spec"]["template"]["spec"]["containers"][0]["image"].clone();
    assert_eq!(img, "nginx:1.26");

    // undo to an explicit revision
    lab.kubectl(["rollout", "undo", &target, "-n", &a, "--to-revision=1"])
        .ok();
    lab.kirt(["rollback", &target, "-n", &b, "--to-revision", "1", "--yes"])
        .ok();
    assert_twins_equal(&lab, &a, &b, &target);
    let h = history(&lab, &b, &target);
    assert!(
        h.contains("3 ") && h.contains("4 ") && h.contains("5 "),
        "{h}"
    );

    // the bare form again (back to what was revision 2, now 4)
    lab.kubectl(["rollout", "undo", &target, "-n", &a]).ok();
    lab.kirt(["rollback", &target, "-n", &b, "--yes"]).ok();
    assert_twins_equal(&lab, &a, &b, &target);

    // rolling back to the revision that is current is skipped, as kubectl does, and changes nothing
    let current = object(&lab, &b, &target);
    let before = desired_state(&current);
    let hist = lab
        .kirt(["rollback", "history", &target, "-n", &b, "-o", "json"])
        .ok()
        .json();
    let cur = hist["current_revision"].as_i64().unwrap();
    let k = lab.kubectl([
        "rollout",
        "undo",
        &target,
        "-n",
        &a,
        &format!("--to-revision={cur}"),
    ]);
    assert!(k.stdout().contains("skipped rollback"), "{}", k.dump());
    let r = lab
        .kirt([
            "rollback",
            &target,
            "-n",
            &b,
            "--to-revision",
            &cur.to_string(),
            "--yes",
        ])
        .ok();
    assert!(
        r.stdout().contains(&format!(
            "skipped rollback (current template already matches revision {cur})"
        )),
        "{}",
        r.dump()
    );
    assert_eq!(desired(&lab, &b, &target), before);

    // history marks the current revision and shows change-causes and images
    let revs = hist["revisions"].as_array().unwrap();
    assert_eq!(
        revs.iter().filter(|r| r["current"] == true).count(),
        1,
        "{hist:#}"
    );
    assert!(revs
        .iter()
        .all(|r| r["images"][0].as_str().unwrap().starts_with("nginx:")));
    if kind == "Deployment" {
        assert!(
            revs.iter().any(|r| r["change_cause"] == "release 3"),
            "{hist:#}"
        );
    }
}

#[test]
fn deployment_rollback_matches_kubectl_rollout_undo() {
    twin_test("Deployment");
}

#[test]
fn statefulset_rollback_matches_kubectl_rollout_undo() {
    twin_test("StatefulSet");
}

#[test]
fn daemonset_rollback_matches_kubectl_rollout_undo() {
    twin_test("DaemonSet");
}

#[test]
fn paused_deployment_and_unknown_revision_are_refused() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-refuse");
    build_history(&lab, &ns, "Deployment");
    let before = desired(&lab, &ns, "deployment/web");

    let r = lab
        .kirt([
            "rollback",
            "deploy/web",
            "-n",
            &ns,
            "--to-revision",
            "99",
            "--yes",
        ])
        .code_is(6);
    assert!(
        r.stderr()
            .contains("unable to find specified revision 99 in history"),
        "{}",
        r.dump()
    );
    let k = lab.kubectl([
        "rollout",
        "undo",
        "deployment/web",
        "-n",
        &ns,
        "--to-revision=99",
    ]);
    assert!(
        k.stderr()
            .contains("unable to find specified revision 99 in history"),
        "kubectl says the same: {}",
        k.dump()
    );
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);

    lab.kubectl(["rollout", "pause", "deployment/web", "-n", &ns])
        .ok();
    // (the controller records the pause in the status whenever it gets to it: compare the
    // desired state, not the resourceVersion)
    let before = desired(&lab, &ns, "deployment/web");
    let r = lab
        .kirt(["rollback", "deployment/web", "-n", &ns, "--yes"])
        .code_is(4);
    assert!(
        r.stderr().contains(
            "you cannot rollback a paused deployment; resume it first with 'kubectl rollout resume deployment/web' and try again"
        ),
        "{}",
        r.dump()
    );
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);
    let img = object(&lab, &ns, "deployment/web")["spec"]["template"]["spec"]["containers"][0]
        ["image"]
        .clone();
    assert_eq!(img, "nginx:1.27");
}

#[test]
fn dry_run_changes_nothing_and_prints_the_diff() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-dry");
    build_history(&lab, &ns, "Deployment");
    let before = desired(&lab, &ns, "deployment/web");
    let r = lab
        .kirt([
            "rollback",
            "deployment/web",
            "-n",
            &ns,
            "--to-revision",
            "1",
            "--dry-run",
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    assert_eq!(v["outcome"], "dry-run", "{}", r.dump());
    let err = r.stderr();
    for line in [
        "container web: image nginx:1.27 → nginx:1.25",
        "container web: env MODE: \"three\" → \"one\"",
        "template annotation team: \"gamma\" → \"alpha\"",
    ] {
        assert!(err.contains(line), "missing {line:?}:\n{}", r.dump());
    }
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);
    // no Event either
    let ev = kubectl_ok(
        &lab,
        &[
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=RolledBack",
            "-o",
            "name",
        ],
    );
    assert!(ev.trim().is_empty(), "{ev}");

    // without --yes and without a terminal: refused, nothing changed
    let r = lab
        .kirt(["rollback", "deployment/web", "-n", &ns])
        .code_is(4);
    assert!(r.stderr().contains("--yes"), "{}", r.dump());
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);

    // --if-generation: refused when the spec moved on, nothing changed
    let generation = object(&lab, &ns, "deployment/web")["metadata"]["generation"]
        .as_i64()
        .unwrap();
    let rollback_if = |generation: i64| {
        lab.kirt([
            "rollback",
            "deployment/web",
            "-n",
            &ns,
            "--yes",
            "--if-generation",
            &generation.to_string(),
            "-o",
            "json",
        ])
    };
    let r = rollback_if(generation - 1).code_is(4);
    assert!(r.stderr().contains("changed since"), "{}", r.dump());
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);

    // the real rollback (at the expected generation) records an Event on the Deployment and
    // reports the generation it left
    let r = rollback_if(generation).ok();
    assert_eq!(r.json()["generation"], generation + 1, "{}", r.dump());
    let ev = lab.event_messages(&ns, "reason=RolledBack,involvedObject.name=web");
    assert!(
        ev.contains("from revision 3 to revision 2"),
        "event message: {ev}"
    );
}

#[test]
fn wait_succeeds_when_pods_become_ready() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-wait");
    lab.apply(&ns, &workload_yaml("Deployment", &REVS[0], ""));
    lab.rollout_status(&ns, "deployment/web");
    // a bad release: the image cannot be pulled
    let mut bad = workload_yaml("Deployment", &REVS[1], "");
    bad = bad.replace("nginx:1.26", "nginx:1.26-broken");
    lab.apply(&ns, &bad);
    // the controller must have recorded the bad release as revision 2 before there is anything to
    // go back from (kubectl rollout undo would say "no rollout history found" just the same)
    lab.wait_for_replicasets(&ns, 2);
    let r = lab
        .kirt([
            "rollback",
            "deployment/web",
            "-n",
            &ns,
            "--yes",
            "--wait",
            "--timeout",
            "90s",
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    assert_eq!(v["wait"]["complete"], true, "{}", r.dump());
    assert_eq!(v["wait"]["counts"]["available"], 2, "{}", r.dump());
    assert!(
        r.stderr().contains("successfully rolled out"),
        "progress lines on stderr: {}",
        r.dump()
    );
    let d = object(&lab, &ns, "deployment/web");
    assert_eq!(d["status"]["availableReplicas"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.25"
    );
    // kirt rollout wait on a complete rollout returns at once
    let r = lab
        .kirt(["rollout", "wait", "deploy/web", "-n", &ns, "-o", "json"])
        .ok();
    assert_eq!(r.json()["complete"], true);
}

#[test]
fn wait_fails_on_progress_deadline_and_names_stuck_pods() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-stuck");
    // revision 1: pods that never become ready; revision 2: fine
    let stuck = workload_yaml(
        "Deployment",
        &REVS[0],
        ", lab.kirt.dev/never-ready: \"true\"",
    )
    .replace("progressDeadlineSeconds: 30", "progressDeadlineSeconds: 5");
    lab.apply(&ns, &stuck);
    let good = workload_yaml("Deployment", &REVS[1], "")
        .replace("progressDeadlineSeconds: 30", "progressDeadlineSeconds: 5");
    // wait until revision 1 has created its ReplicaSet, then go to revision 2 and let it settle
    lab.wait_for_replicasets(&ns, 1);
    lab.apply(&ns, &good);
    lab.rollout_status(&ns, "deployment/web");

    let r = lab
        .kirt([
            "rollback",
            "deployment/web",
            "-n",
            &ns,
            "--yes",
            "--wait",
            "--timeout",
            "120s",
        ])
        .code_is(1);
    let err = r.stderr();
    assert!(err.contains("ProgressDeadlineExceeded"), "{}", r.dump());
    assert!(err.contains("pods not ready:"), "{}", r.dump());
    // the stuck pods are named: they carry the never-ready annotation's template hash
    let pods = kubectl_ok(
        &lab,
        &["get", "pods", "-n", &ns, "-o", "jsonpath={range .items[*]}{.metadata.name} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}"],
    );
    let not_ready: Vec<&str> = pods
        .lines()
        .filter(|l| l.ends_with(" False"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!not_ready.is_empty(), "{pods}");
    for p in &not_ready {
        assert!(err.contains(p), "stuck pod {p} not named:\n{}", r.dump());
    }
    assert!(err.contains("restarts"), "{}", r.dump());

    // kirt rollout wait says the same
    let r = lab
        .kirt([
            "rollout",
            "wait",
            "deployment/web",
            "-n",
            &ns,
            "--timeout",
            "30s",
        ])
        .code_is(1);
    assert!(
        r.stderr().contains("ProgressDeadlineExceeded"),
        "{}",
        r.dump()
    );
}

#[test]
fn wait_times_out_with_the_reason() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-timeout");
    // a DaemonSet has no progress deadline: only the timeout ends the wait
    lab.apply(&ns, &workload_yaml("DaemonSet", &REVS[0], ""));
    lab.rollout_status(&ns, "daemonset/web");
    lab.apply(
        &ns,
        &workload_yaml("DaemonSet", &REVS[1], "").replace("nginx:1.26", "nginx:1.26-broken"),
    );
    let r = lab
        .kirt(["rollout", "wait", "ds/web", "-n", &ns, "--timeout", "8s"])
        .code_is(1);
    let err = r.stderr();
    assert!(err.contains("did not complete within 8s"), "{}", r.dump());
    assert!(
        err.contains("ImagePullBackOff") || err.contains("ErrImagePull"),
        "{}",
        r.dump()
    );
}

#[test]
fn forbidden_not_found_and_unreachable_change_nothing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-rbac");
    build_history(&lab, &ns, "Deployment");
    let before = desired(&lab, &ns, "deployment/web");

    // can read everything a rollback reads, but not patch the Deployment
    lab.apply(
        &ns,
        &r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: reader}
rules:
- apiGroups: ["apps"]
  resources: [deployments, replicasets]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}
subjects:
- {kind: ServiceAccount, name: reader, namespace: NS}
"#
        .replace("NS", &ns),
    );
    let token = lab.service_account_token(&ns, "reader");
    let kc = lab.kubeconfig_for_token("reader", &token);
    // `rollback deploy/web --yes` as the identity of a kubeconfig
    let rollback_as = |kubeconfig: &Path| {
        lab.kirt([
            "rollback",
            "deploy/web",
            "-n",
            &ns,
            "--yes",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
        ])
    };
    // history works with read access
    lab.kirt([
        "rollback",
        "history",
        "deploy/web",
        "-n",
        &ns,
        "--kubeconfig",
        kc.to_str().unwrap(),
    ])
    .ok();
    let r = rollback_as(&kc).code_is(7);
    assert!(
        r.stderr().contains("cannot patch deployments in namespace"),
        "{}",
        r.dump()
    );
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);

    // only `get deployments`: the ReplicaSet listing is what is missing
    let token = lab.service_account_token(&ns, "nobody");
    let kc2 = lab.kubeconfig_for_token("nobody", &token);
    let r = rollback_as(&kc2).code_is(7);
    assert!(
        r.stderr().contains("cannot get deployments"),
        "{}",
        r.dump()
    );

    // not found
    let r = lab
        .kirt(["rollback", "deploy/nope", "-n", &ns, "--yes"])
        .code_is(6);
    assert!(r.stderr().contains("nope"), "{}", r.dump());
    let r = lab.kirt(["rollback", "pod/web", "-n", &ns]).code_is(2);
    assert!(
        r.stderr()
            .contains("only deployment, statefulset and daemonset"),
        "{}",
        r.dump()
    );

    // unreachable apiserver
    let path = lab.unreachable_kubeconfig();
    let r = rollback_as(&path).code_is(8);
    assert!(
        r.stderr().contains("cannot reach Kubernetes API"),
        "{}",
        r.dump()
    );
    assert_eq!(desired(&lab, &ns, "deployment/web"), before);
}

/// The resourceVersion guard: a change between kirt's read and its patch makes the patch fail
/// and nothing of the rollback lands (library-level, to put the change exactly in between).
#[test]
fn concurrent_change_between_read_and_patch_is_not_overwritten() {
    use kirt::actions::rollback::{revert, Target, Workload};
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("rollback-guard");
    build_history(&lab, &ns, "Deployment");
    lab.apply(&ns, &workload_yaml("DaemonSet", &REVS[0], ""));
    lab.rollout_status(&ns, "daemonset/web");
    lab.apply(&ns, &workload_yaml("DaemonSet", &REVS[1], ""));
    lab.rollout_status(&ns, "daemonset/web");

    let _ = rustls::crypto::ring::default_provider().install_default();
    common::block_on(async {
        let ctx = kirt::Ctx::new(kirt::k8s::KubeOptions {
            kubeconfig: Some(lab.kubeconfig().into()),
            ..Default::default()
        });
        let cluster = ctx.cluster().await.unwrap();
        for (target, change) in [
            (
                "deployment/web",
                vec!["scale", "deployment/web", "--replicas=3"],
            ),
            (
                "daemonset/web",
                vec!["label", "daemonset/web", "touched=yes"],
            ),
        ] {
            let t: Target = target.parse().unwrap();
            let w = Workload::load(cluster, &ns, &t).await.unwrap();
            let rev = revert::select_revision(&w, 1).unwrap().clone();
            let mut args = change.clone();
            args.extend(["-n", &ns]);
            lab.kubectl(&args).ok();
            let err = revert::apply_guarded(cluster, false, w, &rev, 1)
                .await
                .unwrap_err();
            assert!(
                err.to_string()
                    .contains("changed while kirt was rolling it back"),
                "{target}: {err}"
            );
            let img = object(&lab, &ns, target)["spec"]["template"]["spec"]["containers"][0]
                ["image"]
                .clone();
            assert_ne!(
                img, "nginx:1.25",
                "{target} was rolled back despite the change"
            );
        }

        // a write to the status alone (what the controllers do all the time during a rollout)
        // moves the resourceVersion but not what was confirmed: the rollback goes through
        let t: Target = "deployment/web".parse().unwrap();
        let w = Workload::load(cluster, &ns, &t).await.unwrap();
        let rev = revert::select_revision(&w, 1).unwrap().clone();
        lab.kubectl([
            "patch",
            "deployment/web",
            "-n",
            &ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"conditions":[{"type":"Progressing","status":"True","reason":"KirtTest","message":"status write"}]}}"#,
        ])
        .ok();
        let moved = Workload::load(cluster, &ns, &t).await.unwrap();
        assert_ne!(moved.resource_version, w.resource_version);
        let (_, after) = revert::apply_guarded(cluster, false, w, &rev, 1)
            .await
            .unwrap();
        assert_eq!(
            after["metadata"]["generation"].as_i64(),
            Some(moved.generation + 1)
        );
        let img = object(&lab, &ns, "deployment/web")["spec"]["template"]["spec"]["containers"][0]
            ["image"]
            .clone();
        assert_eq!(img, "nginx:1.25", "the status write stopped the rollback");
    });
}

/// Usage errors are found before any cluster is contacted (no lab needed).
#[test]
fn usage_errors_need_no_cluster() {
    let run = kirt_without_lab;
    let r = run(&["rollback", "pod/web", "--yes"]).code_is(2);
    assert!(
        r.stderr()
            .contains("only deployment, statefulset and daemonset have revisions"),
        "{}",
        r.dump()
    );
    run(&["rollback", "web"]).code_is(2);
    run(&["rollback"]).code_is(2);
    let r = run(&["rollback", "deploy/web", "--wait", "--timeout", "soon"]).code_is(2);
    assert!(r.stderr().contains("--timeout"), "{}", r.dump());
    run(&["rollout", "wait", "sts/"]).code_is(2);
    let help = run(&["--help"]).ok().stdout();
    assert!(
        help.contains("rollback") && help.contains("rollout"),
        "{help}"
    );
    let help = run(&["rollback", "--help"]).ok().stdout();
    assert!(
        help.contains("history") && help.contains("--to-revision") && help.contains("--wait"),
        "{help}"
    );
}
