#!/usr/bin/env python3
"""PostgreSQL overhead: pgbench -S against a cluster of its own, Periscope off vs on.

Makes a cluster with initdb (trust authentication, run as the `postgres` user),
initialises a small pgbench database, and runs `pgbench -S` (select-only, simple
protocol, loopback) with the agent off and on (the http probe alone by default, which
frames PostgreSQL), interleaved round by round. Reports medians: transactions per
second, their ratio to off, and the agent's own CPU time per 1,000 transactions; with
--bpf-stats, the time the probe's programs ran per transaction.

Usage (as root, after `cargo build --release`):
    python3 bench/pg_overhead.py [--rounds 5] [--seconds 10] [--clients 8] [--scale 2] [--bpf-stats]
        [--protocol simple|extended|prepared] [--baseline BINARY] [--with-floor HOOKS] [--profile PERF_DATA]

PERISCOPE_BENCH_CONFIG replaces the probes section of the agent's configuration.
"""
import argparse
import glob
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import free_port  # noqa: E402
from redis_overhead import (HTTP_ALONE, add_mode_arguments, agent_modes, busy_line, off_and_on, program_lines,  # noqa: E402
                            ratio_line)

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1]
AS_POSTGRES = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--"]


def start_cluster(workdir, port):
    shutil.chown(workdir, "postgres")
    data = os.path.join(workdir, "data")
    subprocess.run([*AS_POSTGRES, f"{BIN}/initdb", "--auth=trust", "-U", "postgres", "-D", data],
                   check=True, capture_output=True)
    server = subprocess.Popen([*AS_POSTGRES, f"{BIN}/postgres", "-D", data, "-p", str(port),
                               "-k", workdir, "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if subprocess.run([f"{BIN}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                          capture_output=True).returncode == 0:
            return server
        time.sleep(0.05)
    raise RuntimeError("postgres did not start")


def pgbench(port, *args):
    return subprocess.run([f"{BIN}/pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                           *args, "postgres"], check=True, capture_output=True, text=True).stdout


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--scale", type=int, default=2)
    parser.add_argument("--bpf-stats", action="store_true")
    parser.add_argument("--protocol", choices=["simple", "extended", "prepared"], default="simple")
    add_mode_arguments(parser)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        port = free_port()
        server = start_cluster(workdir, port)
        conf = os.path.join(workdir, "periscope.yaml")
        with open(conf, "w") as f:
            f.write(f'prometheus:\n  listen_address: "127.0.0.1:{free_port()}"\n')
            f.write(os.environ.get("PERISCOPE_BENCH_CONFIG") or HTTP_ALONE)
        try:
            pgbench(port, "-i", "-q", "-s", str(args.scale))
            run = ["-S", "-n", "-M", args.protocol, "-c", str(args.clients), "-j", "2",
                   "-T", str(args.seconds)]
            pgbench(port, *run[:-1], "2")  # warm-up

            def measure():
                out = pgbench(port, *run)
                tps = float(re.search(r"tps = ([\d.]+)", out).group(1))
                done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
                return tps, done

            measures, busy, agent_cpu, prog_time = off_and_on(args.rounds, conf, measure, args.bpf_stats,
                                                              args.baseline, args.with_floor, args.profile)
        finally:
            subprocess.run(["kill", "-INT", str(server.pid)])
            server.wait()

    results = {mode: [tps for tps, _ in runs] for mode, runs in measures.items()}
    print(f"pgbench -S -M {args.protocol} -c {args.clients} -j 2 -T {args.seconds}, scale {args.scale}, "
          f"{args.rounds} interleaved rounds")
    for mode, name in agent_modes(args.baseline, args.with_floor):
        per_transaction = [cpu / done for cpu, (_, done) in zip(agent_cpu[mode], measures[mode])]
        print(f" {name}: {ratio_line('tps', results['off'], results[mode])}")
        done = {m: [d for _, d in measures[m]] for m in ("off", mode)}
        print(f"  {busy_line('transaction', busy['off'], busy[mode], done['off'], done[mode])}")
        print(f"  agent CPU per 1,000 transactions: {1e6 * statistics.median(per_transaction):.3f} ms")
        if args.bpf_stats:
            total = sum(done for _, done in measures[mode])
            for line in program_lines(prog_time[mode], total, "transaction"):
                print(line)
    if args.profile:
        print(f"profile of one more run on: python3 bench/bpf_profile.py {args.profile} "
              f"--operations {measures['profiled'][0][1]}")


if __name__ == "__main__":
    main()
