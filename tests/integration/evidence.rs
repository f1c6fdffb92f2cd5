//! `kirt evidence collect|verify|list`: forensic evidence bundles against the lab (real
//! apiserver, simulated kubelet, moto S3), checked with independent tools: age, zstd, tar,
//! sha256sum, kubectl and the S3 API.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::files::{extract_plain, only_file, read_json, sh_in};
use crate::common::{self, lab, s3, wait_until, Lab};

const SECRET_VALUE: &str = "k5-Sup3r-S3cret-value-do-not-leak";

/// Waits until the simulated kubelet has scheduled the pod and reported every container. Unlike
/// `Lab::wait_pod_running` it does not wait for phase Running: a container whose image cannot be
/// pulled keeps its pod Pending, and such pods are collected too.
fn wait_containers_reported(lab: &Lab, ns: &str, pod: &str, containers: usize) {
    wait_until(
        Duration::from_secs(60),
        &format!("pod {ns}/{pod} running"),
        || {
            let r = lab.kubectl([
                "get",
                "pod",
                pod,
                "-n",
                ns,
                "-o",
                "jsonpath={.spec.nodeName} {.status.containerStatuses[*].name}",
            ]);
            let out = r.stdout();
            let mut parts = out.split_whitespace();
            parts.next().is_some() && parts.count() == containers
        },
    );
}

/// Nothing at all (not even a hidden .part file) in `dir`, or `dir` does not exist.
#[track_caller]
fn assert_empty(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        let names: Vec<String> = entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.is_empty(),
            "expected nothing in {}: {names:?}",
            dir.display()
        );
    }
}

fn app_yaml(crashloop: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: db-credentials}}
stringData: {{password: "{SECRET_VALUE}"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: app-config}}
data: {{mode: prod}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: app-sa}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: app-reader}}
rules:
- {{apiGroups: [""], resources: ["configmaps"], verbs: ["get", "watch"]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: app-reader-binding}}
subjects: [{{kind: ServiceAccount, name: app-sa}}]
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: app-reader}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-ingress}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Ingress]
---
apiVersion: v1
kind: Service
metadata: {{name: web-svc}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other-svc}}
spec:
  selector: {{app: other}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata:
      labels: {{app: web}}
      annotations: {{lab.kirt.dev/crashloop: "{crashloop}"}}
    spec:
      serviceAccountName: app-sa
      initContainers:
      - {{name: setup, image: busybox:1.36}}
      containers:
      - name: main
        image: nginx:1.25
        env:
        - {{name: DB_PASSWORD, valueFrom: {{secretKeyRef: {{name: db-credentials, key: password}}}}}}
        - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: app-config, key: mode}}}}}}
        volumeMounts: [{{name: creds, mountPath: /creds}}]
      - name: sidecar
        image: busybox:1.36
      volumes:
      - {{name: creds, secret: {{secretName: db-credentials}}}}
"#
    )
}

/// The pod of the `web` Deployment once it is running with both containers reported.
fn web_pod(lab: &Lab, ns: &str) -> String {
    let mut pod = String::new();
    wait_until(Duration::from_secs(60), "web pod", || {
        pod = lab
            .kubectl([
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .stdout()
            .trim()
            .to_string();
        !pod.is_empty()
    });
    wait_containers_reported(lab, ns, &pod, 2);
    pod
}

#[test]
fn crashlooping_pod_bundle_is_complete_encrypted_and_checks_with_standard_tools() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-full");
    lab.apply(&ns, &app_yaml("sidecar"));
    let pod = web_pod(&lab, &ns);
    wait_until(Duration::from_secs(30), "sidecar restarts", || {
        let r = lab.kubectl([
            "get",
            "pod",
            &pod,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.containerStatuses[?(@.name==\"sidecar\")].restartCount}",
        ]);
        r.stdout().trim().parse::<u32>().unwrap_or(0) > 0
    });
    let work = lab.dir.path();
    sh_in(work, "age-keygen -o key.txt 2>/dev/null");
    let recipient = sh_in(work, "age-keygen -y key.txt").trim().to_string();

    let out = work.join("bundles");
    let r = lab
        .kirt([
            "evidence",
            "collect",
            &pod,
            "-n",
            &ns,
            "--to",
            out.to_str().unwrap(),
            "--encrypt-to",
            &recipient,
            "--checkpoint",
            "--case-id",
            "INC-4711",
            "--note",
            "suspicious outbound traffic",
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    let b = &v["bundles"][0];
    assert_eq!(b["encrypted"], true, "{v:#}");
    let bundle = only_file(&out);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("evidence-{}-{pod}-", &*ns)) && name.ends_with(".tar.zst.age"),
        "{name}"
    );
    // the stored bytes' digest printed for the case notes is the file's
    let sum = sh_in(work, &format!("sha256sum '{}'", bundle.display()));
    assert_eq!(
        sum.split_whitespace().next(),
        b["stored_sha256"].as_str(),
        "{v:#}"
    );

    // decrypt, decompress, untar and check with the standard tools only
    let x = work.join("x");
    std::fs::create_dir_all(&x).unwrap();
    sh_in(
        &x,
        &format!(
            "age -d -i ../key.txt '{}' | zstd -d | tar xf -",
            bundle.display()
        ),
    );
    let top = only_file(&x);
    assert_eq!(
        top.file_name().unwrap().to_string_lossy(),
        name.trim_end_matches(".tar.zst.age")
    );
    let checked = sh_in(&top, "sha256sum -c SHA256SUMS");
    assert!(checked.contains("manifest.json: OK"), "{checked}");

    for f in [
        "pod.json",
        "status.json",
        "events.json",
        "node.json",
        "services.json",
        "endpoints.json",
        "networkpolicies.json",
        "serviceaccount.json",
        "rbac.json",
        "references.json",
        "manifest.json",
        "SHA256SUMS",
        "logs/main.log",
        "logs/sidecar.log",
        "logs/sidecar.previous.log",
        "logs/setup.log",
        "checkpoints/main.tar",
        "checkpoints/sidecar.tar",
    ] {
        assert!(top.join(f).is_file(), "{f} missing from the bundle");
    }
    // SHA256SUMS covers every file but itself
    let sums = std::fs::read_to_string(top.join("SHA256SUMS")).unwrap();
    let all = sh_in(&top, "find . -type f ! -name SHA256SUMS | wc -l");
    assert_eq!(
        sums.lines().count(),
        all.trim().parse::<usize>().unwrap(),
        "{sums}"
    );

    // previous logs are the previous instance's, current logs the current one's
    let prev = std::fs::read_to_string(top.join("logs/sidecar.previous.log")).unwrap();
    assert!(
        prev.contains(&format!("{}/{pod}/sidecar line 1", &*ns))
            && prev.contains("previous instance"),
        "{prev}"
    );
    let cur = std::fs::read_to_string(top.join("logs/main.log")).unwrap();
    assert!(
        cur.contains(&format!("{}/{pod}/main line 1", &*ns)),
        "{cur}"
    );
    assert!(!top.join("logs/main.previous.log").exists());
    // the checkpoint is the kubelet's tar
    let listing = sh_in(&top, "tar tf checkpoints/main.tar");
    assert!(listing.contains("config.json"), "{listing}");

    let pod_json = read_json(&top.join("pod.json"));
    assert_eq!(pod_json["metadata"]["name"], pod.as_str());
    assert_eq!(read_json(&top.join("node.json"))["kind"], "Node");
    // owner chain ReplicaSet → Deployment
    let owners = sh_in(&top, "ls owners");
    assert!(owners.contains("replicaset-web-"), "{owners}");
    assert!(owners.contains("deployment-web.json"), "{owners}");
    assert_eq!(
        read_json(&top.join("owners/deployment-web.json"))["kind"],
        "Deployment"
    );
    // only the Service that selects the pod, with its Endpoints
    let services = std::fs::read_to_string(top.join("services.json")).unwrap();
    assert!(
        services.contains("web-svc") && !services.contains("other-svc"),
        "{services}"
    );
    assert!(std::fs::read_to_string(top.join("endpoints.json"))
        .unwrap()
        .contains("web-svc"));
    assert!(std::fs::read_to_string(top.join("networkpolicies.json"))
        .unwrap()
        .contains("web-ingress"));
    assert_eq!(
        read_json(&top.join("serviceaccount.json"))["metadata"]["name"],
        "app-sa"
    );
    let rbac = read_json(&top.join("rbac.json"));
    let binding = rbac["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "app-reader-binding")
        .unwrap_or_else(|| panic!("{rbac:#}"));
    assert_eq!(
        binding["rules"][0]["resources"][0], "configmaps",
        "{rbac:#}"
    );
    // Secret and ConfigMap referenced by name, from env and from a volume
    let refs = read_json(&top.join("references.json"));
    let secret = refs["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db-credentials")
        .unwrap_or_else(|| panic!("{refs:#}"));
    let via = secret["referencedBy"].to_string();
    assert!(
        via.contains("env DB_PASSWORD") && via.contains("volume creds"),
        "{via}"
    );
    assert!(
        refs["configMaps"].to_string().contains("app-config"),
        "{refs:#}"
    );

    // the manifest: case, collector, cluster, files with sizes and digests
    let m = read_json(&top.join("manifest.json"));
    assert_eq!(m["caseId"], "INC-4711");
    assert_eq!(m["note"], "suspicious outbound traffic");
    assert!(
        m["collector"]["identity"]
            .as_str()
            .unwrap()
            .starts_with("kubeconfig user"),
        "{m:#}"
    );
    assert!(
        m["collector"]["kirtVersion"]
            .as_str()
            .unwrap()
            .starts_with("kirt "),
        "{m:#}"
    );
    assert!(!m["collector"]["host"].as_str().unwrap().is_empty());
    assert_eq!(
        m["cluster"]["url"].as_str().unwrap().trim_end_matches('/'),
        lab.get("KIRT_LAB_APISERVER")
    );
    assert_eq!(m["pod"]["name"], pod.as_str());
    assert!(m["startedAt"].as_str().unwrap() <= m["finishedAt"].as_str().unwrap());
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len() + 1, sums.lines().count(), "{m:#}");
    let log = files
        .iter()
        .find(|f| f["path"] == "logs/sidecar.previous.log")
        .unwrap();
    assert_eq!(log["size"].as_u64().unwrap(), prev.len() as u64);
    assert!(sums.contains(log["sha256"].as_str().unwrap()));
    assert_eq!(m["missing"].as_array().unwrap().len(), 0, "{m:#}");

    // no Secret value anywhere: not in the files, not in the checkpoint tars, not base64-encoded
    let b64 = sh_in(work, &format!("printf %s '{SECRET_VALUE}' | base64 -w0"));
    for needle in [SECRET_VALUE, b64.trim()] {
        let r = Command::new("grep")
            .args(["-r", "-a", "-l", needle, "."])
            .current_dir(&top)
            .output()
            .unwrap();
        assert_eq!(
            r.status.code(),
            Some(1),
            "secret value found in: {}",
            String::from_utf8_lossy(&r.stdout)
        );
    }
    // (and the bundle is really encrypted: the plaintext name does not appear in it)
    let r = Command::new("grep")
        .args(["-c", "-a", "pod.json"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));

    // kirt's own verify agrees (and needs the key)
    let r = lab
        .kirt([
            "evidence",
            "verify",
            bundle.to_str().unwrap(),
            "--identity",
            work.join("key.txt").to_str().unwrap(),
            "--sha256",
            b["stored_sha256"].as_str().unwrap(),
        ])
        .ok();
    assert!(r.stdout().contains("OK: "), "{}", r.dump());
    let r = lab
        .kirt(["evidence", "verify", bundle.to_str().unwrap()])
        .code_is(2);
    assert!(r.stderr().contains("--identity"), "{}", r.dump());

    // read-only: the pod's labels are untouched (the simulated kubelet may still update status)
    let labels = lab
        .kubectl([
            "get",
            "pod",
            &pod,
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.labels}",
        ])
        .stdout();
    assert!(labels.contains("\"app\":\"web\""), "{labels}");
}

/// Collects an unencrypted bundle of a simple pod; returns (bundle path, pod name).
fn simple_bundle(lab: &Lab, ns: &str, annotations: &str, extra: &[&str]) -> (PathBuf, String) {
    let pod = "solo";
    lab.apply(
        ns,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {pod}\n  labels: {{app: solo}}\n  annotations: {{{annotations}}}\nspec:\n  containers:\n  - {{name: main, image: nginx}}\n"
        ),
    );
    wait_containers_reported(lab, ns, pod, 1);
    let out = lab.dir.path().join(format!("b-{ns}"));
    let mut args = vec![
        "evidence",
        "collect",
        pod,
        "-n",
        ns,
        "--to",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    lab.kirt(&args).ok();
    (only_file(&out), pod.to_string())
}

/// Lets ServiceAccount `sa` read pods and their logs in `ns`, nothing else.
fn grant_pods_only(lab: &Lab, ns: &str, sa: &str) {
    lab.apply(
        ns,
        &format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: pods-only-{sa}}}\nrules:\n- {{apiGroups: [\"\"], resources: [pods, pods/log], verbs: [get, list]}}\n---\n\
             apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: pods-only-{sa}}}\nsubjects: [{{kind: ServiceAccount, name: {sa}, namespace: {ns}}}]\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods-only-{sa}}}\n"
        ),
    );
    wait_until(Duration::from_secs(20), "RBAC to apply", || {
        lab.kubectl([
            "auth",
            "can-i",
            "get",
            "pods",
            "-n",
            ns,
            &format!("--as=system:serviceaccount:{ns}:{sa}"),
        ])
        .stdout()
        .trim()
            == "yes"
    });
}

/// Benchmark guard (issue K5): a pod with 100 MB of logs is collected with peak RSS ≤ 64 MiB.
#[test]
fn hundred_megabyte_log_stays_under_64_mib_rss() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-big");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: chatty\n  annotations: {lab.kirt.dev/log-bytes: \"104857600\"}\nspec:\n  containers:\n  - {name: main, image: nginx}\n",
    );
    wait_containers_reported(&lab, &ns, "chatty", 1);
    let out = lab.dir.path().join("big");
    let mut cmd = Command::new("/usr/bin/time");
    cmd.current_dir(lab.dir.path())
        .env_clear()
        .env("PATH", lab.path())
        .env("HOME", lab.dir.path())
        .env("KUBECONFIG", lab.kubeconfig())
        .args(["-f", "KIRT-RSS-KB=%M SECONDS=%e"])
        .arg(common::kirt_bin())
        .args([
            "evidence",
            "collect",
            "chatty",
            "-n",
            &ns,
            "--to",
            out.to_str().unwrap(),
        ]);
    let r = common::run(cmd, "time kirt evidence collect chatty".into()).ok();
    let stderr = r.stderr();
    let line = stderr
        .lines()
        .find(|l| l.starts_with("KIRT-RSS-KB="))
        .unwrap_or_else(|| panic!("{}", r.dump()));
    let kb: u64 = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("KIRT-RSS-KB=")
        .parse()
        .unwrap();
    eprintln!("evidence bench: 100 MB log: {line}");
    assert!(kb <= 64 * 1024, "peak RSS {kb} KiB > 64 MiB: {line}");
    // and the whole log is in the bundle
    let top = extract_plain(&only_file(&out), &lab.dir.path().join("bx"));
    assert_eq!(
        std::fs::metadata(top.join("logs/main.log")).unwrap().len(),
        104_857_600
    );
    sh_in(&top, "sha256sum -c --quiet SHA256SUMS");

    // SIGTERM (cron, Kubernetes) in the middle of the stream: nothing is published, no .part left
    let cut = lab.dir.path().join("interrupted");
    let mut child = lab
        .kirt_cmd([
            "evidence",
            "collect",
            "chatty",
            "-n",
            &ns,
            "--to",
            cut.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the upload to start", || {
        std::fs::read_dir(&cut).is_ok_and(|mut d| d.next().is_some())
    });
    std::thread::sleep(Duration::from_millis(300)); // into the log stream
    sh_in(lab.dir.path(), &format!("kill -TERM {}", child.id()));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "SIGTERM's exit code");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("interrupted"), "{err}");
    assert_empty(&cut);
}

#[test]
fn verify_names_changed_removed_and_added_files() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-verify");
    let (bundle, _) = simple_bundle(&lab, &ns, "", &[]);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    let r = lab
        .kirt(["evidence", "verify", bundle.to_str().unwrap(), "-o", "json"])
        .ok();
    assert_eq!(r.json()["ok"], true, "{}", r.dump());

    let work = lab.dir.path();
    let cases: [(&str, &str, &str); 4] = [
        (
            "changed",
            "printf 'injected\\n' >> logs/main.log",
            "logs/main.log",
        ),
        ("removed", "rm events.json", "events.json"),
        ("added", "printf 'x' > dropper.sh", "dropper.sh"),
        ("sums-edited", "sed -i '/pod.json/d' SHA256SUMS", "pod.json"),
    ];
    for (case, edit, file) in cases {
        let dir = work.join(format!("t-{case}"));
        let top = extract_plain(&bundle, &dir.join("x"));
        sh_in(&top, edit);
        // rebuild with the real tar and zstd, under the same bundle name
        let rebuilt = dir.join("out").join(&name);
        std::fs::create_dir_all(rebuilt.parent().unwrap()).unwrap();
        sh_in(
            &dir.join("x"),
            &format!(
                "tar cf - '{}' | zstd -q -o '{}'",
                top.file_name().unwrap().to_string_lossy(),
                rebuilt.display()
            ),
        );
        let r = lab
            .kirt(["evidence", "verify", rebuilt.to_str().unwrap()])
            .code_is(3);
        let text = r.stdout();
        assert!(
            text.contains("verification FAILED") && text.contains(file),
            "{case}: {}",
            r.dump()
        );
        let expected = match case {
            "changed" => format!("changed: {file}"),
            "removed" => format!("missing: {file}"),
            "added" => format!("extra: {file}"),
            _ => format!("extra: {file}"),
        };
        assert!(
            text.contains(&expected),
            "{case}: expected {expected:?}\n{}",
            r.dump()
        );
    }

    // a truncated bundle is a verification failure too, not a crash
    let cut = work.join("cut").join(&name);
    std::fs::create_dir_all(cut.parent().unwrap()).unwrap();
    let bytes = std::fs::read(&bundle).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    lab.kirt(["evidence", "verify", cut.to_str().unwrap()])
        .code_is(3);
}

#[test]
fn checkpoint_unsupported_is_recorded_not_fatal() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-ckpt");
    let (bundle, _) = simple_bundle(
        &lab,
        &ns,
        "lab.kirt.dev/checkpoint: unsupported",
        &["--checkpoint", "--tail-lines", "5"],
    );
    let top = extract_plain(&bundle, &lab.dir.path().join("x"));
    sh_in(&top, "sha256sum -c --quiet SHA256SUMS");
    assert!(!top.join("checkpoints/main.tar").exists());
    let m = read_json(&top.join("manifest.json"));
    let missing = m["missing"].as_array().unwrap();
    let item = missing
        .iter()
        .find(|x| x["item"] == "checkpoints/main.tar")
        .unwrap_or_else(|| panic!("{m:#}"));
    let reason = item["reason"].as_str().unwrap();
    assert!(
        reason.contains("404") && reason.contains("checkpoint"),
        "{reason}"
    );
    assert!(m["options"]["checkpoint"] == true);
    assert_eq!(m["options"]["tailLines"], 5);
    let log = std::fs::read_to_string(top.join("logs/main.log")).unwrap();
    assert_eq!(log.lines().count(), 5, "{log}");
    // the bundle with a recorded gap still verifies
    lab.kirt(["evidence", "verify", bundle.to_str().unwrap()])
        .ok();
}

#[test]
fn s3_target_list_and_verify() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-s3");
    lab.apply(&ns, "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: main, image: nginx}\n");
    wait_containers_reported(&lab, &ns, "web", 1);
    let bucket = lab.moto_bucket("evid-s3");
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let url = format!("s3://{bucket}/cases/inc-1");
    let s3 = ["--endpoint-url", ep.as_str(), "--path-style"];
    let mut args = vec![
        "evidence", "collect", "web", "-n", &ns, "--to", &url, "-o", "json",
    ];
    args.extend_from_slice(&s3);
    let v = lab.kirt(&args).ok().json();
    let keys = s3::keys(&lab.moto(), &bucket);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with(&format!("cases/inc-1/evidence-{}-web-", &*ns))
            && keys[0].ends_with(".tar.zst"),
        "{keys:?}"
    );
    assert!(
        v["bundles"][0]["location"]
            .as_str()
            .unwrap()
            .ends_with(keys[0].rsplit('/').next().unwrap()),
        "{v:#}"
    );

    let mut args = vec!["evidence", "list", "--from", &url, "-o", "json"];
    args.extend_from_slice(&s3);
    let l = lab.kirt(&args).ok().json();
    assert_eq!(l["bundles"].as_array().unwrap().len(), 1, "{l:#}");
    let mut args = vec!["evidence", "list", "--from", &url];
    args.extend_from_slice(&s3);
    let table = lab.kirt(&args).ok().stdout();
    assert!(
        table.contains(keys[0].rsplit('/').next().unwrap()),
        "{table}"
    );

    let obj = format!("s3://{bucket}/{}", keys[0]);
    let mut args = vec!["evidence", "verify", &obj];
    args.extend_from_slice(&s3);
    lab.kirt(&args).ok();

    // a failure after the upload started (may read pods and logs, not events): the upload is
    // aborted — no new object and no multipart upload left behind
    let token = lab.service_account_token(&ns, "reader");
    let kc = lab.kubeconfig_for_token("reader", &token);
    grant_pods_only(&lab, &ns, "reader");
    let mut args = vec![
        "evidence",
        "collect",
        "web",
        "-n",
        &ns,
        "--to",
        &url,
        "--kubeconfig",
        kc.to_str().unwrap(),
    ];
    args.extend_from_slice(&s3);
    let r = lab.kirt(&args).code_is(7);
    assert!(r.stderr().contains("cannot list events"), "{}", r.dump());
    let after = s3::keys(&lab.moto(), &bucket).len();
    // (moto lists multipart uploads; s3s-fs could not)
    let pending = common::block_on(lab.moto().list_multipart_uploads().bucket(&bucket).send())
        .unwrap()
        .uploads()
        .len();
    assert_eq!(
        (after, pending),
        (1, 0),
        "a failed collection left something in the bucket"
    );

    // a bucket that does not exist: clear error, nothing anywhere
    let mut args = vec![
        "evidence",
        "collect",
        "web",
        "-n",
        &ns,
        "--to",
        "s3://kirt-no-such-bucket-k5/x",
    ];
    args.extend_from_slice(&s3);
    let r = lab.kirt(&args);
    assert_ne!(r.code(), 0, "{}", r.dump());
    assert!(
        r.stderr().contains("kirt-no-such-bucket-k5"),
        "{}",
        r.dump()
    );
}

#[test]
fn unknown_pod_forbidden_and_unreachable_write_nothing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-err");
    lab.apply(&ns, "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - {name: main, image: nginx}\n");
    wait_containers_reported(&lab, &ns, "web", 1);
    let out = lab.dir.path().join("nothing");
    let to = out.to_str().unwrap();

    let r = lab
        .kirt(["evidence", "collect", "no-such-pod", "-n", &ns, "--to", to])
        .code_is(6);
    assert!(r.stderr().contains("no-such-pod"), "{}", r.dump());
    assert_empty(&out);

    // `evidence collect web` into `out` as the identity of a kubeconfig, plus extra flags
    let collect_as = |kubeconfig: &Path, extra: &[&str]| {
        let mut args = vec!["evidence", "collect", "web", "-n", &ns, "--to", to];
        args.extend(["--kubeconfig", kubeconfig.to_str().unwrap()]);
        args.extend(extra);
        lab.kirt(args)
    };

    // no permissions at all
    let token = lab.service_account_token(&ns, "nobody");
    let kc = lab.kubeconfig_for_token("nobody", &token);
    let r = collect_as(&kc, &[]).code_is(7);
    assert!(r.stderr().contains("cannot get pods"), "{}", r.dump());
    assert_empty(&out);

    // may read the pod but not its events: fails after the upload started; nothing is left
    grant_pods_only(&lab, &ns, "nobody");
    let r = collect_as(&kc, &[]).code_is(7);
    assert!(r.stderr().contains("cannot list events"), "{}", r.dump());
    assert_empty(&out);
    // … unless asked to collect what it may: then the gaps are in the manifest, with the reason
    let r = collect_as(&kc, &["--best-effort"]).ok();
    let top = extract_plain(&only_file(&out), &lab.dir.path().join("be"));
    sh_in(&top, "sha256sum -c --quiet SHA256SUMS");
    assert!(top.join("logs/main.log").is_file(), "{}", r.dump());
    assert!(!top.join("events.json").exists());
    let m = read_json(&top.join("manifest.json"));
    assert_eq!(m["options"]["bestEffort"], true);
    let missing = m["missing"].to_string();
    for gap in ["events.json", "node.json", "services.json", "rbac.json"] {
        assert!(missing.contains(gap), "{gap} not recorded: {m:#}");
    }
    assert!(missing.contains("cannot list events"), "{m:#}");
    std::fs::remove_dir_all(&out).unwrap();

    // unreachable apiserver
    let path = lab.unreachable_kubeconfig();
    let r = collect_as(&path, &[]).code_is(8);
    assert!(
        r.stderr()
            .contains("cannot reach Kubernetes API at https://127.0.0.1:1"),
        "{}",
        r.dump()
    );
    assert_empty(&out);
}

#[test]
fn quarantined_pod_uses_original_labels_and_selector_collects_each_pod() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-quar");
    lab.apply(
        &ns,
        r#"
apiVersion: v1
kind: Service
metadata: {name: shop}
spec: {selector: {app: shop}, ports: [{port: 80}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shop}
spec:
  replicas: 1
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop, team: a}}
    spec:
      containers:
      - {name: main, image: nginx}
"#,
    );
    let mut pod = String::new();
    wait_until(Duration::from_secs(60), "shop pod", || {
        pod = lab
            .kubectl([
                "get",
                "pods",
                "-n",
                &ns,
                "-l",
                "app=shop",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ])
            .stdout()
            .trim()
            .to_string();
        !pod.is_empty()
    });
    wait_containers_reported(&lab, &ns, &pod, 1);
    // quarantine it the way kirt does: original labels saved in the annotation, `app` replaced
    let labels = lab
        .kubectl([
            "get",
            "pod",
            &pod,
            "-n",
            &ns,
            "-o",
            "jsonpath={.metadata.labels}",
        ])
        .ok()
        .stdout();
    let patch = serde_json::json!({"metadata": {
        "labels": {"app": null, "kirt.dev/quarantined": "true"},
        "annotations": {"kirt.dev/original-labels": labels.trim()},
    }});
    lab.kubectl([
        "patch",
        "pod",
        &pod,
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        &patch.to_string(),
    ])
    .ok();
    // the ReplicaSet releases it (no more ownerReferences) and starts a replacement
    wait_until(
        Duration::from_secs(60),
        "the ReplicaSet to release the pod",
        || {
            lab.kubectl([
                "get",
                "pod",
                &pod,
                "-n",
                &ns,
                "-o",
                "jsonpath={.metadata.ownerReferences}",
            ])
            .stdout()
            .trim()
            .is_empty()
        },
    );

    let out = lab.dir.path().join("q");
    let to = out.to_str().unwrap();
    lab.kirt(["evidence", "collect", &pod, "-n", &ns, "--to", to])
        .ok();
    let top = extract_plain(&only_file(&out), &lab.dir.path().join("qx"));
    let services = std::fs::read_to_string(top.join("services.json")).unwrap();
    assert!(services.contains("\"shop\""), "{services}");
    let owners = sh_in(&top, "ls owners");
    assert!(
        owners.contains("replicaset-shop-") && owners.contains("deployment-shop.json"),
        "{owners}"
    );
    let m = read_json(&top.join("manifest.json"));
    assert_eq!(m["pod"]["quarantined"], true, "{m:#}");

    // -l: one bundle per pod (the quarantined one and its replacement), and a second run right
    // away never overwrites the first bundle of the same pod
    let sel = out.join("sel");
    let sel = sel.to_str().unwrap();
    wait_until(Duration::from_secs(60), "the replacement pod", || {
        lab.kubectl(["get", "pods", "-n", &ns, "-l", "team=a", "-o", "name"])
            .stdout()
            .lines()
            .count()
            == 2
    });
    for _ in 0..2 {
        let v = lab
            .kirt([
                "evidence", "collect", "-l", "team=a", "-n", &ns, "--to", sel, "-o", "json",
            ])
            .ok()
            .json();
        assert_eq!(v["bundles"].as_array().unwrap().len(), 2, "{v:#}");
    }
    assert_eq!(std::fs::read_dir(sel).unwrap().count(), 4);
}

#[test]
fn log_the_api_cannot_give_is_recorded_missing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-wait");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: half}\nspec:\n  containers:\n  - {name: main, image: nginx}\n  - {name: stuck, image: 'nginx:broken'}\n",
    );
    wait_containers_reported(&lab, &ns, "half", 2);
    let out = lab.dir.path().join("w");
    let v = lab
        .kirt([
            "evidence",
            "collect",
            "half",
            "-n",
            &ns,
            "--to",
            out.to_str().unwrap(),
            "--record-event",
            "--case-id",
            "INC-9",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let missing = v["bundles"][0]["missing"].as_array().unwrap().clone();
    let stuck = missing
        .iter()
        .find(|m| m["item"] == "logs/stuck.log")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert!(
        stuck["reason"]
            .as_str()
            .unwrap()
            .contains("waiting to start"),
        "{v:#}"
    );
    let top = extract_plain(&only_file(&out), &lab.dir.path().join("wx"));
    assert!(top.join("logs/main.log").is_file() && !top.join("logs/stuck.log").exists());
    let m = read_json(&top.join("manifest.json"));
    assert_eq!(m["missing"], serde_json::Value::Array(missing));
    // --record-event: one Event on the pod names the bundle and its digest (collection itself
    // never writes)
    let sha = v["bundles"][0]["stored_sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let events = lab
        .kubectl([
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=EvidenceCollected",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{events:#}");
    assert_eq!(items[0]["involvedObject"]["name"], "half");
    let msg = items[0]["message"].as_str().unwrap();
    assert!(msg.contains(&sha) && msg.contains("INC-9"), "{msg}");
    assert_eq!(v["bundles"][0]["event"], items[0]["metadata"]["name"]);

    // the table names the gap too
    let table = lab
        .kirt([
            "evidence",
            "collect",
            "half",
            "-n",
            &ns,
            "--to",
            out.to_str().unwrap(),
        ])
        .ok()
        .stdout();
    assert!(table.contains("not collected: logs/stuck.log"), "{table}");
}

/// Input errors are caught before anything is read or written (no lab needed).
#[test]
fn usage_errors_exit_2_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let to = out.to_str().unwrap();
    // stricter than `common::process::kirt_without_lab`: no environment at all and a kubeconfig
    // that does not exist, so any attempt to reach a cluster fails loudly
    let kirt = |args: &[&str]| {
        let mut c = Command::new(common::kirt_bin());
        c.current_dir(dir.path())
            .env_clear()
            .env("HOME", dir.path())
            .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
            .args(args);
        common::run(c, format!("kirt {}", args.join(" ")))
    };
    let r = kirt(&["evidence", "collect", "web"]).code_is(2);
    assert!(r.stderr().contains("--to"), "{}", r.dump());
    kirt(&["evidence", "collect", "web", "-l", "app=x", "--to", to]).code_is(2);
    kirt(&["evidence", "collect", "--to", to]).code_is(2);
    let r = kirt(&[
        "evidence",
        "collect",
        "web",
        "--to",
        to,
        "--encrypt-to",
        "age1nope",
    ])
    .code_is(2);
    assert!(
        r.stderr().contains("malformed age recipient"),
        "{}",
        r.dump()
    );
    let r = kirt(&[
        "evidence",
        "collect",
        "web",
        "--to",
        to,
        "--since",
        "yesterday",
    ])
    .code_is(2);
    assert!(r.stderr().contains("invalid duration"), "{}", r.dump());
    // what a file is comes from its content, not its name
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "not a bundle\n").unwrap();
    let r = kirt(&["evidence", "verify", notes.to_str().unwrap()]).code_is(3);
    assert!(
        r.stdout().contains("not a readable evidence bundle")
            || r.stderr().contains("not a readable evidence bundle"),
        "{}",
        r.dump()
    );
    assert!(!out.exists());
}

#[test]
fn all_namespaces_with_a_selector() {
    let Some(lab) = lab() else { return };
    let a = lab.namespace("evid-all-a");
    let b = lab.namespace("evid-all-b");
    let tag = a.name.clone();
    for ns in [&a, &b] {
        lab.apply(
            ns,
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: p, labels: {{evid-run: {tag}}}}}\nspec:\n  containers:\n  - {{name: main, image: nginx}}\n"),
        );
    }
    let out = lab.dir.path().join("all");
    let sel = format!("evid-run={tag}");
    let v = lab
        .kirt([
            "evidence",
            "collect",
            "-A",
            "-l",
            &sel,
            "--to",
            out.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok()
        .json();
    let mut namespaces: Vec<String> = v["bundles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["namespace"].as_str().unwrap().to_string())
        .collect();
    namespaces.sort();
    let mut want = vec![a.name.clone(), b.name.clone()];
    want.sort();
    assert_eq!(namespaces, want, "{v:#}");
    let r = lab
        .kirt([
            "evidence",
            "collect",
            "-A",
            "p",
            "--to",
            out.to_str().unwrap(),
        ])
        .code_is(2);
    assert!(r.stderr().contains("-A works with -l"), "{}", r.dump());
}

/// A signed bundle verifies as authentic under any file name; a rebuilt bundle (consistent with
/// itself, but not the bytes that were collected) does not, with or without the signature
/// beside it. Without a key or digest, verify says authenticity was not checked.
#[test]
fn signed_bundles_verify_under_any_name_and_rebuilt_ones_do_not() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("evid-signed");
    let (sign_key, trusted) = crate::common::keys::signing_keys(&lab);
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: solo}\nspec:\n  containers:\n  - {name: main, image: nginx}\n",
    );
    wait_containers_reported(&lab, &ns, "solo", 1);
    let out = lab.dir.path().join("signed");
    lab.kirt([
        "evidence",
        "collect",
        "solo",
        "-n",
        &ns,
        "--to",
        out.to_str().unwrap(),
        "--sign-key",
        &sign_key,
    ])
    .ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "bundle and signature: {files:?}");
    let (bundle, sig) = (files[0].clone(), files[1].clone());
    assert_eq!(sig, PathBuf::from(format!("{}.minisig", bundle.display())));
    // private: the bundle holds logs and pod specs
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&bundle), 0o600);
    assert_eq!(mode(&out), 0o700);
    let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
    let top = name.trim_end_matches(".tar.zst").to_string();

    let verify = |path: &Path, trusted: Option<&str>| {
        let mut args = vec!["evidence", "verify", path.to_str().unwrap(), "-o", "json"];
        if let Some(t) = trusted {
            args.extend(["--trusted-key", t]);
        }
        lab.kirt(&args)
    };
    let v = verify(&bundle, Some(&trusted)).ok().json();
    assert_eq!(
        (v["ok"].clone(), v["authenticated"].clone()),
        (true.into(), true.into()),
        "{v:#}"
    );
    let r = lab
        .kirt(["evidence", "verify", bundle.to_str().unwrap()])
        .ok();
    assert!(
        r.stdout().contains("authenticity NOT checked"),
        "{}",
        r.dump()
    );

    // handed over under another name (signature alongside): same verdict, the bundle's own name
    let handed = lab.dir.path().join("handover");
    std::fs::create_dir_all(&handed).unwrap();
    let renamed = handed.join("case-4711.bin");
    std::fs::copy(&bundle, &renamed).unwrap();
    std::fs::copy(&sig, handed.join("case-4711.bin.minisig")).unwrap();
    let v = verify(&renamed, Some(&trusted)).ok().json();
    assert_eq!(v["authenticated"], true, "{v:#}");
    assert_eq!(v["bundle"], top.as_str(), "{v:#}");

    // rebuilt from its own files with the real tar and zstd: self-consistent, not authentic
    let x = lab.dir.path().join("rebuild");
    let extracted = extract_plain(&bundle, &x);
    let rebuilt = handed.join("rebuilt.tar.zst");
    sh_in(
        &x,
        &format!(
            "tar cf - '{}' | zstd -q -19 -o '{}'",
            extracted.file_name().unwrap().to_string_lossy(),
            rebuilt.display()
        ),
    );
    let v = verify(&rebuilt, None).ok().json();
    assert_eq!(
        (v["ok"].clone(), v["authenticated"].clone()),
        (true.into(), false.into()),
        "{v:#}"
    );
    let r = verify(&rebuilt, Some(&trusted)).code_is(3);
    assert!(r.stdout().contains("no signature"), "{}", r.dump());
    std::fs::copy(&sig, handed.join("rebuilt.tar.zst.minisig")).unwrap();
    let r = verify(&rebuilt, Some(&trusted)).code_is(3);
    assert!(r.stdout().contains("does not verify"), "{}", r.dump());
}
