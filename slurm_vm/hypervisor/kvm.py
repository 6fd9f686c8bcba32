"""Can this host boot guests with KVM? Decided without trying: a KVM that hangs must never be used."""

from __future__ import annotations

import os
import shutil
from typing import Callable

from . import registry
from .definition import VMDefinition


def kvm_usability(dev: str = "/dev/kvm", sys_module: str = "/sys/module",
                  access: Callable[[str], bool] | None = None) -> tuple[bool, str]:
    """(usable, why): the modules decide first (a PVM or module-less host is unusable whatever the device's
    permissions), then the device, then the user's access to it (`access(dev)`; this process's by default)."""
    has = {name: os.path.isdir(os.path.join(sys_module, name)) for name in ("kvm_pvm", "kvm_intel", "kvm_amd")}
    if not (has["kvm_intel"] or has["kvm_amd"]):
        if has["kvm_pvm"]:
            return False, "this is a nested PVM host (only the kvm_pvm module is loaded): it cannot boot ordinary guests"
        return False, "neither kvm_intel nor kvm_amd is loaded (no hardware virtualisation, or the module is missing)"
    if not os.path.exists(dev):
        return False, f"{dev} does not exist although a KVM module is loaded"
    if not (access(dev) if access else os.access(dev, os.R_OK | os.W_OK)):
        return False, f"{dev} is not readable and writable by this user (uid {os.getuid()}); the admins give " \
                      "access with the kvm group or a udev rule"
    return True, "KVM is usable"


def choose_backend(defn: VMDefinition) -> tuple[str, str, list[str]]:
    """(hypervisor, accelerator, warnings) for this host."""
    warnings = []
    usable, reason = kvm_usability()
    # vm.json names a concrete hypervisor (the prolog resolved `auto`); a hand-written one may still say auto
    hypervisor = registry.resolve(defn.hypervisor, usable,
                                  lambda kind: shutil.which(getattr(defn, kind.binary_field)) is not None)
    accelerator = defn.accelerator
    if accelerator == "auto":
        accelerator = "kvm" if usable else "tcg"
        if not usable:
            warnings.append(f"KVM not used ({reason}): the guest runs under QEMU's software emulation (slow)")
    elif accelerator == "kvm" and not usable:
        warnings.append(f"KVM was asked for but {reason}")
    return hypervisor, accelerator, warnings
