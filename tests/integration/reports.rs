//! `kirt runs report`: the incident timeline of an isolate-compromised-pod run that failed mid-way,
//! was resumed and then undone, with the lab apiserver's own audit log and Events; the HTML
//! rendered by headless Chromium (Debian's package). Checked against kubectl, sha256sum and the
//! raw journal.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::common::audit_log::wait_logged;
use crate::common::files::sh_in;
use crate::common::{lab, Lab, Run};

/// A hostile user agent: if the report ever lets it through as markup, the page's title changes.
const PLANTED_UA: &str =
    "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";

fn journal(lab: &Lab) -> String {
    lab.dir.path().join("runs").display().to_string()
}

/// kirt with the test's journal directory.
fn kirt_j(lab: &Lab, args: &[&str]) -> Run {
    let j = journal(lab);
    let mut a: Vec<&str> = vec!["--journal", &j];
    a.extend_from_slice(args);
    lab.kirt(a)
}

fn resource_version(lab: &Lab, ns: &str) -> String {
    lab.kubectl([
        "get",
        "pod",
        "victim",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
    .ok()
    .stdout()
}

/// The cells of the Markdown table under `## heading`.
fn table(md: &str, heading: &str) -> Vec<Vec<String>> {
    md.split(&format!("## {heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("no section {heading}:\n{md}"))
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// Headless Chromium: the DOM after the page ran (scripts included, if any got in), and a
/// screenshot kept under target/tmp as the test's artifact.
fn chromium(lab: &Lab, html: &Path, shot: &Path) -> String {
    let run = |args: &[String]| {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
            ])
            .arg(format!(
                "--user-data-dir={}",
                lab.dir.path().join("chromium").display()
            ))
            .args(args)
            .arg(format!("file://{}", html.display()))
            .env("HOME", lab.dir.path());
        let r = crate::common::run(c, "chromium".into());
        assert!(
            r.out.status.success(),
            "headless chromium failed (installed by `make lab-deps`: Debian's chromium package):\n{}",
            r.dump()
        );
        r
    };
    let dom = run(&["--dump-dom".into()]).stdout();
    run(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,3000".into(),
    ]);
    assert!(
        std::fs::metadata(shot)
            .map(|m| m.len() > 1000)
            .unwrap_or(false),
        "no screenshot at {}",
        shot.display()
    );
    dom
}

#[test]
fn resumed_and_undone_isolation_run_reports_its_timeline_in_markdown_and_html() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("report");
    lab.apply(
        &ns,
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: intruder}
rules: [{apiGroups: [""], resources: ["pods"], verbs: ["list"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: intruder}
subjects: [{kind: ServiceAccount, name: intruder}]
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: intruder}
"#,
    );
    let token = lab.service_account_token(&ns, "intruder");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: victim, labels: {app: shop}}\nspec: {serviceAccountName: intruder, containers: [{name: app, image: nginx}]}\n",
    );
    lab.kubectl([
        "wait",
        "--for",
        "condition=Ready",
        "pod/victim",
        "-n",
        &ns,
        "--timeout",
        "60s",
    ])
    .ok();
    let cache = lab.dir.path().join("kubectl-cache");
    lab.warm_discovery(&cache);
    let evidence = lab.dir.path().join("evidence");
    let audit_dir = lab.audit_dir().display().to_string();
    let params = [
        format!("namespace={}", ns.name),
        "pod=victim".to_string(),
        format!("evidence_to={}", evidence.display()),
        format!("audit_log={audit_dir}"),
    ];
    let mut args: Vec<&str> = vec!["run", "isolate-compromised-pod", "-o", "json"];
    for p in &params {
        args.extend(["-p", p]);
    }

    // part 1: evidence, then the isolation is refused (no --yes): the run fails mid-way
    let r = kirt_j(&lab, &args).code_is(4);
    let run_id = r.json()["run_id"].as_str().unwrap().to_string();
    // meanwhile the intruder goes on: allowed, denied, and a request with a hostile user agent
    let as_intruder = |a: &[&str]| lab.kubectl_as(&token, &cache, a);
    as_intruder(&["get", "pods", "-n", &ns]).ok();
    as_intruder(&["get", "secrets", "-n", &ns]);
    let ca = Path::new(&lab.get("KIRT_LAB_DIR")).join("apiserver/apiserver.crt");
    let url = format!(
        "{}/api/v1/namespaces/{}/pods",
        lab.get("KIRT_LAB_APISERVER"),
        ns.name
    );
    let curl = crate::common::sh(&format!(
        "curl -sf --cacert '{}' -H 'Authorization: Bearer {token}' -A '{}' '{url}' >/dev/null",
        ca.display(),
        PLANTED_UA.replace('\'', "'\\''")
    ));
    assert!(curl.out.status.success(), "{}", curl.dump());

    // part 2: resumed with --yes
    let before = resource_version(&lab, &ns);
    let r = kirt_j(&lab, &["run", "--resume", &run_id, "--yes", "-o", "json"]).ok();
    assert_eq!(r.json()["status"], "ok", "{}", r.dump());
    let after = resource_version(&lab, &ns);
    assert_ne!(before, after);
    // quarantined, the identity still works: the report must show it
    as_intruder(&["get", "pods", "-n", &ns]).ok();
    let user = format!("system:serviceaccount:{}:intruder", ns.name);
    wait_logged(&lab, &user, 4);

    let r = kirt_j(&lab, &["undo", &run_id, "--yes", "-o", "json"]).ok();
    let undo_id = r.json()["undo_run"].as_str().unwrap().to_string();
    // an undo is not a playbook run: resuming it would run the playbook again
    let r = kirt_j(&lab, &["run", "--resume", &undo_id, "--yes"]).code_is(4);
    assert!(r.stderr().contains("kirt undo"), "{}", r.dump());

    let r = kirt_j(
        &lab,
        &["runs", "report", &run_id, "--audit-log", &audit_dir],
    )
    .ok();
    let md = r.stdout();
    let steps = table(&md, "Steps");
    let order: Vec<(&str, &str, &str)> = steps
        .iter()
        .map(|c| {
            (
                c[1].as_str(),
                c[3].as_str(),
                c[7].split(':').next().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("evidence", "1", "ok"),
            ("isolate", "1", "failed"),
            ("isolate", "2", "ok"),
            ("check", "2", "ok"),
            ("notify", "2", "skipped"),
        ],
        "{md}"
    );
    assert!(steps[2][9].contains("confirmed by --yes"), "{md}");
    let parts = table(&md, "Who ran it");
    let origins: Vec<&str> = parts.iter().map(|p| p[1].as_str()).collect();
    assert_eq!(origins, ["manual", "resume"], "{md}");
    let changes = table(&md, "Changes");
    let pod = changes
        .iter()
        .find(|c| c[2].starts_with(&format!("Pod {}/victim", ns.name)))
        .unwrap_or_else(|| panic!("{md}"));
    assert_eq!(pod[3], format!("{before} → {after}"), "{md}");
    assert!(pod[4].contains("kirt.dev/quarantined"), "{md}");
    assert!(
        changes.iter().any(|c| c[2].contains("NetworkPolicy")
            && c[2].contains("kirt-quarantine")
            && c[3].starts_with("– →")),
        "{md}"
    );
    // the bundle's sha256 as sha256sum computes it
    let bundle = std::fs::read_dir(&evidence)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let sum = sh_in(lab.dir.path(), &format!("sha256sum '{}'", bundle.display()));
    let sha = sum.split_whitespace().next().unwrap();
    let artifacts = table(&md, "Evidence and backups");
    assert_eq!(artifacts[0][4], sha, "{md}");
    let events: Vec<&str> = table(&md, "Kubernetes Events")
        .iter()
        .map(|e| match e[3].as_str() {
            "Quarantined" => "Quarantined",
            "Released" => "Released",
            _ => "other",
        })
        .collect();
    assert!(
        events.contains(&"Quarantined") && events.contains(&"Released"),
        "{md}"
    );
    assert!(md.contains(&format!("by run {undo_id}")), "{md}");
    assert!(md.contains("4 requests, 3 allowed, **1 denied**"), "{md}");
    // the intruder's calls are interleaved with the run: between part 1's failure and part 2
    let timeline = table(&md, "Timeline");
    let at = |pred: &dyn Fn(&Vec<String>) -> bool| {
        timeline
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("{md}"))
    };
    let failed = at(&|l| l[2].contains("run ended: failed"));
    let denied = at(&|l| l[1] == "audit" && l[2].contains("secrets") && l[2].contains("403"));
    let resumed = at(&|l| l[2].contains("part 2 started: resume"));
    let undone = at(&|l| l[1] == "undo");
    assert!(
        failed < denied && denied < resumed && resumed < undone,
        "{md}"
    );
    let audit_rows = timeline.iter().filter(|l| l[1] == "audit").count();
    assert_eq!(audit_rows, 4, "{md}");
    assert!(!md.contains("<img") && !md.contains("<script"), "{md}");

    // the undo's own report links back to the run it reversed
    let r = kirt_j(&lab, &["runs", "report", &undo_id]).ok();
    let u = r.stdout();
    assert!(u.contains(&format!("undo of run {run_id}")), "{u}");
    let released = resource_version(&lab, &ns);
    let uc = table(&u, "Changes");
    assert!(
        uc.iter().any(|c| c[1].contains("quarantine.release") && c[3] == format!("{after} → {released}")),
        "{u}"
    );

    // HTML: one file, opened by Chromium; every step is on the rendered page, nothing ran
    let html = lab.dir.path().join("report.html");
    let r = kirt_j(
        &lab,
        &[
            "runs",
            "report",
            &run_id,
            "--format",
            "html",
            "--out",
            html.to_str().unwrap(),
            "--audit-log",
            &audit_dir,
            "-o",
            "json",
        ],
    )
    .ok();
    let written: Value = r.json();
    let text = std::fs::read_to_string(&html).unwrap();
    assert_eq!(written["bytes"].as_u64().unwrap() as usize, text.len());
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kirt-report-{run_id}.png"));
    let dom = chromium(&lab, &html, &shot);
    for step in ["evidence", "isolate", "check", "notify"] {
        assert!(
            dom.contains(&format!("<td class=\"step\">{step}</td>")),
            "step {step} not on the rendered page (screenshot {})",
            shot.display()
        );
    }
    assert!(
        dom.contains(&format!("<title>kirt run {run_id}")),
        "a planted script ran: {dom}"
    );
    assert!(!dom.contains("pwned</title>"), "{dom}");
    assert!(
        dom.contains("&lt;script&gt;document.title"),
        "the planted agent is shown as text"
    );
    eprintln!("report screenshot: {}", shot.display());

    // an unknown run is exit 6
    let r = kirt_j(&lab, &["runs", "report", "20990101T000000Z-00000000"]).code_is(6);
    assert!(r.stderr().contains("kirt runs list"), "{}", r.dump());
}
