//! A small HTTP(S) client for the few plain HTTP calls kirt makes (Prometheus Pushgateway,
//! webhooks), on the hyper/rustls stack kube already brings. URLs and header values may hold
//! secrets: they are never logged here.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::error::{Error, Result};

pub struct Response {
    pub status: u16,
    /// The first `MAX_BODY` bytes of the answer (kirt only ever shows a line of it).
    pub body: String,
}

/// Largest part of an answer kept; the rest is not read.
const MAX_BODY: usize = 64 << 10;

/// Sends `method url` with `body`; `what` names the call in errors (never the URL itself, which
/// may carry a token). The whole exchange, answer included, must finish within `timeout`.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    what: &str,
    timeout: Duration,
) -> Result<Response> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| Error::failed(format!("{what}: no TLS roots: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::usage(format!("{what}: invalid request: {e}")))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| Error::Unreachable {
            what: "HTTP endpoint",
            endpoint: what.into(),
            reason: crate::k8s::error_chain(&e),
            hint: "check the URL and that the server is up".into(),
        })?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut kept = Vec::new();
        while kept.len() < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        let room = MAX_BODY - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                _ => break,
            }
        }
        Ok(Response {
            status,
            body: String::from_utf8_lossy(&kept).into_owned(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::Unreachable {
            what: "HTTP endpoint",
            endpoint: what.into(),
            reason: format!("no complete answer within {timeout:?}"),
            hint: "check the URL".into(),
        })?
}

/// Refuses URLs whose host is (or resolves to) a link-local or cloud-metadata address, unless
/// `allowed`: a playbook parameter must not turn a webhook into a way to read instance
/// credentials (169.254.169.254 and friends). The check resolves the name once; the request
/// resolves it again, so a DNS answer that changes in between is not caught.
pub async fn refuse_metadata_target(url: &url::Url, allowed: bool, what: &str) -> Result<()> {
    if allowed {
        return Ok(());
    }
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<std::net::IpAddr> = match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map(|a| a.map(|s| s.ip()).collect())
            .unwrap_or_default(),
    };
    let metadata_name = bare.eq_ignore_ascii_case("metadata.google.internal")
        || bare.eq_ignore_ascii_case("metadata");
    if metadata_name || addrs.iter().any(is_metadata_or_link_local) {
        return Err(Error::usage(format!(
            "{what}: the URL points at a link-local or cloud-metadata address; refused (set allow-link-local: true if that is really meant)"
        )));
    }
    Ok(())
}

fn is_metadata_or_link_local(ip: &std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            v4.is_link_local() || *v4 == std::net::Ipv4Addr::new(100, 100, 100, 200)
        }
        std::net::IpAddr::V6(v6) => {
            // fe80::/10, AWS's IPv6 instance metadata, and link-local v4 mapped into v6
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || *v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_link_local())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metadata_and_link_local_targets_are_refused() {
        for bad in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fe80::1]/x",
            "http://100.100.100.200/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let u = url::Url::parse(bad).unwrap();
            assert!(
                refuse_metadata_target(&u, false, "webhook").await.is_err(),
                "{bad}"
            );
            assert!(
                refuse_metadata_target(&u, true, "webhook").await.is_ok(),
                "{bad}"
            );
        }
        let ok = url::Url::parse("http://127.0.0.1:9/x").unwrap();
        assert!(refuse_metadata_target(&ok, false, "webhook").await.is_ok());
    }
}
