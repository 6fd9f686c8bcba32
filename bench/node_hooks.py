#!/usr/bin/env python3
"""Prolog and epilog wall time for a one-NIC VM job, against no-op hooks, in one run (root).

Runs the real slurm-vm-prolog/epilog as subprocesses inside a private network namespace with a
bridge, exactly like the hook tests, and times:
  noop         /bin/true as a hook (the floor: fork+exec)
  non-vm       slurm-vm-prolog for a job that is not a VM job (the cost every other job pays)
  prolog/epilog for a VM job on a 100 MB base image and on a 100 GB sparse one (its NIC filtered)
  prolog/epilog for the same job, filtered and on a `trusted` network (no anti-spoofing table), interleaved
Prints a markdown table (median, p95 in ms). Usage: bench/node_hooks.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.hooknode import OTHER, SPEC, USER, Node, ensure_user  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[-1]} failed: {proc.stderr.strip()}")
    return elapsed * 1000


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def row(name: str, values: list[float]) -> str:
    return f"| {name} | {len(values)} | {statistics.median(values):.1f} | {pct(values, 0.95):.1f} |"


def resize_base(node: Node, size: str) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", node.base, size], check=True, timeout=60)
    os.chmod(node.base, 0o644)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root")
    ensure_user(USER, 4201)
    ensure_user(OTHER, 4202)
    netns = f"tkb{os.getpid() % 10000}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=20)
    results: dict[str, list[float]] = {}
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "br-vm", "type", "bridge"], check=True, timeout=20)
        subprocess.run(["ip", "-n", netns, "link", "set", "br-vm", "up"], check=True, timeout=20)
        with tempfile.TemporaryDirectory() as tmp:
            os.chmod(tmp, 0o755)
            node = Node(tmp, netns)
            ns = ["nsenter", f"--net=/run/netns/{netns}"]
            bin_dir = os.path.dirname(sys.executable)
            prolog, epilog = os.path.join(bin_dir, "slurm-vm-prolog"), os.path.join(bin_dir, "slurm-vm-epilog")
            plain_env = node.env(1, None)
            plain_env.pop("SLURM_JOB_COMMENT", None)
            for i in range(args.runs):
                results.setdefault("no-op hook (/bin/true)", []).append(timed([*ns, "/bin/true"], plain_env))
                results.setdefault("slurm-vm-prolog, not a VM job", []).append(timed([*ns, prolog], plain_env))
            for label, size in (("100M", "100M"), ("100G sparse", "100G")):
                resize_base(node, size)
                spec = SPEC.replace("disk: 64M\n", "")
                for i in range(args.runs):
                    env = node.env(1000 + i, spec)
                    results.setdefault(f"prolog, VM job, 1 NIC, base {label}", []).append(timed([*ns, prolog], env))
                    results.setdefault(f"epilog, VM job, 1 NIC, base {label}", []).append(timed([*ns, epilog], env))
            # Filtered and `trusted` (no port filter table) jobs interleaved: the filter's cost is the difference.
            resize_base(node, "100M")
            node.write_config({"networks": {"lan": {"kind": "bridge", "bridge": "br-vm"},
                                            "open": {"kind": "bridge", "bridge": "br-vm", "trusted": True}}})
            for i in range(args.runs):
                for label, network in (("filtered", "lan"), ("trusted, no filter", "open")):
                    env = node.env(2000 + 2 * i + (network == "open"),
                                   SPEC.replace("disk: 64M\n", "").replace("network: lan", f"network: {network}"))
                    results.setdefault(f"prolog, VM job, 1 NIC, base 100M, {label}", []).append(
                        timed([*ns, prolog], env))
                    results.setdefault(f"epilog, VM job, 1 NIC, base 100M, {label}", []).append(
                        timed([*ns, epilog], env))
    finally:
        subprocess.run(["ip", "netns", "del", netns], timeout=20)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}\n")
    print("| hook | runs | median ms | p95 ms |\n|---|---|---|---|")
    for name, values in results.items():
        print(row(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
