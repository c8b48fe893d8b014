#!/usr/bin/env python3
"""What the sched probe costs the scheduler: `perf bench sched pipe` with nothing
attached, with empty programs on the probe's three hooks (`periscope floor --hooks
sched`, the least any tracer of these hooks pays), and with the probe; interleaved round
by round, medians reported.

`perf bench sched pipe` ping-pongs between two tasks through pipes: every operation is
two wakeups and two context switches, the events the probe hooks, and nothing else. It
runs as perf runs it by default (the two tasks on any CPU) and pinned to one CPU, where
a switch is cheapest and the probe's share the largest.

Usage (as root, after `cargo build --release`; perf is Debian's linux-perf):
    python3 src/probes/sched/bench.py [--rounds 7] [--loops 200000]
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PERISCOPE = os.environ.get("PERISCOPE_BIN", os.path.join(ROOT, "target", "release", "periscope"))
CONFIG = """prometheus:
  listen_address: "127.0.0.1:{port}"
probes:
  syscalls: {{enabled: false}}
  process: {{enabled: false}}
  tcp: {{enabled: false}}
  sched: {{enabled: true}}
"""


def pipe_ops_per_sec(loops, pinned):
    argv = ["perf", "bench", "sched", "pipe", "-l", str(loops)]
    if pinned:
        argv = ["taskset", "-c", "0"] + argv
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return float(re.search(r"(\d+)\s+ops/sec", out).group(1))


def start_agent(workdir, port):
    path = os.path.join(workdir, "sched.yaml")
    with open(path, "w") as f:
        f.write(CONFIG.format(port=port))
    proc = subprocess.Popen([PERISCOPE, "run", "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the agent did not get ready")


def start_floor():
    proc = subprocess.Popen([PERISCOPE, "floor", "--hooks", "sched"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "floor programs attached" not in line:
        proc.kill()
        raise RuntimeError(f"the floor did not attach: {line!r}")
    return proc


def stop_agent(proc):
    proc.terminate()
    proc.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--loops", type=int, default=200000)
    parser.add_argument("--port", type=int, default=19188)
    args = parser.parse_args()
    modes = ("off", "floor", "on")
    results = {(mode, pinned): [] for mode in modes for pinned in (False, True)}
    with tempfile.TemporaryDirectory() as workdir:
        for round_ in range(args.rounds):
            for mode in modes:
                agent = {"on": lambda: start_agent(workdir, args.port), "floor": start_floor}.get(mode, lambda: None)()
                try:
                    for pinned in (False, True):
                        results[(mode, pinned)].append(pipe_ops_per_sec(args.loops, pinned))
                finally:
                    if agent:
                        stop_agent(agent)
            print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    for pinned in (False, True):
        off = statistics.median(results[("off", pinned)])
        floor = statistics.median(results[("floor", pinned)])
        on = statistics.median(results[("on", pinned)])
        where = "pinned to CPU 0" if pinned else "any CPU (perf's default)"
        print(f"sched pipe, {where}: off {off:.0f} ops/s; empty programs {floor:.0f} ops/s, {100 * floor / off:.1f}% of off; "
              f"sched probe {on:.0f} ops/s, {100 * on / off:.1f}% of off")


if __name__ == "__main__":
    main()
