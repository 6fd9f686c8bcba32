"""`slurm-vm node install-hook`'s text: the two default lines set, nothing else changed (no root)."""

from __future__ import annotations

import os

import pytest

from slurm_vm.errors import SlurmVmError
from slurm_vm.node.hookinstall import baked_entry, install_hook

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENTRY = os.path.join(REPO, "bin", "slurm-vm-prolog")


def entry_text() -> str:
    with open(ENTRY) as fh:
        return fh.read()


def test_baked_entry_sets_config_and_venv_only():
    text = entry_text()
    baked = baked_entry(text, "/site/slurm-vm.yaml", "/opt/slurm-vm/venv")
    changed = [(a, b) for a, b in zip(text.splitlines(), baked.splitlines()) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["default_config=/site/slurm-vm.yaml",
                                                              "default_venv=/opt/slurm-vm/venv"]
    assert len(text.splitlines()) == len(baked.splitlines())


@pytest.mark.parametrize("config,venv", [("site.yaml", ""), ("/a b.yaml", ""), ("/x", "/v$(reboot)"),
                                         ("/x", "relative/venv")])
def test_baked_entry_refuses_unsafe_paths(config, venv):
    with pytest.raises(SlurmVmError, match="absolute path without spaces"):
        baked_entry(entry_text(), config, venv)


def test_install_hook_writes_an_executable_and_refuses_a_directory(tmp_path):
    dest = tmp_path / "50-slurm-vm"
    install_hook(str(dest), "/etc/slurm-vm/config.yaml", "", entry=ENTRY)
    assert os.stat(dest).st_mode & 0o777 == 0o755
    assert "default_venv=  " in dest.read_text()
    with pytest.raises(SlurmVmError, match="is a directory"):
        install_hook(str(tmp_path), "/etc/slurm-vm/config.yaml", "", entry=ENTRY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["50-slurm-vm"]
