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

/// Asks a person to confirm a mutation. `None` means nobody can be asked (no terminal).
pub trait Prompt: Send + Sync {
    fn ask(&self, question: &str) -> Option<bool>;
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
    pub fn confirm(&self, what: &str) -> Result<()> {
        if self.yes || self.dry_run {
            return Ok(());
        }
        match self.prompt.ask(&format!("{what}. Proceed?")) {
            Some(true) => Ok(()),
            Some(false) => Err(Error::Refused(format!("not confirmed: {what}"))),
            None => Err(Error::Refused(format!(
                "{what}: this changes the cluster and no terminal is attached to confirm; re-run with --yes (or --dry-run to preview)"
            ))),
        }
    }
}

/// kirt's state directory: `$XDG_STATE_HOME/kirt` or `~/.local/state/kirt` (journals, pending
/// upload ids).
pub fn state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kirt")
}
