"""`slurm-vm vnc` without a cluster: the relay's command line and QMP commands, who owns a loopback peer
(real sockets, the kernel's table), and the browser bridge's token and websocket (a real HTTP server,
noVNC's files when installed, websockify's client)."""

from __future__ import annotations

import os
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest

from slurm_vm.errors import SlurmVmError
from slurm_vm.vnc import Target, allowed, peer_uid, refusal, relay_argv, socket_owner, tcp_key
from slurm_vm.vncrelay import (ALPHABET, PASSWORD_LENGTH, VncExit, connect, lockout_commands, new_password,
                               no_display_reason, password_commands)

TARGET = Target(42, "web", "node2", "slurm-vm")


def test_relay_argv_goes_through_srun_into_the_job_on_its_node():
    argv = relay_argv(TARGET, session=True)
    assert argv[:2] == ["srun", "-u"] and "--jobid=42" in argv and "--overlap" in argv
    assert "--nodelist=node2" in argv and argv[-3:] == ["vnc-relay", "42", "--session"]
    assert relay_argv(TARGET, session=False)[-2:] == ["vnc-relay", "42"]


def test_refusal_is_the_relays_own_line_not_sruns():
    err = ("slurm-vm vnc: the VM's display is in use by another `slurm-vm vnc` session; end that one first\n"
           "srun: error: node2: task 0: Exited with exit code 11\n")
    assert refusal(err, 11).startswith("the VM's display is in use by another")
    assert refusal("srun: error: Unable to create step\n", 1) == "srun: error: Unable to create step"
    assert "without a session (exit 1)" in refusal("", 1)


def test_session_password_is_a_lease_and_the_lockout_an_unknown_expired_one():
    password = new_password()
    assert len(password) == PASSWORD_LENGTH and set(password) <= set(ALPHABET)
    assert new_password() != password
    commands = password_commands(password, lease=90)
    assert commands == [("set_password", {"protocol": "vnc", "password": password}),
                        ("expire_password", {"protocol": "vnc", "time": "+90"})]
    (_, first), (_, second) = lockout_commands()
    assert first["password"] != password and second == {"protocol": "vnc", "time": "now"}


def test_no_display_reasons(tmp_path):
    assert "still starting" in no_display_reason(str(tmp_path))
    (tmp_path / "api.sock").touch()
    assert "cloud-hypervisor, which has no display" in no_display_reason(str(tmp_path))
    (tmp_path / "vnc.sock").touch()
    assert no_display_reason(str(tmp_path)) is None


def test_connect_without_a_vnc_socket_says_why_in_one_line(tmp_path, capfd):
    assert connect(str(tmp_path)) == VncExit.NO_DISPLAY
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "no display" in err


def test_tcp_key_matches_the_kernels_spelling():
    assert tcp_key(("127.0.0.1", 8080)) == ("0100007F" if socket.htonl(1) != 1 else "7F000001") + ":1F90"


def test_socket_owner_reads_the_row_of_that_connection():
    table = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
             "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1\n"
             "   1: 0100007F:C000 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1001        0 2\n")
    if socket.htonl(1) == 1:
        pytest.skip("the sample table is little-endian")
    assert socket_owner(table, ("127.0.0.1", 0xC000), ("127.0.0.1", 8080)) == 1001
    assert socket_owner(table, ("127.0.0.1", 0xC001), ("127.0.0.1", 8080)) is None


def test_peer_uid_of_a_real_loopback_connection_is_ours():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            conn, _ = listener.accept()
            with conn:
                assert peer_uid(conn) == os.getuid()
                assert allowed(conn)
                assert not allowed(conn, uid=os.getuid() + 12345) or os.getuid() == 0
    del client


@dataclass
class EchoSession:
    """What WebBridge needs of vnc.Session: a target, a password, and a stream per websocket (here an echo)."""
    target: Target = TARGET
    password: str = "pw123456"
    threads: list = field(default_factory=list)

    def stream(self, conn: socket.socket) -> None:
        def echo() -> None:
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)
        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        self.threads.append(thread)


@pytest.fixture
def bridge(tmp_path):
    pytest.importorskip("websockify")
    from slurm_vm.vncweb import WebBridge
    (tmp_path / "vnc.html").write_text("<html>noVNC</html>")
    (tmp_path / "app").mkdir()
    server = WebBridge(EchoSession(), 0, str(tmp_path))
    server.start()
    yield server
    server.close()


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_web_bridge_serves_only_under_the_sessions_token(bridge):
    base = f"http://127.0.0.1:{bridge.port}"
    token = bridge.token
    assert len(token) >= 32
    assert status(f"{base}/{token}/vnc.html") == 200
    for path in ("/vnc.html", f"/{token}", f"/{token[:-1]}A/vnc.html", f"/x/{token}/vnc.html",
                 f"/{token}/../{token}/vnc.html"):
        assert status(base + path) in (403, 404), path
    assert status(f"{base}/{token}/app/") == 404          # no directory listings
    url = bridge.instructions("login1", "alice")[1].strip()
    assert url.startswith(f"{base}/{token}/vnc.html#") and "password=pw123456" in url
    assert f"path={token}/websockify" in url


def test_web_bridge_websocket_needs_the_token_and_relays_bytes(bridge):
    from websockify.websocket import WebSocket
    ws = WebSocket()
    with pytest.raises(Exception):
        ws.connect(f"ws://127.0.0.1:{bridge.port}/websockify")
    ws = WebSocket()
    ws.connect(f"ws://127.0.0.1:{bridge.port}/{bridge.token}/websockify")
    ws.sendmsg(b"RFB 003.008\n")
    assert ws.recvmsg() == b"RFB 003.008\n"
    ws.close()


def test_web_bridge_without_novnc_says_what_to_install(tmp_path):
    pytest.importorskip("websockify")
    from slurm_vm.vncweb import WebBridge
    with pytest.raises(SlurmVmError, match="noVNC is not installed"):
        WebBridge(EchoSession(), 0, str(tmp_path))
