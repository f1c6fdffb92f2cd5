//! The credentials part of `kirt quarantine verify`: asks the apiserver, not kirt's own records,
//! what the pod's ServiceAccount may still do. A SubjectAccessReview for the account (its user
//! and groups) over a fixed list of sensitive permissions, the group bindings that still grant it
//! something, bindings that name it again after a revocation, and the legacy tokens kirt deleted
//! (gone, and — when kirt still holds the token in this process — rejected by a TokenReview).

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use kube::api::ListParams;
use serde::Serialize;

use super::plan::{classify, service_account_of, GroupGrant};
use super::{projected_token_volumes, revocation_of};
use crate::context::Ctx;
use crate::error::Result;
use crate::k8s::access::{self, Access};
use crate::k8s::rbac::{self, Account, BindingKind};
use crate::k8s::{name_of, Cluster};

/// (verb, API group, resource[/subresource], namespaced): what an intruder holding the token
/// would reach for first.
pub const SENSITIVE: [(&str, &str, &str, bool); 8] = [
    ("get", "", "secrets", true),
    ("list", "", "secrets", true),
    ("create", "", "pods/exec", true),
    ("create", "", "pods", true),
    ("create", "rbac.authorization.k8s.io", "rolebindings", true),
    ("create", "", "serviceaccounts/token", true),
    ("get", "", "nodes/proxy", false),
    ("*", "*", "*", false),
];

#[derive(Debug, Clone, Serialize)]
pub struct CredentialsVerdict {
    pub service_account: String,
    /// Nothing sensitive is allowed and nothing kirt revoked came back.
    pub contained: bool,
    /// kirt's revocation record on the account lists this pod.
    pub revoked: bool,
    /// SubjectAccessReviews asked.
    pub reviews: usize,
    pub still_allowed: Vec<StillAllowed>,
    pub group_bindings: Vec<GroupGrant>,
    /// Bindings that name the account.
    pub bindings_naming_it: Vec<String>,
    pub token_secrets: Vec<TokenCheck>,
    /// Why it is not contained (empty when it is).
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StillAllowed {
    pub access: String,
    /// The authorizer's reason (which binding).
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenCheck {
    pub secret: String,
    pub ok: bool,
    pub status: String,
}

/// Every sensitive permission, in the account's namespace and each namespace where a binding
/// still applies to it, plus the cluster-wide ones.
fn accesses(namespaces: &BTreeSet<String>) -> Vec<Access> {
    let mut out = Vec::new();
    for (verb, group, resource, namespaced) in SENSITIVE {
        if namespaced {
            out.extend(
                namespaces
                    .iter()
                    .map(|ns| Access::new(verb, group, resource).ns(ns)),
            );
        } else {
            out.push(Access::new(verb, group, resource));
        }
    }
    out
}

pub async fn check(ctx: &Ctx, pod: &Pod) -> Result<CredentialsVerdict> {
    let cluster = ctx.cluster().await?;
    let (ns, name) = name_of(pod);
    let account = Account::new(&ns, &service_account_of(pod));
    let bindings = rbac::list_bindings(cluster).await?;
    let (removals, groups) = classify(&bindings, &account);
    let mut namespaces = BTreeSet::from([ns.clone()]);
    for b in bindings
        .iter()
        .filter(|b| b.kind == BindingKind::RoleBinding)
    {
        if !b.matches(&account).is_empty() && !b.is_harmless_default() {
            namespaces.extend(b.namespace().map(String::from));
        }
    }
    let wanted = accesses(&namespaces);
    let (user, member_of) = (account.user(), account.groups());
    let reviews = wanted.iter().map(|a| {
        let (user, member_of) = (&user, &member_of);
        async move {
            Ok::<_, crate::Error>((a, access::subject_can(cluster, user, member_of, a).await?))
        }
    });
    let verdicts = futures::future::try_join_all(reviews).await?;
    let mut v = CredentialsVerdict {
        service_account: account.to_string(),
        contained: false,
        revoked: false,
        reviews: wanted.len(),
        still_allowed: Vec::new(),
        group_bindings: groups.clone(),
        bindings_naming_it: removals.iter().map(|r| r.binding.id()).collect(),
        token_secrets: Vec::new(),
        problems: Vec::new(),
        notes: Vec::new(),
    };
    for (a, verdict) in verdicts.into_iter().filter(|(_, v)| v.allowed) {
        v.problems.push(format!(
            "ServiceAccount {account} may still {}: {}",
            a.describe(),
            verdict.reason
        ));
        v.still_allowed.push(StillAllowed {
            access: a.describe(),
            reason: verdict.reason,
        });
    }
    for g in &groups {
        v.problems.push(format!(
            "{} grants {} to Group {}, which {account} belongs to: kirt cannot take one account out of a group — narrow or delete that binding",
            g.binding, g.role, g.group
        ));
    }
    let sa = cluster
        .namespaced::<ServiceAccount>(&ns)
        .get_opt(&account.name)
        .await?;
    let rec = sa.as_ref().and_then(revocation_of);
    v.revoked = rec
        .as_ref()
        .is_some_and(|r| r.pods.contains(&format!("{ns}/{name}")));
    for b in &v.bindings_naming_it {
        if v.revoked {
            v.problems
                .push(format!("{b} names {account} again after the revocation"));
        } else {
            v.notes.push(format!(
                "{b} names {account} (not revoked: kirt quarantine POD --revoke-credentials)"
            ));
        }
    }
    if let Some(rec) = rec.filter(|_| v.revoked) {
        for t in &rec.token_secrets {
            let c = check_token(ctx, cluster, &ns, &t.name, &t.uid, t.reviewed.as_deref()).await?;
            if !c.ok {
                v.problems
                    .push(format!("legacy token Secret {}: {}", c.secret, c.status));
            }
            v.token_secrets.push(c);
        }
    }
    for vol in projected_token_volumes(pod) {
        v.notes.push(format!(
            "the pod's bound (projected) token (volume {vol}) authenticates until the pod is deleted or it expires: kirt cannot revoke it while the pod lives (kirt quarantine POD --delete-pod, after evidence)"
        ));
    }
    v.contained = v.problems.is_empty();
    Ok(v)
}

/// A legacy token kirt deleted: its Secret must be gone, and if this process still holds the
/// token, a TokenReview must reject it.
async fn check_token(
    ctx: &Ctx,
    cluster: &Cluster,
    ns: &str,
    name: &str,
    uid: &str,
    reviewed: Option<&str>,
) -> Result<TokenCheck> {
    let lp = ListParams::default().fields(&format!("metadata.name={name}"));
    let still = cluster
        .namespaced::<Secret>(ns)
        .list_metadata(&lp)
        .await?
        .iter()
        .any(|m| m.uid.as_deref() == Some(uid));
    let secret = format!("{ns}/{name}");
    if still {
        return Ok(TokenCheck {
            secret,
            ok: false,
            status: "still exists: its token still authenticates".into(),
        });
    }
    let Some(token) = ctx.held_token(uid) else {
        let at_revocation = reviewed
            .map(|r| format!("; TokenReview at revocation: {r}"))
            .unwrap_or_default();
        return Ok(TokenCheck {
            secret,
            ok: true,
            status: format!("deleted{at_revocation}"),
        });
    };
    Ok(match access::token_user(cluster, &token).await? {
        None => TokenCheck {
            secret,
            ok: true,
            status: "deleted; TokenReview now: unauthenticated".into(),
        },
        Some(user) => TokenCheck {
            secret,
            ok: false,
            status: format!("deleted, but its token still authenticates as {user}"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_permissions_are_asked_per_namespace_and_once_cluster_wide() {
        let ns = BTreeSet::from(["a".to_string(), "b".to_string()]);
        let all = accesses(&ns);
        assert_eq!(all.len(), 6 * 2 + 2);
        assert!(all
            .iter()
            .any(|a| a.describe() == "create pods/exec in namespace b"));
        assert!(all
            .iter()
            .any(|a| a.describe() == "get nodes/proxy (cluster-wide)"));
        assert!(all.iter().any(|a| a.describe() == "* * (cluster-wide)"));
    }
}
