//! Pure NetworkPolicy evaluation: does a policy select a pod with these labels, which directions
//! does it isolate, and what traffic do its rules still admit. `quarantine verify` and
//! `quarantine --exclusive` both decide from here, so the logic is unit-tested without a cluster.
//!
//! Semantics follow the Kubernetes API (networking.k8s.io/v1): an empty podSelector selects every
//! pod of the namespace; policyTypes defaults to Ingress, plus Egress when egress rules exist;
//! a selected pod is isolated in a direction when any selecting policy covers that direction, and
//! then admits exactly the union of the rules of all selecting policies for that direction.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

pub use crate::k8s::selector::Labels;
use crate::k8s::selector::{describe as describe_selector, matches as selector_matches};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;

/// (covers ingress, covers egress) after the API's defaulting of policyTypes.
pub fn policy_types(spec: &NetworkPolicySpec) -> (bool, bool) {
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// What one policy means for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyVerdict {
    pub policy: String,
    pub selects: bool,
    pub isolates_ingress: bool,
    pub isolates_egress: bool,
    /// Human summaries of the ingress rules that admit traffic (only when selected and covered).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admits_ingress: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub admits_egress: Vec<String>,
}

impl PolicyVerdict {
    pub fn admits_traffic(&self) -> bool {
        !self.admits_ingress.is_empty() || !self.admits_egress.is_empty()
    }
}

pub fn evaluate(np: &NetworkPolicy, labels: &Labels) -> PolicyVerdict {
    let policy = np.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &np.spec else {
        return PolicyVerdict {
            policy,
            ..Default::default()
        };
    };
    // A missing podSelector is the empty selector: every pod of the namespace.
    let all = LabelSelector::default();
    if !selector_matches(spec.pod_selector.as_ref().unwrap_or(&all), labels) {
        return PolicyVerdict {
            policy,
            ..Default::default()
        };
    }
    let (ingress, egress) = policy_types(spec);
    let admits_ingress = if ingress {
        spec.ingress
            .iter()
            .flatten()
            .map(|r| {
                format!(
                    "ingress from {} on {}",
                    peers(r.from.as_deref(), "any source"),
                    ports(r.ports.as_deref())
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    let admits_egress = if egress {
        spec.egress
            .iter()
            .flatten()
            .map(|r| {
                format!(
                    "egress to {} on {}",
                    peers(r.to.as_deref(), "any destination"),
                    ports(r.ports.as_deref())
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    PolicyVerdict {
        policy,
        selects: true,
        isolates_ingress: ingress,
        isolates_egress: egress,
        admits_ingress,
        admits_egress,
    }
}

/// The isolation of one pod under every policy of its namespace.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Isolation {
    /// Some selecting policy covers Ingress (without one, all ingress is allowed).
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Selecting policies that admit traffic and are not declared allowances.
    pub breaches: Vec<PolicyVerdict>,
    /// Declared allowances (kirt's per-pod policy) that admit traffic.
    pub allowances: Vec<PolicyVerdict>,
    /// Selecting policies that admit nothing (deny-all in the directions they cover).
    pub deny_all: Vec<String>,
}

impl Isolation {
    pub fn isolated(&self) -> bool {
        self.ingress_isolated && self.egress_isolated && self.breaches.is_empty()
    }

    /// Why the pod is not isolated, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ingress_isolated {
            out.push(
                "no NetworkPolicy isolates its ingress: all inbound traffic is allowed".into(),
            );
        }
        if !self.egress_isolated {
            out.push(
                "no NetworkPolicy isolates its egress: all outbound traffic is allowed".into(),
            );
        }
        for b in &self.breaches {
            for a in b.admits_ingress.iter().chain(&b.admits_egress) {
                out.push(format!("policy {} admits {a}", b.policy));
            }
        }
        out
    }
}

/// Evaluates every policy; `is_allowance` says which policies are declared allowances.
pub fn assess(
    policies: &[NetworkPolicy],
    labels: &Labels,
    is_allowance: impl Fn(&NetworkPolicy) -> bool,
) -> Isolation {
    let mut iso = Isolation::default();
    for np in policies {
        let v = evaluate(np, labels);
        if !v.selects {
            continue;
        }
        iso.ingress_isolated |= v.isolates_ingress;
        iso.egress_isolated |= v.isolates_egress;
        if !v.admits_traffic() {
            iso.deny_all.push(v.policy);
        } else if is_allowance(np) {
            iso.allowances.push(v);
        } else {
            iso.breaches.push(v);
        }
    }
    iso
}

/// The requirement `--exclusive` adds to a policy's podSelector.
pub fn not_quarantined_requirement(label: &str) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: label.to_string(),
        operator: "DoesNotExist".into(),
        values: None,
    }
}

/// The spec narrowed so that it no longer selects pods carrying `label`.
pub fn narrowed(spec: &NetworkPolicySpec, label: &str) -> NetworkPolicySpec {
    let mut out = spec.clone();
    let req = not_quarantined_requirement(label);
    let exprs = out
        .pod_selector
        .get_or_insert_with(LabelSelector::default)
        .match_expressions
        .get_or_insert_with(Vec::new);
    if !exprs.contains(&req) {
        exprs.push(req);
    }
    out
}

fn peers(list: Option<&[NetworkPolicyPeer]>, any: &str) -> String {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        return any.to_string();
    }
    list.iter()
        .map(|p| {
            if let Some(b) = &p.ip_block {
                let except = b.except.as_deref().unwrap_or_default();
                if except.is_empty() {
                    format!("cidr {}", b.cidr)
                } else {
                    format!("cidr {} except {}", b.cidr, except.join(","))
                }
            } else {
                let pods = p
                    .pod_selector
                    .as_ref()
                    .map(|s| format!("pods [{}]", describe_selector(s, "all")));
                let nss = p
                    .namespace_selector
                    .as_ref()
                    .map(|s| format!("namespaces [{}]", describe_selector(s, "all")));
                match (pods, nss) {
                    (Some(p), Some(n)) => format!("{p} in {n}"),
                    (Some(p), None) => format!("{p} in this namespace"),
                    (None, Some(n)) => format!("all pods in {n}"),
                    (None, None) => "nothing".into(),
                }
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn ports(list: Option<&[NetworkPolicyPort]>) -> String {
    let list = list.unwrap_or_default();
    if list.is_empty() {
        return "all ports".into();
    }
    list.iter()
        .map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            match &p.port {
                Some(IntOrString::Int(n)) => format!("{proto}/{n}"),
                Some(IntOrString::String(s)) => format!("{proto}/{s}"),
                None => format!("{proto}/any"),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn np(yaml: &str) -> NetworkPolicy {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn policy_types_default() {
        let spec = |y: &str| -> NetworkPolicySpec { serde_yaml_ng::from_str(y).unwrap() };
        assert_eq!(policy_types(&spec("podSelector: {}")), (true, false));
        assert_eq!(
            policy_types(&spec("{podSelector: {}, egress: [{}]}")),
            (true, true)
        );
        assert_eq!(
            policy_types(&spec("{podSelector: {}, policyTypes: [Egress]}")),
            (false, true)
        );
    }

    #[test]
    fn allow_all_policy_breaches_and_exclusive_fixes_it() {
        let q = labels(&[("kirt.dev/quarantined", "true")]);
        let deny = np(
            "metadata: {name: kirt-quarantine}\nspec: {podSelector: {matchLabels: {kirt.dev/quarantined: 'true'}}, policyTypes: [Ingress, Egress]}",
        );
        let allow = np(
            "metadata: {name: allow-all}\nspec: {podSelector: {}, ingress: [{}], egress: [{}], policyTypes: [Ingress, Egress]}",
        );
        let iso = assess(&[deny.clone(), allow.clone()], &q, |_| false);
        assert!(!iso.isolated());
        assert_eq!(iso.breaches.len(), 1);
        assert_eq!(iso.breaches[0].policy, "allow-all");
        assert_eq!(
            iso.breaches[0].admits_ingress,
            ["ingress from any source on all ports"]
        );
        assert_eq!(iso.deny_all, ["kirt-quarantine"]);
        assert!(iso.problems().iter().any(|p| p.contains("allow-all")));

        let mut fixed = allow.clone();
        fixed.spec = Some(narrowed(
            allow.spec.as_ref().unwrap(),
            "kirt.dev/quarantined",
        ));
        // narrowing twice adds the requirement once
        let twice = narrowed(fixed.spec.as_ref().unwrap(), "kirt.dev/quarantined");
        assert_eq!(&twice, fixed.spec.as_ref().unwrap());
        let iso = assess(&[deny, fixed.clone()], &q, |_| false);
        assert!(iso.isolated(), "{iso:?}");
        // the narrowed policy still selects normal pods
        assert!(evaluate(&fixed, &labels(&[("app", "web")])).selects);
    }

    #[test]
    fn no_deny_all_is_not_isolated() {
        let l = labels(&[("app", "web")]);
        let iso = assess(&[], &l, |_| false);
        assert!(!iso.isolated());
        assert_eq!(iso.problems().len(), 2);
        // ingress-only deny leaves egress open
        let ingress_only = np("metadata: {name: deny-in}\nspec: {podSelector: {}}");
        let iso = assess(&[ingress_only], &l, |_| false);
        assert!(iso.ingress_isolated && !iso.egress_isolated && !iso.isolated());
    }

    #[test]
    fn rules_outside_policy_types_admit_nothing_and_allowances_are_separate() {
        let l = labels(&[("kirt.dev/quarantined", "true")]);
        // egress rules but policyTypes only Ingress: egress rules are ignored
        let p = np("metadata: {name: p}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress], egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 443}]}]}");
        let v = evaluate(&p, &l);
        assert_eq!(
            v.admits_egress,
            ["egress to cidr 10.0.0.0/8 except 10.1.0.0/16 on TCP/443"]
        );
        let ingress_only = np(
            "metadata: {name: q}\nspec: {podSelector: {}, policyTypes: [Ingress], egress: [{}]}",
        );
        assert!(!evaluate(&ingress_only, &l).admits_traffic());
        let dns = np("metadata: {name: kirt-quarantine-web}\nspec: {podSelector: {matchLabels: {kirt.dev/quarantined: 'true'}}, policyTypes: [Egress], egress: [{to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}], ports: [{port: 53, protocol: UDP}]}]}");
        let iso = assess(&[p, dns], &l, |n| {
            n.metadata.name.as_deref() == Some("kirt-quarantine-web")
        });
        assert_eq!(iso.allowances.len(), 1);
        assert_eq!(
            iso.allowances[0].admits_egress,
            ["egress to pods [k8s-app=kube-dns] in namespaces [all] on UDP/53"]
        );
        assert_eq!(iso.breaches.len(), 1);
    }
}
