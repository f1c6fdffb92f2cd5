//! `kirt backup copy`: backups replicated between the real S3 servers (s3s-fs → moto) and into a
//! local directory verify there (with kirt and with the age/zstd/etcdutl CLIs); a second
//! `--missing` run copies nothing; a flipped byte in the source is caught while copying (exit 3,
//! nothing published on the target); the etcd-backup playbook's offsite step.

use std::process::Command;

use serde_json::Value;

use crate::backup::check_with_cli_tools;
use crate::common::etcd::{populate_etcd, populate_random};
use crate::common::keys::{age_key, signing_keys};
use crate::common::s3;
use crate::common::{self, files_under, lab, Lab, Run};

/// kirt with the lab's s3s-fs keys (moto accepts any, so the same keys serve both servers).
fn kirt_s3s(lab: &Lab, args: &[&str]) -> Run {
    let mut c: Command = lab.kirt_cmd(args);
    c.env("AWS_ACCESS_KEY_ID", lab.get("KIRT_LAB_S3S_ACCESS_KEY"))
        .env("AWS_SECRET_ACCESS_KEY", lab.get("KIRT_LAB_S3S_SECRET_KEY"));
    common::run(c, format!("kirt {}", args.join(" ")))
}

/// A signed, encrypted backup of `etcd` in a fresh s3s-fs bucket: (bucket, backup result).
fn backup_in_s3s(lab: &Lab, endpoint: &str, sign_key: &str, recipient: &str) -> (String, Value) {
    let bucket = common::unique("copy-src");
    s3::create_bucket(&lab.s3s(), &bucket);
    let r = kirt_s3s(
        lab,
        &[
            "backup",
            "create",
            "--etcd-endpoints",
            endpoint,
            "--to",
            &format!("s3://{bucket}/prod"),
            "--endpoint-url",
            &lab.get("KIRT_LAB_S3S_ENDPOINT"),
            "--path-style",
            "--cluster-name",
            "c",
            "--recipient",
            recipient,
            "--sign-key",
            sign_key,
            "-o",
            "json",
        ],
    )
    .ok();
    (bucket, r.json())
}

#[test]
fn copies_to_moto_and_a_local_dir_verify_and_a_second_run_copies_nothing() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/copy", 20_000);
    let (identity, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let (src_bucket, b) = backup_in_s3s(&lab, &etcd.endpoint, &sign_key, &recipient);
    let id = b["id"].as_str().unwrap();
    let from = format!("s3://{src_bucket}/prod");
    let s3s_ep = lab.get("KIRT_LAB_S3S_ENDPOINT");
    let moto_ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    // the target: an Object Lock bucket on moto, the copies locked there
    let moto = lab.moto();
    let dst_bucket = common::unique("copy-dst");
    common::block_on(
        moto.create_bucket()
            .bucket(&dst_bucket)
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap();
    let to = format!("s3://{dst_bucket}/offsite");
    let copy = |extra: &[&str]| {
        let mut args = vec![
            "backup",
            "copy",
            "--from",
            &from,
            "--endpoint-url",
            &s3s_ep,
            "--path-style",
            "--trusted-key",
            &trusted,
            "--to",
            &to,
            "--to-endpoint-url",
            &moto_ep,
            "--to-path-style",
            "-o",
            "json",
        ];
        args.extend(extra);
        kirt_s3s(&lab, &args)
    };
    let c = copy(&[
        "--missing",
        "--object-lock",
        "governance",
        "--retain-for",
        "1h",
    ])
    .ok()
    .json();
    assert_eq!(
        (c["copied"].as_u64(), c["present"].as_u64()),
        (Some(1), Some(0)),
        "{c:#}"
    );
    let mut keys = s3::keys(&moto, &dst_bucket);
    keys.sort();
    let object = format!("offsite/c/{id}.etcd.zst.age");
    let manifest = format!("offsite/c/{id}.manifest.json");
    assert_eq!(
        keys,
        [
            object.clone(),
            manifest.clone(),
            format!("{manifest}.minisig")
        ]
    );
    for k in &keys {
        let head = common::block_on(moto.head_object().bucket(&dst_bucket).key(k).send()).unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("GOVERNANCE"),
            "{k}"
        );
    }
    // the copy verifies, with the same trusted key, with kirt and without it
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            &to,
            "--endpoint-url",
            &moto_ep,
            "--path-style",
            "c/latest",
            "--identity",
            &identity,
            "--trusted-key",
            &trusted,
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(
        (v["ok"].as_bool(), v["signed"].as_bool()),
        (Some(true), Some(true)),
        "{v:#}"
    );
    let obj = lab.dir.path().join("copied.age");
    s3::download(&moto, &dst_bucket, &object, &obj);
    let mpath = lab.dir.path().join("copied.json");
    s3::download(&moto, &dst_bucket, &manifest, &mpath);
    let m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    check_with_cli_tools(&lab, &obj, &m, &identity);

    // a second --missing run copies nothing
    let again = copy(&["--missing"]).ok().json();
    assert_eq!(
        (again["copied"].as_u64(), again["present"].as_u64()),
        (Some(0), Some(1)),
        "{again:#}"
    );
    let mut after = s3::keys(&moto, &dst_bucket);
    after.sort();
    assert_eq!(after, keys);

    // into a local directory, by name
    let dir = lab.dir.path().join("offsite");
    kirt_s3s(
        &lab,
        &[
            "backup",
            "copy",
            "--from",
            &from,
            "--endpoint-url",
            &s3s_ep,
            "--path-style",
            "--trusted-key",
            &trusted,
            "--to",
            dir.to_str().unwrap(),
            &format!("c/{id}"),
        ],
    )
    .ok();
    let v = lab
        .kirt([
            "backup",
            "verify",
            "--from",
            dir.to_str().unwrap(),
            "c/latest",
            "--identity",
            &identity,
            "--trusted-key",
            &trusted,
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(v["ok"], true, "{v:#}");
    check_with_cli_tools(
        &lab,
        &dir.join(format!("c/{id}.etcd.zst.age")),
        &m,
        &identity,
    );
}

#[test]
fn a_flipped_byte_in_the_source_is_caught_while_copying() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    // incompressible and larger than a 5 MiB part: the target's multipart upload must be aborted
    populate_random(&etcd.endpoint, "/big", 8);
    let (_, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let (src_bucket, b) = backup_in_s3s(&lab, &etcd.endpoint, &sign_key, &recipient);
    let id = b["id"].as_str().unwrap();
    // s3s-fs keeps objects as plain files: flip one byte in the middle of the object
    let file = std::path::Path::new(&lab.get("KIRT_LAB_S3S_DATA"))
        .join(&src_bucket)
        .join(format!("prod/c/{id}.etcd.zst.age"));
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&file, bytes).unwrap();

    let from = format!("s3://{src_bucket}/prod");
    let s3s_ep = lab.get("KIRT_LAB_S3S_ENDPOINT");
    let moto = lab.moto();
    let dst_bucket = lab.moto_bucket("copy-flip");
    let dir = lab.dir.path().join("flip");
    let targets: [(&str, Vec<String>); 2] = [
        (
            "moto",
            vec![
                "--to".into(),
                format!("s3://{dst_bucket}/offsite"),
                "--to-endpoint-url".into(),
                lab.get("KIRT_LAB_S3_ENDPOINT"),
                "--to-path-style".into(),
                "--part-size".into(),
                "5MiB".into(),
            ],
        ),
        ("local", vec!["--to".into(), dir.display().to_string()]),
    ];
    for (what, target) in &targets {
        let mut args = vec![
            "backup",
            "copy",
            "--from",
            &from,
            "--endpoint-url",
            &s3s_ep,
            "--path-style",
            "--trusted-key",
            &trusted,
            "--missing",
        ];
        args.extend(target.iter().map(String::as_str));
        let r = kirt_s3s(&lab, &args).code_is(3);
        assert!(
            r.stderr().contains("does not match its manifest"),
            "{what}: {}",
            r.dump()
        );
    }
    assert!(s3::keys(&moto, &dst_bucket).is_empty(), "published on moto");
    let open = common::block_on(moto.list_multipart_uploads().bucket(&dst_bucket).send()).unwrap();
    assert!(
        open.uploads().is_empty(),
        "open uploads: {:?}",
        open.uploads()
    );
    assert!(files_under(&dir).is_empty(), "{:?}", files_under(&dir));
}

/// The shipped etcd-backup playbook copies each new backup offsite when given `offsite_to`.
#[test]
fn the_etcd_backup_playbook_copies_offsite() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/pb", 100);
    let store = lab.dir.path().join("primary");
    let offsite = lab.dir.path().join("offsite");
    let params = [
        format!("etcd_endpoints={}", etcd.endpoint),
        format!("to={}", store.display()),
        format!("offsite_to={}", offsite.display()),
        "no_encrypt=true".into(),
    ];
    let mut args = vec!["run", "etcd-backup", "--yes", "-o", "json"];
    for p in &params {
        args.extend(["-p", p.as_str()]);
    }
    let r = lab.kirt(&args).ok();
    let s = r.json();
    let step = |id: &str| {
        s["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .unwrap_or_else(|| panic!("no step {id}: {s:#}"))
            .clone()
    };
    assert_eq!(step("offsite")["status"], "ok", "{}", r.dump());
    assert_eq!(step("offsite")["outputs"]["copied"], 1, "{}", r.dump());
    let id = step("backup")["outputs"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = lab
        .kirt([
            "backup",
            "list",
            "--from",
            offsite.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(listed["backups"][0]["id"], id.as_str(), "{listed:#}");
    assert_eq!(listed["backups"][0]["status"], "complete", "{listed:#}");
}
