//! One EED declaration document, as the command and the HTTP endpoint both
//! produce it: build, refuse when incomplete (unless a draft), render.

use super::eed::{Declaration, Missing, ReportPeriod, build};
use super::render::{OutputFormat, RenderError, render};
use crate::carbon::config::CarbonConfig;
use crate::carbon::service::CarbonService;
use crate::config::SiteConfig;
use crate::ledger::LedgerReader;
use crate::site_report::ReportError;

/// Why no document was produced.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("{0}")]
    Report(#[from] ReportError),
    #[error("{0}")]
    Render(#[from] RenderError),
    /// Mandatory fields are missing and no draft was asked for.
    #[error("{}", incomplete_message(.site, .missing))]
    Incomplete { site: String, missing: Vec<Missing> },
}

/// The refusal's text: one line per missing field with its point and the key that fills it.
pub fn incomplete_message(site: &str, missing: &[Missing]) -> String {
    let lines: Vec<String> = missing
        .iter()
        .map(|m| {
            let point = [m.annex.map(|a| format!("Annex {a}")), m.point.map(str::to_string)]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" ");
            format!("  {} ({point}): set {}", m.field, m.config_key)
        })
        .collect();
    format!(
        "the declaration of {site} lacks {} mandatory field(s); nothing was written (--draft, or &draft=true over HTTP, writes it anyway):\n{}",
        missing.len(),
        lines.join("\n")
    )
}

/// `generated_at` of a document made at `now_ms`: `SOURCE_DATE_EPOCH`
/// (seconds, reproducible-builds.org) when set to an integer, else the clock.
pub fn generated_at(now_ms: i64) -> String {
    let ms = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(now_ms);
    crate::ledger::query::rfc3339(ms)
}

/// What to produce.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub period: ReportPeriod,
    pub format: OutputFormat,
    pub draft: bool,
}

/// The declaration of `site` over `period`, refused when incomplete unless `draft`.
pub async fn declaration(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    period: ReportPeriod,
    draft: bool,
    now_ms: i64,
) -> Result<Declaration, DocumentError> {
    let d = build(reader, site, carbon_config, carbon, period, now_ms, generated_at(now_ms)).await?;
    if !d.missing.is_empty() && !draft {
        return Err(DocumentError::Incomplete { site: site.id.clone(), missing: d.missing });
    }
    Ok(d)
}

/// The declaration of `site` over the request's period, rendered.
pub async fn eed_document(
    reader: &dyn LedgerReader,
    site: &SiteConfig,
    carbon_config: Option<&CarbonConfig>,
    carbon: Option<&CarbonService>,
    req: Request,
    now_ms: i64,
) -> Result<Vec<u8>, DocumentError> {
    let d = declaration(reader, site, carbon_config, carbon, req.period, req.draft, now_ms).await?;
    Ok(render(&d, req.format)?)
}
