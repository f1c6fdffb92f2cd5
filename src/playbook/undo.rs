//! `kirt undo RUN_ID`: reverses the mutations a run journaled, newest first, with each action's
//! undo plan (rollback → back to the recorded revision; quarantine → release). Mutations already
//! undone are not undone twice; the undo is journaled in the same file.

use serde::Serialize;
use serde_json::Value;

use super::journal::{self, Journal, Origin, Record, RunStart, RunStatus, StepStatus, UndoStatus};
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
    /// The undo's own journal (`kirt runs report UNDO_RUN`); none when nothing was left to undo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undo_run: Option<String>,
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
        match &self.undo_run {
            Some(u) => {
                t.note(format!(
                    "journaled as run {u}: kirt runs report {u} (the undo) or {} (the run and its undo)",
                    self.run_id
                ));
            }
            None => {
                t.note(format!(
                    "run {} changed nothing that is left to undo",
                    self.run_id
                ));
            }
        }
        t
    }
    fn exit(&self) -> Exit {
        self.exit
    }
}

/// The two journals an undo writes: its own (a run whose origin is the undo, for reports) and
/// the undone run's (which mutations are undone, so that none is undone twice).
struct Journals {
    own: Journal,
    run: Journal,
}

pub async fn run(ctx: &Ctx, spec: UndoSpec) -> Result<UndoResult> {
    let dir = journal::dir(ctx)?;
    let path = journal::path(&dir, &spec.run_id);
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
        undo_run: None,
        items: Vec::new(),
        exit: Exit::Ok,
    };
    if todo.is_empty() {
        return Ok(result);
    }
    check_plans(&spec.run_id, &todo)?;
    let question = format!("undo {} change(s) made by run {}", todo.len(), spec.run_id);
    let answer = ctx.confirm(&question)?;
    let undo_id = journal::new_run_id();
    let mut j = open(ctx, &dir, &undo_id, &spec.run_id, &entries, &path).await?;
    j.own.write(Record::Confirmed {
        step: String::new(),
        answer: answer.describe().into(),
    })?;
    j.run.write(Record::UndoStart {
        run: spec.run_id.clone(),
        mutations: todo.len(),
        dry_run: ctx.dry_run,
        undo_run: Some(undo_id.clone()),
    })?;
    result.undo_run = Some(undo_id.clone());
    let mut failed = 0;
    // the same reversal (a release of the pod whose policy and labels one step changed) runs once
    let mut ran: Vec<&registry::UndoPlan> = Vec::new();
    for (index, (seq, m)) in todo.into_iter().rev().enumerate() {
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
        match undo {
            Some(plan)
                if ran
                    .iter()
                    .any(|p| p.action == plan.action && p.with == plan.with) =>
            {
                item.status = if ctx.dry_run {
                    UndoStatus::DryRun
                } else {
                    UndoStatus::Undone
                };
            }
            Some(plan) => {
                if let Err(e) = undo_one(ctx, &mut j.own, index, plan, &mut item).await {
                    failed += 1;
                    if result.exit == Exit::Ok {
                        result.exit = e.exit();
                    }
                } else {
                    ran.push(plan);
                }
            }
            None => {}
        }
        j.run.write(Record::UndoStep {
            mutation: seq,
            step: item.step.clone(),
            action: item.action.clone(),
            status: item.status,
            outputs: item.outputs.clone(),
            error: item.error.clone(),
        })?;
        result.items.push(item);
    }
    let status = if failed == 0 {
        RunStatus::Ok
    } else {
        RunStatus::Failed
    };
    if !ctx.dry_run {
        j.run.write(Record::UndoEnd {
            run: spec.run_id.clone(),
            status,
        })?;
    }
    if failed > 0 && failed < result.items.len() {
        result.exit = Exit::Partial;
    }
    j.own.write(Record::RunEnd {
        run: undo_id,
        status,
        exit: result.exit as u8,
    })?;
    Ok(result)
}

/// The undo's own journal, which starts as a run whose origin is the undo of `run_id` (same
/// playbook), and the undone run's journal, appended to.
async fn open(
    ctx: &Ctx,
    dir: &std::path::Path,
    undo_id: &str,
    run_id: &str,
    entries: &[journal::Entry],
    path: &std::path::Path,
) -> Result<Journals> {
    let undone = entries.iter().find_map(|e| match &e.record {
        Record::RunStart(s) => Some(s),
        _ => None,
    });
    let mut own = Journal::create(dir, undo_id)?;
    let origin = Origin::Undo {
        of: run_id.to_string(),
    };
    let mut start = RunStart::now(ctx, undo_id, origin).await;
    if let Some(u) = undone {
        start.playbook = u.playbook.clone();
        start.source = u.source.clone();
        start.digest = u.digest.clone();
    }
    own.write(Record::RunStart(start))?;
    Ok(Journals {
        own,
        run: Journal::append_to(path)?,
    })
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

/// Runs one mutation's undo plan as a step of the undo's own journal (what it changed is
/// journaled there, as a playbook step's would be); the item records how it went.
async fn undo_one(
    ctx: &Ctx,
    own: &mut Journal,
    index: usize,
    plan: &registry::UndoPlan,
    item: &mut UndoItem,
) -> Result<()> {
    let clock = std::time::Instant::now();
    own.write(Record::StepStart {
        step: item.step.clone(),
        index,
        action: plan.action.clone(),
    })?;
    own.write(Record::StepItem {
        step: item.step.clone(),
        item: None,
        with: plan.with.clone(),
    })?;
    let res = run_plan(ctx, plan).await;
    if let (Ok(out), Some(def)) = (&res, registry::get(&plan.action)) {
        own.mutations(&item.step, def, &plan.with, out, ctx.dry_run)?;
    }
    let (status, exit) = match &res {
        Ok(_) => (StepStatus::Ok, Exit::Ok),
        Err(e) => (StepStatus::Failed, e.exit()),
    };
    own.write(Record::StepEnd {
        step: item.step.clone(),
        status,
        duration_seconds: clock.elapsed().as_secs_f64(),
        attempts: 1,
        outputs: res.as_ref().cloned().unwrap_or(Value::Null),
        error: res.as_ref().err().map(|e| e.to_string()),
        exit: exit as u8,
    })?;
    match res {
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
