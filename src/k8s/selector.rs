//! Label selectors, with the API's semantics: `matchLabels` AND every `matchExpression`, and an
//! empty selector matches everything (a NetworkPolicy's `podSelector: {}` selects every pod).
//! Callers for which "everything" makes no sense (a controller's selector) check `is_empty`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

pub type Labels = BTreeMap<String, String>;

/// Whether a label selector matches a label set. An unknown operator matches nothing.
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    labels_ok
        && sel
            .match_expressions
            .iter()
            .flatten()
            .all(|r| requirement_matches(r, labels))
}

fn requirement_matches(r: &LabelSelectorRequirement, labels: &Labels) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let value = labels.get(&r.key);
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.contains(v)),
        "NotIn" => value.is_none_or(|v| !values.contains(v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

/// A selector without any requirement.
pub fn is_empty(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// A Service-style selector (a plain map): matches when non-empty and a subset of the labels.
pub fn map_selects(sel: Option<&Labels>, labels: &Labels) -> bool {
    match sel {
        Some(s) if !s.is_empty() => s.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// "app=web, tier In (a,b)", or `empty` for an empty selector.
pub fn describe(sel: &LabelSelector, empty: &str) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for r in sel.match_expressions.iter().flatten() {
        let values = r.values.as_deref().unwrap_or_default().join(",");
        parts.push(match r.operator.as_str() {
            "Exists" => r.key.clone(),
            "DoesNotExist" => format!("!{}", r.key),
            op => format!("{} {op} ({values})", r.key),
        });
    }
    if parts.is_empty() {
        empty.to_string()
    } else {
        parts.join(", ")
    }
}

/// Parses a kubectl-style label selector string (`app=web,tier!=db,env in (a,b),!legacy,debug`).
pub fn parse(s: &str) -> Result<LabelSelector, String> {
    let mut sel = LabelSelector::default();
    let mut depth = 0;
    let mut parts = Vec::new();
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    let bad = |p: &str| format!("invalid label selector term {p:?} in {s:?}");
    for part in parts.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
        let req = |key: &str, op: &str, values: Option<Vec<String>>| LabelSelectorRequirement {
            key: key.trim().to_string(),
            operator: op.into(),
            values,
        };
        let exprs = sel.match_expressions.get_or_insert_with(Vec::new);
        if let Some((k, v)) = part.split_once("!=") {
            exprs.push(req(k, "NotIn", Some(vec![v.trim().to_string()])));
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            sel.match_labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some(k) = part.strip_prefix('!') {
            exprs.push(req(k, "DoesNotExist", None));
        } else if let Some(open) = part.find('(') {
            let head: Vec<&str> = part[..open].split_whitespace().collect();
            let inner = part[open + 1..]
                .strip_suffix(')')
                .ok_or_else(|| bad(part))?;
            let values = inner.split(',').map(|v| v.trim().to_string()).collect();
            match head.as_slice() {
                [k, "in"] => exprs.push(req(k, "In", Some(values))),
                [k, "notin"] => exprs.push(req(k, "NotIn", Some(values))),
                _ => return Err(bad(part)),
            }
        } else if part.split_whitespace().count() == 1 {
            exprs.push(req(part, "Exists", None));
        } else {
            return Err(bad(part));
        }
    }
    if sel.match_expressions.as_ref().is_some_and(Vec::is_empty) {
        sel.match_expressions = None;
    }
    Ok(sel)
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

    fn s(yaml: &str) -> LabelSelector {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let s = |y: &str| -> LabelSelector { serde_yaml_ng::from_str(y).unwrap() };
        assert!(matches(&s("{}"), &l));
        assert!(matches(&s("matchLabels: {app: web}"), &l));
        assert!(!matches(&s("matchLabels: {app: db}"), &l));
        assert!(matches(
            &s("matchExpressions: [{key: tier, operator: In, values: [front, back]}]"),
            &l
        ));
        assert!(!matches(
            &s("matchExpressions: [{key: tier, operator: NotIn, values: [front]}]"),
            &l
        ));
        assert!(matches(
            &s("matchExpressions: [{key: zone, operator: NotIn, values: [a]}]"),
            &l
        ));
        assert!(matches(
            &s("matchExpressions: [{key: app, operator: Exists}]"),
            &l
        ));
        assert!(!matches(
            &s("matchExpressions: [{key: app, operator: DoesNotExist}]"),
            &l
        ));
        assert!(!matches(
            &s("matchExpressions: [{key: app, operator: Bogus}]"),
            &l
        ));
        // matchLabels AND expressions
        assert!(!matches(
            &s("{matchLabels: {app: web}, matchExpressions: [{key: tier, operator: DoesNotExist}]}"),
            &l
        ));
    }

    #[test]
    fn empty_and_map_selectors() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(is_empty(&s("{}")));
        assert!(!is_empty(&s("matchLabels: {app: web}")));
        assert!(map_selects(Some(&labels(&[("app", "web")])), &l));
        assert!(!map_selects(Some(&labels(&[("app", "db")])), &l));
        assert!(!map_selects(Some(&Labels::new()), &l));
        assert!(!map_selects(None, &l));
    }

    #[test]
    fn parses_selector_strings() {
        let sel = parse("app=web, tier!=db,env in (a, b),!legacy,debug,x==y").unwrap();
        assert_eq!(
            describe(&sel, ""),
            "app=web, x=y, tier NotIn (db), env In (a,b), !legacy, debug"
        );
        let l = labels(&[("app", "web"), ("x", "y"), ("env", "b"), ("debug", "")]);
        assert!(matches(&sel, &l));
        assert!(parse("a b c").is_err());
        assert!(parse("k weird (a)").is_err());
        assert_eq!(parse("").unwrap(), LabelSelector::default());
    }
}
