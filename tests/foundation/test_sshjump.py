"""slurm-vm ssh/scp command lines (pure) and the node-side TCP relay over a real local TCP server."""

from __future__ import annotations

import os
import shlex
import socket
import threading

import pytest

from slurm_vm.errors import NotFound, SlurmVmError
from slurm_vm.slurm import JobInfo
from slurm_vm.sshjump import scp_command, split_ssh_args, ssh_command, tcp_relay
from slurm_vm import transport


def vm_job(address: str | None = "10.0.0.10/24", job_id: int = 12) -> JobInfo:
    net = f"\n    address: {address}" if address else ""
    spec = f"name: web\nimage: deb\nnetworks:\n  - network: lan{net}\n"
    comment = transport.encode_comment(spec, transport.new_salt())
    return JobInfo(job_id=job_id, name="vm-web", user="alice", state="RUNNING", nodes=("n2",), comment=comment,
                   spec_text=spec)   # as lifecycle.with_spec reads it from the batch script


def test_ssh_jumps_through_the_node_inside_the_job():
    argv = ssh_command(vm_job(), "n2", "/opt/v/bin/slurm-vm", "root", ("-o", "ConnectTimeout=5", "-v", "uptime"))
    assert argv[0] == "ssh" and argv[1:4] == ["-o", "ConnectTimeout=5", "-v"]
    proxy = next(a for a in argv if a.startswith("ProxyCommand="))[len("ProxyCommand="):]
    assert shlex.split(proxy) == ["srun", "-u", "--jobid=12", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=n2",
                                  "--quiet", "/opt/v/bin/slurm-vm", "tcp-relay", "%h", "%p"]
    assert "HostKeyAlias=slurm-vm-job12" in argv
    assert argv[-2:] == ["root@10.0.0.10", "uptime"]


def test_vm_without_a_known_address_is_one_line():
    with pytest.raises(NotFound, match="static `address`"):
        ssh_command(vm_job(None), "n2", "slurm-vm", None, ())


def test_a_dhcp_vm_is_reached_at_the_address_its_guest_reports():
    """Only when slurm-vm knows no address: IPv4 first, garbage skipped; a known address is never overridden."""
    asked = []

    def guest(*reported: str):
        return lambda: asked.append(1) or tuple(reported)
    argv = ssh_command(vm_job(None), "n2", "slurm-vm", "debian", (), ask_guest=guest("fd00::9/64", "10.9.0.7/24"))
    assert argv[-1] == "debian@10.9.0.7"
    assert ssh_command(vm_job(None), "n2", "slurm-vm", None, (), ask_guest=guest("x/1", "fd00::9/64"))[-1] == "fd00::9"
    before = len(asked)
    assert ssh_command(vm_job(), "n2", "slurm-vm", None, (), ask_guest=guest("10.9.0.7/24"))[-1] == "10.0.0.10"
    assert len(asked) == before                      # a VM with a known address costs no question
    with pytest.raises(NotFound, match="guest agent reports none"):
        ssh_command(vm_job(None), "n2", "slurm-vm", None, (), ask_guest=guest())
    scp = scp_command(("f", "web:/tmp/"), lambda name: (vm_job(None), "n2", "slurm-vm"),
                      guest_of=lambda job: guest("fd00::9/64"))
    assert scp[-1] == "[fd00::9]:/tmp/"


def test_ssh_argument_split():
    assert split_ssh_args(("-p", "2222", "-A", "ls", "-l")) == (["-p", "2222", "-A"], ["ls", "-l"])
    assert split_ssh_args(("-o", "X=1", "--", "-weird")) == (["-o", "X=1"], ["-weird"])


def test_scp_rewrites_the_vm_operand_only():
    job = vm_job()
    argv = scp_command(("-r", "dir", "alice@web:/tmp/"), lambda name: (job, "n2", "slurm-vm"))
    assert argv[0] == "scp" and argv[-3:] == ["-r", "dir", "alice@10.0.0.10:/tmp/"]
    assert any(a.startswith("ProxyCommand=srun -u --jobid=12") for a in argv)
    with pytest.raises(SlurmVmError, match="exactly one VM"):
        scp_command(("a", "b"), lambda name: (job, "n2", "slurm-vm"))


def test_tcp_relay_copies_both_ways_until_the_server_closes():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(100)
        conn.sendall(b"got " + data)
        conn.close()
    threading.Thread(target=serve, daemon=True).start()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"hello\n")
    os.close(in_w)
    assert tcp_relay("127.0.0.1", port, in_r, out_w) == 0
    os.close(out_w)
    assert os.read(out_r, 100) == b"got hello\n"
    os.close(in_r)
    os.close(out_r)
    server.close()


def test_tcp_relay_reports_a_refused_connection(capsys):
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert tcp_relay("127.0.0.1", port) == 1
    assert "cannot connect to 127.0.0.1" in capsys.readouterr().err
