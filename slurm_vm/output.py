"""Formatting for the lifecycle commands: rich tables on a terminal, plain text when piped, JSON on request."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Callable, Iterator

import click

from .lifecycle import VMRecord

COLUMNS = ("NAME", "JOBID", "STATE", "NODES", "CPUS", "MEMORY", "UPTIME", "ADDRESS")


def _row(r: VMRecord) -> tuple[str, ...]:
    return (r.name, str(r.job_id), r.state, ",".join(r.nodes) or r.reason, str(r.cpus), r.memory, r.uptime,
            ",".join(r.addresses) or "-")


def print_records(records: list[VMRecord], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([r.as_json() for r in records], indent=2))
        return
    rows = [_row(r) for r in records]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(*COLUMNS, box=None)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    for row in (COLUMNS, *rows):
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_status(record: VMRecord, serial: str, as_json: bool) -> None:
    if as_json:
        data = record.as_json()
        data["serial_tail"] = serial.splitlines()
        click.echo(json.dumps(data, indent=2))
        return
    for label, value in (("VM", record.name), ("Job", record.job_id), ("State", record.state),
                         ("Nodes", ",".join(record.nodes) or "-"), ("Reason", record.reason or "-"),
                         ("CPUs", record.cpus), ("Memory", record.memory), ("Uptime", record.uptime),
                         ("Time limit", record.time_limit), ("Addresses", ",".join(record.addresses) or "-")):
        click.echo(f"{label + ':':12} {value}")
    if serial:
        click.echo("Serial console (last lines):")
        for line in serial.splitlines():
            click.echo(f"  {line}")


@contextlib.contextmanager
def progress_reporter(key: Callable[[object], object] = lambda p: p,
                      text: Callable[[object], str] = str) -> Iterator[Callable[[object], None]]:
    """A live line (rich) on a terminal; when stderr is piped, one plain line each time `key(progress)`
    changes (so logs show every stage once)."""
    if not sys.stderr.isatty():
        last: list = []

        def plain(progress: object) -> None:
            if not last or key(progress) != last[0]:
                last[:] = [key(progress)]
                click.echo(text(progress), err=True)
        yield plain
        return
    from rich.console import Console
    with Console(stderr=True).status("waiting for the VM") as status:
        yield lambda progress: status.update(text(progress))
