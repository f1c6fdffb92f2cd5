//! Run journals: one JSONL file per run (RUN_ID.jsonl), each record appended and fsynced before
//! the run goes on, so a killed run leaves an exact account of what it did. `--resume` and
//! `kirt undo` read it back. Secret values are replaced before anything is written.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::context::Ctx;
use crate::error::{Error, IoContext, Result};

pub const REDACTED: &str = "[redacted]";

pub fn dir(ctx: &Ctx) -> PathBuf {
    ctx.journal_dir
        .clone()
        .unwrap_or_else(|| crate::util::state_dir().join("runs"))
}

pub fn path(dir: &Path, run_id: &str) -> PathBuf {
    dir.join(format!("{run_id}.jsonl"))
}

/// Replaces known secret values wherever they appear inside strings.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
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
        std::fs::create_dir_all(dir)
            .ctx(|| format!("creating the journal directory {}", dir.display()))?;
        let path = path(dir, run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .ctx(|| format!("creating the run journal {}", path.display()))?;
        Ok(Journal {
            file,
            path,
            redactor: Redactor::default(),
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
            redactor: Redactor::default(),
        })
    }

    /// Appends one record (with its time) and fsyncs it.
    pub fn write(&mut self, mut record: Value) -> Result<()> {
        if let Some(m) = record.as_object_mut() {
            m.insert("time".into(), json!(jiff::Timestamp::now().to_string()));
        }
        self.redactor.value(&mut record);
        let mut line = serde_json::to_vec(&record)
            .map_err(|e| Error::failed(format!("encoding a journal record: {e}")))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
            .ctx(|| format!("writing the run journal {}", self.path.display()))
    }
}

/// Reads a journal; a torn last line (the run was killed mid-write) is ignored.
pub fn read(path: &Path) -> Result<Vec<Value>> {
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
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

pub fn new_run_id() -> String {
    let now = jiff::Timestamp::now();
    let nanos = now.subsec_nanosecond() as u32 ^ std::process::id().rotate_left(16);
    format!("{}-{:08x}", now.strftime("%Y%m%dT%H%M%SZ"), nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        j.write(json!({"type": "run-start"})).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&j.path)
            .unwrap()
            .write_all(b"{\"type\":\"st")
            .unwrap();
        assert_eq!(read(&j.path).unwrap().len(), 1);
    }
}
