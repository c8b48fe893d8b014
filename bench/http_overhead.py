#!/usr/bin/env python3
"""HTTP overhead: wrk against nginx serving a small static file, Periscope off vs on.

Runs `wrk` (keep-alive, 2 threads, loopback) against Debian's nginx with the agent off
and on (default configuration plus the http probe), interleaved round by round, and
reports medians: requests per second, P99 latency, and the agent's own CPU time per
1,000 requests (user + system time of the agent process, from /proc).

Usage (as root, after `cargo build --release`):
    python3 bench/http_overhead.py [--rounds 5] [--duration 10] [--connections 32] [--floor [socket|socket-copy|default-http]] [--bpf-stats] [--traces] [--baseline BINARY] [--with-floor HOOKS] [--token-bytes N]

With --baseline, another build of the agent (say an earlier commit's) runs in the same
rounds, between "off" and "on": the comparison the machine's changing load cannot skew.
With --with-floor, `periscope floor --hooks HOOKS` does the same.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# PERISCOPE_BENCH_BINARY runs another build of the agent, say an earlier commit's, against this one.
PERISCOPE = os.environ.get("PERISCOPE_BENCH_BINARY") or os.path.join(ROOT, "target", "release", "periscope")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def start_nginx(workdir, port):
    os.makedirs(os.path.join(workdir, "www"), exist_ok=True)
    with open(os.path.join(workdir, "www", "index.html"), "w") as f:
        f.write("x" * 612)  # the size of nginx's default welcome page
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""daemon off; master_process on; worker_processes 1;
pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; sendfile on; keepalive_requests 1000000;
  client_body_temp_path {workdir}/b; proxy_temp_path {workdir}/p; fastcgi_temp_path {workdir}/f;
  uwsgi_temp_path {workdir}/u; scgi_temp_path {workdir}/s;
  server {{ listen 127.0.0.1:{port}; root {workdir}/www; }} }}
""")
    proc = subprocess.Popen(["nginx", "-c", conf, "-e", f"{workdir}/error.log"])
    wait_port(port)
    return proc


def start_agent(workdir, metrics_port, extra=os.environ.get("PERISCOPE_BENCH_CONFIG", ""), otlp_port=None,
                binary=PERISCOPE):
    conf = os.path.join(workdir, "periscope.yaml")
    with open(conf, "w") as f:
        f.write(f'prometheus:\n  listen_address: "127.0.0.1:{metrics_port}"\n')
        f.write(extra or "probes:\n  http:\n    enabled: true\n")
        if otlp_port:
            f.write("traces:\n  enabled: true\nexporters:\n  otlp:\n    enabled: true\n"
                    f'    endpoint: "http://127.0.0.1:{otlp_port}"\n    metrics_interval_secs: 0\n')
    return start_periscope(["run", "--config", conf], "serving metrics", binary)


OTLP_SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def scrape(metrics_port):
    """The agent's /metrics as {(name, labels text): value}."""
    with socket.create_connection(("127.0.0.1", metrics_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    values = {}
    for line in data.decode().split("\r\n\r\n", 1)[-1].splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def start_floor(hooks):
    """Floor programs on the http probe's hooks instead of the agent."""
    return start_periscope(["floor", "--hooks", hooks], "floor programs attached")


def start_periscope(args, ready_line, binary=PERISCOPE):
    """Starts `periscope ARGS` and returns once it prints a line containing ready_line."""
    proc = subprocess.Popen([binary, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    while True:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"periscope {args[0]} exited during start-up")
        if ready_line in line:
            return proc


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def busy_cpu_seconds():
    """CPU time spent on all CPUs outside idle, iowait and steal (time the hypervisor
    gave to others, which is not ours), from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / CLK_TCK


def bpf_program_stats():
    """Run time and run count of Periscope's loaded programs, by id (bpftool -j)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], check=True, capture_output=True, text=True).stdout
    return {p["id"]: (p.get("name", ""), p.get("run_time_ns", 0), p.get("run_cnt", 0))
            for p in json.loads(out) if p.get("name", "").startswith("psc_")}


def add_bpf_time(prog_time, before):
    """Adds each program's run time and runs since `before` (bpf_program_stats) to
    prog_time: name -> [run time ns, runs]."""
    for prog_id, (name, run_ns, runs) in bpf_program_stats().items():
        _, run_ns_before, runs_before = before.get(prog_id, (name, 0, 0))
        acc = prog_time.setdefault(name, [0, 0])
        acc[0] += run_ns - run_ns_before
        acc[1] += runs - runs_before


def run_wrk(port, duration, connections, token_bytes=0):
    # A bearer token of `token_bytes` makes the request head that much longer, as large
    # tokens and cookies do.
    header = ["-H", "Authorization: Bearer " + "t" * token_bytes] if token_bytes else []
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", *header,
                          f"http://127.0.0.1:{port}/index.html"], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0}[p99.group(2)]
    return rps, float(p99.group(1)) * scale, total


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--floor", nargs="?", const="socket", choices=["socket", "socket-copy", "default-http"],
                        help="'on' runs floor programs instead of the agent: empty ones on the http "
                             "probe's socket hooks (socket), or ones that only copy the first bytes "
                             "of every TCP read and write (socket-copy)")
    parser.add_argument("--traces", action="store_true",
                        help="'on' also makes a span of every request and pushes them over OTLP to a "
                             "local sink; reports ring-buffer and span drops")
    parser.add_argument("--with-floor", metavar="HOOKS", choices=["socket", "socket-copy", "default-http"],
                        help="also run `periscope floor --hooks HOOKS` in every round, between off and on: "
                             "default-http is what the default probes with http on hook")
    parser.add_argument("--baseline", metavar="BINARY",
                        help="also run this build of the agent in every round, between off and on")
    parser.add_argument("--token-bytes", type=int, default=0,
                        help="send each request with a bearer token of this many bytes in its head")
    parser.add_argument("--bpf-stats", action="store_true",
                        help="enable kernel.bpf_stats_enabled during 'on' rounds and report the time "
                             "spent in each program per request, against all busy CPU time")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark loads BPF programs")
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: scripts/setup.sh --test installs it")
    workdir = tempfile.mkdtemp(prefix="periscope-bench-")
    port, metrics_port = free_port(), free_port()
    nginx = start_nginx(workdir, port)
    sink, otlp_port = None, None
    if args.traces:
        otlp_port = free_port()
        sink = subprocess.Popen([sys.executable, "-c", OTLP_SINK, str(otlp_port)])
        wait_port(otlp_port)
    trace_totals = {"requests": 0, "lost": 0.0, "queued": 0.0, "sent": 0.0, "dropped": 0.0, "exchanges": 0.0}
    kinds = ("off",) + (("floor",) if args.with_floor else ()) + (("baseline",) if args.baseline else ()) + ("on",)
    results = {kind: [] for kind in kinds}
    agent_cpu_per_1000 = {kind: [] for kind in kinds}
    prog_time = {kind: {} for kind in kinds}  # kind -> name -> [run time ns, runs]
    busy_on = {kind: 0.0 for kind in kinds}
    requests_on = {kind: 0 for kind in kinds}
    try:
        run_wrk(port, 2, args.connections, args.token_bytes)  # warm up
        for round_no in range(args.rounds):
            for kind in kinds:
                agent = None
                if kind == "floor":
                    agent = start_floor(args.with_floor)
                if kind == "baseline":
                    agent = start_agent(workdir, metrics_port, otlp_port=otlp_port, binary=args.baseline)
                if kind == "on":
                    agent = start_floor(args.floor) if args.floor else start_agent(workdir, metrics_port, otlp_port=otlp_port)
                before = cpu_seconds(agent.pid) if agent else 0
                if agent and args.bpf_stats:
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
                    progs_before, busy_before = bpf_program_stats(), busy_cpu_seconds()
                rps, p99, total = run_wrk(port, args.duration, args.connections, args.token_bytes)
                if agent and args.bpf_stats:
                    busy_on[kind] += busy_cpu_seconds() - busy_before
                    requests_on[kind] += total
                    add_bpf_time(prog_time[kind], progs_before)
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
                if kind == "on" and args.traces:
                    time.sleep(2)  # the last spans reach the sink
                    m = scrape(metrics_port)
                    trace_totals["requests"] += total
                    trace_totals["lost"] += m.get('periscope_events_lost_total{probe="http"}', 0)
                    trace_totals["queued"] += m.get('periscope_spans_queued_total{exporter="otlp"}', 0)
                    trace_totals["sent"] += m.get('periscope_exporter_spans_sent_total{exporter="otlp"}', 0)
                    trace_totals["dropped"] += m.get('periscope_spans_dropped_total{exporter="otlp",reason="queue_full"}', 0)
                    trace_totals["exchanges"] += sum(
                        v for k, v in m.items()
                        if k.startswith(("http_server_request_duration_seconds_count",
                                         "http_client_request_duration_seconds_count"))
                        and re.search(r'process_executable_name="(nginx|wrk)"', k))
                if agent:
                    if kind != "floor":
                        agent_cpu_per_1000[kind].append((cpu_seconds(agent.pid) - before) / total * 1000)
                    agent.send_signal(signal.SIGINT)
                    agent.wait(timeout=30)
                results[kind].append((rps, p99))
                print(f"round {round_no + 1} {kind}: {rps:.0f} req/s, P99 {p99 * 1e3:.2f} ms", file=sys.stderr)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(timeout=30)
        if sink:
            sink.kill()
            sink.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    med = {k: (statistics.median(r for r, _ in v), statistics.median(p for _, p in v)) for k, v in results.items()}
    print(f"wrk -t2 -c{args.connections} -d{args.duration}s against nginx (612-byte file, keep-alive, loopback), "
          f"medians of {args.rounds} interleaved rounds\n")
    print("| agent | requests/s | P99 latency |")
    print("| --- | --- | --- |")
    for kind in kinds:
        label = kind
        if kind == "on" and args.floor:
            label = {"socket": "floor (empty programs on the socket hooks)",
                     "socket-copy": "floor (copying the first 256 bytes of every TCP read and write)",
                     "default-http": "floor (empty programs on the default probes' hooks with http)"}[args.floor]
        print(f"| {label} | {med[kind][0]:.0f} | {med[kind][1] * 1e3:.2f} ms |")
    print()
    for kind in kinds[1:]:
        name = {"on": "the agent on", "floor": f"the floor ({args.with_floor})",
                "baseline": f"the baseline ({args.baseline})"}[kind]
        print(f"Requests/s with {name}: {med[kind][0] / med['off'][0] * 100:.1f}% of off (target: >= 95%)")
        print(f"Added P99 latency: {(med[kind][1] - med['off'][1]) * 1e3:+.2f} ms")
        if agent_cpu_per_1000[kind]:
            print(f"Agent CPU time per 1,000 requests: {statistics.median(agent_cpu_per_1000[kind]) * 1e3:.2f} ms")
    if args.traces and trace_totals["requests"]:
        t = trace_totals
        print(f"\nSpans with the agent on, all rounds: {t['requests']} wrk requests, "
              f"ring-buffer events lost {t['lost']:.0f} ({t['lost'] / t['requests'] * 100:.3f}% of requests), "
              f"nginx and wrk exchanges counted in the metrics {t['exchanges']:.0f}, spans queued {t['queued']:.0f}, "
              f"sent over OTLP {t['sent']:.0f}, dropped from the queue {t['dropped']:.0f}")
    for kind in kinds[1:]:
        if not (args.bpf_stats and requests_on[kind]):
            continue
        per_request = busy_on[kind] / requests_on[kind] * 1e6
        print(f"\nAll busy CPU time with {kind}: {per_request:.2f} us per request "
              f"(kernel.bpf_stats_enabled adds two clock reads to every program run)")
        print("| program | runs per request | ns per run | us per request | share of busy CPU |")
        print("| --- | --- | --- | --- | --- |")
        for name, (run_ns, runs) in sorted(prog_time[kind].items()):
            if runs:
                print(f"| {name} | {runs / requests_on[kind]:.2f} | {run_ns / runs:.0f} | "
                      f"{run_ns / requests_on[kind] / 1e3:.2f} | {run_ns / 1e9 / busy_on[kind] * 100:.2f} % |")


if __name__ == "__main__":
    main()
