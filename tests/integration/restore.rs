//! `kirt backup verify`, `kirt restore`, `kirt drill`: verify, trial restore, real restore and the
//! DR drill against real etcd 3.4/3.5 and S3; every corruption is detected with its own message
//! and exit 3, leaving nothing behind. `apiserver`: a restore under a kube-apiserver that keeps
//! running, with and without the revision bump.

mod apiserver;

use std::path::{Path, PathBuf};

use crate::common::etcd::populate_etcd;
use crate::common::keys::{age_key, signing_keys, ssh_key};
use crate::common::{self, lab, repo_root, sh, Lab, Run};

struct Backup {
    dir: PathBuf,
    id: String,
    cluster: String,
    key: String,
}

impl Backup {
    fn object(&self) -> PathBuf {
        let ext = if self.key.is_empty() {
            "etcd.zst"
        } else {
            "etcd.zst.age"
        };
        self.dir
            .join(&self.cluster)
            .join(format!("{}.{ext}", self.id))
    }
    fn manifest(&self) -> PathBuf {
        self.dir
            .join(&self.cluster)
            .join(format!("{}.manifest.json", self.id))
    }
}

fn backup(lab: &Lab, endpoint: &str, dir: &Path, cluster: &str, enc: &[&str], key: &str) -> Backup {
    let mut args = vec![
        "backup",
        "create",
        "--etcd-endpoints",
        endpoint,
        "--to",
        dir.to_str().unwrap(),
        "--cluster-name",
        cluster,
        "-o",
        "json",
    ];
    args.extend(enc);
    let mut cmd = lab.kirt_cmd(&args);
    cmd.env("KIRT_PASSPHRASE", "correct horse battery staple")
        .env("KIRT_SIGN_PASSWORD", "pw");
    let r = common::run(cmd, "kirt backup create".into()).ok();
    let v = r.json();
    Backup {
        dir: dir.to_path_buf(),
        id: v["id"].as_str().unwrap().to_string(),
        cluster: cluster.into(),
        key: key.into(),
    }
}

fn verify(lab: &Lab, b: &Backup, extra: &[&str]) -> Run {
    let which = format!("{}/{}", b.cluster, b.id);
    let mut args = vec![
        "backup",
        "verify",
        "--from",
        b.dir.to_str().unwrap(),
        &which,
        "-o",
        "json",
    ];
    if !b.key.is_empty() {
        args.extend(["--identity", &b.key]);
    }
    args.extend(extra);
    let mut cmd = lab.kirt_cmd(&args);
    cmd.env("KIRT_PASSPHRASE", "correct horse battery staple")
        .env("TMPDIR", lab.dir.path().join("tmp"));
    std::fs::create_dir_all(lab.dir.path().join("tmp")).unwrap();
    common::run(cmd, format!("kirt {}", args.join(" ")))
}

/// `kirt drill -o json` of `b` on the lab's kube-apiserver, accepting an unsigned manifest
/// explicitly (`--allow-unsigned`).
fn drill_unsigned(lab: &Lab, b: &Backup) -> Run {
    lab.kirt([
        "drill",
        "--allow-unsigned",
        "--from",
        b.dir.to_str().unwrap(),
        &b.id,
        "--identity",
        &b.key,
        "--apiserver-bin",
        &format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN")),
        "-o",
        "json",
    ])
}

/// Nothing left in the verify temp dir and no etcd running from it.
fn assert_clean(lab: &Lab) {
    let tmp = lab.dir.path().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
    let ps = sh(&format!(
        "ps -eo args | grep -F '{}' | grep -v grep || true",
        tmp.display()
    ))
    .stdout();
    assert!(ps.trim().is_empty(), "still running: {ps}");
}

#[test]
fn verify_and_trial_restore_pass_on_good_backups_of_both_versions() {
    let Some(lab) = lab() else { return };
    let (key, recipient) = age_key(&lab);
    let (ssh, ssh_pub) = ssh_key(&lab);
    for version in ["3.4", "3.5"] {
        let etcd = lab.private_etcd(version);
        populate_etcd(&etcd.endpoint, "/kirt-test", 3_000);
        let dir = lab.dir.path().join(format!("b{version}"));
        let cases = [
            backup(
                &lab,
                &etcd.endpoint,
                &dir,
                "x25519",
                &["--recipient", &recipient],
                &key,
            ),
            backup(
                &lab,
                &etcd.endpoint,
                &dir,
                "ssh",
                &["--recipient", &ssh_pub],
                &ssh,
            ),
            backup(&lab, &etcd.endpoint, &dir, "pass", &["--passphrase"], ""),
        ];
        for b in &cases {
            let extra: &[&str] = if b.cluster == "pass" {
                &["--passphrase"]
            } else {
                &[]
            };
            let r = verify(&lab, b, extra).ok();
            assert_eq!(r.json()["ok"], true);
            let mut with_restore = extra.to_vec();
            with_restore.push("--restore");
            let r = verify(&lab, b, &with_restore).ok();
            let v = r.json();
            let checks = v["checks"].as_array().unwrap();
            for name in ["resource keys at revision", "restored revision >= recorded"] {
                let c = checks
                    .iter()
                    .find(|c| c["check"] == name)
                    .unwrap_or_else(|| panic!("{name} missing: {v:#}"));
                assert_eq!(c["ok"], true, "{version} {}: {c}", b.cluster);
            }
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(b.manifest()).unwrap()).unwrap();
            // the defaults are --count-keys resources and --hash-kv off: no count of all keys
            // and no HashKV recorded, none claimed
            assert!(manifest["etcd"]["key_count"].is_null(), "{manifest:#}");
            assert!(manifest["etcd"]["hash_kv"].is_null(), "{manifest:#}");
            for name in ["keys at revision", "HashKV at revision"] {
                assert!(!checks.iter().any(|c| c["check"] == name), "{v:#}");
            }
            assert_clean(&lab);
        }
    }
}

/// `--hash-kv on` records etcd's HashKV and the trial restore compares it: it catches a value
/// that differs from what etcd held at the revision, which key counts cannot see. `--count-keys
/// all` records every live key and the trial restore compares that count: it catches a lost key
/// anywhere. The defaults record neither (null in the manifest) and the trial restore compares
/// the counts per resource prefix: it catches a lost Kubernetes object. `--count-keys off`
/// records no counts (and says so): the trial restore compares the revision and the digests.
#[test]
fn evidence_modes_are_recorded_and_trial_restore_checks_what_each_claims() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 1_000);
    // the newest revision changes a value and nothing else: same keys before and after
    let pod = "/registry/pods/ns/p1";
    let (rev, before, after) = common::block_on(async {
        let mut c = etcd_client::Client::connect([etcd.endpoint.as_str()], None)
            .await
            .unwrap();
        c.put(pod, "v1", None).await.unwrap();
        let r = c.put(pod, "v2", None).await.unwrap();
        let rev = r.header().unwrap().revision();
        let mut m = c.maintenance_client();
        let before = m.hash_kv(rev - 1).await.unwrap().hash();
        (rev, before, m.hash_kv(rev).await.unwrap().hash())
    });
    assert_ne!(before, after);
    let dir = lab.dir.path().join("hashkv");
    let made = |cluster: &str, option: &str, value: &str| {
        backup(
            &lab,
            &etcd.endpoint,
            &dir,
            cluster,
            &["--no-encrypt", option, value],
            "",
        )
    };
    let on = made("on", "--hash-kv", "on");
    let off = made("off", "--hash-kv", "off");
    let count = made("count", "--count-keys", "all");
    let none = made("none", "--count-keys", "off");
    let read = |b: &Backup| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(b.manifest()).unwrap()).unwrap()
    };
    let (m_on, m_off, m_count) = (read(&on), read(&off), read(&count));
    let m_none = read(&none);
    assert_eq!(
        m_none["etcd"]["prefix_counts"],
        serde_json::json!({}),
        "{m_none:#}"
    );
    assert_eq!(m_none["etcd"]["count_keys"], "off", "{m_none:#}");
    assert_eq!(m_off["etcd"]["count_keys"], "resources", "{m_off:#}");
    // 1,000 keys under /kirt-test and the pod
    assert_eq!(m_count["etcd"]["key_count"], 1_001, "{m_count:#}");
    assert!(m_count["etcd"]["hash_kv"].is_null(), "{m_count:#}");
    assert!(m_on["etcd"]["key_count"].is_null(), "{m_on:#}");
    assert!(m_off["etcd"]["key_count"].is_null(), "{m_off:#}");
    assert_eq!(m_on["etcd"]["revision"], rev, "{m_on:#}");
    assert_eq!(m_on["etcd"]["hash_kv"], after, "{m_on:#}");
    assert!(m_on["etcd"]["compact_revision"].is_i64(), "{m_on:#}");
    assert!(m_off["etcd"]["hash_kv"].is_null(), "{m_off:#}");
    assert!(m_off["etcd"]["compact_revision"].is_null(), "{m_off:#}");
    assert_eq!(m_off["etcd"]["prefix_counts"]["pods"], 1, "{m_off:#}");

    let checks = |r: &Run| -> Vec<(String, bool)> {
        r.json()["checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["check"].as_str().unwrap().to_string(), c["ok"] == true))
            .collect()
    };
    let failed = |r: &Run| -> Vec<String> {
        checks(r)
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect()
    };
    for (b, hashed, counted) in [
        (&on, true, false),
        (&off, false, false),
        (&count, false, true),
        (&none, false, false),
    ] {
        let r = verify(&lab, b, &["--restore"]);
        assert_eq!(r.code(), 0, "{}", r.dump());
        let names: Vec<String> = checks(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names.contains(&"HashKV at revision".to_string()),
            hashed,
            "{names:?}"
        );
        assert_eq!(
            names.contains(&"keys at revision".to_string()),
            counted,
            "{names:?}"
        );
        assert_eq!(
            names.contains(&"resource keys at revision".to_string()),
            b.cluster != "none",
            "{names:?}"
        );
        assert!(
            names.contains(&"restored revision >= recorded".to_string()),
            "{names:?}"
        );
        assert_clean(&lab);
    }

    // on: the recorded hash is of an older value of one key; the counts cannot tell
    let mut m = m_on.clone();
    m["etcd"]["hash_kv"] = before.into();
    std::fs::write(on.manifest(), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = verify(&lab, &on, &["--restore"]);
    assert_eq!(r.code(), 3, "{}", r.dump());
    assert_eq!(failed(&r), ["HashKV at revision"], "{}", r.dump());
    assert_clean(&lab);

    // off: a key under /registry/pods/ the restore does not have
    let mut m = m_off.clone();
    m["etcd"]["prefix_counts"]["pods"] = 2.into();
    std::fs::write(off.manifest(), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = verify(&lab, &off, &["--restore"]);
    assert_eq!(r.code(), 3, "{}", r.dump());
    assert_eq!(failed(&r), ["resource keys at revision"], "{}", r.dump());
    assert_clean(&lab);

    // --count-keys all: a key outside every resource prefix the restore does not have
    let mut m = m_count.clone();
    m["etcd"]["key_count"] = 1_002.into();
    std::fs::write(count.manifest(), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let r = verify(&lab, &count, &["--restore"]);
    assert_eq!(r.code(), 3, "{}", r.dump());
    assert_eq!(failed(&r), ["keys at revision"], "{}", r.dump());
    assert_clean(&lab);
}

#[test]
fn verify_from_s3() {
    let Some(lab) = lab() else { return };
    let (key, recipient) = age_key(&lab);
    let bucket = lab.moto_bucket("restore-s3");
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let url = format!("s3://{bucket}/p");
    lab.kirt([
        "backup",
        "create",
        "--etcd-endpoints",
        &lab.get("KIRT_LAB_ETCD"),
        "--to",
        &url,
        "--endpoint-url",
        &ep,
        "--path-style",
        "--recipient",
        &recipient,
        "--cluster-name",
        "lab",
    ])
    .ok();
    let r = lab
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
            &key,
            "--restore",
            "-o",
            "json",
        ])
        .ok();
    assert_eq!(r.json()["ok"], true, "{}", r.dump());
}

#[test]
fn every_corruption_is_detected_with_its_own_message() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/kirt-test", 2_000);
    let (key, recipient) = age_key(&lab);
    let (other_key, _) = age_key(&lab);
    let fresh = |name: &str| {
        let dir = lab.dir.path().join(name);
        let b = backup(
            &lab,
            &etcd.endpoint,
            &dir,
            "c",
            &["--recipient", &recipient],
            &key,
        );
        populate_etcd(&etcd.endpoint, &format!("/{name}"), 1); // the next backup gets another revision
        b
    };
    let expect = |b: &Backup, key: &str, msgs: &[&str]| {
        let b2 = Backup {
            dir: b.dir.clone(),
            id: b.id.clone(),
            cluster: b.cluster.clone(),
            key: key.into(),
        };
        let r = verify(&lab, &b2, &[]);
        assert_eq!(r.code(), 3, "{msgs:?}:\n{}", r.dump());
        let text = format!("{}{}", r.stdout(), r.stderr());
        assert!(
            msgs.iter().any(|m| text.contains(m)),
            "expected one of {msgs:?}:\n{}",
            r.dump()
        );
        assert_clean(&lab);
    };

    // one flipped byte, at the start, middle and end of the object
    for (i, at) in [0.01f64, 0.5, 0.999].iter().enumerate() {
        let b = fresh(&format!("flip{i}"));
        let mut bytes = std::fs::read(b.object()).unwrap();
        let pos = ((bytes.len() as f64) * at) as usize;
        bytes[pos] ^= 0x01;
        std::fs::write(b.object(), bytes).unwrap();
        let r = verify(&lab, &b, &[]);
        assert_eq!(r.code(), 3, "flip at {at}: {}", r.dump());
        assert_clean(&lab);
    }
    // truncation
    let b = fresh("trunc");
    let bytes = std::fs::read(b.object()).unwrap();
    std::fs::write(b.object(), &bytes[..bytes.len() * 2 / 3]).unwrap();
    expect(&b, &key, &["truncated"]);
    // swapped with another backup's object
    let a = fresh("swap-a");
    let c = fresh("swap-b");
    std::fs::create_dir_all(a.object().parent().unwrap()).unwrap();
    std::fs::copy(c.object(), a.object()).unwrap();
    expect(&a, &key, &["swapped", "stored sha256"]);
    // manifest edited: a digest changed
    let b = fresh("edit");
    let text = std::fs::read_to_string(b.manifest()).unwrap();
    let m: serde_json::Value = serde_json::from_str(&text).unwrap();
    let sha = m["snapshot"]["sha256"].as_str().unwrap();
    let flipped = format!(
        "{}{}",
        if sha.starts_with('0') { "1" } else { "0" },
        &sha[1..]
    );
    std::fs::write(b.manifest(), text.replace(sha, &flipped)).unwrap();
    expect(&b, &key, &["snapshot sha256"]);
    // wrong identity
    let b = fresh("wrongkey");
    expect(&b, &other_key, &["no identity given can decrypt"]);
    // missing object
    let b = fresh("noobj");
    std::fs::remove_file(b.object()).unwrap();
    expect(&b, &key, &["is missing"]);
    // missing manifest
    let b = fresh("nomanifest");
    std::fs::remove_file(b.manifest()).unwrap();
    expect(&b, &key, &["not a complete backup"]);
}

#[test]
fn restore_starts_a_working_etcd_with_the_data() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/restore-me", 500);
    let (key, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let dir = lab.dir.path().join("r");
    let b = backup(
        &lab,
        &etcd.endpoint,
        &dir,
        "c",
        &["--recipient", &recipient, "--sign-key", &sign_key],
        &key,
    );
    let data = lab.dir.path().join("new-member");
    let peer = common::free_port();
    let client = common::free_port();
    let initial_cluster = format!("m1=http://127.0.0.1:{peer}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            dir.to_str().unwrap(),
            &b.id,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
            "--data-dir",
            data.to_str().unwrap(),
            "--name",
            "m1",
            "--initial-cluster",
            &initial_cluster,
            "--initial-advertise-peer-urls",
            &peer_url,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        lab.kirt(args)
    };
    let r = restore(&[]).ok();
    let json = r.json();
    // Kubernetes-safe by default: the revision is raised (at least 10^9) and marked compacted
    let recorded = json["revision"].as_i64().unwrap();
    let bump = json["revision_bump"].as_i64().unwrap();
    let restored = json["restored_revision"].as_i64().unwrap();
    assert!(bump >= 1_000_000_000, "{}", r.dump());
    assert!(restored >= recorded + bump, "{}", r.dump());
    assert_eq!(json["moved_aside"], serde_json::Value::Null, "{}", r.dump());
    let steps = json["next_steps"].to_string();
    assert!(steps.contains("kube-apiserver"), "{steps}");
    let cmdline = json["etcd_command"]
        .as_str()
        .unwrap()
        .replace("CLIENT_URLS", &format!("http://127.0.0.1:{client}"));
    assert!(cmdline.starts_with("etcd --name m1"), "{cmdline}");
    // start exactly the printed command (with the lab's etcd 3.5 binary)
    let bin = Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
    let args: Vec<&str> = cmdline.split_whitespace().skip(1).collect();
    let child = std::process::Command::new(bin)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut member = common::Proc {
        child,
        endpoint: format!("http://127.0.0.1:{client}"),
        dir: data.clone(),
        port: client,
    };
    let etcdctl = Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcdctl");
    let ctl = |args: &str| {
        sh(&format!(
            "{} --endpoints {} {args}",
            etcdctl.display(),
            member.endpoint
        ))
    };
    let mut out = String::new();
    common::wait_until(
        std::time::Duration::from_secs(20),
        "restored etcd answers",
        || {
            let r = ctl("get /restore-me/00000042 --print-value-only");
            out = r.stdout();
            r.code() == 0 && !out.is_empty()
        },
    );
    assert!(out.contains("cm-42"), "{out}");
    let count = ctl("get /restore-me/ --prefix --count-only -w fields")
        .ok()
        .stdout();
    assert!(count.contains("\"Count\" : 500"), "{count}");
    // a client's old revision is compacted (it relists) and the head is past the bump
    let old = ctl(&format!("get /restore-me/00000042 --rev {recorded}"));
    assert_ne!(old.code(), 0, "{}", old.dump());
    assert!(old.stderr().contains("compacted"), "{}", old.dump());
    let head = ctl("get /restore-me/00000042 -w json").ok().stdout();
    let head: serde_json::Value = serde_json::from_str(&head).unwrap();
    assert!(
        head["header"]["revision"].as_i64().unwrap() >= restored,
        "{head}"
    );
    // never over a data dir an etcd is running on, even with --yes
    let r = restore(&["--yes"]);
    assert_eq!(r.code(), 4, "{}", r.dump());
    assert!(r.stderr().contains("an etcd is running"), "{}", r.dump());
    member.kill();
    // a stopped member's data dir: moved aside only when confirmed
    let r = restore(&[]);
    assert_eq!(r.code(), 4, "{}", r.dump());
    assert!(r.stderr().contains("not empty"), "{}", r.dump());
    assert!(r.stderr().contains("--yes"), "{}", r.dump());
    assert!(data.join("member/snap/db").exists());
    let r = restore(&["--yes", "--bump-revision", "0"]).ok();
    let json = r.json();
    let aside = Path::new(json["moved_aside"].as_str().unwrap()).to_path_buf();
    assert!(
        aside
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("new-member.kirt-old-"),
        "{}",
        aside.display()
    );
    assert!(aside.join("member/snap/db").exists(), "{}", r.dump());
    assert!(data.join("member/snap/db").exists(), "{}", r.dump());
    assert_eq!(json["revision_bump"], 0, "{}", r.dump());
    let restored = json["restored_revision"].as_i64().unwrap();
    assert!(
        restored >= recorded && restored < 1_000_000_000,
        "{}",
        r.dump()
    );
}

#[test]
fn drill_restores_the_lab_and_counts_match_etcdctl_and_kubectl() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("restore-drill");
    lab.apply(&ns, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: drill}\ndata: {a: b}\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: drill}\nstringData: {password: hunter2}\n");
    let (key, recipient) = age_key(&lab);
    let dir = lab.dir.path().join("drill");
    // What kubectl sees in this test's own namespace (no other test writes there).
    let in_ns = |res: &str| {
        lab.kubectl(["get", res, "-n", &ns, "--no-headers"])
            .ok()
            .stdout()
            .lines()
            .count() as i64
    };
    let ours = [
        ("configmaps", in_ns("configmaps")),
        ("secrets", in_ns("secrets")),
    ];
    let (sign_key, trusted) = signing_keys(&lab);
    let b = backup(
        &lab,
        &lab.get("KIRT_LAB_ETCD"),
        &dir,
        "lab",
        &["--recipient", &recipient, "--sign-key", &sign_key],
        &key,
    );
    let report = lab.dir.path().join("drill.md");
    let r = lab
        .kirt([
            "drill",
            "--from",
            dir.to_str().unwrap(),
            &b.id,
            "--identity",
            &key,
            "--trusted-key",
            &trusted,
            "--apiserver-bin",
            &format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN")),
            "--report",
            report.to_str().unwrap(),
            "-o",
            "json",
        ])
        .ok();
    let v = r.json();
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(v["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(v["rpo_seconds"].as_f64().unwrap() >= 0.0);
    let resources = v["resources"].as_array().unwrap();
    // The live etcd read at the backup's revision by an independent client (etcdctl): exact,
    // whatever parallel tests did to the cluster since.
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.manifest()).unwrap()).unwrap();
    let rev = m["etcd"]["revision"].as_i64().unwrap().to_string();
    let etcdctl_count = |prefix: &str| -> i64 {
        let r = lab.etcdctl(&[
            "get",
            prefix,
            "--prefix",
            "--count-only",
            "--rev",
            &rev,
            "-w",
            "fields",
        ]);
        let out = r.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("\"Count\" : "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count in etcdctl's output:\n{out}"))
    };
    // etcd's keys are what kubectl lists: our namespace's objects, counted both ways
    for (res, kubectl_count) in ours {
        let prefix = format!("/registry/{res}/{}/", &*ns);
        assert_eq!(etcdctl_count(&prefix), kubectl_count, "{res} in {}", &*ns);
    }
    for res in ["namespaces", "configmaps", "secrets", "services"] {
        let row = resources.iter().find(|r| r["resource"] == res).unwrap();
        assert_eq!(row["restored"], row["at_backup"], "{row}");
        assert_eq!(row["served"], row["in_snapshot"], "{row}");
        let prefix = kirt::actions::backup::manifest::PREFIXES
            .iter()
            .find(|(n, _)| *n == res)
            .unwrap()
            .1;
        assert_eq!(
            row["restored"].as_i64().unwrap(),
            etcdctl_count(prefix),
            "{res}: the drill's restored count differs from etcdctl at revision {rev}"
        );
    }
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("RPO") && md.contains("RTO") && md.contains("passed"),
        "{md}"
    );
}

/// `--count-keys off`: etcd counts nothing at backup time, and the drill still compares what the
/// scratch apiserver serves with what the restored member holds, per resource; no count "at
/// backup" is claimed.
#[test]
fn a_drill_of_an_uncounted_backup_compares_what_the_apiserver_serves() {
    let Some(lab) = lab() else { return };
    let ns = lab.namespace("restore-uncounted");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: uncounted}\ndata: {a: b}\n",
    );
    let (key, recipient) = age_key(&lab);
    let dir = lab.dir.path().join("uncounted");
    let b = backup(
        &lab,
        &lab.get("KIRT_LAB_ETCD"),
        &dir,
        "lab",
        &["--recipient", &recipient, "--count-keys", "off"],
        &key,
    );
    let v = drill_unsigned(&lab, &b).ok().json();
    assert_eq!(v["ok"], true, "{v:#}");
    let resources = v["resources"].as_array().unwrap();
    for res in ["namespaces", "configmaps", "secrets", "services"] {
        let row = resources
            .iter()
            .find(|r| r["resource"] == res)
            .unwrap_or_else(|| panic!("{res} missing: {v:#}"));
        assert!(row["at_backup"].is_null(), "{row}");
        assert_eq!(row["served"], row["in_snapshot"], "{row}");
        assert!(row["served"].as_i64().unwrap() > 0, "{row}");
    }
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["check"].as_str().unwrap())
        .collect();
    assert!(!checks.contains(&"resource keys at revision"), "{checks:?}");
}

/// A busy cluster: the snapshot holds writes made after the revision the manifest records. The
/// drill compares the restore at the recorded revision and the apiserver against the snapshot's
/// head, so it passes (comparing the apiserver with the recorded counts would fail here).
#[test]
fn drill_passes_when_the_snapshot_is_newer_than_the_recorded_revision() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_ETCD");
    let etcd = || {
        let ep = ep.clone();
        async move { etcd_client::Client::connect([ep], None).await.unwrap() }
    };
    let all = || {
        etcd_client::GetOptions::new()
            .with_all_keys()
            .with_count_only()
    };
    let r0 = common::block_on(async { etcd().await.get("", Some(all())).await.unwrap() })
        .header()
        .unwrap()
        .revision();
    // two CRDs (no other test creates any) written after r0 and before the snapshot
    let unique = common::unique("d");
    let crds: Vec<String> = ["a", "b"]
        .iter()
        .map(|x| format!("{unique}{x}s.kirt.dev"))
        .collect();
    for name in &crds {
        let plural = name.split('.').next().unwrap();
        lab.apply(
            "default",
            &format!(
                "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata: {{name: {name}}}\nspec:\n  group: kirt.dev\n  names: {{kind: D{plural}, plural: {plural}}}\n  scope: Namespaced\n  versions:\n  - {{name: v1, served: true, storage: true, schema: {{openAPIV3Schema: {{type: object}}}}}}\n"
            ),
        );
    }
    let (key, recipient) = age_key(&lab);
    let dir = lab.dir.path().join("busy");
    let b = backup(&lab, &ep, &dir, "lab", &["--recipient", &recipient], &key);
    // the manifest as if kirt had read the revision at r0: counts and HashKV at r0
    let path = dir.join("lab").join(format!("{}.manifest.json", b.id));
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    common::block_on(async {
        let mut c = etcd().await;
        let at = |o: etcd_client::GetOptions| o.with_revision(r0);
        m["etcd"]["revision"] = r0.into();
        m["etcd"]["key_count"] = c.get("", Some(at(all()))).await.unwrap().count().into();
        m["etcd"]["hash_kv"] = c
            .maintenance_client()
            .hash_kv(r0)
            .await
            .unwrap()
            .hash()
            .into();
        for (name, prefix) in kirt::actions::backup::manifest::PREFIXES {
            let o = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            m["etcd"]["prefix_counts"][*name] =
                c.get(*prefix, Some(at(o))).await.unwrap().count().into();
        }
    });
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    // the edited manifest is unsigned: this drill has to accept that explicitly
    let r = drill_unsigned(&lab, &b);
    lab.kubectl(["delete", "crd", &crds[0], &crds[1]]).ok();
    let v = r.ok().json();
    assert_eq!(v["ok"], true, "{v:#}");
    let row = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "customresourcedefinitions")
        .unwrap();
    let n = |k: &str| row[k].as_i64().unwrap();
    assert_eq!(n("in_snapshot"), n("at_backup") + 2, "{row}");
    assert_eq!(n("served"), n("in_snapshot"), "{row}");
    assert_eq!(n("restored"), n("at_backup"), "{row}");
}

#[test]
fn documented_restore_without_kirt_works() {
    let Some(lab) = lab() else { return };
    let (key, recipient) = age_key(&lab);
    let dir = lab.dir.path().join("nokirt");
    let b = backup(
        &lab,
        &lab.get("KIRT_LAB_ETCD"),
        &dir,
        "lab",
        &["--recipient", &recipient],
        &key,
    );
    // run exactly the commands of docs/restore.md's "Restore without kirt" block
    let doc = std::fs::read_to_string(repo_root().join("docs/restore.md")).unwrap();
    let section = doc.split("## Restore without kirt").nth(1).unwrap();
    let block = section
        .split("```sh\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    assert!(block.contains("etcdutl snapshot restore"), "{block}");
    let workdir = lab.dir.path().join("nokirt-work");
    std::fs::create_dir_all(&workdir).unwrap();
    std::fs::copy(&b.key, workdir.join("backup.key")).unwrap();
    let data = workdir.join("restored");
    let script = format!(
        "set -euo pipefail; cd {}; export PATH={}; OBJECT={} DATA_DIR={}\n{block}",
        workdir.display(),
        lab.path(),
        b.object().display(),
        data.display()
    );
    let r = sh(&script).ok();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.manifest()).unwrap()).unwrap();
    assert!(
        r.stdout()
            .contains(manifest["snapshot"]["sha256"].as_str().unwrap()),
        "{}",
        r.dump()
    );
    assert!(data.join("member/snap/db").exists());
}

#[test]
fn signed_manifests_are_checked_with_the_trusted_key() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/signed", 100);
    let d = lab.dir.path();
    // password-protected keys made by the real minisign CLI (the password comes from stdin)
    sh(&format!("cd {}; printf 'pw\\npw\\n' | minisign -G -p sig.pub -s sig.key && printf 'pw\\npw\\n' | minisign -G -p other.pub -s other.key", d.display())).ok();
    let (key, recipient) = age_key(&lab);
    let dir = d.join("signed");
    let sign_key = format!("{}/sig.key", d.display());
    let b = backup(
        &lab,
        &etcd.endpoint,
        &dir,
        "c",
        &["--recipient", &recipient, "--sign-key", &sign_key],
        &key,
    );
    let trusted = format!("{}/sig.pub", d.display());
    verify(&lab, &b, &["--trusted-key", &trusted]).ok();
    // the real minisign CLI accepts the detached signature
    sh(&format!(
        "minisign -V -q -p {trusted} -m {}",
        b.manifest().display()
    ))
    .ok();
    // another key is refused
    let r = verify(
        &lab,
        &b,
        &["--trusted-key", &format!("{}/other.pub", d.display())],
    )
    .code_is(3);
    assert!(
        r.stderr().contains("signature check failed"),
        "{}",
        r.dump()
    );
    // an edited manifest (digests untouched) fails the signature check
    let text = std::fs::read_to_string(b.manifest()).unwrap();
    std::fs::write(
        b.manifest(),
        text.replace("\"kirt_version\": \"", "\"kirt_version\": \"x"),
    )
    .unwrap();
    let r = verify(&lab, &b, &["--trusted-key", &trusted]).code_is(3);
    assert!(
        r.stderr().contains("signature check failed"),
        "{}",
        r.dump()
    );
    // an unsigned backup fails when a signature is required
    let unsigned = backup(
        &lab,
        &etcd.endpoint,
        &d.join("unsigned"),
        "c",
        &["--recipient", &recipient],
        &key,
    );
    let r = verify(&lab, &unsigned, &["--trusted-key", &trusted]).code_is(3);
    assert!(r.stderr().contains("no manifest signature"), "{}", r.dump());
}
