//! Asking the apiserver who may do what, instead of guessing from RBAC objects: whether kirt's
//! own identity may do something (SelfSubjectAccessReview, so that a missing permission is named
//! before anything changes), what another identity may do (SubjectAccessReview, for verifying a
//! revocation) and whether a token still authenticates (TokenReview). Token values are never
//! logged, printed or kept beyond the call.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use serde::Serialize;

use super::Cluster;
use crate::error::{Denied, Error, Result};

/// One permission: verb on resource (with subresource) in a namespace (or cluster-wide), and
/// optionally one object by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Access {
    pub verb: String,
    pub group: String,
    pub resource: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subresource: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Access {
    pub fn new(verb: &str, group: &str, resource: &str) -> Self {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        Access {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: sub.into(),
            namespace: None,
            name: None,
        }
    }

    pub fn ns(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// `resource/sub` as RBAC rules spell it.
    pub fn resource_path(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }

    /// `list secrets in namespace prod`, `get nodes/proxy (cluster-wide)`.
    pub fn describe(&self) -> String {
        let name = self
            .name
            .as_deref()
            .map(|n| format!(" {n}"))
            .unwrap_or_default();
        match &self.namespace {
            Some(ns) => format!(
                "{} {}{name} in namespace {ns}",
                self.verb,
                self.resource_path()
            ),
            None => format!(
                "{} {}{name} (cluster-wide)",
                self.verb,
                self.resource_path()
            ),
        }
    }

    fn attributes(&self) -> ResourceAttributes {
        ResourceAttributes {
            verb: Some(self.verb.clone()),
            group: Some(self.group.clone()),
            resource: Some(self.resource.clone()),
            subresource: (!self.subresource.is_empty()).then(|| self.subresource.clone()),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            ..Default::default()
        }
    }

    /// The error kirt gives when its own identity lacks this permission.
    pub fn denied(&self, identity: &str, detail: impl Into<String>) -> Error {
        Error::Forbidden(Box::new(Denied {
            identity: identity.into(),
            verb: self.verb.clone(),
            resource: self.resource_path(),
            group: self.group.clone(),
            namespace: self.namespace.clone(),
            detail: detail.into(),
        }))
    }
}

/// Whether kirt's identity may do `a`.
pub async fn self_can(cluster: &Cluster, a: &Access) -> Result<bool> {
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(a.attributes()),
            ..Default::default()
        },
        ..Default::default()
    };
    let done = cluster
        .all::<SelfSubjectAccessReview>()
        .create(&review, false)
        .await?;
    Ok(done.status.is_some_and(|s| s.allowed))
}

/// Checks every permission at once; the first one missing is a Forbidden error naming it.
pub async fn require_all(cluster: &Cluster, needed: &[(Access, String)]) -> Result<()> {
    let checks = needed.iter().map(|(a, why)| async move {
        let ok = self_can(cluster, a).await?;
        Ok::<_, Error>((a, why, ok))
    });
    for res in futures::future::join_all(checks).await {
        let (a, why, ok) = res?;
        if !ok {
            return Err(a.denied(&cluster.configured_identity, format!("needed to {why}")));
        }
    }
    Ok(())
}

/// The apiserver's answer for another identity.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The authorizer's reason, e.g. `RBAC: allowed by RoleBinding "x/ns" of Role "y" to …`.
    pub reason: String,
}

/// What `user` (member of `groups`) may do, as the apiserver's authorizers decide it.
pub async fn subject_can(
    cluster: &Cluster,
    user: &str,
    groups: &[String],
    a: &Access,
) -> Result<Verdict> {
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.into()),
            groups: Some(groups.to_vec()),
            resource_attributes: Some(a.attributes()),
            ..Default::default()
        },
        ..Default::default()
    };
    let done = cluster
        .all::<SubjectAccessReview>()
        .create(&review, false)
        .await?;
    let st = done.status.unwrap_or_default();
    Ok(Verdict {
        allowed: st.allowed,
        reason: st.reason.unwrap_or_default(),
    })
}

/// A legacy token kirt read just before deleting its Secret. It lives in memory only (zeroed when
/// dropped) so that a later check in the same process can prove it is rejected.
pub struct HeldToken {
    /// `NS/NAME` of the deleted Secret.
    pub secret: String,
    pub uid: String,
    pub token: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for HeldToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldToken({}, [redacted])", self.secret)
    }
}

/// The user a bearer token authenticates as now, or `None` when the apiserver rejects it.
/// The token goes to the apiserver in the request body only.
pub async fn token_user(cluster: &Cluster, token: &str) -> Result<Option<String>> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let done = cluster.all::<TokenReview>().create(&review, false).await?;
    let st = done.status.unwrap_or_default();
    Ok(if st.authenticated == Some(true) {
        Some(st.user.and_then(|u| u.username).unwrap_or_default())
    } else {
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_describe_themselves_as_rbac_rules_do() {
        let a = Access::new("create", "", "pods/exec").ns("prod");
        assert_eq!(a.resource_path(), "pods/exec");
        assert_eq!(a.describe(), "create pods/exec in namespace prod");
        let b = Access::new("bind", "rbac.authorization.k8s.io", "clusterroles").name("view");
        assert_eq!(b.describe(), "bind clusterroles view (cluster-wide)");
        let e = b.denied("user x", "needed to revoke");
        assert!(e.to_string().contains("cannot bind clusterroles"), "{e}");
    }
}
