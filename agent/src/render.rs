//! Renders a [`Snapshot`] as the `/metrics` body, with the agent's constant
//! labels (`site`, `host`, extras), through the shared catalog renderer.

use crate::config::AgentConfig;
use crate::sampler::Snapshot;

pub use domesday_model::exposition::CONTENT_TYPE;

/// The constant labels: `site`, `host`, then the extras in name order.
pub fn constant_labels(cfg: &AgentConfig) -> Vec<(String, String)> {
    let mut v = vec![("site".to_string(), cfg.site.clone()), ("host".to_string(), cfg.host.clone())];
    v.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    v
}

/// The full `/metrics` body.
pub fn render(snap: &Snapshot, constant: &[(String, String)]) -> String {
    domesday_model::exposition::render(&snap.samples, constant)
}
