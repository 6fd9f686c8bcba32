"""The launcher with real QEMU (TCG) and the tiny test guest, as the unprivileged user svmtest.

Each test gets a network namespace with a bridge and a tap owned by svmtest, and a private mount
namespace where a 0666 /dev/net/tun stands in for Debian's default (it is 0600 on these machines).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

from devtools.vmcluster import GUEST_CACHE
from slurm_vm.disks.seed import build_seed_iso
from slurm_vm.node.cloudinit import render_meta_data

pytestmark = [pytest.mark.root, pytest.mark.guest]
USER = "svmtest"
MAC = "02:00:00:00:10:01"


def guest() -> dict:
    path = os.path.join(GUEST_CACHE, "guests.json")
    if not os.path.exists(path):
        pytest.skip("test guests not built: scripts/build-test-guests")
    return json.load(open(path))["tiny"]


class Run:
    def __init__(self, base: str, netns: str, cmdline_extra: str = "", cpus: int = 2, grace: int = 4,
                 qemu: str = "/usr/bin/qemu-system-x86_64"):
        self.base, self.netns = base, netns
        self.dir = os.path.join(base, "run")
        os.makedirs(self.dir)
        tiny = guest()
        net = f"version: 2\nethernets:\n  eth0:\n    match:\n      macaddress: '{MAC}'\n    addresses:\n    - 10.66.0.2/24\n"
        with open(os.path.join(self.dir, "seed.iso"), "wb") as fh:
            fh.write(build_seed_iso(render_meta_data("iid-launcher-test", "lguest"), "#cloud-config\n{}\n", net))
        definition = {
            "job_id": 9, "name": "lguest", "cpus": cpus, "memory_bytes": 256 << 20, "hypervisor": "auto",
            "accelerator": "auto",
            "boot": {"kernel": tiny["kernel"], "initrd": tiny["initrd"],
                     "cmdline": (tiny["cmdline"] + " " + cmdline_extra).strip(), "firmware": None},
            "disks": [{"path": os.path.join(self.dir, "seed.iso"), "format": "raw", "readonly": True,
                       "role": "seed", "backing": False}],
            "nics": [{"mac": MAC, "tap": "svm9n0", "device": None}],
            "run_dir": self.dir, "grace_seconds": grace, "qemu_binary": qemu,
            "cloud_hypervisor_binary": "/nonexistent/cloud-hypervisor"}
        with open(os.path.join(self.dir, "vm.json"), "w") as fh:
            json.dump(definition, fh)
        uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
        for name in os.listdir(self.dir):
            os.chown(os.path.join(self.dir, name), uid, uid)
        os.chown(self.dir, uid, uid)
        self.tun = os.path.join(base, "tun")
        os.mknod(self.tun, stat.S_IFCHR | 0o666, os.makedev(10, 200))
        os.chmod(self.tun, 0o666)

    def start(self) -> subprocess.Popen:
        script = (f"mount --bind {self.tun} /dev/net/tun && exec setpriv --reuid={USER} --regid={USER} "
                  f"--clear-groups {sys.executable} -m slurm_vm.launcher {self.dir}/vm.json")
        return subprocess.Popen(["nsenter", f"--net=/run/netns/{self.netns}", "unshare", "--mount",
                                 "--propagation", "private", "sh", "-c", script],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

    def serial(self) -> str:
        try:
            return open(os.path.join(self.dir, "serial.log"), errors="replace").read()
        except FileNotFoundError:
            return ""

    def wait_serial(self, marker: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.serial():
            assert time.monotonic() < deadline, f"{marker!r} not seen:\n{self.serial()[-1500:]}"
            time.sleep(0.2)

    def pid(self, name: str) -> int:
        return int(open(os.path.join(self.dir, name)).read())

    def launcher_pid(self) -> int:
        """The launcher runs under setpriv, which execs: the Popen pid is the launcher's."""
        return self.pid("launcher.pid")


def guest_sandbox(prefix: str, netns_prefix: str) -> tuple[str, str]:
    """A scratch dir under /var/tmp and a netns with bridge br0 and the user's tap svm9n0 on it."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    subprocess.run(["id", USER], check=True, capture_output=True)
    base = tempfile.mkdtemp(prefix=prefix, dir="/var/tmp")
    os.chmod(base, 0o755)
    netns = f"{netns_prefix}{os.path.basename(base)[-6:]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    for cmd in (["link", "add", "br0", "type", "bridge"], ["addr", "add", "10.66.0.1/24", "dev", "br0"],
                ["link", "set", "br0", "up"], ["tuntap", "add", "svm9n0", "mode", "tap", "user", USER, "vnet_hdr"],
                ["link", "set", "svm9n0", "master", "br0", "up"]):
        subprocess.run(["ip", "-n", netns, *cmd], check=True)
    return base, netns


def remove_guest_sandbox(base: str, netns: str) -> None:
    subprocess.run(["pkill", "-9", "-f", base], check=False)
    subprocess.run(["ip", "netns", "del", netns], check=False)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def make_run():
    base, netns = guest_sandbox("svm-launch-", "th")
    runs: list[tuple[Run, subprocess.Popen]] = []

    def make(**kw) -> tuple[Run, subprocess.Popen]:
        run = Run(base if not runs else tempfile.mkdtemp(dir=base), netns, **kw)
        proc = run.start()
        runs.append((run, proc))
        return run, proc

    yield make
    for run, proc in runs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    remove_guest_sandbox(base, netns)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def read_until(proc: subprocess.Popen, text: str, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} not printed:\n{''.join(lines)}")


def assert_no_vmm_besides_the_launcher(run: Run) -> None:
    left = subprocess.run(["pgrep", "-a", "-f", run.dir], capture_output=True, text=True).stdout.splitlines()
    assert [line for line in left if "slurm_vm.launcher" not in line] == [], left


def assert_no_qemu(run: Run) -> None:
    left = subprocess.run(["pgrep", "-f", run.dir], capture_output=True, text=True).stdout.split()
    assert left == [], left


def test_pinned_guest_with_seed_stops_gracefully_on_sigterm(make_run):
    run, proc = make_run()
    run.wait_serial("SLURM-VM-TEST ready")
    assert "SLURM-VM-TEST instance-id=iid-launcher-test" in run.serial()
    qemu = run.pid("vmm.pid")
    pinned = {}
    for tid in os.listdir(f"/proc/{qemu}/task"):
        comm = open(f"/proc/{qemu}/task/{tid}/comm").read().strip()
        if comm.startswith("CPU "):
            status = open(f"/proc/{qemu}/task/{tid}/status").read()
            pinned[comm] = next(l.split(":")[1].strip() for l in status.splitlines()
                                if l.startswith("Cpus_allowed_list"))
    assert pinned == {"CPU 0/TCG": "0", "CPU 1/TCG": "1"}
    ping = subprocess.run(["ip", "netns", "exec", run.netns, "ping", "-c1", "-W3", "10.66.0.2"], capture_output=True)
    assert ping.returncode == 0
    os.kill(run.launcher_pid(), signal.SIGTERM)
    code, out = finish(proc)
    assert code == 3, out
    assert "SLURM-VM-TEST acpi-shutdown" in run.serial()
    assert_no_qemu(run)


def test_serial_console_socket_is_private_and_logged(make_run):
    """The guest's root shell answers on the serial socket; the session is in the serial log too."""
    from devtools.serialconsole import SerialConsole
    run, proc = make_run(cpus=1)
    run.wait_serial("SLURM-VM-GUEST-READY")
    path = os.path.join(run.dir, "serial.sock")
    info = os.stat(path)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077 == 0  # the user's only
    assert info.st_uid == int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
    with SerialConsole(path) as console:
        assert console.run("echo $((6*7))") == "42"
        assert console.run("hostname") == "lguest"
    with SerialConsole(path) as console:  # a second session after the first one left
        assert console.run("echo again-$((1+1))") == "again-2"
    run.wait_serial("again-2")
    assert "42" in run.serial() and "echo $((6*7))" in run.serial()
    os.kill(run.launcher_pid(), signal.SIGUSR2)
    assert finish(proc)[0] == 0
    assert_no_qemu(run)


def test_sigusr2_is_a_clean_stop(make_run):
    run, proc = make_run(cpus=1)
    run.wait_serial("SLURM-VM-TEST ready")
    os.kill(run.launcher_pid(), signal.SIGUSR2)
    code, out = finish(proc)
    assert code == 0, out
    assert "SLURM-VM-TEST acpi-shutdown" in run.serial()
    assert_no_qemu(run)


def test_guest_ignoring_acpi_is_hard_stopped(make_run):
    run, proc = make_run(cmdline_extra="svmtest.noacpi", cpus=1, grace=3)
    run.wait_serial("SLURM-VM-TEST ready")
    started = time.monotonic()
    os.kill(run.launcher_pid(), signal.SIGUSR1)
    lines = read_until(proc, "waiting for Slurm to end the job at its time limit")
    assert 3 <= time.monotonic() - started < 15
    assert any("hard-stopped" in line for line in lines), lines
    # After 2 s of ignored presses the agent is asked; the tiny guest has none: one line, no delay to the hard stop.
    assert any("its guest agent cannot be asked (no guest agent answers" in line for line in lines), lines
    assert_no_vmm_besides_the_launcher(run)
    os.kill(run.launcher_pid(), signal.SIGTERM)   # Slurm, at the time limit
    code, out = finish(proc)
    assert code == 4, out
    assert "acpi-shutdown" not in run.serial()


def test_time_limit_warning_shuts_down_then_waits_for_the_limit(make_run):
    """SIGUSR1 (sbatch --signal=B:USR1@…) powers the guest off, then the launcher lives on until Slurm's
    SIGTERM at the time limit, so that the job ends TIMEOUT rather than FAILED."""
    run, proc = make_run(cpus=1)
    run.wait_serial("SLURM-VM-TEST ready")
    os.kill(run.launcher_pid(), signal.SIGUSR1)
    read_until(proc, "waiting for Slurm to end the job at its time limit")
    assert "SLURM-VM-TEST acpi-shutdown" in run.serial()
    assert_no_vmm_besides_the_launcher(run)
    time.sleep(2)
    assert proc.poll() is None
    os.kill(run.launcher_pid(), signal.SIGTERM)
    code, out = finish(proc, timeout=10)
    assert code == 3, out


def test_guest_powering_off_by_itself(make_run):
    run, proc = make_run(cmdline_extra="svmtest.poweroff=2", cpus=1)
    code, out = finish(proc, timeout=90)
    assert code == 0, out
    assert "SLURM-VM-TEST self-poweroff" in run.serial()
    assert_no_qemu(run)


def test_hypervisor_killed_is_a_crash(make_run):
    run, proc = make_run(cpus=1)
    run.wait_serial("SLURM-VM-TEST ready")
    os.kill(run.pid("vmm.pid"), signal.SIGKILL)
    code, out = finish(proc)
    assert code == 5, out
    assert "crash" in out
    assert_no_qemu(run)


def test_second_launcher_for_the_same_job_refuses(make_run):
    run, proc = make_run(cpus=1)
    run.wait_serial("SLURM-VM-TEST ready")
    second = run.start()
    code, out = finish(second, timeout=30)
    assert code == 7, out
    assert "another launcher" in out
    assert len(subprocess.run(["pgrep", "-f", f"qemu.*{run.dir}"], capture_output=True, text=True).stdout.split()) == 1
    os.kill(run.launcher_pid(), signal.SIGTERM)
    assert finish(proc)[0] == 3
    assert_no_qemu(run)


def test_more_vcpus_than_cores_is_refused(make_run):
    run, proc = make_run(cpus=os.cpu_count() + 1)
    code, out = finish(proc)
    assert code == 7 and "--cpus-per-task" in out, out


def test_hypervisor_that_cannot_start_reports_why(make_run):
    run, proc = make_run(cpus=1, qemu="/bin/false")
    code, out = finish(proc)
    assert code == 6, out
    assert "failed to start" in out
    assert_no_qemu(run)
