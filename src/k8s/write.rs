//! Guarded writes: every change kirt makes carries the resourceVersion it was computed from, so a
//! concurrent change is detected (409 Conflict), the object re-read, and the change recomputed —
//! never blindly overwritten. Plus the JSON merge patch that turns one object into another.

use std::future::Future;

use crate::error::{Error, Result};

/// Attempts of a resourceVersion-guarded write before a conflict becomes an error.
const CONFLICT_ATTEMPTS: usize = 5;

/// Runs a resourceVersion-guarded write, re-reading and retrying on 409 Conflict. The closure gets
/// the attempt number (0 first) and should re-read the object when it is not 0
/// ([`super::Objects::current`]).
pub async fn retry_conflict<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut n = 0;
    loop {
        match attempt(n).await {
            Err(Error::Kube {
                source: kube::Error::Api(s),
                context,
            }) if s.code == 409 => {
                if n + 1 >= CONFLICT_ATTEMPTS {
                    return Err(Error::failed(format!(
                        "{context}: the object kept changing under kirt ({CONFLICT_ATTEMPTS} conflicting writes): {}; re-run the command",
                        s.message
                    )));
                }
                tracing::debug!(attempt = n, "conflict, re-reading: {}", s.message);
                n += 1;
            }
            other => return other,
        }
    }
}

/// The JSON merge patch (RFC 7386) that turns `from` into `to`: objects recurse, removed keys
/// become null, anything else is replaced whole. (Specs never hold explicit nulls.)
pub fn merge_diff(from: &serde_json::Value, to: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut out = serde_json::Map::new();
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                out.insert(k.clone(), Value::Null);
            }
            for (k, v) in b {
                match a.get(k) {
                    Some(old) if old == v => {}
                    Some(old) => {
                        out.insert(k.clone(), merge_diff(old, v));
                    }
                    None => {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
            Value::Object(out)
        }
        _ => to.clone(),
    }
}

/// The resourceVersions of an object around one write (none before a create, none after a
/// delete): what journals record so that a report can say exactly which version kirt changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl Versions {
    pub fn between<K: kube::Resource>(before: Option<&K>, after: Option<&K>) -> Versions {
        let rv = |o: Option<&K>| o.and_then(|o| o.meta().resource_version.clone());
        Versions {
            before: rv(before),
            after: rv(after),
        }
    }
}

/// The fields a guarded merge patch changes: the patch without its preconditions (the uid and
/// resourceVersion it carries are checks, not changes).
pub fn changed_fields(patch: &serde_json::Value) -> serde_json::Value {
    let mut p = patch.clone();
    if let Some(m) = p.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        m.remove("uid");
        m.remove("resourceVersion");
    }
    p
}

/// A plain API struct as JSON (Null if it cannot be serialized, which API structs always can).
pub fn to_value<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conflict() -> Error {
        super::super::Op::new("patch", "pods", "", "https://x")
            .ns("prod")
            .name("web")
            .err(kube::Error::Api(
                kube::core::Status::failure("the object has been modified", "Conflict")
                    .with_code(409)
                    .boxed(),
            ))
    }

    #[tokio::test]
    async fn conflicts_are_retried_then_reported() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = retry_conflict(|n| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    Err(conflict())
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(r, 2);
        let e = retry_conflict(|_| async { Err::<(), _>(conflict()) })
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("pods prod/web") && msg.contains("kept changing"),
            "{msg}"
        );
        // other errors are not retried
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let e = retry_conflict(|_| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Err::<(), _>(Error::failed("boom")) }
        })
        .await
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn merge_diff_round_trips() {
        let label = "kirt.dev/quarantined";
        let narrowed = json!({"podSelector": {"matchExpressions": [{"key": label, "operator": "DoesNotExist"}]}, "ingress": [{}], "policyTypes": ["Ingress"]});
        let original = json!({"podSelector": {}, "ingress": [{}], "policyTypes": ["Ingress"]});
        let d = merge_diff(&narrowed, &original);
        assert_eq!(d, json!({"podSelector": {"matchExpressions": null}}));
        assert_eq!(merge_diff(&original, &original), json!({}));
        assert_eq!(
            merge_diff(&original, &narrowed),
            json!({"podSelector": {"matchExpressions": [{"key": label, "operator": "DoesNotExist"}]}})
        );
    }
}
