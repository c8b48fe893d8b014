#!/usr/bin/env python3
"""What continuous CPU profiling costs a CPU-bound program, and what the profiler costs.

Times a CPU-bound loop (bench/spin_loop.c: a fixed number of arithmetic iterations,
pinned to one CPU) with nothing attached and with `periscope profile` sampling every
process at 19 Hz and at 99 Hz, interleaved round by round, and reports medians and each
rate's throughput as a share of off.

Then, with 200 running processes of 200 distinct binaries (copies of the loop under
other names, so that each is a binary the symbolizer has not read):
- `periscope profile` for --seconds at 19 Hz: the profiler's CPU time (user + system),
  its peak RSS, and how long naming the frames took, per binary;
- `periscope run` with the profile probe on at 19 Hz, pushing OTLP profiles every 10 s
  to a local sink for --agent-seconds: the agent's CPU time and its RSS at the end.

Usage (as root, after `cargo build --release`):
    python3 bench/profile_overhead.py [--rounds 7] [--iterations 2000000000] [--seconds 10] [--agent-seconds 60]
"""
import argparse
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target", "release", "periscope")


def build(workdir, name, output=None, build_id=None):
    binary = os.path.join(workdir, output or name)
    link = [f"-Wl,--build-id=0x{build_id:040x}"] if build_id is not None else []
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", *link, "-o", binary,
                    os.path.join(ROOT, "bench", f"{name}.c")], check=True)
    return binary


def run_loop(binary, iterations, cpu):
    out = subprocess.run(["taskset", "-c", str(cpu), binary, str(iterations)], check=True,
                         capture_output=True, text=True)
    return float(out.stdout.strip())


def start_profiler(hz, output):
    proc = subprocess.Popen([PERISCOPE, "profile", "--frequency", str(hz), "--seconds", "100000",
                             "-o", output], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "sampling" not in line:
        raise RuntimeError(f"profiler did not start: {line!r}")
    return proc


def stop(proc):
    proc.send_signal(signal.SIGINT)
    proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=2_000_000_000)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--agent-seconds", type=int, default=60)
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="periscope-profile-bench-")
    loop = build(workdir, "spin_loop")
    out = os.path.join(workdir, "profile.folded")
    cpu = 0

    kinds = ["off", "19 Hz", "99 Hz"]
    times = {k: [] for k in kinds}
    run_loop(loop, args.iterations // 10, cpu)  # warm up
    for r in range(args.rounds):
        for kind in kinds:
            proc = None if kind == "off" else start_profiler(int(kind.split()[0]), out)
            seconds = run_loop(loop, args.iterations, cpu)
            if proc:
                stop(proc)
            times[kind].append(seconds)
            print(f"round {r + 1} {kind}: {seconds:.4f} s", flush=True)

    off = statistics.median(times["off"])
    print(f"\nCPU-bound loop ({args.iterations} iterations pinned to CPU {cpu}), medians of "
          f"{args.rounds} interleaved rounds\n")
    print("| profiler | loop time | throughput, % of off |")
    print("| --- | --- | --- |")
    for kind in kinds:
        t = statistics.median(times[kind])
        print(f"| {kind} | {t:.4f} s | {100 * off / t:.2f} % |")

    # The profiler's own cost, with many processes of as many binaries to name frames for.
    # Each its own build: the agent names frames by build id, so copies would be one.
    copies = [build(workdir, "spin_loop", f"spin_{i:03}", i + 1) for i in range(args.processes)]
    spinners = [subprocess.Popen([copy, str(10 ** 12), "sleepy"]) for copy in copies]
    time.sleep(1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run([PERISCOPE, "profile", "--frequency", "19",
                             "--seconds", str(args.seconds), "-o", out], capture_output=True, text=True, check=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The largest child waited for so far: the profilers (the spinners take about 1 MiB).
    rss = after.ru_maxrss
    named = re.search(r"symbolized the stacks of (\d+) processes in (\d+) ms", result.stdout)
    samples = re.search(r"(\d+) samples of (\d+) processes", result.stdout)
    processes, ms = int(named.group(1)), int(named.group(2))
    print(f"\n`periscope profile` of {args.processes} processes of as many binaries at 19 Hz for "
          f"{args.seconds} s ({wall:.1f} s in all):")
    print(f"- samples: {samples.group(1)} of {samples.group(2)} processes")
    print(f"- profiler CPU time: {cpu_s * 1000:.0f} ms; peak RSS: {int(rss) / 1024:.1f} MiB")
    print(f"- naming the frames of {processes} processes: {ms} ms, "
          f"{ms / max(processes, 1):.1f} ms per binary")

    # Continuous profiling in the agent, pushing to a sink that only counts; the same
    # agent without the probe first, as the baseline of its memory.
    sink_port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(sink_port)])
    without = run_agent(workdir, sink_port, False, args.agent_seconds)
    cpu, rss_kib, metrics = run_agent(workdir, sink_port, True, args.agent_seconds)
    sink.kill()
    for s_ in spinners:
        s_.kill()
        s_.wait()
    sent = sum(float(v) for v in re.findall(r'periscope_profile_pushes_total\{exporter="otlp",outcome="sent"\} (\S+)', metrics))
    print(f"\n`periscope run` with the profile probe at 19 Hz, {args.processes} processes, "
          f"OTLP pushes every 10 s, over {args.agent_seconds} s:")
    print(f"- agent CPU: {cpu * 1000:.0f} ms ({100 * cpu / args.agent_seconds:.2f} % of one CPU); "
          f"RSS at the end: {rss_kib / 1024:.1f} MiB; pushes sent: {sent:.0f}")
    print(f"- the same agent without the probe: CPU {without[0] * 1000:.0f} ms, "
          f"RSS at the end: {without[1] / 1024:.1f} MiB")


def run_agent(workdir, sink_port, profile, seconds):
    """The agent's CPU seconds over `seconds`, its RSS (KiB) at the end, its metrics."""
    metrics_port = free_port()
    config = os.path.join(workdir, "agent.yaml")
    with open(config, "w") as f:
        f.write(f'prometheus:\n  listen_address: "127.0.0.1:{metrics_port}"\n'
                f"probes:\n  profile:\n    enabled: {'true' if profile else 'false'}\n"
                "exporters:\n  profiles:\n    interval_secs: 10\n    otlp:\n      enabled: true\n"
                f'      endpoint: "http://127.0.0.1:{sink_port}"\n')
    agent = subprocess.Popen([PERISCOPE, "run", "--config", config], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    time.sleep(3)
    cpu_before = cpu_seconds(agent.pid)
    time.sleep(seconds)
    cpu = cpu_seconds(agent.pid) - cpu_before
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", open(f"/proc/{agent.pid}/status").read()).group(1))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
    agent.send_signal(signal.SIGTERM)
    agent.wait()
    return cpu, rss_kib, metrics


SINK = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200); self.send_header("Content-Length", "0"); self.end_headers()
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
