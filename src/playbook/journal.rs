//! Run journals: one JSONL file per run (RUN_ID.jsonl), each record appended and fsynced before
//! the run goes on, so a killed run leaves an exact account of what it did. `--resume` and
//! `kirt undo` read it back. Secret values are replaced before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::registry::UndoPlan;
use crate::context::Ctx;
use crate::error::{Error, IoContext, Result};

pub const REDACTED: &str = "[redacted]";

pub fn dir(ctx: &Ctx) -> Result<PathBuf> {
    match &ctx.journal_dir {
        Some(d) => Ok(d.clone()),
        None => Ok(crate::context::state_dir()?.join("runs")),
    }
}

pub fn path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.jsonl"))
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    Ok,
    Failed,
    Skipped,
}

/// How a run (or an undo) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Ok,
    /// A `continue_on_error` step failed.
    Partial,
    Failed,
    /// SIGINT/SIGTERM stopped it; `kirt run --resume` goes on from the step that was stopped.
    Interrupted,
}

/// What undoing one mutation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UndoStatus {
    Undone,
    Failed,
    NotReversible,
    DryRun,
}

/// The journal's name of a status (`ok`, `not-reversible` …), as serde writes it.
pub fn name<T: Serialize>(status: &T) -> String {
    match serde_json::to_value(status) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

/// Why a run (or a part of it) started. The one place a new kind of trigger is added (an event
/// that starts a run by itself, for instance): `kirt runs list` and `kirt runs report` show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// `kirt run` by a person or a scheduler.
    #[default]
    Manual,
    /// `kirt run --resume`: the continuation of a run that stopped.
    Resume,
    /// `kirt undo RUN`: the reversal of run `of`.
    Undo { of: String },
    /// `kirt serve`: a Falco event matched a serve rule. What the event said (never its output
    /// line or command line, which may carry secrets), the sha256 of its body and the serve
    /// journal's entry.
    Event(Box<EventOrigin>),
}

/// The event behind an [`Origin::Event`] run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventOrigin {
    /// The Falco rule that fired, its priority and time (as Falco sent them).
    pub falco_rule: String,
    pub priority: String,
    pub time: String,
    pub namespace: String,
    pub pod: String,
    /// `sha256:…` of the HTTP body as received.
    pub digest: String,
    /// The serve rule that matched, and the serve journal entry that started the run.
    pub serve_rule: String,
    pub entry: String,
}

impl Origin {
    pub fn describe(&self) -> String {
        match self {
            Origin::Manual => "manual".into(),
            Origin::Resume => "resume".into(),
            Origin::Undo { of } => format!("undo of run {of}"),
            Origin::Event(e) => format!(
                "Falco event \"{}\" ({}) at {} for pod {}/{} (serve rule {}, entry {}, {})",
                e.falco_rule,
                e.priority,
                e.time,
                e.namespace,
                e.pod,
                e.serve_rule,
                e.entry,
                e.digest
            ),
        }
    }
}

/// The start (or resumption) of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunStart {
    pub run: String,
    pub started_at: String,
    pub playbook: String,
    /// The playbook file, or `playbooks/NAME.yaml` for a shipped one.
    pub source: String,
    pub digest: String,
    /// Parameter values, secret ones replaced by `[redacted]`.
    pub params: Map<String, Value>,
    pub dry_run: bool,
    pub user: String,
    pub host: String,
    pub kirt: String,
    /// Who kirt acts as on the cluster (the kubeconfig's user), and which cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Journals written before origins were recorded read as manual.
    #[serde(default)]
    pub origin: Origin,
}

/// One line of a run journal. The JSON shape (`{"type": "step-end", …}`) is kirt's journal
/// format; reading it back never trusts more than these fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    RunStart(RunStart),
    RunResume(RunStart),
    StepStart {
        step: String,
        index: usize,
        action: String,
    },
    /// One element of a step (one per `foreach` item): the `with:` it ran with.
    StepItem {
        step: String,
        item: Option<Value>,
        with: Value,
    },
    StepRetry {
        step: String,
        attempt: u32,
        error: String,
    },
    /// A step with `confirm: true` (or an undo) was confirmed, and how.
    Confirmed {
        step: String,
        answer: String,
    },
    /// An object the step changed, and the step that reverses it.
    Mutation {
        step: String,
        action: String,
        object: Value,
        undo: Option<UndoPlan>,
    },
    StepEnd {
        step: String,
        status: StepStatus,
        duration_seconds: f64,
        attempts: u32,
        outputs: Value,
        error: Option<String>,
        exit: u8,
    },
    RunEnd {
        run: String,
        status: RunStatus,
        exit: u8,
    },
    UndoStart {
        run: String,
        mutations: usize,
        dry_run: bool,
        /// The undo's own journal (its run id).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        undo_run: Option<String>,
    },
    UndoStep {
        /// The mutation's position in the journal.
        mutation: u64,
        step: String,
        action: String,
        status: UndoStatus,
        outputs: Value,
        error: Option<String>,
    },
    UndoEnd {
        run: String,
        status: RunStatus,
    },
}

/// A record with the time it was written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: String,
    pub record: Record,
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.record).map_err(serde::ser::Error::custom)?;
        if let Some(m) = v.as_object_mut() {
            m.insert("time".into(), Value::String(self.time.clone()));
        }
        v.serialize(s)
    }
}

/// Environment variables whose values are secrets wherever they turn up (a step's output, an
/// error message): the journal replaces them, whatever the playbook declares.
pub const SECRET_ENV: [&str; 5] = [
    "KIRT_PASSPHRASE",
    "KIRT_SERVE_TOKEN",
    "KIRT_SIGN_PASSWORD",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
];

/// Replaces known secret values wherever they appear inside strings.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Knows the values of kirt's own secret environment variables ([`SECRET_ENV`]).
    pub fn from_env() -> Redactor {
        let mut r = Redactor::default();
        for var in SECRET_ENV {
            if let Ok(v) = std::env::var(var) {
                r.add(&v);
            }
        }
        r
    }

    pub fn add(&mut self, s: &str) {
        // very short values would redact ordinary text and protect nothing
        if s.len() >= 4 && !self.secrets.iter().any(|x| x == s) {
            self.secrets.push(s.to_string());
            self.secrets.sort_by_key(|x| std::cmp::Reverse(x.len()));
        }
    }

    /// Adds every string inside a value (a secret header map, a URL).
    pub fn add_value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.add(s),
            Value::Array(a) => a.iter().for_each(|x| self.add_value(x)),
            Value::Object(m) => m.values().for_each(|x| self.add_value(x)),
            _ => {}
        }
    }

    pub fn str(&self, s: &str) -> String {
        let mut out = s.to_string();
        for x in &self.secrets {
            if out.contains(x.as_str()) {
                out = out.replace(x.as_str(), REDACTED);
            }
        }
        out
    }

    pub fn value(&self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.str(s),
            Value::Array(a) => a.iter_mut().for_each(|x| self.value(x)),
            Value::Object(m) => {
                let keys: Vec<String> = m.keys().cloned().collect();
                for k in keys {
                    if let Some(mut x) = m.remove(&k) {
                        self.value(&mut x);
                        m.insert(self.str(&k), x);
                    }
                }
            }
            _ => {}
        }
    }
}

pub struct Journal {
    file: File,
    pub path: PathBuf,
    pub redactor: Redactor,
}

impl Journal {
    pub fn create(dir: &Path, run_id: &str) -> Result<Journal> {
        crate::context::private_dir(dir)?;
        let path = path(dir, run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .ctx(|| format!("creating the run journal {}", path.display()))?;
        Ok(Journal {
            file,
            path,
            redactor: Redactor::from_env(),
        })
    }

    pub fn append_to(path: &Path) -> Result<Journal> {
        let mut file = OpenOptions::new()
            .append(true)
            .open(path)
            .ctx(|| format!("opening the run journal {}", path.display()))?;
        // a killed run may have left half a line: start the next record on a line of its own
        let text =
            std::fs::read(path).ctx(|| format!("reading the run journal {}", path.display()))?;
        if text.last().is_some_and(|b| *b != b'\n') {
            file.write_all(b"\n")
                .ctx(|| format!("writing the run journal {}", path.display()))?;
        }
        Ok(Journal {
            file,
            path: path.to_path_buf(),
            redactor: Redactor::from_env(),
        })
    }

    /// Journals what a step's action changed (nothing in a dry run, nothing for actions that
    /// change nothing).
    pub fn mutations(
        &mut self,
        step: &str,
        def: &super::registry::ActionDef,
        with: &Value,
        outputs: &Value,
        dry_run: bool,
    ) -> Result<()> {
        let Some(hook) = def.mutation.filter(|_| !dry_run) else {
            return Ok(());
        };
        for m in hook(with, outputs) {
            self.write(Record::Mutation {
                step: step.to_string(),
                action: def.name.into(),
                object: m.object,
                undo: m.undo,
            })?;
        }
        Ok(())
    }

    /// Appends one record (with its time), secrets redacted, and fsyncs it.
    pub fn write(&mut self, record: Record) -> Result<()> {
        let mut v = serde_json::to_value(&record)
            .map_err(|e| Error::json("encoding a journal record", e))?;
        if let Some(m) = v.as_object_mut() {
            m.insert(
                "time".into(),
                Value::String(jiff::Timestamp::now().to_string()),
            );
        }
        self.redactor.value(&mut v);
        let mut line =
            serde_json::to_vec(&v).map_err(|e| Error::json("encoding a journal record", e))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .ctx(|| format!("writing the run journal {}", self.path.display()))
    }
}

/// Reads a journal. Lines that are not kirt records (a torn last line of a killed run, or text
/// someone added) are skipped.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let f = File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found(
                format!("run journal {}", path.display()),
                "list runs with `kirt runs list` (and the same --journal)",
            )
        } else {
            Error::io(format!("reading the run journal {}", path.display()), e)
        }
    })?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(f).lines() {
        let line = line.ctx(|| format!("reading the run journal {}", path.display()))?;
        let Ok(mut v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let time = v
            .as_object_mut()
            .and_then(|m| m.remove("time"))
            .and_then(|t| t.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Ok(record) = serde_json::from_value::<Record>(v) {
            out.push(Entry { time, record });
        }
    }
    Ok(out)
}

impl RunStart {
    /// A run starting now, as this user on this host.
    pub async fn now(ctx: &Ctx, run: &str, origin: Origin) -> RunStart {
        let cluster = ctx.cluster().await.ok();
        RunStart {
            run: run.to_string(),
            started_at: jiff::Timestamp::now().to_string(),
            playbook: String::new(),
            source: String::new(),
            digest: String::new(),
            params: Map::new(),
            dry_run: ctx.dry_run,
            user: ["USER", "LOGNAME"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
                // SAFETY: getuid cannot fail and touches no memory
                .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() })),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            kirt: crate::actions::version::VERSION.into(),
            identity: cluster.map(|c| c.configured_identity.clone()),
            cluster: cluster.map(|c| c.url.clone()),
            origin,
        }
    }
}

/// A mutating command run on its own (`kirt restore objects`): journaled as a run of one step
/// named after the action, so that `kirt undo RUN` reverses it as it would a playbook's step.
/// The run id; none when nothing was changed (or in a dry run).
pub async fn command<T: Serialize + crate::output::Render>(
    ctx: &Ctx,
    action: &str,
    with: Value,
    out: &T,
) -> Result<Option<String>> {
    let def = super::registry::get(action)
        .ok_or_else(|| Error::failed(format!("no action {action} to journal")))?;
    let outputs = super::registry::encode(out)?;
    let changed = def
        .mutation
        .is_some_and(|hook| !hook(&with, &outputs).is_empty());
    if ctx.dry_run || !changed {
        return Ok(None);
    }
    let run = new_run_id();
    let mut j = Journal::create(&dir(ctx)?, &run)?;
    let mut start = RunStart::now(ctx, &run, Origin::Manual).await;
    start.playbook = format!("kirt {}", action.replace('.', " "));
    j.write(Record::RunStart(start))?;
    j.write(Record::StepStart {
        step: action.into(),
        index: 0,
        action: action.into(),
    })?;
    j.write(Record::StepItem {
        step: action.into(),
        item: None,
        with: with.clone(),
    })?;
    j.mutations(action, def, &with, &outputs, false)?;
    let exit = out.exit();
    let (step, status) = match exit {
        crate::error::Exit::Ok => (StepStatus::Ok, RunStatus::Ok),
        crate::error::Exit::Interrupted | crate::error::Exit::Terminated => {
            (StepStatus::Failed, RunStatus::Interrupted)
        }
        _ => (StepStatus::Failed, RunStatus::Failed),
    };
    j.write(Record::StepEnd {
        step: action.into(),
        status: step,
        duration_seconds: 0.0,
        attempts: 1,
        outputs,
        error: None,
        exit: exit as u8,
    })?;
    j.write(Record::RunEnd {
        run: run.clone(),
        status,
        exit: exit as u8,
    })?;
    Ok(Some(run))
}

pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    let nanos = now.subsec_nanosecond() as u32 ^ std::process::id().rotate_left(16);
    format!("{}-{:08x}", now.strftime("%Y%m%dT%H%M%SZ"), nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_keep_the_journal_format() {
        let r = Record::StepEnd {
            step: "isolate".into(),
            status: StepStatus::Ok,
            duration_seconds: 1.5,
            attempts: 1,
            outputs: json!({"pods": []}),
            error: None,
            exit: 0,
        };
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["type"], "step-end");
        assert_eq!(v["status"], "ok");
        let back: Record = serde_json::from_value(v).unwrap();
        assert!(matches!(
            back,
            Record::StepEnd {
                status: StepStatus::Ok,
                ..
            }
        ));
        // an edited record of an unknown type is not a record
        assert!(
            serde_json::from_value::<Record>(json!({"type": "exec-now", "argv": ["sh"]})).is_err()
        );
    }

    #[test]
    fn redacts_inside_strings_and_keys() {
        let mut r = Redactor::default();
        r.add("s3cr3t-token");
        r.add("ab"); // too short to redact
        let mut v =
            json!({"argv": ["curl", "-H", "X: s3cr3t-token"], "s3cr3t-token": 1, "ab": "ab"});
        r.value(&mut v);
        let s = v.to_string();
        assert!(!s.contains("s3cr3t"), "{s}");
        assert!(s.contains("\"ab\":\"ab\""), "{s}");
    }

    #[test]
    fn torn_last_line_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut j = Journal::create(d.path(), "r1").unwrap();
        j.write(Record::RunEnd {
            run: "r1".into(),
            status: RunStatus::Ok,
            exit: 0,
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"type\":\"st")
            .unwrap();
        assert_eq!(read(&j.path).unwrap().len(), 1);
    }
}
