//! `appserver-operator crd`: the CRD as YAML, from the Rust types (`make crd` commits it).

use anyhow::Context as _;

pub(super) fn print() -> anyhow::Result<()> {
    let yaml = appserver_core::crd::yaml().context("rendering the CRD")?;
    super::emit(&yaml)
}
