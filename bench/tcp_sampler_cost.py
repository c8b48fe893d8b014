#!/usr/bin/env python3
"""What the tcp probe's sampler of open connections costs per connection, from the
kernel's own run-time statistics: a Python process holds N connections to a listener of
its own (both ends followed, 2N sockets), the agent samples them every second with
`self_metrics.bpf_stats: always`, and the sampler program's run time over its samples is
divided by the sockets it visited.

Usage (as root, after `cargo build --release`):
    python3 bench/tcp_sampler_cost.py [--connections 2050] [--seconds 10]
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import free_port, start_agent  # noqa: E402

HOLDER = r"""
import socket, sys
n = int(sys.argv[1])
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(4096)
port = listener.getsockname()[1]
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = listener.accept()
    held += [c, s]
print("ready", flush=True)
sys.stdin.readline()
"""

CONFIG = ("probes:\n  syscalls:\n    enabled: false\n  process:\n    enabled: false\n"
          "  tcp:\n    enabled: true\n    sample_interval_secs: 1\n"
          "self_metrics:\n  bpf_stats: always\n")


def sampler_stats(port):
    """(program, runs, seconds) of the tcp probe's sampler, from /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    runs, secs, program = 0.0, 0.0, None
    for line in text.splitlines():
        m = re.match(r'periscope_bpf_program_(runs|run_seconds)_total\{probe="tcp",program="(psc_tcp_(?:iter|walk))"\} (\S+)', line)
        if m:
            program = m.group(2)
            if m.group(1) == "runs":
                runs = float(m.group(3))
            else:
                secs = float(m.group(3))
    return program, runs, secs


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2050)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark loads BPF programs")
    workdir = tempfile.mkdtemp(prefix="periscope-bench-")
    metrics_port = free_port()
    agent = start_agent(workdir, metrics_port, CONFIG)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(args.connections)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        time.sleep(2)
        program, runs0, secs0 = sampler_stats(metrics_port)
        time.sleep(args.seconds)
        program, runs1, secs1 = sampler_stats(metrics_port)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        agent.send_signal(signal.SIGINT)
        agent.wait(timeout=30)
    visits = runs1 - runs0
    sockets = 2 * args.connections
    if program == "psc_tcp_walk":
        # One run walks the whole table.
        per_socket = (secs1 - secs0) / (visits * sockets) if visits else float("nan")
        print(f"{program}: {visits:.0f} walks of {sockets} sockets in {(secs1 - secs0) * 1e3:.1f} ms: "
              f"{per_socket * 1e9:.0f} ns per socket per sample")
    else:
        per_socket = (secs1 - secs0) / visits if visits else float("nan")
        print(f"{program}: {visits:.0f} visits in {(secs1 - secs0) * 1e3:.1f} ms: "
              f"{per_socket * 1e9:.0f} ns per socket per sample")


if __name__ == "__main__":
    main()
