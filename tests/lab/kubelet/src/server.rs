//! The kubelet's HTTPS API on 127.0.0.1, which the apiserver proxies `kubectl logs` and node proxy
//! calls to: container logs (streamed, never materialised), checkpoints (a small tar) and healthz.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::knobs::{Knobs, Phase};
use crate::logs::{self, LogQuery, LogSpec};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Serves until the process ends; each connection runs in its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, client: Client) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let client = client.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, peer, client).await {
                tracing::debug!(%peer, "connection ended: {e:#}");
            }
        });
    }
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    client: Client,
) -> Result<()> {
    let tls = acceptor.accept(tcp).await.context("TLS handshake")?;
    let service = hyper::service::service_fn(move |req| {
        let client = client.clone();
        async move { Ok::<_, Infallible>(route(req, client, peer).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
        .context("HTTP")
}

async fn route(req: Request<Incoming>, client: Client, peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    tracing::debug!(%peer, method = %req.method(), %path, %query, "request");
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (req.method(), segments.as_slice()) {
        (&Method::GET, ["healthz"]) => text(StatusCode::OK, "ok"),
        (&Method::GET, ["containerLogs", ns, pod, container]) => {
            container_logs(&client, ns, pod, container, &query).await
        }
        (&Method::POST, ["checkpoint", ns, pod, container]) => {
            checkpoint(&client, ns, pod, container).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed_unsync())
        .expect("static response parts are valid")
}

/// A pod and one of its containers (regular, init or ephemeral), or the error response.
async fn find(
    client: &Client,
    ns: &str,
    pod_name: &str,
    container: &str,
) -> Result<(Pod, Container, bool), Response<Body>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pod = match api.get_opt(pod_name).await {
        Ok(Some(pod)) => pod,
        Ok(None) => {
            return Err(text(
                StatusCode::NOT_FOUND,
                format!("pod \"{pod_name}\" not found"),
            ))
        }
        Err(e) => {
            return Err(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("looking up pod: {e}"),
            ))
        }
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let found = spec
        .containers
        .iter()
        .find(|c| c.name == container)
        .map(|c| (c.clone(), false))
        .or_else(|| {
            spec.init_containers
                .iter()
                .flatten()
                .find(|c| c.name == container)
                .map(|c| (c.clone(), true))
        })
        .or_else(|| {
            spec.ephemeral_containers
                .iter()
                .flatten()
                .find(|c| c.name == container)
                .map(|c| {
                    let c = serde_json::to_value(c).and_then(serde_json::from_value::<Container>);
                    (c.unwrap_or_default(), false)
                })
        });
    match found {
        Some((c, init)) => Ok((pod, c, init)),
        None => Err(text(
            StatusCode::NOT_FOUND,
            format!("container \"{container}\" not found in pod \"{pod_name}\""),
        )),
    }
}

fn parse_query(query: &str) -> Result<(bool, LogQuery), String> {
    let mut previous = false;
    let mut q = LogQuery::default();
    let flag = |v: &str| v == "true" || v == "1";
    let num = |k: &str, v: &str| v.parse::<u64>().map_err(|_| format!("invalid {k}: {v:?}"));
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "previous" => previous = flag(&v),
            "follow" => q.follow = flag(&v),
            "timestamps" => q.timestamps = flag(&v),
            "tailLines" => {
                // The kubelet treats a negative tail as "everything".
                q.tail_lines = v
                    .parse::<i64>()
                    .map_err(|_| format!("invalid tailLines: {v:?}"))?
                    .try_into()
                    .ok()
            }
            "limitBytes" => q.limit_bytes = Some(num("limitBytes", &v)?),
            "sinceSeconds" => {
                let secs = num("sinceSeconds", &v)?;
                q.since = Some(Timestamp::now() - SignedDuration::from_secs(secs as i64));
            }
            "sinceTime" => {
                q.since = Some(
                    v.parse::<Timestamp>()
                        .map_err(|_| format!("invalid sinceTime: {v:?}"))?,
                )
            }
            _ => {}
        }
    }
    Ok((previous, q))
}

async fn container_logs(
    client: &Client,
    ns: &str,
    pod_name: &str,
    name: &str,
    query: &str,
) -> Response<Body> {
    let (previous, mut q) = match parse_query(query) {
        Ok(parsed) => parsed,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (pod, container, init) = match find(client, ns, pod_name, name).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    let knobs = Knobs::from_pod(&pod);
    let plan = knobs.plan(&container);
    let start = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| t.0);
    let waiting = |why: &str| {
        text(
            StatusCode::BAD_REQUEST,
            format!("container \"{name}\" in pod \"{pod_name}\" is waiting to start: {why}"),
        )
    };
    let Some(start) = start else {
        return waiting("ContainerCreating");
    };
    if plan.phase == Phase::PullBackOff {
        return waiting("trying and failing to pull image");
    }
    // Init containers ran once and completed: no restarts, nothing more to follow.
    let (restarts, running) = if init {
        (0, false)
    } else {
        (plan.restarts, plan.phase == Phase::Running)
    };
    let instance = if previous {
        if restarts == 0 {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container \"{name}\" in pod \"{pod_name}\" not found"),
            );
        }
        format!("previous instance {}", restarts - 1)
    } else {
        format!("instance {restarts}")
    };
    q.follow &= running && !previous;
    let spec = LogSpec {
        label: format!("{ns}/{pod_name}/{name}"),
        instance,
        base: start,
        size: knobs.log_size(),
    };
    let body =
        StreamBody::new(logs::stream(spec, q).map(|chunk| Ok::<_, Infallible>(Frame::data(chunk))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/plain")
        .body(BodyExt::boxed_unsync(body))
        .expect("static response parts are valid")
}

async fn checkpoint(client: &Client, ns: &str, pod_name: &str, name: &str) -> Response<Body> {
    let (pod, container, _) = match find(client, ns, pod_name, name).await {
        Ok(found) => found,
        Err(response) => return response,
    };
    if Knobs::from_pod(&pod).checkpoint_unsupported {
        // What a kubelet without the ContainerCheckpoint feature answers.
        return text(StatusCode::NOT_FOUND, "404 page not found");
    }
    match checkpoint_tar(&pod, &container) {
        Ok(tar) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/x-tar")
            .body(Full::new(Bytes::from(tar)).boxed_unsync())
            .expect("static response parts are valid"),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("building checkpoint: {e}"),
        ),
    }
}

/// A small but valid tar shaped like a CRI-O checkpoint: config.json and an (empty) rootfs diff.
fn checkpoint_tar(pod: &Pod, container: &Container) -> std::io::Result<Vec<u8>> {
    let now = Timestamp::now();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let config = serde_json::to_vec_pretty(&serde_json::json!({
        "simulated": true,
        "namespace": pod.metadata.namespace,
        "podName": pod.metadata.name,
        "podUID": uid,
        "containerName": container.name,
        "containerID": format!("sim://{uid}/{}", container.name),
        "image": container.image,
        "checkpointedAt": now.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }))?;
    // An empty tar archive is two zero blocks.
    let rootfs_diff = vec![0u8; 1024];
    let mut builder = tar::Builder::new(Vec::new());
    for (file, data) in [("config.json", config), ("rootfs-diff.tar", rootfs_diff)] {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(now.as_second().max(0) as u64);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(
            &mut header,
            format!("checkpoint/{}/{file}", container.name),
            data.as_slice(),
        )?;
    }
    builder.into_inner()
}
