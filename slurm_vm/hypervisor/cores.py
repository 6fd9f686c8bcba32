"""The host cores this job step may use, the vCPU -> core map (vCPU i on core i, NUMA node by node), and the
cores of the VMM's other threads and the share daemons (the step's spare cores, else all of them)."""

from __future__ import annotations

import glob
import os

from ..errors import NotEnoughCores


def parse_cpu_list(text: str) -> set[int]:
    """'0-2,5' -> {0, 1, 2, 5} (the kernel's cpulist format)."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            cpus.update(range(int(low), int(high) + 1))
        else:
            cpus.add(int(part))
    return cpus


def cgroup_cpuset(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> set[int] | None:
    """CPUs of this process's cpuset cgroup (v1 or v2), or None where it cannot be read."""
    try:
        with open(proc_cgroup) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            candidates = [os.path.join(root, "cpuset", path.lstrip("/"))]
        elif controllers == "":
            candidates = [os.path.join(root, path.lstrip("/"))]
        else:
            continue
        for directory in candidates:
            for name in ("cpuset.effective_cpus", "cpuset.cpus"):
                try:
                    with open(os.path.join(directory, name)) as fh:
                        text = fh.read()
                except OSError:
                    continue
                if text.strip():
                    return parse_cpu_list(text)
    return None


def numa_nodes(sys_root: str = "/sys/devices/system/node") -> dict[int, int]:
    """cpu -> NUMA node (empty where the host shows no NUMA topology)."""
    out = {}
    for path in glob.glob(os.path.join(sys_root, "node[0-9]*", "cpulist")):
        node = int(os.path.basename(os.path.dirname(path))[4:])
        with open(path) as fh:
            for cpu in parse_cpu_list(fh.read()):
                out[cpu] = node
    return out


def allowed_cores() -> list[int]:
    """Linux CPU numbers this process may run on, NUMA node by node: Slurm's allocation as the kernel sees it."""
    cpus = set(os.sched_getaffinity(0))
    cgroup = cgroup_cpuset()
    if cgroup:
        cpus &= cgroup
    nodes = numa_nodes()
    return sorted(cpus, key=lambda c: (nodes.get(c, 0), c))


def vcpu_map(vcpus: int, cores: list[int]) -> list[int]:
    """vCPU i -> cores[i]. Refuses more vCPUs than cores: each vCPU gets a core of its own."""
    if vcpus > len(cores):
        raise NotEnoughCores(f"the VM has {vcpus} vCPUs but the job may use only {len(cores)} core(s) "
                              f"({','.join(map(str, cores))}); submit with --cpus-per-task={vcpus}")
    return cores[:vcpus]


def io_cores(cores: list[int], vcpu_cores: list[int]) -> list[int]:
    """Where the VMM's non-vCPU threads (QEMU's main loop and I/O threads, cloud-hypervisor's VMM and
    device threads) and virtiofsd run: the step's cores that no vCPU has, so that they never take a vCPU's
    time; when every core has a vCPU (the usual `--cpus-per-task` = vCPUs), all the step's cores, shared."""
    spare = [c for c in cores if c not in vcpu_cores]
    return spare or list(cores)
