//! Regulatory reports built from the ledger and the site configuration.
//!
//! - [`declared`]: the site keys and `[[sites.annual]]` figures no meter gives, and their checks;
//!   [`annual_csv`] the same figures imported from CSV files (`[reports] annual_csv`).
//! - [`eed`]: the EED declaration of one site and period (Delegated Regulation (EU) 2024/1364
//!   Annexes I–III), from the indicators' own inputs and results.
//! - [`classes`]: the indicative EU classes A–G of PUE and WUE.
//! - [`document`]: build, refuse when incomplete, render: what the command and the endpoint share.
//! - [`publication`]: the French public sheet: the public subset as one self-contained HTML page, JSON and CSV.
//! - [`render`]: the declaration as JSON, CSV and XLSX, byte-reproducible.
//! - [`region`]: the Region's report over ledger sites and imported declarations;
//!   [`region_render`] its JSON, CSV, XLSX and HTML; [`opendata`] its public subset
//!   with a Table Schema.
//!
//! Nothing here computes an indicator: figures come from `site_report` and `indicators`.

pub mod annual_csv;
pub mod classes;
pub mod declared;
pub mod document;
pub mod eed;
pub mod opendata;
pub mod publication;
pub mod region;
pub mod region_http;
pub mod region_render;
pub mod render;
