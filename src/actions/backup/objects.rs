//! `kirt backup objects`: the Kubernetes objects of a backup, as they were. The backup is
//! verified and restored into a throwaway etcd as `backup verify --restore` does ([`Snapshot`]),
//! `/registry/` is read in pages (never the whole keyspace in memory) and each value decoded
//! ([`crate::stored`]). Objects are printed as they are read, so listing a whole cluster needs
//! the memory of one page. Secret values are shown only with `--show-secrets`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use etcd_client::{GetOptions, GetResponse, KvClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::task::AbortOnDropHandle;

use super::source::{BackupSource, Unsigned};
use super::verify::{stream_and_check, ETCDUTL_BIN, ETCD_BIN, LATEST};
use crate::context::Ctx;
use crate::crypto::DecryptOptions;
use crate::error::{Error, Exit, Result};
use crate::output::Format;
use crate::scratch::ScratchEtcd;
use crate::stored::{restorable, Content, Decoder, Key, Keyring, Stored};

/// A page of `/registry/` aims at this many bytes: its key limit follows the previous page's
/// average size (the first page takes [`FIRST_PAGE_KEYS`], none more than [`MAX_PAGE_KEYS`]).
/// Large pages because etcd (3.5) walks every key from a page's start to the range end to count
/// them, for each page: N keys in pages of P cost N²/2P such steps (100,000 objects read in
/// 500-key pages took 2.3× as long as in 10,000-key pages).
const PAGE_BYTES: usize = 8 << 20;
const FIRST_PAGE_KEYS: i64 = 500;
const MAX_PAGE_KEYS: i64 = 20_000;
/// A response larger than this is refused before it is read, and the page asked again with half
/// the keys: large values after small ones make smaller pages, not a larger memory.
const MAX_PAGE_BYTES: usize = 64 << 20;

/// Which backup to read objects from, and how to open it: shared by `backup objects`,
/// `backup diff` and `restore objects`.
#[derive(Debug, Clone, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
pub struct SnapshotOptions {
    #[command(flatten)]
    #[serde(flatten)]
    pub source: BackupSource,
    #[command(flatten)]
    #[serde(flatten)]
    pub unsigned: Unsigned,
    /// Backup id, CLUSTER/ID, or "latest"
    #[arg(default_value = LATEST, value_name = "ID")]
    pub backup: String,
    /// The apiserver's EncryptionConfiguration (--encryption-provider-config): opens objects
    /// encrypted at rest (aescbc, aesgcm, secretbox); without it they are listed as encrypted
    #[arg(long, value_name = "FILE")]
    pub encryption_config: Option<PathBuf>,
    /// etcd binary for the throwaway member (default: etcd on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCD_BIN)]
    pub etcd_bin: PathBuf,
    /// etcdutl binary (default: etcdutl on PATH)
    #[arg(long, value_name = "PATH", default_value = ETCDUTL_BIN)]
    pub etcdutl_bin: PathBuf,
    /// Where the plaintext snapshot and the throwaway etcd live (default: $TMPDIR); removed
    /// afterwards
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
}

impl Default for SnapshotOptions {
    fn default() -> Self {
        SnapshotOptions {
            source: BackupSource::default(),
            unsigned: Unsigned::default(),
            backup: LATEST.into(),
            encryption_config: None,
            etcd_bin: ETCD_BIN.into(),
            etcdutl_bin: ETCDUTL_BIN.into(),
            work_dir: None,
        }
    }
}

/// Which objects: a namespace (its objects and the Namespace itself) or all, a kind, a name.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `None`: every namespace and the cluster-scoped objects.
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}

impl Scope {
    /// `-n`/`-A` (or a step's `namespace`/`all-namespaces`), `--kind`, `--name`.
    pub async fn resolve(
        ctx: &Ctx,
        namespace: &Option<String>,
        all: bool,
        kind: &Option<String>,
        name: &Option<String>,
    ) -> Result<Scope> {
        let namespace = if all || ctx.kube.all_namespaces {
            None
        } else {
            Some(ctx.namespace_or(namespace).await?)
        };
        Ok(Scope {
            namespace,
            kind: kind.as_ref().map(|k| k.to_lowercase()),
            name: name.clone(),
        })
    }

    /// Whether the key may hold an object of the scope (before decoding).
    fn key(&self, key: &Key) -> bool {
        if key.internal() {
            return false;
        }
        let in_ns = match &self.namespace {
            None => true,
            Some(ns) => {
                key.namespace.as_deref() == Some(ns)
                    || (key.plural == "namespaces" && key.name == *ns)
            }
        };
        let named = self.name.as_ref().is_none_or(|n| *n == key.name);
        let kind = match (&self.kind, key.builtin) {
            (None, _) => true,
            (Some(k), Some(b)) => self.kind_is(k, key, Some(b.kind)),
            // a custom resource: by its resource name here, by its kind once decoded
            (Some(_), None) => true,
        };
        in_ns && named && kind
    }

    /// Whether the decoded object is of the scope's kind.
    fn object(&self, key: &Key, obj: Option<&Value>) -> bool {
        match &self.kind {
            None => true,
            Some(k) => self.kind_is(k, key, obj.and_then(|o| o["kind"].as_str())),
        }
    }

    fn kind_is(&self, k: &str, key: &Key, kind: Option<&str>) -> bool {
        k == key.plural
            || k == key.group_resource()
            || kind.is_some_and(|x| x.to_lowercase() == k)
            || key.plural.strip_suffix('s') == Some(k)
    }
}

/// Reads `/registry/` page by page at the revision of the first page, sending each page (or the
/// error that ended the reading) to `pages`, each once the previous one was taken; returns when
/// all is read or the receiver is gone.
async fn read_pages(
    kv: KvClient,
    pages: tokio::sync::mpsc::Sender<std::result::Result<GetResponse, etcd_client::Error>>,
) {
    let mut kv = kv.max_decoding_message_size(MAX_PAGE_BYTES);
    let end = "/registry0".to_string();
    let mut from = b"/registry/".to_vec();
    let mut revision = 0;
    let mut limit = FIRST_PAGE_KEYS;
    loop {
        // a free slot before the request: the page being decoded and this one are all there is
        let Ok(slot) = pages.reserve().await else {
            return;
        };
        let mut opts = GetOptions::new().with_range(end.clone()).with_limit(limit);
        if revision > 0 {
            opts = opts.with_revision(revision);
        }
        let page = match kv.get(from.clone(), Some(opts)).await {
            Ok(page) => page,
            // the client's "too large" (etcd's own OutOfRange, a compacted revision, ends the
            // same way after a few halvings)
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == tonic::Code::OutOfRange && limit > 1 =>
            {
                limit /= 2;
                tracing::debug!("{s}; asking again for {limit} keys");
                continue;
            }
            Err(e) => {
                slot.send(Err(e));
                return;
            }
        };
        if revision == 0 {
            revision = page.header().map(|h| h.revision()).unwrap_or(0);
        }
        let bytes: usize = page
            .kvs()
            .iter()
            .map(|kv| kv.value().len() + kv.key().len())
            .sum();
        if let Ok(n) = i64::try_from(PAGE_BYTES * page.kvs().len() / bytes.max(1)) {
            limit = n.clamp(1, MAX_PAGE_KEYS);
        }
        let next = match page.kvs().last() {
            Some(last) if page.more() => {
                let mut next = last.key().to_vec();
                next.push(0);
                Some(next)
            }
            _ => None,
        };
        slot.send(Ok(page));
        match next {
            Some(next) => from = next,
            None => return,
        }
    }
}

/// A backup restored into a throwaway etcd, read object by object.
pub struct Snapshot {
    etcd: ScratchEtcd,
    _dir: tempfile::TempDir,
    decoder: Decoder,
    pub backup: String,
    pub cluster: String,
    pub signed: bool,
}

impl Snapshot {
    /// Checks the flags and keys, verifies the backup while streaming it to a private work dir,
    /// and starts a throwaway etcd on it. A backup that fails verification is never read.
    pub async fn open(
        ctx: &Ctx,
        opts: &SnapshotOptions,
        decrypt: &DecryptOptions,
    ) -> Result<Snapshot> {
        opts.unsigned.check(&opts.source, "read objects of")?;
        let keys = match &opts.encryption_config {
            Some(p) => Keyring::load(p)?,
            None => Keyring::default(),
        };
        let decoder = Decoder::new(keys)?;
        let loc = opts.source.locate(&opts.backup).await?;
        let decryption = loc.decryption(decrypt)?;
        let dir = crate::scratch::work_dir("kirt-objects-", opts.work_dir.as_deref())?;
        let snap = dir.path().join("snapshot.db");
        let t = Instant::now();
        let streamed = stream_and_check(ctx, &loc, decryption, Some(snap.clone())).await?;
        if !streamed.ok {
            let bad: Vec<String> = streamed
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{} (expected {}, got {})", c.check, c.expected, c.actual))
                .collect();
            return Err(Error::VerifyFailed(format!(
                "backup {}/{} failed verification, its objects are not read: {}",
                loc.entry.cluster,
                loc.entry.id,
                bad.join("; ")
            )));
        }
        tracing::debug!(elapsed = ?t.elapsed(), "fetched, verified and decrypted the backup");
        let t = Instant::now();
        let etcd = ScratchEtcd::restore(
            &ctx.shutdown,
            &opts.etcd_bin,
            &opts.etcdutl_bin,
            &snap,
            dir.path(),
            "kirt-objects",
            &[],
        )
        .await?;
        tracing::debug!(elapsed = ?t.elapsed(), "restored and started the throwaway etcd");
        Ok(Snapshot {
            etcd,
            _dir: dir,
            decoder,
            backup: loc.entry.id.clone(),
            cluster: loc.entry.cluster.clone(),
            signed: loc.signed,
        })
    }

    /// Calls `f` with every object of `scope`, in key order; stops at a signal. A task reads the
    /// next page while this one decodes the last (the throwaway etcd and the decoding each keep a
    /// core busy): memory holds the page being decoded and the one being read.
    pub async fn each(&self, ctx: &Ctx, scope: &Scope, mut f: impl FnMut(Stored)) -> Result<()> {
        let (tx, mut pages) = tokio::sync::mpsc::channel(1);
        let kv = self.etcd.client().await?.kv_client();
        // stopped when this returns, however it does (an error, a signal)
        let mut reader = AbortOnDropHandle::new(tokio::spawn(read_pages(kv, tx)));
        while let Some(page) = pages.recv().await {
            ctx.shutdown.check("nothing was changed")?;
            let page = page.map_err(|e| self.etcd.error("reading /registry/", e))?;
            for kv in page.kvs() {
                let Ok(k) = kv.key_str() else { continue };
                let Some(key) = Key::parse(k).filter(|key| scope.key(key)) else {
                    continue;
                };
                let content = self.decoder.content(&key, kv.value(), kv.mod_revision());
                if !scope.object(&key, content.object()) {
                    continue;
                }
                f(Stored {
                    key,
                    revision: kv.mod_revision(),
                    content,
                });
            }
        }
        // the pages ended: because all was read, not because the reader failed
        (&mut reader)
            .await
            .map_err(|e| Error::failed(format!("reading /registry/: {e}")))
    }

    pub async fn stop(self) {
        self.etcd.stop().await;
    }

    /// "CLUSTER/ID".
    pub fn name(&self) -> String {
        format!("{}/{}", self.cluster, self.backup)
    }
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["from"]))]
pub struct BackupObjectsSpec {
    #[command(flatten)]
    #[serde(flatten)]
    pub snapshot: SnapshotOptions,
    #[command(flatten)]
    pub decrypt: DecryptOptions,
    /// Only objects of this kind (ConfigMap, configmaps, deployments.apps, a custom kind)
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only objects with this name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Print Secret values (default: [redacted])
    #[arg(long)]
    pub show_secrets: bool,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
    /// All namespaces (playbooks; on the command line use -A)
    #[arg(skip)]
    pub all_namespaces: bool,
}

/// How many objects were read, by state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub decoded: u64,
    pub suspect: u64,
    pub encrypted: u64,
    pub undecodable: u64,
}

impl Counts {
    pub fn add(&mut self, s: &Stored) {
        match s.content.state() {
            "decoded" => self.decoded += 1,
            "suspect" => self.suspect += 1,
            "encrypted" => self.encrypted += 1,
            _ => self.undecodable += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.decoded + self.suspect + self.encrypted + self.undecodable
    }

    pub fn describe(&self) -> String {
        format!(
            "{} objects: {} decoded, {} suspect (never restored), {} encrypted (skipped; --encryption-config opens them), {} undecodable",
            self.total(),
            self.decoded,
            self.suspect,
            self.encrypted,
            self.undecodable
        )
    }
}

/// The objects, as a stream: table rows, a JSON `List`, or YAML documents, printed as read.
/// The counts go to stderr. Returns the exit code (always 0 once the backup was read).
pub async fn run(ctx: &Ctx, spec: BackupObjectsSpec) -> Result<Exit> {
    let scope = Scope::resolve(
        ctx,
        &spec.namespace,
        spec.all_namespaces,
        &spec.kind,
        &spec.name,
    )
    .await?;
    let snap = Snapshot::open(ctx, &spec.snapshot, &spec.decrypt).await?;
    let mut counts = Counts::default();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed: Option<std::io::Error> = None;
    let mut first = true;
    let format = ctx.format;
    let head = match format {
        Format::Table => "KIND\tNAMESPACE\tNAME\tRESOURCEVERSION\tSTATE\n",
        Format::Json => "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n",
        Format::Yaml => "",
    };
    let _ = out.write_all(head.as_bytes());
    let t = Instant::now();
    let read = snap
        .each(ctx, &scope, |s| {
            counts.add(&s);
            if failed.is_some() {
                return;
            }
            let r = print(&mut out, format, s, spec.show_secrets, first);
            first = false;
            if let Err(e) = r {
                failed = Some(e);
            }
        })
        .await;
    tracing::debug!(elapsed = ?t.elapsed(), "read, decoded and printed the objects");
    let name = snap.name();
    snap.stop().await;
    read?;
    let tail = if format == Format::Json { "\n]}\n" } else { "" };
    let r = out.write_all(tail.as_bytes()).and_then(|_| out.flush());
    match failed.map_or(r, Err) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(Error::io("writing to stdout", e))
        }
        _ => {}
    }
    eprintln!("backup {name}: {}", counts.describe());
    Ok(Exit::Ok)
}

/// One object: a row, a JSON item (a state other than decoded is said in an annotation-like
/// `kirt` field), or a YAML document.
fn print(
    out: &mut impl Write,
    format: Format,
    s: Stored,
    show_secrets: bool,
    first: bool,
) -> std::io::Result<()> {
    let kind = s
        .content
        .object()
        .and_then(|o| o["kind"].as_str())
        .or(s.key.kind())
        .unwrap_or(&s.key.plural)
        .to_string();
    if format == Format::Table {
        let state = match s.content.problem() {
            Some(why) => format!("{} ({why})", s.content.state()),
            None => s.content.state().into(),
        };
        return writeln!(
            out,
            "{kind}\t{}\t{}\t{}\t{state}",
            s.key.namespace.as_deref().unwrap_or("-"),
            s.key.name,
            s.revision
        );
    }
    let state = s.content.state();
    let mut item = match s.content {
        Content::Object(o) => o,
        Content::Suspect(mut o, why) => {
            o["kirt"] = serde_json::json!({"state": state, "problem": why});
            o
        }
        Content::Encrypted(why) | Content::Undecodable(why) => {
            serde_json::json!({"kind": kind, "metadata": {"name": s.key.name,
                "namespace": s.key.namespace, "resourceVersion": s.revision.to_string()},
                "kirt": {"state": state, "problem": why}})
        }
    };
    if !show_secrets {
        restorable::redact_secret(&mut item);
    }
    match format {
        Format::Json => {
            if !first {
                out.write_all(b",\n")?;
            }
            serde_json::to_writer(&mut *out, &item)?;
        }
        _ => {
            out.write_all(b"---\n")?;
            let y = serde_yaml_ng::to_string(&item).map_err(std::io::Error::other)?;
            out.write_all(y.as_bytes())?;
        }
    }
    Ok(())
}
