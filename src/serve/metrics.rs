//! `/metrics`: Prometheus text exposition of what `kirt serve` received and did, and the
//! latency from an event's time to its run's verified quarantine.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::gate::Decision;

/// Upper bounds (seconds) of the latency histogram's buckets.
const BUCKETS: [f64; 10] = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0];

#[derive(Default)]
pub struct Metrics {
    received: AtomicU64,
    /// Requests refused before they were events: unauthorized, too large, malformed.
    rejected: [AtomicU64; 3],
    matched: AtomicU64,
    acted: AtomicU64,
    deduplicated: AtomicU64,
    rate_limited: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    latency: Mutex<([u64; BUCKETS.len()], u64, f64)>,
}

#[derive(Debug, Clone, Copy)]
pub enum Rejected {
    Unauthorized = 0,
    TooLarge = 1,
    Malformed = 2,
}

impl Metrics {
    pub fn received(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejected) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn decided(&self, d: Decision) {
        if d != Decision::NoMatch {
            self.matched.fetch_add(1, Ordering::Relaxed);
        }
        let c = match d {
            Decision::Started | Decision::DryRun => &self.acted,
            Decision::Deduplicated => &self.deduplicated,
            Decision::RateLimited => &self.rate_limited,
            Decision::NamespaceNotAllowed => &self.refused,
            Decision::Failed => &self.failed,
            Decision::NoMatch => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A run that did not end ok.
    pub fn run_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    pub fn latency(&self, seconds: f64) {
        let mut h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += 1;
        h.2 += seconds;
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let mut counter = |name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(
                s,
                "# HELP kirt_serve_{name} {help}\n# TYPE kirt_serve_{name} counter\nkirt_serve_{name}{labels} {v}"
            );
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            "events_received_total",
            "Requests to the event endpoint.",
            "",
            get(&self.received),
        );
        counter(
            "events_matched_total",
            "Events a rule matched.",
            "",
            get(&self.matched),
        );
        counter(
            "events_acted_total",
            "Events that started a run (dry runs included).",
            "",
            get(&self.acted),
        );
        counter(
            "events_deduplicated_total",
            "Events within a rule's cooldown for the same pod.",
            "",
            get(&self.deduplicated),
        );
        counter(
            "events_rate_limited_total",
            "Events refused by the global rate limit.",
            "",
            get(&self.rate_limited),
        );
        counter(
            "events_refused_total",
            "Events for a namespace kirt may not act in.",
            "",
            get(&self.refused),
        );
        counter(
            "events_failed_total",
            "Events whose run could not start or did not end ok.",
            "",
            get(&self.failed),
        );
        let _ = writeln!(
            s,
            "# HELP kirt_serve_requests_rejected_total Requests refused before they were read as events.\n# TYPE kirt_serve_requests_rejected_total counter"
        );
        for (i, reason) in ["unauthorized", "too_large", "malformed"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                s,
                "kirt_serve_requests_rejected_total{{reason=\"{reason}\"}} {}",
                get(&self.rejected[i])
            );
        }
        let h = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            s,
            "# HELP kirt_serve_action_latency_seconds From the event's time to its run's verified quarantine.\n# TYPE kirt_serve_action_latency_seconds histogram"
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                s,
                "kirt_serve_action_latency_seconds_bucket{{le=\"{b}\"}} {}",
                h.0[i]
            );
        }
        let _ = writeln!(
            s,
            "kirt_serve_action_latency_seconds_bucket{{le=\"+Inf\"}} {}\nkirt_serve_action_latency_seconds_sum {}\nkirt_serve_action_latency_seconds_count {}",
            h.1, h.2, h.1
        );
        s
    }
}

/// A Prometheus text exposition response.
pub fn text_response(body: String) -> http::Response<http_body_util::Full<bytes::Bytes>> {
    let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Binds a metrics-only listener (`flag` names the option in errors): plain HTTP, so an address
/// other than loopback needs `allow_remote`.
pub async fn bind(
    flag: &str,
    addr: &str,
    allow_remote: bool,
) -> crate::error::Result<tokio::net::TcpListener> {
    use crate::error::Error;
    let a: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| Error::usage(format!("{flag} {addr}: {e} (expected ADDR:PORT)")))?;
    if !a.ip().is_loopback() && !allow_remote {
        return Err(Error::usage(format!(
            "{flag} {a}: serving metrics on a non-loopback address needs --metrics-allow-remote (plain HTTP, no authentication)"
        )));
    }
    tokio::net::TcpListener::bind(a)
        .await
        .map_err(|e| Error::io(format!("listening on {a}"), e))
}

/// Serves `GET /metrics` (what `render` returns when asked) and `GET /healthz` on `listener`,
/// a few connections at a time, each bounded in time; runs until the task is aborted.
pub async fn serve_text(
    listener: tokio::net::TcpListener,
    render: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) {
    use http::{Method, StatusCode};
    const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let io = match listener.accept().await {
            Ok((io, _)) => io,
            Err(e) => {
                tracing::warn!("accepting a metrics connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let r = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/metrics") => text_response(render()),
                        (&Method::GET, "/healthz") => text_response("ok\n".into()),
                        _ => {
                            let mut r = text_response("not found\n".into());
                            *r.status_mut() = StatusCode::NOT_FOUND;
                            r
                        }
                    };
                    async move { Ok::<_, std::convert::Infallible>(r) }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
            let _ = tokio::time::timeout(TIMEOUT * 3, conn).await;
        });
    }
}
