"""The launcher: run one VM for the job step, pinned to the step's cores, and manage its power state.

It runs as the job's user inside the job's cgroup (the batch script execs it). The VMM runs in its
own session, so the signals Slurm sends the launcher never reach it; the launcher turns them into an
ACPI power-button press, then a hard stop when the grace time runs out.
"""

from __future__ import annotations

import enum
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import replace

from ..checkpoint import manual
from ..checkpoint.control import CheckpointControl, RestoreRefused
from ..checkpoint.manifest import CheckpointRefused
from ..errors import HypervisorError, NotEnoughCores, NotEnoughMemory, SlurmVmError
from ..limits import CONTROL_SOCKET, LAUNCHER_LOCK, LAUNCHER_PID, VMM_LOG, VMM_PID
from ..hypervisor import registry
from ..hypervisor.cores import allowed_cores, io_cores, vcpu_map
from ..hypervisor.definition import VMDefinition
from ..hypervisor.kvm import choose_backend
from ..hypervisor.memlimit import cgroup_memory_limit, check_memory
from ..hypervisor.control_socket import ControlServer
from ..hypervisor.runtime import START_TIMEOUT, Runtime, open_nics, say
from ..hypervisor.shares import ShareDaemons

# After the time-limit warning (SIGUSR1) has shut the guest down, the launcher waits for Slurm to end the job
# at its limit, so that the job's state is TIMEOUT. Slurm sends the warning up to 60 s early and enforces
# limits on a periodic sweep; past grace + this many seconds without SIGTERM the launcher gives up waiting.
TIME_LIMIT_WAIT_SLACK = 180
HARD_STOP_WAIT = 5.0
POLL = 0.1
REPRESS_SECONDS = 4.0      # the power button again while the grace time runs
AGENT_SHUTDOWN_SHARE = 1 / 3   # a guest still up after this share of the grace time is asked through its agent
LOG_TAIL_LINES = 15


class ExitCode(enum.IntEnum):
    GUEST_POWERED_OFF = 0      # the guest shut itself down, or `slurm-vm stop` (SIGUSR2) shut it down
    STOPPED_ON_SIGNAL = 3      # ACPI shutdown after SIGTERM/SIGINT (scancel, preemption) or SIGUSR1 (time limit)
    HARD_STOPPED = 4           # the guest ignored the power button for grace_seconds
    CRASHED = 5                # the hypervisor exited on its own with an error or was killed
    FAILED_TO_START = 6        # the hypervisor could not be started or configured
    REFUSED = 7                # another launcher runs for this job, a bad definition, too few cores or memory
    CHECKPOINTED = 8           # the VM was saved to its checkpoint dir (preemption, time limit) and requeued
    RESTORE_REFUSED = 9        # the job's checkpoint cannot be used and on_restore_failure is `fail`


SIGNAL_RESULTS = {signal.SIGTERM: ExitCode.STOPPED_ON_SIGNAL, signal.SIGINT: ExitCode.STOPPED_ON_SIGNAL,
                  signal.SIGUSR1: ExitCode.STOPPED_ON_SIGNAL, signal.SIGUSR2: ExitCode.GUEST_POWERED_OFF}


class Launcher:
    def __init__(self, defn: VMDefinition):
        self.defn = defn
        self.started = time.monotonic()
        self.requested: ExitCode | None = None
        self.request_signal = ""
        self.terminated = False
        self.checkpoint = CheckpointControl(defn)
        self.control: ControlServer | None = None

    def _on_signal(self, signum: int, frame) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.terminated = True
        if self.requested is None:
            self.requested = SIGNAL_RESULTS[signal.Signals(signum)]
            self.request_signal = signal.Signals(signum).name
            self.checkpoint.on_signal(signum)

    def run(self) -> int:
        lock_fd = self._lock()
        if lock_fd is None:
            say(f"another launcher already runs the VM of job {self.defn.job_id}; not starting a second one")
            return ExitCode.REFUSED
        for sig in SIGNAL_RESULTS:
            signal.signal(sig, self._on_signal)
        try:
            result = self._run_locked()
            if self.request_signal == "SIGUSR1" and result != ExitCode.CHECKPOINTED:
                self._wait_for_time_limit()
            return result
        finally:
            for name in (VMM_PID, LAUNCHER_PID):
                try:
                    os.unlink(self.defn.path(name))
                except FileNotFoundError:
                    pass
            os.close(lock_fd)

    def _lock(self) -> int | None:
        fd = os.open(self.defn.path(LAUNCHER_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        self._write_pid(LAUNCHER_PID, os.getpid())
        return fd

    def _write_pid(self, name: str, pid: int) -> None:
        tmp = self.defn.path(f".{name}.tmp")
        with open(tmp, "w") as fh:
            fh.write(f"{pid}\n")
        os.replace(tmp, self.defn.path(name))

    def _prepare(self) -> tuple[Runtime, list[int]]:
        allowed = allowed_cores()
        cores = vcpu_map(self.defn.cpus, allowed)
        check_memory(self.defn.memory_bytes, self.defn.memory_overhead_bytes, cgroup_memory_limit())
        hypervisor, accelerator, warnings = choose_backend(self.defn)
        for warning in warnings:
            say(f"warning: {warning}")
        self.defn = replace(self.defn, hypervisor=hypervisor,
                            share_transport=registry.share_transport(hypervisor, self.defn.share_transport))
        runtime = self.checkpoint.restoring_runtime(hypervisor, accelerator, cores)
        say(f"{'restoring' if runtime else 'starting'} VM {self.defn.name} on {node_name()} with {hypervisor} "
            f"({accelerator}), {self.defn.cpus} vCPU(s), {self.defn.memory_bytes >> 20} MiB")
        runtime = runtime or registry.runtime_class(hypervisor)(self.defn, accelerator, cores)
        runtime.io_cores = io_cores(allowed, cores)
        say(f"VMM and share daemon threads on core(s) {','.join(map(str, runtime.io_cores))}"
            f"{'' if set(runtime.io_cores).isdisjoint(cores) else ' (shared with the vCPUs)'}")
        return runtime, open_nics(self.defn)

    def _run_locked(self) -> int:
        try:
            runtime, fds = self._prepare()
        except (NotEnoughCores, NotEnoughMemory) as exc:
            say(str(exc))
            return ExitCode.REFUSED
        except RestoreRefused as exc:
            say(str(exc))
            return ExitCode.RESTORE_REFUSED
        except HypervisorError as exc:
            say(str(exc))
            return ExitCode.FAILED_TO_START
        log_path = self.defn.path(VMM_LOG)
        daemons = share_daemons(self.defn, runtime, log_path)
        try:
            result = self._run_with_shares(runtime, fds, log_path, daemons)
        finally:
            daemons.stop()
        if isinstance(result, str):   # this node's QEMU cannot take the saved state
            return self._run_locked() if self.checkpoint.cold_boot_instead(result) else ExitCode.RESTORE_REFUSED
        return result

    def _run_with_shares(self, runtime: Runtime, fds: list[int], log_path: str, daemons: ShareDaemons) -> int | str:
        """The exit code, or why a checkpoint was refused once QEMU ran (the caller may boot afresh)."""
        try:
            daemons.start(time.monotonic() + START_TIMEOUT)
            runtime.start(fds, log_path)
            self._write_pid(VMM_PID, runtime.proc.pid)  # type: ignore[union-attr]
            runtime.after_start(time.monotonic() + START_TIMEOUT)
        except CheckpointRefused as exc:
            self._kill_now(runtime)
            return str(exc)
        except HypervisorError as exc:
            say(f"failed to start: {exc}")
            self._kill(runtime)
            self._print_log_tail(log_path)
            return ExitCode.FAILED_TO_START
        finally:
            for fd in fds:
                os.close(fd)
        self.checkpoint.running(runtime)
        say(f"VM running ({time.monotonic() - self.started:.2f}s after the launcher started)")
        self.control = ControlServer(self.defn.path(CONTROL_SOCKET))
        self.control.start()
        try:
            return self._supervise(runtime, log_path)
        finally:
            self.control.stop()

    def _supervise(self, runtime: Runtime, log_path: str) -> int:
        proc = runtime.proc
        assert proc is not None
        deadline: float | None = None
        pressed = first_press = 0.0
        agent_asked = False
        while proc.poll() is None:
            request = self.control.take() if self.control is not None else None
            if request is not None and (ended := manual.handle(request, self, runtime)) is not None:
                self._kill(runtime)
                return ended
            if self.requested is not None and deadline is None and self.checkpoint.wanted():
                saved = self.checkpoint.save_and_end(runtime)
                if saved is not None:
                    self._kill(runtime)
                    return saved
            if self.requested is not None and deadline is None:
                say(f"{self.request_signal}: pressing the ACPI power button; hard stop in "
                    f"{self.defn.grace_seconds}s")
                try:
                    runtime.power_button()
                except HypervisorError as exc:
                    say(f"power button failed ({exc}); stopping hard")
                    return self._hard_stop(runtime)
                deadline = time.monotonic() + self.defn.grace_seconds
                pressed = first_press = time.monotonic()
            if deadline is not None and time.monotonic() >= deadline:
                say(f"the guest did not power off within {self.defn.grace_seconds}s; hard stop")
                return self._hard_stop(runtime)
            if deadline is not None and not agent_asked and \
                    time.monotonic() - first_press >= agent_shutdown_after(self.defn.grace_seconds):
                agent_asked = True
                ask_agent_to_shut_down(runtime)
            if deadline is not None and time.monotonic() - pressed >= REPRESS_SECONDS:
                # A guest can miss one press (its ACPI daemon busy or not yet listening): press again.
                try:
                    runtime.power_button()
                except HypervisorError:
                    pass   # the VMM is going away; the loop sees it exit
                pressed = time.monotonic()
            time.sleep(POLL)
        return self._exit_result(proc.returncode, log_path)

    def _wait_for_time_limit(self) -> None:
        """Keep the job alive, the VM already off, until Slurm ends it at its time limit (state TIMEOUT,
        not FAILED). Bounded, for a SIGUSR1 sent by hand to a job without a near limit."""
        limit = self.defn.grace_seconds + TIME_LIMIT_WAIT_SLACK
        say("the VM is off; waiting for Slurm to end the job at its time limit (job state TIMEOUT)")
        deadline = time.monotonic() + limit
        while not self.terminated and time.monotonic() < deadline:
            time.sleep(POLL * 5)
        if not self.terminated:
            say(f"no time limit came within {limit}s of the warning; ending the job now")

    def _exit_result(self, returncode: int, log_path: str) -> int:
        if self.requested is not None:
            say(f"the guest shut down after {self.request_signal} (exit code {int(self.requested)})")
            return self.requested
        if returncode == 0:
            say("the guest powered off")
            return ExitCode.GUEST_POWERED_OFF
        how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
        say(f"the hypervisor exited unexpectedly ({how}): crash")
        self._print_log_tail(log_path)
        return ExitCode.CRASHED

    def _hard_stop(self, runtime: Runtime) -> int:
        runtime.hard_stop()
        self._kill(runtime)
        say("hard-stopped")
        return ExitCode.HARD_STOPPED

    @staticmethod
    def _kill_now(runtime: Runtime) -> None:
        if runtime.proc is not None and runtime.proc.poll() is None:
            runtime.proc.kill()
            runtime.proc.wait(timeout=HARD_STOP_WAIT)

    @staticmethod
    def _kill(runtime: Runtime) -> None:
        proc = runtime.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=HARD_STOP_WAIT if proc.poll() is None else 0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=HARD_STOP_WAIT)

    @staticmethod
    def _print_log_tail(path: str) -> None:
        try:
            with open(path, errors="replace") as fh:
                lines = fh.read().splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            return
        for line in lines:
            say(f"hypervisor: {line}")


def agent_shutdown_after(grace_seconds: int) -> float:
    """Seconds after the first press at which an ignored power button is followed by the guest agent's shutdown
    (after at least one more press)."""
    return max(REPRESS_SECONDS, grace_seconds * AGENT_SHUTDOWN_SHARE)


def ask_agent_to_shut_down(runtime: Runtime) -> threading.Thread:
    """In the background (the wait for the guest goes on): a guest without an agent costs nothing but a line."""
    def ask() -> None:
        try:
            runtime.agent_shutdown()
            say("the guest ignored the power button; asked its guest agent to power off")
        except SlurmVmError as exc:
            say(f"the guest ignored the power button and its guest agent cannot be asked ({exc})")

    thread = threading.Thread(target=ask, name="agent-shutdown", daemon=True)
    thread.start()
    return thread


def node_name() -> str:
    """Slurm's name of this node (a job's output then says where each run of a requeued job ran)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def share_daemons(defn: VMDefinition, runtime: Runtime, log_path: str) -> ShareDaemons:
    """The virtiofsd daemons this VM needs (none for QEMU with 9p): vm.json's transport is the concrete one."""
    wanted = defn if defn.share_transport == "virtiofs" else replace(defn, shares=())
    return ShareDaemons(wanted, log_path, runtime.io_cores)


def run(defn: VMDefinition) -> int:
    return int(Launcher(defn).run())
