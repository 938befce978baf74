//! Domesday's shared vocabulary, encoded once.
//!
//! This crate owns the names that tests, dashboards, alerts and users depend on
//! (`../shared/contract.md`): the metric catalog ([`catalog`]), the closed label
//! vocabularies ([`vocab`]) and the agent's configuration key reference
//! ([`config_keys`]). The user docs in `docs/` are generated from it
//! ([`docs`]); a test fails when they are stale. The configuration helpers both
//! binaries share live here too: [`duration`] (`Dur`, `parse_duration`) and
//! [`secret`] (`Secret`, which never prints).
//!
//! It must not do I/O: it is plain data and pure functions, so both the agent and
//! the collector can depend on it without pulling in each other's machinery.

pub mod catalog;
pub mod config_keys;
pub mod config_text;
pub mod docs;
pub mod duration;
pub mod exposition;
pub mod remote_write;
pub mod remote_write2;
pub mod secret;
pub mod vocab;
