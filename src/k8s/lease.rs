//! Run locks as Kubernetes Leases (`coordination.k8s.io/v1`, `--lock lease`), for runs inside a
//! cluster whose store cannot hold a lock. The Lease's holderIdentity names the run, the full
//! holder record is its `kirt.dev/lock-holder` annotation; every write carries the
//! resourceVersion it was computed from, so of two runs exactly one takes or renews the Lease
//! (the other gets 409 Conflict). A Lease whose renewTime is older than its
//! leaseDurationSeconds belongs to a run that is gone and is taken over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::Patch;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::Cluster;
use crate::error::{Error, Result};
use crate::runlock::{lost, Attempt, Busy, Held, Holder};

/// The annotation holding the holder's record.
const HOLDER: &str = "kirt.dev/lock-holder";

/// Takes Lease `name` in `ns` for `holder`.
pub async fn lock(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    holder: &Holder,
    lease: Duration,
) -> Result<Attempt> {
    let leases = cluster.namespaced::<Lease>(ns);
    let what = format!("Lease {ns}/{name}");
    for _ in 0..3 {
        let Some(current) = leases.get_opt(name).await? else {
            match leases.create(&fresh(name, holder, lease), false).await {
                Ok(l) => return Ok(Attempt::Acquired(hold(cluster, ns, l, lease))),
                Err(e) if conflict(&e) => continue, // created meanwhile by another run
                Err(e) => return Err(e),
            }
        };
        let spec = current.spec.clone().unwrap_or_default();
        let other = current
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HOLDER))
            .and_then(|h| Holder::parse(h.as_bytes()));
        let renewed_ago = spec.renew_time.as_ref().map(|t| {
            Duration::try_from(jiff::Timestamp::now().duration_since(t.0)).unwrap_or_default()
        });
        let busy = Busy {
            lock: what.clone(),
            lease: spec
                .lease_duration_seconds
                .map(|s| Duration::from_secs(s.max(1) as u64).min(crate::runlock::MAX_LEASE))
                .unwrap_or(lease),
            holder: other,
            renewed_ago,
        };
        let free = spec
            .holder_identity
            .as_deref()
            .unwrap_or_default()
            .is_empty();
        if !free && !busy.stale() {
            return Ok(Attempt::Busy(busy));
        }
        if !free {
            tracing::warn!(
                "taking over the stale {what} of {}",
                busy.holder
                    .as_ref()
                    .map(Holder::to_string)
                    .unwrap_or_else(|| spec.holder_identity.clone().unwrap_or_default())
            );
        }
        let mut patch = take(holder, lease, spec.lease_transitions.unwrap_or(0) + 1);
        patch["metadata"]["resourceVersion"] = json!(current.metadata.resource_version);
        match leases.patch(name, &Patch::Merge(&patch), false).await {
            Ok(l) => return Ok(Attempt::Acquired(hold(cluster, ns, l, lease))),
            Err(e) if conflict(&e) => continue, // another run moved first: look again
            Err(e) => return Err(e),
        }
    }
    Err(Error::failed(format!(
        "{what} kept changing while kirt tried to take it; try again"
    )))
}

fn conflict(e: &Error) -> bool {
    matches!(e, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409)
}

fn identity(h: &Holder) -> String {
    format!("{}/{}", h.host, h.pid)
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

fn fresh(name: &str, h: &Holder, lease: Duration) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: Some([(HOLDER.to_string(), record(h))].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity(h)),
            lease_duration_seconds: Some(seconds(lease)),
            acquire_time: Some(now()),
            renew_time: Some(now()),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

fn record(h: &Holder) -> String {
    String::from_utf8_lossy(&h.to_json()).into_owned()
}

fn seconds(d: Duration) -> i32 {
    d.as_secs().clamp(1, i32::MAX as u64) as i32
}

/// The merge patch that makes `h` the holder.
fn take(h: &Holder, lease: Duration, transitions: i32) -> serde_json::Value {
    json!({
        "metadata": {"annotations": {HOLDER: record(h)}},
        "spec": {
            "holderIdentity": identity(h),
            "leaseDurationSeconds": seconds(lease),
            "acquireTime": now(),
            "renewTime": now(),
            "leaseTransitions": transitions,
        }
    })
}

struct State {
    resource_version: Option<String>,
    lost: Option<Option<Holder>>,
}

fn state(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster handle a background task can own.
fn owned(c: &Cluster) -> Cluster {
    Cluster {
        client: c.client.clone(),
        default_namespace: c.default_namespace.clone(),
        url: c.url.clone(),
        configured_identity: c.configured_identity.clone(),
    }
}

/// Renews the Lease every quarter of its duration until released.
fn hold(cluster: &Cluster, ns: &str, l: Lease, lease: Duration) -> Box<dyn Held> {
    let name = l.metadata.name.clone().unwrap_or_default();
    let st = Arc::new(Mutex::new(State {
        resource_version: l.metadata.resource_version.clone(),
        lost: None,
    }));
    let stop = CancellationToken::new();
    let every = (lease / 4).max(Duration::from_millis(500));
    let task = {
        let (c, ns, name, st, stop) = (
            owned(cluster),
            ns.to_string(),
            name.clone(),
            st.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let leases = c.namespaced::<Lease>(&ns);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                let rv = state(&st).resource_version.clone();
                let patch =
                    json!({"metadata": {"resourceVersion": rv}, "spec": {"renewTime": now()}});
                match leases.patch(&name, &Patch::Merge(&patch), false).await {
                    Ok(l) => state(&st).resource_version = l.metadata.resource_version,
                    Err(e) if conflict(&e) => {
                        let taker = leases.get_opt(&name).await.ok().flatten().and_then(|l| {
                            l.metadata
                                .annotations?
                                .get(HOLDER)
                                .and_then(|h| Holder::parse(h.as_bytes()))
                        });
                        tracing::error!("{}", lost(&format!("Lease {ns}/{name}"), taker.as_ref()));
                        state(&st).lost = Some(taker);
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot renew the run lock Lease; trying again")
                    }
                }
            }
        })
    };
    Box::new(LeaseLock {
        cluster: owned(cluster),
        ns: ns.to_string(),
        name,
        st,
        stop,
        task: Mutex::new(Some(task)),
    })
}

struct LeaseLock {
    cluster: Cluster,
    ns: String,
    name: String,
    st: Arc<Mutex<State>>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

#[async_trait]
impl Held for LeaseLock {
    fn describe(&self) -> String {
        format!("Lease {}/{}", self.ns, self.name)
    }

    fn check(&self) -> Result<()> {
        match &state(&self.st).lost {
            Some(taker) => Err(lost(&self.describe(), taker.as_ref())),
            None => Ok(()),
        }
    }

    async fn release(self: Box<Self>) {
        self.stop.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let (rv, lost) = {
            let s = state(&self.st);
            (s.resource_version.clone(), s.lost.is_some())
        };
        if lost {
            return;
        }
        // free it (only if it is still the version this run wrote)
        let patch = json!({"metadata": {"resourceVersion": rv},
                           "spec": {"holderIdentity": null, "renewTime": null}});
        if let Err(e) = self
            .cluster
            .namespaced::<Lease>(&self.ns)
            .patch(&self.name, &Patch::Merge(&patch), false)
            .await
        {
            tracing::warn!(
                "cannot release {}: {e}; it is taken over once its lease has passed",
                self.describe()
            );
        }
    }
}

impl Drop for LeaseLock {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
