"""flow.save_files: the overlay copied beside the save when the VMM leaves its disks alone, and copied again if
the disk changed during the save all the same (real files; the snapshotter writes its state like a VMM)."""

from __future__ import annotations

import hashlib
import os
import time

from slurm_vm.checkpoint.files import seal
from slurm_vm.checkpoint.flow import save_files


class FileSnapshotter:
    vmm = "qemu"
    can_compress = False

    def __init__(self, disk: str, settled: bool, write_disk: bytes = b""):
        self.disk, self.disks_settled_when_paused, self.write_disk = disk, settled, write_disk

    def save(self, directory: str, compress: str, deadline: float):
        time.sleep(0.05)                      # the copy thread has started (or finished) by now
        if self.write_disk:
            with open(self.disk, "ab") as fh:
                fh.write(self.write_disk)
        path = os.path.join(directory, "state.bin")
        with open(path, "wb") as fh:
            fh.write(b"ram" * 1000)
        return [seal(path)]


def run(tmp_path, settled: bool, write_disk: bytes = b""):
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(os.urandom(3 << 20))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    states, overlay = save_files(FileSnapshotter(str(disk), settled, write_disk), str(ckpt), "none", str(disk))
    copied = (ckpt / "overlay.qcow2").read_bytes()
    return disk.read_bytes(), copied, overlay, states


def test_overlay_copied_beside_the_save_matches_the_disk(tmp_path):
    disk, copied, overlay, states = run(tmp_path, settled=True)
    assert copied == disk and overlay.sha256 == hashlib.sha256(disk).hexdigest() and overlay.size == len(disk)
    assert [s.name for s in states] == ["state.bin"]


def test_a_disk_written_during_the_save_is_copied_again(tmp_path):
    disk, copied, overlay, _ = run(tmp_path, settled=True, write_disk=b"late write")
    assert disk.endswith(b"late write") and copied == disk
    assert overlay.sha256 == hashlib.sha256(disk).hexdigest()


def test_a_vmm_that_writes_its_disks_in_save_is_copied_after_it(tmp_path):
    disk, copied, overlay, _ = run(tmp_path, settled=False, write_disk=b"flushed on exit")
    assert copied == disk and overlay.size == len(disk)
