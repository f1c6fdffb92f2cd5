//! Where the cluster is and who kirt is there: the global `--kubeconfig/--context/-n/-A/--as`
//! flags, the client built from them, and the identity the server sees.

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::op::Op;
use crate::error::{Error, Result};

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
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub default_namespace: String,
    /// The apiserver URL (for messages and manifests), without a trailing slash.
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
        let (mut config, mut identity) = match &opts.kubeconfig {
            Some(path) if !path.as_os_str().is_empty() => {
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
            _ => load_default(&kco).await?,
        };
        if let Some(user) = &opts.as_user {
            // kubectl's semantics: Impersonate-User / Impersonate-Group headers on every request
            config.auth_info.impersonate = Some(user.clone());
            if !opts.as_groups.is_empty() {
                config.auth_info.impersonate_groups = Some(opts.as_groups.clone());
            }
            identity = format!("{identity} impersonating {user}");
        }
        let url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
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

    /// The authenticated user according to the server (SelfSubjectReview, Kubernetes 1.28+);
    /// `None` where the server cannot say.
    pub async fn whoami(&self) -> Option<String> {
        for version in ["v1", "v1beta1"] {
            let body = serde_json::json!({"apiVersion": format!("authentication.k8s.io/{version}"), "kind": "SelfSubjectReview"});
            let req = http::Request::post(format!(
                "/apis/authentication.k8s.io/{version}/selfsubjectreviews"
            ))
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).ok()?)
            .ok()?;
            if let Ok(v) = self.client.request::<serde_json::Value>(req).await {
                let ui = &v["status"]["userInfo"];
                let user = ui["username"].as_str()?;
                let groups: Vec<&str> = ui["groups"]
                    .as_array()
                    .map(|g| g.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                return Some(format!("user {user} (groups: {})", groups.join(", ")));
            }
        }
        None
    }

    /// Who is acting, for annotations and Events: the server's answer, else the kubeconfig's.
    pub async fn identity(&self) -> String {
        match self.whoami().await {
            Some(user) => user,
            None => self.configured_identity.clone(),
        }
    }

    /// An operation on this cluster, for requests built by hand (subresources, raw paths).
    pub fn op(&self, verb: &str, resource: &str, group: &str) -> Op {
        Op::new(verb, resource, group, &self.url)
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
