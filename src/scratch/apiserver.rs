//! A kube-apiserver on a restored etcd, reachable only by kirt: loopback, a random port, a
//! random bearer token, RBAC on. Used by `kirt drill` to see what a control plane would serve.

use std::path::Path;
use std::time::Duration;

use super::{Pki, Server};
use crate::context::{private_dir, write_private};
use crate::error::{Error, IoContext, Result};
use crate::k8s::Cluster;

pub struct ScratchApiserver {
    server: Server,
    pub cluster: Cluster,
}

impl ScratchApiserver {
    /// Starts `bin` on the scratch etcd at `etcd` (reached with `pki`'s client certificate);
    /// certificates, keys and the log go under `dir`.
    pub async fn start(
        bin: &Path,
        service_cidr: &str,
        etcd: &str,
        pki: &Pki,
        dir: &Path,
    ) -> Result<Self> {
        // its keys and token (cluster-admin on the restored Secrets) readable by kirt's user only
        let own = dir.join("apiserver");
        private_dir(&own)?;
        let key = rcgen::KeyPair::generate()
            .map_err(|e| Error::failed(format!("generating a service-account key: {e}")))?;
        write_private(&own.join("sa.key"), key.serialize_pem().as_bytes(), true)?;
        write_private(&own.join("sa.pub"), key.public_key_pem().as_bytes(), true)?;
        let token = hex::encode(random_bytes()?);
        write_private(
            &own.join("tokens.csv"),
            format!("{token},kirt-drill,kirt-drill,\"system:masters\"\n").as_bytes(),
            true,
        )?;
        let port = super::port()?;
        let hint = "pass --apiserver-bin PATH";
        let version = tokio::process::Command::new(bin)
            .arg("--version")
            .output()
            .await
            .map_err(|e| Error::usage(format!("cannot run {}: {e} ({hint})", bin.display())))?;
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        // --insecure-port exists (and must be 0) only before Kubernetes 1.24.
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(99);
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg(format!("--etcd-servers={etcd}"))
            .arg(format!("--etcd-cafile={}", pki.ca.display()))
            .arg(format!("--etcd-certfile={}", pki.client_cert.display()))
            .arg(format!("--etcd-keyfile={}", pki.client_key.display()))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={port}"),
            ])
            .arg(format!("--cert-dir={}", own.display()))
            .arg(format!(
                "--token-auth-file={}",
                own.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                own.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                own.join("sa.key").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-cluster-ip-range={service_cidr}"))
            .args(["--allow-privileged=true", "--endpoint-reconciler-type=none"]);
        if minor < 24 {
            cmd.arg("--insecure-port=0");
        }
        let mut server = Server::spawn(
            cmd,
            "scratch kube-apiserver",
            &dir.join("apiserver.log"),
            hint,
        )?;
        let mut config = kube::Config::new(
            format!("https://127.0.0.1:{port}")
                .parse()
                .map_err(|e| Error::failed(format!("scratch apiserver URL: {e}")))?,
        );
        config.accept_invalid_certs = true;
        config.auth_info.token = Some(token.into());
        let client = kube::Client::try_from(config)
            .map_err(|e| Error::failed(format!("scratch apiserver client: {e}")))?;
        let c = client.clone();
        server
            .wait_ready(Duration::from_secs(90), || {
                let c = c.clone();
                async move {
                    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                        return false;
                    };
                    c.request_text(req)
                        .await
                        .map(|t| t.trim() == "ok")
                        .unwrap_or(false)
                }
            })
            .await?;
        Ok(ScratchApiserver {
            server,
            cluster: Cluster {
                client,
                default_namespace: "default".into(),
                url: format!("https://127.0.0.1:{port}"),
                configured_identity: "kirt-drill (scratch apiserver token)".into(),
            },
        })
    }

    pub async fn stop(mut self) {
        self.server.terminate(Duration::from_secs(15)).await;
    }
}

/// 16 bytes from the kernel's CSPRNG (the scratch apiserver's bearer token).
fn random_bytes() -> Result<[u8; 16]> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .ctx(|| "reading /dev/urandom for the scratch apiserver's token".into())?;
    Ok(b)
}
