"""`slurm-vm vnc --web`: the VM's display in a browser (noVNC), served on 127.0.0.1 for one session.

One HTTP server on 127.0.0.1:port serves noVNC's files (Debian's `novnc` package, read-only) and a
websocket bridge (the `websockify` library's WebSocket) under /<token>/, a random 192-bit token made for
this session: any other path, and any request from another uid than the user's (or root's), is refused
with 403 before anything is read from disk or relayed. Each websocket gets its own relay to the VM's VNC
server (vnc.Session.stream), like a VNC viewer's connection. The session's VNC password rides in the URL's
fragment (#...), which browsers never send to a server; noVNC reads it from there.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
import select
import selectors
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

from .errors import SlurmVmError

TOKEN_BYTES = 24


def _websockify():
    try:
        from websockify import websocket, websocketserver
    except ImportError:
        raise SlurmVmError("the browser console needs the Python package websockify on this machine: ask your "
                           "admin (pip install 'slurm-vm[web]'), or use `slurm-vm vnc` with a VNC viewer") from None
    return websocket, websocketserver


def check_novnc(novnc_dir: str) -> None:
    if not os.path.isfile(os.path.join(novnc_dir, "vnc.html")):
        raise SlurmVmError(f"noVNC is not installed here ({novnc_dir}/vnc.html is missing): ask your admin "
                           "(Debian package novnc), or use `slurm-vm vnc` with a VNC viewer")


def page_url(port: int, token: str, password: str) -> str:
    """noVNC's page; its settings (and the password) in the fragment, which stays in the browser."""
    fragment = f"path={token}/websockify&autoconnect=true&resize=scale&reconnect=false&password={quote(password)}"
    return f"http://127.0.0.1:{port}/{token}/vnc.html#{fragment}"


def token_path(path: str, token: str) -> str | None:
    """The part of `path` after /<token>, or None when the request does not carry this session's token."""
    prefix = f"/{token}/"
    head = path[:len(prefix)]
    if len(head) != len(prefix) or not hmac.compare_digest(head.encode(), prefix.encode()):
        return None
    return "/" + path[len(prefix):]


class WebBridge:
    def __init__(self, session, port: int, novnc_dir: str):
        check_novnc(novnc_dir)
        websocket, websocketserver = _websockify()
        self.session, self.token = session, secrets.token_urlsafe(TOKEN_BYTES)
        handler = type("Handler", (_Handler, websocketserver.WebSocketRequestHandlerMixIn,
                                   SimpleHTTPRequestHandler), {"bridge": self, "ws": websocket})
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), functools.partial(handler, directory=novnc_dir))
        except OSError as exc:
            raise SlurmVmError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}): choose another --port") from None
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="vnc-web", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()

    def instructions(self, host: str, user: str) -> list[str]:
        target = self.session.target
        return [f"the display of VM {target.vm_name} (job {target.job_id}) is served to your browser until you "
                f"press Ctrl-C; open (the address is this session's key: keep it to yourself):",
                f"  {page_url(self.port, self.token, self.session.password)}",
                f"from your laptop: ssh -N -L {self.port}:127.0.0.1:{self.port} {user}@{host}   "
                "then open the same address there"]


class _Handler:
    """Mixed in front of websockify's WebSocketRequestHandlerMixIn and SimpleHTTPRequestHandler."""
    bridge: WebBridge
    ws: object
    protocol_version = "HTTP/1.1"       # a websocket upgrade answers `HTTP/1.1 101`

    def _allowed(self) -> str | None:
        from .vnc import allowed
        rest = token_path(self.path, self.bridge.token)   # type: ignore[attr-defined]
        if rest is None or not allowed(self.connection):  # type: ignore[attr-defined]
            self.send_error(403, "Forbidden")              # type: ignore[attr-defined]
            return None
        return rest

    def do_GET(self) -> None:
        if self._allowed() is not None:
            super().do_GET()  # type: ignore[misc]

    def do_HEAD(self) -> None:
        if self._allowed() is not None:
            super().do_HEAD()  # type: ignore[misc]

    def handle_upgrade(self) -> None:
        rest = self._allowed()
        if rest is None:
            return
        if rest.split("?")[0] != "/websockify":
            self.send_error(404, "Not Found")  # type: ignore[attr-defined]
            return
        super().handle_upgrade()  # type: ignore[misc]

    def translate_path(self, path: str) -> str:
        return super().translate_path(token_path(path, self.bridge.token) or "/-")  # type: ignore[misc]

    def list_directory(self, path):
        self.send_error(404, "Not Found")  # type: ignore[attr-defined]
        return None

    def end_headers(self) -> None:
        self.send_header("Referrer-Policy", "no-referrer")   # type: ignore[attr-defined]
        self.send_header("Cache-Control", "no-store")        # type: ignore[attr-defined]
        super().end_headers()  # type: ignore[misc]

    def log_message(self, format: str, *args) -> None:
        pass

    def handle_websocket(self) -> None:
        mine, theirs = socket.socketpair()
        self.bridge.session.stream(theirs)
        try:
            pipe_websocket(self.request, mine, self.ws)  # type: ignore[attr-defined]
        finally:
            mine.close()


def pipe_websocket(ws, vm: socket.socket, wsmod) -> None:
    """Copy websocket messages <-> the VM's relay until either side closes."""
    sel = selectors.DefaultSelector()
    sel.register(ws.socket, selectors.EVENT_READ, "browser")
    sel.register(vm, selectors.EVENT_READ, "vm")
    while True:
        for key, _ in sel.select(timeout=1.0):
            if key.data == "browser":
                if not _from_browser(ws, vm, wsmod):
                    return
                continue
            data = vm.recv(65536)
            if not data:
                ws.shutdown(socket.SHUT_RDWR, 1000, "the VM's display closed")
                return
            _send(ws, data, wsmod)


def _from_browser(ws, vm: socket.socket, wsmod) -> bool:
    while True:
        try:
            message = ws.recvmsg()
        except wsmod.WebSocketWantReadError:
            return True
        if message is None:
            return False
        vm.sendall(message)
        if not ws.pending():
            return True


def _send(ws, data: bytes, wsmod) -> None:
    while True:
        try:
            ws.sendmsg(data)
            return
        except wsmod.WebSocketWantWriteError:
            select.select([], [ws.socket], [], 5.0)
