//! `kirt restore objects`: put chosen objects of a backup back through the apiserver. Objects are
//! read as `backup diff` reads them (server-managed fields removed, controller-made objects left
//! to their controllers), existing ones are refused unless `--replace`, ownerReferences to owners
//! that no longer exist are dropped (reported). Everything is sent as a server-side dry run
//! first (objects of a Namespace being re-created: once it exists, before anything else is
//! written, and the Namespace deleted again if one is refused); then the writes, in dependency
//! order (`stored::restorable::tier`). Each write is reported (uid, resourceVersion) so that the
//! journal can reverse it: `kirt undo` deletes what was created (by uid) and puts back what was
//! replaced (unless it changed since). Secret values are never reported or journaled.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::actions::backup::diff::{collect, Id, Skipped};
use crate::actions::backup::objects::{Scope, Snapshot, SnapshotOptions};
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::k8s::kinds::{dynamic, Kinds};
use crate::output::{Render, Table};
use crate::stored::restorable;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct RestoreObjectsSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub snapshot: SnapshotOptions,
    #[command(flatten)]
    pub decrypt: crate::crypto::DecryptOptions,
    /// Only objects of this kind (ConfigMap, configmaps, deployments.apps, a custom kind)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only objects with this name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only the objects of the scope that no longer exist
    #[arg(long)]
    pub deleted_only: bool,
    /// Replace existing objects that differ from the backup (guarded by their resourceVersion;
    /// the differences are shown first)
    #[arg(long)]
    pub replace: bool,
    /// Also restore Secrets (default: skipped, reported)
    #[arg(long)]
    pub include_secrets: bool,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// All namespaces (playbooks; on the command line use -A)
    #[arg(skip)]
    pub all_namespaces: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Create,
    Replace,
    Unchanged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    DryRun,
    Failed,
    NotRun,
}

/// One object and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Restored {
    #[serde(flatten)]
    pub id: Id,
    pub change: Change,
    pub outcome: Outcome,
    /// The object's uid and resourceVersion after the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// Replaced: the live object's uid and resourceVersion before, its fields that changed
    /// (Secret values redacted), and — not for Secrets — the object itself, for `kirt undo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// sha256 of what was written (server-managed fields removed): undo puts the replaced
    /// object back only while the live one is still this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub written_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreObjectsResult {
    pub backup: String,
    pub dry_run: bool,
    pub objects: Vec<Restored>,
    pub skipped: Vec<Skipped>,
    /// ownerReferences dropped because their owner no longer exists.
    pub dropped_owner_references: Vec<String>,
    /// The run journal (`kirt undo RUN` reverses it), when run as a command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    #[serde(skip)]
    pub exit: Exit,
}

impl Render for RestoreObjectsResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["OBJECT", "CHANGE", "OUTCOME", "DETAIL"]);
        for o in &self.objects {
            let detail = match &o.error {
                Some(e) => e.clone(),
                None => o.changes.join("; "),
            };
            t.row([
                o.id.describe(),
                crate::playbook::journal::name(&o.change),
                crate::playbook::journal::name(&o.outcome),
                detail,
            ]);
        }
        for s in &self.skipped {
            t.note(format!("skipped: {} ({})", s.object, s.reason));
        }
        for d in &self.dropped_owner_references {
            t.note(format!("ownerReference dropped: {d}"));
        }
        if let Some(run) = &self.run {
            t.note(format!(
                "journaled as run {run}: kirt undo {run} reverses it"
            ));
        }
        t
    }

    fn exit(&self) -> Exit {
        self.exit
    }
}

/// One planned write.
struct Op {
    id: Id,
    obj: Value,
    change: Change,
    live: Option<Value>,
    changes: Vec<String>,
}

pub async fn run(ctx: &Ctx, spec: RestoreObjectsSpec) -> Result<RestoreObjectsResult> {
    let scope = Scope::resolve(
        ctx,
        &spec.namespace,
        spec.all_namespaces,
        &spec.kind,
        &spec.name,
    )
    .await?;
    let cluster = ctx.cluster().await?;
    let snap = Snapshot::open(ctx, &spec.snapshot, &spec.decrypt).await?;
    let collected = collect(ctx, &snap, &scope).await;
    let backup = snap.name();
    snap.stop().await;
    let (objects, mut skipped) = collected?;
    let mut kinds = Kinds::new(cluster);

    // plan: what exists, what is refused
    let mut ops: Vec<Op> = Vec::new();
    let mut refused = Vec::new();
    for (id, obj) in objects {
        if id.kind == "Secret" && !spec.include_secrets {
            skipped.push(Skipped {
                object: id.describe(),
                reason: "a Secret: restored only with --include-secrets".into(),
            });
            continue;
        }
        let api = kinds.objects_of(&obj).await?;
        let live = match api.get_opt(&id.name).await {
            Ok(l) => l.map(|l| serde_json::to_value(l).unwrap_or(Value::Null)),
            // the object's namespace is gone too
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let (change, changes) = match &live {
            None => (Change::Create, Vec::new()),
            Some(_) if spec.deleted_only => continue,
            Some(l) => {
                let now = restorable::clean(l);
                let d = restorable::differences(&now, &obj, id.kind == "Secret");
                if d.is_empty() {
                    (Change::Unchanged, d)
                } else if !spec.replace {
                    refused.push(format!("{} ({})", id.describe(), d.join("; ")));
                    continue;
                } else {
                    (Change::Replace, d)
                }
            }
        };
        ops.push(Op {
            id,
            obj,
            change,
            live,
            changes,
        });
    }
    if !refused.is_empty() {
        return Err(Error::Refused(format!(
            "these objects exist and differ from the backup: {}; nothing was changed (--replace replaces them, guarded by their resourceVersion)",
            refused.join(", ")
        )));
    }
    ops.sort_by_key(|o| (restorable::tier(&o.id.kind), o.id.clone()));

    // ownerReferences: kept when the owner exists (same uid) or is restored here (re-pointed
    // at the new uid once it is created), else dropped and reported
    let mut dropped = Vec::new();
    let planned: BTreeSet<(String, String, Option<String>)> = ops
        .iter()
        .map(|o| (o.id.kind.clone(), o.id.name.clone(), o.id.namespace.clone()))
        .collect();
    for op in ops.iter_mut() {
        let Some(refs) = op.obj["metadata"]["ownerReferences"].as_array().cloned() else {
            continue;
        };
        let mut kept = Vec::new();
        for r in refs {
            let name = r["name"].as_str().unwrap_or_default().to_string();
            let kind = r["kind"].as_str().unwrap_or_default().to_string();
            if planned.contains(&(kind.clone(), name.clone(), op.id.namespace.clone())) {
                kept.push(r);
                continue;
            }
            let owner = json!({"apiVersion": r["apiVersion"], "kind": kind,
                               "metadata": {"name": name, "namespace": op.id.namespace}});
            let exists = match kinds.objects_of(&owner).await {
                Ok(api) => match api.get_opt(&name).await {
                    Ok(Some(o)) => o.metadata.uid.as_deref() == r["uid"].as_str(),
                    _ => false,
                },
                Err(_) => false,
            };
            if exists {
                kept.push(r);
            } else {
                dropped.push(format!("{} → {kind} {name}", op.id.describe()));
            }
        }
        let meta = op.obj["metadata"].as_object_mut();
        if let Some(m) = meta {
            if kept.is_empty() {
                m.remove("ownerReferences");
            } else {
                m.insert("ownerReferences".into(), Value::Array(kept));
            }
        }
    }

    let mut result = RestoreObjectsResult {
        backup: backup.clone(),
        dry_run: ctx.dry_run,
        objects: Vec::new(),
        skipped,
        dropped_owner_references: dropped,
        run: None,
        exit: Exit::Ok,
    };
    let todo = ops.iter().filter(|o| o.change != Change::Unchanged).count();
    for op in ops.iter().filter(|o| o.change == Change::Unchanged) {
        result.objects.push(report(op, Outcome::NotRun, None, None));
    }
    ops.retain(|o| o.change != Change::Unchanged);
    if todo == 0 {
        return Ok(result);
    }
    for op in ops.iter().filter(|o| o.change == Change::Replace) {
        eprintln!("{} differs from backup {backup}:", op.id.describe());
        for c in &op.changes {
            eprintln!("  {c}");
        }
    }
    ctx.confirm(&format!(
        "restore {todo} object(s) from backup {backup} ({} created, {} replaced)",
        ops.iter().filter(|o| o.change == Change::Create).count(),
        ops.iter().filter(|o| o.change == Change::Replace).count()
    ))?;

    // server-side dry run of everything whose namespace exists
    let new_ns: BTreeSet<String> = ops
        .iter()
        .filter(|o| o.id.kind == "Namespace" && o.change == Change::Create)
        .map(|o| o.id.name.clone())
        .collect();
    let waits = |o: &Op| o.id.namespace.as_ref().is_some_and(|n| new_ns.contains(n));
    let first: Vec<&Op> = ops.iter().filter(|o| !waits(o)).collect();
    dry_run(&mut kinds, &first, &HashMap::new()).await?;
    if ctx.dry_run {
        for op in &ops {
            result.objects.push(report(op, Outcome::DryRun, None, None));
        }
        return Ok(result);
    }

    // the writes, in order; the namespaces first, then the dry run of what goes into them
    let mut uids: HashMap<String, String> = HashMap::new();
    let mut failed = false;
    let mut checked_new = new_ns.is_empty();
    for op in &ops {
        if failed || ctx.shutdown.is_requested() {
            result.objects.push(report(op, Outcome::NotRun, None, None));
            continue;
        }
        if !checked_new && op.id.kind != "Namespace" {
            checked_new = true;
            let rest: Vec<&Op> = ops.iter().filter(|o| waits(o)).collect();
            if let Err(e) = dry_run(&mut kinds, &rest, &uids).await {
                // nothing but the empty namespaces was written: take them back
                for created in &result.objects {
                    if let (Some(uid), "Namespace") = (&created.uid, created.id.kind.as_str()) {
                        let api = kinds
                            .objects(&created.id.api_version, "Namespace", None)
                            .await?;
                        api.delete_uid(&created.id.name, uid, false).await?;
                    }
                }
                return Err(e);
            }
        }
        let body = with_owners(&op.obj, &uids);
        match write(&mut kinds, op, &body, false).await {
            Ok(after) => {
                if let (Some(old), Some(new)) = (op.obj["metadata"]["uid"].as_str(), &after.0) {
                    uids.insert(old.to_string(), new.clone());
                }
                let mut r = report(op, Outcome::Done, after.0, after.1);
                r.written_sha256 = Some(sha(&after.2));
                result.objects.push(r);
            }
            Err(e) => {
                failed = true;
                let mut r = report(op, Outcome::Failed, None, None);
                r.error = Some(e.to_string());
                result.objects.push(r);
            }
        }
    }
    let done = result.objects.iter().any(|o| o.outcome == Outcome::Done);
    result.exit = if ctx.shutdown.is_requested() {
        ctx.shutdown.error("").exit()
    } else if failed && done {
        Exit::Partial
    } else if failed {
        Exit::Failure
    } else {
        Exit::Ok
    };
    Ok(result)
}

/// Server-side dry run of `ops`; every refusal is listed, nothing is written.
async fn dry_run(kinds: &mut Kinds<'_>, ops: &[&Op], uids: &HashMap<String, String>) -> Result<()> {
    let mut refused = Vec::new();
    let mut first_err = None;
    for op in ops {
        let body = with_owners(&op.obj, uids);
        if let Err(e) = write(kinds, op, &body, true).await {
            refused.push(format!("{}: {e}", op.id.describe()));
            first_err.get_or_insert(e);
        }
    }
    match first_err {
        None => Ok(()),
        Some(e) => Err(Error::Failed(format!(
            "the apiserver refused {} object(s) in a dry run, nothing was restored: {} (first: exit {})",
            refused.len(),
            refused.join("; "),
            e.exit() as u8
        ))),
    }
}

/// Creates or replaces (guarded by the live resourceVersion and uid); the uid, resourceVersion
/// and cleaned object the server answered with.
async fn write(
    kinds: &mut Kinds<'_>,
    op: &Op,
    body: &Value,
    dry_run: bool,
) -> Result<(Option<String>, Option<String>, Value)> {
    let api = kinds.objects_of(body).await?;
    let mut body = body.clone();
    let out = match (&op.change, &op.live) {
        (Change::Replace, Some(live)) => {
            body["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
            body["metadata"]["uid"] = live["metadata"]["uid"].clone();
            api.replace(&dynamic(&body)?, dry_run).await?
        }
        _ => {
            if let Some(m) = body["metadata"].as_object_mut() {
                m.remove("uid");
            }
            api.create(&dynamic(&body)?, dry_run).await?
        }
    };
    let v = serde_json::to_value(&out).unwrap_or(Value::Null);
    Ok((
        out.metadata.uid.clone(),
        out.metadata.resource_version.clone(),
        restorable::clean(&v),
    ))
}

/// The object with ownerReferences to owners restored in this run pointed at their new uid.
fn with_owners(obj: &Value, uids: &HashMap<String, String>) -> Value {
    let mut o = obj.clone();
    if let Some(refs) = o["metadata"]
        .get_mut("ownerReferences")
        .and_then(Value::as_array_mut)
    {
        for r in refs {
            if let Some(new) = r["uid"].as_str().and_then(|u| uids.get(u)) {
                r["uid"] = Value::String(new.clone());
            }
        }
    }
    o
}

fn report(op: &Op, outcome: Outcome, uid: Option<String>, rv: Option<String>) -> Restored {
    let secret = op.id.kind == "Secret";
    let replaced = op.live.as_ref().filter(|_| op.change == Change::Replace).map(|l| {
        let mut r = json!({"uid": l["metadata"]["uid"], "resourceVersion": l["metadata"]["resourceVersion"]});
        if !secret {
            r["object"] = restorable::clean(l);
        }
        r
    });
    Restored {
        id: op.id.clone(),
        change: op.change,
        outcome,
        uid,
        resource_version: rv,
        replaced,
        changes: op.changes.clone(),
        written_sha256: None,
        error: None,
    }
}

fn sha(v: &Value) -> String {
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// `kirt undo` of a restore: deletes an object it created (only that one: by uid), or puts back
/// the object it replaced, only while the live one is still what the restore wrote.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RevertSpec {
    #[arg(skip)]
    pub api_version: String,
    #[arg(skip)]
    pub kind: String,
    #[arg(skip)]
    pub namespace: Option<String>,
    #[arg(skip)]
    pub name: String,
    /// The uid of the object the restore wrote.
    #[arg(skip)]
    pub uid: String,
    /// The object that was replaced (none: the restore created it).
    #[arg(skip)]
    pub previous: Option<Value>,
    #[arg(skip)]
    pub written_sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RevertResult {
    pub object: String,
    /// deleted, put-back, gone
    pub outcome: String,
    pub dry_run: bool,
}

impl Render for RevertResult {
    fn table(&self) -> Table {
        Table::fields([
            ("object", self.object.clone()),
            ("outcome", self.outcome.clone()),
        ])
    }
}

pub async fn revert(ctx: &Ctx, spec: RevertSpec) -> Result<RevertResult> {
    let cluster = ctx.cluster().await?;
    let mut kinds = Kinds::new(cluster);
    let id = Id {
        api_version: spec.api_version.clone(),
        kind: spec.kind.clone(),
        namespace: spec.namespace.clone(),
        name: spec.name.clone(),
    };
    let api = kinds
        .objects(&spec.api_version, &spec.kind, spec.namespace.as_deref())
        .await?;
    let mut result = RevertResult {
        object: id.describe(),
        outcome: String::new(),
        dry_run: ctx.dry_run,
    };
    let Some(previous) = spec.previous else {
        api.delete_uid(&spec.name, &spec.uid, ctx.dry_run).await?;
        result.outcome = "deleted".into();
        return Ok(result);
    };
    let Some(live) = api.get_opt(&spec.name).await? else {
        result.outcome = "gone".into();
        return Ok(result);
    };
    let live_v = serde_json::to_value(&live).unwrap_or(Value::Null);
    if live.metadata.uid.as_deref() != Some(spec.uid.as_str())
        || spec.written_sha256.as_deref() != Some(sha(&restorable::clean(&live_v)).as_str())
    {
        return Err(Error::Refused(format!(
            "{} changed after kirt restored it: not put back (compare it with the journal's replaced object by hand)",
            id.describe()
        )));
    }
    let mut body = previous;
    body["metadata"]["resourceVersion"] = live_v["metadata"]["resourceVersion"].clone();
    body["metadata"]["uid"] = Value::String(spec.uid.clone());
    api.replace(&dynamic(&body)?, ctx.dry_run).await?;
    result.outcome = "put-back".into();
    Ok(result)
}

/// The journal's mutations of a restore: each object written, with its reversal (none for a
/// replaced Secret: its values are never journaled).
pub fn mutations(outputs: &Value) -> Vec<crate::playbook::registry::Mutation> {
    use crate::playbook::registry::{Mutation, UndoPlan};
    let mut out = Vec::new();
    for o in outputs["objects"].as_array().into_iter().flatten() {
        if o["outcome"] != "done" {
            continue;
        }
        let object = json!({"kind": o["kind"], "apiVersion": o["api_version"],
            "namespace": o["namespace"], "name": o["name"], "uid": o["uid"],
            "resourceVersion": {"before": o["replaced"]["resourceVersion"], "after": o["resource_version"]},
            "change": o["change"], "changes": o["changes"]});
        let with = |previous: Value| {
            json!({"api-version": o["api_version"], "kind": o["kind"],
                   "namespace": o["namespace"], "name": o["name"], "uid": o["uid"],
                   "previous": previous, "written-sha256": o["written_sha256"]})
        };
        let undo = match o["change"].as_str() {
            Some("create") => Some(with(Value::Null)),
            Some("replace") if o["replaced"]["object"].is_object() => {
                Some(with(o["replaced"]["object"].clone()))
            }
            _ => None,
        };
        out.push(Mutation {
            object,
            undo: undo.map(|with| UndoPlan {
                action: "restore.revert".into(),
                with,
            }),
        });
    }
    out
}
