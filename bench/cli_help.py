#!/usr/bin/env python3
"""`slurm-vm --help` wall time (target <= 150 ms): median and p95 of N runs, plus a validate run.

Usage: bench/cli_help.py [--runs N]   (uses the slurm-vm next to this Python)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=True, timeout=60)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    env = {**os.environ, "SLURM_VM_CONFIG": os.path.join(REPO, "etc", "config.example.yaml")}
    cases = {"slurm-vm --help": [exe, "--help"],
             "slurm-vm validate etc/examples/tiny.yaml": [exe, "validate", os.path.join(REPO, "etc/examples/tiny.yaml")],
             "python -c pass (interpreter floor)": [sys.executable, "-c", "pass"]}
    print("| command | runs | median ms | p95 ms |\n|---|---|---|---|")
    for name, argv in cases.items():
        timed(argv, env)
        values = sorted(timed(argv, env) for _ in range(args.runs))
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        print(f"| `{name}` | {len(values)} | {statistics.median(values):.1f} | {p95:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
