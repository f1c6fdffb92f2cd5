//! `kirt restore`: the real thing, for a new member or cluster. Verifies the backup first (every
//! digest), then runs `etcdutl snapshot restore` into an empty data dir (never a non-empty one) and
//! prints the etcd command line that starts the restored member. `objects` puts chosen objects of
//! a backup back through the apiserver instead.

pub mod objects;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::actions::backup::source::{BackupSource, Unsigned};
use crate::actions::backup::verify::{stream_and_check, Check, ETCDUTL_BIN};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::scratch::etcdutl_restore;

const CLUSTER_TOKEN: &str = "kirt-restored";

#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from", "backup", "data-dir", "name", "initial-cluster", "initial-advertise-peer-urls"]))]
pub struct RestoreSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    #[serde(flatten)]
    pub unsigned: Unsigned,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(value_name = "ID", default_value = "", hide_default_value = true)]
    pub backup: String,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// New, empty data directory for the restored member
    #[arg(long, value_name = "DIR", default_value = "", hide_default_value = true, value_parser = any_path)]
    pub data_dir: PathBuf,
    /// Member name
    #[arg(
        long,
        value_name = "NAME",
        default_value = "",
        hide_default_value = true
    )]
    pub name: String,
    /// Initial cluster, e.g. m1=https://10.0.0.1:2380,m2=https://10.0.0.2:2380
    #[arg(
        long,
        value_name = "NAME=URL,…",
        default_value = "",
        hide_default_value = true
    )]
    pub initial_cluster: String,
    /// This member's peer URLs
    #[arg(
        long,
        value_name = "URL",
        default_value = "",
        hide_default_value = true
    )]
    pub initial_advertise_peer_urls: String,
    /// Cluster token of the new cluster
    #[arg(long, value_name = "TOKEN", default_value = CLUSTER_TOKEN)]
    pub initial_cluster_token: String,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Where the plaintext snapshot is spooled while restoring (default: $TMPDIR); removed
    /// afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

/// A path, where empty means "not given" (reported by `run`, not clap).
fn any_path(s: &str) -> std::result::Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl Default for RestoreSpec {
    fn default() -> Self {
        RestoreSpec {
            source: BackupSource::default(),
            unsigned: Unsigned::default(),
            backup: String::new(),
            decrypt: DecryptOptions::default(),
            data_dir: PathBuf::new(),
            name: String::new(),
            initial_cluster: String::new(),
            initial_advertise_peer_urls: String::new(),
            initial_cluster_token: CLUSTER_TOKEN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            work_dir: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreResult {
    pub backup: String,
    pub cluster: String,
    pub revision: i64,
    pub data_dir: String,
    pub checks: Vec<Check>,
    pub etcd_command: String,
}

impl Render for RestoreResult {
    fn table(&self) -> Table {
        let mut t = Table::fields([
            ("backup", format!("{}/{}", self.cluster, self.backup)),
            ("revision", self.revision.to_string()),
            ("data dir", self.data_dir.clone()),
            ("verified", format!("{} checks ok", self.checks.len())),
        ]);
        t.note(format!(
            "\nstart the restored member with:\n  {}",
            self.etcd_command
        ));
        t
    }
}

pub async fn run(ctx: &Ctx, spec: RestoreSpec) -> Result<RestoreResult> {
    // checked here rather than by clap: `kirt restore objects` shares the command
    let data_dir = spec.data_dir.to_string_lossy().into_owned();
    for (flag, v) in [
        ("the backup ID", &spec.backup),
        ("--data-dir", &data_dir),
        ("--name", &spec.name),
        ("--initial-cluster", &spec.initial_cluster),
        (
            "--initial-advertise-peer-urls",
            &spec.initial_advertise_peer_urls,
        ),
    ] {
        if v.is_empty() {
            return Err(Error::usage(format!("missing {flag}")));
        }
    }
    let data = &spec.data_dir;
    if data.exists()
        && std::fs::read_dir(data)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::Refused(format!(
            "data dir {} is not empty: kirt restores only into an empty or new directory",
            data.display()
        )));
    }
    spec.unsigned.check(&spec.source, "restore")?;
    let loc = spec.source.locate(&spec.backup).await?;
    let decryption = loc.decryption(&spec.decrypt)?;
    // The plaintext snapshot is spooled in a private work dir (not next to the data dir: a disk
    // that fills up there takes the member down with it), removed afterwards.
    let tmp = crate::scratch::work_dir("kirt-restore-", spec.work_dir.as_deref())?;
    let snap = tmp.path().join("snapshot.db");
    let streamed = stream_and_check(ctx, &loc, decryption, Some(snap.clone())).await?;
    if !streamed.ok {
        let bad: Vec<String> = streamed
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.check.clone())
            .collect();
        return Err(Error::VerifyFailed(format!(
            "backup {} does not match its manifest ({}); nothing was restored",
            loc.entry.id,
            bad.join(", ")
        )));
    }
    let args = vec![
        "--name".to_string(),
        spec.name.clone(),
        "--initial-cluster".into(),
        spec.initial_cluster.clone(),
        "--initial-advertise-peer-urls".into(),
        spec.initial_advertise_peer_urls.clone(),
        "--initial-cluster-token".into(),
        spec.initial_cluster_token.clone(),
    ];
    etcdutl_restore(&ctx.shutdown, &spec.etcdutl_bin, &snap, data, &args).await?;
    let abs = std::fs::canonicalize(data).unwrap_or_else(|_| data.clone());
    let peer = spec.initial_advertise_peer_urls.clone();
    let etcd_command = format!(
        "etcd --name {} --data-dir {} --initial-advertise-peer-urls {peer} --listen-peer-urls {peer} \
         --initial-cluster {} --initial-cluster-token {} --listen-client-urls CLIENT_URLS --advertise-client-urls CLIENT_URLS",
        spec.name,
        abs.display(),
        spec.initial_cluster,
        spec.initial_cluster_token
    );
    Ok(RestoreResult {
        backup: loc.entry.id.clone(),
        cluster: loc.entry.cluster.clone(),
        revision: loc.manifest.etcd.revision,
        data_dir: abs.display().to_string(),
        checks: streamed.checks,
        etcd_command,
    })
}
