//! Terminal-side implementations used only by the binary: the indicatif progress bar, periodic
//! log-line progress when stderr is not a terminal, and the confirmation prompt.

use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::context::Prompt;
use crate::progress::{Progress, Stage};

/// Bars on a terminal.
pub struct BarProgress;

impl Progress for BarProgress {
    fn stage(&self, name: &str, total: Option<u64>) -> Box<dyn Stage> {
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n).with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>10} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>10} {spinner} {bytes} {binary_bytes_per_sec} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_prefix(name.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Box::new(Bar(bar))
    }
}

struct Bar(indicatif::ProgressBar);

impl Stage for Bar {
    fn inc(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn message(&self, msg: &str) {
        self.0.set_message(msg.to_string());
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// One structured log line per stage every few seconds (cron, CI, `kubectl logs`).
pub struct LogProgress;

impl Progress for LogProgress {
    fn stage(&self, name: &str, total: Option<u64>) -> Box<dyn Stage> {
        Box::new(LogStage {
            name: name.to_string(),
            total,
            done: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(Instant::now()),
        })
    }
}

struct LogStage {
    name: String,
    total: Option<u64>,
    done: AtomicU64,
    started: Instant,
    last: Mutex<Instant>,
}

impl Stage for LogStage {
    fn inc(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= Duration::from_secs(10) {
            *last = Instant::now();
            tracing::info!(stage = %self.name, bytes = done, total = self.total, "progress");
        }
    }
    fn message(&self, msg: &str) {
        tracing::info!(stage = %self.name, "{msg}");
    }
    fn finish(&self) {
        let bytes = self.done.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        tracing::info!(stage = %self.name, bytes, seconds = format!("{secs:.2}"), "stage done");
    }
}

/// Asks on the terminal; refuses when stdin is not a terminal.
pub struct TtyPrompt;

impl Prompt for TtyPrompt {
    fn ask(&self, question: &str) -> Option<bool> {
        if !std::io::stdin().is_terminal() {
            return None;
        }
        let mut err = std::io::stderr();
        let _ = write!(err, "{question} [y/N] ");
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok()?;
        Some(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
    }
}
