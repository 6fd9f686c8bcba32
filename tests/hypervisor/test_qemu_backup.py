"""The QMP steps of `slurm-vm image save` (launcher/qemu_backup.py); the real copy runs in
tests/e2e/test_user_images.py::test_save_a_running_vm_and_boot_the_copy."""

from __future__ import annotations

from slurm_vm.hypervisor.registry import HYPERVISORS, disk_saver_class
from slurm_vm.launcher import qemu_backup as qb


def test_the_copy_is_a_full_flattened_backup_into_a_plain_qcow2_node():
    (add, args_add), (backup, args_backup) = qb.start_commands("/repo/alice/.x.part.qcow2")
    assert add == "blockdev-add" and args_add["file"] == {"driver": "file", "filename": "/repo/alice/.x.part.qcow2"}
    assert "backing" not in args_add and args_add["driver"] == "qcow2"
    assert backup == "blockdev-backup" and args_backup["sync"] == "full" and args_backup["device"] == qb.ROOT_DRIVE
    assert args_backup["auto-dismiss"] is False          # its error stays readable in query-jobs
    assert [name for name, _ in qb.end_commands()] == ["job-dismiss", "blockdev-del"]


def test_job_state_reads_our_job_only():
    jobs = [{"id": "other", "status": "running"}, {"id": qb.NODE, "status": "concluded", "error": "No space left"}]
    assert qb.job_state(jobs) == ("concluded", "No space left")
    assert qb.job_state(jobs[:1]) == ("gone", None)


def test_only_hypervisors_with_a_disk_saver_can_save():
    savers = {name: disk_saver_class(name) for name in HYPERVISORS}
    assert any(cls is qb.QemuDiskSaver for cls in savers.values())
    assert any(cls is None for cls in savers.values())
