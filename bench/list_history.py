#!/usr/bin/env python3
"""`slurm-vm list --all --json` with 1,000 ended VM jobs in the accounting storage (root).

Usage: bench/list_history.py [--runs N] [--jobs 1000] [--slurm 22.05|24.11] [--keep]
A 3-node test cluster with accounting (hooks: none) runs a few real jobs as svmtest that carry slurm-vm's
comment and job name (`sbatch --wrap`, ending COMPLETED, FAILED and CANCELLED); their rows, as slurmctld and
slurmdbd wrote them, are then copied in the database under new job ids (one to six days back) up to --jobs
VM jobs (devtools.accountingdb.copy_job). The command runs as svmtest through `testcluster client`; the
figure includes starting Python and the one sacct call. Cluster names start with SLURM_VM_TEST_PREFIX.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.accountingdb import AccountingDB  # noqa: E402
from devtools.testcluster import Cluster  # noqa: E402
from devtools.vmcluster import TEST_ROOT, venv_dir, write_test_config  # noqa: E402

from slurm_vm.transport import encode_comment, new_salt  # noqa: E402

REAL = (("true", 4), ("false", 2), ("held", 2))   # wrap command (or a held job cancelled), how many
USER = "svmtest"


def submit_real(cluster: Cluster) -> list[int]:
    jobs = []
    for i, (what, count) in enumerate(REAL):
        for n in range(count):
            name = f"bench{i}{n}"
            comment = encode_comment(f"name: {name}\nimage: tiny\nmemory: 256M\n", new_salt())
            hold = ["--hold"] if what == "held" else []
            proc = cluster.client(["sbatch", "--parsable", f"--job-name=vm-{name}", f"--comment={comment}",
                                   "--output=/dev/null", *hold, "--wrap", "true" if what == "held" else what],
                                  user=USER)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr)
            jobs.append(int(proc.stdout.strip().split(";")[0]))
            if hold:
                cluster.client(["scancel", str(jobs[-1])], user=USER)
    return jobs


def wait_accounted(cluster: Cluster, jobs: list[int], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    ended = {"COMPLETED", "FAILED", "CANCELLED"}
    while time.monotonic() < deadline:
        out = cluster.client(["sacct", "-X", "-P", "-n", "-j", ",".join(map(str, jobs)), "-o", "State"]).stdout
        if len(out.split()) >= len(jobs) and all(line.split()[0] in ended for line in out.splitlines() if line):
            return
        time.sleep(1)
    raise SystemExit(f"the real jobs did not all end in sacct within {timeout}s")


def timed(cluster: Cluster, argv: list[str], runs: int) -> tuple[list[float], list[float], str]:
    """Wall times and CPU times (user + system of the command and its children: runuser, Python, sacct; not the
    daemons') of `runs` runs, and the last output."""
    times, cpu, out = [], [], ""
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = cluster.client(argv, user=USER, timeout=120)
        times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        out = proc.stdout
    return times, cpu, out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slurm", default="22.05", choices=["22.05", "24.11"])
    parser.add_argument("--keep", action="store_true", help="leave the cluster up (scripts/testcluster down)")
    args = parser.parse_args()
    name = os.environ.get("SLURM_VM_TEST_PREFIX", "") + "benchacct"
    directory = os.path.join(TEST_ROOT, name)
    os.makedirs(os.path.join(directory, "state"), exist_ok=True)
    config = write_test_config(directory, os.path.join(directory, "state"), underlay="eth0")
    cluster = Cluster(name, slurm=args.slurm, hooks="none", venv=venv_dir(), slurm_vm_config=config,
                      bind=[TEST_ROOT], accounting=True)
    cluster.down()
    cluster.up()
    try:
        real = submit_real(cluster)
        wait_accounted(cluster, real)
        per_job = -(-(args.jobs - len(real)) // len(real))
        copies = [FIRST + i * 10000 + k for i in range(len(real)) for k in range(per_job)][:args.jobs - len(real)]
        db = AccountingDB(cluster)
        for i, job in enumerate(real):
            db.copy_job(job, [c for c in copies if (c - FIRST) // 10000 == i], days_ago=1 + i % 6)
        slurm_vm = os.path.join(venv_dir(), "bin", "slurm-vm")
        history, history_cpu, out = timed(cluster, [slurm_vm, "list", "--all", "--json"], args.runs)
        listed = len(json.loads(out))
        sacct, _, _ = timed(cluster, ["sacct", "-X", "-D", "-P", "-n", "-S", "now-30days", "-o", "JobIDRaw"],
                            args.runs)
        live, live_cpu, _ = timed(cluster, [slurm_vm, "list", "--json"], args.runs)
        med = statistics.median
        print(f"| VM jobs listed | runs | `list --all --json` median / max s (CPU s) | sacct alone median s | "
              f"`list --json` (squeue) median s (CPU s) | load average |\n|---|---|---|---|---|---|\n"
              f"| {listed} | {args.runs} | {med(history):.2f} / {max(history):.2f} ({med(history_cpu):.2f}) | "
              f"{med(sacct):.2f} | {med(live):.2f} ({med(live_cpu):.2f}) | {open('/proc/loadavg').read().split()[0]} |")
    finally:
        if not args.keep:
            cluster.down()
    return 0


FIRST = 3000000   # copied rows' job ids: far above the real ones, never known to slurmctld

if __name__ == "__main__":
    sys.exit(main())
