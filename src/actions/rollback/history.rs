//! `kirt rollback history KIND/NAME`: the revisions a rollback can go back to, with change-cause,
//! images, creation time and which one runs now.

use serde::{Deserialize, Serialize};

use super::{Revision, Target, Workload};
use crate::context::Ctx;
use crate::error::Result;
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["target"]))]
pub struct HistorySpec {
    /// The workload: deployment/NAME, statefulset/NAME or daemonset/NAME (deploy, sts, ds too)
    #[arg(value_name = "KIND/NAME")]
    pub target: String,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,
    pub revisions: Vec<Revision>,
}

impl Render for History {
    fn table(&self) -> Table {
        let mut t = Table::new([
            "REVISION",
            "CURRENT",
            "CHANGE-CAUSE",
            "IMAGES",
            "CREATED",
            "SOURCE",
        ]);
        for r in &self.revisions {
            t.row([
                r.revision.to_string(),
                if r.current { "*".into() } else { String::new() },
                r.change_cause.clone().unwrap_or_else(|| "<none>".into()),
                r.images.join(","),
                r.created.clone().unwrap_or_default(),
                r.source.clone(),
            ]);
        }
        if self.revisions.is_empty() {
            t.note(format!(
                "no revisions recorded for {}/{} in namespace {}",
                self.kind, self.name, self.namespace
            ));
        }
        t
    }
}

pub async fn run(ctx: &Ctx, spec: HistorySpec) -> Result<History> {
    let target: Target = spec.target.parse()?;
    let ns = match spec.namespace {
        Some(ns) => ns,
        None => ctx.namespace().await?,
    };
    let w = Workload::load(ctx.cluster().await?, &ns, &target).await?;
    Ok(History {
        kind: target.kind.lower().into(),
        name: target.name.clone(),
        namespace: ns,
        current_revision: w.current_revision(),
        revisions: w.revisions,
    })
}
