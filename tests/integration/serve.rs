//! `kirt serve`: Falco events (in Falco's JSON shape: the "Terminal shell in container" rule of
//! falcosecurity/rules with its output_fields) posted to a real `kirt serve` on loopback, which
//! runs isolate-compromised-pod against the lab. Outcomes are waited for, never timed: the
//! latency figures come from `make bench`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::k8s::{desired_state, labels};
use crate::common::process::{wait_serving, Held};
use crate::common::{self, free_port, lab, wait_until, Lab};

const TOKEN: &str = "s3rve-t0ken-for-the-lab-tests";

/// The event Falco's "Terminal shell in container" rule sends (falco_rules.yaml, Falco 0.38+
/// output with `%container.info` and the k8s fields appended).
fn shell_event(ns: &str, pod: &str) -> Value {
    let now = common::sh("date -u +%Y-%m-%dT%H:%M:%S.%NZ").stdout();
    json!({
        "hostname": "lab-node-1",
        "output": format!("12:51:00.891344775: Notice A shell was spawned in a container with an attached terminal | evt_type=execve user=root user_uid=0 user_loginuid=-1 process=bash proc_exepath=/usr/bin/bash parent=runc command=bash terminal=34816 exe_flags=EXE_WRITABLE container_id=734cfc07ae4d container_name=c container_image_repository=docker.io/library/nginx container_image_tag=latest k8s_pod_name={pod} k8s_ns_name={ns}"),
        "output_fields": {
            "container.id": "734cfc07ae4d", "container.image.repository": "docker.io/library/nginx",
            "container.image.tag": "latest", "container.name": "c", "evt.arg.flags": "EXE_WRITABLE",
            "evt.time": 1718000000891344775_u64, "evt.type": "execve", "k8s.ns.name": ns, "k8s.pod.name": pod,
            "proc.cmdline": "bash", "proc.exepath": "/usr/bin/bash", "proc.name": "bash",
            "proc.pname": "runc", "proc.tty": 34816, "user.loginuid": -1, "user.name": "root", "user.uid": 0
        },
        "priority": "Notice",
        "rule": "Terminal shell in container",
        "source": "syscall",
        "tags": ["T1059", "container", "maturity_stable", "mitre_execution", "shell"],
        "time": now.trim(),
    })
}

fn rules(allow: &str, evidence: &Path, extra: &str) -> String {
    format!(
        r#"apiVersion: kirt.dev/v1
kind: ServeRules
allow_namespaces: [{allow}]
rate_limit: {{burst: 3, per_minute: 1}}
rules:
  - name: shell-in-container
    match:
      rule: "Terminal shell in container"
      priority: notice
      tags: [container, shell]
      fields: {{proc.name: [bash, sh]}}
    playbook: isolate-compromised-pod
    params:
      namespace: "{{{{ event.namespace }}}}"
      pod: "{{{{ event.pod }}}}"
      reason: "falco: {{{{ event.rule }}}}"
      evidence_to: "{}"
{extra}"#,
        evidence.display()
    )
}

struct Serve {
    held: Held,
    port: u16,
    journal: PathBuf,
}

fn serve(lab: &Lab, rules_text: &str, args: &[&str], hold_at: Option<&str>) -> Serve {
    serve_as(lab, rules_text, args, hold_at, Some(TOKEN))
}

/// `kirt serve` with `token` (or none) in KIRT_SERVE_TOKEN.
fn serve_as(
    lab: &Lab,
    rules_text: &str,
    args: &[&str],
    hold_at: Option<&str>,
    token: Option<&str>,
) -> Serve {
    let journal = lab.dir.path().join(common::unique("journal"));
    let file = lab
        .dir
        .path()
        .join(common::unique("rules"))
        .with_extension("yaml");
    std::fs::write(&file, rules_text).unwrap();
    let port = free_port();
    let (j, f, listen) = (
        journal.display().to_string(),
        file.display().to_string(),
        format!("127.0.0.1:{port}"),
    );
    let mut all = vec!["--journal", &j, "serve", "--rules", &f, "--listen", &listen];
    all.extend_from_slice(args);
    let mut cmd = lab.kirt_cmd(all);
    match token {
        Some(t) => cmd.env("KIRT_SERVE_TOKEN", t),
        None => cmd.env_remove("KIRT_SERVE_TOKEN"),
    };
    if let Some(phase) = hold_at {
        cmd.env("KIRT_HOLD_AT", phase);
    }
    let mut held = Held::spawn(cmd);
    wait_serving(&mut held.child, port, "kirt serve");
    Serve {
        held,
        port,
        journal,
    }
}

fn connect(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

/// Writes `head` and `body`, then reads one answer: its head, and as many body bytes as its
/// Content-Length says (never "until the server closes": the answer is complete without that).
/// `Err` when the connection failed or what came back is not HTTP.
fn exchange(mut s: impl Read + Write, head: &[u8], body: &[u8]) -> std::io::Result<(u16, String)> {
    s.write_all(head)?;
    s.write_all(body)?;
    s.flush()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("no HTTP answer: {:?}", String::from_utf8_lossy(&got)),
            ));
        }
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_string();
    let not_http = || std::io::Error::new(std::io::ErrorKind::InvalidData, head.clone());
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|h| h.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(not_http)?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .ok_or_else(not_http)?;
    while got.len() < end + length {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(not_http());
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok((
        status,
        String::from_utf8_lossy(&got[end..end + length]).to_string(),
    ))
}

/// One HTTP/1.1 request; (status, body).
fn request(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    exchange(connect(port), head.as_bytes(), body).unwrap()
}

fn post(port: u16, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: kirt\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    request(port, &head, body)
}

fn post_event(port: u16, event: &Value) -> Value {
    let (status, body) = post(port, Some(TOKEN), event.to_string().as_bytes());
    assert!(status == 200 || status == 202, "{status} {body}");
    serde_json::from_str(&body).unwrap()
}

impl Serve {
    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.journal.join("serve/events.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("serve journal lines are JSON"))
            .collect()
    }

    fn decisions(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|l| l["type"] == "event")
            .map(|l| l["decision"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits for the run-end line of `run`.
    fn run_end(&self, run: &str) -> Value {
        let mut found = Value::Null;
        wait_until(
            Duration::from_secs(120),
            &format!("run {run} to end"),
            || {
                found = self
                    .lines()
                    .into_iter()
                    .find(|l| l["type"] == "run-end" && l["run"] == run)
                    .unwrap_or(Value::Null);
                !found.is_null()
            },
        );
        found
    }

    fn metrics_text(&self) -> String {
        let (status, body) = request(
            self.port,
            "GET /metrics HTTP/1.1\r\nHost: kirt\r\nConnection: close\r\n\r\n",
            b"",
        );
        assert_eq!(status, 200);
        body
    }

    /// /metrics over HTTPS without a client certificate (as Prometheus scrapes).
    fn metrics_text_tls(&self, ca: &Path) -> String {
        let (status, body) = tls_get(self.port, ca, "/metrics").unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The unlabelled counters, by name.
    fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let body = self.metrics_text();
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .unwrap()
            .samples
            .into_iter()
            .filter_map(|s| match s.value {
                prometheus_parse::Value::Counter(v) => Some((s.metric, v)),
                _ => None,
            })
            .collect()
    }
}

fn victim(lab: &Lab, ns: &str, name: &str) {
    lab.apply(
        ns,
        &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: shop}}}}\nspec: {{containers: [{{name: c, image: nginx}}]}}\n"),
    );
    lab.wait_pod_running(ns, name);
}

#[test]
fn a_shell_event_quarantines_the_pod_once_and_the_run_names_the_event() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve");
    victim(&lab, &ns, "victim");
    let evidence = lab.dir.path().join("evidence");
    let s = serve(
        &lab,
        &rules(&ns, &evidence, "    confirm: never\n"),
        &[],
        None,
    );

    let event = shell_event(&ns, "victim");
    let first = post_event(s.port, &event);
    assert_eq!(first["decision"], "started", "{first}");
    let run = first["run"].as_str().unwrap().to_string();
    // the same event again and again: one run
    for _ in 0..9 {
        assert_eq!(post_event(s.port, &event)["decision"], "deduplicated");
    }
    let end = s.run_end(&run);
    assert_eq!(end["status"], "ok", "{end}\n{}", s.held.stderr());
    assert!(end["latency_seconds"].as_f64().unwrap() >= 0.0, "{end}");
    let l = labels(&lab.get_json(&["pod", "victim", "-n", &ns]));
    assert_eq!(
        l.get("kirt.dev/quarantined").map(String::as_str),
        Some("true")
    );
    lab.kirt(["quarantine", "verify", "victim", "-n", &ns]).ok();
    assert!(
        !common::files_under(&evidence).is_empty(),
        "no evidence bundle"
    );
    let d = s.decisions();
    assert_eq!(d.len(), 10);
    assert_eq!(d.iter().filter(|x| *x == "started").count(), 1, "{d:?}");

    // the run's journal names the event; the report shows it at the top
    let j = s.journal.display().to_string();
    let runs = std::fs::read_dir(&s.journal)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "jsonl")
        })
        .count();
    assert_eq!(runs, 1);
    let journal = std::fs::read_to_string(s.journal.join(format!("{run}.jsonl"))).unwrap();
    let start: Value = serde_json::from_str(journal.lines().next().unwrap()).unwrap();
    let origin = &start["origin"];
    assert_eq!(origin["kind"], "event", "{start}");
    assert_eq!(origin["falco_rule"], "Terminal shell in container");
    assert_eq!(origin["pod"], "victim");
    assert_eq!(origin["entry"], first["entry"]);
    assert!(origin["digest"].as_str().unwrap().starts_with("sha256:"));
    // the quarantine was confirmed by the rule, not by a --yes nobody typed
    let confirmed: Vec<Value> = journal
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["type"] == "confirmed")
        .collect();
    assert!(!confirmed.is_empty(), "{journal}");
    for c in &confirmed {
        assert_eq!(
            c["answer"], "confirmed by kirt serve rule shell-in-container (confirm: never)",
            "{c}"
        );
    }
    let report = lab
        .kirt(["--journal", &j, "runs", "report", &run])
        .ok()
        .stdout();
    assert!(
        report.contains("Falco event \"Terminal shell in container\""),
        "{report}"
    );
    assert!(
        report.contains("confirmed by kirt serve rule shell-in-container (confirm: never)")
            && !report.contains("--yes"),
        "{report}"
    );
    // nothing of the event's command line or output in the serve journal
    let sj = std::fs::read_to_string(s.journal.join("serve/events.jsonl")).unwrap();
    assert!(
        !sj.contains("proc_exepath") && !sj.contains("/usr/bin/bash"),
        "{sj}"
    );
    let m = s.metrics();
    assert_eq!(m["kirt_serve_events_received_total"], 10.0);
    assert_eq!(m["kirt_serve_events_acted_total"], 1.0);
    assert_eq!(m["kirt_serve_events_deduplicated_total"], 9.0);
}

#[test]
fn bad_requests_are_refused_and_nothing_runs() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-bad");
    let evidence = lab.dir.path().join("evidence");
    // kube-system matches "*" only when listed by name: here it is not
    let s = serve(
        &lab,
        &rules("\"*\"", &evidence, "    dry_run: true\n"),
        &[],
        None,
    );
    let body = shell_event(&ns, "victim").to_string();

    let (st, b) = post(s.port, None, body.as_bytes());
    assert_eq!(st, 401, "{b}");
    let (st, b) = post(
        s.port,
        Some("s3rve-t0ken-for-the-lab-tesTS"),
        body.as_bytes(),
    );
    assert_eq!(st, 401, "{b}");
    let (st, b) = post(
        s.port,
        Some(TOKEN),
        b"{\"rule\": \"Terminal shell in container\"",
    );
    assert_eq!(st, 400);
    assert!(b.contains("not a Falco event") && b.contains("EOF"), "{b}");
    let (st, b) = post(
        s.port,
        Some(TOKEN),
        br#"{"rule": "x", "priority": "urgent"}"#,
    );
    assert_eq!(st, 400);
    assert!(b.contains("unknown priority"), "{b}");
    // 10 MB declared: refused on the declared length, before any of it is read. The client
    // sends only the head and then reads: the server never closes on bytes it has not read (a
    // reset there could drop the answer), so no timing can change the outcome.
    let head = |framing: &str| {
        format!(
            "POST / HTTP/1.1\r\nHost: kirt\r\nAuthorization: Bearer {TOKEN}\r\n{framing}\r\n\r\n"
        )
    };
    let ten_mb = head(&format!("Content-Length: {}", 10 * 1024 * 1024));
    let (st, b) = exchange(connect(s.port), ten_mb.as_bytes(), b"").unwrap();
    assert_eq!(st, 413, "{b}");
    // chunked, so no length to refuse on: the server reads up to the cap. The client sends one
    // byte more than the cap and then waits, so all it sent is read when the answer comes.
    let over = 1024 * 1024 + 1;
    let mut chunk = format!("{over:x}\r\n").into_bytes();
    chunk.resize(chunk.len() + over, b' ');
    let chunked = head("Transfer-Encoding: chunked");
    let (st, b) = exchange(connect(s.port), chunked.as_bytes(), &chunk).unwrap();
    assert_eq!(st, 413, "{b}");
    // a compressed body is refused, never inflated (Falco never compresses one)
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let coded = head(&format!(
        "Content-Encoding: gzip\r\nContent-Length: {}",
        gz.len()
    ));
    let (st, b) = exchange(connect(s.port), coded.as_bytes(), &gz).unwrap();
    assert_eq!(st, 415, "{b}");
    // none of these was an event: nothing journaled, nothing run
    assert!(s.decisions().is_empty(), "{:?}", s.lines());

    // what Falco's http_output sends with `compress_uploads: true`: it only asks for a
    // compressed answer (TE: gzip), its body is plain
    let system = shell_event("kube-system", "kube-proxy-x").to_string();
    let te = head(&format!(
        "Content-Type: application/json\r\nTE: gzip\r\nConnection: TE\r\nContent-Length: {}",
        system.len()
    ));
    let (st, b) = exchange(connect(s.port), te.as_bytes(), system.as_bytes()).unwrap();
    assert_eq!(st, 200, "{b}");
    let r: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(r["decision"], "namespace-not-allowed", "{r}");
    assert!(r["run"].is_null());
    let other = json!({"rule": "Write below etc", "priority": "Error", "output_fields": {"k8s.ns.name": &*ns, "k8s.pod.name": "victim"}, "tags": [], "time": "2024-06-10T06:13:20Z"});
    assert_eq!(post_event(s.port, &other)["decision"], "no-match");
    assert_eq!(s.decisions(), ["namespace-not-allowed", "no-match"]);
    let m = s.metrics();
    assert_eq!(m["kirt_serve_events_refused_total"], 1.0);
    assert_eq!(m["kirt_serve_events_acted_total"], 0.0);
    let text = s.metrics_text();
    for (reason, n) in [("unauthorized", 2), ("too_large", 2), ("malformed", 3)] {
        assert!(
            text.contains(&format!(
                "kirt_serve_requests_rejected_total{{reason=\"{reason}\"}} {n}\n"
            )),
            "{text}"
        );
    }
    let runs = std::fs::read_dir(&s.journal).unwrap().count();
    assert_eq!(runs, 1, "only the serve journal's directory");
}

#[test]
fn dry_runs_change_nothing_on_the_cluster() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-dry");
    victim(&lab, &ns, "victim");
    let evidence = lab.dir.path().join("evidence");
    let before = desired_state(&lab.get_json(&["pod", "victim", "-n", &ns]));
    let no_policies = |lab: &Lab| {
        lab.kubectl(["get", "networkpolicy", "-n", &ns, "-o", "name"])
            .ok()
            .stdout()
            .trim()
            .is_empty()
    };
    // a rule's dry_run, then --dry-run over a rule that would act
    for (extra, args) in [
        ("    dry_run: true\n", &[][..]),
        ("    confirm: never\n", &["--dry-run"][..]),
    ] {
        let s = serve(&lab, &rules(&ns, &evidence, extra), args, None);
        let r = post_event(s.port, &shell_event(&ns, "victim"));
        assert_eq!(r["decision"], "dry-run", "{r}");
        let end = s.run_end(r["run"].as_str().unwrap());
        assert_eq!(end["status"], "ok", "{end}\n{}", s.held.stderr());
        assert_eq!(
            desired_state(&lab.get_json(&["pod", "victim", "-n", &ns])),
            before
        );
        assert!(no_policies(&lab));
    }
}

#[test]
fn a_mutating_rule_without_confirm_never_is_refused_at_its_line() {
    let Some(lab) = lab() else { return };
    let file = lab.dir.path().join("rules.yaml");
    std::fs::write(&file, rules("shop", Path::new("/tmp/ev"), "")).unwrap();
    let f = file.display().to_string();
    let r = lab.kirt(["serve", "--check", "--rules", &f]).code_is(2);
    assert!(
        r.stderr()
            .contains(&format!("{f}:6:5: rule shell-in-container"))
            && r.stderr().contains("confirm: never"),
        "{}",
        r.dump()
    );
    // --check passes once it is there, and serving needs the secret
    std::fs::write(
        &file,
        rules("shop", Path::new("/tmp/ev"), "    confirm: never\n"),
    )
    .unwrap();
    lab.kirt(["serve", "--check", "--rules", &f]).ok();
    let r = lab.kirt(["serve", "--rules", &f]).code_is(2);
    assert!(r.stderr().contains("KIRT_SERVE_TOKEN"), "{}", r.dump());
}

#[test]
fn a_hundred_events_in_a_second_hold_the_rate_limit_and_are_all_journaled() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-flood");
    let evidence = lab.dir.path().join("evidence");
    let s = serve(
        &lab,
        &rules(&ns, &evidence, "    dry_run: true\n"),
        &[],
        None,
    );
    let started = std::time::Instant::now();
    let answers: Vec<String> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..10)
            .map(|t| {
                let (port, ns) = (s.port, ns.name.clone());
                sc.spawn(move || {
                    (0..10)
                        .map(|i| {
                            let r = post_event(port, &shell_event(&ns, &format!("pod-{t}-{i}")));
                            r["decision"].as_str().unwrap().to_string()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let d = s.decisions();
    assert_eq!(d.len(), 100, "every event journaled");
    let mut sorted = d.clone();
    let mut given = answers.clone();
    sorted.sort();
    given.sort();
    assert_eq!(sorted, given, "the journal says what the answers said");
    let acted = d.iter().filter(|x| *x == "dry-run").count();
    let limited = d.iter().filter(|x| *x == "rate-limited").count();
    // burst 3, one more per minute
    assert!(acted >= 1 && acted as f64 <= 3.0 + minutes.ceil(), "{d:?}");
    assert_eq!(acted + limited, 100, "{d:?}");
    let entries: std::collections::BTreeSet<String> = s
        .lines()
        .iter()
        .filter(|l| l["type"] == "event")
        .map(|l| l["entry"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(entries.len(), 100);
    let m = s.metrics();
    assert_eq!(m["kirt_serve_events_received_total"], 100.0);
    assert_eq!(m["kirt_serve_events_rate_limited_total"], limited as f64);
}

#[test]
fn sigterm_hands_back_the_running_playbook_and_resume_finishes_it() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-term");
    victim(&lab, &ns, "victim");
    let evidence = lab.dir.path().join("evidence");
    let mut s = serve(
        &lab,
        &rules(&ns, &evidence, "    confirm: never\n"),
        &[],
        Some("step:isolate"),
    );
    let r = post_event(s.port, &shell_event(&ns, "victim"));
    let run = r["run"].as_str().unwrap().to_string();
    s.held.wait_held("step:isolate", Duration::from_secs(120));
    let port = s.port;
    let (code, _, stderr) = s.held.terminate();
    assert_eq!(code, 143, "{stderr}");
    // it stopped accepting
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let journal = std::fs::read_to_string(s.journal.join(format!("{run}.jsonl"))).unwrap();
    let end: Value = serde_json::from_str(journal.lines().last().unwrap()).unwrap();
    assert_eq!(end["type"], "run-end", "{journal}");
    assert_eq!(end["status"], "interrupted");
    assert!(
        !labels(&lab.get_json(&["pod", "victim", "-n", &ns])).contains_key("kirt.dev/quarantined")
    );

    let j = s.journal.display().to_string();
    let r = lab
        .kirt([
            "--journal",
            &j,
            "run",
            "--resume",
            &run,
            "--yes",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(r.json()["status"], "ok", "{}", r.dump());
    assert_eq!(
        labels(&lab.get_json(&["pod", "victim", "-n", &ns]))
            .get("kirt.dev/quarantined")
            .map(String::as_str),
        Some("true")
    );
}

/// A TLS connection (not yet handshaken) that trusts `ca` for the server and presents
/// `client` (cert, key) when given.
fn tls_connect(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let certs = |p: &Path| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(p)
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    rustls::StreamOwned::new(conn, connect(port))
}

/// An HTTPS event post; `Err`: the handshake or the connection failed, or no HTTP answer.
fn tls_post(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let head = format!(
        "POST / HTTP/1.1\r\nHost: kirt\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    exchange(tls_connect(port, ca, client), head.as_bytes(), body)
}

/// An HTTPS GET without a client certificate.
fn tls_get(port: u16, ca: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: kirt\r\n\r\n");
    exchange(tls_connect(port, ca, None), head.as_bytes(), b"")
}

#[test]
fn client_certificates_authenticate_falco_over_mutual_tls() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-mtls");
    victim(&lab, &ns, "victim");
    let pki = kirt::scratch::pki::Pki::create(&lab.dir.path().join("ours")).unwrap();
    let rogue = kirt::scratch::pki::Pki::create(&lab.dir.path().join("rogue")).unwrap();
    let evidence = lab.dir.path().join("evidence");
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    // no KIRT_SERVE_TOKEN: the client certificate alone authenticates (as Falco's http_output
    // with `mtls: true`, which cannot send a header)
    let s = serve_as(
        &lab,
        &rules(&ns, &evidence, "    dry_run: true\n"),
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca],
        None,
        None,
    );
    let body = shell_event(&ns, "victim").to_string();

    // no client certificate: the handshake passes (probes and scrapes need no certificate),
    // the event does not
    let (st, b) = tls_post(s.port, &pki.ca, None, body.as_bytes()).unwrap();
    assert_eq!(st, 401, "{b}");
    assert!(b.contains("client certificate"), "{b}");
    // a certificate from another CA: the handshake is refused, no HTTP answer at all
    let r = tls_post(
        s.port,
        &pki.ca,
        Some((&rogue.client_cert, &rogue.client_key)),
        body.as_bytes(),
    );
    assert!(
        r.is_err(),
        "a foreign client certificate was answered: {r:?}"
    );
    // plain HTTP to the TLS port gets no HTTP answer
    let head = format!(
        "POST / HTTP/1.1\r\nHost: kirt\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let r = exchange(connect(s.port), head.as_bytes(), body.as_bytes());
    assert!(r.is_err(), "plain HTTP was answered on the TLS port: {r:?}");
    assert!(s.decisions().is_empty(), "{:?}", s.lines());

    // our client certificate: the event is accepted and its run started
    let (st, b) = tls_post(
        s.port,
        &pki.ca,
        Some((&pki.client_cert, &pki.client_key)),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(st, 202, "{b}");
    let r: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(r["decision"], "dry-run", "{r}");
    let end = s.run_end(r["run"].as_str().unwrap());
    assert_eq!(end["status"], "ok", "{end}\n{}", s.held.stderr());
    assert_eq!(s.decisions(), ["dry-run"]);
    let text = s.metrics_text_tls(&pki.ca);
    assert!(
        text.contains("kirt_serve_requests_rejected_total{reason=\"unauthorized\"} 1\n"),
        "{text}"
    );
}

#[test]
fn with_client_ca_and_a_secret_both_are_required() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("serve-both");
    let pki = kirt::scratch::pki::Pki::create(&lab.dir.path().join("pki")).unwrap();
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let s = serve(
        &lab,
        &rules(&ns, Path::new("/tmp/ev"), "    dry_run: true\n"),
        &["--tls-cert", &cert, "--tls-key", &key, "--client-ca", &ca],
        None,
    );
    // a verified certificate without the secret is not enough
    let event = json!({"rule": "Write below etc", "priority": "Error", "output_fields": {}, "tags": [], "time": "2024-06-10T06:13:20Z"});
    let client = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    let (st, b) = tls_post(s.port, &pki.ca, client, event.to_string().as_bytes()).unwrap();
    assert_eq!(st, 401, "{b}");
    assert!(b.contains("shared secret"), "{b}");
    assert!(s.decisions().is_empty());
}

#[test]
fn tls_misconfigurations_refuse_to_start() {
    let Some(lab) = lab() else { return };
    let file = lab.dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        rules("shop", Path::new("/tmp/ev"), "    dry_run: true\n"),
    )
    .unwrap();
    let f = file.display().to_string();
    let pki = kirt::scratch::pki::Pki::create(&lab.dir.path().join("pki")).unwrap();
    let other = kirt::scratch::pki::Pki::create(&lab.dir.path().join("other")).unwrap();
    let p = |x: &Path| x.display().to_string();
    let missing = lab.dir.path().join("missing.pem").display().to_string();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let cases: [(Vec<String>, &str); 5] = [
        (
            vec!["--client-ca".into(), p(&pki.ca)],
            "--client-ca needs TLS",
        ),
        (
            vec!["--tls-cert".into(), p(&pki.server_cert)],
            "--tls-cert and --tls-key go together",
        ),
        (
            vec![
                "--tls-cert".into(),
                missing.clone(),
                "--tls-key".into(),
                p(&pki.server_key),
            ],
            &*format!("--tls-cert {missing}"),
        ),
        (
            vec![
                "--tls-cert".into(),
                p(&pki.server_cert),
                "--tls-key".into(),
                p(&other.server_key),
            ],
            "is the key the certificate's?",
        ),
        (
            vec!["--listen".into(), "0.0.0.0:2803".into()],
            "plain HTTP on a non-loopback address",
        ),
    ];
    for (extra, message) in cases {
        let mut args = vec!["serve", "--rules", &f];
        if !extra.iter().any(|a| a == "--listen") {
            args.extend(["--listen", &listen]);
        }
        args.extend(extra.iter().map(String::as_str));
        let mut cmd = lab.kirt_cmd(&args);
        cmd.env("KIRT_SERVE_TOKEN", TOKEN);
        let r = common::process::run(cmd, format!("kirt {}", args.join(" "))).code_is(2);
        assert!(r.stderr().contains(message), "{extra:?}: {}", r.dump());
        // nothing listened
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    }
}
