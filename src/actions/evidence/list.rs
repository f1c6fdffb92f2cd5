//! `kirt evidence list`: the evidence bundles in a store, newest first. Unfinished uploads are
//! never listed (the store only shows committed objects).

use serde::{Deserialize, Serialize};

use super::{bundle_time, parse_object_name};
use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::store::{self, S3Options};
use crate::units::human_bytes;

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EvidenceListSpec {
    /// Store: a directory, file:///DIR or s3://BUCKET/PREFIX
    #[arg(long, value_name = "URL")]
    pub from: String,
    #[command(flatten)]
    pub s3: S3Options,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundleEntry {
    pub name: String,
    pub key: String,
    pub size: u64,
    pub time: Option<jiff::Timestamp>,
    pub encrypted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvidenceList {
    pub location: String,
    pub bundles: Vec<BundleEntry>,
}

impl Render for EvidenceList {
    fn table(&self) -> Table {
        let mut t = Table::new(["BUNDLE", "SIZE", "COLLECTED", "ENCRYPTED"]);
        for b in &self.bundles {
            t.row([
                b.key.clone(),
                human_bytes(b.size),
                b.time
                    .map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string())
                    .unwrap_or_else(|| "-".into()),
                if b.encrypted { "age" } else { "no" }.into(),
            ]);
        }
        if self.bundles.is_empty() {
            t.note(format!("no evidence bundles in {}", self.location));
        }
        t
    }
}

pub async fn run(_ctx: &Ctx, spec: EvidenceListSpec) -> Result<EvidenceList> {
    if spec.from.is_empty() {
        return Err(Error::usage(
            "missing --from: the store to list (a directory or s3://BUCKET/PREFIX)",
        ));
    }
    let store = store::open(&spec.from, &spec.s3).await?;
    let mut bundles: Vec<BundleEntry> = store
        .list("")
        .await?
        .into_iter()
        .filter_map(|o| {
            let file = o.key.rsplit('/').next().unwrap_or(&o.key);
            let (bundle, encrypted) = parse_object_name(file)?;
            Some(BundleEntry {
                name: bundle.to_string(),
                time: bundle_time(bundle).or(o.modified),
                key: o.key.clone(),
                size: o.size,
                encrypted,
            })
        })
        .collect();
    bundles.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.key.cmp(&a.key)));
    Ok(EvidenceList {
        location: store.url(),
        bundles,
    })
}
