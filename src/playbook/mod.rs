//! Playbooks: incident and backup procedures as code. A YAML file names steps; each step is one
//! of kirt's actions (the same spec and code as its subcommand), templated with minijinja,
//! validated completely before anything runs, and journaled so a run can be resumed or undone.

pub mod builtin;
pub mod commands;
pub mod engine;
pub mod journal;
pub mod model;
pub mod registry;
pub mod report;
pub mod template;
pub mod undo;
pub mod validate;

use std::path::Path;

use crate::error::{Error, Result};

/// Playbooks shipped with kirt, found by name (`kirt run etcd-backup`).
pub const SHIPPED: &[(&str, &str)] = &[
    (
        "etcd-backup",
        include_str!("../../playbooks/etcd-backup.yaml"),
    ),
    ("dr-drill", include_str!("../../playbooks/dr-drill.yaml")),
    (
        "rollback-bad-deploy",
        include_str!("../../playbooks/rollback-bad-deploy.yaml"),
    ),
    (
        "isolate-compromised-pod",
        include_str!("../../playbooks/isolate-compromised-pod.yaml"),
    ),
    (
        "restore-deleted-namespace",
        include_str!("../../playbooks/restore-deleted-namespace.yaml"),
    ),
];

/// A playbook's text and where it came from.
#[derive(Debug, Clone)]
pub struct Source {
    /// The file as given, or `playbooks/NAME.yaml` for a shipped one.
    pub file: String,
    pub text: String,
    pub digest: String,
}

/// A file path, or else a shipped playbook's name.
pub fn resolve(target: &str) -> Result<Source> {
    let p = Path::new(target);
    if p.is_file() {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::io(format!("reading playbook {target}"), e))?;
        let file = std::fs::canonicalize(p)
            .map(|c| c.display().to_string())
            .unwrap_or_else(|_| target.to_string());
        return Ok(Source {
            digest: engine::digest(&text),
            file,
            text,
        });
    }
    // journals record shipped playbooks as playbooks/NAME.yaml
    let name = target.trim_end_matches(".yaml");
    let name = name.strip_prefix("playbooks/").unwrap_or(name);
    match SHIPPED.iter().find(|(n, _)| *n == name) {
        Some((n, text)) => Ok(Source {
            file: format!("playbooks/{n}.yaml"),
            text: text.to_string(),
            digest: engine::digest(text),
        }),
        None => Err(Error::not_found(
            format!("playbook {target:?} (no such file and no shipped playbook of that name)"),
            format!(
                "shipped playbooks: {}",
                SHIPPED
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_playbooks_resolve_by_name_and_recorded_path() {
        let a = resolve("etcd-backup").unwrap();
        let b = resolve("playbooks/etcd-backup.yaml").unwrap();
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.file, "playbooks/etcd-backup.yaml");
        assert_eq!(
            resolve("no-such-playbook").unwrap_err().exit(),
            crate::Exit::NotFound
        );
    }
}
