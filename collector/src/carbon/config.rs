//! The `[carbon]` section (contract §6, §7): keys, defaults, validation with
//! messages that say what to change, and the construction of the service.
//! Not wired into the collector's config file here; `config.rs` embeds
//! [`CarbonConfig`] as an optional `carbon` table and calls [`CarbonConfig::validate`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::electricitymaps::ElectricityMapsSource;
use super::rte::RteSource;
use super::service::{CarbonService, ServiceOptions};
use super::static_factors::{self, StaticSource};
use super::{FactorBasis, IntensitySource};
use crate::indicators::SiteParams;
use domesday_model::duration::Dur;
use domesday_model::secret::Secret;

/// Where live intensities come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A constant factor: `fallback_g_per_kwh`, else the shipped table.
    Static,
    /// RTE éCO2mix on ODRÉ (France, `taux_co2`, direct, 15 minutes).
    Rte,
    /// Electricity Maps (API key), basis as configured.
    Electricitymaps,
}

fn default_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

fn default_min_refresh() -> Dur {
    Dur(Duration::from_secs(15 * 60))
}

/// `[carbon]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonConfig {
    pub source: SourceKind,
    /// Grid area (`FR`, `DE`, Electricity Maps zone keys such as `DK-DK2`).
    pub grid_zone: String,
    /// gCO2e/kWh used when the live source fails or times out; with
    /// `source = "static"`, the factor used. Same basis as the live source.
    #[serde(default)]
    pub fallback_g_per_kwh: Option<f64>,
    /// Basis of `fallback_g_per_kwh` (and of the static factor): `direct` or `lifecycle`.
    #[serde(default)]
    pub basis: Option<FactorBasis>,
    /// gCO2e/kWh of the supplier's residual mix, for market-based CUE.
    #[serde(default)]
    pub residual_mix_g_per_kwh: Option<f64>,
    /// kgCO2e per litre of generator fuel; the grid factor is never applied to generator kWh.
    #[serde(default)]
    pub fuel_kg_per_litre: Option<f64>,
    /// gCO2e per kWh thermal of district chilled water (the network's published factor).
    #[serde(default)]
    pub chilled_water_g_per_kwh: Option<f64>,
    /// API root (tests point it at a mock): RTE `https://odre.opendatasoft.com`,
    /// Electricity Maps `https://api.electricitymap.org`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// RTE only: ODRÉ dataset (default `eco2mix-national-tr`).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Electricity Maps only: file holding the API key (sent as header `auth-token`).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// The key read from `api_key_file` by [`CarbonConfig::load_key`] when the configuration is loaded.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Per request.
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    /// A cached day of intensities is asked for again at most this often
    /// (the ODRÉ quota is 50,000 calls a month per dataset).
    #[serde(default = "default_min_refresh")]
    pub min_refresh: Dur,
}

/// A refused `[carbon]` key, with what to change.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("[carbon] key `{key}`: {message}")]
pub struct CarbonConfigError {
    pub key: &'static str,
    pub message: String,
}

fn err(key: &'static str, message: impl Into<String>) -> CarbonConfigError {
    CarbonConfigError { key, message: message.into() }
}

impl CarbonConfig {
    /// The basis of the live series (and so of the fallback).
    pub fn effective_basis(&self) -> FactorBasis {
        match self.source {
            SourceKind::Rte => FactorBasis::Direct,
            SourceKind::Electricitymaps => self.basis.unwrap_or(FactorBasis::Lifecycle),
            SourceKind::Static => self.basis.unwrap_or(FactorBasis::Lifecycle),
        }
    }

    /// Checks every key; the first problem is returned with its fix.
    pub fn validate(&self) -> Result<(), CarbonConfigError> {
        let zone = self.grid_zone.trim();
        if zone.is_empty() || !zone.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(err(
                "grid_zone",
                format!("{:?} must be a zone code such as \"FR\" or \"DK-DK2\"", self.grid_zone),
            ));
        }
        for (key, v) in [
            ("fallback_g_per_kwh", self.fallback_g_per_kwh),
            ("residual_mix_g_per_kwh", self.residual_mix_g_per_kwh),
            ("chilled_water_g_per_kwh", self.chilled_water_g_per_kwh),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && (0.0..=2000.0).contains(&v))
            {
                return Err(err(key, format!("{v} is not an intensity in gCO2e/kWh (0 to 2000)")));
            }
        }
        if let Some(f) = self.fuel_kg_per_litre
            && !(f.is_finite() && f > 0.0 && f < 10.0)
        {
            return Err(err(
                "fuel_kg_per_litre",
                format!("{f} is not kgCO2e per litre of fuel (diesel is about 2.5–3.3)"),
            ));
        }
        if let Some(u) = &self.base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(err("base_url", format!("{u:?} must start with http:// or https://")));
        }
        if self.source != SourceKind::Rte && self.dataset.is_some() {
            return Err(err("dataset", "applies to source = \"rte\" only"));
        }
        if self.source != SourceKind::Electricitymaps && self.api_key_file.is_some() {
            return Err(err("api_key_file", "applies to source = \"electricitymaps\" only"));
        }
        match self.source {
            SourceKind::Static => {
                if self.base_url.is_some() {
                    return Err(err("base_url", "source = \"static\" makes no request"));
                }
                let Some(basis) = self.basis else {
                    return Err(err(
                        "basis",
                        "source = \"static\" needs the factor's basis: \"direct\" (combustion only, e.g. RTE) or \
                         \"lifecycle\" (e.g. ADEME Base Empreinte)",
                    ));
                };
                if self.fallback_g_per_kwh.is_none() && !static_factors::has(zone, basis) {
                    return Err(err(
                        "fallback_g_per_kwh",
                        format!(
                            "no shipped {} factor for grid_zone {zone:?}; set fallback_g_per_kwh to the factor to use",
                            basis.as_str()
                        ),
                    ));
                }
            }
            SourceKind::Rte => {
                if !zone.eq_ignore_ascii_case("FR") {
                    return Err(err("grid_zone", format!("RTE éCO2mix covers France only (\"FR\"), not {zone:?}")));
                }
                if self.basis == Some(FactorBasis::Lifecycle) {
                    return Err(err(
                        "basis",
                        "RTE éCO2mix taux_co2 is a direct (combustion, production-based) intensity; a lifecycle \
                         fallback (e.g. ADEME Base Empreinte's ~50–60 g) would mix bases. Set basis = \"direct\" and a \
                         direct fallback, e.g. RTE's 2024 annual figure 21.7",
                    ));
                }
                if self.fallback_g_per_kwh.is_none() {
                    return Err(err(
                        "fallback_g_per_kwh",
                        "a live source needs a fallback intensity of its basis (direct for RTE, e.g. 21.7) for when \
                         it fails or times out",
                    ));
                }
            }
            SourceKind::Electricitymaps => {
                if self.api_key_file.is_none() {
                    return Err(err("api_key_file", "Electricity Maps needs an API key file (sent as auth-token)"));
                }
                if self.fallback_g_per_kwh.is_none() {
                    return Err(err(
                        "fallback_g_per_kwh",
                        format!(
                            "a live source needs a fallback intensity of its basis ({}) for when it fails or times out",
                            self.effective_basis().as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Carries the carbon keys the indicators need into the site's parameters.
    pub fn apply(&self, p: &mut SiteParams) {
        p.fuel_kg_per_litre = self.fuel_kg_per_litre;
        p.residual_mix_g_per_kwh = self.residual_mix_g_per_kwh;
        p.chilled_water_g_per_kwh = self.chilled_water_g_per_kwh;
    }

    /// Reads the Electricity Maps API key from `api_key_file` (when the source
    /// needs one), so that a missing or empty file is refused with the rest of
    /// the configuration, before anything binds.
    pub fn load_key(&mut self) -> Result<(), CarbonConfigError> {
        if self.source == SourceKind::Electricitymaps {
            self.api_key = Some(self.read_key()?);
        }
        Ok(())
    }

    fn read_key(&self) -> Result<Secret, CarbonConfigError> {
        let path = self.api_key_file.as_ref().ok_or_else(|| err("api_key_file", "missing"))?;
        crate::secret_file::read_secret_file(path, true).map_err(|why| err("api_key_file", why))
    }

    /// Validates and builds the cached service, with the key [`CarbonConfig::load_key`] read
    /// (or, for a configuration built in code, read now).
    pub fn build(&self) -> Result<CarbonService, CarbonConfigError> {
        self.validate()?;
        let zone = self.grid_zone.trim().to_ascii_uppercase();
        let basis = self.effective_basis();
        let client = || {
            reqwest::Client::builder()
                .timeout(self.timeout.0)
                .user_agent(concat!("domesday-collector/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| err("base_url", format!("cannot build an HTTP client: {e}")))
        };
        let source: Arc<dyn IntensitySource> = match self.source {
            SourceKind::Static => {
                Arc::new(StaticSource { grid_zone: zone, basis, configured: self.fallback_g_per_kwh })
            }
            SourceKind::Rte => Arc::new(RteSource::new(
                client()?,
                self.base_url.as_deref().unwrap_or(super::rte::DEFAULT_BASE_URL),
                self.dataset.as_deref().unwrap_or(super::rte::DEFAULT_DATASET),
            )),
            SourceKind::Electricitymaps => {
                let key = match &self.api_key {
                    Some(k) => k.clone(),
                    None => self.read_key()?,
                };
                Arc::new(ElectricityMapsSource::new(
                    client()?,
                    self.base_url.as_deref().unwrap_or(super::electricitymaps::DEFAULT_BASE_URL),
                    &zone,
                    key.expose(),
                    basis,
                ))
            }
        };
        let fallback = match self.source {
            SourceKind::Static => None,
            _ => self.fallback_g_per_kwh,
        };
        let opts =
            ServiceOptions { timeout: self.timeout.0, min_refresh: self.min_refresh.0, ..ServiceOptions::default() };
        Ok(CarbonService::new(source, fallback, opts))
    }
}
