//! End-to-end: `periscope profile` on real processes. A program that spends 70% of its
//! CPU in one function and 30% in another is profiled in those shares with whole stacks;
//! a syscall loop shows its kernel frames under the syscall entry; a process that exits
//! mid-profile, a stripped binary and a 10,000-frame recursion each come out bounded and
//! counted. And `periscope run` with the probe on pushes the same profiles to Pyroscope
//! and OTLP receivers, decoded with pprof's and OpenTelemetry's own definitions; a dead
//! receiver is counted.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::MutexGuard;
use std::time::Duration;

use crate::common::{
    compile_c, docker_ready, eventually, free_port, have_root, kernel_lock, periscope_bin,
    run_ok as run, Agent, TempDir,
};

/// Frame pointers kept, and every call a call: a tail call would leave no frame of its
/// caller for the unwinder to find.
const FRAME_POINTERS: &[&str] = &[
    "-O1",
    "-fno-omit-frame-pointer",
    "-fno-inline",
    "-fno-optimize-sibling-calls",
];

/// Spins on the clock: burn_a 7 ms, burn_b 3 ms, for as many seconds as its argument.
const BURNER: &str = r#"
#include <stdlib.h>
#include <time.h>
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
/* The thread's CPU time: the shares hold when other work takes the CPUs too. */
static double cpu(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}
volatile unsigned long sink;
__attribute__((noinline)) void spin(double seconds) {
  double end = cpu() + seconds;
  while (cpu() < end)
    for (int i = 0; i < 1000; i++) sink += i;
}
__attribute__((noinline)) void burn_a(void) { spin(0.007); }
__attribute__((noinline)) void burn_b(void) { spin(0.003); }
int main(int argc, char **argv) {
  double end = now() + atof(argv[1]);
  while (now() < end) {
    burn_a();
    burn_b();
  }
  return 0;
}
"#;

/// Calls getppid(2) in a loop for as many seconds as its argument: its CPU goes to the
/// kernel.
const GETPPID_LOOP: &str = "#include <stdlib.h>\n#include <time.h>\n#include <unistd.h>\n\
    #include <sys/syscall.h>\n\
    int main(int argc, char **argv) {\n\
      time_t end = time(0) + atoi(argv[1]);\n\
      while (time(0) < end)\n\
        for (int i = 0; i < 10000; i++) syscall(SYS_getppid);\n\
      return 0;\n}\n";

/// A folded profile: each stack (outermost first) and its samples.
struct Folded(Vec<(Vec<String>, u64)>);

impl Folded {
    fn read(path: &Path) -> Folded {
        let text = std::fs::read_to_string(path).expect("the profile was written");
        Folded(
            text.lines()
                .map(|line| {
                    let (stack, count) = line.rsplit_once(' ').expect("`stack count` lines");
                    let frames = stack.split(';').map(str::to_string).collect();
                    (frames, count.parse().expect("a sample count"))
                })
                .collect(),
        )
    }

    fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }

    /// Samples whose stack holds `function`.
    fn through(&self, function: &str) -> u64 {
        self.0
            .iter()
            .filter(|(frames, _)| frames.iter().any(|f| f == function))
            .map(|(_, n)| n)
            .sum()
    }
}

struct Bench {
    dir: TempDir,
    _kernel: MutexGuard<'static, ()>,
}

impl Bench {
    fn new(tag: &str) -> Bench {
        Bench {
            _kernel: kernel_lock(),
            dir: TempDir::new(tag),
        }
    }

    fn compile(&self, name: &str, source: &str, flags: &[&str]) -> PathBuf {
        compile_c(self.dir.path(), name, source, flags)
    }

    /// `periscope profile` of `pid` for `seconds` at 99 Hz, folded: the profile and what
    /// the command printed.
    fn profile(&self, pid: u32, seconds: u64) -> (Folded, String) {
        let out = self.dir.path().join(format!("{pid}.folded"));
        let output = profile_command(&[
            "--pid",
            &pid.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--frequency",
            "99",
            "-o",
            out.to_str().expect("a UTF-8 temp path"),
        ]);
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "periscope profile failed: {printed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (Folded::read(&out), printed)
    }
}

fn profile_command(args: &[&str]) -> Output {
    Command::new(periscope_bin())
        .arg("profile")
        .args(args)
        .output()
        .expect("run periscope profile")
}

/// Starts a workload, killed when the returned guard drops.
fn spawn(program: &Path, args: &[&str]) -> Killed {
    let child = Command::new(program)
        .args(args)
        .spawn()
        .expect("start the workload");
    // Past its loader, into its loop.
    std::thread::sleep(Duration::from_millis(300));
    Killed(child)
}

/// What `periscope profile` printed about stacks cut short, or 0.
fn truncated(printed: &str) -> u64 {
    printed
        .lines()
        .find_map(|line| line.strip_suffix(" samples have user stacks cut short (code built without frame pointers)"))
        .and_then(|line| line.strip_prefix("periscope: "))
        .map_or(0, |n| n.parse().expect("a count"))
}

#[test]
fn a_process_is_profiled_in_the_shares_of_its_functions_with_whole_stacks() {
    if !have_root("a_process_is_profiled_in_the_shares_of_its_functions_with_whole_stacks") {
        return;
    }
    let bench = Bench::new("profile-shares");
    let burner = bench.compile("burner", BURNER, FRAME_POINTERS);
    let child = spawn(&burner, &["8"]);
    let (folded, printed) = bench.profile(child.0.id(), 5);
    drop(child);

    let total = folded.total();
    // 5 s at 99 Hz of a process that is always running: about 495 samples.
    assert!(total >= 300, "{total} samples: {printed}");
    let share = |f| folded.through(f) as f64 / total as f64;
    assert!(
        (share("burn_a") - 0.7).abs() <= 0.10,
        "burn_a {:.2}",
        share("burn_a")
    );
    assert!(
        (share("burn_b") - 0.3).abs() <= 0.10,
        "burn_b {:.2}",
        share("burn_b")
    );
    for (frames, count) in &folded.0 {
        assert_eq!(frames[0], "burner", "the process is the root");
        if let Some(at) = frames.iter().position(|f| f == "burn_a" || f == "burn_b") {
            assert_eq!(frames[at - 1], "main", "{frames:?} x {count}");
        }
    }
    assert_eq!(truncated(&printed), 0, "{printed}");
}

#[test]
fn a_syscall_loop_shows_kernel_frames_under_the_syscall_entry() {
    if !have_root("a_syscall_loop_shows_kernel_frames_under_the_syscall_entry") {
        return;
    }
    let bench = Bench::new("profile-kernel");
    let looper = bench.compile("getppid_loop", GETPPID_LOOP, FRAME_POINTERS);
    let child = spawn(&looper, &["6"]);
    let (folded, printed) = bench.profile(child.0.id(), 3);
    drop(child);

    let total = folded.total();
    assert!(total >= 150, "{total} samples: {printed}");
    // Kernel frames sit above the user frames that entered the kernel: most samples
    // are in the kernel, and some in getppid itself.
    let under_entry = |function: &str| -> u64 {
        folded
            .0
            .iter()
            .filter(|(frames, _)| {
                let entry = frames.iter().position(|f| f.starts_with("entry_SYSCALL_64"));
                let below = frames.iter().rposition(|f| f.ends_with(function));
                matches!((entry, below), (Some(e), Some(b)) if e < b)
            })
            .map(|(_, n)| n)
            .sum()
    };
    assert!(
        under_entry("do_syscall_64") * 2 >= total,
        "{} of {total} samples in the kernel: {:?}",
        under_entry("do_syscall_64"),
        folded.0
    );
    assert!(under_entry("sys_getppid") > 0, "{:?}", folded.0);
}

#[test]
fn exited_stripped_and_endlessly_deep_processes_are_bounded_and_counted() {
    if !have_root("exited_stripped_and_endlessly_deep_processes_are_bounded_and_counted") {
        return;
    }
    let bench = Bench::new("profile-odd");
    // Stripped: no symbol names its functions, so each is its module and offset.
    let stripped = bench.compile("stripped", BURNER, &["-O1", "-fno-omit-frame-pointer", "-s"]);
    let child = spawn(&stripped, &["6"]);
    let (folded, _) = bench.profile(child.0.id(), 2);
    drop(child);
    assert!(folded.total() >= 100);
    assert!(
        folded
            .0
            .iter()
            .flat_map(|(frames, _)| frames)
            .any(|f| f.starts_with("stripped+0x")),
        "{:?}",
        folded.0
    );
    assert!(folded.0.iter().all(|(frames, _)| frames.iter().all(|f| !f.is_empty())));

    // 10,000 frames deep: the kernel keeps 127, and the stack counts as cut short.
    let deep = bench.compile(
        "deep",
        "#include <stdlib.h>\n#include <time.h>\n\
         volatile unsigned long sink;\n\
         __attribute__((noinline)) void down(int n, time_t end) {\n\
           if (n > 0) { down(n - 1, end); sink++; return; }\n\
           while (time(0) < end) sink++;\n}\n\
         int main(int argc, char **argv) { down(10000, time(0) + atoi(argv[1])); return 0; }\n",
        FRAME_POINTERS,
    );
    let child = spawn(&deep, &["5"]);
    let (folded, printed) = bench.profile(child.0.id(), 2);
    drop(child);
    let total = folded.total();
    assert!(total >= 100, "{total} samples");
    let deepest = folded.0.iter().map(|(frames, _)| frames.len()).max().unwrap_or(0);
    assert!(deepest <= 1 + 127 + 127, "{deepest} frames");
    assert!(
        folded.0.iter().any(|(frames, _)| frames.iter().filter(|f| *f == "down").count() >= 100),
        "the recursion's frames are kept up to the kernel's limit"
    );
    assert!(truncated(&printed) * 10 >= total * 9, "{printed}");

    // Exits a second into a two-second profile: its samples are kept, their frames named
    // by what could still be read, never empty.
    let mut child = spawn(&stripped, &["1"]);
    let pid = child.0.id();
    let (folded, printed) = bench.profile(pid, 2);
    child.0.wait().ok();
    assert!(folded.total() >= 30, "{printed}");
    assert!(folded.0.iter().all(|(frames, _)| frames[0] == "stripped" && frames.iter().all(|f| !f.is_empty())));
}

/// Where Debian's golang-github-google-pprof-dev puts pprof's own `profile.proto`.
const PPROF_PROTO_DIR: &str = "/usr/share/gocode/src/github.com/google/pprof/proto";

#[test]
fn pprof_output_decodes_with_pprofs_own_profile_proto() {
    if !have_root("pprof_output_decodes_with_pprofs_own_profile_proto") {
        return;
    }
    let bench = Bench::new("profile-pprof");
    let burner = bench.compile("burner", BURNER, FRAME_POINTERS);
    let child = spawn(&burner, &["5"]);
    let out = bench.dir.path().join("burner.pb.gz");
    let output = profile_command(&[
        "--pid",
        &child.0.id().to_string(),
        "--seconds",
        "2",
        "--format",
        "pprof",
        "-o",
        out.to_str().expect("UTF-8"),
    ]);
    drop(child);
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    let said: u64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("periscope: ")?.split_once(" samples of "))
        .map(|(n, _)| n.parse().expect("a count"))
        .expect("the sample count is printed");

    let text = decode_pprof(&std::fs::read(&out).expect("the profile was written"));
    // Every field is one profile.proto names: protoc prints unknown ones by number.
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())),
        "{text}"
    );
    let field = |name: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.trim_start().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .collect()
    };
    let strings = field("string_table: ");
    assert_eq!(strings[0], "\"\"");
    for name in ["burn_a", "burn_b", "main", "samples", "cpu", "nanoseconds"] {
        assert!(strings.contains(&format!("\"{name}\"")), "{name} in {strings:?}");
    }
    let period: i64 = field("period: ")[0].parse().expect("a period");
    assert_eq!(period, 1_000_000_000 / 99);
    let values: Vec<i64> = field("value: ").iter().map(|v| v.parse().expect("a value")).collect();
    let counts: i64 = values.chunks(2).map(|pair| pair[0]).sum();
    assert_eq!(counts as u64, said);
    assert!(values.chunks(2).all(|pair| pair[1] == pair[0] * period));
}

#[test]
fn a_hostile_process_name_keeps_the_svg_well_formed_and_the_folded_lines_whole() {
    if !have_root("a_hostile_process_name_keeps_the_svg_well_formed_and_the_folded_lines_whole") {
        return;
    }
    let bench = Bench::new("profile-svg");
    let burner = bench.compile("burner", BURNER, FRAME_POINTERS);
    // The kernel names a process after its file: markup, quotes and the folded format's
    // separator, 15 bytes as the kernel keeps them.
    let hostile = bench.dir.path().join("x<&\"'>;y z");
    std::fs::copy(&burner, &hostile).expect("copy the burner");
    let child = spawn(&hostile, &["5"]);
    let pid = child.0.id().to_string();
    let svg = bench.dir.path().join("flame.svg");
    let output = profile_command(&[
        "--pid",
        &pid,
        "--seconds",
        "2",
        "--format",
        "svg",
        "-o",
        svg.to_str().expect("UTF-8"),
    ]);
    assert!(output.status.success());
    let (folded, _) = bench.profile(child.0.id(), 1);
    drop(child);

    let parsed = Command::new("python3")
        .args([
            "-c",
            "import sys, xml.etree.ElementTree as E\n\
             root = E.parse(sys.argv[1]).getroot()\n\
             ns = '{http://www.w3.org/2000/svg}'\n\
             print('\\n'.join(t.text for t in root.iter(ns + 'title')))",
        ])
        .arg(&svg)
        .output()
        .expect("run python3");
    let titles = String::from_utf8_lossy(&parsed.stdout);
    assert!(parsed.status.success(), "not well-formed XML: {}", String::from_utf8_lossy(&parsed.stderr));
    assert!(titles.lines().any(|t| t.starts_with("x<&\"'>;y z (")), "{titles}");
    assert!(titles.lines().any(|t| t.starts_with("burn_a (")), "{titles}");
    assert!(titles.lines().any(|t| t.starts_with("main (")), "{titles}");

    assert!(folded.total() >= 50);
    assert!(folded.0.iter().all(|(frames, _)| frames[0] == "x<&\"'>:y z"), "{:?}", folded.0);
}

#[test]
fn a_missing_process_is_a_clear_error() {
    let output = profile_command(&["--pid", "4000000", "--seconds", "1", "-o", "/dev/null"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no process 4000000"), "{stderr}");
}

#[test]
fn folded_profiles_of_every_process_sum_to_their_sample_count() {
    if !have_root("folded_profiles_of_every_process_sum_to_their_sample_count") {
        return;
    }
    let bench = Bench::new("profile-all");
    let burner = bench.compile("burner", BURNER, FRAME_POINTERS);
    let child = spawn(&burner, &["4"]);
    let out = bench.dir.path().join("all.folded");
    let output = profile_command(&["--seconds", "2", "-o", out.to_str().expect("UTF-8")]);
    drop(child);
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    let folded = Folded::read(&out);
    let said: u64 = printed
        .lines()
        .find_map(|l| l.strip_prefix("periscope: ")?.split_once(" samples of "))
        .map(|(n, _)| n.parse().expect("a count"))
        .expect("the sample count is printed");
    assert_eq!(folded.total(), said);
    let per_process: HashMap<&str, u64> =
        folded.0.iter().fold(HashMap::new(), |mut m, (frames, n)| {
            *m.entry(frames[0].as_str()).or_default() += n;
            m
        });
    assert!(per_process.get("burner").copied().unwrap_or(0) >= 100, "{per_process:?}");
}

/// A Pyroscope and OTLP receiver stand-in: stores each push as `<n>.query` (its path
/// and query) and `<n>.body` in the folder it is given, answering 200.
const INGEST_SINK: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
folder, port = sys.argv[1], int(sys.argv[2])
count = [0]
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        count[0] += 1
        n = count[0]
        with open(os.path.join(folder, f"{n}.body"), "wb") as f: f.write(body)
        with open(os.path.join(folder, f"{n}.query"), "w") as f: f.write(self.path)
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"#;

/// The ingest sink, storing pushes in `folder`, and its port once it listens.
fn start_sink(folder: &Path) -> (Killed, u16) {
    let port = free_port();
    let sink = Killed(
        Command::new("python3")
            .args(["-c", INGEST_SINK])
            .arg(folder)
            .arg(port.to_string())
            .spawn()
            .expect("start the ingest sink"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (sink, port)
}

/// The profile probe alone, pushing every 2 s to `endpoint`, as pprof to Pyroscope and
/// as OTLP. The probe is left at its default, `auto`: the receivers turn it on.
fn continuous_config(endpoint: &str) -> String {
    format!(
        "probes:\n  syscalls: {{enabled: false}}\n  process: {{enabled: false}}\n  tcp: {{enabled: false}}\n  profile:\n    frequency_hz: 99\nexporters:\n  profiles:\n    interval_secs: 2\n    pyroscope:\n      enabled: true\n      endpoint: \"{endpoint}\"\n      timeout_secs: 2\n      max_retry_secs: 2\n    otlp:\n      enabled: true\n      endpoint: \"{endpoint}\"\n      timeout_secs: 2\n      max_retry_secs: 2\n"
    )
}

/// The pushes in `folder` not yet in `seen`, oldest first, as (body, path and query).
fn new_pushes(
    folder: &Path,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> Vec<(PathBuf, String)> {
    let mut bodies: Vec<_> = std::fs::read_dir(folder)
        .expect("the sink's folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "body") && !seen.contains(p))
        .collect();
    bodies.sort_by_key(|p| {
        p.file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
    });
    bodies
        .into_iter()
        .filter_map(|body| {
            let query = std::fs::read_to_string(body.with_extension("query")).ok()?;
            seen.insert(body.clone());
            Some((body, query))
        })
        .collect()
}

/// A pushed pprof body, decoded by protoc with pprof's own profile.proto.
fn decode_pprof(gz: &[u8]) -> String {
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz), &mut raw).expect("gzip");
    let mut protoc = Command::new("protoc")
        .args(["--decode=perftools.profiles.Profile", "-I", PPROF_PROTO_DIR, "profile.proto"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run protoc (scripts/setup.sh installs it)");
    std::io::Write::write_all(&mut protoc.stdin.take().expect("stdin"), &raw).expect("feed protoc");
    let decoded = protoc.wait_with_output().expect("protoc");
    assert!(decoded.status.success(), "protoc could not decode a push");
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

/// The burner's samples and the functions of its stacks in an OTLP profiles request,
/// decoded with OpenTelemetry's own definitions; None when it holds no burner.
fn burner_in_otlp(bytes: &[u8]) -> Option<(i64, Vec<String>)> {
    process_in_otlp(bytes, &[("process.executable.name", "burner")])
}

/// The samples and stack functions of the resource whose attributes include `want`.
fn process_in_otlp(bytes: &[u8], want: &[(&str, &str)]) -> Option<(i64, Vec<String>)> {
    use opentelemetry_proto::tonic::collector::profiles::v1development::ExportProfilesServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    let request = ExportProfilesServiceRequest::decode(bytes).expect("an OTLP profiles request");
    let dictionary = request.dictionary.as_ref().expect("a dictionary");
    // Each table starts with its zero value.
    assert_eq!(dictionary.string_table[0], "");
    assert_eq!(dictionary.stack_table[0].location_indices.len(), 0);
    assert_eq!(dictionary.function_table[0].name_strindex, 0);
    let burner = request.resource_profiles.iter().find(|r| {
        r.resource.as_ref().is_some_and(|resource| {
            want.iter().all(|(key, value)| {
                resource.attributes.iter().any(|a| {
                    a.key == *key
                        && matches!(a.value.as_ref().and_then(|v| v.value.as_ref()), Some(Value::StringValue(s)) if s == value)
                })
            })
        })
    })?;
    let profile = &burner.scope_profiles[0].profiles[0];
    let samples = profile.samples.iter().map(|s| s.values[0]).sum();
    let functions = profile
        .samples
        .iter()
        .flat_map(|s| &dictionary.stack_table[s.stack_index as usize].location_indices)
        .flat_map(|&l| &dictionary.location_table[l as usize].lines)
        .map(|line| {
            let function = &dictionary.function_table[line.function_index as usize];
            dictionary.string_table[function.name_strindex as usize].clone()
        })
        .collect();
    Some((samples, functions))
}

#[test]
fn the_agent_pushes_a_profile_of_every_process_to_pyroscope_and_otlp_every_interval() {
    if !have_root("the_agent_pushes_a_profile_of_every_process_to_pyroscope_and_otlp_every_interval") {
        return;
    }
    let bench = Bench::new("profile-push");
    let burner = bench.compile("burner", BURNER, FRAME_POINTERS);
    let pushed = bench.dir.path().join("pushed");
    std::fs::create_dir(&pushed).expect("a folder for the pushes");
    let (_sink, port) = start_sink(&pushed);
    let looper = bench.compile("getppid_loop", GETPPID_LOOP, FRAME_POINTERS);
    let agent = Agent::start(&continuous_config(&format!("http://127.0.0.1:{port}")));
    let child = spawn(&burner, &["8"]);
    let _looper = spawn(&looper, &["8"]);

    // Some push names the burner's samples, burn_a and burn_b among its functions; so
    // does some OTLP request.
    let mut found = None;
    let mut otlp = None;
    let mut kernel_named = false;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        for (body, path) in new_pushes(&pushed, &mut seen) {
            let Ok(bytes) = std::fs::read(&body) else {
                continue;
            };
            if path.starts_with("/v1development/profiles") {
                if otlp.is_none() {
                    otlp = burner_in_otlp(&bytes);
                }
                // The agent, past start-up, still names kernel frames.
                let looper = process_in_otlp(&bytes, &[("process.executable.name", "getppid_loop")]);
                kernel_named |= looper.is_some_and(|(_, functions)| {
                    functions.iter().any(|f| f == "do_syscall_64")
                });
                continue;
            }
            assert!(path.starts_with("/ingest?"), "{path}");
            let text = decode_pprof(&bytes);
            let ours = ["\"burner\"", "\"burn_a\"", "\"burn_b\""];
            if found.is_none() && ours.iter().all(|s| text.contains(s)) {
                found = Some((body, text));
            }
        }
        if found.is_some() && otlp.is_some() && kernel_named {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(child);
    let (body, text) = found.unwrap_or_else(|| {
        let queries: Vec<String> = std::fs::read_dir(&pushed)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.path().extension().is_some_and(|x| x == "query"))
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        panic!("no push with the burner's profile among {queries:?}")
    });
    assert!(text.contains("string_table: \"process_pid\"") || text.contains("string_table: \"pid\""));
    let query = std::fs::read_to_string(body.with_extension("query")).expect("its query");
    let (_, query) = query.split_once('?').expect("a query");
    let params: HashMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    assert_eq!(params.get("format"), Some(&"pprof"), "{query}");
    assert_eq!(params.get("sampleRate"), Some(&"99"), "{query}");
    assert!(params.get("name").is_some_and(|n| n.contains(".cpu%7B")), "{query}");
    let from: u64 = params["from"].parse().expect("from");
    let until: u64 = params["until"].parse().expect("until");
    assert!(until > from && until - from <= 4, "{query}");

    assert!(kernel_named, "no OTLP profile of the getppid loop names do_syscall_64");
    let (samples, functions) = otlp.expect("an OTLP request with the burner's profile");
    assert!(samples >= 10, "{samples} samples");
    for name in ["burn_a", "burn_b", "main"] {
        assert!(functions.iter().any(|f| f == name), "{name} in {functions:?}");
    }

    let metrics = eventually(&agent, |m| {
        m.sum(
            "periscope_profile_pushes_total",
            &[("exporter", "pyroscope"), ("outcome", "sent")],
        ) >= 1.0
            && m.sum(
                "periscope_profile_pushes_total",
                &[("exporter", "otlp"), ("outcome", "sent")],
            ) >= 1.0
    });
    assert!(metrics.sum("periscope_profile_samples_total", &[]) >= 100.0);
    assert_eq!(metrics.sum("periscope_profile_pushes_total", &[("outcome", "failed")]), 0.0);
}

/// A child process killed when the test ends, passed or not.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[test]
fn a_dead_profile_backend_is_counted_and_costs_the_agent_nothing_else() {
    if !have_root("a_dead_profile_backend_is_counted_and_costs_the_agent_nothing_else") {
        return;
    }
    let _kernel = kernel_lock();
    // Nothing listens there. And a name cache of one: every second name empties it.
    let config = continuous_config(&format!("http://127.0.0.1:{}", free_port()))
        .replace("frequency_hz: 99\n", "frequency_hz: 99\n    max_cached_names: 1\n");
    let agent = Agent::start(&config);
    // Two busy programs of their own, so that samples name more than one function
    // however idle the machine is.
    let busy: Vec<Killed> = [
        ("sh", "while :; do :; done"),
        ("python3", "while True: pass"),
    ]
    .iter()
    .map(|(program, code)| {
        Killed(
            Command::new(program)
                .args(["-c", code])
                .spawn()
                .expect("a busy loop"),
        )
    })
    .collect();
    let metrics = eventually(&agent, |m| {
        m.sum("periscope_profile_pushes_total", &[("outcome", "failed")]) >= 2.0
            && m.sum("periscope_profile_symbol_cache_evictions_total", &[]) >= 1.0
    });
    drop(busy);
    assert!(metrics.sum("periscope_profile_symbol_cache_evictions_total", &[]) >= 1.0);
    assert_eq!(metrics.sum("periscope_profile_pushes_total", &[("outcome", "sent")]), 0.0);
    assert!(metrics.sum("periscope_profile_push_retries_total", &[]) >= 1.0);
    assert_eq!(metrics.one("periscope_probe_up", &[("probe", "profile")]), 1.0);
}

#[test]
fn a_containers_process_is_symbolized_from_its_own_files_and_labelled_with_its_container() {
    let test = "a_containers_process_is_symbolized_from_its_own_files_and_labelled_with_its_container";
    if !have_root(test) || !docker_ready(test) {
        return;
    }
    let bench = Bench::new("profile-container");
    // An image holding only a static burner: its binary exists nowhere on the host, so
    // only the process's own view of its files can name its frames.
    let rootfs = bench.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("rootfs");
    let mut flags = FRAME_POINTERS.to_vec();
    flags.push("-static");
    let built = bench.compile("burner", BURNER, &flags);
    std::fs::rename(&built, rootfs.join("bin/burner")).expect("into the rootfs");
    let tag = format!("periscope-test-profile:{}", std::process::id());
    let tar = bench.dir.path().join("rootfs.tar");
    run(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."));
    run(Command::new("docker")
        .args(["import", "--change", "LABEL periscope.test=1"])
        .arg(&tar)
        .arg(&tag));
    struct Container(String, String);
    impl Drop for Container {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["rm", "-f", &self.0]).output();
            let _ = Command::new("docker").args(["rmi", "-f", &self.1]).output();
        }
    }
    let container = Container(
        run(Command::new("docker").args(["run", "-d", "--network", "none", &tag, "/bin/burner", "30"])),
        tag.clone(),
    );

    let pushed = bench.dir.path().join("pushed");
    std::fs::create_dir(&pushed).expect("a folder for the pushes");
    let (_sink, port) = start_sink(&pushed);
    let _agent = Agent::start(&continuous_config(&format!("http://127.0.0.1:{port}")));
    let want = [("container.id", container.0.as_str()), ("process.executable.name", "burner")];
    let mut found = None;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..300 {
        for (body, path) in new_pushes(&pushed, &mut seen) {
            if !path.starts_with("/v1development/profiles") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&body) else {
                continue;
            };
            if let Some((samples, functions)) = process_in_otlp(&bytes, &want) {
                if functions.iter().any(|f| f == "burn_a") {
                    found = Some((samples, functions));
                }
            }
        }
        if found.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (samples, functions) = found.expect("a profile of the container's burner with its functions named");
    assert!(samples >= 10, "{samples}");
    for name in ["burn_a", "burn_b", "main"] {
        assert!(functions.iter().any(|f| f == name), "{name} in {functions:?}");
    }

    // The command line profiles that container alone, by the start of its id.
    let out = bench.dir.path().join("container.folded");
    let output = profile_command(&[
        "--container",
        &container.0[..12],
        "--seconds",
        "2",
        "-o",
        out.to_str().expect("UTF-8"),
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let folded = Folded::read(&out);
    assert!(folded.total() >= 50, "{}", folded.total());
    assert!(folded.0.iter().all(|(frames, _)| frames[0] == "burner"), "{:?}", folded.0);
    assert!(folded.through("burn_a") > 0);
    let output = profile_command(&["--container", "0123456789ab", "--seconds", "1", "-o", "/dev/null"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no running process in a container 0123456789ab"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
