"""The one nftables runner of slurm-vm: the port filters' job tables, the unicast VTEP filters and the VXLAN
underlay's tables all go through `run` (one binary lookup, one timeout, one error form).

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
NOT_INSTALLED = ("nft is not installed on this node; install the nftables package (slurm-vm's port filters, "
                 "unicast VXLAN segments and the VXLAN underlay rules need it) or mark the network `trusted: true`")


def nft_binary() -> str | None:
    return shutil.which("nft", path=os.environ.get("PATH", "") + ":" + SEARCH_PATH)


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    """`nft ARGS` with `stdin`; its exit status is the caller's to judge. NodeError without nft or past TIMEOUT."""
    binary = nft_binary()
    if binary is None:
        raise NodeError(NOT_INSTALLED)
    try:
        return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired:
        raise NodeError(f"nft {' '.join(args)} took more than {TIMEOUT}s") from None


def first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def checked(args: list[str], stdin: str | None = None, what: str = "") -> str:
    """`nft ARGS`, its stdout; a failure is a NodeError naming `what` (or the command) and nft's first line."""
    proc = run(args, stdin)
    if proc.returncode != 0:
        raise NodeError(f"{what or 'nft ' + ' '.join(args)} failed: {first_line(proc.stderr)}")
    return proc.stdout


def apply_ruleset(doc: dict, what: str = "the port filter rules") -> None:
    """A JSON ruleset (`{"nftables": [...]}`) in one transaction."""
    checked(["-j", "-f", "-"], json.dumps(doc), f"applying {what}")


def apply_script(script: str, what: str) -> None:
    """An nft script (the `-f` language) in one transaction."""
    checked(["-f", "-"], script, f"applying {what}")


def list_tables(family: str) -> list[str]:
    """The names of the tables of `family` in this namespace (none where nft is not installed)."""
    if nft_binary() is None:
        return []
    try:
        items = json.loads(checked(["-j", "list", "tables", family]) or "{}").get("nftables", [])
    except ValueError:
        raise NodeError("nft -j list tables printed no JSON") from None
    return [str(item["table"].get("name", "")) for item in items
            if isinstance(item, dict) and isinstance(item.get("table"), dict)
            and item["table"].get("family") == family]


def list_table_rules(family: str, table: str) -> list[dict] | None:
    """The rules of one table as nft prints them back in JSON; None where the table (or nft) is missing."""
    if nft_binary() is None:
        return None
    proc = run(["-j", "list", "table", family, table])
    if proc.returncode != 0:
        return None
    try:
        items = json.loads(proc.stdout or "{}").get("nftables", [])
    except ValueError:
        return None
    return [i["rule"] for i in items if isinstance(i, dict) and "rule" in i]


# --- the port filters' job tables (networks.portfilter) ------------------------------------------------------

def delete_job_table(job_id: int) -> None:
    """Delete the job's table; a missing one is fine. Without nft there cannot be one."""
    if nft_binary() is None:
        return
    checked(["-j", "-f", "-"], json.dumps(delete_table(job_id)), f"deleting nftables table of job {job_id}")


def list_job_tables() -> list[tuple[str, int]]:
    """(table name, job id) of every netdev table named by portfilter.table_name in this namespace."""
    out = []
    for name in list_tables(FAMILY):
        job = parse_table_name(name)
        if job is not None:
            out.append((name, job))
    return out
