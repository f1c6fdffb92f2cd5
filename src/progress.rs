//! Progress reporting as a small trait: the library reports, the binary decides how to show it
//! (an indicatif bar on a terminal, periodic log lines otherwise, nothing when quiet).

use std::sync::Arc;

pub trait Progress: Send + Sync {
    /// Starts a stage (e.g. "snapshot"), with a byte total when known.
    fn stage(&self, name: &str, total: Option<u64>) -> Box<dyn Stage>;
}

pub trait Stage: Send + Sync {
    fn inc(&self, bytes: u64);
    fn message(&self, _msg: &str) {}
    fn finish(&self);
}

/// Reports nothing (tests, `-q`, library users who do not care).
pub struct NoProgress;

struct NoStage;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: Option<u64>) -> Box<dyn Stage> {
        Box::new(NoStage)
    }
}

impl Stage for NoStage {
    fn inc(&self, _bytes: u64) {}
    fn finish(&self) {}
}

pub fn none() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
