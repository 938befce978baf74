//! Renders a [`Snapshot`] as the `/metrics` body, with the agent's constant
//! labels (`site`, `host`, extras), through the shared catalog renderer.

use crate::snapshot::Snapshot;

pub use domesday_model::exposition::CONTENT_TYPE;

/// The full `/metrics` body.
pub fn render(snap: &Snapshot, constant: &[(String, String)]) -> String {
    domesday_model::exposition::render(&snap.samples, constant)
}
