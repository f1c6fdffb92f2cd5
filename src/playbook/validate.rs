//! Validation before acting: the whole playbook is checked (YAML, actions, every `with:` against
//! its spec, templates, parameters, step references) and all problems are reported at once, each
//! with file:line:column, before the first step runs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

use super::model::{Foreach, Playbook, Step, API_VERSION, KIND};
use super::{registry, template};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A list of problems in one file, printed one per line as `FILE:LINE:COL: message`.
#[derive(Debug, Clone)]
pub struct Problems {
    pub file: String,
    pub list: Vec<Problem>,
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} has {} problem(s); nothing was run:",
            self.file,
            self.list.len()
        )?;
        for p in &self.list {
            writeln!(f, "{}:{}:{}: {}", self.file, p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

impl From<Problems> for crate::Error {
    fn from(p: Problems) -> Self {
        crate::Error::Usage(p.to_string().trim_end().to_string())
    }
}

/// Parses the YAML; a syntax or type error is reported at its position.
pub fn parse(file: &str, text: &str) -> Result<Playbook, Problems> {
    parse_yaml(file, text)
}

/// Parses a YAML file kirt reads (playbooks, serve rules) into `T`; a syntax or type error is the
/// one problem, at its position.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(file: &str, text: &str) -> Result<T, Problems> {
    serde_yaml_ng::from_str::<T>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((1, 1));
        let mut message = e.to_string();
        // serde_yaml_ng appends " at line L column C"; the prefix says it already
        if let Some(i) = message.find(" at line ") {
            message.truncate(i);
        }
        Problems {
            file: file.into(),
            list: vec![Problem {
                line,
                column,
                message,
            }],
        }
    })
}

/// Finds lines in the source text: serde_yaml_ng has no spans, so keys are located by scanning
/// the block that belongs to a step or section.
pub struct Locator<'a> {
    lines: Vec<&'a str>,
    steps: Vec<(usize, usize)>,
}

fn indent(l: &str) -> usize {
    l.len() - l.trim_start().len()
}

fn blank(l: &str) -> bool {
    let t = l.trim();
    t.is_empty() || t.starts_with('#')
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Self {
        let lines: Vec<&str> = text.lines().collect();
        let mut steps = Vec::new();
        if let Some((start, end)) = Self::section(&lines, "steps") {
            let items: Vec<usize> = (start + 1..end)
                .filter(|&i| {
                    let t = lines[i].trim_start();
                    t.starts_with("- ") || t == "-"
                })
                .collect();
            let min = items.iter().map(|&i| indent(lines[i])).min().unwrap_or(0);
            let items: Vec<usize> = items
                .into_iter()
                .filter(|&i| indent(lines[i]) == min)
                .collect();
            for (n, &i) in items.iter().enumerate() {
                steps.push((i, items.get(n + 1).copied().unwrap_or(end)));
            }
        }
        Locator { lines, steps }
    }

    /// Lines [start, end) of a top-level section `name:`.
    fn section(lines: &[&str], name: &str) -> Option<(usize, usize)> {
        let start = lines
            .iter()
            .position(|l| indent(l) == 0 && l.starts_with(&format!("{name}:")))?;
        let end = (start + 1..lines.len())
            .find(|&i| !blank(lines[i]) && indent(lines[i]) == 0)
            .unwrap_or(lines.len());
        Some((start, end))
    }

    /// 1-based (line, column) of `key:` within lines [from, to), or of `text` when `key` is None.
    fn find(
        &self,
        from: usize,
        to: usize,
        key: Option<&str>,
        text: &str,
    ) -> Option<(usize, usize)> {
        for i in from..to.min(self.lines.len()) {
            let l = self.lines[i];
            if blank(l) {
                continue;
            }
            let hit = match key {
                Some(k) => {
                    let pat = format!("{k}:");
                    l.match_indices(&pat)
                        .find(|(j, _)| {
                            *j == 0
                                || matches!(
                                    l.as_bytes()[j - 1],
                                    b' ' | b'{' | b',' | b'-' | b'"' | b'\''
                                )
                        })
                        .map(|(j, _)| j)
                }
                None => l.find(text),
            };
            if let Some(j) = hit {
                return Some((i + 1, j + 1));
            }
        }
        None
    }

    pub fn top(&self, key: &str) -> (usize, usize) {
        self.find(0, self.lines.len(), Some(key), "")
            .unwrap_or((1, 1))
    }

    pub fn param(&self, name: &str) -> (usize, usize) {
        match Self::section(&self.lines, "params") {
            Some((s, e)) => self.find(s + 1, e, Some(name), "").unwrap_or((s + 1, 1)),
            None => (1, 1),
        }
    }

    fn block(&self, step: usize) -> (usize, usize) {
        self.steps.get(step).copied().unwrap_or_else(|| {
            let l = Self::section(&self.lines, "steps")
                .map(|s| s.0)
                .unwrap_or(0);
            (l, l + 1)
        })
    }

    /// The step's first line.
    pub fn step(&self, step: usize) -> (usize, usize) {
        let (s, _) = self.block(step);
        (s + 1, indent(self.lines.get(s).unwrap_or(&"")) + 1)
    }

    pub fn step_key(&self, step: usize, key: &str) -> (usize, usize) {
        let (s, e) = self.block(step);
        self.find(s, e, Some(key), "")
            .unwrap_or_else(|| self.step(step))
    }

    /// A field inside the step's `with:` (the last path segment is searched after `with:`).
    pub fn with_field(&self, step: usize, path: &[String]) -> (usize, usize) {
        let (s, e) = self.block(step);
        let w = self
            .find(s, e, Some("with"), "")
            .map(|p| p.0 - 1)
            .unwrap_or(s);
        let mut from = w;
        for seg in path {
            match self.find(from, e, Some(seg), "") {
                Some(p) => from = p.0 - 1,
                None => return self.step_key(step, "with"),
            }
        }
        self.find(
            from,
            e,
            Some(path.last().map(String::as_str).unwrap_or("with")),
            "",
        )
        .unwrap_or_else(|| self.step_key(step, "with"))
    }

    /// Where a piece of text (a template) appears in the step.
    pub fn step_text(&self, step: usize, text: &str, fallback: &str) -> (usize, usize) {
        let (s, e) = self.block(step);
        self.find(s, e, None, text)
            .unwrap_or_else(|| self.step_key(step, fallback))
    }
}

/// What validation knows about parameter values: none (`playbook validate`) or the run's.
pub enum Params<'a> {
    Unknown,
    Given(&'a Map<String, Value>),
}

pub fn check(file: &str, text: &str, pb: &Playbook, params: Params<'_>) -> Problems {
    let mut c = Checker {
        loc: Locator::new(text),
        list: Vec::new(),
    };
    c.header(pb);
    if let Params::Given(given) = params {
        c.params(pb, given);
    }
    let env = template::env();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in pb.steps.iter().enumerate() {
        c.step_id(i, step, &seen);
        let templated = c.templates(&env, pb, i, step, &seen);
        c.action(i, step, &templated);
        seen.entry(&step.id).or_insert(i);
    }
    c.list.sort();
    c.list.dedup();
    Problems {
        file: file.into(),
        list: c.list,
    }
}

/// Collects problems, each at its place in the file.
struct Checker<'a> {
    loc: Locator<'a>,
    list: Vec<Problem>,
}

impl Checker<'_> {
    fn add(&mut self, (line, column): (usize, usize), message: String) {
        self.list.push(Problem {
            line,
            column,
            message,
        })
    }

    /// apiVersion, kind, name, and that there are steps.
    fn header(&mut self, pb: &Playbook) {
        if pb.api_version != API_VERSION {
            let at = self.loc.top("apiVersion");
            self.add(
                at,
                format!(
                    "apiVersion must be {API_VERSION:?}, not {:?}",
                    pb.api_version
                ),
            );
        }
        if pb.kind != KIND {
            let at = self.loc.top("kind");
            self.add(at, format!("kind must be {KIND:?}, not {:?}", pb.kind));
        }
        if pb.metadata.name.trim().is_empty() {
            let at = self.loc.top("metadata");
            self.add(at, "metadata.name is empty".into());
        }
        if pb.steps.is_empty() {
            let at = self.loc.top("steps");
            self.add(at, "the playbook has no steps".into());
        }
    }

    /// Required parameters given, and no parameter the playbook does not declare.
    fn params(&mut self, pb: &Playbook, given: &Map<String, Value>) {
        for (name, p) in &pb.params {
            if p.required && p.default.is_none() && given.get(name).is_none_or(Value::is_null) {
                let at = self.loc.param(name);
                self.add(
                    at,
                    format!("required parameter {name:?} was not given (-p {name}=VALUE)"),
                );
            }
        }
        for name in given.keys() {
            if !pb.params.contains_key(name) {
                let at = self.loc.top("params");
                self.add(at, format!("parameter {name:?} was given but the playbook does not declare it (declared: {})",
                    pb.params.keys().cloned().collect::<Vec<_>>().join(", ")));
            }
        }
    }

    /// A well-formed id, used once.
    fn step_id(&mut self, i: usize, step: &Step, seen: &BTreeMap<&str, usize>) {
        let at = self.loc.step_key(i, "id");
        if step.id.is_empty()
            || !step
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.add(
                at,
                format!("step id {:?} must be letters, digits, _ or -", step.id),
            );
        }
        if let Some(first) = seen.get(step.id.as_str()) {
            self.add(
                at,
                format!(
                    "duplicate step id {:?} (first used by step {})",
                    step.id,
                    first + 1
                ),
            );
        }
    }

    /// Template syntax and what templates refer to; returns the `with:` paths (up to two
    /// segments) that hold templates, whose values are checked only once rendered.
    fn templates(
        &mut self,
        env: &minijinja::Environment<'static>,
        pb: &Playbook,
        i: usize,
        step: &Step,
        seen: &BTreeMap<&str, usize>,
    ) -> BTreeSet<Vec<String>> {
        let mut templated: BTreeSet<Vec<String>> = BTreeSet::new();
        let mut exprs: Vec<(&str, Vec<String>, bool, &str)> = Vec::new();
        if let Some(w) = &step.when {
            exprs.push((w, vec![], true, "when"));
        }
        match &step.foreach {
            Some(Foreach::Expr(f)) => exprs.push((f, vec![], true, "foreach")),
            Some(Foreach::Pods { pods }) => {
                exprs.push((&pods.namespace, vec![], false, "foreach"));
                exprs.push((&pods.selector, vec![], false, "foreach"));
            }
            None => {}
        }
        let with_value = Value::Object(step.with.clone());
        let mut strs = Vec::new();
        template::strings(&with_value, &mut Vec::new(), &mut strs);
        for (path, s) in strs {
            if template::is_template(s) {
                templated.insert(path.iter().take(2).cloned().collect());
                exprs.push((s, path, false, "with"));
            }
        }
        for (s, path, expression, key) in exprs {
            match template::variables(env, s, expression) {
                Err(e) => {
                    let (at, field) = if path.is_empty() {
                        (self.loc.step_key(i, key), key.to_string())
                    } else {
                        let first = s.lines().next().unwrap_or(s);
                        (
                            self.loc.step_text(i, first, "with"),
                            format!("with.{}", path.join(".")),
                        )
                    };
                    self.add(
                        at,
                        format!("step {}: template error in {field}: {e}", step.id),
                    );
                }
                Ok(vars) => {
                    for v in vars {
                        if let Some(m) = reference_problem(&v, pb, seen, step.foreach.is_some()) {
                            let at = self.loc.step_text(i, &v, key);
                            self.add(at, format!("step {}: {m}", step.id));
                        }
                    }
                }
            }
        }
        templated
    }

    /// A known action; `with:` has only its fields, every required one, and literal values of
    /// the right type (one field at a time, so each error names its line).
    fn action(&mut self, i: usize, step: &Step, templated: &BTreeSet<Vec<String>>) {
        let Some(def) = registry::get(&step.action) else {
            let at = self.loc.step_key(i, "action");
            self.add(
                at,
                format!(
                    "step {}: unknown action {:?} (known: {})",
                    step.id,
                    step.action,
                    registry::all()
                        .iter()
                        .map(|a| a.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            return;
        };
        for f in def.spec.unknown(&step.with) {
            let path: Vec<String> = f.split('.').map(String::from).collect();
            let at = self.loc.with_field(i, &path);
            self.add(
                at,
                format!(
                    "step {}: {} has no field {f:?} (fields: {})",
                    step.id,
                    def.name,
                    def.spec
                        .fields
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        for f in def.spec.missing(&step.with) {
            let at = self.loc.step_key(i, "with");
            self.add(
                at,
                format!("step {}: {} needs `{f}` in `with`", step.id, def.name),
            );
        }
        for (k, v) in &step.with {
            if templated.contains(&vec![k.clone()]) || def.spec.unknown(&single(k, v)).contains(k) {
                continue;
            }
            let mut one = single(k, v);
            if let Value::Object(group) = v {
                let mut g = group.clone();
                g.retain(|sub, _| !templated.contains(&vec![k.clone(), sub.clone()]));
                one.insert(k.clone(), Value::Object(g));
            }
            def.spec.prepare(&mut one);
            if let Err(e) = (def.check)(Value::Object(one)) {
                let at = self.loc.with_field(i, std::slice::from_ref(k));
                self.add(at, format!("step {}: with.{k}: {e}", step.id));
            }
        }
    }
}

/// With the run's values known: renders the `with:` of every step that depends only on params,
/// env and run (not on earlier steps' outputs or `item`) and checks it against the spec, so that a
/// bad value (`-p to_revision=abc`) stops the run before the first step instead of in the middle.
pub fn check_rendered(file: &str, text: &str, pb: &Playbook, data: &Value) -> Problems {
    let loc = Locator::new(text);
    let env = template::env();
    let mut list = Vec::new();
    for (i, step) in pb.steps.iter().enumerate() {
        let Some(def) = registry::get(&step.action) else {
            continue;
        };
        let with = Value::Object(step.with.clone());
        let mut strs = Vec::new();
        template::strings(&with, &mut Vec::new(), &mut strs);
        let later = strs.iter().any(|(_, s)| {
            template::is_template(s)
                && template::variables(&env, s, false)
                    .map(|vs| {
                        vs.iter()
                            .any(|v| v.starts_with("steps") || v.starts_with("item"))
                    })
                    .unwrap_or(true)
        });
        if later {
            continue;
        }
        let mut at = |m: String| {
            let (line, column) = loc.step_key(i, "with");
            list.push(Problem {
                line,
                column,
                message: format!("step {}: {m}", step.id),
            })
        };
        match template::render(&env, &with, data) {
            Err(e) => at(e),
            Ok(Value::Object(mut w)) => {
                let missing = def.spec.missing(&w);
                if !missing.is_empty() {
                    at(format!(
                        "{} needs {} (the parameters give it no value)",
                        def.name,
                        missing.join(", ")
                    ));
                    continue;
                }
                def.spec.prepare(&mut w);
                if let Err(e) = (def.check)(Value::Object(w)) {
                    at(format!("with the given parameters, `with` is invalid: {e}"));
                }
            }
            Ok(_) => {}
        }
    }
    Problems {
        file: file.into(),
        list,
    }
}

fn single(k: &str, v: &Value) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(k.to_string(), v.clone());
    m
}

/// Whether a variable a template reads exists: declared params and env, earlier steps' outputs,
/// `run`, and `item` inside foreach.
fn reference_problem(
    var: &str,
    pb: &Playbook,
    earlier: &BTreeMap<&str, usize>,
    foreach: bool,
) -> Option<String> {
    let parts: Vec<&str> = var.split('.').collect();
    match parts[0] {
        "params" => match parts.get(1) {
            Some(p) if !pb.params.contains_key(*p) => Some(format!(
                "parameter {p:?} is not declared under `params:`")),
            _ => None,
        },
        "env" => match parts.get(1) {
            Some(v) if !pb.env.iter().any(|e| e == v) => Some(format!(
                "environment variable {v:?} is not declared under `env:` (only declared variables are visible)")),
            _ => None,
        },
        "steps" => match parts.get(1) {
            Some(s) if !earlier.contains_key(*s) => Some(if pb.steps.iter().any(|x| x.id == *s) {
                format!("steps.{s} refers to a step that runs later")
            } else {
                format!("steps.{s} refers to an unknown step id")
            }),
            Some(s) if parts.get(2).is_some_and(|p| *p != "outputs" && *p != "status") => Some(format!(
                "steps.{s}.{} is not a step property (use steps.{s}.outputs.FIELD)", parts[2])),
            _ => None,
        },
        "run" => None,
        "item" if foreach => None,
        "item" => Some("`item` is only defined in a step with `foreach`".into()),
        other => Some(format!("unknown variable {other:?} (use params., steps.ID.outputs., env., run.)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PB: &str = r#"apiVersion: kirt.dev/v1
kind: Playbook
metadata: {name: t}
params:
  ns: {required: true}
steps:
  - id: a
    action: exec
    with:
      argv: ["true", "{{ params.nope }}"]
  - id: b
    action: no.such
  - id: c
    action: backup.verify
    with:
      from: "{{ steps.zz.outputs.x }}"
      bogus: 1
  - id: a
    action: exec
    with: {argv: ["x"], timeout: "{{ params.ns "}
"#;

    #[test]
    fn all_problems_with_lines() {
        let pb = parse("t.yaml", PB).unwrap();
        let p = check("t.yaml", PB, &pb, Params::Given(&Map::new()));
        let got: Vec<(usize, &str)> = p
            .list
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        let has = |line: usize, s: &str| got.iter().any(|(l, m)| *l == line && m.contains(s));
        assert!(has(5, "required parameter \"ns\""), "{p}");
        assert!(has(10, "\"nope\" is not declared"), "{p}");
        assert!(has(12, "unknown action \"no.such\""), "{p}");
        assert!(has(16, "unknown step id"), "{p}");
        assert!(has(17, "no field \"bogus\""), "{p}");
        assert!(has(18, "duplicate step id"), "{p}");
        assert!(has(20, "template error"), "{p}");
    }

    #[test]
    fn parse_errors_carry_the_position() {
        let text = "apiVersion: kirt.dev/v1\nkind: Playbook\nmetadata: {name: t}\nsteps:\n  - id: a\n    action: exec\n    retries: many\n";
        let p = parse("t.yaml", text).unwrap_err();
        assert_eq!(p.list[0].line, 7, "{p}");
    }
}
