//! `kirt playbook list|show|validate|schema` and `kirt runs list|show`: looking at playbooks and
//! at the journals of past runs.

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::journal::{self, Entry, Record, StepStatus};
use super::model::Playbook;
use super::validate::{self, Params};
use super::{registry, resolve, SHIPPED};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Serialize)]
pub struct PlaybookEntry {
    pub name: String,
    pub file: String,
    pub description: String,
    pub valid: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlaybookList {
    pub playbooks: Vec<PlaybookEntry>,
}

impl Render for PlaybookList {
    fn table(&self) -> Table {
        let mut t = Table::new(["NAME", "FILE", "DESCRIPTION"]);
        for p in &self.playbooks {
            let d = if p.valid {
                p.description.clone()
            } else {
                format!(
                    "(invalid: run `kirt playbook validate {}`) {}",
                    p.file, p.description
                )
            };
            t.row([p.name.clone(), p.file.clone(), d]);
        }
        t
    }
}

/// Shipped playbooks, plus the YAML files given (or in ./playbooks when none are given).
pub fn list(files: &[String]) -> Result<PlaybookList> {
    let mut targets: Vec<String> = SHIPPED.iter().map(|(n, _)| n.to_string()).collect();
    if files.is_empty() {
        if let Ok(rd) = std::fs::read_dir("playbooks") {
            let mut local: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .map(|p| p.display().to_string())
                .collect();
            local.sort();
            targets.extend(local);
        }
    } else {
        targets.extend(files.iter().cloned());
    }
    let mut playbooks = Vec::new();
    let mut seen = Vec::new();
    for t in targets {
        let src = resolve(&t)?;
        // ./playbooks in a kirt checkout holds the shipped ones themselves
        if seen.contains(&src.digest) {
            continue;
        }
        seen.push(src.digest.clone());
        let (name, description, valid) = match validate::parse(&src.file, &src.text) {
            Ok(pb) => {
                let ok = validate::check(&src.file, &src.text, &pb, Params::Unknown)
                    .list
                    .is_empty();
                (pb.metadata.name, pb.metadata.description, ok)
            }
            Err(_) => (t.clone(), String::new(), false),
        };
        playbooks.push(PlaybookEntry {
            name,
            file: src.file,
            description: description.trim().to_string(),
            valid,
        });
    }
    Ok(PlaybookList { playbooks })
}

#[derive(Debug, Clone, Serialize)]
pub struct PlaybookShow {
    pub file: String,
    pub digest: String,
    pub playbook: Playbook,
    #[serde(skip)]
    pub text: String,
}

impl Render for PlaybookShow {
    fn table(&self) -> Table {
        let mut t = Table::new(["PARAM", "REQUIRED", "DEFAULT", "DESCRIPTION"]);
        for (n, p) in &self.playbook.params {
            let d = p
                .default
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default();
            t.row([
                n.clone(),
                p.required.to_string(),
                d,
                format!(
                    "{}{}",
                    p.description,
                    if p.secret { " (secret)" } else { "" }
                ),
            ]);
        }
        t.note(format!(
            "# {} ({}, {})",
            self.playbook.metadata.name, self.file, self.digest
        ));
        t.note(self.text.trim_end().to_string());
        t
    }
}

pub fn show(target: &str) -> Result<PlaybookShow> {
    let src = resolve(target)?;
    let playbook = validate::parse(&src.file, &src.text)?;
    Ok(PlaybookShow {
        file: src.file,
        digest: src.digest,
        playbook,
        text: src.text,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Validated {
    pub file: String,
    pub name: String,
    pub steps: usize,
}

impl Render for Validated {
    fn table(&self) -> Table {
        let mut t = Table::default();
        t.note(format!(
            "{}: playbook {} is valid ({} steps)",
            self.file, self.name, self.steps
        ));
        t
    }
}

/// Exit 2 with every problem listed, or the playbook's name.
pub fn validate_file(target: &str, params: &[String]) -> Result<Validated> {
    let src = resolve(target)?;
    let pb = validate::parse(&src.file, &src.text)?;
    let mut given = Map::new();
    for kv in params {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("-p {kv:?}: expected NAME=VALUE")))?;
        given.insert(k.into(), Value::String(v.into()));
    }
    let mode = if params.is_empty() {
        Params::Unknown
    } else {
        Params::Given(&given)
    };
    let problems = validate::check(&src.file, &src.text, &pb, mode);
    if !problems.list.is_empty() {
        return Err(problems.into());
    }
    Ok(Validated {
        file: src.file,
        name: pb.metadata.name,
        steps: pb.steps.len(),
    })
}

/// JSON Schema of playbook files, with each action's `with:` schema selected by `action:`.
pub fn schema() -> Value {
    let mut root = serde_json::to_value(schemars::schema_for!(Playbook)).unwrap_or(Value::Null);
    let mut defs = root
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut rules = Vec::new();
    for a in registry::all() {
        let mut s = a.spec.schema.clone();
        if let Some(d) = s
            .as_object_mut()
            .and_then(|m| m.remove("$defs"))
            .and_then(|d| d.as_object().cloned())
        {
            defs.extend(d);
        }
        if let Some(m) = s.as_object_mut() {
            m.remove("$schema");
            m.insert("description".into(), json!(a.about));
        }
        rules.push(json!({"if": {"properties": {"action": {"const": a.name}}},
                          "then": {"properties": {"with": s}}}));
    }
    let names: Vec<&str> = registry::all().iter().map(|a| a.name).collect();
    if let Some(step) = defs.get_mut("Step") {
        step["properties"]["action"]["enum"] = json!(names);
        step["allOf"] = Value::Array(rules);
    }
    root["$defs"] = Value::Object(defs);
    root["title"] = json!("kirt playbook (kirt.dev/v1)");
    root
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub playbook: String,
    /// manual, or undo of run X (a resumed run is one run with several parts)
    pub origin: String,
    pub started_at: String,
    pub status: String,
    pub steps_done: usize,
    pub dry_run: bool,
    pub undone: bool,
    /// Times it was continued with `kirt run --resume`.
    pub resumed: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunList {
    pub dir: String,
    pub runs: Vec<RunInfo>,
}

impl Render for RunList {
    fn table(&self) -> Table {
        let mut t = Table::new([
            "RUN",
            "PLAYBOOK",
            "ORIGIN",
            "STARTED",
            "STATUS",
            "STEPS DONE",
        ]);
        for r in &self.runs {
            let mut status = r.status.clone();
            if r.dry_run {
                status.push_str(" (dry run)");
            }
            if r.resumed > 0 {
                status.push_str(&format!(", resumed {}x", r.resumed));
            }
            if r.undone {
                status.push_str(", undone");
            }
            t.row([
                r.run_id.clone(),
                r.playbook.clone(),
                r.origin.clone(),
                r.started_at.clone(),
                status,
                r.steps_done.to_string(),
            ]);
        }
        if self.runs.is_empty() {
            t.note(format!("no runs in {}", self.dir));
        }
        t
    }
}

fn info(run_id: &str, entries: &[Entry]) -> RunInfo {
    let start = entries.iter().find_map(|e| match &e.record {
        Record::RunStart(s) => Some(s),
        _ => None,
    });
    let status = entries
        .iter()
        .rev()
        .find_map(|e| match &e.record {
            Record::RunEnd { status, .. } => Some(journal::name(status)),
            _ => None,
        })
        .unwrap_or_else(|| "incomplete (killed or still running)".into());
    RunInfo {
        run_id: run_id.into(),
        playbook: start.map(|s| s.playbook.clone()).unwrap_or_else(|| "?".into()),
        origin: start.map(|s| s.origin.describe()).unwrap_or_default(),
        started_at: start.map(|s| s.started_at.clone()).unwrap_or_default(),
        status,
        steps_done: entries
            .iter()
            .filter(|e| {
                matches!(&e.record, Record::StepEnd { status, .. } if *status != StepStatus::Failed)
            })
            .count(),
        dry_run: start.is_some_and(|s| s.dry_run),
        undone: entries
            .iter()
            .any(|e| matches!(e.record, Record::UndoEnd { .. })),
        resumed: entries
            .iter()
            .filter(|e| matches!(e.record, Record::RunResume(_)))
            .count(),
    }
}

pub fn runs_list(ctx: &Ctx) -> Result<RunList> {
    let dir = journal::dir(ctx)?;
    let mut runs = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let p = e.path();
            let Some(id) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".jsonl"))
            else {
                continue;
            };
            if let Ok(entries) = journal::read(&p) {
                runs.push(info(id, &entries));
            }
        }
    }
    runs.sort_by(|a, b| b.started_at.cmp(&a.started_at));
    Ok(RunList {
        dir: dir.display().to_string(),
        runs,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct RunShow {
    pub run: RunInfo,
    pub journal: String,
    pub records: Vec<Entry>,
}

impl Render for RunShow {
    fn table(&self) -> Table {
        let mut t = Table::new(["TIME", "RECORD", "STEP", "DETAIL"]);
        for e in &self.records {
            let (kind, step, detail) = describe(&e.record);
            t.row([e.time.clone(), kind.to_string(), step, detail]);
        }
        t.note(format!(
            "run {}: {} ({})",
            self.run.run_id, self.run.status, self.journal
        ));
        t
    }
}

/// (record type, step, one-line detail) for `kirt runs show`.
fn describe(r: &Record) -> (&'static str, String, String) {
    match r {
        Record::RunStart(s) => (
            "run-start",
            String::new(),
            format!("playbook {} {}", s.playbook, s.digest),
        ),
        Record::RunResume(s) => (
            "run-resume",
            String::new(),
            format!("playbook {} {}", s.playbook, s.digest),
        ),
        Record::StepStart { step, .. } => ("step-start", step.clone(), String::new()),
        Record::StepItem { step, .. } => ("step-item", step.clone(), String::new()),
        Record::StepRetry { step, .. } => ("step-retry", step.clone(), String::new()),
        Record::Confirmed { step, answer } => ("confirmed", step.clone(), answer.clone()),
        Record::Mutation {
            step,
            action,
            object,
            ..
        } => ("mutation", step.clone(), format!("{action} {object}")),
        Record::StepEnd {
            step,
            status,
            duration_seconds,
            error,
            ..
        } => (
            "step-end",
            step.clone(),
            format!(
                "{} in {duration_seconds:.1}s{}",
                journal::name(status),
                error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
        ),
        Record::RunEnd { status, .. } => ("run-end", String::new(), journal::name(status)),
        Record::UndoStart { .. } => ("undo-start", String::new(), String::new()),
        Record::UndoStep {
            step,
            status,
            error,
            ..
        } => (
            "undo-step",
            step.clone(),
            format!(
                "{} {}",
                journal::name(status),
                error.as_deref().unwrap_or("")
            ),
        ),
        Record::UndoEnd { status, .. } => ("undo-end", String::new(), journal::name(status)),
    }
}

pub fn runs_show(ctx: &Ctx, run_id: &str) -> Result<RunShow> {
    let path = journal::path(&journal::dir(ctx)?, run_id);
    let records = journal::read(&path)?;
    Ok(RunShow {
        run: info(run_id, &records),
        journal: path.display().to_string(),
        records,
    })
}
