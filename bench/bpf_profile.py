#!/usr/bin/env python3
"""Where Periscope's BPF programs spend their time, from a system-wide perf profile.

Reads a `perf record -a -g` file and counts every sample whose stack holds one of the
agent's programs (a JIT symbol `bpf_prog_<tag>_<name>`) or the tracepoint dispatch in
front of it (`bpf_trace_run*`), under the sample's leaf function: the program itself, a
subprogram, or the kernel helper it was in. With --operations, each share becomes ns per
operation: share of all samples x CPU seconds sampled / operations.

Usage (as root, with the agent running and a workload of a known count of operations):
    perf record -a -g -o perf.data -- redis-benchmark -h 127.0.0.1 -p PORT -q -P 1 -n 400000 -c 50 -t get
    python3 bench/bpf_profile.py perf.data --operations 400000
"""
import argparse
import collections
import re
import subprocess

PROGRAM = re.compile(r"bpf_prog_[0-9a-f]{16}_|bpf_trace_run")
TAG = re.compile(r"bpf_prog_[0-9a-f]{16}_")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("perf_data")
    parser.add_argument("--operations", type=int, help="operations the workload made while recorded")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()

    script = subprocess.run(["perf", "script", "-i", args.perf_data, "-F", "comm,ip,sym"],
                            check=True, capture_output=True, text=True).stdout
    header = subprocess.run(["perf", "report", "-i", args.perf_data, "--header-only"],
                            check=True, capture_output=True, text=True).stdout
    # The sampling frequency, to turn samples into CPU seconds.
    freq = re.search(r"sample_freq \} = (\d+)", header)
    total, idle, in_programs, leaves = 0, 0, 0, collections.Counter()
    for block in script.split("\n\n"):
        if not block.strip():
            continue
        header, *rest = block.strip().splitlines()
        lines = [line.split(None, 1) for line in rest]
        frames = [parts[1] if len(parts) > 1 else "?" for parts in lines]
        total += 1
        if header.split(None, 1)[0] == "swapper":
            idle += 1
        if not any(PROGRAM.search(frame) for frame in frames):
            continue
        in_programs += 1
        leaves[TAG.sub("", frames[0]) if frames else "?"] += 1
    if not total:
        raise SystemExit("no samples")
    seconds = total / int(freq.group(1)) if freq else None
    print(f"{total} samples, {in_programs} in Periscope's programs ({100 * in_programs / total:.2f} %)")
    if total > idle:
        # Work per operation grows by the programs' time: where the workload keeps every
        # CPU busy, its rate can be at most this share of what it is without them.
        share = in_programs / (total - idle)
        print(f"{idle} idle samples left out: {100 * share:.2f} % of busy samples, "
              f"a rate of at most {100 * (1 - share):.1f} % of off where the workload keeps every CPU busy")
    for leaf, samples in leaves.most_common(args.top):
        line = f"{100 * samples / total:7.3f} %  {leaf}"
        if args.operations and seconds:
            line += f"  ({samples / total * seconds / args.operations * 1e9:.0f} ns per operation)"
        print(line)


if __name__ == "__main__":
    main()
