//! `kirt runs report RUN`: the incident timeline of a playbook run, for the postmortem. From the
//! run's journal: who ran it (user, host, cluster identity) and how (manual, resumed, an undo),
//! every step with its times, confirmations, retries and failures, the exact objects it changed
//! (resourceVersions before → after, changed fields), the evidence bundles and backups it made
//! (sha256) and its undo; from the cluster: the Events of the objects it touched; with
//! `--audit-log`: what the quarantined pods' ServiceAccounts did in the run's window. All of it
//! interleaved by time, as Markdown or one self-contained HTML file.
//!
//! The journal, Event messages and audit logs may have been edited or planted: the report shows
//! their content as text (escaped for the format), never as markup, and a cluster or log that
//! cannot be read leaves a note in its section, never a failed report.

mod model;
mod render;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::journal;
use crate::audit::{self, Sources, Subject, Window};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
pub use model::Report;
use model::{show_time, Audit, AuditRow, KubeEvent, Moment};

/// Audit rows shown in a report; the summary counts all of them.
const AUDIT_ROWS: usize = 500;
/// How long the report waits for the apiserver's Events before it goes on without them.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    /// Markdown (pastes into a postmortem)
    #[default]
    Md,
    /// One self-contained HTML file with a visual timeline
    Html,
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ReportSpec {
    /// The run (`kirt runs list`)
    #[arg(value_name = "RUN_ID")]
    pub run_id: String,
    /// md or html
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// The apiserver's audit log (a file or a directory of rotated files; repeatable): the
    /// requests of the quarantined pods' ServiceAccounts in the run's window join the timeline
    #[arg(long = "audit-log", value_name = "PATH")]
    pub audit_log: Vec<PathBuf>,
    /// Write the report to FILE instead of stdout (-o is the output format of every command)
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// The rendered report, and where it went.
#[derive(Debug, Clone, Serialize)]
pub struct ReportOutput {
    pub run_id: String,
    pub format: ReportFormat,
    /// The file written (`--out`); none when printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub bytes: usize,
    pub sha256: String,
    pub report: Report,
    #[serde(skip)]
    text: String,
}

impl Render for ReportOutput {
    fn table(&self) -> Table {
        match &self.file {
            Some(f) => {
                let mut t = Table::fields([
                    ("run", self.run_id.clone()),
                    ("report", f.clone()),
                    ("bytes", self.bytes.to_string()),
                    ("sha256", self.sha256.clone()),
                ]);
                t.note(format!(
                    "{} steps, {} changes, {} artifacts, {} Events{}",
                    self.report.steps.len(),
                    self.report.changes.len(),
                    self.report.artifacts.len(),
                    self.report.events.items.len(),
                    self.report
                        .audit
                        .as_ref()
                        .map(|a| format!(", {} audit requests", a.summary.requests))
                        .unwrap_or_default()
                ));
                t
            }
            None => {
                let mut t = Table::default();
                t.note(self.text.trim_end().to_string());
                t
            }
        }
    }
}

pub async fn run(ctx: &Ctx, spec: ReportSpec) -> Result<ReportOutput> {
    if spec.run_id.is_empty() || spec.run_id.contains('/') || spec.run_id.starts_with('.') {
        return Err(Error::usage(format!(
            "{:?} is not a run id (see `kirt runs list`)",
            spec.run_id
        )));
    }
    // Input errors first: an audit log path that does not exist is a usage error.
    let sources = (!spec.audit_log.is_empty())
        .then(|| Sources::resolve(&spec.audit_log))
        .transpose()?;
    let entries = journal::read(&journal::path(&journal::dir(ctx)?, &spec.run_id))?;
    if entries.is_empty() {
        return Err(Error::failed(format!(
            "run journal {} holds no kirt records",
            spec.run_id
        )));
    }
    let mut report = model::build(&spec.run_id, &entries);
    let (first, last) = window(&report);
    report.events = events(ctx, &report, first).await;
    if let Some(sources) = sources {
        report.audit = Some(audit(ctx, &report, sources, first, last).await?);
    }
    finish(&mut report);
    let text = render::render(&report, spec.format)?;
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let file = match &spec.out {
        Some(path) => {
            write_atomically(path, text.as_bytes())?;
            Some(path.display().to_string())
        }
        None => None,
    };
    Ok(ReportOutput {
        run_id: spec.run_id,
        format: spec.format,
        file,
        bytes: text.len(),
        sha256,
        report,
        text,
    })
}

/// The run's window: from its first record to its last (an undo appended later included).
fn window(r: &Report) -> (Option<jiff::Timestamp>, Option<jiff::Timestamp>) {
    let times = r.timeline.iter().filter_map(|m| m.at);
    (times.clone().min(), times.max())
}

/// The Events of every object the run changed, and of the pods it collected evidence from, since
/// the run started. Without a reachable cluster the section says why.
async fn events(
    ctx: &Ctx,
    r: &Report,
    since: Option<jiff::Timestamp>,
) -> model::Section<KubeEvent> {
    let mut objects: Vec<(String, String, String, Option<String>)> = Vec::new();
    for c in &r.changes {
        if !c.namespace.is_empty() && !c.name.is_empty() {
            objects.push((
                kind_of(&c.kind),
                c.namespace.clone(),
                c.name.clone(),
                Some(c.uid.clone()),
            ));
        }
    }
    for a in &r.artifacts {
        if let Some((ns, pod)) = &a.pod {
            objects.push(("Pod".into(), ns.clone(), pod.clone(), None));
        }
    }
    objects.sort();
    objects.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.2 == b.2);
    // Event times have whole seconds: the second the run started counts
    let since = since.and_then(|t| jiff::Timestamp::from_second(t.as_second()).ok());
    let mut section = model::Section::empty();
    if objects.is_empty() {
        section.note = "the run changed no namespaced object".into();
        return section;
    }
    let fetch = async {
        let cluster = ctx.cluster().await?;
        let mut out = Vec::new();
        for (kind, ns, name, uid) in &objects {
            let uid = uid.as_deref().filter(|u| !u.is_empty());
            for e in crate::k8s::involving(cluster, ns, kind, name, uid).await? {
                let at = crate::k8s::event_time(&e);
                if since.is_some_and(|s| at.is_some_and(|t| t < s)) {
                    continue;
                }
                out.push(KubeEvent {
                    time: show_time(at),
                    object: format!("{kind} {ns}/{name}"),
                    kind: e.type_.clone().unwrap_or_default(),
                    reason: e.reason.clone().unwrap_or_default(),
                    message: e.message.clone().unwrap_or_default(),
                    count: e.count.unwrap_or(1),
                    at,
                });
            }
        }
        Ok::<_, Error>(out)
    };
    match tokio::time::timeout(
        EVENTS_TIMEOUT,
        ctx.shutdown.guard("the report was not written", fetch),
    )
    .await
    {
        Ok(Ok(mut items)) => {
            items.sort_by_key(|e| e.at);
            if items.is_empty() {
                section.note = "no Events (the apiserver keeps them for an hour by default)".into();
            }
            section.items = items;
        }
        Ok(Err(e)) => section.note = format!("Events not available: {e}"),
        Err(_) => {
            section.note = format!(
                "Events not available: the apiserver did not answer within {}s",
                EVENTS_TIMEOUT.as_secs()
            )
        }
    }
    section
}

/// `deployment` (as rollback records it) → `Deployment` (as Events name it).
fn kind_of(kind: &str) -> String {
    match kind {
        "deployment" => "Deployment".into(),
        "statefulset" => "StatefulSet".into(),
        "daemonset" => "DaemonSet".into(),
        k => k.to_string(),
    }
}

/// The requests of the ServiceAccounts of the pods the run changed, in its window.
async fn audit(
    ctx: &Ctx,
    r: &Report,
    sources: Sources,
    first: Option<jiff::Timestamp>,
    last: Option<jiff::Timestamp>,
) -> Result<Audit> {
    let mut users: Vec<String> = r
        .changes
        .iter()
        .filter(|c| c.kind == "Pod")
        .filter_map(|c| {
            Some(Subject::service_account_user(
                &c.namespace,
                c.service_account.as_deref()?,
            ))
        })
        .collect();
    users.sort();
    users.dedup();
    let window = Window {
        since: first,
        // the last record's second, whole
        until: last.and_then(|t| t.checked_add(jiff::SignedDuration::from_secs(1)).ok()),
    };
    let subject = Subject {
        users: users.clone(),
        ..Default::default()
    };
    let (stats, mut found) = audit::select(
        ctx.progress.as_ref(),
        &ctx.shutdown,
        sources,
        vec![subject],
        window,
    )
    .await?;
    let found = found
        .pop()
        .ok_or_else(|| Error::failed("the audit scan returned no selection"))?;
    let stop = ctx.shutdown.clone();
    let task = tokio::task::spawn_blocking(move || rows(found, &stop));
    let (summary, rows, omitted) =
        crate::error::join("reading the selected audit events", task).await??;
    Ok(Audit {
        users,
        read: stats.describe(),
        summary,
        rows,
        omitted,
    })
}

/// One row per request (its last stage), the first [`AUDIT_ROWS`] of them; all are summarised.
fn rows(
    found: audit::Found,
    stop: &crate::signal::Shutdown,
) -> Result<(audit::Summary, Vec<AuditRow>, u64)> {
    let mut summary = audit::Summary::default();
    let mut rows: Vec<AuditRow> = Vec::new();
    let mut last_id = String::new();
    let mut omitted = 0u64;
    let sorted = found
        .selection
        .into_sorted()
        .map_err(|e| Error::io("reading the selected audit events", e))?;
    for (i, line) in sorted.enumerate() {
        if i % 8192 == 0 {
            stop.check("the report was not written")?;
        }
        let line = line.map_err(|e| Error::io("reading the selected audit events", e))?;
        let Some(e) = audit::Event::parse(&line) else {
            continue;
        };
        summary.add(&e);
        let row = AuditRow {
            time: show_time(e.received()),
            user: e.user.username.to_string(),
            verb: e.verb.to_string(),
            resource: e.resource(),
            object: e.object(),
            code: e.code().map(|c| c.to_string()).unwrap_or_default(),
            decision: e
                .annotations
                .decision
                .as_deref()
                .unwrap_or_default()
                .to_string(),
            source: e
                .source_ips
                .first()
                .map(|s| s.to_string())
                .unwrap_or_default(),
            user_agent: e.user_agent.to_string(),
            at: e.received(),
            denied: e.denied(),
        };
        if e.audit_id == last_id {
            // a later stage of the same request: it replaces the row (the outcome is known now)
            if let Some(r) = rows.last_mut() {
                *r = row;
            }
            continue;
        }
        last_id = e.audit_id.to_string();
        if rows.len() < AUDIT_ROWS {
            rows.push(row);
        } else {
            omitted += 1;
        }
    }
    summary.finish();
    Ok((summary, rows, omitted))
}

/// Events and audit rows join the timeline; then it is sorted and laid out.
fn finish(r: &mut Report) {
    for e in &r.events.items {
        // An Event's time is cut to the second: placed at the end of it, it never comes before
        // the change it reports.
        let at = e.at.map(|t| match t.subsec_nanosecond() {
            0 => t + jiff::SignedDuration::from_millis(999),
            _ => t,
        });
        r.timeline.push(Moment {
            time: e.time.clone(),
            kind: "event".into(),
            text: format!(
                "{} Event {} on {}: {}",
                e.kind, e.reason, e.object, e.message
            ),
            class: if e.kind == "Warning" {
                "warning".into()
            } else {
                String::new()
            },
            at,
        });
    }
    if let Some(a) = &r.audit {
        for row in &a.rows {
            r.timeline.push(Moment {
                time: row.time.clone(),
                kind: "audit".into(),
                text: format!(
                    "{} {} {} {} → {} {} from {} ({})",
                    row.user,
                    row.verb,
                    row.resource,
                    row.object,
                    row.code,
                    row.decision,
                    row.source,
                    row.user_agent
                ),
                class: if row.denied {
                    "denied".into()
                } else {
                    String::new()
                },
                at: row.at,
            });
        }
    }
    r.timeline.sort_by_key(|m| m.at);
    let (first, last) = window(r);
    r.start = show_time(first);
    r.end = show_time(last);
    let span = match (first, last) {
        (Some(f), Some(l)) => (l - f).total(jiff::Unit::Second).unwrap_or(0.0),
        _ => 0.0,
    };
    r.duration = crate::units::human_duration(Duration::from_secs_f64(span.max(0.0).round()));
    // percent of the window, to 0.01
    let pos = |t: Option<jiff::Timestamp>| match (t, first) {
        (Some(t), Some(f)) if span > 0.0 => {
            let p = (t - f).total(jiff::Unit::Second).unwrap_or(0.0) / span * 100.0;
            (p.clamp(0.0, 100.0) * 100.0).round() / 100.0
        }
        _ => 0.0,
    };
    r.bars = r
        .steps
        .iter()
        .map(|s| {
            let left = pos(s.from);
            let right = pos(s.to.or(last));
            model::Bar {
                label: format!("{} ({})", s.id, s.status),
                left,
                width: ((right - left).max(0.4) * 100.0).round() / 100.0,
                class: s.status.clone(),
            }
        })
        .collect();
    r.marks = r
        .timeline
        .iter()
        .filter(|m| {
            matches!(
                m.kind.as_str(),
                "change" | "event" | "audit" | "undo" | "run"
            )
        })
        .map(|m| model::Mark {
            left: pos(m.at),
            class: format!("{} {}", m.kind, m.class),
            title: format!("{} {}", m.time, m.text),
        })
        .collect();
    r.generated = format!(
        "{} by kirt {}",
        show_time(Some(jiff::Timestamp::now())),
        crate::actions::version::VERSION
    );
}

/// A temporary file next to `path`, renamed over it once complete (0600: reports name people,
/// hosts and objects).
fn write_atomically(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".kirt-report-")
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))?;
    crate::context::write_private(tmp.path(), data, true)?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("writing the report {}", path.display()), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbook::journal::Entry;

    /// A journal as a run writes it, with text an intruder could have planted.
    fn entries() -> Vec<Entry> {
        let planted = "<script>document.title='pwned'</script> | [x](http://evil)";
        let lines = [
            serde_json::json!({"type": "run-start", "time": "2026-11-27T10:00:00.100Z", "run": "r1",
                "started_at": "2026-11-27T10:00:00Z", "playbook": "isolate-compromised-pod",
                "source": "playbooks/isolate-compromised-pod.yaml", "digest": "sha256:ab",
                "params": {"pod": planted}, "dry_run": false, "user": "alice", "host": "h",
                "kirt": "0.1.0"}),
            serde_json::json!({"type": "step-start", "time": "2026-11-27T10:00:00.200Z", "step": "isolate", "index": 1, "action": "quarantine.apply"}),
            serde_json::json!({"type": "step-retry", "time": "2026-11-27T10:00:01Z", "step": "isolate", "attempt": 1, "error": "apiserver busy"}),
            serde_json::json!({"type": "confirmed", "time": "2026-11-27T10:00:01.500Z", "step": "isolate", "answer": "confirmed by --yes"}),
            serde_json::json!({"type": "mutation", "time": "2026-11-27T10:00:02Z", "step": "isolate", "action": "quarantine.apply",
                "object": {"kind": "Pod", "namespace": "shop", "name": "web-1", "uid": "u1", "serviceAccount": "app",
                           "resourceVersion": {"before": "812", "after": "815"},
                           "changes": [planted], "fields": {"metadata": {"labels": {"app": null}}}},
                "undo": {"action": "quarantine.release", "with": {"pod": "web-1", "namespace": "shop"}}}),
            serde_json::json!({"type": "step-end", "time": "2026-11-27T10:00:03Z", "step": "isolate", "status": "ok",
                "duration_seconds": 2.8, "attempts": 2, "outputs": {}, "error": null, "exit": 0}),
            serde_json::json!({"type": "run-end", "time": "2026-11-27T10:00:04Z", "run": "r1", "status": "ok", "exit": 0}),
        ];
        lines
            .iter()
            .map(|v| {
                let mut v = v.clone();
                let time = v["time"].as_str().unwrap().to_string();
                v.as_object_mut().unwrap().remove("time");
                Entry {
                    time,
                    record: serde_json::from_value(v).unwrap(),
                }
            })
            .collect()
    }

    #[test]
    fn the_journal_becomes_a_timeline_and_planted_text_stays_text() {
        let mut r = model::build("r1", &entries());
        r.events.items.push(KubeEvent {
            time: "2026-11-27 10:00:02Z".into(),
            object: "Pod shop/web-1".into(),
            kind: "Warning".into(),
            reason: "Quarantined".into(),
            message: "<img src=x onerror=alert(1)>".into(),
            count: 1,
            at: "2026-11-27T10:00:02Z".parse().ok(),
        });
        finish(&mut r);
        assert_eq!(r.steps.len(), 1);
        let s = &r.steps[0];
        assert_eq!((s.status.as_str(), s.attempts), ("ok", 2));
        assert_eq!(s.confirmed, "confirmed by --yes");
        assert_eq!(s.retries, vec!["attempt 1 failed: apiserver busy"]);
        let c = &r.changes[0];
        assert_eq!((c.before.as_str(), c.after.as_str()), ("812", "815"));
        assert_eq!(c.fields, vec!["metadata.labels.app removed"]);
        assert_eq!(c.undo, "quarantine.release");
        // the Event sits between the change and the step's end
        let kinds: Vec<&str> = r.timeline.iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["run", "step", "retry", "confirm", "change", "event", "step", "run"]
        );
        assert_eq!(r.duration, "4s");
        assert!(
            r.bars[0].left > 0.0 && r.bars[0].width > 50.0,
            "{:?}",
            r.bars
        );

        let md = render::render(&r, ReportFormat::Md).unwrap();
        assert!(md.contains("| 812 → 815 |"), "{md}");
        assert!(!md.contains("<script") && !md.contains("<img"), "{md}");
        assert!(!md.contains("[x](http"), "{md}");
        let html = render::render(&r, ReportFormat::Html).unwrap();
        assert!(
            !html.contains("<script") && !html.contains("<img"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;"), "{html}");
        // self-contained: nothing to fetch, nowhere to go
        assert!(
            !html.contains("href=") && !html.contains("src=\""),
            "{html}"
        );
    }
}
