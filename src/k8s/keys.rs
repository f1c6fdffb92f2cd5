//! Every label and annotation kirt writes on cluster objects, in one place: what `kirt release`
//! removes, what evidence reads back, and what docs/quarantine.md lists. Values kirt reads back
//! from these keys are treated as possibly edited by someone else.

/// On quarantined pods: the label the namespace deny-all policy selects.
pub const QUARANTINED: &str = "kirt.dev/quarantined";
/// On quarantined pods with allowances: lets the per-pod policy select just this pod.
pub const QUARANTINE_POD: &str = "kirt.dev/quarantine-pod";
/// On quarantined pods: their labels before kirt replaced them (JSON object).
pub const ORIGINAL_LABELS: &str = "kirt.dev/original-labels";
pub const QUARANTINED_AT: &str = "kirt.dev/quarantined-at";
pub const QUARANTINED_BY: &str = "kirt.dev/quarantined-by";
pub const QUARANTINED_REASON: &str = "kirt.dev/quarantined-reason";
/// On policies narrowed by `--exclusive`: their spec before kirt touched them (JSON).
pub const ORIGINAL_SPEC: &str = "kirt.dev/original-spec";
/// On per-pod allowance policies: which pod they belong to (`NS/POD`).
pub const ALLOWANCE_FOR: &str = "kirt.dev/allowance-for";
/// On nodes cordoned by `--cordon-node`: JSON list of the `NS/POD`s that asked for it.
pub const CORDONED_BY: &str = "kirt.dev/cordoned-by-quarantine";
/// On bindings kirt removed a ServiceAccount from (`--revoke-credentials`): their subjects before
/// kirt's first change and the accounts removed (JSON).
pub const ORIGINAL_SUBJECTS: &str = "kirt.dev/original-subjects";
/// On ServiceAccounts whose credentials kirt revoked: which pods asked, which bindings changed
/// (uid + digest of their recorded subjects) and which legacy token Secrets were deleted (JSON).
pub const CREDENTIALS_REVOKED: &str = "kirt.dev/credentials-revoked";
/// On nodes isolated by `--isolate-node` / `kirt node quarantine`: who asked and which of the
/// label and taint kirt added itself (JSON).
pub const ISOLATED_BY: &str = "kirt.dev/isolated-by";
/// Label on isolated nodes.
pub const UNDER_INVESTIGATION: &str = "kirt.dev/under-investigation";
/// Key of the NoSchedule taint on isolated nodes (value: the pod that asked).
pub const QUARANTINE_TAINT: &str = "kirt.dev/quarantine";
/// On policies kirt created.
pub const DESCRIPTION: &str = "kirt.dev/description";
/// The standard label naming who manages an object (`kirt` on kirt's policies).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";

/// Every pod annotation quarantine adds (removed on release).
pub const POD_ANNOTATIONS: [&str; 4] = [
    ORIGINAL_LABELS,
    QUARANTINED_AT,
    QUARANTINED_BY,
    QUARANTINED_REASON,
];
