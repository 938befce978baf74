//! Facility meters: turning readings into ledger input for the meter's
//! configured role and unit, always as register samples or intervals in
//! exact integer micro-units of the meter's unit.
//!
//! - [`csv_import`]: CSV files and uploads (registers or intervals).
//! - [`reader`]: the polling loop of the live readers (interval, timeout,
//!   backoff, counters) and their spawning; one tokio task per meter.
//! - [`modbus`]: Modbus TCP registers (holding/input, 32/64-bit, word order, scale).
//! - [`redfish`]: Redfish PowerDistribution (PDUs, switchgear): EnergyJoules/EnergykWh.
//! - [`prometheus`]: raw register samples from a Prometheus-compatible query API.
//! - [`reading`]: what every reader hands the loop (readings, a poll, read errors and their reasons).
//! - [`http`]: the HTTP client, JSON GET and transport errors shared by the HTTP readers.
//! - [`simulated`]: the demo's simulated meters, a fixed multiple of the site's booked IT energy.
//! - [`convert`]: exact decimal conversions into micro-units.

pub mod convert;
pub mod csv_import;
pub mod http;
pub mod modbus;
pub mod prometheus;
pub mod reader;
pub mod reading;
pub mod redfish;
pub mod simulated;

#[cfg(test)]
mod tests;
