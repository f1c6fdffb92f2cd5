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
    pub body: String,
}

/// Sends `method url` with `body`; `what` names the call in errors (never the URL itself, which
/// may carry a token).
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
    let resp = tokio::time::timeout(timeout, client.request(req))
        .await
        .map_err(|_| Error::Unreachable {
            what: "HTTP endpoint",
            endpoint: what.into(),
            reason: format!("no answer within {timeout:?}"),
            hint: "check the URL".into(),
        })?
        .map_err(|e| Error::Unreachable {
            what: "HTTP endpoint",
            endpoint: what.into(),
            reason: crate::k8s::error_chain(&e),
            hint: "check the URL and that the server is up".into(),
        })?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    Ok(Response { status, body })
}
