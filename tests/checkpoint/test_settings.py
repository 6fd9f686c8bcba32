"""Checkpoint settings: the admin's `checkpoint` block and the spec's on_preempt/on_timeout/on_restore_failure."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from slurm_vm.config import parse_config
from slurm_vm.hypervisor.checkpoint_settings import settings_from_dict
from slurm_vm.errors import HypervisorError, ValidationError
from slurm_vm.spec import parse_spec
from slurm_vm.submit import plan_submission

CONFIG = "images:\n  deb: {path: /img/deb.qcow2, firmware: /f}\n"
WITH_CKPT = CONFIG + "checkpoint: {dir: /scratch/slurm-vm/%u, keep: 2, compress: true}\n"
OK = "name: web\nimage: deb\n"


def test_checkpoint_config_defaults_and_user_dir():
    plain = parse_config(CONFIG, "c.yaml")
    assert plain.checkpoint.dir is None and plain.checkpoint.keep == 1 and plain.checkpoint.compress == "auto"
    cfg = parse_config(WITH_CKPT, "c.yaml")
    assert cfg.checkpoint.user_dir("alice") == "/scratch/slurm-vm/alice"
    assert cfg.checkpoint.keep == 2 and cfg.checkpoint.compress == "zstd"        # true, as before zstd, compresses


@pytest.mark.parametrize("text,field", [
    (CONFIG + "checkpoint: {dir: scratch}\n", "checkpoint.dir"),
    (CONFIG + "checkpoint: {dir: /scratch/../etc}\n", "checkpoint.dir"),
    (CONFIG + "checkpoint: {dir: /scratch/shared}\n", "checkpoint.dir"),
    (CONFIG + "checkpoint: {dir: /s/%u, keep: 0}\n", "checkpoint.keep"),
    (CONFIG + "checkpoint: {dir: /s/%u, compress: maybe}\n", "checkpoint.compress"),
    (CONFIG + "checkpoint: {dir: /s/%u, compress: gzip}\n", "checkpoint.compress"),
    (CONFIG + "checkpoint: {dir: /s/%u, compress: 1}\n", "checkpoint.compress"),
    (CONFIG + "checkpoint: {path: /s/%u}\n", "checkpoint.path"),
])
def test_bad_checkpoint_config_names_the_field(text, field):
    with pytest.raises(ValidationError) as info:
        parse_config(text, "c.yaml")
    assert any(field in line for line in str(info.value).splitlines()), str(info.value)


def test_cloud_hypervisor_vms_may_checkpoint():
    spec = parse_spec(OK + "on_preempt: checkpoint\nhypervisor: cloud-hypervisor\n", "vm.yaml",
                      parse_config(WITH_CKPT, "c.yaml"))
    assert spec.checkpoints and spec.hypervisor == "cloud-hypervisor"


@pytest.mark.parametrize("text", [
    OK + "on_preempt: checkpoint\nhypervisor: cloud-hypervisor\ncount: 2\nnetworks: []\n",
])
def test_multi_vm_cloud_hypervisor_checkpoints_are_refused(text):
    with pytest.raises(ValidationError, match="on_preempt.*multi-VM jobs need `hypervisor: qemu`"):
        parse_spec(text, "vm.yaml", parse_config(WITH_CKPT, "c.yaml"))
    qemu = parse_spec(text.replace("cloud-hypervisor", "qemu"), "vm.yaml", parse_config(WITH_CKPT, "c.yaml"))
    assert qemu.count == 2


def test_spec_defaults_keep_todays_behaviour():
    spec = parse_spec(OK, "vm.yaml", parse_config(CONFIG, "c.yaml"))
    assert (spec.on_preempt, spec.on_timeout, spec.on_restore_failure) == ("shutdown", "shutdown", "fail")
    assert not spec.checkpoints


@pytest.mark.parametrize("text,field", [
    (OK + "on_preempt: save\n", "on_preempt"),
    (OK + "on_timeout: true\n", "on_timeout"),
    (OK + "on_restore_failure: retry\n", "on_restore_failure"),
])
def test_bad_checkpoint_specs_name_the_field(text, field):
    with pytest.raises(ValidationError) as info:
        parse_spec(text, "vm.yaml", parse_config(WITH_CKPT, "c.yaml"))
    assert any(line.startswith("vm.yaml") and field in line for line in str(info.value).splitlines()), \
        str(info.value)


def test_checkpoint_needs_the_sites_checkpoint_dir():
    with pytest.raises(ValidationError) as info:
        parse_spec(OK + "on_preempt: checkpoint\n", "vm.yaml", parse_config(CONFIG, "c.yaml"))
    assert "checkpoint.dir" in str(info.value) and "on_preempt" in str(info.value)


def test_checkpointing_job_is_submitted_requeueable():
    cfg = parse_config(WITH_CKPT, "c.yaml")
    text = OK + "on_timeout: checkpoint\non_restore_failure: boot\n"
    spec = parse_spec(text, "vm.yaml", cfg)
    assert spec.checkpoints and spec.on_restore_failure == "boot"
    assert "--requeue" in plan_submission(text, spec, cfg).sbatch_args
    plain = parse_spec(OK, "vm.yaml", cfg)
    assert "--requeue" not in plan_submission(OK, plain, cfg).sbatch_args


def test_plan_carries_checkpoint_settings_and_a_stable_identity():
    from slurm_vm.hypervisor.definition import VMDefinition
    from slurm_vm.node.context import JobContext
    from slurm_vm.node.plan import make_plan
    cfg = parse_config(WITH_CKPT
                       + "slurm: {bin_dir: /opt/slurm/bin}\n", "c.yaml")
    spec = parse_spec(OK + "on_preempt: checkpoint\n", "vm.yaml", cfg)
    plans = [make_plan(spec, cfg, JobContext(job_id=77, uid=4201, gid=4201, user="alice", node="n1", nodes=("n1",),
                                             cluster="c", comment="", restart_count=n)) for n in (0, 3)]
    ck = plans[1].definition.checkpoint
    assert ck.user_dir == "/scratch/slurm-vm/alice" and ck.keep == 2 and ck.compress == "zstd" and ck.restart_count == 3
    assert (ck.on_preempt, ck.on_timeout, ck.on_restore_failure) == ("checkpoint", "shutdown", "fail")
    assert ck.scontrol == "/opt/slurm/bin/scontrol" and ck.base_image == "/img/deb.qcow2"
    assert plans[1].definition.hypervisor == "qemu"
    assert plans[0].seed.meta_data == plans[1].seed.meta_data and "slurm-vm-c-77-0-0" in ck.instance_id
    again = VMDefinition.from_json(plans[1].definition.to_json())
    assert again == plans[1].definition
    plain = make_plan(parse_spec(OK, "vm.yaml", cfg), cfg, JobContext(job_id=77, uid=4201, gid=4201, user="alice",
                      node="n1", nodes=("n1",), cluster="c", comment="", restart_count=3))
    assert plain.definition.checkpoint is None and "-77-3-0" in plain.seed.meta_data


def test_multi_vm_job_checkpoints_and_each_vm_knows_its_index():
    from slurm_vm.hypervisor.checkpoint_settings import settings_from_dict
    from slurm_vm.hypervisor.definition import VMDefinition
    from slurm_vm.node.context import JobContext
    from slurm_vm.node.plan import make_plan
    cfg = parse_config(WITH_CKPT,
                       "c.yaml")
    spec = parse_spec(OK + "on_preempt: checkpoint\ncount: 3\nnetworks: []\n", "vm.yaml", cfg)
    nodes = ("n1", "n2", "n3")
    cks = [make_plan(spec, cfg, JobContext(job_id=77, uid=4201, gid=4201, user="alice", node=n, nodes=nodes,
                                           cluster="c", comment="")).definition for n in nodes]
    assert [(d.checkpoint.vm_index, d.checkpoint.vm_count) for d in cks] == [(0, 3), (1, 3), (2, 3)]
    assert VMDefinition.from_json(cks[2].to_json()) == cks[2]
    saved = asdict(cks[0].checkpoint)
    old = {k: v for k, v in saved.items() if k not in ("vm_index", "vm_count")}
    assert settings_from_dict(old).vm_count == 1          # a vm.json written before multi-VM checkpoints
    with pytest.raises(HypervisorError, match="out of range"):
        settings_from_dict({**saved, "vm_index": 3})


@pytest.mark.parametrize("fields,restarts,expected", [
    ({"JobState": "RUNNING", "PreemptTime": "2026-12-01T07:45:15", "Restarts": "0"}, 0, True),
    ({"JobState": "REQUEUED", "PreemptTime": "None", "Restarts": "1"}, 0, True),
    ({"JobState": "PENDING", "PreemptTime": "None", "Restarts": "1"}, 0, True),
    ({"JobState": "RUNNING", "PreemptTime": "None", "Restarts": "2"}, 1, True),
    ({"JobState": "CANCELLED", "PreemptTime": "None", "Restarts": "1"}, 1, False),
    ({"JobState": "RUNNING", "PreemptTime": "None", "Restarts": "0"}, 0, False),
])
def test_preemption_is_told_apart_from_scancel(fields, restarts, expected):
    from slurm_vm.slurm.requeue import job_fields, preempted
    line = "JobId=5 JobName=vm-x " + " ".join(f"{k}={v}" for k, v in fields.items()) + " Comment=slurm-vm:1:z:eJ="
    assert job_fields(line)["Comment"] == "slurm-vm:1:z:eJ="
    assert preempted(job_fields(line), restarts) is expected


@pytest.mark.parametrize("value,mode", [("auto", "auto"), ("none", "none"), ("zstd", "zstd"), (False, "none")])
def test_compress_modes_and_the_old_booleans(value, mode):
    text = CONFIG + "checkpoint: {dir: /s/%u, compress: " + json.dumps(value) + "}\n"
    assert parse_config(text, "c.yaml").checkpoint.compress == mode


@pytest.mark.parametrize("value,mode", [(True, "zstd"), (False, "none"), ("auto", "auto")])
def test_vm_json_of_an_older_prolog_with_a_boolean_compress_is_read(value, mode):
    data = {"user_dir": "/s/alice", "keep": 1, "compress": value, "on_preempt": "checkpoint",
            "on_timeout": "shutdown", "on_restore_failure": "fail", "restart_count": 0, "user": "alice",
            "image": "deb", "base_image": "/img/deb.qcow2", "instance_id": "i"}
    assert settings_from_dict(data).compress == mode
    with pytest.raises(HypervisorError):
        settings_from_dict({**data, "compress": "gzip"})
