//! `kirt restore` under a kube-apiserver that keeps running (kubernetes#118501): an etcd 3.5 and
//! a kube-apiserver of the test's own, a backup, more writes, a watch opened at the newest
//! resourceVersion served; then etcd is stopped, `kirt restore --yes` replaces its data dir (the
//! old one moved aside), the restored member starts on the same address while the apiserver
//! keeps running, and the apiserver is restarted as docs/restore.md says.
//!
//! With the revision bump (the default) the watch ends, a watch resumed from a resourceVersion
//! served before gets 410 Gone (clients relist) — before and after the apiserver's restart —
//! and new writes get higher resourceVersions than any served before. With `--bump-revision 0`
//! the hazard: new writes reuse resourceVersions already served, and a watch resumed from the
//! newest one served silently skips them.
//!
//! No clock is raced: every wait is for an outcome (a watch event, a process's end, a server
//! answering).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::backup;
use crate::common::apiserver::OwnApiserver;
use crate::common::keys::{age_key, signing_keys};
use crate::common::{self, lab, Lab, Proc};

const WAIT: Duration = Duration::from_secs(120);
/// ConfigMaps written after the backup.
const AFTER: usize = 30;

/// A watch (curl) whose events land in a file as they arrive; killed when dropped.
struct Watch {
    child: Child,
    out: PathBuf,
}

impl Watch {
    fn open(lab: &Lab, api: &OwnApiserver, ns: &str, rv: u64) -> Watch {
        let out = lab.dir.path().join(common::unique("watch"));
        let file = std::fs::File::create(&out).unwrap();
        let child = api
            .curl(&format!(
                "/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}"
            ))
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("start curl");
        Watch { child, out }
    }

    /// The events received so far.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The event for ConfigMap `name`, once it arrived.
    fn wait_for(&self, name: &str) -> Value {
        let mut found = None;
        common::wait_until(WAIT, &format!("a watch event for {name}"), || {
            found = self
                .events()
                .into_iter()
                .find(|e| e["object"]["metadata"]["name"] == name);
            found.is_some()
        });
        found.unwrap()
    }

    fn ended(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no resourceVersion: {obj:#}"))
}

/// The resourceVersion of a (quorum) list of the namespace's ConfigMaps: etcd's head when it
/// was read, the newest the apiserver served then.
fn list_rv(api: &OwnApiserver, ns: &str) -> u64 {
    let list = api
        .kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{ns}/configmaps"),
        ])
        .ok()
        .json();
    rv(&list)
}

fn create_cm(api: &OwnApiserver, ns: &str, name: &str) -> u64 {
    let r = api
        .kubectl(&[
            "create",
            "configmap",
            name,
            "-n",
            ns,
            "--from-literal=k=v",
            "-o",
            "json",
        ])
        .ok();
    rv(&r.json())
}

/// A watch from `rv` on a fresh request: its first event (a 410 arrives as an ERROR event).
fn first_event_from(api: &OwnApiserver, ns: &str, rv: u64) -> Value {
    let mut c = api.curl(&format!(
        "/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=60"
    ));
    c.stdin(Stdio::null());
    let r = common::run(c, format!("watch from {rv}"));
    let first = r.stdout().lines().next().map(str::to_string);
    serde_json::from_str(&first.unwrap_or_else(|| panic!("no event: {}", r.dump())))
        .unwrap_or_else(|e| panic!("{e}: {}", r.dump()))
}

fn is_gone(event: &Value) -> bool {
    event["type"] == "ERROR" && event["object"]["code"] == 410
}

/// Everything up to the restore: etcd + apiserver, a backup, writes after it, and a watch that
/// received the newest of them.
struct Before {
    etcd: Proc,
    api: OwnApiserver,
    ns: String,
    dir: PathBuf,
    id: String,
    key: String,
    trusted: String,
    watch: Watch,
    /// The newest resourceVersion the apiserver served before the restore.
    served: u64,
}

fn before_the_restore(lab: &Lab) -> Before {
    let etcd = lab.private_etcd("3.5");
    let api = OwnApiserver::start(lab, &etcd.endpoint, &[]);
    let ns = common::unique("restored");
    api.kubectl(&["create", "namespace", &ns]).ok();
    create_cm(&api, &ns, "in-the-backup");
    let (key, recipient) = age_key(lab);
    let (sign, trusted) = signing_keys(lab);
    let dir = lab.dir.path().join(common::unique("backups"));
    let b = backup(
        lab,
        &etcd.endpoint,
        &dir,
        "c",
        &["--recipient", &recipient, "--sign-key", &sign],
        &key,
    );
    // writes after the backup: what the restore discards. Many of them, so that the revisions a
    // restarted apiserver writes by itself cannot cover the distance back to what was served
    let manifests = lab.dir.path().join(common::unique("after.yaml"));
    let docs: Vec<String> = (1..=AFTER)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: after-{i}}}\n"))
        .collect();
    std::fs::write(&manifests, docs.join("---\n")).unwrap();
    api.kubectl(&["create", "-n", &ns, "-f", manifests.to_str().unwrap()])
        .ok();
    let after = list_rv(&api, &ns);
    let watch = Watch::open(lab, &api, &ns, after);
    create_cm(&api, &ns, "watched");
    let served = rv(&watch.wait_for("watched")["object"]);
    let served = served.max(list_rv(&api, &ns));
    Before {
        etcd,
        api,
        ns,
        dir,
        id: b.id,
        key,
        trusted,
        watch,
        served,
    }
}

/// Stops etcd, restores the backup into its data dir with `kirt restore --yes` (+ `extra`) and
/// starts the restored member on the same client address. Returns the restore's JSON.
fn restore_in_place(lab: &Lab, b: &mut Before, extra: &[&str]) -> Value {
    b.etcd.kill();
    let peer = format!("http://127.0.0.1:{}", common::free_port());
    let which = format!("c/{}", b.id);
    let initial = format!("m1={peer}");
    let mut args = vec![
        "restore",
        "--from",
        b.dir.to_str().unwrap(),
        &which,
        "--identity",
        &b.key,
        "--trusted-key",
        &b.trusted,
        "--data-dir",
        b.etcd.dir.to_str().unwrap(),
        "--name",
        "m1",
        "--initial-cluster",
        &initial,
        "--initial-advertise-peer-urls",
        &peer,
        "--yes",
        "-o",
        "json",
    ];
    args.extend_from_slice(extra);
    let r = lab.kirt(args).ok();
    let json = r.json();
    assert!(json["moved_aside"].is_string(), "{}", r.dump());
    let cmdline = json["etcd_command"]
        .as_str()
        .unwrap()
        .replace("CLIENT_URLS", &b.etcd.endpoint);
    let bin = Path::new(&lab.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
    let child = Command::new(bin)
        .args(cmdline.split_whitespace().skip(1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.etcd.child = child;
    common::process::wait_serving(&mut b.etcd.child, b.etcd.port, "the restored etcd");
    json
}

/// The apiserver restarted on the restored member, as docs/restore.md says (after etcd).
fn restart_apiserver(lab: &Lab, b: &mut Before) {
    b.api.proc.kill();
    b.api = OwnApiserver::start(lab, &b.etcd.endpoint, &[]);
}

#[test]
fn a_restore_with_the_bump_makes_watchers_relist_and_resource_versions_only_grow() {
    let Some(lab) = lab() else { return };
    let mut b = before_the_restore(&lab);
    let json = restore_in_place(&lab, &mut b, &[]);
    let bump = json["revision_bump"].as_u64().unwrap();
    assert!(bump >= 1_000_000_000, "{json:#}");

    // the apiserver kept running: its etcd watch fails (compacted), it relists and ends its
    // clients' watches; the watch opened before delivered nothing stale
    common::wait_until(WAIT, "the watch opened before the restore to end", || {
        b.watch.ended()
    });
    for e in b.watch.events() {
        let name = e["object"]["metadata"]["name"].as_str().unwrap_or("");
        assert!(
            name == "watched" || is_gone(&e),
            "a stale event after the restore: {e:#}"
        );
    }
    // a client resuming from what it saw must relist
    let e = first_event_from(&b.api, &b.ns, b.served);
    assert!(is_gone(&e), "{e:#}");
    // and it serves the restored state, not its cache of the old cluster
    let cached = b
        .api
        .kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/namespaces/{}/configmaps?resourceVersion=0", b.ns),
        ])
        .ok()
        .json();
    let names: Vec<&str> = cached["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["in-the-backup"], "{cached:#}");

    // restarted as the docs say: still 410 for old resourceVersions, new ones above all served
    restart_apiserver(&lab, &mut b);
    let e = first_event_from(&b.api, &b.ns, b.served);
    assert!(is_gone(&e), "{e:#}");
    let new = create_cm(&b.api, &b.ns, "after-the-restore");
    assert!(
        new > b.served,
        "a write after the restore got resourceVersion {new}, not above {} served before",
        b.served
    );
    assert!(new >= bump, "{new} < {bump}");
}

#[test]
fn without_the_bump_new_writes_reuse_resource_versions_already_served() {
    let Some(lab) = lab() else { return };
    let mut b = before_the_restore(&lab);
    let json = restore_in_place(&lab, &mut b, &["--bump-revision", "0"]);
    assert_eq!(json["revision_bump"], 0, "{json:#}");
    restart_apiserver(&lab, &mut b);

    // the hazard: a write after the restore gets a resourceVersion already served before
    let reused = create_cm(&b.api, &b.ns, "reuses-a-version");
    assert!(
        reused <= b.served,
        "expected a reused resourceVersion: {reused} > {} served before",
        b.served
    );
    // a client resuming its watch from the newest version it saw is not told to relist...
    let watch = Watch::open(&lab, &b.api, &b.ns, b.served);
    let missed = create_cm(&b.api, &b.ns, "missed");
    assert!(missed <= b.served, "{missed}");
    // ...and once the revisions pass what it saw, it gets new events but never the one before
    let mut last = missed;
    let mut n = 0;
    while last <= b.served {
        n += 1;
        assert!(
            n <= 10 * AFTER,
            "{n} writes and still at {last} <= {}",
            b.served
        );
        last = create_cm(&b.api, &b.ns, &format!("filler-{n}"));
    }
    let seen = watch.wait_for(&format!("filler-{n}"));
    assert_eq!(rv(&seen["object"]), last);
    let names: Vec<String> = watch
        .events()
        .iter()
        .filter_map(|e| e["object"]["metadata"]["name"].as_str().map(String::from))
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| n == "missed" || n == "reuses-a-version"),
        "{names:?}"
    );
    assert!(!watch.events().iter().any(is_gone), "{names:?}");
}
