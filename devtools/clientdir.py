"""The working directory of `scripts/testcluster client`: the caller's directory when the user may write there
(so `sbatch --wrap` writes its default slurm-N.out there), else the user's home."""

from __future__ import annotations

import os
import pwd
import subprocess


def user_can_write(user: str | None, directory: str) -> bool:
    """Asked as the user (runuser + test -w), so ACLs and groups count as the kernel counts them."""
    argv = ["test", "-d", directory, "-a", "-w", directory, "-a", "-x", directory]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def home_of(user: str | None) -> str:
    try:
        return pwd.getpwnam(user).pw_dir if user else os.path.expanduser("~root")
    except KeyError:
        return "/tmp"


def client_workdir(user: str | None, caller_dir: str) -> str:
    if user_can_write(user, caller_dir):
        return caller_dir
    home = home_of(user)
    return home if os.path.isdir(home) else "/tmp"
