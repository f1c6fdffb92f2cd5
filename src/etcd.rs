//! Reaching etcd: endpoints and TLS options shared by doctor, backup and restore, connecting to one
//! member at a time (a snapshot must come from one member, and the manifest says which).

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdOptions {
    /// etcd client URLs, comma-separated (http:// or https://)
    #[arg(long, value_delimiter = ',', value_name = "URL")]
    pub etcd_endpoints: Vec<String>,
    /// CA certificate (PEM) that signed the etcd server certificates
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd client-cert auth
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM) for etcd client-cert auth
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// What a member says about itself.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub endpoint: String,
    pub version: String,
    pub member_id: String,
    pub cluster_id: String,
    pub leader: String,
    pub revision: i64,
    pub db_size: i64,
    pub raft_term: u64,
}

impl EtcdOptions {
    pub fn validate(&self) -> Result<()> {
        if self.etcd_endpoints.is_empty() {
            return Err(Error::usage(
                "no etcd endpoint given: pass --etcd-endpoints https://HOST:2379",
            ));
        }
        for ep in &self.etcd_endpoints {
            let url = url::Url::parse(ep).map_err(|e| {
                Error::usage(format!(
                    "bad etcd endpoint {ep:?}: {e} (expected http(s)://HOST:PORT)"
                ))
            })?;
            match url.scheme() {
                "http" | "https" => {}
                s => {
                    return Err(Error::usage(format!(
                        "bad etcd endpoint {ep:?}: scheme {s:?} (expected http or https)"
                    )))
                }
            }
            if url.scheme() == "http" && (self.cacert.is_some() || self.cert.is_some()) {
                return Err(Error::usage(format!(
                    "etcd endpoint {ep} is http:// but TLS options were given: use https://"
                )));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::usage("--cert and --key must be given together"));
        }
        Ok(())
    }

    fn connect_options(&self) -> Result<ConnectOptions> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let uses_tls = self
            .etcd_endpoints
            .iter()
            .any(|e| e.starts_with("https://"));
        if uses_tls {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.cacert {
                let pem = std::fs::read(ca).ctx(|| format!("reading --cacert {}", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            } else {
                tls = tls.with_native_roots();
            }
            if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
                let c = std::fs::read(cert).ctx(|| format!("reading --cert {}", cert.display()))?;
                let k = std::fs::read(key).ctx(|| format!("reading --key {}", key.display()))?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(tls);
        }
        Ok(opts)
    }

    /// Connects to one endpoint and asks for its status (proves reachability, TLS and auth).
    pub async fn connect_one(&self, endpoint: &str) -> Result<(Client, MemberStatus)> {
        let mut client = tokio::time::timeout(
            Duration::from_secs(10),
            Client::connect([endpoint], Some(self.connect_options()?)),
        )
        .await
        .map_err(|_| unreachable(endpoint, "connection timed out after 10s".into()))?
        .map_err(|e| unreachable(endpoint, crate::k8s::error_chain(&e)))?;
        let st = tokio::time::timeout(Duration::from_secs(10), client.status())
            .await
            .map_err(|_| unreachable(endpoint, "status request timed out after 10s".into()))?
            .map_err(|e| unreachable(endpoint, crate::k8s::error_chain(&e)))?;
        let header = st.header();
        let status = MemberStatus {
            endpoint: endpoint.to_string(),
            version: st.version().to_string(),
            member_id: header
                .map(|h| format!("{:x}", h.member_id()))
                .unwrap_or_default(),
            cluster_id: header
                .map(|h| format!("{:x}", h.cluster_id()))
                .unwrap_or_default(),
            leader: format!("{:x}", st.leader()),
            revision: header.map(|h| h.revision()).unwrap_or_default(),
            db_size: st.db_size(),
            raft_term: st.raft_term(),
        };
        Ok((client, status))
    }

    /// The member to stream a snapshot from: every endpoint is asked for its status and a
    /// follower is preferred (the leader is the busiest member); the leader only when no follower
    /// answers. Returns the reason with the member (the manifest records both).
    pub async fn connect_follower(&self) -> Result<(Client, MemberStatus, String)> {
        self.validate()?;
        // all at once: an unreachable member costs its timeout once, not once per member
        let asked =
            futures::future::join_all(self.etcd_endpoints.iter().map(|ep| self.connect_one(ep)))
                .await;
        let mut answered = Vec::new();
        let mut errors = Vec::new();
        for (ep, r) in self.etcd_endpoints.iter().zip(asked) {
            match r {
                Ok(c) => answered.push(c),
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "etcd member not usable");
                    errors.push(e.to_string());
                }
            }
        }
        let statuses: Vec<MemberStatus> = answered.iter().map(|(_, s)| s.clone()).collect();
        let Some((i, why)) = choose_member(&statuses, &errors) else {
            if errors.len() == 1 {
                return Err(unreachable_all(&self.etcd_endpoints, errors.remove(0)));
            }
            return Err(unreachable_all(&self.etcd_endpoints, errors.join("; ")));
        };
        let (client, status) = answered.swap_remove(i);
        tracing::info!(member = %status.endpoint, member_id = %status.member_id, "snapshot source: {why}");
        Ok((client, status, why))
    }

    /// The first endpoint that answers, in the order given (say which in the manifest).
    pub async fn connect_healthy(&self) -> Result<(Client, MemberStatus)> {
        self.validate()?;
        let mut errors = Vec::new();
        for ep in &self.etcd_endpoints {
            match self.connect_one(ep).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "etcd member not usable, trying the next");
                    errors.push(e.to_string());
                }
            }
        }
        if errors.len() == 1 {
            return Err(unreachable_all(&self.etcd_endpoints, errors.remove(0)));
        }
        Err(unreachable_all(&self.etcd_endpoints, errors.join("; ")))
    }
}

/// The member's current revision, from a linearizable read of one key: etcd walks nothing.
pub async fn head_revision(
    kv: &mut etcd_client::KvClient,
) -> std::result::Result<i64, etcd_client::Error> {
    let r = kv.get("/", None).await?;
    Ok(r.header().map_or(0, |h| h.revision()))
}

/// Live keys at `revision` (0: the head), counted by etcd without values. etcd walks its whole
/// index for it under the lock its writes wait for (about 0.35 s per million keys): on a live
/// member only when asked (`--count-keys all`).
pub async fn count_all(
    kv: &mut etcd_client::KvClient,
    revision: i64,
) -> std::result::Result<etcd_client::GetResponse, etcd_client::Error> {
    let all = etcd_client::GetOptions::new()
        .with_all_keys()
        .with_count_only()
        .with_revision(revision);
    kv.get("", Some(all)).await
}

/// Which of the members that answered to stream a snapshot from, and why (for the manifest):
/// a follower of the leader the members name, else the leader, else the first.
pub fn choose_member(statuses: &[MemberStatus], unreachable: &[String]) -> Option<(usize, String)> {
    let first = statuses.first()?;
    if statuses.len() == 1 && unreachable.is_empty() {
        return Some((0, "the only endpoint given".into()));
    }
    // A member that reports no leader cannot tell follower from leader.
    let leader = statuses
        .iter()
        .map(|s| s.leader.as_str())
        .find(|l| *l != "0");
    let Some(leader) = leader else {
        return Some((
            0,
            format!(
                "no leader known: the first that answered ({})",
                first.endpoint
            ),
        ));
    };
    // A follower that follows the leader the others name (not one cut off from it).
    if let Some(i) = statuses
        .iter()
        .position(|s| s.leader == leader && s.member_id != leader)
    {
        return Some((
            i,
            format!("a follower: spares the leader {leader}, the busiest member"),
        ));
    }
    let i = statuses
        .iter()
        .position(|s| s.member_id == leader)
        .unwrap_or(0);
    let why = if unreachable.is_empty() {
        "only the leader was given".to_string()
    } else {
        format!(
            "the leader: no follower answered ({})",
            unreachable.join("; ")
        )
    };
    Some((i, why))
}

fn unreachable(endpoint: &str, reason: String) -> Error {
    let hint = if reason.contains("certificate")
        || reason.contains("tls")
        || reason.contains("handshake")
    {
        "TLS failed: check --cacert (the CA that signed etcd's server cert) and --cert/--key (a client cert etcd trusts)"
    } else {
        "check the endpoint URL and that etcd listens there (etcdctl endpoint health)"
    };
    Error::Unreachable {
        what: "etcd",
        endpoint: endpoint.to_string(),
        reason,
        hint: hint.into(),
    }
}

fn unreachable_all(endpoints: &[String], reason: String) -> Error {
    // Keep the single-endpoint error readable; several endpoints are listed.
    if let [one] = endpoints {
        if let Some(stripped) = reason.strip_prefix(&format!("cannot reach etcd at {one}: ")) {
            return unreachable(
                one,
                stripped.split(" — ").next().unwrap_or(stripped).to_string(),
            );
        }
    }
    Error::Unreachable {
        what: "etcd",
        endpoint: endpoints.join(","),
        reason,
        hint: "no member answered; check the endpoints, TLS options and that etcd is up".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(endpoint: &str, id: &str, leader: &str) -> MemberStatus {
        MemberStatus {
            endpoint: endpoint.into(),
            version: "3.5.16".into(),
            member_id: id.into(),
            cluster_id: "c".into(),
            leader: leader.into(),
            revision: 1,
            db_size: 1,
            raft_term: 2,
        }
    }

    #[test]
    fn a_follower_is_preferred_and_the_leader_is_the_fallback() {
        let l = member("http://a", "a1", "a1");
        let f = member("http://b", "b2", "a1");
        let (i, why) = choose_member(&[l.clone(), f.clone()], &[]).unwrap();
        assert_eq!(i, 1);
        assert!(why.contains("follower"), "{why}");
        let (i, why) =
            choose_member(std::slice::from_ref(&l), &["http://b: refused".into()]).unwrap();
        assert_eq!(i, 0);
        assert!(
            why.contains("no follower answered") && why.contains("http://b"),
            "{why}"
        );
        let (_, why) = choose_member(std::slice::from_ref(&l), &[]).unwrap();
        assert_eq!(why, "the only endpoint given");
        let (i, why) = choose_member(&[member("http://x", "x", "0"), f], &[]).unwrap();
        assert_eq!(i, 1, "x knows no leader; b follows a1");
        assert!(why.contains("follower"), "{why}");
        let (i, why) = choose_member(&[member("http://x", "x", "0")], &["e".into()]).unwrap();
        assert_eq!(i, 0);
        assert!(why.contains("no leader known"), "{why}");
        assert!(choose_member(&[], &["e".into()]).is_none());
    }
}
