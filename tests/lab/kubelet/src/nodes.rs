//! Registers the fake Nodes and keeps them alive: a Ready condition with a fresh heartbeat and a
//! renewed Lease every few seconds, so that kube-controller-manager's node lifecycle controller
//! never marks them NotReady, taints them or evicts their pods.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};

use crate::status::{now_seconds, HOST_IP};

const LEASE_NAMESPACE: &str = "kube-node-lease";
/// The node lifecycle controller's grace period is 40 s; beating 4 times within it.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;

pub struct Nodes {
    client: Client,
    names: Vec<String>,
    port: u16,
    /// When the nodes became Ready: the conditions' lastTransitionTime, stable across heartbeats.
    since: Timestamp,
}

impl Nodes {
    pub fn new(client: Client, names: Vec<String>, port: u16) -> Self {
        Nodes {
            client,
            names,
            port,
            since: now_seconds(),
        }
    }

    /// Creates (or updates) every Node, then posts its status and Lease once.
    pub async fn register(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        for name in &self.names {
            let labels = json!({
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                "beta.kubernetes.io/arch": "amd64",
            });
            let node: Node = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": labels },
            }))?;
            match api.create(&PostParams::default(), &node).await {
                Ok(_) => tracing::info!(node = %name, "registered node"),
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    // Left over from an earlier run: keep its spec (a cordon stays), refresh labels.
                    let patch = json!({ "metadata": { "labels": labels } });
                    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .with_context(|| format!("updating node {name}"))?;
                    tracing::info!(node = %name, "node already registered, updated");
                }
                Err(e) => return Err(e).with_context(|| format!("creating node {name}")),
            }
        }
        self.beat().await
    }

    /// Heartbeats forever. After a failure the next beat registers the nodes again, as a kubelet
    /// does, so nodes that vanished (deleted, or an etcd restore from before they existed) return.
    pub async fn heartbeat_forever(self) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.tick().await;
        let mut failed = false;
        loop {
            tick.tick().await;
            let result = if failed {
                self.register().await
            } else {
                self.beat().await
            };
            if let Err(e) = &result {
                tracing::warn!("node heartbeat failed: {e:#}");
            }
            failed = result.is_err();
        }
    }

    async fn beat(&self) -> Result<()> {
        let api: Api<Node> = Api::all(self.client.clone());
        for name in &self.names {
            let patch = json!({ "status": self.node_status(name) });
            api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .with_context(|| format!("posting status of node {name}"))?;
            self.renew_lease(name).await?;
        }
        Ok(())
    }

    fn node_status(&self, name: &str) -> Value {
        let now = Timestamp::now();
        let condition = |type_: &str, status: &str, reason: &str, message: &str| {
            json!({
                "type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": fmt(now), "lastTransitionTime": fmt(self.since),
            })
        };
        let resources = json!({
            "cpu": "32", "memory": "128Gi", "pods": "250", "ephemeral-storage": "500Gi",
        });
        json!({
            "conditions": [
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status (simulated by kirt-lab-kubelet)"),
            ],
            "addresses": [
                { "type": "InternalIP", "address": HOST_IP },
                { "type": "Hostname", "address": name },
            ],
            // All nodes share the one HTTPS server; the apiserver proxies logs and checkpoints there.
            "daemonEndpoints": { "kubeletEndpoint": { "Port": self.port } },
            "capacity": resources,
            "allocatable": resources,
            "nodeInfo": {
                "machineID": format!("kirt-lab-{name}"),
                "systemUUID": format!("kirt-lab-{name}"),
                "bootID": format!("kirt-lab-boot-{name}"),
                "kernelVersion": "6.1.0-kirt-lab",
                "osImage": "kirt lab simulated node",
                "containerRuntimeVersion": "sim://0.1.0",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        })
    }

    async fn renew_lease(&self, name: &str) -> Result<()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), LEASE_NAMESPACE);
        let renew = Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
            .to_string();
        let patch = json!({ "spec": { "holderIdentity": name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": renew } });
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e).with_context(|| format!("renewing lease of node {name}")),
        }
        self.ensure_lease_namespace().await?;
        let node: Node = Api::all(self.client.clone()).get(name).await?;
        // Owned by the Node, as the kubelet does, so deleting the Node removes its Lease.
        let lease: Lease = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": name,
                    "uid": node.metadata.uid.unwrap_or_default(),
                }],
            },
            "spec": patch["spec"],
        }))?;
        match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).with_context(|| format!("creating lease of node {name}")),
        }
    }

    /// The apiserver normally creates kube-node-lease itself; create it if it is not there yet.
    async fn ensure_lease_namespace(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace =
            serde_json::from_value(json!({ "metadata": { "name": LEASE_NAMESPACE } }))?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e).context("creating namespace kube-node-lease"),
        }
    }
}

fn fmt(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}
