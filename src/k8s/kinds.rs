//! Kinds known only at run time (objects read back from a backup, their owners): which API
//! resource serves an `apiVersion`/`kind`, asked of the apiserver once per kind.

use std::collections::HashMap;

use kube::api::{ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use serde_json::Value;

use super::{Cluster, Objects};
use crate::error::{Error, Result};

pub struct Kinds<'c> {
    cluster: &'c Cluster,
    cache: HashMap<(String, String), (ApiResource, bool)>,
}

impl<'c> Kinds<'c> {
    pub fn new(cluster: &'c Cluster) -> Self {
        Kinds {
            cluster,
            cache: HashMap::new(),
        }
    }

    /// The resource serving `api_version`/`kind` and whether it is namespaced; not found (exit
    /// 6) when the apiserver does not serve it (a CustomResourceDefinition that is gone).
    pub async fn resolve(&mut self, api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
        let k = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.cache.get(&k) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.cluster.client, &gvk)
            .await
            .map_err(|e| match e {
                kube::Error::Api(ref s) if s.code == 404 => Error::not_found(
                    format!("{kind} ({api_version}) on {}", self.cluster.url),
                    "the apiserver does not serve this kind: restore its CustomResourceDefinition (or enable its API) first",
                ),
                kube::Error::Discovery(_) => Error::not_found(
                    format!("{kind} ({api_version}) on {}", self.cluster.url),
                    "the apiserver does not serve this kind: restore its CustomResourceDefinition (or enable its API) first",
                ),
                e => self.cluster.op("get", "", group).err(e),
            })?;
        let r = (ar, caps.scope == Scope::Namespaced);
        self.cache.insert(k, r.clone());
        Ok(r)
    }

    /// The objects of `obj`'s kind in its namespace (cluster-wide for cluster-scoped kinds).
    pub async fn objects_of(&mut self, obj: &Value) -> Result<Objects<'c, DynamicObject>> {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let (ar, namespaced) = self.resolve(api_version, kind).await?;
        let ns = obj["metadata"]["namespace"].as_str().filter(|_| namespaced);
        Ok(self.cluster.dynamic_in(ns, &ar))
    }

    /// The objects of a kind in `ns` (`None`: all namespaces, or a cluster-scoped kind).
    pub async fn objects(
        &mut self,
        api_version: &str,
        kind: &str,
        ns: Option<&str>,
    ) -> Result<Objects<'c, DynamicObject>> {
        let (ar, namespaced) = self.resolve(api_version, kind).await?;
        Ok(self.cluster.dynamic_in(ns.filter(|_| namespaced), &ar))
    }
}

/// An API object (JSON) as kube's dynamic type.
pub fn dynamic(obj: &Value) -> Result<DynamicObject> {
    serde_json::from_value(obj.clone())
        .map_err(|e| Error::json("an object read from the backup", e))
}
