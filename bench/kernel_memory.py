#!/usr/bin/env python3
"""The kernel memory of the agent's BPF maps: the sum of `bytes_memlock` that
`bpftool map show -j` gives for the maps that appeared with the agent, with its default
probes and caps, idle, then after a Python process of this script's has made connections
to N listeners of its own (N outbound and N inbound tcp series, each with its
histograms, allocated at its first sample, as maps that allocate per entry report what
they hold).

Usage (as root, after `cargo build --release`):
    python3 bench/kernel_memory.py [--peers 500] [--binary target/release/periscope]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from http_overhead import PERISCOPE, free_port, start_agent  # noqa: E402


def maps():
    listed = json.loads(subprocess.check_output(["bpftool", "map", "show", "-j"]))
    return {m["id"]: m for m in listed}


def report(label, ours):
    total = sum(m.get("bytes_memlock", 0) for m in ours)
    print(f"{label}: {total / 2**20:.1f} MiB in {len(ours)} maps")
    for m in sorted(ours, key=lambda m: -m.get("bytes_memlock", 0))[:6]:
        print(f"  {m.get('name')}: {m.get('bytes_memlock', 0) / 2**20:.2f} MiB "
              f"({m.get('type')}, {m.get('max_entries')} entries, {m.get('bytes_value')} B values)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peers", type=int, default=500)
    parser.add_argument("--binary", default=PERISCOPE)
    args = parser.parse_args()
    before = set(maps())
    with tempfile.TemporaryDirectory() as workdir:
        agent = start_agent(workdir, free_port(), extra="probes: {}\n", binary=args.binary)
        try:
            time.sleep(3)
            report("idle", [m for i, m in maps().items() if i not in before])
            listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(args.peers)]
            for listener in listeners:
                client = socket.create_connection(listener.getsockname())
                server, _ = listener.accept()
                client.close()
                server.close()
            time.sleep(2)
            report(f"after {args.peers} peers", [m for i, m in maps().items() if i not in before])
        finally:
            agent.terminate()
            agent.wait()


if __name__ == "__main__":
    main()
