//! Report, first half: the status the core composed, applied whole with the operator's field
//! manager, so fields we stop reporting disappear.

use appserver_core::api::{AppServer, AppServerStatus};
use appserver_core::desired::MANAGER;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use super::{Context, Error};

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusApply<'a> {
    api_version: &'a str,
    kind: &'a str,
    status: &'a AppServerStatus,
}

pub(super) async fn write(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    key: &str,
    status: &AppServerStatus,
) -> Result<(), Error> {
    let body = StatusApply {
        api_version: &AppServer::api_version(&()),
        kind: &AppServer::kind(&()),
        status,
    };
    Api::<AppServer>::namespaced(ctx.client.clone(), namespace)
        .patch_status(
            &aps.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::Status {
            key: key.to_string(),
            source,
        })?;
    Ok(())
}
