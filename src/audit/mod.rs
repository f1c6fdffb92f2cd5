//! The kube-apiserver's audit log (`--audit-log-path`): what was done with a compromised pod's
//! identity. The files (plain or gzipped, a directory of rotated ones) are streamed once, line by
//! line, in bounded memory whatever their size; the events that concern each [`Subject`] (its
//! ServiceAccount, its objects, its IP) inside a [`Window`] are selected, Secret material in
//! request/response bodies is replaced by metadata before an event is kept anywhere, and each
//! selection comes back in time order without duplicates. Unreadable files and corrupt lines
//! are counted and reported, never fatal: a torn last line must not stop an evidence
//! collection. Used by `kirt evidence collect --audit-log` and `kirt runs report --audit-log`.

mod event;
mod read;
mod sort;
mod summary;

use std::io::Write;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use event::{Event, Object, Subject, REDACTED};
pub use read::{FileStats, Sources, MAX_LINE};
pub use sort::{Selection, Sorted};
pub use summary::Summary;

use crate::error::{join, Error, IoContext, Result};
use crate::progress::{Progress, Stage};
use crate::signal::Shutdown;
use read::{Line, LogFile};

/// Memory for the selections of one scan, shared by its subjects; beyond it they spill to
/// temporary files.
const SELECTION_BUDGET: usize = 8 << 20;
/// Lines between two looks at the shutdown signal.
const CHECK_EVERY: u64 = 8192;

/// Which events count by time: received at or after `since` and before `until`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Window {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<jiff::Timestamp>,
}

impl Window {
    pub fn contains(&self, t: jiff::Timestamp) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }
}

/// `--audit-since`: a time (RFC 3339) or a duration before `now` (24h, 30m).
pub fn parse_since(s: &str, now: jiff::Timestamp) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let d = crate::units::parse_duration(s).map_err(|_| {
        Error::usage(format!(
            "--audit-since {s:?}: give a time (2026-11-27T10:00:00Z) or a duration before now (24h, 30m)"
        ))
    })?;
    let span = jiff::SignedDuration::try_from(d)
        .map_err(|_| Error::usage(format!("--audit-since {s:?} is too long")))?;
    now.checked_sub(span)
        .map_err(|_| Error::usage(format!("--audit-since {s:?} is too long")))
}

/// What reading the files gave, over all subjects.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanStats {
    pub files: Vec<FileStats>,
    pub lines: u64,
    pub corrupt: u64,
    pub oversized: u64,
    /// Files that could not be opened or read to their end.
    pub unreadable: usize,
}

impl ScanStats {
    /// One line for people: how much was read and what could not be.
    pub fn describe(&self) -> String {
        let bytes: u64 = self.files.iter().map(|f| f.bytes).sum();
        let mut s = format!(
            "audit log: {} file(s), {}, {} lines",
            self.files.len(),
            crate::units::human_bytes(bytes),
            self.lines
        );
        if self.corrupt > 0 {
            let at: Vec<String> = self
                .files
                .iter()
                .filter(|f| f.corrupt > 0)
                .map(|f| {
                    let lines: Vec<String> =
                        f.corrupt_lines.iter().map(|l| l.to_string()).collect();
                    format!("{} line {}", f.path, lines.join(", "))
                })
                .collect();
            s.push_str(&format!(
                "; {} corrupt line(s) skipped ({})",
                self.corrupt,
                at.join("; ")
            ));
        }
        if self.oversized > 0 {
            s.push_str(&format!(
                "; {} line(s) over {} skipped",
                self.oversized,
                crate::units::human_bytes(MAX_LINE as u64)
            ));
        }
        for f in self.files.iter().filter(|f| f.error.is_some()) {
            s.push_str(&format!(
                "; {}: {}",
                f.path,
                f.error.as_deref().unwrap_or_default()
            ));
        }
        s
    }
}

/// One subject's selected events.
pub struct Found {
    pub selection: Selection,
    /// Lines selected (before duplicates are dropped).
    pub lines: u64,
    /// Lines whose bodies were redacted.
    pub redacted: u64,
}

/// Reads every file once and sorts each event into the selections of the subjects it concerns.
/// Blocking (CPU and disk): run it with [`select`] from async code.
pub fn scan(
    sources: &Sources,
    subjects: &[Subject],
    window: &Window,
    stage: &dyn Stage,
    stop: &Shutdown,
) -> Result<(ScanStats, Vec<Found>)> {
    let needles: Vec<String> = subjects.iter().flat_map(Subject::needles).collect();
    let filter = aho_corasick::AhoCorasick::new(&needles)
        .map_err(|e| Error::failed(format!("building the audit log filter: {e}")))?;
    let budget = (SELECTION_BUDGET / subjects.len().max(1)).max(64 << 10);
    let mut found: Vec<Found> = subjects
        .iter()
        .map(|_| Found {
            selection: Selection::new(budget),
            lines: 0,
            redacted: 0,
        })
        .collect();
    let mut stats = ScanStats::default();
    let mut buf = Vec::with_capacity(64 << 10);
    for path in &sources.files {
        let mut file = match LogFile::open(path, stage) {
            Ok(f) => f,
            Err(e) => {
                stats.unreadable += 1;
                stats.files.push(FileStats {
                    path: path.display().to_string(),
                    error: Some(format!("cannot open: {e}")),
                    ..Default::default()
                });
                continue;
            }
        };
        let mut complete = true;
        loop {
            if file.stats.lines % CHECK_EVERY == 0 {
                stop.check("the audit log scan was stopped; nothing was stored")?;
            }
            let kind = match file.next_line(&mut buf) {
                Ok(Some(k)) => k,
                Ok(None) => break,
                Err(e) => {
                    file.stats.error =
                        Some(format!("read error after line {}: {e}", file.stats.lines));
                    complete = false;
                    break;
                }
            };
            file.stats.lines += 1;
            let n = file.stats.lines;
            if kind == Line::Oversized {
                file.stats.oversized += 1;
                continue;
            }
            let line = buf.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if !(line.starts_with(b"{") && line.ends_with(b"}")) {
                match kind {
                    Line::Unterminated => file.stats.incomplete_tail = true,
                    _ => file.stats.corrupt_at(n),
                }
                continue;
            }
            if !filter.is_match(line) {
                continue;
            }
            let Some((event, at)) = Event::parse(line).and_then(|e| {
                let at = e.received()?;
                Some((e, at))
            }) else {
                file.stats.corrupt_at(n);
                continue;
            };
            if !window.contains(at) {
                continue;
            }
            let key = sort::Key {
                at: at.as_microsecond(),
                id: event.audit_id.to_string(),
                stage: event.stage_rank(),
            };
            let redact = event.needs_redaction();
            let mut kept: Option<Vec<u8>> = None;
            for (s, f) in subjects.iter().zip(found.iter_mut()) {
                if !s.matches(&event) {
                    continue;
                }
                if kept.is_none() {
                    kept = if redact {
                        event::redact(line)
                    } else {
                        Some(line.to_vec())
                    };
                }
                let Some(bytes) = kept.clone() else { break };
                f.selection
                    .push(key.clone(), bytes)
                    .ctx(|| "spooling selected audit events to a temporary file".into())?;
                f.lines += 1;
                f.redacted += u64::from(redact);
                file.stats.selected += 1;
            }
        }
        let st = file.finish(complete);
        stats.lines += st.lines;
        stats.corrupt += st.corrupt;
        stats.oversized += st.oversized;
        stats.unreadable += usize::from(st.error.is_some());
        stats.files.push(st);
    }
    Ok((stats, found))
}

/// [`scan`] on a blocking thread, with a progress stage over the files' bytes.
pub async fn select(
    progress: &dyn Progress,
    stop: &Shutdown,
    sources: Sources,
    subjects: Vec<Subject>,
    window: Window,
) -> Result<(ScanStats, Vec<Found>)> {
    stop.hold("audit-log").await;
    let stage = progress.stage("audit log", Some(sources.total_bytes()));
    let stop = stop.clone();
    let task = tokio::task::spawn_blocking(move || {
        let r = scan(&sources, &subjects, &window, stage.as_ref(), &stop);
        stage.finish();
        r
    });
    join("the audit log scan", task).await?
}

/// A selection written out as JSON lines to an anonymous temporary file, hashed on the way.
pub struct Written {
    pub file: std::fs::File,
    pub size: u64,
    pub sha256: String,
    pub summary: Summary,
}

/// Writes one subject's events in order, one per line, and summarises them. Blocking.
pub fn write_events(found: Found, stop: &Shutdown) -> Result<Written> {
    let what = || "writing selected audit events to a temporary file".to_string();
    let mut out = std::io::BufWriter::new(tempfile::tempfile().ctx(what)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut summary = Summary::default();
    for (i, line) in found.selection.into_sorted().ctx(what)?.enumerate() {
        if (i as u64).is_multiple_of(CHECK_EVERY) {
            stop.check("the audit log scan was stopped; nothing was stored")?;
        }
        let mut line = line.ctx(what)?;
        if let Some(e) = Event::parse(&line) {
            summary.add(&e);
        }
        line.push(b'\n');
        hasher.update(&line);
        size += line.len() as u64;
        out.write_all(&line).ctx(what)?;
    }
    summary.finish();
    let file = out.into_inner().map_err(|e| e.into_error()).ctx(what)?;
    Ok(Written {
        file,
        size,
        sha256: hex::encode(hasher.finalize()),
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use std::io::Read;

    fn event(id: &str, stage: &str, user: &str, at: &str) -> String {
        format!(
            r#"{{"kind":"Event","auditID":"{id}","stage":"{stage}","verb":"get","user":{{"username":"{user}"}},"sourceIPs":["127.0.0.1"],"objectRef":{{"resource":"pods","namespace":"n","name":"p"}},"responseStatus":{{"code":200}},"requestReceivedTimestamp":"{at}"}}"#
        )
    }

    #[test]
    fn selects_in_time_order_once_and_counts_what_it_cannot_read() {
        let d = tempfile::tempdir().unwrap();
        let sa = Subject::service_account_user("n", "sa");
        let late = event("b", "ResponseComplete", &sa, "2026-11-27T10:00:02Z");
        let early = event("a", "ResponseComplete", &sa, "2026-11-27T10:00:01Z");
        let other = event("c", "ResponseComplete", "alice", "2026-11-27T10:00:01Z");
        let old = event("z", "ResponseComplete", &sa, "2026-11-27T09:00:00Z");
        std::fs::write(
            d.path().join("audit.log"),
            format!("{late}\nnot json\n{other}\n{{\"auditID\":\"x\",\"user\":{{\"username\":\"{sa}\"}}}}\n{old}\n{early}\n{{\"torn"),
        )
        .unwrap();
        // a rotated copy overlapping the live file: the same event twice
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(format!("{early}\n").as_bytes()).unwrap();
        std::fs::write(d.path().join("audit-1.log.gz"), gz.finish().unwrap()).unwrap();
        let sources = Sources::resolve(&[d.path().to_path_buf()]).unwrap();
        let subject = Subject {
            users: vec![sa.clone()],
            ..Default::default()
        };
        let window = Window {
            since: Some("2026-11-27T10:00:00Z".parse().unwrap()),
            until: None,
        };
        let stage = NoProgress.stage("t", None);
        let stop = Shutdown::manual();
        let (stats, mut found) =
            scan(&sources, &[subject], &window, stage.as_ref(), &stop).unwrap();
        assert_eq!(stats.corrupt, 2, "{stats:?}");
        assert_eq!(stats.files[1].corrupt_lines, vec![2, 4]);
        assert!(stats.files[1].incomplete_tail);
        assert!(stats.describe().contains("2 corrupt line(s)"));
        let w = write_events(found.pop().unwrap(), &stop).unwrap();
        let mut text = String::new();
        let mut f = w.file;
        use std::io::Seek;
        f.rewind().unwrap();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, format!("{early}\n{late}\n"));
        assert_eq!(w.size, text.len() as u64);
        assert_eq!(w.summary.requests, 2);
        assert_eq!(w.summary.allowed, 2);
    }

    #[test]
    fn a_signal_stops_the_scan() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("audit.log"), "{}\n").unwrap();
        let sources = Sources::resolve(&[d.path().to_path_buf()]).unwrap();
        let stop = Shutdown::manual();
        stop.cancel();
        let stage = NoProgress.stage("t", None);
        let Err(e) = scan(&sources, &[], &Window::default(), stage.as_ref(), &stop) else {
            panic!("the scan ignored the signal");
        };
        assert_eq!(e.exit(), crate::Exit::Terminated);
    }

    #[test]
    fn since_takes_a_time_or_a_duration() {
        let now: jiff::Timestamp = "2026-11-27T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_since("2026-11-27T10:00:00Z", now)
                .unwrap()
                .to_string(),
            "2026-11-27T10:00:00Z"
        );
        assert_eq!(
            parse_since("90m", now).unwrap().to_string(),
            "2026-11-27T10:30:00Z"
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
