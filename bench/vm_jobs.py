#!/usr/bin/env python3
"""VM jobs through real Slurm on the namespace cluster (root): node overhead and scaling.

Measures, in one run, on a 3-node 22.05 cluster whose hooks are slurm-vm's, each wrapped by a timer:
  - prolog and epilog wall time of tiny-guest VM jobs, against the same hooks for plain (non-VM)
    jobs, which take slurm-vm's no-op path, and against `true` as the hook;
  - the launcher's start-up (vm.json -> vCPUs pinned and the guest resumed), from the job output;
  - submit -> RUNNING and submit -> guest ready;
  - the same with as many concurrent VM jobs as the cluster holds (2 cores x 3 nodes);
  - the raw boot, side by side with the one-at-a-time jobs: the very QEMU argv the launcher ran
    (read from /proc while the first job runs), started by hand on a fresh overlay and a copy of the
    seed, without -S and with a tap of our own, timed from exec to the guest's ready line;
  - `slurm-vm list` with 1000 queued VM jobs.
Usage: bench/vm_jobs.py [--jobs N] [--queued 1000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slurm_vm import transport  # noqa: E402
from devtools.testcluster import Cluster  # noqa: E402
from devtools.vmcluster import KILL_WAIT, setup_node_bridges, venv_dir, write_test_config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = "name: {name}\nimage: tiny\ncpus: 1\nmemory: 256M\nnetworks: [{{network: lan}}]\n"
USER = "svmtest"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def row(name: str, values: list[float], unit: str = "ms") -> str:
    if not values:
        return f"| {name} | 0 | - | - |"
    return f"| {name} | {len(values)} | {statistics.median(values):.1f} {unit} | {pct(values, 0.95):.1f} {unit} |"


class Bench:
    def __init__(self, cluster: Cluster, directory: str, config: str):
        self.cluster, self.dir, self.config = cluster, directory, config
        self.slurm_vm = os.path.join(venv_dir(), "bin", "slurm-vm")

    def run(self, argv: list[str], timeout: float = 120):
        proc = self.cluster.client(argv, user=USER, env={"SLURM_VM_CONFIG": self.config}, timeout=timeout)
        if proc.returncode != 0:
            raise SystemExit(f"{argv[0]} failed: {proc.stderr}")
        return proc.stdout

    def submit_vm(self, name: str) -> tuple[int, float]:
        path = os.path.join(self.dir, f"{name}.yaml")
        with open(path, "w") as fh:
            fh.write(SPEC.format(name=name))
        os.chmod(path, 0o644)
        started = time.monotonic()
        job = int(self.run([self.slurm_vm, "submit", "--parsable", path, f"--output={self.dir}/%j.out"]).strip())
        return job, started

    def state(self, job: int) -> str:
        return self.cluster.client(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"]).stdout.strip()

    def node(self, job: int) -> str:
        return self.cluster.client(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%N"]).stdout.strip()

    def wait(self, predicate, timeout: float = 180) -> float:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise SystemExit("timed out")
            time.sleep(0.05)
        return time.monotonic()

    def serial(self, job: int, node: str) -> str:
        try:
            return open(os.path.join(self.dir, "state", node, "jobs", str(job), "serial.log"), errors="replace").read()
        except FileNotFoundError:
            return ""

    def vm_cycle(self, jobs: list[tuple[int, float]], results: dict[str, list[float]], label: str,
                 capture: bool = False):
        nodes, captured = {}, None
        for job, started in jobs:
            self.wait(lambda: self.state(job) == "RUNNING")
            results.setdefault(f"{label}: submit -> RUNNING", []).append(time.monotonic() - started)
        for job, started in jobs:
            nodes[job] = self.node(job)
            self.wait(lambda: "SLURM-VM-TEST ready" in self.serial(job, nodes[job]))
            results.setdefault(f"{label}: submit -> guest ready", []).append(time.monotonic() - started)
            if capture and captured is None:
                captured = self.capture_vmm(job, nodes[job])
        for job, _ in jobs:
            self.run([self.slurm_vm, "stop", str(job)])
        for job, _ in jobs:
            self.wait(lambda: self.state(job) in ("COMPLETED", "FAILED", "CANCELLED"))
            out = open(os.path.join(self.dir, f"{job}.out")).read()
            match = re.search(r"VM running \(([0-9.]+)s after", out)
            if match:
                results.setdefault(f"{label}: launcher start-up", []).append(float(match.group(1)))
        return captured

    def capture_vmm(self, job: int, node: str) -> tuple[list[str], str] | None:
        """The running job's QEMU argv (from /proc) and its job dir, with a copy of its seed."""
        jdir = os.path.join(self.dir, "state", node, "jobs", str(job))
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = open(f"/proc/{pid}/cmdline", "rb").read().decode().split("\0")[:-1]
            except OSError:
                continue
            if argv and os.path.basename(argv[0]).startswith("qemu-system") and any(jdir in a for a in argv):
                raw = os.path.join(self.dir, "raw")
                os.makedirs(raw, exist_ok=True)
                shutil.copy(os.path.join(jdir, "seed.iso"), os.path.join(raw, "seed.iso"))
                return argv, jdir
        return None

    def raw_boot(self, captured: tuple[list[str], str], base: str, one_core: bool = False) -> float:
        """Seconds from exec to the ready line for the captured argv, by hand (no Slurm, no slurm-vm);
        one_core: QEMU confined to one core, as the job's cpuset confines it (--cpus-per-task=1)."""
        argv, jdir = captured
        raw = os.path.join(self.dir, "raw")
        for name in ("overlay.qcow2", "serial.log", "qmp.sock"):
            try:
                os.unlink(os.path.join(raw, name))
            except FileNotFoundError:
                pass
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2",
                        os.path.join(raw, "overlay.qcow2")], check=True, timeout=60)
        subprocess.run(["ip", "tuntap", "add", "svmrawbench", "mode", "tap", "vnet_hdr"], check=False, timeout=20)
        argv = [a.replace(jdir, raw) for a in argv if a != "-S"]
        argv = [re.sub(r"^tap,id=(n\d+),fd=\d+$", r"tap,id=\1,ifname=svmrawbench,script=no,downscript=no", a)
                for a in argv]
        serial = os.path.join(raw, "serial.log")
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=(lambda: os.sched_setaffinity(0, {0})) if one_core else None)
        try:
            self.wait(lambda: os.path.exists(serial) and "SLURM-VM-TEST ready" in open(serial, errors="replace").read(),
                      timeout=300)
            return time.monotonic() - started
        finally:
            proc.kill()
            proc.wait(timeout=30)
            subprocess.run(["ip", "tuntap", "del", "svmrawbench", "mode", "tap"], check=False, timeout=20)

    def hook_times(self, which: str, jobs: set[int]) -> list[float]:
        out = []
        path = self.cluster.path("hook-records", f"{which}.times")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            lines = open(path).read().split("\n") if os.path.exists(path) else []
            out = [int(l.split()[2]) / 1e6 for l in lines if l and int(l.split()[0]) in jobs]
            if len(out) >= len(jobs):
                break
            time.sleep(0.2)
        return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--queued", type=int, default=1000)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="svm-bench-", dir="/var/tmp")
    os.chmod(directory, 0o1777)
    os.makedirs(os.path.join(directory, "state"))
    config = write_test_config(directory, os.path.join(directory, "state"), underlay="eth0")
    cluster = Cluster(os.environ.get("SLURM_VM_TEST_PREFIX", "") + "benchvm", hooks="slurm-vm", venv=venv_dir(), slurm_vm_config=config,
                      bind=[REPO, directory], kill_wait=KILL_WAIT, hook_timing=True)
    cluster.down()
    cluster.up()
    setup_node_bridges(cluster, config)
    bench = Bench(cluster, directory, config)
    results: dict[str, list[float]] = {}
    try:
        vm_jobs, captured = [], None
        base = os.path.join(directory, "tiny-base.qcow2")
        for i in range(args.jobs):
            job = bench.submit_vm(f"seq{i}")
            captured = bench.vm_cycle([job], results, "1 VM at a time", capture=True) or captured
            vm_jobs.append(job[0])
            if captured is not None:   # side by side: raw boots after each job
                results.setdefault("raw boot by hand (same QEMU argv): exec -> guest ready", []).append(
                    bench.raw_boot(captured, base))
                results.setdefault("raw boot by hand, QEMU on one core (as in the job): exec -> guest ready",
                                   []).append(bench.raw_boot(captured, base, one_core=True))
        plain = []
        for i in range(args.jobs):
            job = int(bench.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "true"]).strip())
            bench.wait(lambda: bench.state(job) == "COMPLETED")
            plain.append(job)
        concurrent = [bench.submit_vm(f"par{i}") for i in range(6)]
        bench.vm_cycle(concurrent, results, "6 VMs at once (3 nodes x 2 cores)")
        hooks = {
            "prolog, VM job": bench.hook_times("prolog", set(vm_jobs)),
            "epilog, VM job": bench.hook_times("epilog", set(vm_jobs)),
            "prolog, plain job (slurm-vm's no-op path)": bench.hook_times("prolog", set(plain)),
            "epilog, plain job (slurm-vm's no-op path)": bench.hook_times("epilog", set(plain)),
            "prolog, 6 concurrent VM jobs": bench.hook_times("prolog", {j for j, _ in concurrent}),
            "epilog, 6 concurrent VM jobs": bench.hook_times("epilog", {j for j, _ in concurrent}),
        }
        comment = transport.encode_comment(SPEC.format(name="queued"), transport.new_salt())
        for i in range(args.queued):
            bench.run(["sbatch", "--hold", "-J", "vm-queued", f"--comment={comment}", "-o", "/dev/null",
                       "--wrap", "true"])
        list_times = []
        for _ in range(5):
            start = time.perf_counter()
            out = bench.run([bench.slurm_vm, "list", "--json"])
            list_times.append((time.perf_counter() - start) * 1000)
        assert out.count('"job_id"') == args.queued
    finally:
        cluster.down()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"Machine: {os.cpu_count()} CPUs ({cpu}); QEMU TCG (no usable KVM); Slurm 22.05 namespace cluster\n")
    print("| what | n | median | p95 |\n|---|---|---|---|")
    for name, values in hooks.items():
        print(row(name, values))
    for name, values in results.items():
        print(row(name, values, "s"))
    print(row(f"`slurm-vm list --json` with {args.queued} queued VM jobs", list_times))
    ready = results.get("1 VM at a time: submit -> guest ready", [])
    for label in ("raw boot by hand (same QEMU argv): exec -> guest ready",
                  "raw boot by hand, QEMU on one core (as in the job): exec -> guest ready"):
        raw = results.get(label, [])
        if ready and raw:
            print(f"\nsubmit -> guest ready through slurm-vm minus the {label.split(':')[0]} (medians): "
                  f"{statistics.median(ready) - statistics.median(raw):.2f} s (target <= 1.0 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
