//! One Event writer for everything kirt does to an object (Quarantined, Released, RolledBack,
//! EvidenceCollected …): core/v1 Events, which `kubectl describe` and `kubectl get events` show
//! on every Kubernetes version kirt supports.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use kube::api::ListParams;

use super::{Cluster, FIELD_MANAGER};
use crate::error::Result;

/// When an Event last happened: lastTimestamp, else eventTime, else firstTimestamp, else when it
/// was created.
pub fn event_time(e: &Event) -> Option<jiff::Timestamp> {
    e.last_timestamp
        .as_ref()
        .map(|t| t.0)
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|t| t.0))
        .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// The Events about one object (`kind` as in `involvedObject.kind`, e.g. `Pod`), oldest first.
/// With `uid`, Events of an earlier object of the same name are left out.
pub async fn involving(
    cluster: &Cluster,
    ns: &str,
    kind: &str,
    name: &str,
    uid: Option<&str>,
) -> Result<Vec<Event>> {
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let mut items: Vec<Event> = cluster
        .namespaced::<Event>(ns)
        .list(&lp)
        .await?
        .into_iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some(kind))
        .filter(|e| {
            let theirs = e.involved_object.uid.as_deref().unwrap_or_default();
            uid.is_none_or(|u| u.is_empty() || theirs.is_empty() || theirs == u)
        })
        .collect();
    items.sort_by_key(event_time);
    Ok(items)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Records Events as kirt, honouring dry-run (the server validates and stores nothing).
pub struct Recorder<'c> {
    cluster: &'c Cluster,
    dry_run: bool,
}

/// Longest message kept; longer ones are cut (the API's limit for a note is 1 KiB).
const MAX_MESSAGE: usize = 1000;

impl<'c> Recorder<'c> {
    pub fn new(cluster: &'c Cluster, dry_run: bool) -> Self {
        Recorder { cluster, dry_run }
    }

    /// Records one Event about `regarding` (an object reference with at least kind, namespace
    /// and name); returns the Event's name.
    pub async fn publish(
        &self,
        regarding: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Result<String> {
        let ns = regarding.namespace.clone().unwrap_or_default();
        let now = Time(jiff::Timestamp::now());
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.kirt-",
                    regarding.name.as_deref().unwrap_or("object")
                )),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: regarding,
            reason: Some(reason.into()),
            message: Some(truncate(message)),
            type_: Some(
                match kind {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(gethostname::gethostname().to_string_lossy().into_owned()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        };
        let created = self
            .cluster
            .namespaced::<Event>(&ns)
            .create(&ev, self.dry_run)
            .await?;
        Ok(created.metadata.name.unwrap_or_default())
    }

    /// Like `publish`, for an Event that only documents a change already made: a failure (no
    /// `create events` permission) is a warning saying what happened anyway, never an error.
    pub async fn publish_or_warn(
        &self,
        regarding: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        let what = format!(
            "{} {}/{}",
            regarding.kind.as_deref().unwrap_or("object"),
            regarding.namespace.as_deref().unwrap_or_default(),
            regarding.name.as_deref().unwrap_or_default()
        );
        if let Err(e) = self.publish(regarding, kind, reason, message).await {
            tracing::warn!("{what} changed, but its {reason} Event was not recorded: {e}");
        }
    }
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut cut = MAX_MESSAGE - 3;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}...", &message[..cut])
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let m = "é".repeat(800);
        let t = super::truncate(&m);
        assert!(
            t.len() <= super::MAX_MESSAGE && t.ends_with("..."),
            "{}",
            t.len()
        );
        assert_eq!(super::truncate("short"), "short");
    }
}
