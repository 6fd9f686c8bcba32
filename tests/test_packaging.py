"""The package builds without setuptools' deprecation warnings and declares its licence as SPDX."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_license_is_an_spdx_string():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["license"] == "GPL-2.0-or-later"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), REPO],
                          capture_output=True, text=True, timeout=300, check=False)
    return proc, next((p for p in out.iterdir() if p.suffix == ".whl"), None)


def test_wheel_builds_without_deprecation_warnings(built_wheel):
    proc, wheel = built_wheel
    assert proc.returncode == 0, proc.stderr
    assert "deprecat" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: GPL-2.0-or-later" in metadata.splitlines()


def test_wheel_is_the_release_artifact(built_wheel):
    """Runtime dependencies only, the hook's shell entry and every slurm_vm package, no tests or devtools."""
    _, wheel = built_wheel
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    requires = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    assert requires and all("extra ==" in r for r in requires if r.split()[0].rstrip(";") in
                            ("pytest>=7.4", "hypothesis>=6.90", "jsonschema>=4.20", "pexpect>=4.8", "pyslurm"))
    assert not any(r.startswith(("pytest", "hypothesis")) and "extra ==" not in r for r in requires)
    scripts = {n.rsplit("/", 1)[1] for n in names if ".data/scripts/" in n}
    assert scripts == {"slurm-vm-prolog", "slurm-vm-epilog"}
    assert "slurm-vm = slurm_vm.cli:main" in entry_points
    packages = {os.path.dirname(n) for n in names if n.endswith("/__init__.py")}
    on_disk = {os.path.relpath(d, REPO) for d, _, files in os.walk(os.path.join(REPO, "slurm_vm"))
               if "__init__.py" in files}
    assert packages == on_disk
    assert not [n for n in names if n.startswith(("tests/", "devtools/", "bench/"))]
