//! SIGTERM (a CronJob's deadline, a node drain) or SIGINT at any phase of a long command: kirt
//! stops within 2 s, exits 143 (130), and leaves nothing behind — no partial object, open
//! multipart upload, manifest or signature, no scratch etcd or kube-apiserver, no plaintext
//! snapshot, no half-restored data dir. Each case stops kirt at a known phase (`KIRT_HOLD_AT`,
//! src/signal.rs) and only then sends the signal.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::etcd::{populate_etcd, populate_random};
use crate::common::keys::{age_key, signing_keys};
use crate::common::process::{alive, Held};
use crate::common::{self, files_under, lab, s3, wait_until, Lab};

/// How long kirt may take to stop after the signal.
const WITHIN: Duration = Duration::from_secs(2);
/// How long kirt may take to reach a phase (a drill starts a kube-apiserver first).
const REACH: Duration = Duration::from_secs(120);

#[track_caller]
fn stopped_cleanly(what: &str, (code, took, stderr): (i32, Duration, String), want: i32) {
    assert_eq!(code, want, "{what}: exit code\n{stderr}");
    assert!(took < WITHIN, "{what}: took {took:?} to stop\n{stderr}");
    assert!(
        stderr.contains("interrupted by SIG"),
        "{what}: no word of the signal\n{stderr}"
    );
}

#[track_caller]
fn all_gone(what: &str, pids: &[u32]) {
    wait_until(
        Duration::from_secs(5),
        &format!("{what}: {pids:?} gone"),
        || pids.iter().all(|p| !alive(*p)),
    );
}

fn backup_cmd(lab: &Lab, endpoint: &str, to: &str, extra: &[&str]) -> Command {
    let mut cmd = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        endpoint,
        "--to",
        to,
        "--cluster-name",
        "c",
    ]);
    cmd.args(extra);
    cmd
}

#[test]
fn a_signal_during_backup_create_publishes_nothing() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    // incompressible: more than the 8 MiB after which the upload phase holds
    populate_random(&etcd.endpoint, "/big", 24);
    let (_, recipient) = age_key(&lab);
    let (sign_key, _) = signing_keys(&lab);
    let enc = [
        "--recipient",
        recipient.as_str(),
        "--sign-key",
        sign_key.as_str(),
    ];
    let moto = lab.moto();
    let bucket = lab.moto_bucket("interrupt");
    let s3_endpoint = lab.get("KIRT_LAB_S3_ENDPOINT");
    for (phase, sig, code) in [
        ("upload", "TERM", 143), // back-pressure: the uploader waits, the stream behind it too
        ("hashkv", "TERM", 143),
        ("manifest", "TERM", 143), // object committed and signed, manifest not yet written
        ("upload", "INT", 130),
    ] {
        let case = format!("{phase}-{sig}").to_lowercase();
        // a local directory
        let dir = lab.dir.path().join(&case);
        let held = Held::start(
            backup_cmd(&lab, &etcd.endpoint, dir.to_str().unwrap(), &enc),
            phase,
            REACH,
        );
        stopped_cleanly(&format!("local {case}"), held.signal(sig), code);
        let left = files_under(&dir);
        assert!(left.is_empty(), "local {case}: left {left:?}");
        // S3 (moto), in parts of 5 MiB
        let mut cmd = backup_cmd(&lab, &etcd.endpoint, &format!("s3://{bucket}/{case}"), &enc);
        cmd.args([
            "--endpoint-url",
            &s3_endpoint,
            "--path-style",
            "--part-size",
            "5MiB",
        ]);
        let held = Held::start(cmd, phase, REACH);
        stopped_cleanly(&format!("s3 {case}"), held.signal(sig), code);
        let left: Vec<String> = s3::keys(&moto, &bucket)
            .into_iter()
            .filter(|k| k.starts_with(&format!("{case}/")))
            .collect();
        assert!(left.is_empty(), "s3 {case}: left {left:?}");
        let open = common::block_on(moto.list_multipart_uploads().bucket(&bucket).send()).unwrap();
        assert!(
            open.uploads().is_empty(),
            "s3 {case}: open multipart uploads {:?}",
            open.uploads()
        );
    }
}

/// verify --restore, drill and restore, each stopped where it has started processes or written
/// plaintext: every process kirt started is gone (by PID), the work dir is empty, and a restore
/// leaves no data dir.
#[test]
fn a_signal_stops_scratch_servers_and_removes_plaintext() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/scratch", 300);
    let (key, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let store = lab.dir.path().join("store");
    let id = lab
        .kirt([
            "backup",
            "create",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--to",
            store.to_str().unwrap(),
            "--cluster-name",
            "c",
            "--recipient",
            &recipient,
            "--sign-key",
            &sign_key,
            "-o",
            "json",
        ])
        .ok()
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let work = lab.dir.path().join("work");
    let data = lab.dir.path().join("restored");
    let apiserver = format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN"));
    let from = store.to_str().unwrap().to_string();
    let common_args = |cmd: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        a.extend(
            [
                "--from",
                &from,
                &id,
                "--identity",
                &key,
                "--trusted-key",
                &trusted,
                "--work-dir",
                work.to_str().unwrap(),
            ]
            .map(String::from),
        );
        a
    };
    let restore_args = [
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "m1",
        "--initial-cluster",
        "m1=http://127.0.0.1:1",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:1",
    ];
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "verify --restore",
            common_args(&["backup", "verify", "--restore"]),
            "etcdutl",
        ),
        (
            "verify --restore",
            common_args(&["backup", "verify", "--restore"]),
            "scratch-etcd",
        ),
        (
            "drill",
            [
                common_args(&["drill"]),
                vec!["--apiserver-bin".into(), apiserver.clone()],
            ]
            .concat(),
            "scratch-apiserver",
        ),
        (
            "restore",
            [
                common_args(&["restore"]),
                restore_args.map(String::from).to_vec(),
            ]
            .concat(),
            "etcdutl",
        ),
    ];
    for (what, args, phase) in cases {
        std::fs::create_dir_all(&work).unwrap();
        let mut cmd = lab.kirt_cmd(&args);
        cmd.env("TMPDIR", &work);
        let held = Held::start(cmd, phase, REACH);
        let started = held.children();
        assert!(
            !started.is_empty(),
            "{what} at {phase}: no child process\n{}",
            held.stderr()
        );
        if phase != "etcdutl" {
            // the servers are up: the restored data is being served right now
            assert!(started.iter().all(|p| alive(*p)), "{what}: {started:?}");
        }
        let what = format!("{what} at {phase}");
        stopped_cleanly(&what, held.terminate(), 143);
        all_gone(&what, &started);
        let left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{what}: left {left:?}");
        assert!(!data.exists(), "{what}: {data:?} was left behind");
        assert_no_process_under(&what, &work);
    }
}

/// No process runs with a path under `dir` on its command line (a scratch server kirt did not
/// report as its child would still show up here).
#[track_caller]
fn assert_no_process_under(what: &str, dir: &Path) {
    let ps = common::sh(&format!(
        "ps -eo pid,args | grep -F '{}' | grep -v grep || true",
        dir.display()
    ))
    .stdout();
    assert!(ps.trim().is_empty(), "{what}: still running:\n{ps}");
}
