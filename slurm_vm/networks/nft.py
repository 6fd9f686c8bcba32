"""Executor for networks.portfilter: apply and delete a job's nftables table with `nft -j`.

`nft -j -f -` applies a whole JSON ruleset as one kernel transaction: a job's rules appear all at once
or not at all. Runs in the caller's network namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from ..errors import NodeError
from .portfilter import FAMILY, delete_table, parse_table_name

TIMEOUT = 20
SEARCH_PATH = "/usr/sbin:/sbin:/usr/bin:/bin"


def nft_binary() -> str | None:
    return shutil.which("nft", path=os.environ.get("PATH", "") + ":" + SEARCH_PATH)


def _run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    binary = nft_binary()
    if binary is None:
        raise NodeError("nft is not installed on this node; install the nftables package (slurm-vm's port "
                        "filters need it) or mark the network `trusted: true`")
    try:
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise NodeError(f"nft {' '.join(args)} took more than {TIMEOUT}s") from None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def apply_ruleset(doc: dict) -> None:
    proc = _run(["-j", "-f", "-"], json.dumps(doc))
    if proc.returncode != 0:
        raise NodeError(f"cannot apply the port filter rules: {_last_line(proc.stderr)}")


def delete_job_table(job_id: int) -> None:
    """Delete the job's table; a missing one is fine. Without nft there cannot be one."""
    if nft_binary() is None:
        return
    proc = _run(["-j", "-f", "-"], json.dumps(delete_table(job_id)))
    if proc.returncode != 0:
        raise NodeError(f"cannot delete nftables table of job {job_id}: {_last_line(proc.stderr)}")


def list_job_tables() -> list[tuple[str, int]]:
    """(table name, job id) of every netdev table named by portfilter.table_name in this namespace."""
    if nft_binary() is None:
        return []
    proc = _run(["-j", "list", "tables", FAMILY])
    if proc.returncode != 0:
        raise NodeError(f"cannot list nftables tables: {_last_line(proc.stderr)}")
    try:
        items = json.loads(proc.stdout or "{}").get("nftables", [])
    except ValueError:
        raise NodeError("nft -j list tables printed no JSON") from None
    out = []
    for item in items:
        table = item.get("table") if isinstance(item, dict) else None
        if isinstance(table, dict) and table.get("family") == FAMILY:
            job = parse_table_name(str(table.get("name", "")))
            if job is not None:
                out.append((table["name"], job))
    return out
