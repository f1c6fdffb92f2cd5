//! The pod side of the simulated kubelet, as one controller over all pods: it binds pending pods
//! (the lab has no kube-scheduler), writes a kubelet-like status for pods on our nodes, and
//! finishes the deletion of terminating pods (as the kubelet does once containers have stopped).

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{
    Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint,
};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;

use crate::status::{desired_status, differs, now_seconds};

/// Every pod is looked at again this often, so pods that fit no node get bound once a node is
/// uncordoned, and failed writes are retried.
const RESYNC: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_secs(2);

/// Pod IPs come from the documentation ranges (never contacted; loopback would make Endpoints
/// invalid): 192.0.2.0/24 first, then the other two when a test runs more than 254 pods.
const POD_NETS: [[u8; 3]; 3] = [[192, 0, 2], [198, 51, 100], [203, 0, 113]];

pub struct Ctx {
    client: Client,
    nodes: Vec<String>,
    node_store: Store<Node>,
    pod_store: Store<Pod>,
    next_node: AtomicUsize,
    /// Pod IPs handed out but maybe not yet visible in the pod store, by pod uid.
    ips: Mutex<HashMap<String, Ipv4Addr>>,
}

#[derive(Debug)]
pub struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error(e.to_string())
    }
}

/// Builds the pod controller; returns its store (for the log server) and the future that runs it.
pub fn controller(
    client: Client,
    nodes: Vec<String>,
    node_store: Store<Node>,
) -> (Store<Pod>, impl std::future::Future<Output = ()>) {
    let api: Api<Pod> = Api::all(client.clone());
    let ticks = tokio_stream_interval(RESYNC);
    let controller = Controller::new(api, watcher::Config::default())
        .with_config(kube::runtime::controller::Config::default().concurrency(16))
        .reconcile_all_on(ticks);
    let pod_store = controller.store();
    let ctx = Arc::new(Ctx {
        client,
        nodes,
        node_store,
        pod_store: pod_store.clone(),
        next_node: AtomicUsize::new(0),
        ips: Mutex::new(HashMap::new()),
    });
    let run = controller
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("pod controller: {e}");
            }
        });
    (pod_store, run)
}

fn tokio_stream_interval(every: Duration) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(tokio::time::interval(every), |mut interval| async move {
        interval.tick().await;
        Some(((), interval))
    })
}

fn error_policy(pod: Arc<Pod>, error: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(pod = %key(&pod), "{error}");
    Action::requeue(RETRY)
}

async fn reconcile(pod: Arc<Pod>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if node.is_empty() {
        if pod.metadata.deletion_timestamp.is_none() {
            ctx.schedule(&pod).await?;
        }
        return Ok(Action::await_change());
    }
    if !ctx.nodes.contains(&node) {
        return Ok(Action::await_change());
    }
    if pod.metadata.deletion_timestamp.is_some() {
        ctx.finish_deletion(&pod).await?;
        return Ok(Action::await_change());
    }
    ctx.update_status(&pod).await
}

impl Ctx {
    async fn schedule(&self, pod: &Pod) -> Result<(), Error> {
        let spec = pod.spec.clone().unwrap_or_default();
        let fitting: Vec<&String> = self
            .nodes
            .iter()
            .filter(|name| {
                self.node_store
                    .get(&ObjectRef::new(name))
                    .is_some_and(|node| fits(&spec, &node))
            })
            .collect();
        if fitting.is_empty() {
            tracing::debug!(pod = %key(pod), "fits none of our nodes, stays Pending");
            return Ok(());
        }
        let node = fitting[self.next_node.fetch_add(1, Ordering::Relaxed) % fitting.len()];
        let ns = pod.namespace().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": { "name": pod.name_any(), "namespace": ns, "uid": pod.uid() },
            "target": { "apiVersion": "v1", "kind": "Node", "name": node },
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &pod.name_any(),
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                tracing::info!(pod = %key(pod), node = %node, "bound");
                Ok(())
            }
            // Already bound (our store lags) or gone: the next event tells.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn finish_deletion(&self, pod: &Pod) -> Result<(), Error> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            // Never delete a newer pod that took the same name.
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => {
                tracing::info!(pod = %key(pod), "deleted terminating pod");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn update_status(&self, pod: &Pod) -> Result<Action, Error> {
        let ip = self.pod_ip(pod)?;
        let desired = desired_status(pod, ip, now_seconds());
        if differs(pod.status.as_ref(), &desired.status) {
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
            let patch = json!({ "status": desired.status });
            match api
                .patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => tracing::debug!(pod = %key(pod), "status updated"),
                Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(desired
            .recheck_in
            .map_or_else(Action::await_change, Action::requeue))
    }

    /// The pod's IP: the one it already has, else the lowest free one. Stable for the pod's life.
    fn pod_ip(&self, pod: &Pod) -> Result<Ipv4Addr, Error> {
        let uid = pod.uid().unwrap_or_default();
        let current = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
            .filter(in_pool);
        let mut ips = self.ips.lock().expect("ip table poisoned");
        if let Some(ip) = current {
            ips.insert(uid, ip);
            return Ok(ip);
        }
        if let Some(ip) = ips.get(&uid) {
            return Ok(*ip);
        }
        // Free the IPs of pods that are gone, then take the lowest one no live pod has.
        let pods = self.pod_store.state();
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        ips.retain(|uid, _| live.contains(uid));
        let mut used: HashSet<Ipv4Addr> = ips.values().copied().collect();
        used.extend(pods.iter().filter_map(|p| {
            p.status
                .as_ref()?
                .pod_ip
                .as_deref()?
                .parse::<Ipv4Addr>()
                .ok()
        }));
        let free = POD_NETS
            .iter()
            .flat_map(|[a, b, c]| (1..=254).map(move |d| Ipv4Addr::new(*a, *b, *c, d)))
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| Error("no free pod IP left in the documentation ranges".into()))?;
        ips.insert(uid, free);
        Ok(free)
    }
}

/// `namespace/name`, for log lines.
fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

fn in_pool(ip: &Ipv4Addr) -> bool {
    let o = ip.octets();
    POD_NETS.contains(&[o[0], o[1], o[2]])
}

/// Whether the pod may run on the node: nodeSelector, required node affinity and taints, the
/// parts of the scheduler's filters that tests use (resources are never short here).
pub fn fits(spec: &PodSpec, node: &Node) -> bool {
    let labels = node.labels();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let affinity_ok = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_none_or(|sel| {
            sel.node_selector_terms
                .iter()
                .any(|t| term_matches(t, node))
        });
    selector_ok && affinity_ok && tolerates_node(spec, node)
}

/// Terms are ORed, requirements within a term ANDed; a term without requirements matches nothing.
fn term_matches(term: &NodeSelectorTerm, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let labels = node.labels();
    let name = node.name_any();
    exprs
        .iter()
        .all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            // metadata.name is the only field the scheduler supports.
            r.key == "metadata.name" && requirement_matches(r, Some(&name))
        })
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|x| number(x)),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Every NoSchedule/NoExecute taint must be tolerated; a cordoned node counts as tainted
/// `node.kubernetes.io/unschedulable:NoSchedule` (DaemonSet pods tolerate that).
fn tolerates_node(spec: &PodSpec, node: &Node) -> bool {
    let node_spec = node.spec.clone().unwrap_or_default();
    let mut taints = node_spec.taints.unwrap_or_default();
    if node_spec.unschedulable == Some(true) {
        taints.push(Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        });
    }
    let tolerations = spec.tolerations.as_deref().unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| {
            tolerations.iter().any(|tol| {
                let key_ok = match tol.key.as_deref() {
                    None | Some("") => tol.operator.as_deref() == Some("Exists"),
                    Some(k) => k == taint.key,
                };
                let value_ok = tol.operator.as_deref() == Some("Exists")
                    || tol.value.as_deref().unwrap_or_default()
                        == taint.value.as_deref().unwrap_or_default();
                let effect_ok = tol
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == taint.effect);
                key_ok && value_ok && effect_ok
            })
        })
}
