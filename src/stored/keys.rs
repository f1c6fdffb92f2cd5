//! Where kube-apiserver keeps each resource in etcd, and what an etcd key says about the object
//! under it. Built-in resources live at `/registry/RESOURCE/[NAMESPACE/]NAME` (a few under
//! historical names: `minions`, `services/specs`, `controllers`, `ingress`), aggregated and custom
//! resources at `/registry/GROUP/RESOURCE/[NAMESPACE/]NAME`. The key is what the apiserver trusted
//! when it stored the value; a value whose decoded kind, namespace or name disagree with its key
//! was not written by the apiserver (planted in etcd) and is never restored.

/// A built-in resource's storage.
#[derive(Debug)]
pub struct Builtin {
    /// Under `/registry/`.
    pub prefix: &'static str,
    /// API groups its kind may be stored as (older versions stored some under `extensions`).
    pub groups: &'static [&'static str],
    pub kind: &'static str,
    /// The resource as the API serves it.
    pub plural: &'static str,
    pub namespaced: bool,
    /// Not an object of the API (the apiserver's own bookkeeping).
    pub internal: bool,
}

const fn b(
    prefix: &'static str,
    groups: &'static [&'static str],
    kind: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> Builtin {
    Builtin {
        prefix,
        groups,
        kind,
        plural,
        namespaced,
        internal: false,
    }
}

const CORE: &[&str] = &[""];
const APPS: &[&str] = &["apps", "extensions"];
const NET: &[&str] = &["networking.k8s.io", "extensions"];

/// kube-apiserver's storage prefixes (1.20–1.36).
pub static BUILTINS: &[Builtin] = &[
    b("configmaps", CORE, "ConfigMap", "configmaps", true),
    b("secrets", CORE, "Secret", "secrets", true),
    b(
        "serviceaccounts",
        CORE,
        "ServiceAccount",
        "serviceaccounts",
        true,
    ),
    b("services/specs", CORE, "Service", "services", true),
    b("services/endpoints", CORE, "Endpoints", "endpoints", true),
    b("pods", CORE, "Pod", "pods", true),
    b("podtemplates", CORE, "PodTemplate", "podtemplates", true),
    b(
        "controllers",
        CORE,
        "ReplicationController",
        "replicationcontrollers",
        true,
    ),
    b(
        "persistentvolumeclaims",
        CORE,
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        true,
    ),
    b(
        "persistentvolumes",
        CORE,
        "PersistentVolume",
        "persistentvolumes",
        false,
    ),
    b("limitranges", CORE, "LimitRange", "limitranges", true),
    b(
        "resourcequotas",
        CORE,
        "ResourceQuota",
        "resourcequotas",
        true,
    ),
    b("events", &["", "events.k8s.io"], "Event", "events", true),
    b("namespaces", CORE, "Namespace", "namespaces", false),
    b("minions", CORE, "Node", "nodes", false),
    b("deployments", APPS, "Deployment", "deployments", true),
    b("replicasets", APPS, "ReplicaSet", "replicasets", true),
    b("daemonsets", APPS, "DaemonSet", "daemonsets", true),
    b(
        "statefulsets",
        &["apps"],
        "StatefulSet",
        "statefulsets",
        true,
    ),
    b(
        "controllerrevisions",
        &["apps"],
        "ControllerRevision",
        "controllerrevisions",
        true,
    ),
    b("jobs", &["batch"], "Job", "jobs", true),
    b("cronjobs", &["batch"], "CronJob", "cronjobs", true),
    b(
        "horizontalpodautoscalers",
        &["autoscaling"],
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        true,
    ),
    b("ingress", NET, "Ingress", "ingresses", true),
    b(
        "ingressclasses",
        &["networking.k8s.io"],
        "IngressClass",
        "ingressclasses",
        false,
    ),
    b(
        "networkpolicies",
        NET,
        "NetworkPolicy",
        "networkpolicies",
        true,
    ),
    b(
        "ipaddresses",
        &["networking.k8s.io"],
        "IPAddress",
        "ipaddresses",
        false,
    ),
    b(
        "servicecidrs",
        &["networking.k8s.io"],
        "ServiceCIDR",
        "servicecidrs",
        false,
    ),
    b(
        "endpointslices",
        &["discovery.k8s.io"],
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    b(
        "poddisruptionbudgets",
        &["policy"],
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    b(
        "podsecuritypolicy",
        &["policy", "extensions"],
        "PodSecurityPolicy",
        "podsecuritypolicies",
        false,
    ),
    b(
        "roles",
        &["rbac.authorization.k8s.io"],
        "Role",
        "roles",
        true,
    ),
    b(
        "rolebindings",
        &["rbac.authorization.k8s.io"],
        "RoleBinding",
        "rolebindings",
        true,
    ),
    b(
        "clusterroles",
        &["rbac.authorization.k8s.io"],
        "ClusterRole",
        "clusterroles",
        false,
    ),
    b(
        "clusterrolebindings",
        &["rbac.authorization.k8s.io"],
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    b("leases", &["coordination.k8s.io"], "Lease", "leases", true),
    b(
        "leasecandidates",
        &["coordination.k8s.io"],
        "LeaseCandidate",
        "leasecandidates",
        true,
    ),
    b(
        "certificatesigningrequests",
        &["certificates.k8s.io"],
        "CertificateSigningRequest",
        "certificatesigningrequests",
        false,
    ),
    b(
        "clustertrustbundles",
        &["certificates.k8s.io"],
        "ClusterTrustBundle",
        "clustertrustbundles",
        false,
    ),
    b(
        "priorityclasses",
        &["scheduling.k8s.io"],
        "PriorityClass",
        "priorityclasses",
        false,
    ),
    b(
        "storageclasses",
        &["storage.k8s.io"],
        "StorageClass",
        "storageclasses",
        false,
    ),
    b(
        "volumeattachments",
        &["storage.k8s.io"],
        "VolumeAttachment",
        "volumeattachments",
        false,
    ),
    b(
        "csinodes",
        &["storage.k8s.io"],
        "CSINode",
        "csinodes",
        false,
    ),
    b(
        "csidrivers",
        &["storage.k8s.io"],
        "CSIDriver",
        "csidrivers",
        false,
    ),
    b(
        "csistoragecapacities",
        &["storage.k8s.io"],
        "CSIStorageCapacity",
        "csistoragecapacities",
        true,
    ),
    b(
        "volumeattributesclasses",
        &["storage.k8s.io"],
        "VolumeAttributesClass",
        "volumeattributesclasses",
        false,
    ),
    b(
        "mutatingwebhookconfigurations",
        &["admissionregistration.k8s.io"],
        "MutatingWebhookConfiguration",
        "mutatingwebhookconfigurations",
        false,
    ),
    b(
        "validatingwebhookconfigurations",
        &["admissionregistration.k8s.io"],
        "ValidatingWebhookConfiguration",
        "validatingwebhookconfigurations",
        false,
    ),
    b(
        "validatingadmissionpolicies",
        &["admissionregistration.k8s.io"],
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
        false,
    ),
    b(
        "validatingadmissionpolicybindings",
        &["admissionregistration.k8s.io"],
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
        false,
    ),
    b(
        "mutatingadmissionpolicies",
        &["admissionregistration.k8s.io"],
        "MutatingAdmissionPolicy",
        "mutatingadmissionpolicies",
        false,
    ),
    b(
        "mutatingadmissionpolicybindings",
        &["admissionregistration.k8s.io"],
        "MutatingAdmissionPolicyBinding",
        "mutatingadmissionpolicybindings",
        false,
    ),
    b(
        "runtimeclasses",
        &["node.k8s.io"],
        "RuntimeClass",
        "runtimeclasses",
        false,
    ),
    b(
        "flowschemas",
        &["flowcontrol.apiserver.k8s.io"],
        "FlowSchema",
        "flowschemas",
        false,
    ),
    b(
        "prioritylevelconfigurations",
        &["flowcontrol.apiserver.k8s.io"],
        "PriorityLevelConfiguration",
        "prioritylevelconfigurations",
        false,
    ),
    b(
        "storageversions",
        &["internal.apiserver.k8s.io"],
        "StorageVersion",
        "storageversions",
        false,
    ),
    b(
        "storageversionmigrations",
        &["storagemigration.k8s.io"],
        "StorageVersionMigration",
        "storageversionmigrations",
        false,
    ),
    b(
        "resourceclaims",
        &["resource.k8s.io"],
        "ResourceClaim",
        "resourceclaims",
        true,
    ),
    b(
        "resourceclaimtemplates",
        &["resource.k8s.io"],
        "ResourceClaimTemplate",
        "resourceclaimtemplates",
        true,
    ),
    b(
        "resourceslices",
        &["resource.k8s.io"],
        "ResourceSlice",
        "resourceslices",
        false,
    ),
    b(
        "deviceclasses",
        &["resource.k8s.io"],
        "DeviceClass",
        "deviceclasses",
        false,
    ),
    b(
        "apiextensions.k8s.io/customresourcedefinitions",
        &["apiextensions.k8s.io"],
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    b(
        "apiregistration.k8s.io/apiservices",
        &["apiregistration.k8s.io"],
        "APIService",
        "apiservices",
        false,
    ),
    // the apiserver's own bookkeeping: IP and port allocations, lease-reconciled endpoints
    Builtin {
        internal: true,
        ..b("ranges", CORE, "RangeAllocation", "rangeallocations", false)
    },
    Builtin {
        internal: true,
        ..b("masterleases", CORE, "Endpoints", "masterleases", false)
    },
];

/// What an etcd key under `/registry/` says.
#[derive(Debug, Clone)]
pub struct Key {
    /// The whole etcd key.
    pub raw: String,
    /// API group: the built-in's first group, or the custom resource's group from the key.
    pub group: String,
    /// The resource as the API serves it (`services`, `widgets`).
    pub plural: String,
    pub namespace: Option<String>,
    pub name: String,
    pub builtin: Option<&'static Builtin>,
}

impl Key {
    /// Parses `/registry/...`; `None` for keys that name no object (etcd's own, `/registry/health`).
    pub fn parse(raw: &str) -> Option<Key> {
        let rest = raw.strip_prefix("/registry/")?;
        let builtin = BUILTINS
            .iter()
            .filter(|b| {
                rest.strip_prefix(b.prefix)
                    .is_some_and(|r| r.starts_with('/'))
            })
            .max_by_key(|b| b.prefix.len());
        let (group, plural, tail, builtin) = match builtin {
            Some(b) => (
                b.groups[0].to_string(),
                b.plural.to_string(),
                &rest[b.prefix.len() + 1..],
                Some(b),
            ),
            None => {
                let (first, after) = rest.split_once('/')?;
                if first.contains('.') {
                    let (plural, tail) = after.split_once('/')?;
                    (first.to_string(), plural.to_string(), tail, None)
                } else {
                    // a resource kirt does not know; its layout is guessed from the key
                    (String::new(), first.to_string(), after, None)
                }
            }
        };
        let parts: Vec<&str> = tail.split('/').collect();
        let (namespace, name) = match (parts.as_slice(), builtin) {
            ([ns, name], Some(b)) if b.namespaced => (Some(*ns), *name),
            ([name], Some(b)) if !b.namespaced || b.internal => (None, *name),
            (_, Some(b)) if b.internal => (None, tail),
            (_, Some(_)) => return None,
            ([ns, name], None) => (Some(*ns), *name),
            ([name], None) => (None, *name),
            _ => return None,
        };
        if name.is_empty() || namespace.is_some_and(str::is_empty) {
            return None;
        }
        Some(Key {
            raw: raw.to_string(),
            group,
            plural,
            namespace: namespace.map(String::from),
            name: name.to_string(),
            builtin,
        })
    }

    /// A custom (or aggregated) resource: `/registry/GROUP/RESOURCE/...`.
    pub fn is_custom(&self) -> bool {
        self.builtin.is_none() && !self.group.is_empty()
    }

    pub fn internal(&self) -> bool {
        self.builtin.is_some_and(|b| b.internal)
    }

    /// `kind` as the key knows it (built-ins only).
    pub fn kind(&self) -> Option<&'static str> {
        self.builtin.map(|b| b.kind)
    }

    /// `resource[.group]`, as RBAC and EncryptionConfiguration name it.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// "ns/name" or "name".
    pub fn path(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_objects() {
        let k = Key::parse("/registry/services/specs/shop/web").unwrap();
        assert_eq!(
            (
                k.plural.as_str(),
                k.namespace.as_deref(),
                k.name.as_str(),
                k.kind()
            ),
            ("services", Some("shop"), "web", Some("Service"))
        );
        let k = Key::parse("/registry/minions/node-1").unwrap();
        assert_eq!(
            (k.plural.as_str(), k.namespace.as_deref(), k.kind()),
            ("nodes", None, Some("Node"))
        );
        let k = Key::parse("/registry/deployments/shop/web").unwrap();
        assert_eq!(k.group, "apps");
        let k = Key::parse(
            "/registry/apiextensions.k8s.io/customresourcedefinitions/widgets.example.com",
        )
        .unwrap();
        assert_eq!(k.kind(), Some("CustomResourceDefinition"));
        assert!(!k.is_custom());
        let k = Key::parse("/registry/example.com/widgets/shop/w1").unwrap();
        assert!(k.is_custom());
        assert_eq!(
            (
                k.group.as_str(),
                k.plural.as_str(),
                k.namespace.as_deref(),
                k.name.as_str()
            ),
            ("example.com", "widgets", Some("shop"), "w1")
        );
        assert_eq!(k.group_resource(), "widgets.example.com");
        let k = Key::parse("/registry/example.com/clusterwidgets/w1").unwrap();
        assert_eq!(k.namespace, None);
        assert!(Key::parse("/registry/ranges/serviceips")
            .unwrap()
            .internal());
        // a namespaced built-in with a cluster-scoped layout is not an object key
        assert!(Key::parse("/registry/configmaps/only-a-name").is_none());
        assert!(Key::parse("/registry/namespaces/a/b").is_none());
        assert!(Key::parse("/registry/health").is_none());
        assert!(Key::parse("compact_rev_key").is_none());
    }
}
