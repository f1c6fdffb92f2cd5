//! Running a playbook: validate everything, then the steps in order — `when`, `foreach`,
//! `confirm`, retries with backoff, timeouts, `continue_on_error` — each journaled before and
//! after, with the objects it changed. `--resume` replays a journal's completed steps' outputs
//! instead of running them again.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Map, Value};

use super::journal::{self, Journal, Origin, Record, RunStart, RunStatus, StepStatus, REDACTED};
use super::model::{Foreach, Playbook};
use super::validate::{self, Params};
use super::{registry, template};
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::output::{Render, Table};

#[derive(
    Debug, Clone, Default, clap::Args, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RunSpec {
    /// Playbook file, or the name of a shipped playbook (`kirt playbook list`)
    #[arg(value_name = "FILE|NAME", required_unless_present = "resume")]
    pub playbook: Option<String>,
    /// Parameter NAME=VALUE; repeatable
    #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// YAML or JSON file with parameters (a map); -p wins
    #[arg(long, value_name = "FILE")]
    pub params_file: Option<std::path::PathBuf>,
    /// Continue the run RUN_ID after its last completed step (same journal directory)
    #[arg(long, value_name = "RUN_ID")]
    pub resume: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub id: String,
    pub action: String,
    /// ok, failed, skipped, not-run, or done (by the run being resumed)
    pub status: String,
    pub duration_seconds: f64,
    pub attempts: u32,
    pub outputs: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub playbook: String,
    pub journal: String,
    /// ok, partial (a continue_on_error step failed) or failed
    pub status: String,
    pub dry_run: bool,
    pub duration_seconds: f64,
    pub steps: Vec<StepSummary>,
    #[serde(skip)]
    pub exit: Exit,
}

impl Render for RunSummary {
    fn table(&self) -> Table {
        let mut t = Table::new(["STEP", "ACTION", "STATUS", "DURATION", "OUTPUTS"]);
        for s in &self.steps {
            let status = match &s.error {
                Some(e) => format!("{} ({})", s.status, first_line(e)),
                None if s.attempts > 1 => format!("{} after {} attempts", s.status, s.attempts),
                None => s.status.clone(),
            };
            t.row([
                s.id.clone(),
                s.action.clone(),
                status,
                format!("{:.1}s", s.duration_seconds),
                key_outputs(&s.outputs),
            ]);
        }
        t.note(format!(
            "run {} of {}: {}{} in {:.1}s; journal {}",
            self.run_id,
            self.playbook,
            self.status,
            if self.dry_run { " (dry run)" } else { "" },
            self.duration_seconds,
            self.journal
        ));
        if self.status != "ok" {
            t.note(format!(
                "continue it with: kirt run --resume {}   reverse it with: kirt undo {}",
                self.run_id, self.run_id
            ));
        }
        t
    }
    fn exit(&self) -> Exit {
        self.exit
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// A few scalar outputs, `key=value`, for the summary table.
fn key_outputs(o: &Value) -> String {
    let Some(m) = o.as_object() else {
        return match o {
            Value::Array(a) => format!("{} items", a.len()),
            _ => String::new(),
        };
    };
    m.iter()
        .filter(|(_, v)| matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)))
        .filter(|(k, v)| !(k.as_str() == "dry_run" && **v == Value::Bool(false)))
        .take(4)
        .map(|(k, v)| {
            let mut s = match v {
                Value::String(s) => s.trim().to_string(),
                other => other.to_string(),
            };
            if s.len() > 40 {
                let mut cut = 37;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push_str("...");
            }
            format!("{k}={}", s.replace('\n', " "))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parameter values: params file, then -p (typed like the declared default), then defaults.
fn collect_params(
    pb: &Playbook,
    spec: &RunSpec,
    recorded: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>> {
    let mut given = Map::new();
    if let Some(rec) = recorded {
        for (k, v) in rec {
            if v != &Value::String(REDACTED.into()) {
                given.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(f) = &spec.params_file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::io(format!("reading the params file {}", f.display()), e))?;
        let m: Map<String, Value> = serde_yaml_ng::from_str(&text).map_err(|e| {
            Error::usage(format!(
                "{}: {e} (expected a map of parameters)",
                f.display()
            ))
        })?;
        given.extend(m);
    }
    for kv in &spec.params {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| Error::usage(format!("-p {kv:?}: expected NAME=VALUE")))?;
        let typed = pb
            .params
            .get(k)
            .and_then(|p| p.default.as_ref())
            .is_some_and(|d| !d.is_string() && !d.is_null());
        let value = if typed {
            serde_yaml_ng::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.into()))
        } else {
            Value::String(v.into())
        };
        given.insert(k.to_string(), value);
    }
    Ok(given)
}

/// Where a run starts from: a new run, or the journal of the run being resumed.
struct Setup {
    source: super::Source,
    run_id: String,
    started_at: String,
    /// Steps the resumed run finished (ok or skipped): their step-end records.
    done: BTreeMap<String, (StepStatus, Value)>,
    recorded_params: Option<Map<String, Value>>,
}

impl Setup {
    fn new(dir: &std::path::Path, spec: &RunSpec) -> Result<Setup> {
        let Some(id) = &spec.resume else {
            return Ok(Setup {
                source: super::resolve(spec.playbook.as_deref().unwrap_or_default())?,
                run_id: journal::new_run_id(),
                started_at: jiff::Timestamp::now().to_string(),
                done: BTreeMap::new(),
                recorded_params: None,
            });
        };
        let entries = journal::read(&journal::path(dir, id))?;
        let start = entries
            .iter()
            .find_map(|e| match &e.record {
                Record::RunStart(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| Error::failed(format!("run journal {id} has no run-start record")))?;
        if let Origin::Undo { of } = &start.origin {
            return Err(Error::Refused(format!(
                "run {id} is an undo of run {of}, not a playbook run: continue it with `kirt undo {of}`"
            )));
        }
        let file = spec
            .playbook
            .clone()
            .unwrap_or_else(|| start.source.clone());
        let source = super::resolve(&file)?;
        if source.digest != start.digest {
            return Err(Error::Refused(format!(
                "{} changed since run {id} started (digest {} now, {} then); resuming would run a different playbook — start a new run",
                source.file, source.digest, start.digest)));
        }
        let mut done = BTreeMap::new();
        for e in &entries {
            if let Record::StepEnd {
                step,
                status: status @ (StepStatus::Ok | StepStatus::Skipped),
                outputs,
                ..
            } = &e.record
            {
                done.insert(step.clone(), (*status, outputs.clone()));
            }
        }
        Ok(Setup {
            source,
            run_id: id.clone(),
            started_at: start.started_at.clone(),
            done,
            recorded_params: Some(start.params.clone()),
        })
    }
}

struct Runner<'a> {
    ctx: &'a Ctx,
    pb: &'a Playbook,
    journal: Journal,
    data: Value,
    env: minijinja::Environment<'static>,
}

pub async fn run(ctx: &Ctx, spec: RunSpec) -> Result<RunSummary> {
    let dir = journal::dir(ctx)?;
    let started = Instant::now();
    let origin = Setup::new(&dir, &spec)?;
    let source = &origin.source;
    let run_id = origin.run_id.clone();

    // Everything is validated before the journal is opened or anything runs.
    let pb = validate::parse(&source.file, &source.text)?;
    let given = collect_params(&pb, &spec, origin.recorded_params.as_ref())?;
    let problems = validate::check(&source.file, &source.text, &pb, Params::Given(&given));
    if !problems.list.is_empty() {
        return Err(problems.into());
    }
    let mut params = given;
    for (k, p) in &pb.params {
        if !params.contains_key(k) {
            if let Some(d) = &p.default {
                params.insert(k.clone(), d.clone());
            }
        }
    }
    let env_values: Map<String, Value> = pb
        .env
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), Value::String(v))))
        .collect();
    let data = json!({"params": params, "env": env_values, "steps": {},
                      "run": {"id": run_id, "started_at": origin.started_at, "dry_run": ctx.dry_run}});
    let problems = validate::check_rendered(&source.file, &source.text, &pb, &data);
    if !problems.list.is_empty() {
        return Err(problems.into());
    }

    let journal = open_journal(ctx, &dir, &spec, &origin, &pb, &params, &env_values).await?;
    tracing::info!(
        "run {run_id} of {} (journal {})",
        pb.metadata.name,
        journal.path.display()
    );
    let mut r = Runner {
        ctx,
        pb: &pb,
        journal,
        data,
        env: template::env(),
    };
    let (steps, exit, status) = r.run_steps(&origin.done).await?;
    let exit_code = exit;
    r.journal.write(Record::RunEnd {
        run: run_id.clone(),
        status,
        exit: exit_code as u8,
    })?;
    let mut summary = RunSummary {
        run_id,
        playbook: pb.metadata.name.clone(),
        journal: r.journal.path.display().to_string(),
        status: journal::name(&status),
        dry_run: ctx.dry_run,
        duration_seconds: started.elapsed().as_secs_f64(),
        steps,
        exit: exit_code,
    };
    for s in &mut summary.steps {
        r.journal.redactor.value(&mut s.outputs);
        if let Some(e) = &mut s.error {
            *e = r.journal.redactor.str(e);
        }
    }
    Ok(summary)
}

/// Opens (or, resuming, appends to) the journal, teaches it the secrets to redact, and writes the
/// run-start (run-resume) record.
async fn open_journal(
    ctx: &Ctx,
    dir: &std::path::Path,
    spec: &RunSpec,
    origin: &Setup,
    pb: &Playbook,
    params: &Map<String, Value>,
    env_values: &Map<String, Value>,
) -> Result<Journal> {
    let mut journal = match &spec.resume {
        Some(_) => Journal::append_to(&journal::path(dir, &origin.run_id))?,
        None => Journal::create(dir, &origin.run_id)?,
    };
    for (k, p) in &pb.params {
        if p.secret {
            if let Some(v) = params.get(k) {
                journal.redactor.add_value(v);
            }
        }
    }
    env_values
        .values()
        .for_each(|v| journal.redactor.add_value(v));
    let shown_params: Map<String, Value> = params
        .iter()
        .map(|(k, v)| {
            let secret = pb.params.get(k).is_some_and(|p| p.secret);
            (k.clone(), if secret { json!(REDACTED) } else { v.clone() })
        })
        .collect();
    let kind = if spec.resume.is_some() {
        Origin::Resume
    } else {
        Origin::Manual
    };
    let start = RunStart {
        started_at: origin.started_at.clone(),
        playbook: pb.metadata.name.clone(),
        source: origin.source.file.clone(),
        digest: origin.source.digest.clone(),
        params: shown_params,
        ..RunStart::now(ctx, &origin.run_id, kind).await
    };
    journal.write(if spec.resume.is_some() {
        Record::RunResume(start)
    } else {
        Record::RunStart(start)
    })?;
    Ok(journal)
}

/// What one run of a step's action gave.
struct StepOutcome {
    status: StepStatus,
    exit: Exit,
    summary: StepSummary,
}

impl Runner<'_> {
    /// Every step in order; steps a resumed run finished are replayed from their outputs, and
    /// after a failure (not `continue_on_error`) the rest are not run.
    async fn run_steps(
        &mut self,
        done: &BTreeMap<String, (StepStatus, Value)>,
    ) -> Result<(Vec<StepSummary>, Exit, RunStatus)> {
        let mut steps = Vec::new();
        let mut exit = Exit::Ok;
        let mut partial = false;
        for (i, step) in self.pb.steps.iter().enumerate() {
            let not_run = |status: String, outputs: Value| StepSummary {
                id: step.id.clone(),
                action: step.action.clone(),
                status,
                duration_seconds: 0.0,
                attempts: 0,
                outputs,
                error: None,
            };
            if exit != Exit::Ok {
                steps.push(not_run("not-run".into(), Value::Null));
                continue;
            }
            if let Some((status, outputs)) = done.get(&step.id) {
                let status = journal::name(status);
                self.data["steps"][&step.id] = json!({"outputs": outputs, "status": status});
                steps.push(not_run(format!("done ({status})"), outputs.clone()));
                continue;
            }
            let s = self.step(i).await?;
            if s.status == StepStatus::Failed {
                if step.continue_on_error {
                    partial = true;
                } else {
                    exit = s.exit;
                }
            }
            steps.push(s.summary);
        }
        let status = if matches!(exit, Exit::Interrupted | Exit::Terminated) {
            RunStatus::Interrupted
        } else if exit != Exit::Ok {
            RunStatus::Failed
        } else if partial {
            exit = Exit::Partial;
            RunStatus::Partial
        } else {
            RunStatus::Ok
        };
        Ok((steps, exit, status))
    }

    async fn step(&mut self, i: usize) -> Result<StepOutcome> {
        let step = &self.pb.steps[i];
        let def = registry::get(&step.action)
            .ok_or_else(|| Error::usage(format!("unknown action {}", step.action)))?;
        let start = Instant::now();
        self.journal.write(Record::StepStart {
            step: step.id.clone(),
            index: i,
            action: step.action.clone(),
        })?;
        let mut summary = StepSummary {
            id: step.id.clone(),
            action: step.action.clone(),
            status: String::new(),
            duration_seconds: 0.0,
            attempts: 0,
            outputs: Value::Null,
            error: None,
        };
        let result = self.run_items(step, def, &mut summary.attempts).await;
        summary.duration_seconds = start.elapsed().as_secs_f64();
        let (status, exit) = match result {
            Ok(None) => {
                summary.outputs = json!({});
                (StepStatus::Skipped, Exit::Ok)
            }
            Ok(Some(out)) => {
                summary.outputs = out;
                (StepStatus::Ok, Exit::Ok)
            }
            Err(e) => {
                summary.error = Some(e.to_string());
                (StepStatus::Failed, e.exit())
            }
        };
        summary.status = journal::name(&status);
        match status {
            StepStatus::Failed => tracing::error!(
                "step {} ({}) failed: {}",
                step.id,
                step.action,
                self.journal
                    .redactor
                    .str(summary.error.as_deref().unwrap_or(""))
            ),
            _ => tracing::info!(
                "step {} ({}): {} in {:.1}s",
                step.id,
                step.action,
                summary.status,
                summary.duration_seconds
            ),
        }
        self.journal.write(Record::StepEnd {
            step: step.id.clone(),
            status,
            duration_seconds: summary.duration_seconds,
            attempts: summary.attempts,
            outputs: summary.outputs.clone(),
            error: summary.error.clone(),
            exit: exit as u8,
        })?;
        self.data["steps"][&step.id] =
            json!({"outputs": summary.outputs, "status": summary.status});
        Ok(StepOutcome {
            status,
            exit,
            summary,
        })
    }

    /// `when`, `foreach` and `confirm`, then the action once per item. `None`: skipped by `when`.
    async fn run_items(
        &mut self,
        step: &super::model::Step,
        def: &registry::ActionDef,
        attempts: &mut u32,
    ) -> Result<Option<Value>> {
        if let Some(w) = &step.when {
            let yes = template::truthy(&self.env, w, &self.data)
                .map_err(|e| Error::usage(format!("step {}: when: {e}", step.id)))?;
            if !yes {
                return Ok(None);
            }
        }
        let items = self.items(step).await?;
        if step.confirm {
            let answer = self.ctx.confirm(&format!(
                "playbook {} step {} ({})",
                self.pb.metadata.name, step.id, step.action
            ))?;
            self.journal.write(Record::Confirmed {
                step: step.id.clone(),
                answer: answer.describe().into(),
            })?;
        }
        let mut outs = Vec::new();
        for item in &items {
            let (out, n) = self.run_item(step, def, item.as_ref()).await?;
            *attempts = (*attempts).max(n);
            outs.push(out);
        }
        Ok(Some(if step.foreach.is_some() {
            Value::Array(outs)
        } else {
            outs.pop().unwrap_or(Value::Null)
        }))
    }

    /// The elements a step runs for: one `None` without `foreach`.
    async fn items(&self, step: &super::model::Step) -> Result<Vec<Option<Value>>> {
        Ok(match &step.foreach {
            None => vec![None],
            Some(Foreach::Pods { pods }) => self
                .pods(&pods.namespace, &pods.selector)
                .await?
                .into_iter()
                .map(Some)
                .collect(),
            Some(Foreach::Expr(f)) => match template::eval(&self.env, f, &self.data)
                .map_err(|e| Error::usage(format!("step {}: foreach: {e}", step.id)))?
            {
                Value::Array(a) => a.into_iter().map(Some).collect(),
                Value::Null => vec![],
                other => {
                    return Err(Error::usage(format!(
                        "step {}: foreach gave {other}, not a list",
                        step.id
                    )))
                }
            },
        })
    }

    /// Renders `with:` for one item, journals it (secrets redacted), runs the action with retries
    /// and journals what it changed.
    async fn run_item(
        &mut self,
        step: &super::model::Step,
        def: &registry::ActionDef,
        item: Option<&Value>,
    ) -> Result<(Value, u32)> {
        let mut data = self.data.clone();
        if let Some(it) = item {
            data["item"] = it.clone();
        }
        let rendered = template::render(&self.env, &Value::Object(step.with.clone()), &data)
            .map_err(|e| Error::usage(format!("step {}: {e}", step.id)))?;
        let mut with = rendered.as_object().cloned().unwrap_or_default();
        for f in def.secret_fields {
            if let Some(v) = with.get(*f) {
                self.journal.redactor.add_value(v);
            }
        }
        let missing = def.spec.missing(&with);
        if !missing.is_empty() {
            return Err(Error::usage(format!(
                "step {}: {} needs {} (its template gave nothing)",
                step.id,
                def.name,
                missing.join(", ")
            )));
        }
        def.spec.prepare(&mut with);
        let mut shown = Value::Object(with.clone());
        for f in def.secret_fields {
            if let Some(v) = shown.get_mut(*f) {
                *v = json!(REDACTED);
            }
        }
        self.journal.write(Record::StepItem {
            step: step.id.clone(),
            item: item.cloned(),
            with: shown,
        })?;
        let with = Value::Object(with);
        let (out, attempts) = self.attempt(step, def, with.clone()).await?;
        self.journal
            .mutations(&step.id, def, &with, &out, self.ctx.dry_run)?;
        Ok((out, attempts))
    }

    /// `foreach: {pods: …}`: the pods a label selector matches, as template items.
    async fn pods(&self, namespace: &str, selector: &str) -> Result<Vec<Value>> {
        use k8s_openapi::api::core::v1::Pod;
        let render = |s: &str| match template::render_str(&self.env, s, &self.data) {
            Ok(Value::String(s)) => Ok(s),
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err(Error::usage(format!("foreach pods: {e}"))),
        };
        let (ns, sel) = (render(namespace)?, render(selector)?);
        let list = self
            .ctx
            .cluster()
            .await?
            .namespaced::<Pod>(&ns)
            .list_labelled(&sel)
            .await?;
        let mut items: Vec<Value> = list
            .iter()
            .map(|p| {
                json!({
                    "name": p.metadata.name, "namespace": p.metadata.namespace,
                    "labels": p.metadata.labels,
                    "node": p.spec.as_ref().and_then(|s| s.node_name.clone()),
                    "phase": p.status.as_ref().and_then(|s| s.phase.clone()),
                })
            })
            .collect();
        items.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        Ok(items)
    }

    /// Runs the action, retrying with exponential backoff; each attempt is bounded by `timeout`
    /// (dropping the attempt's future stops it, killing any child process).
    async fn attempt(
        &mut self,
        step: &super::model::Step,
        def: &registry::ActionDef,
        with: Value,
    ) -> Result<(Value, u32)> {
        let mut delay = step.retry_delay.unwrap_or(Duration::from_secs(2));
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A signal stops the step whether or not its action watches for one itself; the run
            // is then journaled as interrupted and `kirt run --resume` goes on from this step.
            let stop = &self.ctx.shutdown;
            let fut = stop.guard("the step was stopped", (def.run)(self.ctx, with.clone()));
            let res = match step.timeout {
                Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                    Err(Error::failed(format!(
                        "step {} timed out after {}",
                        step.id,
                        crate::units::human_duration(t)
                    )))
                }),
                None => fut.await,
            };
            match res {
                Ok(v) => return Ok((v, attempt)),
                // usage errors, refusals and signals will not go away by trying again
                Err(e)
                    if attempt > step.retries
                        || matches!(
                            e.exit(),
                            Exit::Usage | Exit::Refused | Exit::Interrupted | Exit::Terminated
                        ) =>
                {
                    return Err(e)
                }
                Err(e) => {
                    let msg = self.journal.redactor.str(&e.to_string());
                    tracing::warn!(
                        "step {} attempt {attempt} failed: {msg}; retrying in {}",
                        step.id,
                        crate::units::human_duration(delay)
                    );
                    self.journal.write(Record::StepRetry {
                        step: step.id.clone(),
                        attempt,
                        error: msg,
                    })?;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(300));
                }
            }
        }
    }
}

/// Source of a playbook, for diagnostics and journals.
pub fn digest(text: &str) -> String {
    use sha2::Digest;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    )
}
