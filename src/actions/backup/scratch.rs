//! Throwaway servers for trial restores and drills: `etcdutl snapshot restore` into an empty
//! directory and an etcd on free loopback ports, stopped (by its PID) and cleaned up afterwards.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use etcd_client::GetOptions;

use crate::error::{Error, Result};

/// Client and peer ports on 127.0.0.1, free when chosen.
pub struct Ports {
    pub client: u16,
    pub peer: u16,
}

impl Ports {
    pub fn free() -> Result<Self> {
        let pick = || {
            crate::util::free_loopback_port()
                .map_err(|e| Error::io("finding a free loopback port", e))
        };
        Ok(Ports {
            client: pick()?,
            peer: pick()?,
        })
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer)
    }

    /// Membership flags for `etcdutl snapshot restore` of a one-member scratch cluster.
    pub fn restore_args(&self, name: &str) -> Vec<String> {
        vec![
            "--name".into(),
            name.into(),
            "--initial-cluster".into(),
            format!("{name}={}", self.peer_url()),
            "--initial-advertise-peer-urls".into(),
            self.peer_url(),
        ]
    }
}

/// Runs `etcdutl snapshot restore SNAP --data-dir DATA ARGS` (with etcd's hash check). Refuses a
/// non-empty data dir, as etcdutl does, so nothing existing is ever overwritten.
pub async fn etcdutl_restore(
    etcdutl: &Path,
    snap: &Path,
    data: &Path,
    args: &[String],
) -> Result<()> {
    if data.exists()
        && std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Refused(format!(
            "data dir {} is not empty; restore only into an empty or new directory",
            data.display()
        )));
    }
    let out = tokio::process::Command::new(etcdutl)
        .arg("snapshot")
        .arg("restore")
        .arg(snap)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            Error::usage(format!(
                "cannot run {}: {e} (install etcdutl or pass --etcdutl-bin)",
                etcdutl.display()
            ))
        })?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(data);
        return Err(Error::VerifyFailed(format!(
            "etcdutl snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        )));
    }
    Ok(())
}

/// What a restored member says about the recorded revision.
pub struct Observed {
    pub revision: i64,
    pub key_count: i64,
    pub hash_kv: u32,
    /// Keys under each of the manifest's resource prefixes at the recorded revision…
    pub prefix_counts_at: BTreeMap<String, i64>,
    /// …and at the restored head (what an apiserver on this member serves).
    pub prefix_counts_head: BTreeMap<String, i64>,
}

pub struct ScratchEtcd {
    child: tokio::process::Child,
    pub endpoint: String,
}

impl ScratchEtcd {
    pub async fn start(
        etcd: &Path,
        name: &str,
        data: &Path,
        ports: &Ports,
        logdir: &Path,
    ) -> Result<Self> {
        let log = std::fs::File::create(logdir.join("etcd.log"))
            .map_err(|e| Error::io("creating the scratch etcd log", e))?;
        let child = tokio::process::Command::new(etcd)
            .args(["--name", name, "--data-dir"])
            .arg(data)
            .args([
                "--listen-client-urls",
                &ports.client_url(),
                "--advertise-client-urls",
                &ports.client_url(),
            ])
            .args([
                "--listen-peer-urls",
                &ports.peer_url(),
                "--initial-advertise-peer-urls",
                &ports.peer_url(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::usage(format!(
                    "cannot run {}: {e} (install etcd or pass --etcd-bin)",
                    etcd.display()
                ))
            })?;
        let mut s = ScratchEtcd {
            child,
            endpoint: ports.client_url(),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = s.child.try_wait() {
                return Err(Error::VerifyFailed(format!(
                    "the restored etcd exited ({status}) before serving; log: {}",
                    logdir.join("etcd.log").display()
                )));
            }
            if let Ok(mut c) = etcd_client::Client::connect([s.endpoint.as_str()], None).await {
                if c.status().await.is_ok() {
                    return Ok(s);
                }
            }
            if tokio::time::Instant::now() > deadline {
                s.stop().await;
                return Err(Error::VerifyFailed(
                    "the restored etcd did not serve within 30s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Revision, live keys and HashKV at `revision`.
    pub async fn observe(&self, revision: i64) -> Result<Observed> {
        let err = |what: &str, e: etcd_client::Error| Error::Etcd {
            endpoint: self.endpoint.clone(),
            context: format!("restored member: {what}"),
            source: e,
        };
        let mut c = etcd_client::Client::connect([self.endpoint.as_str()], None)
            .await
            .map_err(|e| err("connect", e))?;
        let head = c
            .get(
                "",
                Some(GetOptions::new().with_all_keys().with_count_only()),
            )
            .await
            .map_err(|e| err("revision", e))?;
        let at = c
            .get(
                "",
                Some(
                    GetOptions::new()
                        .with_all_keys()
                        .with_count_only()
                        .with_revision(revision),
                ),
            )
            .await
            .map_err(|e| err("count at revision", e))?;
        let hash = c
            .maintenance_client()
            .hash_kv(revision)
            .await
            .map_err(|e| err("HashKV", e))?;
        let mut kv = c.kv_client();
        let count = super::manifest::count_prefixes;
        let prefix_counts_at = count(&mut kv, revision)
            .await
            .map_err(|e| err("counting keys", e))?;
        let prefix_counts_head = count(&mut kv, 0)
            .await
            .map_err(|e| err("counting keys", e))?;
        Ok(Observed {
            revision: head.header().map(|h| h.revision()).unwrap_or(0),
            key_count: at.count(),
            hash_kv: hash.hash(),
            prefix_counts_at,
            prefix_counts_head,
        })
    }

    pub async fn stop(mut self) {
        // SIGTERM first so etcd closes its db cleanly; then make sure.
        terminate(&mut self.child, Duration::from_secs(10)).await;
    }
}

/// Stops a scratch server this process started: SIGTERM, then SIGKILL after `grace`.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}
