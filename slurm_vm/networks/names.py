"""Deterministic names and MAC addresses of a job's host objects (pure functions).

Names carry the job id so that a sweep can find what a crashed prolog left: `svm<jobid>n<i>`.
"""

from __future__ import annotations

import re

from ..errors import NodeError
from ..limits import MAX_JOB_ID, MAX_NICS, MAX_VMS_PER_JOB

_OWNED = re.compile(r"svm([0-9]{1,10})n([0-7])")


def nic_name(job_id: int, nic_index: int) -> str:
    if not 1 <= job_id <= MAX_JOB_ID:
        raise NodeError(f"job id {job_id} is out of range 1..{MAX_JOB_ID}")
    if not 0 <= nic_index < MAX_NICS:
        raise NodeError(f"NIC index {nic_index} is out of range 0..{MAX_NICS - 1}")
    return f"svm{job_id}n{nic_index}"


def vxlan_bridge_name(vni: int) -> str:
    return f"svmbr{_check_vni(vni)}"


def vxlan_device_name(vni: int) -> str:
    return f"svmvx{_check_vni(vni)}"


def _check_vni(vni: int) -> int:
    if not 1 <= vni <= 16777215:
        raise NodeError(f"VNI {vni} is out of range 1..16777215")
    return vni


def parse_owned_name(ifname: str) -> tuple[int, int] | None:
    """(job id, NIC index) for names made by nic_name, else None."""
    match = _OWNED.fullmatch(ifname)
    if not match:
        return None
    job_id = int(match.group(1))
    return (job_id, int(match.group(2))) if 1 <= job_id <= MAX_JOB_ID else None


def derive_mac(job_id: int, vm_index: int, nic_index: int) -> str:
    """A locally administered unicast MAC, unique for every (job < 2^32, vm < 2048, nic < 8).

    The 46 free bits hold job(32) | vm(11) | nic(3); the first octet keeps its two low bits at 0b10.
    """
    if not 1 <= job_id <= MAX_JOB_ID or not 0 <= vm_index < MAX_VMS_PER_JOB or not 0 <= nic_index < MAX_NICS:
        raise NodeError(f"cannot derive a MAC for job {job_id}, VM {vm_index}, NIC {nic_index}")
    value = (job_id << 14) | (vm_index << 3) | nic_index
    first = (((value >> 40) & 0x3F) << 2) | 0x02
    rest = [(value >> shift) & 0xFF for shift in (32, 24, 16, 8, 0)]
    return ":".join(f"{b:02x}" for b in [first, *rest])


def multicast_group(vni: int) -> str:
    """The IPv4 multicast group a segment's VTEPs join: 239.x.y.z from the VNI's 24 bits."""
    _check_vni(vni)
    return f"239.{(vni >> 16) & 0xFF}.{(vni >> 8) & 0xFF}.{vni & 0xFF}"
