"""Slurm through its command line: sbatch --parsable, squeue -h -o, scontrol, scancel.

These forms are stable from Slurm 22.05 to 25.11 (the JSON output is not: its schema changes per
version). Fields are separated by the ASCII unit separator, which no Slurm field can contain.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import hostlist

from ..errors import SlurmError
from .base import JobInfo

SEP = "\x1f"
SQUEUE_FIELDS = (("job_id", "%i"), ("name", "%j"), ("user", "%u"), ("state", "%T"), ("nodes", "%N"),
                 ("cpus", "%C"), ("memory", "%m"), ("time_used", "%M"), ("time_limit", "%l"),
                 ("start_time", "%S"), ("reason", "%r"), ("comment", "%k"))
# Job states squeue shows by default plus recent endings (MinJobAge keeps them a while).
ALL_STATES = "all"


@dataclass
class CliBackend:
    timeout: int = 30
    bin_dir: str | None = None

    def _cmd(self, name: str) -> str:
        return os.path.join(self.bin_dir, name) if self.bin_dir else name

    def _run(self, argv: list[str], input_text: str | None = None) -> str:
        try:
            proc = subprocess.run(argv, input=input_text, capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError:
            raise SlurmError(f"{argv[0]} not found: install the Slurm client commands or set slurm.bin_dir "
                             "in the slurm-vm config") from None
        except subprocess.TimeoutExpired:
            raise SlurmError(f"{os.path.basename(argv[0])} did not answer within {self.timeout}s: "
                             "is slurmctld reachable?") from None
        if proc.returncode != 0:
            message = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
            raise SlurmError(f"{os.path.basename(argv[0])} failed: {message}")
        return proc.stdout

    def submit(self, script: str, args: tuple[str, ...]) -> int:
        out = self._run([self._cmd("sbatch"), *args], input_text=script).strip()
        first = out.split(";", 1)[0]
        if not first.isdigit():
            raise SlurmError(f"sbatch returned no job id (got {out[:80]!r})")
        return int(first)

    def jobs(self, user: str | None = None, job_ids: tuple[int, ...] = (), node: str | None = None) -> list[JobInfo]:
        fmt = SEP.join(code for _, code in SQUEUE_FIELDS)
        argv = [self._cmd("squeue"), "-h", "-t", ALL_STATES, "-o", fmt]
        if user:
            argv += ["-u", user]
        if job_ids:
            argv += ["-j", ",".join(str(j) for j in job_ids)]
        if node:
            argv += ["-w", node]
        try:
            out = self._run(argv)
        except SlurmError as exc:
            if job_ids and "Invalid job id" in str(exc):
                return []
            raise
        return [job for job in (parse_squeue_line(line) for line in out.splitlines()) if job is not None]

    def signal(self, job_id: int, signal: str, batch_only: bool = False) -> None:
        argv = [self._cmd("scancel"), f"--signal={signal}"]
        if batch_only:
            argv.append("--batch")
        self._run([*argv, str(job_id)])

    def cancel(self, job_id: int) -> None:
        self._run([self._cmd("scancel"), str(job_id)])

    def batch_script(self, job_id: int) -> str:
        return self._run([self._cmd("scontrol"), "write", "batch_script", str(job_id), "-"])

    def records(self, job_ids: tuple[int, ...] = ()) -> list[JobRecord]:
        return job_records(self, job_ids)

    def output_path(self, job_id: int) -> str | None:
        """The job's standard output file (StdOut of `scontrol show job -o`), None when Slurm forgot it."""
        try:
            out = self._run([self._cmd("scontrol"), "show", "job", "-o", str(job_id)])
        except SlurmError:
            return None
        return stdout_of_show_job(out)


def stdout_of_show_job(line: str) -> str | None:
    for token in line.split():
        if token.startswith("StdOut="):
            return token[len("StdOut="):] or None
    return None


def parse_squeue_line(line: str) -> JobInfo | None:
    parts = line.split(SEP, len(SQUEUE_FIELDS) - 1)
    if len(parts) != len(SQUEUE_FIELDS) or not parts[0].strip().isdigit():
        return None
    values = dict(zip((name for name, _ in SQUEUE_FIELDS), (p.strip() for p in parts)))
    node_text = values.pop("nodes")
    nodes = tuple(hostlist.expand_hostlist(node_text)) if node_text and node_text != "(null)" else ()
    cpus = int(values.pop("cpus")) if values["cpus"].isdigit() else 0
    comment = values.pop("comment")
    return JobInfo(job_id=int(values.pop("job_id")), nodes=nodes, cpus=cpus,
                   comment="" if comment == "(null)" else comment, **values)


@dataclass(frozen=True)
class JobRecord:
    """A job's id, state, user and AdminComment (root-written), from `squeue -O`."""
    job_id: int
    state: str
    user: str
    admin_comment: str


RECORD_FIELDS = ("JobID", "State", "UserName", "admin_comment")


def parse_record_lines(text: str) -> list[JobRecord]:
    """`squeue -h -O JobID:<US>,State:<US>,UserName:<US>,admin_comment:<US>` output; AdminComment is last."""
    out = []
    for line in text.splitlines():
        parts = line.split(SEP, len(RECORD_FIELDS) - 1)
        if len(parts) != len(RECORD_FIELDS) or not parts[0].strip().isdigit():
            continue
        comment = (parts[3][:-1] if parts[3].endswith(SEP) else parts[3]).strip()
        out.append(JobRecord(int(parts[0].strip()), parts[1].strip(), parts[2].strip(),
                             "" if comment == "(null)" else comment))
    return out


def job_records(backend: CliBackend, job_ids: tuple[int, ...] = ()) -> list[JobRecord]:
    """Every job Slurm knows (or `job_ids`), with its AdminComment: one squeue RPC."""
    fmt = ",".join(f"{name}:{SEP}" for name in RECORD_FIELDS)
    argv = [backend._cmd("squeue"), "-h", "-t", ALL_STATES, "-O", fmt]
    if job_ids:
        argv += ["-j", ",".join(str(j) for j in job_ids)]
    return parse_record_lines(backend._run(argv))


def set_admin_comment(backend: CliBackend, job_id: int, text: str) -> None:
    """As root (or SlurmUser): users cannot change AdminComment."""
    backend._run([backend._cmd("scontrol"), "update", f"JobId={job_id}", f"AdminComment={text}"])


def node_addresses(backend: CliBackend, nodes: tuple[str, ...]) -> dict[str, str]:
    """NodeName -> NodeAddr from `sinfo -N -o %N<US>%o`."""
    out = backend._run([backend._cmd("sinfo"), "-h", "-N", "-n", ",".join(nodes), "-o", f"%N{SEP}%o"])
    pairs = (line.split(SEP, 1) for line in out.splitlines() if SEP in line)
    return {name.strip(): addr.strip() for name, addr in pairs}
