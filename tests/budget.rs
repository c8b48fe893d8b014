//! End-to-end: with the embedded defaults, a busy node's scrape stays small and exact.
//! A thousand long-lived processes under two hundred names make varied syscalls (some
//! failing), while three thousand short-lived ones, each under a name of its own, come
//! and go; the scrape holds fewer than 20,000 samples, every count is still there, and
//! the agent stays under 40 MiB.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use common::{compile_static_c, have_root, kernel_lock, Agent, TempDir};

/// Makes syscalls that depend on its index, calls personality(query) `index % 5 + 1`
/// times (a syscall nothing else on the machine makes), then stays asleep if asked.
const LOAD_PROGRAM: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <sched.h>

int main(int argc, char **argv)
{
	int index = argc > 1 ? atoi(argv[1]) : 0;
	int stay = argc > 2 ? atoi(argv[2]) : 0;
	struct utsname names;
	struct stat st;
	char buf[64] = {0};
	int fd = open("/dev/null", O_RDWR);

	for (int k = 0; k < 4 + index % 17; k++) {
		switch ((index + k) % 12) {
		case 0: getppid(); break;
		case 1: uname(&names); break;
		case 2: stat("/", &st); break;
		case 3: read(fd, buf, sizeof(buf)); break;
		case 4: write(fd, buf, 1); break;
		case 5: open("/nonexistent-periscope", O_RDONLY); break;
		case 6: close(-1); break;
		case 7: getcwd(buf, sizeof(buf)); break;
		case 8: sched_yield(); break;
		case 9: access("/nonexistent-periscope", F_OK); break;
		case 10: umask(022); break;
		case 11: kill(0x3ffffff0, 0); break;
		}
	}
	for (int k = 0; k <= index % 5; k++)
		syscall(SYS_personality, 0xffffffff);
	if (stay)
		for (;;)
			pause();
	return 0;
}
"#;

const LIVE: usize = 1000;
const LIVE_NAMES: usize = 200;
const CHURN: usize = 3000;

fn personality_calls(index: usize) -> usize {
    index % 5 + 1
}

fn compile(dir: &Path) -> PathBuf {
    compile_static_c(dir, "load", LOAD_PROGRAM)
}

/// The program under another executable name (a hard link: the kernel names a
/// process after the file it runs).
fn named(dir: &Path, binary: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if !path.exists() {
        std::fs::hard_link(binary, &path).expect("link the load program");
    }
    path
}

fn run(path: &Path, index: usize, stay: bool) -> Child {
    Command::new(path)
        .args([index.to_string(), u8::from(stay).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a load process")
}

/// Sample lines of an OpenMetrics scrape, as a scraper stores them.
fn samples(exposition: &str) -> usize {
    exposition
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// Kibibytes of a `/proc/PID/status` field.
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in {status}"))
}

/// What one scrape and the agent's memory come to under the load.
struct Outcome {
    samples: usize,
    rss_kib: u64,
    peak_kib: u64,
    metrics: common::Metrics,
    expected_personality: usize,
}

/// Starts the agent with `config`, runs the load, and scrapes once everything counted.
fn under_load(config: &str) -> Outcome {
    let dir = TempDir::new("budget");
    let binary = compile(dir.path());
    let agent = Agent::start(config);

    let mut live: Vec<Child> = (0..LIVE)
        .map(|i| {
            let path = named(dir.path(), &binary, &format!("psl{:03}", i % LIVE_NAMES));
            run(&path, i, true)
        })
        .collect();
    for batch in (0..CHURN).collect::<Vec<_>>().chunks(100) {
        let children: Vec<Child> = batch
            .iter()
            .map(|j| {
                run(
                    &named(dir.path(), &binary, &format!("pch{j:05}")),
                    *j,
                    false,
                )
            })
            .collect();
        for mut child in children {
            assert!(child.wait().expect("wait").success());
        }
    }
    let expected_personality: usize = (0..LIVE).chain(0..CHURN).map(personality_calls).sum();
    let metrics = common::eventually(&agent, |m| personality(m) >= expected_personality as f64);
    let openmetrics = agent.scrape_as(Some("application/openmetrics-text; version=1.0.0"));
    let outcome = Outcome {
        samples: samples(&openmetrics),
        rss_kib: status_kib(agent.pid(), "VmRSS:"),
        peak_kib: status_kib(agent.pid(), "VmHWM:"),
        metrics,
        expected_personality,
    };
    eprintln!(
        "series budget: config {config:?}: {} samples, RSS {} KiB (peak {} KiB)",
        outcome.samples, outcome.rss_kib, outcome.peak_kib
    );
    for child in &mut live {
        let _ = child.kill();
    }
    for mut child in live {
        let _ = child.wait();
    }
    outcome
}

fn personality(metrics: &common::Metrics) -> f64 {
    metrics.sum("syscalls_total", &[("syscall", "personality")])
}

#[test]
fn a_busy_node_scrapes_under_the_series_floor_with_exact_totals() {
    if !have_root("a_busy_node_scrapes_under_the_series_floor_with_exact_totals") {
        return;
    }
    let _kernel = kernel_lock();
    let outcome = under_load("");
    let metrics = &outcome.metrics;
    // Every call is counted, in some series, however the budget placed them.
    assert_eq!(personality(metrics), outcome.expected_personality as f64);
    assert!(
        outcome.samples < 20_000,
        "{} samples in one scrape",
        outcome.samples
    );
    let folded = metrics.one(
        "periscope_series_folded_total",
        &[("probe", "syscalls"), ("map", "series_budget")],
    );
    assert!(
        folded > 0.0,
        "the budget admitted every process: the load is too light"
    );
    // Processes admitted before the budget filled keep their own series.
    let kept = metrics
        .find("syscalls_total", &[("syscall", "personality")])
        .filter(|(_, labels, _)| labels.contains_key("process_pid"))
        .count();
    assert!(kept > 0, "no process kept its own series");
    assert!(outcome.rss_kib < 40 * 1024, "RSS {} KiB", outcome.rss_kib);
    assert!(
        outcome.peak_kib < 40 * 1024,
        "peak RSS {} KiB",
        outcome.peak_kib
    );
}

/// The same load under the defaults before the series budget (per-process latency
/// histograms, no budget), for BENCHMARKS.md:
/// `sudo cargo test --release --test budget -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check: run with --ignored"]
fn measure_the_load_without_the_budget() {
    if !have_root("measure_the_load_without_the_budget") {
        return;
    }
    let _kernel = kernel_lock();
    under_load("");
    let outcome = under_load(
        "processes:\n  series_budget: 10000000\nprobes:\n  syscalls:\n    latency_per_process: true\n",
    );
    assert_eq!(
        personality(&outcome.metrics),
        outcome.expected_personality as f64
    );
}
