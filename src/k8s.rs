//! Kubernetes plumbing written once: client from kubeconfig/in-cluster config, the field manager,
//! dry-run parameters, and turning API errors into kirt errors that name the missing permission.

use kube::api::{DeleteParams, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::error::{Error, Result};

/// Field manager for every write kirt makes (server-side apply bookkeeping, audit logs).
pub const FIELD_MANAGER: &str = "kirt";

/// Where the cluster is: the global `--kubeconfig/--context/-n/-A` flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KubeOptions {
    /// Path to the kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster config)
    #[arg(long, global = true, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context to use
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace (default: the context's namespace)
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,
    /// All namespaces
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    /// Act as this user (impersonation, as kubectl --as)
    #[arg(long = "as", global = true, value_name = "USER")]
    pub as_user: Option<String>,
    /// Act as this group; repeatable (impersonation, as kubectl --as-group)
    #[arg(
        long = "as-group",
        global = true,
        value_name = "GROUP",
        requires = "as_user"
    )]
    pub as_groups: Vec<String>,
}

/// A connected cluster: the client plus what was learnt from the configuration.
pub struct Cluster {
    pub client: Client,
    pub default_namespace: String,
    /// The apiserver URL (for messages and manifests).
    pub url: String,
    /// Who kirt is according to the kubeconfig (user entry / token / cert), before asking the server.
    pub configured_identity: String,
}

impl Cluster {
    pub async fn connect(opts: &KubeOptions) -> Result<Self> {
        let kco = KubeConfigOptions {
            context: opts.context.clone(),
            cluster: None,
            user: None,
        };
        let (config, identity) = match &opts.kubeconfig {
            Some(path) if path.as_os_str().is_empty() => load_default(&kco).await?,
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| {
                    Error::usage(format!(
                        "cannot read kubeconfig {}: {e} (check --kubeconfig / $KUBECONFIG)",
                        path.display()
                    ))
                })?;
                let identity = identity_of(&kc, opts.context.as_deref());
                let config = Config::from_custom_kubeconfig(kc, &kco)
                    .await
                    .map_err(|e| {
                        Error::usage(format!(
                            "kubeconfig {}: {e} (check --context)",
                            path.display()
                        ))
                    })?;
                (config, identity)
            }
            None => load_default(&kco).await?,
        };
        let mut config = config;
        let mut identity = identity;
        if let Some(user) = &opts.as_user {
            // kubectl's semantics: Impersonate-User / Impersonate-Group headers on every request
            config.auth_info.impersonate = Some(user.clone());
            if !opts.as_groups.is_empty() {
                config.auth_info.impersonate_groups = Some(opts.as_groups.clone());
            }
            identity = format!("{identity} impersonating {user}");
        }
        let url = config.cluster_url.to_string();
        let default_namespace = config.default_namespace.clone();
        let client = Client::try_from(config).map_err(|e| {
            Error::usage(format!("cannot build a Kubernetes client for {url}: {e}"))
        })?;
        Ok(Cluster {
            client,
            default_namespace,
            url,
            configured_identity: identity,
        })
    }
}

async fn load_default(kco: &KubeConfigOptions) -> Result<(Config, String)> {
    if kco.context.is_none() {
        if let Ok(config) = Config::incluster() {
            return Ok((config, "in-cluster service account".into()));
        }
    }
    let kc = Kubeconfig::read().map_err(|e| {
        Error::usage(format!(
            "no Kubernetes configuration found: {e} (pass --kubeconfig FILE, set $KUBECONFIG, or run in a pod)"
        ))
    })?;
    let identity = identity_of(&kc, kco.context.as_deref());
    let config = Config::from_custom_kubeconfig(kc, kco)
        .await
        .map_err(|e| Error::usage(format!("kubeconfig: {e} (check --context)")))?;
    Ok((config, identity))
}

/// The kubeconfig user name of the selected context (never the credential itself).
fn identity_of(kc: &Kubeconfig, context: Option<&str>) -> String {
    let ctx_name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone());
    kc.contexts
        .iter()
        .find(|c| Some(&c.name) == ctx_name.as_ref())
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .map(|u| format!("kubeconfig user {u}"))
        .unwrap_or_else(|| "kubeconfig user (unnamed)".into())
}

pub fn post_params(dry_run: bool) -> PostParams {
    PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

pub fn patch_params(dry_run: bool) -> PatchParams {
    let mut p = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if dry_run {
        p = p.dry_run();
    }
    p
}

pub fn delete_params(dry_run: bool) -> DeleteParams {
    DeleteParams {
        dry_run,
        ..Default::default()
    }
}

/// What was being attempted, so that an API error can say which permission is missing.
#[derive(Debug, Clone)]
pub struct Op<'a> {
    pub verb: &'a str,
    pub resource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

impl<'a> Op<'a> {
    pub fn new(verb: &'a str, resource: &'a str) -> Self {
        Op {
            verb,
            resource,
            namespace: None,
            name: None,
        }
    }
    pub fn ns(mut self, ns: &'a str) -> Self {
        self.namespace = Some(ns);
        self
    }
    pub fn name(mut self, name: &'a str) -> Self {
        self.name = Some(name);
        self
    }

    fn target(&self) -> String {
        let kind = self.resource.split('/').next().unwrap_or(self.resource);
        match (self.namespace, self.name) {
            (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
            (None, Some(n)) => format!("{kind} {n}"),
            (Some(ns), None) => format!("{kind} in namespace {ns}"),
            (None, None) => kind.to_string(),
        }
    }

    /// Maps a kube error to a kirt error naming the operation.
    pub fn err(&self, e: kube::Error) -> Error {
        match &e {
            kube::Error::Api(s) if s.code == 403 => Error::Forbidden {
                identity: forbidden_identity(&s.message)
                    .unwrap_or_else(|| "kirt's identity".into()),
                verb: self.verb.into(),
                resource: self.resource.into(),
                namespace: self.namespace.map(str::to_string),
                detail: String::new(),
            },
            kube::Error::Api(s) if s.code == 404 => {
                // A 404 on a namespaced object can mean the namespace itself is missing.
                let what = if s.message.contains("namespaces \"")
                    && !self.resource.starts_with("namespaces")
                {
                    format!("namespace {} ({})", self.namespace.unwrap_or(""), s.message)
                } else {
                    self.target()
                };
                Error::not_found(what, "check the name and namespace (-n)")
            }
            kube::Error::Api(s) if s.code == 401 => Error::Unreachable {
                what: "Kubernetes API",
                endpoint: String::new(),
                reason: format!("unauthorized: {}", s.message),
                hint: "the kubeconfig credentials were rejected; refresh them".into(),
            },
            kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable {
                what: "Kubernetes API",
                endpoint: String::new(),
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
    fn op(self, op: Op<'_>) -> Result<T>;
}

impl<T> KubeContext<T> for std::result::Result<T, kube::Error> {
    fn op(self, op: Op<'_>) -> Result<T> {
        self.map_err(|e| op.err(e))
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
}
