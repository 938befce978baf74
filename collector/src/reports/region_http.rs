//! `GET /reports/region?region=&year=` (or `from`/`to`): the HTML page of
//! `report region --format html`, with the declarations of `[reports]`.
//! A read endpoint: free on loopback, else the read token.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::region::{RegionError, RegionRequest, region_document};
use super::region_render::RegionFormat;
use crate::api::{Shared, deny_read, error, parse_range};
use crate::ledger::writer::now_ms;

#[derive(Debug, Deserialize)]
pub struct RegionParams {
    region: Option<String>,
    year: Option<i16>,
    from: Option<String>,
    to: Option<String>,
}

pub async fn report_region(
    State(state): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(p): Query<RegionParams>,
) -> Response {
    if let Some(r) = deny_read(&state, peer, &headers) {
        return r;
    }
    let Some(region) = p.region.clone().filter(|r| !r.is_empty()) else {
        return error(StatusCode::BAD_REQUEST, "`region` is required");
    };
    let range = match (p.year, &p.from, &p.to) {
        (Some(_), None, None) => None,
        (None, Some(_), Some(_)) => match parse_range(p.from.as_deref(), p.to.as_deref()) {
            Ok(r) => Some(r),
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
        _ => return error(StatusCode::BAD_REQUEST, "give `year`, or `from` and `to`"),
    };
    let req = RegionRequest { region, year: p.year, range };
    let sites: Vec<_> = state.sites.iter().map(|s| s.config.clone()).collect();
    let reader = state.reader.clone();
    let doc = crate::site_report::with_blocking_reads(region_document(
        Some(reader.as_ref()),
        &sites,
        &state.declarations,
        state.carbon_config.as_ref(),
        state.carbon.as_deref(),
        &req,
        RegionFormat::Html,
        now_ms(),
    ))
    .await;
    match doc {
        Ok(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], bytes).into_response(),
        Err(RegionError::Input(e)) => error(StatusCode::NOT_FOUND, e),
        Err(e @ RegionError::Declaration { .. }) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        Err(RegionError::Report(crate::site_report::ReportError::Period(e))) => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
