#!/usr/bin/env python3
"""DNS overhead: dnsperf against dnsmasq, Periscope off vs on.

Runs `dnsperf` (UDP, loopback) against dnsmasq answering from its own configuration,
with the agent off and on (the http probe alone by default, which pairs DNS lookups),
interleaved round by round, and reports medians: queries per second, their ratio to
off, the agent's own CPU time per 1,000 queries (from /proc) and, with --bpf-stats, the
time the probe's programs ran per query.

Usage (as root, after `cargo build --release`):
    python3 bench/dns_overhead.py [--rounds 5] [--seconds 10] [--clients 4] [--bpf-stats] [--baseline BINARY] [--with-floor HOOKS] [--profile PERF_DATA]

PERISCOPE_BENCH_CONFIG replaces the probes section of the agent's configuration.
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import free_port, wait_port  # noqa: E402
from redis_overhead import (HTTP_ALONE, add_mode_arguments, agent_modes, busy_line, off_and_on, program_lines,  # noqa: E402
                            ratio_line)

NAMES = 100


def run_dnsperf(port, queries_file, seconds, clients):
    """Queries per second dnsperf reports, and the queries it completed."""
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries_file,
                          "-l", str(seconds), "-c", str(clients), "-T", str(clients), "-q", "500"],
                         check=True, capture_output=True, text=True).stdout
    rate = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))
    return rate, completed


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--bpf-stats", action="store_true")
    add_mode_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                                   "--user=root", "--listen-address=127.0.0.1", "--bind-interfaces",
                                   f"--port={port}", "--local=/test/",
                                   "--address=/bench.test/127.0.0.7", "--conf-file=/dev/null",
                                   "--pid-file=", "--cache-size=0", "--dns-forward-max=10000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        queries = os.path.join(workdir, "queries")
        with open(queries, "w") as f:
            for i in range(NAMES):
                f.write(f"n{i}.bench.test A\n")
        conf = os.path.join(workdir, "periscope.yaml")
        with open(conf, "w") as f:
            f.write(f'prometheus:\n  listen_address: "127.0.0.1:{free_port()}"\n')
            f.write(os.environ.get("PERISCOPE_BENCH_CONFIG") or HTTP_ALONE)
        try:
            run_dnsperf(port, queries, 2, args.clients)  # warm-up
            results, busy, agent_cpu, prog_time = off_and_on(
                args.rounds, conf, lambda: run_dnsperf(port, queries, args.seconds, args.clients),
                args.bpf_stats, args.baseline, args.with_floor, args.profile)
        finally:
            server.terminate()
            server.wait()

    print(f"dnsperf -c {args.clients} -l {args.seconds} against dnsmasq, UDP, "
          f"{args.rounds} interleaved rounds")
    for mode, name in agent_modes(args.baseline, args.with_floor):
        print(f" {name}: {ratio_line('queries/s', [r for r, _ in results['off']], [r for r, _ in results[mode]])}")
        done = {m: [c for _, c in results[m]] for m in ("off", mode)}
        print(f"  {busy_line('query', busy['off'], busy[mode], done['off'], done[mode])}")
        completed = statistics.median(c for _, c in results[mode])
        print(f"  agent CPU per 1,000 queries: "
              f"{1000 * statistics.median(agent_cpu[mode]) / completed * 1000:.3f} ms")
        if args.bpf_stats:
            total = sum(c for _, c in results[mode])
            for line in program_lines(prog_time[mode], total, "query"):
                print(line)
    if args.profile:
        print(f"profile of one more run on: python3 bench/bpf_profile.py {args.profile} "
              f"--operations {results['profiled'][0][1]}")


if __name__ == "__main__":
    main()
