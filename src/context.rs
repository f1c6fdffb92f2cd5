//! `Ctx`: everything an action needs from its caller — how to reach the cluster, how to print,
//! whether to mutate (dry-run), how to confirm, where to journal, how to report progress.
//! Built once by the CLI (or the playbook engine) and passed by reference; no global state.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::error::{Error, Result};
use crate::k8s::{self, KubeOptions};
use crate::output::Format;
use crate::progress::{self, Progress};

/// Asks a person to confirm a mutation. `None` means nobody can be asked (no terminal).
pub trait Confirm: Send + Sync {
    fn ask(&self, prompt: &str) -> Option<bool>;
}

/// Never asks; used when nobody is there to answer (library use, tests).
pub struct NoConfirm;

impl Confirm for NoConfirm {
    fn ask(&self, _prompt: &str) -> Option<bool> {
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
    pub confirm: Arc<dyn Confirm>,
    client: OnceCell<k8s::Cluster>,
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
            confirm: Arc::new(NoConfirm),
            client: OnceCell::new(),
        }
    }

    /// The Kubernetes client, built on first use (commands that never talk to the cluster, such as
    /// `backup create`, never need a kubeconfig).
    pub async fn cluster(&self) -> Result<&k8s::Cluster> {
        self.client
            .get_or_try_init(|| k8s::Cluster::connect(&self.kube))
            .await
    }

    /// The namespace to use: `-n`, else the kubeconfig context's, else "default".
    pub async fn namespace(&self) -> Result<String> {
        if let Some(ns) = &self.kube.namespace {
            return Ok(ns.clone());
        }
        Ok(self.cluster().await?.default_namespace.clone())
    }

    /// Gate for every mutation: proceeds with `--yes` or in dry-run, asks on a terminal, and
    /// refuses (exit 4) when nobody can be asked.
    pub fn confirm(&self, what: &str) -> Result<()> {
        if self.yes || self.dry_run {
            return Ok(());
        }
        match self.confirm.ask(&format!("{what}. Proceed?")) {
            Some(true) => Ok(()),
            Some(false) => Err(Error::Refused(format!("not confirmed: {what}"))),
            None => Err(Error::Refused(format!(
                "{what}: this changes the cluster and no terminal is attached to confirm; re-run with --yes (or --dry-run to preview)"
            ))),
        }
    }
}
