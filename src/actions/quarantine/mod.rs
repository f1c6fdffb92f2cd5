//! Quarantine: isolate compromised pods with NetworkPolicies while keeping them alive for forensics,
//! verify the isolation against every policy of the namespace, and release exactly.
//!
//! What kirt writes (and nothing else), so that release can remove precisely that:
//! - NetworkPolicy `kirt-quarantine` per namespace: deny-all (Ingress+Egress, no rules) for pods
//!   labelled `kirt.dev/quarantined=true`;
//! - NetworkPolicy `kirt-quarantine-POD` for allowances (`--allow-dns`, `--allow-from`,
//!   `--allow-from-namespace`), selecting the pod by `kirt.dev/quarantine-pod=POD`;
//! - on the pod: the quarantine label(s) and the annotations of `k8s::keys`, originals in
//!   `kirt.dev/original-labels`;
//! - with `--exclusive`: a `kirt.dev/quarantined DoesNotExist` requirement on other policies, the
//!   original spec saved in `kirt.dev/original-spec` on each;
//! - with `--cordon-node`: `spec.unschedulable` and `kirt.dev/cordoned-by-quarantine` on the node;
//! - with `--isolate-node`: also the taint `kirt.dev/quarantine`, the label
//!   `kirt.dev/under-investigation` and `kirt.dev/isolated-by` on the node (`actions::node`);
//! - with `--revoke-credentials`: the ServiceAccount's subjects removed from bindings, their
//!   originals in `kirt.dev/original-subjects`, the account's record in
//!   `kirt.dev/credentials-revoked`, its legacy token Secrets deleted (`credentials`).

pub mod apply;
pub mod contain;
pub mod credentials;
pub mod policies;
pub mod policy_eval;
pub mod release;
pub mod status;
pub mod verify;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::k8s::keys::QUARANTINED;

pub use apply::{QuarantineReport, QuarantineSpec};
pub use release::{ReleaseReport, ReleaseSpec};
pub use status::{StatusReport, StatusSpec};
pub use verify::{VerifyReport, VerifySpec};

/// The namespace-wide deny-all policy.
pub const NS_POLICY: &str = "kirt-quarantine";

/// How many pods are patched at once for `-l` / `-A`.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// Name of the per-pod allowance policy (object names may be 253 characters).
pub fn pod_policy_name(pod: &str) -> String {
    let name = format!("{NS_POLICY}-{pod}");
    if name.len() <= 253 {
        name
    } else {
        format!("{}-{}", &name[..240], short_hash(pod))
    }
}

/// Value of `kirt.dev/quarantine-pod` (label values may be 63 characters).
pub fn pod_label_value(pod: &str) -> String {
    if pod.len() <= 63 {
        pod.to_string()
    } else {
        format!(
            "{}-{}",
            pod[..50].trim_end_matches(['-', '.']),
            short_hash(pod)
        )
    }
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..6])
}

pub(crate) fn is_quarantined(pod: &Pod) -> bool {
    crate::k8s::labels_of(pod)
        .get(QUARANTINED)
        .map(String::as_str)
        == Some("true")
}

/// One row's outcome in multi-pod results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    WouldDo,
    Unchanged,
    Failed,
}
