//! A kube-apiserver of a test's own (the lab's binary) on an etcd the test chose: for tests that
//! configure it (encryption at rest) or run it on a restored member.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{free_port, unique, wait_until, Lab, Proc, Run};

/// Killed by PID when dropped; `kubectl` talks to it with its own admin token.
pub struct OwnApiserver {
    pub proc: Proc,
    token: String,
}

impl OwnApiserver {
    /// Starts it on `etcd` with `extra` flags and waits until /readyz answers ok.
    pub fn start(lab: &Lab, etcd: &str, extra: &[String]) -> OwnApiserver {
        let dir = lab.dir.path().join(unique("apiserver"));
        std::fs::create_dir_all(&dir).unwrap();
        let token = unique("own-admin-token");
        std::fs::write(
            dir.join("tokens.csv"),
            format!("{token},own-admin,own-admin,\"system:masters\"\n"),
        )
        .unwrap();
        let pki = Path::new(&lab.get("KIRT_LAB_DIR")).join("pki");
        let port = free_port();
        let log = std::fs::File::create(dir.join("apiserver.log")).unwrap();
        let child = Command::new(format!("{}/kube-apiserver", lab.get("KIRT_LAB_KUBE_BIN")))
            .arg(format!("--etcd-servers={etcd}"))
            .args([
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                &format!("--secure-port={port}"),
                "--insecure-port=0",
            ])
            .arg(format!("--cert-dir={}", dir.display()))
            .arg(format!(
                "--token-auth-file={}",
                dir.join("tokens.csv").display()
            ))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-account-key-file={}",
                pki.join("sa.pub").display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.join("sa.key").display()
            ))
            .args([
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
            ])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start kube-apiserver");
        let mut api = OwnApiserver {
            proc: Proc {
                child,
                endpoint: format!("https://127.0.0.1:{port}"),
                dir: dir.clone(),
                port,
            },
            token,
        };
        wait_until(
            Duration::from_secs(120),
            "the test's kube-apiserver",
            || {
                if let Ok(Some(status)) = api.proc.child.try_wait() {
                    panic!(
                        "kube-apiserver exited ({status}): {}",
                        std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default()
                    );
                }
                let r = api.kubectl(&["get", "--raw", "/readyz"]);
                r.code() == 0 && r.stdout().trim() == "ok"
            },
        );
        api
    }

    /// `curl` of `path` (e.g. a watch) with the admin token; curl passes bytes on as they
    /// arrive (`-N`), so a watch can be read while it runs.
    pub fn curl(&self, path: &str) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sSNk", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!("{}{path}", self.proc.endpoint));
        c
    }

    pub fn kubectl(&self, args: &[&str]) -> Run {
        let mut c = Command::new(super::k8s::kubectl_binary());
        c.env("KUBECONFIG", "/dev/null")
            .args(["--server", &self.proc.endpoint, "--token", &self.token])
            .arg("--insecure-skip-tls-verify")
            .args(args);
        super::run(c, format!("kubectl {}", args.join(" ")))
    }
}
