//! A synthetic apiserver audit log for `benches/audit.sh`, made from real event shapes: lines of
//! the lab apiserver's own audit log are the templates; each generated event gets a fresh
//! auditID and time, and a small share of them concern the bench pod (its ServiceAccount's
//! requests, requests on the pod, requests from its IP) — the rest belong to other users and
//! namespaces, as in a busy cluster.
//!
//!   audit_log TEMPLATE_LOG OUT MIB NAMESPACE POD SERVICEACCOUNT POD_IP
//!     → writes ~MIB MiB to OUT, prints the number of events that concern the pod

use std::io::{BufRead, BufWriter, Write};

use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [template, out, mib, ns, pod, sa, ip] = &args[..] else {
        eprintln!("usage: audit_log TEMPLATE_LOG OUT MIB NAMESPACE POD SERVICEACCOUNT POD_IP");
        std::process::exit(2);
    };
    let target = mib.parse::<u64>().expect("MIB") << 20;
    let templates: Vec<Value> =
        std::io::BufReader::new(std::fs::File::open(template).expect("template log"))
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|v| v["auditID"].is_string())
            .take(5000)
            .collect();
    assert!(!templates.is_empty(), "no audit events in {template}");
    let user = format!("system:serviceaccount:{ns}:{sa}");
    // two days ago, so that every event is before `now` (kirt's window ends when it starts)
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
        - 2 * 86_400_000_000;
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(out).expect("out"));
    let (mut written, mut n, mut selected) = (0u64, 0u64, 0u64);
    while written < target {
        let mut e = templates[n as usize % templates.len()].clone();
        let micros = base + n as i64 * 50;
        let ts = timestamp(micros);
        e["auditID"] = json!(format!("{:08x}-bench-4000-8000-{:012x}", n >> 16, n));
        e["requestReceivedTimestamp"] = json!(ts);
        e["stageTimestamp"] = json!(timestamp(micros + 1200));
        // other tenants: the template's object moves to one of 50 namespaces
        if let Some(o) = e["objectRef"].as_object_mut() {
            if o.contains_key("namespace") {
                o.insert("namespace".into(), json!(format!("team-{}", n % 50)));
            }
        }
        let concerns = match n % 1000 {
            0..=9 => {
                e["user"]["username"] = json!(user);
                true
            }
            10..=12 => {
                e["objectRef"] = json!({"resource": "pods", "namespace": ns, "name": pod, "apiVersion": "v1", "subresource": "exec"});
                true
            }
            13 => {
                e["sourceIPs"] = json!([ip]);
                true
            }
            _ => false,
        };
        selected += u64::from(concerns);
        let line = serde_json::to_vec(&e).expect("json");
        w.write_all(&line).expect("write");
        w.write_all(b"\n").expect("write");
        written += line.len() as u64 + 1;
        n += 1;
    }
    w.flush().expect("flush");
    println!("{selected}");
}

/// RFC 3339 with microseconds, as the apiserver writes it.
fn timestamp(micros: i64) -> String {
    jiff::Timestamp::from_microsecond(micros)
        .expect("a time")
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}
