//! Kubernetes plumbing written once: the client from kubeconfig/in-cluster config ([`Cluster`]),
//! typed object access that names the permission an error lacks ([`Objects`], [`Op`]),
//! resourceVersion-guarded writes retried on conflict ([`write`]), Events ([`Recorder`]), which
//! pods a command means ([`PodTarget`]), label selectors ([`selector`]), the labels and
//! annotations kirt writes ([`keys`]), RBAC bindings as they apply to a ServiceAccount ([`rbac`]),
//! access/token reviews ([`access`]), run locks held as Leases ([`lease`]) and kinds known only at
//! run time ([`kinds`]). Actions never build
//! an `Api` or map a kube error themselves.

pub mod access;
mod cluster;
mod events;
pub mod keys;
pub mod kinds;
pub mod lease;
mod objects;
mod op;
mod pods;
pub mod rbac;
pub mod selector;
pub mod write;

pub use cluster::{Cluster, KubeOptions};
pub use events::{event_time, involving, EventType, Recorder};
pub use objects::Objects;
pub use op::{error_chain, status_code, KubeContext, Op, ESCALATION};
pub use pods::{annotation, ensure_namespace, get_pod, labels_of, name_of, node_of, PodTarget};

use kube::api::{DeleteParams, PatchParams, PostParams};

/// Field manager for every write kirt makes (server-side apply bookkeeping, audit logs).
pub const FIELD_MANAGER: &str = "kirt";

pub fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

pub fn patch_params(dry_run: bool) -> PatchParams {
    let mut p = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if dry_run {
        p = p.dry_run();
    }
    p
}

pub fn delete_params(dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        ..Default::default()
    }
}

/// Kubernetes timestamp (RFC 3339, seconds), as kirt writes it into annotations.
pub fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Runs `f` on every item with at most `n` API calls in flight; results in input order.
pub async fn bounded<I, T, F, Fut>(items: Vec<I>, n: usize, f: F) -> Vec<T>
where
    F: Fn(I) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    use futures::stream::{self, StreamExt};
    stream::iter(items.into_iter().map(f))
        .buffered(n.max(1))
        .collect()
        .await
}
