//! Helpers for the end-to-end tests: they run the real agent binary as root, drive real
//! workloads and read the agent only through /metrics, as users do.
#![allow(dead_code)]

pub mod apps;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

static KERNEL: Mutex<()> = Mutex::new(());

/// Serialises tests that load probes: they share the kernel and compare exact counts.
pub fn kernel_lock() -> MutexGuard<'static, ()> {
    KERNEL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Compiles a static C program `source` into `dir/name` with clang-19 (which
/// scripts/setup.sh installs), for workloads whose syscalls and sleeps a test counts.
pub fn compile_static_c(dir: &Path, name: &str, source: &str) -> PathBuf {
    compile_c(dir, name, source, &["-O2", "-static"])
}

/// Compiles the C program `source` into `dir/name` with clang-19 and `flags`.
pub fn compile_c(dir: &Path, name: &str, source: &str, flags: &[&str]) -> PathBuf {
    let source_path = dir.join(format!("{name}.c"));
    std::fs::write(&source_path, source).expect("write the C source");
    let binary = dir.join(name);
    let status = Command::new("clang-19")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&source_path)
        .status()
        .expect("run clang-19 (scripts/setup.sh installs it)");
    assert!(status.success(), "compiling {name} failed");
    binary
}

/// Runs a command that must succeed; its standard output, trimmed.
pub fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("spawn");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// True when the test can load BPF programs. Under CI=true a missing privilege fails the
/// test; elsewhere the test is skipped with a loud message.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root to load BPF programs, and CI=true: run the tests as root");
    }
    eprintln!("SKIPPING {test}: needs root to load BPF programs");
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Whether something listens on loopback `port` within 5 s, as a server just started.
pub fn listening_soon(port: u16) -> bool {
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "periscope-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("temp subdirectory");
        }
        std::fs::write(&path, contents).expect("write temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn periscope_bin() -> &'static str {
    env!("CARGO_BIN_EXE_periscope")
}

/// A running agent on a loopback port; stopped with SIGTERM when dropped.
pub struct Agent {
    pub child: Child,
    pub port: u16,
    /// Where its standard error goes, when the test reads its log.
    log: Option<PathBuf>,
    _dir: TempDir,
}

impl Agent {
    /// Starts the agent with `config` (YAML without the prometheus section, which is added).
    pub fn start(config: &str) -> Agent {
        Agent::start_with_env(config, &[])
    }

    /// `start`, with the kernel made to refuse the named BPF programs (a test build of
    /// the agent treats them as refused at load with EPERM).
    pub fn start_refusing(config: &str, programs: &[&str]) -> Agent {
        let list = programs.join(",");
        Agent::start_with_env(config, &[("PERISCOPE_TEST_REFUSE_PROGRAMS", list.as_str())])
    }

    /// `start`, with extra environment variables.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Agent {
        Agent::start_wrapped(config, env, &[])
    }

    /// `start_with_env`, run through `wrapper` (a command and its arguments, such as
    /// `prlimit --nofile=1024:1024 --`). `config` may hold more `prometheus:` keys, each
    /// indented by two spaces, before its other sections.
    pub fn start_wrapped(config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Agent {
        let mut agent = Agent::spawn(config, env, wrapper);
        agent.wait_ready();
        agent
    }

    /// `start_with_env`, its log (standard error) kept for `log`.
    pub fn start_logged(config: &str, env: &[(&str, &str)]) -> Agent {
        let mut agent = Agent::spawn_to(config, env, &[], true);
        agent.wait_ready();
        agent
    }

    /// What the agent has logged so far, when started by `start_logged`.
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// Starts the agent without waiting for it: the caller waits with `wait_ready_by`.
    pub fn spawn(config: &str, env: &[(&str, &str)], wrapper: &[&str]) -> Agent {
        Agent::spawn_to(config, env, wrapper, false)
    }

    fn spawn_to(config: &str, env: &[(&str, &str)], wrapper: &[&str], keep_log: bool) -> Agent {
        let port = free_port();
        let dir = TempDir::new("agent");
        let (extra_prometheus, config) = match config.strip_prefix("prometheus:\n") {
            Some(rest) => {
                let end = rest
                    .lines()
                    .take_while(|line| line.starts_with("  "))
                    .map(|line| line.len() + 1)
                    .sum::<usize>();
                rest.split_at(end)
            }
            None => ("", config),
        };
        let yaml = format!(
            "prometheus:\n  listen_address: \"127.0.0.1:{port}\"\n{extra_prometheus}{config}"
        );
        let path = dir.write("periscope.yaml", &yaml);
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(periscope_bin());
                command
            }
            None => Command::new(periscope_bin()),
        };
        let log = keep_log.then(|| dir.path().join("agent.log"));
        let stderr = match &log {
            Some(log) => Stdio::from(std::fs::File::create(log).expect("log file")),
            None => Stdio::inherit(),
        };
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start periscope");
        Agent {
            child,
            port,
            log,
            _dir: dir,
        }
    }

    fn wait_ready(&mut self) {
        self.wait_ready_by(|port| {
            http_get(port, "/readyz", None).is_some_and(|(status, _)| status == 200)
        });
    }

    /// Waits until `ready(port)` says so (an endpoint behind TLS and credentials needs
    /// its own check).
    pub fn wait_ready_by(&mut self, ready: impl Fn(u16) -> bool) {
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("periscope exited during start-up: {status}");
            }
            if ready(self.port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("periscope did not become ready within 30 s");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn scrape(&self) -> String {
        self.scrape_as(None)
    }

    pub fn scrape_as(&self, accept: Option<&str>) -> String {
        match http_get(self.port, "/metrics", accept) {
            Some((200, body)) => body,
            other => panic!("scrape failed: {other:?}"),
        }
    }

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.scrape())
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, String)> {
    http_get_bytes(port, path, accept)
        .map(|(status, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

/// `http_get`, the body as it came (a protobuf exposition is binary).
pub fn http_get_bytes(port: u16, path: &str, accept: Option<&str>) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}\r\n"
    )
    .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response[split + 4..].to_vec()))
}

/// Samples of a text-format scrape: name -> list of (labels, value).
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// A strict parser for the text format, written independently of the agent's encoder.
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("malformed sample line: {line:?}"),
            };
            let mut labels = BTreeMap::new();
            let mut rest = rest;
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                let end = loop {
                    let (start, c) = chars.next().expect("unterminated label set");
                    if c == '}' {
                        break start + 1;
                    }
                    if c == ',' {
                        continue;
                    }
                    let eq = body[start..].find('=').expect("label without =") + start;
                    let key = body[start..eq].to_string();
                    while let Some((i, _)) = chars.peek() {
                        if *i > eq {
                            break;
                        }
                        chars.next();
                    }
                    assert_eq!(
                        chars.next().map(|(_, c)| c),
                        Some('"'),
                        "label value must be quoted: {line:?}"
                    );
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("unterminated label value").1 {
                            '\\' => match chars.next().expect("dangling escape").1 {
                                'n' => value.push('\n'),
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                other => panic!("bad escape \\{other} in {line:?}"),
                            },
                            '"' => break,
                            '\n' => panic!("raw newline in label value"),
                            c => value.push(c),
                        }
                    }
                    assert!(
                        labels.insert(key, value).is_none(),
                        "duplicate label in {line:?}"
                    );
                };
                rest = &body[end..];
            }
            let value_text = rest.trim();
            let value: f64 = match value_text {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .unwrap_or_else(|_| panic!("bad value {v:?} in {line:?}")),
            };
            samples.push((name.to_string(), labels, value));
        }
        Metrics { samples }
    }

    /// Samples named `name` whose labels include all of `want`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        want: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a (String, BTreeMap<String, String>, f64)> + 'a {
        self.samples.iter().filter(move |(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of matching samples (0 when none match).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.find(name, want).map(|(_, _, v)| v).sum()
    }

    /// The features `probe` reports it runs without (periscope_probe_degraded is 1).
    pub fn degraded(&self, probe: &str) -> Vec<String> {
        let mut features: Vec<String> = self
            .find("periscope_probe_degraded", &[("probe", probe)])
            .filter(|(_, _, v)| *v == 1.0)
            .filter_map(|(_, labels, _)| labels.get("feature").cloned())
            .collect();
        features.sort();
        features
    }

    /// The one matching sample's value; panics unless exactly one matches.
    pub fn one(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        let found: Vec<_> = self.find(name, want).collect();
        assert_eq!(
            found.len(),
            1,
            "expected one {name} {want:?}, found {found:?}"
        );
        found[0].2
    }
}

/// A Python helper process driven line by line: it prints "ready", waits for a line on
/// stdin, works, prints "done", and waits for another line before exiting.
pub struct Helper {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Helper {
    pub fn spawn(script: &str, args: &[String]) -> Helper {
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut helper = Helper {
            child,
            stdin,
            stdout,
        };
        helper.expect_line("ready");
        helper
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn expect_line(&mut self, want: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("helper output");
        assert_eq!(line.trim_end(), want, "helper said {line:?}");
    }

    pub fn read_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("helper output");
        line.trim_end().to_string()
    }

    pub fn go(&mut self) {
        writeln!(self.stdin).expect("helper stdin");
        self.stdin.flush().expect("flush");
    }

    /// Lets the helper work, waits for it to finish, and leaves it alive.
    pub fn run(&mut self) {
        self.go();
        self.expect_line("done");
    }

    pub fn finish(mut self) {
        self.go();
        let _ = self.child.wait();
    }
}

/// Python that sleeps with clock_nanosleep(2) in two steps, each after a go: once for
/// `first_ns`, then `n` times for `ns`, timing each sleep itself; it then prints the
/// 95th percentile of its own timings in nanoseconds, and "done" after each step.
/// argv: first_ns n ns
pub const SLEEP_HELPER: &str = r#"
import ctypes, sys, time
first, n, ns = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None)
class Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
def sleep(ns):
    ts = Timespec(ns // 1_000_000_000, ns % 1_000_000_000)
    start = time.monotonic_ns()
    libc.clock_nanosleep(1, 0, ctypes.byref(ts), None)
    return time.monotonic_ns() - start
print("ready", flush=True)
sys.stdin.readline()
sleep(first)
print("done", flush=True)
sys.stdin.readline()
took = sorted(sleep(ns) for _ in range(n))
print(took[(95 * n + 99) // 100 - 1], flush=True)
print("done", flush=True)
sys.stdin.readline()
"#;

/// Python that issues `n` kill(2) calls, the last `m` of them failing with ESRCH (pid
/// above pid_max). Python issues no kill(2) of its own, so the counts are exact.
/// argv: n m [process name]
pub const KILL_HELPER: &str = r#"
import ctypes, os, sys
n, m = int(sys.argv[1]), int(sys.argv[2])
if len(sys.argv) > 3:
    ctypes.CDLL(None).prctl(15, sys.argv[3].encode(), 0, 0, 0)
me = os.getpid()
print("ready", flush=True)
sys.stdin.readline()
for _ in range(n - m):
    os.kill(me, 0)
for _ in range(m):
    try:
        os.kill(4194305, 0)
    except ProcessLookupError:
        pass
print("done", flush=True)
sys.stdin.readline()
"#;

/// Waits until `check` passes on a fresh scrape (the agent reads the kernel per scrape;
/// this only covers processes still being started or reaped).
pub fn eventually(agent: &Agent, mut check: impl FnMut(&Metrics) -> bool) -> Metrics {
    for _ in 0..100 {
        let metrics = agent.metrics();
        if check(&metrics) {
            return metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    agent.metrics()
}

/// Names of loaded BPF programs, from bpftool.
pub fn loaded_programs() -> Vec<String> {
    let out = Command::new("bpftool")
        .args(["prog", "show"])
        .output()
        .expect("bpftool runs (scripts/setup.sh --test installs it)");
    assert!(out.status.success(), "bpftool prog show failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(" name ")?;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

/// Periscope's programs are all named psc_*.
pub fn our_programs() -> Vec<String> {
    loaded_programs()
        .into_iter()
        .filter(|name| name.starts_with("psc_"))
        .collect()
}

/// A real Prometheus (the Debian package) on loopback, scraping the agent every second,
/// optionally with a rules file evaluated every second.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    _dir: TempDir,
}

impl Prometheus {
    pub fn start(target_port: u16, rules: Option<&Path>) -> Prometheus {
        Prometheus::start_with(target_port, rules, "")
    }

    /// `start`, with more keys for the scrape job (each line indented by four spaces).
    pub fn start_with(target_port: u16, rules: Option<&Path>, job: &str) -> Prometheus {
        Prometheus::start_flagged(target_port, rules, job, &[])
    }

    /// `start_with`, with more command-line flags (`--enable-feature=...`).
    pub fn start_flagged(
        target_port: u16,
        rules: Option<&Path>,
        job: &str,
        flags: &[&str],
    ) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let rule_files = match rules {
            Some(rules) => {
                std::fs::copy(rules, dir.path().join("rules.yml")).expect("copy rules");
                "rule_files:\n  - rules.yml\n"
            }
            None => "",
        };
        let config = dir.write(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n{rule_files}scrape_configs:\n  - job_name: periscope\n{job}    static_configs:\n      - targets: [\"127.0.0.1:{target_port}\"]\n"
            ),
        );
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
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

    /// `start`, with native histograms on (`--enable-feature=native-histograms`): it
    /// scrapes the protobuf format and keeps histograms native.
    pub fn start_native(target_port: u16) -> Prometheus {
        Prometheus::start_flagged(
            target_port,
            None,
            "",
            &["--enable-feature=native-histograms"],
        )
    }

    /// Evaluates an instant query: the series of its vector result.
    pub fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let Some((200, body)) = http_get(self.port, &path, None) else {
            return Vec::new();
        };
        let json: serde_json::Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
        json["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The values of an instant query's vector result.
    pub fn values(&self, promql: &str) -> Vec<f64> {
        self.query(promql)
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse().ok())
            .collect()
    }

    /// The one native histogram `selector` selects, as Prometheus holds it: its
    /// (lower, upper, count) buckets and its sum.
    pub fn native_histogram(&self, selector: &str) -> (Vec<(f64, f64, u64)>, f64) {
        let number = |v: &serde_json::Value| v.as_str().and_then(|s| s.parse::<f64>().ok());
        let found = self.query(selector);
        assert_eq!(found.len(), 1, "{selector}: {found:?}");
        let histogram = &found[0]["histogram"][1];
        let buckets = histogram["buckets"]
            .as_array()
            .expect("native buckets")
            .iter()
            .map(|b| {
                (
                    number(&b[1]).expect("lower"),
                    number(&b[2]).expect("upper"),
                    number(&b[3]).expect("count") as u64,
                )
            })
            .collect();
        (buckets, number(&histogram["sum"]).expect("a sum"))
    }

    /// Polls until the query returns `want` (scrapes happen every second).
    pub fn wait_for(&self, promql: &str, want: &[f64]) -> Vec<f64> {
        let mut got = Vec::new();
        for _ in 0..60 {
            got = self.values(promql);
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

pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the cgroup v2 hierarchy is mounted here.
pub fn unified_root() -> PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mut best: Option<&str> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.starts_with("cgroup2 ") {
            let mount = left.split_whitespace().nth(4).expect("mount point");
            if best.is_none() || mount == "/sys/fs/cgroup" {
                best = Some(mount);
            }
        }
    }
    PathBuf::from(best.expect("a cgroup2 mount"))
}

/// A cgroup made by the test, removed (with its empty parents) when dropped.
pub struct HandMadeCgroup {
    dirs: Vec<PathBuf>,
}

impl HandMadeCgroup {
    pub fn create(relative: &str) -> HandMadeCgroup {
        let root = unified_root();
        let mut dirs = Vec::new();
        let mut dir = root.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            dir = dir.join(part);
            if !dir.exists() {
                std::fs::create_dir(&dir).expect("mkdir cgroup");
                dirs.push(dir.clone());
            }
        }
        HandMadeCgroup { dirs }
    }

    pub fn leaf(&self) -> &Path {
        self.dirs.last().expect("a new cgroup")
    }

    /// Makes `command`'s process enter this cgroup before it execs, so that everything
    /// the program does happens inside.
    pub fn enter_before_exec(&self, command: &mut Command) {
        let procs = self.leaf().join("cgroup.procs");
        // SAFETY: between fork and exec the closure only writes a file (open, write,
        // close): no locks are taken in the single-threaded child.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(command, move || {
                std::fs::write(&procs, "0")
            });
        }
    }
}

/// Spawns the command `make` builds until the child gets pid `pid`: ns_last_pid is set
/// just below it each time, and another process of the machine may take it first.
pub fn spawn_as_pid(pid: u32, mut make: impl FnMut() -> Command) -> Child {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("set ns_last_pid");
        let mut child = make().spawn().expect("spawn");
        if child.id() == pid {
            return child;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("could not get pid {pid} back");
}

impl Drop for HandMadeCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Docker must be there (scripts/containers.sh starts it); without it the test says so.
pub fn docker_ready(test: &str) -> bool {
    let up = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !up {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: Docker is not running; scripts/containers.sh starts it");
        }
        eprintln!("SKIPPING {test}: Docker is not running (scripts/containers.sh)");
    }
    up
}

/// Runs openssl with `args` in `dir`.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs (scripts/setup.sh --test installs it)");
    assert!(status.success(), "openssl {args:?}");
}

/// A self-signed certificate authority: `{name}.pem` and `{name}-key.pem` in `dir`.
pub fn make_ca(dir: &std::path::Path, name: &str) {
    let (cert, key, subject) = (
        format!("{name}.pem"),
        format!("{name}-key.pem"),
        format!("/CN={name}"),
    );
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", &subject,
            "-keyout", &key, "-out", &cert,
        ],
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it.
pub fn make_certificates(dir: &std::path::Path) {
    make_ca(dir, "ca");
    // Version 3 certificates with their extensions, as WebPKI verification requires.
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}-key.pem"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        let (csr, out, ext) = (
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let args = [
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &out,
            "-extfile",
            &ext,
        ];
        openssl(dir, &args);
    }
}

/// A server on a loopback port, in a thread of its own with a tokio runtime: `serve`
/// gets each accepted connection, in a task of its own. Returns the port.
pub fn spawn_tokio_server<F, Fut>(serve: F) -> u16
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                if let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream));
                }
            }
        });
    });
    port
}
