"""Checkpoint and restore through the real launcher, real QEMU (TCG) and the tiny guest's counter, as svmtest.

No Slurm here (tests/e2e/test_checkpoint.py has that): the time-limit trigger (SIGUSR1) saves, `scontrol
requeue` fails for want of a cluster (reported, not fatal), and a second launcher with the same job id
plays the requeued job on another node (another run dir).

QEMU: the host's (7.2 on bookworm) by default; `SLURM_VM_TEST_QEMU=trixie` runs every test here with QEMU 10
from the 24.11 flavour's trixie rootfs (devtools/trixie_qemu.py). The save/restore test runs on both, and a
checkpoint saved by 7.2 is refused by 10.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import tempfile
import threading
import time

import pytest

from devtools.trixie_qemu import qemu_wrapper
from slurm_vm.checkpoint.manifest import FileEntry, read_manifest, sha256_of, write_manifest
from devtools.trixie_qemu import version as qemu_version
from tests.hypervisor.test_launcher import USER, Run, finish, guest_sandbox, remove_guest_sandbox

pytestmark = [pytest.mark.root, pytest.mark.guest]
COUNT = re.compile(r"SLURM-VM-TEST count=(\d+) boot_id=(\S+) uptime=([\d.]+)")
HOST_QEMU = "/usr/bin/qemu-system-x86_64"
DEFAULT_QEMU = os.environ.get("SLURM_VM_TEST_QEMU", "host")      # host | trixie


def entries(jdir: str) -> list[str]:
    """A job's checkpoint dir without its save lock (`.saving`)."""
    return sorted(n for n in os.listdir(jdir) if not n.startswith("."))


def counters(serial: str) -> list[tuple[int, str, float]]:
    return [(int(n), b, float(u)) for n, b, u in COUNT.findall(serial)]


def checkpointing(run: Run, ckpt_root: str, restart: int, fallback: str = "fail", compress: bool = False) -> None:
    """Give the run a root overlay and a checkpoint block, as the prolog does for `on_timeout: checkpoint`."""
    path = os.path.join(run.dir, "vm.json")
    with open(path) as fh:
        definition = json.load(fh)
    base = os.path.join(os.path.dirname(run.base), "base.qcow2")
    if not os.path.exists(base):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"], check=True)
        os.chmod(base, 0o644)
    overlay = os.path.join(run.dir, "overlay.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay], check=True)
    definition["hypervisor"] = "qemu"
    definition["disks"].insert(0, {"path": overlay, "format": "qcow2", "readonly": False, "role": "root",
                                   "backing": True})
    definition["checkpoint"] = {
        "user_dir": os.path.join(ckpt_root, USER), "keep": 1, "compress": compress, "on_preempt": "checkpoint",
        "on_timeout": "checkpoint", "on_restore_failure": fallback, "restart_count": restart, "user": USER,
        "image": "tiny", "base_image": base, "instance_id": "iid-launcher-test", "scontrol": "/bin/false",
        "command_timeout": 5}
    with open(path, "w") as fh:
        json.dump(definition, fh)
    uid = int(subprocess.run(["id", "-u", USER], capture_output=True, text=True).stdout)
    for name in ("vm.json", "overlay.qcow2"):
        os.chown(os.path.join(run.dir, name), uid, uid)


@pytest.fixture
def make_run():
    """Like tests/hypervisor/test_launcher.py's fixture, but each run is given its checkpoint block before it
    starts; runs share the netns (one tap) and so must run one after the other."""
    base, netns = guest_sandbox("svm-ckpt-", "ck")
    procs: list[subprocess.Popen] = []
    os.mkdir(os.path.join(base, "ckpt"), 0o1777)
    os.chmod(os.path.join(base, "ckpt"), 0o1777)

    def qemu(which: str) -> str:
        return HOST_QEMU if which == "host" else qemu_wrapper(base)

    def make(ckpt_root: str, restart: int, qemu_from: str = DEFAULT_QEMU, **kw) -> tuple[Run, subprocess.Popen]:
        home = tempfile.mkdtemp(dir=base)
        os.chmod(home, 0o755)
        run = Run(home, netns, cmdline_extra="svmtest.counter", cpus=1, qemu=qemu(qemu_from))
        checkpointing(run, ckpt_root, restart, **kw)
        procs.append(run.start())
        return run, procs[-1]

    make.ckpt_root = os.path.join(base, "ckpt")
    make.qemu = qemu
    yield make
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    remove_guest_sandbox(base, netns)


def start(make_run, ckpt_root: str, restart: int, **kw):
    return make_run(ckpt_root, restart, **kw)


@pytest.fixture
def ckpt_root(make_run):
    return make_run.ckpt_root


def wait_serial(run: Run, proc, marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker not in run.serial():
        if proc.poll() is not None:
            raise AssertionError(f"launcher exited ({proc.returncode}):\n{proc.stdout.read()}")
        assert time.monotonic() < deadline, f"{marker!r} not seen:\n{run.serial()[-1500:]}"
        time.sleep(0.3)


def save_on_time_limit(run: Run, proc) -> tuple[int, str, list]:
    wait_serial(run, proc, "count=3", timeout=120)
    os.kill(run.launcher_pid(), signal.SIGUSR1)
    code, out = finish(proc, timeout=240)
    return code, out, counters(run.serial())


def as_old_gzip_checkpoint(path: str) -> None:
    """The zstd checkpoint in `path` as slurm-vm wrote it with gzip (`compress: true` before zstd)."""
    zst, gz = os.path.join(path, "state.bin.zst"), os.path.join(path, "state.bin.gz")
    st = os.stat(zst)
    with open(gz, "wb") as out:
        unzstd = subprocess.Popen(["zstd", "-dcq", zst], stdout=subprocess.PIPE)
        subprocess.run(["gzip", "-c", "-1"], stdin=unzstd.stdout, stdout=out, check=True)
        assert unzstd.wait() == 0
    os.chown(gz, st.st_uid, st.st_gid)
    os.chmod(gz, 0o600)
    os.unlink(zst)
    old = read_manifest(path, st.st_uid)
    size, digest = sha256_of(gz)
    write_manifest(path, dataclasses.replace(old, states=(FileEntry("state.bin.gz", size, digest),)))
    os.chown(os.path.join(path, "manifest.json"), st.st_uid, st.st_gid)


@pytest.mark.parametrize("qemu_from", ["host", "trixie"])
def test_time_limit_saves_and_the_next_run_continues_the_same_boot(make_run, ckpt_root, qemu_from):
    """The same QMP command set on QEMU 7.2 (bookworm, the host) and QEMU 10 (trixie). The save is zstd
    (`compress: true`); on the host the checkpoint is then turned into the gzip one slurm-vm wrote before zstd
    (state.bin.gz, its manifest rewritten), which must restore too."""
    run, proc = start(make_run, ckpt_root, restart=0, compress=True, qemu_from=qemu_from)
    code, out, before = save_on_time_limit(run, proc)
    assert code == 8, out
    assert "checkpoint " in out and "written" in out and "could not requeue" in out, out
    jdir = os.path.join(ckpt_root, USER, "job-9")
    (ckpt,) = entries(jdir)
    assert sorted(os.listdir(os.path.join(jdir, ckpt))) == ["manifest.json", "overlay.qcow2", "state.bin.zst"]

    manifest = json.load(open(os.path.join(jdir, ckpt, "manifest.json")))
    assert manifest["vmm_version"] == qemu_version(make_run.qemu(qemu_from)), manifest
    # The tiny guest has no agent: saved crash-consistent, said at once (QMP: the port was never opened), and so
    # recorded; no sync timeout is waited for.
    assert manifest["guest_frozen"] is False and "not freezing the guest's filesystems (no guest agent" in out, out

    assert manifest["compressed"] is True and manifest["states"][0]["name"] == "state.bin.zst"
    if qemu_from == "host":
        as_old_gzip_checkpoint(os.path.join(jdir, ckpt))

    run2, proc2 = start(make_run, ckpt_root, restart=1, qemu_from=qemu_from)
    wait_serial(run2, proc2, f"count={before[-1][0] + 3}", timeout=180)
    after = counters(run2.serial())
    assert after[0][0] > before[-1][0] >= 3 and after[0][0] <= before[-1][0] + 3, (before[-3:], after[:3])
    assert {b for _, b, _ in after} == {before[0][1]}                # same boot
    assert after[0][2] > before[-1][2]                               # uptime went on
    assert not os.path.exists(jdir)                                  # restored: its checkpoint is gone
    os.kill(run2.launcher_pid(), signal.SIGTERM)                     # scontrol fails: plain shutdown
    code, out = finish(proc2, timeout=120)
    assert code == 3 and "restored from" in out and "taking SIGTERM as a scancel" in out, out


def test_damaged_checkpoint_is_refused_and_kept_or_booted_afresh(make_run, ckpt_root):
    run, proc = start(make_run, ckpt_root, restart=0)
    code, out, before = save_on_time_limit(run, proc)
    assert code == 8, out
    jdir = os.path.join(ckpt_root, USER, "job-9")
    state = os.path.join(jdir, entries(jdir)[0], "state.bin")
    with open(state, "r+b") as fh:
        fh.seek(os.path.getsize(state) // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x10]))

    run2, proc2 = start(make_run, ckpt_root, restart=1)
    code, out = finish(proc2, timeout=240)
    assert code == 9 and "state.bin does not match its sha256" in out and "checkpoint stays" in out, out
    assert os.path.exists(state)

    run3, proc3 = start(make_run, ckpt_root, restart=1, fallback="boot")
    wait_serial(run3, proc3, "count=2", timeout=180)
    assert counters(run3.serial())[0][1] != before[0][1]             # a new boot
    os.kill(run3.launcher_pid(), signal.SIGUSR2)
    code, out = finish(proc3, timeout=120)
    assert "booting the VM afresh" in out and code == 0, out
    assert os.path.exists(state)


def test_vmm_killed_during_a_save_leaves_the_previous_checkpoint(make_run, ckpt_root):
    run, proc = start(make_run, ckpt_root, restart=0)
    code, out, first = save_on_time_limit(run, proc)
    assert code == 8, out
    jdir = os.path.join(ckpt_root, USER, "job-9")
    (kept,) = entries(jdir)

    # A second run of the job (one that did not restore) is saved, and its VMM dies during the save.
    run2, proc2 = start(make_run, ckpt_root, restart=0)
    wait_serial(run2, proc2, "count=3", timeout=120)
    qemu, launcher = run2.pid("vmm.pid"), run2.launcher_pid()
    os.kill(launcher, signal.SIGUSR1)
    deadline = time.monotonic() + 60
    while len(entries(jdir)) < 2:
        assert time.monotonic() < deadline, entries(jdir)
        time.sleep(0.01)
    os.kill(qemu, signal.SIGKILL)
    time.sleep(3)
    os.kill(launcher, signal.SIGTERM)     # after a failed save the launcher waits for the time limit's SIGTERM
    code, out = finish(proc2, timeout=120)
    assert "checkpoint failed" in out, out
    unfinished = sorted(entries(jdir))[-1]
    assert "manifest.json" not in os.listdir(os.path.join(jdir, unfinished))

    run3, proc3 = start(make_run, ckpt_root, restart=1)
    wait_serial(run3, proc3, f"count={first[-1][0] + 2}", timeout=180)
    after = counters(run3.serial())
    assert after[0][1] == first[0][1] and after[0][0] > first[-1][0], (first[-2:], after[:2])
    os.kill(run3.launcher_pid(), signal.SIGUSR2)
    code, out = finish(proc3, timeout=120)
    assert f"{kept}" in out and "restored from" in out, out


def test_checkpoint_of_qemu_7_2_is_refused_by_qemu_10(make_run, ckpt_root):
    """A node with another QEMU (here 10.0 from trixie) refuses a checkpoint saved by 7.2, and keeps it."""
    run, proc = start(make_run, ckpt_root, restart=0, qemu_from="host")
    code, out, _ = save_on_time_limit(run, proc)
    assert code == 8, out
    jdir = os.path.join(ckpt_root, USER, "job-9")
    (ckpt,) = entries(jdir)
    old, new = qemu_version(HOST_QEMU), qemu_version(make_run.qemu("trixie"))
    assert old.split(".")[0] != new.split(".")[0], (old, new)

    run2, proc2 = start(make_run, ckpt_root, restart=1, qemu_from="trixie")
    code, out = finish(proc2, timeout=240)
    assert code == 9, out
    assert f"it was saved by qemu {old}, this node runs qemu {new}" in out and "checkpoint stays" in out, out
    assert "manifest.json" in os.listdir(os.path.join(jdir, ckpt))


# -- slurm-vm checkpoint (the launcher's control socket; the client and Slurm are in test_checkpoint_command.py) --

def ask_checkpoint(run: Run, out: list, stop: bool = False) -> threading.Thread:
    """The request the node relay sends (root may ask too: the socket admits its user and root)."""
    from slurm_vm.hypervisor.control_socket import ask
    thread = threading.Thread(target=lambda: out.append(ask(os.path.join(run.dir, "control.sock"),
                                                            {"op": "checkpoint", "stop": stop}, 300)))
    thread.start()
    return thread


def test_manual_checkpoint_resumes_the_guest_and_stays(make_run, ckpt_root):
    run, proc = start(make_run, ckpt_root, restart=0)
    wait_serial(run, proc, "count=3", timeout=120)
    answers: list[dict] = []
    ask_checkpoint(run, answers).join(timeout=300)
    (answer,) = answers
    assert answer["ok"] and answer["resumed"] and not answer["ended"], answer
    seen = counters(run.serial())
    wait_serial(run, proc, f"count={seen[-1][0] + 3}", timeout=120)
    counts = [n for n, _, _ in counters(run.serial()) if n > 0]
    assert counts == list(range(counts[0], counts[-1] + 1)) and len({b for _, b, _ in counters(run.serial())}) == 1
    os.kill(run.launcher_pid(), signal.SIGUSR2)
    code, out = finish(proc, timeout=120)
    assert code == 0 and "the guest continues (paused" in out, out
    (kept,) = entries(os.path.join(ckpt_root, USER, "job-9"))      # a manual checkpoint stays
    assert os.path.join(ckpt_root, USER, "job-9", kept) == answer["path"]


def test_a_stop_signal_during_a_manual_save_still_ends_in_a_valid_checkpoint(make_run, ckpt_root):
    """SIGUSR1 (the time-limit warning: on_timeout: checkpoint) as soon as the manual save has begun. Either the
    save was still running (the job ends with it, no second save) or it had just finished (the guest resumed,
    then the signal's own save): in both cases the run ends checkpointed and the next run continues the guest."""
    run, proc = start(make_run, ckpt_root, restart=0)
    wait_serial(run, proc, "count=3", timeout=120)
    jdir = os.path.join(ckpt_root, USER, "job-9")
    answers: list[dict] = []
    thread = ask_checkpoint(run, answers)
    deadline = time.monotonic() + 60
    while not (os.path.isdir(jdir) and entries(jdir)):
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(run.launcher_pid(), signal.SIGUSR1)
    thread.join(timeout=300)
    code, out = finish(proc, timeout=240)
    (answer,) = answers
    assert code == 8 and answer["ok"], (answer, out)
    assert answer.get("because") == "timeout" or ("the guest continues (paused" in out and "timeout: pausing" in out), \
        (answer, out)
    before = counters(run.serial())
    run2, proc2 = start(make_run, ckpt_root, restart=1)
    wait_serial(run2, proc2, f"count={before[-1][0] + 2}", timeout=180)
    after = counters(run2.serial())
    assert after[0][1] == before[0][1] and before[-1][0] < after[0][0] <= before[-1][0] + 3, (before[-2:], after[:2])
    os.kill(run2.launcher_pid(), signal.SIGUSR2)
    code, out = finish(proc2, timeout=120)
    assert code == 0 and "restored from" in out, out
