"""The job's memory limit from its cgroup (v1 and v2 trees as the kernel lays them out) and the refusals."""

from __future__ import annotations


import pytest

from slurm_vm.errors import NotEnoughMemory
from slurm_vm.hypervisor.memlimit import cgroup_memory_limit, check_memory
from slurm_vm.submit import passthrough_memory_mib, slurm_size_mib

M = 1 << 20


def write(path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_limit_is_the_smallest_from_step_up_to_the_root(tmp_path):
    mem = tmp_path / "memory" / "slurm_n1" / "uid_4201" / "job_7"
    write(tmp_path / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(mem / "memory.limit_in_bytes", f"{300 * M}\n")
    write(mem / "step_batch" / "memory.limit_in_bytes", "9223372036854771712\n")
    write(tmp_path / "cg", "9:cpuset:/slurm_n1/uid_4201/job_7/step_batch\n"
                           "4:memory:/slurm_n1/uid_4201/job_7/step_batch\n0::/\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path)) == 300 * M


def test_v2_limit_and_max_means_none(tmp_path):
    job = tmp_path / "system.slice" / "slurmstepd.scope" / "job_7"
    write(job / "memory.max", f"{512 * M}\n")
    write(job / "step_batch" / "memory.max", "max\n")
    write(tmp_path / "cg", "0::/system.slice/slurmstepd.scope/job_7/step_batch\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path)) == 512 * M
    write(job / "memory.max", "max\n")
    assert cgroup_memory_limit(str(tmp_path / "cg"), str(tmp_path)) is None
    assert cgroup_memory_limit(str(tmp_path / "missing"), str(tmp_path)) is None


def test_a_vm_that_does_not_fit_is_refused_naming_both_numbers():
    with pytest.raises(NotEnoughMemory) as exc:
        check_memory(256 * M, 320 * M, 200 * M)
    assert "may use 200 MiB" in str(exc.value) and "needs 576 MiB" in str(exc.value)
    assert "--mem=576M" in str(exc.value)
    check_memory(256 * M, 320 * M, 576 * M)
    check_memory(256 * M, 320 * M, None)


def test_this_process_limit_reads_without_error():
    limit = cgroup_memory_limit()
    assert limit is None or limit > 0


@pytest.mark.parametrize("args, cpus, mib", [
    ((), 1, None), (("--mem=2G",), 1, 2048), (("--mem", "700"),  1, 700), (("--mem-per-cpu=300M",), 2, 600),
    (("--mem=0",), 1, None), (("--mem=lots",), 1, None), (("--mem=1G", "--mem=3G"), 1, 3072),
    (("--mem=1048576K",), 1, 1024), (("--memory-bind=local",), 1, None),
])
def test_passthrough_memory(args, cpus, mib):
    assert passthrough_memory_mib(args, cpus) == mib


def test_slurm_sizes():
    assert slurm_size_mib("1T") == 1 << 20 and slurm_size_mib("5") == 5 and slurm_size_mib("") is None
