//! What a report says, built from a run's journal: its parts (started, resumed), steps,
//! confirmations, retries, failures, the objects it changed, the artifacts it made, its undo,
//! and the timeline that interleaves all of it with Kubernetes Events and audit events.

use jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::playbook::journal::{self, Entry, Origin, Record};

/// A run's report. Every string in it may come from an edited journal, an Event or an audit log:
/// the renderers escape all of them.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub run: String,
    pub playbook: String,
    pub source: String,
    pub digest: String,
    pub status: String,
    pub dry_run: bool,
    /// `manual`, `undo of run X` … (the first part's origin).
    pub origin: String,
    /// For an undo: the run it reverses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses: Option<String>,
    pub params: Vec<(String, String)>,
    pub parts: Vec<Part>,
    pub steps: Vec<StepRun>,
    pub changes: Vec<Change>,
    pub artifacts: Vec<Artifact>,
    pub undos: Vec<Undo>,
    pub events: Section<KubeEvent>,
    pub audit: Option<Audit>,
    pub start: String,
    pub end: String,
    pub duration: String,
    pub timeline: Vec<Moment>,
    pub bars: Vec<Bar>,
    pub marks: Vec<Mark>,
    pub generated: String,
}

/// One `kirt run` (or `--resume`, or undo) invocation of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Part {
    pub n: usize,
    pub origin: String,
    pub user: String,
    pub host: String,
    pub identity: String,
    pub cluster: String,
    pub kirt: String,
    pub started: String,
    pub ended: String,
    pub status: String,
    #[serde(skip)]
    pub at: Option<Timestamp>,
}

/// One execution of a step.
#[derive(Debug, Clone, Serialize)]
pub struct StepRun {
    pub id: String,
    pub action: String,
    pub part: usize,
    pub started: String,
    pub ended: String,
    pub duration: String,
    pub status: String,
    pub attempts: u32,
    pub retries: Vec<String>,
    pub confirmed: String,
    pub error: String,
    #[serde(skip)]
    pub from: Option<Timestamp>,
    #[serde(skip)]
    pub to: Option<Timestamp>,
}

/// One object a step changed, as the journal recorded it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub time: String,
    pub step: String,
    pub action: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub before: String,
    pub after: String,
    pub fields: Vec<String>,
    pub changes: Vec<String>,
    /// How `kirt undo` reverses it.
    pub undo: String,
    #[serde(skip)]
    pub service_account: Option<String>,
}

/// An evidence bundle or backup a step made.
#[derive(Debug, Clone, Serialize)]
pub struct Artifact {
    pub step: String,
    pub kind: String,
    pub id: String,
    pub location: String,
    pub sha256: String,
    #[serde(skip)]
    pub pod: Option<(String, String)>,
}

/// `kirt undo` of this run.
#[derive(Debug, Clone, Serialize)]
pub struct Undo {
    pub time: String,
    pub undo_run: String,
    pub mutations: usize,
    pub dry_run: bool,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Section<T> {
    pub items: Vec<T>,
    /// Why the section is empty or incomplete.
    pub note: String,
}

impl<T> Section<T> {
    pub fn empty() -> Self {
        Section {
            items: Vec::new(),
            note: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KubeEvent {
    pub time: String,
    pub object: String,
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub count: i32,
    #[serde(skip)]
    pub at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub users: Vec<String>,
    pub read: String,
    pub summary: crate::audit::Summary,
    pub rows: Vec<AuditRow>,
    /// Requests not shown (beyond the row cap; the summary counts them).
    pub omitted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub time: String,
    pub user: String,
    pub verb: String,
    pub resource: String,
    pub object: String,
    pub code: String,
    pub decision: String,
    pub source: String,
    pub user_agent: String,
    #[serde(skip)]
    pub at: Option<Timestamp>,
    #[serde(skip)]
    pub denied: bool,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Moment {
    pub time: String,
    /// run, step, confirm, retry, change, undo, event, audit
    pub kind: String,
    pub text: String,
    /// ok, failed, denied, warning or "" (for styling)
    pub class: String,
    #[serde(skip)]
    pub at: Option<Timestamp>,
}

/// A step on the visual timeline (percent of the window).
#[derive(Debug, Clone, Serialize)]
pub struct Bar {
    pub label: String,
    pub left: f64,
    pub width: f64,
    pub class: String,
}

/// A point on the visual timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub left: f64,
    pub class: String,
    pub title: String,
}

/// Milliseconds when the source has them (journals, audit logs); whole seconds otherwise
/// (Events).
pub fn show_time(t: Option<Timestamp>) -> String {
    match t {
        Some(t) if t.subsec_nanosecond() == 0 => t.strftime("%Y-%m-%d %H:%M:%SZ").to_string(),
        Some(t) => t.strftime("%Y-%m-%d %H:%M:%S%.3fZ").to_string(),
        None => String::new(),
    }
}

fn at(e: &Entry) -> Option<Timestamp> {
    e.time.parse().ok()
}

/// The journal's story: everything but Events and audit events.
pub fn build(run: &str, entries: &[Entry]) -> Report {
    let mut r = Report {
        run: run.to_string(),
        playbook: String::new(),
        source: String::new(),
        digest: String::new(),
        status: "incomplete (killed or still running)".into(),
        dry_run: false,
        origin: String::new(),
        reverses: None,
        params: Vec::new(),
        parts: Vec::new(),
        steps: Vec::new(),
        changes: Vec::new(),
        artifacts: Vec::new(),
        undos: Vec::new(),
        events: Section::empty(),
        audit: None,
        start: String::new(),
        end: String::new(),
        duration: String::new(),
        timeline: Vec::new(),
        bars: Vec::new(),
        marks: Vec::new(),
        generated: String::new(),
    };
    for (index, e) in entries.iter().enumerate() {
        let t = at(e);
        let time = show_time(t);
        let mut line = |kind: &str, text: String, class: &str| {
            r.timeline.push(Moment {
                time: time.clone(),
                kind: kind.into(),
                text,
                class: class.into(),
                at: t,
            })
        };
        match &e.record {
            Record::RunStart(s) | Record::RunResume(s) => {
                let origin = match &e.record {
                    Record::RunResume(_) => Origin::Resume,
                    _ => s.origin.clone(),
                };
                if r.parts.is_empty() {
                    r.playbook = s.playbook.clone();
                    r.source = s.source.clone();
                    r.digest = s.digest.clone();
                    r.dry_run = s.dry_run;
                    r.origin = origin.describe();
                    if let Origin::Undo { of } = &origin {
                        r.reverses = Some(of.clone());
                    }
                    r.params = s
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), scalar(v)))
                        .collect();
                }
                let who = format!(
                    "{} by {}@{}{}",
                    origin.describe(),
                    s.user,
                    s.host,
                    s.identity
                        .as_deref()
                        .map(|i| format!(" as {i}"))
                        .unwrap_or_default()
                );
                line(
                    "run",
                    format!("part {} started: {who}", r.parts.len() + 1),
                    "",
                );
                r.parts.push(Part {
                    n: r.parts.len() + 1,
                    origin: origin.describe(),
                    user: s.user.clone(),
                    host: s.host.clone(),
                    identity: s.identity.clone().unwrap_or_default(),
                    cluster: s.cluster.clone().unwrap_or_default(),
                    kirt: s.kirt.clone(),
                    started: time.clone(),
                    ended: String::new(),
                    status: "incomplete (killed or still running)".into(),
                    at: t,
                });
            }
            Record::StepStart { step, action, .. } => {
                line("step", format!("step {step} ({action}) started"), "");
                r.steps.push(StepRun {
                    id: step.clone(),
                    action: action.clone(),
                    part: r.parts.len(),
                    started: time.clone(),
                    ended: String::new(),
                    duration: String::new(),
                    status: "running or killed".into(),
                    attempts: 0,
                    retries: Vec::new(),
                    confirmed: String::new(),
                    error: String::new(),
                    from: t,
                    to: None,
                });
            }
            Record::StepItem { .. } => {}
            Record::StepRetry {
                step,
                attempt,
                error,
            } => {
                let text = format!("attempt {attempt} failed: {error}");
                line("retry", format!("step {step} {text}; retried"), "warning");
                if let Some(s) = current(&mut r.steps, step) {
                    s.retries.push(text);
                }
            }
            Record::Confirmed { step, answer } => {
                let what = if step.is_empty() {
                    "the undo".to_string()
                } else {
                    format!("step {step}")
                };
                line("confirm", format!("{what} {answer}"), "");
                if let Some(s) = current(&mut r.steps, step) {
                    s.confirmed = answer.clone();
                }
            }
            Record::Mutation {
                step,
                action,
                object,
                undo,
            } => {
                let c = change(&time, step, action, object, undo.as_ref());
                line("change", describe_change(&c), "");
                r.changes.push(c);
            }
            Record::StepEnd {
                step,
                status,
                duration_seconds,
                attempts,
                outputs,
                error,
                exit,
            } => {
                let status = journal::name(status);
                let class = if status == "failed" { "failed" } else { "ok" };
                let detail = match error {
                    Some(e) => format!(": {e} (exit {exit})"),
                    None => String::new(),
                };
                line(
                    "step",
                    format!("step {step} {status} in {duration_seconds:.1}s{detail}"),
                    class,
                );
                let mut action = String::new();
                if let Some(s) = current(&mut r.steps, step) {
                    s.ended = time.clone();
                    s.to = t;
                    s.duration = format!("{duration_seconds:.1}s");
                    s.status = status.clone();
                    s.attempts = *attempts;
                    s.error = error.clone().unwrap_or_default();
                    action = s.action.clone();
                }
                r.artifacts.extend(artifacts(step, &action, outputs));
            }
            Record::RunEnd { status, exit, .. } => {
                let status = journal::name(status);
                let class = if status == "ok" { "ok" } else { "failed" };
                line("run", format!("run ended: {status} (exit {exit})"), class);
                r.status = status.clone();
                if let Some(p) = r.parts.last_mut() {
                    p.ended = time.clone();
                    p.status = format!("{status} (exit {exit})");
                }
            }
            Record::UndoStart {
                mutations,
                dry_run,
                undo_run,
                ..
            } => {
                let id = undo_run.clone().unwrap_or_default();
                line(
                    "undo",
                    format!(
                        "kirt undo{}: {mutations} change(s) to reverse (run {id})",
                        if *dry_run { " --dry-run" } else { "" }
                    ),
                    "",
                );
                r.undos.push(Undo {
                    time: time.clone(),
                    undo_run: id,
                    mutations: *mutations,
                    dry_run: *dry_run,
                    status: "incomplete".into(),
                });
            }
            Record::UndoStep {
                mutation,
                step,
                action,
                status,
                error,
                ..
            } => {
                let status = journal::name(status);
                let class = if status == "failed" { "failed" } else { "" };
                let error = error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                // the mutation is named by its position in this journal (before this record)
                let what = entries[..index]
                    .get(*mutation as usize)
                    .and_then(|m| match &m.record {
                        Record::Mutation { object, .. } => {
                            let ns = text(&object["namespace"]);
                            let ns = if ns.is_empty() { ns } else { format!("{ns}/") };
                            let (kind, name) = (text(&object["kind"]), text(&object["name"]));
                            Some(format!("{kind} {ns}{name} "))
                        }
                        _ => None,
                    })
                    .unwrap_or_default();
                line(
                    "undo",
                    format!("undo of {what}(step {step}, {action}): {status}{error}"),
                    class,
                );
            }
            Record::UndoEnd { status, .. } => {
                let status = journal::name(status);
                line("undo", format!("undo ended: {status}"), "");
                if let Some(u) = r.undos.last_mut() {
                    u.status = status;
                }
            }
        }
    }
    r
}

/// The latest execution of `step` (a `--resume` may run a step again).
fn current<'a>(steps: &'a mut [StepRun], step: &str) -> Option<&'a mut StepRun> {
    steps.iter_mut().rev().find(|s| s.id == step)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        other => scalar(other),
    }
}

/// A merge patch as `path = value` lines (`metadata.labels["kirt.dev/quarantined"] = "true"`).
pub fn fields(prefix: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let key = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    }
                } else {
                    format!("{prefix}[{k:?}]")
                };
                fields(&key, x, out);
            }
        }
        Value::Null => out.push(format!("{prefix} removed")),
        other => {
            let mut s = other.to_string();
            if s.len() > 160 {
                let mut cut = 157;
                while !s.is_char_boundary(cut) {
                    cut -= 1;
                }
                s.truncate(cut);
                s.push_str("...");
            }
            out.push(format!("{prefix} = {s}"))
        }
    }
}

fn change(
    time: &str,
    step: &str,
    action: &str,
    o: &Value,
    undo: Option<&crate::playbook::registry::UndoPlan>,
) -> Change {
    let mut fs = Vec::new();
    if o["fields"].is_object() {
        fields("", &o["fields"], &mut fs);
    }
    let rv = &o["resourceVersion"];
    let kind = text(&o["kind"]);
    Change {
        time: time.to_string(),
        step: step.to_string(),
        action: action.to_string(),
        namespace: text(&o["namespace"]),
        name: match kind.as_str() {
            "Backup" => text(&o["id"]),
            _ => text(&o["name"]),
        },
        kind,
        uid: text(&o["uid"]),
        before: text(&rv["before"]),
        after: text(&rv["after"]),
        fields: fs,
        changes: o["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect(),
        undo: undo
            .map(|u| u.action.clone())
            .unwrap_or_else(|| "not reversible".into()),
        service_account: o["serviceAccount"].as_str().map(str::to_string),
    }
}

/// `Pod shop/web-1 rv 812 → 815: labels replaced …`
pub fn describe_change(c: &Change) -> String {
    let object = if c.namespace.is_empty() {
        format!("{} {}", c.kind, c.name)
    } else {
        format!("{} {}/{}", c.kind, c.namespace, c.name)
    };
    let rv = match (c.before.as_str(), c.after.as_str()) {
        ("", "") => String::new(),
        ("", a) => format!(" created (resourceVersion {a})"),
        (b, "") => format!(" deleted (resourceVersion was {b})"),
        (b, a) => format!(" resourceVersion {b} → {a}"),
    };
    let what = if c.changes.is_empty() {
        String::new()
    } else {
        format!(": {}", c.changes.join("; "))
    };
    format!("{object}{rv}{what}")
}

/// Evidence bundles and backups in a step's outputs (a `foreach` step's are a list).
fn artifacts(step: &str, action: &str, outputs: &Value) -> Vec<Artifact> {
    let each: Vec<&Value> = match outputs {
        Value::Array(a) => a.iter().collect(),
        o => vec![o],
    };
    let mut out = Vec::new();
    for o in each {
        match action {
            "evidence.collect" => {
                for b in o["bundles"].as_array().into_iter().flatten() {
                    out.push(Artifact {
                        step: step.into(),
                        kind: "evidence bundle".into(),
                        id: text(&b["bundle"]),
                        location: text(&b["location"]),
                        sha256: text(&b["stored_sha256"]),
                        pod: Some((text(&b["namespace"]), text(&b["pod"]))),
                    });
                }
            }
            "backup.create" if o["dry_run"] != Value::Bool(true) => out.push(Artifact {
                step: step.into(),
                kind: "etcd backup".into(),
                id: text(&o["id"]),
                location: format!("{}/{}", text(&o["location"]), text(&o["object"])),
                sha256: text(&o["stored_sha256"]),
                pod: None,
            }),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_read_as_paths() {
        let mut out = Vec::new();
        fields(
            "",
            &json!({"metadata": {"labels": {"app": null, "kirt.dev/quarantined": "true"}}}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "metadata.labels.app removed",
                "metadata.labels[\"kirt.dev/quarantined\"] = \"true\""
            ]
        );
    }
}
