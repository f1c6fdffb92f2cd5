//! The steering knobs: pod annotations (and image tags) that tell the simulated kubelet how a pod's
//! containers should look. Both the status writer and the log server read them from here, so a
//! container that the status calls crash-looping also has previous logs to serve.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, Pod};

pub const NEVER_READY: &str = "lab.kirt.dev/never-ready";
pub const CRASHLOOP: &str = "lab.kirt.dev/crashloop";
pub const RESTARTS: &str = "lab.kirt.dev/restarts";
pub const READY_AFTER: &str = "lab.kirt.dev/ready-after";
pub const LOG_LINES: &str = "lab.kirt.dev/log-lines";
pub const LOG_BYTES: &str = "lab.kirt.dev/log-bytes";
pub const CHECKPOINT: &str = "lab.kirt.dev/checkpoint";

/// Restart count of a crash-looping container when `lab.kirt.dev/restarts` is not set.
const DEFAULT_CRASHLOOP_RESTARTS: u32 = 3;
const DEFAULT_LOG_LINES: u64 = 20;

/// A set of container names chosen by an annotation: `"true"` means every container.
#[derive(Debug, Default)]
enum Selection {
    #[default]
    Nothing,
    All,
    Names(HashSet<String>),
}

impl Selection {
    fn parse(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None | Some("") | Some("false") => Selection::Nothing,
            Some("true") => Selection::All,
            Some(list) => Selection::Names(
                list.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect(),
            ),
        }
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            Selection::Nothing => false,
            Selection::All => true,
            Selection::Names(names) => names.contains(name),
        }
    }
}

/// Where a container's log ends: after a number of lines, or after exactly this many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSize {
    Lines(u64),
    Bytes(u64),
}

/// The knobs of one pod, parsed once from its annotations.
#[derive(Debug, Default)]
pub struct Knobs {
    never_ready: Selection,
    crashloop: Selection,
    restarts: Option<u32>,
    /// Seconds after the pod started before its containers may be ready.
    pub ready_after: Option<u64>,
    log_lines: Option<u64>,
    log_bytes: Option<u64>,
    pub checkpoint_unsupported: bool,
}

/// What a container is doing, as the status and the log server both see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    CrashLoop,
    /// The image tag contains `broken`: the container never started.
    PullBackOff,
}

#[derive(Debug, Clone, Copy)]
pub struct ContainerPlan {
    pub phase: Phase,
    pub restarts: u32,
    /// Ready unless a knob says otherwise; `ready-after` is applied by the caller, which knows the time.
    pub ready: bool,
}

impl Knobs {
    pub fn from_pod(pod: &Pod) -> Self {
        let ann = pod.metadata.annotations.as_ref();
        let get = |key: &str| ann.and_then(|a| a.get(key)).map(String::as_str);
        let num = |key: &str| get(key).and_then(|v| v.trim().parse::<u64>().ok());
        Knobs {
            never_ready: Selection::parse(get(NEVER_READY)),
            crashloop: Selection::parse(get(CRASHLOOP)),
            restarts: num(RESTARTS).map(|n| n.min(u32::MAX as u64) as u32),
            ready_after: num(READY_AFTER),
            log_lines: num(LOG_LINES),
            log_bytes: num(LOG_BYTES),
            checkpoint_unsupported: get(CHECKPOINT).map(str::trim) == Some("unsupported"),
        }
    }

    pub fn plan(&self, container: &Container) -> ContainerPlan {
        let name = container.name.as_str();
        if image_is_broken(container.image.as_deref()) {
            return ContainerPlan {
                phase: Phase::PullBackOff,
                restarts: 0,
                ready: false,
            };
        }
        if self.crashloop.contains(name) {
            // A crash loop always has a previous instance, so at least one restart.
            let restarts = self.restarts.unwrap_or(DEFAULT_CRASHLOOP_RESTARTS).max(1);
            return ContainerPlan {
                phase: Phase::CrashLoop,
                restarts,
                ready: false,
            };
        }
        ContainerPlan {
            phase: Phase::Running,
            restarts: self.restarts.unwrap_or(0),
            ready: !self.never_ready.contains(name),
        }
    }

    pub fn log_size(&self) -> LogSize {
        match self.log_bytes {
            Some(bytes) => LogSize::Bytes(bytes),
            None => LogSize::Lines(self.log_lines.unwrap_or(DEFAULT_LOG_LINES)),
        }
    }
}

/// `nginx:broken`, `reg/app:1.2-broken`: the tag (not the registry host's port) contains `broken`.
pub fn image_is_broken(image: Option<&str>) -> bool {
    let Some(image) = image else { return false };
    let last = image.rsplit('/').next().unwrap_or(image);
    let without_digest = last.split('@').next().unwrap_or(last);
    without_digest
        .split_once(':')
        .is_some_and(|(_, tag)| tag.contains("broken"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_images() {
        assert!(image_is_broken(Some("nginx:broken")));
        assert!(image_is_broken(Some("registry:5000/team/app:1.2-broken")));
        assert!(!image_is_broken(Some("broken/app:1.0")));
        assert!(!image_is_broken(Some("registry-broken:5000/app")));
        assert!(!image_is_broken(Some("nginx")));
        assert!(!image_is_broken(None));
    }
}
