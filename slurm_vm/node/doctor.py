"""`slurm-vm node doctor`: find (and with --fix remove) slurm-vm objects of jobs no longer on this node.

Suitable for HealthCheckProgram or an admin's shell. Asks Slurm which jobs run here (bounded by the
Slurm command timeout) and refuses to guess when Slurm cannot answer.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ..config import Config
from ..slurm import SlurmBackend
from ..slurm.states import LIVE_STATES
from .objects import KINDS, journal_leftovers
from .system import HostSystem, System
from .teardown import teardown_job

UNDERLAY = "underlay"     # a Finding about the node's VXLAN underlay (networks/underlay.py), not a job's leftover
IMAGE_CACHE = "image_cache"   # a Finding about the node's copies of base images (disks/imagecache.py)


@dataclass(frozen=True)
class Finding:
    kind: str
    name: str
    job_id: int
    fixed: bool = False
    error: str = ""

    def __str__(self) -> str:
        if self.kind in (UNDERLAY, IMAGE_CACHE):
            return self.name + (" (fixed)" if self.fixed else (f" (not fixed: {self.error})" if self.error else ""))
        state = " (removed)" if self.fixed else (f" (not removed: {self.error})" if self.error else "")
        return f"leftover {self.kind} {self.name} of job {self.job_id}{state}"

    def as_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "job_id": self.job_id, "fixed": self.fixed,
                "error": self.error}


def find_leftovers(state_dir: str, live_job_ids: set[int], system: System | None = None) -> list[Finding]:
    system = system or HostSystem()
    found = journal_leftovers(system, state_dir)
    for kind in KINDS.values():
        found += kind.leftovers(system, state_dir)
    return sorted((Finding(f.kind, f.name, f.job_id) for f in found if f.job_id not in live_job_ids),
                  key=lambda f: (f.job_id, f.kind, f.name))


def live_jobs_on_node(backend: SlurmBackend, node: str) -> set[int]:
    return {job.job_id for job in backend.jobs(node=node) if job.state in LIVE_STATES}


def underlay_findings(config: Config, fix: bool, system: System) -> list[Finding]:
    """The VXLAN underlay is root's: guard devices up on every VXLAN port, the node's rules in place."""
    from ..errors import SlurmVmError
    from ..networks.underlay import plan_underlay
    plan = plan_underlay(config)
    found = system.underlay_problems(plan) if plan is not None else []
    if not found or not fix:
        return [Finding(UNDERLAY, text, 0) for text in found]
    try:
        system.ensure_underlay(plan)
    except SlurmVmError as exc:
        return [Finding(UNDERLAY, text, 0, error=str(exc)) for text in found]
    return [Finding(UNDERLAY, text, 0, fixed=True) for text in found]


def image_cache_findings(config: Config, node: str, fix: bool) -> list[Finding]:
    """Every cached copy verified in full, and the cache's size; --fix removes damaged copies and evicts."""
    from ..disks.imagecache import check_cache, evict, remove_damaged
    cache_dir = config.image_cache.node_dir(node)
    if cache_dir is None:
        return []
    found = check_cache(cache_dir, config.image_cache.max_size)
    if not found or not fix:
        return [Finding(IMAGE_CACHE, text, 0) for text in found]
    remove_damaged(cache_dir)
    evict(cache_dir, config.image_cache.max_size, keep="")
    return [Finding(IMAGE_CACHE, text, 0, fixed=True) for text in found]


def run_doctor(config: Config, backend: SlurmBackend, fix: bool, node: str | None = None,
               system: System | None = None) -> list[Finding]:
    node = node or socket.gethostname()
    state_dir = config.node_state_dir(node)
    underlay = underlay_findings(config, fix, system or HostSystem()) + image_cache_findings(config, node, fix)
    findings = find_leftovers(state_dir, live_jobs_on_node(backend, node), system)
    if not fix:
        return underlay + findings
    errors: dict[int, str] = {}
    for job_id in sorted({f.job_id for f in findings}):
        report = teardown_job(state_dir, job_id, None, system)
        if report.errors:
            errors[job_id] = "; ".join(report.errors)
    return underlay + [Finding(f.kind, f.name, f.job_id, fixed=f.job_id not in errors,
                               error=errors.get(f.job_id, "")) for f in findings]
