//! Point-in-time recovery through the kube-apiserver: a stream of the lab's etcd (behind the
//! lab apiserver; the stream only reads it), a namespace with ConfigMaps deleted by accident,
//! `kirt restore --to-revision` just before the delete, and a kube-apiserver of the test's own on
//! the restored member serving the namespace and its ConfigMaps with their data. `kirt drill
//! --to-revision` drills the same point in time, and `--to-time` with its receive time.

use std::time::Duration;

use crate::common::apiserver::OwnApiserver;

use super::*;

/// The lab etcd's current revision.
fn head(endpoint: &str) -> i64 {
    common::block_on(async {
        let r = client(endpoint)
            .await
            .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
            .await
            .unwrap();
        r.header().unwrap().revision()
    })
}

#[test]
fn a_deleted_namespace_comes_back_through_a_point_in_time_restore() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_ETCD");
    let keys = Keys::new(&lab);
    let dir = lab.dir.path().join("stream");
    let wait = Duration::from_secs(120);
    let h = stream(&lab, &ep, &dir, &keys, "1h");
    common::wait_until(wait, "the stream's full backup", || fulls(&dir).len() == 1);
    let ns = lab.namespace("pitr-kube");
    lab.apply(
        &ns,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\ndata: {a: '1', b: two}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: other}\ndata: {c: '3'}\n",
    );
    let cms = format!("/registry/configmaps/{}/", &*ns);
    // the lab's controller-manager adds kube-root-ca.crt to every namespace, in its own time:
    // the point to restore to is once it did, so that nothing else is still landing there
    let root_ca = format!("{cms}kube-root-ca.crt");
    common::wait_until(wait, "the root CA ConfigMap in the namespace", || {
        keys_at(&ep, &cms, 0).contains_key(&root_ca)
    });
    let before = head(&ep);
    let names: Vec<String> = keys_at(&ep, &cms, before).into_keys().collect();
    assert_eq!(
        names,
        [
            format!("{cms}kube-root-ca.crt"),
            format!("{cms}one"),
            format!("{cms}other")
        ]
    );
    lab.kubectl(["delete", "namespace", &ns, "--wait=false"])
        .ok();
    common::wait_until(wait, "the namespace controller emptying it", || {
        keys_at(&ep, &cms, 0).is_empty()
    });
    let after = head(&ep);
    common::wait_until(wait, "the stream receiving the delete", || {
        received(&h, after)
    });
    let (code, _, err) = h.terminate();
    assert_eq!(code, 0, "{err}");

    // restore to just before the delete; an apiserver of the test's own on the member
    let (member, reached) = restore_to(&lab, &dir, &keys, ["--to-revision", &before.to_string()]);
    assert_eq!(reached, before);
    let api = OwnApiserver::start(&lab, &member.endpoint, &[]);
    let got = api
        .kubectl(&["get", "namespace", &ns, "-o", "json"])
        .ok()
        .json();
    assert_eq!(got["status"]["phase"], "Active", "{got:#}");
    let got = api
        .kubectl(&["get", "configmaps", "-n", &ns, "-o", "json"])
        .ok()
        .json();
    let data: BTreeMap<String, Value> = got["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["metadata"]["name"] != "kube-root-ca.crt")
        .map(|i| {
            (
                i["metadata"]["name"].as_str().unwrap().to_string(),
                i["data"].clone(),
            )
        })
        .collect();
    assert_eq!(
        data,
        BTreeMap::from([
            ("one".to_string(), serde_json::json!({"a": "1", "b": "two"})),
            ("other".to_string(), serde_json::json!({"c": "3"})),
        ])
    );
    drop(api);
    drop(member);

    // the drill of the same point in time: its counts against the source read at that revision
    let drill = |target: &[&str]| {
        let mut args = vec![
            "drill",
            "--from",
            dir.to_str().unwrap(),
            "latest",
            "--identity",
            &keys.age,
            "--trusted-key",
            &keys.trusted,
        ];
        args.extend_from_slice(target);
        let apiserver = format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN"));
        args.extend_from_slice(&["--apiserver-bin", &apiserver, "-o", "json"]);
        lab.kirt(args).ok().json()
    };
    let v = drill(&["--to-revision", &before.to_string()]);
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(
        v["point_in_time"]["revision"].as_i64(),
        Some(before),
        "{v:#}"
    );
    let row = |res: &str| {
        v["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource"] == res)
            .unwrap_or_else(|| panic!("{res}: {v:#}"))
            .clone()
    };
    for (res, prefix) in [
        ("namespaces", "/registry/namespaces/"),
        ("configmaps", "/registry/configmaps/"),
    ] {
        let at = keys_at(&ep, prefix, before).len() as i64;
        assert_eq!(row(res)["in_snapshot"].as_i64(), Some(at), "{res}: {v:#}");
        assert_eq!(row(res)["served"].as_i64(), Some(at), "{res}: {v:#}");
    }
    // --to-time: the receive time of that revision reaches it (or a revision received at the
    // same instant), and the drill passes there too
    let time = v["point_in_time"]["time"].as_str().unwrap().to_string();
    let t = drill(&["--to-time", &time]);
    assert_eq!(t["ok"], true, "{t:#}");
    assert_eq!(
        t["point_in_time"]["time"].as_str(),
        Some(time.as_str()),
        "{t:#}"
    );
    assert!(
        t["point_in_time"]["revision"].as_i64().unwrap() >= before,
        "{t:#}"
    );
}
