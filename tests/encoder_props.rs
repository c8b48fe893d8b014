//! Property test of the exposition encoder: whatever label values a hostile process puts
//! in (quotes, backslashes, newlines, braces, invalid-looking UTF-8, huge strings) and
//! whatever counter and gauge values, both formats parse with an independent strict
//! parser and give back exactly the labels and values encoded.

mod common;

use periscope::export::prometheus::encode::{encode, Format};
use periscope::model::{Family, MetricKind, Value};
use proptest::prelude::*;

fn label_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,12}",
        Just("a\"b\\c{d}\ne".to_string()),
        Just("\\".to_string()),
        Just("\"\"\"".to_string()),
        Just("line\nbreak\r\n".to_string()),
        Just("}\n# HELP fake_metric forged\nfake_metric 1".to_string()),
        ".{0,40}",
        "\\PC{0,200}",
    ]
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(1.0),
        Just(f64::MAX),
        Just(1e-300),
        Just(9_007_199_254_740_993.0),
        (0u64..u64::MAX).prop_map(|v| v as f64),
        (0.0f64..1e18),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_labels_round_trip_through_both_formats(
        series in proptest::collection::vec((label_value(), label_value(), value()), 1..12)
    ) {
        let mut counter = Family::new("psc_test_events", "Events, for the property test.", MetricKind::Counter);
        let mut gauge = Family::new("psc_test_level", "A level \\ with \"quotes\"\nand a newline.", MetricKind::Gauge);
        for (index, (a, b, v)) in series.iter().enumerate() {
            let labels = vec![
                ("process_executable_name", a.clone()),
                ("http_route", b.clone()),
                ("slot", index.to_string()),
            ];
            counter.push(labels.clone(), Value::Counter(*v));
            gauge.push(labels, Value::Gauge(*v));
        }
        let families = [counter, gauge];
        for format in [Format::Text004, Format::OpenMetrics] {
            let text = encode(&families, format);
            let parsed = common::Metrics::parse(&text);
            for (index, (a, b, v)) in series.iter().enumerate() {
                let slot = index.to_string();
                for name in ["psc_test_events_total", "psc_test_level"] {
                    let want = [("slot", slot.as_str())];
                    let found: Vec<_> = parsed.find(name, &want).collect();
                    prop_assert_eq!(found.len(), 1, "{} slot {}", name, slot);
                    let (_, labels, got) = found[0];
                    prop_assert_eq!(labels.get("process_executable_name"), Some(a));
                    prop_assert_eq!(labels.get("http_route"), Some(b));
                    // Values within the precision the formats print.
                    prop_assert!((got - v).abs() <= v.abs() * 1e-15, "{} != {}", got, v);
                }
            }
            // Nothing a label held became a metric of its own.
            prop_assert_eq!(parsed.find("fake_metric", &[]).count(), 0);
        }
    }
}
