use super::*;

fn error_text(yaml: &str) -> String {
    match Config::from_yaml("periscope.yaml", yaml) {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(err) => err.to_string(),
    }
}

#[test]
fn embedded_default_equals_code_defaults() {
    let parsed = Config::from_yaml("default.yaml", &DEFAULT_CONFIG_YAML).expect("default parses");
    assert_eq!(parsed, Config::default());
}

#[test]
fn empty_and_comment_only_files_mean_defaults() {
    assert_eq!(
        Config::from_yaml("x", "").expect("empty"),
        Config::default()
    );
    assert_eq!(
        Config::from_yaml("x", "# nothing\n").expect("comment"),
        Config::default()
    );
}

#[test]
fn partial_file_keeps_other_defaults() {
    let config =
        Config::from_yaml("x", "probes:\n  syscalls:\n    max_series: 8\n").expect("valid");
    assert_eq!(config.probes.syscalls.max_series.get(), 8);
    assert_eq!(config.probes.syscalls.max_error_series.get(), 4096);
    assert_eq!(config.prometheus, PrometheusConfig::default());
}

/// Each refused setting: its YAML, where the error must say it stands, and what else the
/// message must hold (the key, the rule or the valid values).
#[test]
fn refused_settings_name_their_line_key_and_rule() {
    let too_many_pids: Vec<String> = (1..=1025).map(|p| p.to_string()).collect();
    let too_many_pids = format!(
        "probes:\n  syscalls:\n    include_pids: [{}]\n",
        too_many_pids.join(", ")
    );
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "probes:\n  syscalls:\n    enabled: true\n    max_seriess: 8\n",
            "periscope.yaml:4:",
            &["key `probes.syscalls.max_seriess`", "expected one of", "`max_series`"],
        ),
        (
            "prometheus:\n  listen_address: \"0.0.0.0:9101\"\nprocesses:\n  pid_label: maybe\n",
            "periscope.yaml:4:",
            &["key `processes.pid_label`", "expected a boolean"],
        ),
        (
            "probes:\n  process:\n    max_executables: 0\n",
            "periscope.yaml:3:",
            &["key `probes.process.max_executables`", "nonzero"],
        ),
        // A key indented out of its mapping: the parser stops where it stands.
        (
            "probes:\n  syscalls:\n    enabled: true\n   max_series: 3\n",
            "periscope.yaml:4:4:",
            &["did not find expected key"],
        ),
        // An unclosed list read as the section it replaces: the list's line and column.
        ("probes:\n  syscalls: [\n    enabled: true\n", "periscope.yaml:2:13:", &[]),
        (
            "probes:\n  syscalls:\n    latency_syscalls: [read, reed]\n",
            "periscope.yaml:3:",
            &["probes.syscalls.latency_syscalls", "unknown syscall `reed`"],
        ),
        (
            "probes:\n  syscalls:\n    enabled: true\n    duration_buckets_seconds: [0.1, 0.05]\n",
            "periscope.yaml:4",
            &["must increase strictly", "duration_buckets_seconds"],
        ),
        (
            "probes:\n  syscalls:\n    include_executables: [averyveryverylongname]\n",
            "periscope.yaml:3",
            &["1 to 15 bytes"],
        ),
        (
            "prometheus:\n  listen_address: \"nowhere\"\n",
            "periscope.yaml:2",
            &["prometheus.listen_address"],
        ),
        (
            "self_metrics:\n  bpf_stats: sampled\n  bpf_stats_sample_secs: 10\n  bpf_stats_period_secs: 10\n",
            "periscope.yaml:4",
            &["key `self_metrics.bpf_stats_period_secs`"],
        ),
        (
            "self_metrics:\n  bpf_stats: sometimes\n",
            "periscope.yaml:2:",
            &["`always`, `sampled`"],
        ),
        (&too_many_pids, "periscope.yaml:3", &["at most 1024"]),
        (
            "probes:\n  syscalls:\n    latency_sample_secs: 0\n",
            "periscope.yaml:3",
            &["key `probes.syscalls.latency_sample_secs`"],
        ),
        (
            "probes:\n  syscalls:\n    per_cpu_slots: 1000\n",
            "periscope.yaml:3",
            &["power of two"],
        ),
    ];
    for (yaml, at, says) in cases {
        let text = error_text(yaml);
        assert!(text.starts_with(at), "{yaml:.60}: {text}");
        for fragment in *says {
            assert!(text.contains(fragment), "{yaml:.60}: {text}");
        }
    }
    // Always-on timing ignores the latency window.
    Config::from_yaml(
        "x",
        "probes:\n  syscalls:\n    latency_sampling: always\n    latency_sample_secs: 0\n",
    )
    .expect("valid");
}

#[test]
fn otlp_settings_are_checked_with_their_line() {
    let text = error_text("exporters:\n  otlp:\n    enabled: true\n    protocol: thrift\n");
    assert!(
        text.contains("periscope.yaml:4") && text.contains("exporters.otlp.protocol"),
        "{text}"
    );
    let text = error_text("exporters:\n  otlp:\n    endpoint: \"ftp://collector:4318\"\n");
    assert!(
        text.contains("exporters.otlp.endpoint") && text.contains("https://"),
        "{text}"
    );
    let text = error_text("exporters:\n  otlp:\n    traces_tls:\n      key_file: client.key\n");
    assert!(
        text.contains("periscope.yaml:4") && text.contains("exporters.otlp.traces_tls.key_file"),
        "{text}"
    );
    let text = error_text("exporters:\n  otlp:\n    histograms: native\n");
    assert!(
        text.contains("periscope.yaml:3") && text.contains("exporters.otlp.histograms"),
        "{text}"
    );
    let text = error_text("exporters:\n  otlp:\n    exponential_scale: 4\n");
    assert!(
        text.contains("periscope.yaml:3")
            && text.contains("exporters.otlp.exponential_scale")
            && text.contains("from -4 to 3"),
        "{text}"
    );
    for bad in ["8", "-5", "300", "2.5"] {
        let text = error_text(&format!("prometheus:\n  native_histogram_schema: {bad}\n"));
        assert!(
            text.contains("periscope.yaml:2")
                && text.contains("prometheus.native_histogram_schema"),
            "{text}"
        );
    }
    let config = Config::from_yaml(
        "periscope.yaml",
        "prometheus:\n  native_histogram_schema: -4\nexporters:\n  otlp:\n    histograms: exponential\n    exponential_scale: 0\n",
    )
    .expect("valid");
    assert_eq!(config.prometheus.native_histogram_schema, -4);
    assert_eq!(config.exporters.otlp.exponential_scale, 0);
    let text = error_text("traces:\n  sampler: sometimes\n");
    assert!(text.contains("traces.sampler"), "{text}");
    let text = error_text("traces:\n  sampler_arg: 2\n");
    assert!(text.contains("traces.sampler_arg"), "{text}");
}

#[test]
fn otel_environment_variables_override_the_file() {
    let env: std::collections::HashMap<&str, &str> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,tenant=a"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ]
    .into_iter()
    .collect();
    let lookup = |name: &str| env.get(name).map(|v| v.to_string());
    let mut config = Config::default();
    config.exporters.otlp.apply_env(lookup).expect("valid");
    config.traces.apply_env(lookup).expect("valid");
    let otlp = &config.exporters.otlp;
    assert!(otlp.enabled);
    assert_eq!(otlp.base_endpoint(), "http://collector:4317");
    assert_eq!(otlp.protocol, "grpc");
    assert_eq!(
        otlp.headers.get("api-key").map(String::as_str),
        Some("s=cret")
    );
    assert_eq!(otlp.compression, "none");
    assert_eq!((otlp.timeout_secs, otlp.metrics_interval_secs), (3, 15));
    assert_eq!(
        config.traces.sampler(),
        crate::probes::kit::spans::Sampler::ParentBased(
            crate::probes::kit::spans::RootSampler::TraceIdRatio(0.25)
        )
    );
    let bad = |name: &'static str, value: &'static str| {
        move |n: &str| (n == name).then(|| value.to_string())
    };
    assert!(Config::default()
        .traces
        .apply_env(bad("OTEL_TRACES_SAMPLER_ARG", "lots"))
        .is_err());
    // An endpoint asks for traces unless OTEL_TRACES_EXPORTER says none; the file's
    // setting stands without one.
    assert!(config.traces.enabled);
    let mut traces = Config::default().traces;
    traces
        .apply_env(bad(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces",
        ))
        .expect("valid");
    assert!(traces.enabled);
    let none = |n: &str| match n {
        "OTEL_TRACES_EXPORTER" => Some("none".to_string()),
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://collector:4318".to_string()),
        _ => None,
    };
    traces.apply_env(none).expect("valid");
    assert!(!traces.enabled);
    let mut traces = Config::default().traces;
    traces.apply_env(|_: &str| None).expect("valid");
    assert!(!traces.enabled);
    let err = traces
        .apply_env(bad("OTEL_TRACES_EXPORTER", "zipkin"))
        .expect_err("unsupported");
    assert!(err.contains("OTEL_TRACES_EXPORTER"), "{err}");
    let err = Config::default()
        .exporters
        .otlp
        .apply_env(bad("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"))
        .expect_err("unsupported");
    assert!(err.contains("exporters.otlp.protocol"), "{err}");
    // The default endpoint follows the protocol.
    let grpc = OtlpConfig {
        protocol: "grpc".into(),
        ..OtlpConfig::default()
    };
    assert_eq!(grpc.base_endpoint(), "http://127.0.0.1:4317");
    assert_eq!(
        OtlpConfig::default().base_endpoint(),
        "http://127.0.0.1:4318"
    );
}

#[test]
fn more_kept_tenants_than_the_kernel_has_slots_for_are_refused() {
    let mut yaml = String::from("workloads:\n  enabled: true\ntenants:\n  rules:\n");
    for tenant in 0..64 {
        yaml.push_str(&format!(
            "    - tenant: t{tenant}\n      cgroup_path: \"/t{tenant}/*\"\n"
        ));
    }
    let text = error_text(&yaml);
    assert!(text.contains("key `tenants.rules`"), "{text}");
    assert!(text.contains("64 tenants are kept; at most 63"), "{text}");
    // Dropped tenants take no slot.
    let dropped = yaml.replace(
        "cgroup_path: \"/t0/*\"",
        "cgroup_path: \"/t0/*\"\n      drop: true",
    );
    Config::from_yaml("periscope.yaml", &dropped).expect("63 kept tenants fit");
}

#[test]
fn endpoint_limits_have_ranges() {
    for (yaml, key) in [
        (
            "prometheus:\n  max_connections: 70000\n",
            "prometheus.max_connections",
        ),
        ("prometheus:\n  max_connections: 0\n", "max_connections"),
        (
            "prometheus:\n  header_read_timeout_secs: 0\n",
            "prometheus.header_read_timeout_secs",
        ),
        (
            "prometheus:\n  header_read_timeout_secs: 18446744073709551615\n",
            "prometheus.header_read_timeout_secs",
        ),
    ] {
        let text = error_text(yaml);
        assert!(text.contains(key), "{yaml}: {text}");
    }
    let config = Config::from_yaml(
        "x",
        "prometheus:\n  max_connections: 64\n  header_read_timeout_secs: 30\n",
    )
    .expect("valid");
    assert_eq!(config.prometheus.max_connections.get(), 64);
    assert_eq!(config.prometheus.header_read_timeout_secs, 30);
}

#[test]
fn values_that_once_crashed_the_agent_are_refused_with_their_range() {
    for (yaml, key) in [
        (
            "self_metrics:\n  bpf_stats_period_secs: 18446744073709551615\n",
            "self_metrics.bpf_stats_period_secs",
        ),
        (
            "probes:\n  syscalls:\n    latency_period_secs: 18446744073709551615\n",
            "probes.syscalls.latency_period_secs",
        ),
        (
            "workloads:\n  refresh_secs: 18446744073709551615\n",
            "workloads.refresh_secs",
        ),
        (
            "exporters:\n  otlp:\n    metrics_interval_secs: 18446744073709551615\n",
            "exporters.otlp.metrics_interval_secs",
        ),
        (
            "probes:\n  tcp:\n    max_series: 4294967295\n",
            "probes.tcp.max_series",
        ),
        (
            "probes:\n  http:\n    ring_buffer_bytes: 2147483648\n",
            "probes.http.ring_buffer_bytes",
        ),
        (
            "exporters:\n  jsonl:\n    max_files: 4294967295\n    max_file_bytes: 1\n",
            "exporters.jsonl.max_file",
        ),
    ] {
        let text = error_text(yaml);
        assert!(
            text.contains(key) && text.contains("must be from"),
            "{yaml}: {text}"
        );
    }
}

#[test]
fn yaml_a_configuration_must_not_have_is_located() {
    let deep = format!("a: {}\n", "[".repeat(100_000));
    for (yaml, want) in [
        ("foo: 1\n", "periscope.yaml:1:1: key `foo`: unknown field"),
        (
            "prometheus: {}\n---\nprobes: {}\n",
            "periscope.yaml:2:1: a second YAML document",
        ),
        (
            "probes:\n  syscalls:\n    enabled: !x true\n",
            "periscope.yaml:3:14: YAML tags",
        ),
        (
            deep.as_str(),
            "periscope.yaml:1:36: collections nested deeper",
        ),
    ] {
        let text = error_text(yaml);
        assert!(text.starts_with(want), "{yaml:.40}: {text}");
    }
    // Quoted values and comments may hold any of those characters.
    Config::from_yaml(
        "x",
        "# a [[[ comment !\nexporters:\n  otlp:\n    headers: {authorization: \"Bearer !x [{\"}\n",
    )
    .expect("quoted and commented characters are not syntax");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Numbers at and around every edge a range can have.
    fn edge_number() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(4095),
            Just(4096),
            Just(86_400),
            Just(86_401),
            Just(65_536),
            Just(65_537),
            Just(1 << 20),
            Just((1 << 20) + 1),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            any::<u64>(),
            0u64..100_000,
        ]
    }

    /// The numeric keys, as (section path, key).
    fn numeric_keys() -> Vec<(String, String)> {
        Config::default()
            .ranges()
            .into_iter()
            .map(|(key, _)| {
                let (section, key) = key.rsplit_once('.').unwrap_or(("", &key));
                (section.to_string(), key.to_string())
            })
            .collect()
    }

    /// A YAML document setting `values` on the numeric keys picked by `picks`.
    fn document(picks: &[(usize, u64)]) -> String {
        let keys = numeric_keys();
        let mut tree: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (index, value) in picks {
            let (section, key) = &keys[index % keys.len()];
            tree.entry(section.clone())
                .or_default()
                .push(format!("{key}: {value}"));
        }
        let mut yaml = String::new();
        let mut previous: Vec<String> = Vec::new();
        for (section, lines) in tree {
            let parts: Vec<String> = section.split('.').map(String::from).collect();
            // Sections sharing a parent (probes.tcp, probes.http) share its key.
            let shared = parts
                .iter()
                .zip(&previous)
                .take_while(|(a, b)| a == b)
                .count();
            for (indent, part) in parts.iter().enumerate().skip(shared) {
                yaml.push_str(&format!("{}{part}:\n", "  ".repeat(indent)));
            }
            let indent = parts.len();
            previous = parts;
            let mut seen = std::collections::BTreeSet::new();
            for line in lines {
                // A key given twice is its own error; keep the first.
                if seen.insert(line.split(':').next().unwrap_or("").to_string()) {
                    yaml.push_str(&format!("{}{line}\n", "  ".repeat(indent)));
                }
            }
        }
        yaml
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever numbers a file gives, loading it never panics: it fails with an error
        /// located in the file, or every number is within its range.
        #[test]
        fn every_number_is_in_range_or_a_located_error(
            picks in proptest::collection::vec((0usize..64, edge_number()), 1..8)
        ) {
            let yaml = document(&picks);
            match Config::from_yaml("p.yaml", &yaml) {
                Ok(config) => {
                    for (key, range) in config.ranges() {
                        prop_assert!(
                            (range.min..=range.max).contains(&range.value),
                            "{key} = {} accepted",
                            range.value
                        );
                    }
                }
                Err(err) => {
                    let text = err.to_string();
                    prop_assert!(text.starts_with("p.yaml:"), "{text}");
                }
            }
        }

        /// Arbitrary text never panics the loader, and an error always names the file.
        #[test]
        fn arbitrary_text_never_panics_the_loader(text in ".{0,400}") {
            if let Err(err) = Config::from_yaml("p.yaml", &text) {
                prop_assert!(err.to_string().starts_with("p.yaml"));
            }
        }
    }
}
