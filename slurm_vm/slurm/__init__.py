"""Access to Slurm: one small interface, two implementations (command line, pyslurm)."""

from __future__ import annotations

from .base import JobInfo, SlurmBackend


def get_backend(kind: str = "cli", timeout: int = 30, bin_dir: str | None = None) -> SlurmBackend:
    """`cli` (default), `pyslurm`, or `auto` (pyslurm where it imports, else the CLI)."""
    if kind in ("pyslurm", "auto"):
        try:
            from .pyslurm_backend import PyslurmBackend
            return PyslurmBackend()
        except ImportError:
            if kind == "pyslurm":
                from ..errors import SlurmError
                raise SlurmError("pyslurm is not installed or does not match this Slurm; "
                                 "set slurm.backend: cli in the slurm-vm config") from None
    from .cli import CliBackend
    return CliBackend(timeout=timeout, bin_dir=bin_dir)


__all__ = ["JobInfo", "SlurmBackend", "get_backend"]
