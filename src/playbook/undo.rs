//! `kirt undo RUN_ID`: reverses the mutations a run journaled, newest first, with each action's
//! undo plan (rollback → back to the recorded revision; quarantine → release). Mutations already
//! undone are not undone twice; the undo is journaled in the same file.

use serde::Serialize;
use serde_json::Value;

use super::journal::{self, Journal, Record, RunStatus, UndoStatus};
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
    pub status: UndoStatus,
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
            let status = journal::name(&i.status);
            let st = match &i.error {
                Some(e) => format!("{status} ({e})"),
                None => status.to_string(),
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
    let path = journal::path(&journal::dir(ctx)?, &spec.run_id);
    let entries = journal::read(&path)?;
    // mutations are numbered by their position in the journal; undone ones are recorded by it
    let undone: Vec<u64> = entries
        .iter()
        .filter_map(|e| match &e.record {
            Record::UndoStep {
                mutation,
                status: UndoStatus::Undone,
                ..
            } => Some(*mutation),
            _ => None,
        })
        .collect();
    let todo: Vec<(u64, &Record)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.record, Record::Mutation { .. }))
        .map(|(i, e)| (i as u64, &e.record))
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
    check_plans(&spec.run_id, &todo)?;
    ctx.confirm(&format!(
        "undo {} change(s) made by run {}",
        todo.len(),
        spec.run_id
    ))?;
    let mut j = Journal::append_to(&path)?;
    j.write(Record::UndoStart {
        run: spec.run_id.clone(),
        mutations: todo.len(),
        dry_run: ctx.dry_run,
    })?;
    let mut failed = 0;
    for (seq, m) in todo.into_iter().rev() {
        let Record::Mutation {
            step,
            action,
            object,
            undo,
        } = m
        else {
            continue;
        };
        let mut item = UndoItem {
            step: step.clone(),
            action: action.clone(),
            object: object.clone(),
            status: UndoStatus::NotReversible,
            outputs: Value::Null,
            error: None,
        };
        if let Some(plan) = undo {
            if let Err(e) = undo_one(ctx, plan, &mut item).await {
                failed += 1;
                if result.exit == Exit::Ok {
                    result.exit = e.exit();
                }
            }
        }
        j.write(Record::UndoStep {
            mutation: seq,
            step: item.step.clone(),
            action: item.action.clone(),
            status: item.status,
            outputs: item.outputs.clone(),
            error: item.error.clone(),
        })?;
        result.items.push(item);
    }
    if !ctx.dry_run {
        j.write(Record::UndoEnd {
            run: spec.run_id.clone(),
            status: if failed == 0 {
                RunStatus::Ok
            } else {
                RunStatus::Failed
            },
        })?;
    }
    if failed > 0 && failed < result.items.len() {
        result.exit = Exit::Partial;
    }
    Ok(result)
}

/// A journal is a file anyone with access to the state dir can edit: before anything runs, every
/// undo plan must name a reversal action (never `exec` or a backup), and what will run is shown.
fn check_plans(run_id: &str, todo: &[(u64, &Record)]) -> Result<()> {
    let mut refused = Vec::new();
    for (_, m) in todo.iter().rev() {
        let Record::Mutation {
            step,
            undo: Some(plan),
            ..
        } = m
        else {
            continue;
        };
        match registry::get(&plan.action) {
            Some(def) if def.reversal => {
                eprintln!("undo {step}: {} {}", plan.action, plan.with)
            }
            _ => refused.push(format!("step {step}: {}", plan.action)),
        }
    }
    if refused.is_empty() {
        return Ok(());
    }
    Err(Error::Refused(format!(
        "the journal of run {run_id} asks kirt undo to run actions that reverse nothing ({}): kirt undo runs only {}; the journal was edited or is not kirt's, nothing was run",
        refused.join(", "),
        registry::all()
            .iter()
            .filter(|a| a.reversal)
            .map(|a| a.name)
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Runs one mutation's undo plan; the item records how it went.
async fn undo_one(ctx: &Ctx, plan: &registry::UndoPlan, item: &mut UndoItem) -> Result<()> {
    match run_plan(ctx, plan).await {
        Ok(out) => {
            item.status = if ctx.dry_run {
                UndoStatus::DryRun
            } else {
                UndoStatus::Undone
            };
            item.outputs = out;
            Ok(())
        }
        Err(e) => {
            item.status = UndoStatus::Failed;
            item.error = Some(e.to_string());
            Err(e)
        }
    }
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
