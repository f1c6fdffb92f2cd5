//! One error type for the whole library, with stable exit codes.
//!
//! Rules:
//! - Every variant says what went wrong *and* what to do next; context (namespace/pod, endpoint,
//!   bucket/key) is part of the message, never only in a log line.
//! - An error caused by another keeps it as its `#[source]` (the message already says what it
//!   means for the user; the source is there for `-v` logs and for code that inspects it).
//! - Exit codes are part of kirt's interface (docs/exit-codes.md) and never change meaning.
//! - Secrets (tokens, keys, passphrases) never appear in a message.
//! - The library never exits the process: `main` maps `Error::exit` once.

use std::process::ExitCode;

/// Stable exit codes, documented in docs/exit-codes.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    Ok = 0,
    /// The operation failed (server error, I/O error, timeout).
    Failure = 1,
    /// Bad flags, bad input or configuration: nothing was done.
    Usage = 2,
    /// A verification found a mismatch (backup digest, isolation breach, tampered evidence).
    VerifyFailed = 3,
    /// Refused: needs confirmation (`--yes`), or kirt will not do it in this state.
    Refused = 4,
    /// Some targets succeeded and some failed.
    Partial = 5,
    /// The named object (pod, namespace, backup, revision) does not exist.
    NotFound = 6,
    /// The identity kirt acts as lacks a permission.
    Forbidden = 7,
    /// A server (apiserver, etcd, S3) could not be reached.
    Unreachable = 8,
    /// Stopped by SIGINT (128 + 2); what was in progress was undone.
    Interrupted = 130,
    /// Stopped by SIGTERM (128 + 15); what was in progress was undone.
    Terminated = 143,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed cause, for errors of libraries whose types kirt does not name (the AWS SDK's are
/// generic over each operation).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),

    #[error("not found: {what}{}", hint_suffix(.hint))]
    NotFound { what: String, hint: String },

    #[error("{0}")]
    Forbidden(Box<Denied>),

    #[error("cannot reach {what}{}: {reason} — {hint}", at_suffix(.endpoint))]
    Unreachable {
        what: &'static str,
        endpoint: String,
        reason: String,
        hint: String,
    },

    #[error("refused: {0}")]
    Refused(String),

    #[error("verification failed: {0}")]
    VerifyFailed(String),

    /// SIGINT/SIGTERM stopped the command; what it was doing was undone.
    #[error("{message}")]
    Interrupted { signal: i32, message: String },

    #[error("kubernetes API: {context}: {source}")]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },

    #[error("etcd {endpoint}: {context}: {source}")]
    Etcd {
        endpoint: String,
        context: String,
        #[source]
        source: etcd_client::Error,
    },

    /// The store refused a request for lack of permission (S3 AccessDenied).
    #[error("storage {location}: access denied: this identity may not {action} — grant it in the IAM or bucket policy (docs/deploy.md lists what each role needs)")]
    StoreDenied {
        location: String,
        /// The IAM action that was refused, e.g. `s3:ListBucket`.
        action: String,
        #[source]
        source: Option<BoxError>,
    },

    #[error("storage {location}: {message}")]
    Store {
        location: String,
        message: String,
        #[source]
        source: Option<BoxError>,
    },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// Encoding or decoding JSON that kirt itself produces or must read.
    #[error("{context}: {source}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },

    /// A task kirt spawned panicked or was cancelled (a bug, never the user's input).
    #[error("{what} stopped unexpectedly: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },

    #[error("{0}")]
    Failed(String),
}

/// A permission the identity kirt acts as does not have.
#[derive(Debug, thiserror::Error)]
#[error(
    "forbidden: {identity} cannot {verb} {resource}{} — grant it with a Role/ClusterRole rule \
     ({}verbs: [{verb}], resources: [{resource}]){}",
    ns_suffix(.namespace), group_rule(.group), hint_suffix(.detail)
)]
pub struct Denied {
    pub identity: String,
    pub verb: String,
    pub resource: String,
    /// API group of the resource ("" for the core group).
    pub group: String,
    pub namespace: Option<String>,
    pub detail: String,
}

fn hint_suffix(s: &str) -> String {
    if s.is_empty() {
        String::new()
    } else {
        format!(" ({s})")
    }
}

fn at_suffix(endpoint: &str) -> String {
    if endpoint.is_empty() {
        String::new()
    } else {
        format!(" at {endpoint}")
    }
}

fn ns_suffix(ns: &Option<String>) -> String {
    match ns {
        Some(ns) => format!(" in namespace {ns}"),
        None => String::new(),
    }
}

fn group_rule(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!("apiGroups: [{group}], ")
    }
}

impl Error {
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            Error::NotFound { .. } => Exit::NotFound,
            Error::Forbidden(_) | Error::StoreDenied { .. } => Exit::Forbidden,
            Error::Unreachable { .. } => Exit::Unreachable,
            Error::Refused(_) => Exit::Refused,
            Error::VerifyFailed(_) => Exit::VerifyFailed,
            Error::Interrupted { signal, .. } if *signal == libc::SIGINT => Exit::Interrupted,
            Error::Interrupted { .. } => Exit::Terminated,
            _ => Exit::Failure,
        }
    }

    pub fn usage(msg: impl Into<String>) -> Self {
        Error::Usage(msg.into())
    }

    pub fn failed(msg: impl Into<String>) -> Self {
        Error::Failed(msg.into())
    }

    pub fn not_found(what: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::NotFound {
            what: what.into(),
            hint: hint.into(),
        }
    }

    pub fn store(location: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Store {
            location: location.into(),
            message: message.into(),
            source: None,
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }

    pub fn task(what: &'static str, source: tokio::task::JoinError) -> Self {
        Error::Task { what, source }
    }

    /// The store refused for lack of permission: callers that can do without (write-only
    /// credentials) degrade with a warning on this, and only on this.
    pub fn is_store_denied(&self) -> bool {
        matches!(self, Error::StoreDenied { .. })
    }
}

/// Adds context to `std::io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

/// Serializes kirt's own data (manifests, journal records, outputs) as JSON.
pub fn to_json<T: serde::Serialize + ?Sized>(what: &str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::json(format!("encoding {what}"), e))
}

/// Awaits a spawned task; a panic or cancellation is an `Error::Task`.
pub async fn join<T>(what: &'static str, h: tokio::task::JoinHandle<T>) -> Result<T> {
    h.await.map_err(|e| Error::task(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_stable() {
        assert_eq!(Exit::Usage as u8, 2);
        assert_eq!(Exit::VerifyFailed as u8, 3);
        assert_eq!(Exit::Refused as u8, 4);
        assert_eq!(Exit::Partial as u8, 5);
        assert_eq!(Exit::Interrupted as u8, 130);
        assert_eq!(Exit::Terminated as u8, 143);
        assert_eq!(Error::usage("x").exit(), Exit::Usage);
        assert_eq!(Error::not_found("pod a/b", "").exit(), Exit::NotFound);
    }

    #[test]
    fn forbidden_names_verb_and_resource() {
        let e = Error::Forbidden(Box::new(Denied {
            identity: "user alice".into(),
            verb: "patch".into(),
            resource: "pods".into(),
            group: String::new(),
            namespace: Some("prod".into()),
            detail: String::new(),
        }));
        let msg = e.to_string();
        assert!(msg.contains("cannot patch pods in namespace prod"), "{msg}");
        assert!(msg.contains("(verbs: [patch], resources: [pods])"), "{msg}");
        assert_eq!(e.exit(), Exit::Forbidden);
        let e = Error::Forbidden(Box::new(Denied {
            identity: "user alice".into(),
            verb: "list".into(),
            resource: "rolebindings".into(),
            group: "rbac.authorization.k8s.io".into(),
            namespace: None,
            detail: String::new(),
        }));
        assert!(
            e.to_string()
                .contains("(apiGroups: [rbac.authorization.k8s.io], verbs: [list], resources: [rolebindings])"),
            "{e}"
        );
    }
}
