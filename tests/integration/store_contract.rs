//! The store contract: the same cases against every `kirt::store::Store` — the local directory
//! store (a temp dir; needs no lab), the lab's moto and the lab's s3s-fs — in-process through
//! kirt's library (`kirt::store::open`). Each case gets a fresh directory or bucket, opens the
//! store at a prefix inside it, and checks what kirt did with an independent view (the file
//! system, the S3 API).
//!
//! One module per backend, the same test names in each: `cargo test --test integration
//! store_contract::s3s_fs::` runs one backend, `store_contract:: commit_is_atomic` one case
//! everywhere.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_s3::error::SdkError;
use bytes::Bytes;
use kirt::store::{S3Options, Store, Upload};
use kirt::Exit;
use sha2::{Digest, Sha256};

use crate::common::{self, lab, s3};

/// S3's minimum part size: the multipart cases use it so that several parts are really sent.
const PART: usize = 5 * 1024 * 1024;

/// Where the store is opened inside its directory or bucket.
const PREFIX: &str = "p/q";

/// Where kirt records open multipart uploads, relative to the store.
const RECORDS: &str = ".kirt/pending/";

/// Where the store's bytes are, seen without kirt.
enum Raw {
    /// The directory the store's root (`DIR/p/q`) is in.
    Dir(PathBuf),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
    },
}

/// A store under test, opened at [`PREFIX`] inside a fresh directory or bucket.
struct Subject {
    backend: Backend,
    store: Arc<dyn Store>,
    url: String,
    opts: S3Options,
    raw: Raw,
    _tmp: Option<tempfile::TempDir>,
}

impl Subject {
    async fn local() -> Subject {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let url = dir.join(PREFIX).display().to_string();
        let opts = S3Options::default();
        let store = kirt::store::open(&url, &opts).await.unwrap();
        Subject {
            backend: Backend::Local,
            store,
            url,
            opts,
            raw: Raw::Dir(dir),
            _tmp: Some(tmp),
        }
    }

    /// Opens `s3://BUCKET/p/q` on a fresh bucket; the caller holds [`S3Env`].
    async fn s3(
        backend: Backend,
        client: aws_sdk_s3::Client,
        endpoint: &str,
        _env: &S3Env,
    ) -> Subject {
        let bucket = common::unique("store");
        client
            .create_bucket()
            .bucket(&bucket)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {bucket} at {endpoint}: {e:?}"));
        let url = format!("s3://{bucket}/{PREFIX}");
        let opts = S3Options {
            endpoint_url: Some(endpoint.to_string()),
            region: Some("us-east-1".into()),
            path_style: true,
            part_size: PART as u64,
            concurrency: 2,
            ..S3Options::default()
        };
        let store = kirt::store::open(&url, &opts)
            .await
            .unwrap_or_else(|e| panic!("open {url} at {endpoint}: {e}"));
        Subject {
            backend,
            store,
            url,
            opts,
            raw: Raw::S3 { client, bucket },
            _tmp: None,
        }
    }

    fn is_s3(&self) -> bool {
        matches!(self.raw, Raw::S3 { .. })
    }

    /// Everything in the directory or bucket, store or not, relative to it and sorted (in the
    /// directory: hidden in-progress files too), except kirt's records of open S3 uploads
    /// ([`Subject::pending_uploads`]).
    async fn everything(&self) -> Vec<String> {
        let records = full(RECORDS);
        let mut all: Vec<String> = match &self.raw {
            Raw::Dir(dir) => common::files_under(dir)
                .iter()
                .map(|p| rel(dir, p))
                .collect(),
            Raw::S3 { client, bucket } => client
                .list_objects_v2()
                .bucket(bucket)
                .send()
                .await
                .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"))
                .contents()
                .iter()
                .filter_map(|o| o.key().map(String::from))
                .filter(|k| !k.starts_with(&records))
                .collect(),
        };
        all.sort();
        all
    }

    /// Writes `key` (relative to the directory or bucket, not to the store) without kirt.
    async fn put_raw(&self, key: &str, data: &[u8]) {
        match &self.raw {
            Raw::Dir(dir) => {
                let path = dir.join(key);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, data).unwrap();
            }
            Raw::S3 { client, bucket } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .body(data.to_vec().into())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
            }
        }
    }

    /// kirt's listing under `prefix`: (key, size), sorted.
    async fn list(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut keys: Vec<(String, u64)> = self
            .store
            .list(prefix)
            .await
            .unwrap_or_else(|e| panic!("list {prefix:?}: {e}"))
            .into_iter()
            .map(|o| (o.key, o.size))
            .collect();
        keys.sort();
        keys
    }

    async fn keys(&self, prefix: &str) -> Vec<String> {
        self.list(prefix)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        self.store
            .get_bytes(key, u64::MAX)
            .await
            .unwrap_or_else(|e| panic!("get {key}: {e}"))
    }

    /// `get` of `key` says NotFound (exit 6), as for a key that was never written.
    async fn assert_not_found(&self, key: &str) {
        match self.store.get_bytes(key, u64::MAX).await {
            Ok(b) => panic!("{key} is visible ({} bytes) but must not be", b.len()),
            Err(e) => assert_eq!(e.exit(), Exit::NotFound, "get {key}: {e}"),
        }
    }

    /// The multipart uploads kirt has started and not finished, as (full key, upload id), from
    /// its records in the bucket (`PREFIX/.kirt/pending/`: not every server can list uploads,
    /// and the next run may be in another pod).
    async fn pending_uploads(&self) -> Vec<(String, String)> {
        let Raw::S3 { client, bucket } = &self.raw else {
            return Vec::new();
        };
        let listed = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(full(RECORDS))
            .send()
            .await
            .unwrap_or_else(|e| panic!("list records: {e:?}"));
        let mut out = Vec::new();
        for o in listed.contents() {
            let got = client
                .get_object()
                .bucket(bucket)
                .key(o.key().unwrap())
                .send()
                .await;
            let got = match got {
                Ok(g) => g,
                // removed between the listing and the read (an abort finishing in the background)
                Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => continue,
                Err(e) => panic!("get record {:?}: {e:?}", o.key()),
            };
            let body = got.body.collect().await.unwrap().into_bytes();
            let r: serde_json::Value = serde_json::from_slice(&body).unwrap();
            out.push((
                r["key"].as_str().unwrap().to_string(),
                r["upload_id"].as_str().unwrap().to_string(),
            ));
        }
        out
    }

    /// S3: the one multipart upload kirt has open is `key`'s, and the server has it. Callers
    /// write at least three full parts: with a concurrency of 2 the third waits until one has
    /// been stored, so parts are on the server by then.
    async fn assert_upload_open(&self, key: &str) -> Vec<(String, String)> {
        let Raw::S3 { client, bucket } = &self.raw else {
            return Vec::new();
        };
        let pending = self.pending_uploads().await;
        assert_eq!(
            pending.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [full(key)],
            "kirt's open multipart uploads"
        );
        let id = &pending[0].1;
        match self.backend {
            // s3s-fs cannot list uploads (501) but lists an upload's parts
            Backend::S3sFs => {
                let parts = client
                    .list_parts()
                    .bucket(bucket)
                    .key(full(key))
                    .upload_id(id)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("ListParts of {key}: {e:?}"));
                assert!(!parts.parts().is_empty(), "no part of {key} on the server");
            }
            // moto's ListParts answer is not one the SDK can parse (root ListPartsResponse
            // instead of ListPartsResult); it lists uploads
            _ => {
                let ups = client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("ListMultipartUploads: {e:?}"));
                assert!(
                    ups.uploads().iter().any(|u| u.upload_id() == Some(id)),
                    "upload {id} of {key} unknown to the server: {ups:?}"
                );
            }
        }
        pending
    }

    /// S3: the multipart upload `id` is gone: it takes no more parts. S3 answers 404
    /// NoSuchUpload, s3s-fs 403 and moto 500 for an upload that was aborted.
    async fn assert_upload_gone(&self, key: &str, id: &str) {
        let Raw::S3 { client, bucket } = &self.raw else {
            return;
        };
        let r = s3::without_retries(client)
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(1)
            .body(b"late part".to_vec().into())
            .send()
            .await;
        match r {
            Ok(_) => panic!("multipart upload {id} of {key} still takes parts"),
            Err(SdkError::ServiceError(e)) => {
                let status = e.raw().status().as_u16();
                assert!(
                    [404, 403, 500].contains(&status),
                    "UploadPart to the vanished upload {id}: HTTP {status}: {:?}",
                    e.err()
                );
            }
            Err(e) => panic!("UploadPart to the vanished upload {id}: {e:?}"),
        }
    }
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir).unwrap().to_string_lossy().into_owned()
}

/// A store key as a key in the directory or bucket.
fn full(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

/// `len` deterministic bytes, different for each `seed` (no two parts alike).
fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes `bytes` in 1 MiB chunks, as the pipelines do.
async fn write_all(up: &mut Box<dyn Upload>, bytes: &[u8]) {
    for chunk in bytes.chunks(1 << 20) {
        up.write(Bytes::copy_from_slice(chunk))
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
    }
}

/// kirt's S3 store takes its credentials from the AWS credential chain (environment, profile
/// files, …) and has no other way to be given them, so an S3 case must set AWS_ACCESS_KEY_ID /
/// AWS_SECRET_ACCESS_KEY for the whole process. The S3 cases therefore take turns: each holds
/// this lock from before the store is opened until its last request (the SDK reads the
/// variables again on its first request, not only when the store is opened), then puts the
/// previous values back. The rest of the suite does not read them: kirt runs as a child process
/// with a cleared environment (`Lab::kirt_cmd`), and Rust's environment access is synchronised.
static S3_ENV: Mutex<()> = Mutex::new(());

/// The variables an S3 case sets (and restores).
const ENV_VARS: [&str; 4] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    // the credential chain must never reach for a cloud metadata address
    "AWS_EC2_METADATA_DISABLED",
];

struct S3Env {
    saved: Vec<(&'static str, Option<std::ffi::OsString>)>,
    _lock: MutexGuard<'static, ()>,
}

impl S3Env {
    fn set(key: &str, secret: &str) -> S3Env {
        // a case that failed while holding the lock has restored the variables (Drop) already
        let lock = S3_ENV.lock().unwrap_or_else(|p| p.into_inner());
        let saved = ENV_VARS.iter().map(|k| (*k, std::env::var_os(k))).collect();
        std::env::set_var("AWS_ACCESS_KEY_ID", key);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", secret);
        std::env::remove_var("AWS_SESSION_TOKEN");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
        S3Env { saved, _lock: lock }
    }
}

impl Drop for S3Env {
    fn drop(&mut self) {
        for (k, v) in &self.saved {
            match v {
                Some(v) => std::env::set_var(k, v),
                None => std::env::remove_var(k),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Backend {
    Local,
    Moto,
    S3sFs,
}

/// Runs `case` against a fresh subject of `backend` (the S3 ones need the lab).
fn run<F, Fut>(backend: Backend, case: F)
where
    F: FnOnce(Subject) -> Fut,
    Fut: Future<Output = ()>,
{
    let (endpoint, key, secret) = match backend {
        Backend::Local => {
            return common::block_on(async { case(Subject::local().await).await });
        }
        Backend::Moto => {
            let Some(lab) = lab() else { return };
            // moto takes any credentials
            (
                lab.get("KIRT_LAB_S3_ENDPOINT"),
                "kirt-test".to_string(),
                "kirt-test-secret".to_string(),
            )
        }
        Backend::S3sFs => {
            let Some(lab) = lab() else { return };
            (
                lab.get("KIRT_LAB_S3S_ENDPOINT"),
                lab.get("KIRT_LAB_S3S_ACCESS_KEY"),
                lab.get("KIRT_LAB_S3S_SECRET_KEY"),
            )
        }
    };
    let env = S3Env::set(&key, &secret);
    let client = s3::client(&endpoint, &key, &secret);
    common::block_on(async { case(Subject::s3(backend, client, &endpoint, &env).await).await });
}

/// The cases, each written once for every backend.
mod cases {
    use super::*;

    /// put then get returns the same bytes (an empty object too); a second put replaces the
    /// object; the object lands under the store's prefix; a key never written is NotFound.
    pub async fn put_get_round_trip(s: Subject) {
        let bytes = data(300_000, 1);
        s.store
            .put("a/b.bin", Bytes::from(bytes.clone()))
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
        assert_eq!(sha(&s.get("a/b.bin").await), sha(&bytes));
        assert!(
            s.everything().await.contains(&full("a/b.bin")),
            "{:?}",
            s.everything().await
        );
        s.store.put("empty", Bytes::new()).await.unwrap();
        assert!(s.get("empty").await.is_empty());
        s.store
            .put("a/b.bin", Bytes::from_static(b"second"))
            .await
            .unwrap();
        assert_eq!(s.get("a/b.bin").await, b"second");
        s.assert_not_found("never/written").await;
    }

    /// list gives keys relative to the store with their sizes; the prefix is a plain string
    /// prefix; objects beside the store's prefix are not listed.
    pub async fn list_relative_keys_and_prefix(s: Subject) {
        for (i, key) in ["x/1", "x/2", "x-other", "y/1"].iter().enumerate() {
            s.store
                .put(key, Bytes::from(data(100 * (i + 1), i as u8)))
                .await
                .unwrap();
        }
        s.put_raw("outside", b"not the store's").await;
        s.put_raw("p/qx/sibling", b"not the store's either").await;
        assert_eq!(
            s.list("").await,
            [
                ("x-other".to_string(), 300),
                ("x/1".to_string(), 100),
                ("x/2".to_string(), 200),
                ("y/1".to_string(), 400)
            ]
        );
        assert_eq!(s.keys("x/").await, ["x/1", "x/2"]);
        assert_eq!(s.keys("x").await, ["x-other", "x/1", "x/2"]);
        assert_eq!(s.keys("y/").await, ["y/1"]);
        assert!(s.keys("z").await.is_empty());
    }

    /// get_bytes reads an object up to a limit: one byte more is a verification failure
    /// (exit 3) — kirt never reads a planted oversized manifest whole.
    pub async fn get_bytes_is_bounded(s: Subject) {
        s.store
            .put("m.json", Bytes::from(data(10_000, 3)))
            .await
            .unwrap();
        assert_eq!(
            s.store.get_bytes("m.json", 10_000).await.unwrap().len(),
            10_000
        );
        match s.store.get_bytes("m.json", 9_999).await {
            Ok(b) => panic!("read {} bytes past the limit", b.len()),
            Err(e) => assert_eq!(e.exit(), Exit::VerifyFailed, "{e}"),
        }
    }

    /// delete removes the object and nothing else; deleting it again, or a key that never
    /// existed, succeeds.
    pub async fn delete_is_idempotent(s: Subject) {
        s.store
            .put("d/gone", Bytes::from_static(b"1"))
            .await
            .unwrap();
        s.store
            .put("d/kept", Bytes::from_static(b"2"))
            .await
            .unwrap();
        s.store.delete("d/gone").await.unwrap();
        s.assert_not_found("d/gone").await;
        assert_eq!(s.keys("").await, ["d/kept"]);
        s.store
            .delete("d/gone")
            .await
            .unwrap_or_else(|e| panic!("second delete: {e}"));
        s.store
            .delete("never/written")
            .await
            .unwrap_or_else(|e| panic!("delete of a key never written: {e}"));
        assert_eq!(s.get("d/kept").await, b"2");
        assert_eq!(s.everything().await, [full("d/kept")]);
    }

    /// An upload aborted after several parts were sent leaves nothing: not in kirt's listing,
    /// not for get, not in the directory or bucket (no .part file), and on S3 the multipart
    /// upload itself is gone and kirt no longer records it.
    pub async fn aborted_upload_leaves_nothing(s: Subject) {
        let mut up = s.store.create("big/obj").await.unwrap();
        write_all(&mut up, &data(3 * PART + 4321, 7)).await;
        let pending = s.assert_upload_open("big/obj").await;
        up.abort().await;
        assert!(s.keys("").await.is_empty(), "{:?}", s.list("").await);
        s.assert_not_found("big/obj").await;
        assert_eq!(s.everything().await, Vec::<String>::new());
        assert_eq!(
            s.pending_uploads().await,
            Vec::new(),
            "kirt still records the upload"
        );
        for (key, id) in pending {
            s.assert_upload_gone(&key, &id).await;
        }
    }

    /// Nothing is visible under a key until commit, although parts are already on the server;
    /// commit makes all of it visible at once. An object being replaced keeps its old bytes
    /// until the new upload commits.
    pub async fn commit_is_atomic(s: Subject) {
        let bytes = data(3 * PART + 1234, 9);
        let mut up = s.store.create("new/obj").await.unwrap();
        write_all(&mut up, &bytes).await;
        s.assert_upload_open("new/obj").await;
        assert!(s.keys("").await.is_empty(), "{:?}", s.list("").await);
        s.assert_not_found("new/obj").await;
        // (the directory holds only the hidden in-progress file; the bucket nothing at all)
        let seen = s.everything().await;
        let hidden = |k: &String| k.rsplit('/').next().unwrap().starts_with('.');
        assert!(
            seen.iter().all(|k| !s.is_s3() && hidden(k)),
            "visible before commit: {seen:?}"
        );
        let size = up.commit().await.unwrap_or_else(|e| panic!("commit: {e}"));
        assert_eq!(size, bytes.len() as u64);
        assert_eq!(
            s.list("").await,
            [("new/obj".to_string(), bytes.len() as u64)]
        );
        assert_eq!(sha(&s.get("new/obj").await), sha(&bytes));
        assert_eq!(s.everything().await, [full("new/obj")]);
        assert_eq!(s.pending_uploads().await, Vec::new());

        // replacing it: the old bytes stay until the new upload commits. (The old version is
        // written by a multipart upload too: s3s-fs 0.14 keeps a single PUT's CRC32 after a
        // multipart upload replaces the object and then serves it with the new bytes, which
        // fails the SDK's checksum check. kirt never overwrites an object with another.)
        let new = data(3 * PART + 1, 11);
        let mut up = s.store.create("new/obj").await.unwrap();
        write_all(&mut up, &new).await;
        s.assert_upload_open("new/obj").await;
        assert_eq!(sha(&s.get("new/obj").await), sha(&bytes), "replaced early");
        up.commit().await.unwrap();
        assert_eq!(sha(&s.get("new/obj").await), sha(&new));
        assert_eq!(s.everything().await, [full("new/obj")]);
    }

    /// An upload dropped without commit or abort (a cancelled task) leaves nothing visible; on
    /// S3 it is aborted in the background and its record removed.
    pub async fn dropped_upload_leaves_nothing(s: Subject) {
        let mut up = s.store.create("dropped").await.unwrap();
        write_all(&mut up, &data(3 * PART + 1, 12)).await;
        let pending = s.assert_upload_open("dropped").await;
        drop(up);
        assert!(s.keys("").await.is_empty(), "{:?}", s.list("").await);
        s.assert_not_found("dropped").await;
        assert_eq!(s.everything().await, Vec::<String>::new());
        if s.is_s3() {
            let start = std::time::Instant::now();
            while !s.pending_uploads().await.is_empty() {
                assert!(
                    start.elapsed() < std::time::Duration::from_secs(30),
                    "the dropped upload was not aborted: {:?}",
                    s.pending_uploads().await
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            for (key, id) in pending {
                s.assert_upload_gone(&key, &id).await;
            }
        }
    }

    /// Another run's upload in progress (its record names a live process) survives a second
    /// store being opened on the same prefix — opening cleans up after dead runs only — and
    /// then commits normally.
    pub async fn a_live_runs_upload_is_left_alone(s: Subject) {
        let bytes = data(3 * PART + 77, 13);
        let mut up = s.store.create("live/obj").await.unwrap();
        write_all(&mut up, &bytes).await;
        s.assert_upload_open("live/obj").await;
        let _second = kirt::store::open(&s.url, &s.opts).await.unwrap();
        s.assert_upload_open("live/obj").await;
        up.commit()
            .await
            .unwrap_or_else(|e| panic!("commit after another store was opened: {e}"));
        assert_eq!(sha(&s.get("live/obj").await), sha(&bytes));
        assert_eq!(s.pending_uploads().await, Vec::new());
    }
}

/// One test per case for `backend`.
macro_rules! contract {
    ($backend:expr) => {
        use super::{cases, run, Backend};

        #[test]
        fn put_get_round_trip() {
            run($backend, cases::put_get_round_trip);
        }

        #[test]
        fn list_relative_keys_and_prefix() {
            run($backend, cases::list_relative_keys_and_prefix);
        }

        #[test]
        fn get_bytes_is_bounded() {
            run($backend, cases::get_bytes_is_bounded);
        }

        #[test]
        fn delete_is_idempotent() {
            run($backend, cases::delete_is_idempotent);
        }

        #[test]
        fn aborted_upload_leaves_nothing() {
            run($backend, cases::aborted_upload_leaves_nothing);
        }

        #[test]
        fn commit_is_atomic() {
            run($backend, cases::commit_is_atomic);
        }

        #[test]
        fn dropped_upload_leaves_nothing() {
            run($backend, cases::dropped_upload_leaves_nothing);
        }

        #[test]
        fn a_live_runs_upload_is_left_alone() {
            run($backend, cases::a_live_runs_upload_is_left_alone);
        }
    };
}

/// A temp dir; runs without a lab.
mod local {
    contract!(Backend::Local);
}

/// The lab's moto (in-memory S3, the reference for semantics).
mod moto {
    contract!(Backend::Moto);
}

/// The lab's s3s-fs (S3 on disk).
mod s3s_fs {
    contract!(Backend::S3sFs);
}
