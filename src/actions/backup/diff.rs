//! `kirt backup diff`: a backup against the live cluster: objects deleted since, created since,
//! and changed (field by field, server-managed fields ignored: `stored::restorable`). Exit 0
//! when equal, 3 when not: a scriptable drift check.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::objects::{Scope, Snapshot, SnapshotOptions};
use crate::context::Ctx;
use crate::error::{Exit, Result};
use crate::k8s::kinds::Kinds;
use crate::output::{Render, Table};
use crate::stored::{restorable, Content, Stored};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupDiffSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub snapshot: SnapshotOptions,
    #[command(flatten)]
    pub decrypt: crate::crypto::DecryptOptions,
    /// Only objects of this kind (ConfigMap, configmaps, deployments.apps, a custom kind)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// All namespaces (playbooks; on the command line use -A)
    #[arg(skip)]
    pub all_namespaces: bool,
}

/// One object: `Kind namespace/name` and its apiVersion.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Id {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl Id {
    pub fn of(obj: &Value) -> Id {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Id {
            api_version: s(&obj["apiVersion"]),
            kind: s(&obj["kind"]),
            namespace: obj["metadata"]["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .map(String::from),
            name: s(&obj["metadata"]["name"]),
        }
    }

    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    #[serde(flatten)]
    pub id: Id,
    /// `path: backup → live`.
    pub fields: Vec<String>,
}

/// An object of the backup that is not compared or restored, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub object: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DiffResult {
    pub backup: String,
    pub deleted: Vec<Id>,
    pub created: Vec<Id>,
    pub changed: Vec<Changed>,
    pub equal: usize,
    pub skipped: Vec<Skipped>,
}

impl DiffResult {
    pub fn differs(&self) -> bool {
        !(self.deleted.is_empty() && self.created.is_empty() && self.changed.is_empty())
    }
}

impl Render for DiffResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["CHANGE", "OBJECT", "FIELDS"]);
        for d in &self.deleted {
            t.row(["deleted since".into(), d.describe(), String::new()]);
        }
        for c in &self.created {
            t.row(["created since".into(), c.describe(), String::new()]);
        }
        for c in &self.changed {
            t.row(["changed".into(), c.id.describe(), c.fields.join("; ")]);
        }
        for s in &self.skipped {
            t.note(format!("not compared: {} ({})", s.object, s.reason));
        }
        t.note(format!(
            "backup {}: {} deleted, {} created, {} changed, {} equal",
            self.backup,
            self.deleted.len(),
            self.created.len(),
            self.changed.len(),
            self.equal
        ));
        t
    }

    fn exit(&self) -> Exit {
        if self.differs() {
            Exit::VerifyFailed
        } else {
            Exit::Ok
        }
    }
}

/// The objects of a backup in a scope that can be compared and restored (cleaned, by id), and
/// the ones that cannot (encrypted, suspect, undecodable, made by controllers).
pub async fn collect(
    ctx: &Ctx,
    snap: &Snapshot,
    scope: &Scope,
) -> Result<(BTreeMap<Id, Value>, Vec<Skipped>)> {
    let mut objects = BTreeMap::new();
    let mut skipped = Vec::new();
    snap.each(ctx, scope, |s: Stored| {
        let what = || {
            format!(
                "{} {}",
                s.key.kind().unwrap_or(&s.key.group_resource()),
                s.key.path()
            )
        };
        match &s.content {
            Content::Object(o) => match restorable::derived(o) {
                None => {
                    objects.insert(Id::of(o), restorable::clean(o));
                }
                Some(why) => skipped.push(Skipped {
                    object: Id::of(o).describe(),
                    reason: why.into(),
                }),
            },
            c => skipped.push(Skipped {
                object: what(),
                reason: format!("{}: {}", c.state(), c.problem().unwrap_or_default()),
            }),
        }
    })
    .await?;
    Ok((objects, skipped))
}

pub async fn run(ctx: &Ctx, spec: BackupDiffSpec) -> Result<DiffResult> {
    let scope =
        Scope::resolve(ctx, &spec.namespace, spec.all_namespaces, &spec.kind, &None).await?;
    let cluster = ctx.cluster().await?;
    let snap = Snapshot::open(ctx, &spec.snapshot, &spec.decrypt).await?;
    let collected = collect(ctx, &snap, &scope).await;
    let backup = snap.name();
    snap.stop().await;
    let (mut objects, skipped) = collected?;
    let mut result = DiffResult {
        backup,
        deleted: Vec::new(),
        created: Vec::new(),
        changed: Vec::new(),
        equal: 0,
        skipped,
    };
    // the live objects of every kind the backup holds in the scope
    let kinds: Vec<(String, String)> = {
        let mut k: Vec<_> = objects
            .keys()
            .map(|i| (i.api_version.clone(), i.kind.clone()))
            .collect();
        k.sort();
        k.dedup();
        k
    };
    let mut resolver = Kinds::new(cluster);
    for (api_version, kind) in kinds {
        ctx.shutdown.check("nothing was changed")?;
        let live = match resolver
            .objects(&api_version, &kind, scope.namespace.as_deref())
            .await
        {
            Ok(api) => {
                let items = if kind == "Namespace" {
                    let ns = scope.namespace.as_deref();
                    match ns {
                        Some(ns) => api.get_opt(ns).await?.into_iter().collect(),
                        None => api.list_all().await?,
                    }
                } else {
                    api.list_all().await?
                };
                items
            }
            // the kind is not served any more: its objects are all gone
            Err(crate::Error::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        for item in live {
            let mut obj = serde_json::to_value(&item).unwrap_or(Value::Null);
            obj["apiVersion"] = Value::String(api_version.clone());
            obj["kind"] = Value::String(kind.clone());
            if restorable::derived(&obj).is_some() {
                continue;
            }
            let id = Id::of(&obj);
            if scope.name.as_ref().is_some_and(|n| *n != id.name) {
                continue;
            }
            match objects.remove(&id) {
                None => result.created.push(id),
                Some(was) => {
                    let now = restorable::clean(&obj);
                    if was == now {
                        result.equal += 1;
                    } else {
                        let secret = kind == "Secret";
                        let fields = restorable::differences(&was, &now, secret);
                        result.changed.push(Changed { id, fields });
                    }
                }
            }
        }
    }
    result.deleted = objects.into_keys().collect();
    Ok(result)
}
