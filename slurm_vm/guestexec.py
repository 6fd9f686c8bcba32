"""`slurm-vm exec NAME|JOBID [--vm I] [--timeout S] [--stdin] -- CMD...`: a command in the guest, through its agent.

Client side (login node, as the user): checks the VM is the user's and running, then runs
`srun --jobid=J --overlap -u --nodelist=NODE slurm-vm exec-relay J --timeout S -- CMD...` on the VM's node and
turns the relay's frames back into the command's stdout, stderr and exit code.

Node side (`exec-relay`, run by srun as the user inside the job): asks QEMU (QMP `query-chardev`) whether the
guest opened the agent's port (a guest without an agent is told at once, not after a timeout), then, under the
job's agent lock, `guest-exec` + `guest-exec-status` on agent.sock (hypervisor/guest_agent.py). It prints JSON
lines, one frame each: {"out": base64} / {"err": base64} as output arrives, then {"exit": N} or
{"error": "...", "code": N}. qemu-guest-agent hands over a command's output when the command has ended
(at most 16 MiB of each stream), so that is when the frames come.

The relay's frames are read only by the caller's own client, from the caller's own job: the agent socket is in
the job's run dir (0700, the user's) and srun runs the relay only for the job's owner (and root).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import IO, Iterable

from .errors import EXIT_ERROR, EXIT_NO_AGENT, AgentUnavailable, SlurmError, SlurmVmError, UsageError
from .limits import AGENT_LOCK, AGENT_SOCKET, CH_API_SOCKET, QMP_SOCKET
from .slurm import JobInfo, SlurmBackend
from .slurm.srun import srun_in_job
from .vmaccess import owned_vm, require_running

DEFAULT_TIMEOUT = 300
MAX_STDIN = 1 << 20          # bytes of standard input handed to the command (guest-exec's input-data)
FRAME_CHUNK = 48 * 1024      # bytes of output per frame


@dataclass(frozen=True)
class ExecTarget:
    job_id: int
    vm_name: str
    node: str


# --- client side -------------------------------------------------------------------------------------------

def target_of(backend: SlurmBackend, ref: str, user: str, vm_index: int) -> ExecTarget:
    """The node of VM `vm_index` of the caller's running job `ref` (one VM per node, in the job's node order)."""
    job = owned_vm(backend, ref, user)
    first = require_running(backend, job, "run commands in it")
    nodes = job.nodes or (first,)
    if not 0 <= vm_index < len(nodes):
        raise UsageError(f"--vm {vm_index}: job {job.job_id} has {len(nodes)} VM(s), numbered 0..{len(nodes) - 1}")
    return ExecTarget(job.job_id, job.vm_name, nodes[vm_index])


def relay_argv(target: ExecTarget, slurm_vm_command: str, argv: list[str], timeout: int, stdin: bool) -> list[str]:
    relay = [slurm_vm_command, "exec-relay", str(target.job_id), "--timeout", str(timeout),
             *(["--stdin"] if stdin else []), "--", *argv]
    return srun_in_job(target.job_id, target.node, relay, unbuffered=True)


def run_exec(target: ExecTarget, slurm_vm_command: str, argv: list[str], timeout: int, stdin: bool) -> int:
    """Runs the relay and plays its frames; the command's exit code, or raises the relay's error."""
    srun = relay_argv(target, slurm_vm_command, argv, timeout, stdin)
    try:
        proc = subprocess.Popen(srun, stdin=None if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise SlurmError("srun not found: install the Slurm client commands") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        outcome = play_frames(proc.stdout, sys.stdout.buffer, sys.stderr.buffer)
    except RelayError as exc:
        raise RelayError(f"VM {target.vm_name} (job {target.job_id}): {exc}", exc.exit_code) from None
    finally:
        srun_errors = proc.stderr.read().decode("utf-8", "replace")
        proc.wait()
    if outcome is None:
        said = " ".join(srun_errors.split()) or f"srun exited with {proc.returncode}"
        raise SlurmError(f"no answer from VM {target.vm_name}'s node {target.node}: {said}")
    return outcome


class RelayError(SlurmVmError):
    """The node relay's one-line refusal, with its exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.exit_code = code


def play_frames(frames: IO[bytes], out: IO[bytes], err: IO[bytes]) -> int | None:
    """Writes out/err frames as they arrive; the exit frame's code, RelayError for an error frame, None when the
    stream ended without either."""
    for line in frames:
        frame = decode_frame(line)
        if frame is None:
            continue
        if "out" in frame or "err" in frame:
            stream = out if "out" in frame else err
            stream.write(base64.b64decode(frame.get("out") or frame.get("err") or ""))
            stream.flush()
        elif "exit" in frame:
            return int(frame["exit"])
        elif "error" in frame:
            raise RelayError(str(frame["error"]), int(frame.get("code", EXIT_ERROR)))
    return None


def decode_frame(line: bytes) -> dict | None:
    try:
        frame = json.loads(line)
    except ValueError:
        return None
    return frame if isinstance(frame, dict) else None


# --- node side ---------------------------------------------------------------------------------------------

def frames_of_output(data: bytes, stream: str) -> Iterable[dict]:
    for start in range(0, len(data), FRAME_CHUNK):
        yield {stream: base64.b64encode(data[start:start + FRAME_CHUNK]).decode()}


def relay(job_dir: str, argv: list[str], timeout: int, stdin: IO[bytes] | None, out: IO[str] | None = None) -> int:
    """Node side: runs `argv` in the guest and prints the frames; always exits 0 once a frame says how it ended
    (srun would otherwise add its own line for a non-zero exit)."""
    out = out or sys.stdout
    data = stdin.read(MAX_STDIN + 1) if stdin is not None else None
    try:
        if data is not None and len(data) > MAX_STDIN:
            raise UsageError(f"--stdin takes at most {MAX_STDIN >> 20} MiB of input")
        result = run_in_guest(job_dir, argv, data, timeout)
    except SlurmVmError as exc:
        _emit(out, {"error": str(exc), "code": exc.exit_code})
        return 0
    for frame in [*frames_of_output(result.stdout, "out"), *frames_of_output(result.stderr, "err")]:
        _emit(out, frame)
    if result.truncated:
        _emit(out, {"err": base64.b64encode(b"slurm-vm: the guest agent cut the command's output at 16 MiB\n")
                    .decode()})
    _emit(out, {"exit": result.exit_code})
    return 0


def _emit(out: IO[str], frame: dict) -> None:
    out.write(json.dumps(frame) + "\n")
    out.flush()


def run_in_guest(job_dir: str, argv: list[str], stdin: bytes | None, timeout: int):
    from .hypervisor.guest_agent import run_command, session
    check_agent_channel(job_dir)
    with session(os.path.join(job_dir, AGENT_SOCKET), os.path.join(job_dir, AGENT_LOCK)) as client:
        return run_command(client, argv, stdin, timeout)


def check_agent_channel(job_dir: str) -> None:
    """AgentUnavailable unless QEMU says the guest opened its agent port (no wait for a guest without one)."""
    from .hypervisor.guest_agent import no_agent_reason
    if not os.path.exists(os.path.join(job_dir, AGENT_SOCKET)):
        if os.path.exists(os.path.join(job_dir, CH_API_SOCKET)):
            raise AgentUnavailable("VMs on cloud-hypervisor have no guest agent channel (docs/hypervisors.md)")
        raise AgentUnavailable("the VM has no guest agent channel on this node (starting, or started by an "
                               "older slurm-vm)")
    if guest_opened_port(job_dir) is False:
        raise AgentUnavailable(no_agent_reason())


def guest_opened_port(job_dir: str) -> bool | None:
    """Whether the guest opened its agent port, as QEMU says; None if QMP cannot say."""
    from .launcher.qemu import agent_port_open
    return agent_port_open(os.path.join(job_dir, QMP_SOCKET))


# --- the guest's own addresses (status) ------------------------------------------------------------------------

ADDRESS_TIMEOUT = 20         # seconds for the node to answer (srun's start, QMP, the agent)


def addresses_relay(job_dir: str, out: IO[str] | None = None) -> int:
    """Node side: {"addresses": [...]} as the guest's agent reports them, or {"error": ..., "code": N}."""
    from .hypervisor.guest_agent import reported_addresses, session
    out = out or sys.stdout
    try:
        check_agent_channel(job_dir)
        with session(os.path.join(job_dir, AGENT_SOCKET), os.path.join(job_dir, AGENT_LOCK), lock_wait=5.0,
                     sync_timeout=3.0) as client:
            answer = client.execute("guest-network-get-interfaces", None, 10.0)
        _emit(out, {"addresses": list(reported_addresses(answer))})
    except SlurmVmError as exc:
        _emit(out, {"error": str(exc), "code": exc.exit_code})
    return 0


def guest_addresses(job: JobInfo, slurm_vm_command: str) -> list[tuple[str, ...] | str]:
    """Per VM of a running job (its node order): the addresses its guest reports, or why there are none."""
    from concurrent.futures import ThreadPoolExecutor
    if job.state != "RUNNING" or not job.nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(job.nodes))) as pool:
        return list(pool.map(lambda node: _ask_node(job.job_id, node, slurm_vm_command), job.nodes))


def _ask_node(job_id: int, node: str, slurm_vm_command: str) -> tuple[str, ...] | str:
    argv = srun_in_job(job_id, node, [slurm_vm_command, "agent-relay", str(job_id), "--addresses"])
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=ADDRESS_TIMEOUT, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "the node did not answer"
    frame = decode_frame(proc.stdout.encode().strip().splitlines()[-1]) if proc.stdout.strip() else None
    if frame is None:
        return "the node did not answer"
    if isinstance(frame.get("addresses"), list):
        return tuple(str(a) for a in frame["addresses"])
    return "no guest agent" if frame.get("code") == EXIT_NO_AGENT else str(frame.get("error", "no answer"))
