//! Backups an intruder cannot destroy (K10): S3 Object Lock on real moto (deletes refused, prune
//! keeps locked backups until the lock passes), the writer/verifier/pruner IAM policies of
//! docs/deploy.md under moto's IAM enforcement (checked with boto3), the cluster-prefix guard,
//! the run lock (S3 object, lock file, Kubernetes Lease) and `kirt doctor --store`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::etcd::{populate_etcd, populate_random};
use crate::common::keys::{age_key, signing_keys};
use crate::common::process::Held;
use crate::common::s3::{self, client};
use crate::common::{self, files_under, lab, wait_until, Lab, Run};

/// `kirt backup create` of `endpoint` into `to` as cluster `cluster`, plus `extra`.
fn create_cmd(lab: &Lab, endpoint: &str, to: &str, cluster: &str, extra: &[&str]) -> Command {
    let mut c = lab.kirt_cmd([
        "backup",
        "create",
        "--etcd-endpoints",
        endpoint,
        "--to",
        to,
        "--cluster-name",
        cluster,
        "-o",
        "json",
    ]);
    c.args(extra);
    c
}

fn create(lab: &Lab, endpoint: &str, to: &str, cluster: &str, extra: &[&str]) -> Run {
    common::run(
        create_cmd(lab, endpoint, to, cluster, extra),
        format!("kirt backup create --to {to} {}", extra.join(" ")),
    )
}

/// Every version and delete marker under `prefix`: (key, version id).
fn versions(c: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<(String, String)> {
    let out = common::block_on(
        c.list_object_versions()
            .bucket(bucket)
            .prefix(prefix)
            .send(),
    )
    .unwrap();
    let versions = out.versions().iter().map(|v| (v.key(), v.version_id()));
    let markers = out
        .delete_markers()
        .iter()
        .map(|m| (m.key(), m.version_id()));
    versions
        .chain(markers)
        .map(|(k, v)| {
            (
                k.unwrap_or_default().to_string(),
                v.unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn ts(v: &Value) -> jiff::Timestamp {
    v.as_str()
        .unwrap_or_else(|| panic!("not a timestamp: {v}"))
        .parse()
        .unwrap()
}

#[test]
fn a_compliance_locked_backup_cannot_be_deleted_and_prune_keeps_it_until_the_lock_passes() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    // incompressible: the object is uploaded in several parts (moto ignores the lock of a
    // multipart upload: kirt sets it again once the upload is complete)
    populate_random(&etcd.endpoint, "/big", 8);
    let (sign_key, trusted) = signing_keys(&lab);
    let (_, recipient) = age_key(&lab);
    let moto = lab.moto();
    let bucket = common::unique("locked");
    common::block_on(
        moto.create_bucket()
            .bucket(&bucket)
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap();
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let to = format!("s3://{bucket}/p");
    let s3_args = [
        "--endpoint-url",
        ep.as_str(),
        "--path-style",
        "--part-size",
        "5MiB",
        "--sign-key",
        sign_key.as_str(),
        "--recipient",
        recipient.as_str(),
    ];
    // long enough for the steps before the lock must still hold, short enough to wait for
    const RETAIN: u64 = 40;
    let retain = format!("{RETAIN}s");
    let mut args = s3_args.to_vec();
    args.extend([
        "--object-lock",
        "compliance",
        "--retain-for",
        retain.as_str(),
    ]);
    let first = create(&lab, &etcd.endpoint, &to, "c", &args).ok().json();
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(first["object_lock"]["mode"], "compliance", "{first:#}");
    let until = ts(&first["object_lock"]["retain_until"]);
    let manifest_key = format!("p/c/{id}.manifest.json");
    let keys = [
        format!("p/c/{id}.etcd.zst.age"),
        manifest_key.clone(),
        format!("{manifest_key}.minisig"),
    ];
    assert!(
        first["stored_size"].as_u64().unwrap() > 5 << 20,
        "{first:#}"
    );

    // the manifest records the lock, list shows it, and every object carries it
    let listed = lab
        .kirt([
            "backup",
            "list",
            "--from",
            &to,
            "--endpoint-url",
            &ep,
            "--path-style",
            "-o",
            "json",
        ])
        .ok()
        .json();
    assert_eq!(listed["backups"][0]["object_lock"]["mode"], "compliance");
    assert_eq!(
        ts(&listed["backups"][0]["object_lock"]["retain_until"]),
        until
    );
    let mpath = lab.dir.path().join("m.json");
    s3::download(&moto, &bucket, &manifest_key, &mpath);
    let m: Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    assert_eq!(ts(&m["object_lock"]["retain_until"]), until);
    for k in &keys {
        let head = common::block_on(moto.head_object().bucket(&bucket).key(k).send()).unwrap();
        assert_eq!(
            head.object_lock_mode().map(|m| m.as_str()),
            Some("COMPLIANCE"),
            "{k}"
        );
        let t = head.object_lock_retain_until_date().unwrap();
        assert_eq!(t.secs(), until.as_second(), "{k}");
        // a direct delete of that version is refused
        let del = common::block_on(
            moto.delete_object()
                .bucket(&bucket)
                .key(k)
                .version_id(head.version_id().unwrap())
                .send(),
        );
        assert!(del.is_err(), "{k}: a locked version was deleted");
    }

    // a newer backup; prune keeps one, but the older one is locked: kept, and prune succeeds
    populate_etcd(&etcd.endpoint, "/second", 10);
    create(&lab, &etcd.endpoint, &to, "c", &s3_args).ok();
    let prune = |lab: &Lab| {
        lab.kirt([
            "backup",
            "prune",
            "--from",
            &to,
            "--endpoint-url",
            &ep,
            "--path-style",
            "--trusted-key",
            &trusted,
            "--keep-last",
            "1",
            "-o",
            "json",
        ])
        .ok()
        .json()
    };
    let p = prune(&lab);
    assert!(
        jiff::Timestamp::now() < until,
        "this machine took longer than the {RETAIN}s retention to get here: raise RETAIN"
    );
    assert_eq!(p["locked"], 1, "{p:#}");
    assert_eq!(p["removed"], 0, "{p:#}");
    let d = p["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id.as_str())
        .unwrap();
    assert_eq!(d["action"], "keep", "{p:#}");
    let reason = d["reasons"][0].as_str().unwrap();
    assert!(
        reason.starts_with(&format!(
            "kept: locked until {} (compliance)",
            until.strftime("%Y-%m-%dT%H:%M:%SZ")
        )),
        "{reason}"
    );
    let have: Vec<String> = versions(&moto, &bucket, "p/c/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for k in &keys {
        assert!(have.contains(k), "{k} is gone: {have:?}");
    }

    // once the retention has passed, the next prune removes it, every version of it
    let wait = Duration::try_from(until.duration_since(jiff::Timestamp::now())).unwrap_or_default()
        + Duration::from_millis(1500);
    std::thread::sleep(wait);
    let p = prune(&lab);
    assert_eq!(
        (p["removed"].as_u64(), p["locked"].as_u64()),
        (Some(1), Some(0)),
        "{p:#}"
    );
    let left: Vec<String> = versions(&moto, &bucket, &format!("p/c/{id}"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        left.is_empty(),
        "versions of the pruned backup remain: {left:?}"
    );
}

#[test]
fn object_lock_needs_a_bucket_with_object_lock() {
    let Some(lab) = lab() else { return };
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let etcd = lab.get("KIRT_LAB_ETCD");
    let moto = lab.moto();
    let bucket = lab.moto_bucket("unlocked");
    let to = format!("s3://{bucket}/p");
    let s3 = [
        "--endpoint-url",
        ep.as_str(),
        "--path-style",
        "--no-encrypt",
    ];
    let mut args = s3.to_vec();
    args.extend(["--object-lock", "governance", "--retain-for", "1h"]);
    let r = create(&lab, &etcd, &to, "c", &args).code_is(2);
    assert!(
        r.stderr().contains("does not have Object Lock enabled"),
        "{}",
        r.dump()
    );
    assert!(s3::keys(&moto, &bucket).is_empty(), "something was written");
    let dir = lab.dir.path().join("local");
    let r = create(
        &lab,
        &etcd,
        dir.to_str().unwrap(),
        "c",
        &[
            "--no-encrypt",
            "--object-lock",
            "compliance",
            "--retain-for",
            "1h",
        ],
    )
    .code_is(2);
    assert!(r.stderr().contains("needs an S3 store"), "{}", r.dump());
    assert!(files_under(&dir).is_empty());
    // the mode without a duration (and the reverse) is a usage error
    let r = create(
        &lab,
        &etcd,
        &to,
        "c",
        &[&s3[..], &["--object-lock", "compliance"]].concat(),
    )
    .code_is(2);
    assert!(r.stderr().contains("--retain-for"), "{}", r.dump());
}

/// The IAM policy of `role` exactly as docs/deploy.md gives it, for `bucket` and `prefix`.
fn documented_policy(role: &str, bucket: &str, prefix: &str) -> Value {
    let text = std::fs::read_to_string(common::repo_root().join("docs/deploy.md")).unwrap();
    let marker = format!("<!-- iam-policy: {role} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("docs/deploy.md has no {marker}"))
        .1;
    let block = after
        .split_once("```json")
        .and_then(|(_, b)| b.split_once("```"))
        .unwrap_or_else(|| panic!("no ```json block after {marker}"))
        .0;
    serde_json::from_str(&block.replace("BUCKET", bucket).replace("PREFIX", prefix))
        .unwrap_or_else(|e| panic!("the {role} policy in docs/deploy.md is not JSON: {e}"))
}

/// Creates `bucket`, one IAM user per policy with an access key, then turns IAM enforcement on
/// (moto's `/moto-api/reset-auth`: from then on every request is authorised). Returns the
/// access keys by user.
const IAM_SETUP: &str = r#"
import boto3, json, sys, urllib.request
from botocore.config import Config
endpoint, bucket, policies = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **kw).create_bucket(Bucket=bucket)
iam = boto3.client("iam", **kw)
creds = {}
for user, policy in policies.items():
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="kirt", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    creds[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
urllib.request.urlopen(urllib.request.Request(endpoint + "/moto-api/reset-auth", data=b"0",
                       method="POST", headers={"Content-Type": "text/plain"})).read()
print(json.dumps(creds))
"#;

/// Tries to list the prefix, read and delete one object with boto3; prints each outcome.
const PROBE: &str = r#"
import boto3, json, sys
from botocore.config import Config
from botocore.exceptions import ClientError
endpoint, key, secret, bucket, prefix, obj = sys.argv[1:7]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                  aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
def attempt(f):
    try:
        f()
        return "allowed"
    except ClientError as e:
        return e.response["Error"]["Code"]
print(json.dumps({
    "list": attempt(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=prefix)),
    "read": attempt(lambda: s3.get_object(Bucket=bucket, Key=obj)["Body"].read()),
    "delete": attempt(lambda: s3.delete_object(Bucket=bucket, Key=obj)),
}))
"#;

/// A private moto with IAM enforcement, its users and a shared-credentials file of their keys.
struct Iam {
    moto: common::Proc,
    bucket: String,
    creds: Value,
    credentials_file: PathBuf,
}

impl Iam {
    fn start(lab: &Lab, bucket: &str, policies: &Value) -> Iam {
        let moto = lab.private_moto();
        let py = lab.dir.path().join("iam_setup.py");
        std::fs::write(&py, IAM_SETUP).unwrap();
        let pol = lab.dir.path().join("policies.json");
        std::fs::write(&pol, policies.to_string()).unwrap();
        let mut c = Command::new(lab.boto3_python());
        c.arg(&py).arg(&moto.endpoint).arg(bucket).arg(&pol);
        let r = common::run(c, "IAM setup (boto3)".into()).ok();
        let creds: Value = serde_json::from_str(r.stdout().trim()).unwrap();
        let mut text = String::new();
        for (user, kv) in creds.as_object().unwrap() {
            text.push_str(&format!(
                "[{user}]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                kv[0].as_str().unwrap(),
                kv[1].as_str().unwrap()
            ));
        }
        let credentials_file = lab.dir.path().join("aws-credentials");
        std::fs::write(&credentials_file, text).unwrap();
        Iam {
            moto,
            bucket: bucket.into(),
            creds,
            credentials_file,
        }
    }

    fn key(&self, user: &str) -> (String, String) {
        let kv = &self.creds[user];
        (
            kv[0].as_str().unwrap().into(),
            kv[1].as_str().unwrap().into(),
        )
    }

    /// kirt as `user` (its profile; the lab's default credentials removed).
    fn kirt(&self, lab: &Lab, user: &str, args: &[&str]) -> Run {
        let mut c = lab.kirt_cmd(args);
        c.env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("AWS_SHARED_CREDENTIALS_FILE", &self.credentials_file)
            .env("AWS_CONFIG_FILE", lab.dir.path().join("no-aws-config"))
            .args([
                "--profile",
                user,
                "--endpoint-url",
                &self.moto.endpoint,
                "--path-style",
            ]);
        common::run(c, format!("kirt {} (as {user})", args.join(" ")))
    }

    /// The bucket as the unrestricted admin sees it.
    fn keys(&self) -> Vec<String> {
        let (k, s) = self.key("admin");
        let mut keys = s3::keys(&client(&self.moto.endpoint, &k, &s), &self.bucket);
        keys.sort();
        keys
    }

    /// What `user` may do to `obj`, tried with boto3.
    fn probe(&self, lab: &Lab, user: &str, prefix: &str, obj: &str) -> Value {
        let py = lab.dir.path().join("probe.py");
        std::fs::write(&py, PROBE).unwrap();
        let (k, s) = self.key(user);
        let mut c = Command::new(lab.boto3_python());
        c.arg(&py)
            .args([&self.moto.endpoint, &k, &s, &self.bucket, prefix, obj]);
        serde_json::from_str(
            common::run(c, format!("boto3 probe as {user}"))
                .ok()
                .stdout()
                .trim(),
        )
        .unwrap()
    }
}

/// The policies of docs/deploy.md, applied by a real IAM evaluator (moto's): the writer backs up
/// and can neither list, read nor delete; the verifier verifies and drills and cannot delete;
/// the pruner prunes. An identity with only s3:PutObject and s3:AbortMultipartUpload (the least
/// the issue names) still backs up, degrading what needs more with warnings.
#[test]
fn the_documented_writer_verifier_and_pruner_policies_do_what_they_say() {
    let Some(lab) = lab() else { return };
    let bucket = common::unique("iam");
    let prefix = "nightly";
    let mut policies = json!({
        "admin": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
        "minimal": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["s3:PutObject", "s3:AbortMultipartUpload"],
            "Resource": format!("arn:aws:s3:::{bucket}/{prefix}/*")}]},
    });
    for role in ["writer", "verifier", "pruner"] {
        policies[role] = documented_policy(role, &bucket, prefix);
    }
    let iam = Iam::start(&lab, &bucket, &policies);
    // the lab's etcd, whose Kubernetes objects a drill counts
    let etcd = lab.get("KIRT_LAB_ETCD");
    let (identity, recipient) = age_key(&lab);
    let (sign_key, trusted) = signing_keys(&lab);
    let to = format!("s3://{bucket}/{prefix}");
    let backup_of = |user: &str, endpoint: &str, cluster: &str| {
        iam.kirt(
            &lab,
            user,
            &[
                "backup",
                "create",
                "--etcd-endpoints",
                endpoint,
                "--to",
                &to,
                "--cluster-name",
                cluster,
                "--recipient",
                &recipient,
                "--sign-key",
                &sign_key,
                "--part-size",
                "5MiB",
                "-o",
                "json",
            ],
        )
    };
    let backup = |user: &str| backup_of(user, &etcd, "prod");

    // writer: backs up, says what it could not check, leaves no bookkeeping behind
    let r = backup("writer").ok();
    let id1 = r.json()["id"].as_str().unwrap().to_string();
    assert!(
        r.stderr().contains("cluster-prefix guard skipped"),
        "{}",
        r.dump()
    );
    let obj = format!("{prefix}/prod/{id1}.etcd.zst.age");
    let manifest = format!("{prefix}/prod/{id1}.manifest.json");
    assert_eq!(
        iam.keys(),
        [obj.clone(), manifest.clone(), format!("{manifest}.minisig")],
        "the writer's run lock and upload records are removed (its .kirt/* grant)"
    );
    let p = iam.probe(&lab, "writer", prefix, &manifest);
    assert_eq!(
        p,
        json!({"list": "AccessDenied", "read": "AccessDenied", "delete": "AccessDenied"}),
        "writer"
    );
    let r = iam
        .kirt(&lab, "writer", &["backup", "list", "--from", &to])
        .code_is(7);
    assert!(r.stderr().contains("s3:ListBucket"), "{}", r.dump());
    let d = iam
        .kirt(
            &lab,
            "writer",
            &["doctor", "--no-kube", "--store", &to, "-o", "json"],
        )
        .json();
    let row = |d: &Value, check: &str| {
        d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .unwrap_or_else(|| panic!("no doctor row {check}: {d:#}"))["detail"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(row(&d, "may write (s3:PutObject)"), "yes");
    assert_eq!(
        row(&d, "may abort uploads (s3:AbortMultipartUpload)"),
        "yes"
    );
    assert!(
        row(&d, "may list (s3:ListBucket)").starts_with("no"),
        "{d:#}"
    );
    assert!(
        row(&d, "may read (s3:GetObject)").starts_with("no"),
        "{d:#}"
    );
    assert!(
        row(&d, "may delete (s3:DeleteObject)").starts_with("no"),
        "{d:#}"
    );

    // verifier: verifies and drills, cannot delete (and so cannot prune)
    let v = iam
        .kirt(
            &lab,
            "verifier",
            &[
                "backup",
                "verify",
                "--from",
                &to,
                "prod/latest",
                "--identity",
                &identity,
                "--trusted-key",
                &trusted,
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(
        (v["ok"].as_bool(), v["signed"].as_bool()),
        (Some(true), Some(true)),
        "{v:#}"
    );
    let apiserver = format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN"));
    let dr = iam
        .kirt(
            &lab,
            "verifier",
            &[
                "drill",
                "--from",
                &to,
                "prod/latest",
                "--identity",
                &identity,
                "--trusted-key",
                &trusted,
                "--apiserver-bin",
                &apiserver,
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(dr["ok"], true, "{dr:#}");
    let p = iam.probe(&lab, "verifier", prefix, &manifest);
    assert_eq!(
        p,
        json!({"list": "allowed", "read": "allowed", "delete": "AccessDenied"}),
        "verifier"
    );

    // a second backup (a second later: another id), so that prune has something to remove
    std::thread::sleep(Duration::from_millis(1100));
    let id2 = backup("writer").ok().json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = iam.keys();
    let prune = |user: &str| {
        iam.kirt(
            &lab,
            user,
            &[
                "backup",
                "prune",
                "--from",
                &to,
                "--trusted-key",
                &trusted,
                "--keep-last",
                "1",
                "-o",
                "json",
            ],
        )
    };
    let r = prune("verifier").code_is(7);
    assert!(r.stderr().contains("s3:DeleteObject"), "{}", r.dump());
    assert_eq!(iam.keys(), before, "the verifier deleted something");

    // pruner: prunes
    let p = prune("pruner").ok().json();
    assert_eq!(p["removed"], 1, "{p:#}");
    let m2 = format!("{prefix}/prod/{id2}.manifest.json");
    assert_eq!(
        iam.keys(),
        [
            format!("{prefix}/prod/{id2}.etcd.zst.age"),
            m2.clone(),
            format!("{m2}.minisig")
        ]
    );

    // only PutObject + AbortMultipartUpload: it still backs up (in several 5 MiB parts); the
    // run lock it left (it may not delete it) cannot be read the next night, and the run goes
    // on without it, saying so
    let big = lab.private_etcd("3.5");
    populate_random(&big.endpoint, "/big", 6);
    let r = backup_of("minimal", &big.endpoint, "big").ok();
    assert!(r.json()["stored_size"].as_u64().unwrap() > 5 << 20);
    assert!(
        r.stderr().contains("cannot remove the run lock"),
        "{}",
        r.dump()
    );
    populate_etcd(&big.endpoint, "/more", 10);
    let r = backup_of("minimal", &big.endpoint, "big").ok();
    assert!(r.stderr().contains("going on WITHOUT it"), "{}", r.dump());
    let listed = iam
        .kirt(
            &lab,
            "verifier",
            &[
                "backup",
                "list",
                "--from",
                &to,
                "--trusted-key",
                &trusted,
                "--verified",
                "-o",
                "json",
            ],
        )
        .ok()
        .json();
    assert_eq!(listed["backups"].as_array().unwrap().len(), 3, "{listed:#}");
}

/// Two etcd clusters, one prefix: the second is refused (exit 4) and writes nothing; doctor
/// says so; --force lets the new cluster take the prefix over; a planted manifest of another
/// cluster cannot stop signed backups.
#[test]
fn a_backup_of_another_etcd_cluster_into_the_prefix_is_refused() {
    let Some(lab) = lab() else { return };
    let a = lab.private_etcd("3.5");
    let b = lab.private_etcd("3.5");
    populate_etcd(&a.endpoint, "/a", 10);
    populate_etcd(&b.endpoint, "/b", 10);
    let dir = lab.dir.path().join("store");
    let to = dir.to_str().unwrap();
    let ra = create(&lab, &a.endpoint, to, "prod", &["--no-encrypt"])
        .ok()
        .json();
    let id_a = ra["id"].as_str().unwrap().to_string();
    let m: Value = serde_json::from_slice(
        &std::fs::read(dir.join(format!("prod/{id_a}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let cluster_a = m["etcd"]["cluster_id"].as_str().unwrap().to_string();
    let before = files_under(&dir);

    let r = create(&lab, &b.endpoint, to, "prod", &["--no-encrypt"]).code_is(4);
    assert!(r.stderr().contains(&cluster_a), "{}", r.dump());
    assert!(r.stderr().contains("--force"), "{}", r.dump());
    assert_eq!(files_under(&dir), before, "something was written");
    let doctor = |lab: &Lab| {
        lab.kirt([
            "doctor",
            "--no-kube",
            "--etcd-endpoints",
            &b.endpoint,
            "--store",
            to,
            "--cluster-name",
            "prod",
            "-o",
            "json",
        ])
    };
    let d = doctor(&lab).code_is(4).json();
    let row = d["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "cluster prefix prod/")
        .unwrap()
        .clone();
    assert_eq!(row["status"], "fail", "{d:#}");

    // the cluster that replaced A takes the prefix over once; then it is its own
    create(&lab, &b.endpoint, to, "prod", &["--no-encrypt", "--force"]).ok();
    populate_etcd(&b.endpoint, "/b2", 10);
    create(&lab, &b.endpoint, to, "prod", &["--no-encrypt"]).ok();
    doctor(&lab).ok();

    // signed backups: an unsigned manifest planted with a later date and another cluster id
    // does not count
    let (sign_key, _) = signing_keys(&lab);
    let signed = lab.dir.path().join("signed");
    let st = signed.to_str().unwrap();
    let rb = create(
        &lab,
        &b.endpoint,
        st,
        "prod",
        &["--no-encrypt", "--sign-key", &sign_key],
    )
    .ok()
    .json();
    let id_b = rb["id"].as_str().unwrap();
    let src = signed.join(format!("prod/{id_b}"));
    let planted_id = "29990101T000000Z-r1";
    let mut pm: Value =
        serde_json::from_slice(&std::fs::read(format!("{}.manifest.json", src.display())).unwrap())
            .unwrap();
    pm["id"] = json!(planted_id);
    pm["etcd"]["cluster_id"] = json!(cluster_a);
    // newest of all by its (believable) time
    pm["finished_at"] =
        json!((jiff::Timestamp::now() + jiff::SignedDuration::from_mins(5)).to_string());
    pm["object"] = json!(format!("prod/{planted_id}.etcd.zst"));
    std::fs::copy(
        format!("{}.etcd.zst", src.display()),
        signed.join(format!("prod/{planted_id}.etcd.zst")),
    )
    .unwrap();
    std::fs::write(
        signed.join(format!("prod/{planted_id}.manifest.json")),
        serde_json::to_vec(&pm).unwrap(),
    )
    .unwrap();
    populate_etcd(&b.endpoint, "/b3", 10);
    create(
        &lab,
        &b.endpoint,
        st,
        "prod",
        &["--no-encrypt", "--sign-key", &sign_key],
    )
    .ok();
    // unsigned, the same plant stops the run
    create(&lab, &b.endpoint, st, "prod", &["--no-encrypt"]).code_is(4);
}

const REACH: Duration = Duration::from_secs(60);

/// The pid a held kirt announced ("holding at PHASE …, pid N").
fn held_pid(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            l.split_once("holding at")
                .and_then(|(_, r)| r.rsplit_once("pid "))
        })
        .map(|(_, p)| p.trim().to_string())
        .unwrap_or_else(|| panic!("no holding line in:\n{stderr}"))
}

/// Starts two runs at once; both would hold once locked. Exactly one gets the lock (and holds
/// until released), the other exits 4 naming the holder's pid; released, the holder succeeds.
fn two_at_once(lab: &Lab, what: &str, cmd: impl Fn() -> Command) {
    let release = lab.dir.path().join(common::unique("release"));
    let spawn = || {
        let mut c = cmd();
        c.env("KIRT_HOLD_AT", "locked")
            .env("KIRT_HOLD_RELEASE", &release);
        Held::spawn(c)
    };
    let mut runs = [spawn(), spawn()];
    let start = Instant::now();
    let (loser, code) = loop {
        if let Some(i) = (0..2).find(|i| matches!(runs[*i].child.try_wait(), Ok(Some(_)))) {
            let code = runs[i].child.wait().unwrap().code();
            break (i, code);
        }
        assert!(start.elapsed() < REACH, "{what}: neither run finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    let (held, lost) = (&runs[1 - loser], &runs[loser]);
    wait_until(REACH, "the winner to hold", || {
        held.stderr().contains("holding at locked")
    });
    assert_eq!(code, Some(4), "{what}: the loser:\n{}", lost.stderr());
    let pid = held_pid(&held.stderr());
    assert!(
        lost.stderr().contains(&format!("pid {pid} ")) && lost.stderr().contains("since"),
        "{what}: the refusal does not name the holder (pid {pid}):\n{}",
        lost.stderr()
    );
    std::fs::write(&release, b"go").unwrap();
    let winner = &mut runs[1 - loser];
    let status = winner.child.wait().unwrap();
    assert!(
        status.success(),
        "{what}: the holder failed:\n{}",
        winner.stderr()
    );
}

#[test]
fn two_runs_started_together_one_backs_up_the_other_is_refused() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/k", 100);
    let dir = lab.dir.path().join("local");
    two_at_once(&lab, "local", || {
        create_cmd(
            &lab,
            &etcd.endpoint,
            dir.to_str().unwrap(),
            "c",
            &["--no-encrypt"],
        )
    });
    // the lock is gone with its holder: nothing but the backup is left
    assert_eq!(files_under(&dir).len(), 2, "{:?}", files_under(&dir));

    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let bucket = lab.moto_bucket("lock");
    let to = format!("s3://{bucket}/p");
    two_at_once(&lab, "s3", || {
        create_cmd(
            &lab,
            &etcd.endpoint,
            &to,
            "c",
            &["--no-encrypt", "--endpoint-url", &ep, "--path-style"],
        )
    });
    let keys = s3::keys(&lab.moto(), &bucket);
    assert_eq!(keys.len(), 2, "{keys:?}");
}

/// A holder killed with SIGKILL cannot release its lock: a lock file is free at once (the kernel
/// releases it); an S3 lock or a Lease is refused while its lease runs and taken over after it.
/// A holder stopped with SIGTERM releases its lock.
#[test]
fn a_killed_holder_s_lock_is_taken_over_after_its_lease() {
    let Some(lab) = lab() else { return };
    let etcd = lab.private_etcd("3.5");
    populate_etcd(&etcd.endpoint, "/k", 100);
    let kill9 = |h: Held| {
        let mut h = h;
        h.child.kill().unwrap();
        h.child.wait().unwrap();
        held_pid(&h.stderr())
    };

    // local: a lock file
    let dir = lab.dir.path().join("local");
    let d = dir.to_str().unwrap();
    let h = Held::start(
        create_cmd(&lab, &etcd.endpoint, d, "c", &["--no-encrypt"]),
        "locked",
        REACH,
    );
    kill9(h);
    create(&lab, &etcd.endpoint, d, "c", &["--no-encrypt"]).ok();

    // S3, a Lease: refused within the lease, taken over after it
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let bucket = lab.moto_bucket("stale");
    let s3_to = format!("s3://{bucket}/p");
    let lease_to = lab.dir.path().join("lease").display().to_string();
    let ns = lab.namespace("lease");
    for (kind, to, extra) in [
        (
            "s3",
            &s3_to,
            vec!["--endpoint-url", ep.as_str(), "--path-style"],
        ),
        (
            "lease",
            &lease_to,
            vec!["--lock", "lease", "--lock-namespace", ns.name.as_str()],
        ),
    ] {
        let args = |lease: &'static str| {
            let mut a = vec!["--no-encrypt", "--lock-lease", lease];
            a.extend(extra.iter().copied());
            a
        };
        // a long lease: refused, naming the dead holder
        let h = Held::start(
            create_cmd(
                &lab,
                &etcd.endpoint,
                to,
                &format!("{kind}-long"),
                &args("10m"),
            ),
            "locked",
            REACH,
        );
        let pid = kill9(h);
        let r = create(
            &lab,
            &etcd.endpoint,
            to,
            &format!("{kind}-long"),
            &args("10m"),
        )
        .code_is(4);
        assert!(
            r.stderr().contains(&format!("pid {pid} ")),
            "{kind}: {}",
            r.dump()
        );
        assert!(r.stderr().contains("last renewed"), "{kind}: {}", r.dump());
        // a short lease: after it, the next run takes the lock over
        let h = Held::start(
            create_cmd(
                &lab,
                &etcd.endpoint,
                to,
                &format!("{kind}-short"),
                &args("3s"),
            ),
            "locked",
            REACH,
        );
        let pid = kill9(h);
        std::thread::sleep(Duration::from_millis(4500));
        let r = create(
            &lab,
            &etcd.endpoint,
            to,
            &format!("{kind}-short"),
            &args("3s"),
        )
        .ok();
        assert!(r.stderr().contains("stale"), "{kind}: {}", r.dump());
        assert!(
            r.stderr().contains(&format!("pid {pid} ")),
            "{kind}: {}",
            r.dump()
        );
        // SIGTERM: the holder gives the lock up on its way out
        let h = Held::start(
            create_cmd(
                &lab,
                &etcd.endpoint,
                to,
                &format!("{kind}-term"),
                &args("10m"),
            ),
            "locked",
            REACH,
        );
        let (code, _, err) = h.terminate();
        assert_eq!(code, 143, "{kind}: {err}");
        create(
            &lab,
            &etcd.endpoint,
            to,
            &format!("{kind}-term"),
            &args("10m"),
        )
        .ok();
    }
    // the S3 locks of finished runs are gone
    let left: Vec<String> = s3::keys(&lab.moto(), &bucket)
        .into_iter()
        .filter(|k| k.contains("/.kirt/"))
        .collect();
    assert_eq!(
        left,
        ["p/.kirt/locks/s3-long/backup.json"],
        "only the dead holder's lock stays"
    );
}

#[test]
fn doctor_reports_versioning_object_lock_and_permissions() {
    let Some(lab) = lab() else { return };
    let moto = lab.moto();
    let bucket = common::unique("doctor-lock");
    common::block_on(
        moto.create_bucket()
            .bucket(&bucket)
            .object_lock_enabled_for_bucket(true)
            .send(),
    )
    .unwrap();
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    common::block_on(
        moto.put_object_lock_configuration()
            .bucket(&bucket)
            .object_lock_configuration(
                ObjectLockConfiguration::builder()
                    .object_lock_enabled(ObjectLockEnabled::Enabled)
                    .rule(
                        ObjectLockRule::builder()
                            .default_retention(
                                DefaultRetention::builder()
                                    .mode(ObjectLockRetentionMode::Governance)
                                    .days(3)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            )
            .send(),
    )
    .unwrap();
    let ep = lab.get("KIRT_LAB_S3_ENDPOINT");
    let d = lab
        .kirt([
            "doctor",
            "--no-kube",
            "--store",
            &format!("s3://{bucket}/p"),
            "--endpoint-url",
            &ep,
            "--path-style",
            "-o",
            "json",
        ])
        .ok()
        .json();
    let detail = |check: &str| {
        let c = d["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["check"] == check)
            .unwrap_or_else(|| panic!("no row {check}: {d:#}"));
        (
            c["status"].as_str().unwrap().to_string(),
            c["detail"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(detail("versioning"), ("ok".into(), "enabled".into()));
    assert_eq!(
        detail("object lock"),
        (
            "ok".into(),
            "enabled, default retention governance 3 days".into()
        )
    );
    for check in [
        "may list (s3:ListBucket)",
        "may read (s3:GetObject)",
        "may write (s3:PutObject)",
        "may abort uploads (s3:AbortMultipartUpload)",
        "may delete versions (s3:DeleteObjectVersion)",
    ] {
        assert_eq!(detail(check), ("ok".into(), "yes".into()), "{check}");
    }
    // the probes changed nothing: no object, no version, no open upload
    assert!(versions(&moto, &bucket, "").is_empty());
    let open = common::block_on(moto.list_multipart_uploads().bucket(&bucket).send()).unwrap();
    assert!(open.uploads().is_empty(), "{:?}", open.uploads());
}
