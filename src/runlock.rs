//! Run locks: one `backup create` per cluster prefix at a time (two overlapping runs of the same
//! cron would interleave their uploads and retention). What a lock records about its holder, what
//! a refused run learns about it, and the handle a holder keeps. The locks themselves live where
//! the runs meet: in the store (`Store::lock`: an exclusive lock file, or a conditional PUT on
//! S3) or in a Kubernetes Lease (`k8s::lease`). A holder renews its lock while it runs; a lock not
//! renewed for its lease belongs to a run that is gone and is taken over.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Longest lease a lock record may claim: a planted record cannot block runs for longer.
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
/// Largest lock record read back (a real one is a few hundred bytes).
pub const MAX_RECORD: u64 = 4096;

/// Who holds a lock: enough for a person to find the run (host, PID, what, since when).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// What runs, e.g. "kirt backup create prod".
    pub what: String,
    /// Host (a pod's name) and process.
    pub host: String,
    pub pid: u32,
    pub since: jiff::Timestamp,
    /// The holder renews its lock at least this often (seconds)…
    pub lease_seconds: u64,
    /// …and last did at this time (its own clock).
    #[serde(default)]
    pub renewed: Option<jiff::Timestamp>,
    pub kirt_version: String,
}

impl Holder {
    /// This process, about to run `what`, renewing within `lease`.
    pub fn me(what: &str, lease: Duration) -> Holder {
        let now = jiff::Timestamp::now();
        Holder {
            what: what.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            since: now,
            lease_seconds: lease.as_secs().max(1),
            renewed: Some(now),
            kirt_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The lease this record claims, bounded (a record read back may have been planted).
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds.max(1)).min(MAX_LEASE)
    }

    /// The record as stored; parsing a stored one never trusts its size.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn parse(bytes: &[u8]) -> Option<Holder> {
        if bytes.len() as u64 > MAX_RECORD {
            return None;
        }
        serde_json::from_slice(bytes).ok()
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {} on {}, kirt {}) since {}",
            self.what,
            self.pid,
            self.host,
            self.kirt_version,
            stamp(self.since)
        )
    }
}

/// A lock someone else holds, as the refused run saw it.
#[derive(Debug, Clone)]
pub struct Busy {
    /// Where the lock is (`s3://b/p/.kirt/locks/…`, a lock file, a Lease).
    pub lock: String,
    /// The holder's record; `None` when it could not be read or parsed.
    pub holder: Option<Holder>,
    /// How long ago it was last renewed, as the lock's own store or server dates it (`None`:
    /// unknown, e.g. a lock file, which the kernel releases when its holder dies).
    pub renewed_ago: Option<Duration>,
    /// After this long without renewal the lock is taken over.
    pub lease: Duration,
}

impl Busy {
    /// The refusal (exit 4): who holds the lock and since when.
    pub fn error(&self) -> Error {
        let who = match &self.holder {
            Some(h) => h.to_string(),
            None => "a run whose lock record cannot be read".to_string(),
        };
        let renewed = match self.renewed_ago {
            Some(ago) => format!(
                "; last renewed {} ago, taken over once not renewed for {}",
                crate::units::human_duration(Duration::from_secs(ago.as_secs())),
                crate::units::human_duration(self.lease)
            ),
            None => String::new(),
        };
        Error::Refused(format!(
            "another run holds the lock {}: {who}{renewed}",
            self.lock
        ))
    }

    /// Whether the holder stopped renewing longer than its lease ago.
    pub fn stale(&self) -> bool {
        self.renewed_ago.is_some_and(|ago| ago > self.lease)
    }
}

/// How an attempt to take a lock ended.
pub enum Attempt {
    Acquired(Box<dyn Held>),
    Busy(Busy),
}

/// A lock this run holds. Release it when done; a run that dies without releasing leaves a
/// lock that is taken over once its lease has passed (a lock file: at once).
#[async_trait]
pub trait Held: Send + Sync {
    /// Where the lock is, for messages.
    fn describe(&self) -> String;
    /// Ok while the lock is still this run's; an error once another run took it over (this run
    /// stalled past its lease): then nothing may be published.
    fn check(&self) -> Result<()>;
    /// Gives the lock up (best effort: a lock that cannot be removed expires with its lease).
    async fn release(self: Box<Self>);
}

/// RFC 3339 to the second.
pub fn stamp(t: jiff::Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The error of a holder that lost its lock.
pub fn lost(lock: &str, to: Option<&Holder>) -> Error {
    Error::Refused(format!(
        "the lock {lock} was taken over{} while this run held it (it stalled past its lease); nothing was published",
        to.map(|h| format!(" by {h}")).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_planted_ones_are_bounded() {
        let me = Holder::me("kirt backup create prod", Duration::from_secs(300));
        assert_eq!(Holder::parse(&me.to_json()), Some(me.clone()));
        assert!(Holder::parse(b"not json").is_none());
        let mut huge = me.to_json();
        huge.resize(MAX_RECORD as usize + 1, b' ');
        assert!(Holder::parse(&huge).is_none());
        let mut planted = me;
        planted.lease_seconds = u64::MAX;
        assert_eq!(planted.lease(), MAX_LEASE);
    }

    #[test]
    fn busy_names_the_holder_and_knows_when_it_is_stale() {
        let h = Holder::me("kirt backup create prod", Duration::from_secs(60));
        let b = Busy {
            lock: "s3://b/p/.kirt/locks/prod/backup.json".into(),
            holder: Some(h.clone()),
            renewed_ago: Some(Duration::from_secs(10)),
            lease: h.lease(),
        };
        assert!(!b.stale());
        let e = b.error();
        assert_eq!(e.exit(), crate::Exit::Refused);
        let msg = e.to_string();
        assert!(msg.contains(&format!("pid {}", h.pid)), "{msg}");
        assert!(msg.contains("since"), "{msg}");
        assert!(msg.contains("last renewed 10s ago"), "{msg}");
        let old = Busy {
            renewed_ago: Some(Duration::from_secs(61)),
            ..b
        };
        assert!(old.stale());
        let unknown = Busy {
            renewed_ago: None,
            ..old
        };
        assert!(!unknown.stale());
    }
}
