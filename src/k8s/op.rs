//! What was being attempted against the apiserver, so that an API error says which permission is
//! missing, which object is absent, or which server could not be reached.

use crate::error::{Denied, Error, Result};

/// One API operation: verb, resource (plural, `/sub` for a subresource), its API group, and the
/// object, on the apiserver at `server`.
#[derive(Debug, Clone)]
pub struct Op {
    pub verb: String,
    pub resource: String,
    pub group: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub server: String,
}

impl Op {
    pub fn new(verb: &str, resource: &str, group: &str, server: &str) -> Self {
        Op {
            verb: verb.into(),
            resource: resource.into(),
            group: group.into(),
            namespace: None,
            name: None,
            server: server.into(),
        }
    }

    pub fn ns(mut self, ns: &str) -> Self {
        self.namespace = Some(ns.into());
        self
    }

    pub fn ns_opt(mut self, ns: Option<&str>) -> Self {
        self.namespace = ns.map(Into::into);
        self
    }

    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.into());
        self
    }

    /// "pods prod/web", "nodes n1", "pods in namespace prod".
    pub fn target(&self) -> String {
        let kind = self.resource.split('/').next().unwrap_or(&self.resource);
        match (&self.namespace, &self.name) {
            (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
            (None, Some(n)) => format!("{kind} {n}"),
            (Some(ns), None) => format!("{kind} in namespace {ns}"),
            (None, None) => kind.to_string(),
        }
    }

    /// Maps a kube error to a kirt error naming the operation.
    pub fn err(&self, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden(Box::new(Denied {
                identity: forbidden_identity(&s.message)
                    .unwrap_or_else(|| "kirt's identity".into()),
                verb: self.verb.clone(),
                resource: self.resource.clone(),
                group: self.group.clone(),
                namespace: self.namespace.clone(),
                detail: escalation_detail(&s.message),
            })),
            kube::Error::Api(s) if s.code == 404 => {
                // A 404 on a namespaced object can mean the namespace itself is missing.
                let what = if s.message.contains("namespaces \"")
                    && !self.resource.starts_with("namespaces")
                {
                    format!(
                        "namespace {} ({})",
                        self.namespace.as_deref().unwrap_or(""),
                        s.message
                    )
                } else {
                    self.target()
                };
                Error::not_found(what, "check the name and namespace (-n)")
            }
            kube::Error::Api(s) if s.code == 401 => Error::Unreachable {
                what: "Kubernetes API",
                endpoint: self.server.clone(),
                reason: format!("unauthorized: {}", s.message),
                hint: "the kubeconfig credentials were rejected; refresh them".into(),
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable {
                what: "Kubernetes API",
                endpoint: self.server.clone(),
                reason: error_chain(&e),
                hint: "check that the apiserver is up and --kubeconfig/--context point at it"
                    .into(),
            },
            _ => Error::Kube {
                context: format!("{} {}", self.verb, self.target()),
                source: e,
            },
        }
    }
}

/// Marks the RBAC escalation check's refusal (changing a binding whose role kirt may neither
/// `bind` nor holds), which the same 403 as a missing `patch` would otherwise hide.
pub const ESCALATION: &str = "RBAC escalation check";

fn escalation_detail(message: &str) -> String {
    const HELD: &str = "is attempting to grant RBAC permissions not currently held";
    match message.find(HELD) {
        Some(i) => format!(
            "{ESCALATION}: {}",
            message[i + 3..]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
        None => String::new(),
    }
}

/// `User "alice" cannot patch resource ...` → `user alice`.
fn forbidden_identity(message: &str) -> Option<String> {
    let rest = message.split("User \"").nth(1)?;
    let user = rest.split('"').next()?;
    Some(format!("user {user}"))
}

/// The full cause chain of an error on one line (connection errors hide the useful part deep down).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// Extension to turn `kube::Result` into `kirt::Result` with the operation named.
pub trait KubeContext<T> {
    fn op(self, op: &Op) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn op(self, op: &Op) -> Result<T> {
        self.map_err(|e| op.err(e))
    }
}

/// The status code of an API answer (`None` for transport errors).
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_message_names_user() {
        let m = r#"pods "web" is forbidden: User "lab-nobody" cannot patch resource "pods" in API group "" in the namespace "x""#;
        assert_eq!(forbidden_identity(m).as_deref(), Some("user lab-nobody"));
        assert_eq!(forbidden_identity("nope"), None);
    }

    #[test]
    fn escalation_refusals_are_marked() {
        let m = "rolebindings.rbac.authorization.k8s.io \"x\" is forbidden: user \"u\" (groups=[]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"list\"]}";
        let d = escalation_detail(m);
        assert!(
            d.starts_with(ESCALATION) && d.contains("Resources:[\"secrets\"]"),
            "{d}"
        );
        assert_eq!(escalation_detail("cannot patch"), "");
    }

    #[test]
    fn transport_errors_name_the_server() {
        let op = Op::new("get", "pods", "", "https://10.0.0.1:6443").ns("prod");
        let e = op.err(kube::Error::Api(
            kube::core::Status::failure("Unauthorized", "Unauthorized")
                .with_code(401)
                .boxed(),
        ));
        assert!(e.to_string().contains("at https://10.0.0.1:6443"), "{e}");
    }
}
