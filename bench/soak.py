#!/usr/bin/env python3
"""Soak test (root; not part of every CI run): many VM jobs with random endings on the namespace cluster.

Endings: the guest powers off by itself, `slurm-vm stop`, plain `scancel`, the time limit, a prolog
failure injected at a random step, the launcher killed with SIGKILL, and preemption: a job of the partition
`urgent` takes the VM's node, the VM is checkpointed, requeued, restored (anywhere) and then stopped. Every
VM says `on_preempt: checkpoint`, so VMs that share the preempted node are checkpointed and restored too.
Afterwards every node must be
free of slurm-vm objects (job dirs, journals, notes, links, VMM processes) and no node may be drained
except by the injected prolog failures (those are resumed as they happen).

Checkpoints: a job that restored removes its checkpoint, so a job that ended COMPLETED or TIMEOUT must leave
none. A job that ended otherwise after a save (cancelled while requeued, its launcher killed or the job
cancelled during a save) keeps its checkpoint on purpose (slurm-vm never deletes one it did not restore):
those are listed with their job's ending and then removed with `slurm-vm checkpoint --drop`, as a user would.
Jobs still queued at the deadline are cancelled (their checkpoints stay, on purpose, and are dropped too).

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
PREEMPTED_SETTLE = 30      # PREEMPTED is final only if it lasts (a requeued job passes through it)
KEEPS_NO_CHECKPOINT = {"COMPLETED", "TIMEOUT"}
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
        self.final: dict[int, tuple[str, str]] = {}       # job -> (ending, final state)

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
        if state != "RUNNING":
            return
        self.follow_runs(job, info)          # a new run (requeued, restored) may have to be acted on again
        if info["acted"]:
            return
        node = self.vc.job_field(job, "%N")
        if not self.ready(job, node, info):
            return
        if info["ending"] == "preempted":
            if info["run"] > 0:              # restored after its preemption: end it
                info["acted"] = True
                self.vc.slurm_vm("stop", str(job))
            elif not info.get("hog"):        # one preemptor per job (the VM stays RUNNING through the GraceTime)
                info["hog"] = True
                self.vc.cluster.client(["sbatch", "--partition=urgent", "--exclusive", f"--nodelist={node}",
                                        "--output=/dev/null", f"--wrap=sleep {HOG_SECONDS}"], user="svmtest")
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

    def follow_runs(self, job: int, info: dict) -> None:
        """Slurm's restart count of the job: a requeued run of a job whose ending is an action is acted on again
        (a VM that shared a preempted node was checkpointed and restored too)."""
        restarts = self.vc.cluster.client(["scontrol", "show", "job", "-o", str(job)]).stdout
        run = int(restarts.split("Restarts=", 1)[1].split()[0]) if "Restarts=" in restarts else 0
        if run != info["run"]:
            info["run"] = run
            info["acted"] = info["ending"] not in ("preempted", "stop", "scancel", "launcher-killed") and \
                info["acted"]
            self.restored += 1

    def ready(self, job: int, node: str, info: dict) -> bool:
        """Booted (the serial log's marker), or restored after a preemption (a later run of the job)."""
        run = info["run"]
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
                if state == "PREEMPTED":
                    info.setdefault("preempted_since", time.monotonic())
                    if time.monotonic() - info["preempted_since"] < PREEMPTED_SETTLE:
                        continue
                else:
                    info.pop("preempted_since", None)
                if state in ENDED or (state == "" and time.monotonic() - info["since"] > 30):
                    self.ended(job, state or "gone")
                else:
                    self.poke(job, info)
            time.sleep(0.5)
        for job in list(self.active):           # the deadline: cancel what is left (requeued jobs included)
            state = self.vc.job_field(job, "%T")
            self.vc.cluster.client(["scancel", str(job)])
            self.ended(job, f"cancelled at the deadline ({state or 'gone'})")

    def ended(self, job: int, state: str) -> None:
        ending = self.active.pop(job)["ending"]
        self.outcomes[(ending, state)] += 1
        self.final[job] = (ending, state)

    def account_checkpoints(self, user_dir: str) -> tuple[list[str], list[str]]:
        """(kept on purpose, unexpected): one line per job that still has checkpoints; the kept ones are then
        dropped with `slurm-vm checkpoint --drop` as the user (a failed drop is unexpected too)."""
        kept, unexpected = [], []
        names = sorted(os.listdir(user_dir)) if os.path.isdir(user_dir) else []
        for name in names:
            if not (name.startswith("job-") and name[4:].isdigit()):
                continue
            job = int(name[4:])
            ending, state = self.final.get(job, ("?", "not seen ending"))
            line = f"job {job} (ending {ending}, {state}): {sorted(os.listdir(os.path.join(user_dir, name)))}"
            if state in KEEPS_NO_CHECKPOINT:
                unexpected.append(line + ": the job ended normally, its checkpoint should be gone")
                continue
            kept.append(line + "; " + self.output_reason(job))
            dropped = self.vc.slurm_vm("checkpoint", "--drop", str(job))
            if dropped.returncode != 0 or os.path.exists(os.path.join(user_dir, name)):
                unexpected.append(f"job {job}: --drop failed: {dropped.stderr.strip()}")
        return kept, unexpected

    def output_reason(self, job: int) -> str:
        """The job output's last launcher line: why the job ended where it did."""
        lines = [line for line in self.vc.output(job).splitlines() if line.startswith("slurm-vm launch:")]
        return lines[-1] if lines else "(no launcher output)"


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
    setup_node_bridges(cluster, config)
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
        kept, unexpected = soak.account_checkpoints(os.path.join(directory, "checkpoints", "svmtest"))
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
    restored = sum(1 for ending, state in soak.final.values() if ending == "preempted" and state == "COMPLETED")
    print(f"preempted jobs restored and then stopped (COMPLETED): {restored}")
    print(f"checkpoints kept on purpose (jobs that ended without a restore), then dropped: {len(kept)}")
    for line in kept:
        print(f"  {line}")
    print(f"unexpected checkpoints: {len(unexpected)}")
    for line in unexpected:
        print(f"  {line}")
    checkpoints = os.path.join(directory, "checkpoints")
    left = [os.path.join(d, n) for d, _, names in os.walk(checkpoints) for n in names]
    print(f"checkpoint files left after the drops: {len(left)} {left[:5]}")
    unfinished = args.jobs - sum(soak.outcomes.values()) + \
        sum(n for (_, state), n in soak.outcomes.items() if state.startswith("cancelled at the deadline"))
    return 0 if not leaks and not drained and not unfinished and not unexpected and not left and \
        soak.resumes <= injected else 1


if __name__ == "__main__":
    sys.exit(main())
