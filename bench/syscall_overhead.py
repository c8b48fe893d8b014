#!/usr/bin/env python3
"""Per-syscall overhead of Periscope's syscalls probe against the floor and bpftrace.

Runs a pinned getppid(2) loop with, in turn: nothing attached; empty programs on
tp_btf/sys_enter and sys_exit (`periscope floor`, the floor any syscall-wide tracer
pays); Periscope with its default configuration between its sampling windows, and with
syscall timing or kernel run-time statistics always on (the cost inside each window);
and bpftrace doing the same per-(pid,
syscall) aggregation. The four are interleaved round by round; the report gives
medians. Also reports the agent's start-to-attached time and its RSS after a while.

Usage (as root, after `cargo build --release`):
    python3 bench/syscall_overhead.py [--rounds 7] [--calls 5000000] [--rss-after 60]

With --timed, getppid is a timed syscall (in latency_syscalls, timing always on) for
Periscope and the baseline, and only those two run beside off and the floor: what
timing one syscall, and bucketing its latency in the kernel, costs.
"""
import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target", "release", "periscope")
BPFTRACE_PROGRAM = "tracepoint:raw_syscalls:sys_enter { @[pid, args->id] = count(); }"


def build_loop(workdir):
    binary = os.path.join(workdir, "getppid_loop")
    subprocess.run(["gcc", "-O2", "-o", binary, os.path.join(ROOT, "bench", "getppid_loop.c")], check=True)
    return binary


def run_loop(binary, calls, cpu):
    out = subprocess.run(["taskset", "-c", str(cpu), binary, str(calls)], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def wait_for_line(proc, pattern, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {pattern!r}")
        if re.search(pattern, line):
            return
    raise RuntimeError(f"timed out waiting for {pattern!r}")


def start_tool(kind, port, baseline=None, timed=False):
    if kind.startswith("periscope"):
        return start_periscope(port, kind, timed=timed)
    if kind == "baseline":
        return start_periscope(port, "periscope", binary=baseline, timed=timed)
    if kind == "floor":
        proc = subprocess.Popen([PERISCOPE, "floor"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        wait_for_line(proc, "floor programs attached")
    elif kind == "bpftrace":
        proc = subprocess.Popen(["bpftrace", "-e", BPFTRACE_PROGRAM], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        wait_for_line(proc, "Attaching")
        time.sleep(1)  # bpftrace prints before its probes are live
    else:
        return None
    return proc


def start_periscope(port, kind, binary=PERISCOPE, timed=False):
    """The default configuration (sampled windows closed, as between windows), or with
    syscall timing or kernel run-time statistics always on (as inside their windows);
    `timed`: getppid timed all the time."""
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(f'prometheus:\n  listen_address: "127.0.0.1:{port}"\n')
    if kind == "periscope-stats-always":
        config.write("self_metrics:\n  bpf_stats: always\n")
    if kind == "periscope-timing-always":
        config.write("probes:\n  syscalls:\n    latency_sampling: always\n")
    if timed:
        config.write("probes:\n  syscalls:\n    latency_sampling: always\n    latency_syscalls: [getppid]\n")
    config.close()
    proc = subprocess.Popen([binary, "run", "--config", config.name], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    wait_for_line(proc, "serving metrics")
    os.unlink(config.name)
    return proc


def stop_tool(proc):
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


def rss_and_start(port, seconds):
    proc = start_tool("periscope", port)
    try:
        time.sleep(seconds)
        scrape(port)  # a scrape's buffers count too
        with open(f"/proc/{proc.pid}/status") as status:
            rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))
        text = scrape(port)
        start = float(re.search(r"^periscope_start_duration_seconds (\S+)$", text, re.M).group(1))
        return rss_kib / 1024.0, start
    finally:
        stop_tool(proc)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5_000_000)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--port", type=int, default=19101)
    parser.add_argument("--rss-after", type=int, default=60, help="seconds before reading RSS (0 skips)")
    parser.add_argument("--baseline", help="another periscope binary (an older build, say) run with the "
                        "default configuration in each round, for an A/B comparison in the same run")
    parser.add_argument("--timed", action="store_true", help="time getppid in Periscope and the baseline, "
                        "and run only those beside off and the floor")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark loads BPF programs")
    if not os.path.exists(PERISCOPE):
        sys.exit("build first: cargo build --release")

    kinds = ["off", "floor", "periscope", "periscope-timing-always", "periscope-stats-always", "bpftrace"]
    if args.timed:
        kinds = ["off", "floor", "periscope"]
    if args.baseline:
        kinds.insert(3, "baseline")
    samples = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as workdir:
        loop = build_loop(workdir)
        run_loop(loop, args.calls // 10, args.cpu)  # warm up
        for round_no in range(args.rounds):
            for kind in kinds:
                proc = start_tool(kind, args.port, args.baseline, args.timed)
                try:
                    samples[kind].append(run_loop(loop, args.calls, args.cpu))
                finally:
                    stop_tool(proc)
            print(f"round {round_no + 1}: " + ", ".join(f"{k} {samples[k][-1]:.1f}" for k in kinds), file=sys.stderr)

    median = {kind: statistics.median(values) for kind, values in samples.items()}
    added = {kind: median[kind] - median["off"] for kind in kinds}
    print(f"getppid loop, {args.calls} calls pinned to CPU {args.cpu}, medians of {args.rounds} interleaved rounds\n")
    print("| configuration | ns per syscall | added ns | x floor |")
    print("| --- | --- | --- | --- |")
    for kind in kinds:
        ratio = "" if kind == "off" else f"{added[kind] / added['floor']:.2f}"
        print(f"| {kind} | {median[kind]:.1f} | {added[kind]:+.1f} | {ratio} |")
    print()
    if args.timed:
        if args.baseline:
            paired = statistics.median(p - b for p, b in zip(samples["periscope"], samples["baseline"]))
            print(f"Periscope - baseline ({args.baseline}), getppid timed: "
                  f"{added['periscope'] - added['baseline']:+.1f} ns per syscall between medians, "
                  f"{paired:+.1f} ns as the median of the rounds' differences")
        return
    # The default configuration times syscalls 10 s in every 60 s and turns kernel
    # statistics on 5 s in every 60 s: its long-run cost is the closed-window cost plus
    # each window's extra cost weighted by its share of time.
    timing_duty, stats_duty = 10 / 60, 5 / 60
    average = (added["periscope"]
               + timing_duty * (added["periscope-timing-always"] - added["periscope"])
               + stats_duty * (added["periscope-stats-always"] - added["periscope"]))
    print(f"Periscope / floor added cost, between windows: {added['periscope'] / added['floor']:.2f}")
    print(f"Periscope / floor added cost, long-run average of the default configuration: "
          f"{average / added['floor']:.2f} (floor: <= 1.5)")
    print(f"Periscope (averaged) / bpftrace added cost: {average / added['bpftrace']:.2f} (floor: < 1.0)")
    if args.baseline:
        print(f"Periscope - baseline ({args.baseline}), between windows: "
              f"{added['periscope'] - added['baseline']:+.1f} ns per syscall")
    if args.rss_after > 0:
        rss, start = rss_and_start(args.port, args.rss_after)
        print(f"Agent RSS after {args.rss_after} s with default probes: {rss:.1f} MiB (floor: < 40 MiB)")
        print(f"Start to all probes attached: {start * 1000:.0f} ms")


if __name__ == "__main__":
    main()
