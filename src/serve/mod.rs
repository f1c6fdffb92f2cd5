//! `kirt serve`: from detection to containment. An HTTP endpoint for Falco events (as Falco's
//! `http_output` and Falcosidekick's webhook send them) that runs playbooks in-process through
//! the playbook engine, as the rules file says: matched, gated (namespace allow-list, cooldown
//! per rule and pod, a global rate limit), journaled, and stopped cleanly by SIGTERM.

pub mod event;
pub mod gate;
pub mod journal;
pub mod metrics;
pub mod rules;
pub mod tls;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::Serialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio_util::task::TaskTracker;

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::output::{Render, Table};
use crate::playbook::engine::{self, RunSpec, Trigger};
use crate::playbook::journal::{EventOrigin, Origin};
use crate::playbook::template;
use event::Event;
use gate::{Decision, Gate};
use journal::{Line, Seen, ServeJournal};
use metrics::{Metrics, Rejected};
use rules::Rules;

/// The environment variable holding the shared secret (never a flag: flags show in `ps`).
pub const TOKEN_ENV: &str = "KIRT_SERVE_TOKEN";
/// Largest event body accepted (Falco's events are a few KiB).
pub const MAX_BODY: usize = 1024 * 1024;
/// Shortest secret accepted.
const MIN_TOKEN: usize = 16;
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 256;
/// Time a client gets to send its headers, and its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, clap::Args, Serialize, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServeSpec {
    /// The rules file: which Falco events run which playbook (docs/falco.md)
    #[arg(long, value_name = "FILE", required = true)]
    pub rules: String,
    /// Address to listen on
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:2803")]
    pub listen: String,
    /// Validate the rules file (and the playbooks it names) and exit
    #[arg(long)]
    pub check: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
    /// Require a client certificate signed by this CA (PEM) for events (mutual TLS, as Falco's
    /// http_output sends with `mtls: true`); then $KIRT_SERVE_TOKEN is optional, and required
    /// as well when it is set
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<String>,
    /// Allow plain HTTP on an address other than loopback (the secret then crosses the network
    /// in clear: only behind something that encrypts, such as a service mesh)
    #[arg(long)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Checked {
    pub file: String,
    pub rules: Vec<String>,
}

impl Render for Checked {
    fn table(&self) -> Table {
        let mut t = Table::default();
        t.note(format!(
            "{}: {} rule(s) valid: {}",
            self.file,
            self.rules.len(),
            self.rules.join(", ")
        ));
        t
    }
}

struct Server {
    ctx: Ctx,
    rules: Rules,
    /// sha256 of the shared secret (compared in constant time with the presented one's), when
    /// one is set.
    token: Option<[u8; 32]>,
    /// `--client-ca`: events need a verified client certificate.
    client_ca: bool,
    gate: Mutex<Gate>,
    journal: ServeJournal,
    metrics: Metrics,
    runs: TaskTracker,
    instance: String,
    seq: std::sync::atomic::AtomicU64,
}

/// `--check` validates and returns; otherwise serves until SIGTERM/SIGINT, then waits for the
/// running playbooks to reach their interrupt point and returns the interruption (exit 143/130).
pub async fn run(ctx: &Ctx, spec: ServeSpec) -> Result<Checked> {
    let rules = rules::load(&spec.rules, ctx.dry_run)?;
    let checked = Checked {
        file: spec.rules.clone(),
        rules: rules.file.rules.iter().map(|r| r.name.clone()).collect(),
    };
    if spec.check {
        return Ok(checked);
    }
    let addr: SocketAddr = spec.listen.parse().map_err(|e| {
        Error::usage(format!(
            "--listen {}: {e} (expected ADDR:PORT)",
            spec.listen
        ))
    })?;
    let tls = match (&spec.tls_cert, &spec.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(
            cert,
            key,
            spec.client_ca.as_deref(),
        )?)),
        (None, None) if spec.client_ca.is_some() => {
            return Err(Error::usage(
                "--client-ca needs TLS: give --tls-cert and --tls-key as well",
            ))
        }
        (None, None) => None,
        _ => {
            return Err(Error::usage(
                "--tls-cert and --tls-key go together: give both",
            ))
        }
    };
    if tls.is_none() && !addr.ip().is_loopback() && !spec.allow_plaintext {
        return Err(Error::usage(format!(
            "--listen {addr}: plain HTTP on a non-loopback address would send the shared secret and the events in clear; give --tls-cert and --tls-key (and --client-ca), or --allow-plaintext when something in front encrypts"
        )));
    }
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let token = match token.len() {
        0 if spec.client_ca.is_some() => None,
        n if n < MIN_TOKEN => {
            return Err(Error::usage(format!(
                "kirt serve needs a shared secret of at least {MIN_TOKEN} characters in ${TOKEN_ENV} (senders present it as `Authorization: Bearer …` or `X-Kirt-Token: …`), or client certificates (--client-ca)"
            )))
        }
        _ => Some(sha256(token.as_bytes())),
    };
    // connect once: every run shares the client (and a bad kubeconfig fails now, not per event)
    ctx.cluster().await?;
    let dir = crate::playbook::journal::dir(ctx)?;
    let journal = ServeJournal::open(&dir.join("serve"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr}"), e))?;
    let server = Arc::new(Server {
        ctx: ctx.for_run(ctx.dry_run, None),
        gate: Mutex::new(Gate::new(&rules, Instant::now())),
        rules,
        token,
        client_ca: spec.client_ca.is_some(),
        journal,
        metrics: Metrics::default(),
        runs: TaskTracker::new(),
        instance: crate::playbook::journal::new_run_id(),
        seq: Default::default(),
    });
    tracing::info!(
        "serving Falco events on {}://{addr} ({} rules{}; journal {})",
        if tls.is_some() { "https" } else { "http" },
        checked.rules.len(),
        if ctx.dry_run { ", dry run" } else { "" },
        server.journal.path.display()
    );
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = ctx.shutdown.requested() => break,
            p = slots.clone().acquire_owned() => p.map_err(|_| Error::failed("connection slots closed"))?,
        };
        let (stream, _) = tokio::select! {
            _ = ctx.shutdown.requested() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accepting a connection: {e}");
                    continue;
                }
            },
        };
        let s = server.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                return s.connection(stream, false).await;
            };
            // the handshake gets the same time as the headers: a silent client frees its slot
            match tokio::time::timeout(READ_TIMEOUT, tls.accept(stream)).await {
                Ok(Ok(stream)) => {
                    // rustls keeps a client certificate only once it chains to --client-ca
                    let verified = stream.get_ref().1.peer_certificates().is_some();
                    s.connection(stream, verified).await
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake refused: {e}"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
    drop(listener);
    server.runs.close();
    server.runs.wait().await;
    Err(ctx.shutdown.error(
        "stopped accepting events; running playbooks were journaled as interrupted (continue them with `kirt run --resume RUN_ID`)",
    ))
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

impl Server {
    /// Serves one connection; `client_cert`: it presented a verified client certificate.
    async fn connection<I>(self: Arc<Self>, io: I, client_cert: bool)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let svc = hyper::service::service_fn(move |req| {
            let s = self.clone();
            async move { Ok::<_, std::convert::Infallible>(s.handle(req, client_cert).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(READ_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
        let _ = conn.await;
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<hyper::body::Incoming>,
        client_cert: bool,
    ) -> Response<Full<Bytes>> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => reply(StatusCode::OK, json!({"status": "ok"})),
            (&Method::GET, "/metrics") => metrics::text_response(self.metrics.render()),
            (&Method::POST, "/" | "/events") => self.event(req, client_cert).await,
            (_, "/" | "/events" | "/healthz" | "/metrics") => reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            ),
            _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }

    /// Every credential the server was configured with is required: the client certificate
    /// (`--client-ca`) and the shared secret (when set). `Err`: what is missing.
    fn authorized(
        &self,
        h: &http::HeaderMap,
        client_cert: bool,
    ) -> std::result::Result<(), &'static str> {
        if self.client_ca && !client_cert {
            return Err("a client certificate signed by --client-ca is required");
        }
        let Some(token) = &self.token else {
            return Ok(());
        };
        let presented = h
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| h.get("x-kirt-token").and_then(|v| v.to_str().ok()));
        match presented {
            Some(p) if bool::from(sha256(p.trim().as_bytes()).ct_eq(token)) => Ok(()),
            _ => Err("missing or wrong shared secret"),
        }
    }

    async fn event(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
        client_cert: bool,
    ) -> Response<Full<Bytes>> {
        self.metrics.received();
        if let Err(why) = self.authorized(req.headers(), client_cert) {
            self.metrics.rejected(Rejected::Unauthorized);
            return reply(StatusCode::UNAUTHORIZED, json!({"error": why}));
        }
        if self.ctx.shutdown.is_requested() {
            return reply(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "shutting down"}),
            );
        }
        let too_large = || {
            self.metrics.rejected(Rejected::TooLarge);
            let mut r = reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("the body is larger than {MAX_BODY} bytes")}),
            );
            // the rest of the body is never read: this connection cannot carry another request
            r.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            r
        };
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return too_large();
        }
        let (head, body) = req.into_parts();
        let body = Limited::new(body, MAX_BODY).collect();
        let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
            Ok(Ok(b)) => b.to_bytes(),
            Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(e)) => {
                self.metrics.rejected(Rejected::Malformed);
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("reading the body: {e}")}),
                );
            }
            Err(_) => {
                self.metrics.rejected(Rejected::Malformed);
                return reply(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({"error": "the body did not arrive in time"}),
                );
            }
        };
        // Falco's http_output never compresses its body (`compress_uploads` only asks for a
        // compressed answer, with `TE: gzip`): a coded body is refused (once read,
        // so that the connection stays usable), never inflated
        if let Some(coding) = head
            .headers
            .get(http::header::CONTENT_ENCODING)
            .filter(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"))
        {
            self.metrics.rejected(Rejected::Malformed);
            return reply(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({"error": format!("Content-Encoding {} is not accepted: send the event uncompressed", String::from_utf8_lossy(coding.as_bytes()))}),
            );
        }
        let event = match Event::parse(&body) {
            Ok(e) => e,
            Err(reason) => {
                self.metrics.rejected(Rejected::Malformed);
                return reply(StatusCode::BAD_REQUEST, json!({"error": reason}));
            }
        };
        match self.decide(event) {
            Ok((status, body)) => reply(status, body),
            Err(e) => {
                tracing::error!("{e}");
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "the event could not be journaled; nothing was run"}),
                )
            }
        }
    }

    /// Decides, journals the decision (before anything runs), and starts the run.
    fn decide(self: &Arc<Self>, event: Event) -> Result<(StatusCode, Value)> {
        let rule = self.rules.find(&event);
        let target = event.namespace().zip(event.pod());
        let mut decision = match rule {
            None => Decision::NoMatch,
            Some(i) => self.gate.lock().unwrap_or_else(|e| e.into_inner()).decide(
                &self.rules,
                i,
                target,
                Instant::now(),
            ),
        };
        let mut reason = None;
        let mut params = serde_json::Map::new();
        if let (Decision::Started, Some(i)) = (decision, rule) {
            let r = &self.rules.file.rules[i];
            if self.ctx.dry_run || r.dry_run {
                decision = Decision::DryRun;
            }
            match template::render(
                &template::env(),
                &Value::Object(r.params.clone()),
                &event.template_data(),
            ) {
                Ok(Value::Object(m)) => params = m,
                Ok(_) => {}
                Err(e) => {
                    decision = Decision::Failed;
                    reason = Some(format!("rendering the rule's params: {e}"));
                }
            }
        }
        if decision == Decision::NamespaceNotAllowed {
            reason = Some(match event.namespace() {
                Some(ns) if event.pod().is_some() => {
                    format!("namespace {ns} is not in allow_namespaces")
                }
                _ => "the event names no pod (k8s.ns.name, k8s.pod.name)".into(),
            });
        }
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let entry = format!("{}-{n}", self.instance);
        let acting = matches!(decision, Decision::Started | Decision::DryRun);
        let run = acting.then(crate::playbook::journal::new_run_id);
        let rule_name = rule.map(|i| self.rules.file.rules[i].name.clone());
        self.journal.write(&Line::Event {
            entry: entry.clone(),
            decision,
            rule: rule_name.clone(),
            run: run.clone(),
            reason: reason.clone(),
            event: Seen::of(&event),
        })?;
        self.metrics.decided(decision);
        tracing::info!(
            "event {entry} ({} for {}/{}): {}{}",
            event.rule,
            event.namespace().unwrap_or("-"),
            event.pod().unwrap_or("-"),
            crate::playbook::journal::name(&decision),
            run.as_deref()
                .map(|r| format!(", run {r}"))
                .unwrap_or_default()
        );
        let body = json!({"entry": entry, "decision": decision, "rule": rule_name, "run": run, "reason": reason});
        let (Some(run), Some(i)) = (run, rule) else {
            return Ok((StatusCode::OK, body));
        };
        let r = &self.rules.file.rules[i];
        let trigger = Trigger {
            run_id: run.clone(),
            params,
            origin: Origin::Event(Box::new(EventOrigin {
                falco_rule: event.rule.clone(),
                priority: crate::playbook::journal::name(&event.priority),
                time: event.time.clone(),
                namespace: event.namespace().unwrap_or_default().into(),
                pod: event.pod().unwrap_or_default().into(),
                digest: event.digest.clone(),
                serve_rule: r.name.clone(),
                entry: entry.clone(),
            })),
        };
        let unattended = (r.confirm == Some(rules::Confirm::Never)).then(|| r.name.clone());
        let ctx = self.ctx.for_run(decision == Decision::DryRun, unattended);
        let spec = RunSpec {
            playbook: Some(self.rules.playbooks[i].file.clone()),
            ..RunSpec::default()
        };
        let when = event.timestamp();
        let me = self.clone();
        self.runs.spawn(async move {
            let result = engine::run_triggered(&ctx, spec, Some(trigger)).await;
            me.finished(entry, run, when, result);
        });
        Ok((StatusCode::ACCEPTED, body))
    }

    /// Journals how a run ended (and its latency, when it verified a quarantine).
    fn finished(
        &self,
        entry: String,
        run: String,
        when: Option<jiff::Timestamp>,
        result: Result<engine::RunSummary>,
    ) {
        let (status, exit, latency, error) = match &result {
            Ok(s) => {
                let verified = s
                    .steps
                    .iter()
                    .any(|st| st.action == "quarantine.verify" && st.status == "ok");
                let latency = when.filter(|_| verified && s.status == "ok").map(|t| {
                    (jiff::Timestamp::now().as_nanosecond() - t.as_nanosecond()).max(0) as f64 / 1e9
                });
                (s.status.clone(), s.exit as u8, latency, None)
            }
            Err(e) => (
                "failed".to_string(),
                e.exit() as u8,
                None,
                Some(e.to_string()),
            ),
        };
        match latency {
            Some(l) => self.metrics.latency(l),
            None if status != "ok" => self.metrics.run_failed(),
            None => {}
        }
        tracing::info!("run {run} (event {entry}): {status}");
        let line = Line::RunEnd {
            entry,
            run,
            status,
            exit,
            latency_seconds: latency,
            error,
        };
        if let Err(e) = self.journal.write(&line) {
            tracing::error!("{e}");
        }
    }
}
