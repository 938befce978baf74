//! What every meter reader hands the polling loop: register [`Reading`]s in
//! micro-units of the meter's unit, the [`Poll`] of one read, and the
//! [`ReadError`] that says why a read failed (each maps to a `reason`). The
//! readers and the loop in `reader.rs` both import them from here.

use std::time::Duration;

use domesday_model::vocab::Reason;

use super::convert::ValueError;

/// One register reading: when, and micro-units of the meter's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub ts_ms: i64,
    pub value_micro: i64,
}

/// Why a read failed; each maps to a `reason` label value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Permission(String),
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Parse(String),
    #[error("value refused: {0}")]
    Rejected(#[from] ValueError),
    #[error("ledger: {0}")]
    Ledger(String),
    #[error("configuration: {0}")]
    Config(String),
}

impl ReadError {
    pub fn reason(&self) -> Reason {
        match self {
            ReadError::Timeout(_) => Reason::Timeout,
            ReadError::Io(_) | ReadError::Ledger(_) => Reason::Io,
            ReadError::Permission(_) => Reason::Permission,
            ReadError::Missing(_) | ReadError::Config(_) => Reason::Missing,
            ReadError::Parse(_) => Reason::Parse,
            ReadError::Rejected(_) => Reason::Rejected,
        }
    }
}

/// What one poll gives: readings to book, and samples refused on the way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Poll {
    pub readings: Vec<Reading>,
    pub rejected: Vec<ValueError>,
}

impl From<Vec<Reading>> for Poll {
    fn from(readings: Vec<Reading>) -> Self {
        Poll { readings, rejected: Vec::new() }
    }
}
