//! Revocation, after the preview was confirmed: the ServiceAccount's record first (which bindings
//! kirt is about to change), then each binding without the account (one guarded patch each, its
//! original subjects recorded on it), then the legacy token Secrets (each token read, the Secret
//! deleted, and a TokenReview repeated until the apiserver rejects the token), then the record
//! corrected to what really happened. A binding that fails does not stop the others: the result
//! lists which changed, and release undoes exactly those.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::Subject;
use kube::api::Patch;
use kube::Resource;
use serde::Serialize;
use serde_json::{json, Value};
use zeroize::{Zeroize, Zeroizing};

use super::plan::{AccountPlan, GroupGrant, SecretRef, LEGACY_TOKEN_TYPE};
use super::{record_of, revocation_of, BindingEntry, BindingRecord, Revocation, TokenEntry};
use crate::actions::quarantine::Outcome;
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::k8s::access::{self, Access, HeldToken};
use crate::k8s::keys::{CREDENTIALS_REVOKED, ORIGINAL_SUBJECTS};
use crate::k8s::rbac::{self, Account, Binding};
use crate::k8s::write::retry_conflict;
use crate::k8s::{Cluster, EventType, Recorder, ESCALATION};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// How long kirt waits for the apiserver to reject a deleted Secret's token. It caches successful
/// token authentications for 10 s, so a token used just before may work that long.
const REJECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the watch cache the apiserver's own informer is assumed to have caught up.
const INFORMER_MARGIN: Duration = Duration::from_millis(100);

/// What revocation did for one ServiceAccount.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialsReport {
    pub service_account: String,
    pub pods: Vec<String>,
    /// Other pods running as the account: they lost the same access.
    pub blast_radius: Vec<String>,
    pub bindings: Vec<BindingChange>,
    /// Bindings through a group of the account: not removable per account.
    pub group_bindings: Vec<GroupGrant>,
    pub token_secrets: Vec<TokenChange>,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub exit: Exit,
}

/// One binding's subjects before and after.
#[derive(Debug, Clone, Serialize)]
pub struct BindingChange {
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub role: String,
    pub outcome: Outcome,
    pub before: Vec<Subject>,
    pub after: Vec<Subject>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl BindingChange {
    /// `b` as read, nothing changed yet.
    pub fn unchanged(b: &Binding) -> Self {
        BindingChange {
            kind: b.kind.as_str().into(),
            namespace: b.namespace().map(String::from),
            name: b.name().into(),
            role: b.role(),
            outcome: Outcome::Unchanged,
            before: b.subjects.clone(),
            after: b.subjects.clone(),
            detail: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenChange {
    pub secret: String,
    pub outcome: Outcome,
    pub detail: String,
}

impl CredentialsReport {
    /// The lines the quarantine result prints for this account.
    pub fn notes(&self) -> Vec<String> {
        let mut out = vec![format!(
            "credentials of ServiceAccount {} (pods {}):",
            self.service_account,
            self.pods.join(", ")
        )];
        if !self.blast_radius.is_empty() {
            out.push(format!(
                "  blast radius: {} lose the same access",
                self.blast_radius.join(", ")
            ));
        }
        for b in &self.bindings {
            let what = b
                .namespace
                .as_ref()
                .map_or(b.name.clone(), |ns| format!("{ns}/{}", b.name));
            out.push(format!(
                "  {} {what} ({}): {}{}",
                b.kind,
                b.role,
                outcome_word(b.outcome),
                if b.detail.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", b.detail)
                }
            ));
        }
        for t in &self.token_secrets {
            out.push(format!("  token Secret {}: {}", t.secret, t.detail));
        }
        for g in &self.group_bindings {
            out.push(format!(
                "  NOT removable per account: {} grants {} to Group {}",
                g.binding, g.role, g.group
            ));
        }
        out.extend(self.notes.iter().map(|n| format!("  {n}")));
        out
    }
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::Done => "account removed",
        Outcome::WouldDo => "would remove the account",
        Outcome::Unchanged => "unchanged",
        Outcome::Failed => "FAILED",
    }
}

/// The patch that removes `account` from `b` (recording the subjects before kirt's first
/// change), the record written and the subjects after; `None` when `b` does not name it.
pub fn removal_patch(
    b: &Binding,
    account: &Account,
) -> Option<(Value, BindingRecord, Vec<Subject>)> {
    let after: Vec<Subject> = b
        .subjects
        .iter()
        .filter(|s| !account.named_by(s, b.namespace()))
        .cloned()
        .collect();
    if after.len() == b.subjects.len() {
        return None;
    }
    // A second revocation keeps the first record: it holds the subjects before any kirt change.
    let mut record = record_of(b).unwrap_or_else(|| BindingRecord {
        subjects: b.subjects.clone(),
        revoked_for: Vec::new(),
    });
    let me = account.to_string();
    if !record.revoked_for.contains(&me) {
        record.revoked_for.push(me);
    }
    let patch = json!({
        "metadata": {
            "resourceVersion": b.metadata.resource_version,
            "annotations": {ORIGINAL_SUBJECTS: serde_json::to_string(&record).unwrap_or_default()},
        },
        "subjects": after,
    });
    Some((patch, record, after))
}

/// A 403 from the RBAC escalation check names what is really missing: `bind` on the role.
fn bind_denied(e: Error, b: &Binding, identity: &str) -> Error {
    match &e {
        Error::Forbidden(d) if d.detail.starts_with(ESCALATION) => {
            let mut a = Access::new("bind", RBAC_GROUP, b.role_resource()).name(&b.role_ref.name);
            if let Some(ns) = b.namespace() {
                a = a.ns(ns);
            }
            a.denied(
                identity,
                format!(
                    "changing the subjects of {} needs `bind` on {} or holding every permission it grants; {}",
                    b.id(),
                    b.role(),
                    d.detail
                ),
            )
        }
        _ => e,
    }
}

/// Before anything changes: every permission revocation needs, checked with the apiserver
/// (SelfSubjectAccessReviews, and a server-side dry run of each binding change, which also runs
/// the RBAC escalation check). The first one missing is a Forbidden error naming it.
pub async fn preflight(cluster: &Cluster, plans: &[AccountPlan], dry: bool) -> Result<()> {
    let mut needed: Vec<(Access, String)> = Vec::new();
    for p in plans.iter().filter(|p| p.changes_something()) {
        let (ns, name) = (&p.account.namespace, &p.account.name);
        let why = format!("revoke the credentials of ServiceAccount {}", p.account);
        needed.push((
            Access::new("patch", "", "serviceaccounts")
                .ns(ns)
                .name(name),
            format!("record the revocation on ServiceAccount {}", p.account),
        ));
        if !p.tokens.is_empty() {
            needed.push((Access::new("delete", "", "secrets").ns(ns), why.clone()));
            if !dry {
                needed.push((
                    Access::new("get", "", "secrets").ns(ns),
                    format!("{why} (read each legacy token for the TokenReview)"),
                ));
                needed.push((
                    Access::new("create", "authentication.k8s.io", "tokenreviews"),
                    format!("{why} (prove each deleted token is rejected)"),
                ));
            }
        }
    }
    access::require_all(cluster, &needed).await?;
    let trials = plans
        .iter()
        .filter(|p| p.sa.is_some())
        .flat_map(|p| p.removals.iter().map(move |r| (&p.account, &r.binding)))
        .map(|(account, b)| async move {
            let Some((mut patch, _, _)) = removal_patch(b, account) else {
                return Ok(());
            };
            // a trial writes nothing: a binding changed since the plan must not fail it
            if let Some(m) = patch["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            rbac::patch_binding(cluster, b, &patch, true)
                .await
                .map(|_| ())
                .map_err(|e| bind_denied(e, b, &cluster.configured_identity))
        });
    futures::future::try_join_all(trials).await?;
    Ok(())
}

/// Writes the account's revocation record: `edit` changes the one on the server (or a fresh
/// one), guarded by resourceVersion and retried on conflict (the token controller also writes
/// ServiceAccounts).
async fn write_record(
    cluster: &Cluster,
    dry: bool,
    sa: &ServiceAccount,
    edit: impl Fn(&mut Revocation),
) -> Result<()> {
    let ns = sa.metadata.namespace.clone().unwrap_or_default();
    let name = sa.metadata.name.clone().unwrap_or_default();
    let sas = cluster.namespaced::<ServiceAccount>(&ns);
    retry_conflict(|n| {
        let (sas, name, edit) = (&sas, &name, &edit);
        async move {
            let cur = sas.current(sa, n).await?;
            let mut rec = revocation_of(&cur).unwrap_or_default();
            edit(&mut rec);
            let patch = json!({"metadata": {
                "resourceVersion": cur.metadata.resource_version,
                "annotations": {CREDENTIALS_REVOKED: serde_json::to_string(&rec).unwrap_or_default()},
            }});
            sas.patch(name, &Patch::Merge(&patch), dry).await?;
            Ok(())
        }
    })
    .await
}

/// Revokes what `plan` found (the preview was confirmed and the preflight passed).
pub async fn execute(ctx: &Ctx, plan: &AccountPlan, by: &str, at: &str) -> CredentialsReport {
    let mut report = CredentialsReport {
        service_account: plan.account.to_string(),
        pods: plan.pod_names(),
        blast_radius: plan.others.clone(),
        bindings: Vec::new(),
        group_bindings: plan.groups.clone(),
        token_secrets: Vec::new(),
        notes: Vec::new(),
        exit: Exit::Ok,
    };
    let Some(sa) = &plan.sa else {
        report.notes.push(format!(
            "ServiceAccount {} does not exist: its tokens are rejected already; bindings naming it were left alone",
            plan.account
        ));
        return report;
    };
    if !plan.changes_something() {
        report.notes.push(format!(
            "no binding names ServiceAccount {} and it has no legacy token: nothing to revoke",
            plan.account
        ));
    } else if let Err(e) = run(ctx, plan, sa, by, at, &mut report).await {
        report.exit = e.exit();
        report.notes.push(format!("FAILED: {e}"));
    }
    if !plan.projected.is_empty() {
        report.notes.push(format!(
            "bound (projected) tokens stay valid while their pod lives: {} — delete the pod after evidence (kirt quarantine POD --delete-pod)",
            plan.projected.join(", ")
        ));
    }
    if report.exit == Exit::Ok && report.has_failures() {
        report.exit = Exit::Partial;
    }
    report
}

impl CredentialsReport {
    fn has_failures(&self) -> bool {
        self.bindings.iter().any(|b| b.outcome == Outcome::Failed)
            || self
                .token_secrets
                .iter()
                .any(|t| t.outcome == Outcome::Failed)
    }
}

async fn run(
    ctx: &Ctx,
    plan: &AccountPlan,
    sa: &ServiceAccount,
    by: &str,
    at: &str,
    report: &mut CredentialsReport,
) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let dry = ctx.dry_run;
    let account = &plan.account;
    let recorded_before = revocation_of(sa).map(|r| r.bindings).unwrap_or_default();
    // the intent first: a crash after a binding patch still leaves the record release needs
    let planned: Vec<BindingEntry> = plan
        .removals
        .iter()
        .filter_map(|r| {
            removal_patch(&r.binding, account).map(|(_, rec, _)| BindingEntry::of(&r.binding, &rec))
        })
        .collect();
    let pods = plan.pod_names();
    let tokens: Vec<TokenEntry> = plan
        .tokens
        .iter()
        .map(|t| TokenEntry {
            name: t.name.clone(),
            uid: t.uid.clone(),
            reviewed: None,
        })
        .collect();
    write_record(cluster, dry, sa, |rec| {
        if rec.pods.is_empty() {
            (rec.at, rec.by) = (at.to_string(), by.to_string());
        }
        for p in &pods {
            if !rec.pods.contains(p) {
                rec.pods.push(p.clone());
            }
        }
        planned.iter().for_each(|e| rec.upsert(e.clone()));
        for t in &tokens {
            if !rec.token_secrets.iter().any(|x| x.uid == t.uid) {
                rec.token_secrets.push(t.clone());
            }
        }
    })
    .await?;

    let mut actual = Vec::new();
    for r in &plan.removals {
        let (change, entry) = remove_from(cluster, dry, &r.binding, account).await;
        actual.extend(entry);
        report.bindings.push(change);
    }
    let reviewed = revoke_tokens(ctx, cluster, &account.namespace, &plan.tokens, report).await;
    // what really happened: bindings left unchanged (failed, gone, no longer naming the account)
    // are not claimed; digests follow what was read
    let untouched: Vec<BindingEntry> = planned
        .iter()
        .filter(|p| !actual.iter().any(|a| a.same(p)) && !recorded_before.iter().any(|b| b.same(p)))
        .cloned()
        .collect();
    write_record(cluster, dry, sa, |rec| {
        rec.bindings
            .retain(|b| !untouched.iter().any(|f| f.same(b)));
        actual.iter().for_each(|e| rec.upsert(e.clone()));
        for t in rec.token_secrets.iter_mut() {
            if let Some((_, r)) = reviewed.iter().find(|(uid, _)| *uid == t.uid) {
                t.reviewed = Some(r.clone());
            }
        }
    })
    .await?;
    let summary = format!(
        "kirt revoked the credentials of ServiceAccount {account}: removed from {} binding(s), {} legacy token Secret(s) deleted",
        report.bindings.iter().filter(|b| b.outcome == Outcome::Done).count(),
        report.token_secrets.iter().filter(|t| t.outcome == Outcome::Done).count()
    );
    for pod in &plan.pods {
        Recorder::new(cluster, dry)
            .publish_or_warn(
                pod.object_ref(&()),
                EventType::Warning,
                "CredentialsRevoked",
                &summary,
            )
            .await;
    }
    Ok(())
}

/// Removes the account from one binding (guarded, recomputed on conflict from a fresh read).
async fn remove_from(
    cluster: &Cluster,
    dry: bool,
    b: &Binding,
    account: &Account,
) -> (BindingChange, Option<BindingEntry>) {
    let mut change = BindingChange::unchanged(b);
    let res = retry_conflict(|n| async move {
        let Some(cur) = rbac::current(cluster, b, n).await? else {
            return Ok(None);
        };
        let Some((patch, record, after)) = removal_patch(&cur, account) else {
            return Ok(Some((cur.subjects.clone(), cur.subjects.clone(), None)));
        };
        rbac::patch_binding(cluster, &cur, &patch, dry).await?;
        Ok(Some((
            cur.subjects.clone(),
            after,
            Some(BindingEntry::of(&cur, &record)),
        )))
    })
    .await;
    match res {
        Ok(None) => {
            change.detail = "deleted meanwhile: nothing to remove".into();
            (change, None)
        }
        Ok(Some((before, after, entry))) => {
            change.before = before;
            change.after = after;
            if entry.is_some() {
                change.outcome = if dry { Outcome::WouldDo } else { Outcome::Done };
            } else {
                change.detail = "no longer names the account".into();
            }
            (change, entry.filter(|_| !dry))
        }
        Err(e) => {
            change.outcome = Outcome::Failed;
            change.detail = bind_denied(e, b, &cluster.configured_identity).to_string();
            (change, None)
        }
    }
}

/// Reads each legacy token, deletes its Secret and waits until the apiserver rejects the token.
/// Returns (Secret uid, what the TokenReview said) for the record. Tokens stay in memory only
/// (the context's vault, so that a `quarantine verify` in the same run can review them again).
async fn revoke_tokens(
    ctx: &Ctx,
    cluster: &Cluster,
    ns: &str,
    refs: &[SecretRef],
    report: &mut CredentialsReport,
) -> Vec<(String, String)> {
    let secrets = cluster.namespaced::<Secret>(ns);
    let mut reviewed = Vec::new();
    for t in refs {
        let mut change = TokenChange {
            secret: format!("{ns}/{}", t.name),
            outcome: Outcome::Failed,
            detail: String::new(),
        };
        let token = if ctx.dry_run {
            Ok(None)
        } else {
            take_token(&secrets, t).await
        };
        let res = match token {
            Err(e) => Err(e),
            Ok(token) => secrets
                .delete_uid(&t.name, &t.uid, ctx.dry_run)
                .await
                .map(|_| token),
        };
        match res {
            Err(e) => change.detail = e.to_string(),
            Ok(_) if ctx.dry_run => {
                change.outcome = Outcome::WouldDo;
                change.detail = "would be deleted".into();
            }
            Ok(None) => {
                change.outcome = Outcome::Done;
                change.detail = "deleted (it had changed or gone; no token to review)".into();
            }
            Ok(Some(token)) => match wait_rejected(cluster, &secrets, t, &token).await {
                Ok(Some(after)) => {
                    let r = format!("unauthenticated after {:.1}s", after.as_secs_f64());
                    change.outcome = Outcome::Done;
                    change.detail = format!("deleted; TokenReview: {r}");
                    reviewed.push((t.uid.clone(), r));
                    ctx.hold_token(HeldToken {
                        secret: format!("{ns}/{}", t.name),
                        uid: t.uid.clone(),
                        token,
                    });
                }
                Ok(None) => {
                    change.detail = format!(
                        "deleted, but the apiserver still accepts its token after {}s",
                        REJECT_TIMEOUT.as_secs()
                    )
                }
                Err(e) => change.detail = format!("deleted, but the TokenReview failed: {e}"),
            },
        }
        report.token_secrets.push(change);
    }
    reviewed
}

/// The token of a legacy token Secret, if it is still the one planned.
async fn take_token(
    secrets: &crate::k8s::Objects<'_, Secret>,
    t: &SecretRef,
) -> Result<Option<Zeroizing<String>>> {
    let Some(mut s) = secrets.get_opt(&t.name).await? else {
        return Ok(None);
    };
    if s.metadata.uid.as_deref() != Some(t.uid.as_str())
        || s.type_.as_deref() != Some(LEGACY_TOKEN_TYPE)
    {
        return Ok(None);
    }
    let Some(bytes) = s.data.as_mut().and_then(|d| d.remove("token")) else {
        return Ok(None);
    };
    let token = match String::from_utf8(bytes.0) {
        Ok(t) => Zeroizing::new(t),
        Err(e) => {
            e.into_bytes().zeroize();
            return Ok(None);
        }
    };
    Ok(Some(token))
}

/// Repeats the TokenReview until the apiserver rejects the token (`Some(after)`), or gives up
/// after [`REJECT_TIMEOUT`] (`None`).
///
/// The apiserver looks legacy tokens up in its informer's cache and caches each successful
/// authentication for 10 s: a review that arrives before its informer has seen the deletion
/// would keep the token valid for 10 s more. So the first review waits until the watch cache
/// (which feeds those informers) no longer has the Secret, plus a moment for the informer.
/// That wait only makes kirt faster; the verdict is always the apiserver's.
async fn wait_rejected(
    cluster: &Cluster,
    secrets: &crate::k8s::Objects<'_, Secret>,
    t: &SecretRef,
    token: &str,
) -> Result<Option<Duration>> {
    let start = Instant::now();
    while secrets.in_watch_cache(&t.name, &t.uid).await? && start.elapsed() < REJECT_TIMEOUT {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(INFORMER_MARGIN).await;
    let mut delay = Duration::from_millis(50);
    loop {
        if access::token_user(cluster, token).await?.is_none() {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() >= REJECT_TIMEOUT {
            return Ok(None);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::RoleBinding;

    fn binding(subjects: Value, annotations: Value) -> Binding {
        Binding::from_role_binding(
            serde_json::from_value::<RoleBinding>(json!({
                "metadata": {"name": "shared", "namespace": "prod", "resourceVersion": "9", "annotations": annotations},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": "r"},
                "subjects": subjects,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn removal_keeps_other_subjects_and_the_first_record() {
        let app = Account::new("prod", "app");
        let b = binding(
            json!([{"kind": "ServiceAccount", "name": "app"}, {"kind": "User", "name": "alice"},
                   {"kind": "User", "name": "system:serviceaccount:prod:app"}]),
            json!({}),
        );
        let (patch, record, after) = removal_patch(&b, &app).unwrap();
        assert_eq!(patch["metadata"]["resourceVersion"], "9");
        assert_eq!(
            patch["subjects"],
            json!([{"kind": "User", "name": "alice"}])
        );
        assert_eq!(record.subjects, b.subjects);
        assert_eq!(record.revoked_for, ["prod/app"]);
        assert_eq!(after.len(), 1);
        // a binding already changed by kirt for another account keeps its first record
        let first = BindingRecord {
            subjects: b.subjects.clone(),
            revoked_for: vec!["prod/other".into()],
        };
        let again = binding(
            json!([{"kind": "ServiceAccount", "name": "app"}]),
            json!({ORIGINAL_SUBJECTS: serde_json::to_string(&first).unwrap()}),
        );
        let (_, record, after) = removal_patch(&again, &app).unwrap();
        assert_eq!(record.subjects, b.subjects);
        assert_eq!(record.revoked_for, ["prod/other", "prod/app"]);
        assert!(after.is_empty());
        assert!(removal_patch(
            &binding(json!([{"kind": "User", "name": "alice"}]), json!({})),
            &app
        )
        .is_none());
    }
}
