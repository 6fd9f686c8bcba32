"""The package builds without setuptools' deprecation warnings and declares its licence as SPDX."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_license_is_an_spdx_string():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)["project"]
    assert project["license"] == "GPL-2.0-or-later"
    assert not any(c.startswith("License ::") for c in project.get("classifiers", []))


def test_wheel_builds_without_deprecation_warnings(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), REPO],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "deprecat" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
    wheel = next(p for p in tmp_path.iterdir() if p.suffix == ".whl")
    with zipfile.ZipFile(wheel) as zf:
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: GPL-2.0-or-later" in metadata.splitlines()
