"""The one builder of `srun` command lines: a task on one node of a running job, beside its steps."""

from __future__ import annotations


def srun_in_job(job_id: int, node: str, argv: list[str], pty: bool = False, unbuffered: bool = False) -> list[str]:
    """`srun --overlap` as the caller, one task on `node` inside job `job_id` (console, ssh, reading node files,
    `slurm-vm checkpoint`'s relay). `pty`: an interactive terminal; `unbuffered` (-u): slurmstepd forwards the
    output as it comes (by default it holds it until a newline)."""
    return ["srun", *(["-u"] if unbuffered else []), f"--jobid={job_id}", "--overlap", *(["--pty"] if pty else []),
            "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--quiet", *argv]
