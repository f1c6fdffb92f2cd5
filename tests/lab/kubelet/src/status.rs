//! Computes the status a real kubelet would report for a pod on one of our nodes, from the pod's
//! spec and steering knobs. Pure (the caller passes the time and the pod IP) so that recomputing it
//! for an unchanged pod gives the same status, and the controller writes only real changes.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use sha2::{Digest, Sha256};

use crate::knobs::{image_is_broken, Knobs, Phase};

pub const HOST_IP: &str = "127.0.0.1";

/// The status to write, and when to look again (for `ready-after`).
pub struct Desired {
    pub status: PodStatus,
    pub recheck_in: Option<Duration>,
}

/// Whole seconds: the apiserver stores `Time` with second precision, so finer times would never
/// compare equal after a round trip and every pass would write again.
pub fn now_seconds() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).expect("now is in range")
}

pub fn desired_status(pod: &Pod, pod_ip: Ipv4Addr, now: Timestamp) -> Desired {
    let spec = pod.spec.as_ref().cloned().unwrap_or_default();
    let existing = pod.status.as_ref().cloned().unwrap_or_default();
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let knobs = Knobs::from_pod(pod);

    let start = existing.start_time.as_ref().map(|t| t.0).unwrap_or(now);

    let mut recheck_in = None;
    let gate_open = match knobs.ready_after {
        None => true,
        Some(secs) => {
            let ready_at = start + SignedDuration::from_secs(secs as i64);
            if now >= ready_at {
                true
            } else {
                recheck_in = Some(
                    Duration::try_from(ready_at.duration_since(now)).unwrap_or_default()
                        + Duration::from_millis(200),
                );
                false
            }
        }
    };

    let ids = Ids { uid, start };
    let init_statuses: Vec<ContainerStatus> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| init_status(c, &ids))
        .collect();
    let initialized = init_statuses.iter().all(|s| s.ready);

    let mut unready = Vec::new();
    let mut pending = false;
    let statuses: Vec<ContainerStatus> = spec
        .containers
        .iter()
        .map(|c| {
            let status = if initialized {
                let plan = knobs.plan(c);
                let ready = plan.ready && gate_open;
                match plan.phase {
                    Phase::Running => running(c, &ids, plan.restarts, ready),
                    Phase::CrashLoop => crashloop(c, &ids, plan.restarts, pod_name, ns),
                    Phase::PullBackOff => pull_backoff(c),
                }
            } else {
                waiting(c, "PodInitializing", None)
            };
            // The kubelet's rule: a container that never ran keeps the pod Pending.
            let never_ran = status.state.as_ref().is_some_and(|s| s.waiting.is_some())
                && status
                    .last_state
                    .as_ref()
                    .is_none_or(|s| s.terminated.is_none());
            pending |= never_ran;
            if !status.ready {
                unready.push(c.name.clone());
            }
            status
        })
        .collect();

    let unready_init: Vec<String> = init_statuses
        .iter()
        .filter(|s| !s.ready)
        .map(|s| s.name.clone())
        .collect();
    let conditions = vec![
        condition(
            &existing,
            now,
            "Initialized",
            &unready_init,
            "ContainersNotInitialized",
            "containers with incomplete status",
        ),
        condition(
            &existing,
            now,
            "Ready",
            &unready,
            "ContainersNotReady",
            "containers with unready status",
        ),
        condition(
            &existing,
            now,
            "ContainersReady",
            &unready,
            "ContainersNotReady",
            "containers with unready status",
        ),
        condition(&existing, now, "PodScheduled", &[], "", ""),
    ];

    let status = PodStatus {
        phase: Some(if pending { "Pending" } else { "Running" }.to_string()),
        host_ip: Some(HOST_IP.to_string()),
        pod_ip: Some(pod_ip.to_string()),
        pod_ips: Some(vec![PodIP {
            ip: pod_ip.to_string(),
        }]),
        start_time: Some(Time(start)),
        conditions: Some(conditions),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        container_statuses: Some(statuses),
        ..Default::default()
    };
    Desired { status, recheck_in }
}

/// True when writing `desired` would change any field this kubelet owns.
pub fn differs(existing: Option<&PodStatus>, desired: &PodStatus) -> bool {
    let Some(e) = existing else { return true };
    e.phase != desired.phase
        || e.host_ip != desired.host_ip
        || e.pod_ip != desired.pod_ip
        || e.pod_ips != desired.pod_ips
        || e.start_time != desired.start_time
        || e.conditions != desired.conditions
        || e.container_statuses != desired.container_statuses
        || e.init_container_statuses.as_ref().filter(|v| !v.is_empty())
            != desired.init_container_statuses.as_ref()
}

/// What the container statuses derive their ids and times from.
struct Ids<'a> {
    uid: &'a str,
    start: Timestamp,
}

impl Ids<'_> {
    fn container_id(&self, name: &str) -> String {
        format!("sim://{}/{}", self.uid, name)
    }
}

fn image_id(image: &str) -> String {
    let digest = Sha256::digest(image.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    format!("{repo}@sha256:{hex}")
}

fn base(c: &Container) -> ContainerStatus {
    ContainerStatus {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        // The apiserver returns an empty lastState as `{}`, so "none" must be an empty struct to compare equal.
        last_state: Some(ContainerState::default()),
        started: Some(false),
        ..Default::default()
    }
}

fn previous_termination(c: &Container, ids: &Ids) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 1,
            reason: Some("Error".into()),
            started_at: Some(Time(ids.start)),
            finished_at: Some(Time(ids.start)),
            container_id: Some(format!("{}/previous", ids.container_id(&c.name))),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn running(c: &Container, ids: &Ids, restarts: u32, ready: bool) -> ContainerStatus {
    let mut s = base(c);
    s.image_id = image_id(&s.image);
    s.container_id = Some(ids.container_id(&c.name));
    s.started = Some(true);
    s.ready = ready;
    s.restart_count = restarts as i32;
    s.state = Some(ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(Time(ids.start)),
        }),
        ..Default::default()
    });
    if restarts > 0 {
        s.last_state = Some(previous_termination(c, ids));
    }
    s
}

fn crashloop(c: &Container, ids: &Ids, restarts: u32, pod: &str, ns: &str) -> ContainerStatus {
    let mut s = base(c);
    s.image_id = image_id(&s.image);
    s.container_id = Some(ids.container_id(&c.name));
    s.restart_count = restarts as i32;
    let message = format!(
        "back-off 5m0s restarting failed container={} pod={}_{}({})",
        c.name, pod, ns, ids.uid
    );
    s.state = waiting(c, "CrashLoopBackOff", Some(message)).state;
    s.last_state = Some(previous_termination(c, ids));
    s
}

fn pull_backoff(c: &Container) -> ContainerStatus {
    let message = format!(
        "Back-off pulling image \"{}\": the image cannot be pulled (simulated by kirt-lab-kubelet)",
        c.image.as_deref().unwrap_or_default()
    );
    waiting(c, "ImagePullBackOff", Some(message))
}

fn waiting(c: &Container, reason: &str, message: Option<String>) -> ContainerStatus {
    let mut s = base(c);
    s.state = Some(ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    });
    s
}

fn init_status(c: &Container, ids: &Ids) -> ContainerStatus {
    if image_is_broken(c.image.as_deref()) {
        return pull_backoff(c);
    }
    let mut s = base(c);
    s.image_id = image_id(&s.image);
    s.container_id = Some(ids.container_id(&c.name));
    s.ready = true;
    s.state = Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: 0,
            reason: Some("Completed".into()),
            started_at: Some(Time(ids.start)),
            finished_at: Some(Time(ids.start)),
            container_id: Some(ids.container_id(&c.name)),
            ..Default::default()
        }),
        ..Default::default()
    });
    s
}

/// A pod condition that is True when `failing` is empty; its transition time is kept from the
/// existing condition while the status does not change, as the kubelet does.
fn condition(
    existing: &PodStatus,
    now: Timestamp,
    type_: &str,
    failing: &[String],
    reason: &str,
    what: &str,
) -> PodCondition {
    let ok = failing.is_empty();
    let status = if ok { "True" } else { "False" };
    let since = existing
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == status)
        .and_then(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        last_transition_time: Some(since),
        reason: (!ok).then(|| reason.to_string()),
        message: (!ok).then(|| format!("{what}: [{}]", failing.join(" "))),
        ..Default::default()
    }
}
