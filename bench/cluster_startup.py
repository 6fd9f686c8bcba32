#!/usr/bin/env python3
"""Start-up and tear-down time of the namespace test cluster, per Slurm flavour (root).

Usage: bench/cluster_startup.py [--runs N] [--flavours 22.05,24.11] [--accounting]
--accounting: with slurmdbd and its MariaDB (devtools.accountingdb). Cluster names start with
SLURM_VM_TEST_PREFIX. The 24.11 root filesystem is built first if missing (not timed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.testcluster import Cluster, ensure_rootfs  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--flavours", default="22.05,24.11")
    parser.add_argument("--accounting", action="store_true")
    args = parser.parse_args()
    print("| flavour | accounting | runs | up (3 nodes idle) median s | first `srun -N3` s | down s |\n"
          "|---|---|---|---|---|---|")
    for flavour in args.flavours.split(","):
        if flavour == "24.11":
            ensure_rootfs(None, [])
        ups, sruns, downs = [], [], []
        for i in range(args.runs):
            name = os.environ.get("SLURM_VM_TEST_PREFIX", "") + f"bench{flavour.replace('.', '')}"
            cluster = Cluster(name, slurm=flavour, hooks="none", accounting=args.accounting)
            cluster.down()
            start = time.perf_counter()
            cluster.up()
            ups.append(time.perf_counter() - start)
            start = time.perf_counter()
            proc = cluster.client(["srun", "-N3", "true"], user="svmtest", timeout=120)
            sruns.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            start = time.perf_counter()
            cluster.down()
            downs.append(time.perf_counter() - start)
        print(f"| {flavour} | {'yes' if args.accounting else 'no'} | {args.runs} | {statistics.median(ups):.2f} | "
              f"{statistics.median(sruns):.2f} | {statistics.median(downs):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
