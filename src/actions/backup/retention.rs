//! restic-style retention: keep-last, then the newest backup of each of the last N days, ISO
//! weeks and months that have backups. A backup may be kept for several reasons. Pure logic.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema, PartialEq,
)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct KeepPolicy {
    /// Keep the N most recent backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest backup of each of the last N days that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest backup of each of the last N ISO weeks that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest backup of each of the last N months that have backups
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: usize,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0
    }
}

/// Decides, for backups given with their times, which to keep and why.
/// Returns one entry per input, in the input's order: the reasons (empty = remove).
pub fn apply(policy: &KeepPolicy, times: &[jiff::Timestamp]) -> Vec<Vec<String>> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a])); // newest first
    let mut reasons = vec![Vec::new(); times.len()];
    type Bucket = fn(jiff::Timestamp) -> String;
    let rules: [(&str, usize, Bucket); 3] = [
        ("daily", policy.keep_daily, |t| {
            t.strftime("%Y-%m-%d").to_string()
        }),
        ("weekly", policy.keep_weekly, |t| {
            let d = t.to_zoned(jiff::tz::TimeZone::UTC).date();
            let w = d.iso_week_date();
            format!("{}-W{:02}", w.year(), w.week())
        }),
        ("monthly", policy.keep_monthly, |t| {
            t.strftime("%Y-%m").to_string()
        }),
    ];
    let mut last: [Option<String>; 3] = [None, None, None];
    let mut count = [0usize; 3];
    for (rank, &i) in order.iter().enumerate() {
        if rank < policy.keep_last {
            reasons[i].push("last".to_string());
        }
        for (r, (name, n, bucket)) in rules.iter().enumerate() {
            if count[r] >= *n {
                continue;
            }
            let b = bucket(times[i]);
            if last[r].as_deref() != Some(b.as_str()) {
                reasons[i].push(format!("{name} {b}"));
                last[r] = Some(b);
                count[r] += 1;
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn kept(policy: &KeepPolicy, times: &[jiff::Timestamp]) -> Vec<usize> {
        apply(policy, times)
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn keep_last_keeps_newest_n() {
        let times = [
            t("2026-01-01T00:00:00Z"),
            t("2026-01-03T00:00:00Z"),
            t("2026-01-02T00:00:00Z"),
        ];
        let p = KeepPolicy {
            keep_last: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [1, 2]);
    }

    #[test]
    fn daily_keeps_newest_of_each_day() {
        // two backups per day on three days
        let times = [
            t("2026-03-01T01:00:00Z"),
            t("2026-03-01T23:00:00Z"),
            t("2026-03-02T01:00:00Z"),
            t("2026-03-02T23:00:00Z"),
            t("2026-03-03T01:00:00Z"),
            t("2026-03-03T23:00:00Z"),
        ];
        let p = KeepPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [3, 5]);
        let r = apply(&p, &times);
        assert_eq!(r[5], ["daily 2026-03-03"]);
    }

    #[test]
    fn days_without_backups_do_not_count() {
        let times = [t("2026-03-01T12:00:00Z"), t("2026-03-10T12:00:00Z")];
        let p = KeepPolicy {
            keep_daily: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [0, 1]);
    }

    #[test]
    fn weekly_uses_iso_weeks_and_monthly_months() {
        // 2026-01-04 is a Sunday (ISO week 1 of 2026), 2026-01-05 a Monday (week 2)
        let times = [
            t("2026-01-04T10:00:00Z"),
            t("2026-01-05T10:00:00Z"),
            t("2026-01-06T10:00:00Z"),
            t("2026-02-01T10:00:00Z"),
        ];
        let p = KeepPolicy {
            keep_weekly: 2,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [2, 3]);
        let p = KeepPolicy {
            keep_weekly: 3,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [0, 2, 3]);
        let p = KeepPolicy {
            keep_monthly: 5,
            ..Default::default()
        };
        assert_eq!(kept(&p, &times), [2, 3]);
    }

    #[test]
    fn reasons_combine_and_empty_policy_keeps_nothing() {
        let times = [t("2026-05-01T10:00:00Z"), t("2026-05-02T10:00:00Z")];
        let p = KeepPolicy {
            keep_last: 1,
            keep_daily: 1,
            keep_monthly: 1,
            ..Default::default()
        };
        let r = apply(&p, &times);
        assert_eq!(r[1], ["last", "daily 2026-05-02", "monthly 2026-05"]);
        assert!(r[0].is_empty());
        assert!(kept(&KeepPolicy::default(), &times).is_empty());
    }
}
