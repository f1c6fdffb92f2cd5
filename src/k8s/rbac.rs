//! RBAC as the apiserver applies it to one ServiceAccount: which subjects of a RoleBinding or
//! ClusterRoleBinding denote the account (by name or through one of its groups), and one view
//! of both binding kinds so that evidence (what grants it access), quarantine (revoke it) and
//! release (restore it) read and write them the same way.

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Patch;
use serde::{Deserialize, Serialize};

use super::Cluster;
use crate::error::Result;

/// Group bindings the apiserver creates for every authenticated identity (discovery, self
/// reviews, public info): they grant nothing an intruder can use, so they are not reported.
const HARMLESS_DEFAULTS: [&str; 4] = [
    "system:basic-user",
    "system:discovery",
    "system:public-info-viewer",
    "system:service-account-issuer-discovery",
];

/// A ServiceAccount as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Account {
    pub namespace: String,
    pub name: String,
}

impl Account {
    pub fn new(namespace: &str, name: &str) -> Self {
        Account {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The user name its tokens authenticate as.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// The groups every token of the account carries.
    pub fn groups(&self) -> Vec<String> {
        vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", self.namespace),
            "system:authenticated".into(),
        ]
    }

    /// Whether `s` names this account itself (a ServiceAccount subject, whose namespace defaults
    /// to the binding's, or the equivalent User subject): what revocation removes.
    pub fn named_by(&self, s: &Subject, binding_ns: Option<&str>) -> bool {
        match s.kind.as_str() {
            "ServiceAccount" => {
                let ns = s
                    .namespace
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .or(binding_ns);
                ns == Some(self.namespace.as_str()) && s.name == self.name
            }
            "User" => s.name == self.user(),
            _ => false,
        }
    }

    /// Whether `s` is a group the account belongs to: removing it would cut off every member.
    pub fn in_group(&self, s: &Subject) -> bool {
        s.kind == "Group" && self.groups().contains(&s.name)
    }

    /// Why a subject applies to the account (`ServiceAccount NS/SA`, `Group …`, `User …`).
    pub fn matched(&self, s: &Subject, binding_ns: Option<&str>) -> Option<String> {
        if self.named_by(s, binding_ns) {
            Some(match s.kind.as_str() {
                "User" => format!("User {}", s.name),
                _ => format!("ServiceAccount {}/{}", self.namespace, self.name),
            })
        } else if self.in_group(s) {
            Some(format!("Group {}", s.name))
        } else {
            None
        }
    }
}

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BindingKind {
    RoleBinding,
    ClusterRoleBinding,
}

impl BindingKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BindingKind::RoleBinding => "RoleBinding",
            BindingKind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone)]
pub struct Binding {
    pub kind: BindingKind,
    pub metadata: ObjectMeta,
    pub role_ref: RoleRef,
    pub subjects: Vec<Subject>,
}

impl Binding {
    pub fn from_role_binding(b: RoleBinding) -> Self {
        Binding {
            kind: BindingKind::RoleBinding,
            metadata: b.metadata,
            role_ref: b.role_ref,
            subjects: b.subjects.unwrap_or_default(),
        }
    }

    pub fn from_cluster_role_binding(b: ClusterRoleBinding) -> Self {
        Binding {
            kind: BindingKind::ClusterRoleBinding,
            metadata: b.metadata,
            role_ref: b.role_ref,
            subjects: b.subjects.unwrap_or_default(),
        }
    }

    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }

    pub fn uid(&self) -> &str {
        self.metadata.uid.as_deref().unwrap_or_default()
    }

    /// `RoleBinding NS/NAME` or `ClusterRoleBinding NAME`.
    pub fn id(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name()),
            None => format!("{} {}", self.kind.as_str(), self.name()),
        }
    }

    /// `Role NAME` or `ClusterRole NAME`.
    pub fn role(&self) -> String {
        format!("{} {}", self.role_ref.kind, self.role_ref.name)
    }

    /// The resource `bind` must be allowed on to change this binding's subjects.
    pub fn role_resource(&self) -> &'static str {
        if self.role_ref.kind == "Role" {
            "roles"
        } else {
            "clusterroles"
        }
    }

    /// Why the binding applies to the account, one entry per matching subject.
    pub fn matches(&self, account: &Account) -> Vec<String> {
        self.subjects
            .iter()
            .filter_map(|s| account.matched(s, self.namespace()))
            .collect()
    }

    /// A default binding of every authenticated identity to a discovery role.
    pub fn is_harmless_default(&self) -> bool {
        self.kind == BindingKind::ClusterRoleBinding
            && self.role_ref.kind == "ClusterRole"
            && HARMLESS_DEFAULTS.contains(&self.role_ref.name.as_str())
            && self
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("kubernetes.io/bootstrapping"))
                .map(String::as_str)
                == Some("rbac-defaults")
    }
}

/// Every RoleBinding (all namespaces) and ClusterRoleBinding, read concurrently.
pub async fn list_bindings(cluster: &Cluster) -> Result<Vec<Binding>> {
    let rbs = cluster.all::<RoleBinding>();
    let crbs = cluster.all::<ClusterRoleBinding>();
    let (rbs, crbs) = futures::try_join!(rbs.list_all(), crbs.list_all())?;
    Ok(rbs
        .into_iter()
        .map(Binding::from_role_binding)
        .chain(crbs.into_iter().map(Binding::from_cluster_role_binding))
        .collect())
}

/// One binding by kind, namespace and name; `None` when it does not exist.
pub async fn get_binding(
    cluster: &Cluster,
    kind: BindingKind,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Binding>> {
    Ok(match (kind, ns) {
        (BindingKind::RoleBinding, Some(ns)) => cluster
            .namespaced::<RoleBinding>(ns)
            .get_opt(name)
            .await?
            .map(Binding::from_role_binding),
        _ => cluster
            .all::<ClusterRoleBinding>()
            .get_opt(name)
            .await?
            .map(Binding::from_cluster_role_binding),
    })
}

/// Re-reads a binding (attempt `n` > 0 of a conflict-retried write), or returns the one in hand.
pub async fn current(cluster: &Cluster, b: &Binding, n: usize) -> Result<Option<Binding>> {
    if n == 0 {
        return Ok(Some(b.clone()));
    }
    get_binding(cluster, b.kind, b.namespace(), b.name()).await
}

/// A merge patch of a binding by kirt's field manager (dry-run honoured).
pub async fn patch_binding(
    cluster: &Cluster,
    b: &Binding,
    patch: &serde_json::Value,
    dry_run: bool,
) -> Result<Binding> {
    let patch = Patch::Merge(patch);
    Ok(match (b.kind, b.namespace()) {
        (BindingKind::RoleBinding, Some(ns)) => Binding::from_role_binding(
            cluster
                .namespaced::<RoleBinding>(ns)
                .patch(b.name(), &patch, dry_run)
                .await?,
        ),
        _ => Binding::from_cluster_role_binding(
            cluster
                .all::<ClusterRoleBinding>()
                .patch(b.name(), &patch, dry_run)
                .await?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            api_group: None,
        }
    }

    #[test]
    fn subjects_follow_apiserver_rules() {
        let app = Account::new("prod", "app");
        let sa = |name: &str, ns: Option<&str>| subject("ServiceAccount", name, ns);
        assert!(app.matched(&sa("app", Some("prod")), None).is_some());
        assert!(app.matched(&sa("app", None), Some("prod")).is_some());
        assert!(app.matched(&sa("app", None), None).is_none());
        assert!(app.matched(&sa("app", Some("dev")), None).is_none());
        let g = subject("Group", "system:serviceaccounts:prod", None);
        assert_eq!(
            app.matched(&g, None).as_deref(),
            Some("Group system:serviceaccounts:prod")
        );
        assert!(app.in_group(&g) && !app.named_by(&g, None));
        assert!(!app.in_group(&subject("Group", "system:serviceaccounts:dev", None)));
        let u = subject("User", "system:serviceaccount:prod:app", None);
        assert!(app.named_by(&u, None));
        assert!(!app.named_by(&subject("User", "alice", None), None));
    }

    #[test]
    fn only_bootstrap_discovery_bindings_are_harmless() {
        let crb = |role: &str, bootstrap: bool| {
            let mut b: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
                "metadata": {"name": role},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": "Group", "name": "system:authenticated"}],
            }))
            .unwrap();
            if bootstrap {
                b.metadata.labels = Some(
                    [(
                        "kubernetes.io/bootstrapping".to_string(),
                        "rbac-defaults".to_string(),
                    )]
                    .into(),
                );
            }
            Binding::from_cluster_role_binding(b)
        };
        assert!(crb("system:discovery", true).is_harmless_default());
        assert!(!crb("system:discovery", false).is_harmless_default());
        assert!(!crb("cluster-admin", true).is_harmless_default());
        assert_eq!(crb("view", false).role_resource(), "clusterroles");
    }
}
