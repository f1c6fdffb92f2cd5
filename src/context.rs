//! `Ctx`: everything an action needs from its caller — how to reach the cluster, how to print,
//! whether to mutate (dry-run), how to confirm, where to journal, how to report progress.
//! Built once by the CLI (or the playbook engine) and passed by reference; no global state.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::k8s::{Cluster, KubeOptions};
use crate::output::Format;
use crate::progress::{self, Progress};
use crate::signal::Shutdown;

/// Asks a person to confirm a mutation. `None` means nobody can be asked (no terminal).
pub trait Prompt: Send + Sync {
    fn ask(&self, question: &str) -> Option<bool>;
}

/// How a mutation was confirmed (journaled for the incident report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// `--yes` was given.
    Yes,
    /// A dry run changes nothing: nothing to confirm.
    DryRun,
    /// A person answered yes on the terminal.
    Terminal,
}

impl Confirmed {
    pub fn describe(self) -> &'static str {
        match self {
            Confirmed::Yes => "confirmed by --yes",
            Confirmed::DryRun => "dry run (nothing to confirm)",
            Confirmed::Terminal => "confirmed on the terminal",
        }
    }
}

/// Never asks; used when nobody is there to answer (library use, tests).
pub struct NoPrompt;

impl Prompt for NoPrompt {
    fn ask(&self, _question: &str) -> Option<bool> {
        None
    }
}

pub struct Ctx {
    pub kube: KubeOptions,
    pub format: Format,
    pub dry_run: bool,
    /// `--yes`: mutations proceed without asking.
    pub yes: bool,
    pub journal_dir: Option<PathBuf>,
    pub progress: Arc<dyn Progress>,
    /// Who answers `confirm` questions (a terminal prompt, or nobody).
    pub prompt: Arc<dyn Prompt>,
    /// SIGINT/SIGTERM: long commands stop cleanly when it fires.
    pub shutdown: Shutdown,
    cluster: OnceCell<Cluster>,
    /// Legacy tokens of Secrets kirt deleted in this process (memory only, never written).
    held_tokens: std::sync::Mutex<Vec<crate::k8s::access::HeldToken>>,
}

impl Ctx {
    pub fn new(kube: KubeOptions) -> Self {
        Ctx {
            kube,
            format: Format::Table,
            dry_run: false,
            yes: false,
            journal_dir: None,
            progress: progress::none(),
            prompt: Arc::new(NoPrompt),
            shutdown: Shutdown::default(),
            cluster: OnceCell::new(),
            held_tokens: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The Kubernetes cluster, connected on first use (commands that never talk to the cluster,
    /// such as `backup create`, never need a kubeconfig).
    pub async fn cluster(&self) -> Result<&Cluster> {
        self.cluster
            .get_or_try_init(|| Cluster::connect(&self.kube))
            .await
    }

    /// The namespace to use: `-n`, else the kubeconfig context's, else "default".
    pub async fn namespace(&self) -> Result<String> {
        if let Some(ns) = &self.kube.namespace {
            return Ok(ns.clone());
        }
        Ok(self.cluster().await?.default_namespace.clone())
    }

    /// A namespace given in a playbook step, else `-n`/the context's.
    pub async fn namespace_or(&self, given: &Option<String>) -> Result<String> {
        match given {
            Some(ns) => Ok(ns.clone()),
            None => self.namespace().await,
        }
    }

    /// Keeps a revoked token in memory for a later check in the same process (a playbook's
    /// `quarantine.verify` after `quarantine.apply`).
    pub fn hold_token(&self, t: crate::k8s::access::HeldToken) {
        self.held_tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(t);
    }

    /// A copy (zeroed when dropped) of the token held for the Secret with this uid.
    pub fn held_token(&self, uid: &str) -> Option<zeroize::Zeroizing<String>> {
        let held = self.held_tokens.lock().unwrap_or_else(|e| e.into_inner());
        held.iter().find(|t| t.uid == uid).map(|t| t.token.clone())
    }

    /// Gate for every mutation: proceeds with `--yes` or in dry-run, asks on a terminal, and
    /// refuses (exit 4) when nobody can be asked.
    pub fn confirm(&self, what: &str) -> Result<Confirmed> {
        if self.dry_run {
            return Ok(Confirmed::DryRun);
        }
        if self.yes {
            return Ok(Confirmed::Yes);
        }
        match self.prompt.ask(&format!("{what}. Proceed?")) {
            Some(true) => Ok(Confirmed::Terminal),
            Some(false) => Err(Error::Refused(format!("not confirmed: {what}"))),
            None => Err(Error::Refused(format!(
                "{what}: this changes the cluster and no terminal is attached to confirm; re-run with --yes (or --dry-run to preview)"
            ))),
        }
    }
}

/// kirt's state directory (run journals): `$XDG_STATE_HOME/kirt` or `~/.local/state/kirt`.
/// Never a shared temp dir: journals describe what was done to the cluster.
pub fn state_dir() -> Result<PathBuf> {
    std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| std::path::Path::new(&h).join(".local/state"))
        })
        .map(|base| base.join("kirt"))
        .ok_or_else(|| {
            Error::usage("no state directory: set $XDG_STATE_HOME or $HOME, or give --journal DIR")
        })
}

/// Creates `dir` (and missing parents) readable by its owner only (0700); an existing directory
/// keeps its mode.
pub fn private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))
}

/// Writes a new file readable by its owner only (0600); an existing file is an error unless
/// `replace` (then it is truncated, keeping its mode).
pub fn write_private(path: &std::path::Path, data: &[u8], replace: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut open = std::fs::OpenOptions::new();
    open.write(true).mode(0o600);
    if replace {
        open.create(true).truncate(true);
    } else {
        open.create_new(true);
    }
    open.open(path)
        .and_then(|mut f| f.write_all(data).and_then(|_| f.sync_all()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
