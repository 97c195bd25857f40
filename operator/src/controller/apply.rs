//! Apply: the Deployment and Service a plan becomes, by server-side apply with one field
//! manager and `force`, so fields we stop setting disappear and hand edits are taken back.

use std::fmt::Debug;

use appserver_core::api::AppServer;
use appserver_core::desired::{self, MANAGER};
use appserver_core::plan::Plan;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Context, Error};

/// Applies the owned objects; returns the Deployment as the API server has it now.
pub(super) async fn apply(
    ctx: &Context,
    aps: &AppServer,
    namespace: &str,
    key: &str,
    plan: &Plan,
) -> Result<Deployment, Error> {
    let owner = aps
        .controller_owner_ref(&())
        .ok_or_else(|| Error::MissingKey(key.into(), "uid"))?;
    let deployment = desired::deployment(aps, &owner, plan, &ctx.tuning.sidecar_image);
    let applied = apply_owned(ctx, namespace, key, &deployment).await?;
    apply_owned(ctx, namespace, key, &desired::service(aps, &owner)).await?;
    Ok(applied)
}

async fn apply_owned<K>(ctx: &Context, namespace: &str, key: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let kind = <K as k8s_openapi::Resource>::KIND;
    let name = object.name_any();
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(|source| Error::Apply {
            kind,
            key: key.to_string(),
            source,
        })
}
