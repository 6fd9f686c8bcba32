"""The launcher's control socket: how `slurm-vm checkpoint` reaches a running VM.

The launcher serves `control.sock` in the job's run dir (created with umask 077: the job user's and root's
only; a connecting peer of another uid is refused as well, by SO_PEERCRED). One JSON object per connection
each way: the request (`{"op": "checkpoint", "stop": false}`), then the answer (`{"ok": true, ...}` or
`{"ok": false, "error": "..."}`). The CLI gets there with `srun --jobid=J --overlap` to
`slurm-vm checkpoint-relay J` on the VM's node, as the user, like the console.

The socket's thread never touches the VM: it hands a request to the launcher's main loop (take()) and waits
for the answer, so requests run one at a time between the loop's other work (a stop signal, a preemption's
save). A request that arrives while one is being worked on is answered "busy" at once.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import struct
import threading
from dataclasses import dataclass, field

from ..acceptloop import accept_until
from .serialmux import listen_private

MAX_MESSAGE = 64 * 1024
ACCEPT_POLL = 0.2
OPS = {"checkpoint": {"stop": bool}}


class RequestError(Exception):
    """A request that cannot be read or is not one of OPS."""


@dataclass
class Request:
    op: str
    args: dict
    done: threading.Event = field(default_factory=threading.Event)
    sent: threading.Event = field(default_factory=threading.Event)     # the answer went out (or could not)
    reply: dict | None = None

    def answer(self, **data: object) -> None:
        if not self.done.is_set():
            self.reply = {"ok": True, **data}
            self.done.set()

    def fail(self, error: str) -> None:
        if not self.done.is_set():
            self.reply = {"ok": False, "error": error}
            self.done.set()


def parse_request(data: bytes) -> Request:
    """Strict: a JSON object with a known `op` and only that op's arguments, of their types."""
    try:
        message = json.loads(data)
    except ValueError:
        raise RequestError("the request is not JSON") from None
    if not isinstance(message, dict) or message.get("op") not in OPS:
        raise RequestError(f"the request must be a JSON object with op one of {', '.join(sorted(OPS))}")
    op = message.pop("op")
    allowed = OPS[op]
    for key, value in message.items():
        if key not in allowed or not isinstance(value, allowed[key]):
            raise RequestError(f"{op}: unknown argument {key!r} or the wrong type")
    return Request(op, message)


class ControlServer(threading.Thread):
    def __init__(self, path: str):
        super().__init__(name="control-socket", daemon=True)
        self.path = path
        self.uid = os.getuid()
        self.requests: queue.Queue[Request] = queue.Queue()
        self.busy = threading.Lock()
        self._stopping = threading.Event()
        self.listener = _listen(path)

    def take(self) -> Request | None:
        """The next request for the main loop to work on (answer or fail it), or None."""
        try:
            return self.requests.get_nowait()
        except queue.Empty:
            return None

    def stop(self, why: str = "the VM is ending") -> None:
        """Stop serving; requests not yet worked on are failed with `why`."""
        self._stopping.set()
        while (request := self.take()) is not None:
            request.fail(why)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def run(self) -> None:
        try:
            accept_until(self.listener, self._stopping, self._serve_in_thread, ACCEPT_POLL)
        finally:
            self.listener.close()

    def _serve_in_thread(self, conn: socket.socket) -> None:
        threading.Thread(target=self._serve, args=(conn,), name="control-client", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                uid = peer_uid(conn)
                if uid not in (self.uid, 0):
                    _send(conn, {"ok": False, "error": "not your VM"})
                    return
                request = parse_request(_receive(conn))
            except (RequestError, OSError) as exc:
                _send(conn, {"ok": False, "error": str(exc)})
                return
            if not self.busy.acquire(blocking=False):
                _send(conn, {"ok": False, "error": "another checkpoint request of this VM is being worked on; "
                                                   "try again when it has finished"})
                return
            try:
                self.requests.put(request)
                while not request.done.wait(ACCEPT_POLL):
                    if self._stopping.is_set():
                        request.fail("the VM is ending")
                _send(conn, request.reply or {"ok": False, "error": "no answer"})
            finally:
                request.sent.set()
                self.busy.release()


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def _listen(path: str) -> socket.socket:
    try:
        os.unlink(path)          # a stale socket of an earlier run of this job on this node
    except FileNotFoundError:
        pass
    return listen_private(path, 8)


def _receive(conn: socket.socket, timeout: float | None = 10.0) -> bytes:
    conn.settimeout(timeout)
    data = b""
    while chunk := conn.recv(4096):
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise RequestError("the message is too long")
    return data


def _send(conn: socket.socket, message: dict) -> None:
    try:
        conn.sendall(json.dumps(message).encode())
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass            # the client went away (its srun was interrupted): nothing to tell


def ask(path: str, message: dict, timeout: float) -> dict:
    """The client side: send one request, wait (up to `timeout`) for its answer. Raises OSError, RequestError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(10.0)
        sock.connect(path)
        sock.sendall(json.dumps(message).encode())
        sock.shutdown(socket.SHUT_WR)
        data = _receive(sock, timeout)
    try:
        answer = json.loads(data)
    except ValueError:
        raise RequestError("the launcher's answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
        raise RequestError("the launcher's answer has no `ok`")
    return answer
