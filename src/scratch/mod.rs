//! Throwaway servers on loopback for trial restores and drills: an etcd on a restored data dir
//! and a kube-apiserver on that etcd. They hold restored Secrets, so nothing but kirt may talk to
//! them: the etcd serves TLS and requires a client certificate from a CA made for this run (the
//! keys never leave the run's private temp dir), the apiserver requires a random bearer token.
//! Each is started by kirt, waited for with one readiness loop, stopped by its PID (SIGTERM, then
//! SIGKILL) — also when dropped — and killed by the kernel if kirt itself dies.

mod apiserver;
mod etcd;
pub mod pki;

pub use apiserver::ScratchApiserver;
pub use etcd::{etcdutl_restore, parse_version, tool_version, Observed, ScratchEtcd};
pub use pki::Pki;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::error::{Error, Result};

/// A server process kirt started; killed when dropped.
pub(crate) struct Server {
    child: tokio::process::Child,
    what: &'static str,
    log: PathBuf,
}

impl Server {
    /// Starts `cmd` with stderr to `log` (its stdout is discarded). `what` names it in errors,
    /// `hint` says how to point kirt at another binary.
    pub(crate) fn spawn(
        mut cmd: tokio::process::Command,
        what: &'static str,
        log: &Path,
        hint: &str,
    ) -> Result<Self> {
        let file = std::fs::File::create(log)
            .map_err(|e| Error::io(format!("creating the {what} log"), e))?;
        let program = cmd.as_std().get_program().to_string_lossy().into_owned();
        crate::signal::die_with_parent(&mut cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::usage(format!("cannot run {program}: {e} ({hint})")))?;
        Ok(Server {
            child,
            what,
            log: log.to_path_buf(),
        })
    }

    /// Polls `ready` until it says yes; fails (and stops the server) if the process exits or the
    /// deadline passes first.
    pub(crate) async fn wait_ready<F, Fut>(&mut self, within: Duration, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::VerifyFailed(format!(
                    "the {} exited ({status}) before serving; log: {}",
                    self.what,
                    self.log.display()
                )));
            }
            if ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                self.terminate(Duration::from_secs(5)).await;
                return Err(Error::VerifyFailed(format!(
                    "the {} did not serve within {}s; log: {}",
                    self.what,
                    within.as_secs(),
                    self.log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server: SIGTERM (so it closes its files cleanly), then SIGKILL after `grace`.
    pub(crate) async fn terminate(&mut self, grace: Duration) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(grace, self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

/// A private (0700) temp dir for one restore's plaintext snapshot, scratch data and keys, under
/// `--work-dir` or `$TMPDIR`; removed with everything in it when dropped.
pub fn work_dir(prefix: &str, under: Option<&Path>) -> Result<tempfile::TempDir> {
    let base = under
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(&base)
        .map_err(|e| {
            Error::io(
                format!(
                    "creating a work dir in {} (--work-dir chooses another place)",
                    base.display()
                ),
                e,
            )
        })
}

/// Client and peer ports on 127.0.0.1, free when chosen.
pub struct Ports {
    pub client: u16,
    pub peer: u16,
}

impl Ports {
    pub fn free() -> Result<Self> {
        Ok(Ports {
            client: port()?,
            peer: port()?,
        })
    }

    pub fn client_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.client)
    }

    pub fn peer_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.peer)
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

fn port() -> Result<u16> {
    free_loopback_port().map_err(|e| Error::io("finding a free loopback port", e))
}

/// A free TCP port on 127.0.0.1 for a server kirt (or its lab) starts, chosen below the kernel's
/// ephemeral range: a port from that range (what binding port 0 gives) can be taken, between
/// choosing it and the server binding it, as the source port of any outgoing connection.
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::collections::BTreeSet;
    use std::hash::{BuildHasher, Hasher};
    use std::net::TcpListener;
    use std::sync::Mutex;
    // ports handed out by this process, not yet bound by their server
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, ephemeral_low.max(10_001));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..500u64 {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports_are_below_the_ephemeral_range_and_distinct() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let ports: Vec<u16> = (0..20).map(|_| free_loopback_port().unwrap()).collect();
        for p in &ports {
            assert!((10_000..low).contains(p), "{p} not in 10000..{low}");
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("free");
        }
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
