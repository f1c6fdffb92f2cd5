//! What `--revoke-credentials` would do, found read-only before anything changes: per
//! ServiceAccount of the pods being quarantined, the other pods that run as it (they lose the
//! same access: the blast radius), the bindings it would be removed from, the group bindings it
//! cannot be removed from, its legacy token Secrets and the bound tokens that stay valid. The
//! confirmation shows exactly this.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::Subject;
use kube::api::ListParams;
use serde::Serialize;

use super::projected_token_volumes;
use crate::error::Result;
use crate::k8s::rbac::{self, Account, Binding};
use crate::k8s::{annotation, name_of, Cluster};

/// The Secret type of legacy (non-expiring) ServiceAccount tokens.
pub const LEGACY_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";

/// Everything revocation would do for one ServiceAccount.
#[derive(Debug, Clone)]
pub struct AccountPlan {
    pub account: Account,
    /// `None` when the account does not exist (its tokens are rejected already).
    pub sa: Option<ServiceAccount>,
    /// The pods quarantined in this run that run as it.
    pub pods: Vec<Pod>,
    /// `NS/POD` of the other pods that run as it.
    pub others: Vec<String>,
    pub removals: Vec<Removal>,
    pub groups: Vec<GroupGrant>,
    pub tokens: Vec<SecretRef>,
    /// `NS/POD (volume V)` for each bound token that stays valid while its pod lives.
    pub projected: Vec<String>,
}

/// A binding the account would be removed from.
#[derive(Debug, Clone)]
pub struct Removal {
    pub binding: Binding,
    /// Its subjects that name the account.
    pub removed: Vec<Subject>,
    /// The subjects that stay.
    pub kept: Vec<Subject>,
}

/// A binding that grants the account something through one of its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupGrant {
    pub binding: String,
    pub group: String,
    pub role: String,
}

/// A legacy token Secret (metadata only: its token is read just before it is deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub uid: String,
}

impl AccountPlan {
    pub fn pod_names(&self) -> Vec<String> {
        self.pods
            .iter()
            .map(|p| {
                let (ns, n) = name_of(p);
                format!("{ns}/{n}")
            })
            .collect()
    }

    /// Whether anything would be written.
    pub fn changes_something(&self) -> bool {
        self.sa.is_some() && (!self.removals.is_empty() || !self.tokens.is_empty())
    }

    /// The preview lines the confirmation (and the dry run) shows.
    pub fn preview(&self) -> Vec<String> {
        let a = &self.account;
        let mut out = vec![format!(
            "revoke the credentials of ServiceAccount {a} (used by {}):",
            self.pod_names().join(", ")
        )];
        if self.sa.is_none() {
            out.push(format!(
                "  ServiceAccount {a} does not exist: its tokens are rejected already; bindings naming it are left alone"
            ));
            return out;
        }
        if self.others.is_empty() {
            out.push(format!("  blast radius: no other pod runs as {a}"));
        } else {
            out.push(format!(
                "  blast radius: {} other pod(s) run as {a} and lose the same access: {}",
                self.others.len(),
                self.others.join(", ")
            ));
        }
        for r in &self.removals {
            let kept = if r.kept.is_empty() {
                "no subject left (kept with an empty list, so release is a patch)".to_string()
            } else {
                format!("kept: {}", describe_subjects(&r.kept))
            };
            out.push(format!(
                "  remove {a} from {} ({}); {kept}",
                r.binding.id(),
                r.binding.role()
            ));
        }
        if self.removals.is_empty() {
            out.push(format!("  no binding names {a}: nothing to remove"));
        }
        for t in &self.tokens {
            out.push(format!(
                "  delete legacy token Secret {}/{} (a stolen copy stops working)",
                a.namespace, t.name
            ));
        }
        for g in &self.groups {
            out.push(format!(
                "  cannot remove per account: {} grants {} to Group {} (every member keeps it)",
                g.binding, g.role, g.group
            ));
        }
        for p in &self.projected {
            out.push(format!(
                "  bound (projected) token of {p} stays valid while the pod lives: delete the pod after evidence (--delete-pod)"
            ));
        }
        out
    }
}

/// "ServiceAccount prod/app, User alice".
pub fn describe_subjects(subjects: &[Subject]) -> String {
    subjects
        .iter()
        .map(|s| match &s.namespace {
            Some(ns) if !ns.is_empty() => format!("{} {ns}/{}", s.kind, s.name),
            _ => format!("{} {}", s.kind, s.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the bindings do to `account`: the ones naming it (removable) and the group grants.
pub fn classify(bindings: &[Binding], account: &Account) -> (Vec<Removal>, Vec<GroupGrant>) {
    let mut removals = Vec::new();
    let mut groups = Vec::new();
    for b in bindings {
        let (removed, kept): (Vec<Subject>, Vec<Subject>) = b
            .subjects
            .iter()
            .cloned()
            .partition(|s| account.named_by(s, b.namespace()));
        if !removed.is_empty() {
            removals.push(Removal {
                binding: b.clone(),
                removed,
                kept,
            });
        }
        if b.is_harmless_default() {
            continue;
        }
        for s in b.subjects.iter().filter(|s| account.in_group(s)) {
            groups.push(GroupGrant {
                binding: b.id(),
                group: s.name.clone(),
                role: b.role(),
            });
        }
    }
    (removals, groups)
}

/// Plans revocation for the ServiceAccounts of `pods` (one plan per account).
pub async fn plan(cluster: &Cluster, pods: &[Pod]) -> Result<Vec<AccountPlan>> {
    let mut by_account: BTreeMap<Account, Vec<Pod>> = BTreeMap::new();
    for p in pods {
        let (ns, _) = name_of(p);
        by_account
            .entry(Account::new(&ns, &service_account_of(p)))
            .or_default()
            .push(p.clone());
    }
    let bindings = rbac::list_bindings(cluster).await?;
    let plans = by_account
        .into_iter()
        .map(|(account, pods)| plan_account(cluster, &bindings, account, pods));
    futures::future::try_join_all(plans).await
}

/// The pod's ServiceAccount (`default` when the spec names none).
pub fn service_account_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

async fn plan_account(
    cluster: &Cluster,
    bindings: &[Binding],
    account: Account,
    pods: Vec<Pod>,
) -> Result<AccountPlan> {
    let ns = account.namespace.clone();
    let sa = cluster
        .namespaced::<ServiceAccount>(&ns)
        .get_opt(&account.name)
        .await?;
    let mine: Vec<String> = pods.iter().map(|p| name_of(p).1).collect();
    let lp = ListParams::default().fields(&format!("spec.serviceAccountName={}", account.name));
    let others = cluster
        .namespaced::<Pod>(&ns)
        .list(&lp)
        .await?
        .iter()
        .map(|p| name_of(p).1)
        .filter(|n| !mine.contains(n))
        .map(|n| format!("{ns}/{n}"))
        .collect();
    let tokens = match &sa {
        Some(sa) => legacy_tokens(cluster, sa).await?,
        None => Vec::new(),
    };
    let (removals, groups) = classify(bindings, &account);
    let projected = pods
        .iter()
        .flat_map(|p| {
            let (pns, pn) = name_of(p);
            projected_token_volumes(p)
                .into_iter()
                .map(move |v| format!("{pns}/{pn} (volume {v})"))
        })
        .collect();
    Ok(AccountPlan {
        account,
        sa,
        pods,
        others,
        removals,
        groups,
        tokens,
        projected,
    })
}

/// The account's legacy token Secrets, found by type and owner annotation (metadata only).
pub async fn legacy_tokens(cluster: &Cluster, sa: &ServiceAccount) -> Result<Vec<SecretRef>> {
    let ns = sa.metadata.namespace.clone().unwrap_or_default();
    let name = sa.metadata.name.clone().unwrap_or_default();
    let uid = sa.metadata.uid.clone().unwrap_or_default();
    let lp = ListParams::default().fields(&format!("type={LEGACY_TOKEN_TYPE}"));
    let metas = cluster.namespaced::<Secret>(&ns).list_metadata(&lp).await?;
    Ok(metas
        .into_iter()
        .filter(|m| {
            let owner = annotation(m, SA_NAME_ANNOTATION) == Some(name.as_str());
            // a Secret made for an earlier account of the same name does not authenticate
            let same = annotation(m, SA_UID_ANNOTATION).is_none_or(|u| u == uid);
            owner && same
        })
        .map(|m| SecretRef {
            name: m.name.unwrap_or_default(),
            uid: m.uid.unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
    use serde_json::json;

    fn rb(ns: &str, name: &str, subjects: serde_json::Value) -> Binding {
        Binding::from_role_binding(
            serde_json::from_value::<RoleBinding>(json!({
                "metadata": {"name": name, "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": subjects,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn bindings_are_sorted_into_removable_and_group_grants() {
        let app = Account::new("prod", "app");
        let shared = rb(
            "prod",
            "shared",
            json!([{"kind": "ServiceAccount", "name": "app"}, {"kind": "User", "name": "alice"}]),
        );
        let other_ns = rb(
            "dev",
            "elsewhere",
            json!([{"kind": "ServiceAccount", "name": "app"}]),
        );
        let group = Binding::from_cluster_role_binding(
            serde_json::from_value::<ClusterRoleBinding>(json!({
                "metadata": {"name": "all-sa"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "Group", "name": "system:serviceaccounts:prod"},
                             {"kind": "ServiceAccount", "name": "app", "namespace": "prod"}],
            }))
            .unwrap(),
        );
        let (removals, groups) = classify(&[shared, other_ns, group], &app);
        let ids: Vec<String> = removals.iter().map(|r| r.binding.id()).collect();
        assert_eq!(
            ids,
            ["RoleBinding prod/shared", "ClusterRoleBinding all-sa"]
        );
        assert_eq!(describe_subjects(&removals[0].kept), "User alice");
        assert_eq!(removals[1].kept.len(), 1);
        assert_eq!(
            groups,
            vec![GroupGrant {
                binding: "ClusterRoleBinding all-sa".into(),
                group: "system:serviceaccounts:prod".into(),
                role: "ClusterRole view".into()
            }]
        );
    }
}
