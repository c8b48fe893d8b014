//! End-to-end: hostile process names cannot break the exposition formats.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{have_root, kernel_lock, Agent, Helper, Metrics, KILL_HELPER};

/// 15 bytes at most (the kernel's comm limit): quote, backslash, braces and a newline.
const HOSTILE: &str = "a\"b\\c{d}\ne";

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (scripts/setup.sh --test installs prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// The reference Python client's parsers (prometheus_client), independent of ours.
fn python_parse(text: &str, openmetrics: bool) -> String {
    let script = if openmetrics {
        "import sys\nfrom prometheus_client.openmetrics.parser import text_string_to_metric_families as p\nn = 0\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        if s.name == 'syscalls_total' and s.labels.get('syscall') == 'kill':\n            print(repr(s.labels['process_executable_name']), s.labels.get('process_pid'), float(s.value))\n"
    } else {
        "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\nfor f in p(sys.stdin.read()):\n    for s in f.samples:\n        if s.name == 'syscalls_total' and s.labels.get('syscall') == 'kill':\n            print(repr(s.labels['process_executable_name']), s.labels.get('process_pid'), float(s.value))\n"
    };
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed python");
    let out = child.wait_with_output().expect("python finishes");
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn hostile_process_name_keeps_the_exposition_intact() {
    if !have_root("hostile_process_name_keeps_the_exposition_intact") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("probes:\n  syscalls:\n    include_executables: [\"a\\\"b\\\\c{d}\\ne\"]\n    latency_syscalls: [kill]\n    latency_sampling: always\n");
    let mut helper = Helper::spawn(KILL_HELPER, &["42".into(), "0".into(), HOSTILE.into()]);
    let pid = helper.pid().to_string();
    helper.run();

    let text = agent.scrape();
    let (clean, report) = promtool_check(&text);
    assert!(clean, "promtool check metrics: {report}");

    // Our own strict parser: the name round-trips, and there is exactly one kill series.
    let metrics = Metrics::parse(&text);
    let series: Vec<_> = metrics
        .find("syscalls_total", &[("syscall", "kill")])
        .collect();
    assert_eq!(series.len(), 1, "no extra series: {series:?}");
    assert_eq!(series[0].1["process_executable_name"], HOSTILE);
    assert_eq!(series[0].1["process_pid"], pid);
    assert_eq!(series[0].2, 42.0);

    // The reference parser agrees, in both formats.
    let python_repr = python_parse(&text, false);
    assert_eq!(python_repr.lines().count(), 1, "{python_repr}");
    assert!(python_repr.contains(&pid), "{python_repr}");
    assert!(python_repr.contains("42.0"), "{python_repr}");
    assert!(
        python_repr.contains("\\n"),
        "the newline survives: {python_repr}"
    );

    let openmetrics = agent.scrape_as(Some("application/openmetrics-text; version=1.0.0"));
    assert!(openmetrics.ends_with("# EOF\n"));
    let om = python_parse(&openmetrics, true);
    assert_eq!(om.lines().count(), 1, "{om}");
    assert_eq!(om, python_repr, "both formats carry the same sample");

    // The protobuf exposition, decoded by protoc with client_model's own metrics.proto.
    let protobuf = protobuf_families(&agent);
    let kills: Vec<&String> = protobuf
        .iter()
        .filter(|f| f.starts_with("name: \"syscalls_total\""))
        .collect();
    assert_eq!(kills.len(), 1, "one syscalls_total family");
    assert!(
        kills[0].contains(r#"value: "a\"b\\c{d}\ne""#),
        "the name round-trips: {}",
        kills[0]
    );
    assert!(kills[0].contains(&format!("value: \"{pid}\"")));
    assert!(kills[0].contains("value: 42\n"), "{}", kills[0]);
    helper.finish();
}

/// Where Debian's golang-github-prometheus-client-model-dev puts the format's definition.
const CLIENT_MODEL: &str = "/usr/share/gocode/src/github.com/prometheus/client_model";

/// The agent's protobuf exposition, each family as `protoc --decode` prints it.
fn protobuf_families(agent: &Agent) -> Vec<String> {
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    let (status, body) =
        common::http_get_bytes(agent.port, "/metrics", Some(accept)).expect("scrape");
    assert_eq!(status, 200);
    // metrics.proto imports the Timestamp well-known type, which Debian ships apart
    // (libprotobuf-dev); its two fields are all the decoder needs.
    let includes = common::TempDir::new("protoc");
    includes.write(
        "google/protobuf/timestamp.proto",
        "syntax = \"proto3\";\npackage google.protobuf;\nmessage Timestamp { int64 seconds = 1; int32 nanos = 2; }\n",
    );
    let mut families = Vec::new();
    let mut rest = &body[..];
    while !rest.is_empty() {
        // Each message after its length, a base-128 varint.
        let length = prost::decode_length_delimiter(&mut rest).expect("a length");
        let (message, after) = rest.split_at(length);
        rest = after;
        let mut protoc = Command::new("protoc")
            .args([
                "--decode=io.prometheus.client.MetricFamily",
                "-I",
                CLIENT_MODEL,
                "-I",
            ])
            .arg(includes.path())
            .arg("io/prometheus/client/metrics.proto")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("protoc runs (scripts/setup.sh --test installs it)");
        protoc
            .stdin
            .take()
            .expect("stdin")
            .write_all(message)
            .expect("write");
        let out = protoc.wait_with_output().expect("protoc");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        families.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    families
}

#[test]
fn default_scrape_passes_promtool_and_both_formats_parse() {
    if !have_root("default_scrape_passes_promtool_and_both_formats_parse") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start("self_metrics:\n  bpf_stats: always\n");
    let text = agent.scrape();
    let (clean, report) = promtool_check(&text);
    assert!(clean, "promtool check metrics: {report}");
    for family in [
        "syscalls_total",
        "syscall_errors_total",
        "syscall_duration_seconds",
        "process_execs_total",
        "process_exits_total",
        "oom_kills_total",
        "periscope_build_info",
        "periscope_bpf_program_runs_total",
        "periscope_bpf_program_run_seconds_total",
        "periscope_bpf_program_recursion_misses_total",
        "periscope_bpf_stats_enabled_seconds_total",
        "periscope_bpf_map_entries",
        "periscope_series_folded_total",
        "periscope_events_lost_total",
        "periscope_scrape_duration_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} is exported"
        );
    }
    let metrics = Metrics::parse(&text);
    assert!(
        metrics.one(
            "periscope_bpf_program_runs_total",
            &[("probe", "syscalls"), ("program", "psc_sys_exit")]
        ) > 0.0
    );
    assert!(metrics.one("periscope_bpf_stats_enabled_seconds_total", &[]) > 0.0);
    let om = agent.scrape_as(Some("application/openmetrics-text; version=1.0.0"));
    assert!(om.contains("# TYPE syscalls counter\n"));
    assert!(om.contains("# UNIT syscall_duration_seconds seconds\n"));
    assert!(om.contains("syscalls_created{"));
    python_parse(&om, true);
    python_parse(&text, false);
    // The same families in protobuf, histograms with their classic buckets.
    let protobuf = protobuf_families(&agent);
    let names: Vec<&str> = protobuf
        .iter()
        .filter_map(|f| {
            f.lines()
                .next()?
                .strip_prefix("name: \"")?
                .strip_suffix('"')
        })
        .collect();
    for family in [
        "syscalls_total",
        "syscall_duration_seconds",
        "periscope_build_info",
    ] {
        assert!(names.contains(&family), "{family} in {names:?}");
    }
    let durations = protobuf
        .iter()
        .find(|f| f.starts_with("name: \"syscall_duration_seconds\""))
        .expect("the histogram");
    assert!(durations.contains("type: HISTOGRAM"));
    assert!(durations.contains("cumulative_count:") && durations.contains("upper_bound:"));
}

/// Sampled statistics: off at start, then on for a window each period.
#[test]
fn sampled_bpf_stats_open_a_window_each_period() {
    if !have_root("sampled_bpf_stats_open_a_window_each_period") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "self_metrics:\n  bpf_stats: sampled\n  bpf_stats_sample_secs: 1\n  bpf_stats_period_secs: 4\n",
    );
    let stats_on = |m: &Metrics| m.one("periscope_bpf_stats_enabled_seconds_total", &[]);
    let runs = |m: &Metrics| {
        m.one(
            "periscope_bpf_program_runs_total",
            &[("probe", "syscalls"), ("program", "psc_sys_exit")],
        )
    };
    let first = agent.metrics();
    assert_eq!(stats_on(&first), 0.0, "no window during start-up");
    assert_eq!(runs(&first), 0.0);
    let later = common::eventually(&agent, |m| stats_on(m) > 0.0 && runs(m) > 0.0);
    assert!(stats_on(&later) > 0.0);
    assert!(runs(&later) > 0.0);
}

/// An attack on the native histograms: a process records syscall latencies as fast as
/// it can while a client scrapes the protobuf exposition back to back. Every native
/// histogram of every scrape stays whole: its buckets and zero bucket add up to its
/// count (Prometheus refuses a histogram whose do not), no bucket is negative, and its
/// classic buckets climb to at most that count.
#[test]
fn native_histograms_stay_whole_while_scraped_during_a_flood_of_timed_syscalls() {
    if !have_root("native_histograms_stay_whole_while_scraped_during_a_flood_of_timed_syscalls") {
        return;
    }
    let _kernel = kernel_lock();
    let agent = Agent::start(
        "probes:\n  syscalls:\n    latency_syscalls: [kill, getppid]\n    latency_sampling: always\n    latency_per_process: true\n",
    );
    let mut flood = Command::new("python3")
        .args([
            "-c",
            "import os\nfor _ in range(4_000_000):\n    os.kill(os.getpid(), 0)\n    os.getppid()\n",
        ])
        .spawn()
        .expect("python3");
    let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";
    let mut histograms_checked = 0;
    for _ in 0..100 {
        let (status, body) =
            common::http_get_bytes(agent.port, "/metrics", Some(accept)).expect("scrape");
        assert_eq!(status, 200);
        let families = periscope::export::prometheus::protobuf::decode(&body).expect("decodes");
        for metric in families.iter().flat_map(|f| &f.metric) {
            let Some(h) = &metric.histogram else {
                continue;
            };
            let count = h.sample_count.unwrap_or(0);
            if let Some(last) = h.bucket.last() {
                let cumulative: Vec<u64> =
                    h.bucket.iter().filter_map(|b| b.cumulative_count).collect();
                assert!(cumulative.windows(2).all(|w| w[0] <= w[1]), "{h:?}");
                assert!(last.cumulative_count.unwrap_or(0) <= count, "{h:?}");
            }
            if h.schema.is_none() {
                continue;
            }
            let mut running = 0i64;
            let mut total = h.zero_count.unwrap_or(0);
            for delta in &h.positive_delta {
                running += delta;
                assert!(running >= 0, "a negative bucket: {h:?}");
                total += running as u64;
            }
            let spanned: u32 = h.positive_span.iter().filter_map(|s| s.length).sum();
            assert_eq!(spanned as usize, h.positive_delta.len(), "{h:?}");
            assert_eq!(total, count, "buckets and count disagree: {h:?}");
            histograms_checked += 1;
        }
    }
    let _ = flood.kill();
    let _ = flood.wait();
    assert!(
        histograms_checked >= 100,
        "{histograms_checked} native histograms"
    );
}
