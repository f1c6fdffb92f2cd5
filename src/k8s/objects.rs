//! Typed access to one kind of object on the cluster. The resource name and API group come from
//! the type, so every error names exactly the permission it lacks (`cannot patch pods in
//! namespace prod`) and the server it could not reach; writes go through kirt's field manager
//! and honour dry-run.

use std::fmt::Debug;

use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch};
use kube::core::NamespaceResourceScope;
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::op::{KubeContext, Op};
use super::{delete_params, patch_params, post_params, Cluster};
use crate::error::{Error, Result};

/// Objects of kind `K` in one namespace, or cluster-wide (cluster-scoped kinds, or a list across
/// all namespaces).
pub struct Objects<'c, K> {
    api: Api<K>,
    cluster: &'c Cluster,
    namespace: Option<String>,
    resource: String,
    group: String,
}

impl Cluster {
    /// `K` objects in namespace `ns`.
    pub fn namespaced<K>(&self, ns: &str) -> Objects<'_, K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Objects::new(
            self,
            Api::namespaced(self.client.clone(), ns),
            Some(ns),
            &(),
        )
    }

    /// Cluster-scoped `K` objects, or namespaced ones listed across all namespaces.
    pub fn all<K>(&self) -> Objects<'_, K>
    where
        K: Resource<DynamicType = ()>,
    {
        Objects::new(self, Api::all(self.client.clone()), None, &())
    }

    /// `K` objects in `ns`, or across all namespaces when `None` (lists only).
    pub fn scoped<K>(&self, ns: Option<&str>) -> Objects<'_, K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => self.namespaced(ns),
            None => self.all(),
        }
    }

    /// Objects of a kind known only at run time in `ns`, or cluster-wide when `None`.
    pub fn dynamic_in(&self, ns: Option<&str>, ar: &ApiResource) -> Objects<'_, DynamicObject> {
        let api = match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        };
        Objects::new(self, api, ns, ar)
    }

    /// Objects of a kind known only at run time (owner references, workloads by kind).
    pub fn dynamic(&self, ns: &str, ar: &ApiResource) -> Objects<'_, DynamicObject> {
        Objects::new(
            self,
            Api::namespaced_with(self.client.clone(), ns, ar),
            Some(ns),
            ar,
        )
    }
}

impl<'c, K: Resource> Objects<'c, K> {
    fn new(cluster: &'c Cluster, api: Api<K>, ns: Option<&str>, dt: &K::DynamicType) -> Self {
        Objects {
            api,
            cluster,
            namespace: ns.map(Into::into),
            resource: K::plural(dt).into_owned(),
            group: K::group(dt).into_owned(),
        }
    }

    /// The operation `verb` on these objects (or on `name`).
    pub fn op(&self, verb: &str, name: Option<&str>) -> Op {
        let mut op = Op::new(verb, &self.resource, &self.group, &self.cluster.url)
            .ns_opt(self.namespace.as_deref());
        if let Some(n) = name {
            op = op.name(n);
        }
        op
    }

    /// The same operation on a subresource (`pods/log`).
    pub fn sub_op(&self, verb: &str, sub: &str, name: &str) -> Op {
        let mut op = self.op(verb, Some(name));
        op.resource = format!("{}/{sub}", self.resource);
        op
    }

    /// The kube `Api` for calls without a helper here (log streams); map errors with `op`.
    pub fn api(&self) -> &Api<K> {
        &self.api
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }
}

impl<K> Objects<'_, K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug,
{
    pub async fn get(&self, name: &str) -> Result<K> {
        self.api.get(name).await.op(&self.op("get", Some(name)))
    }

    /// `None` when the object does not exist.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>> {
        self.api.get_opt(name).await.op(&self.op("get", Some(name)))
    }

    pub async fn list(&self, lp: &ListParams) -> Result<Vec<K>> {
        Ok(self.api.list(lp).await.op(&self.op("list", None))?.items)
    }

    pub async fn list_all(&self) -> Result<Vec<K>> {
        self.list(&ListParams::default()).await
    }

    /// How many objects there are, listing metadata only (a Secret's data is never fetched).
    pub async fn count(&self) -> Result<usize> {
        Ok(self
            .api
            .list_metadata(&ListParams::default())
            .await
            .op(&self.op("list", None))?
            .items
            .len())
    }

    /// Metadata only (a Secret's data is never fetched), e.g. with a field selector on `type`.
    pub async fn list_metadata(&self, lp: &ListParams) -> Result<Vec<kube::api::ObjectMeta>> {
        Ok(self
            .api
            .list_metadata(lp)
            .await
            .op(&self.op("list", None))?
            .items
            .into_iter()
            .map(|o| o.metadata)
            .collect())
    }

    /// Objects matching a label selector.
    pub async fn list_labelled(&self, selector: &str) -> Result<Vec<K>> {
        self.list(&ListParams::default().labels(selector)).await
    }

    pub async fn create(&self, obj: &K, dry_run: bool) -> Result<K> {
        let name = obj.meta().name.as_deref();
        self.api
            .create(&post_params(dry_run), obj)
            .await
            .op(&self.op("create", name))
    }

    /// Replaces the object (PUT): guarded by the resourceVersion it carries (409 if it changed).
    pub async fn replace(&self, obj: &K, dry_run: bool) -> Result<K> {
        let name = obj.meta().name.clone().unwrap_or_default();
        self.api
            .replace(&name, &post_params(dry_run), obj)
            .await
            .op(&self.op("update", Some(&name)))
    }

    /// A patch (merge, strategic, JSON) by kirt's field manager.
    pub async fn patch<P: Serialize + Debug>(
        &self,
        name: &str,
        patch: &Patch<P>,
        dry_run: bool,
    ) -> Result<K> {
        self.api
            .patch(name, &patch_params(dry_run), patch)
            .await
            .op(&self.op("patch", Some(name)))
    }

    /// Deletes `name`; an object that is already gone is not an error.
    pub async fn delete(&self, name: &str, dry_run: bool) -> Result<()> {
        match self.api.delete(name, &delete_params(dry_run)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.op("delete", Some(name)).err(e)),
        }
    }

    /// Deletes `name` only if it is still the object with this uid (not a successor of the same
    /// name); one that is already gone is not an error.
    pub async fn delete_uid(&self, name: &str, uid: &str, dry_run: bool) -> Result<()> {
        let mut dp = delete_params(dry_run);
        dp.preconditions = Some(kube::api::Preconditions {
            uid: Some(uid.into()),
            resource_version: None,
        });
        match self.api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(self.op("delete", Some(name)).err(e)),
        }
    }

    /// Whether the apiserver's watch cache (which its own informers follow) still holds `name`
    /// with this uid: a read at resourceVersion 0, served from that cache, metadata only.
    pub async fn in_watch_cache(&self, name: &str, uid: &str) -> Result<bool> {
        let meta = self
            .api
            .get_metadata_opt_with(name, &kube::api::GetParams::any())
            .await
            .op(&self.op("get", Some(name)))?;
        Ok(meta.is_some_and(|m| m.metadata.uid.as_deref() == Some(uid)))
    }

    /// The object attempt `n` of a conflict-retried write works on: the one in hand first, then
    /// a fresh read (see [`super::write::retry_conflict`]). An object re-created under the same
    /// name since (another UID) is not the one kirt was asked to change: that is an error, never
    /// a silent switch to the namesake.
    pub async fn current(&self, in_hand: &K, n: usize) -> Result<K> {
        if n == 0 {
            return Ok(in_hand.clone());
        }
        let name = in_hand.meta().name.as_deref().unwrap_or_default();
        let fresh = self.get(name).await?;
        match (&in_hand.meta().uid, &fresh.meta().uid) {
            (Some(was), Some(now)) if was != now => Err(Error::Failed(format!(
                "{} was deleted and re-created under the same name while kirt was changing it (UID {was} → {now}); the new object was not touched — look at it and re-run",
                self.op("patch", Some(name)).target()
            ))),
            _ => Ok(fresh),
        }
    }
}
