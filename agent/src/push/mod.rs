//! Push to a collector with Prometheus remote_write 1.0 (contract §5).
//!
//! [`spool`] owns the on-disk format of the batches waiting for the collector.

pub mod spool;
