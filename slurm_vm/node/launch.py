"""`slurm-vm launch`: the job step. Finds what the prolog prepared and hands it to the hypervisor launcher."""

from __future__ import annotations

import dataclasses
import os
import sys

from ..config import load_config
from ..errors import SlurmVmError
from .context import job_id_from_env
from ..limits import DEFINITION_FILE, SERIAL_LOG
from .layout import error_note_path, job_dir

EXIT_REFUSED = 7
SERIAL_TAIL_LINES = 20


def _say(message: str) -> None:
    print(f"slurm-vm launch: {message}", file=sys.stderr, flush=True)


def launch_job(definition_path: str | None, config_path: str | None, grace_seconds: int | None = None) -> int:
    from ..hypervisor.definition import VMDefinition
    from ..launcher.launcher import run
    try:
        if definition_path is None:
            config = load_config(config_path)
            job_id = job_id_from_env()
            state_dir = config.node_state_dir(os.environ.get("SLURMD_NODENAME", ""))
            note = _read_error_note(error_note_path(state_dir, job_id))
            if note is not None:
                _say(f"the node refused this VM: {note}")
                return EXIT_REFUSED
            definition_path = os.path.join(job_dir(state_dir, job_id), DEFINITION_FILE)
        try:
            with open(definition_path, encoding="utf-8") as fh:
                text = fh.read(1 << 20)
        except FileNotFoundError:
            _say(f"{definition_path} does not exist: the node prolog did not prepare this job "
                 "(is Prolog= set to slurm-vm-prolog in slurm.conf?)")
            return EXIT_REFUSED
        definition = VMDefinition.from_json(text)
        if grace_seconds is not None:   # the job's own grace, the one its --signal lead was computed from
            definition = dataclasses.replace(definition, grace_seconds=grace_seconds)
        try:
            return run(definition)
        finally:
            print_serial_tail(os.path.join(definition.run_dir, SERIAL_LOG))
    except SlurmVmError as exc:
        _say(str(exc))
        return EXIT_REFUSED


def _read_error_note(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(4096).strip()
    except FileNotFoundError:
        return None
    except PermissionError:
        return "(the refusal note is not readable)"


def print_serial_tail(path: str, lines: int = SERIAL_TAIL_LINES) -> None:
    """The guest's last console lines go to the job's output: the serial log dies with the job dir."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            tail = fh.read().decode("utf-8", "replace").splitlines()[-lines:]
    except OSError:
        return
    if tail:
        print(f"slurm-vm launch: last {len(tail)} lines of the guest's serial console:", file=sys.stderr)
        for line in tail:
            print(f"  | {line.rstrip()}", file=sys.stderr)
        sys.stderr.flush()
