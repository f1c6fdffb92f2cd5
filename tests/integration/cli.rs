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
