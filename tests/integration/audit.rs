//! `kirt evidence collect --audit-log`: a pod's ServiceAccount token is used with the real kubectl
//! against the lab apiserver, which writes its own audit log (tests/lab/lab.sh); kirt reads that
//! log back. Checked with zstd, tar, sha256sum, grep and the raw log itself.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::audit_log::{lines as audit_lines, wait_logged};
use crate::common::files::{extract_plain, only_file, read_json, sh_in};
use crate::common::process::Held;
use crate::common::{lab, Lab};

const SECRET_VALUE: &str = "k12-audit-Sup3r-S3cret";
const NEW_VALUE: &str = "k12-audit-n3w-S3cret-value";

/// The intruder's ServiceAccount may list pods, read two Secrets and patch one; its pod mounts
/// one of them. `kubectl apply` keeps each Secret's data in its last-applied annotation too.
fn rbac_and_secrets(lab: &Lab, ns: &str) {
    lab.apply(
        ns,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: db-credentials}}
stringData: {{password: "{SECRET_VALUE}"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: kirt-audit-redaction}}
stringData: {{password: "{SECRET_VALUE}"}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: intruder}}
rules:
- {{apiGroups: [""], resources: ["pods"], verbs: ["list"]}}
- {{apiGroups: [""], resources: ["secrets"], resourceNames: ["db-credentials", "kirt-audit-redaction"], verbs: ["get"]}}
- {{apiGroups: [""], resources: ["secrets"], resourceNames: ["kirt-audit-redaction"], verbs: ["patch"]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: intruder}}
subjects: [{{kind: ServiceAccount, name: intruder}}]
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: intruder}}
"#
        ),
    );
}

fn victim_pod(lab: &Lab, ns: &str) {
    lab.apply(
        ns,
        r#"
apiVersion: v1
kind: Pod
metadata: {name: victim, labels: {app: shop}}
spec:
  serviceAccountName: intruder
  containers: [{name: app, image: nginx}]
  volumes: [{name: creds, secret: {secretName: db-credentials}}]
"#,
    );
    lab.kubectl([
        "wait",
        "--for",
        "condition=Ready",
        "pod/victim",
        "-n",
        ns,
        "--timeout",
        "60s",
    ])
    .ok();
}

fn events(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The requests (audit IDs) among `events`, as (verb, resource, name, code of the final stage).
fn requests(events: &[Value]) -> BTreeSet<(String, String, String, i64)> {
    events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .map(|e| {
            (
                e["verb"].as_str().unwrap().to_string(),
                e["objectRef"]["resource"].as_str().unwrap().to_string(),
                e["objectRef"]["name"].as_str().unwrap_or("").to_string(),
                e["responseStatus"]["code"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Time order, and no event twice.
#[track_caller]
fn assert_ordered_once(events: &[Value]) {
    let keys: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["requestReceivedTimestamp"].as_str().unwrap().to_string(),
                e["auditID"].as_str().unwrap().to_string(),
                e["stage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let times: Vec<jiff::Timestamp> = keys.iter().map(|k| k.0.parse().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {keys:?}"
    );
    let distinct: BTreeSet<_> = keys.iter().map(|k| (&k.1, &k.2)).collect();
    assert_eq!(distinct.len(), keys.len(), "an event twice: {keys:?}");
}

fn gzip(lines: &[String]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    for l in lines {
        writeln!(e, "{l}").unwrap();
    }
    e.finish().unwrap()
}

#[test]
fn the_service_accounts_calls_and_nothing_else_from_live_and_rotated_logs() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("audit-sa");
    rbac_and_secrets(&lab, &ns);
    let intruder = lab.service_account_token(&ns, "intruder");
    let bystander = lab.service_account_token(&ns, "bystander");
    victim_pod(&lab, &ns);
    let cache = lab.dir.path().join("kubectl-cache");
    lab.warm_discovery(&cache);
    let denied_pod = lab.dir.path().join("evil.yaml");
    std::fs::write(
        &denied_pod,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: evil}\nspec: {containers: [{name: c, image: x}]}\n",
    )
    .unwrap();

    let t0 = jiff::Timestamp::now();
    let as_intruder = |args: &[&str]| lab.kubectl_as(&intruder, &cache, args);
    as_intruder(&["get", "pods", "-n", &ns]).ok();
    // other users in between: the admin, and another ServiceAccount of the namespace
    lab.kubectl(["get", "configmaps", "-n", &ns]).ok();
    as_intruder(&["get", "secret", "db-credentials", "-n", &ns, "-o", "name"]).ok();
    lab.kubectl_as(&bystander, &cache, ["get", "pods", "-n", &ns]);
    let create = denied_pod.to_string_lossy().into_owned();
    let r = as_intruder(&["create", "-f", &create, "--validate=false", "-n", &ns]);
    assert!(r.stderr().contains("forbidden"), "{}", r.dump());
    let user = format!("system:serviceaccount:{}:intruder", ns.name);
    wait_logged(&lab, &user, 3);
    let t1 = jiff::Timestamp::now();

    let audit_dir = lab.audit_dir().display().to_string();
    let since = t0.to_string();
    let out_a = lab.dir.path().join("a");
    let r = lab
        .kirt([
            "evidence",
            "collect",
            "victim",
            "-n",
            &ns,
            "--to",
            out_a.to_str().unwrap(),
            "--audit-log",
            &audit_dir,
            "--audit-since",
            &since,
            "-o",
            "json",
        ])
        .ok();
    let s = &r.json()["bundles"][0]["audit"]["summary"];
    assert_eq!(
        (
            s["requests"].as_i64(),
            s["allowed"].as_i64(),
            s["denied"].as_i64()
        ),
        (Some(3), Some(2), Some(1)),
        "{}",
        r.dump()
    );
    let top = extract_plain(&only_file(&out_a), &lab.dir.path().join("x-a"));
    sh_in(&top, "sha256sum -c --quiet SHA256SUMS");
    let a = events(&top);
    assert_ordered_once(&a);
    assert!(
        a.iter().all(|e| e["user"]["username"] == user.as_str()),
        "{a:#?}"
    );
    let want: BTreeSet<(String, String, String, i64)> = [
        ("list", "pods", "", 200),
        ("get", "secrets", "db-credentials", 200),
        ("create", "pods", "", 403),
    ]
    .iter()
    .map(|(v, r, n, c)| (v.to_string(), r.to_string(), n.to_string(), *c))
    .collect();
    assert_eq!(requests(&a), want);
    let distinct: BTreeSet<&str> = a.iter().map(|e| e["auditID"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 3, "exactly those calls: {a:#?}");
    let summary = read_json(&top.join("audit/summary.json"));
    assert_eq!(summary["summary"]["denied"], 1);
    assert_eq!(summary["summary"]["allowed"], 2);
    let manifest = read_json(&top.join("manifest.json"));
    let audit = &manifest["audit"];
    assert_eq!(audit["window"]["since"], since.as_str());
    assert!(audit["files"].as_array().unwrap().iter().any(|f| f["path"]
        .as_str()
        .unwrap()
        .ends_with("audit.log")
        && f["sha256"].as_str().is_some_and(|h| h.len() == 64)));
    assert!(audit["subject"]["objects"]
        .to_string()
        .contains("db-credentials"));

    // The same events arranged as a log rotation leaves them: the oldest third gzipped, the
    // middle third in a plain rotated file, the rest in audit.log; a copy taken during rotation
    // repeats some lines in two files; plus lines that are not events and a cut-off gzip file.
    let window: Vec<String> = audit_lines(&lab.audit_dir())
        .into_iter()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["requestReceivedTimestamp"].as_str()?.parse().ok())
                .is_some_and(|t: jiff::Timestamp| t >= t0 && t < t1)
        })
        .collect();
    assert!(window.len() >= 6, "{} lines", window.len());
    let third = window.len() / 3;
    let (old, rest) = window.split_at(third);
    let (middle, newest) = rest.split_at(third);
    let rotated = lab.dir.path().join("rotated");
    std::fs::create_dir(&rotated).unwrap();
    // newest first in directory order, so file order is not time order
    std::fs::write(rotated.join("audit-0-newest.log.gz"), gzip(newest)).unwrap();
    let mut mid: Vec<String> = old[old.len().saturating_sub(3)..].to_vec();
    mid.extend_from_slice(middle);
    mid.extend_from_slice(&newest[..newest.len().min(3)]);
    std::fs::write(rotated.join("audit-1-middle.log"), mid.join("\n") + "\n").unwrap();
    let mut live = old.join("\n");
    live.push_str(&format!(
        "\nthis is not an audit event\n{{\"kind\":\"Event\",\"user\":{{\"username\":\"{user}\"}}\n"
    ));
    std::fs::write(rotated.join("audit.log"), live).unwrap();
    let cut = gzip(&window);
    std::fs::write(rotated.join("audit-2-cut.log.gz"), &cut[..cut.len() / 2]).unwrap();

    let out_b = lab.dir.path().join("b");
    let r = lab
        .kirt([
            "evidence",
            "collect",
            "victim",
            "-n",
            &ns,
            "--to",
            out_b.to_str().unwrap(),
            "--audit-log",
            rotated.to_str().unwrap(),
            "--audit-since",
            &since,
        ])
        .ok();
    let table = r.stdout();
    assert!(
        table.contains("3 requests: 2 allowed, 1 denied"),
        "{}",
        r.dump()
    );
    assert!(table.contains("2 corrupt line(s)"), "{}", r.dump());
    assert!(
        table.contains("audit-2-cut.log.gz: read error"),
        "{}",
        r.dump()
    );
    let top_b = extract_plain(&only_file(&out_b), &lab.dir.path().join("x-b"));
    assert_eq!(
        std::fs::read_to_string(top_b.join("audit/events.jsonl")).unwrap(),
        std::fs::read_to_string(top.join("audit/events.jsonl")).unwrap(),
        "the rotated files give the same selection as the live log"
    );
    let corrupt = read_json(&top_b.join("manifest.json"))["audit"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["corrupt"].as_i64().unwrap())
        .sum::<i64>();
    assert_eq!(corrupt, 2);
}

#[test]
fn secret_values_logged_at_request_response_level_never_reach_the_bundle() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("audit-redact");
    rbac_and_secrets(&lab, &ns);
    let intruder = lab.service_account_token(&ns, "intruder");
    victim_pod(&lab, &ns);
    let cache = lab.dir.path().join("kubectl-cache");
    lab.warm_discovery(&cache);
    let t0 = jiff::Timestamp::now();
    lab.kubectl_as(
        &intruder,
        &cache,
        [
            "get",
            "secret",
            "kirt-audit-redaction",
            "-n",
            &ns,
            "-o",
            "json",
        ],
    )
    .ok();
    let patch = format!(r#"{{"stringData":{{"password":"{NEW_VALUE}"}}}}"#);
    lab.kubectl_as(
        &intruder,
        &cache,
        [
            "patch",
            "secret",
            "kirt-audit-redaction",
            "-n",
            &ns,
            "-p",
            &patch,
        ],
    )
    .ok();
    let user = format!("system:serviceaccount:{}:intruder", ns.name);
    wait_logged(&lab, &user, 2);

    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let secrets = [
        SECRET_VALUE.to_string(),
        b64(SECRET_VALUE),
        NEW_VALUE.to_string(),
        b64(NEW_VALUE),
    ];
    // the apiserver did log the values: the test is about something real
    let raw = audit_lines(&lab.audit_dir()).join("\n");
    for s in &secrets {
        assert!(raw.contains(s.as_str()), "the lab audit log lacks {s}");
    }

    let out = lab.dir.path().join("out");
    let since = t0.to_string();
    let audit_dir = lab.audit_dir().display().to_string();
    lab.kirt([
        "evidence",
        "collect",
        "victim",
        "-n",
        &ns,
        "--to",
        out.to_str().unwrap(),
        "--audit-log",
        &audit_dir,
        "--audit-since",
        &since,
    ])
    .ok();
    let top = extract_plain(&only_file(&out), &lab.dir.path().join("x"));
    for s in &secrets {
        let found = sh_in(&top, &format!("grep -rlF -- '{s}' . || true"));
        assert!(found.trim().is_empty(), "{s} found in {found}");
    }
    let ev = events(&top);
    let verbs: BTreeSet<&str> = ev.iter().map(|e| e["verb"].as_str().unwrap()).collect();
    assert_eq!(verbs, BTreeSet::from(["get", "patch"]), "{ev:#?}");
    let got = ev
        .iter()
        .find(|e| e["verb"] == "get" && e["stage"] == "ResponseComplete")
        .unwrap();
    assert_eq!(
        got["responseObject"]["metadata"]["name"],
        "kirt-audit-redaction"
    );
    assert!(got["responseObject"].get("data").is_none(), "{got:#}");
    assert!(
        got["annotations"]["kirt.dev/redacted"].is_string(),
        "{got:#}"
    );
    let manifest = read_json(&top.join("manifest.json"));
    assert!(
        manifest["audit"]["redacted"].as_i64().unwrap() >= 3,
        "{manifest:#}"
    );
    assert!(manifest["audit"]["redaction"]
        .as_str()
        .unwrap()
        .contains("replaced by their metadata"));
}

#[test]
fn bad_audit_log_paths_are_usage_errors_and_sigterm_stores_nothing() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("audit-bad");
    rbac_and_secrets(&lab, &ns);
    lab.service_account_token(&ns, "intruder");
    victim_pod(&lab, &ns);
    let out = lab.dir.path().join("out");
    let to = out.to_str().unwrap();
    let r = lab
        .kirt([
            "evidence",
            "collect",
            "victim",
            "-n",
            &ns,
            "--to",
            to,
            "--audit-log",
            "/nonexistent/audit.log",
        ])
        .code_is(2);
    assert!(
        r.stderr().contains("/nonexistent/audit.log"),
        "{}",
        r.dump()
    );
    let dir = lab.audit_dir().display().to_string();
    let r = lab
        .kirt([
            "evidence",
            "collect",
            "victim",
            "-n",
            &ns,
            "--to",
            to,
            "--audit-log",
            &dir,
            "--audit-since",
            "yesterday",
        ])
        .code_is(2);
    assert!(r.stderr().contains("--audit-since"), "{}", r.dump());
    assert!(!out.exists(), "nothing may be stored after a usage error");

    let held = Held::start(
        lab.kirt_cmd([
            "evidence",
            "collect",
            "victim",
            "-n",
            &ns,
            "--to",
            to,
            "--audit-log",
            &dir,
        ]),
        "audit-log",
        Duration::from_secs(60),
    );
    let (code, took, stderr) = held.terminate();
    assert_eq!(code, 143, "{stderr}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    let left: Vec<PathBuf> = crate::common::files_under(&out);
    assert!(left.is_empty(), "{left:?}");
}
