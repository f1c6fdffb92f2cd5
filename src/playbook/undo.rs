//! `kirt undo RUN_ID`: reverses the mutations a run journaled, newest first, with each action's
//! undo plan (rollback → back to the recorded revision; quarantine → release). Mutations already
//! undone are not undone twice; the undo is journaled in the same file.

use serde::Serialize;
use serde_json::{json, Value};

use super::journal::{self, Journal};
use super::registry;
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::output::{Render, Table};

#[derive(
    Debug, Clone, Default, clap::Args, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct UndoSpec {
    /// The run to reverse (`kirt runs list`)
    #[arg(value_name = "RUN_ID")]
    pub run_id: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UndoItem {
    pub step: String,
    pub action: String,
    pub object: Value,
    /// undone, failed, not-reversible, dry-run
    pub status: String,
    pub outputs: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    pub run_id: String,
    pub items: Vec<UndoItem>,
    #[serde(skip)]
    pub exit: Exit,
}

impl Render for UndoResult {
    fn table(&self) -> Table {
        let mut t = Table::new(["STEP", "ACTION", "OBJECT", "UNDO"]);
        for i in &self.items {
            let obj = format!(
                "{}/{} {}",
                i.object["kind"].as_str().unwrap_or(""),
                i.object["name"].as_str().unwrap_or(""),
                i.object["namespace"]
                    .as_str()
                    .map(|n| format!("in {n}"))
                    .unwrap_or_default()
            );
            let st = match &i.error {
                Some(e) => format!("{} ({e})", i.status),
                None => i.status.clone(),
            };
            t.row([i.step.clone(), i.action.clone(), obj, st]);
        }
        if self.items.is_empty() {
            t.note(format!(
                "run {} changed nothing that is left to undo",
                self.run_id
            ));
        }
        t
    }
    fn exit(&self) -> Exit {
        self.exit
    }
}

pub async fn run(ctx: &Ctx, spec: UndoSpec) -> Result<UndoResult> {
    let path = journal::path(&journal::dir(ctx), &spec.run_id);
    let records = journal::read(&path)?;
    // mutations are numbered by their position in the journal; undone ones are recorded by it
    let undone: Vec<u64> = records
        .iter()
        .filter(|r| r["type"] == "undo-step" && r["status"] == "undone")
        .filter_map(|r| r["mutation"].as_u64())
        .collect();
    let todo: Vec<(u64, &Value)> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["type"] == "mutation")
        .map(|(i, r)| (i as u64, r))
        .filter(|(i, _)| !undone.contains(i))
        .collect();
    let mut result = UndoResult {
        run_id: spec.run_id.clone(),
        items: Vec::new(),
        exit: Exit::Ok,
    };
    if todo.is_empty() {
        return Ok(result);
    }
    ctx.confirm(&format!(
        "undo {} change(s) made by run {}",
        todo.len(),
        spec.run_id
    ))?;
    let mut j = Journal::append_to(&path)?;
    j.write(json!({"type": "undo-start", "run": spec.run_id, "mutations": todo.len(), "dry_run": ctx.dry_run}))?;
    let mut failed = 0;
    for (seq, m) in todo.into_iter().rev() {
        let mut item = UndoItem {
            step: m["step"].as_str().unwrap_or("").into(),
            action: m["action"].as_str().unwrap_or("").into(),
            object: m["object"].clone(),
            status: String::new(),
            outputs: Value::Null,
            error: None,
        };
        let plan: Option<registry::UndoPlan> = serde_json::from_value(m["undo"].clone()).ok();
        match plan {
            None => item.status = "not-reversible".into(),
            Some(plan) => match run_plan(ctx, &plan).await {
                Ok(out) => {
                    item.status = if ctx.dry_run { "dry-run" } else { "undone" }.into();
                    item.outputs = out;
                }
                Err(e) => {
                    failed += 1;
                    item.status = "failed".into();
                    item.error = Some(e.to_string());
                    if result.exit == Exit::Ok {
                        result.exit = e.exit();
                    }
                }
            },
        }
        j.write(
            json!({"type": "undo-step", "mutation": seq, "step": item.step, "action": item.action,
                       "status": item.status, "outputs": item.outputs, "error": item.error}),
        )?;
        result.items.push(item);
    }
    let status = if failed == 0 { "ok" } else { "failed" };
    if !ctx.dry_run {
        j.write(json!({"type": "undo-end", "run": spec.run_id, "status": status}))?;
    }
    if failed > 0 && failed < result.items.len() {
        result.exit = Exit::Partial;
    }
    Ok(result)
}

async fn run_plan(ctx: &Ctx, plan: &registry::UndoPlan) -> Result<Value> {
    let def = registry::get(&plan.action).ok_or_else(|| {
        Error::failed(format!(
            "the undo action {} is not known to this kirt build",
            plan.action
        ))
    })?;
    let mut with = plan.with.as_object().cloned().unwrap_or_default();
    def.spec.prepare(&mut with);
    (def.run)(ctx, Value::Object(with)).await
}
