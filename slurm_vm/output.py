"""Formatting for the lifecycle commands: rich tables on a terminal, plain text when piped, JSON on request."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import TYPE_CHECKING, Callable, Iterator

import click

from .lifecycle import VMRecord

if TYPE_CHECKING:
    from .catalog import ImageInfo, NetworkInfo
    from .history import Listing, VMHistory
    from .userdoctor import Report

COLUMNS = ("NAME", "JOBID", "STATE", "NODES", "CPUS", "MEMORY", "UPTIME", "ADDRESS", "CHECKPOINTS")


def _row(r: VMRecord) -> tuple[str, ...]:
    from .checkpoint.listing import summary
    return (r.name, str(r.job_id), r.state, ",".join(r.nodes) or r.reason, str(r.cpus), r.memory, r.uptime,
            ",".join(r.addresses) or "-", summary(r.checkpoints, r.checkpoint_bytes, r.state))


def column_widths(rows: list[tuple[str, ...]], columns: tuple[str, ...] = COLUMNS) -> list[int]:
    return [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(columns)]


def print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A rich table on a terminal, aligned plain text when piped."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        table = Table(*columns, box=None)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    widths = column_widths(rows, columns)
    for row in (columns, *rows):
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def empty_listing(whose: str | None, ended: bool) -> str:
    """The line `slurm-vm list` prints when there is nothing to list."""
    who = f" of user {whose}" if whose else ""
    if ended:
        return f"no VM jobs{who} known to Slurm (ended jobs are forgotten after a while)"
    return f"no running or pending VMs{who}; `slurm-vm list --ended` adds the ones that ended recently"


def print_records(records: list[VMRecord], as_json: bool, whose: str | None = None, ended: bool = False,
                  note: str = "") -> None:
    """`note`: a line after the listing (checkpoints of jobs not listed); not in the JSON form."""
    if as_json:
        click.echo(json.dumps([r.as_json() for r in records], indent=2))
        return
    if not records:
        click.echo(empty_listing(whose, ended))
    else:
        print_table(COLUMNS, [_row(r) for r in records])
    if note:
        click.echo(note)


def _size(n: int | None) -> str:
    from .units import format_size
    return format_size(n) if n is not None else "-"


def print_images(images: list[ImageInfo], as_json: bool, user_images: list | None = None) -> None:
    """The admins' images and (`user_images`: (name, UserImage or why refused) pairs) the user's, side by side."""
    user_images = user_images or []
    if as_json:
        print_json([{**i.as_json(), "owner": "admin"} for i in images] +
                   [{**(r.as_json() if not isinstance(r, str) else {"refused": r}), "name": f"user:{n}",
                     "owner": "you"} for n, r in user_images])
        return
    if not images and not user_images:
        click.echo("no images in the image store: ask the admins")
        return
    rows = [(i.name, "admin", i.login_user or "-", i.boot, i.format, _size(i.size_bytes), i.description)
            for i in images]
    rows += [(f"user:{n}", "you", "-", f"like {r.boot}", "qcow2", _size(r.virtual_size), r.source)
             if not isinstance(r, str) else (f"user:{n}", "you", "-", "-", "-", "-", f"REFUSED: {r}")
             for n, r in user_images]
    print_table(("NAME", "OWNER", "LOGIN", "BOOT", "FORMAT", "SIZE", "DESCRIPTION"), rows)


def print_user_images(entries: list, usage: tuple[int, int], as_json: bool) -> None:
    """`slurm-vm image list`: (name, UserImage or why refused) pairs."""
    if as_json:
        print_json([{**(r.as_json() if not isinstance(r, str) else {"refused": r}), "name": f"user:{n}"}
                    for n, r in entries])
        return
    if not entries:
        click.echo("no images of yours: `slurm-vm image import FILE NAME` or `slurm-vm image save VM NAME`")
    else:
        print_table(("NAME", "BOOTS LIKE", "SIZE", "ON DISK", "SOURCE"),
                    [(f"user:{n}", r.boot, _size(r.virtual_size), _size(r.allocated), r.source)
                     if not isinstance(r, str) else (f"user:{n}", "-", "-", "-", f"REFUSED: {r}")
                     for n, r in entries])
    if usage[1]:
        click.echo(f"{_size(usage[0])} of your quota of {_size(usage[1])} used")


def print_user_image(image, as_json: bool) -> None:
    if as_json:
        print_json({**image.as_json(), "name": f"user:{image.name}"})
        return
    for key, value in (("name", f"user:{image.name}"), ("path", image.path), ("boots like", image.boot),
                       ("virtual size", _size(image.virtual_size)), ("on disk", _size(image.allocated)),
                       ("source", image.source)):
        click.echo(f"{key + ':':14}{value}")


def print_networks(networks: list[NetworkInfo], as_json: bool) -> None:
    if as_json:
        print_json([n.as_json() for n in networks])
        return
    if not networks:
        click.echo("no networks you may use (a VM without `networks` still runs)")
        return
    print_table(("NAME", "KIND", "SUBNET", "PRIVATE"),
                [(n.name, n.kind, n.subnet or "-", "yes" if n.private else "no") for n in networks])


def print_doctor(report: Report, as_json: bool) -> None:
    if as_json:
        print_json(report.as_json())
        return
    for check in report.checks:
        click.echo(str(check))
    if report.vms:
        click.echo("Your VMs:")
        print_table(COLUMNS, [_row(r) for r in report.vms])


def print_status(record: VMRecord, serial: str, as_json: bool, checkpoints: list[dict] | None = None,
                 reported: list[tuple[str, ...] | str] | None = None) -> None:
    """`reported`: per VM, the addresses its guest agent reports (or why none), shown apart from slurm-vm's own."""
    if as_json:
        data = record.as_json()
        data["serial_tail"] = serial.splitlines()
        data["checkpoints"] = checkpoints or []
        data["guest_reported_addresses"] = [list(r) if isinstance(r, tuple) else None for r in reported or []]
        click.echo(json.dumps(data, indent=2))
        return
    for label, value in (("VM", record.name), ("Job", record.job_id), ("State", record.state),
                         ("Nodes", ",".join(record.nodes) or "-"), ("Reason", record.reason or "-"),
                         ("CPUs", record.cpus), ("Memory", record.memory), ("Uptime", record.uptime),
                         ("Time limit", record.time_limit), ("Addresses", ",".join(record.addresses) or "-")):
        click.echo(f"{label + ':':12} {value}")
    for i, answer in enumerate(reported or []):
        label = "Guest says" if len(reported or []) == 1 else f"Guest {i} says"
        value = (",".join(answer) or "no address") + "  (reported by the guest)" if isinstance(answer, tuple) \
            else f"- ({answer})"
        click.echo(f"{label + ':':12} {value}")
    if checkpoints:
        from .checkpoint.listing import describe
        click.echo("Checkpoints:")
        for entry in checkpoints:
            click.echo(f"  {describe(entry)}")
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


HISTORY_COLUMNS = ("NAME", "JOBID", "STATE", "START", "ELAPSED", "NODES", "RESTARTS", "EXIT", "CHECKPOINTS")


def _history_row(r: VMHistory) -> tuple[str, ...]:
    """A row of `list --all`."""
    from .checkpoint.listing import summary
    restarts = f"{r.restarts} ({','.join(r.earlier_runs)})" if r.restarts else "0"
    exit_text = " ".join(t for t in (r.exit_code, r.outcome) if t) or "-"
    return (r.name, str(r.job_id), r.state, r.start or "-", r.elapsed, ",".join(r.nodes) or "-", restarts,
            exit_text, summary(r.checkpoints, r.checkpoint_bytes, r.state))


def print_history(listing: Listing, as_json: bool, whose: str | None) -> None:
    """`list --all`. Without accounting storage its note goes to stderr, then what
    slurmctld still knows (as `list --ended`)."""
    if listing.note:
        click.echo(f"slurm-vm: {listing.note}", err=True)
        print_records(listing.live, as_json, whose, ended=True)
        return
    if as_json:   # one record per line: json's C encoder (indent= would take the pure Python one, 3x slower)
        click.echo("[\n" + ",\n".join(json.dumps(r.as_json()) for r in listing.history) + "\n]")
    elif not listing.history:
        click.echo(f"no VM jobs{f' of user {whose}' if whose else ''} in Slurm's accounting for that time "
                   "(`--since` looks further back)")
    else:
        print_table(HISTORY_COLUMNS, [_history_row(r) for r in listing.history])


def print_history_status(record: VMHistory, checkpoints: list[dict], as_json: bool) -> None:
    """`status` of a VM that slurmctld no longer knows, from the accounting storage."""
    if as_json:
        print_json({**record.as_json(), "checkpoints": checkpoints, "source": "accounting"})
        return
    runs = f" after {record.restarts} earlier run(s): {', '.join(record.earlier_runs)}" if record.restarts else ""
    for label, value in (("VM", record.name), ("Job", record.job_id), ("State", record.state + runs),
                         ("Nodes", ",".join(record.nodes) or "-"), ("Started", record.start or "-"),
                         ("Ended", record.end or "-"), ("Elapsed", record.elapsed),
                         ("Exit code", (record.exit_code or "-") + (f" ({record.outcome})" if record.outcome else "")),
                         ("CPUs", record.cpus), ("Memory", record.memory or "-"),
                         ("Time limit", record.time_limit or "-")):
        click.echo(f"{label + ':':12} {value}")
    if checkpoints:
        from .checkpoint.listing import describe
        click.echo("Checkpoints:")
        for entry in checkpoints:
            click.echo(f"  {describe(entry)}")
    click.echo("(from Slurm's accounting: the job's output file has the guest's last console lines)")
