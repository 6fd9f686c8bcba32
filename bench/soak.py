#!/usr/bin/env python3
"""Soak test (root; not part of every CI run): many VM jobs with random endings on the namespace cluster.

Endings: the guest powers off by itself, `slurm-vm stop`, plain `scancel`, the time limit, a prolog
failure injected at a random step, the launcher killed with SIGKILL, and preemption: a job of the partition
`urgent` takes the VM's node, the VM is checkpointed, requeued, restored (anywhere) and then stopped. Every
VM says `on_preempt: checkpoint`, so VMs that share the preempted node are checkpointed and restored too.
Afterwards every node must be
free of slurm-vm objects (job dirs, journals, notes, links, VMM processes) and no node may be drained
except by the injected prolog failures (those are resumed as they happen).

Usage: bench/soak.py [--jobs 200] [--seed 1] [--concurrency 6]      (about 15-25 min for 200 jobs)
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.testcluster import Cluster  # noqa: E402
from devtools.vmcluster import GUEST_CACHE, KILL_WAIT, setup_node_bridges, venv_dir, write_test_config  # noqa: E402
from slurm_vm.node.prepare import STEPS  # noqa: E402
from devtools.vmcluster import VMCluster  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENDINGS = ("poweroff", "stop", "scancel", "timeout", "prolog-failure", "launcher-killed", "preempted")
HOG_SECONDS = 30
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "OUT_OF_MEMORY"}


def spec(name: str, image: str, network: str = "lan") -> str:
    return (f"name: {name}\nimage: {image}\ncpus: 1\nmemory: 256M\nnetworks: [{{network: {network}}}]\n"
            "on_preempt: checkpoint\n")


class Soak:
    def __init__(self, vc: VMCluster, rng: random.Random, network: str = "lan"):
        self.vc, self.rng, self.network = vc, rng, network
        self.active: dict[int, dict] = {}
        self.outcomes: collections.Counter = collections.Counter()
        self.injected_nodes: set[str] = set()
        self.resumes = 0
        self.restored = 0

    def inject(self, job_hint: str) -> None:
        for node in self.vc.cluster.nodes:
            os.makedirs(self.vc.node_state(node), exist_ok=True)
            with open(os.path.join(self.vc.node_state(node), "fault-inject"), "a") as fh:
                fh.write(job_hint + "\n")

    def start(self, i: int) -> None:
        ending = self.rng.choice(ENDINGS)
        image = "tiny-selfoff" if ending == "poweroff" else "tiny"
        extra = ["--time=1"] if ending == "timeout" else []
        job = self.vc.submit(spec(f"soak{i}", image, self.network), *extra, name=f"soak{i}")
        if ending == "prolog-failure":
            self.inject(f"{self.rng.choice([s for s, _ in STEPS])}:{job}")
        self.active[job] = {"ending": ending, "acted": False, "since": time.monotonic(), "run": 0}

    def poke(self, job: int, info: dict) -> None:
        state = self.vc.job_field(job, "%T")
        if info["ending"] == "prolog-failure":
            reason = self.vc.cluster.client(["sinfo", "-h", "-R", "-o", "%N|%E"]).stdout
            for line in reason.splitlines():
                node, _, why = line.partition("|")
                if node:
                    self.injected_nodes.add(node)
                    self.resumes += 1
                    self.vc.cluster.client(["scontrol", "update", f"nodename={node}", "state=resume"])
            if state in ("PENDING", "REQUEUED", "REQUEUE_HOLD") or "held" in self.vc.job_field(job, "%r").lower():
                if time.monotonic() - info["since"] > 5:
                    self.vc.cluster.client(["scancel", str(job)])
            return
        if state != "RUNNING" or info["acted"]:
            return
        node = self.vc.job_field(job, "%N")
        if not self.ready(job, node, info):
            return
        if info["ending"] == "preempted" and info["run"] > 0:     # restored after its preemption: end it
            info["acted"] = True
            self.vc.slurm_vm("stop", str(job))
            return
        info["acted"] = True
        if info["ending"] == "stop":
            self.vc.slurm_vm("stop", str(job))
        elif info["ending"] == "scancel":
            self.vc.cluster.client(["scancel", str(job)], user="svmtest")
        elif info["ending"] == "launcher-killed":
            try:
                with open(os.path.join(self.vc.node_state(node), "jobs", str(job), "launcher.pid")) as fh:
                    os.kill(int(fh.read()), signal.SIGKILL)
            except (OSError, ValueError):
                info["acted"] = False
        elif info["ending"] == "preempted" and not info.get("hog"):
            info["hog"] = True          # one preemptor per job (the VM stays RUNNING through the GraceTime)
            self.vc.cluster.client(["sbatch", "--partition=urgent", "--exclusive", f"--nodelist={node}",
                                    "--output=/dev/null", f"--wrap=sleep {HOG_SECONDS}"], user="svmtest")
            info["acted"] = False       # acted again (stop) once restored

    def ready(self, job: int, node: str, info: dict) -> bool:
        """Booted (the serial log's marker), or restored after a preemption (a later run of the job)."""
        restarts = self.vc.cluster.client(["scontrol", "show", "job", "-o", str(job)]).stdout
        run = int(restarts.split("Restarts=", 1)[1].split()[0]) if "Restarts=" in restarts else 0
        if run != info["run"]:
            info["run"] = run
            info["acted"] = info["ending"] not in ("preempted", "stop", "scancel", "launcher-killed") and \
                info["acted"]
            self.restored += 1
        if run == 0:
            return "SLURM-VM-TEST ready" in self.vc.serial_log(node, job)
        return self.vc.output(job).count("the guest continues") >= run or \
            "SLURM-VM-TEST ready" in self.vc.serial_log(node, job)

    def run(self, total: int, concurrency: int, deadline: float) -> None:
        started = 0
        while (started < total or self.active) and time.monotonic() < deadline:
            while started < total and len(self.active) < concurrency:
                self.start(started)
                started += 1
            for job, info in list(self.active.items()):
                state = self.vc.job_field(job, "%T")
                if state in ENDED or (state == "" and time.monotonic() - info["since"] > 30):
                    self.outcomes[(info["ending"], state or "gone")] += 1
                    del self.active[job]
                else:
                    self.poke(job, info)
            time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--max-minutes", type=float, default=60)
    parser.add_argument("--network", default="lan", choices=["lan", "private", "pair", "uni", "managed"],
                        help="the test config's network every VM joins (private/pair/uni: job-private segments, "
                        "their VNIs agreed cluster-wide; managed: addresses handed out cluster-wide)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="svm-soak-", dir="/var/tmp")
    os.chmod(directory, 0o755)
    for sub, mode in (("state", 0o755), ("specs", 0o755), ("out", 0o1777)):
        os.makedirs(os.path.join(directory, sub))
        os.chmod(os.path.join(directory, sub), mode)
    config = write_test_config(directory, os.path.join(directory, "state"), underlay="eth0")
    cluster = Cluster(os.environ.get("SLURM_VM_TEST_PREFIX", "") + "soak", hooks="slurm-vm", venv=venv_dir(),
                      slurm_vm_config=config, bind=[REPO, directory, GUEST_CACHE], kill_wait=KILL_WAIT,
                      preempt_grace=60)
    cluster.down()
    cluster.up()
    setup_node_bridges(cluster)
    vc = VMCluster(cluster, config, directory, os.path.join(directory, "state"))
    soak = Soak(vc, random.Random(args.seed), args.network)
    began = time.monotonic()
    try:
        soak.run(args.jobs, args.concurrency, began + args.max_minutes * 60)
        time.sleep(5)
        for node in cluster.nodes:
            try:
                os.unlink(os.path.join(vc.node_state(node), "fault-inject"))
            except FileNotFoundError:
                pass
        leaks = vc.leaks()
        drained = [line for line in cluster.client(["sinfo", "-h", "-R", "-o", "%N|%E"]).stdout.splitlines()
                   if line.strip()]
    finally:
        cluster.down()
    print(f"{sum(soak.outcomes.values())} of {args.jobs} jobs ended in {time.monotonic() - began:.0f}s "
          f"(seed {args.seed}, {args.concurrency} at a time, network {args.network})")
    print("| ending | final state | jobs |\n|---|---|---|")
    for (ending, state), count in sorted(soak.outcomes.items()):
        print(f"| {ending} | {state} | {count} |")
    print(f"\nleaks: {len(leaks)} {leaks[:10]}")
    print(f"drained nodes at the end: {len(drained)} {drained}; nodes drained by injected prolog failures "
          f"(resumed): {sorted(soak.injected_nodes)}")
    injected = sum(n for (ending, _), n in soak.outcomes.items() if ending == "prolog-failure")
    print(f"drain events resumed: {soak.resumes}; injected prolog failures: {injected}; "
          f"requeued runs seen: {soak.restored}")
    checkpoints = os.path.join(directory, "checkpoints")
    left = [os.path.join(d, n) for d, _, names in os.walk(checkpoints) for n in names]
    print(f"checkpoint files left: {len(left)} {left[:5]}")
    unfinished = args.jobs - sum(soak.outcomes.values())
    return 0 if not leaks and not drained and not unfinished and soak.resumes <= injected else 1


if __name__ == "__main__":
    sys.exit(main())
