//! The rules file of `kirt serve`: which Falco events start which playbook, with which
//! parameters, and the limits around them. Validated completely before the server starts (every
//! problem at once, `FILE:LINE:COL`, exit 2), as playbooks are.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::event::{Event, Priority};
use crate::playbook::validate::{self, Params, Problem, Problems};
use crate::playbook::{registry, resolve, template};

pub const KIND: &str = "ServeRules";

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Always "kirt.dev/v1"
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always "ServeRules"
    pub kind: String,
    /// Namespaces kirt may act in (globs: `shop`, `team-*`, `*`); `kube-system` only when listed
    /// by name
    pub allow_namespaces: Vec<String>,
    /// How many runs may start: a token bucket shared by all rules
    #[serde(default)]
    pub rate_limit: RateLimit,
    /// Default for each rule's `cooldown`
    #[serde(default = "default_cooldown", with = "crate::units::duration_serde")]
    #[schemars(with = "String")]
    pub cooldown: Duration,
    /// Tried in order; the first that matches an event decides
    pub rules: Vec<Rule>,
}

fn default_cooldown() -> Duration {
    Duration::from_secs(600)
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Runs that may start at once
    pub burst: u32,
    /// Runs regained per minute
    pub per_minute: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 10,
            per_minute: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Unique; journaled with every decision it makes
    pub name: String,
    #[serde(rename = "match")]
    pub matches: Match,
    /// A playbook file or a shipped playbook's name
    pub playbook: String,
    /// The playbook's parameters: minijinja templates over `event` (rule, priority, time,
    /// hostname, source, tags, output_fields, namespace, pod); the values are data, never code
    #[serde(default)]
    pub params: Map<String, Value>,
    /// Run the playbook as `--dry-run` (changes nothing)
    #[serde(default)]
    pub dry_run: bool,
    /// `never`: the playbook may change the cluster without anyone confirming. Required for a
    /// rule whose playbook mutates, unless it is a dry run
    #[serde(default)]
    pub confirm: Option<Confirm>,
    /// Another event of this rule for the same pod within this window starts no run
    #[serde(default, with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub cooldown: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Confirm {
    Never,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Match {
    /// Falco rule names (exact, or globs with `*` and `?`); empty: any
    pub rule: OneOrMany,
    /// Minimum Falco priority (emergency … debug)
    pub priority: Option<Priority>,
    /// Tags the event must all carry
    pub tags: Vec<String>,
    /// Namespace globs; empty: any
    pub namespaces: OneOrMany,
    /// Pod name globs; empty: any
    pub pods: OneOrMany,
    /// output_fields values (globs) the event must have, e.g. `proc.name: [bash, sh]`
    pub fields: BTreeMap<String, OneOrMany>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> &[String] {
        match self {
            OneOrMany::None => &[],
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }

    /// True when empty (no constraint) or one of the globs matches.
    fn admits(&self, value: Option<&str>) -> bool {
        let l = self.list();
        l.is_empty() || value.is_some_and(|v| l.iter().any(|g| glob(g, v)))
    }
}

/// `*` (any run of characters) and `?` (one character); everything else literal.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl Match {
    pub fn admits(&self, e: &Event) -> bool {
        self.rule.admits(Some(&e.rule))
            && self.priority.is_none_or(|min| e.priority >= min)
            && self.tags.iter().all(|t| e.tags.contains(t))
            && self.namespaces.admits(e.namespace())
            && self.pods.admits(e.pod())
            && self
                .fields
                .iter()
                .all(|(k, want)| want.admits(e.field(k).as_deref()))
    }
}

/// The validated rules, ready to serve.
#[derive(Debug, Clone)]
pub struct Rules {
    pub file: RulesFile,
    /// Each rule's playbook, resolved once at start (its digest is what runs).
    pub playbooks: Vec<crate::playbook::Source>,
}

impl Rules {
    /// The first rule that matches.
    pub fn find(&self, e: &Event) -> Option<usize> {
        self.file.rules.iter().position(|r| r.matches.admits(e))
    }

    /// Whether kirt may act in `ns`: a listed glob matches, and `kube-system` only by name.
    pub fn allowed(&self, ns: &str) -> bool {
        let l = &self.file.allow_namespaces;
        if ns == "kube-system" {
            return l.iter().any(|g| g == ns);
        }
        l.iter().any(|g| glob(g, ns))
    }

    pub fn cooldown(&self, rule: usize) -> Duration {
        self.file.rules[rule].cooldown.unwrap_or(self.file.cooldown)
    }
}

/// Reads and checks the rules file: every problem, each at its line. `dry_run` is `--dry-run`
/// (then no rule needs `confirm: never`).
pub fn load(path: &str, dry_run: bool) -> crate::Result<Rules> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Error::usage(format!("cannot read the rules file {path}: {e}")))?;
    Ok(check(path, &text, dry_run)?)
}

pub fn check(path: &str, text: &str, dry_run: bool) -> Result<Rules, Problems> {
    let file: RulesFile = validate::parse_yaml(path, text)?;
    let mut list = Vec::new();
    let mut at = |pos: (usize, usize), message: String| {
        list.push(Problem {
            line: pos.0,
            column: pos.1,
            message,
        })
    };
    let locate = |key: &str, value: Option<&str>| locate(text, key, value);
    if file.api_version != crate::playbook::model::API_VERSION {
        at(
            locate("apiVersion", None),
            format!("apiVersion must be {}", crate::playbook::model::API_VERSION),
        );
    }
    if file.kind != KIND {
        at(locate("kind", None), format!("kind must be {KIND}"));
    }
    if file.allow_namespaces.is_empty() {
        at(
            locate("allow_namespaces", None),
            "allow_namespaces is empty: kirt could act nowhere".into(),
        );
    }
    if file.rate_limit.burst == 0 {
        at(
            locate("burst", None),
            "rate_limit.burst must be at least 1".into(),
        );
    }
    if file.rules.is_empty() {
        at(locate("rules", None), "no rules".into());
    }
    let env = template::env();
    let mut playbooks = Vec::new();
    for (i, rule) in file.rules.iter().enumerate() {
        let here = locate("name", Some(&rule.name));
        if file.rules[..i].iter().any(|r| r.name == rule.name) {
            at(here, format!("duplicate rule name {:?}", rule.name));
        }
        let pb = match resolve(&rule.playbook) {
            Ok(src) => {
                let parsed = validate::parse(&src.file, &src.text);
                let pb = match parsed {
                    Ok(pb)
                        if validate::check(&src.file, &src.text, &pb, Params::Unknown)
                            .list
                            .is_empty() =>
                    {
                        Some(pb)
                    }
                    _ => {
                        at(
                            here,
                            format!(
                                "rule {}: playbook {} is not valid (run `kirt playbook validate {}`)",
                                rule.name, rule.playbook, src.file
                            ),
                        );
                        None
                    }
                };
                playbooks.push(src);
                pb
            }
            Err(e) => {
                at(here, format!("rule {}: {e}", rule.name));
                None
            }
        };
        for (k, v) in &rule.params {
            let mut strings = Vec::new();
            template::strings(v, &mut vec![k.clone()], &mut strings);
            for (_, s) in strings {
                match template::variables(&env, s, false) {
                    Err(e) => at(
                        locate(k, None),
                        format!("rule {}: params.{k}: {e}", rule.name),
                    ),
                    Ok(vars) => {
                        for v in vars.iter().filter(|v| v.split('.').next() != Some("event")) {
                            at(
                                locate(k, None),
                                format!(
                                    "rule {}: params.{k} reads {v}: templates may read only `event`",
                                    rule.name
                                ),
                            );
                        }
                    }
                }
            }
        }
        let Some(pb) = pb else { continue };
        for k in rule.params.keys() {
            if !pb.params.contains_key(k) {
                at(
                    locate(k, None),
                    format!(
                        "rule {}: playbook {} has no parameter {k}",
                        rule.name, pb.metadata.name
                    ),
                );
            }
        }
        for (k, p) in &pb.params {
            if p.required && !rule.params.contains_key(k) {
                at(
                    here,
                    format!(
                        "rule {}: playbook {} requires the parameter {k}",
                        rule.name, pb.metadata.name
                    ),
                );
            }
        }
        let mutating = pb
            .steps
            .iter()
            .find(|s| s.confirm || registry::get(&s.action).is_some_and(|a| a.mutation.is_some()));
        if let Some(step) = mutating {
            if !(dry_run || rule.dry_run || rule.confirm == Some(Confirm::Never)) {
                at(
                    here,
                    format!(
                        "rule {}: playbook {} changes the cluster (step {}: {}) and nobody is there to confirm it; \
                         add `confirm: never` to let it act unattended, or `dry_run: true`",
                        rule.name, pb.metadata.name, step.id, step.action
                    ),
                );
            }
        }
    }
    if list.is_empty() {
        Ok(Rules { file, playbooks })
    } else {
        list.sort();
        Err(Problems {
            file: path.into(),
            list,
        })
    }
}

/// 1-based position of `key:` (followed by `value` when given) in the text; (1, 1) if absent.
fn locate(text: &str, key: &str, value: Option<&str>) -> (usize, usize) {
    let pat = format!("{key}:");
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start().trim_start_matches("- ");
        let Some(rest) = t.strip_prefix(&pat) else {
            continue;
        };
        let v = rest.trim().trim_matches(|c| c == '"' || c == '\'');
        if value.is_none_or(|want| v == want) {
            return (i + 1, l.len() - t.len() + 1);
        }
    }
    (1, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"apiVersion: kirt.dev/v1
kind: ServeRules
allow_namespaces: ["shop-*", default]
rules:
  - name: shell
    match: {rule: "Terminal shell*", priority: notice, tags: [container]}
    playbook: isolate-compromised-pod
    params:
      namespace: "{{ event.namespace }}"
      pod: "{{ event.pod }}"
    confirm: never
"#;

    #[test]
    fn globs() {
        assert!(glob("Terminal shell*", "Terminal shell in container"));
        assert!(glob("a?c", "abc") && !glob("a?c", "abbc"));
        assert!(glob("*", "") && glob("*-x-*", "a-x-b") && !glob("shop", "shop2"));
    }

    #[test]
    fn a_good_file_loads_and_kube_system_needs_its_name() {
        let r = check("r.yaml", GOOD, false).unwrap();
        assert!(r.allowed("shop-1") && r.allowed("default") && !r.allowed("kube-system"));
        let star = GOOD.replace(r#"["shop-*", default]"#, r#"["*"]"#);
        let r = check("r.yaml", &star, false).unwrap();
        assert!(r.allowed("anything") && !r.allowed("kube-system"));
    }

    #[test]
    fn every_problem_is_reported_at_its_line() {
        let bad = GOOD
            .replace("    confirm: never\n", "")
            .replace("event.pod", "env.HOME")
            .replace("      namespace:", "      nope: x\n      namespace:");
        let p = check("r.yaml", &bad, false).unwrap_err();
        let text = p.to_string();
        assert!(
            text.contains(
                "r.yaml:5:5: rule shell: playbook isolate-compromised-pod changes the cluster"
            ),
            "{text}"
        );
        assert!(text.contains("reads env.HOME"), "{text}");
        assert!(
            text.contains(
                ":9:7: rule shell: playbook isolate-compromised-pod has no parameter nope"
            ),
            "{text}"
        );
        // a dry run needs no confirm: never
        let dry = GOOD.replace("    confirm: never\n", "    dry_run: true\n");
        assert!(check("r.yaml", &dry, false).is_ok());
        assert!(check("r.yaml", &GOOD.replace("    confirm: never\n", ""), true).is_ok());
        let typo = check(
            "r.yaml",
            &GOOD.replace("confirm: never", "confirm: nevr"),
            false,
        );
        assert!(typo.unwrap_err().to_string().contains("r.yaml:11:"));
    }
}
