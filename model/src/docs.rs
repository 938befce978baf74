//! Generators of the user references in `docs/` (metrics and configuration)
//! from the catalog and key tables, so the docs cannot drift from the code.

use crate::catalog::{CATALOG, CONSTANT_LABELS, Component};
use crate::config_keys::{AGENT_KEYS, COLLECTOR_LEDGER_KEYS, example_toml};

/// `docs/metrics.md`.
pub fn metrics_reference() -> String {
    let mut out = String::from(
        "# Metric reference\n\n<!-- Generated from model/src/catalog.rs by `UPDATE_DOCS=1 cargo test -p domesday-tests --test docs`; do not edit. -->\n\n",
    );
    out.push_str(&format!(
        "Every agent series also carries the constant labels {} and the extras of `[labels]`.\n\
         Label values are the closed vocabularies of `model/src/vocab.rs`.\n\n",
        CONSTANT_LABELS.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
    ));
    for (title, component) in [
        ("Agent (`domesday-agent`, `/metrics`)", Component::Agent),
        ("Collector (`domesday-collector`, `/metrics`; no constant labels)", Component::Collector),
    ] {
        out.push_str(&format!("## {title}\n\n| family | type | unit | labels | help |\n|---|---|---|---|---|\n"));
        for m in CATALOG.iter().filter(|m| m.component == component) {
            let labels = if m.labels.is_empty() {
                "—".to_string()
            } else {
                m.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
            };
            let unit = if m.unit.is_empty() { "—" } else { m.unit };
            out.push_str(&format!("| `{}` | {} | {} | {} | {} |\n", m.name, m.kind.as_str(), unit, labels, m.help));
        }
        out.push('\n');
    }
    out
}

/// `docs/configuration.md`.
pub fn configuration_reference() -> String {
    let mut out = String::from(
        "# Agent configuration reference\n\n<!-- Generated from model/src/config_keys.rs by `UPDATE_DOCS=1 cargo test -p domesday-tests --test docs`; do not edit. -->\n\n\
         The agent reads a TOML file given with `--config`. Unknown keys are errors; durations are strings such as \
         `\"5s\"` or `\"15m\"`. Command-line flags (`--site`, `--host`, `--listen`, `--web-config-file`, `--interval`, `--sysfs-root`, \
         `--procfs-root`) override the file. Without `--config` the agent runs with `site = \"local\"` and every default. \
         `domesday-agent check-config --config FILE` validates a file and prints the effective configuration.\n\n\
         | key | type | default | meaning |\n|---|---|---|---|\n",
    );
    for k in AGENT_KEYS {
        out.push_str(&format!("| `{}` | {} | {} | {} |\n", k.key, k.ty, k.default, k.doc));
    }
    out.push_str("\n## Example\n\n```toml\n");
    out.push_str(example_toml().trim_start());
    out.push_str("```\n");
    out.push_str(
        "\n## Collector: ledger database\n\nTop-level keys of the collector's TOML file (`domesday-collector --config`) that \
         choose its ledger store; the collector's other keys are in [collector.md](collector.md), the PostgreSQL store \
         in [scaling.md](scaling.md).\n\n| key | type | default | meaning |\n|---|---|---|---|\n",
    );
    for k in COLLECTOR_LEDGER_KEYS {
        out.push_str(&format!("| `{}` | {} | {} | {} |\n", k.key, k.ty, k.default, k.doc));
    }
    out
}
