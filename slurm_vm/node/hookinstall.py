"""`slurm-vm node install-hook`: a copy of the node hook's shell entry outside the venv, with the venv and the
config it uses written into it, for slurm.conf's Prolog=/Epilog= or a prolog.d/epilog.d directory.

A copy outside the venv keeps working when the venv is removed or broken: for a job that is not a VM job it
logs that and exits 0, so such jobs run and the node stays in service (bin/slurm-vm-prolog).
"""

from __future__ import annotations

import os
import shlex
import sys
import sysconfig
import tempfile

from ..errors import SlurmVmError

ENTRY_NAME = "slurm-vm-prolog"
MARKERS = {"config": "# slurm-vm node install-hook: config", "venv": "# slurm-vm node install-hook: venv"}


def installed_entry() -> str:
    """The entry pip installed next to this Python's `slurm-vm` command."""
    path = os.path.join(sysconfig.get_path("scripts"), ENTRY_NAME)
    if not os.path.isfile(path):
        raise SlurmVmError(f"{path} is missing: reinstall slurm-vm (pip install slurm-vm-*.whl)")
    return path


def current_venv() -> str:
    return sys.prefix if sys.prefix != sys.base_prefix else ""


def _check_path(what: str, value: str) -> None:
    if value and (not value.startswith("/") or any(c.isspace() or c in "'\"\\$`" for c in value)):
        raise SlurmVmError(f"--{what} {value!r}: give an absolute path without spaces or quotes")


def baked_entry(text: str, config: str, venv: str) -> str:
    """The entry's text with its default config and venv lines set (plain data in, plain data out)."""
    _check_path("config", config)
    _check_path("venv", venv)
    values = {"config": config, "venv": venv}
    lines = text.splitlines(keepends=True)
    for key, marker in MARKERS.items():
        hits = [i for i, line in enumerate(lines) if line.startswith(f"default_{key}=") and marker in line]
        if len(hits) != 1:
            raise SlurmVmError(f"the hook entry has no line default_{key}= ... {marker}: reinstall slurm-vm")
        assignment = f"default_{key}={shlex.quote(values[key]) if values[key] else ''}"
        lines[hits[0]] = f"{assignment:<42} {marker}\n"
    return "".join(lines)


def install_hook(dest: str, config: str, venv: str, entry: str | None = None) -> str:
    """Write the baked entry to `dest` (mode 0755, replaced atomically); returns what was written where."""
    if os.path.isdir(dest):
        raise SlurmVmError(f"{dest} is a directory: give the hook's file name (e.g. {dest.rstrip('/')}/50-slurm-vm)")
    with open(entry or installed_entry()) as fh:
        text = baked_entry(fh.read(), config, venv)
    directory = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(directory):
        raise SlurmVmError(f"{directory} does not exist: create it first")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".slurm-vm-hook.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        os.unlink(tmp)
        raise
    return f"{dest}: slurm-vm's node hook (venv {venv or 'none: /usr/bin/python3'}, config {config})"
