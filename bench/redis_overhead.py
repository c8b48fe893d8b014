#!/usr/bin/env python3
"""Redis overhead: redis-benchmark GET/SET against redis-server, Periscope off vs on.

Runs `redis-benchmark -q -P 1` (no pipelining, loopback) against Debian's redis-server
with the agent off and on (the http probe alone by default, which frames Redis),
interleaved round by round, and reports medians: operations per second for GET and SET,
their ratio to off, the machine's busy CPU time per operation (and the rate it implies:
the benchmark keeps every CPU busy), the agent's own CPU time per 1,000 operations
(from /proc) and, with --bpf-stats, the time the probe's programs ran per operation.

Usage (as root, after `cargo build --release`):
    python3 bench/redis_overhead.py [--rounds 5] [--requests 200000] [--clients 50] [--bpf-stats]
        [--baseline BINARY] [--with-floor HOOKS] [--profile PERF_DATA]

PERISCOPE_BENCH_CONFIG replaces the probes section of the agent's configuration.
"""
import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import (add_bpf_time, bpf_program_stats, busy_cpu_seconds, cpu_seconds,  # noqa: E402
                           free_port, start_periscope, wait_port)

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


def off_and_on(rounds, conf, measure, bpf_stats=False, baseline=None, floor=None, profile=None):
    """Runs `measure()` with the agent off, then (with `floor`) `periscope floor --hooks
    FLOOR`, then (with `baseline`, another build of the agent) the baseline, then on
    (`periscope run --config conf`), round after round. Returns each mode's measures,
    each mode's busy CPU seconds per round (all CPUs), and for each mode but off its CPU
    seconds per round and, with bpf_stats, its programs' run time and runs
    (add_bpf_time). With `profile`, one more run with the agent on is recorded there
    (profiled), its measure under results["profiled"]."""
    modes = ("off",) + (("floor",) if floor else ()) + (("baseline",) if baseline else ()) + ("on",)
    results = {mode: [] for mode in modes}
    busy = {mode: [] for mode in modes}
    agent_cpu = {mode: [] for mode in modes if mode != "off"}
    prog_time = {mode: {} for mode in modes if mode != "off"}
    for _ in range(rounds):
        for mode in modes:
            agent = None
            if mode != "off":
                if mode == "floor":
                    agent = start_periscope(["floor", "--hooks", floor], "floor programs attached", PERISCOPE)
                else:
                    binary = baseline if mode == "baseline" else PERISCOPE
                    agent = start_periscope(["run", "--config", conf], "serving metrics", binary)
                time.sleep(1)
                cpu_before = cpu_seconds(agent.pid)
                if bpf_stats:
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=1"], check=True)
                    stats_before = bpf_program_stats()
            busy_before = busy_cpu_seconds()
            results[mode].append(measure())
            busy[mode].append(busy_cpu_seconds() - busy_before)
            if agent:
                if bpf_stats:
                    add_bpf_time(prog_time[mode], stats_before)
                    subprocess.run(["sysctl", "-q", "kernel.bpf_stats_enabled=0"], check=True)
                agent_cpu[mode].append(cpu_seconds(agent.pid) - cpu_before)
                agent.terminate()
                agent.wait()
    if profile:
        results["profiled"] = [profiled(conf, measure, profile)]
    return results, busy, agent_cpu, prog_time


def profiled(conf, measure, perf_data):
    """One more run of `measure()` with the agent on, recorded system-wide (perf record
    -a -g) into perf_data, outside the rounds (the recording slows what it records)."""
    agent = start_periscope(["run", "--config", conf], "serving metrics", PERISCOPE)
    try:
        time.sleep(1)
        recorder = subprocess.Popen(["perf", "record", "-a", "-g", "-q", "-o", perf_data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        try:
            return measure()
        finally:
            recorder.send_signal(signal.SIGINT)
            recorder.wait()
    finally:
        agent.terminate()
        agent.wait()


def ratio_line(unit, off, on):
    """One line comparing a mode's rates (`on`) with "off", round by round: the ratio of
    the medians, the median of the rounds' own ratios (each round's off and on run
    minutes apart at most, so a slow spell of the machine weighs on both) and the
    rounds' ratios."""
    ratios = [n / f for f, n in zip(off, on)]
    return (f"{statistics.median(on):,.0f} {unit} on, {statistics.median(off):,.0f} off: "
            f"{100 * statistics.median(on) / statistics.median(off):.1f} % of off; median of the rounds' "
            f"ratios {100 * statistics.median(ratios):.1f} % (rounds: "
            + ", ".join(f"{100 * r:.0f}" for r in ratios) + " %)")


def busy_line(unit, busy_off, busy_on, done_off, done_on):
    """One line comparing the machine's busy CPU time per operation on and off, round by
    round (`done_*`: operations per round). The benchmark keeps every CPU busy, so off's
    time over on's is the rate on would reach as a share of off's if the machine's speed
    held still: a steadier estimate than the rates, which move with what else the host
    runs (steal time is left out)."""
    per_off = [b / n for b, n in zip(busy_off, done_off)]
    per_on = [b / n for b, n in zip(busy_on, done_on)]
    ratios = [f / n for f, n in zip(per_off, per_on)]
    return (f"busy CPU per {unit}: {1e6 * statistics.median(per_on):.2f} us on, "
            f"{1e6 * statistics.median(per_off):.2f} off: rate implied "
            f"{100 * statistics.median(per_off) / statistics.median(per_on):.1f} % of off; median of the "
            f"rounds' {100 * statistics.median(ratios):.1f} % (rounds: "
            + ", ".join(f"{100 * r:.0f}" for r in ratios) + " %)")


def program_lines(prog_time, operations, unit):
    """Each program's run time and runs (add_bpf_time) per one of `operations`."""
    return [f"  {prog}: {run_ns / operations:.0f} ns per {unit} ({runs / operations:.2f} runs)"
            for prog, (run_ns, runs) in sorted(prog_time.items()) if runs]


def agent_modes(baseline, floor=None):
    """The modes a run measures besides off, with their names in the report."""
    modes = [("floor", f"floor ({floor})")] if floor else []
    if baseline:
        return modes + [("baseline", f"baseline ({baseline})"), ("on", "this build")]
    return modes + [("on", "on")]


def add_mode_arguments(parser):
    """The options that add modes to off and on: --baseline and --with-floor."""
    parser.add_argument("--baseline", metavar="BINARY",
                        help="another build of the agent (say an earlier commit's), run in the same rounds")
    parser.add_argument("--with-floor", metavar="HOOKS", choices=["socket", "socket-copy", "default-http"],
                        help="also run `periscope floor --hooks HOOKS` in every round, between off and on: "
                             "what the hooks alone (socket), or copying every read's and write's first bytes "
                             "(socket-copy), cost in the same rounds")
    parser.add_argument("--profile", metavar="PERF_DATA",
                        help="after the rounds, record one more run with the agent on system-wide "
                             "(perf record -a -g) into PERF_DATA, for bench/bpf_profile.py")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--bpf-stats", action="store_true")
    add_mode_arguments(parser)
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
            results, busy, agent_cpu, prog_time = off_and_on(
                args.rounds, conf, lambda: run_benchmark(port, args.requests, args.clients),
                args.bpf_stats, args.baseline, args.with_floor, args.profile)
        finally:
            server.terminate()
            server.wait()

    print(f"redis-benchmark -P 1 -c {args.clients} -n {args.requests} -t get,set, "
          f"{args.rounds} interleaved rounds")
    operations = 2 * args.requests
    for mode, name in agent_modes(args.baseline, args.with_floor):
        print(f" {name}:")
        for op in ("GET", "SET"):
            off = [r[op] for r in results["off"]]
            on = [r[op] for r in results[mode]]
            print(f"  {op}: {ratio_line('ops/s', off, on)}")
        rounds = [operations] * args.rounds
        print(f"  {busy_line('operation', busy['off'], busy[mode], rounds, rounds)}")
        print(f"  agent CPU per 1,000 operations: "
              f"{1000 * statistics.median(agent_cpu[mode]) / operations * 1000:.3f} ms")
        if args.bpf_stats:
            for line in program_lines(prog_time[mode], operations * args.rounds, "operation"):
                print(line)
    if args.profile:
        print(f"profile of one more run on: python3 bench/bpf_profile.py {args.profile} --operations {operations}")


if __name__ == "__main__":
    main()
