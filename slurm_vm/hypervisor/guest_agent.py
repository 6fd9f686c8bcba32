"""A small client of the QEMU guest agent (qemu-guest-agent, "QGA") on the VM's agent socket.

QEMU gives every VM a virtio-serial port `org.qemu.guest_agent.0` whose host end is the unix socket
`agent.sock` in the job's run dir (the user's only: the dir is 0700). The agent in the guest speaks JSON
lines; qemu.qmp's library does not speak it (no greeting, no capabilities), so this is a plain client:
`guest-sync-delimited` with a random id first (the agent answers with 0xFF before its reply, so answers a
previous client left in the channel are skipped), then one command at a time.

The socket has one client at a time (QEMU accepts the next connection only when the first closes):
every user of the agent on the node takes `agent.lock` first (`session`).

Nothing the agent says is trusted for anything that protects other tenants: the guest is the user's, and
its root may answer anything. Callers use its answers for the user's own display and the user's own VM.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import ipaddress
import json
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Iterator

from ..errors import AgentBusy, AgentError, AgentUnavailable, ExecTimeout

AGENT_PORT_NAME = "org.qemu.guest_agent.0"
SYNC_TIMEOUT = 5.0
MAX_LINE = 64 * 1024 * 1024          # an answer line (guest-exec-status carries up to 16 MiB of output, base64)
DELIMITER = b"\xff"


@contextlib.contextmanager
def session(socket_path: str, lock_path: str, lock_wait: float = 30.0,
            sync_timeout: float = SYNC_TIMEOUT) -> Iterator["AgentClient"]:
    """The agent for one conversation: the lock, a connection, a sync. Raises AgentUnavailable when there is no
    socket or no agent answers the sync within `sync_timeout`."""
    lock = _take_lock(lock_path, lock_wait)
    try:
        client = AgentClient.connect(socket_path)
        try:
            client.sync(sync_timeout)
            yield client
        finally:
            client.close()
    finally:
        os.close(lock)


def _take_lock(path: str, wait: float) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise AgentBusy(f"the guest agent is busy with another session for more than {wait:.0f}s; "
                                "try again") from None
            time.sleep(0.05)


class AgentClient:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, socket_path: str) -> "AgentClient":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(socket_path)
        except FileNotFoundError:
            sock.close()
            raise AgentUnavailable("the VM has no guest agent channel (only QEMU VMs have one)") from None
        except OSError as exc:
            sock.close()
            raise AgentUnavailable(f"cannot reach the VM's guest agent channel: {exc.strerror}") from None
        return cls(sock)

    def close(self) -> None:
        self.sock.close()

    def sync(self, timeout: float) -> None:
        """guest-sync-delimited with a fresh id; skips anything until the 0xFF and the answer carrying that id."""
        token = secrets.randbelow(2**31 - 1) + 1
        self._send(b"\xff" + encode_command("guest-sync-delimited", {"id": token}))
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self._answer(deadline)
            except TimeoutError:
                raise AgentUnavailable(no_agent_reason()) from None
            if answer.get("return") == token:
                return

    def execute(self, command: str, arguments: dict | None = None, timeout: float = 10.0):
        """The command's `return`; AgentError for the agent's `error`."""
        self._send(encode_command(command, arguments))
        try:
            answer = self._answer(time.monotonic() + timeout)
        except TimeoutError:
            raise AgentError(f"the guest agent did not answer {command} within {timeout:.0f}s") from None
        return result_of(command, answer)

    def send_only(self, command: str, arguments: dict | None = None, error_wait: float = 2.0) -> None:
        """A command that does not answer on success (guest-shutdown): an error it answers within `error_wait`
        raises AgentError; silence or the channel closing (the guest going down) is success."""
        self._send(encode_command(command, arguments))
        try:
            answer = self._answer(time.monotonic() + error_wait)
        except (TimeoutError, AgentUnavailable):
            return
        result_of(command, answer)

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise AgentUnavailable(f"the guest agent channel closed: {exc.strerror}") from None

    def _answer(self, deadline: float) -> dict:
        """The next JSON object line (after skipping delimiters and lines that are not objects)."""
        while True:
            line = self._line(deadline)
            parsed = parse_line(line)
            if parsed is not None:
                return parsed

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise AgentError("the guest agent sent an answer larger than slurm-vm reads")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError from None
            except OSError as exc:
                raise AgentUnavailable(f"the guest agent channel failed: {exc.strerror}") from None
            if not data:
                raise AgentUnavailable("the guest agent channel closed (the VM stopped?)")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line


def no_agent_reason() -> str:
    return ("no guest agent answers in the VM: install and start qemu-guest-agent in the guest "
            "(or wait until it has booted)")


def encode_command(command: str, arguments: dict | None = None) -> bytes:
    message: dict = {"execute": command}
    if arguments is not None:
        message["arguments"] = arguments
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def parse_line(line: bytes) -> dict | None:
    """One answer: the text after the last 0xFF delimiter as a JSON object, or None for noise."""
    text = line.rsplit(DELIMITER, 1)[-1].strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def result_of(command: str, answer: dict):
    if "error" in answer:
        error = answer["error"] if isinstance(answer["error"], dict) else {}
        raise AgentError(f"the guest agent refused {command}: {error.get('desc', 'no reason given')}")
    if "return" not in answer:
        raise AgentError(f"the guest agent's answer to {command} has no result")
    return answer["return"]


# --- guest-exec ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecResult:
    exit_code: int          # the command's, or 128 + signal when a signal ended it
    stdout: bytes
    stderr: bytes
    truncated: bool = False


def exec_arguments(argv: list[str], stdin: bytes | None) -> dict:
    """guest-exec's arguments: the program is searched on the guest's PATH, output is captured."""
    if not argv:
        raise ValueError("a command is needed")
    args: dict = {"path": argv[0], "arg": list(argv[1:]), "capture-output": True}
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    return args


def exec_status(status: dict) -> ExecResult | None:
    """guest-exec-status's answer: None while the command runs."""
    if not status.get("exited"):
        return None
    if "signal" in status:
        code = 128 + int(status["signal"])
    else:
        code = int(status.get("exitcode", 0))
    return ExecResult(code, _b64(status.get("out-data")), _b64(status.get("err-data")),
                      bool(status.get("out-truncated") or status.get("err-truncated")))


def _b64(value) -> bytes:
    if not isinstance(value, str):
        return b""
    return base64.b64decode(value)


def run_command(client: AgentClient, argv: list[str], stdin: bytes | None, timeout: float,
                poll: float = 0.1) -> ExecResult:
    """guest-exec and then guest-exec-status until it exits or `timeout` passes (ExecTimeout: the command may
    still run in the guest: the agent cannot kill it)."""
    started = client.execute("guest-exec", exec_arguments(argv, stdin))
    pid = int(started["pid"])
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        result = exec_status(client.execute("guest-exec-status", {"pid": pid}))
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise ExecTimeout(f"the command did not end within {timeout:g}s (guest pid {pid}: it may still run "
                              "in the guest; the agent cannot stop it)")
        time.sleep(delay)
        delay = min(delay * 2, poll)


# --- guest-network-get-interfaces ----------------------------------------------------------------------------

MAX_REPORTED = 32          # addresses shown per VM: a hostile guest cannot flood `status`


def reported_addresses(interfaces: object) -> tuple[str, ...]:
    """`address/prefix` of every global address the guest reports (no loopback, no IPv6 link-local), checked
    as addresses: this is for the user's eyes only, never for filters or the address registry."""
    found: list[str] = []
    if not isinstance(interfaces, list):
        return ()
    for interface in interfaces:
        entries = interface.get("ip-addresses") if isinstance(interface, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            address = _address(entry)
            if address is not None and address not in found:
                found.append(address)
            if len(found) >= MAX_REPORTED:
                return tuple(found)
    return tuple(found)


def _address(entry: object) -> str | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("ip-address"), str):
        return None
    prefix = entry.get("prefix")
    try:
        ip = ipaddress.ip_address(entry["ip-address"])
        network = ipaddress.ip_interface(f"{ip}/{prefix}") if isinstance(prefix, int) and not isinstance(
            prefix, bool) else None
    except ValueError:
        return None
    if ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return None
    return str(network) if network is not None else str(ip)
