//! Test helpers shared by the modules that wrap a ledger reader.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::query::{EnergyQuery, EnergyReport, HostRow};
use super::sqlite::SqliteReader;
use super::{HostModel, LedgerReader, StoreError};

/// A reader that counts the questions reaching the ledger: `energy` (full or
/// totals) and `role_hourly`.
pub struct Counting {
    pub inner: SqliteReader,
    pub energy: AtomicUsize,
    pub role_hourly: AtomicUsize,
}

impl Counting {
    pub fn new(inner: SqliteReader) -> Self {
        Counting { inner, energy: AtomicUsize::new(0), role_hourly: AtomicUsize::new(0) }
    }

    pub fn energy_asked(&self) -> usize {
        self.energy.load(Ordering::Relaxed)
    }

    pub fn role_hourly_asked(&self) -> usize {
        self.role_hourly.load(Ordering::Relaxed)
    }
}

impl LedgerReader for Counting {
    fn energy(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.energy.fetch_add(1, Ordering::Relaxed);
        self.inner.energy(q)
    }
    fn energy_totals(&self, q: &EnergyQuery) -> Result<EnergyReport, StoreError> {
        self.energy.fetch_add(1, Ordering::Relaxed);
        self.inner.energy_totals(q)
    }
    fn hosts(&self, site: &str, now_ms: i64) -> Result<Vec<HostRow>, StoreError> {
        self.inner.hosts(site, now_ms)
    }
    fn host_models(&self, site: &str, from: i64, to: i64) -> Result<Vec<(String, HostModel)>, StoreError> {
        self.inner.host_models(site, from, to)
    }
    fn site_totals(&self) -> Result<Vec<(String, String, i128)>, StoreError> {
        self.inner.site_totals()
    }
    fn role_hourly(&self, site: &str, role: &str, from: i64, to: i64) -> Result<Vec<(i64, i128)>, StoreError> {
        self.role_hourly.fetch_add(1, Ordering::Relaxed);
        self.inner.role_hourly(site, role, from, to)
    }
}
