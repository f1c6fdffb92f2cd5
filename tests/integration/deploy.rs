//! deploy/: the manifests against the lab apiserver (least privilege, rule by rule),
//! impersonation, the kubectl plugin, the container image, and metrics pushed to a real
//! Prometheus Pushgateway.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::common::etcd::populate_etcd;
use crate::common::k8s::{nodes_to_myself, Namespace, NodeGuard};
use crate::common::process::wait_serving;
use crate::common::{self, lab, repo_root, sh, Lab, Run};
use serde_json::Value;

#[test]
fn manifests_apply_and_the_responder_is_least_privilege() {
    let Some(lab) = lab() else { return };
    let deploy = repo_root().join("deploy/kubernetes");
    lab.kubectl([
        "apply",
        "-f",
        deploy.join("base/namespace.yaml").to_str().unwrap(),
    ])
    .ok();
    let legacy = deploy.join("k8s-1.20");
    let r = lab
        .kubectl(["apply", "-k", legacy.to_str().unwrap(), "--dry-run=server"])
        .ok();
    assert!(
        r.stdout()
            .contains("cronjob.batch/kirt-backup created (server dry run)")
            || r.stdout()
                .contains("cronjob.batch/kirt-backup configured (server dry run)")
            || r.stdout()
                .contains("cronjob.batch/kirt-backup unchanged (server dry run)"),
        "{}",
        r.dump()
    );
    let drill = lab
        .kubectl([
            "apply",
            "-f",
            deploy.join("drill-job.yaml").to_str().unwrap(),
            "--dry-run=server",
            "-o",
            "json",
        ])
        .ok()
        .json();
    // the drill only accepts backups signed with the key in the ConfigMap kirt-trusted-key
    let drill_pod = &drill["spec"]["template"]["spec"];
    assert_eq!(
        key_source(drill_pod, "KIRT_TRUSTED_KEY"),
        (
            "configMap",
            "kirt-trusted-key".to_string(),
            "minisign.pub".to_string()
        )
    );
    lab.kubectl(["apply", "-k", legacy.to_str().unwrap()]).ok();
    let cj = lab
        .kubectl(["get", "cronjob", "kirt-backup", "-n", "kirt", "-o", "json"])
        .ok()
        .json();
    let pod = &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["limits"]["memory"].is_string());
    // a good neighbour on the control-plane node: low CPU and idle I/O priority
    assert!(
        c["args"].as_array().unwrap().iter().any(|a| a == "--nice"),
        "{c:#}"
    );
    // every backup is signed with the key in the Secret kirt-backup-signing
    assert_eq!(
        key_source(pod, "KIRT_SIGN_KEY"),
        (
            "secret",
            "kirt-backup-signing".to_string(),
            "minisign.key".to_string()
        )
    );
    // the backup account has no Kubernetes permissions at all
    let sa = "system:serviceaccount:kirt:kirt-backup";
    let r = lab
        .kubectl(["auth", "can-i", "--list", "--as", sa])
        .ok()
        .stdout();
    for line in r.lines().skip(1) {
        let resource = line.split_whitespace().next().unwrap_or("");
        assert!(
            resource.starts_with("selfsubject")
                || resource.is_empty()
                || line.contains("[/")
                || resource == "[]",
            "kirt-backup may {line}"
        );
    }
    // the responder: no wildcards, no ConfigMap values; Secrets only to find, read and delete
    // legacy tokens (--revoke-credentials), never to create or change one
    let sa = "system:serviceaccount:kirt:kirt-responder";
    let r = lab
        .kubectl(["auth", "can-i", "--list", "--as", sa])
        .ok()
        .stdout();
    // (non-resource URLs such as [/api/*] come from system:discovery, granted to everyone)
    for line in r.lines().skip(1).filter(|l| !l.contains("[/")) {
        assert!(!line.contains('*'), "wildcard for the responder: {line}");
        let resource = line.split_whitespace().next().unwrap_or("");
        assert!(!resource.starts_with("configmaps"), "responder may {line}");
        if resource.starts_with("secrets") {
            assert!(
                line.trim_end().ends_with("[get list delete]"),
                "responder may {line}"
            );
        }
    }
    let can = |verb: &str, what: &str| {
        lab.kubectl(["auth", "can-i", verb, what, "--as", sa, "-n", "default"])
            .stdout()
            .trim()
            .to_string()
    };
    assert_eq!(can("patch", "pods"), "yes");
    for (verb, what) in [
        ("create", "secrets"),
        ("update", "secrets"),
        ("get", "configmaps"),
    ] {
        assert_eq!(can(verb, what), "no", "{verb} {what}");
    }
}

#[test]
fn impersonation_acts_as_the_given_account() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("deploy-as");
    lab.apply(&ns, "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: 'nginx:1.25'}]}\n");
    // a user without any rights: forbidden, naming the impersonated user and the permission
    let r = lab
        .kirt([
            "--as",
            "lab-nobody",
            "rollback",
            "history",
            "deployment/web",
            "-n",
            &ns,
        ])
        .code_is(7);
    assert!(
        r.stderr().contains("lab-nobody") && r.stderr().contains("deployments"),
        "{}",
        r.dump()
    );
    // doctor reports the impersonated identity's permissions
    let r = lab
        .kirt(["--as", "lab-nobody", "doctor", "-n", &ns, "-o", "json"])
        .code_is(7);
    let v = r.json();
    let kc = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "kubeconfig")
        .unwrap()
        .clone();
    assert!(
        kc["detail"]
            .as_str()
            .unwrap()
            .contains("impersonating lab-nobody"),
        "{kc}"
    );
    // --as-group needs --as
    lab.kirt(["--as-group", "g", "version"]).code_is(2);
}

#[test]
fn kubectl_finds_kirt_as_a_plugin() {
    let Some(lab) = lab() else { return };
    let prefix = lab.dir.path().join("prefix");
    let kirt = common::kirt_bin();
    let r = sh(&format!(
        "make -s -C {} install PREFIX={} KIRT_BIN={}",
        repo_root().display(),
        prefix.display(),
        kirt.display()
    ))
    .ok();
    let _ = r;
    for f in [
        "bin/kirt",
        "bin/kubectl-kirt",
        "share/man/man1/kirt.1",
        "share/bash-completion/completions/kirt",
        "share/zsh/site-functions/_kirt",
        "share/fish/vendor_completions.d/kirt.fish",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    let path = format!(
        "{}/bin:{}",
        prefix.display(),
        std::env::var("PATH").unwrap()
    );
    let list = sh(&format!("PATH={path} kubectl plugin list 2>&1")).stdout();
    assert!(list.contains("kubectl-kirt"), "{list}");
    let r = sh(&format!(
        "PATH={path} KUBECONFIG={} kubectl kirt doctor -o json",
        lab.kubeconfig()
    ))
    .ok();
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
}

#[test]
fn backup_metrics_arrive_in_the_pushgateway() {
    let Some(lab) = lab() else { return };
    let port = common::free_port();
    let mut gw = Command::new("prometheus-pushgateway")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-pushgateway (make lab-deps installs it)");
    let url = format!("http://127.0.0.1:{port}");
    wait_serving(&mut gw, port, "pushgateway");
    let etcd = lab.private_etcd("3.5");
    let rev = populate_etcd(&etcd.endpoint, "/push", 10);
    let dir = lab.dir.path().join("b");
    lab.kirt([
        "backup",
        "create",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--to",
        dir.to_str().unwrap(),
        "--no-encrypt",
        "--cluster-name",
        "pushed",
        "--pushgateway",
        &url,
    ])
    .ok();
    // the etcd-backup playbook pushes through its backup step too
    let journals = lab.dir.path().join("push-runs");
    lab.kirt([
        "--journal",
        journals.to_str().unwrap(),
        "run",
        "etcd-backup",
        "--yes",
        "-p",
        &format!("etcd_endpoints={}", etcd.endpoint),
        "-p",
        &format!("to={}", lab.dir.path().join("b2").display()),
        "-p",
        "no_encrypt=true",
        "-p",
        "cluster_name=pushed-by-playbook",
        "-p",
        &format!("pushgateway={url}"),
    ])
    .ok();
    let body = sh(&format!("curl -sf {url}/metrics")).ok().stdout();
    let _ = gw.kill();
    let _ = gw.wait();
    let scrape =
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("parse");
    for cluster in ["pushed", "pushed-by-playbook"] {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == "kirt_backup_revision" && s.labels.get("cluster") == Some(cluster)
            })
            .unwrap_or_else(|| {
                panic!("kirt_backup_revision of {cluster} not in the pushgateway:\n{body}")
            });
        match sample.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
                assert_eq!(v, rev as f64, "{cluster}")
            }
            ref other => panic!("unexpected {other:?}"),
        }
        assert_eq!(sample.labels.get("job"), Some("kirt_backup"));
    }
}

#[test]
fn the_image_builds_offline_and_runs_kirt() {
    let Some(lab) = lab() else { return };
    let image = format!("localhost/kirt-test:{}", common::unique("t"));
    let r = sh(&format!(
        "IMAGE={image} KIRT_BIN={} ETCDUTL={}/etcdutl bash {}/deploy/build-image.sh",
        common::kirt_bin().display(),
        lab.get("KIRT_LAB_ETCD35_BIN"),
        repo_root().display()
    ))
    .ok();
    let _ = r;
    let ctr = sh(&format!("buildah --storage-driver vfs from {image}"))
        .ok()
        .stdout()
        .trim()
        .to_string();
    let run = |args: &str| {
        sh(&format!(
            "buildah --storage-driver vfs run --isolation chroot {ctr} -- {args}"
        ))
    };
    let version = run("/usr/local/bin/kirt version").ok().stdout();
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let help = run("/usr/local/bin/kirt --help").ok().stdout();
    assert!(help.contains("backup"), "{help}");
    let etcdutl = run("/usr/local/bin/etcdutl version").ok().stdout();
    assert!(etcdutl.contains("etcdutl version"), "{etcdutl}");
    // non-root, and no shell in the image
    let cfg = sh(&format!(
        "buildah --storage-driver vfs inspect --format '{{{{.OCIv1.Config.User}}}}' {image}"
    ))
    .ok()
    .stdout();
    assert_eq!(cfg.trim(), "65532:65532");
    assert_ne!(run("/bin/sh -c true").code(), 0, "the image has a shell");
    sh(&format!("buildah --storage-driver vfs rm {ctr} >/dev/null; buildah --storage-driver vfs rmi -f {image} >/dev/null")).ok();
}

/// The responder's commands, in the order an incident runs them (docs/quarantine.md's runbook),
/// against `ns` (pod `victim` of Deployment `web` with two revisions, running as ServiceAccount
/// `app`, which a RoleBinding grants something). Returns (command, run) for each. Takes the lab's
/// nodes for itself: the quarantine isolates the pod's node.
fn responder_session(
    lab: &Lab,
    ns: &str,
    identity: &str,
    pod: &str,
    out: &Path,
) -> Vec<(String, Run)> {
    let _nodes = nodes_to_myself(lab);
    let _clean = NodeGuard::all(lab);
    let as_flag = format!("--as={identity}");
    let cmds: Vec<Vec<String>> = vec![
        vec![
            "quarantine".into(),
            pod.into(),
            "-n".into(),
            ns.into(),
            "--yes".into(),
            "--revoke-credentials".into(),
            "--isolate-node".into(),
        ],
        vec![
            "quarantine".into(),
            "verify".into(),
            pod.into(),
            "-n".into(),
            ns.into(),
        ],
        vec![
            "evidence".into(),
            "collect".into(),
            pod.into(),
            "-n".into(),
            ns.into(),
            "--to".into(),
            out.display().to_string(),
        ],
        vec![
            "quarantine".into(),
            pod.into(),
            "-n".into(),
            ns.into(),
            "--yes".into(),
            "--delete-pod".into(),
            "--evidence-from".into(),
            out.display().to_string(),
        ],
        vec![
            "release".into(),
            pod.into(),
            "-n".into(),
            ns.into(),
            "--yes".into(),
        ],
        vec![
            "rollback".into(),
            "history".into(),
            "deployment/web".into(),
            "-n".into(),
            ns.into(),
        ],
        vec![
            "rollback".into(),
            "deployment/web".into(),
            "-n".into(),
            ns.into(),
            "--yes".into(),
        ],
    ];
    cmds.into_iter()
        .map(|mut c| {
            c.insert(0, as_flag.clone());
            let name = c[1..3].join(" ");
            (name, lab.kirt(&c))
        })
        .collect()
}

fn responder_namespace<'a>(lab: &'a Lab, prefix: &str) -> (Namespace<'a>, String) {
    let ns = lab.namespace(prefix);
    let deploy = |image: &str| {
        format!("apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{serviceAccountName: app, containers: [{{name: web, image: '{image}'}}]}}\n")
    };
    lab.apply(&ns, &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: app}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: app}}\nrules: [{{apiGroups: [''], resources: [configmaps], verbs: [get]}}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: app}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: app}}\nsubjects: [{{kind: ServiceAccount, name: app, namespace: {}}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{selector: {{app: web}}, ports: [{{port: 80}}]}}\n", &*ns));
    lab.apply(&ns, &deploy("nginx:1.25"));
    lab.rollout_status(&ns, "deployment/web");
    lab.apply(&ns, &deploy("nginx:1.26"));
    lab.rollout_status(&ns, "deployment/web");
    let pod = lab
        .kubectl([
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ])
        .ok()
        .stdout();
    (ns, pod)
}

#[test]
fn each_responder_rule_is_needed_by_the_command_it_names() {
    let Some(lab) = lab() else { return };
    let text =
        std::fs::read_to_string(repo_root().join("deploy/kubernetes/base/responder.yaml")).unwrap();
    let role: serde_json::Value = text
        .split("\n---\n")
        .filter_map(|d| serde_yaml_ng::from_str::<serde_json::Value>(d).ok())
        .find(|d| d["kind"] == "ClusterRole")
        .expect("ClusterRole in responder.yaml");
    let rules = role["rules"].as_array().unwrap().clone();
    assert!(rules.len() >= 8);

    // with the whole role, the responder's session succeeds
    let (ns, pod) = responder_namespace(&lab, "deploy-full");
    let name = common::unique("full");
    lab.apply(&ns, &format!("apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: {name}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: kirt-responder}}\nsubjects: [{{kind: ServiceAccount, name: {name}, namespace: {}}}]\n", &*ns));
    lab.kubectl([
        "apply",
        "-f",
        repo_root()
            .join("deploy/kubernetes/base/responder.yaml")
            .to_str()
            .unwrap(),
        "--dry-run=server",
    ]);
    lab.kubectl([
        "apply",
        "-f",
        repo_root()
            .join("deploy/kubernetes/base/namespace.yaml")
            .to_str()
            .unwrap(),
    ])
    .ok();
    lab.kubectl([
        "apply",
        "-f",
        repo_root()
            .join("deploy/kubernetes/base/responder.yaml")
            .to_str()
            .unwrap(),
    ])
    .ok();
    let identity = format!("system:serviceaccount:{}:{name}", &*ns);
    for (cmd, r) in responder_session(&lab, &ns, &identity, &pod, &lab.dir.path().join("ev-full")) {
        assert_eq!(
            r.code(),
            0,
            "{cmd} with the full responder role:\n{}",
            r.dump()
        );
    }
    lab.kubectl(["delete", "clusterrolebinding", &name]);

    // without any one rule, a command fails with kirt's permission message naming that rule
    for (i, rule) in rules.iter().enumerate() {
        let (ns, pod) = responder_namespace(&lab, &format!("deploy-minus{i}"));
        let name = common::unique(&format!("minus{i}"));
        let mut reduced = role.clone();
        reduced["metadata"] = serde_json::json!({"name": name});
        reduced["rules"].as_array_mut().unwrap().remove(i);
        let binding = serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": &*ns}]
        });
        let sa = serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        for obj in [reduced, binding, sa] {
            lab.apply(&ns, &serde_json::to_string(&obj).unwrap());
        }
        let identity = format!("system:serviceaccount:{}:{name}", &*ns);
        let session = responder_session(
            &lab,
            &ns,
            &identity,
            &pod,
            &lab.dir.path().join(format!("ev-{i}")),
        );
        let resources: Vec<String> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        let forbidden: Vec<&(String, Run)> =
            session.iter().filter(|(_, r)| r.code() == 7).collect();
        assert!(
            !forbidden.is_empty(),
            "rule {rule} is not needed by any responder command"
        );
        for (cmd, r) in &forbidden {
            assert!(
                resources
                    .iter()
                    .any(|res| r.stderr().contains(&format!(" {res}"))),
                "{cmd}: permission message does not name the removed rule {rule}:\n{}",
                r.dump()
            );
        }
        lab.kubectl(["delete", "clusterrolebinding,clusterrole", &name]);
    }
}

/// The point-in-time stream's Deployment: accepted by the apiserver, and never two streams of
/// one cluster at once (one replica, replaced with Recreate), signing every segment.
#[test]
fn stream_deployment_runs_one_stream_at_a_time() {
    let Some(lab) = lab() else { return };
    let deploy = repo_root().join("deploy/kubernetes");
    lab.kubectl([
        "apply",
        "-f",
        deploy.join("base/namespace.yaml").to_str().unwrap(),
    ])
    .ok();
    let d = lab
        .kubectl([
            "apply",
            "-f",
            deploy.join("stream-deployment.yaml").to_str().unwrap(),
            "--dry-run=server",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(d["spec"]["replicas"], 1, "{d:#}");
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate", "{d:#}");
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(&args[..2], ["backup", "stream"], "{c:#}");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "KIRT_SIGN_KEY"),
        "{c:#}"
    );
    // the arguments are ones kirt accepts
    let parsed = lab.kirt(
        args.iter()
            .map(|a| a.replace("$(", "").replace(')', ""))
            .chain(["--help".to_string()]),
    );
    assert_eq!(parsed.code(), 0, "{}", parsed.dump());
}

/// Where the file named by the first container's environment variable `var` comes from:
/// (volume kind, Secret or ConfigMap name, key in it) — the env var, the mount and the volume
/// must agree for the job to find its key.
#[track_caller]
fn key_source(pod: &Value, var: &str) -> (&'static str, String, String) {
    let c = &pod["containers"][0];
    let path = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == var)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {var} in {c:#}"));
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| path.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
        .unwrap_or_else(|| panic!("{var}={path} is on no mounted volume: {c:#}"));
    let file = &path[mount["mountPath"].as_str().unwrap().len() + 1..];
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let (kind, name, source) = if volume["secret"].is_object() {
        (
            "secret",
            volume["secret"]["secretName"].clone(),
            &volume["secret"],
        )
    } else {
        (
            "configMap",
            volume["configMap"]["name"].clone(),
            &volume["configMap"],
        )
    };
    let item = source["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["path"] == file))
        .unwrap_or_else(|| panic!("{file} is not an item of {volume:#}"));
    (
        kind,
        name.as_str().unwrap().to_string(),
        item["key"].as_str().unwrap().to_string(),
    )
}
