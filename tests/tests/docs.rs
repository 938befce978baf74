//! The metric and configuration references in `docs/` are generated from
//! `model/`; this fails when they are stale. `UPDATE_DOCS=1` regenerates them.

use domesday_model::docs::{configuration_reference, metrics_reference};
use domesday_tests::workspace_root;

fn check(file: &str, want: String) {
    let path = workspace_root().join("docs").join(file);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &want).expect("write doc");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(have == want, "{} is stale: run `UPDATE_DOCS=1 cargo test -p domesday-tests --test docs`", path.display());
}

#[test]
fn metric_reference_is_current() {
    check("metrics.md", metrics_reference());
}

#[test]
fn configuration_reference_is_current() {
    check("configuration.md", configuration_reference());
}

#[test]
fn every_catalog_metric_is_documented_with_its_labels() {
    let doc = metrics_reference();
    for m in domesday_model::catalog::CATALOG {
        let line = doc.lines().find(|l| l.starts_with(&format!("| `{}` |", m.name)));
        let line = line.unwrap_or_else(|| panic!("{} missing", m.name));
        for l in m.labels {
            assert!(line.contains(&format!("`{l}`")), "{}: label {l}", m.name);
        }
    }
}
