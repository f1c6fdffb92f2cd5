//! K1: the lab itself and `kirt doctor` against it (real etcd, apiserver, S3; checked with kubectl).

use crate::common;
use std::time::Duration;

use crate::common::{lab, wait_until};

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
    let ns = lab.namespace("k1-rbac");
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
fn kubectl_sees_a_working_cluster() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("k1-kubectl");
    lab.apply(
        &ns,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, annotations: {kubernetes.io/change-cause: v1}}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: "nginx:1.25"}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: crashy
  annotations: {lab.kirt.dev/crashloop: app}
spec:
  containers: [{name: app, image: "busybox:1.36"}]
"#,
    );
    lab.kubectl([
        "rollout",
        "status",
        "deployment/web",
        "-n",
        &ns,
        "--timeout=60s",
    ])
    .ok();
    let ready = lab
        .kubectl([
            "get",
            "deployment",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.availableReplicas}",
        ])
        .ok();
    assert_eq!(ready.stdout(), "3");

    // logs through the apiserver → simulated kubelet
    let logs = lab
        .kubectl(["logs", "deployment/web", "-n", &ns])
        .ok()
        .stdout();
    assert!(logs.lines().count() >= 5 && logs.contains("line"), "{logs}");

    // Endpoints list the 3 ready pods
    wait_until(Duration::from_secs(30), "3 endpoint addresses", || {
        let r = lab.kubectl([
            "get",
            "endpoints",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ]);
        r.stdout().split_whitespace().count() == 3
    });

    // rollout undo completes
    lab.kubectl([
        "set",
        "image",
        "deployment/web",
        "web=nginx:1.26",
        "-n",
        &ns,
    ])
    .ok();
    lab.kubectl([
        "rollout",
        "status",
        "deployment/web",
        "-n",
        &ns,
        "--timeout=60s",
    ])
    .ok();
    lab.kubectl(["rollout", "undo", "deployment/web", "-n", &ns])
        .ok();
    lab.kubectl([
        "rollout",
        "status",
        "deployment/web",
        "-n",
        &ns,
        "--timeout=60s",
    ])
    .ok();
    let image = lab
        .kubectl([
            "get",
            "deployment",
            "web",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ])
        .ok();
    assert_eq!(image.stdout(), "nginx:1.25");

    // crash-looping pod: restarts and previous logs
    wait_until(Duration::from_secs(30), "crashy restarts", || {
        let r = lab.kubectl([
            "get",
            "pod",
            "crashy",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ]);
        r.stdout().parse::<u32>().unwrap_or(0) > 0
    });
    let prev = lab
        .kubectl(["logs", "crashy", "-n", &ns, "--previous"])
        .ok()
        .stdout();
    assert!(prev.contains("previous"), "{prev}");
}

#[test]
fn s3_servers_round_trip_a_multipart_upload() {
    let Some(lab) = lab() else { return };
    for (name, client) in [("moto", lab.moto()), ("s3s-fs", lab.s3s())] {
        let bucket = common::unique("k1-mpu");
        common::block_on(async {
            client
                .create_bucket()
                .bucket(&bucket)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name} create bucket: {e:?}"));
            let up = client
                .create_multipart_upload()
                .bucket(&bucket)
                .key("obj")
                .send()
                .await
                .unwrap();
            let id = up.upload_id().unwrap().to_string();
            let part1: Vec<u8> = (0..5 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
            let part2 = b"tail".to_vec();
            let mut parts = Vec::new();
            for (n, data) in [(1, part1.clone()), (2, part2.clone())] {
                let r = client
                    .upload_part()
                    .bucket(&bucket)
                    .key("obj")
                    .upload_id(&id)
                    .part_number(n)
                    .body(data.into())
                    .send()
                    .await
                    .unwrap();
                parts.push(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(r.e_tag().map(String::from))
                        .build(),
                );
            }
            client
                .complete_multipart_upload()
                .bucket(&bucket)
                .key("obj")
                .upload_id(&id)
                .multipart_upload(
                    aws_sdk_s3::types::CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .unwrap();
            let got = client
                .get_object()
                .bucket(&bucket)
                .key("obj")
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            let mut want = part1;
            want.extend_from_slice(&part2);
            assert_eq!(got.len(), want.len(), "{name}");
            assert!(got[..] == want[..], "{name}: bytes differ");
        });
    }
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
    let bucket = common::unique("k1-store");
    common::block_on(async {
        lab.moto()
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
    });
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
