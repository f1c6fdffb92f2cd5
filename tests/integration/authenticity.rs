//! What kirt reads back from a store may have been planted: forged and future-dated backups,
//! manifests without objects, oversized manifests and signatures, decompression bombs. None of
//! them is restored, becomes `latest`, takes a retention slot or costs kirt unbounded memory.

use std::path::Path;

use serde_json::Value;

use crate::common::etcd::populate_etcd;
use crate::common::keys::{age_key, signing_keys};
use crate::common::process::peak_rss;
use crate::common::{lab, sh, Lab, Run};

const CLUSTER: &str = "c";

/// `kirt backup create` of `endpoint` into `store` (cluster `c`); the backup's id.
fn create(lab: &Lab, endpoint: &str, store: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "backup",
        "create",
        "--etcd-endpoints",
        endpoint,
        "--to",
        store.to_str().unwrap(),
        "--cluster-name",
        CLUSTER,
        "-o",
        "json",
    ];
    args.extend(extra);
    let r = lab.kirt(&args).ok();
    r.json()["id"].as_str().unwrap().to_string()
}

fn manifest_path(store: &Path, id: &str) -> std::path::PathBuf {
    store.join(CLUSTER).join(format!("{id}.manifest.json"))
}

fn object_path(store: &Path, id: &str) -> std::path::PathBuf {
    store.join(CLUSTER).join(format!("{id}.etcd.zst.age"))
}

fn read_manifest(store: &Path, id: &str) -> Value {
    serde_json::from_slice(&std::fs::read(manifest_path(store, id)).unwrap()).unwrap()
}

/// Writes `manifest` as backup `id` (renamed consistently, so it is not a "mismatched" copy).
fn plant(store: &Path, id: &str, mut manifest: Value, finished_at: &str) {
    manifest["id"] = id.into();
    manifest["object"] = format!("{CLUSTER}/{id}.etcd.zst.age").into();
    manifest["finished_at"] = finished_at.into();
    std::fs::write(
        manifest_path(store, id),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y%m%dT%H%M%SZ").to_string()
}

fn entries(r: &Run) -> Vec<Value> {
    r.json()["backups"].as_array().unwrap().clone()
}

fn entry<'a>(all: &'a [Value], id: &str) -> &'a Value {
    all.iter()
        .find(|b| b["id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed: {all:#?}"))
}

#[test]
fn forged_backups_are_refused_and_never_become_latest() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/real", 200);
    let (key, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let store = lab.dir.path().join("bucket");
    let real = create(
        &lab,
        &etcd.endpoint,
        &store,
        &["--recipient", &recipient, "--sign-key", &sign_key],
    );

    // The forger has write access to the bucket and the (public) recipient, not the signing key:
    // a genuine etcd stream with a valid trailer, their own age encryption, a matching manifest.
    populate_etcd(&etcd.endpoint, "/planted", 10);
    let forger = lab.dir.path().join("forger");
    let forged = create(&lab, &etcd.endpoint, &forger, &["--recipient", &recipient]);
    for path in [
        object_path(&forger, &forged),
        manifest_path(&forger, &forged),
    ] {
        std::fs::copy(&path, store.join(CLUSTER).join(path.file_name().unwrap())).unwrap();
    }
    let template = read_manifest(&forger, &forged);
    let rev = template["etcd"]["revision"].as_i64().unwrap();
    // ... dated a year ahead, object and all: it would sort first by name and by time
    let future = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 365);
    let future_id = format!("{}-r{}", stamp(future), rev + 1);
    std::fs::copy(
        object_path(&forger, &forged),
        object_path(&store, &future_id),
    )
    .unwrap();
    plant(&store, &future_id, template.clone(), &future.to_string());
    // ... and manifests with no object behind them, meant to fill retention slots
    let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_mins(5);
    let hollow: Vec<String> = (2..4)
        .map(|i| {
            let id = format!("{}-r{}", stamp(soon), rev + i);
            plant(&store, &id, template.clone(), &soon.to_string());
            id
        })
        .collect();
    let from = store.to_str().unwrap();

    // list says what each one is
    let all = entries(
        &lab.kirt([
            "backup",
            "list",
            "--from",
            from,
            "--trusted-key",
            &trusted,
            "-o",
            "json",
        ])
        .ok(),
    );
    let status = |id: &str| {
        let e = entry(&all, id);
        (
            e["status"].as_str().unwrap().to_string(),
            e["signature"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(status(&real), ("complete".into(), "valid".into()));
    assert_eq!(status(&forged), ("complete".into(), "missing".into()));
    assert_eq!(status(&future_id).0, "future-dated");
    for id in &hollow {
        assert_eq!(status(id).0, "object-missing");
    }
    let verified = entries(
        &lab.kirt([
            "backup",
            "list",
            "--from",
            from,
            "--trusted-key",
            &trusted,
            "--verified",
            "-o",
            "json",
        ])
        .ok(),
    );
    let ids: Vec<&str> = verified.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [real.as_str()]);

    // with the trusted key, latest is the real backup; the forged one is refused by every reader
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            from,
            "latest",
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["backup"], real.as_str(), "{v:#}");
    let r = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            from,
            &forged,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
        ])
        .code_is(3);
    assert!(r.stderr().contains("no manifest signature"), "{}", r.dump());
    let data = lab.dir.path().join("restored");
    let r = lab
        .kirt([
            "restore",
            "--from",
            from,
            &forged,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "m1",
            "--initial-cluster",
            "m1=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ])
        .code_is(3);
    assert!(r.stderr().contains("no manifest signature"), "{}", r.dump());
    assert!(
        !data.exists(),
        "restore of a forged backup created {data:?}"
    );
    let r = lab
        .kirt([
            "drill",
            "--from",
            from,
            &forged,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
            "--apiserver-bin",
            &format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN")),
        ])
        .code_is(3);
    assert!(r.stderr().contains("no manifest signature"), "{}", r.dump());

    // without a trusted key, restore and drill refuse to choose at all
    let r = lab
        .kirt([
            "restore",
            "--from",
            from,
            "latest",
            "--identity",
            &key,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "m1",
            "--initial-cluster",
            "m1=http://127.0.0.1:1",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:1",
        ])
        .code_is(4);
    assert!(r.stderr().contains("--allow-unsigned"), "{}", r.dump());
    assert!(!data.exists());
    // ... and even unchecked, neither the future-dated nor the hollow ones are ever latest
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            from,
            "latest",
            "--identity",
            &key,
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["backup"], forged.as_str(), "{v:#}");

    // retention: planted entries take no slot and are not deleted
    let prune = |trusted: Option<&str>| {
        let mut args = vec![
            "backup",
            "prune",
            "--from",
            from,
            "--keep-last",
            "1",
            "-o",
            "json",
        ];
        if let Some(t) = trusted {
            args.extend(["--trusted-key", t]);
        }
        lab.kirt(&args).ok().json()
    };
    let p = prune(Some(&trusted));
    assert_eq!(p["removed"], 0, "{p:#}");
    assert!(object_path(&store, &real).exists() && manifest_path(&store, &real).exists());
    for id in [&forged, &future_id, &hollow[0], &hollow[1]] {
        let d = p["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no decision for {id}: {p:#}"));
        assert!(
            d["reasons"][0].as_str().unwrap().starts_with("not counted"),
            "{d}"
        );
        assert!(
            manifest_path(&store, id).exists(),
            "prune deleted planted {id}"
        );
    }
    // unchecked, the forged backup is indistinguishable from a real one (that is what the key
    // is for), but the future-dated and hollow ones still take no slot
    let p = lab
        .kirt([
            "backup",
            "prune",
            "--from",
            from,
            "--keep-last",
            "2",
            "--dry-run",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(p["removed"], 0, "{p:#}");
    assert_eq!(p["kept"], 2, "{p:#}");
}

#[test]
fn drill_refuses_a_manifest_without_per_resource_counts() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/counts", 20);
    let (key, recipient) = age_key(&lab);
    let store = lab.dir.path().join("nocounts");
    let id = create(&lab, &etcd.endpoint, &store, &["--recipient", &recipient]);
    let mut m = read_manifest(&store, &id);
    m["etcd"]["prefix_counts"] = serde_json::json!({});
    std::fs::write(manifest_path(&store, &id), serde_json::to_vec(&m).unwrap()).unwrap();
    let r = lab
        .kirt([
            "drill",
            "--allow-unsigned",
            "--from",
            store.to_str().unwrap(),
            &id,
            "--identity",
            &key,
            "--apiserver-bin",
            &format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN")),
        ])
        .code_is(3);
    assert!(
        r.stderr().contains("no per-resource counts"),
        "{}",
        r.dump()
    );
}

/// 2 GiB (sparse) manifest and signature files: refused by size, never read whole.
#[test]
fn oversized_manifest_and_signature_are_refused_in_bounded_memory() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/big", 20);
    let (key, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let store = lab.dir.path().join("oversized");
    let real = create(
        &lab,
        &etcd.endpoint,
        &store,
        &["--recipient", &recipient, "--sign-key", &sign_key],
    );
    let huge = "20200101T000000Z-r7";
    std::fs::copy(object_path(&store, &real), object_path(&store, huge)).unwrap();
    let sig = format!("{}.minisig", manifest_path(&store, &real).display());
    sh(&format!(
        "truncate -s 2G {} && truncate -s 2G {sig}",
        manifest_path(&store, huge).display()
    ))
    .ok();
    let from = store.to_str().unwrap();
    let (r, kb) = peak_rss(
        lab.kirt_cmd([
            "backup",
            "list",
            "--from",
            from,
            "--trusted-key",
            &trusted,
            "-o",
            "json",
        ]),
        "kirt backup list (2 GiB manifest and signature)",
    );
    let all = entries(&r.ok());
    assert_eq!(entry(&all, huge)["status"], "unreadable-manifest");
    assert_eq!(entry(&all, &real)["signature"], "invalid");
    assert!(kb < 64 * 1024, "backup list peaked at {kb} KiB");
    let (r, kb) = peak_rss(
        lab.kirt_cmd([
            "backup",
            "verify",
            "--from",
            from,
            &real,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
        ]),
        "kirt backup verify (2 GiB signature)",
    );
    let r = r.code_is(3);
    assert!(r.stderr().contains("signature"), "{}", r.dump());
    assert!(kb < 64 * 1024, "backup verify peaked at {kb} KiB");
    let (r, kb) = peak_rss(
        lab.kirt_cmd(["backup", "verify", "--from", from, huge, "--identity", &key]),
        "kirt backup verify (2 GiB manifest)",
    );
    let r = r.code_is(3);
    assert!(r.stderr().contains("manifest"), "{}", r.dump());
    assert!(kb < 64 * 1024, "backup verify peaked at {kb} KiB");
}

/// An object whose plaintext is far larger than its manifest says (1 GiB of zeros, which zstd
/// stores in a few dozen KiB): decompression stops at the stated size, exit 3, nothing spooled.
#[test]
fn a_decompression_bomb_stops_at_the_manifest_size() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/bomb", 20);
    let store = lab.dir.path().join("bomb");
    let id = create(&lab, &etcd.endpoint, &store, &["--no-encrypt"]);
    let object = store.join(CLUSTER).join(format!("{id}.etcd.zst"));
    sh(&format!(
        "head -c 1G /dev/zero | zstd -q -o {} -f",
        object.display()
    ))
    .ok();
    // the manifest is made to match the bomb's stored bytes, so only the size check can stop it
    let bytes = std::fs::read(&object).unwrap();
    let mut m = read_manifest(&store, &id);
    m["object_size"] = bytes.len().into();
    m["object_sha256"] = sh(&format!("sha256sum {}", object.display()))
        .ok()
        .stdout()
        .split_whitespace()
        .next()
        .unwrap()
        .into();
    std::fs::write(manifest_path(&store, &id), serde_json::to_vec(&m).unwrap()).unwrap();
    let tmp = lab.dir.path().join("bomb-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for extra in [
        &[][..],
        &["--restore", "--work-dir", tmp.to_str().unwrap()][..],
    ] {
        let mut args = vec!["backup", "verify", "--from", store.to_str().unwrap(), &id];
        args.extend(extra);
        let (r, kb) = peak_rss(lab.kirt_cmd(&args), "kirt backup verify (zstd bomb)");
        let r = r.code_is(3);
        assert!(
            r.stderr().contains("decompression bomb"),
            "expected the size check to stop it:\n{}",
            r.dump()
        );
        assert!(kb < 128 * 1024, "verify of a bomb peaked at {kb} KiB");
        let left = crate::common::files_under(&tmp);
        assert!(left.is_empty(), "spooled: {left:?}");
    }
}
