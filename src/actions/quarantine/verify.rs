//! `kirt quarantine verify POD`: evaluates every NetworkPolicy of the namespace against the pod's
//! current labels and says whether the pod is isolated apart from its declared allowances (kirt's
//! per-pod policy); asks the apiserver what the pod's ServiceAccount may still do
//! (`credentials::check`); checks the node's isolation if kirt isolated it. Exit 3 when any of
//! them is not contained. Enforcement itself is the CNI's job; the network part checks intent.

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::{Deserialize, Serialize};

use super::credentials::check::{self, CredentialsVerdict};
use super::is_quarantined;
use super::policies::is_kirt_policy;
use super::policy_eval::{self, PolicyVerdict};
use crate::context::Ctx;
use crate::error::{Error, Exit, Result};
use crate::k8s::keys::{ALLOWANCE_FOR, QUARANTINED};
use crate::k8s::{annotation, labels_of, PodTarget};
use crate::output::{Render, Table};

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["pod"]))]
pub struct VerifySpec {
    /// The pod to check
    #[arg(value_name = "POD")]
    pub pod: String,
    /// Namespace (playbooks; on the command line use -n)
    #[arg(skip)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub namespace: String,
    pub pod: String,
    pub quarantined: bool,
    pub isolated: bool,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    pub policies_evaluated: usize,
    /// Selecting policies without any admitting rule.
    pub deny_all: Vec<String>,
    /// Declared allowances (kirt's per-pod policy) and what they admit.
    pub allowances: Vec<PolicyVerdict>,
    /// Policies that still admit traffic to or from the pod.
    pub breaches: Vec<PolicyVerdict>,
    /// Why the pod is not isolated (empty when it is).
    pub problems: Vec<String>,
    /// The NetworkPolicy-enforcing CNI kirt recognised, or None (the verdict above is then about
    /// intent only: nothing may enforce it).
    pub cni: Option<String>,
    /// The pod's ServiceAccount: what it may still do, and its revoked tokens.
    pub credentials: CredentialsVerdict,
    /// What is missing from the node's isolation (`--isolate-node`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node: Vec<String>,
    /// Network, identity and node are all contained.
    pub contained: bool,
}

impl Render for VerifyReport {
    fn table(&self) -> Table {
        let mut t = Table::new(["POLICY", "VERDICT", "ADMITS"]);
        for name in &self.deny_all {
            t.row([name.as_str(), "deny", "nothing"]);
        }
        for (verdict, list) in [("allowance", &self.allowances), ("BREACH", &self.breaches)] {
            for v in list {
                let admits: Vec<&str> = v
                    .admits_ingress
                    .iter()
                    .chain(&v.admits_egress)
                    .map(String::as_str)
                    .collect();
                t.row([v.policy.as_str(), verdict, &admits.join("; ")]);
            }
        }
        if self.cni.is_none() {
            t.row(["(cluster CNI)", "WARNING", crate::actions::doctor::NO_CNI]);
            t.note(format!(
                "warning: {}: {}",
                crate::actions::doctor::NO_CNI,
                crate::actions::doctor::NO_CNI_HINT
            ));
        }
        let target = format!("pod {}/{}", self.namespace, self.pod);
        if self.isolated {
            t.note(format!(
                "\n{target} is isolated apart from its declared allowances ({} policies evaluated)",
                self.policies_evaluated
            ));
        } else {
            t.note(format!("\n{target} is NOT isolated:"));
            for p in &self.problems {
                t.note(format!("  - {p}"));
            }
            if !self.breaches.is_empty() {
                t.note("fix: kirt quarantine POD --exclusive narrows these policies (reverted on release)");
            }
        }
        if !self.quarantined {
            t.note(format!(
                "note: {target} does not carry {QUARANTINED}=true (not quarantined)"
            ));
        }
        let c = &self.credentials;
        if c.contained {
            t.note(format!(
                "ServiceAccount {}: nothing sensitive allowed ({} SubjectAccessReviews){}",
                c.service_account,
                c.reviews,
                if c.revoked {
                    "; credentials revoked by kirt"
                } else {
                    ""
                }
            ));
        } else {
            t.note(format!(
                "ServiceAccount {} is NOT contained:",
                c.service_account
            ));
            for p in &c.problems {
                t.note(format!("  - {p}"));
            }
        }
        for tk in c.token_secrets.iter().filter(|t| t.ok) {
            t.note(format!("  token Secret {}: {}", tk.secret, tk.status));
        }
        for n in &c.notes {
            t.note(format!("  note: {n}"));
        }
        for n in &self.node {
            t.note(format!("node NOT isolated: {n}"));
        }
        t
    }

    fn exit(&self) -> Exit {
        if self.contained {
            Exit::Ok
        } else {
            Exit::VerifyFailed
        }
    }
}

/// Whether a policy is the declared allowance policy of this pod.
fn is_allowance_of(np: &NetworkPolicy, ns: &str, pod: &str) -> bool {
    is_kirt_policy(np)
        && annotation(&np.metadata, ALLOWANCE_FOR) == Some(format!("{ns}/{pod}").as_str())
}

#[tracing::instrument(skip_all, fields(pod = %spec.pod))]
pub async fn run(ctx: &Ctx, spec: VerifySpec) -> Result<VerifyReport> {
    if spec.pod.is_empty() {
        return Err(Error::usage("name the pod to verify"));
    }
    let pods: Vec<Pod> = PodTarget::pod(&spec.pod, spec.namespace.clone())
        .resolve(ctx)
        .await?;
    let pod = &pods[0];
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let cluster = ctx.cluster().await?;
    let policies = cluster.namespaced::<NetworkPolicy>(&ns).list_all().await?;
    let cni = crate::actions::doctor::enforcing_cni(cluster).await;
    let labels = labels_of(pod);
    let iso = policy_eval::assess(&policies, &labels, |np| is_allowance_of(np, &ns, &spec.pod));
    let mut problems = iso.problems();
    // NetworkPolicies do not apply to pods in the node's network namespace.
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    if host_network {
        problems.insert(
            0,
            "the pod uses hostNetwork: NetworkPolicies do not apply to it; isolate the node".into(),
        );
    }
    let credentials = check::check(ctx, pod).await?;
    let node = node_problems(ctx, pod).await?;
    let isolated = iso.isolated() && !host_network;
    Ok(VerifyReport {
        contained: isolated && credentials.contained && node.is_empty(),
        credentials,
        node,
        namespace: ns.clone(),
        pod: spec.pod.clone(),
        quarantined: is_quarantined(pod),
        isolated,
        ingress_isolated: iso.ingress_isolated,
        egress_isolated: iso.egress_isolated,
        policies_evaluated: policies.len(),
        problems,
        deny_all: iso.deny_all,
        allowances: iso.allowances,
        breaches: iso.breaches,
        cni,
    })
}

/// What is missing from the isolation of the pod's node, if kirt isolated it for this pod.
async fn node_problems(ctx: &Ctx, pod: &Pod) -> Result<Vec<String>> {
    let Some(node) = crate::k8s::node_of(pod) else {
        return Ok(Vec::new());
    };
    let (ns, name) = crate::k8s::name_of(pod);
    let n = match ctx.cluster().await?.all::<Node>().get_opt(node).await {
        Ok(Some(n)) => n,
        Ok(None) => return Ok(Vec::new()),
        // only --isolate-node needs it; without `get nodes` that part cannot be checked
        Err(Error::Forbidden(d)) => {
            tracing::warn!("node {node} not checked: {d}");
            return Ok(Vec::new());
        }
        Err(e) => return Err(e),
    };
    Ok(crate::actions::node::isolation_problems(&n, &format!("{ns}/{name}")).unwrap_or_default())
}
