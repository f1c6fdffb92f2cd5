//! S3 side of the lab: clients for its moto and s3s-fs servers, fresh buckets, reading a bucket
//! back with the S3 API, private s3s-fs servers for crash/restart tests, and private moto servers
//! (IAM enforcement) with boto3, the AWS SDK for Python, next to them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aws_sdk_s3::Client;

use super::process::wait_serving;
use super::{block_on, free_port, unique, Lab, Proc};

/// Credentials of the private s3s-fs servers (moto accepts any).
pub const PRIVATE_KEY: (&str, &str) = ("kirt-test", "kirt-test-secret");

/// An S3 client for `endpoint` (path-style, us-east-1, static credentials).
pub fn client(endpoint: &str, key: &str, secret: &str) -> Client {
    let creds = aws_sdk_s3::config::Credentials::new(key, secret, None, None, "kirt-tests");
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(creds)
        .build();
    Client::from_conf(conf)
}

/// The same client without retries: for probes whose expected answer is an error the SDK
/// would retry (moto answers 500 for parts of an aborted multipart upload).
pub fn without_retries(c: &Client) -> Client {
    let conf = c
        .config()
        .to_builder()
        .retry_config(aws_sdk_s3::config::retry::RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

/// Creates `bucket`.
#[track_caller]
pub fn create_bucket(c: &Client, bucket: &str) {
    block_on(c.create_bucket().bucket(bucket).send())
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
}

/// Every key in `bucket` (one page: tests keep buckets small).
#[track_caller]
pub fn keys(c: &Client, bucket: &str) -> Vec<String> {
    let out = block_on(c.list_objects_v2().bucket(bucket).send())
        .unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(String::from))
        .collect()
}

/// Downloads `bucket/key` into the file `to`.
#[track_caller]
pub fn download(c: &Client, bucket: &str, key: &str, to: &Path) {
    let bytes = block_on(async {
        c.get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"))
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes()
    });
    std::fs::write(to, bytes).unwrap();
}

impl Lab {
    /// Client for the lab's moto server (any credentials).
    pub fn moto(&self) -> Client {
        client(
            &self.get("KIRT_LAB_S3_ENDPOINT"),
            "kirt-test",
            "kirt-test-secret",
        )
    }

    /// Client for the lab's s3s-fs server (its keys from the env file).
    pub fn s3s(&self) -> Client {
        client(
            &self.get("KIRT_LAB_S3S_ENDPOINT"),
            &self.get("KIRT_LAB_S3S_ACCESS_KEY"),
            &self.get("KIRT_LAB_S3S_SECRET_KEY"),
        )
    }

    /// A fresh bucket on moto, named after `prefix`.
    pub fn moto_bucket(&self, prefix: &str) -> String {
        let bucket = unique(prefix);
        create_bucket(&self.moto(), &bucket);
        bucket
    }

    /// A moto server for this test alone (in memory; IAM enforcement can be switched on without
    /// touching the shared one).
    pub fn private_moto(&self) -> Proc {
        let port = free_port();
        let dir = self.dir.path().join(unique("moto"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = Command::new(self.get("KIRT_LAB_MOTO_BIN"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("moto.log")).unwrap())
            .spawn()
            .expect("start moto");
        let mut p = Proc {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        };
        wait_serving(&mut p.child, port, "private moto");
        p
    }

    /// The Python of the lab's moto install: it has boto3, the AWS SDK for Python, for checks
    /// made with another S3 client than kirt's.
    pub fn boto3_python(&self) -> PathBuf {
        Path::new(&self.get("KIRT_LAB_MOTO_BIN")).with_file_name("python")
    }

    /// An s3s-fs server for this test alone (persistent on disk: survives a restart). With
    /// `data`, it restarts on that data dir and port.
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
                PRIVATE_KEY.0,
                "--secret-key",
                PRIVATE_KEY.1,
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let mut p = Proc {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            dir,
            port,
        };
        wait_serving(&mut p.child, port, "private s3s-fs");
        p
    }
}
