//! Renders a [`Snapshot`] as Prometheus text exposition 0.0.4 with the
//! `prometheus` crate's encoder (escaping, number formatting), families in
//! catalog order and series sorted, so the output is stable for golden files.

use domesday_model::catalog::{CATALOG, Kind};
use prometheus::Encoder;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::config::AgentConfig;
use crate::sampler::Snapshot;

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The constant labels: `site`, `host`, then the extras in name order.
pub fn constant_labels(cfg: &AgentConfig) -> Vec<(String, String)> {
    let mut v = vec![("site".to_string(), cfg.site.clone()), ("host".to_string(), cfg.host.clone())];
    v.extend(cfg.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    v
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

/// The full `/metrics` body.
pub fn render(snap: &Snapshot, constant: &[(String, String)]) -> String {
    let mut families = Vec::new();
    for def in CATALOG {
        let mut series: Vec<&crate::sources::Sample> = snap.samples.iter().filter(|s| s.def.name == def.name).collect();
        if series.is_empty() {
            continue;
        }
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        series.dedup_by(|a, b| a.labels == b.labels);
        let mut fam = MetricFamily::default();
        fam.set_name(def.name.to_string());
        fam.set_help(def.help.to_string());
        fam.set_field_type(match def.kind {
            Kind::Counter => MetricType::COUNTER,
            Kind::Gauge => MetricType::GAUGE,
        });
        let metrics = series
            .into_iter()
            .map(|s| {
                let mut m = Metric::default();
                let mut labels: Vec<LabelPair> = constant.iter().map(|(k, v)| pair(k, v)).collect();
                labels.extend(def.labels.iter().zip(&s.labels).map(|(k, v)| pair(k, v)));
                m.set_label(labels);
                match def.kind {
                    Kind::Counter => {
                        let mut c = Counter::default();
                        c.set_value(s.value);
                        m.set_counter(c);
                    }
                    Kind::Gauge => {
                        let mut g = Gauge::default();
                        g.set_value(s.value);
                        m.set_gauge(g);
                    }
                }
                m
            })
            .collect();
        fam.set_metric(metrics);
        families.push(fam);
    }
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "cannot encode the exposition");
    }
    String::from_utf8(buf).unwrap_or_default()
}
