//! Restores to revisions and times in the middle of a busy stream: a writer at ~500 ops/s (puts,
//! overwrites, single-key, range and prefix deletes, multi-op transactions, a leased key) while
//! `backup stream --segment-every 2s` runs; each restored member's whole keyspace equals the
//! live source's at that revision, key by key, values included. Run against etcd 3.5 and 3.4.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{DeleteOptions, LeaseTimeToLiveOptions, PutOptions, Txn, TxnOp};

use super::*;

/// Writes the writer makes, at most 500 a second (so ~10 s); the leased key's revision and 4
/// more at 1/5 … 4/5 of them are recorded. A count, not a duration: the load is the same
/// however fast the machine is.
const OPS: u64 = 5_000;
/// TTL of the leased key: outlives the first recorded revision, expires at the source during the
/// run (an expiry is a delete the stream records).
const LEASE_TTL: i64 = 8;
const KEYS: u64 = 200;

struct Written {
    /// The leased key's revision, then revisions at 1/5 … 4/5 of the writes.
    marks: Vec<i64>,
    ops: u64,
    lease: i64,
    took: Duration,
}

/// [`OPS`] writes at up to 500 ops/s: a deterministic mix of every kind of write.
fn write_load(endpoint: &str) -> Written {
    common::block_on(async {
        let mut c = client(endpoint).await;
        let lease = c.lease_grant(LEASE_TTL, None).await.unwrap().id();
        // the first recorded revision: the leased key's own, so it is there whatever the pace
        let leased = c
            .put(
                "/w/leased",
                "event",
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let key = |n: u64| format!("/w/k{:03}", n % KEYS);
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let started = Instant::now();
        let (mut marks, mut ops) = (vec![rev(leased.header())], 0u64);
        while ops < OPS {
            tick.tick().await;
            let (r, k) = (next(), next());
            let revision = match r % 10 {
                // new values and overwrites of the same 200 keys
                0..=4 => rev(c
                    .put(key(k), format!("v{r:x}"), None)
                    .await
                    .unwrap()
                    .header()),
                5 => rev(c.delete(key(k), None).await.unwrap().header()),
                // a range of five keys
                6 => {
                    let from = k % (KEYS - 5);
                    let range = DeleteOptions::new().with_range(key(from + 5));
                    rev(c.delete(key(from), Some(range)).await.unwrap().header())
                }
                // a prefix (/w/kN…: ten keys), now and then
                7 if ops % 20 == 7 => {
                    let prefix = DeleteOptions::new().with_prefix();
                    rev(c
                        .delete(format!("/w/k{}", k % 10), Some(prefix))
                        .await
                        .unwrap()
                        .header())
                }
                // a transaction: two puts and a delete of three distinct keys, one revision
                _ => {
                    let txn = Txn::new().and_then(vec![
                        TxnOp::put(key(k), format!("t{r:x}"), None),
                        TxnOp::put(key(k + 1), format!("t{r:x}"), None),
                        TxnOp::delete(key(k + 2), None),
                    ]);
                    rev(c.txn(txn).await.unwrap().header())
                }
            };
            ops += 1;
            if ops % (OPS / 5) == 0 && marks.len() < 5 {
                marks.push(revision);
            }
        }
        assert_eq!(marks.len(), 5, "{marks:?}");
        Written {
            marks,
            ops,
            lease,
            took: started.elapsed(),
        }
    })
}

fn rev(h: Option<&etcd_client::ResponseHeader>) -> i64 {
    h.unwrap().revision()
}

/// `(revision, time_ms)` of every revision in `base`'s segments, read with age and zstd.
fn received_times(dir: &Path, keys: &Keys, base: &str) -> BTreeMap<i64, i64> {
    let (_, segs) = segments(dir, base);
    let mut times = BTreeMap::new();
    for s in segs {
        let object = dir.join(s["object"].as_str().unwrap());
        let out = sh(&format!(
            "age -d -i {} {} | zstd -dc",
            keys.age,
            object.display()
        ))
        .ok()
        .stdout();
        for line in out.lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            times.insert(
                v["revision"].as_i64().unwrap(),
                v["time_ms"].as_i64().unwrap(),
            );
        }
    }
    times
}

fn restores_match_the_source_at_every_revision(version: &str) {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd(version);
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 100);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let h = stream(&lab, &ep, &dir, &keys, "2s");
    common::wait_until(Duration::from_secs(60), "the stream's full backup", || {
        fulls(&dir).len() == 1
    });
    let base = fulls(&dir).remove(0);
    let w = write_load(&ep);
    // the rate depends on the machine (each write waits for etcd's fsync): reported
    eprintln!(
        "writer: {} ops in {:?} ({:.0} ops/s)",
        w.ops,
        w.took,
        w.ops as f64 / w.took.as_secs_f64()
    );
    let end = put(&ep, "/w/end", "1");
    common::wait_until(
        Duration::from_secs(60),
        "the stream receiving the load",
        || received(&h, end),
    );
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert_eq!(fulls(&dir), vec![base.clone()], "one chain");
    assert!(segments(&dir, &base).1.len() >= 3, "2 s segments");
    // the source at each revision, before anything could compact it (nothing does here)
    let source: Vec<_> = w.marks.iter().map(|&r| (r, content_at(&ep, r))).collect();

    for (r, want) in &source {
        let (member, reached) = restore_to(&lab, &dir, &keys, ["--to-revision", &r.to_string()]);
        assert_eq!(reached, *r);
        let got = content_at(&member.endpoint, 0);
        assert_eq!(got.len(), want.len(), "keys at revision {r}");
        for (k, v) in want {
            assert_eq!(
                got.get(k),
                Some(v),
                "{} at revision {r}",
                String::from_utf8_lossy(k)
            );
        }
        if *r == w.marks[0] {
            leased_key_comes_back_and_expires(&member.endpoint, w.lease, want);
        }
    }

    // --to-time: the receive times of two of the revisions; the restore reaches the newest
    // revision received at or before that time
    let times = received_times(&dir, &keys, &base);
    for r in [w.marks[1], w.marks[3]] {
        let ms = times[&r];
        let t = jiff::Timestamp::from_millisecond(ms).unwrap().to_string();
        let expected = *times
            .iter()
            .filter(|(_, &t)| t <= ms)
            .map(|(r, _)| r)
            .max()
            .unwrap();
        let (member, reached) = restore_to(&lab, &dir, &keys, ["--to-time", &t]);
        assert_eq!(reached, expected, "--to-time {t}");
        assert_eq!(content_at(&member.endpoint, 0), content_at(&ep, expected));
    }
}

/// docs/restore.md "Leases": a leased key comes back attached to its lease, with the lease's
/// granted TTL counted from the restored member's start, and expires unless renewed.
fn leased_key_comes_back_and_expires(
    endpoint: &str,
    lease: i64,
    want: &BTreeMap<Vec<u8>, Vec<u8>>,
) {
    assert!(
        want.contains_key(b"/w/leased".as_slice()),
        "leased key at R"
    );
    let started = Instant::now();
    let ttl = common::block_on(async {
        let r = client(endpoint)
            .await
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap();
        assert_eq!(r.granted_ttl(), LEASE_TTL);
        assert_eq!(r.keys(), [b"/w/leased".to_vec()]);
        r.ttl()
    });
    assert!(ttl > 0 && ttl <= LEASE_TTL, "{ttl}");
    common::wait_until(
        Duration::from_secs(LEASE_TTL as u64 + 20),
        "the leased key expiring",
        || keys_at(endpoint, "/w/leased", 0).is_empty(),
    );
    assert!(
        started.elapsed() >= Duration::from_secs(ttl as u64 - 1),
        "expired before its remaining TTL of {ttl}s"
    );
}

#[test]
fn restores_match_the_source_at_every_revision_etcd35() {
    restores_match_the_source_at_every_revision("3.5");
}

#[test]
fn restores_match_the_source_at_every_revision_etcd34() {
    restores_match_the_source_at_every_revision("3.4");
}
