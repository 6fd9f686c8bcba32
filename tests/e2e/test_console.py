"""`slurm-vm console` in a real pseudo-terminal (pexpect) against the tiny guest through Slurm."""

from __future__ import annotations

import time

import pytest

from tests.e2e.test_vm_jobs import start_tiny

pexpect = pytest.importorskip("pexpect")
pytestmark = [pytest.mark.cluster, pytest.mark.guest, pytest.mark.both_flavours]   # srun --pty, job states and reasons


def spawn(vc, *args: str, user: str = "svmtest"):
    argv = vc.slurm_vm_argv(*args, user=user)
    return pexpect.spawn(argv[0], argv[1:], timeout=90, encoding="utf-8", codec_errors="replace",
                         dimensions=(24, 100))


def attach_and_type(vc, ref: str, command: str, answer: str) -> None:
    child = spawn(vc, "console", ref)
    child.expect("detach with Ctrl-]")
    time.sleep(1)                      # let srun's pty come up before typing
    for _ in range(6):                 # Enter until the shell answers, as a person would on a loaded machine
        child.send("\r")
        if child.expect(["root@india# ", pexpect.TIMEOUT], timeout=15) == 0:
            break
    else:
        raise AssertionError(f"no shell prompt on the serial console after 90s: {child.before!r}")
    child.send(command + "\r")
    child.expect(answer)
    child.expect("root@india# ")
    child.sendcontrol("]")
    child.expect("detached from VM india; it keeps running")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_interactive_console_detach_and_reattach(vm_cluster):
    vc = vm_cluster
    job, node = start_tiny(vc, "india")
    vc.wait_serial(node, job, "SLURM-VM-GUEST-READY", timeout=120)

    attach_and_type(vc, "india", "echo $((6*7))", "\r\n42\r\n")
    assert vc.job_field(job, "%T") == "RUNNING"
    attach_and_type(vc, str(job), "echo second-$((40+2))", "second-42")

    serial = vc.serial_log(node, job)
    assert "echo $((6*7))" in serial and "\n42" in serial.replace("\r", ""), serial[-1500:]
    assert "second-42" in serial
    log = vc.slurm_vm("console", "india", "--log", "--lines", "200")
    assert log.returncode == 0 and "second-42" in log.stdout, log.stderr

    other = vc.slurm_vm("console", str(job), user="svmother")
    assert other.returncode != 0
    assert other.stderr.strip().count("\n") == 0 and "not your VM" in other.stderr, other.stderr
    other_log = vc.slurm_vm("console", str(job), "--log", user="svmother")
    assert other_log.returncode != 0 and "not your VM" in other_log.stderr, other_log.stderr

    # exec: the tiny guest runs no agent (told at once, exit code 8); another user's exec is refused in one line
    started = time.monotonic()
    no_agent = vc.slurm_vm("exec", "india", "--", "true")
    assert no_agent.returncode == 8 and no_agent.stdout == "", no_agent
    assert no_agent.stderr.strip().count("\n") == 0 and "no guest agent answers" in no_agent.stderr, no_agent.stderr
    assert time.monotonic() - started < 30
    other_exec = vc.slurm_vm("exec", str(job), "--", "cat", "/etc/shadow", user="svmother")
    assert other_exec.returncode == 4 and other_exec.stdout == "", other_exec
    assert other_exec.stderr.strip().count("\n") == 0 and "not your VM" in other_exec.stderr, other_exec.stderr
    status = vc.slurm_vm("status", "india")
    assert "Guest says:  - (no guest agent)" in status.stdout, status
    bad_vm = vc.slurm_vm("exec", "india", "--vm", "1", "--", "true")
    assert bad_vm.returncode == 2 and "has 1 VM(s)" in bad_vm.stderr, bad_vm.stderr

    # a second interactive session while one is attached is refused in one line
    first = spawn(vc, "console", "india")
    first.expect("detach with Ctrl-]")
    time.sleep(2)
    second = vc.slurm_vm("console", "india", timeout=90)
    assert second.returncode != 0 and "in use by another session" in second.stderr, second.stderr
    first.sendcontrol("]")
    first.expect(pexpect.EOF)

    vc.slurm_vm("stop", "india")
    assert vc.wait_gone_or_ended(job) == "COMPLETED", vc.output(job)
    ended = vc.slurm_vm("console", str(job))
    assert ended.returncode != 0 and "has ended (COMPLETED)" in ended.stderr, ended.stderr
    assert "acpi-shutdown" in ended.stdout and ended.stderr.strip().count("\n") == 0, ended
    vc.wait_no_leaks(job)


def test_console_of_a_pending_vm_says_why(vm_cluster):
    vc = vm_cluster
    job = vc.submit("name: juliet\nimage: tiny\nmemory: 256M\n", "--begin=now+1hour", name="juliet")
    try:
        vc.wait_state(job, {"PENDING"}, timeout=30)
        proc = vc.slurm_vm("console", "juliet")
        assert proc.returncode != 0
        assert proc.stderr.strip().startswith("slurm-vm: VM juliet is pending (reason: BeginTime)"), proc.stderr
    finally:
        vc.cluster.client(["scancel", str(job)], user="svmtest")


def test_submit_wait_and_wait_follow_the_stages_to_the_ready_line(vm_cluster):
    vc = vm_cluster
    spec_path = f"{vc.directory}/specs/kilo.yaml"
    with open(spec_path, "w") as fh:
        fh.write("name: kilo\nimage: tiny\nmemory: 256M\nnetworks:\n  - network: lan\n    address: 10.77.0.11/24\n")
    import os
    os.chmod(spec_path, 0o644)
    proc = vc.slurm_vm("submit", spec_path, f"--output={vc.directory}/out/%j.out", "--wait", "--timeout", "180",
                       timeout=200)
    assert proc.returncode == 0, proc.stderr
    job = int(proc.stdout.split("as job ")[1].split()[0])
    node = vc.job_field(job, "%N")
    assert "SLURM-VM-GUEST-READY" in vc.serial_log(node, job)   # it returned only once the line was there
    steps = [line.split("): ", 1)[1].rsplit("  [", 1)[0] for line in proc.stderr.splitlines() if "): " in line]
    assert steps[-1] == f"✓ job running → ✓ node {node} → ✓ VMM started → ✓ guest ready", proc.stderr
    assert len(steps) == len(set(steps)), proc.stderr
    assert "slurm-vm console kilo" in proc.stdout and "10.77.0.11" in proc.stdout, proc.stdout

    # the ProxyCommand `slurm-vm ssh` gives ssh, run from the login side against the guest's TCP 7777
    from slurm_vm.sshjump import proxy_command
    from slurm_vm.slurm import JobInfo
    slurm_vm = vc.slurm_vm_argv()[-1]
    command = proxy_command(JobInfo(job, "vm-kilo", "svmtest", "RUNNING"), node, slurm_vm)
    command = command.replace("%h", "10.77.0.11").replace("%p", "7777")
    relayed = vc.cluster.client(["sh", "-c", command + " </dev/null"], user="svmtest",
                                env={"SLURM_VM_CONFIG": vc.config_path}, timeout=60)
    assert relayed.stdout.strip() == "SLURM-VM-TEST ready kilo", (relayed.stdout, relayed.stderr)

    completion = vc.cluster.client([vc.slurm_vm_argv()[-1]], user="svmtest", env={
        "SLURM_VM_CONFIG": vc.config_path, "_SLURM_VM_COMPLETE": "bash_complete",
        "COMP_WORDS": "slurm-vm ssh k", "COMP_CWORD": "2"})
    assert completion.stdout.split() == ["plain,kilo"], completion.stdout + completion.stderr

    again = vc.slurm_vm("wait", "kilo", "--timeout", "60")
    assert again.returncode == 0 and f"VM kilo is ready on {node}" in again.stdout, again.stderr
    other = vc.slurm_vm("wait", str(job), user="svmother")
    assert other.returncode != 0 and "not your VM" in other.stderr, other.stderr
    vc.slurm_vm("stop", "kilo")
    vc.wait_gone_or_ended(job)
    gone = vc.slurm_vm("wait", str(job), "--timeout", "10")
    assert gone.returncode != 0 and "ended (COMPLETED) before the VM was ready" in gone.stderr, gone.stderr
    vc.wait_no_leaks(job)
