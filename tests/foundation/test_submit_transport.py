"""Submission planning, the spec's transport inside the job, and Slurm output parsing (no Slurm needed)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from slurm_vm import transport, units
from slurm_vm.slurm.cli import SEP, parse_squeue_line

CONFIG = """
images:
  tiny: {path: /img/t.qcow2, kernel: /img/vmlinux}
networks:
  lan: {kind: bridge, bridge: br0}
hypervisor: {memory_overhead: 300M}
grace_seconds: 15
"""
SPEC = "name: web\nimage: tiny\ncpus: 3\nmemory: 1500M\ntime: '1:30:00'\nnetworks: [{network: lan}]\n"


def dry_run(tmp_path, spec: str, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "config.yaml").write_text(CONFIG)
    (tmp_path / "vm.yaml").write_text(spec)
    exe = os.path.join(os.path.dirname(sys.executable), "slurm-vm")
    return subprocess.run([exe, "submit", str(tmp_path / "vm.yaml"), "--dry-run", *extra],
                          env={**os.environ, "SLURM_VM_CONFIG": str(tmp_path / "config.yaml")},
                          capture_output=True, text=True, timeout=60)


def test_dry_run_shows_the_sbatch_arguments_and_script(tmp_path):
    proc = dry_run(tmp_path, SPEC, "--partition=vm", "--account", "proj", "-q", "high")
    assert proc.returncode == 0, proc.stderr
    command, script = proc.stdout.split("\n\n", 1)
    args = shlex.split(command)
    assert args[0] == "sbatch"
    assert "--cpus-per-task=3" in args
    assert "--mem=1800M" in args                      # 1500M guest + 300M overhead
    assert "--time=1:30:00" in args
    assert "--signal=B:USR1@75" in args               # grace 15 + 60 s of Slurm's slack
    assert "--job-name=vm-web" in args and "--nodes=1" in args
    assert args[-5:] == ["--partition=vm", "--account", "proj", "-q", "high"]
    comment = next(a for a in args if a.startswith("--comment="))[len("--comment="):]
    assert script.startswith("#!/bin/sh\n") and "exec slurm-vm launch" in script
    assert transport.spec_from_script(script, transport.parse_comment(comment)) == SPEC


def comment_and_script(tmp_path, spec: str) -> tuple[str, str]:
    proc = dry_run(tmp_path, spec)
    assert proc.returncode == 0, proc.stderr
    command, script = proc.stdout.split("\n\n", 1)
    return next(a for a in shlex.split(command) if a.startswith("--comment="))[len("--comment="):], script


def test_the_comment_says_nothing_of_the_spec(tmp_path):
    """Every user reads comments (squeue -o %k): only a salted digest goes there, never the spec, and
    the same spec submitted twice gets two unrelated digests (a guessed spec cannot be confirmed)."""
    spec = SPEC + "cloud_init:\n  user_data: '#cloud-config\n# token SECRET-TOKEN-1'\n"
    first, script = comment_and_script(tmp_path, spec)
    second, _ = comment_and_script(tmp_path, spec)
    assert first.startswith("slurm-vm:2:") and len(first) == len("slurm-vm:2:") + 64
    assert first != second
    assert transport.spec_digest(spec) not in (first, second)
    assert transport.parse_comment(first).inline is None
    assert transport.spec_from_script(script, transport.parse_comment(first)) == spec
    with pytest.raises(transport.TransportError, match="does not match"):
        transport.spec_from_script(script, transport.parse_comment(second))


def test_memory_overhead_rounds_up_to_whole_mebibytes(tmp_path):
    proc = dry_run(tmp_path, SPEC.replace("1500M", "1000001K"))
    assert "--mem=1277M" in proc.stdout   # ceil(1000001 KiB / 1024) = 977 MiB + 300


def test_large_specs_travel_in_the_script(tmp_path):
    big = SPEC + "cloud_init:\n  user_data: |\n" + "".join(f"    # line {os.urandom(16).hex()}\n" for _ in range(200))
    comment, script = comment_and_script(tmp_path, big)
    assert len(comment) <= 1024
    assert transport.spec_from_script(script, transport.parse_comment(comment)) == big


def test_multi_vm_jobs_run_one_launcher_per_node(tmp_path):
    spec = "name: vc\nimage: tiny\ncount: 3\n"
    proc = dry_run(tmp_path, spec)
    assert "--nodes=3" in proc.stdout and "--ntasks-per-node=1" in proc.stdout
    assert "exec srun --ntasks-per-node=1" in proc.stdout


@settings(max_examples=100)
@given(st.text(max_size=5000), st.binary(min_size=16, max_size=16))
def test_transport_round_trips_any_text(text, salt):
    comment = transport.encode_comment(text, salt.hex())
    assert len(comment) <= transport.MAX_COMMENT and transport.is_vm_comment(comment)
    script = transport.embed_in_script(text, salt.hex())
    assert transport.spec_from_script(script, transport.parse_comment(comment)) == text


@settings(max_examples=50)
@given(st.text(max_size=700))
def test_legacy_comments_still_read(text):
    """slurm-vm 1's forms (jobs queued before an upgrade): inline, and a plain digest with a saltless script."""
    inline = transport.legacy_inline_comment(text)
    if len(inline) <= transport.MAX_COMMENT:
        assert transport.inline_spec(inline) == text
    legacy_script = "\n".join(transport.embed_in_script(text, "00" * 16).splitlines()[1:])
    ref = transport.parse_comment("slurm-vm:1:sha256:" + transport.spec_digest(text))
    assert ref.legacy and transport.spec_from_script(legacy_script, ref) == text


def test_transport_refuses_tampering():
    salt = transport.new_salt()
    script = transport.embed_in_script("name: a\n", salt)
    with pytest.raises(transport.TransportError, match="does not match"):
        transport.spec_from_script(script, transport.parse_comment(transport.encode_comment("name: b\n", salt)))
    with pytest.raises(transport.TransportError, match="does not match"):   # another salt
        transport.spec_from_script(script, transport.parse_comment(transport.encode_comment("name: a\n", "11" * 16)))
    lines = script.splitlines()
    with pytest.raises(transport.TransportError, match="salt is damaged"):
        transport.spec_from_script("\n".join(lines[1:]), transport.parse_comment(transport.encode_comment("x", salt)))
    lines[2] = "# !!!!" + lines[2][6:]
    with pytest.raises(transport.TransportError, match="damaged"):
        transport.spec_from_script("\n".join(lines), transport.parse_comment(transport.encode_comment("x", salt)))
    with pytest.raises(transport.TransportError, match="no slurm-vm spec"):
        transport.spec_from_script("#!/bin/sh\necho hi\n", transport.SpecReference(digest="0" * 64))
    assert transport.comment_digest(transport.encode_comment("x", salt)) == transport.spec_digest("x", salt)
    with pytest.raises(transport.TransportError, match="inline"):
        transport.comment_digest(transport.legacy_inline_comment("x"))
    for bad in ("slurm-vm:1:sha256:xyz", "slurm-vm:2:xyz", "slurm-vm:2:" + "A" * 64, "slurm-vm:3:" + "0" * 64):
        with pytest.raises(transport.TransportError):
            transport.parse_comment(bad)


@given(st.integers(0, 1 << 50))
def test_sizes_round_trip(n):
    assert units.parse_size(units.format_size(n)) == n


@pytest.mark.parametrize("text,seconds", [("60", 3600), ("1:30", 90), ("2:00:00", 7200), ("1-0", 86400),
                                          ("1-2:3", 93780), ("1-00:00:01", 86401), ("unlimited", None)])
def test_slurm_times(text, seconds):
    assert units.parse_slurm_time(text) == seconds


def line(*fields: str) -> str:
    return SEP.join(fields)


def test_squeue_lines_as_slurm_prints_them():
    running = parse_squeue_line(line("42", "vm-web", "alice", "RUNNING", "n[1-3]", "6", "1800M", "5:01",
                                     "1:30:00", "2026-11-24T12:00:00", "None", "slurm-vm:1:z:abc def|x"))
    assert running.job_id == 42 and running.nodes == ("n1", "n2", "n3") and running.cpus == 6
    assert running.comment == "slurm-vm:1:z:abc def|x" and running.is_vm and running.vm_name == "web"
    pending = parse_squeue_line(line("43", "other job", "bob", "PENDING", "", "1", "1G", "0:00", "10:00", "N/A",
                                     "Priority", "(null)"))
    assert pending.nodes == () and pending.comment == "" and not pending.is_vm
    assert parse_squeue_line("garbage") is None
    assert parse_squeue_line(line("x", *["a"] * 11)) is None


@pytest.mark.parametrize("mem", ["--mem=1000M", "--mem-per-cpu=500M", "--mem=1G"])
def test_passthrough_memory_below_spec_plus_overhead_is_refused(tmp_path, mem):
    proc = dry_run(tmp_path, SPEC, mem)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip() == (
        "slurm-vm: sbatch options: --mem: the job would get "
        f"{ {'--mem=1000M': 1000, '--mem-per-cpu=500M': 1500, '--mem=1G': 1024}[mem]}M but the VM needs 1800M "
        "(memory 1500M + the site's VMM overhead 300M); leave --mem out or give --mem=1800M or more")


def test_passthrough_memory_at_least_spec_plus_overhead_goes_to_sbatch(tmp_path):
    proc = dry_run(tmp_path, SPEC, "--mem=2G")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("--mem=2G")
