#!/usr/bin/env python3
"""TCP overhead: a connect/accept/close loop and a bulk transfer over loopback, Periscope
off vs on (the tcp probe alone), interleaved round by round; reports medians.

- Connection loop: `examples/tcp_connect_loop` (one client thread connecting, one
  accepting thread that closes first), connections per second, and the machine's busy
  CPU time per connection (/proc/stat), which varies less between rounds.
- Bulk: `iperf3` (Debian), one stream over loopback, bits per second.

Usage (as root, after `cargo build --release --examples`):
    python3 bench/tcp_overhead.py [--rounds 5] [--duration 5] [--sample-interval SECS] [--bpf-stats]

--sample-interval sets probes.tcp.sample_interval_secs (10 by default), so the sampler of
open connections runs within each round. --bpf-stats turns on kernel.bpf_stats_enabled
during the "on" rounds' connection loops and reports the kernel's own count of time spent
in each program per connection: the figure that does not move with the machine's
neighbours.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import ROOT, add_bpf_time, bpf_program_stats, cpu_seconds, free_port, start_agent, wait_port  # noqa: E402

LOOP = os.path.join(ROOT, "target", "release", "examples", "tcp_connect_loop")
# The kernel's run-time statistics are off: by default they are on for 5 s in every 60,
# and a run this short would fall inside that window every time.
TCP_ONLY = ("probes:\n  syscalls:\n    enabled: false\n  process:\n    enabled: false\n"
            "  tcp:\n    enabled: true\nself_metrics:\n  bpf_stats: off\n")


def busy_ticks():
    """Busy CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait


def connect_loop(duration):
    """Connections per second, and busy CPU microseconds per connection."""
    before = busy_ticks()
    out = subprocess.run([LOOP, str(duration)], check=True, capture_output=True, text=True)
    rate = float(out.stdout.strip())
    busy_us = (busy_ticks() - before) * 1e6 / os.sysconf("SC_CLK_TCK")
    return rate, busy_us / (rate * duration)


def iperf(port, duration):
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(duration), "-J"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)["end"]["sum_received"]["bits_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--sample-interval", type=int, default=None)
    parser.add_argument("--bpf-stats", action="store_true",
                        help="report the time spent in each program per connection of the loop")
    args = parser.parse_args()
    config = TCP_ONLY
    if args.sample_interval is not None:
        config = config.replace("    enabled: true\n", f"    enabled: true\n    sample_interval_secs: {args.sample_interval}\n", 1)
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark loads BPF programs")
    if not os.path.exists(LOOP):
        sys.exit("build the loop first: cargo build --release --examples")
    if not shutil.which("iperf3"):
        sys.exit("iperf3 is missing: scripts/setup.sh --test installs it")
    workdir = tempfile.mkdtemp(prefix="periscope-bench-")
    iperf_port, metrics_port = free_port(), free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(iperf_port)], stdout=subprocess.DEVNULL)
    wait_port(iperf_port)
    results = {kind: {"loop": [], "loop_cpu_us": [], "bulk": []} for kind in ("off", "on")}
    prog_time = {}  # name -> [run time ns, runs]
    connections_on = 0
    agent_us_per_connection = []
    try:
        connect_loop(1)  # warm up
        for round_no in range(args.rounds):
            for kind in ("off", "on"):
                agent = start_agent(workdir, metrics_port, config) if kind == "on" else None
                if agent and args.bpf_stats:
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
                    progs_before = bpf_program_stats()
                agent_cpu_before = cpu_seconds(agent.pid) if agent else 0
                loop, loop_cpu_us = connect_loop(args.duration)
                if agent:
                    agent_us_per_connection.append(
                        (cpu_seconds(agent.pid) - agent_cpu_before) * 1e6 / (loop * args.duration))
                if agent and args.bpf_stats:
                    add_bpf_time(prog_time, progs_before)
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
                    connections_on += loop * args.duration
                time.sleep(1)
                bulk = iperf(iperf_port, args.duration)
                if agent:
                    agent.send_signal(signal.SIGINT)
                    agent.wait(timeout=30)
                results[kind]["loop"].append(loop)
                results[kind]["loop_cpu_us"].append(loop_cpu_us)
                results[kind]["bulk"].append(bulk)
                print(f"round {round_no + 1} {kind}: {loop:.0f} connections/s ({loop_cpu_us:.1f} us CPU each), {bulk / 1e9:.2f} Gbit/s",
                      file=sys.stderr)
                time.sleep(1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in results.items()}
    print(f"medians of {args.rounds} interleaved rounds of {args.duration} s, loopback\n")
    print("| agent | connections/s | busy CPU per connection | bulk Gbit/s |")
    print("| --- | --- | --- | --- |")
    for kind in ("off", "on"):
        print(f"| {kind} | {med[kind]['loop']:.0f} | {med[kind]['loop_cpu_us']:.1f} us "
              f"| {med[kind]['bulk'] / 1e9:.2f} |")
    # Each round's "on" against the "off" next to it in time, which drifts less than
    # the medians of all rounds do on a shared machine.
    def per_round(metric, invert=False):
        ratios = [(o / n if invert else n / o) for o, n in zip(results["off"][metric], results["on"][metric])]
        return statistics.median(ratios) * 100, min(ratios) * 100, max(ratios) * 100
    print()
    print(f"Connection loop with the agent on: {med['on']['loop'] / med['off']['loop'] * 100:.1f}% of off "
          f"(median of per-round ratios {per_round('loop')[0]:.1f}%, range {per_round('loop')[1]:.1f}-"
          f"{per_round('loop')[2]:.1f}%; target: >= 95%)")
    print(f"  busy CPU per connection, off/on: median per round {per_round('loop_cpu_us', invert=True)[0]:.1f}%")
    print(f"Bulk transfer with the agent on: {med['on']['bulk'] / med['off']['bulk'] * 100:.1f}% of off "
          f"(median of per-round ratios {per_round('bulk')[0]:.1f}%, range {per_round('bulk')[1]:.1f}-"
          f"{per_round('bulk')[2]:.1f}%; target: >= 99%)")
    print(f"Agent process CPU time (user space) during the loop: "
          f"{statistics.median(agent_us_per_connection):.3f} us per connection (median of rounds)")
    if args.bpf_stats and connections_on:
        print(f"\nBPF programs during the connection loop, {connections_on:.0f} connections with the agent on "
              f"(kernel.bpf_stats_enabled adds two clock reads to every program run)")
        print("| program | runs per connection | ns per run | us per connection |")
        print("| --- | --- | --- | --- |")
        total_ns = 0
        for name, (run_ns, runs) in sorted(prog_time.items()):
            if runs:
                total_ns += run_ns
                print(f"| {name} | {runs / connections_on:.2f} | {run_ns / runs:.0f} | "
                      f"{run_ns / connections_on / 1e3:.2f} |")
        print(f"| all | | | {total_ns / connections_on / 1e3:.2f} |")


if __name__ == "__main__":
    main()
