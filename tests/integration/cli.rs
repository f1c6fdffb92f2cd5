//! The CLI surface, with no lab and no cluster: help, version, completions, man page, usage
//! errors. (Usage errors of one feature live in that feature's module.)

use crate::common::process::kirt_without_lab as kirt;

#[test]
fn help_lists_only_working_commands() {
    let r = kirt(&["--help"]).ok();
    let help = r.stdout();
    for cmd in ["doctor", "version", "completions", "man"] {
        assert!(help.contains(cmd), "{cmd} missing from help:\n{help}");
    }
    for flag in [
        "--kubeconfig",
        "--context",
        "--namespace",
        "--all-namespaces",
        "--output",
        "--dry-run",
        "--yes",
        "--log-format",
        "--journal",
    ] {
        assert!(help.contains(flag), "{flag} missing from help:\n{help}");
    }
}

#[test]
fn version_names_crate_version_and_commit() {
    let r = kirt(&["version", "-o", "json"]).ok();
    let v = r.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    let commit = v["commit"].as_str().unwrap();
    assert!(!commit.is_empty());
    let table = kirt(&["version"]).ok().stdout();
    assert!(
        table.contains(env!("CARGO_PKG_VERSION")) && table.contains(commit),
        "{table}"
    );
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = kirt(&["completions", shell]).ok().stdout();
        assert!(out.contains("doctor"), "{shell} completion lacks doctor");
    }
    let man = kirt(&["man"]).ok().stdout();
    assert!(
        man.contains(".TH kirt"),
        "not a man page: {}",
        &man[..man.len().min(200)]
    );
}

#[test]
fn bad_flags_are_usage_errors() {
    let r = kirt(&["doctor", "--no-such-flag"]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    let r = kirt(&["--output", "xml", "version"]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    assert!(r.stderr().contains("xml"), "{}", r.dump());
}

#[test]
fn doctor_with_bad_kubeconfig_exits_usage() {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, "this: [is not a kubeconfig").unwrap();
    let r = kirt(&["doctor", "--kubeconfig", kc.to_str().unwrap(), "-o", "json"]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    let v = r.json();
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "kubeconfig")
        .unwrap();
    assert_eq!(row["status"], "fail");
    assert!(
        row["detail"]
            .as_str()
            .unwrap()
            .contains("cannot read kubeconfig"),
        "{row}"
    );
}

#[test]
fn doctor_reports_bad_recipient_and_missing_identity() {
    let r = kirt(&[
        "doctor",
        "--no-kube",
        "--recipient",
        "age1garbage",
        "--identity",
        "/nonexistent/key",
        "-o",
        "json",
    ]);
    assert_eq!(r.code(), 2, "{}", r.dump());
    let v = r.json();
    let fails: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "fail")
        .map(|c| c["area"].as_str().unwrap())
        .collect();
    assert_eq!(fails, ["keys", "keys"], "{v}");
}

#[test]
fn quarantine_and_release_surface() {
    let help = kirt(&["--help"]).ok().stdout();
    assert!(
        help.contains("quarantine") && help.contains("release"),
        "{help}"
    );
    let q = kirt(&["quarantine", "--help"]).ok().stdout();
    for want in [
        "verify",
        "status",
        "--selector",
        "--reason",
        "--allow-dns",
        "--allow-from",
        "--allow-from-namespace",
        "--keep-labels",
        "--exclusive",
        "--cordon-node",
    ] {
        assert!(q.contains(want), "{want} missing:\n{q}");
    }
    assert!(kirt(&["release", "--help"])
        .ok()
        .stdout()
        .contains("--force"));
    // usage errors are caught before any cluster access (no kubeconfig here)
    let r = kirt(&["quarantine", "--yes"]).code_is(2);
    assert!(r.stderr().contains("name a pod"), "{}", r.dump());
    let r = kirt(&["quarantine", "web", "--allow-from", "10.0.0.1", "--yes"]).code_is(2);
    assert!(r.stderr().contains("not a CIDR"), "{}", r.dump());
    kirt(&["quarantine", "web", "-l", "app=x"]).code_is(2);
    kirt(&["quarantine", "verify"]).code_is(2);
}

/// The AWS SDK's legacy client (hyper 0.14, rustls 0.21, rustls-webpki 0.101, h2 0.3 — crates
/// with published advisories) stays out of the lock file (deny.toml bans them too).
#[test]
fn lock_file_has_no_legacy_tls_or_http_stack() {
    let lock = std::fs::read_to_string(crate::common::repo_root().join("Cargo.lock")).unwrap();
    let field = |block: &str, key: &str| -> Option<String> {
        block.lines().find_map(|l| {
            l.strip_prefix(&format!("{key} = \""))
                .and_then(|v| v.strip_suffix('"'))
                .map(String::from)
        })
    };
    let packages: Vec<(String, String)> = lock
        .split("[[package]]")
        .filter_map(|b| Some((field(b, "name")?, field(b, "version")?)))
        .collect();
    assert!(
        packages.len() > 100,
        "Cargo.lock not parsed: {} packages",
        packages.len()
    );
    let banned = [
        ("rustls", "0.21."),
        ("rustls-webpki", "0.101."),
        ("h2", "0.3."),
        ("hyper", "0.14."),
    ];
    let found: Vec<String> = packages
        .iter()
        .filter(|(name, version)| {
            banned
                .iter()
                .any(|(n, v)| name == n && version.starts_with(v))
        })
        .map(|(name, version)| format!("{name} {version}"))
        .collect();
    assert!(found.is_empty(), "Cargo.lock holds {found:?}");
}

/// `kirt keygen` makes a minisign key pair: the secret key 0600, never overwritten without
/// --force, and interoperable with the minisign CLI both ways.
#[test]
fn keygen_makes_private_minisign_compatible_keys() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (sk, pk) = (dir.path().join("k.key"), dir.path().join("k.pub"));
    let args = [
        "keygen",
        "-s",
        sk.to_str().unwrap(),
        "-p",
        pk.to_str().unwrap(),
    ];
    let v = kirt(&[&args[..], &["-o", "json"]].concat()).ok().json();
    assert_eq!(v["password_protected"], false, "{v}");
    let mode = std::fs::metadata(&sk).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let before = std::fs::read(&sk).unwrap();
    let r = kirt(&args).code_is(4);
    assert!(r.stderr().contains("--force"), "{}", r.dump());
    assert_eq!(std::fs::read(&sk).unwrap(), before, "a key was overwritten");
    // the minisign CLI signs with the secret key and checks with the public one; its key id
    // is the one kirt printed
    let file = dir.path().join("data");
    std::fs::write(&file, b"a manifest").unwrap();
    let r = crate::common::sh(&format!(
        "minisign -S -s {} -m {f} </dev/null && minisign -V -p {} -m {f}",
        sk.display(),
        pk.display(),
        f = file.display()
    ))
    .ok();
    let id = v["key_id"].as_str().unwrap();
    assert!(
        r.stdout()
            .contains("Signature and comment signature verified"),
        "{}",
        r.dump()
    );
    assert!(
        std::fs::read_to_string(&pk).unwrap().contains(id),
        "key id {id}"
    );
}
