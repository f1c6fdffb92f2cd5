//! Command-line surface (clap derive): global options and subcommands. Each subcommand fills an
//! action spec and hands it to the action; no logic lives here.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::actions;
use crate::context::Ctx;
use crate::error::{Exit, IoContext, Result};
use crate::k8s::KubeOptions;
use crate::output::{self, Format, Render};

#[derive(Debug, Parser)]
#[command(
    name = "kirt",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("KIRT_GIT_COMMIT"), ")"),
    about = "Kubernetes Incident Response Toolkit: quarantine, evidence, rollback and verified etcd backups",
    long_about = None,
    after_help = "Exit codes: 0 ok, 1 failure, 2 usage, 3 verification failed, 4 refused, 5 partial, \
                  6 not found, 7 forbidden, 8 unreachable (docs/exit-codes.md)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    #[command(flatten)]
    pub kube: KubeOptions,
    /// Output format for results (stdout)
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Preview: server-side dry run for every API change, no uploads, no deletes
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// Do not ask for confirmation before changing things
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// More log output (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log format on stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Directory for run journals (default: $XDG_STATE_HOME/kirt/runs)
    #[arg(long, global = true, value_name = "DIR")]
    pub journal: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check what kirt needs: apiserver, permissions, CNI, etcd, store, tools, keys
    Doctor(actions::doctor::DoctorSpec),
    /// Isolate compromised pods with NetworkPolicies (kept alive for forensics); verify; status
    Quarantine(QuarantineCmd),
    /// Undo a quarantine exactly: original labels, kirt's policies, --exclusive edits, node
    /// changes, revoked ServiceAccount subjects
    Release(actions::quarantine::ReleaseSpec),
    /// Node containment by hand: quarantine (cordon + taint + label) or release a node
    #[command(subcommand)]
    Node(NodeCmd),
    /// etcd backups: create (stream, compress, encrypt, upload), list, verify, prune, copy
    #[command(subcommand)]
    Backup(BackupCmd),
    /// Disaster-recovery drill: verify, restore into scratch etcd + kube-apiserver, count objects, report RPO/RTO
    Drill(actions::drill::DrillSpec),
    /// Restore a verified backup into a new etcd data dir (for a new member or cluster), or
    /// (`restore objects`) chosen objects through the apiserver
    Restore(RestoreCmd),
    /// Roll a Deployment, StatefulSet or DaemonSet back to an earlier revision, as `kubectl rollout undo` does
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Rollback(RollbackCmd),
    /// Follow rollouts
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Run a playbook (a file or a shipped playbook's name): validated first, journaled, resumable
    Run(crate::playbook::engine::RunSpec),
    /// Run playbooks on Falco events: an HTTP(S) endpoint for Falco's http_output and
    /// Falcosidekick's webhook, matched against a rules file (docs/falco.md)
    Serve(crate::serve::ServeSpec),
    /// Playbooks: list, show, validate, schema
    #[command(subcommand)]
    Playbook(PlaybookCmd),
    /// Journals of playbook runs: list, show, report (the incident timeline)
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Reverse what a playbook run changed, newest change first (journaled too)
    Undo(crate::playbook::undo::UndoSpec),
    /// Forensic evidence: collect one verifiable bundle per pod, verify it, list bundles
    #[command(subcommand)]
    Evidence(EvidenceCmd),
    /// Make a minisign key pair that signs backups and evidence bundles (minisign-compatible)
    Keygen(actions::keygen::KeygenSpec),
    /// Print kirt's version and git commit
    Version,
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Stream an etcd snapshot through zstd and age into a store; the manifest is written last
    Create(actions::backup::create::BackupCreateSpec),
    /// Back up continuously for point-in-time recovery: a full backup, then segments of etcd's
    /// watch stream (runs until SIGTERM, which commits what was received)
    Stream(actions::backup::stream::BackupStreamSpec),
    /// List backups (from their manifests), newest first; incomplete objects are flagged
    List(actions::backup::list::BackupListSpec),
    /// Remove backups that no keep rule selects (restic-style), manifest first
    Prune(actions::backup::prune::BackupPruneSpec),
    /// Check a backup: every digest against its manifest; --restore proves it restores
    Verify(actions::backup::verify::BackupVerifySpec),
    /// The Kubernetes objects in a backup, as they were (decoded from etcd's protobuf/JSON,
    /// encryption at rest opened with --encryption-config); Secret values only with --show-secrets
    Objects(Box<actions::backup::objects::BackupObjectsSpec>),
    /// A backup against the live cluster: deleted, created and changed objects (field by field);
    /// exit 0 if equal, 3 if not
    Diff(Box<actions::backup::diff::BackupDiffSpec>),
    /// Copy backups to a second store (offsite): streamed, digests checked on the way, the
    /// manifest written last; --missing copies only what the target lacks
    Copy(actions::backup::copy::BackupCopySpec),
    /// Merge a full backup and its chain's segments into a new full backup (replayed in a
    /// scratch etcd, snapshotted, published like backup create); --to-revision stops earlier
    Compact(actions::backup::compact::BackupCompactSpec),
}

/// `kirt restore ID --data-dir …` or `kirt restore objects …`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct RestoreCmd {
    #[command(subcommand)]
    pub sub: Option<RestoreSub>,
    #[command(flatten)]
    pub spec: Box<actions::restore::RestoreSpec>,
}

#[derive(Debug, Subcommand)]
pub enum RestoreSub {
    /// Re-create chosen objects of a backup through the apiserver (dependency order, server-side
    /// dry run first); existing ones only with --replace; journaled, `kirt undo` reverses it
    Objects(Box<actions::restore::objects::RestoreObjectsSpec>),
}

/// `kirt rollback KIND/NAME` or `kirt rollback history KIND/NAME`.
#[derive(Debug, Args)]
pub struct RollbackCmd {
    #[command(subcommand)]
    pub sub: Option<RollbackSub>,
    #[command(flatten)]
    pub spec: Option<actions::rollback::revert::RollbackSpec>,
}

#[derive(Debug, Subcommand)]
pub enum RollbackSub {
    /// List revisions: change-cause, images, creation time, which one runs now
    History(actions::rollback::history::HistorySpec),
}

#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Wait until a rollout is complete, as `kubectl rollout status` judges it; fails on
    /// ProgressDeadlineExceeded or the timeout, naming the pods that are not ready
    Wait(actions::rollback::wait::WaitSpec),
}

#[derive(Debug, Subcommand)]
pub enum PlaybookCmd {
    /// Shipped playbooks and the YAML files given (default: ./playbooks/*.yaml)
    List { files: Vec<String> },
    /// A playbook's parameters and text
    Show {
        #[arg(value_name = "FILE|NAME")]
        playbook: String,
    },
    /// Check a playbook completely without running it; exit 2 with every problem (file:line:col)
    Validate {
        #[arg(value_name = "FILE|NAME")]
        playbook: String,
        /// Also check these parameter values (and that required ones are given)
        #[arg(short = 'p', long = "param", value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// JSON Schema of playbook files (for editors), including each action's `with:`
    Schema,
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// Runs in the journal directory, newest first
    List,
    /// A run's journal
    Show {
        #[arg(value_name = "RUN_ID")]
        run_id: String,
    },
    /// The incident timeline of a run (Markdown or self-contained HTML): who ran it, every step,
    /// the objects changed (resourceVersions), evidence and backups (sha256), Events, and with
    /// --audit-log what the quarantined pods' ServiceAccounts did meanwhile
    Report(crate::playbook::report::ReportSpec),
}

/// `kirt quarantine POD|-l SEL` or `kirt quarantine verify|status`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct QuarantineCmd {
    #[command(subcommand)]
    pub command: Option<QuarantineSub>,
    #[command(flatten)]
    pub spec: actions::quarantine::QuarantineSpec,
}

#[derive(Debug, Subcommand)]
pub enum QuarantineSub {
    /// Evaluate every NetworkPolicy against the pod's labels; exit 3 if it is not isolated
    Verify(actions::quarantine::VerifySpec),
    /// List quarantined pods: since, by, reason, node, phase
    Status(actions::quarantine::StatusSpec),
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Cordon the node, taint it kirt.dev/quarantine=manual:NoSchedule, label it
    /// kirt.dev/under-investigation=true (a node someone else cordoned stays as it is)
    Quarantine(actions::node::NodeSpec),
    /// Remove exactly what `kirt node quarantine` added (quarantined pods on it keep it isolated)
    Release(actions::node::NodeSpec),
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCmd {
    /// Capture a pod's object, events, logs, owners, network and RBAC context (+ checkpoints)
    /// into one tar.zst[.age] bundle with manifest.json and SHA256SUMS
    Collect(Box<actions::evidence::collect::EvidenceCollectSpec>),
    /// Re-check every digest of a bundle against SHA256SUMS and manifest.json (exit 3 on tampering)
    Verify(actions::evidence::verify::EvidenceVerifySpec),
    /// List the evidence bundles in a store, newest first
    List(actions::evidence::list::EvidenceListSpec),
}

/// Builds the context from the global options. Only the binary calls this.
pub fn context(g: &GlobalArgs, shutdown: crate::signal::Shutdown) -> Ctx {
    let mut ctx = Ctx::new(g.kube.clone());
    ctx.shutdown = shutdown;
    ctx.format = g.output;
    ctx.dry_run = g.dry_run;
    ctx.yes = g.yes;
    ctx.journal_dir = g.journal.clone();
    ctx.prompt = Arc::new(crate::ui::TtyPrompt);
    ctx.progress = if g.quiet {
        crate::progress::none()
    } else if std::io::stderr().is_terminal() {
        Arc::new(crate::ui::BarProgress)
    } else {
        Arc::new(crate::ui::LogProgress)
    };
    ctx
}

pub async fn run(cli: Cli, shutdown: crate::signal::Shutdown) -> Result<Exit> {
    let ctx = context(&cli.global, shutdown);
    match cli.command {
        Command::Doctor(spec) => show(&ctx, &actions::doctor::run(&ctx, spec).await?),
        Command::Quarantine(QuarantineCmd {
            command: Some(QuarantineSub::Verify(spec)),
            ..
        }) => show(&ctx, &actions::quarantine::verify::run(&ctx, spec).await?),
        Command::Quarantine(QuarantineCmd {
            command: Some(QuarantineSub::Status(spec)),
            ..
        }) => show(&ctx, &actions::quarantine::status::run(&ctx, spec).await?),
        Command::Quarantine(QuarantineCmd {
            command: None,
            spec,
        }) => show(&ctx, &actions::quarantine::apply::run(&ctx, spec).await?),
        Command::Release(spec) => show(&ctx, &actions::quarantine::release::run(&ctx, spec).await?),
        Command::Node(NodeCmd::Quarantine(spec)) => {
            show(&ctx, &actions::node::quarantine(&ctx, spec).await?)
        }
        Command::Node(NodeCmd::Release(spec)) => {
            show(&ctx, &actions::node::release_by_hand(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Create(spec)) => {
            show(&ctx, &actions::backup::create::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Stream(spec)) => {
            show(&ctx, &actions::backup::stream::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::List(spec)) => {
            show(&ctx, &actions::backup::list::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Verify(spec)) => {
            show(&ctx, &actions::backup::verify::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Prune(spec)) => {
            show(&ctx, &actions::backup::prune::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Objects(spec)) => {
            actions::backup::objects::run(&ctx, *spec).await
        }
        Command::Backup(BackupCmd::Diff(spec)) => {
            show(&ctx, &actions::backup::diff::run(&ctx, *spec).await?)
        }
        Command::Backup(BackupCmd::Copy(spec)) => {
            show(&ctx, &actions::backup::copy::run(&ctx, spec).await?)
        }
        Command::Backup(BackupCmd::Compact(spec)) => {
            show(&ctx, &actions::backup::compact::run(&ctx, spec).await?)
        }
        Command::Drill(spec) => show(&ctx, &actions::drill::run(&ctx, spec).await?),
        Command::Restore(RestoreCmd {
            sub: Some(RestoreSub::Objects(spec)),
            ..
        }) => {
            let with = crate::playbook::registry::encode(&spec)?;
            let mut out = actions::restore::objects::run(&ctx, *spec).await?;
            out.run =
                crate::playbook::journal::command(&ctx, "restore.objects", with, &out).await?;
            show(&ctx, &out)
        }
        Command::Restore(RestoreCmd { sub: None, spec }) => {
            show(&ctx, &actions::restore::run(&ctx, *spec).await?)
        }
        Command::Rollback(RollbackCmd {
            sub: Some(RollbackSub::History(spec)),
            ..
        }) => show(&ctx, &actions::rollback::history::run(&ctx, spec).await?),
        Command::Rollback(RollbackCmd {
            sub: None,
            spec: Some(spec),
        }) => show(&ctx, &actions::rollback::revert::run(&ctx, spec).await?),
        Command::Rollback(RollbackCmd {
            sub: None,
            spec: None,
        }) => Err(crate::Error::usage(
            "kirt rollback needs KIND/NAME (e.g. deployment/web) or a subcommand (history)",
        )),
        Command::Rollout(RolloutCmd::Wait(spec)) => {
            show(&ctx, &actions::rollback::wait::run(&ctx, spec).await?)
        }
        Command::Run(spec) => show(&ctx, &crate::playbook::engine::run(&ctx, spec).await?),
        Command::Serve(spec) => show(&ctx, &crate::serve::run(&ctx, spec).await?),
        Command::Playbook(PlaybookCmd::List { files }) => {
            show(&ctx, &crate::playbook::commands::list(&files)?)
        }
        Command::Playbook(PlaybookCmd::Show { playbook }) => {
            show(&ctx, &crate::playbook::commands::show(&playbook)?)
        }
        Command::Playbook(PlaybookCmd::Validate { playbook, params }) => show(
            &ctx,
            &crate::playbook::commands::validate_file(&playbook, &params)?,
        ),
        Command::Playbook(PlaybookCmd::Schema) => {
            let mut s = serde_json::to_string_pretty(&crate::playbook::commands::schema())
                .map_err(|e| crate::Error::json("JSON schema", e))?;
            s.push('\n');
            print(s.as_bytes())
        }
        Command::Runs(RunsCmd::List) => show(&ctx, &crate::playbook::commands::runs_list(&ctx)?),
        Command::Runs(RunsCmd::Show { run_id }) => {
            show(&ctx, &crate::playbook::commands::runs_show(&ctx, &run_id)?)
        }
        Command::Runs(RunsCmd::Report(spec)) => {
            show(&ctx, &crate::playbook::report::run(&ctx, spec).await?)
        }
        Command::Undo(spec) => show(&ctx, &crate::playbook::undo::run(&ctx, spec).await?),
        Command::Evidence(EvidenceCmd::Collect(spec)) => {
            show(&ctx, &actions::evidence::collect::run(&ctx, *spec).await?)
        }
        Command::Evidence(EvidenceCmd::Verify(spec)) => {
            show(&ctx, &actions::evidence::verify::run(&ctx, spec).await?)
        }
        Command::Evidence(EvidenceCmd::List(spec)) => {
            show(&ctx, &actions::evidence::list::run(&ctx, spec).await?)
        }
        Command::Keygen(spec) => show(&ctx, &actions::keygen::run(&ctx, spec)?),
        Command::Version => show(&ctx, &actions::version::run()),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "kirt", &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut out)
                .ctx(|| "rendering the man page".into())?;
            print(&out)
        }
    }
}

/// Prints a result and returns the exit code it implies.
fn show<T: Render>(ctx: &Ctx, value: &T) -> Result<Exit> {
    let text = output::render(value, ctx.format)?;
    print(text.as_bytes())?;
    Ok(value.exit())
}

/// Writes to stdout; a closed pipe (`kirt … | head`) is not an error.
fn print(bytes: &[u8]) -> Result<Exit> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Ok(()) => Ok(Exit::Ok),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Ok),
        Err(e) => Err(crate::Error::io("writing to stdout", e)),
    }
}
