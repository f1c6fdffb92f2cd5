//! `kirt doctor` against the lab: apiserver, RBAC rows, etcd of both versions (plain and TLS),
//! stores, and clear failures for unreachable or misconfigured endpoints.

use crate::common::lab;

#[test]
fn doctor_against_the_lab_passes_and_reports_versions() {
    let Some(lab) = lab() else { return };
    let r = lab
        .kirt([
            "doctor",
            "--etcd-endpoints",
            &lab.get("KIRT_LAB_ETCD"),
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    let detail = |check: &str| {
        checks
            .iter()
            .find(|c| c["check"] == check)
            .map(|c| c["detail"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(detail("apiserver reachable").contains("v1.20.2"), "{v:#}");
    let etcd = detail(&lab.get("KIRT_LAB_ETCD"));
    assert!(
        etcd.contains(&format!("etcd {}.", lab.get("KIRT_LAB_ETCD_VERSION"))),
        "{etcd}"
    );
    assert!(etcd.contains("member "), "{etcd}");
    // every permission row is ok for the admin
    assert!(
        checks
            .iter()
            .filter(|c| c["area"] == "rbac")
            .all(|c| c["status"] == "ok"),
        "{v:#}"
    );
    // no CNI in the lab: a warning, not a failure
    let cni = checks
        .iter()
        .find(|c| c["check"] == "NetworkPolicy enforcement")
        .unwrap();
    assert_eq!(cni["status"], "warn");
    // the table form has the same rows
    let t = lab.kirt(["doctor"]).ok().stdout();
    assert!(
        t.contains("apiserver reachable") && t.contains("v1.20.2"),
        "{t}"
    );
}

#[test]
fn doctor_fails_clearly_on_wrong_port() {
    let Some(lab) = lab() else { return };
    let path = lab.unreachable_kubeconfig();
    let r = lab
        .kirt(["doctor", "--kubeconfig", path.to_str().unwrap()])
        .code_is(8);
    assert!(
        r.stdout()
            .contains("cannot reach Kubernetes API at https://127.0.0.1:1"),
        "{}",
        r.dump()
    );
}

#[test]
fn doctor_fails_clearly_on_unreachable_etcd() {
    let Some(lab) = lab() else { return };
    let r = lab
        .kirt([
            "doctor",
            "--no-kube",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "-o",
            "json",
        ])
        .code_is(8);
    let v = r.json();
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["area"] == "etcd")
        .unwrap()
        .clone();
    assert_eq!(row["status"], "fail");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("cannot reach etcd at http://127.0.0.1:1"),
        "{row}"
    );
}

#[test]
fn doctor_tls_etcd_and_wrong_ca() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_ETCD_TLS");
    let (ca, cert, key) = (
        lab.get("KIRT_LAB_ETCD_CA"),
        lab.get("KIRT_LAB_ETCD_CERT"),
        lab.get("KIRT_LAB_ETCD_KEY"),
    );
    let r = lab
        .kirt([
            "doctor",
            "--no-kube",
            "--etcd-endpoints",
            &ep,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "-o",
            "json",
        ])
        .ok();
    assert!(r.stdout().contains("TLS ok"), "{}", r.dump());
    let r = lab.kirt([
        "doctor",
        "--no-kube",
        "--etcd-endpoints",
        &ep,
        "--cacert",
        &lab.get("KIRT_LAB_ETCD_OTHER_CA"),
        "--cert",
        &cert,
        "--key",
        &key,
    ]);
    assert_eq!(r.code(), 8, "{}", r.dump());
    assert!(r.stdout().contains("TLS failed"), "{}", r.dump());
}

#[test]
fn doctor_names_the_missing_patch_pods_permission() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("doctor-rbac");
    // a Role with everything doctor checks in the namespace except `patch pods`
    lab.apply(
        &ns,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: almost-responder}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: ["networking.k8s.io"]
  resources: [networkpolicies]
  verbs: [get, list, create, patch, delete]
- apiGroups: ["apps"]
  resources: [deployments]
  verbs: [get, patch]
- apiGroups: ["apps"]
  resources: [replicasets]
  verbs: [list]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: [rolebindings, clusterrolebindings]
  verbs: [list]
- apiGroups: ["authorization.k8s.io"]
  resources: [subjectaccessreviews]
  verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: almost-responder}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: almost-responder}
subjects:
- {kind: ServiceAccount, name: almost, namespace: NS}
"#
        .replace("NS", &ns)
        .as_str(),
    );
    let token = lab.service_account_token(&ns, "almost");
    let kc = lab.kubeconfig_for_token("almost", &token);
    let r = lab
        .kirt([
            "doctor",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "-n",
            &ns,
            "-o",
            "json",
        ])
        .code_is(7);
    let v = r.json();
    let failed: Vec<String> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["check"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, ["can patch pods"], "{v:#}");
    let t = lab
        .kirt(["doctor", "--kubeconfig", kc.to_str().unwrap(), "-n", &ns])
        .code_is(7)
        .stdout();
    assert!(
        t.contains("missing permission: patch pods in namespace"),
        "{t}"
    );
}

#[test]
fn both_etcd_versions_answer() {
    let Some(lab) = lab() else { return };
    for (ep, version) in [
        (lab.get("KIRT_LAB_ETCD"), lab.get("KIRT_LAB_ETCD_VERSION")),
        (
            lab.get("KIRT_LAB_ETCD_OTHER"),
            lab.get("KIRT_LAB_ETCD_OTHER_VERSION"),
        ),
    ] {
        let r = lab
            .kirt(["doctor", "--no-kube", "--etcd-endpoints", &ep, "-o", "json"])
            .ok();
        assert!(
            r.stdout().contains(&format!("etcd {version}.")),
            "{}",
            r.dump()
        );
    }
    let mut versions: Vec<String> = vec![
        lab.get("KIRT_LAB_ETCD_VERSION"),
        lab.get("KIRT_LAB_ETCD_OTHER_VERSION"),
    ];
    versions.sort();
    assert_eq!(versions, ["3.4", "3.5"]);
}

#[test]
fn doctor_checks_a_store() {
    let Some(lab) = lab() else { return };
    let bucket = lab.moto_bucket("doctor-store");
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let url = format!("s3://{bucket}/backups");
    let r = lab
        .kirt([
            "doctor",
            "--no-kube",
            "--store",
            &url,
            "--endpoint-url",
            &ep,
            "--path-style",
        ])
        .ok();
    assert!(r.stdout().contains("reachable"), "{}", r.dump());
    let r = lab.kirt([
        "doctor",
        "--no-kube",
        "--store",
        "s3://no-such-bucket-kirt/x",
        "--endpoint-url",
        &ep,
        "--path-style",
    ]);
    assert_eq!(r.code(), 6, "{}", r.dump());
    let dir = lab.dir.path().join("store");
    let r = lab
        .kirt(["doctor", "--no-kube", "--store", dir.to_str().unwrap()])
        .ok();
    assert!(r.stdout().contains("writable"), "{}", r.dump());
}
