"""`slurm-vm images`, `networks`, the user `doctor` and validate's suggestions, through the real CLI with a
real config file (and real qemu-img for image sizes). Slurm is not reachable here: doctor says so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from slurm_vm.catalog import list_networks
from slurm_vm.config import parse_config

CONFIG = """
images:
  tiny: {{path: {base}, kernel: /img/vmlinux, description: busybox test guest, login_user: root}}
  uefi: {{path: /nonexistent/uefi.qcow2, firmware: /img/CLOUDHV.fd, description: disk boot}}
networks:
  lan: {{kind: bridge, bridge: br0}}
  staff: {{kind: bridge, bridge: br1, allowed_users: [nobody-else]}}
  priv: {{kind: vxlan, parent: eth0, vni_range: [100, 199], subnet: 10.1.0.0/24}}
slurm: {{bin_dir: {bin_dir}, command_timeout: 5}}
"""


@pytest.fixture
def env(tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "64M"], check=True, timeout=30)
    (tmp_path / "bin").mkdir()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG.format(base=base, bin_dir=tmp_path / "bin"))
    return {**os.environ, "SLURM_VM_CONFIG": str(cfg)}


def slurm_vm(env: dict, *args: str) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)


def test_images_lists_name_login_boot_size_and_description(env):
    proc = slurm_vm(env, "images", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"name": "tiny", "description": "busybox test guest", "boot": "kernel", "format": "qcow2",
         "login_user": "root", "size_bytes": 64 << 20, "owner": "admin"},
        {"name": "uefi", "description": "disk boot", "boot": "firmware", "format": "qcow2", "login_user": None,
         "size_bytes": None, "owner": "admin"}]
    table = slurm_vm(env, "images").stdout.splitlines()
    assert table[0].split() == ["NAME", "OWNER", "LOGIN", "BOOT", "FORMAT", "SIZE", "DESCRIPTION"]
    assert table[1].split() == ["tiny", "admin", "root", "kernel", "qcow2", "64M", "busybox", "test", "guest"]
    assert table[2].split()[:3] == ["uefi", "admin", "-"]


def test_networks_lists_only_what_this_user_may_use(env):
    proc = slurm_vm(env, "networks", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"name": "lan", "kind": "bridge", "subnet": None, "private": False},
        {"name": "priv", "kind": "vxlan", "subnet": "10.1.0.0/24", "private": True}]
    assert slurm_vm(env, "networks").stdout.splitlines()[2].split() == ["priv", "vxlan", "10.1.0.0/24", "yes"]


def test_a_restricted_network_shows_for_its_user():
    config = parse_config(CONFIG.format(base="/img/b.qcow2", bin_dir="/usr/bin"), "c.yaml")
    assert [n.name for n in list_networks(config, "nobody-else")] == ["lan", "priv", "staff"]


def test_validate_suggests_images_and_networks_on_a_miss(env, tmp_path):
    spec = tmp_path / "vm.yaml"
    spec.write_text("name: web\nimage: debian\nnetworks: [{network: wan}]\n")
    proc = slurm_vm(env, "validate", str(spec))
    assert proc.returncode == 2
    assert "no image 'debian' in the image store; available: tiny, uefi (`slurm-vm images` describes them)" \
        in proc.stderr
    assert "no network 'wan'; available: lan, priv, staff (`slurm-vm networks` lists the ones you may use)" \
        in proc.stderr
    spec.write_text("name: web\nimage: tiny\nnetworks: [{network: staff}]\n")
    proc = slurm_vm(env, "validate", str(spec))
    assert proc.returncode == 2 and "(`slurm-vm networks` lists yours)" in proc.stderr, proc.stderr


def test_doctor_reports_each_check_and_fails_without_slurm(env):
    proc = slurm_vm(env, "doctor", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    checks = {c["what"]: c for c in report["checks"]}
    assert checks["config"]["ok"] and checks["images"]["ok"] and checks["networks"]["ok"]
    assert not checks["sbatch"]["ok"] and "slurm.bin_dir" in checks["sbatch"]["detail"]
    assert not checks["slurmctld"]["ok"] and "squeue not found" in checks["slurmctld"]["detail"]
    assert [i["name"] for i in report["images"]] == ["tiny", "uefi"]
    assert [n["name"] for n in report["networks"]] == ["lan", "priv"]
    text = slurm_vm(env, "doctor")
    assert text.returncode == 1 and "Traceback" not in text.stderr
    assert text.stdout.splitlines()[0] == f"ok    config: {env['SLURM_VM_CONFIG']}"
    assert any(line.startswith("FAIL  sbatch: not found") for line in text.stdout.splitlines())


def test_doctor_without_a_config_says_so_in_one_line(tmp_path):
    proc = slurm_vm({**os.environ, "SLURM_VM_CONFIG": str(tmp_path / "none.yaml")}, "doctor")
    assert proc.returncode == 1 and proc.stderr == ""
    assert proc.stdout.startswith("FAIL  config: ") and "cannot read the slurm-vm config" in proc.stdout


def test_validate_json_gives_each_spec_its_problems(env, tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("name: web\nimage: tiny\n")
    bad.write_text("name: web\nimage: nope\n")
    proc = slurm_vm(env, "validate", "--json", str(good), str(bad))
    assert proc.returncode == 2 and proc.stderr == ""
    results = json.loads(proc.stdout)
    assert [(r["spec"], r["ok"]) for r in results] == [(str(good), True), (str(bad), False)]
    assert "no image 'nope'" in results[1]["problems"][0]
    assert slurm_vm(env, "validate", "--json", str(good)).returncode == 0
