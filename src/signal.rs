//! SIGINT and SIGTERM, process-wide (cron and Kubernetes stop jobs with SIGTERM). The binary
//! installs the handlers once; every long command watches the same [`Shutdown`] in every phase,
//! undoes what it was doing (aborts uploads, stops scratch servers, removes spools) and returns
//! `Error::Interrupted`, whose exit code is 128 + the signal (130, 143). A command that does not
//! watch is dropped after a short grace period; a second signal exits at once.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// How long a command gets to wind down after the first signal before it is dropped.
pub const GRACE: Duration = Duration::from_secs(5);

/// Whether (and by which signal) kirt was asked to stop.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    signal: Arc<AtomicI32>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM from now on. Call once, inside the runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        use tokio::signal::unix::{signal, SignalKind};
        let s = Shutdown::default();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let me = s.clone();
        tokio::spawn(async move {
            let n = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            tracing::warn!("{}: stopping (undoing what is in progress)", name(n));
            me.signal.store(n, Ordering::SeqCst);
            me.token.cancel();
            // A second signal means "now": no more clean-up.
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            std::process::exit(128 + n);
        });
        Ok(s)
    }

    /// Resolves once a signal arrived (never, when none does).
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The error a command returns when it stopped for the signal; `done` says what became of
    /// the work ("nothing was published").
    pub fn error(&self, done: &str) -> Error {
        let signal = match self.signal.load(Ordering::SeqCst) {
            0 => libc::SIGTERM,
            n => n,
        };
        Error::Interrupted {
            signal,
            message: format!("interrupted by {}; {done}", name(signal)),
        }
    }

    /// `Err(error(done))` once a signal arrived, else Ok: a check between two phases.
    pub fn check(&self, done: &str) -> Result<(), Error> {
        if self.is_requested() {
            Err(self.error(done))
        } else {
            Ok(())
        }
    }

    /// Resolves `GRACE` after a signal, with the error for a command that did not stop itself.
    pub async fn grace_expired(&self) -> Error {
        self.requested().await;
        tokio::time::sleep(GRACE).await;
        self.error("the command did not stop by itself and was cut short")
    }

    /// Test hook: with `KIRT_HOLD_AT=PHASE` in the environment, kirt stops at that phase, says so
    /// on stderr, and waits for a signal (the lab tests use it to send SIGTERM in a known phase)
    /// — or, with `KIRT_HOLD_RELEASE=FILE`, until FILE exists, then goes on (a run held while
    /// another one is tried, then let finish). Without the variable this does nothing.
    pub async fn hold(&self, phase: &str) {
        if std::env::var("KIRT_HOLD_AT").as_deref() == Ok(phase) {
            eprintln!(
                "kirt: holding at {phase} (KIRT_HOLD_AT), pid {}",
                std::process::id()
            );
            let release = std::env::var_os("KIRT_HOLD_RELEASE").map(std::path::PathBuf::from);
            let released = async {
                match release {
                    Some(file) => {
                        while !file.exists() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.requested() => {}
                _ = released => {}
            }
        }
    }

    /// Runs `fut` unless a signal arrives first (then `Err(error(done))`, `fut` dropped).
    pub async fn guard<T>(
        &self,
        done: &str,
        fut: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::select! {
            r = fut => r,
            _ = self.requested() => Err(self.error(done)),
        }
    }

    /// A shutdown that fires only when `cancel` is called (tests, library use).
    pub fn manual() -> Shutdown {
        Shutdown::default()
    }

    /// Asks for a stop as SIGTERM would (tests, library use).
    pub fn cancel(&self) {
        self.signal.store(libc::SIGTERM, Ordering::SeqCst);
        self.token.cancel();
    }
}

fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Makes a child process get SIGKILL when kirt dies, even by SIGKILL (Linux parent-death
/// signal), so that no scratch server outlives it.
pub fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: prctl is async-signal-safe and touches only the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
