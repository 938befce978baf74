//! A site fed by agents (remote_write), CSV facility meters and a mock RTE
//! éCO2mix API produces PUE, CUE, WUE, ERF and REF through the real
//! collector's indicators endpoint; the test recomputes each from the raw
//! readings. An hour without utility data is refused (`missing_meter`), never
//! given a number. Each period also carries the embodied emissions of the
//! hosts that reported in it (from `domesday_host_info`), beside the
//! indicators and outside CUE.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domesday_model::remote_write::{Label, Sample, TimeSeries, WriteRequest, encode};
use domesday_tests::{Collector, free_port, get_text, host_energy_series, mock_http, post_write, url_decode};

const TOKEN: &str = "indicator-token";
const HOUR: i64 = 3_600_000;

/// RTE rows for the requested range: 15-minute `taux_co2` of 10, 20, 30, 40 g/kWh in each hour.
fn rte(target: &str) -> (u16, String) {
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
    let where_ = query.split('&').find_map(|kv| kv.strip_prefix("where=")).map(url_decode).unwrap_or_default();
    let dates: Vec<i64> = where_
        .split("date'")
        .skip(1)
        .filter_map(|p| p.split('\'').next())
        .filter_map(|d| d.parse::<jiff::Timestamp>().ok())
        .map(|t| t.as_millisecond())
        .collect();
    let (from, to) = match dates.as_slice() {
        [a, b, ..] => (*a, *b),
        _ => return (400, "{\"error\":\"no range\"}".into()),
    };
    let offset: usize =
        query.split('&').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let all: Vec<String> = (0..)
        .map(|i| from + i * 900_000)
        .take_while(|t| *t < to)
        .map(|t| {
            let quarter = (t / 900_000).rem_euclid(4);
            let ts = jiff::Timestamp::from_millisecond(t).map(|x| x.to_string()).unwrap_or_default();
            format!("{{\"date_heure\":\"{ts}\",\"taux_co2\":{}}}", 10 * (quarter + 1))
        })
        .collect();
    let page: Vec<String> = all.iter().skip(offset).take(100).cloned().collect();
    (200, format!("{{\"total_count\":{},\"results\":[{}]}}", all.len(), page.join(",")))
}

fn config(dir: &std::path::Path, port: u16, rte_port: u16) -> std::path::PathBuf {
    std::fs::write(dir.join("t"), TOKEN).expect("token");
    let p = dir.join("collector.toml");
    let meter = |id: &str, role: &str, unit: &str| {
        format!("\n[[sites.meters]]\nid = \"{id}\"\nrole = \"{role}\"\nkind = \"csv\"\nunit = \"{unit}\"\n")
    };
    std::fs::write(
        &p,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndb = {:?}\ngauges_refresh = \"1s\"\n\n[carbon]\nsource = \"rte\"\ngrid_zone = \"FR\"\nfallback_g_per_kwh = 50.0\nbasis = \"direct\"\nbase_url = \"http://127.0.0.1:{rte_port}\"\ntimeout = \"5s\"\n\n[[sites]]\nid = \"caen-1\"\ntimezone = \"Europe/Paris\"\ntoken_file = {:?}\n{}{}{}{}",
            dir.join("domesday.db").display().to_string(),
            dir.join("t").display().to_string(),
            meter("edf", "utility_in", "kWh"),
            meter("pv", "onsite_renewable_consumed", "kWh"),
            meter("chaleur", "heat_reused_out", "kWh"),
            meter("eau", "water_in", "m3"),
        ),
    )
    .expect("config");
    p
}

/// A `domesday_host_info` series as an agent pushes it.
fn host_info(host: &str, vendor: &str, product: &str, machine_id: &str, t: i64) -> TimeSeries {
    let mut labels: Vec<Label> = [
        ("__name__", "domesday_host_info"),
        ("cpu_model", "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz"),
        ("host", host),
        ("job", "domesday-agent"),
        ("machine_id", machine_id),
        ("product", product),
        ("site", "caen-1"),
        ("sockets", "2"),
        ("vendor", vendor),
    ]
    .iter()
    .map(|(n, v)| Label { name: (*n).into(), value: (*v).into() })
    .collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    TimeSeries { labels, samples: vec![Sample { value: 1.0, timestamp: t }] }
}

fn indicator<'a>(period: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    period["indicators"]
        .as_array()
        .and_then(|a| a.iter().find(|i| i["name"] == name && (i["basis"].is_null() || i["basis"] == "location")))
        .unwrap_or(&serde_json::Value::Null)
}

fn close(v: &serde_json::Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-9 * want.abs().max(1.0))
}

#[test]
fn indicators_are_ratios_of_the_raw_readings() {
    let dir = tempfile::tempdir().expect("tmp");
    let rte_port = mock_http(rte);
    let port = free_port();
    let cfg = config(dir.path(), port, rte_port);
    let c = Collector::spawn(dir.path(), port, &cfg);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let h0 = now / HOUR * HOUR - 6 * HOUR;
    // Two agents at 250 W each over three hours: 0.5 kWh of IT energy per hour.
    // srv-a is a Dell PowerEdge R740 (in the shipped table), srv-b a model it does not know.
    for (host, vendor, product) in [("srv-a", "Dell Inc.", "PowerEdge R740"), ("srv-b", "Acme", "Rackbox 9")] {
        let points: Vec<(f64, i64)> = (0..=180).map(|m| (250.0 * 60.0 * m as f64, h0 + m * 60_000)).collect();
        let body = encode(&WriteRequest {
            timeseries: vec![
                host_info(host, vendor, product, &format!("{host}-machine"), h0),
                host_energy_series("caen-1", host, "psu_input", &points),
            ],
        });
        assert_eq!(post_write(&c.url("/api/v1/write"), Some(TOKEN), body).map(|r| r.0), Ok(204));
    }
    // Meters: utility 0.15 kWh per quarter hour for the first two hours only; PV, heat and water per hour.
    let ts = |ms: i64| jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default();
    let mut csv = String::from("start,end,meter,value\n");
    for q in 0..8 {
        csv.push_str(&format!("{},{},edf,0.15\n", ts(h0 + q * 900_000), ts(h0 + (q + 1) * 900_000)));
    }
    for h in 0..3 {
        let (a, b) = (ts(h0 + h * HOUR), ts(h0 + (h + 1) * HOUR));
        csv.push_str(&format!("{a},{b},pv,0.06\n{a},{b},chaleur,0.15\n{a},{b},eau,0.0015\n"));
    }
    c.upload_readings("caen-1", TOKEN, csv);

    let body = get_text(
        &c.url(&format!("/api/v1/sites/caen-1/indicators?from={}&to={}&step=1h", ts(h0), ts(h0 + 3 * HOUR))),
        Duration::from_secs(30),
    );
    let r: serde_json::Value = serde_json::from_str(&body).expect("json");
    let periods = r["periods"].as_array().expect("periods");
    assert_eq!(periods.len(), 3, "{r}");
    // Recomputed from the readings: E_DC = 0.6 grid + 0.06 PV = 0.66 kWh; E_IT = 0.5 kWh.
    let (e_dc, e_it) = (0.66, 0.5);
    for p in &periods[..2] {
        let pue = indicator(p, "pue");
        assert!(close(&pue["value"], e_dc / e_it), "{pue}");
        assert_eq!(pue["category"], 3);
        assert!(close(&pue["numerator"], e_dc) && close(&pue["denominator"], e_it), "{pue}");
        assert!(close(&indicator(p, "dcie")["value"], e_it / e_dc));
        assert!(close(&indicator(p, "wue")["value"], 1.5 / e_it), "{}", indicator(p, "wue"));
        assert!(close(&indicator(p, "erf")["value"], 0.15 / e_dc), "{}", indicator(p, "erf"));
        assert!(close(&indicator(p, "ref")["value"], 0.06 / e_dc), "{}", indicator(p, "ref"));
        // Time-matched: the grid's 0.6 kWh, evenly over the hour, × mean(10, 20, 30, 40) g/kWh.
        let cue = indicator(p, "cue");
        assert!(close(&cue["value"], 0.6 * 25.0 / 1000.0 / e_it), "{cue}");
        assert_eq!(cue["carbon_fallback"], false, "{cue}");
        assert!(cue["carbon_source"].as_str().unwrap_or_default().contains("rte"), "{cue}");
        assert_eq!(pue["estimated_share"], 0.0);
    }
    // Embodied emissions, per period, beside the indicators: the table's footprints
    // (967.9 kg for the R740, the 1,000 kg default for the unknown model) × 1 h / 4 years.
    // CUE above is the grid's alone.
    for p in periods {
        let e = &p["embodied"];
        assert!(close(&e["kg_co2e"], (967.9 + 1000.0) / 35_040.0), "{e}");
        assert_eq!((e["hosts"].as_u64(), e["unknown_models"].as_u64()), (Some(2), Some(1)), "{e}");
        assert_eq!(e["lifetime_years"], 4.0, "{e}");
        let source = e["source"].as_str().unwrap_or_default();
        assert!(source.contains("dell_r740: BoaviztAPI") && source.contains("unknown models"), "{e}");
        assert!(indicator(p, "cue").get("embodied").is_none());
    }
    // The third hour has no utility reading: no PUE, and the missing meter is named.
    let pue = indicator(&periods[2], "pue");
    assert!(pue["value"].is_null(), "{pue}");
    assert_eq!(pue["error"], "missing_meter", "{pue}");
    assert!(pue["missing_meters"].to_string().contains("edf"), "{pue}");

    // The same maths feeds /metrics over rolling windows: over 24 h, E_DC = 1.2 + 0.18 kWh,
    // E_IT = 1.5 kWh, so the PUE is below 1 (the third hour has no utility reading) and is
    // refused, while the ratios that stand are exported.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // A refresh that began before the uploads shows some gauges without them (they are
    // recomputed one after the other): wait (30 s at most) for one that saw all of them.
    let metrics = loop {
        let m = get_text(&c.url("/metrics"), Duration::from_secs(5));
        let near = |name: &str, needles: &[&str], want: f64| {
            domesday_tests::series_value(&m, name, needles).is_some_and(|x| (x - want).abs() < 1e-6)
        };
        let refreshed = near("domesday_site_wue_liters_per_kwh", &["window=\"24h\"", "water=\"total\""], 3.0)
            && near("domesday_site_coverage_ratio", &["role=\"utility_in\"", "window=\"24h\""], 2.0 / 24.0)
            && near("domesday_site_emissions_grams_total", &["basis=\"location\""], 30.0);
        if refreshed || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let v = |name: &str, needles: &[&str]| domesday_tests::series_value(&metrics, name, needles);
    assert!(v("domesday_site_pue", &["window=\"24h\""]).is_none(), "{metrics}");
    assert!(
        v("domesday_site_wue_liters_per_kwh", &["window=\"24h\"", "water=\"total\""])
            .is_some_and(|x| (x - 3.0).abs() < 1e-9),
        "{metrics}"
    );
    assert!(
        v("domesday_site_erf_ratio", &["window=\"24h\""]).is_some_and(|x| (x - 0.45 / 1.38).abs() < 1e-9),
        "{metrics}"
    );
    assert!(
        v("domesday_site_coverage_ratio", &["role=\"utility_in\"", "window=\"24h\""])
            .is_some_and(|x| (x - 2.0 / 24.0).abs() < 1e-9),
        "{metrics}"
    );
    assert_eq!(v("domesday_site_info", &["site=\"caen-1\"", "timezone=\"Europe/Paris\""]), Some(1.0));
    assert!(
        v("domesday_site_emissions_grams_total", &["basis=\"location\""]).is_some_and(|g| (g - 30.0).abs() < 1e-6),
        "{metrics}"
    );
    assert!(
        domesday_tests::promtool_check_metrics(&metrics).is_empty(),
        "{}",
        domesday_tests::promtool_check_metrics(&metrics)
    );
}
