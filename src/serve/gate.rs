//! What stands between a matched event and a run: the namespace allow-list, the cooldown per
//! (rule, pod) and the global token bucket. Pure logic over a clock the caller passes in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rules::Rules;

/// What `kirt serve` did with an event (the serve journal's `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// A run was started (a dry run when the rule or `--dry-run` says so).
    Started,
    DryRun,
    NoMatch,
    Deduplicated,
    RateLimited,
    NamespaceNotAllowed,
    /// The run could not be started (its parameters did not render).
    Failed,
}

/// Most (rule, pod) pairs remembered; beyond that, expired ones are dropped, and if none has
/// expired the event is rate-limited (a flood of distinct pods cannot grow memory).
const MAX_REMEMBERED: usize = 100_000;

pub struct Gate {
    tokens: f64,
    burst: f64,
    per_second: f64,
    refilled: Instant,
    last: HashMap<(usize, String, String), Instant>,
}

impl Gate {
    pub fn new(rules: &Rules, now: Instant) -> Gate {
        let rl = &rules.file.rate_limit;
        Gate {
            tokens: rl.burst as f64,
            burst: rl.burst as f64,
            per_second: rl.per_minute as f64 / 60.0,
            refilled: now,
            last: HashMap::new(),
        }
    }

    /// The decision for an event that matched `rule`, for pod `ns`/`pod` (None: the event named
    /// no pod). Started means a run may start now (and the cooldown begins).
    pub fn decide(
        &mut self,
        rules: &Rules,
        rule: usize,
        target: Option<(&str, &str)>,
        now: Instant,
    ) -> Decision {
        let Some((ns, pod)) = target.filter(|(ns, _)| rules.allowed(ns)) else {
            return Decision::NamespaceNotAllowed;
        };
        let cooldown = rules.cooldown(rule);
        let key = (rule, ns.to_string(), pod.to_string());
        if self
            .last
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < cooldown)
        {
            return Decision::Deduplicated;
        }
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.refilled = now;
        if self.tokens < 1.0 {
            return Decision::RateLimited;
        }
        if self.last.len() >= MAX_REMEMBERED {
            let longest = rules
                .file
                .rules
                .iter()
                .enumerate()
                .map(|(i, _)| rules.cooldown(i))
                .max()
                .unwrap_or(Duration::ZERO);
            self.last.retain(|_, t| now.duration_since(*t) < longest);
            if self.last.len() >= MAX_REMEMBERED {
                return Decision::RateLimited;
            }
        }
        self.tokens -= 1.0;
        self.last.insert(key, now);
        Decision::Started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(extra: &str) -> Rules {
        let text = format!(
            "apiVersion: kirt.dev/v1\nkind: ServeRules\nallow_namespaces: [shop]\n{extra}rules:\n  - name: r\n    match: {{}}\n    playbook: isolate-compromised-pod\n    params: {{namespace: x, pod: y}}\n    dry_run: true\n"
        );
        super::super::rules::check("r.yaml", &text, false).unwrap()
    }

    #[test]
    fn cooldown_per_pod_and_token_bucket() {
        let r = rules("rate_limit: {burst: 2, per_minute: 60}\ncooldown: 10s\n");
        let t0 = Instant::now();
        let mut g = Gate::new(&r, t0);
        let d = |g: &mut Gate, pod: &str, at: u64| {
            g.decide(&r, 0, Some(("shop", pod)), t0 + Duration::from_secs(at))
        };
        assert_eq!(d(&mut g, "a", 0), Decision::Started);
        assert_eq!(d(&mut g, "a", 0), Decision::Deduplicated);
        assert_eq!(d(&mut g, "b", 0), Decision::Started);
        assert_eq!(d(&mut g, "c", 0), Decision::RateLimited);
        // one token back per second
        assert_eq!(d(&mut g, "c", 1), Decision::Started);
        assert_eq!(d(&mut g, "a", 9), Decision::Deduplicated);
        assert_eq!(d(&mut g, "a", 10), Decision::Started);
        assert_eq!(
            g.decide(&r, 0, Some(("kube-system", "x")), t0),
            Decision::NamespaceNotAllowed
        );
        assert_eq!(g.decide(&r, 0, None, t0), Decision::NamespaceNotAllowed);
    }
}
