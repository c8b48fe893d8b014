#!/usr/bin/env python3
"""What containers and tenants cost, measured side by side in one run.

1. Per syscall: a pinned getppid(2) loop, run in a cgroup of its own, with in turn:
   nothing attached (off); the floor (`periscope floor`: empty programs on the syscall
   hooks); Periscope with a rule that drops the loop's tenant (dropped: the BPF
   programs skip it after a cgroup read); the same agent with the loop in a tenant that
   is kept (traced, with the drop check on every syscall, and each tenant's share of
   the kernel maps on); Periscope without tenant rules (traced, no check). Medians of
   interleaved rounds.
2. Memory: the agent's RSS after 1,000 short-lived processes, each in a container
   cgroup of its own (`/docker/<id>`: 1,000 containers' worth of series with container
   labels), against the same 1,000 processes in one plain cgroup, in the same run.

Usage (as root, after `cargo build --release`):
    python3 bench/tenants_overhead.py [--rounds 7] [--calls 5000000] [--containers 1000]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERISCOPE = os.path.join(ROOT, "target", "release", "periscope")

# The loop and its reading are those of the syscall benchmark beside this one.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from syscall_overhead import build_loop, wait_for_line  # noqa: E402


def cgroup_root():
    best = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            left, _, right = line.partition(" - ")
            if right.startswith("cgroup2 "):
                mount = left.split()[4]
                if best is None or mount == "/sys/fs/cgroup":
                    best = mount
    if best is None:
        sys.exit("no cgroup v2 mount")
    return best


def make_cgroup(path):
    os.makedirs(path, exist_ok=True)
    return path


def remove_cgroups(paths):
    for path in sorted(paths, key=len, reverse=True):
        try:
            os.rmdir(path)
        except OSError:
            pass


def run_in_cgroup(argv, cgroup, **kwargs):
    def enter():
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
            procs.write("0")
    return subprocess.run(argv, preexec_fn=enter, check=True, **kwargs)


def loop_ns(binary, calls, cpu, cgroup):
    out = run_in_cgroup(["taskset", "-c", str(cpu), binary, str(calls)], cgroup, capture_output=True, text=True)
    return float(out.stdout.strip())


def start_agent(port, extra):
    config = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    config.write(f'prometheus:\n  listen_address: "127.0.0.1:{port}"\n{extra}')
    config.close()
    proc = subprocess.Popen([PERISCOPE, "run", "--config", config.name], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    wait_for_line(proc, "serving metrics")
    os.unlink(config.name)
    return proc


def stop(proc):
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as response:
        return response.read().decode()


def syscall_cost(args, loop, base):
    dropped = make_cgroup(os.path.join(base, "dropped"))
    kept = make_cgroup(os.path.join(base, "kept"))
    rules = ('tenants:\n  rules:\n    - tenant: batch\n      cgroup_path: "*/dropped"\n      drop: true\n'
             '    - tenant: web\n      cgroup_path: "*/kept"\n')
    kinds = {
        "off": (None, kept),
        "floor": ("floor", kept),
        "dropped tenant": (rules, dropped),
        "kept tenant (drop check on)": (rules, kept),
        "no tenant rules": ("", kept),
    }
    samples = {kind: [] for kind in kinds}
    loop_ns(loop, args.calls // 10, args.cpu, kept)  # warm up
    for round_no in range(args.rounds):
        for kind, (config, cgroup) in kinds.items():
            proc = None
            if config == "floor":
                proc = subprocess.Popen([PERISCOPE, "floor"], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
                wait_for_line(proc, "floor programs attached")
            elif config is not None:
                proc = start_agent(args.port, config)
                scrape(args.port)  # the first collection hands the dropped cgroups over
            try:
                samples[kind].append(loop_ns(loop, args.calls, args.cpu, cgroup))
            finally:
                stop(proc)
        print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items()),
              file=sys.stderr)
    median = {kind: statistics.median(v) for kind, v in samples.items()}
    floor = median["floor"] - median["off"]
    print(f"getppid loop, {args.calls} calls pinned to CPU {args.cpu}, medians of {args.rounds} interleaved rounds\n")
    print("| configuration | ns per syscall | added ns | x floor |")
    print("| --- | --- | --- | --- |")
    for kind in kinds:
        added = median[kind] - median["off"]
        ratio = "" if kind == "off" else f"{added / floor:.2f}"
        print(f"| {kind} | {median[kind]:.1f} | {added:+.1f} | {ratio} |")
    print()
    remove_cgroups([dropped, kept])


def rss_with(args, loop, base, containers):
    """Agent RSS after args.containers processes, each in a container cgroup of its own
    (containers=True) or all in one plain cgroup."""
    agent = start_agent(args.port, "workloads:\n  docker_socket: \"\"\n")
    made = []
    try:
        plain = make_cgroup(os.path.join(base, "plain"))
        made.append(plain)
        for n in range(args.containers):
            if containers:
                cgroup = make_cgroup(os.path.join(base, "docker", f"{0xbe7c000000 + n:064x}"))
                made.append(cgroup)
            else:
                cgroup = plain
            run_in_cgroup([loop, "100"], cgroup, capture_output=True)
        text = scrape(args.port)
        series = sum(1 for line in text.splitlines() if line.startswith("syscalls_total{"))
        labelled = sum(1 for line in text.splitlines()
                       if line.startswith("syscalls_total{") and "container_id=" in line)
        with open(f"/proc/{agent.pid}/status") as status:
            rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status.read()).group(1))
        return rss_kib / 1024.0, series, labelled
    finally:
        stop(agent)
        remove_cgroups(made + [os.path.join(base, "docker")])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5_000_000)
    parser.add_argument("--cpu", type=int, default=1)
    parser.add_argument("--port", type=int, default=19111)
    parser.add_argument("--containers", type=int, default=1000)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark loads BPF programs and makes cgroups")
    if not os.path.exists(PERISCOPE):
        sys.exit("build first: cargo build --release")
    base = make_cgroup(os.path.join(cgroup_root(), f"periscope-bench-{os.getpid()}"))
    try:
        with tempfile.TemporaryDirectory() as workdir:
            loop = build_loop(workdir)
            syscall_cost(args, loop, base)
            plain_rss, plain_series, _ = rss_with(args, loop, base, containers=False)
            rss, series, labelled = rss_with(args, loop, base, containers=True)
            print(f"| {args.containers} processes | syscalls_total series | with container_id | agent RSS |")
            print("| --- | --- | --- | --- |")
            print(f"| in one plain cgroup | {plain_series} | 0 | {plain_rss:.1f} MiB |")
            print(f"| each in its own container | {series} | {labelled} | {rss:.1f} MiB |")
            print(f"\nRSS with {args.containers} containers' series: {rss / plain_rss:.2f}x the same "
                  f"processes without containers")
    finally:
        remove_cgroups([base])


if __name__ == "__main__":
    main()
