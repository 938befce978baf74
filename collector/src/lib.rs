//! `domesday-collector`: receives agents' remote_write pushes and keeps the
//! exact energy ledger.
//!
//! Code map:
//! - [`config`]: collector config (sites, tokens, ledger and ingest limits), validated first.
//! - [`ingest`]: the ingest rules as pure functions (auth, limits, validation, what is booked).
//! - [`ledger`]: booking arithmetic, the SQLite store behind narrow traits, the writer thread, reads.
//! - [`pull`]: pull mode, reading raw counters from a Prometheus-compatible API into the same path.
//! - [`api`]: HTTP handlers (write, energy, sites, hosts, health, metrics).
//! - [`serve`]: wiring and graceful shutdown; [`demo`]: the local all-in-one run.
//!
//! It must not read sensors; indicators (issue #4) will live in their own module.

pub mod api;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod ledger;
pub mod meters;
pub mod pull;
pub mod serve;
