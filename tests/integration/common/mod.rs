//! Shared test harness for integration tests against the lab (tests/lab/lab.sh).
//!
//! Each test runs the built `kirt` binary in a fresh temp directory and uses its own namespace,
//! bucket or key prefix, so tests can run in parallel. Without a running lab a test fails with a
//! message saying how to start it; `KIRT_SKIP_LAB=1` (and only that) skips, loudly.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Lab {
    pub env: HashMap<String, String>,
    pub dir: tempfile::TempDir,
}

/// Returns the lab, or `None` when the suite was told to skip lab tests.
pub fn lab() -> Option<Lab> {
    if std::env::var("KIRT_SKIP_LAB").as_deref() == Ok("1") {
        eprintln!("\n*** SKIPPED lab test (KIRT_SKIP_LAB=1): this test did NOT run ***\n");
        return None;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = std::env::var("KIRT_LAB_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let dir = std::env::var("KIRT_LAB_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| root.join(".lab"));
            dir.join("env")
        });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "the kirt lab is not running ({} missing).\n  start it: make lab-up   (or run everything: make test)\n  \
             to skip lab tests on purpose: KIRT_SKIP_LAB=1",
            path.display()
        )
    });
    let env = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Lab {
        env,
        dir: tempfile::tempdir().expect("tempdir"),
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A short name unique to this test process run (DNS-1123 safe).
pub fn unique(prefix: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        % 1_000_000_000;
    format!("{prefix}-{}-{n}-{t:x}", std::process::id() % 100_000)
}

pub fn kirt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kirt"))
}

/// The result of a command, with helpers that print everything on failure.
pub struct Run {
    pub out: Output,
    pub what: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn dump(&self) -> String {
        format!(
            "$ {}\nexit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "command failed:\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "unexpected exit code:\n{}", self.dump());
        self
    }
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.dump()))
    }
}

pub fn run(mut cmd: Command, what: String) -> Run {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Run { out, what }
}

impl Lab {
    pub fn get(&self, key: &str) -> String {
        self.env
            .get(key)
            .cloned()
            .unwrap_or_else(|| panic!("{key} missing from the lab env file"))
    }

    pub fn kubeconfig(&self) -> String {
        self.get("KIRT_LAB_KUBECONFIG")
    }

    /// `kirt ARGS` against the lab, in this test's temp dir, with a clean environment.
    pub fn kirt_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(kirt_bin());
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", self.path())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.kubeconfig())
            .env("AWS_ACCESS_KEY_ID", "kirt-test")
            .env("AWS_SECRET_ACCESS_KEY", "kirt-test-secret")
            .env("AWS_REGION", "us-east-1")
            // never let the AWS credential chain reach for a cloud metadata address
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args(args);
        c
    }

    pub fn kirt<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!(
            "kirt {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        run(self.kirt_cmd(&args), what)
    }

    /// PATH with the lab's etcd 3.5 tools (etcdutl) first.
    pub fn path(&self) -> String {
        format!(
            "{}:{}",
            self.get("KIRT_LAB_ETCD35_BIN"),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    pub fn kubectl<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let what = format!(
            "kubectl {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig()).args(&args);
        run(c, what)
    }

    /// `kubectl apply -f -` with the given YAML.
    #[track_caller]
    pub fn apply(&self, ns: &str, yaml: &str) {
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig())
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(Stdio::piped());
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(yaml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply failed: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A fresh namespace (with its default ServiceAccount ready); deleted when dropped.
    pub fn namespace(&self, prefix: &str) -> Namespace<'_> {
        let name = unique(prefix);
        self.kubectl(["create", "namespace", &name]).ok();
        wait_until(
            Duration::from_secs(30),
            &format!("default ServiceAccount in {name}"),
            || {
                self.kubectl(["get", "serviceaccount", "default", "-n", &name])
                    .out
                    .status
                    .success()
            },
        );
        Namespace { lab: self, name }
    }

    /// The admin kubeconfig pointed at a port where nothing listens (127.0.0.1:1), for the
    /// "apiserver unreachable" cases.
    pub fn unreachable_kubeconfig(&self) -> PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let path = self.dir.path().join("unreachable.kubeconfig");
        std::fs::write(
            &path,
            admin.replace(&self.get("KIRT_LAB_APISERVER"), "https://127.0.0.1:1"),
        )
        .unwrap();
        path
    }

    /// Writes a kubeconfig for a bearer token (e.g. a ServiceAccount's) and returns its path.
    pub fn kubeconfig_for_token(&self, name: &str, token: &str) -> PathBuf {
        let admin = std::fs::read_to_string(self.kubeconfig()).unwrap();
        let server = self.get("KIRT_LAB_APISERVER");
        let ca = admin
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
            .expect("CA in lab kubeconfig")
            .to_string();
        let path = self.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
                 users:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: lab\n  context: {{cluster: lab, user: {name}}}\ncurrent-context: lab\n"
            ),
        )
        .unwrap();
        path
    }

    /// Creates a ServiceAccount in `ns` and returns its token (1.20 token controller secrets).
    pub fn service_account_token(&self, ns: &str, sa: &str) -> String {
        self.kubectl(["create", "serviceaccount", sa, "-n", ns])
            .ok();
        let mut secret = String::new();
        wait_until(
            Duration::from_secs(30),
            "ServiceAccount token secret",
            || {
                let r = self.kubectl([
                    "get",
                    "serviceaccount",
                    sa,
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ]);
                secret = r.stdout().trim().to_string();
                !secret.is_empty()
            },
        );
        let r = self
            .kubectl([
                "get",
                "secret",
                &secret,
                "-n",
                ns,
                "-o",
                "jsonpath={.data.token}",
            ])
            .ok();
        let b64 = r.stdout();
        String::from_utf8(base64_decode(b64.trim())).expect("token utf8")
    }

    pub fn s3_client(&self, endpoint: &str, key: &str, secret: &str) -> aws_sdk_s3::Client {
        let creds = aws_sdk_s3::config::Credentials::new(key, secret, None, None, "kirt-tests");
        let conf = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .force_path_style(true)
            .credentials_provider(creds)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    /// Client for the lab's moto server (any credentials).
    pub fn moto(&self) -> aws_sdk_s3::Client {
        self.s3_client(
            &self.get("KIRT_LAB_S3_ENDPOINT"),
            "kirt-test",
            "kirt-test-secret",
        )
    }

    /// Client for the lab's s3s-fs server.
    pub fn s3s(&self) -> aws_sdk_s3::Client {
        self.s3_client(
            &self.get("KIRT_LAB_S3S_ENDPOINT"),
            &self.get("KIRT_LAB_S3S_ACCESS_KEY"),
            &self.get("KIRT_LAB_S3S_SECRET_KEY"),
        )
    }
}

pub struct Namespace<'a> {
    lab: &'a Lab,
    pub name: String,
}

impl std::ops::Deref for Namespace<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.name
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        if std::env::var("KIRT_KEEP_NS").is_err() {
            let _ = self
                .lab
                .kubectl(["delete", "namespace", &self.name, "--wait=false"]);
        }
    }
}

/// Polls `f` until it returns true, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .expect("base64")
}

/// Runs a future on a fresh runtime (tests are sync; the S3 SDK is async).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    kirt::util::free_loopback_port().expect("a free loopback port")
}

/// A server process this test started; killed (by its PID) when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub endpoint: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

#[track_caller]
fn wait_port(port: u16, what: &str) {
    wait_until(Duration::from_secs(20), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

impl Lab {
    /// An etcd of the given version (3.4 or 3.5) for this test alone, in its temp dir.
    pub fn private_etcd(&self, version: &str) -> Proc {
        let bin = if version == "3.4" {
            PathBuf::from("/usr/bin/etcd")
        } else {
            Path::new(&self.get("KIRT_LAB_ETCD35_BIN")).join("etcd")
        };
        let (port, peer) = (free_port(), free_port());
        let dir = self.dir.path().join(unique("etcd"));
        let name = "private";
        let child = Command::new(bin)
            .args(["--name", name, "--data-dir"])
            .arg(&dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{port}"),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{port}"),
            ])
            .args([
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("{name}=http://127.0.0.1:{peer}"),
                "--quota-backend-bytes",
                "4294967296",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let p = Proc {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        };
        wait_port(port, "private etcd");
        p
    }

    /// An s3s-fs server for this test alone (persistent on disk: survives a restart).
    pub fn private_s3s(&self, data: Option<(&Path, u16)>) -> Proc {
        let bin = PathBuf::from(self.get("KIRT_LAB_S3S_BIN"));
        let (dir, port) = match data {
            Some((d, p)) => (d.to_path_buf(), p),
            None => (self.dir.path().join(unique("s3s")), free_port()),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                "kirt-test",
                "--secret-key",
                "kirt-test-secret",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let p = Proc {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        };
        wait_port(port, "private s3s-fs");
        p
    }
}

/// Writes `n` keys under `prefix` into an etcd: mostly ~200-byte JSON-like values, every 500th
/// a ~100 KiB value. Returns the revision after the last write.
pub fn populate_etcd(endpoint: &str, prefix: &str, n: usize) -> i64 {
    block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd connect");
        let mut rev = 0;
        for batch in (0..n).collect::<Vec<_>>().chunks(100) {
            let ops: Vec<etcd_client::TxnOp> = batch
                .iter()
                .map(|i| {
                    let v = if i % 500 == 0 {
                        (0..100 * 1024).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789"[(j * 7 + i) % 36]).collect::<Vec<u8>>()
                    } else {
                        format!(r#"{{"kind":"ConfigMap","metadata":{{"name":"cm-{i}","uid":"{:016x}"}},"data":{{"k":"value {i}"}}}}"#, i * 2654435761).into_bytes()
                    };
                    etcd_client::TxnOp::put(format!("{prefix}/{i:08}"), v, None)
                })
                .collect();
            let r = c
                .txn(etcd_client::Txn::new().and_then(ops))
                .await
                .expect("txn");
            rev = r.header().map(|h| h.revision()).unwrap_or(rev);
        }
        rev
    })
}

/// Writes `mib` values of 1 MiB of incompressible bytes (makes slow, large snapshots).
pub fn populate_random(endpoint: &str, prefix: &str, mib: usize) {
    block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd connect");
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for i in 0..mib {
            let v: Vec<u8> = (0..1 << 20)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            c.put(format!("{prefix}/{i:06}"), v, None)
                .await
                .expect("put");
        }
    })
}

/// Runs a shell pipeline (bash -c) and returns its output.
pub fn sh(script: &str) -> Run {
    let mut c = Command::new("bash");
    c.args(["-c", script]);
    run(c, script.to_string())
}
