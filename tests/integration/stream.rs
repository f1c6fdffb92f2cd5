//! `kirt backup stream` under failure: the member it watches killed (failover to another endpoint),
//! the stream itself killed with SIGKILL and restarted, the S3 server down for 20 s (sealed
//! segments spooled, then committed in order), the spool full while the store is down, SIGTERM
//! while the store is down, a single-member etcd restarted under the stream, `/metrics` on a
//! port, etcd 3.4, and `--full-every`. Every test checks the chain from the segments' manifests
//! (each segment starts at the revision after the one before: no gap, no duplicate) and restores
//! a revision, compared key by key with the live source at that revision.
//!
//! Nothing waits on a clock for an outcome: the tests wait for kirt's own log lines and for
//! manifests, then assert.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::common::etcd::{member_id, populate_etcd};
use crate::common::process::Held;
use crate::common::s3::{self, PRIVATE_KEY};
use crate::common::{self, lab, Lab};
use crate::pitr::{
    fulls, keys_at, last_revision, put, received, restore_from, segments, start_restored, Keys,
    CLUSTER,
};

const WAIT: Duration = Duration::from_secs(90);

/// `kirt -v backup stream` to `to`, signed and encrypted, with `extra` flags.
fn stream_cmd(lab: &Lab, keys: &Keys, endpoints: &str, to: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        "-v",
        "backup",
        "stream",
        "--etcd-endpoints",
        endpoints,
        "--to",
        to,
        "--cluster-name",
        CLUSTER,
        "--recipient",
        &keys.recipient,
        "--sign-key",
        &keys.sign,
    ];
    args.extend_from_slice(extra);
    let mut cmd = lab.kirt_cmd(&args);
    cmd.env("KIRT_SIGN_PASSWORD", "pw");
    cmd
}

/// Checks that `manifests` (by sequence) continue the full backup at `full_revision` with no
/// gap and no duplicate revision, one event per revision (each write here is one put), and
/// returns the last revision.
#[track_caller]
fn contiguous(full_revision: i64, manifests: &[Value]) -> i64 {
    let mut next = full_revision + 1;
    for (i, m) in manifests.iter().enumerate() {
        assert_eq!(m["sequence"].as_u64(), Some(i as u64 + 1), "{m:#}");
        assert_eq!(
            m["first_revision"].as_i64(),
            Some(next),
            "a gap or a repeat: {m:#}"
        );
        let last = m["last_revision"].as_i64().unwrap();
        assert!(last >= next, "{m:#}");
        assert_eq!(
            m["events"].as_i64(),
            Some(last - next + 1),
            "one event per revision, none twice: {m:#}"
        );
        next = last + 1;
    }
    next - 1
}

fn full_revision(dir: &Path, base: &str) -> i64 {
    let m: Value = serde_json::from_slice(
        &std::fs::read(dir.join(CLUSTER).join(format!("{base}.manifest.json"))).unwrap(),
    )
    .unwrap();
    m["etcd"]["revision"].as_i64().unwrap()
}

/// Restores `from` to revision `rev` and compares every key and value with `source` at `rev`.
#[track_caller]
fn restore_matches(
    lab: &Lab,
    from: &[&str],
    env: &[(&str, String)],
    keys: &Keys,
    source: &str,
    rev: i64,
) {
    let data = lab.dir.path().join(common::unique("restored"));
    let r = rev.to_string();
    let mut extra = vec!["--trusted-key", &keys.trusted, "--to-revision", &r];
    extra.extend_from_slice(&from[1..]);
    let (run, _) = restore_from(lab, from[0], env, keys, &data, &extra);
    let run = run.ok();
    assert_eq!(
        run.json()["point_in_time"]["revision"].as_i64(),
        Some(rev),
        "{}",
        run.dump()
    );
    let member = start_restored(lab, &run, &data);
    let want = keys_at(source, "", rev);
    let mut got = Default::default();
    common::wait_until(
        Duration::from_secs(30),
        "the restored member answers",
        || {
            got = keys_at(&member.endpoint, "", 0);
            !got.is_empty()
        },
    );
    assert_eq!(got, want, "restored at r{rev} vs the source at r{rev}");
}

/// Puts `key` through any member that takes it (one may just have been killed).
fn put_any(endpoints: &[String], key: &str, value: &str) -> i64 {
    common::block_on(async {
        for _ in 0..100 {
            for ep in endpoints {
                if let Ok(mut c) = etcd_client::Client::connect([ep], None).await {
                    if let Ok(r) = c.put(key, value, None).await {
                        return r.header().unwrap().revision();
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("no member took the write of {key}");
    })
}

/// The member the stream logs it watches: "watching etcd member ID at ENDPOINT from".
fn watched(h: &Held) -> Vec<String> {
    h.stderr()
        .lines()
        .filter_map(|l| l.split("watching etcd member ").nth(1))
        .filter_map(|l| l.split(" at ").nth(1))
        .filter_map(|l| l.split(' ').next())
        .map(String::from)
        .collect()
}

#[test]
fn the_watch_fails_over_to_another_member_without_a_gap() {
    let Some(lab) = lab() else { return };
    let (mut members, leader) = lab.etcd_cluster(3);
    // a follower first: the stream watches the first endpoint, and killing a follower leaves
    // the leader to take the writes at once
    members.sort_by_key(|m| member_id(&m.endpoint) == leader);
    let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
    populate_etcd(&endpoints[0], "/base", 100);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let metrics = lab.dir.path().join("stream.prom");
    let h = Held::spawn(stream_cmd(
        &lab,
        &keys,
        &endpoints.join(","),
        dir.to_str().unwrap(),
        &[
            "--segment-every",
            "1s",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    ));
    common::wait_until(WAIT, "the stream's full backup", || fulls(&dir).len() == 1);
    let base = fulls(&dir).remove(0);
    common::wait_until(WAIT, "the stream naming the member it watches", || {
        !watched(&h).is_empty()
    });
    let first = watched(&h).remove(0);
    for i in 0..20 {
        put_any(&endpoints, &format!("/fo/before/{i}"), "1");
    }
    let victim = members.iter().position(|m| m.endpoint == first).unwrap();
    members[victim].kill();
    let alive: Vec<String> = endpoints.iter().filter(|e| **e != first).cloned().collect();
    let mut last = 0;
    for i in 0..40 {
        last = put_any(&alive, &format!("/fo/after/{i}"), &i.to_string());
    }
    common::wait_until(
        WAIT,
        "the stream receiving the writes after the kill",
        || received(&h, last),
    );
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("failing over"), "{err}");
    assert!(err.contains(&format!("{first} was lost")), "{err}");
    assert_eq!(fulls(&dir), vec![base.clone()], "no new chain: {err}");
    let (_, segs) = segments(&dir, &base);
    assert_eq!(contiguous(full_revision(&dir, &base), &segs), last);
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        m.contains(&format!(
            "kirt_stream_failovers_total{{cluster=\"{CLUSTER}\"}} 1"
        )),
        "{m}"
    );
    restore_matches(
        &lab,
        &[dir.to_str().unwrap()],
        &[],
        &keys,
        &alive[0],
        last - 10,
    );
}

#[test]
fn kill_9_and_restart_leave_no_gap_and_no_duplicate() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let to = dir.to_str().unwrap().to_string();
    // nothing commits on its own (1h): what is committed is what SIGTERM committed
    let start = || {
        Held::spawn(stream_cmd(
            &lab,
            &keys,
            &ep,
            &to,
            &["--segment-every", "1h"],
        ))
    };
    let h = start();
    common::wait_until(WAIT, "the stream's full backup", || fulls(&dir).len() == 1);
    let base = fulls(&dir).remove(0);
    let r1 = put(&ep, "/k9/a", "1");
    common::wait_until(WAIT, "the write received", || received(&h, r1));
    assert_eq!(h.terminate().0, 0);
    assert_eq!(last_revision(&dir, &base), r1);
    // received, never committed: SIGKILL loses it from the stream, not from etcd
    let h = start();
    put(&ep, "/k9/b", "1");
    let tail = put(&ep, "/k9/c", "1");
    common::wait_until(WAIT, "the tail received", || received(&h, tail));
    let (code, _, _) = h.signal("KILL");
    assert_ne!(code, 0);
    assert_eq!(last_revision(&dir, &base), r1, "the tail was not committed");
    let down = put(&ep, "/k9/d", "written while no stream ran");
    let h = start();
    let r4 = put(&ep, "/k9/e", "1");
    common::wait_until(WAIT, "the restarted stream receiving", || received(&h, r4));
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("continuing the chain"), "{err}");
    assert_eq!(fulls(&dir), vec![base.clone()]);
    let (_, segs) = segments(&dir, &base);
    assert_eq!(contiguous(full_revision(&dir, &base), &segs), r4);
    assert!(down < r4);
    restore_matches(&lab, &[&to], &[], &keys, &ep, tail);
    restore_matches(&lab, &[&to], &[], &keys, &ep, r4);
}

/// The metrics `--metrics-listen` serves now (a plain HTTP/1.1 GET).
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to --metrics-listen");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// A metric's value in a scrape (or textfile).
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[test]
fn an_s3_outage_is_spooled_then_committed_in_order() {
    let Some(lab) = lab() else { return };
    let Outage {
        etcd: _etcd,
        ep,
        keys,
        mut server,
        s3_dir,
        s3_port,
        client,
        bucket,
        to,
    } = Outage::new(&lab, "stream");
    let env = s3_env();
    let spool = lab.dir.path().join("spool");
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let cmd = s3_stream(
        &lab,
        &keys,
        &ep,
        &to,
        &server.endpoint,
        &spool,
        &["--segment-every", "1s", "--metrics-listen", &listen],
    );
    let h = Held::spawn(cmd);
    let manifests = |c: &aws_sdk_s3::Client| manifests(c, &bucket);
    common::wait_until(WAIT, "the full backup and a first segment", || {
        put(&ep, "/s3/warmup", "1");
        manifests(&client).iter().any(|k| k.contains(".chain/"))
    });
    let before = scrape(port);
    assert_eq!(value(&before, "kirt_stream_spool_bytes"), 0.0, "{before}");
    // the store goes away for 20 s while writes go on
    server.kill();
    let mut last = 0;
    for i in 0..100 {
        last = put(&ep, &format!("/s3/during/{i}"), &i.to_string());
        std::thread::sleep(Duration::from_millis(200));
    }
    common::wait_until(WAIT, "segments waiting in the spool", || {
        value(&scrape(port), "kirt_stream_spool_bytes") > 0.0
    });
    let during = scrape(port);
    assert!(
        value(&during, "kirt_stream_failures_total") > 0.0,
        "{during}"
    );
    let server = lab.private_s3s(Some((&s3_dir, s3_port)));
    let client = s3::client(&server.endpoint, PRIVATE_KEY.0, PRIVATE_KEY.1);
    common::wait_until(WAIT, "the spool committed to the store", || {
        let m = scrape(port);
        value(&m, "kirt_stream_spool_bytes") == 0.0
            && value(&m, "kirt_stream_last_revision") >= last as f64
    });
    let after = scrape(port);
    assert!(
        value(&after, "kirt_stream_segments_total") > value(&before, "kirt_stream_segments_total"),
        "{after}"
    );
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("wait in the spool"), "{err}");
    let left = common::files_under(&spool);
    assert!(left.is_empty(), "the spool kept {left:?}");
    // the chain in the store, from its manifests: contiguous from the full backup
    let local = download_manifests(&lab, &client, &bucket);
    let base = fulls(&local).remove(0);
    let (_, segs) = segments(&local, &base);
    let end = contiguous(full_revision(&local, &base), &segs);
    assert!(end >= last, "{end} < {last}");
    restore_matches(
        &lab,
        &[&to, "--endpoint-url", &server.endpoint, "--path-style"],
        &env,
        &keys,
        &ep,
        last,
    );
}

fn s3_env() -> [(&'static str, String); 2] {
    [
        ("AWS_ACCESS_KEY_ID", PRIVATE_KEY.0.to_string()),
        ("AWS_SECRET_ACCESS_KEY", PRIVATE_KEY.1.to_string()),
    ]
}

/// What each store-outage test starts from: a private etcd 3.5 with 50 keys, the stream's keys,
/// a private s3s-fs (the test kills and restarts it: its dir and port) and a fresh bucket on it.
struct Outage {
    etcd: common::process::Proc,
    ep: String,
    keys: Keys,
    server: common::process::Proc,
    s3_dir: std::path::PathBuf,
    s3_port: u16,
    client: aws_sdk_s3::Client,
    bucket: String,
    to: String,
}

impl Outage {
    fn new(lab: &Lab, name: &str) -> Outage {
        let etcd = lab.private_etcd("3.5");
        let ep = etcd.endpoint.clone();
        populate_etcd(&ep, "/base", 50);
        let server = lab.private_s3s(None);
        let client = s3::client(&server.endpoint, PRIVATE_KEY.0, PRIVATE_KEY.1);
        let bucket = common::unique(name);
        s3::create_bucket(&client, &bucket);
        Outage {
            ep,
            keys: Keys::new(lab),
            s3_dir: server.dir.clone(),
            s3_port: server.port,
            to: format!("s3://{bucket}/p"),
            etcd,
            server,
            client,
            bucket,
        }
    }
}

/// A stream to a private s3s-fs at `endpoint`, spooling into `spool`.
fn s3_stream(
    lab: &Lab,
    keys: &Keys,
    ep: &str,
    to: &str,
    endpoint: &str,
    spool: &Path,
    extra: &[&str],
) -> Command {
    let mut args = vec![
        "--endpoint-url",
        endpoint,
        "--path-style",
        "--spool-dir",
        spool.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let mut cmd = stream_cmd(lab, keys, ep, to, &args);
    cmd.envs(s3_env().iter().map(|(k, v)| (k, v)));
    cmd
}

fn manifests(c: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    s3::keys(c, bucket)
        .into_iter()
        .filter(|k| k.ends_with(".manifest.json"))
        .collect()
}

/// The bucket's manifests (prefix `p/`) in a local dir, for the pitr helpers.
fn download_manifests(lab: &Lab, client: &aws_sdk_s3::Client, bucket: &str) -> std::path::PathBuf {
    let local = lab.dir.path().join(common::unique("from-s3"));
    for k in manifests(client, bucket) {
        let file = local.join(k.trim_start_matches("p/"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        s3::download(client, bucket, &k, &file);
    }
    local
}

/// A spooled segment changed while the stream was down (a flipped byte in its sealed object):
/// the restart refuses it, commits nothing of it, and reads its revisions from etcd again.
#[test]
fn a_tampered_spool_is_refused_and_its_revisions_read_again() {
    let Some(lab) = lab() else { return };
    let Outage {
        etcd: _etcd,
        ep,
        keys,
        mut server,
        s3_dir,
        s3_port,
        client,
        bucket,
        to,
    } = Outage::new(&lab, "spool");
    let spool = lab.dir.path().join("spool");
    let start = |every: &str| {
        Held::spawn(s3_stream(
            &lab,
            &keys,
            &ep,
            &to,
            &format!("http://127.0.0.1:{s3_port}"),
            &spool,
            &["--segment-every", every],
        ))
    };
    let h = start("1s");
    common::wait_until(WAIT, "the full backup", || {
        !manifests(&client, &bucket).is_empty()
    });
    server.kill();
    let tail = put(&ep, "/t/a", "1");
    let sealed = || {
        common::files_under(&spool)
            .into_iter()
            .find(|f| f.to_string_lossy().ends_with(".seg.zst.age"))
    };
    common::wait_until(WAIT, "a segment sealed into the spool", || {
        sealed().is_some()
    });
    let (code, _, _) = h.signal("KILL");
    assert_ne!(code, 0);
    let object = sealed().unwrap();
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    let server = lab.private_s3s(Some((&s3_dir, s3_port)));
    let h = start("1h");
    let last = put(&ep, "/t/b", "1");
    common::wait_until(WAIT, "the restarted stream receiving", || {
        received(&h, last)
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("does not match its manifest"), "{err}");
    assert!(
        common::files_under(&spool).is_empty(),
        "{:?}",
        common::files_under(&spool)
    );
    let local = download_manifests(&lab, &client, &bucket);
    let base = fulls(&local).remove(0);
    let (_, segs) = segments(&local, &base);
    assert_eq!(contiguous(full_revision(&local, &base), &segs), last);
    restore_matches(
        &lab,
        &[&to, "--endpoint-url", &server.endpoint, "--path-style"],
        &s3_env(),
        &keys,
        &ep,
        tail,
    );
}

#[test]
fn streams_from_etcd_3_4() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.4");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let to = dir.to_str().unwrap();
    // a metrics port on another address than loopback is refused before anything starts
    let run = common::run(
        stream_cmd(&lab, &keys, &ep, to, &["--metrics-listen", "0.0.0.0:9"]),
        "stream on 0.0.0.0".into(),
    );
    assert_eq!(run.code(), 2, "{}", run.dump());
    assert!(
        run.stderr().contains("--metrics-allow-remote"),
        "{}",
        run.dump()
    );
    assert!(fulls(&dir).is_empty());
    let h = Held::spawn(stream_cmd(&lab, &keys, &ep, to, &["--segment-every", "1s"]));
    common::wait_until(WAIT, "the stream's full backup", || fulls(&dir).len() == 1);
    let base = fulls(&dir).remove(0);
    let r = put(&ep, "/v34/a", "1");
    crate::pitr::delete(&ep, "/v34/a");
    let last = put(&ep, "/v34/b", "2");
    common::wait_until(WAIT, "a segment reaching the writes", || {
        last_revision(&dir, &base) >= last
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    let (_, segs) = segments(&dir, &base);
    assert_eq!(contiguous(full_revision(&dir, &base), &segs), last);
    restore_matches(&lab, &[to], &[], &keys, &ep, r);
    restore_matches(&lab, &[to], &[], &keys, &ep, last);
}

#[test]
fn full_every_starts_a_second_chain_that_continues_the_first() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let h = Held::spawn(stream_cmd(
        &lab,
        &keys,
        &ep,
        dir.to_str().unwrap(),
        &["--segment-every", "1s", "--full-every", "5s"],
    ));
    common::wait_until(WAIT, "the stream's full backup", || fulls(&dir).len() == 1);
    let first = fulls(&dir).remove(0);
    let r1 = put(&ep, "/fe/a", "1");
    common::wait_until(WAIT, "a second full backup", || fulls(&dir).len() >= 2);
    let second = fulls(&dir)[1].clone();
    let r2 = put(&ep, "/fe/b", "1");
    common::wait_until(WAIT, "the second chain's segment", || {
        last_revision(&dir, &second) >= r2
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("--full-every 5s has passed"), "{err}");
    let (_, segs) = segments(&dir, &first);
    let end = contiguous(full_revision(&dir, &first), &segs);
    assert!(end >= r1);
    // the second chain's full backup holds every revision the first did not reach
    assert!(
        full_revision(&dir, &second) >= end,
        "a gap between the chains"
    );
    let (_, segs) = segments(&dir, &second);
    contiguous(full_revision(&dir, &second), &segs);
    restore_matches(&lab, &[dir.to_str().unwrap()], &[], &keys, &ep, r1);
    restore_matches(&lab, &[dir.to_str().unwrap()], &[], &keys, &ep, r2);
}

/// A value of `len` bytes that zstd cannot shrink much (hex of a xorshift sequence seeded by
/// `seed`): the spool fills with what is written, not with what compresses away.
fn incompressible(seed: u64, len: usize) -> String {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(len);
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(len);
    s
}

/// Waits until `h` has exited on its own, then collects its exit code and stderr (the signal
/// `Held::signal` sends then reaches a process that has already exited, and is ignored).
fn exited(h: Held, what: &str) -> (i32, String) {
    let pid = h.child.id();
    common::wait_until(WAIT, what, || !crate::common::process::alive(pid));
    let (code, _, err) = h.signal("TERM");
    (code, err)
}

/// The store down while writes go on until `--spool-max` cannot take the next segment: exit 1,
/// the message naming the spool, the store and its error; the spool kept; a restart with the
/// store back commits the spool first, then reads the revisions it had not kept from etcd
/// again: the chain is contiguous and nothing is lost.
#[test]
fn a_full_spool_fails_the_stream_and_a_restart_loses_nothing() {
    let Some(lab) = lab() else { return };
    let Outage {
        etcd: _etcd,
        ep,
        keys,
        mut server,
        s3_dir,
        s3_port,
        client,
        bucket,
        to,
    } = Outage::new(&lab, "spoolfull");
    let spool = lab.dir.path().join("spool");
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    let start = || {
        Held::spawn(s3_stream(
            &lab,
            &keys,
            &ep,
            &to,
            &endpoint,
            &spool,
            &["--segment-every", "1s", "--spool-max", "32KiB"],
        ))
    };
    let h = start();
    common::wait_until(WAIT, "the full backup", || {
        !manifests(&client, &bucket).is_empty()
    });
    server.kill();
    let mut i = 0u64;
    let mut last = 0;
    let (code, err) = {
        let pid = h.child.id();
        common::wait_until(WAIT, "the stream failing on its full spool", || {
            // 8 KiB a write (about 4 KiB once compressed), one write a poll: a few 1 s segments
            // fill the 32 KiB spool (the stream only probes the dead store, briefly, each tick)
            last = put(&ep, &format!("/full/{i}"), &incompressible(i, 8192));
            i += 1;
            !crate::common::process::alive(pid)
        });
        exited(h, "the stream's exit")
    };
    assert_eq!(code, 1, "{err}");
    let spool_dir = spool.display().to_string();
    assert!(
        err.contains(&format!("the spool {spool_dir}")) && err.contains("is full"),
        "{err}"
    );
    assert!(err.contains(&format!("while the store {to}")), "{err}");
    assert!(!err.contains("no error recorded"), "{err}");
    assert!(
        !err.contains(", 0 segments waiting)"),
        "segments were spooled before it filled: {err}"
    );
    assert!(
        !err.contains(PRIVATE_KEY.1),
        "the secret key in the log: {err}"
    );
    let kept = common::files_under(&spool);
    assert!(
        kept.iter()
            .any(|f| f.to_string_lossy().ends_with(".seg.zst.age")),
        "the spool was not kept: {kept:?}"
    );
    // the store back: the restart commits the spool, then reads the rest from etcd
    let server = lab.private_s3s(Some((&s3_dir, s3_port)));
    let h = start();
    let end = put(&ep, "/full/end", "1");
    assert!(end > last);
    common::wait_until(WAIT, "the restarted stream receiving", || received(&h, end));
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("continuing the chain"), "{err}");
    let left = common::files_under(&spool);
    assert!(left.is_empty(), "the spool kept {left:?}");
    let local = download_manifests(&lab, &client, &bucket);
    let bases = fulls(&local);
    assert_eq!(bases.len(), 1, "one chain: {bases:?}");
    let (_, segs) = segments(&local, &bases[0]);
    assert_eq!(contiguous(full_revision(&local, &bases[0]), &segs), end);
    restore_matches(
        &lab,
        &[&to, "--endpoint-url", &server.endpoint, "--path-style"],
        &s3_env(),
        &keys,
        &ep,
        last,
    );
}

/// SIGTERM while the store is down: what was received is sealed into the spool, the commit
/// fails, exit 1 saying the segments stay spooled; they do; a restart with the store back
/// commits them first, in order, and the chain goes on without a gap.
#[test]
fn sigterm_while_the_store_is_down_keeps_the_spool_for_the_restart() {
    let Some(lab) = lab() else { return };
    let Outage {
        etcd: _etcd,
        ep,
        keys,
        mut server,
        s3_dir,
        s3_port,
        client,
        bucket,
        to,
    } = Outage::new(&lab, "termdown");
    let spool = lab.dir.path().join("spool");
    let endpoint = format!("http://127.0.0.1:{s3_port}");
    // nothing commits on its own (1h): what reaches the spool is what SIGTERM sealed
    let start = || {
        Held::spawn(s3_stream(
            &lab,
            &keys,
            &ep,
            &to,
            &endpoint,
            &spool,
            &["--segment-every", "1h"],
        ))
    };
    let h = start();
    common::wait_until(WAIT, "the full backup", || {
        !manifests(&client, &bucket).is_empty()
    });
    server.kill();
    let mut last = 0;
    for i in 0..10 {
        last = put(&ep, &format!("/down/{i}"), &i.to_string());
    }
    common::wait_until(WAIT, "the writes received", || received(&h, last));
    let (code, _, err) = h.terminate();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("stay in the spool {}", spool.display())),
        "{err}"
    );
    assert!(err.contains(&format!("to revision {last})")), "{err}");
    assert!(
        !err.contains(PRIVATE_KEY.1),
        "the secret key in the log: {err}"
    );
    let kept = common::files_under(&spool);
    assert!(
        kept.iter()
            .any(|f| f.to_string_lossy().ends_with(".seg.zst.age")),
        "nothing spooled: {kept:?}"
    );
    let server = lab.private_s3s(Some((&s3_dir, s3_port)));
    assert!(
        !manifests(&client, &bucket)
            .iter()
            .any(|k| k.contains(".chain/")),
        "a segment reached the store while it was down"
    );
    let h = start();
    let end = put(&ep, "/down/end", "1");
    common::wait_until(WAIT, "the restarted stream receiving", || received(&h, end));
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    let left = common::files_under(&spool);
    assert!(left.is_empty(), "the spool kept {left:?}");
    let local = download_manifests(&lab, &client, &bucket);
    let bases = fulls(&local);
    assert_eq!(bases.len(), 1, "one chain: {bases:?}");
    let (_, segs) = segments(&local, &bases[0]);
    assert_eq!(
        segs[0]["last_revision"].as_i64(),
        Some(last),
        "the spooled segment comes first: {segs:#?}"
    );
    assert_eq!(contiguous(full_revision(&local, &bases[0]), &segs), end);
    restore_matches(
        &lab,
        &[&to, "--endpoint-url", &server.endpoint, "--path-style"],
        &s3_env(),
        &keys,
        &ep,
        last,
    );
}

/// A single-member etcd stopped under the stream and started again on its data dir: the watch
/// breaks, reconnects to the same member (no failover, no new chain) from the revision after the
/// last one received, and the chain goes on without a gap.
#[test]
fn a_restarted_single_etcd_member_resumes_the_watch_without_a_gap() {
    let Some(lab) = lab() else { return };
    let (mut etcd, peer) = lab.private_etcd_restartable();
    let (ep, data, port) = (etcd.endpoint.clone(), etcd.dir.clone(), etcd.port);
    populate_etcd(&ep, "/base", 50);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let to = dir.to_str().unwrap();
    let h = Held::spawn(stream_cmd(&lab, &keys, &ep, to, &["--segment-every", "1s"]));
    common::wait_until(WAIT, "the stream's full backup", || fulls(&dir).len() == 1);
    let base = fulls(&dir).remove(0);
    let r1 = put(&ep, "/rs/before", "1");
    common::wait_until(WAIT, "the write received", || received(&h, r1));
    etcd.kill();
    // down until the stream has failed to reconnect at least once (its log says so), whatever
    // the time that takes on this machine
    let broke = |h: &Held| h.stderr().matches(" broke: ").count();
    common::wait_until(WAIT, "a reconnection failing while etcd is down", || {
        broke(&h) >= 2
    });
    let _etcd = lab.restart_etcd(&data, port, peer);
    let mut last = 0;
    for i in 0..20 {
        // the restarted member takes writes once it has elected itself (put_any retries)
        last = put_any(
            std::slice::from_ref(&ep),
            &format!("/rs/after/{i}"),
            &i.to_string(),
        );
    }
    common::wait_until(WAIT, "the stream receiving after the restart", || {
        received(&h, last)
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!("reconnecting from revision {}", r1 + 1)),
        "{err}"
    );
    assert!(!err.contains("failing over"), "the same member: {err}");
    assert_eq!(fulls(&dir), vec![base.clone()], "no new chain: {err}");
    let (_, segs) = segments(&dir, &base);
    assert_eq!(contiguous(full_revision(&dir, &base), &segs), last);
    restore_matches(&lab, &[to], &[], &keys, &ep, r1);
    restore_matches(&lab, &[to], &[], &keys, &ep, last);
}
