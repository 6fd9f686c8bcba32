"""A VM spec is private to its owner and root (issue 20): real Slurm daemons, users svmtest and svmother.

svmtest submits a held VM job (no guest boots: the point is what Slurm shows) whose spec carries markers
in its user data, paths, addresses, MAC and image. svmother reads the job with squeue, scontrol and
sacct, as any user can, and finds none of them, not even after decoding every base64/zlib token it sees (slurm-vm 1
put the whole spec in the comment that way). svmtest's own `slurm-vm list` and `status` still show the
spec's static address: the owner reads the spec from the job's batch script, which Slurm gives only to
the owner and root.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import re
import secrets
import time
import zlib

import pytest

from devtools.vmcluster import checkpoint_root

pytestmark = [pytest.mark.cluster, pytest.mark.both_flavours]

OWNER, OTHER = "svmtest", "svmother"
ADDRESS = "10.213.47.9"
MAC = "52:54:00:9a:7b:3c"
IMAGE = "tiny-counter"


def private_spec(mark: str) -> tuple[str, list[str]]:
    """A spec with markers in every private part, and the strings no other user may see."""
    secrets_seen = [f"{mark}-userdata", f"{mark}-source", f"{mark}-target", f"{mark}-volume", ADDRESS, MAC,
                    MAC.replace(":", ""), IMAGE]
    spec = (f"name: privweb\nimage: {IMAGE}\nmemory: 256M\n"
            f"networks:\n  - network: lan\n    address: {ADDRESS}/24\n    mac: '{MAC}'\n"
            f"mounts:\n  - {{source: $HOME/{mark}-source, target: /mnt/{mark}-target, readonly: true}}\n"
            f"volumes:\n  - path: /var/tmp/{mark}-volume.img\n"
            f"cloud_init:\n  user_data: \"#!/bin/sh\\necho token {mark}-userdata\\n\"\n")
    return spec, secrets_seen


def decoded_tokens(text: str) -> str:
    """`text` plus whatever its base64 (and base64+zlib) tokens decode to."""
    out = [text]
    for token in re.findall(r"[A-Za-z0-9+/=]{12,}", text):
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            continue
        try:
            raw = zlib.decompress(raw)
        except zlib.error:
            pass
        out.append(raw.decode("utf-8", "replace"))
    return "\n".join(out)


def as_user(vc, argv: list[str], user: str) -> str:
    proc = vc.cluster.client(argv, user=user)
    assert proc.returncode == 0, (argv, proc.stderr)
    return proc.stdout + proc.stderr


def accounting_view(vc, job: int, timeout: float = 30) -> str:
    """What `sacct` (the accounting database, with AccountingStoreFlags=job_comment) shows svmother of the
    job, once slurmdbd has its record."""
    deadline = time.monotonic() + timeout
    while True:
        base = ["sacct", "-a", "-X", "-P", "-j", str(job)]
        out = as_user(vc, [*base, "-l"], OTHER) + as_user(vc, [*base, "-o", "JobID,JobName,Comment,WorkDir"], OTHER)
        if str(job) in out or time.monotonic() > deadline:
            assert str(job) in out, out
            return out
        time.sleep(1)


def test_another_user_sees_nothing_of_a_vm_spec(vm_cluster):
    vc = vm_cluster
    spec, private = private_spec("privmark" + secrets.token_hex(4))
    job = vc.submit(spec, "--hold", name="privweb", user=OWNER)
    try:
        seen = "\n".join([
            as_user(vc, ["squeue", "-h", "-t", "all", "-o", "%k"], OTHER),
            as_user(vc, ["squeue", "-h", "-t", "all", "-o", "%all"], OTHER),
            as_user(vc, ["scontrol", "show", "job", "-d", str(job)], OTHER),
            as_user(vc, ["scontrol", "show", "job", "-o", str(job)], OTHER),
        ])
        assert str(job) in seen
        seen += "\n" + accounting_view(vc, job)
        comment = vc.job_field(job, "%k")
        assert re.fullmatch(r"slurm-vm:2:[0-9a-f]{64}", comment), comment
        visible = decoded_tokens(seen)
        assert [s for s in private if s in visible] == []
        # the batch script (which carries the spec) is refused to the other user
        script = vc.cluster.client(["scontrol", "write", "batch_script", str(job), "-"], user=OTHER)
        assert [s for s in private if s in decoded_tokens(script.stdout)] == []

        # The owner still sees the spec's details; the other user sees the VM, without them.
        mine = json.loads(vc.slurm_vm("list", "--json", user=OWNER).stdout)
        assert [(r["job_id"], r["addresses"]) for r in mine] == [(job, [ADDRESS])], mine
        status = vc.slurm_vm("status", str(job), "--json", user=OWNER)
        assert status.returncode == 0 and json.loads(status.stdout)["addresses"] == [ADDRESS], status
        theirs = vc.slurm_vm("list", "--all-users", "--json", user=OTHER)
        assert theirs.returncode == 0, theirs.stderr
        record = next(r for r in json.loads(theirs.stdout) if r["job_id"] == job)
        assert record["name"] == "privweb" and record["addresses"] == []
        assert [s for s in private if s in decoded_tokens(theirs.stdout)] == []
    finally:
        vc.cluster.client(["scancel", str(job)], user=OWNER)
    vc.wait_gone_or_ended(job, timeout=60)


def test_a_job_with_a_vm_comment_and_no_spec_fails_alone(vm_cluster):
    """Any user can give any job a slurm-vm comment: one without a batch script (srun, salloc) or whose
    script carries no spec is the job's fault, refused by the prolog; the node stays in service."""
    vc = vm_cluster
    node = vc.cluster.nodes[0]
    proc = vc.cluster.client(["srun", "-N1", "-w", node, f"--comment=slurm-vm:2:{'0' * 64}", "true"], user=OTHER)
    deadline = time.monotonic() + 60
    while (state := as_user(vc, ["sinfo", "-h", "-n", node, "-o", "%T"], OWNER).strip()) == "completing":
        assert time.monotonic() < deadline, "the job's epilog did not finish"
        time.sleep(0.5)
    assert state in ("idle", "mixed", "allocated"), (state, proc.stderr)
    with open(f"{vc.directory}/hooks.log", errors="replace") as fh:
        refused = [line for line in fh if "refused" in line and "carries no slurm-vm spec" in line]
    assert refused, (proc.stdout, proc.stderr)
    vc.wait_no_leaks()


def test_a_squatted_checkpoint_dir_fails_the_job_not_the_node(vm_cluster):
    """The test cluster's checkpoint parent is 1777 (users make their own dirs): svmtest makes svmother's
    first. svmother's checkpointing VM is refused at the prolog with what the admins must do (before, it
    ran and every save failed); no node is drained, nothing is left. No guest boots."""
    vc = vm_cluster
    victim = os.path.join(checkpoint_root(vc.directory), OTHER)
    aside = f"{victim}.aside-{os.getpid()}" if os.path.lexists(victim) else None
    if aside:
        os.rename(victim, aside)
    try:
        made = vc.cluster.client(["mkdir", victim], user=OWNER)
        assert made.returncode == 0, made.stderr
        job = vc.submit("name: privckpt\nimage: tiny\nmemory: 256M\non_preempt: checkpoint\n", name="privckpt",
                        user=OTHER)
        vc.wait_gone_or_ended(job, timeout=120)
        out = vc.output(job)
        assert f"belongs to user {OWNER}" in out and "admins" in out and "0755" in out, out[-2000:]
        states = as_user(vc, ["sinfo", "-h", "-N", "-o", "%N %T"], OWNER)
        assert "drain" not in states, states
        vc.wait_no_leaks(job)
    finally:
        shutil.rmtree(victim, ignore_errors=True)
        if aside:
            os.rename(aside, victim)
