//! `kirt run|undo|runs|playbook`: playbooks run end to end on the lab — etcd-backup on a private
//! etcd, rollback-bad-deploy and its undo on a Deployment with three revisions — plus validation
//! errors with file:line, resume after SIGKILL, webhook delivery, exec timeouts, and no secret in
//! any journal.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::etcd::populate_etcd;
use crate::common::k8s::{desired_state, labels};
use crate::common::keys::age_key;
use crate::common::{self, lab, wait_until, Lab};

const SECRET_TOKEN: &str = "k7-secret-token-5f3a9c";
const SECRET_PATH: &str = "k7-secret-hook-path-81be";
const SECRET_PARAM: &str = "k7-secret-param-value-2d7e";

fn journal_dir(lab: &Lab) -> PathBuf {
    lab.dir.path().join("journal")
}

fn write(lab: &Lab, name: &str, text: &str) -> String {
    let p = lab.dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn journals(lab: &Lab) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(journal_dir(lab)) {
        for e in rd.flatten() {
            out.push((
                e.file_name()
                    .to_string_lossy()
                    .trim_end_matches(".jsonl")
                    .to_string(),
                std::fs::read_to_string(e.path()).unwrap(),
            ));
        }
    }
    out
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Every journal this test wrote is free of the test secrets.
#[track_caller]
fn assert_no_secrets(lab: &Lab) {
    for (id, text) in journals(lab) {
        for s in [SECRET_TOKEN, SECRET_PATH, SECRET_PARAM] {
            assert!(
                !text.contains(s),
                "journal {id} contains the secret {s}:\n{text}"
            );
        }
    }
}

fn kirt_j(lab: &Lab, args: &[&str]) -> common::Run {
    let j = journal_dir(lab).display().to_string();
    let mut all = vec!["--journal", j.as_str()];
    all.extend_from_slice(args);
    lab.kirt(all)
}

#[test]
fn broken_playbooks_fail_validation_with_file_and_line() {
    let Some(lab) = lab() else { return };
    let marker = lab.dir.path().join("side-effect");
    let head = format!(
        "apiVersion: kirt.dev/v1\nkind: Playbook\nmetadata: {{name: broken}}\nparams:\n  ns: {{required: true}}\nsteps:\n  - id: first\n    action: exec\n    with: {{argv: [touch, \"{}\"]}}\n",
        marker.display()
    );
    // (name, steps appended after line 9, expected line, expected message)
    let cases: [(&str, &str, usize, &str); 6] = [
        ("unknown-action", "  - id: x\n    action: quarantine.nope\n", 11, "unknown action \"quarantine.nope\""),
        ("unknown-field", "  - id: x\n    action: rollout.wait\n    with:\n      target: deploy/web\n      colour: blue\n", 14, "has no field \"colour\""),
        ("undeclared-param", "  - id: x\n    action: exec\n    with:\n      argv: [\"echo\", \"{{ params.nope }}\"]\n", 13, "\"nope\" is not declared"),
        ("bad-template", "  - id: x\n    action: exec\n    with:\n      argv: [\"echo\", \"{{ params.ns \"]\n", 13, "template error"),
        ("unknown-step", "  - id: x\n    action: exec\n    with:\n      argv: [\"echo\"]\n  - id: y\n    action: exec\n    with: {argv: [\"echo\", \"{{ steps.nosuch.outputs.stdout }}\"]}\n", 16, "unknown step id"),
        ("wrong-type", "  - id: x\n    action: rollback.undo\n    with:\n      target: deploy/web\n      to-revision: latest\n", 14, "invalid type"),
    ];
    for (name, tail, line, msg) in cases {
        let file = write(&lab, &format!("{name}.yaml"), &format!("{head}{tail}"));
        let r = kirt_j(&lab, &["playbook", "validate", &file]).code_is(2);
        let want = format!("{file}:{line}:");
        assert!(
            r.stderr()
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(msg)),
            "{name}: expected {want} … {msg}:\n{}",
            r.dump()
        );
        // a run refuses before doing anything
        let r = kirt_j(&lab, &["run", &file, "-p", "ns=x", "--yes"]).code_is(2);
        assert!(r.stderr().contains(&want), "{}", r.dump());
    }
    // a missing required parameter points at its declaration
    let file = write(&lab, "ok.yaml", &head);
    let r = kirt_j(&lab, &["run", &file, "--yes"]).code_is(2);
    assert!(
        r.stderr().contains(&format!("{file}:5:"))
            && r.stderr().contains("required parameter \"ns\""),
        "{}",
        r.dump()
    );
    // a type error the YAML parser finds carries line and column
    let file = write(&lab, "retries.yaml", &format!("{head}    retries: many\n"));
    let r = kirt_j(&lab, &["playbook", "validate", &file]).code_is(2);
    assert!(r.stderr().contains(&format!("{file}:10:")), "{}", r.dump());
    // a parameter value that does not fit the spec stops the run before its first step
    let file = write(
        &lab,
        "badvalue.yaml",
        &format!("{head}  - id: rb\n    action: rollback.undo\n    with:\n      target: deploy/web\n      to-revision: \"{{{{ params.ns }}}}\"\n"),
    );
    let r = kirt_j(&lab, &["run", &file, "-p", "ns=abc", "--yes"]).code_is(2);
    assert!(
        r.stderr().contains(&format!("{file}:12:")) && r.stderr().contains("expected i64"),
        "{}",
        r.dump()
    );
    assert!(!marker.exists(), "a step ran although validation failed");
    assert!(
        journals(&lab).is_empty(),
        "validation failures must not start runs"
    );
    // the fixed file runs
    let ok = lab.dir.path().join("ok.yaml").display().to_string();
    kirt_j(&lab, &["run", &ok, "-p", "ns=x", "--yes"]).ok();
    assert!(marker.exists());
}

#[test]
fn exec_timeout_kills_the_child() {
    let Some(lab) = lab() else { return };
    let pidfile = lab.dir.path().join("child.pid");
    for (name, timeout_field) in [
        ("step", "    timeout: 2s\n    with:\n"),
        ("exec", "    with:\n      timeout: 2s\n"),
    ] {
        let _ = std::fs::remove_file(&pidfile);
        let file = write(
            &lab,
            &format!("timeout-{name}.yaml"),
            &format!(
                "apiVersion: kirt.dev/v1\nkind: Playbook\nmetadata: {{name: t}}\nsteps:\n  - id: slow\n    action: exec\n{timeout_field}      argv: [sh, -c, 'echo $$ > {}; exec sleep 60']\n",
                pidfile.display()
            ),
        );
        let start = std::time::Instant::now();
        let r = kirt_j(&lab, &["run", &file, "-o", "json"]).code_is(1);
        assert!(start.elapsed() < Duration::from_secs(30), "{}", r.dump());
        let s = r.json();
        assert_eq!(s["steps"][0]["status"], "failed", "{}", r.dump());
        assert!(
            s["steps"][0]["error"].as_str().unwrap().contains("2s"),
            "{}",
            r.dump()
        );
        let pid = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .to_string();
        wait_until(
            Duration::from_secs(10),
            "the timed-out child to be gone",
            || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(st) => st.split_whitespace().nth(2) == Some("Z"),
            },
        );
    }
}

#[test]
fn killed_run_resumes_without_repeating_completed_steps() {
    let Some(lab) = lab() else { return };
    let d = lab.dir.path();
    let counter = d.join("counter");
    let marker = d.join("slept");
    let sleeper = d.join("sleeper.pid");
    let file = write(
        &lab,
        "resume.yaml",
        &format!(
            r#"apiVersion: kirt.dev/v1
kind: Playbook
metadata: {{name: resume}}
params:
  secret: {{secret: true, required: true}}
steps:
  - id: a
    action: exec
    with: {{argv: [sh, -c, 'echo a >> {c}; echo $0', "{{{{ params.secret }}}}"]}}
  - id: b
    action: exec
    with: {{argv: [sh, -c, 'if [ -e {m} ]; then echo b-again >> {c}; exit 0; fi; touch {m}; echo $$ > {s}; exec sleep 60']}}
  - id: c
    action: exec
    with: {{argv: [sh, -c, 'echo "c {{{{ steps.a.outputs.exit_code }}}}" >> {c}']}}
"#,
            c = counter.display(),
            m = marker.display(),
            s = sleeper.display()
        ),
    );
    let j = journal_dir(&lab).display().to_string();
    let p = format!("secret={SECRET_PARAM}");
    let mut child = lab
        .kirt_cmd(["--journal", &j, "run", &file, "-p", &p])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "step b to start sleeping", || {
        sleeper.exists() && std::fs::read_to_string(&sleeper).is_ok_and(|s| s.ends_with('\n'))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let pid = std::fs::read_to_string(&sleeper)
        .unwrap()
        .trim()
        .to_string();
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();

    let runs = journals(&lab);
    assert_eq!(runs.len(), 1);
    let (id, text) = &runs[0];
    assert!(!text.contains("run-end"), "{text}");
    assert_eq!(std::fs::read_to_string(&counter).unwrap(), "a\n");
    let list = kirt_j(&lab, &["runs", "list", "-o", "json"]).ok().json();
    assert!(
        list["runs"][0]["status"]
            .as_str()
            .unwrap()
            .starts_with("incomplete"),
        "{list}"
    );

    // the secret parameter is not in the journal, so the resume needs it again
    let r = kirt_j(&lab, &["run", "--resume", id, "-o", "json"]).code_is(2);
    assert!(
        r.stderr().contains("required parameter \"secret\""),
        "{}",
        r.dump()
    );
    let r = kirt_j(&lab, &["run", "--resume", id, "-p", &p, "-o", "json"]).ok();
    let s = r.json();
    let statuses = common::step_statuses(&s);
    assert_eq!(statuses, ["done (ok)", "ok", "ok"], "{}", r.dump());
    // a ran once; b ran again (it had not completed); c saw a's recorded outputs
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "a\nb-again\nc 0\n"
    );
    let text = &journals(&lab)[0].1;
    let recs = records(text);
    let ends_a = recs
        .iter()
        .filter(|r| r["type"] == "step-end" && r["step"] == "a")
        .count();
    assert_eq!(ends_a, 1, "{text}");
    assert!(recs.iter().any(|r| r["type"] == "run-resume"), "{text}");
    assert_eq!(recs.last().unwrap()["type"], "run-end");
    assert_no_secrets(&lab);
}

/// A one-request HTTP server; returns the raw request it received.
fn http_server() -> (u16, std::thread::JoinHandle<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    break;
                }
            }
        }
        s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&buf).to_string()
    });
    (port, h)
}

#[test]
fn webhook_delivers_and_secrets_stay_out_of_the_journal() {
    let Some(lab) = lab() else { return };
    let (port, server) = http_server();
    let file = write(
        &lab,
        "hook.yaml",
        r#"apiVersion: kirt.dev/v1
kind: Playbook
metadata: {name: hook}
params:
  url: {required: true, secret: true}
  note: {default: hello}
env: [K7_TOKEN]
steps:
  - id: hello
    action: exec
    with: {argv: [echo, "{{ params.note }}"]}
  - id: notify
    action: notify.webhook
    with:
      url: "{{ params.url }}"
      headers: {Authorization: "Bearer {{ env.K7_TOKEN }}"}
      body: {text: "{{ steps.hello.outputs.stdout | trim }} from {{ run.id }}", n: 3}
"#,
    );
    let j = journal_dir(&lab).display().to_string();
    let url = format!("url=http://127.0.0.1:{port}/{SECRET_PATH}");
    let r = common::run(
        {
            let mut c = lab.kirt_cmd(["--journal", &j, "run", &file, "-p", &url, "-o", "json"]);
            c.env("K7_TOKEN", SECRET_TOKEN);
            c
        },
        "kirt run hook.yaml".into(),
    )
    .ok();
    let req = server.join().unwrap();
    assert!(
        req.starts_with(&format!("POST /{SECRET_PATH} HTTP/1.1")),
        "{req}"
    );
    assert!(
        req.to_ascii_lowercase()
            .contains(&format!("authorization: bearer {SECRET_TOKEN}")),
        "{req}"
    );
    let body: Value = serde_json::from_str(req.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["text"].as_str().unwrap().starts_with("hello from "),
        "{req}"
    );
    assert_eq!(body["n"], 3);
    let s = r.json();
    assert_eq!(s["steps"][1]["outputs"]["status"], 204);
    for out in [r.stdout(), r.stderr()] {
        assert!(
            !out.contains(SECRET_TOKEN) && !out.contains(SECRET_PATH),
            "{}",
            r.dump()
        );
    }
    assert_no_secrets(&lab);
}

fn deployment(rev: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  annotations: {{kubernetes.io/change-cause: "release {rev}"}}
spec:
  replicas: 1
  progressDeadlineSeconds: 30
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: "nginx:1.2{rev}"
"#
    )
}

fn image(lab: &Lab, ns: &str) -> String {
    lab.kubectl([
        "get",
        "deploy/web",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ])
    .ok()
    .stdout()
}

/// What kirt could change on the Deployment (metadata and spec), without the status its
/// controller keeps writing.
fn deployment_desired(lab: &Lab, ns: &str) -> Value {
    desired_state(&lab.get_json(&["deploy/web", "-n", ns]))
}

#[test]
fn rollback_bad_deploy_runs_dry_runs_and_undoes() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("pb-rollback");
    for rev in 5..=7 {
        lab.apply(&ns, &deployment(rev));
        lab.rollout_status(&ns, "deploy/web");
    }
    lab.wait_for_replicasets(&ns, 3);
    assert_eq!(image(&lab, &ns), "nginx:1.27");
    let (nsp, dp) = (
        format!("namespace={}", ns.name),
        "deployment=web".to_string(),
    );

    // dry run: nothing changes
    let before = deployment_desired(&lab, &ns);
    let r = kirt_j(
        &lab,
        &[
            "run",
            "rollback-bad-deploy",
            "-p",
            &nsp,
            "-p",
            &dp,
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .ok();
    assert_eq!(
        r.json()["steps"][1]["outputs"]["outcome"],
        "dry-run",
        "{}",
        r.dump()
    );
    assert_eq!(image(&lab, &ns), "nginx:1.27");
    assert_eq!(deployment_desired(&lab, &ns), before);

    // without --yes and without a terminal the rollback refuses (exit 4)
    kirt_j(&lab, &["run", "rollback-bad-deploy", "-p", &nsp, "-p", &dp]).code_is(4);
    assert_eq!(image(&lab, &ns), "nginx:1.27");

    let roll_back = || {
        kirt_j(
            &lab,
            &[
                "run",
                "rollback-bad-deploy",
                "-p",
                &nsp,
                "-p",
                &dp,
                "--yes",
                "-o",
                "json",
            ],
        )
        .ok()
    };
    let r = roll_back();
    let s = r.json();
    let statuses = common::step_statuses(&s);
    assert_eq!(statuses, ["ok", "ok", "ok", "skipped"], "{}", r.dump());
    assert_eq!(s["steps"][1]["outputs"]["from_revision"], 3);
    assert_eq!(s["steps"][2]["outputs"]["complete"], true);
    assert_eq!(image(&lab, &ns), "nginx:1.26");
    let run_id = s["run_id"].as_str().unwrap().to_string();
    let text = std::fs::read_to_string(journal_dir(&lab).join(format!("{run_id}.jsonl"))).unwrap();
    let m: Vec<Value> = records(&text)
        .into_iter()
        .filter(|r| r["type"] == "mutation")
        .collect();
    assert_eq!(m.len(), 1, "{text}");
    assert_eq!(m[0]["object"]["name"], "web");
    assert_eq!(m[0]["undo"]["with"]["to-revision"], 3);

    // undo: back to the revision that ran before (kubectl shows it)
    let r = kirt_j(&lab, &["undo", &run_id, "--yes", "-o", "json"]).ok();
    assert_eq!(r.json()["items"][0]["status"], "undone", "{}", r.dump());
    lab.rollout_status(&ns, "deploy/web");
    assert_eq!(image(&lab, &ns), "nginx:1.27");
    let hist = lab
        .kubectl(["rollout", "history", "deploy/web", "-n", &ns])
        .ok()
        .stdout();
    assert!(
        hist.trim_end()
            .lines()
            .last()
            .unwrap()
            .contains("release 7"),
        "{hist}"
    );
    // undoing again finds nothing left to undo
    let r = kirt_j(&lab, &["undo", &run_id, "--yes", "-o", "json"]).ok();
    assert_eq!(
        r.json()["items"].as_array().unwrap().len(),
        0,
        "{}",
        r.dump()
    );
    let show = kirt_j(&lab, &["runs", "show", &run_id, "-o", "json"])
        .ok()
        .json();
    assert_eq!(show["run"]["undone"], true, "{show}");

    // a rollback followed by a newer deploy is not undone: undo refuses and the deploy stays
    let r = roll_back();
    let run2 = r.json()["run_id"].as_str().unwrap().to_string();
    assert_eq!(image(&lab, &ns), "nginx:1.26");
    lab.apply(&ns, &deployment(8));
    let r = kirt_j(&lab, &["undo", &run2, "--yes", "-o", "json"]).code_is(4);
    let item = &r.json()["items"][0];
    assert_eq!(item["status"], "failed", "{}", r.dump());
    assert!(
        item["error"].as_str().unwrap().contains("changed since"),
        "{}",
        r.dump()
    );
    assert_eq!(image(&lab, &ns), "nginx:1.28");
    assert_no_secrets(&lab);
}

fn backup_ids(lab: &Lab, dir: &Path) -> Vec<String> {
    let l = lab
        .kirt([
            "backup",
            "list",
            "--from",
            &dir.display().to_string(),
            "-o",
            "json",
        ])
        .ok()
        .json();
    let arr = l["backups"].as_array().cloned().unwrap_or_default();
    arr.iter()
        .map(|b| b["id"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn etcd_backup_playbook_end_to_end() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/k7", 300);
    let store = lab.dir.path().join("store");
    let metrics = lab.dir.path().join("backup.prom");
    let params = [
        format!("etcd_endpoints={}", etcd.endpoint),
        format!("to={}", store.display()),
        "no_encrypt=true".into(),
        "keep_last=2".into(),
        "keep_daily=0".into(),
        format!("metrics_file={}", metrics.display()),
    ];
    let mut args = vec!["run", "etcd-backup", "--yes", "-o", "json"];
    for p in &params {
        args.extend(["-p", p.as_str()]);
    }

    // dry run: nothing stored
    let mut dry = args.clone();
    dry.push("--dry-run");
    let r = kirt_j(&lab, &dry).ok();
    assert_eq!(r.json()["steps"][1]["status"], "skipped", "{}", r.dump());
    assert!(backup_ids(&lab, &store).is_empty());

    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = kirt_j(&lab, &args).ok();
        let s = r.json();
        let st = common::step_statuses(&s);
        assert_eq!(st, ["ok", "ok", "skipped", "ok"], "{}", r.dump());
        assert_eq!(s["steps"][1]["outputs"]["ok"], true, "{}", r.dump());
        ids.push(s["steps"][0]["outputs"]["id"].as_str().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(1100));
    }
    // keep_last=2: the first backup is pruned
    let mut listed = backup_ids(&lab, &store);
    listed.sort();
    assert_eq!(listed, ids[1..].to_vec());
    let prom = std::fs::read_to_string(&metrics).unwrap();
    assert!(prom.contains("kirt_backup"), "{prom}");
    assert_no_secrets(&lab);
}

#[test]
fn encrypted_etcd_backup_then_dr_drill_with_report() {
    let Some(lab) = lab() else { return };
    let (key, recipient) = age_key(&lab);
    let (sign_key, trusted) = crate::common::keys::signing_keys(&lab);
    let (sk, tk) = (
        format!("sign_key={sign_key}"),
        format!("trusted_key={trusted}"),
    );
    let store = lab.dir.path().join("drill-store");
    let (ep, to, rcp, id) = (
        format!("etcd_endpoints={}", lab.get("KIRT_LAB_ETCD")),
        format!("to={}", store.display()),
        format!("recipient={recipient}"),
        format!("identity={key}"),
    );
    let r = kirt_j(
        &lab,
        &[
            "run",
            "etcd-backup",
            "--yes",
            "-o",
            "json",
            "-p",
            &ep,
            "-p",
            &to,
            "-p",
            &rcp,
            "-p",
            &id,
            "-p",
            "cluster_name=lab",
            "-p",
            &sk,
            "-p",
            &tk,
        ],
    )
    .ok();
    let s = r.json();
    assert_eq!(s["steps"][0]["outputs"]["encrypted"], true, "{}", r.dump());
    assert_eq!(s["steps"][0]["outputs"]["signed"], true, "{}", r.dump());
    assert_eq!(s["steps"][1]["outputs"]["ok"], true, "{}", r.dump());
    assert_eq!(s["steps"][1]["outputs"]["signed"], true, "{}", r.dump());

    let report = lab.dir.path().join("drill.md");
    let r = kirt_j(
        &lab,
        &[
            "run",
            "dr-drill",
            "-o",
            "json",
            "-p",
            &format!("from={}", store.display()),
            "-p",
            &id,
            "-p",
            &format!("report={}", report.display()),
            "-p",
            &format!(
                "apiserver_bin={}/kube-apiserver",
                lab.get("KIRT_LAB_KUBE_BIN")
            ),
            "-p",
            &tk,
        ],
    )
    .ok();
    let s = r.json();
    let drill = &s["steps"][0]["outputs"];
    assert_eq!(drill["ok"], true, "{}", r.dump());
    assert_eq!(drill["signed"], true, "{}", r.dump());
    assert!(drill["rto_seconds"].as_f64().unwrap() > 0.0);
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(text.contains("RPO") || text.contains("rpo"), "{text}");
    assert_no_secrets(&lab);
}

#[test]
fn foreach_runs_once_per_pod_a_selector_matches() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("pb-each");
    lab.apply(
        &ns,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n",
    );
    lab.rollout_status(&ns, "deploy/web");
    let file = write(
        &lab,
        "each.yaml",
        r#"apiVersion: kirt.dev/v1
kind: Playbook
metadata: {name: each}
params:
  namespace: {required: true}
steps:
  - id: each
    action: exec
    foreach: {pods: {namespace: "{{ params.namespace }}", selector: app=web}}
    with: {argv: [echo, "{{ item.namespace }}/{{ item.name }}"]}
  - id: count
    action: exec
    with: {argv: [echo, "{{ steps.each.outputs | length }}"]}
"#,
    );
    let r = kirt_j(
        &lab,
        &[
            "run",
            &file,
            "-p",
            &format!("namespace={}", ns.name),
            "-o",
            "json",
        ],
    )
    .ok();
    let s = r.json();
    let mut got: Vec<String> = s["steps"][0]["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["stdout"].as_str().unwrap().trim().to_string())
        .collect();
    got.sort();
    let mut want: Vec<String> = lab
        .kubectl(["get", "pods", "-n", &ns, "-l", "app=web", "-o", "name"])
        .ok()
        .stdout()
        .lines()
        .map(|l| format!("{}/{}", ns.name, l.trim_start_matches("pod/")))
        .collect();
    want.sort();
    assert_eq!(got, want, "{}", r.dump());
    assert_eq!(s["steps"][1]["outputs"]["stdout"], "2\n");
}

fn pod(lab: &Lab, ns: &str, name: &str) -> Value {
    lab.get_json(&["pod", name, "-n", ns])
}

#[test]
fn isolate_compromised_pod_runs_dry_runs_and_undo_releases_exactly() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("pb-isolate");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: victim, labels: {app: shop, tier: web}}\nspec: {containers: [{name: c, image: nginx}]}\n",
    );
    wait_until(Duration::from_secs(60), "pod scheduled", || {
        !lab.kubectl([
            "get",
            "pod",
            "victim",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.nodeName}",
        ])
        .stdout()
        .trim()
        .is_empty()
    });
    let before = labels(&pod(&lab, &ns, "victim"));
    let evidence = lab.dir.path().join("evidence");
    let (nsp, ev) = (
        format!("namespace={}", ns.name),
        format!("evidence_to={}", evidence.display()),
    );
    let args = [
        "run",
        "isolate-compromised-pod",
        "-p",
        &nsp,
        "-p",
        "pod=victim",
        "-p",
        &ev,
        "-o",
        "json",
    ];

    let mut dry = args.to_vec();
    dry.extend(["--dry-run"]);
    kirt_j(&lab, &dry).ok();
    assert_eq!(labels(&pod(&lab, &ns, "victim")), before);
    let policies = lab
        .kubectl(["get", "networkpolicy", "-n", &ns, "-o", "name"])
        .ok()
        .stdout();
    assert!(policies.trim().is_empty(), "{policies}");

    // confirm: true on the quarantine step: refused without --yes (after the evidence step)
    let r = kirt_j(&lab, &args).code_is(4);
    assert_eq!(r.json()["steps"][1]["status"], "failed", "{}", r.dump());
    assert_eq!(labels(&pod(&lab, &ns, "victim")), before);

    let mut yes = args.to_vec();
    yes.push("--yes");
    let r = kirt_j(&lab, &yes).ok();
    let s = r.json();
    let st = common::step_statuses(&s);
    assert_eq!(st, ["ok", "ok", "ok", "skipped"], "{}", r.dump());
    assert_eq!(
        labels(&pod(&lab, &ns, "victim"))
            .get("kirt.dev/quarantined")
            .map(String::as_str),
        Some("true")
    );
    lab.kirt(["quarantine", "verify", "victim", "-n", &ns]).ok();
    assert!(std::fs::read_dir(&evidence).unwrap().count() > 0);

    let run_id = s["run_id"].as_str().unwrap();
    // the journal is private to its user
    let journal = journal_dir(&lab).join(format!("{run_id}.jsonl"));
    assert_eq!(mode(&journal), 0o600);
    assert_eq!(mode(&journal_dir(&lab)), 0o700);
    // a journal edited so that undo runs something else is refused as a whole, nothing run
    let original = std::fs::read_to_string(&journal).unwrap();
    let marker = lab.dir.path().join("undo-ran-exec");
    let edited: String = original
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v["type"] == "mutation" {
                v["undo"] = serde_json::json!({
                    "action": "exec",
                    "with": {"argv": ["touch", marker.display().to_string()]}
                });
            }
            format!("{v}\n")
        })
        .collect();
    assert!(
        edited.contains("\"exec\""),
        "no mutation in the journal:\n{original}"
    );
    std::fs::write(&journal, edited).unwrap();
    let r = kirt_j(&lab, &["undo", run_id, "--yes"]).code_is(4);
    assert!(r.stderr().contains("reverse nothing"), "{}", r.dump());
    assert!(!marker.exists(), "undo ran the journal's exec");
    assert!(labels(&pod(&lab, &ns, "victim")).contains_key("kirt.dev/quarantined"));
    std::fs::write(&journal, original).unwrap();
    let r = kirt_j(&lab, &["undo", run_id, "--yes", "-o", "json"]).ok();
    let items = r.json()["items"].as_array().unwrap().clone();
    // the pod and the deny-all policy created for it; one release reverses both
    let undone: Vec<&str> = items
        .iter()
        .filter(|i| i["status"] == "undone")
        .map(|i| i["object"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(undone, ["Pod", "NetworkPolicy"], "{}", r.dump());
    assert_eq!(
        labels(&pod(&lab, &ns, "victim")),
        before,
        "release restores the labels exactly"
    );
    assert_no_secrets(&lab);
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// An exec step sees PATH, HOME, LANG and its own env — none of kirt's secrets — and its
/// output is journaled only up to 64 KiB per stream.
#[test]
fn exec_steps_inherit_no_secrets_and_their_output_is_capped() {
    let Some(lab) = lab() else { return };
    let file = write(
        &lab,
        "env.yaml",
        "apiVersion: kirt.dev/v1\nkind: Playbook\nmetadata: {name: env}\nsteps:\n  - id: env\n    action: exec\n    with: {argv: [env], env: {STEP_VAR: given}}\n  - id: loud\n    action: exec\n    with: {argv: [sh, -c, 'head -c 200000 /dev/zero | tr \"\\\\0\" a']}\n",
    );
    let j = journal_dir(&lab).display().to_string();
    let mut cmd = lab.kirt_cmd(["--journal", &j, "run", &file, "-o", "json"]);
    cmd.env("KIRT_PASSPHRASE", SECRET_PARAM)
        .env("KIRT_SIGN_PASSWORD", SECRET_TOKEN)
        .env("AWS_SESSION_TOKEN", SECRET_PATH);
    common::run(cmd, "kirt run env.yaml".into()).ok();
    let (_, text) = &journals(&lab)[0];
    let recs = records(text);
    let stdout = |step: &str| {
        recs.iter()
            .find(|r| r["type"] == "step-end" && r["step"] == step)
            .unwrap_or_else(|| panic!("no step-end of {step}:\n{text}"))["outputs"]["stdout"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let env = stdout("env");
    assert!(
        env.contains("PATH=") && env.contains("STEP_VAR=given"),
        "{env}"
    );
    for leaked in ["KIRT_", "AWS_", "KUBECONFIG", "kirt-test-secret"] {
        assert!(!env.contains(leaked), "exec saw {leaked}:\n{env}");
    }
    let loud = stdout("loud");
    let kept = loud.trim_end_matches(|c| c != 'a');
    assert_eq!(kept.len(), 64 << 10, "{}", &loud[loud.len() - 100..]);
    assert!(
        loud.ends_with(&format!(
            "[kirt: {} more bytes of output not kept]\n",
            200_000 - (64 << 10)
        )),
        "{}",
        &loud[loud.len() - 100..]
    );
    assert!(!text.contains("kirt-test-secret"));
    assert_no_secrets(&lab);
}

/// SIGTERM in the middle of a run: kirt stops the step's program, journals the run as
/// interrupted and exits 143 within 2 s.
#[test]
fn a_signal_interrupts_a_run_and_it_is_journaled() {
    let Some(lab) = lab() else { return };
    let pidfile = lab.dir.path().join("sleeper.pid");
    let file = write(
        &lab,
        "long.yaml",
        &format!(
            "apiVersion: kirt.dev/v1\nkind: Playbook\nmetadata: {{name: long}}\nsteps:\n  - id: long\n    action: exec\n    with: {{argv: [sh, -c, 'echo $$ > {}; exec sleep 60']}}\n",
            pidfile.display()
        ),
    );
    let j = journal_dir(&lab).display().to_string();
    let held = common::process::Held::spawn(lab.kirt_cmd(["--journal", &j, "run", &file]));
    wait_until(Duration::from_secs(30), "the step to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
    });
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, took, stderr) = held.terminate();
    assert_eq!(code, 143, "{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?}\n{stderr}");
    wait_until(
        Duration::from_secs(5),
        "the step's program to be gone",
        || !common::process::alive(pid),
    );
    let (id, text) = &journals(&lab)[0];
    let recs = records(text);
    let end = recs.last().unwrap();
    assert_eq!(end["type"], "run-end", "{text}");
    assert_eq!(end["status"], "interrupted", "{text}");
    let list = kirt_j(&lab, &["runs", "list", "-o", "json"]).ok().json();
    assert_eq!(list["runs"][0]["run_id"], id.as_str(), "{list}");
    assert_eq!(list["runs"][0]["status"], "interrupted", "{list}");
}
