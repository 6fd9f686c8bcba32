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


def example_config():
    with open(os.path.join(REPO, "etc", "config.example.yaml")) as fh:
        return parse_config(fh.read(), "etc/config.example.yaml")


def test_example_config_is_a_safe_multi_tenant_default():
    config = example_config()
    for name, net in config.networks.items():
        assert net.subnet, f"network {name}: no subnet (addresses neither managed nor exclusive)"
        if net.vni_range is None:
            assert net.address_range, f"shared network {name}: give an address_range"
        if net.kind == "vxlan":
            assert net.vxlan_mode == "unicast" and net.mtu, f"network {name}: unicast VXLAN with an MTU"
        assert not net.trusted
    assert config.hypervisor.default == "qemu"
    for name, image in config.images.items():
        assert image.kernel or image.firmware, name
        assert not image.firmware or "CLOUDHV" not in image.firmware, f"image {name}: QEMU firmware, not CLOUDHV"
    assert "%u" in config.checkpoint.dir


def test_readme_spec_validates_and_an_image_without_boot_method_is_refused(tmp_path):
    with open(os.path.join(REPO, "README.md")) as fh:
        readme = fh.read()
    spec = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "web.yaml").write_text(spec)
    with open(os.path.join(REPO, "etc", "config.example.yaml")) as fh:
        config_text = fh.read()
    (tmp_path / "config.yaml").write_text(config_text)
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    proc = subprocess.run([exe, "validate", str(tmp_path / "web.yaml")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_VM_CONFIG": str(tmp_path / "config.yaml")})
    assert proc.returncode == 0 and proc.stdout.strip().endswith("web.yaml: ok"), proc.stderr
    bare = config_text.replace("    firmware: /usr/share/ovmf/OVMF.fd", "    # no boot method")
    assert bare != config_text
    (tmp_path / "config.yaml").write_text(bare)
    proc = subprocess.run([exe, "validate", str(tmp_path / "web.yaml")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SLURM_VM_CONFIG": str(tmp_path / "config.yaml")})
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "image: image 'debian12' has neither `kernel` nor `firmware`" in proc.stderr
