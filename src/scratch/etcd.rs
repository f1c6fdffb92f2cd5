//! `etcdutl snapshot restore` into an empty directory, and a one-member etcd on it that answers
//! what a restored member holds at the recorded revision.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::{Pki, Ports, Server};
use crate::error::{Error, Result};
use crate::pipeline::{SnapshotDigest, TrailerCheck};
use crate::signal::Shutdown;

/// Runs `etcdutl snapshot restore SNAP --data-dir DATA ARGS` (with etcd's hash check). Refuses a
/// non-empty data dir, as etcdutl does, so nothing existing is ever overwritten; a failed or
/// interrupted restore removes what it wrote.
pub async fn etcdutl_restore(
    stop: &Shutdown,
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
    let mut cmd = tokio::process::Command::new(etcdutl);
    cmd.arg("snapshot")
        .arg("restore")
        .arg(snap)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    crate::signal::die_with_parent(&mut cmd);
    let run = async {
        let child = cmd.spawn().map_err(|e| {
            Error::usage(format!(
                "cannot run {}: {e} (install etcdutl or pass --etcdutl-bin)",
                etcdutl.display()
            ))
        })?;
        stop.hold("etcdutl").await;
        child
            .wait_with_output()
            .await
            .map_err(|e| Error::io(format!("waiting for {}", etcdutl.display()), e))
    };
    let out = match stop.guard("nothing was restored", run).await {
        Ok(out) => out,
        Err(e) => {
            let _ = std::fs::remove_dir_all(data);
            return Err(e);
        }
    };
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
    /// HashKV at the recorded revision, when the manifest has one to compare with.
    pub hash_kv: Option<u32>,
    /// Keys under each of the manifest's resource prefixes at the recorded revision…
    pub prefix_counts_at: BTreeMap<String, i64>,
    /// …and at the restored head (what an apiserver on this member serves).
    pub prefix_counts_head: BTreeMap<String, i64>,
}

pub struct ScratchEtcd {
    server: Server,
    pub endpoint: String,
    /// The throwaway CA and certificates it serves and requires (a scratch apiserver uses them).
    pub pki: Pki,
    /// Client options with the certificate this etcd requires.
    connect: etcd_client::ConnectOptions,
}

impl ScratchEtcd {
    /// Restores the plaintext snapshot `snap` into `dir/data` with etcdutl (the snapshot file is
    /// removed once restored) and starts a one-member etcd named `name` on it, with throwaway
    /// certificates under `dir` and the `extra` flags. Stopped by [`ScratchEtcd::stop`], or killed
    /// when dropped.
    pub async fn restore(
        stop: &Shutdown,
        etcd_bin: &Path,
        etcdutl_bin: &Path,
        snap: &Path,
        dir: &Path,
        name: &str,
        extra: &[String],
    ) -> Result<Self> {
        let data = dir.join("data");
        let ports = Ports::free()?;
        let t = std::time::Instant::now();
        etcdutl_restore(stop, etcdutl_bin, snap, &data, &ports.restore_args(name)).await?;
        tracing::debug!(elapsed = ?t.elapsed(), "etcdutl snapshot restore");
        let _ = std::fs::remove_file(snap);
        let pki = Pki::create(dir)?;
        stop.guard(
            "the scratch etcd was stopped",
            ScratchEtcd::start(etcd_bin, name, &data, &ports, pki, dir, extra),
        )
        .await
    }

    /// Starts etcd on the restored `data` dir, TLS with client certificates of `pki` on both its
    /// client and peer ports; its log goes to `logdir/etcd.log`. `extra` flags are added as given.
    pub async fn start(
        etcd: &Path,
        name: &str,
        data: &Path,
        ports: &Ports,
        pki: Pki,
        logdir: &Path,
        extra: &[String],
    ) -> Result<Self> {
        let mut cmd = tokio::process::Command::new(etcd);
        // one member, no peers to wait for: elected in tens of ms rather than etcd's default
        // second (it still goes through an election before it serves)
        cmd.args(["--heartbeat-interval", "10", "--election-timeout", "100"]);
        cmd.args(extra);
        cmd.args(["--name", name, "--data-dir"])
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
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&pki.ca)
            .arg("--cert-file")
            .arg(&pki.server_cert)
            .arg("--key-file")
            .arg(&pki.server_key)
            .arg("--peer-client-cert-auth")
            .arg("--peer-trusted-ca-file")
            .arg(&pki.ca)
            .arg("--peer-cert-file")
            .arg(&pki.server_cert)
            .arg("--peer-key-file")
            .arg(&pki.server_key);
        let mut server = Server::spawn(
            cmd,
            "restored etcd",
            &logdir.join("etcd.log"),
            "install etcd or pass --etcd-bin",
        )?;
        let endpoint = ports.client_url();
        let connect = pki.etcd_client()?;
        server
            .wait_ready(Duration::from_secs(30), || async {
                match etcd_client::Client::connect([endpoint.as_str()], Some(connect.clone())).await
                {
                    Ok(mut c) => c.status().await.is_ok(),
                    Err(_) => false,
                }
            })
            .await?;
        Ok(ScratchEtcd {
            server,
            endpoint,
            pki,
            connect,
        })
    }

    /// A client of this etcd (with the certificate it requires).
    pub async fn client(&self) -> Result<etcd_client::Client> {
        etcd_client::Client::connect([self.endpoint.as_str()], Some(self.connect.clone()))
            .await
            .map_err(|e| self.error("connect", e))
    }

    /// An error of the restored member.
    pub fn error(&self, what: &str, e: etcd_client::Error) -> Error {
        Error::Etcd {
            endpoint: self.endpoint.clone(),
            context: format!("scratch member: {what}"),
            source: e,
        }
    }

    /// Revision, live keys and (with `hash`) HashKV at `revision`.
    pub async fn observe(&self, revision: i64, hash: bool) -> Result<Observed> {
        let err = |what: &str, e: etcd_client::Error| self.error(what, e);
        let c = self.client().await?;
        let head = crate::etcd::head_revision(&mut c.kv_client())
            .await
            .map_err(|e| err("revision", e))?;
        let at = crate::etcd::count_all(&mut c.kv_client(), revision)
            .await
            .map_err(|e| err("count at revision", e))?;
        let hash_kv = if hash {
            let h = c.maintenance_client().hash_kv(revision).await;
            Some(h.map_err(|e| err("HashKV", e))?.hash())
        } else {
            None
        };
        let mut kv = c.kv_client();
        let count = crate::actions::backup::manifest::count_prefixes;
        let prefix_counts_at = count(&mut kv, revision)
            .await
            .map_err(|e| err("counting keys", e))?;
        let prefix_counts_head = count(&mut kv, 0)
            .await
            .map_err(|e| err("counting keys", e))?;
        Ok(Observed {
            revision: head,
            key_count: at.count(),
            hash_kv,
            prefix_counts_at,
            prefix_counts_head,
        })
    }

    /// Writes this member's snapshot to `path` (0600), checking etcd's sha256 trailer, as
    /// `etcdctl snapshot save` does; what `etcdutl snapshot restore` takes.
    pub async fn save_snapshot(&self, stop: &Shutdown, path: &Path) -> Result<SnapshotDigest> {
        use tokio::io::AsyncWriteExt;
        let err = |what: &str, e| Error::Etcd {
            endpoint: self.endpoint.clone(),
            context: format!("scratch member: {what}"),
            source: e,
        };
        let save = async {
            let c = self.client().await?;
            let mut stream = c
                .maintenance_client()
                .snapshot()
                .await
                .map_err(|e| err("snapshot", e))?;
            let mut file = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .await
                .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
            let mut trailer = TrailerCheck::default();
            while let Some(resp) = stream
                .message()
                .await
                .map_err(|e| err("snapshot stream", e))?
            {
                trailer.update(resp.blob());
                file.write_all(resp.blob())
                    .await
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            }
            file.sync_all()
                .await
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            let digest = trailer.finish();
            if !digest.trailer_ok {
                return Err(Error::VerifyFailed(
                    "the scratch member's snapshot does not match its sha256 trailer".into(),
                ));
            }
            Ok(digest)
        };
        stop.guard("nothing was restored", save).await
    }

    pub async fn stop(mut self) {
        self.server.terminate(Duration::from_secs(10)).await;
    }
}

/// `major.minor.patch` of an etcd tool, from what `BIN ARGS` prints ("etcd Version: 3.5.16",
/// "etcdutl version: 3.5.16"); None if it cannot be run or says nothing recognisable.
pub async fn tool_version(bin: &Path, args: &[&str]) -> Option<(u64, u64, u64)> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    parse_version(&String::from_utf8_lossy(&out.stdout))
}

pub fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let line = text
        .lines()
        .find(|l| l.to_ascii_lowercase().contains("version:"))?;
    let v = line.rsplit(':').next()?.trim().trim_start_matches('v');
    let mut it = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_etcds_own_words() {
        assert_eq!(
            parse_version("etcd Version: 3.5.16\nGit SHA: x\n"),
            Some((3, 5, 16))
        );
        assert_eq!(
            parse_version("etcdutl version: 3.5.9\nAPI version: 3.5\n"),
            Some((3, 5, 9))
        );
        assert_eq!(
            parse_version("etcdutl version: v3.6.0-rc.1"),
            Some((3, 6, 0))
        );
        assert_eq!(parse_version("nothing"), None);
    }
}
