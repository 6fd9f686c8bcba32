"""QEMU's VNC server as slurm-vm starts it (display_argv), with the node relay's session (vncrelay.session)
against real QEMU 7.2 (the host's) and QEMU 10 (the 24.11 flavour's trixie rootfs, when built): refused
before a session, the session's password accepted while it runs, refused again once it ended."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from slurm_vm.hypervisor.qemu import display_argv
from slurm_vm.vncrelay import VncExit, session
from tests.e2e.vnc_probe import handshake
from tests.hypervisor.shapes import definition

QEMUS = ["host"] + (["trixie"] if glob.glob("/var/cache/slurm-vm/rootfs-trixie-*/usr/bin/qemu-system-x86_64")
                    else [])


def qemu_binary(which: str, directory: str) -> str:
    if which == "host":
        return "/usr/bin/qemu-system-x86_64"
    from devtools.trixie_qemu import qemu_wrapper
    return qemu_wrapper(directory, sorted(glob.glob("/var/cache/slurm-vm/rootfs-trixie-*"))[-1])


@pytest.fixture(params=QEMUS)
def paused_qemu(request):
    """A paused QEMU (-S: no guest needed for the VNC handshake) with slurm-vm's display, in a run dir."""
    run_dir = tempfile.mkdtemp(prefix="svm-vnc-")
    argv = [qemu_binary(request.param, run_dir), "-accel", "tcg", "-machine", "pc", "-m", "64M", "-nodefaults",
            "-no-user-config", "-S", "-display", "none", "-monitor", "none",
            *display_argv(definition(run_dir=run_dir)),
            "-qmp", f"unix:{run_dir}/qmp.sock,server=on,wait=off"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (os.path.exists(f"{run_dir}/vnc.sock") and os.path.exists(f"{run_dir}/qmp.sock")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    yield run_dir
    proc.kill()
    proc.wait(timeout=30)
    for name in os.listdir(run_dir):
        os.unlink(os.path.join(run_dir, name))
    os.rmdir(run_dir)


def test_display_argv_is_a_vga_with_vnc_on_a_unix_socket_with_password_auth():
    argv = display_argv(definition(run_dir="/var/lib/a,b/42"))
    assert argv == ["-device", "VGA", "-vnc", "unix:/var/lib/a,,b/42/vnc.sock,password=on"]


def relay(run_dir: str) -> subprocess.Popen:
    """The node relay's session as srun runs it: its own process, stdin and stdout pipes to the login side."""
    code = "import sys; from slurm_vm.vncrelay import session; sys.exit(session(sys.argv[1]))"
    return subprocess.Popen([sys.executable, "-c", code, run_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_session_password_works_only_while_the_session_runs(paused_qemu):
    run_dir = paused_qemu
    sock = f"{run_dir}/vnc.sock"
    assert "authentication failed" in (handshake(sock, "anything") or "")
    first = relay(run_dir)
    line = json.loads(first.stdout.readline())
    password = line["password"]
    assert line["lease"] == 90 and len(password) == 8
    assert handshake(sock, password) is None
    assert "authentication failed" in (handshake(sock, password[::-1] + "x") or "")

    second = relay(run_dir)                                   # one session per VM
    _, err = second.communicate(timeout=30)
    assert second.returncode == VncExit.BUSY and err.count("\n") == 1 and "in use by another" in err

    first.stdin.close()                                       # the login side went away
    assert first.wait(timeout=30) == VncExit.ENDED
    assert "authentication failed" in (handshake(sock, password) or "")


def test_session_ended_by_sigterm_locks_the_display_out(paused_qemu):
    sock = f"{paused_qemu}/vnc.sock"
    proc = relay(paused_qemu)
    password = json.loads(proc.stdout.readline())["password"]
    assert handshake(sock, password) is None
    proc.send_signal(signal.SIGTERM)                          # srun passing on the login side's SIGTERM
    assert proc.wait(timeout=30) == VncExit.ENDED
    assert "authentication failed" in (handshake(sock, password) or "")
