//! The fuzz targets' corpus replayed on stable: every input committed under
//! `fuzz/corpus/<target>/` (seeds taken from the test fixtures and every
//! crasher the fuzzer found) goes through the same target body as under
//! cargo-fuzz (`fuzz/src/lib.rs`, included here), i.e. through the parse entry
//! points production calls. Each must return (an answer or an error), never
//! panic. How to run the fuzzer itself: `fuzz/README.md`.

#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Replays one target's corpus; returns how many inputs it read.
fn replay(name: &str) -> usize {
    let (_, body) = targets::TARGETS.iter().find(|(n, _)| *n == name).expect("known target");
    let dir = corpus_dir().join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut panicked = Vec::new();
    for f in &files {
        let data = std::fs::read(f).expect("read corpus input");
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            panicked.push(f.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "target {name} panicked on: {panicked:#?}");
    files.len()
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let n = replay(stringify!($name));
                assert!(n >= 3, "fuzz/corpus/{} holds {n} inputs: commit at least 3 seeds", stringify!($name));
            }
        )*

        /// Every target has a corpus test above and a corpus folder, and every corpus folder a target.
        #[test]
        fn every_target_is_replayed() {
            let tested = [$(stringify!($name)),*];
            let declared: Vec<&str> = targets::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(tested.to_vec(), declared, "a target without a replay test (or the other way round)");
            let mut dirs: Vec<String> = std::fs::read_dir(corpus_dir())
                .expect("fuzz/corpus")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            dirs.sort();
            let mut sorted = declared.clone();
            sorted.sort();
            assert_eq!(dirs, sorted, "fuzz/corpus/ folders and targets differ");
            let bins = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/fuzz_targets"))
                .expect("fuzz/fuzz_targets")
                .count();
            assert_eq!(bins, declared.len(), "one fuzz_targets/<name>.rs per target");
        }
    };
}

replay_tests!(
    sysfs_value,
    ipmi_output,
    redfish_json,
    remote_write_1,
    remote_write_2,
    meter_csv,
    agent_config,
    collector_config,
    grid_json,
    prometheus_json,
);

fn seed(target: &str, file: &str) -> Vec<u8> {
    std::fs::read(corpus_dir().join(target).join(file)).expect("seed")
}

/// The seeds taken from the fixtures are real inputs: the entry points the
/// targets call accept them, so the fuzzer starts from inputs that reach deep.
#[test]
fn fixture_seeds_reach_the_parsers_and_are_accepted() {
    use domesday_agent::sources::ipmi;
    use domesday_collector::config::IngestConfig;
    use domesday_collector::ingest;

    let text = String::from_utf8(seed("ipmi_output", "supermicro.dcmi")).expect("utf-8");
    assert!(ipmi::parse_ipmitool_dcmi(&text).is_ok());
    let text = String::from_utf8(seed("ipmi_output", "freeipmi.dcmi")).expect("utf-8");
    assert!(ipmi::parse_freeipmi_dcmi(&text).is_ok());

    let limits = IngestConfig::default();
    let now = 1_780_272_000_000;
    let raw = ingest::decompress_body(&seed("remote_write_1", "host-energy.snappy"), &limits).expect("snappy");
    let accepted = ingest::split(&ingest::parse(&raw).expect("1.0"), "caen-1", now, &limits).expect("rules");
    assert_eq!(accepted.batch.samples.len(), 2, "two host energy samples booked");
    let raw = ingest::decompress_body(&seed("remote_write_2", "host-energy.snappy"), &limits).expect("snappy");
    let (view, _) = ingest::parse_v2(&raw).expect("2.0");
    let accepted = ingest::split(&view, "caen-1", now, &limits).expect("rules");
    assert_eq!(accepted.batch.samples.len(), 2, "two host energy samples booked");

    let rte = seed("grid_json", "rte_eco2mix_national_tr.json");
    assert!(!domesday_collector::carbon::rte::parse_records(&rte, 900_000).expect("rte").points.is_empty());
    let em = seed("grid_json", "electricitymaps_past_range_fr.json");
    let basis = domesday_collector::carbon::FactorBasis::Lifecycle;
    assert!(!domesday_collector::carbon::electricitymaps::parse_answer(&em, basis).expect("em").is_empty());

    let doc: serde_json::Value = serde_json::from_slice(&seed("redfish_json", "power.json")).expect("json");
    assert!(domesday_agent::sources::redfish::power_consumed(&doc).is_ok());
}
