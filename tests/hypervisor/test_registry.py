"""One registry of hypervisors (hypervisor/registry.py): a new hypervisor is its modules plus one registry line.

Counted here: outside the registry, a hypervisor's name is spelled only in the modules its entry names.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import fields

import pytest

from slurm_vm.config import HypervisorConfig
from slurm_vm.hypervisor import registry
from slurm_vm.hypervisor.definition import VMDefinition

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "slurm_vm")


def own_modules(kind: registry.Hypervisor) -> set[str]:
    refs = (kind.runtime, kind.snapshotter, kind.restoring_runtime)
    return {os.path.join(PACKAGE, *ref.split(":")[0].split(".")[1:]) + ".py" for ref in refs}


def python_files() -> list[str]:
    return [os.path.join(folder, name) for folder, _, names in os.walk(PACKAGE) for name in names
            if name.endswith(".py")]


@pytest.mark.parametrize("name", registry.HYPERVISORS)
def test_a_hypervisor_is_named_only_in_the_registry_and_its_own_modules(name):
    kind = registry.HYPERVISORS[name]
    allowed = own_modules(kind) | {os.path.join(PACKAGE, "hypervisor", "registry.py")}
    quoted = re.compile(r"""["']""" + re.escape(name) + r"""["']""")
    naming = set()
    for path in python_files():
        with open(path) as fh:
            if quoted.search(fh.read()):
                naming.add(path)
    assert naming - allowed == set(), "name the hypervisor through hypervisor/registry.py"


@pytest.mark.parametrize("name", registry.HYPERVISORS)
def test_every_entry_loads_and_agrees_with_its_parts(name):
    kind = registry.HYPERVISORS[name]
    runtime, snap = registry.runtime_class(name), registry.snapshotter_class(name)
    assert runtime.hypervisor == name and snap.vmm == name
    assert issubclass(registry.restoring_runtime_class(name), runtime)
    assert snap.keeps_running == kind.keeps_running_after_save
    assert set(kind.share_transports) <= set(registry.SHARE_TRANSPORTS)
    assert kind.binary_field in {f.name for f in fields(HypervisorConfig)}
    assert kind.binary_field in {f.name for f in fields(VMDefinition)}
    importlib.import_module(kind.runtime.split(":")[0])


def test_auto_order_ends_with_a_hypervisor_that_needs_nothing():
    assert not registry.HYPERVISORS[registry.AUTO_ORDER[-1]].needs_kvm
    assert registry.resolve("auto", False, lambda kind: True) == registry.AUTO_ORDER[-1]
    assert registry.resolve("auto", True, lambda kind: True) == registry.AUTO_ORDER[0]
