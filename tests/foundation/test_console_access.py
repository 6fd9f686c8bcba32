"""Pure parts of console/ssh access: the launcher's console tail in a job output, scontrol's StdOut, the
node relay's byte copying and detach key over a real socket pair and pipes."""

from __future__ import annotations

import os
import socket
import threading

from slurm_vm.console import RelayExit, copy_both_ways, relay_argv
from slurm_vm.slurm.cli import stdout_of_show_job
from slurm_vm.vmaccess import serial_lines_of_output

OUTPUT = """slurm-vm launch: starting VM india with qemu (tcg), 1 vCPU(s), 256 MiB
slurm-vm launch: the guest shut down after USR2 (exit code 0)
slurm-vm launch: last 3 lines of the guest's serial console:
  | SLURM-VM-TEST ready
  | 
  | SLURM-VM-TEST acpi-shutdown
"""


def test_console_lines_are_found_in_the_job_output():
    assert serial_lines_of_output(OUTPUT.splitlines()) == ["SLURM-VM-TEST ready", "", "SLURM-VM-TEST acpi-shutdown"]
    assert serial_lines_of_output(["no console here"]) == []


def test_stdout_of_scontrol_show_job():
    line = "JobId=7 JobName=vm-india UserId=svmtest(4201) JobState=COMPLETED StdErr=/o/7.out StdIn=/dev/null " \
           "StdOut=/o/7.out Power="
    assert stdout_of_show_job(line) == "/o/7.out"
    assert stdout_of_show_job("JobId=7 StdOut=") is None


def test_relay_argv_runs_the_node_end_inside_the_job():
    argv = relay_argv(7, "n2", "/opt/v/bin/slurm-vm")
    assert argv[:4] == ["srun", "--jobid=7", "--overlap", "--pty"] and "--nodelist=n2" in argv
    assert argv[-3:] == ["/opt/v/bin/slurm-vm", "console-relay", "7"]


def run_relay(typed: bytes, guest_says: bytes = b"") -> tuple[int, bytes, bytes]:
    vm_end, relay_end = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    vm_end.sendall(guest_says)
    os.write(in_w, typed)
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=copy_both_ways(relay_end, in_r, out_w)))
    thread.start()
    thread.join(timeout=5)
    os.close(out_w)
    vm_end.settimeout(1)
    try:
        to_vm = vm_end.recv(4096)
    except socket.timeout:
        to_vm = b""
    shown = os.read(out_r, 4096)
    for fd in (in_r, in_w, out_r):
        os.close(fd)
    vm_end.close()
    relay_end.close()
    return result["code"], to_vm, shown


def test_detach_key_ends_the_relay_and_is_not_sent_to_the_guest():
    code, to_vm, shown = run_relay(b"ls\r\x1dafter", b"hello\r\n")
    assert code == RelayExit.DETACHED and to_vm == b"ls\r"
    assert shown in (b"", b"hello\r\n")


def test_guest_end_ends_the_relay():
    vm_end, relay_end = socket.socketpair()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    vm_end.sendall(b"bye\r\n")
    vm_end.close()
    assert copy_both_ways(relay_end, in_r, out_w) == RelayExit.VM_ENDED
    assert os.read(out_r, 100) == b"bye\r\n"
    for fd in (in_r, in_w, out_r, out_w):
        os.close(fd)
    relay_end.close()
