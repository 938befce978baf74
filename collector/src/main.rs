//! `domesday-collector`: the energy ledger and the efficiency indicators.
//!
//! Not built yet: ingest, ledger, meters and indicators arrive with issues #3
//! and #4. Until then the binary says so and exits non-zero, so nothing can
//! mistake it for a working collector.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "domesday-collector {}: not implemented yet (ingest and ledger: issue #3; meters and indicators: issue #4)",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::FAILURE
}
