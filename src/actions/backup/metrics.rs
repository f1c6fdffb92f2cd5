//! Prometheus textfile metrics for cron (node_exporter's textfile collector), written atomically.
//! The failure counter survives across runs by reading the previous file.

use std::fmt::Write as _;
use std::path::Path;

use crate::error::{IoContext, Result};

pub struct Outcome<'a> {
    pub cluster: &'a str,
    pub success: Option<Success>,
    pub now: jiff::Timestamp,
}

pub struct Success {
    pub duration_seconds: f64,
    pub snapshot_bytes: u64,
    pub stored_bytes: u64,
    pub revision: i64,
}

/// Reads a sample's value from a previous metrics file (our own format, one sample per line).
fn previous(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Writes the metrics file atomically; returns the text written.
pub fn write(path: &Path, o: &Outcome<'_>) -> Result<String> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let s = render(&old, o);
    write_text(path, &s)?;
    Ok(s)
}

/// Replaces the file at `path` with `s` atomically (temp file, rename), readable by others.
pub fn write_text(path: &Path, s: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .ctx(|| format!("creating a temp file in {}", dir.display()))?;
    std::fs::write(tmp.path(), s).ctx(|| format!("writing {}", tmp.path().display()))?;
    // node_exporter's textfile collector usually runs as another user: it must be able to read it
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .ctx(|| format!("making {} readable", tmp.path().display()))?;
    }
    tmp.persist(path).map_err(|e| {
        crate::Error::io(format!("renaming metrics to {}", path.display()), e.error)
    })?;
    Ok(())
}

/// Pushes the metrics to a Prometheus Pushgateway (grouping key job=kirt_backup, cluster=NAME),
/// replacing the group's previous values.
pub async fn push(gateway: &str, cluster: &str, text: &str) -> Result<()> {
    let url = format!(
        "{}/metrics/job/kirt_backup/cluster/{}",
        gateway.trim_end_matches('/'),
        cluster
    );
    let headers = [(
        "Content-Type".to_string(),
        "text/plain; version=0.0.4".to_string(),
    )];
    let r = crate::http::send(
        "PUT",
        &url,
        &headers,
        text.as_bytes().to_vec(),
        "the pushgateway",
        std::time::Duration::from_secs(10),
    )
    .await?;
    if !(200..300).contains(&r.status) {
        return Err(crate::Error::failed(format!(
            "the pushgateway answered {}: {}",
            r.status,
            r.body.trim()
        )));
    }
    Ok(())
}

/// `{cluster="NAME"}` with the text format's escapes for label values: backslash, double quote,
/// newline.
pub fn cluster_label(cluster: &str) -> String {
    format!(
        "{{cluster=\"{}\"}}",
        cluster
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    )
}

/// The textfile: current outcome plus what must carry over from the previous file.
pub fn render(old: &str, o: &Outcome<'_>) -> String {
    let label = cluster_label(o.cluster);
    let mut failures = previous(old, "kirt_backup_failures_total").unwrap_or(0.0);
    let mut last_failure =
        previous(old, "kirt_backup_last_failure_timestamp_seconds").unwrap_or(0.0);
    let now = o.now.as_millisecond() as f64 / 1000.0;
    let mut s = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        let _ = writeln!(
            s,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {value}"
        );
    };
    match &o.success {
        Some(ok) => {
            gauge(
                "kirt_backup_last_success_timestamp_seconds",
                "Time of the last successful backup.",
                "gauge",
                now,
            );
            gauge(
                "kirt_backup_duration_seconds",
                "Duration of the last successful backup.",
                "gauge",
                ok.duration_seconds,
            );
            gauge(
                "kirt_backup_snapshot_bytes",
                "Size of the etcd snapshot of the last successful backup.",
                "gauge",
                ok.snapshot_bytes as f64,
            );
            gauge(
                "kirt_backup_stored_bytes",
                "Stored (compressed, encrypted) size of the last successful backup.",
                "gauge",
                ok.stored_bytes as f64,
            );
            gauge(
                "kirt_backup_revision",
                "etcd revision of the last successful backup.",
                "gauge",
                ok.revision as f64,
            );
        }
        None => {
            failures += 1.0;
            last_failure = now;
            for name in [
                "kirt_backup_last_success_timestamp_seconds",
                "kirt_backup_duration_seconds",
                "kirt_backup_snapshot_bytes",
                "kirt_backup_stored_bytes",
                "kirt_backup_revision",
            ] {
                if let Some(v) = previous(old, name) {
                    gauge(
                        name,
                        "Carried over from the last successful backup.",
                        "gauge",
                        v,
                    );
                }
            }
        }
    }
    gauge(
        "kirt_backup_failures_total",
        "Failed backups since the metrics file was created.",
        "counter",
        failures,
    );
    gauge(
        "kirt_backup_last_failure_timestamp_seconds",
        "Time of the last failed backup (0 = never).",
        "gauge",
        last_failure,
    );
    gauge(
        "kirt_backup_last_run_success",
        "1 if the last run succeeded, else 0.",
        "gauge",
        if o.success.is_some() { 1.0 } else { 0.0 },
    );

    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_counter_accumulates_and_success_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kirt.prom");
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let ok = Success {
            duration_seconds: 2.5,
            snapshot_bytes: 100,
            stored_bytes: 40,
            revision: 7,
        };
        write(
            &p,
            &Outcome {
                cluster: "c",
                success: Some(ok),
                now,
            },
        )
        .unwrap();
        write(
            &p,
            &Outcome {
                cluster: "c",
                success: None,
                now,
            },
        )
        .unwrap();
        write(
            &p,
            &Outcome {
                cluster: "c",
                success: None,
                now,
            },
        )
        .unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(previous(&text, "kirt_backup_failures_total"), Some(2.0));
        assert_eq!(previous(&text, "kirt_backup_revision"), Some(7.0));
        assert_eq!(previous(&text, "kirt_backup_last_run_success"), Some(0.0));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let text = render(
            "",
            &Outcome {
                cluster: "a\"b\\c\nd",
                success: None,
                now,
            },
        );
        assert!(text.contains(r#"{cluster="a\"b\\c\nd"}"#), "{text}");
        assert!(
            !text.contains("c\nd"),
            "a raw newline breaks the format:\n{text}"
        );
    }
}
