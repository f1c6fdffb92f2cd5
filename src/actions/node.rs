//! Node containment: `--cordon-node` / `--isolate-node` of `kirt quarantine`, and the standalone
//! `kirt node quarantine NODE` / `kirt node release NODE`. Isolating a node cordons it, taints it
//! `kirt.dev/quarantine=POD:NoSchedule` and labels it `kirt.dev/under-investigation=true`, in
//! one resourceVersion-guarded patch. Several quarantined pods (and a person) may ask for the same
//! node, so the node records who asked (`kirt.dev/cordoned-by-quarantine`, `kirt.dev/isolated-by`)
//! and which of the label and taint kirt added itself: release removes exactly what kirt added,
//! when the last one who asked is released. A node someone else cordoned stays cordoned.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::Patch;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::context::Ctx;
use crate::error::{Error, Result};
use crate::k8s::keys::{CORDONED_BY, ISOLATED_BY, QUARANTINE_TAINT, UNDER_INVESTIGATION};
use crate::k8s::write::retry_conflict;
use crate::k8s::{annotation, Cluster};
use crate::output::{Render, Table};

/// Who asked when a person runs `kirt node quarantine` (pods ask as `NS/POD`).
pub const BY_HAND: &str = "kirt node quarantine";
/// The taint the node controller adds to a cordoned node (TaintNodesByCondition).
const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";
/// Taint value for a node isolated by hand (pods put their name there).
const HAND_TAINT_VALUE: &str = "manual";

/// What the node's `kirt.dev/isolated-by` annotation records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    /// `NS/POD` of each quarantined pod that asked, and/or [`BY_HAND`].
    pub by: Vec<String>,
    /// kirt added the label (it was not there before).
    #[serde(default)]
    pub added_label: bool,
    /// kirt added the taint (there was no `kirt.dev/quarantine` NoSchedule taint before).
    #[serde(default)]
    pub added_taint: bool,
}

/// What to do to a node: cordon only (`--cordon-node`) or the full isolation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Containment {
    Cordon,
    Isolate,
}

fn requesters(node: &Node, key: &str) -> Vec<String> {
    annotation(&node.metadata, key)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

fn isolation(node: &Node) -> Option<Isolation> {
    annotation(&node.metadata, ISOLATED_BY).and_then(|v| serde_json::from_str(v).ok())
}

fn has_label(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(UNDER_INVESTIGATION))
}

fn is_kirt_taint(t: &Taint) -> bool {
    t.key == QUARANTINE_TAINT && t.effect == "NoSchedule"
}

fn taints(node: &Node) -> Vec<Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
}

fn unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

/// The merge patch that adds `requester`'s containment to `node`, and what it changes; `None`
/// when nothing is left to do.
pub fn isolate_patch(
    node: &Node,
    requester: &str,
    taint_value: &str,
    what: Containment,
) -> Option<(Value, Vec<String>)> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut changes = Vec::new();
    let mut annotations = Map::new();
    let mut spec = Map::new();
    let mut cordoned_by = requesters(node, CORDONED_BY);
    if unschedulable(node) && cordoned_by.is_empty() {
        changes.push(format!(
            "node {name} was already cordoned (not by kirt); left alone"
        ));
    } else if !cordoned_by.iter().any(|r| r == requester) {
        cordoned_by.push(requester.to_string());
        annotations.insert(CORDONED_BY.into(), json!(json_string(&cordoned_by)));
        if !unschedulable(node) {
            spec.insert("unschedulable".into(), json!(true));
            changes.push(format!("node {name} cordoned"));
        }
    }
    let mut labels = Map::new();
    if what == Containment::Isolate {
        let mut iso = isolation(node).unwrap_or_default();
        if iso.by.is_empty() {
            iso.added_label = !has_label(node);
            iso.added_taint = !taints(node).iter().any(is_kirt_taint);
        }
        if !iso.by.iter().any(|r| r == requester) {
            iso.by.push(requester.to_string());
            annotations.insert(ISOLATED_BY.into(), json!(json_string(&iso)));
        }
        if iso.added_label && !has_label(node) {
            labels.insert(UNDER_INVESTIGATION.into(), json!("true"));
            changes.push(format!("node {name} labelled {UNDER_INVESTIGATION}=true"));
        }
        let mut all = taints(node);
        if iso.added_taint && !all.iter().any(is_kirt_taint) {
            all.push(Taint {
                key: QUARANTINE_TAINT.into(),
                value: Some(taint_value.into()),
                effect: "NoSchedule".into(),
                time_added: None,
            });
            spec.insert("taints".into(), json!(all));
            changes.push(format!(
                "node {name} tainted {QUARANTINE_TAINT}={taint_value}:NoSchedule"
            ));
        }
    }
    if annotations.is_empty() && labels.is_empty() && spec.is_empty() {
        return (!changes.is_empty()).then_some((Value::Null, changes));
    }
    let mut metadata =
        json!({"resourceVersion": node.metadata.resource_version, "annotations": annotations});
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    let mut patch = json!({"metadata": metadata});
    if !spec.is_empty() {
        patch["spec"] = Value::Object(spec);
    }
    if changes.is_empty() {
        changes.push(format!("node {name}: {requester} recorded"));
    }
    Some((patch, changes))
}

/// The merge patch that withdraws `requester`'s containment from `node`: uncordon when nobody
/// else asked for the cordon, remove the label and taint kirt added when nobody else asked for
/// the isolation. `None` when `requester` asked for nothing on this node.
pub fn release_patch(node: &Node, requester: &str) -> Option<(Value, Vec<String>)> {
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut cordoned_by = requesters(node, CORDONED_BY);
    let iso = isolation(node);
    let in_cordon = cordoned_by.iter().any(|r| r == requester);
    let in_iso = iso
        .as_ref()
        .is_some_and(|i| i.by.iter().any(|r| r == requester));
    if !in_cordon && !in_iso {
        return None;
    }
    let mut changes = Vec::new();
    let mut annotations = Map::new();
    let mut spec = Map::new();
    let mut labels = Map::new();
    let before = taints(node);
    let mut after = before.clone();
    if in_cordon {
        cordoned_by.retain(|r| r != requester);
        if cordoned_by.is_empty() {
            annotations.insert(CORDONED_BY.into(), Value::Null);
            spec.insert("unschedulable".into(), Value::Null);
            // the node controller's taint for the cordon goes with it (it would remove it too)
            after.retain(|t| t.key != UNSCHEDULABLE_TAINT);
            changes.push(format!("node {name} uncordoned"));
        } else {
            annotations.insert(CORDONED_BY.into(), json!(json_string(&cordoned_by)));
            changes.push(format!(
                "node {name} stays cordoned for {} other quarantined pod(s)",
                cordoned_by.len()
            ));
        }
    }
    if let (true, Some(mut iso)) = (in_iso, iso) {
        iso.by.retain(|r| r != requester);
        if iso.by.is_empty() {
            annotations.insert(ISOLATED_BY.into(), Value::Null);
            if iso.added_label && has_label(node) {
                labels.insert(UNDER_INVESTIGATION.into(), Value::Null);
                changes.push(format!("label {UNDER_INVESTIGATION} removed"));
            }
            if iso.added_taint && after.iter().any(is_kirt_taint) {
                after.retain(|t| !is_kirt_taint(t));
                changes.push(format!("taint {QUARANTINE_TAINT} removed"));
            }
        } else {
            changes.push(format!(
                "node {name} stays isolated for {}",
                iso.by.join(", ")
            ));
            annotations.insert(ISOLATED_BY.into(), json!(json_string(&iso)));
        }
    }
    if after != before {
        let value = if after.is_empty() {
            Value::Null
        } else {
            json!(after)
        };
        spec.insert("taints".into(), value);
    }
    let mut metadata =
        json!({"resourceVersion": node.metadata.resource_version, "annotations": annotations});
    if !labels.is_empty() {
        metadata["labels"] = Value::Object(labels);
    }
    let mut patch = json!({"metadata": metadata});
    if !spec.is_empty() {
        patch["spec"] = Value::Object(spec);
    }
    Some((patch, changes))
}

fn json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Applies `requester`'s containment to `node` (guarded, retried on conflict). Returns what
/// changed, for the result rows.
pub async fn isolate(
    cluster: &Cluster,
    dry: bool,
    node: &str,
    requester: &str,
    taint_value: &str,
    what: Containment,
) -> Result<Vec<String>> {
    let nodes = cluster.all::<Node>();
    retry_conflict(|_| {
        let nodes = &nodes;
        async move {
            let cur = nodes.get(node).await?;
            let Some((patch, changes)) = isolate_patch(&cur, requester, taint_value, what) else {
                return Ok(Vec::new());
            };
            if !patch.is_null() {
                nodes.patch(node, &Patch::Merge(&patch), dry).await?;
            }
            Ok(changes)
        }
    })
    .await
}

/// Withdraws `requester`'s containment from `node` (guarded, retried on conflict). A node that
/// is gone has nothing to release.
pub async fn release(
    cluster: &Cluster,
    dry: bool,
    node: &str,
    requester: &str,
) -> Result<Vec<String>> {
    let nodes = cluster.all::<Node>();
    retry_conflict(|_| {
        let nodes = &nodes;
        async move {
            let Some(cur) = nodes.get_opt(node).await? else {
                return Ok(Vec::new());
            };
            let Some((patch, changes)) = release_patch(&cur, requester) else {
                return Ok(Vec::new());
            };
            nodes.patch(node, &Patch::Merge(&patch), dry).await?;
            Ok(changes)
        }
    })
    .await
}

/// Whether the node is still contained for `requester` (for `quarantine verify`): `None` when
/// `requester` never asked for it to be isolated, else the problems found.
pub fn isolation_problems(node: &Node, requester: &str) -> Option<Vec<String>> {
    let iso = isolation(node)?;
    if !iso.by.iter().any(|r| r == requester) {
        return None;
    }
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut problems = Vec::new();
    if !unschedulable(node) {
        problems.push(format!("node {name} is no longer cordoned"));
    }
    if !taints(node).iter().any(is_kirt_taint) {
        problems.push(format!("node {name} lost its {QUARANTINE_TAINT} taint"));
    }
    if !has_label(node) {
        problems.push(format!("node {name} lost its {UNDER_INVESTIGATION} label"));
    }
    Some(problems)
}

#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[schemars(extend("required" = ["node"]))]
pub struct NodeSpec {
    /// The node
    #[arg(value_name = "NODE")]
    pub node: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub dry_run: bool,
    /// done, would-do or unchanged
    pub outcome: String,
    pub changes: Vec<String>,
}

impl Render for NodeReport {
    fn table(&self) -> Table {
        let mut t = Table::new(["NODE", "RESULT", "DETAIL"]);
        t.row([
            self.node.as_str(),
            self.outcome.as_str(),
            &self.changes.join("; "),
        ]);
        if self.dry_run {
            t.note("\ndry run (server-side dryRun=All): nothing was changed");
        }
        t
    }
}

fn report(ctx: &Ctx, node: &str, changes: Vec<String>, nothing: &str) -> NodeReport {
    NodeReport {
        node: node.into(),
        dry_run: ctx.dry_run,
        outcome: if changes.is_empty() {
            "unchanged"
        } else if ctx.dry_run {
            "would-do"
        } else {
            "done"
        }
        .into(),
        changes: if changes.is_empty() {
            vec![nothing.into()]
        } else {
            changes
        },
    }
}

/// `kirt node quarantine NODE`: cordon, taint and label the node by hand.
pub async fn quarantine(ctx: &Ctx, spec: NodeSpec) -> Result<NodeReport> {
    if spec.node.is_empty() {
        return Err(Error::usage("name the node to quarantine"));
    }
    let cluster = ctx.cluster().await?;
    cluster.all::<Node>().get(&spec.node).await?;
    ctx.confirm(&format!(
        "isolate node {} (cordon it, taint it {QUARANTINE_TAINT}={HAND_TAINT_VALUE}:NoSchedule, label it {UNDER_INVESTIGATION}=true)",
        spec.node
    ))?;
    let changes = isolate(
        cluster,
        ctx.dry_run,
        &spec.node,
        BY_HAND,
        HAND_TAINT_VALUE,
        Containment::Isolate,
    )
    .await?;
    Ok(report(ctx, &spec.node, changes, "already isolated by hand"))
}

/// `kirt node release NODE`: withdraws what `kirt node quarantine` did (pods that still need
/// the node isolated keep it so).
pub async fn release_by_hand(ctx: &Ctx, spec: NodeSpec) -> Result<NodeReport> {
    if spec.node.is_empty() {
        return Err(Error::usage("name the node to release"));
    }
    let cluster = ctx.cluster().await?;
    cluster.all::<Node>().get(&spec.node).await?;
    ctx.confirm(&format!(
        "release node {} from its isolation by hand",
        spec.node
    ))?;
    let changes = release(cluster, ctx.dry_run, &spec.node, BY_HAND).await?;
    Ok(report(
        ctx,
        &spec.node,
        changes,
        "not isolated by hand; nothing to release",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(v: Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    /// Applies a JSON merge patch (RFC 7386), as the apiserver does.
    fn merge(target: &mut Value, patch: &Value) {
        match (target.as_object_mut(), patch.as_object()) {
            (Some(t), Some(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
            _ => *target = patch.clone(),
        }
    }

    fn apply(n: &Value, patch: &Value) -> Value {
        let mut out = n.clone();
        merge(&mut out, patch);
        // the apiserver drops empty maps
        if out["metadata"]["annotations"] == json!({}) {
            out["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
        if out["spec"] == json!({}) {
            out.as_object_mut().unwrap().remove("spec");
        }
        out
    }

    #[test]
    fn isolate_then_release_restores_exactly() {
        let before = json!({"metadata": {"name": "n1", "resourceVersion": "1", "labels": {"zone": "a"}},
                            "spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}});
        let (p1, changes) =
            isolate_patch(&node(before.clone()), "ns/a", "a", Containment::Isolate).unwrap();
        assert_eq!(changes.len(), 3, "{changes:?}");
        let mut one = apply(&before, &p1);
        // what the node controller adds to a cordoned node
        one["spec"]["taints"].as_array_mut().unwrap().push(
            json!({"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule", "timeAdded": "2026-01-01T00:00:00Z"}),
        );
        assert_eq!(one["spec"]["unschedulable"], true);
        assert_eq!(one["spec"]["taints"][1]["key"], QUARANTINE_TAINT);
        assert_eq!(one["spec"]["taints"][1]["value"], "a");
        // a second pod on the same node only records itself
        let (p2, _) = isolate_patch(&node(one.clone()), "ns/b", "b", Containment::Isolate).unwrap();
        assert!(p2.get("spec").is_none(), "{p2}");
        let two = apply(&one, &p2);
        let (r1, c1) = release_patch(&node(two.clone()), "ns/a").unwrap();
        let three = apply(&two, &r1);
        assert!(c1.iter().any(|c| c.contains("stays")), "{c1:?}");
        assert_eq!(three["spec"]["unschedulable"], true);
        let (r2, _) = release_patch(&node(three.clone()), "ns/b").unwrap();
        let mut after = apply(&three, &r2);
        after["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(after, before);
        assert!(release_patch(&node(before), "ns/a").is_none());
    }

    #[test]
    fn someone_elses_cordon_and_label_stay() {
        let before = json!({"metadata": {"name": "n1", "resourceVersion": "1",
                                         "labels": {UNDER_INVESTIGATION: "true"}},
                            "spec": {"unschedulable": true}});
        let (p, changes) =
            isolate_patch(&node(before.clone()), "ns/a", "a", Containment::Isolate).unwrap();
        assert!(changes[0].contains("already cordoned"), "{changes:?}");
        let one = apply(&before, &p);
        assert!(requesters(&node(one.clone()), CORDONED_BY).is_empty());
        let (r, _) = release_patch(&node(one.clone()), "ns/a").unwrap();
        let mut after = apply(&one, &r);
        after["metadata"]["resourceVersion"] = json!("1");
        assert_eq!(after, before);
    }

    #[test]
    fn cordon_only_leaves_taints_and_labels() {
        let before = json!({"metadata": {"name": "n1", "resourceVersion": "1"}});
        let (p, _) =
            isolate_patch(&node(before.clone()), "ns/a", "a", Containment::Cordon).unwrap();
        assert_eq!(p["spec"], json!({"unschedulable": true}));
        assert!(p["metadata"].get("labels").is_none());
        let one = apply(&before, &p);
        assert!(isolation_problems(&node(one), "ns/a").is_none());
    }
}
