//! `--revoke-credentials`: contain the identity of a compromised pod, not only its network.
//!
//! A stolen ServiceAccount token works from anywhere, so quarantine also takes the account out
//! of every RoleBinding and ClusterRoleBinding that names it and deletes its legacy token
//! Secrets; `verify` asks the apiserver (SubjectAccessReview, TokenReview) whether anything is
//! still allowed; `release` puts the subjects back exactly.
//!
//! What kirt records, and why two records:
//! - on each binding it changed, `kirt.dev/original-subjects`: the subjects before kirt's first
//!   change and the accounts it removed ([`BindingRecord`]);
//! - on the ServiceAccount, `kirt.dev/credentials-revoked`: which pods asked, which bindings were
//!   changed (uid + sha256 of the recorded subjects) and which token Secrets were deleted
//!   ([`Revocation`]).
//!
//! Release re-adds a subject only if both records agree (same binding uid, same digest), and only
//! subjects that name the account itself: whatever else an edited annotation claims never gains
//! access through kirt. (Changing a binding's annotations already requires passing the RBAC
//! escalation check for its role, so forging the binding record grants nothing its author could
//! not grant directly; the account record is the one an intruder could more easily reach.)
//!
//! Modules: [`plan`] (read-only: what would change, the blast-radius preview), [`revoke`]
//! (quarantine), [`restore`] (release), [`check`] (verify).

pub mod check;
pub mod plan;
pub mod restore;
pub mod revoke;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::Subject;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::k8s::annotation;
use crate::k8s::keys::{CREDENTIALS_REVOKED, ORIGINAL_SUBJECTS};
use crate::k8s::rbac::{Binding, BindingKind};

/// The ServiceAccount's record of a revocation (`kirt.dev/credentials-revoked`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// `NS/POD` of every quarantined pod that asked; the last one released restores access.
    pub pods: Vec<String>,
    pub at: String,
    pub by: String,
    pub bindings: Vec<BindingEntry>,
    #[serde(default)]
    pub token_secrets: Vec<TokenEntry>,
}

/// One binding kirt changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingEntry {
    pub kind: BindingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    /// sha256 of the subjects recorded on the binding ([`subjects_digest`]).
    pub subjects_sha256: String,
}

impl BindingEntry {
    pub fn of(b: &Binding, record: &BindingRecord) -> Self {
        BindingEntry {
            kind: b.kind,
            namespace: b.namespace().map(String::from),
            name: b.name().into(),
            uid: b.uid().into(),
            subjects_sha256: subjects_digest(&record.subjects),
        }
    }

    pub fn id(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name),
            None => format!("{} {}", self.kind.as_str(), self.name),
        }
    }

    fn same(&self, other: &BindingEntry) -> bool {
        self.kind == other.kind && self.namespace == other.namespace && self.name == other.name
    }
}

/// A legacy token Secret kirt deleted (names only: the token itself is never recorded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenEntry {
    pub name: String,
    pub uid: String,
    /// What the TokenReview said after the deletion, e.g. `unauthenticated after 0.2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviewed: Option<String>,
}

/// A binding's record (`kirt.dev/original-subjects`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingRecord {
    /// The subjects before kirt's first change, exactly as they were.
    pub subjects: Vec<Subject>,
    /// `NS/SA` of each account removed from them.
    pub revoked_for: Vec<String>,
}

/// sha256 (hex) of subjects as kirt serializes them.
pub fn subjects_digest(subjects: &[Subject]) -> String {
    let bytes = serde_json::to_vec(subjects).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(&bytes))
}

pub fn revocation_of(sa: &ServiceAccount) -> Option<Revocation> {
    annotation(&sa.metadata, CREDENTIALS_REVOKED).and_then(|v| serde_json::from_str(v).ok())
}

pub fn record_of(b: &Binding) -> Option<BindingRecord> {
    annotation(&b.metadata, ORIGINAL_SUBJECTS).and_then(|v| serde_json::from_str(v).ok())
}

impl Revocation {
    /// Adds (or updates) a binding entry.
    pub fn upsert(&mut self, entry: BindingEntry) {
        match self.bindings.iter_mut().find(|e| e.same(&entry)) {
            Some(e) => *e = entry,
            None => self.bindings.push(entry),
        }
    }
}

/// Bound (projected) ServiceAccount token volumes of a pod: they cannot be revoked while the pod
/// lives.
pub fn projected_token_volumes(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| {
            v.projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .is_some_and(|s| s.iter().any(|x| x.service_account_token.is_some()))
        })
        .map(|v| v.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_digests_are_stable() {
        let s: Vec<Subject> = serde_json::from_value(serde_json::json!([
            {"kind": "ServiceAccount", "name": "app"},
            {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
        ]))
        .unwrap();
        let r = BindingRecord {
            subjects: s.clone(),
            revoked_for: vec!["prod/app".into()],
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"revokedFor\""), "{text}");
        let back: BindingRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        assert_eq!(subjects_digest(&s), subjects_digest(&back.subjects));
        assert_ne!(subjects_digest(&s), subjects_digest(&s[..1]));
    }

    #[test]
    fn projected_tokens_are_found() {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c"}], "volumes": [
                {"name": "kube-api-access-x", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}},
                {"name": "default-token-y", "secret": {"secretName": "default-token-y"}}
            ]}
        }))
        .unwrap();
        assert_eq!(projected_token_volumes(&pod), vec!["kube-api-access-x"]);
    }
}
