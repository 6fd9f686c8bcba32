"""`slurm-vm doctor` for users: is everything in place for `validate` and `submit` to work from here?

Checks the config, the Slurm commands and slurmctld, and shows the images and networks this user may use
and their VMs. Runs as the user; changes nothing."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field

from .catalog import ImageInfo, NetworkInfo, list_images, list_networks
from .config import Config, config_path, load_config
from .errors import SlurmVmError, ValidationError
from .lifecycle import VMRecord, list_vms


@dataclass(frozen=True)
class Check:
    what: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.what}: {self.detail}"


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    images: list[ImageInfo] = field(default_factory=list)
    networks: list[NetworkInfo] = field(default_factory=list)
    vms: list[VMRecord] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_json(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "images": [i.as_json() for i in self.images], "networks": [n.as_json() for n in self.networks],
                "vms": [v.as_json() for v in self.vms]}


def _config_check(path: str | None) -> tuple[Check, Config | None]:
    where = path or config_path()
    try:
        return Check("config", True, where), load_config(path)
    except ValidationError as exc:
        return Check("config", False, "; ".join(str(p) for p in exc.problems[:3])), None


def _command_check(name: str, bin_dir: str | None) -> Check:
    found = shutil.which(os.path.join(bin_dir, name) if bin_dir else name)
    if found:
        return Check(name, True, found)
    return Check(name, False, "not found: install the Slurm client commands, or ask the admins to set "
                              "slurm.bin_dir in the slurm-vm config")


def run_user_doctor(path: str | None, user: str) -> Report:
    from .slurm import get_backend
    report = Report()
    check, config = _config_check(path)
    report.checks.append(check)
    if config is None:
        return report
    report.checks += [_command_check(name, config.slurm.bin_dir) for name in ("sbatch", "squeue", "srun")]
    try:
        backend = get_backend(config.slurm.backend, config.slurm.command_timeout, config.slurm.bin_dir)
        report.vms = list_vms(backend, user)
        report.checks.append(Check("slurmctld", True, f"answers; you have {len(report.vms)} running or pending "
                                                      "VM(s)"))
    except SlurmVmError as exc:
        report.checks.append(Check("slurmctld", False, str(exc)))
    report.images = list_images(config)
    report.checks.append(Check("images", bool(report.images),
                               ", ".join(i.name for i in report.images) or "none configured: ask the admins"))
    report.networks = list_networks(config, user)
    report.checks.append(Check("networks", True, ", ".join(n.name for n in report.networks)
                               or "none you may use (a VM without networks still runs)"))
    return report
