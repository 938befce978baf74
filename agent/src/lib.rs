//! `domesday-agent`: samples a server's energy, power, load and temperatures
//! and serves them to Prometheus.
//!
//! Code map:
//! - [`config`]: the TOML config and CLI overrides, validated before anything starts.
//! - [`sources`]: one module per sensor kind (RAPL, hwmon, thermal, procfs),
//!   reading plain files under the injectable sysfs/procfs roots.
//! - [`energy`], [`estimation`]: pure maths (counter wrap, integration, power models).
//! - [`plausible`]: the physical bounds of temperatures, fan speeds and power,
//!   for every source.
//! - [`host_power`]: host power arbitration and the persisted per-method energy counters.
//! - [`sampler`]: the tick (worker thread per source, deadlines) producing a [`sampler::Snapshot`].
//! - [`render`], [`server`]: the exposition (rendered once per tick) and `/metrics`;
//!   [`web_config`]: its TLS and basic auth (Prometheus' exporter web configuration).
//! - [`probe`], [`inventory`]: the `probe` table and `domesday_host_info`.
//! - [`push`]: remote_write push to the collector, its disk spool, and the
//!   `simulate` load generator.
//! - [`agent`]: the `run` and `once` loops, with shutdown.
//!
//! This crate knows nothing of sites' facilities or PUE: that is the collector's.

pub mod agent;
pub mod config;
pub mod energy;
pub mod estimation;
pub mod fsread;
pub mod host_power;
pub mod inventory;
pub mod plausible;
pub mod probe;
pub mod push;
pub mod render;
pub mod sampler;
pub mod server;
pub mod snapshot;
pub mod sources;
pub mod web_config;
