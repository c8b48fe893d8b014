#!/usr/bin/env python3
"""What continuous CPU profiling costs a CPU-bound program, and what the profiler costs.

Times a CPU-bound loop (bench/spin_loop.c: a fixed number of arithmetic iterations,
pinned to one CPU) with nothing attached and with `periscope profile` sampling every
process at 19 Hz and at 99 Hz, interleaved round by round, and reports medians and each
rate's throughput as a share of off.

Then profiles 200 running processes for --seconds at 19 Hz and reports the profiler's
CPU time (user + system), its peak RSS, and how long naming their frames took.

Usage (as root, after `cargo build --release`):
    python3 bench/profile_overhead.py [--rounds 7] [--iterations 2000000000] [--seconds 10]
"""
import argparse
import os
import re
import resource
import signal
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target", "release", "periscope")


def build(workdir, name):
    binary = os.path.join(workdir, name)
    subprocess.run(["gcc", "-O2", "-fno-omit-frame-pointer", "-o", binary,
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

    # The profiler's own cost, with many processes to name frames for.
    spinners = [subprocess.Popen([loop, str(10 ** 12), "sleepy"]) for _ in range(args.processes)]
    time.sleep(1)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.time()
    result = subprocess.run([PERISCOPE, "profile", "--frequency", "19",
                             "--seconds", str(args.seconds), "-o", out], capture_output=True, text=True, check=True)
    wall = time.time() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    for s in spinners:
        s.kill()
        s.wait()
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # The largest child waited for so far: the profilers (the spinners take about 1 MiB).
    rss = after.ru_maxrss
    named = re.search(r"symbolized the stacks of (\d+) processes in (\d+) ms", result.stdout)
    samples = re.search(r"(\d+) samples of (\d+) processes", result.stdout)
    print(f"\nProfiling {args.processes} processes at 19 Hz for {args.seconds} s ({wall:.1f} s in all):")
    print(f"- samples: {samples.group(1)} of {samples.group(2)} processes")
    print(f"- profiler CPU time: {cpu_s * 1000:.0f} ms; peak RSS: {int(rss) / 1024:.1f} MiB")
    print(f"- naming the frames of {named.group(1)} processes: {named.group(2)} ms")


if __name__ == "__main__":
    main()
