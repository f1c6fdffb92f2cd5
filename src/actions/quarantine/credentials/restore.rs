//! Release of a revocation: when the last quarantined pod of a ServiceAccount is released, the
//! account goes back into each binding kirt took it out of — only where the binding's record and
//! the account's record agree, only subjects that name the account itself, and merged with what
//! changed on the binding meanwhile (other subjects added or removed by someone else stay so).
//! The plan is shown before confirmation; execution refuses anything that changed since.
//! Deleted legacy tokens are not brought back: the token controller issues new ones.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::Subject;
use kube::api::Patch;
use serde::Serialize;
use serde_json::{json, Value};

use super::plan::describe_subjects;
use super::revoke::BindingChange;
use super::{record_of, revocation_of, subjects_digest, BindingEntry, Revocation};
use crate::actions::quarantine::Outcome;
use crate::error::{Error, Exit, Result};
use crate::k8s::keys::{CREDENTIALS_REVOKED, ORIGINAL_SUBJECTS};
use crate::k8s::rbac::{self, Account, Binding};
use crate::k8s::write::retry_conflict;
use crate::k8s::Cluster;

/// What release will do for one ServiceAccount.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub account: Account,
    pub sa: ServiceAccount,
    /// `NS/POD` of the pods released now that the record lists.
    pub releasing: Vec<String>,
    /// Pods the record lists that stay quarantined: the account stays revoked for them.
    pub remaining: Vec<String>,
    pub restores: Vec<Restore>,
    /// Bindings kirt will not touch, and why.
    pub refused: Vec<String>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Restore {
    pub binding: Binding,
    pub entry: BindingEntry,
    /// The subjects put back (all of them name the account).
    pub add: Vec<Subject>,
    pub target: Vec<Subject>,
}

/// What release did for one ServiceAccount.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    pub service_account: String,
    pub bindings: Vec<BindingChange>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    pub notes: Vec<String>,
    #[serde(skip)]
    pub exit: Exit,
}

impl RestoreReport {
    /// The lines the release result prints for this account.
    pub fn notes(&self) -> String {
        let mut out = vec![format!(
            "credentials of ServiceAccount {}:",
            self.service_account
        )];
        for b in &self.bindings {
            let what = b
                .namespace
                .as_ref()
                .map_or(b.name.clone(), |ns| format!("{ns}/{}", b.name));
            let result = match b.outcome {
                Outcome::Done => "restored",
                Outcome::WouldDo => "would restore",
                Outcome::Unchanged => "unchanged",
                Outcome::Failed => "FAILED",
            };
            out.push(format!(
                "  {} {what} ({}): {result} — {}",
                b.kind, b.role, b.detail
            ));
        }
        out.extend(self.refused.iter().map(|r| format!("  NOT restored: {r}")));
        out.extend(self.notes.iter().map(|n| format!("  {n}")));
        out.join("\n")
    }
}

/// `original`'s subjects where kirt removed them (`restore`) or they are still there, then the
/// ones added since: the binding as it was, plus whatever others changed meanwhile.
pub fn merged(
    original: &[Subject],
    current: &[Subject],
    restore: impl Fn(&Subject) -> bool,
) -> Vec<Subject> {
    let mut out: Vec<Subject> = Vec::new();
    for s in original {
        if (restore(s) || current.contains(s)) && !out.contains(s) {
            out.push(s.clone());
        }
    }
    for s in current {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// Plans for every ServiceAccount of `pods` whose revocation record lists some of them.
pub async fn plan_for_pods(
    cluster: &Cluster,
    pods: &[k8s_openapi::api::core::v1::Pod],
) -> Result<Vec<RestorePlan>> {
    let mut by_account: std::collections::BTreeMap<Account, Vec<String>> = Default::default();
    for p in pods {
        let (ns, name) = crate::k8s::name_of(p);
        let sa = super::plan::service_account_of(p);
        by_account
            .entry(Account::new(&ns, &sa))
            .or_default()
            .push(name);
    }
    let plans = by_account
        .iter()
        .map(|(a, names)| plan(cluster, &a.namespace, names, Some(&a.name)));
    let mut out = Vec::new();
    for res in futures::future::join_all(plans).await {
        match res {
            Ok(p) => out.extend(p),
            Err(e) => out.extend(readable(e)?),
        }
    }
    Ok(out)
}

/// An identity that may not read ServiceAccounts cannot have revoked credentials with kirt
/// either: release goes on without that part (saying so) rather than failing the network part.
pub fn readable(e: Error) -> Result<Option<RestorePlan>> {
    match e {
        Error::Forbidden(d) if d.resource == "serviceaccounts" => {
            tracing::warn!("credentials not checked for restoring: {d}");
            Ok(None)
        }
        e => Err(e),
    }
}

/// Finds the revocation record listing `pods` (names in `ns`): on `sa` when the pods' account
/// is known, else on any ServiceAccount of the namespace (the pod was deleted).
pub async fn plan(
    cluster: &Cluster,
    ns: &str,
    pods: &[String],
    sa: Option<&str>,
) -> Result<Option<RestorePlan>> {
    let sas = cluster.namespaced::<ServiceAccount>(ns);
    let candidates = match sa {
        Some(name) => sas.get_opt(name).await?.into_iter().collect(),
        None => sas.list_all().await?,
    };
    let me: Vec<String> = pods.iter().map(|p| format!("{ns}/{p}")).collect();
    let found = candidates.into_iter().find_map(|sa| {
        let rec = revocation_of(&sa)?;
        rec.pods.iter().any(|p| me.contains(p)).then_some((sa, rec))
    });
    let Some((sa, rec)) = found else {
        return Ok(None);
    };
    let account = Account::new(ns, sa.metadata.name.as_deref().unwrap_or_default());
    let (releasing, remaining): (Vec<String>, Vec<String>) =
        rec.pods.iter().cloned().partition(|p| me.contains(p));
    let mut plan = RestorePlan {
        account,
        sa,
        releasing,
        remaining,
        restores: Vec::new(),
        refused: Vec::new(),
        notes: Vec::new(),
    };
    if !plan.remaining.is_empty() {
        return Ok(Some(plan));
    }
    for e in &rec.bindings {
        match check_entry(cluster, &plan.account, e).await? {
            Check::Restore(r) => plan.restores.push(*r),
            Check::Note(n) => plan.notes.push(n),
            Check::Refuse(why) => plan.refused.push(format!("{}: {why}", e.id())),
        }
    }
    plan.notes.extend(token_note(&plan.sa, &rec));
    Ok(Some(plan))
}

enum Check {
    Restore(Box<Restore>),
    Note(String),
    Refuse(String),
}

/// Validates one binding against both records and works out what to put back.
async fn check_entry(cluster: &Cluster, account: &Account, e: &BindingEntry) -> Result<Check> {
    let Some(b) = rbac::get_binding(cluster, e.kind, e.namespace.as_deref(), &e.name).await? else {
        return Ok(Check::Note(format!(
            "{} no longer exists: nothing to restore",
            e.id()
        )));
    };
    Ok(match validate(&b, e, account) {
        Err(why) => Check::Refuse(why),
        Ok(None) => Check::Note(format!(
            "{} carries no kirt record any more (restored already?): left alone",
            e.id()
        )),
        Ok(Some(target)) => {
            let add = target
                .iter()
                .filter(|s| !b.subjects.contains(s))
                .cloned()
                .collect();
            Check::Restore(Box::new(Restore {
                entry: e.clone(),
                binding: b,
                add,
                target,
            }))
        }
    })
}

/// The subjects `b` gets back, if both records agree (`Err` says why not; `Ok(None)`: kirt's
/// record is gone from the binding).
fn validate(
    b: &Binding,
    e: &BindingEntry,
    account: &Account,
) -> std::result::Result<Option<Vec<Subject>>, String> {
    if b.uid() != e.uid {
        return Err("deleted and re-created since kirt changed it; not restored".into());
    }
    let Some(rec) = record_of(b) else {
        return Ok(None);
    };
    if subjects_digest(&rec.subjects) != e.subjects_sha256 {
        return Err(format!(
            "its {ORIGINAL_SUBJECTS} does not match the record on the ServiceAccount (edited?); \
             not restored — compare and fix it by hand"
        ));
    }
    if !rec.revoked_for.contains(&account.to_string()) {
        return Err(format!(
            "its {ORIGINAL_SUBJECTS} does not say that {account} was removed; not restored"
        ));
    }
    Ok(Some(merged(&rec.subjects, &b.subjects, |s| {
        account.named_by(s, b.namespace())
    })))
}

fn token_note(sa: &ServiceAccount, rec: &Revocation) -> Option<String> {
    if rec.token_secrets.is_empty() {
        return None;
    }
    let gone: Vec<&str> = rec.token_secrets.iter().map(|t| t.name.as_str()).collect();
    let now: Vec<String> = sa
        .secrets
        .iter()
        .flatten()
        .filter_map(|r| r.name.clone())
        .filter(|n| !gone.contains(&n.as_str()))
        .collect();
    Some(format!(
        "legacy token Secret(s) deleted at revocation ({}) are not restored; {} — pods that mounted the old ones need a restart to use a valid token",
        gone.join(", "),
        if now.is_empty() {
            "no new token Secret is listed on the ServiceAccount yet (the token controller issues one on clusters before 1.24)".to_string()
        } else {
            format!("new tokens were issued: {}", now.join(", "))
        }
    ))
}

impl RestorePlan {
    /// The lines the confirmation (and the dry run) shows.
    pub fn preview(&self) -> Vec<String> {
        let a = &self.account;
        if !self.remaining.is_empty() {
            return vec![format!(
                "ServiceAccount {a} stays revoked: {} still quarantined",
                self.remaining.join(", ")
            )];
        }
        let mut out = vec![format!("restore the credentials of ServiceAccount {a}:")];
        for r in &self.restores {
            out.push(if r.add.is_empty() {
                format!("  {}: nothing to put back (already there)", r.binding.id())
            } else {
                format!(
                    "  {} ({}): put back {}",
                    r.binding.id(),
                    r.binding.role(),
                    describe_subjects(&r.add)
                )
            });
        }
        out.extend(
            self.refused
                .iter()
                .map(|r| format!("  will NOT restore {r}")),
        );
        out.extend(self.notes.iter().map(|n| format!("  {n}")));
        out
    }
}

/// Carries out a confirmed plan.
pub async fn execute(cluster: &Cluster, dry: bool, plan: &RestorePlan) -> RestoreReport {
    let mut report = RestoreReport {
        service_account: plan.account.to_string(),
        bindings: Vec::new(),
        refused: plan.refused.clone(),
        notes: plan.notes.clone(),
        exit: Exit::Ok,
    };
    let mut restored = Vec::new();
    for r in &plan.restores {
        let change = put_back(cluster, dry, &plan.account, r).await;
        if change.outcome == Outcome::Failed {
            report
                .refused
                .push(format!("{}: {}", r.entry.id(), change.detail));
        } else {
            restored.push(r.entry.clone());
        }
        report.bindings.push(change);
    }
    let complete = report.refused.is_empty();
    if let Err(e) = update_record(cluster, dry, plan, &restored, complete).await {
        report.notes.push(format!(
            "FAILED to update the record on the ServiceAccount: {e}"
        ));
        report.exit = e.exit();
    }
    if !plan.remaining.is_empty() {
        report.notes.push(format!(
            "stays revoked: {} still quarantined",
            plan.remaining.join(", ")
        ));
    } else if !complete {
        report.notes.push(
            "the record stays on the ServiceAccount: fix what was not restored, then run kirt release again".into(),
        );
    }
    if report.exit == Exit::Ok && !report.refused.is_empty() {
        report.exit = if restored.is_empty() {
            Exit::Refused
        } else {
            Exit::Partial
        };
    }
    report
}

/// Puts the account back into one binding (guarded; a concurrent change is re-validated and
/// must still give exactly the subjects shown).
async fn put_back(cluster: &Cluster, dry: bool, account: &Account, r: &Restore) -> BindingChange {
    let b = &r.binding;
    let mut change = BindingChange::unchanged(b);
    let res = retry_conflict(|n| async move {
        let cur = rbac::current(cluster, b, n)
            .await?
            .ok_or_else(|| Error::failed("deleted since the preview"))?;
        let target = validate(&cur, &r.entry, account)
            .map_err(Error::failed)?
            .ok_or_else(|| Error::failed("kirt's record was removed since the preview"))?;
        let add: Vec<Subject> = target
            .iter()
            .filter(|s| !cur.subjects.contains(s))
            .cloned()
            .collect();
        if add != r.add {
            return Err(Error::failed(format!(
                "changed since the preview (would now put back {}); run kirt release again",
                describe_subjects(&add)
            )));
        }
        let patch = restore_patch(&cur, account, &target);
        rbac::patch_binding(cluster, &cur, &patch, dry).await?;
        Ok((cur.subjects.clone(), target))
    })
    .await;
    match res {
        Ok((before, after)) => {
            change.outcome = if dry { Outcome::WouldDo } else { Outcome::Done };
            change.detail = format!("put back {}", describe_subjects(&r.add));
            (change.before, change.after) = (before, after);
        }
        Err(e) => {
            change.outcome = Outcome::Failed;
            change.detail = e.to_string();
        }
    }
    change
}

/// The patch that sets `target` subjects and withdraws `account` from kirt's record on `b`
/// (the record goes when no revoked account is left).
pub fn restore_patch(b: &Binding, account: &Account, target: &[Subject]) -> Value {
    let record = record_of(b).map(|mut r| {
        r.revoked_for.retain(|a| *a != account.to_string());
        r
    });
    let annotation = match record {
        Some(r) if !r.revoked_for.is_empty() => {
            json!(serde_json::to_string(&r).unwrap_or_default())
        }
        _ => Value::Null,
    };
    json!({
        "metadata": {
            "resourceVersion": b.metadata.resource_version,
            "annotations": {ORIGINAL_SUBJECTS: annotation},
        },
        "subjects": target,
    })
}

/// Takes the released pods off the account's record; the record goes once nothing is left.
async fn update_record(
    cluster: &Cluster,
    dry: bool,
    plan: &RestorePlan,
    restored: &[BindingEntry],
    complete: bool,
) -> Result<()> {
    let ns = plan.account.namespace.clone();
    let sas = cluster.namespaced::<ServiceAccount>(&ns);
    retry_conflict(|n| {
        let sas = &sas;
        async move {
            let cur = sas.current(&plan.sa, n).await?;
            let Some(mut rec) = revocation_of(&cur) else {
                return Ok(());
            };
            if plan.remaining.is_empty() && !complete {
                // keep the pods listed so that a later release tries again
                rec.bindings.retain(|b| !restored.contains(b));
            } else {
                rec.pods.retain(|p| !plan.releasing.contains(p));
            }
            let value = if rec.pods.is_empty() {
                Value::Null
            } else {
                json!(serde_json::to_string(&rec).unwrap_or_default())
            };
            let patch = json!({"metadata": {
                "resourceVersion": cur.metadata.resource_version,
                "annotations": {CREDENTIALS_REVOKED: value},
            }});
            sas.patch(&plan.account.name, &Patch::Merge(&patch), dry)
                .await?;
            Ok(())
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::super::BindingRecord;
    use super::*;
    use k8s_openapi::api::rbac::v1::RoleBinding;

    fn subjects(v: Value) -> Vec<Subject> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn merge_restores_the_account_and_keeps_others_changes() {
        let app = Account::new("prod", "app");
        let named = |s: &Subject| app.named_by(s, Some("prod"));
        let original = subjects(
            json!([{"kind": "ServiceAccount", "name": "app"}, {"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]),
        );
        // untouched since: exactly the original
        let now =
            subjects(json!([{"kind": "User", "name": "alice"}, {"kind": "User", "name": "bob"}]));
        assert_eq!(merged(&original, &now, named), original);
        // meanwhile bob was removed and carol added by someone else: that stays so
        let now =
            subjects(json!([{"kind": "User", "name": "alice"}, {"kind": "User", "name": "carol"}]));
        assert_eq!(
            merged(&original, &now, named),
            subjects(
                json!([{"kind": "ServiceAccount", "name": "app"}, {"kind": "User", "name": "alice"}, {"kind": "User", "name": "carol"}])
            )
        );
    }

    fn binding(uid: &str, current: Value, record: &BindingRecord) -> Binding {
        Binding::from_role_binding(
            serde_json::from_value::<RoleBinding>(json!({
                "metadata": {"name": "shared", "namespace": "prod", "uid": uid, "resourceVersion": "5",
                             "annotations": {ORIGINAL_SUBJECTS: serde_json::to_string(record).unwrap()}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
                "subjects": current,
            }))
            .unwrap(),
        )
    }

    #[test]
    fn edited_records_never_add_other_subjects() {
        let app = Account::new("prod", "app");
        let honest = BindingRecord {
            subjects: subjects(
                json!([{"kind": "ServiceAccount", "name": "app"}, {"kind": "User", "name": "alice"}]),
            ),
            revoked_for: vec!["prod/app".into()],
        };
        let b = binding("u1", json!([{"kind": "User", "name": "alice"}]), &honest);
        let entry = BindingEntry::of(&b, &honest);
        assert_eq!(
            validate(&b, &entry, &app).unwrap().unwrap(),
            honest.subjects
        );
        // someone adds `mallory` to the binding's record: the digests no longer agree
        let mut forged = honest.clone();
        forged
            .subjects
            .push(subjects(json!([{"kind": "User", "name": "mallory"}])).remove(0));
        let b2 = binding("u1", json!([{"kind": "User", "name": "alice"}]), &forged);
        assert!(validate(&b2, &entry, &app)
            .unwrap_err()
            .contains("does not match"));
        // even with both records forged alike, only subjects naming the account come back
        let entry2 = BindingEntry::of(&b2, &forged);
        let target = validate(&b2, &entry2, &app).unwrap().unwrap();
        assert!(!target.iter().any(|s| s.name == "mallory"), "{target:?}");
        // a re-created binding (new uid) is refused
        let b3 = binding("u2", json!([]), &honest);
        assert!(validate(&b3, &entry, &app)
            .unwrap_err()
            .contains("re-created"));
        // the patch removes kirt's record with the last account
        let p = restore_patch(&b, &app, &honest.subjects);
        assert_eq!(p["metadata"]["annotations"][ORIGINAL_SUBJECTS], Value::Null);
        assert_eq!(p["subjects"].as_array().unwrap().len(), 2);
    }
}
