#!/usr/bin/env python3
"""Redis overhead: redis-benchmark GET/SET against redis-server, Periscope off vs on.

Runs `redis-benchmark -q -P 1` (no pipelining, loopback) against Debian's redis-server
with the agent off and on (the http probe alone by default, which frames Redis),
interleaved round by round, and reports medians: operations per second for GET and SET,
their ratio to off, the agent's own CPU time per 1,000 operations (from /proc) and,
with --bpf-stats, the time the probe's programs ran per operation.

Usage (as root, after `cargo build --release`):
    python3 bench/redis_overhead.py [--rounds 5] [--requests 200000] [--clients 50] [--bpf-stats]

PERISCOPE_BENCH_CONFIG replaces the probes section of the agent's configuration.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import (add_bpf_time, bpf_program_stats, cpu_seconds, free_port,  # noqa: E402
                           start_periscope, wait_port)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.environ.get("PERISCOPE_BENCH_BINARY") or os.path.join(ROOT, "target", "release", "periscope")
HTTP_ALONE = ("probes:\n  syscalls: {enabled: false}\n  process: {enabled: false}\n"
              "  tcp: {enabled: false}\n  http:\n    enabled: true\n")


def run_benchmark(port, requests, clients):
    """Operations per second of GET and SET, from redis-benchmark's CSV."""
    out = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-q", "-P", "1",
                          "-n", str(requests), "-c", str(clients), "-t", "get,set", "--csv"],
                         check=True, capture_output=True, text=True).stdout
    rates = {}
    for line in out.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields[0] in ("GET", "SET"):
            rates[fields[0]] = float(fields[1])
    return rates


def off_and_on(rounds, conf, measure, bpf_stats=False):
    """Runs `measure()` with the agent off, then on (`periscope run --config conf`), for
    `rounds` rounds. Returns each mode's measures, the agent's CPU seconds in each "on"
    round and, with bpf_stats, the programs' run time and runs (add_bpf_time)."""
    results = {"off": [], "on": []}
    agent_cpu, prog_time = [], {}
    for _ in range(rounds):
        for mode in ("off", "on"):
            agent = None
            if mode == "on":
                agent = start_periscope(["run", "--config", conf], "serving metrics", PERISCOPE)
                time.sleep(1)
                cpu_before = cpu_seconds(agent.pid)
                if bpf_stats:
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
                    stats_before = bpf_program_stats()
            results[mode].append(measure())
            if agent:
                if bpf_stats:
                    add_bpf_time(prog_time, stats_before)
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
                agent_cpu.append(cpu_seconds(agent.pid) - cpu_before)
                agent.terminate()
                agent.wait()
    return results, agent_cpu, prog_time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--bpf-stats", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                   "--save", "", "--appendonly", "no", "--dir", workdir],
                                  stdout=subprocess.DEVNULL)
        wait_port(port)
        conf = os.path.join(workdir, "periscope.yaml")
        with open(conf, "w") as f:
            f.write(f'prometheus:\n  listen_address: "127.0.0.1:{free_port()}"\n')
            f.write(os.environ.get("PERISCOPE_BENCH_CONFIG") or HTTP_ALONE)
        try:
            run_benchmark(port, args.requests // 4, args.clients)  # warm-up
            results, agent_cpu, prog_time = off_and_on(
                args.rounds, conf, lambda: run_benchmark(port, args.requests, args.clients), args.bpf_stats)
        finally:
            server.terminate()
            server.wait()

    print(f"redis-benchmark -P 1 -c {args.clients} -n {args.requests} -t get,set, "
          f"medians of {args.rounds} interleaved rounds")
    for op in ("GET", "SET"):
        off = statistics.median(r[op] for r in results["off"])
        on = statistics.median(r[op] for r in results["on"])
        rounds = ", ".join(f"{100 * n[op] / f[op]:.0f}" for f, n in zip(results["off"], results["on"]))
        print(f"  {op}: {on:,.0f} ops/s on, {off:,.0f} off: {100 * on / off:.1f} % of off "
              f"(rounds: {rounds} %)")
    operations = 2 * args.requests
    print(f"  agent CPU per 1,000 operations: {1000 * statistics.median(agent_cpu) / operations * 1000:.3f} ms")
    if args.bpf_stats:
        total_ops = operations * args.rounds
        for name, (run_ns, runs) in sorted(prog_time.items()):
            if runs:
                print(f"  {name}: {run_ns / total_ops:.0f} ns per operation ({runs / total_ops:.2f} runs)")


if __name__ == "__main__":
    main()
