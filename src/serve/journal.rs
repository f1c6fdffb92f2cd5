//! The serve journal: one JSONL line per accepted event with the decision taken (and the run it
//! started), one more when that run ends; appended and fsynced before the HTTP answer, in a
//! private file. It never holds an event's output line or its other fields (a command line may
//! carry a secret): only what identifies the event, and its body's sha256.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::event::Event;
use super::gate::Decision;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub falco_rule: String,
    pub priority: super::event::Priority,
    pub time: String,
    pub hostname: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub container_id: Option<String>,
    pub digest: String,
}

impl Seen {
    pub fn of(e: &Event) -> Seen {
        Seen {
            falco_rule: e.rule.clone(),
            priority: e.priority,
            time: e.time.clone(),
            hostname: e.hostname.clone(),
            namespace: e.namespace().map(str::to_string),
            pod: e.pod().map(str::to_string),
            container_id: e.field("container.id"),
            digest: e.digest.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Line {
    Event {
        entry: String,
        decision: Decision,
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        run: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        event: Seen,
    },
    RunEnd {
        entry: String,
        run: String,
        status: String,
        exit: u8,
        /// Event time → run end, for a run whose quarantine was verified.
        #[serde(skip_serializing_if = "Option::is_none")]
        latency_seconds: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

pub struct ServeJournal {
    file: Mutex<File>,
    pub path: PathBuf,
}

impl ServeJournal {
    pub fn open(dir: &Path) -> Result<ServeJournal> {
        crate::context::private_dir(dir)?;
        let path = dir.join("events.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the serve journal {}", path.display()), e))?;
        Ok(ServeJournal {
            file: Mutex::new(file),
            path,
        })
    }

    /// Appends one line (with its time) and fsyncs it.
    pub fn write(&self, line: &Line) -> Result<()> {
        let mut v = serde_json::to_value(line)
            .map_err(|e| Error::json("encoding a serve journal line", e))?;
        v["time"] = serde_json::Value::String(jiff::Timestamp::now().to_string());
        let mut bytes =
            serde_json::to_vec(&v).map_err(|e| Error::json("encoding a serve journal line", e))?;
        bytes.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        tokio::task::block_in_place(|| f.write_all(&bytes).and_then(|_| f.sync_data())).map_err(
            |e| {
                Error::io(
                    format!("writing the serve journal {}", self.path.display()),
                    e,
                )
            },
        )
    }
}
