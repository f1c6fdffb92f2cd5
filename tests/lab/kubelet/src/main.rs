//! kirt-lab-kubelet: a simulated kubelet (kwok-style) for the kirt lab, which has a real
//! kube-apiserver and kube-controller-manager but no container runtime and no scheduler. It
//! registers fake Nodes, binds and "runs" pods (status only), and serves the kubelet HTTPS API
//! for logs and checkpoints, so that Deployments roll out and `kubectl logs` works.
//!
//! Usage: `kirt-lab-kubelet --kubeconfig PATH --nodes lab-node-1,lab-node-2
//!         --listen 127.0.0.1:PORT --cert-dir DIR`

mod knobs;
mod logs;
mod nodes;
mod pods;
mod server;
mod status;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client, Config};

#[derive(Parser, Debug)]
#[command(about = "Simulated kubelet for the kirt lab (test infrastructure only)")]
struct Args {
    /// Kubeconfig of the lab's apiserver.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Comma-separated names of the Nodes to simulate.
    #[arg(long, value_delimiter = ',', required = true)]
    nodes: Vec<String>,
    /// Address of the kubelet HTTPS API (loopback only); all nodes share it.
    #[arg(long)]
    listen: SocketAddr,
    /// Where the self-signed serving certificate and key are written.
    #[arg(long)]
    cert_dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    // kube's rustls and rcgen could each pull in a provider; choose one before any TLS happens.
    rustls::crypto::ring::default_provider()
        .install_default()
        .map_err(|_| anyhow::anyhow!("a rustls crypto provider was already installed"))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_runtime=warn,kube_client=warn".into()),
        )
        .init();

    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address, got {}", args.listen);
    }
    let names: Vec<String> = args
        .nodes
        .iter()
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        bail!("--nodes names no node");
    }

    let kubeconfig = Kubeconfig::read_from(&args.kubeconfig)
        .with_context(|| format!("reading {}", args.kubeconfig.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;

    let tls = tls_config(&args.cert_dir, &names)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let port = listener.local_addr()?.port();
    tokio::spawn(server::serve(listener, tls, client.clone()));

    let nodes = nodes::Nodes::new(client.clone(), names.clone(), port);
    nodes.register().await?;
    tokio::spawn(nodes.heartbeat_forever());

    // The scheduler needs the nodes' labels, taints and cordons.
    let (node_store, writer) = reflector::store::<Node>();
    let node_watch = reflector(
        writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|event| async move {
        if let Err(e) = event {
            tracing::warn!("node watch: {e}");
        }
    });
    tokio::spawn(node_watch);

    let (_pod_store, pod_controller) = pods::controller(client.clone(), names.clone(), node_store);
    tokio::spawn(pod_controller);

    tracing::info!(nodes = ?names, listen = %args.listen, "kubelet ready");
    shutdown_signal().await;
    tracing::info!("stopping");
    Ok(())
}

/// Writes a fresh self-signed certificate (the apiserver does not verify it) and builds the TLS
/// server config from it.
fn tls_config(dir: &Path, names: &[String]) -> Result<Arc<rustls::ServerConfig>> {
    let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    sans.extend(names.iter().cloned());
    let cert =
        rcgen::generate_simple_self_signed(sans).context("generating the serving certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("kubelet.crt"), cert.cert.pem())?;
    std::fs::write(dir.join("kubelet.key"), cert.signing_key.serialize_pem())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    // HTTP/1.1 only: chunked streaming of logs is what the apiserver's proxy expects anyway.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
