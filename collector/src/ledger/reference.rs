//! The in-order reference of the ledger's property tests: what a series'
//! samples give when booked in time order, once each, with nothing late,
//! repeated or pruned. Every store (`tests.rs`, on SQLite) and the rules alone
//! (`rules_tests.rs`, on an in-memory store) are checked against it.

use std::collections::BTreeMap;

use super::book::{MINUTE_MS, increment, spread};

/// Per-minute energy of an in-order, deduplicated series.
pub fn reference(points: &[(i64, Option<i64>)], gap_ms: i64) -> BTreeMap<i64, i64> {
    let mut out = BTreeMap::new();
    for w in points.windows(2) {
        for s in spread(w[0].0, w[1].0, increment(w[0].1, w[1].1), MINUTE_MS, gap_ms) {
            *out.entry(s.start_ms).or_insert(0) += s.energy_uj;
        }
    }
    out
}
