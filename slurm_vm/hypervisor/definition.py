"""VMDefinition: the contract between the root prolog (which writes vm.json) and the launcher (which reads it)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields

from .checkpoint_settings import CheckpointSettings, settings_from_dict
from ..errors import HypervisorError
from . import registry

ACCELERATORS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class Boot:
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    firmware: str | None = None


def boot_argv(boot: Boot, flags: tuple[str, str, str, str]) -> list[str]:
    """Boot options in a VMM's own flag names: (kernel, initrd, cmdline, firmware)."""
    kernel_flag, initrd_flag, cmdline_flag, firmware_flag = flags
    if not boot.kernel:
        return [firmware_flag, boot.firmware or ""]
    argv = [kernel_flag, boot.kernel]
    if boot.initrd:
        argv += [initrd_flag, boot.initrd]
    if boot.cmdline:
        argv += [cmdline_flag, boot.cmdline]
    return argv


@dataclass(frozen=True)
class Disk:
    path: str
    format: str          # qcow2 | raw (the plan says auto for volumes until the prolog has probed them)
    readonly: bool
    role: str            # root | seed | volume
    backing: bool = False


@dataclass(frozen=True)
class Nic:
    mac: str
    tap: str | None = None       # a tap to open through /dev/net/tun
    device: str | None = None    # a macvtap character device to open


@dataclass(frozen=True)
class Share:
    tag: str             # the guest's mount tag (slurm_vm.mounts.mount_tag)
    path: str            # host directory, resolved by the prolog as the job user
    readonly: bool


@dataclass(frozen=True)
class VMDefinition:
    job_id: int
    name: str
    cpus: int
    memory_bytes: int
    hypervisor: str
    accelerator: str
    boot: Boot
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    run_dir: str
    grace_seconds: int
    qemu_binary: str
    cloud_hypervisor_binary: str
    shares: tuple[Share, ...] = ()
    share_transport: str = "9p"                       # the one the hypervisor serves (registry.share_transport)
    virtiofsd_binary: str = "/usr/lib/qemu/virtiofsd"
    memory_overhead_bytes: int = 0   # what the VMM needs beyond guest RAM (the site's hypervisor.memory_overhead)
    checkpoint: CheckpointSettings | None = None     # slurm_vm.checkpoint: on_preempt/on_timeout, where to save

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "VMDefinition":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise HypervisorError(f"vm.json is not JSON: {exc}") from None
        return from_dict(data)

    def path(self, name: str) -> str:
        return f"{self.run_dir}/{name}"


def _strict(cls, data: object, where: str) -> dict:
    if not isinstance(data, dict):
        raise HypervisorError(f"vm.json: {where} must be an object")
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise HypervisorError(f"vm.json: unknown key {where}.{sorted(unknown)[0]}")
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    missing = required - set(data)
    if missing:
        raise HypervisorError(f"vm.json: missing key {where}.{sorted(missing)[0]}")
    return data


def _typed(value: object, kind: type | tuple, where: str):
    if isinstance(value, bool) and kind is int or not isinstance(value, kind):
        raise HypervisorError(f"vm.json: {where} has the wrong type")
    return value


def from_dict(data: object) -> VMDefinition:
    d = _strict(VMDefinition, data, "vm")
    boot = Boot(**_strict(Boot, d["boot"], "boot"))
    if bool(boot.kernel) == bool(boot.firmware):
        raise HypervisorError("vm.json: boot needs exactly one of kernel or firmware")
    disks = tuple(Disk(**_strict(Disk, x, f"disks[{i}]")) for i, x in enumerate(_typed(d["disks"], list, "disks")))
    nics = tuple(Nic(**_strict(Nic, x, f"nics[{i}]")) for i, x in enumerate(_typed(d["nics"], list, "nics")))
    shares = tuple(Share(**_strict(Share, x, f"shares[{i}]"))
                   for i, x in enumerate(_typed(d.get("shares", []), list, "shares")))
    for i, share in enumerate(shares):
        _typed(share.tag, str, f"shares[{i}].tag")
        _typed(share.path, str, f"shares[{i}].path")
        if not share.path.startswith("/") or "," in share.path or not 0 < len(share.tag) <= 31 \
                or "," in share.tag:
            raise HypervisorError(f"vm.json: shares[{i}] has a bad tag or path")
    if d.get("share_transport", "9p") not in registry.SHARE_TRANSPORTS:
        raise HypervisorError("vm.json: share_transport must be 9p or virtiofs")
    kind = registry.HYPERVISORS.get(d["hypervisor"])
    if kind is not None and d.get("share_transport", "9p") not in kind.share_transports:
        raise HypervisorError(f"vm.json: {kind.name} serves shares over {' or '.join(kind.share_transports)} only")
    for i, disk in enumerate(disks):
        if disk.format not in ("qcow2", "raw"):
            raise HypervisorError(f"vm.json: disks[{i}].format must be qcow2 or raw")
    for i, nic in enumerate(nics):
        if (nic.tap is None) == (nic.device is None):
            raise HypervisorError(f"vm.json: nics[{i}] needs exactly one of tap or device")
    if d["hypervisor"] not in registry.NAMES or d["accelerator"] not in ACCELERATORS:
        raise HypervisorError("vm.json: unknown hypervisor or accelerator")
    for key in ("job_id", "cpus", "memory_bytes", "grace_seconds"):
        _typed(d[key], int, key)
    if _typed(d.get("memory_overhead_bytes", 0), int, "memory_overhead_bytes") < 0:
        raise HypervisorError("vm.json: memory_overhead_bytes out of range")
    if d["cpus"] < 1 or d["memory_bytes"] < (16 << 20) or d["grace_seconds"] < 0:
        raise HypervisorError("vm.json: cpus, memory_bytes or grace_seconds out of range")
    checkpoint = settings_from_dict(d.get("checkpoint"))
    return VMDefinition(**{**d, "boot": boot, "disks": disks, "nics": nics, "shares": shares,
                           "checkpoint": checkpoint})
