//! `kirt backup create|list|prune`: etcd backups against real etcd 3.4/3.5 and real S3 servers,
//! checked with the real age, zstd and etcdutl CLIs and the S3 API.

use std::path::Path;
use std::time::Duration;

use crate::common::etcd::{member_id, populate_etcd, populate_random};
use crate::common::keys::{age_key, ssh_key};
use crate::common::s3::{self, create_bucket};
use crate::common::{self, files_under, lab, sh, Lab};

/// Decrypts with the age CLI, decompresses with the zstd CLI, checks the result with etcdutl
/// against the manifest, and restores it (with etcdutl's hash check).
pub(crate) fn check_with_cli_tools(
    lab: &Lab,
    object: &Path,
    manifest: &serde_json::Value,
    identity: &str,
) {
    let snap = lab
        .dir
        .path()
        .join(common::unique("snap"))
        .with_extension("db");
    sh(&format!(
        "age -d -i {identity} {} | zstd -dq > {}",
        object.display(),
        snap.display()
    ))
    .ok();
    let sha = sh(&format!("sha256sum {} | cut -d' ' -f1", snap.display()))
        .ok()
        .stdout();
    assert_eq!(
        sha.trim(),
        manifest["snapshot"]["sha256"],
        "snapshot sha256"
    );
    let path = lab.path();
    let st = sh(&format!(
        "PATH={path} etcdutl snapshot status -w json {}",
        snap.display()
    ))
    .ok();
    let status: serde_json::Value = serde_json::from_str(st.stdout().trim()).expect("etcdutl json");
    assert_eq!(
        status["revision"], manifest["etcd"]["revision"],
        "{status} vs manifest"
    );
    // etcdutl's totalKey counts the entries of every bbolt bucket (etcd's own meta, members and
    // cluster buckets too); kirt records the user keys live at the revision (`--count-keys all`).
    // On a fresh etcd with no overwrites the difference is exactly those few internal entries.
    if let Some(keys) = manifest["etcd"]["key_count"].as_i64() {
        let total = status["totalKey"].as_i64().unwrap();
        assert!(
            (keys..keys + 10).contains(&total),
            "{status} vs manifest key_count {keys}"
        );
    }
    let data = lab.dir.path().join(common::unique("restored"));
    sh(&format!(
        "PATH={path} etcdutl snapshot restore {} --data-dir {} 2>&1",
        snap.display(),
        data.display()
    ))
    .ok();
    assert!(data.join("member").exists());
}

#[test]
fn etcd35_to_s3_with_x25519_restores_with_cli_tools() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let rev = populate_etcd(&etcd.endpoint, "/kirt-test", 50_000);
    let (identity, recipient) = age_key(&lab);
    let s3 = lab.moto();
    let bucket = lab.moto_bucket("backup-s3");
    let metrics = lab.dir.path().join("kirt.prom");
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            &format!("s3://{bucket}/nightly"),
            "--endpoint-url",
            &lab.get("KIRT_LAB_S3_ENDPOINT"),
            "--path-style",
            "--part-size",
            "5MiB",
            "--recipient",
            &recipient,
            "--cluster-name",
            "prod",
            "--count-keys",
            "all",
            "--metrics-file",
            metrics.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok();
    let res = r.json();
    assert_eq!(res["revision"], rev);
    assert_eq!(res["key_count"], 50_000);
    let id = res["id"].as_str().unwrap();
    let mut keys = s3::keys(&s3, &bucket);
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("nightly/prod/{id}.etcd.zst.age"),
            format!("nightly/prod/{id}.manifest.json")
        ]
    );
    let obj = lab.dir.path().join("obj.age");
    s3::download(&s3, &bucket, &keys[0], &obj);
    let mpath = lab.dir.path().join("manifest.json");
    s3::download(&s3, &bucket, &keys[1], &mpath);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    assert_eq!(manifest["etcd"]["version"].as_str().unwrap()[..4], *"3.5.");
    assert_eq!(
        manifest["object_size"],
        std::fs::metadata(&obj).unwrap().len()
    );
    let stored_sha = sh(&format!("sha256sum {} | cut -d' ' -f1", obj.display()))
        .ok()
        .stdout();
    assert_eq!(stored_sha.trim(), manifest["object_sha256"]);
    // fingerprints, never keys
    let text = std::fs::read_to_string(&mpath).unwrap();
    assert!(
        !text.contains(&recipient) && text.contains("SHA256:"),
        "{text}"
    );
    check_with_cli_tools(&lab, &obj, &manifest, &identity);

    // metrics parse as Prometheus text format
    let body = std::fs::read_to_string(&metrics).unwrap();
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus text");
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(value("kirt_backup_revision"), Some(rev as f64));
    assert_eq!(value("kirt_backup_failures_total"), Some(0.0));
    assert!(value("kirt_backup_last_success_timestamp_seconds").unwrap() > 1.7e9);

    // list shows it, newest first
    let l = lab
        .kirt([
            "backup",
            "list",
            "--from",
            &format!("s3://{bucket}/nightly"),
            "--endpoint-url",
            &lab.get("KIRT_LAB_S3_ENDPOINT"),
            "--path-style",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(l["backups"][0]["id"], id);
    assert_eq!(l["backups"][0]["status"], "complete");
}

#[test]
fn etcd34_to_local_dir_with_ssh_and_two_recipients() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.4");
    populate_etcd(&etcd.endpoint, "/kirt-test", 50_000);
    let (ssh_id, ssh_pub) = ssh_key(&lab);
    let (age_id, age_pub) = age_key(&lab);
    let dir = lab.dir.path().join("backups");
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            &format!("file://{}", dir.display()),
            "--recipient",
            &ssh_pub,
            "--recipient",
            &age_pub,
            // a negative (fast) level: the zstd CLI must read it like any other
            "--compression-level",
            "-3",
            "--count-keys",
            "all",
            "-o",
            "json",
        ])
        .ok();
    let res = r.json();
    let cluster = res["cluster"].as_str().unwrap();
    assert!(
        cluster.starts_with("etcd-"),
        "default cluster name from etcd's cluster id: {cluster}"
    );
    let id = res["id"].as_str().unwrap();
    let obj = dir.join(cluster).join(format!("{id}.etcd.zst.age"));
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join(cluster).join(format!("{id}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["etcd"]["version"].as_str().unwrap()[..4], *"3.4.");
    assert_eq!(manifest["compression"]["level"], -3);
    assert_eq!(manifest["etcd"]["key_count"], 50_000, "{manifest:#}");
    assert_eq!(
        manifest["encryption"]["recipients"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        manifest["encryption"]["recipients"][0]["type"],
        "ssh-ed25519"
    );
    // either identity decrypts
    check_with_cli_tools(&lab, &obj, &manifest, &ssh_id);
    check_with_cli_tools(&lab, &obj, &manifest, &age_id);
    // nothing else in the directory (no .part files)
    let files: Vec<String> = std::fs::read_dir(dir.join(cluster))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
}

#[test]
fn tls_etcd_with_client_certs_and_clear_failures() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_ETCD_TLS");
    let (ca, cert, key) = (
        lab.get("KIRT_LAB_ETCD_CA"),
        lab.get("KIRT_LAB_ETCD_CERT"),
        lab.get("KIRT_LAB_ETCD_KEY"),
    );
    let dir = lab.dir.path().join("tls-backups");
    let to = dir.to_str().unwrap();
    lab.kirt([
        "backup",
        "create",
        "--etcd-endpoints",
        &ep,
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "--to",
        to,
        "--no-encrypt",
        "--cluster-name",
        "tls",
    ])
    .ok();
    assert_eq!(std::fs::read_dir(dir.join("tls")).unwrap().count(), 2);

    let bad = lab.dir.path().join("bad");
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &ep,
            "--cacert",
            &lab.get("KIRT_LAB_ETCD_OTHER_CA"),
            "--cert",
            &cert,
            "--key",
            &key,
            "--to",
            bad.to_str().unwrap(),
            "--no-encrypt",
        ])
        .code_is(8);
    assert!(r.stderr().contains("TLS failed"), "{}", r.dump());
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &ep,
            "--cacert",
            &ca,
            "--to",
            bad.to_str().unwrap(),
            "--no-encrypt",
        ])
        .code_is(8);
    assert!(r.stderr().contains(&ep), "{}", r.dump());
    // nothing published
    let published = std::fs::read_dir(&bad)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .count()
        })
        .unwrap_or(0);
    assert_eq!(published, 0);
}

/// With several endpoints the snapshot comes from a follower (the leader is the busiest
/// member); when the followers given do not answer, from the leader. The manifest says which
/// member and why, and the follower's backup restores with the key counts it recorded.
#[test]
fn a_follower_is_preferred_and_the_leader_is_the_fallback() {
    let Some(lab) = lab() else { return };
    let (mut members, leader) = lab.etcd_cluster(3);
    let ids: Vec<String> = members.iter().map(|m| member_id(&m.endpoint)).collect();
    populate_etcd(&members[0].endpoint, "/kirt-test", 500);
    let dir = lab.dir.path().join("follower");
    let create = |endpoints: &[&str], cluster: &str| -> serde_json::Value {
        let r = lab
            .kirt([
                "backup",
                "create",
                "--etcd-endpoints",
                &endpoints.join(","),
                "--to",
                dir.to_str().unwrap(),
                "--cluster-name",
                cluster,
                "--no-encrypt",
                "-o",
                "json",
            ])
            .ok();
        let id = r.json()["id"].as_str().unwrap().to_string();
        let m = dir.join(cluster).join(format!("{id}.manifest.json"));
        serde_json::from_slice(&std::fs::read(m).unwrap()).unwrap()
    };
    let endpoint_of = |id: &str| {
        let i = ids.iter().position(|x| x == id).unwrap();
        members[i].endpoint.clone()
    };
    let leader_ep = endpoint_of(&leader);
    // the leader first: order does not decide, the role does
    let followers: Vec<String> = ids
        .iter()
        .filter(|id| **id != leader)
        .map(|id| endpoint_of(id))
        .collect();
    let all = [leader_ep.as_str(), &followers[0], &followers[1]];
    let m = create(&all, "all");
    let e = &m["etcd"];
    assert_ne!(e["member_id"], leader, "{m:#}");
    assert!(ids.contains(&e["member_id"].as_str().unwrap().to_string()));
    let why = e["member_choice"].as_str().unwrap();
    assert!(why.contains("a follower") && why.contains(&leader), "{why}");
    assert_eq!(e["endpoint"], endpoint_of(e["member_id"].as_str().unwrap()));
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            dir.to_str().unwrap(),
            &format!("all/{}", m["id"].as_str().unwrap()),
            "--restore",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["ok"], true, "{v:#}");

    // one follower down (the cluster keeps its quorum); given only it and the leader
    let down = ids.iter().position(|id| *id != leader).unwrap();
    let down_ep = members[down].endpoint.clone();
    members[down].kill();
    let m = create(&[down_ep.as_str(), leader_ep.as_str()], "fallback");
    let e = &m["etcd"];
    assert_eq!(e["member_id"], leader, "{m:#}");
    assert_eq!(e["endpoint"], leader_ep);
    let why = e["member_choice"].as_str().unwrap();
    assert!(
        why.contains("the leader: no follower answered") && why.contains(&down_ep),
        "{why}"
    );
}

/// `--max-rate` paces the snapshot stream: a backup of S bytes at R bytes/s cannot take less
/// than S/R. (Only this lower bound follows from the rate; how fast kirt is otherwise depends on
/// the machine and is not asserted.)
#[test]
fn max_rate_paces_the_snapshot_stream() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 2_000);
    let dir = lab.dir.path().join("paced");
    let create = |cluster: &str, extra: &[&str]| -> (serde_json::Value, Duration) {
        let mut args = vec![
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            dir.to_str().unwrap(),
            "--cluster-name",
            cluster,
            "--no-encrypt",
            "-o",
            "json",
        ];
        args.extend(extra);
        let t = std::time::Instant::now();
        let v = lab.kirt(&args).ok().json();
        (v, t.elapsed())
    };
    let (free, _) = create("free", &[]);
    let size = free["snapshot_size"].as_u64().unwrap();
    // about three seconds' worth at the cap
    let rate = (size / 3).max(1);
    let (paced, took) = create("paced", &["--max-rate", &format!("{rate}/s")]);
    let floor = paced["snapshot_size"].as_u64().unwrap() as f64 / rate as f64;
    assert!(
        took.as_secs_f64() >= floor,
        "{} bytes at {rate} B/s took {took:?}, less than {floor:.2}s",
        paced["snapshot_size"]
    );
    assert!(
        paced["duration_seconds"].as_f64().unwrap() >= floor,
        "{paced:#}"
    );
    let r = lab.kirt([
        "backup",
        "create",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--to",
        dir.to_str().unwrap(),
        "--max-rate",
        "5MiB/h",
    ]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    assert!(r.stderr().contains("bytes per second"), "{}", r.dump());
}

/// With `--nice` every thread of kirt runs at nice 10 in the idle I/O class; without it at the
/// priority it was started with (checked with /proc and ionice while kirt
/// holds after the stream, its workers started).
#[test]
fn nice_lowers_cpu_and_io_priority_of_every_thread() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 200);
    let dir = lab.dir.path().join("nice");
    // (nice, I/O class) of every thread of a held `backup create` with these flags
    let priorities = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            dir.to_str().unwrap(),
            "--no-encrypt",
            "--threads",
            "2",
        ];
        args.extend_from_slice(extra);
        let h = crate::common::process::Held::start(
            lab.kirt_cmd(args),
            "hashkv",
            Duration::from_secs(60),
        );
        let pid = h.child.id();
        let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert!(tasks.len() > 1, "{tasks:?}");
        let mut seen = Vec::new();
        for tid in &tasks {
            // a thread that ended meanwhile (an idle blocking-pool thread) cannot be wrong
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
                continue;
            };
            // the fields after "(comm)": state is field 3, nice field 19
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let nice = after.split(' ').nth(16).unwrap().to_string();
            let io = sh(&format!("ionice -p {tid}"));
            if io.code() == 0 {
                seen.push((nice, io.stdout().trim().to_string()));
            }
        }
        let (code, _, err) = h.terminate();
        assert_eq!(code, 143, "{err}");
        assert!(!seen.is_empty());
        seen
    };
    for (nice, io) in priorities(&["--nice"]) {
        assert_eq!((nice.as_str(), io.as_str()), ("10", "idle"));
    }
    // the test's own nice value, which kirt inherits
    let own = std::fs::read_to_string("/proc/self/stat").unwrap();
    let own = own[own.rfind(')').unwrap() + 2..]
        .split(' ')
        .nth(16)
        .unwrap()
        .to_string();
    for (nice, io) in priorities(&[]) {
        assert_eq!(nice, own);
        assert_ne!(io, "idle");
    }
}

#[test]
fn bad_input_is_refused_before_anything_is_written() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_ETCD");
    let dir = lab.dir.path().join("never");
    let to = dir.to_str().unwrap().to_string();
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (
            vec!["--to", &to, "--recipient", "age1notakey"],
            2,
            "malformed age recipient",
        ),
        (
            vec!["--to", "ftp://host/x", "--no-encrypt"],
            2,
            "unsupported store URL scheme",
        ),
        (
            vec![
                "--to",
                &to,
                "--no-encrypt",
                "--recipient",
                "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
            ],
            2,
            "--no-encrypt cannot be combined",
        ),
        (vec!["--to", &to], 2, "backups are encrypted"),
        (
            vec!["--to", &to, "--no-encrypt", "--compression-level", "23"],
            2,
            "outside zstd's range",
        ),
        (
            vec!["--to", "s3://ck/x", "--no-encrypt"],
            2,
            "is not an S3 bucket name",
        ),
    ];
    for (args, code, msg) in cases {
        let mut all = vec!["backup", "create", "--etcd-endpoints", &ep];
        all.extend(args);
        let r = lab.kirt(&all).code_is(code);
        assert!(r.stderr().contains(msg), "expected {msg:?}:\n{}", r.dump());
    }
    let s3 = lab.get("KIRT_LAB_S3_ENDPOINT");
    // missing bucket
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &ep,
            "--to",
            "s3://kirt-no-such-bucket/x",
            "--endpoint-url",
            &s3,
            "--path-style",
            "--no-encrypt",
        ])
        .code_is(6);
    assert!(r.stderr().contains("kirt-no-such-bucket"), "{}", r.dump());
    // unreachable S3 endpoint
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &ep,
            "--to",
            "s3://kirt-b/x",
            "--endpoint-url",
            "http://127.0.0.1:1",
            "--path-style",
            "--no-encrypt",
        ])
        .code_is(8);
    assert!(r.stderr().contains("cannot reach S3"), "{}", r.dump());
    // no credentials at all
    let mut c = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        &ep,
        "--to",
        "s3://kirt-b/x",
        "--endpoint-url",
        &s3,
        "--path-style",
        "--no-encrypt",
    ]);
    c.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    let r = common::run(c, "kirt backup create (no credentials)".into()).code_is(2);
    assert!(r.stderr().contains("AWS credentials"), "{}", r.dump());
    // unreachable etcd
    let r = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--to",
            &to,
            "--no-encrypt",
        ])
        .code_is(8);
    assert!(
        r.stderr()
            .contains("cannot reach etcd at http://127.0.0.1:1"),
        "{}",
        r.dump()
    );
    assert!(
        !dir.exists() || std::fs::read_dir(&dir).unwrap().count() == 0,
        "something was written"
    );
}

/// A backup much larger than part size × (concurrency + 1): part buffers are reused many times,
/// and the parts must still arrive complete and in order (moto validates part ETags).
#[test]
fn multipart_upload_of_many_parts_verifies() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_random(&etcd.endpoint, "/kirt-test/blob", 40);
    let (identity, recipient) = age_key(&lab);
    let s3 = lab.moto();
    let bucket = lab.moto_bucket("backup-parts");
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    // by default parts go unsigned with a CRC32 (S3 keeps the object's checksum); with checksums
    // turned down (servers that reject them) they are signed instead
    for (prefix, checksums) in [("crc", "when_supported"), ("signed", "when_required")] {
        let url = format!("s3://{bucket}/{prefix}");
        let mut cmd = lab.kirt_cmd([
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            &url,
            "--endpoint-url",
            &ep,
            "--path-style",
            "--part-size",
            "5MiB",
            "--concurrency",
            "2",
            "--recipient",
            &recipient,
            "-o",
            "json",
        ]);
        cmd.env("AWS_REQUEST_CHECKSUM_CALCULATION", checksums);
        let r = common::run(cmd, format!("kirt backup create ({checksums})")).ok();
        let res = r.json();
        // at least 6 parts of 5 MiB with at most 3 buffers alive: buffers were reused
        let stored = res["stored_size"].as_u64().unwrap();
        assert!(
            stored > 6 * (5 << 20),
            "only {stored} bytes: too few parts to reuse buffers"
        );
        let key = format!(
            "{prefix}/{}/{}.etcd.zst.age",
            res["cluster"].as_str().unwrap(),
            res["id"].as_str().unwrap()
        );
        let head = common::block_on(
            s3.head_object()
                .bucket(&bucket)
                .key(&key)
                .checksum_mode(aws_sdk_s3::types::ChecksumMode::Enabled)
                .send(),
        )
        .unwrap();
        assert_eq!(
            head.checksum_crc32().is_some(),
            checksums == "when_supported",
            "{key}: {head:?}"
        );
        let v = lab
            .kirt([
                "backup",
                "verify",
                "--from",
                &url,
                "latest",
                "--endpoint-url",
                &ep,
                "--path-style",
                "--identity",
                &identity,
                "-o",
                "json",
            ])
            .ok();
        assert_eq!(v.json()["ok"], true, "{}", v.dump());
    }
}

/// Slow settings so that the stream is still running when a server is killed.
fn slow_args() -> [&'static str; 4] {
    ["--compression-level", "19", "--threads", "1"]
}

#[test]
fn etcd_dying_mid_stream_publishes_nothing() {
    let Some(lab) = lab() else { return };
    let mut etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 30_000);
    let dir = lab.dir.path().join("mid");
    let s3 = lab.moto();
    let bucket = lab.moto_bucket("backup-mid");
    let mut local = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--to",
        dir.to_str().unwrap(),
        "--no-encrypt",
    ]);
    local.args(slow_args());
    let mut remote = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--to",
        &format!("s3://{bucket}/p"),
        "--endpoint-url",
        &lab.get("KIRT_LAB_S3_ENDPOINT"),
        "--path-style",
        "--part-size",
        "5MiB",
        "--no-encrypt",
    ]);
    remote.args(slow_args());
    let a = local
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b = remote
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    etcd.kill();
    for (name, child) in [("local", a), ("s3", b)] {
        let out = child.wait_with_output().unwrap();
        assert!(
            !out.status.success(),
            "{name}: backup must fail when etcd dies: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("etcd"), "{name}: {err}");
    }
    let leftovers: Vec<_> = files_under(&dir);
    assert!(leftovers.is_empty(), "local store has {leftovers:?}");
    assert!(s3::keys(&s3, &bucket).is_empty());
    let pending = common::block_on(async {
        s3.list_multipart_uploads()
            .bucket(&bucket)
            .send()
            .await
            .unwrap()
    });
    assert!(
        pending.uploads().is_empty(),
        "pending multipart uploads: {:?}",
        pending.uploads()
    );
}

#[test]
fn s3_dying_mid_upload_leaves_nothing_once_it_is_back() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_random(&etcd.endpoint, "/big", 40);
    let mut s3s = lab.private_s3s(None);
    let client = s3::client(&s3s.endpoint, s3::PRIVATE_KEY.0, s3::PRIVATE_KEY.1);
    create_bucket(&client, "crash");
    let mut cmd = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        &etcd.endpoint,
        "--to",
        "s3://crash/p",
        "--endpoint-url",
        &s3s.endpoint,
        "--path-style",
        "--part-size",
        "5MiB",
        "--no-encrypt",
        "--compression-level",
        "1",
    ]);
    cmd.env("AWS_ACCESS_KEY_ID", s3::PRIVATE_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", s3::PRIVATE_KEY.1);
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until a multipart upload was started (kirt records its id in the bucket, where any
    // later run finds it), then kill the server
    let pending_dir = s3s.dir.join("crash/p/.kirt/pending");
    common::wait_until(
        Duration::from_secs(30),
        "a multipart upload to start",
        || files_under(&pending_dir).len() == 1,
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&files_under(&pending_dir)[0]).unwrap()).unwrap();
    let (data, port) = (s3s.dir.clone(), s3s.port);
    s3s.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "backup must fail when S3 dies: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the server comes back with its disk state
    let s3s = lab.private_s3s(Some((&data, port)));
    let keys = s3::keys(&client, "crash");
    assert!(
        keys.iter().all(|k| k.starts_with("p/.kirt/")),
        "an object became visible: {keys:?}"
    );
    // the record of the upload, and the run lock kirt could not release with S3 gone (the next
    // backup takes it over once its lease has passed)
    let (records, locks): (Vec<&String>, Vec<&String>) =
        keys.iter().partition(|k| k.starts_with("p/.kirt/pending/"));
    assert_eq!(records.len(), 1, "the record of the upload: {keys:?}");
    assert!(
        locks.iter().all(|k| k.starts_with("p/.kirt/locks/")),
        "{keys:?}"
    );
    // the next kirt run against the bucket aborts the upload it could not abort before
    let mut list = lab.kirt_cmd([
        "backup",
        "list",
        "--from",
        "s3://crash/p",
        "--endpoint-url",
        &s3s.endpoint,
        "--path-style",
    ]);
    list.env("AWS_ACCESS_KEY_ID", s3::PRIVATE_KEY.0)
        .env("AWS_SECRET_ACCESS_KEY", s3::PRIVATE_KEY.1);
    let listed = common::run(list, "kirt backup list".into()).ok();
    assert!(
        listed
            .stderr()
            .contains("aborted a multipart upload left by an interrupted run"),
        "{}",
        listed.dump()
    );
    assert!(
        files_under(&pending_dir).is_empty(),
        "pending upload record still there"
    );
    // the record never shows up as a backup
    assert!(!listed.stdout().contains(".kirt"), "{}", listed.dump());
    let parts = common::block_on(async {
        client
            .list_parts()
            .bucket("crash")
            .key(record["key"].as_str().unwrap())
            .upload_id(record["upload_id"].as_str().unwrap())
            .send()
            .await
    });
    // s3s-fs answers ListParts for unknown ids with an empty list; a live upload would list its parts
    assert!(
        parts.as_ref().map(|p| p.parts().is_empty()).unwrap_or(true),
        "the multipart upload still exists: {parts:?}"
    );
    // and nothing of the upload is left on the server's disk (s3s-fs 0.14 keeps the sidecar
    // metadata files of a deleted object: those of the removed record are not upload data; nor
    // is the run lock, and its sidecar)
    use base64::Engine;
    let sidecar = |prefix: &str| {
        let s = format!(
            ".object-{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(prefix)
        );
        s[..s.len() - 2].to_string() // (the last chars span what follows)
    };
    let kirt_own = [sidecar("p/.kirt/pending/"), sidecar("p/.kirt/locks/")];
    let files: Vec<_> = files_under(&data)
        .into_iter()
        .filter(|f| {
            let f = f.to_string_lossy();
            !f.contains("/p/.kirt/locks/") && !kirt_own.iter().any(|s| f.contains(s.as_str()))
        })
        .collect();
    assert!(files.is_empty(), "s3s-fs still holds {files:?}");
}

#[test]
fn write_error_on_the_local_store_publishes_nothing() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 5_000);
    let dir = lab.dir.path().join("full");
    // a file-size limit makes writes fail with EFBIG, like a full disk (SIGXFSZ ignored)
    let kirt = common::kirt_bin();
    let r = sh(&format!(
        "cd {}; export KUBECONFIG=/dev/null; trap '' XFSZ; ulimit -f 64; exec {} backup create --etcd-endpoints {} --to {} --no-encrypt --compression-level 1",
        lab.dir.path().display(),
        kirt.display(),
        etcd.endpoint,
        dir.display()
    ));
    assert_ne!(r.code(), 0, "{}", r.dump());
    assert!(r.stderr().contains("nothing was published"), "{}", r.dump());
    assert!(files_under(&dir).is_empty(), "{:?}", files_under(&dir));
}

#[test]
fn prune_keeps_what_the_rules_say_and_removes_orphans() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let dir = lab.dir.path().join("prune");
    let to = dir.to_str().unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        populate_etcd(&etcd.endpoint, &format!("/round{i}"), 10);
        let r = lab
            .kirt([
                "backup",
                "create",
                "--etcd-endpoints",
                &etcd.endpoint,
                "--to",
                to,
                "--no-encrypt",
                "--cluster-name",
                "c",
                "-o",
                "json",
            ])
            .ok();
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // an orphan object from a failed run long ago, and one from a run that may still be going
    std::fs::write(dir.join("c/20200101T000000Z-r1.etcd.zst"), b"partial").unwrap();
    let now = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    std::fs::write(
        dir.join(format!("c/{now}-r999999.etcd.zst")),
        b"in progress",
    )
    .unwrap();
    // partial files of killed runs (SIGKILL leaves them): an old one goes, a fresh one stays
    let old_part = dir.join("c/.20200101T000000Z-r2.etcd.zst.4242-a1b2.part");
    let fresh_part = dir.join(format!("c/.{now}-r999998.etcd.zst.4243-c3d4.part"));
    std::fs::write(&old_part, b"killed").unwrap();
    std::fs::write(&fresh_part, b"running").unwrap();
    sh(&format!("touch -d '2 days ago' {}", old_part.display())).ok();
    let l = lab
        .kirt(["backup", "list", "--from", to, "-o", "json"])
        .ok()
        .json();
    let statuses: Vec<&str> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "incomplete").count(),
        2,
        "{l:#}"
    );

    // dry run changes nothing
    let before = files_under(&dir).len();
    lab.kirt([
        "backup",
        "prune",
        "--from",
        to,
        "--keep-last",
        "2",
        "--dry-run",
    ])
    .ok();
    assert_eq!(files_under(&dir).len(), before);

    let p = lab
        .kirt([
            "backup",
            "prune",
            "--from",
            to,
            "--keep-last",
            "2",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(p["kept"], 2);
    assert_eq!(p["removed"], 1);
    assert_eq!(p["orphans_removed"], 1);
    assert_eq!(p["stale_parts_removed"], 1, "{p:#}");
    assert!(!old_part.exists() && fresh_part.exists());
    std::fs::remove_file(&fresh_part).unwrap();
    let l = lab
        .kirt(["backup", "list", "--from", to, "-o", "json"])
        .ok()
        .json();
    let complete: Vec<&str> = l["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["status"] == "complete")
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(complete, [ids[2].as_str(), ids[1].as_str()]);
    let mut files: Vec<String> = files_under(&dir.join("c"))
        .into_iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut want = vec![
        format!("{}.etcd.zst", ids[1]),
        format!("{}.manifest.json", ids[1]),
        format!("{}.etcd.zst", ids[2]),
        format!("{}.manifest.json", ids[2]),
        format!("{now}-r999999.etcd.zst"),
    ];
    want.sort();
    assert_eq!(files, want);
    // no rule → refused
    lab.kirt(["backup", "prune", "--from", to]).code_is(2);
}

/// What kirt writes is private to its user — objects, manifests, signatures 0600 in 0700
/// directories (a backup holds every Secret of the cluster) — except the metrics textfile,
/// which node_exporter, running as another user, must read. A dry run writes no metrics.
#[test]
fn stored_files_are_private_and_the_metrics_file_is_readable_by_others() {
    use std::os::unix::fs::PermissionsExt;
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/modes", 20);
    let (sign_key, _) = crate::common::keys::signing_keys(&lab);
    let store = lab.dir.path().join("modes");
    // node_exporter's textfile directory: world-readable, outside the test's private temp dir
    let textfiles = tempfile::Builder::new()
        .prefix("kirt-textfile-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(textfiles.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let metrics = textfiles.path().join("kirt.prom");
    let create = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            store.to_str().unwrap(),
            "--cluster-name",
            "c",
            "--no-encrypt",
            "--sign-key",
            &sign_key,
            "--metrics-file",
            metrics.to_str().unwrap(),
        ];
        args.extend(extra);
        lab.kirt(&args).ok()
    };
    create(&["--dry-run"]);
    assert!(!metrics.exists(), "a dry run wrote metrics");
    create(&[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let files = files_under(&store);
    assert_eq!(files.len(), 3, "object, manifest, signature: {files:?}");
    for f in &files {
        assert_eq!(mode(f), 0o600, "{f:?}");
    }
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&store.join("c")), 0o700);
    assert_eq!(mode(&metrics), 0o644);
    let r = sh(&format!(
        "setpriv --reuid nobody --regid nogroup --clear-groups cat {}",
        metrics.display()
    ))
    .ok();
    assert!(
        r.stdout()
            .contains("kirt_backup_last_run_success{cluster=\"c\"} 1"),
        "{}",
        r.dump()
    );
}

/// Every range etcd served to `kirt backup create`, as etcd logged it (`key:... range_end:...`).
fn ranges_served(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["prefix"] == "read-only range ")
        .map(|v| v["request"].as_str().unwrap().trim().to_string())
        .collect()
}

/// etcd counts a range by walking its index under a lock that writes wait for (0.3-0.4 s per
/// million keys): by default kirt reads its revision from one key and counts only under the
/// Kubernetes resource prefixes, never the whole keyspace; `--count-keys all` adds exactly one
/// count of everything, `--count-keys off` counts nothing. Checked on what etcd itself logged serving each request.
#[test]
fn only_count_keys_all_makes_etcd_count_the_whole_keyspace() {
    let Some(lab) = lab() else { return };
    let (etcd, log) = lab.private_etcd_logging_requests();
    populate_etcd(&etcd.endpoint, "/kirt-test", 100);
    let whole = r#"key:"\000" range_end:"\000" count_only:true"#;
    let dir = lab.dir.path().join("counted");
    let mut seen = ranges_served(&log).len();
    for (mode, walks_all) in [("off", false), ("resources", false), ("all", true)] {
        let r = lab
            .kirt([
                "backup",
                "create",
                "--etcd-endpoints",
                &etcd.endpoint,
                "--to",
                dir.to_str().unwrap(),
                "--no-encrypt",
                "--count-keys",
                mode,
                "-o",
                "json",
            ])
            .ok();
        let ranges = ranges_served(&log)[seen..].to_vec();
        seen += ranges.len();
        let all = ranges.iter().filter(|r| r.as_str() == whole).count();
        assert_eq!(all, usize::from(walks_all), "{mode}: {ranges:#?}");
        // the rest: one key (the revision) or a count under a resource prefix
        for r in ranges.iter().filter(|r| r.as_str() != whole) {
            assert!(
                !r.contains("range_end") || r.starts_with(r#"key:"/registry/"#),
                "{mode}: a walk outside the resource prefixes: {r}"
            );
        }
        if mode == "off" {
            assert!(
                ranges.iter().all(|r| !r.contains("range_end")),
                "off: a count: {ranges:#?}"
            );
            continue;
        }
        assert!(
            ranges.iter().any(|r| r
                .starts_with(r#"key:"/registry/pods/" range_end:"/registry/pods0""#)
                && r.ends_with("count_only:true")),
            "{mode}: {ranges:#?}"
        );
        assert_eq!(
            r.json()["key_count"].as_i64(),
            walks_all.then_some(100),
            "{mode}"
        );
    }
}
