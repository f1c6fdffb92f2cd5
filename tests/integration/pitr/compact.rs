//! `kirt backup compact`: a chain (full backup + segments of a stream of a private etcd 3.5)
//! merged into one full backup. The result is read back without kirt (age, zstd, etcdutl, a
//! fresh etcd) and compared key by key, values included, with the live source at its revision;
//! `backup verify --restore` and `backup list` accept it; `latest` keeps choosing the chain it
//! came from, a revision target may use it. A compaction stopped by SIGTERM at the worst moment
//! (its object and signature stored, the manifest not yet) publishes nothing.

use std::process::{Command, Stdio};

use super::*;

/// `kirt backup compact --from DIR WHICH` with the test's keys (the result signed and encrypted
/// to the test's recipient), scratch files under the test's `tmp`.
fn compact_cmd(lab: &Lab, dir: &Path, keys: &Keys, which: &str, extra: &[&str]) -> Command {
    let mut args = vec![
        "backup",
        "compact",
        "--from",
        dir.to_str().unwrap(),
        which,
        "--identity",
        &keys.age,
        "--trusted-key",
        &keys.trusted,
        "--recipient",
        &keys.recipient,
        "--sign-key",
        &keys.sign,
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut cmd = lab.kirt_cmd(&args);
    let tmp = lab.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    cmd.env("KIRT_SIGN_PASSWORD", "pw").env("TMPDIR", &tmp);
    cmd
}

fn compact(lab: &Lab, dir: &Path, keys: &Keys, which: &str, extra: &[&str]) -> Run {
    common::run(
        compact_cmd(lab, dir, keys, which, extra),
        format!("kirt backup compact {which} {extra:?}"),
    )
}

/// A stream of `ep` into `dir` through the writes `write` makes (which returns the revision of
/// the last); returns the chain's base id once SIGTERM committed everything.
fn streamed(lab: &Lab, ep: &str, dir: &Path, keys: &Keys, write: impl FnOnce() -> i64) -> String {
    let wait = Duration::from_secs(60);
    let h = stream(lab, ep, dir, keys, "1s");
    common::wait_until(wait, "the stream's full backup", || fulls(dir).len() == 1);
    let base = fulls(dir).remove(0);
    let last = write();
    common::wait_until(wait, "the stream receiving the writes", || {
        received(&h, last)
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "SIGTERM must commit and exit 0:\n{err}");
    assert_eq!(last_revision(dir, &base), last);
    base
}

/// The member a plaintext snapshot restores to, by the documented commands (no kirt): the
/// object decrypted with `age`, decompressed with `zstd`, restored with `etcdutl`, served by a
/// fresh etcd 3.5.
fn restore_without_kirt(lab: &Lab, object: &Path, keys: &Keys) -> common::Proc {
    let work = lab.dir.path().join(common::unique("nokirt"));
    std::fs::create_dir_all(&work).unwrap();
    let (peer, port) = (common::free_port(), common::free_port());
    let peer_url = format!("http://127.0.0.1:{peer}");
    let data = work.join("data");
    sh(&format!(
        "set -euo pipefail; export PATH={path}; cd {work}\n\
         age -d -i {key} {object} | zstd -d -q > snapshot.db\n\
         etcdutl snapshot restore snapshot.db --data-dir {data} --name m \
           --initial-cluster m={peer_url} --initial-advertise-peer-urls {peer_url}",
        path = lab.path(),
        work = work.display(),
        key = keys.age,
        object = object.display(),
        data = data.display(),
    ))
    .ok();
    let bin = Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
    let client = format!("http://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args(["--name", "m", "--data-dir", data.to_str().unwrap()])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("m={peer_url}")])
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut p = common::Proc {
        child,
        endpoint: client,
        dir: data,
        port,
    };
    common::process::wait_serving(&mut p.child, port, "etcd on the compacted snapshot");
    p
}

fn sha256_of(path: &Path) -> String {
    sh(&format!("sha256sum {}", path.display()))
        .ok()
        .stdout()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn a_compacted_chain_is_a_full_backup_equal_to_the_source_at_its_revision() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 100);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let mut mid = 0;
    let base = streamed(&lab, &ep, &dir, &keys, || {
        put(&ep, "/pitr/a", "1");
        put(&ep, "/pitr/b", "1");
        delete(&ep, "/pitr/a");
        put(&ep, "/base/00000007", "overwritten");
        mid = put(&ep, "/pitr/c", "1");
        delete(&ep, "/pitr/b");
        put(&ep, "/pitr/d", "1")
    });
    let end = last_revision(&dir, &base);
    let (chain_dir, segs) = segments(&dir, &base);

    // 1. compact to a revision in the middle of the chain
    let r = compact(
        &lab,
        &dir,
        &keys,
        "latest",
        &["--to-revision", &mid.to_string()],
    )
    .ok();
    let j = r.json();
    assert_eq!(j["revision"].as_i64(), Some(mid), "{}", r.dump());
    let from = &j["compacted_from"];
    assert_eq!(from["base"].as_str(), Some(base.as_str()), "{}", r.dump());
    // the last segment replayed is the one holding the revision, linked by its manifest's sha256
    let holding = segs
        .iter()
        .find(|s| {
            s["first_revision"].as_i64().unwrap() <= mid
                && mid <= s["last_revision"].as_i64().unwrap()
        })
        .unwrap();
    let holding_id = holding["id"].as_str().unwrap();
    assert_eq!(
        from["last_segment"].as_str(),
        Some(holding_id),
        "{}",
        r.dump()
    );
    assert_eq!(
        from["last_segment_manifest_sha256"].as_str().unwrap(),
        sha256_of(&chain_dir.join(format!("{holding_id}.manifest.json")))
    );
    let id = j["id"].as_str().unwrap().to_string();
    assert_ne!(id, base);
    // the stored manifest says the same (what list, verify and restore read)
    let m: Value = serde_json::from_slice(
        &std::fs::read(dir.join(CLUSTER).join(format!("{id}.manifest.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(m["compacted_from"], *from, "{m:#}");
    assert_eq!(m["etcd"]["revision"].as_i64(), Some(mid), "{m:#}");

    // read back without kirt: exactly the source's keys and values at that revision
    let object = dir.join(j["object"].as_str().unwrap());
    assert!(
        object.to_str().unwrap().ends_with(".etcd.zst.age"),
        "{}",
        object.display()
    );
    let member = restore_without_kirt(&lab, &object, &keys);
    assert_eq!(content_at(&member.endpoint, 0), content_at(&ep, mid));
    drop(member);

    // verify --restore (digests, signature, keys, HashKV at the revision) accepts it
    let which = format!("{CLUSTER}/{id}");
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            dir.to_str().unwrap(),
            &which,
            "--identity",
            &keys.age,
            "--trusted-key",
            &keys.trusted,
            "--restore",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["signed"], true, "{v:#}");
    let hash = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"].as_str().unwrap().contains("HashKV"))
        .unwrap_or_else(|| panic!("no HashKV check: {v:#}"))
        .clone();
    assert_eq!(hash["ok"], true, "{v:#}");

    // 2. compacted to the chain's end by default
    let r = compact(&lab, &dir, &keys, &base, &[]).ok();
    let j = r.json();
    assert_eq!(j["revision"].as_i64(), Some(end), "{}", r.dump());
    assert_eq!(
        j["compacted_from"]["last_segment"],
        segs.last().unwrap()["id"],
        "{}",
        r.dump()
    );
    let end_id = j["id"].as_str().unwrap().to_string();
    let member = restore_without_kirt(&lab, &dir.join(j["object"].as_str().unwrap()), &keys);
    assert_eq!(content_at(&member.endpoint, 0), content_at(&ep, end));
    drop(member);

    // backup list shows both as signed full backups of their revisions
    let l = lab
        .kirt([
            "backup",
            "list",
            "--from",
            dir.to_str().unwrap(),
            "--trusted-key",
            &keys.trusted,
            "-o",
            "json",
        ])
        .ok()
        .json();
    for (want, rev) in [(&id, mid), (&end_id, end)] {
        let b = l["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == want.as_str())
            .unwrap_or_else(|| panic!("{want} not listed: {l:#}"));
        assert_eq!(b["status"], "complete", "{b:#}");
        assert_eq!(b["signature"], "valid", "{b:#}");
        assert_eq!(b["revision"].as_i64(), Some(rev), "{b:#}");
    }

    // `latest` is still the chain they came from (it may grow further)...
    let v = verify(&lab, &dir, &keys, &[]).ok().json();
    assert_eq!(v["backup"].as_str(), Some(base.as_str()), "{v:#}");
    // ...and a restore to the compacted revision takes the compacted backup (nothing to replay)
    let data = lab.dir.path().join("at-mid");
    let (run, _) = restore(
        &lab,
        &dir,
        &keys,
        &data,
        &[
            "--trusted-key",
            &keys.trusted,
            "--to-revision",
            &mid.to_string(),
        ],
    );
    let run = run.ok();
    assert_eq!(
        run.json()["backup"].as_str(),
        Some(id.as_str()),
        "{}",
        run.dump()
    );
    assert_eq!(run.json()["point_in_time"]["revision"].as_i64(), Some(mid));

    // 3. refusals (exit 4), nothing written: the same revision again, and a full backup without
    // segments (the compacted one)
    let before = common::files_under(&dir);
    let again = compact(&lab, &dir, &keys, &base, &[]);
    assert_eq!(again.code(), 4, "{}", again.dump());
    assert!(again.stderr().contains(&end_id), "{}", again.dump());
    let nothing = compact(&lab, &dir, &keys, &end_id, &[]);
    assert_eq!(nothing.code(), 4, "{}", nothing.dump());
    assert!(
        nothing.stderr().contains("nothing to compact"),
        "{}",
        nothing.dump()
    );
    // bad input (exit 2)
    let r = compact(&lab, &dir, &keys, &base, &["--to-revision", "0"]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    assert!(r.stderr().contains("start at 1"), "{}", r.dump());
    let r = lab.kirt([
        "backup",
        "compact",
        "--trusted-key",
        &keys.trusted,
        "latest",
    ]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    assert!(r.stderr().contains("--from"), "{}", r.dump());
    assert_eq!(common::files_under(&dir), before);
    let left = sh(&format!("ls -A {}", lab.dir.path().join("tmp").display())).stdout();
    assert!(left.trim().is_empty(), "compactions left behind: {left}");

    // 4. a restarted stream continues its own chain, not a compacted backup
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    let more = put(&ep, "/pitr/e", "1");
    common::wait_until(
        Duration::from_secs(60),
        "the stream receiving the write",
        || received(&h, more),
    );
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("continuing the chain"), "{err}");
    assert_eq!(last_revision(&dir, &base), more, "{err}");
}

#[test]
fn an_interrupted_compaction_publishes_nothing() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 100);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let base = streamed(&lab, &ep, &dir, &keys, || {
        put(&ep, "/pitr/a", "1");
        put(&ep, "/pitr/b", "2")
    });
    let before = common::files_under(&dir);
    // held just before the manifest: the object and its signature are in the store
    let h = Held::start(
        compact_cmd(&lab, &dir, &keys, &base, &[]),
        "manifest",
        Duration::from_secs(120),
    );
    let written: Vec<PathBuf> = common::files_under(&dir)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    assert!(
        written
            .iter()
            .any(|f| f.to_str().unwrap().ends_with(".etcd.zst.age")),
        "the hold is after the upload: {written:?}"
    );
    let children = h.children();
    assert!(!children.is_empty(), "the scratch etcd runs while held");
    let (code, _, err) = h.terminate();
    assert_eq!(code, 143, "{err}");
    assert_eq!(
        common::files_under(&dir),
        before,
        "an interrupted compaction must publish nothing:\n{err}"
    );
    for pid in children {
        assert!(
            !common::process::alive(pid),
            "scratch process {pid} outlived kirt"
        );
    }
    let left = sh(&format!("ls -A {}", lab.dir.path().join("tmp").display())).stdout();
    assert!(left.trim().is_empty(), "left behind: {left}");
    // and the chain compacts afterwards
    let r = compact(&lab, &dir, &keys, &base, &[]).ok();
    assert_eq!(
        r.json()["compacted_from"]["base"].as_str(),
        Some(base.as_str())
    );
}
