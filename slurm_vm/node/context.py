"""What Slurm tells a node hook about the job, read strictly from the hook's environment.

Slurm builds the prolog/epilog environment itself (see docs/architecture.md); values are trusted
to come from slurmd, but are still checked for shape before a root process uses them.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass

import hostlist

from ..errors import NodeError
from ..limits import MAX_JOB_ID



@dataclass(frozen=True)
class JobContext:
    job_id: int
    uid: int
    gid: int
    user: str
    node: str
    nodes: tuple[str, ...]
    cluster: str
    comment: str
    restart_count: int = 0

    @property
    def vm_index(self) -> int:
        """This node's VM in a multi-VM job: the node's position in the job's node list."""
        return self.nodes.index(self.node) if self.node in self.nodes else 0


def _int_var(env: dict[str, str], name: str, low: int, high: int) -> int:
    value = env.get(name, "")
    if not value.isdigit() or not low <= int(value) <= high:
        raise NodeError(f"{name}={value!r} from Slurm is not a number in {low}..{high}")
    return int(value)


def job_context_from_env(env: dict[str, str]) -> JobContext:
    job_id = _int_var(env, "SLURM_JOB_ID", 1, MAX_JOB_ID)
    uid = _int_var(env, "SLURM_JOB_UID", 0, 2**32 - 2)
    if uid == 0:
        raise NodeError(f"job {job_id} runs as root; slurm-vm runs VMs for unprivileged users only")
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        raise NodeError(f"job {job_id}: uid {uid} is unknown on this node (check the user database)") from None
    gid_text = env.get("SLURM_JOB_GID", "")
    gid = int(gid_text) if gid_text.isdigit() else entry.pw_gid
    node = env.get("SLURMD_NODENAME", "")
    if not node:
        raise NodeError(f"job {job_id}: SLURMD_NODENAME is not set; run this as Slurm's Prolog/Epilog")
    node_list = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or node
    try:
        nodes = tuple(hostlist.expand_hostlist(node_list))
    except hostlist.BadHostlist:
        raise NodeError(f"job {job_id}: cannot read the node list {node_list!r}") from None
    restart = env.get("SLURM_JOB_RESTART_COUNT", "0")
    return JobContext(job_id=job_id, uid=uid, gid=gid, user=entry.pw_name, node=node, nodes=nodes,
                      cluster=env.get("SLURM_CLUSTER_NAME", "cluster") or "cluster",
                      comment=env.get("SLURM_JOB_COMMENT", ""),
                      restart_count=int(restart) if restart.isdigit() else 0)


def job_id_from_env(env: dict[str, str] | None = None) -> int:
    return _int_var(dict(os.environ) if env is None else env, "SLURM_JOB_ID", 1, MAX_JOB_ID)
