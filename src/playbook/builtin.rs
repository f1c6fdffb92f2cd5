//! Step actions that exist only in playbooks: `exec` (run a program, no shell) and
//! `notify.webhook` (POST JSON). Both honour `--dry-run` by doing nothing and saying so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["argv"]))]
pub struct ExecSpec {
    /// Program and arguments (no shell: nothing is expanded)
    #[arg(required = true)]
    pub argv: Vec<String>,
    /// Extra environment variables for the program
    #[arg(skip)]
    pub env: BTreeMap<String, String>,
    /// Working directory
    #[arg(long)]
    pub cwd: Option<String>,
    /// Kill the program after this long (e.g. 30s)
    #[arg(long, value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// Exit codes counted as success (default: 0)
    #[arg(skip)]
    pub ok_codes: Vec<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ExecResult {
    pub argv: Vec<String>,
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration_seconds: f64,
    pub dry_run: bool,
}

impl Render for ExecResult {
    fn table(&self) -> Table {
        Table::fields([
            ("argv", self.argv.join(" ")),
            (
                "exit code",
                self.exit_code.map(|c| c.to_string()).unwrap_or_default(),
            ),
        ])
    }
}

pub async fn exec(ctx: &Ctx, spec: ExecSpec) -> Result<ExecResult> {
    let Some((prog, args)) = spec.argv.split_first() else {
        return Err(Error::usage("exec: argv is empty"));
    };
    let mut r = ExecResult {
        argv: spec.argv.clone(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        duration_seconds: 0.0,
        dry_run: ctx.dry_run,
    };
    if ctx.dry_run {
        return Ok(r);
    }
    let timeout = spec.timeout;
    let mut cmd = tokio::process::Command::new(prog);
    // The program sees only what a program needs and what the step gives it: never kirt's own
    // environment (KIRT_PASSPHRASE, KIRT_SIGN_PASSWORD, AWS keys, tokens).
    cmd.args(args).env_clear();
    for var in INHERITED_ENV {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd.envs(&spec.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // a step timeout drops this future: the child must not outlive it
        .kill_on_drop(true);
    if let Some(d) = &spec.cwd {
        cmd.current_dir(d);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("exec {prog}: cannot start it"), e))?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let (out, err, status) = tokio::join!(capped(stdout), capped(stderr), child.wait());
        Ok::<_, std::io::Error>((out?, err?, status?))
    };
    let (out, err, status) = match timeout {
        Some(t) => tokio::time::timeout(t, run).await.map_err(|_| {
            Error::failed(format!(
                "exec {prog}: killed after the timeout of {}",
                humantime::format_duration(t)
            ))
        })?,
        None => run.await,
    }
    .map_err(|e| Error::io(format!("exec {prog}"), e))?;
    r.duration_seconds = start.elapsed().as_secs_f64();
    r.exit_code = status.code();
    r.stdout = out;
    r.stderr = err;
    let ok_codes = if spec.ok_codes.is_empty() {
        vec![0]
    } else {
        spec.ok_codes.clone()
    };
    match r.exit_code {
        Some(c) if ok_codes.contains(&c) => Ok(r),
        code => Err(Error::failed(format!(
            "exec {prog}: exited with {}: {}",
            code.map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into()),
            tail(&r.stderr)
        ))),
    }
}

/// Environment variables an `exec` step's program inherits (besides the step's own `env:`).
const INHERITED_ENV: [&str; 3] = ["PATH", "HOME", "LANG"];

/// Output kept per stream: it goes into the journal.
const MAX_OUTPUT: usize = 64 << 10;

/// Reads a child's stream to its end, keeping the first `MAX_OUTPUT` bytes (the rest is read and
/// dropped, so the child never blocks on a full pipe) and saying how much was dropped.
async fn capped(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> std::io::Result<String> {
    use tokio::io::AsyncReadExt;
    let Some(mut stream) = stream else {
        return Ok(String::new());
    };
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let room = MAX_OUTPUT.saturating_sub(kept.len()).min(n);
        kept.extend_from_slice(&buf[..room]);
        dropped += (n - room) as u64;
    }
    let mut s = String::from_utf8_lossy(&kept).into_owned();
    if dropped > 0 {
        s.push_str(&format!(
            "\n[kirt: {dropped} more bytes of output not kept]\n"
        ));
    }
    Ok(s)
}

fn tail(s: &str) -> &str {
    let s = s.trim_end();
    let mut cut = s.len().saturating_sub(500);
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    &s[cut..]
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["url"]))]
pub struct WebhookSpec {
    /// http:// or https:// URL to POST to (secret: never logged or journaled)
    #[arg(long, required = true)]
    pub url: String,
    /// Extra request headers, e.g. Authorization (secret)
    #[arg(skip)]
    pub headers: BTreeMap<String, String>,
    /// The JSON body
    #[arg(skip)]
    #[schemars(with = "Value")]
    pub body: Value,
    /// Also POST to link-local / cloud-metadata addresses (refused by default)
    #[arg(skip)]
    pub allow_link_local: bool,
    /// Give up after this long [default: 10s]
    #[arg(long, value_parser = crate::units::parse_duration)]
    #[serde(with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WebhookResult {
    pub status: u16,
    pub delivered: bool,
    pub dry_run: bool,
}

impl Render for WebhookResult {
    fn table(&self) -> Table {
        Table::fields([("status", self.status.to_string())])
    }
}

/// POSTs the body through kirt's one HTTP(S) client. Errors never contain the URL or header values.
pub async fn webhook(ctx: &Ctx, spec: WebhookSpec) -> Result<WebhookResult> {
    if ctx.dry_run {
        return Ok(WebhookResult {
            status: 0,
            delivered: false,
            dry_run: true,
        });
    }
    let timeout = spec.timeout.unwrap_or(Duration::from_secs(10));
    let url = url::Url::parse(&spec.url)
        .map_err(|e| Error::usage(format!("notify.webhook: the url is not a URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::usage(format!(
            "notify.webhook: {}:// URLs are not supported (use http:// or https://)",
            url.scheme()
        )));
    }
    crate::http::refuse_metadata_target(&url, spec.allow_link_local, "notify.webhook").await?;
    let body =
        serde_json::to_vec(&spec.body).map_err(|e| Error::json("encoding the webhook body", e))?;
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        (
            "User-Agent".to_string(),
            format!("kirt/{}", crate::actions::version::VERSION),
        ),
    ];
    headers.extend(spec.headers.iter().map(|(k, v)| (k.clone(), v.clone())));
    let r = crate::http::send("POST", &spec.url, &headers, body, "webhook", timeout).await?;
    if !(200..300).contains(&r.status) {
        return Err(Error::failed(format!(
            "webhook: the receiver answered HTTP {}",
            r.status
        )));
    }
    Ok(WebhookResult {
        status: r.status,
        delivered: true,
        dry_run: false,
    })
}
