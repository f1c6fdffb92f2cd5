//! The step actions a playbook can name. Each entry points at an action's spec type and its
//! `run` fn — the same ones its subcommand uses — so a step is exactly the command, never a second
//! implementation. Adding an action is one `action!` line in `ACTIONS`.
//!
//! Specs are deserialized from the step's `with:` (kebab-case, unknown fields refused); a field
//! left out takes the spec's `Default`, which is also the flag's default (a unit test holds the
//! two together), and the fields a spec's schema marks required are required in `with:` too.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use futures::future::BoxFuture;
use serde_json::{json, Map, Value};

use crate::actions;
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::output::Render;

pub type RunFn = for<'a> fn(&'a Ctx, Value) -> BoxFuture<'a, Result<Value>>;

/// What a finished mutating step changed, and how `kirt undo` reverses it.
pub type MutationFn = fn(with: &Value, outputs: &Value) -> Vec<Mutation>;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mutation {
    /// The changed object (kind, namespace, name, and what the undo needs, e.g. the revision).
    pub object: Value,
    /// The step that reverses it; `None` when it cannot be reversed automatically.
    pub undo: Option<UndoPlan>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UndoPlan {
    pub action: String,
    pub with: Value,
}

pub struct ActionDef {
    pub name: &'static str,
    pub about: &'static str,
    /// Changes something outside kirt (cluster, store): journaled as a mutation, undoable.
    pub mutates: bool,
    /// `with:` fields whose values are secret: never journaled or printed.
    pub secret_fields: &'static [&'static str],
    /// May run as the undo of another step (`kirt undo` runs nothing else, whatever a journal
    /// says).
    pub reversal: bool,
    pub run: RunFn,
    /// Deserializes a prepared `with:` into the spec without running anything (validation).
    pub check: fn(Value) -> std::result::Result<(), String>,
    pub mutation: Option<MutationFn>,
    pub spec: SpecInfo,
    /// The subcommand's flags, and the spec's defaults as JSON: a unit test holds them together.
    #[cfg(test)]
    pub cli: fn() -> clap::Command,
    #[cfg(test)]
    pub defaults: fn() -> Value,
}

/// One `with:` field as the spec's JSON Schema describes it.
#[derive(Debug, Clone)]
pub struct Field {
    /// Path in `with:` (nested option groups such as `s3` are objects).
    pub path: Vec<String>,
    pub types: Vec<String>,
    /// Type of a list's elements.
    pub items: Option<String>,
    pub required: bool,
}

#[derive(Debug, Clone)]
pub struct SpecInfo {
    pub schema: Value,
    pub fields: BTreeMap<String, Field>,
    /// Names of nested groups (objects) at the top level.
    pub groups: Vec<String>,
}

impl SpecInfo {
    pub fn of<S: schemars::JsonSchema>() -> SpecInfo {
        let schema = serde_json::to_value(schemars::schema_for!(S)).unwrap_or(Value::Null);
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = BTreeMap::new();
        let mut groups = Vec::new();
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                match nested(p, &defs) {
                    Some(obj) => {
                        groups.push(name.clone());
                        for (sub, sp) in obj
                            .get("properties")
                            .and_then(Value::as_object)
                            .into_iter()
                            .flatten()
                        {
                            fields.insert(
                                sub.clone(),
                                Field::new(vec![name.clone(), sub.clone()], sp, false),
                            );
                        }
                    }
                    None => {
                        let req = required.contains(&name.as_str());
                        fields.insert(name.clone(), Field::new(vec![name.clone()], p, req));
                    }
                }
            }
        }
        SpecInfo {
            schema,
            fields,
            groups,
        }
    }

    /// Coerces scalars given as strings (`-p n=3`) to the field's type; fields left out take the
    /// spec's defaults when it is deserialized.
    pub fn prepare(&self, with: &mut Map<String, Value>) {
        for f in self.fields.values() {
            let (parent, leaf) = match f.path.as_slice() {
                [leaf] => (&mut *with, leaf),
                [group, leaf] => match with.get_mut(group).and_then(Value::as_object_mut) {
                    Some(m) => (m, leaf),
                    None => continue,
                },
                _ => continue,
            };
            if let Some(v) = parent.get_mut(leaf) {
                *v = f.coerce(v.take());
            }
        }
    }

    /// Required fields absent from `with:` (names as written in a playbook).
    pub fn missing(&self, with: &Map<String, Value>) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(_, f)| f.required)
            .filter(|(_, f)| lookup(with, &f.path).is_none())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Fields of `with:` the spec does not have.
    pub fn unknown(&self, with: &Map<String, Value>) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in with {
            if self.groups.contains(k) {
                for sub in v.as_object().into_iter().flat_map(|m| m.keys()) {
                    if self.fields.get(sub).is_none_or(|f| f.path[0] != *k) {
                        out.push(format!("{k}.{sub}"));
                    }
                }
            } else if self.fields.get(k).is_none_or(|f| f.path.len() != 1) {
                // a nested field written at the top level is still unknown there
                out.push(k.clone());
            }
        }
        out
    }
}

impl Field {
    fn new(path: Vec<String>, schema: &Value, required: bool) -> Field {
        let types = match schema.get("type") {
            Some(Value::String(t)) => vec![t.clone()],
            Some(Value::Array(ts)) => ts
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => vec![],
        };
        let items = schema
            .get("items")
            .and_then(|i| i.get("type"))
            .and_then(Value::as_str)
            .map(String::from);
        Field {
            path,
            types,
            items,
            required,
        }
    }

    fn coerce(&self, v: Value) -> Value {
        let has = |t: &str| self.types.iter().any(|x| x == t);
        match v {
            Value::String(s)
                if !has("string") && (has("integer") || has("number") || has("boolean")) =>
            {
                serde_json::from_str::<Value>(s.trim())
                    .ok()
                    .filter(|p| p.is_number() || p.is_boolean())
                    .unwrap_or(Value::String(s))
            }
            Value::String(s) if has("array") => Value::Array(vec![Value::String(s)]),
            // `{{ expr }}` keeps a number's type; a string field takes it as text
            v @ (Value::Number(_) | Value::Bool(_))
                if has("string") && !has("integer") && !has("number") && !has("boolean") =>
            {
                Value::String(v.to_string())
            }
            Value::Array(a) if self.items.as_deref() == Some("string") => Value::Array(
                a.into_iter()
                    .map(|x| match x {
                        Value::Number(_) | Value::Bool(_) => Value::String(x.to_string()),
                        other => other,
                    })
                    .collect(),
            ),
            other => other,
        }
    }
}

fn lookup<'a>(with: &'a Map<String, Value>, path: &[String]) -> Option<&'a Value> {
    let mut v = with.get(&path[0])?;
    for p in &path[1..] {
        v = v.get(p)?;
    }
    Some(v).filter(|v| !v.is_null())
}

/// The object schema behind a property that is a nested option group (`$ref` to an object).
fn nested<'a>(p: &'a Value, defs: &'a Value) -> Option<&'a Value> {
    let r = p
        .get("$ref")
        .or_else(|| {
            p.get("allOf")
                .and_then(|a| a.get(0))
                .and_then(|a| a.get("$ref"))
        })?
        .as_str()?;
    let def = defs.get(r.strip_prefix("#/$defs/")?)?;
    def.get("properties").is_some().then_some(def)
}

/// Deserializes a prepared `with:` into the action's spec; errors are usage errors.
pub fn decode<S: serde::de::DeserializeOwned>(action: &str, with: Value) -> Result<S> {
    serde_json::from_value(with)
        .map_err(|e| Error::usage(format!("step action {action}: invalid `with`: {e}")))
}

pub fn encode<T: serde::Serialize>(out: &T) -> Result<Value> {
    serde_json::to_value(out).map_err(|e| Error::json("encoding step outputs", e))
}

/// A result that implies a failure (a verification that found a mismatch) fails the step.
pub fn judge<T: Render>(action: &str, out: &T) -> Result<()> {
    match out.exit() {
        Exit::Ok => Ok(()),
        Exit::VerifyFailed => {
            let t = out.table();
            let why = if t.notes.is_empty() {
                String::new()
            } else {
                format!(": {}", t.notes.join("; "))
            };
            Err(Error::VerifyFailed(format!(
                "{action} reported a failed check{why}"
            )))
        }
        Exit::Partial => Err(Error::failed(format!("{action} partly failed (exit 5)"))),
        e => Err(Error::failed(format!("{action} failed (exit {})", e as u8))),
    }
}

/// `action!("name", Spec, run_fn, about)` builds an `ActionDef` that deserializes `with:` into
/// `Spec` and calls `run_fn(ctx, spec)`. Add `mutates: hook` for actions that change things.
macro_rules! action {
    ($name:literal, $spec:ty, $run:path, $about:literal $(, mutates: $hook:expr)? $(, secret: $secret:expr)? $(, reversal: $rev:expr)?) => {{
        fn run(ctx: &Ctx, with: Value) -> BoxFuture<'_, Result<Value>> {
            Box::pin(async move {
                let spec: $spec = decode($name, with)?;
                let out = $run(ctx, spec).await?;
                judge($name, &out)?;
                encode(&out)
            })
        }
        fn check(with: Value) -> std::result::Result<(), String> {
            serde_json::from_value::<$spec>(with).map(|_| ()).map_err(|e| e.to_string())
        }
        #[allow(unused_mut, unused_assignments)]
        let mut mutation: Option<MutationFn> = None;
        $( mutation = Some($hook); )?
        #[allow(unused_mut, unused_assignments)]
        let mut secret_fields: &'static [&'static str] = &[];
        $( secret_fields = $secret; )?
        #[allow(unused_mut, unused_assignments)]
        let mut reversal = false;
        $( reversal = $rev; )?
        ActionDef {
            name: $name,
            about: $about,
            mutates: mutation.is_some(),
            secret_fields,
            reversal,
            run,
            check,
            mutation,
            spec: SpecInfo::of::<$spec>(),
            #[cfg(test)]
            cli: || <$spec as clap::Args>::augment_args(clap::Command::new($name)),
            #[cfg(test)]
            defaults: || serde_json::to_value(<$spec>::default()).unwrap_or(Value::Null),
        }
    }};
}

static ACTIONS: LazyLock<Vec<ActionDef>> = LazyLock::new(|| {
    use actions::backup::{create, prune, verify};
    use actions::rollback::{history, revert, wait};
    use actions::{evidence, quarantine};
    vec![
        action!("backup.create", create::BackupCreateSpec, create::run,
            "etcd snapshot → zstd → age → store (kirt backup create)", mutates: backup_created),
        action!(
            "backup.verify",
            verify::BackupVerifySpec,
            verify::run,
            "check a backup's digests, optionally by restoring it (kirt backup verify)"
        ),
        action!("backup.prune", prune::BackupPruneSpec, prune::run,
            "remove backups no keep rule selects (kirt backup prune)", mutates: no_undo),
        action!("backup.copy", actions::backup::copy::BackupCopySpec, actions::backup::copy::run,
            "copy backups to a second store, digests checked (kirt backup copy)", mutates: no_undo),
        action!("backup.compact", actions::backup::compact::BackupCompactSpec,
            actions::backup::compact::run,
            "merge a full backup and its segments into a new full backup (kirt backup compact)",
            mutates: no_undo),
        action!(
            "backup.list",
            actions::backup::list::BackupListSpec,
            actions::backup::list::run,
            "list backups (kirt backup list)"
        ),
        action!("restore.etcd", actions::restore::RestoreSpec, actions::restore::run,
            "restore a backup into a new etcd data dir (kirt restore)", mutates: no_undo),
        action!("restore.objects", actions::restore::objects::RestoreObjectsSpec,
            actions::restore::objects::run,
            "re-create chosen objects of a backup through the apiserver (kirt restore objects)",
            mutates: |_, o| actions::restore::objects::mutations(o)),
        action!("restore.revert", actions::restore::objects::RevertSpec,
            actions::restore::objects::revert,
            "delete an object restore.objects created, or put back one it replaced (kirt undo)",
            mutates: no_undo, reversal: true),
        action!(
            "backup.diff",
            actions::backup::diff::BackupDiffSpec,
            actions::backup::diff::run,
            "a backup against the live cluster: deleted, created, changed objects (kirt backup diff)"
        ),
        action!(
            "drill.run",
            actions::drill::DrillSpec,
            actions::drill::run,
            "disaster-recovery drill with RPO/RTO report (kirt drill)"
        ),
        action!("rollback.undo", revert::RollbackSpec, revert::run,
            "roll a workload back to an earlier revision (kirt rollback)", mutates: rolled_back,
            reversal: true),
        action!(
            "rollback.history",
            history::HistorySpec,
            history::run,
            "list a workload's revisions (kirt rollback history)"
        ),
        action!(
            "rollout.wait",
            wait::WaitSpec,
            wait::run,
            "wait until a rollout is complete (kirt rollout wait)"
        ),
        action!("exec", super::builtin::ExecSpec, super::builtin::exec,
            "run a program (argv, no shell) and capture its output", mutates: ran),
        action!("notify.webhook", super::builtin::WebhookSpec, super::builtin::webhook,
            "POST JSON to a URL (URL and headers are secret)", secret: &["url", "headers"]),
        action!("quarantine.apply", quarantine::QuarantineSpec, quarantine::apply::run,
            "isolate pods with NetworkPolicies (kirt quarantine)", mutates: quarantined),
        action!(
            "quarantine.verify",
            quarantine::VerifySpec,
            quarantine::verify::run,
            "prove a pod is isolated (kirt quarantine verify)"
        ),
        action!("quarantine.release", quarantine::ReleaseSpec, quarantine::release::run,
            "undo a quarantine exactly (kirt release)", mutates: released, reversal: true),
        action!("node.quarantine", actions::node::NodeSpec, actions::node::quarantine,
            "cordon, taint and label a node (kirt node quarantine)", mutates: node_isolated),
        action!("node.release", actions::node::NodeSpec, actions::node::release_by_hand,
            "undo kirt node quarantine exactly (kirt node release)", mutates: no_undo, reversal: true),
        action!(
            "quarantine.status",
            quarantine::StatusSpec,
            quarantine::status::run,
            "list quarantined pods (kirt quarantine status)"
        ),
        action!(
            "evidence.collect",
            evidence::collect::EvidenceCollectSpec,
            evidence::collect::run,
            "collect a verifiable evidence bundle per pod (kirt evidence collect)"
        ),
        action!(
            "evidence.verify",
            evidence::verify::EvidenceVerifySpec,
            evidence::verify::run,
            "re-check an evidence bundle (kirt evidence verify)"
        ),
    ]
});

pub fn all() -> &'static [ActionDef] {
    &ACTIONS
}

pub fn get(name: &str) -> Option<&'static ActionDef> {
    ACTIONS.iter().find(|a| a.name == name)
}

/// A mutation that `kirt undo` cannot reverse (deleted backups, written files): it is journaled
/// and undo reports it as not reversible.
fn no_undo(with: &Value, outputs: &Value) -> Vec<Mutation> {
    if outputs.get("dry_run") == Some(&Value::Bool(true)) {
        return vec![];
    }
    let _ = with;
    vec![Mutation {
        object: outputs_ref(outputs),
        undo: None,
    }]
}

fn backup_created(_with: &Value, outputs: &Value) -> Vec<Mutation> {
    if outputs.get("dry_run") == Some(&Value::Bool(true)) {
        return vec![];
    }
    vec![Mutation {
        object: json!({"kind": "Backup", "location": outputs["location"], "object": outputs["object"],
                       "manifest": outputs["manifest"], "id": outputs["id"],
                       "sha256": outputs["stored_sha256"]}),
        undo: None,
    }]
}

/// rollback.undo is reversed by rolling back to the revision that ran before (`from_revision`).
fn rolled_back(with: &Value, o: &Value) -> Vec<Mutation> {
    if o.get("outcome").and_then(Value::as_str) != Some("rolled-back") {
        return vec![];
    }
    let object = json!({"kind": o["kind"], "namespace": o["namespace"], "name": o["name"],
                        "resourceVersion": o["resource_version"],
                        "from_revision": o["from_revision"], "to_revision": o["to_revision"],
                        "changes": o["changes"]});
    let undo = o["from_revision"].as_i64().map(|from| UndoPlan {
        action: "rollback.undo".into(),
        with: json!({
            "target": format!("{}/{}", o["kind"].as_str().unwrap_or("deployment"), o["name"].as_str().unwrap_or("")),
            "namespace": o["namespace"],
            "to-revision": from,
            // refuse if the workload changed after the run (a newer deploy is not undone)
            "if-generation": o["generation"],
            "wait": with.get("wait").cloned().unwrap_or(Value::Bool(false)),
        }),
    });
    vec![Mutation { object, undo }]
}

/// The pods a quarantine or release changed (`outcome: done`), each with its uid, ServiceAccount,
/// resourceVersions and the fields the patch changed.
fn changed_pods(o: &Value) -> impl Iterator<Item = (&Value, Value)> {
    o["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["outcome"] == "done")
        .map(|p| {
            let fields = crate::k8s::write::changed_fields(&p["patch"]);
            let object = json!({"kind": "Pod", "namespace": p["namespace"], "name": p["pod"],
                                "uid": p["uid"], "node": p["node"],
                                "serviceAccount": p["service_account"],
                                "resourceVersion": p["resource_version"],
                                "changes": p["changes"], "fields": fields});
            (p, object)
        })
}

/// The NetworkPolicies a quarantine or release wrote (created, narrowed, deleted, restored).
fn changed_policies(o: &Value) -> impl Iterator<Item = (&Value, Value)> {
    o["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["resource_version"].is_object())
        .map(|p| {
            let object = json!({"kind": "NetworkPolicy", "namespace": p["namespace"],
                                "name": p["name"], "resourceVersion": p["resource_version"],
                                "changes": [p["change"]]});
            (p, object)
        })
}

/// The RoleBindings and ClusterRoleBindings whose subjects a revocation or release changed, each
/// with its account's entry and the subjects before and after.
fn changed_bindings(o: &Value) -> impl Iterator<Item = (&Value, Value)> {
    o["credentials"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| {
            c["bindings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["outcome"] == "done")
                .map(move |b| {
                    let object = json!({"kind": b["kind"], "namespace": b["namespace"],
                                        "name": b["name"], "serviceAccount": c["service_account"],
                                        "before": b["before"], "after": b["after"]});
                    (c, object)
                })
        })
}

/// quarantine.apply is reversed by releasing each pod it quarantined (labels, policies, node and
/// ServiceAccount subjects restored from the records kirt keeps on the objects). A policy it wrote
/// goes with the release of a pod of its namespace (release removes kirt's policies once no
/// quarantined pod remains there); each binding whose subjects changed is journaled with its
/// subjects before and after.
fn quarantined(_with: &Value, o: &Value) -> Vec<Mutation> {
    let release = |ns: &Value, pod: &Value| {
        Some(UndoPlan {
            action: "quarantine.release".into(),
            with: json!({"pod": pod, "namespace": ns}),
        })
    };
    let mut out: Vec<Mutation> = changed_policies(o)
        .map(|(p, object)| {
            let pod = o["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["namespace"] == p["namespace"]);
            Mutation {
                object,
                undo: pod.and_then(|x| release(&x["namespace"], &x["pod"])),
            }
        })
        .collect();
    out.extend(changed_pods(o).map(|(p, object)| Mutation {
        object,
        undo: release(&p["namespace"], &p["pod"]),
    }));
    out.extend(changed_bindings(o).map(|(account, object)| {
        // released with the account's (first) pod; the last pod released restores the subjects
        let first = account["pods"][0].as_str().unwrap_or_default();
        let (ns, pod) = first.split_once('/').unwrap_or_default();
        Mutation {
            object,
            undo: release(&json!(ns), &json!(pod)),
        }
    }));
    out
}

/// quarantine.release: every pod, policy and binding it put back, journaled (a release is not
/// undone).
fn released(_with: &Value, o: &Value) -> Vec<Mutation> {
    changed_pods(o)
        .chain(changed_policies(o))
        .chain(changed_bindings(o))
        .map(|(_, object)| Mutation { object, undo: None })
        .collect()
}

/// node.quarantine is reversed by node.release.
fn node_isolated(_with: &Value, o: &Value) -> Vec<Mutation> {
    if o["outcome"] != "done" {
        return vec![];
    }
    vec![Mutation {
        object: json!({"kind": "Node", "name": o["node"], "changes": o["changes"]}),
        undo: Some(UndoPlan {
            action: "node.release".into(),
            with: json!({"node": o["node"]}),
        }),
    }]
}

/// An `exec` may have changed anything; the journal names the program, undo cannot reverse it.
fn ran(_with: &Value, o: &Value) -> Vec<Mutation> {
    if o.get("dry_run") == Some(&Value::Bool(true)) {
        return vec![];
    }
    vec![Mutation {
        object: json!({"kind": "exec", "name": o["argv"][0], "exit_code": o["exit_code"]}),
        undo: None,
    }]
}

/// A small reference to what an output describes, for the journal.
fn outputs_ref(o: &Value) -> Value {
    let mut r = Map::new();
    for k in [
        "kind",
        "namespace",
        "name",
        "id",
        "location",
        "removed",
        "data_dir",
        "exit_code",
    ] {
        if let Some(v) = o.get(k) {
            r.insert(k.into(), v.clone());
        }
    }
    Value::Object(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_required_fields_apply_to_steps() {
        let a = get("backup.verify").unwrap();
        let mut with = Map::new();
        assert_eq!(a.spec.missing(&with), vec!["from".to_string()]);
        with.insert("from".into(), json!("/tmp/b"));
        a.spec.prepare(&mut with);
        let v: actions::backup::verify::BackupVerifySpec =
            decode("backup.verify", Value::Object(with)).unwrap();
        assert_eq!(v.backup, "latest");
        assert_eq!(v.etcd_bin, std::path::PathBuf::from("etcd"));
        let c = get("backup.create").unwrap();
        let mut with = Map::new();
        with.insert("compression-level".into(), json!("5"));
        c.spec.prepare(&mut with);
        assert_eq!(with["compression-level"], 5);
        let spec: actions::backup::create::BackupCreateSpec =
            decode("backup.create", Value::Object(with)).unwrap();
        assert_eq!(spec.compression_level, 5);
        assert_eq!(spec.s3.concurrency, 4);
        let mut bad = Map::new();
        bad.insert("bogus".into(), json!(1));
        bad.insert("s3".into(), json!({"nope": 1, "region": "x"}));
        bad.insert("region".into(), json!("x"));
        assert_eq!(c.spec.unknown(&bad), vec!["bogus", "region", "s3.nope"]);
    }

    /// A step and its subcommand agree: every flag's default is the spec's `Default`, and every
    /// flag clap requires is required in `with:`.
    #[test]
    fn flag_defaults_and_spec_defaults_agree() {
        fn same(flag: &str, v: &Value) -> bool {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            text == flag
                || matches!((flag.parse::<f64>(), text.parse::<f64>()), (Ok(a), Ok(b)) if a == b)
                || matches!((crate::units::parse_size(flag), text.parse::<u64>()), (Ok(a), Ok(b)) if a == b)
                || matches!((crate::units::parse_duration(flag), crate::units::parse_duration(&text)), (Ok(a), Ok(b)) if a == b)
        }
        for a in all() {
            let cmd = (a.cli)();
            let defaults = (a.defaults)();
            for arg in cmd.get_arguments() {
                let name = arg.get_id().as_str().replace('_', "-");
                if name == "help" {
                    continue;
                }
                let value = defaults.get(&name).or_else(|| {
                    a.spec
                        .fields
                        .get(&name)
                        .filter(|f| f.path.len() == 2)
                        .and_then(|f| defaults.get(&f.path[0])?.get(&f.path[1]))
                });
                if let Some(d) = arg.get_default_values().first() {
                    let d = d.to_string_lossy();
                    let v =
                        value.unwrap_or_else(|| panic!("{}: --{name} has no spec field", a.name));
                    assert!(
                        same(&d, v),
                        "{}: --{name} defaults to {d} but the spec to {v}",
                        a.name
                    );
                }
                if arg.is_required_set() {
                    assert!(
                        a.spec.fields.get(&name).is_some_and(|f| f.required),
                        "{}: {name} is required on the command line but not in `with:`",
                        a.name
                    );
                }
            }
            // checked by the command when it runs (a usage error), not by clap: `--from` (by
            // `BackupSource::open`) and `kirt restore`'s own flags, which `kirt restore objects`
            // shares the command with
            let at_run = |name: &str| {
                name == "from"
                    || (a.name == "restore.etcd"
                        && [
                            "backup",
                            "data-dir",
                            "name",
                            "initial-cluster",
                            "initial-advertise-peer-urls",
                        ]
                        .contains(&name))
            };
            for (name, f) in &a.spec.fields {
                if f.required && !at_run(name) {
                    assert!(
                        cmd.get_arguments()
                            .any(|arg| arg.get_id().as_str().replace('_', "-") == *name
                                && arg.is_required_set()),
                        "{}: {name} is required in `with:` but not on the command line",
                        a.name
                    );
                }
            }
        }
    }

    #[test]
    fn rollback_undo_reverses_to_the_recorded_revision() {
        let o = json!({"kind": "deployment", "name": "web", "namespace": "ns", "outcome": "rolled-back",
                       "from_revision": 3, "to_revision": 2, "changes": []});
        let m = rolled_back(&json!({}), &o).pop().unwrap();
        let u = m.undo.unwrap();
        assert_eq!(u.action, "rollback.undo");
        assert_eq!(u.with["to-revision"], 3);
        assert_eq!(u.with["target"], "deployment/web");
        assert!(rolled_back(&json!({}), &json!({"outcome": "dry-run"})).is_empty());
    }
}
