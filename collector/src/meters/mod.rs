//! Facility meters: turning readings (CSV files and uploads today; Modbus,
//! Redfish PDUs and Prometheus sources later) into ledger input for the
//! meter's configured role and unit.

pub mod csv_import;
