//! Which pods a command means: one pod by name, or every pod a label selector matches, in the
//! namespace of `-n` (or of the kubeconfig context), or in all of them with `-A`. Written once
//! for quarantine, release, verify, status and evidence, so their flags and messages agree.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::{Deserialize, Serialize};

use super::selector::Labels;
use super::Cluster;
use crate::context::Ctx;
use crate::error::{Error, Result};

/// The pods to act on: `POD` or `-l SELECTOR`, with `-n`/`-A` from the global flags on the
/// command line, or `namespace`/`all-namespaces` in a playbook step.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
pub struct PodTarget {
    /// The pod (or -l SELECTOR)
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
    /// Every pod matching this label selector (with -A: in every namespace)
    #[arg(short = 'l', long, value_name = "SELECTOR", conflicts_with = "pod")]
    pub selector: Option<String>,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// All namespaces (playbooks; on the command line use -A)
    #[arg(skip)]
    pub all_namespaces: bool,
}

impl PodTarget {
    /// One pod by name in `namespace` (or the default one).
    pub fn pod(name: &str, namespace: Option<String>) -> Self {
        PodTarget {
            pod: Some(name.to_string()),
            namespace,
            ..Default::default()
        }
    }

    /// Exactly one of a pod name and a selector. Checked before the cluster is touched.
    pub fn validate(&self) -> Result<()> {
        match (&self.pod, &self.selector) {
            (Some(_), Some(_)) => Err(Error::usage("give either a pod name or -l, not both")),
            (None, None) => Err(Error::usage(
                "name a pod (POD -n NS) or a label selector (-l app=x)",
            )),
            _ => Ok(()),
        }
    }

    /// The namespace to look in; `None` for all namespaces (`-A`). A namespace given in a
    /// playbook step wins over a global `-A`.
    pub async fn scope(&self, ctx: &Ctx) -> Result<Option<String>> {
        if self.all_namespaces || (ctx.kube.all_namespaces && self.namespace.is_none()) {
            return Ok(None);
        }
        match &self.namespace {
            Some(ns) => Ok(Some(ns.clone())),
            None => Ok(Some(ctx.namespace().await?)),
        }
    }

    /// The namespace of a one-pod command (`-A` makes no sense there).
    pub async fn single_namespace(&self, ctx: &Ctx) -> Result<String> {
        self.scope(ctx).await?.ok_or_else(|| {
            Error::usage(
                "-A works with -l SELECTOR, not with a pod name; for one pod give its namespace with -n",
            )
        })
    }

    /// The pods meant: the named one (NotFound naming the pod or its missing namespace), or the
    /// ones the selector matches (none is NotFound naming selector and scope).
    pub async fn resolve(&self, ctx: &Ctx) -> Result<Vec<Pod>> {
        self.validate()?;
        let cluster = ctx.cluster().await?;
        if let Some(name) = &self.pod {
            let ns = self.single_namespace(ctx).await?;
            return Ok(vec![get_pod(cluster, &ns, name).await?]);
        }
        let selector = self.selector.as_deref().unwrap_or_default();
        let scope = self.scope(ctx).await?;
        let pods = cluster
            .scoped::<Pod>(scope.as_deref())
            .list_labelled(selector)
            .await?;
        if pods.is_empty() {
            if let Some(ns) = &scope {
                ensure_namespace(cluster, ns).await?;
            }
            return Err(Error::not_found(
                match &scope {
                    Some(ns) => format!("pods matching -l {selector} in namespace {ns}"),
                    None => format!("pods matching -l {selector} in any namespace"),
                },
                "check the selector and the namespace (-n, -A)",
            ));
        }
        Ok(pods)
    }
}

/// Reads one pod; a 404 says whether the pod or the whole namespace is missing.
pub async fn get_pod(cluster: &Cluster, ns: &str, name: &str) -> Result<Pod> {
    match cluster.namespaced::<Pod>(ns).get_opt(name).await? {
        Some(p) => Ok(p),
        None => {
            ensure_namespace(cluster, ns).await?;
            Err(Error::not_found(
                format!("pod {ns}/{name}"),
                format!("check the pod name (kubectl get pods -n {ns})"),
            ))
        }
    }
}

/// NotFound naming the namespace when it does not exist; Ok when it does or when kirt may not
/// look.
pub async fn ensure_namespace(cluster: &Cluster, ns: &str) -> Result<()> {
    match cluster.all::<Namespace>().get_opt(ns).await {
        Ok(None) => Err(Error::not_found(
            format!("namespace {ns}"),
            "check -n (kubectl get namespaces)",
        )),
        _ => Ok(()),
    }
}

/// (namespace, name) of a pod.
pub fn name_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

/// The node a pod is scheduled to.
pub fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref())
}

/// A pod's labels.
pub fn labels_of(pod: &Pod) -> Labels {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// An annotation of any object.
pub fn annotation<'a>(meta: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_or_a_selector() {
        assert!(PodTarget::default().validate().is_err());
        let both = PodTarget {
            pod: Some("a".into()),
            selector: Some("app=x".into()),
            ..Default::default()
        };
        assert!(both.validate().is_err());
        assert!(PodTarget::pod("a", None).validate().is_ok());
    }
}
