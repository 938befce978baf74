//! Prometheus text exposition (0.0.4) of catalog families, shared by the agent
//! and the collector: a [`Sample`] names its family in the catalog, and
//! [`render`] formats samples with the `prometheus` crate's encoder (escaping,
//! number format), families in catalog order and series sorted, so the output
//! is stable for golden files.

use prometheus::Encoder;
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

use crate::catalog::{CATALOG, Kind, MetricDef};

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One exported value: a family of the catalog, its label values in the
/// catalog's label order, and the value in the family's base unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub def: &'static MetricDef,
    pub labels: Vec<String>,
    pub value: f64,
}

impl Sample {
    pub fn new(def: &'static MetricDef, labels: Vec<String>, value: f64) -> Self {
        debug_assert_eq!(def.labels.len(), labels.len(), "{}", def.name);
        Sample { def, labels, value }
    }
}

fn pair(name: &str, value: &str) -> LabelPair {
    let mut p = LabelPair::default();
    p.set_name(name.to_string());
    p.set_value(value.to_string());
    p
}

/// Renders samples; `constant` labels come first on every series.
pub fn render(samples: &[Sample], constant: &[(String, String)]) -> String {
    let mut families = Vec::new();
    for def in CATALOG {
        let mut series: Vec<&Sample> = samples.iter().filter(|s| s.def.name == def.name).collect();
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
    // Encoding plain families into a Vec cannot fail; an error would be a bug in
    // the label set, and an empty body is the safe answer.
    if prometheus::TextEncoder::new().encode(&families, &mut buf).is_err() {
        return String::new();
    }
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{HOST_POWER, LOAD_AVERAGE};

    #[test]
    fn families_in_catalog_order_series_sorted_and_escaped() {
        let s = vec![
            Sample::new(&HOST_POWER, vec!["model".into(), "estimated".into()], 120.5),
            Sample::new(&LOAD_AVERAGE, vec!["5m".into()], 2.0),
            Sample::new(&LOAD_AVERAGE, vec!["1m".into()], 1.0),
        ];
        let text = render(&s, &[("site".into(), "a\"b".into())]);
        let load = text.find("domesday_load_average{").unwrap_or(usize::MAX);
        let power = text.find("domesday_host_power_watts{").unwrap_or(0);
        assert!(load < power, "{text}");
        assert!(text.contains("site=\"a\\\"b\",window=\"1m\"} 1\n"), "{text}");
        assert!(text.contains("# TYPE domesday_host_power_watts gauge"));
    }
}
