//! Broken chains: a segment missing, two segments swapped, a segment of another chain (signed
//! with the same key) copied in. `backup verify` exits 3 naming the segment; a restore past the
//! break exits 3 naming it, one that stops before it works.

use std::path::Path;
use std::time::Duration;

use super::*;

/// A chain of one full backup and four one-revision segments; returns the segments' ids and
/// revisions in order.
fn four_segments(lab: &Lab, ep: &str, dir: &Path, keys: &Keys) -> (String, Vec<(String, i64)>) {
    let wait = Duration::from_secs(60);
    let h = stream(lab, ep, dir, keys, "1s");
    common::wait_until(wait, "the stream's full backup", || fulls(dir).len() == 1);
    let base = fulls(dir).remove(0);
    // each write waits for its segment: one segment per revision
    let mut revs = Vec::new();
    for i in 0..4 {
        let rev = put(ep, &format!("/chain/{i}"), "v");
        common::wait_until(wait, "a segment reaching the write", || {
            last_revision(dir, &base) >= rev
        });
        revs.push(rev);
    }
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    let (_, segs) = segments(dir, &base);
    let segs: Vec<(String, i64)> = segs
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["last_revision"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        segs.iter().map(|s| s.1).collect::<Vec<_>>(),
        revs,
        "one segment per write"
    );
    (base, segs)
}

/// The files of segment `id` in `chain` (object, manifest, signatures).
fn files_of(chain: &Path, id: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(chain)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{id}."))
        })
        .collect();
    v.sort();
    assert!(v.len() >= 3, "{id}: {v:?}");
    v
}

/// Moves segment `from`'s files to segment `to`'s names (the bytes unchanged).
fn rename_segment(chain: &Path, from: &str, to: &str, into: &Path) {
    for f in files_of(chain, from) {
        let name = f
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .replacen(from, to, 1);
        std::fs::rename(&f, into.join(name)).unwrap();
    }
}

/// verify exits 3 naming `culprit`; a restore to `past` (beyond the break) exits 3 naming it and
/// writes nothing; one to `before` (a revision before the break) gives the source's keys there.
fn assert_broken(
    lab: &Lab,
    (dir, source): (&Path, &str),
    keys: &Keys,
    culprit: &str,
    past: i64,
    before: i64,
) {
    let v = verify(lab, dir, keys, &[]);
    assert_eq!(v.code(), 3, "{}", v.dump());
    assert!(v.stdout().contains(culprit), "{}", v.dump());
    let tmp = lab.dir.path().join("tmp");
    let data = lab.dir.path().join(common::unique("past"));
    let (run, _) = restore(
        lab,
        dir,
        keys,
        &data,
        &[
            "--trusted-key",
            &keys.trusted,
            "--to-revision",
            &past.to_string(),
        ],
    );
    assert_eq!(run.code(), 3, "{}", run.dump());
    assert!(run.stderr().contains(culprit), "{}", run.dump());
    assert!(!data.exists(), "a refused restore wrote {}", data.display());
    let (member, reached) = restore_to(lab, dir, keys, ["--to-revision", &before.to_string()]);
    assert_eq!(reached, before);
    assert_eq!(
        keys_at(&member.endpoint, "/chain/", 0),
        keys_at(source, "/chain/", before),
    );
    let left = sh(&format!("ls -A {}", tmp.display())).stdout();
    assert!(left.trim().is_empty(), "restores left behind: {left}");
}

#[test]
fn missing_swapped_and_foreign_segments_break_the_chain_there() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    let ep = etcd.endpoint.clone();
    populate_etcd(&ep, "/base", 20);
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let (base, segs) = four_segments(&lab, &ep, &dir, &keys);
    let copy = |name: &str| {
        let to = lab.dir.path().join(name);
        sh(&format!("cp -a {} {}", dir.display(), to.display())).ok();
        let chain = to.join(CLUSTER).join(format!("{base}.chain"));
        (to, chain)
    };

    // 1. the second segment missing: the third names the gap
    let (missing, chain) = copy("missing");
    for f in files_of(&chain, &segs[1].0) {
        std::fs::remove_file(f).unwrap();
    }
    assert_broken(
        &lab,
        (&missing, &ep),
        &keys,
        &segs[2].0,
        segs[3].1,
        segs[0].1,
    );
    let v = verify(&lab, &missing, &keys, &[]).stdout();
    assert!(v.contains("missing"), "{v}");

    // 2. the second and third swapped (each one's files under the other's names)
    let (swapped, chain) = copy("swapped");
    let aside = lab.dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    rename_segment(&chain, &segs[1].0, &segs[2].0, &aside);
    rename_segment(&chain, &segs[2].0, &segs[1].0, &chain);
    for f in std::fs::read_dir(&aside).unwrap().flatten() {
        std::fs::rename(f.path(), chain.join(f.file_name())).unwrap();
    }
    assert_broken(
        &lab,
        (&swapped, &ep),
        &keys,
        &segs[1].0,
        segs[3].1,
        segs[0].1,
    );

    // 3. a segment of another chain (a second stream, same keys) copied in after the last one:
    // it continues the revisions, is signed by the trusted key, and still does not belong
    let other = lab.dir.path().join("other");
    let h = stream(&lab, &ep, &other, &keys, "1s");
    common::wait_until(Duration::from_secs(60), "the other full backup", || {
        fulls(&other).len() == 1
    });
    let other_base = fulls(&other).remove(0);
    let rx = put(&ep, "/chain/x", "v");
    common::wait_until(Duration::from_secs(60), "the other chain's segment", || {
        last_revision(&other, &other_base) >= rx
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");
    let (other_chain, other_segs) = segments(&other, &other_base);
    let foreign = other_segs[0]["id"].as_str().unwrap().to_string();
    let (planted, chain) = copy("foreign");
    for f in files_of(&other_chain, &foreign) {
        std::fs::copy(&f, chain.join(f.file_name().unwrap())).unwrap();
    }
    let first = other_segs[0]["first_revision"].as_i64().unwrap();
    assert!(first > segs[3].1, "{first}");
    assert_broken(&lab, (&planted, &ep), &keys, &foreign, rx, segs[3].1);
    let v = verify(&lab, &planted, &keys, &[]).stdout();
    assert!(v.contains("not this one"), "{v}");
}
