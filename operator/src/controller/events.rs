//! Report, second half: Events on the AppServer. They are best effort: a failure to record one
//! is logged, not retried.

use appserver_core::api::AppServer;
use appserver_core::report::Notice;
use kube::Resource;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use super::{Context, Error};

/// The API server refuses Event notes longer than 1 kB.
const NOTE_MAX: usize = 1000;

pub(super) async fn publish(ctx: &Context, aps: &AppServer, notices: Vec<Notice>) {
    let reference = aps.object_ref(&());
    for n in notices {
        let event = Event {
            type_: if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: n.reason.into(),
            note: Some(truncate(&n.note, NOTE_MAX)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = n.reason, "could not record an Event");
        }
    }
}

/// An object that does not deserialize gets a Warning Event saying why; the error it returns
/// keeps the controller from retrying until the object changes.
pub(super) async fn report_invalid(ctx: &Context, key: &str, invalid: &InvalidObject) -> Error {
    warn!(error = %invalid, "AppServer does not deserialize");
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(AppServer::api_version(&()).into()),
        kind: Some(AppServer::kind(&()).into()),
        name: invalid.metadata.name.clone(),
        namespace: invalid.metadata.namespace.clone(),
        uid: invalid.metadata.uid.clone(),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: "InvalidObject".into(),
        note: Some(truncate(&invalid.error, NOTE_MAX)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &reference).await {
        warn!(error = %e, "could not record an Event");
    }
    Error::InvalidObject(key.to_string(), Box::new(invalid.clone()))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn truncates_on_characters_not_bytes() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("short", 10), "short");
    }
}
