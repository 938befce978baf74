//! `domesday-collector`: receives agents' remote_write pushes and keeps the
//! exact energy ledger.
//!
//! Code map:
//! - [`config`]: collector config (sites, tokens, ledger and ingest limits), validated first;
//!   [`secret_file`] reads the secret files it names at load; [`db`] is the `db` key: a SQLite file or a
//!   PostgreSQL URL, and the PostgreSQL password.
//! - [`ingest`]: the ingest rules as pure functions (auth, limits, validation, what is booked).
//! - [`ledger`]: booking arithmetic, the SQLite store behind narrow traits, the writer thread, reads.
//! - [`forward`]: `[forward]`, every accepted request passed on to an upstream TSDB through a disk spool.
//! - [`pull`]: pull mode, reading raw counters from a Prometheus-compatible API into the same path.
//! - [`meters`]: facility meters: CSV imports and the live readers (Modbus TCP, Redfish
//!   PowerDistribution, Prometheus), one task per meter, booked as exact register samples.
//! - [`indicators`], [`carbon`]: the indicator maths and grid intensity sources; [`site_report`] feeds them from the ledger.
//! - [`reports`]: the EED declaration (one record per site and year) built from the indicators'
//!   computation, its renderings (JSON, CSV, XLSX) and the declared keys and annual figures.
//! - [`api`]: HTTP handlers (write, energy, sites, hosts, health, metrics).
//! - [`serve`]: wiring and graceful shutdown; [`demo`]: the local all-in-one run.
//! - [`leader`]: which collector does the site-wide work (meter readers, pulls, site gauges, pruning) when
//!   several share one PostgreSQL ledger: the holder of an advisory lock.
//! - [`indicators`]: PUE, DCiE, pPUE, ERE, CUE, WUE, ERF, REF as pure functions over period totals;
//!   roll-ups, time-matched emissions, period arithmetic in the site's zone.
//! - [`carbon`]: grid carbon intensity sources (static, RTE éCO2mix, Electricity Maps) behind one
//!   trait, cached, with a visible fallback; the `[carbon]` config; embodied emissions.
//!
//! It must not read sensors, and computes no indicator outside [`indicators`].

pub mod api;
pub mod carbon;
pub mod config;
pub mod db;
pub mod demo;
pub mod forward;
pub mod indicators;
pub mod ingest;
pub mod leader;
pub mod ledger;
pub mod meters;
pub mod pull;
pub mod reports;
pub mod secret_file;
pub mod serve;
pub mod site_metrics;
pub mod site_report;
pub mod skew;
