"""The docs that are generated from the code must match it, and the examples must stay valid."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

from slurm_vm.config import parse_config
from slurm_vm.reference import render_reference
from slurm_vm.spec import parse_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("which", ["spec", "config"])
def test_generated_references_are_current(which):
    with open(os.path.join(REPO, "docs", f"{which}-reference.md")) as fh:
        committed = fh.read()
    assert committed == render_reference(which), \
        f"docs/{which}-reference.md is stale: run `slurm-vm reference {which} > docs/{which}-reference.md`"


def test_examples_validate_against_the_example_config():
    with open(os.path.join(REPO, "etc", "config.example.yaml")) as fh:
        config = parse_config(fh.read(), "etc/config.example.yaml")
    examples = sorted(glob.glob(os.path.join(REPO, "etc", "examples", "*.yaml")))
    assert examples
    for path in examples:
        with open(path) as fh:
            parse_spec(fh.read(), path, config)


def test_validate_cli_accepts_the_examples():
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    proc = subprocess.run([exe, "validate", *sorted(glob.glob(os.path.join(REPO, "etc", "examples", "*.yaml")))],
                          env={**os.environ, "SLURM_VM_CONFIG": os.path.join(REPO, "etc", "config.example.yaml")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": ok") == len(glob.glob(os.path.join(REPO, "etc", "examples", "*.yaml")))


def test_user_guide_shows_every_user_command_and_every_exit_code():
    from slurm_vm import errors
    from slurm_vm.cli import main
    with open(os.path.join(REPO, "docs", "user-guide.md")) as fh:
        guide = fh.read()
    examples = guide[guide.index("## Commands"):guide.index("More forms:")]
    commands = [name for name, cmd in main.commands.items() if not cmd.hidden and name not in ("launch", "node")]
    missing = [name for name in commands if f"\nslurm-vm {name} " not in examples]
    assert missing == [], f"docs/user-guide.md: no example for {missing}"
    table = guide[guide.index("### Exit codes"):]
    codes = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert all(f"\n| {code} |" in table for code in codes), codes
    with open(os.path.join(REPO, "docs", "admin-guide.md")) as fh:
        assert "slurm-vm node doctor" in fh.read()
