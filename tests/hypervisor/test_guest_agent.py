"""The guest agent client and `slurm-vm exec`'s relay, against the real qemu-guest-agent (qemu-ga listening on a
unix socket on this host: the same program and protocol as in a guest, without booting one) and a real QEMU."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import pytest

from slurm_vm.errors import EXIT_EXEC_TIMEOUT, EXIT_NO_AGENT, AgentBusy, AgentError, AgentUnavailable, ExecTimeout
from slurm_vm.guestexec import RelayError, addresses_relay, check_agent_channel, guest_opened_port, play_frames, relay
from slurm_vm.hypervisor.guest_agent import exec_status, parse_line, reported_addresses, run_command, session
from slurm_vm.launcher.qemu import agent_argv, qemu_argv
from slurm_vm.limits import AGENT_LOCK, AGENT_SOCKET, CH_API_SOCKET, QMP_SOCKET
from tests.hypervisor.shapes import definition

QEMU_GA = shutil.which("qemu-ga") or "/usr/sbin/qemu-ga"
# This agent runs on the test host, not in a guest: whatever would power off, suspend, freeze or reconfigure the
# host is disabled (the agent answers "command disabled").
HOST_UNSAFE = ("guest-shutdown", "guest-suspend-disk", "guest-suspend-ram", "guest-suspend-hybrid",
               "guest-fsfreeze-freeze", "guest-fsfreeze-freeze-list", "guest-fstrim", "guest-set-time",
               "guest-set-user-password", "guest-set-vcpus", "guest-set-memory-blocks", "guest-ssh-add-authorized-keys",
               "guest-ssh-remove-authorized-keys")


@pytest.fixture
def job_dir():
    path = tempfile.mkdtemp(prefix="agent-test-", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent(job_dir):
    """A real qemu-ga answering on <job_dir>/agent.sock."""
    if not os.path.exists(QEMU_GA):
        pytest.fail("qemu-ga is missing: scripts/install-deps installs qemu-guest-agent")
    sock = os.path.join(job_dir, AGENT_SOCKET)
    state = os.path.join(job_dir, "qga-state")
    os.mkdir(state)
    proc = subprocess.Popen([QEMU_GA, "-m", "unix-listen", "-p", sock, "-t", state, "-F/nonexistent",
                             "--block-rpcs=" + ",".join(HOST_UNSAFE)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not os.path.exists(sock):
        assert proc.poll() is None and time.monotonic() < deadline, "qemu-ga did not start"
        time.sleep(0.02)
    yield sock
    proc.terminate()
    proc.wait(5)


def _session(job_dir: str, **kw):
    return session(os.path.join(job_dir, AGENT_SOCKET), os.path.join(job_dir, AGENT_LOCK), **kw)


def test_exec_returns_output_exit_code_and_takes_stdin(agent, job_dir):
    with _session(job_dir) as client:
        result = run_command(client, ["sh", "-c", "echo out; echo err >&2; cat; exit 3"], b"in\x00put\n", 10)
        assert (result.exit_code, result.stdout, result.stderr) == (3, b"out\nin\x00put\n", b"err\n")
        assert run_command(client, ["false"], None, 10).exit_code == 1
        assert run_command(client, ["sh", "-c", "kill -TERM $$"], None, 10).exit_code == 128 + 15


def test_a_command_that_outlives_its_timeout_gives_exit_code_124(agent, job_dir):
    with _session(job_dir) as client:
        started = time.monotonic()
        with pytest.raises(ExecTimeout) as caught:
            run_command(client, ["sleep", "30"], None, 0.5)
        assert time.monotonic() - started < 5 and caught.value.exit_code == EXIT_EXEC_TIMEOUT == 124


def test_no_socket_and_a_silent_channel_say_there_is_no_agent(job_dir):
    with pytest.raises(AgentUnavailable, match="no guest agent channel"):
        with _session(job_dir):
            pass
    # A channel nobody answers on (QEMU's socket of a guest without an agent accepts and stays silent).
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(os.path.join(job_dir, AGENT_SOCKET))
    silent.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(AgentUnavailable, match="no guest agent answers") as caught:
            with _session(job_dir, sync_timeout=0.5):
                pass
        assert caught.value.exit_code == EXIT_NO_AGENT and time.monotonic() - started < 5
    finally:
        silent.close()


def test_one_conversation_at_a_time(agent, job_dir):
    with _session(job_dir):
        with pytest.raises(AgentBusy):
            with _session(job_dir, lock_wait=0.3):
                pass
    with _session(job_dir, lock_wait=0.3) as client:     # free again
        assert run_command(client, ["true"], None, 10).exit_code == 0


def test_sync_skips_what_a_previous_client_left_unread(agent, job_dir):
    """In a VM the virtio-serial channel outlives host connections: answers a previous client never read arrive
    first. The sync's 0xFF and id find our place. A relay in front of the real agent plays the stale answers."""
    front = os.path.join(job_dir, "front.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(front)
    listener.listen(1)

    def pump(src: socket.socket, dst: socket.socket) -> None:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        conn, _ = listener.accept()
        back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        back.connect(agent)
        conn.sendall(b'{"return": {"pid": 1}}\n{"return": 12345}\n\xff{"return": {"exited": true, "exitcode": 9}}\n')
        threading.Thread(target=pump, args=(back, conn), daemon=True).start()
        pump(conn, back)

    threading.Thread(target=serve, daemon=True).start()
    try:
        with session(front, os.path.join(job_dir, AGENT_LOCK)) as client:
            result = run_command(client, ["sh", "-c", "echo mine"], None, 10)
        assert (result.exit_code, result.stdout) == (0, b"mine\n")
    finally:
        listener.close()


def test_answer_lines_and_exec_status_are_read_strictly():
    assert parse_line(b'\xff{"return": 5}') == {"return": 5}
    assert parse_line(b"\xff") is None and parse_line(b"[1]") is None and parse_line(b"{nonsense") is None
    assert exec_status({"exited": False}) is None
    assert exec_status({"exited": True, "signal": 9}).exit_code == 137
    assert exec_status({"exited": True, "exitcode": 0, "out-data": "aGk="}).stdout == b"hi"


def _relay(job_dir: str, argv: list[str], stdin: bytes | None = None, timeout: int = 10) -> tuple[int, bytes, bytes]:
    frames = io.StringIO()
    assert relay(job_dir, argv, timeout, io.BytesIO(stdin) if stdin is not None else None, frames) == 0
    out, err = io.BytesIO(), io.BytesIO()
    code = play_frames(io.BytesIO(frames.getvalue().encode()), out, err)
    assert code is not None
    return code, out.getvalue(), err.getvalue()


def test_relay_frames_carry_bytes_and_the_exit_code(agent, job_dir):
    big = os.urandom(200 * 1024)
    code, out, err = _relay(job_dir, ["sh", "-c", "cat; echo oops >&2; exit 7"], big)
    assert (code, out, err) == (7, big, b"oops\n")


def test_relay_refusals_are_one_line_with_their_exit_code(job_dir):
    with pytest.raises(RelayError, match="no guest agent channel") as caught:
        _relay(job_dir, ["true"])
    assert caught.value.exit_code == EXIT_NO_AGENT
    open(os.path.join(job_dir, CH_API_SOCKET), "w").close()
    with pytest.raises(RelayError, match="cloud-hypervisor have no guest agent channel"):
        _relay(job_dir, ["true"])
    with pytest.raises(RelayError, match="at most 1 MiB"):
        _relay(job_dir, ["cat"], b"x" * ((1 << 20) + 1))


def test_qemu_argv_has_the_agent_port():
    joined = " ".join(qemu_argv(definition(), "tcg", [3]))
    assert "socket,id=qga0,path=/var/lib/slurm-vm/jobs/42/agent.sock,server=on,wait=off" in joined
    assert "virtserialport,bus=agentbus.0,chardev=qga0,name=org.qemu.guest_agent.0" in joined


def test_real_qemu_tells_a_guest_without_an_agent_at_once(job_dir):
    """A paused QEMU with the agent port: the socket is there, the guest never opened the port, so QMP's
    query-chardev says so and the relay refuses without waiting for a sync to time out."""
    defn = definition(run_dir=job_dir)
    qmp = os.path.join(job_dir, QMP_SOCKET)
    proc = subprocess.Popen([defn.qemu_binary, "-S", "-nodefaults", "-no-user-config", "-display", "none",
                             "-machine", "pc", "-accel", "tcg", "-qmp", f"unix:{qmp},server=on,wait=off",
                             *agent_argv(defn)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while guest_opened_port(job_dir) is None:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "QEMU's QMP did not answer"
            time.sleep(0.05)
        assert guest_opened_port(job_dir) is False
        started = time.monotonic()
        with pytest.raises(AgentUnavailable, match="no guest agent answers"):
            check_agent_channel(job_dir)
        assert time.monotonic() - started < 3
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_second_exec_runs_when_the_first_ends(agent, job_dir):
    results: list[int] = []

    def second():
        results.append(_relay(job_dir, ["true"])[0])

    with _session(job_dir):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert results == []
    thread.join(30)
    assert results == [0]


def test_a_refused_shutdown_is_an_error_and_nothing_else_waits_long(agent, job_dir):
    """guest-shutdown answers nothing when it works; an agent that refuses it (here: disabled, as on this host)
    answers an error, which the launcher reports."""
    with _session(job_dir) as client:
        with pytest.raises(AgentError, match="refused guest-shutdown"):
            client.send_only("guest-shutdown", {"mode": "powerdown"})
        assert run_command(client, ["true"], None, 10).exit_code == 0


def test_reported_addresses_from_the_real_agent_and_from_a_hostile_one(agent, job_dir):
    """The relay's answer from the real agent: this host's global addresses, no loopback. A hostile guest's
    answer is checked field by field and bounded."""
    frames = io.StringIO()
    assert addresses_relay(job_dir, frames) == 0
    (frame,) = [json.loads(line) for line in frames.getvalue().splitlines()]
    reported = frame["addresses"]
    assert not any(a.startswith(("127.", "::1")) for a in reported)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("10.255.255.1", 9))
            own = probe.getsockname()[0]
        except OSError:
            own = None
    if own is not None:
        assert any(a.split("/")[0] == own for a in reported), (own, reported)
    hostile = [{"name": "eth0\x1b[2J", "ip-addresses": [
        {"ip-address": "10.0.0.5", "prefix": 24}, {"ip-address": "10.0.0.5\n; rm -rf /", "prefix": 24},
        {"ip-address": "fe80::1", "prefix": 64}, {"ip-address": "2001:db8::5", "prefix": True},
        {"ip-address": "192.0.2.1", "prefix": 99}, "junk", {"ip-address": 7}]},
        {"name": "x", "ip-addresses": [{"ip-address": f"10.1.{i // 250}.{i % 250 + 1}", "prefix": 16}
                                       for i in range(1000)]}, "junk"]
    shown = reported_addresses(hostile)
    assert shown[:2] == ("10.0.0.5/24", "2001:db8::5") and len(shown) == 32
    assert reported_addresses({"not": "a list"}) == () and reported_addresses(None) == ()
