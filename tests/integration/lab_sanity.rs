//! The lab itself, without kirt: the cluster behaves like one (Deployments roll out, logs and
//! Endpoints work, rollout undo completes, crash loops have previous logs) and both S3 servers
//! take a multipart upload. When these fail, the lab is broken, not kirt.

use std::time::Duration;

use crate::common::{self, lab, wait_until};

#[test]
fn kubectl_sees_a_working_cluster() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("lab-kubectl");
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
        let bucket = common::unique("lab-mpu");
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
