//! End-to-end: a real Prometheus (the Debian package) scrapes the agent, and PromQL over
//! the scraped series returns the workload's exact numbers.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{free_port, have_root, http_get, kernel_lock, Agent, Helper, TempDir, KILL_HELPER};

struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target_port: u16) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: periscope\n    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        );
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs (scripts/setup.sh --test installs it)");
        Prometheus {
            child,
            port,
            _dir: dir,
        }
    }

    /// Evaluates an instant query; the values of its vector result.
    fn query(&self, promql: &str) -> Vec<f64> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let Some((200, body)) = http_get(self.port, &path, None) else {
            return Vec::new();
        };
        let json: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        json["data"]["result"]
            .as_array()
            .map(|results| {
                results
                    .iter()
                    .filter_map(|r| r["value"][1].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Polls until the query returns `want` (scrapes happen every second).
    fn wait_for(&self, promql: &str, want: &[f64]) -> Vec<f64> {
        let mut got = Vec::new();
        for _ in 0..60 {
            got = self.query(promql);
            if got == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        got
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_exact_counts() {
    if !have_root("prometheus_scrapes_exact_counts") {
        return;
    }
    let _kernel = kernel_lock();
    let agent =
        Agent::start("probes:\n  syscalls:\n    latency_syscalls: [kill, read, write, openat]\n    latency_sampling: always\n");
    let prometheus = Prometheus::start(agent.port);
    let mut helper = Helper::spawn(KILL_HELPER, &["300".into(), "30".into()]);
    let pid = helper.pid();
    helper.run();

    let calls = format!("syscalls_total{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    assert_eq!(prometheus.wait_for(&calls, &[300.0]), vec![300.0]);
    let errors = format!(
        "sum(syscall_errors_total{{process_pid=\"{pid}\",syscall=\"kill\",errno=\"ESRCH\"}})"
    );
    assert_eq!(prometheus.wait_for(&errors, &[30.0]), vec![30.0]);
    let count = format!("syscall_duration_seconds_count{{process_pid=\"{pid}\",syscall=\"kill\"}}");
    assert_eq!(prometheus.wait_for(&count, &[300.0]), vec![300.0]);
    // The scrape itself is healthy in Prometheus's eyes.
    assert_eq!(
        prometheus.wait_for("up{job=\"periscope\"}", &[1.0]),
        vec![1.0]
    );
    // A quantile over the in-kernel histogram is computable.
    let p99 = format!(
        "histogram_quantile(0.99, sum by (le) (syscall_duration_seconds_bucket{{process_pid=\"{pid}\",syscall=\"kill\"}}))"
    );
    let quantile = prometheus.query(&p99);
    assert_eq!(quantile.len(), 1, "{quantile:?}");
    assert!(quantile[0] > 0.0 && quantile[0] < 1.0, "{quantile:?}");
    helper.finish();
}
