//! Point-in-time recovery: `kirt backup stream` against a private etcd 3.5 (a full backup, then
//! hash-chained segments of the watch), SIGTERM and restart, `kirt restore --to-revision` checked
//! key by key against the live source at that revision, and planted segments refused.
//! `breaks`: missing, swapped and foreign segments; `content`: restores in the middle of a busy
//! stream (etcd 3.5 and 3.4) and leased keys; `kube`: a deleted namespace restored and served,
//! and `kirt drill --to-revision`; `compact`: `kirt backup compact` of a chain.
//!
//! Nothing here waits on a clock: the tests wait for outcomes (a manifest in the store, kirt's
//! own "received through revision N" line) and a stream that must not commit on its own runs
//! with `--segment-every 1h`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::etcd::populate_etcd;
use crate::common::keys::{age_key, signing_keys};
use crate::common::process::Held;
use crate::common::{self, lab, sh, Lab, Run};

pub(crate) const CLUSTER: &str = "c";

pub(crate) struct Keys {
    pub(crate) age: String,
    pub(crate) recipient: String,
    pub(crate) sign: String,
    pub(crate) trusted: String,
}

impl Keys {
    /// A fresh age identity and minisign key pair for the test.
    pub(crate) fn new(lab: &Lab) -> Keys {
        let (age, recipient) = age_key(lab);
        let (sign, trusted) = signing_keys(lab);
        Keys {
            age,
            recipient,
            sign,
            trusted,
        }
    }
}

pub(crate) async fn client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap()
}

/// Puts `key` and returns the revision of the write.
pub(crate) fn put(endpoint: &str, key: &str, value: &str) -> i64 {
    common::block_on(async {
        let r = client(endpoint).await.put(key, value, None).await.unwrap();
        r.header().unwrap().revision()
    })
}

pub(crate) fn delete(endpoint: &str, key: &str) -> i64 {
    common::block_on(async {
        let r = client(endpoint).await.delete(key, None).await.unwrap();
        assert_eq!(r.deleted(), 1);
        r.header().unwrap().revision()
    })
}

/// Every key under `prefix` with its value, at `rev` (0: the head).
pub(crate) fn keys_at(endpoint: &str, prefix: &str, rev: i64) -> BTreeMap<String, String> {
    common::block_on(async {
        let mut opts = etcd_client::GetOptions::new().with_prefix();
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let r = client(endpoint)
            .await
            .get(prefix, Some(opts))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    })
}

fn stream(lab: &Lab, endpoint: &str, dir: &Path, keys: &Keys, every: &str) -> Held {
    let metrics = dir.with_extension("prom");
    let mut cmd = lab.kirt_cmd([
        "-v",
        "backup",
        "stream",
        "--etcd-endpoints",
        endpoint,
        "--to",
        dir.to_str().unwrap(),
        "--cluster-name",
        CLUSTER,
        "--recipient",
        &keys.recipient,
        "--sign-key",
        &keys.sign,
        "--segment-every",
        every,
        "--metrics-file",
        metrics.to_str().unwrap(),
    ]);
    cmd.env("KIRT_SIGN_PASSWORD", "pw");
    Held::spawn(cmd)
}

/// The full backups' manifests (ids) in the store.
pub(crate) fn fulls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(CLUSTER))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".manifest.json")
                .map(String::from)
        })
        .collect();
    v.sort();
    v
}

/// The chain directory of `base` and its segment manifests, by sequence.
pub(crate) fn segments(dir: &Path, base: &str) -> (PathBuf, Vec<Value>) {
    let chain = dir.join(CLUSTER).join(format!("{base}.chain"));
    let mut v: Vec<Value> = std::fs::read_dir(&chain)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_str().unwrap().ends_with(".manifest.json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    v.sort_by_key(|m| m["sequence"].as_u64());
    (chain, v)
}

pub(crate) fn last_revision(dir: &Path, base: &str) -> i64 {
    segments(dir, base)
        .1
        .last()
        .map_or(0, |m| m["last_revision"].as_i64().unwrap())
}

/// Whether kirt said it received everything through `rev` (its -v log).
pub(crate) fn received(h: &Held, rev: i64) -> bool {
    h.stderr()
        .lines()
        .filter_map(|l| l.split("received through revision ").nth(1))
        .filter_map(|n| n.trim().parse::<i64>().ok())
        .any(|n| n >= rev)
}

fn restore(lab: &Lab, dir: &Path, keys: &Keys, data: &Path, extra: &[&str]) -> (Run, String) {
    restore_from(lab, dir.to_str().unwrap(), &[], keys, data, extra)
}

/// `kirt restore --from FROM latest` (with `env`, e.g. an S3 store's keys) into `data`, and
/// the member's peer URL.
pub(crate) fn restore_from(
    lab: &Lab,
    from: &str,
    env: &[(&str, String)],
    keys: &Keys,
    data: &Path,
    extra: &[&str],
) -> (Run, String) {
    let peer = common::free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    let initial = format!("m1={peer_url}");
    let mut args = vec![
        "restore",
        "--from",
        from,
        "latest",
        "--identity",
        &keys.age,
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "m1",
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &peer_url,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = lab.kirt_cmd(&args);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let tmp = lab.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    cmd.env("TMPDIR", &tmp);
    (
        common::run(cmd, format!("kirt {}", args.join(" "))),
        peer_url,
    )
}

/// Starts etcd exactly as the restore printed it and returns it with its client endpoint.
pub(crate) fn start_restored(lab: &Lab, r: &Run, data: &Path) -> common::Proc {
    let port = common::free_port();
    let cmdline = r.json()["etcd_command"]
        .as_str()
        .unwrap()
        .replace("CLIENT_URLS", &format!("http://127.0.0.1:{port}"));
    let bin = Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
    let child = std::process::Command::new(bin)
        .args(cmdline.split_whitespace().skip(1))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut p = common::Proc {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        dir: data.to_path_buf(),
        port,
    };
    common::process::wait_serving(&mut p.child, port, "restored etcd");
    p
}

#[test]
fn stream_survives_sigterm_and_restart_and_restores_to_a_revision() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 200);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let wait = Duration::from_secs(60);

    // 1. the stream takes a full backup, then commits a segment a second
    let h = stream(&lab, &ep, &dir, &keys, "1s");
    common::wait_until(wait, "the stream's full backup", || fulls(&dir).len() == 1);
    let base = fulls(&dir).remove(0);
    put(&ep, "/pitr/a", "1");
    let r = put(&ep, "/pitr/b", "1"); // the point in time to restore
    delete(&ep, "/pitr/a");
    let rc = put(&ep, "/pitr/c", "1");
    common::wait_until(wait, "a segment reaching the writes", || {
        last_revision(&dir, &base) >= rc
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "SIGTERM must commit and exit 0:\n{err}");
    let metrics = std::fs::read_to_string(dir.with_extension("prom")).unwrap();
    assert!(
        metrics.contains(&format!(
            "kirt_stream_last_revision{{cluster=\"{CLUSTER}\"}} {rc}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("kirt_stream_seconds_since_last_commit"),
        "{metrics}"
    );

    // 2. a restart continues the chain (no new full backup); SIGTERM commits what it received
    // (with --segment-every 1h nothing else would have)
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    let re = put(&ep, "/pitr/e", "1");
    common::wait_until(wait, "the restarted stream receiving the write", || {
        received(&h, re)
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("continuing the chain"), "{err}");
    assert_eq!(
        fulls(&dir),
        vec![base.clone()],
        "a restart must not start a new chain"
    );
    let (chain_dir, segs) = segments(&dir, &base);
    assert!(segs.len() >= 2, "{segs:#?}");
    assert_eq!(segs.last().unwrap()["last_revision"].as_i64(), Some(re));
    // contiguous: no gap, no duplicate, each linked to the one before
    let full: Value = serde_json::from_slice(
        &std::fs::read(dir.join(CLUSTER).join(format!("{base}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let mut next = full["etcd"]["revision"].as_i64().unwrap() + 1;
    let mut prev = base.clone();
    for (i, s) in segs.iter().enumerate() {
        assert_eq!(s["sequence"].as_u64(), Some(i as u64 + 1), "{s:#}");
        assert_eq!(s["first_revision"].as_i64(), Some(next), "{s:#}");
        assert_eq!(s["prev"]["id"].as_str(), Some(prev.as_str()), "{s:#}");
        next = s["last_revision"].as_i64().unwrap() + 1;
        prev = s["id"].as_str().unwrap().to_string();
    }

    // list and verify see the chain
    let v = lab
        .kirt([
            "backup",
            "list",
            "--from",
            dir.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(
        v["backups"][0]["chain"]["segments"].as_u64(),
        Some(segs.len() as u64),
        "{v:#}"
    );
    assert_eq!(
        v["backups"][0]["chain"]["last_revision"].as_i64(),
        Some(re),
        "{v:#}"
    );
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "verify",
            "--from",
            dir.to_str().unwrap(),
            "latest",
            "--identity",
            &keys.age,
            "--trusted-key",
            &keys.trusted,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        lab.kirt(args)
    };
    let v = verify(&[]).ok().json();
    assert_eq!(v["segments"].as_u64(), Some(segs.len() as u64), "{v:#}");
    assert_eq!(v["reaches"].as_i64(), Some(re), "{v:#}");
    // --restore: the trial restore replays the chain to its end
    let v = verify(&["--restore"]).ok().json();
    let reached = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "revision reached")
        .unwrap_or_else(|| panic!("{v:#}"))
        .clone();
    assert_eq!(reached["actual"], re.to_string(), "{v:#}");
    assert_eq!(reached["ok"], true, "{v:#}");

    // 3. restore to R: exactly the source's keys and values at R
    let data = lab.dir.path().join("at-r");
    let rs = r.to_string();
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &data,
        &["--trusted-key", &keys.trusted, "--to-revision", &rs],
    );
    let run = run.ok();
    let j = run.json();
    assert_eq!(
        j["point_in_time"]["revision"].as_i64(),
        Some(r),
        "{}",
        run.dump()
    );
    assert!(j["point_in_time"]["time"].is_string(), "{}", run.dump());
    let member = start_restored(&lab, &run, &data);
    let restored = |prefix: &str| {
        let mut got = BTreeMap::new();
        common::wait_until(Duration::from_secs(20), "restored etcd answers", || {
            got = keys_at(&member.endpoint, prefix, 0);
            !got.is_empty()
        });
        got
    };
    let pitr = restored("/pitr/");
    assert_eq!(pitr, keys_at(&ep, "/pitr/", r));
    assert_eq!(
        pitr.get("/pitr/a").map(String::as_str),
        Some("1"),
        "deleted after R: still there"
    );
    assert!(!pitr.contains_key("/pitr/c"), "written after R: not there");
    assert_eq!(restored("/base/"), keys_at(&ep, "/base/", r));
    drop(member);
    // --to-time: the newest revision received at or before the time (a segment's last)
    let t = segs[0]["last_time"].as_str().unwrap();
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &lab.dir.path().join("at-time"),
        &["--trusted-key", &keys.trusted, "--to-time", t],
    );
    let j = run.ok().json();
    assert_eq!(
        j["point_in_time"]["revision"].as_i64(),
        segs[0]["last_revision"].as_i64(),
        "{j:#}"
    );

    // 4. a flipped byte in the last segment: verify and a restore past it exit 3 naming it; a
    // restore that stops before it still works
    let last = segs.last().unwrap();
    let object = dir.join(last["object"].as_str().unwrap());
    let original = std::fs::read(&object).unwrap();
    let mut flipped = original.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    std::fs::write(&object, &flipped).unwrap();
    let id = last["id"].as_str().unwrap();
    let v = verify(&[]);
    assert_eq!(v.code(), 3, "{}", v.dump());
    assert!(v.stdout().contains(id), "{}", v.dump());
    let res = re.to_string();
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &lab.dir.path().join("past-flip"),
        &["--trusted-key", &keys.trusted, "--to-revision", &res],
    );
    assert_eq!(run.code(), 3, "{}", run.dump());
    assert!(run.stderr().contains(id), "{}", run.dump());
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &lab.dir.path().join("before-flip"),
        &["--trusted-key", &keys.trusted, "--to-revision", &rs],
    );
    assert_eq!(
        run.ok().json()["point_in_time"]["revision"].as_i64(),
        Some(r)
    );
    std::fs::write(&object, &original).unwrap();

    // 5. a forged manifest: the first segment's manifest edited (its digests left alone). Even
    // with signatures unchecked (--allow-unsigned, no trusted key) the hash chain breaks at the
    // next segment and the restore refuses to cross it
    let first_manifest =
        chain_dir.join(format!("{}.manifest.json", segs[0]["id"].as_str().unwrap()));
    let mut forged = segs[0].clone();
    forged["kirt_version"] = Value::from("forged");
    std::fs::write(&first_manifest, serde_json::to_vec_pretty(&forged).unwrap()).unwrap();
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &lab.dir.path().join("forged"),
        &["--allow-unsigned", "--to-revision", &res],
    );
    assert_eq!(run.code(), 3, "{}", run.dump());
    assert!(run.stderr().contains("does not link"), "{}", run.dump());
    // and with the trusted key, the edited manifest's signature no longer holds
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &lab.dir.path().join("forged-signed"),
        &["--trusted-key", &keys.trusted, "--to-revision", &res],
    );
    assert_eq!(run.code(), 3, "{}", run.dump());
    assert!(run.stderr().contains("signature"), "{}", run.dump());
    let left = sh(&format!("ls -A {}", lab.dir.path().join("tmp").display())).stdout();
    assert!(left.trim().is_empty(), "restores left behind: {left}");
}

/// A revision the chains do not reach, or one before every full backup, is refused (exit 6)
/// and nothing is written to the data dir.
#[test]
fn restore_refuses_revisions_outside_the_chain() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    common::wait_until(Duration::from_secs(60), "the stream's full backup", || {
        fulls(&dir).len() == 1
    });
    let rw = put(&ep, "/pitr/x", "1");
    common::wait_until(
        Duration::from_secs(60),
        "the stream receiving the write",
        || received(&h, rw),
    );
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    for (rev, why) in [
        (rw + 1_000, "ends at revision"),
        (1, "every backup is newer"),
    ] {
        let data = lab.dir.path().join(format!("d{rev}"));
        let (run, _) = restore(
            &lab,
            &dir,
            &keys,
            &data,
            &[
                "--trusted-key",
                &keys.trusted,
                "--to-revision",
                &rev.to_string(),
            ],
        );
        assert_eq!(run.code(), 6, "{}", run.dump());
        assert!(run.stderr().contains(why), "{}", run.dump());
        assert!(!data.exists(), "{}", data.display());
    }
}

/// etcd compacted the revisions a restarted stream still needed: it starts a new chain with a
/// full backup at once (which holds those revisions' outcome: no gap), says why, and counts it.
#[test]
fn a_compacted_history_starts_a_new_chain() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let wait = Duration::from_secs(60);
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    common::wait_until(wait, "the stream's full backup", || fulls(&dir).len() == 1);
    let rx = put(&ep, "/pitr/x", "1");
    common::wait_until(wait, "the stream receiving the write", || received(&h, rx));
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    // while no stream runs: writes, then a compaction past the chain's end
    put(&ep, "/pitr/y", "1");
    let rz = put(&ep, "/pitr/z", "1");
    common::block_on(async {
        client(&ep).await.compact(rz, None).await.unwrap();
    });
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    common::wait_until(wait, "a new full backup", || fulls(&dir).len() == 2);
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("compacted"), "{err}");
    let newest = fulls(&dir).pop().unwrap();
    let m: Value = serde_json::from_slice(
        &std::fs::read(dir.join(CLUSTER).join(format!("{newest}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert!(m["etcd"]["revision"].as_i64().unwrap() >= rz, "{m:#}");
    let metrics = std::fs::read_to_string(dir.with_extension("prom")).unwrap();
    for line in [
        "kirt_stream_compactions_total{cluster=\"c\"} 1",
        "kirt_stream_full_backups_total{cluster=\"c\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
}

mod breaks;
mod compact;
mod content;
mod kube;

/// `kirt backup verify` of the newest backup in `dir` with the test's keys.
fn verify(lab: &Lab, dir: &Path, keys: &Keys, extra: &[&str]) -> Run {
    let mut args = vec![
        "backup",
        "verify",
        "--from",
        dir.to_str().unwrap(),
        "latest",
        "--identity",
        &keys.age,
        "--trusted-key",
        &keys.trusted,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    lab.kirt(args)
}

/// Every key of the member with its value (bytes), at `rev` (0: the head).
fn content_at(endpoint: &str, rev: i64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    common::block_on(async {
        let mut opts = etcd_client::GetOptions::new().with_all_keys();
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let r = client(endpoint).await.get("", Some(opts)).await.unwrap();
        r.kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
            .collect()
    })
}

/// Restores `dir`'s chain to `target` (`--to-revision R` or `--to-time T`) into a fresh data
/// dir, starts the member and returns it with the revision the restore says it reached.
fn restore_to(lab: &Lab, dir: &Path, keys: &Keys, target: [&str; 2]) -> (common::Proc, i64) {
    let data = lab.dir.path().join(common::unique("data"));
    let mut extra = vec!["--trusted-key", &keys.trusted];
    extra.extend(target);
    let (run, _) = restore(lab, dir, keys, &data, &extra);
    let run = run.ok();
    let reached = run.json()["point_in_time"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("{}", run.dump()));
    let member = start_restored(lab, &run, &data);
    common::wait_until(Duration::from_secs(20), "restored etcd answers", || {
        !content_at(&member.endpoint, 0).is_empty()
    });
    (member, reached)
}
