//! etcd for backup and restore tests: a private server per test (either version) and data to
//! fill it with.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::process::wait_serving;
use super::{block_on, free_port, unique, Lab, Proc};

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
        spawn_etcd(&bin, &dir, port, peer)
    }

    /// A 3.5 etcd for this test alone that logs every request it serves (etcd's "took too long"
    /// warning with a threshold of 1 ns), and the file it logs to.
    pub fn private_etcd_logging_requests(&self) -> (Proc, PathBuf) {
        let bin = Path::new(&self.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
        let (port, peer) = (free_port(), free_port());
        let dir = self.dir.path().join(unique("etcd"));
        let log = self
            .dir
            .path()
            .join(unique("etcd-requests"))
            .with_extension("log");
        let file = std::fs::File::create(&log).expect("etcd log");
        let p = spawn(
            &bin,
            &dir,
            port,
            peer,
            &["--experimental-warning-apply-duration", "1ns"],
            Stdio::from(file),
        );
        (p, log)
    }

    /// A 3.5 etcd for this test alone, and its peer port: stopped ([`Proc::kill`]), it starts
    /// again on the same data dir and ports with [`Lab::restart_etcd`].
    pub fn private_etcd_restartable(&self) -> (Proc, u16) {
        let (port, peer) = (free_port(), free_port());
        let dir = self.dir.path().join(unique("etcd"));
        (self.restart_etcd(&dir, port, peer), peer)
    }

    /// The 3.5 etcd of [`Lab::private_etcd_restartable`] started (again) on its data dir and ports.
    pub fn restart_etcd(&self, dir: &Path, port: u16, peer: u16) -> Proc {
        let bin = Path::new(&self.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
        spawn_etcd(&bin, dir, port, peer)
    }
}

/// A single-member etcd on 127.0.0.1, serving when this returns.
fn spawn_etcd(bin: &Path, dir: &Path, port: u16, peer: u16) -> Proc {
    spawn(bin, dir, port, peer, &[], Stdio::null())
}

fn spawn(bin: &Path, dir: &Path, port: u16, peer: u16, extra: &[&str], stderr: Stdio) -> Proc {
    let name = "private";
    let child = Command::new(bin)
        .args(["--name", name, "--data-dir"])
        .arg(dir)
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
        .args(extra)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start etcd");
    let mut p = Proc {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
        dir: dir.to_path_buf(),
        port,
    };
    wait_serving(&mut p.child, port, "private etcd");
    p
}

impl Lab {
    /// A 3.5 etcd cluster of `n` members for this test alone, with a leader elected: returns
    /// the members (killed by PID when dropped) and the leader's member id (hex). The election
    /// timeout is long (5 s) so that a busy test machine does not make the leader change.
    pub fn etcd_cluster(&self, n: usize) -> (Vec<Proc>, String) {
        let bin = Path::new(&self.get("KIRT_LAB_ETCD35_BIN")).join("etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = unique("cluster");
        let mut members = Vec::new();
        for (i, &(port, peer)) in ports.iter().enumerate() {
            let dir = self.dir.path().join(unique("etcd-member"));
            let client = format!("http://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new(&bin)
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(&dir)
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "100", "--election-timeout", "5000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start etcd member");
            members.push(Proc {
                child,
                endpoint: client,
                dir,
                port,
            });
        }
        for m in &mut members {
            wait_serving(&mut m.child, m.port, "etcd cluster member");
        }
        let endpoints: Vec<String> = members.iter().map(|m| m.endpoint.clone()).collect();
        let mut leader = String::new();
        super::process::wait_until(
            std::time::Duration::from_secs(60),
            "a leader that every member follows",
            || {
                let leaders = block_on(async {
                    let mut seen = Vec::new();
                    for ep in &endpoints {
                        let Ok(mut c) = etcd_client::Client::connect([ep], None).await else {
                            return Vec::new();
                        };
                        match c.status().await {
                            Ok(s) => seen.push(s.leader()),
                            Err(_) => return Vec::new(),
                        }
                    }
                    seen
                });
                let agreed = leaders.len() == n
                    && leaders[0] != 0
                    && leaders.iter().all(|l| *l == leaders[0]);
                if agreed {
                    leader = format!("{:x}", leaders[0]);
                }
                agreed
            },
        );
        (members, leader)
    }
}

/// The member id (hex, as kirt's manifest writes it) of the etcd at `endpoint`.
pub fn member_id(endpoint: &str) -> String {
    block_on(async {
        let mut c = etcd_client::Client::connect([endpoint], None)
            .await
            .expect("etcd connect");
        let s = c.status().await.expect("etcd status");
        format!("{:x}", s.header().expect("status header").member_id())
    })
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
