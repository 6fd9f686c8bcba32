"""No user input drains a node (issue 20): the real prolog and epilog, as root, against hostile specs and
hostile job-dir contents. Each ends with the hook's exit 0 (the job ran, or failed with one line naming
its cause) and nothing left behind; an exit 1 would drain the node.
"""

from __future__ import annotations

import os
import time

import pytest

from devtools.hooknode import SPEC
from devtools.hostile import PLANTS, ROOT_NAMES, plant, plant_deep_tree, plant_fifo

pytestmark = pytest.mark.root

BASE = """name: web
image: base
memory: 256M
networks: [{network: lan}]
"""
EPILOG_SECONDS = 30   # well inside the epilog's own 60 s limit


def refused(node, job: int, spec: str) -> str:
    proc = node.prolog(job, spec)
    assert proc.returncode == 0, proc.stderr
    note_path = os.path.join(node.state, "jobs", f"{job}.error")
    assert os.path.exists(note_path), proc.stderr
    note = open(note_path).read()
    assert len(note.strip().splitlines()) == 1, note
    assert [x for x in node.leftovers(job) if x != f"jobs/{job}.error"] == []
    assert node.epilog(job, spec).returncode == 0
    assert node.leftovers(job) == []
    return note


@pytest.mark.parametrize("case,spec,field", [
    ("user-data-surrogate", BASE + 'cloud_init: {user_data: "#!/bin/sh\\n\\uD800"}\n', "cloud_init.user_data"),
    ("user-data-low-surrogate", BASE + 'cloud_init: {user_data: "#cloud-config\\n# \\uDFFF"}\n',
     "cloud_init.user_data"),
    ("network-config-surrogate-value", BASE.replace("networks: [{network: lan}]\n", "") +
     'cloud_init: {network_config: {version: 2, x: "\\uD801"}}\n', "cloud_init.network_config"),
    ("network-config-surrogate-key", BASE.replace("networks: [{network: lan}]\n", "") +
     'cloud_init: {network_config: {version: 2, "\\uDC80": 1}}\n', "cloud_init.network_config"),
    ("user-data-nul", BASE + 'cloud_init: {user_data: "#!/bin/sh\\0"}\n', "cloud_init.user_data"),
    ("hostname-surrogate", BASE + 'cloud_init: {hostname: "a\\uD800"}\n', "cloud_init.hostname"),
])
def test_spec_the_seed_writer_cannot_hold_is_refused(hook_node, case, spec, field):
    """`cloud_init: {user_data: "#!/bin/sh\\n\\uD800"}` drained the node (UnicodeEncodeError in the seed
    writer): now validation refuses it, and the prolog with it, naming the field."""
    note = refused(hook_node, 900, spec)
    assert field in note, (case, note)


def test_mount_target_with_a_quote_is_refused(hook_node):
    """A quote in a mount target broke the vendor-data YAML slurm-vm writes (a YAMLError: node fault)."""
    node = hook_node
    shares = os.path.join(node.tmp, "shares")
    os.makedirs(os.path.join(shares, "d"))
    os.chmod(shares, 0o755)
    node.write_config({"mounts": {"allowed": [shares]}})
    spec = BASE + f"mounts:\n  - {{source: {shares}/d, target: \"/mnt/a'b\", readonly: true}}\n"
    assert "mounts[0].target" in refused(node, 901, spec)


def test_deeply_nested_cloud_config_with_keys_runs(hook_node):
    """A #cloud-config too deep for the YAML parser, with keys to merge: the user-data goes to the guest as
    written (the keys through vendor-data), the prolog neither crashes nor blames the node."""
    node = hook_node
    key = "ssh-ed25519 " + "A" * 68 + " me@host"
    user_data = "#cloud-config\\na: " + "[" * 5000 + "]" * 5000
    spec = BASE + f'cloud_init:\n  ssh_authorized_keys: ["{key}"]\n  user_data: "{user_data}"\n'
    proc = node.prolog(902, spec)
    assert proc.returncode == 0 and not os.path.exists(os.path.join(node.state, "jobs", "902.error")), proc.stderr
    assert os.path.exists(os.path.join(node.state, "jobs", "902", "seed.iso"))
    assert node.epilog(902, spec).returncode == 0
    assert node.leftovers(902) == []


# --- hostile job-dir contents: the job dir is the user's from the handover on ---

@pytest.mark.parametrize("round_", range(len(PLANTS)))
def test_hostile_job_dir_contents_never_fail_the_epilog(hook_node, round_):
    """`mkfifo <job dir>/vmm.pid` hung the epilog until its limit and drained the node. Each round puts a
    different hostile entry at each name root touches; over the rounds every entry meets every name."""
    node = hook_node
    job = 910 + round_
    assert node.prolog(job, SPEC).returncode == 0
    jdir = os.path.join(node.state, "jobs", str(job))
    protected = {p: os.stat(p) for p in ("/etc/shadow", "/etc/passwd", node.base)}
    for i, name in enumerate(ROOT_NAMES):
        plant(PLANTS[(round_ + i) % len(PLANTS)], node.base, os.path.join(jdir, name))
    started = time.monotonic()
    proc = node.epilog(job, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < EPILOG_SECONDS
    assert node.leftovers(job) == []
    for path, before in protected.items():
        after = os.stat(path)
        assert (after.st_ino, after.st_mode, after.st_uid, after.st_size) == \
            (before.st_ino, before.st_mode, before.st_uid, before.st_size), path


def test_requeued_job_with_a_hostile_job_dir_starts_afresh(hook_node):
    """The prolog of a requeued job tears the old job dir down first: the same hostile contents must not
    make it a node fault either."""
    node = hook_node
    assert node.prolog(930, SPEC).returncode == 0
    jdir = os.path.join(node.state, "jobs", "930")
    plant(plant_deep_tree, node.base, os.path.join(jdir, "seed.iso"))
    plant(plant_fifo, node.base, os.path.join(jdir, "vmm.pid"))
    proc = node.prolog(930, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert os.path.isfile(os.path.join(jdir, "seed.iso"))
    assert node.epilog(930, SPEC).returncode == 0
    assert node.leftovers(930) == []


def test_a_job_dir_too_big_for_the_budget_waits_in_the_trash(tmp_path):
    """A user can fill the job dir with more files than a hook can remove in its time: the teardown moves it
    aside whole (one rename, the job's name is free at once), removes what its budget allows, and the next
    teardown (any job's) or `node doctor --fix` goes on; doctor lists it meanwhile."""
    from slurm_vm.node.layout import ensure_state_dirs, job_dir, trash_dir
    from slurm_vm.node.objects import Trash
    from slurm_vm.node.system import HostSystem
    state = str(tmp_path / "state")
    ensure_state_dirs(state)
    jdir = job_dir(state, 940)
    os.mkdir(jdir)
    for i in range(2000):
        open(os.path.join(jdir, f"f{i}"), "w").close()
    system = HostSystem()
    assert system.remove_job_dir(jdir, trash_dir(state), 0.0) is False
    assert not os.path.lexists(jdir)
    [left] = Trash.leftovers(system, state)
    assert (left.kind, left.job_id) == ("job dir being removed", 940)
    assert system.empty_trash(trash_dir(state), 30.0) == []
    assert Trash.leftovers(system, state) == []


def test_mounts_left_in_the_job_dir_are_detached(hook_node):
    """A user can mount (FUSE) on their job dir, a directory or a file in it; once the job's processes are
    gone such a mount fails every lookup, and a mount point cannot be removed (EBUSY). Root-made mounts
    stand in for the user's here: a tmpfs on a directory, a file bound over seed.iso, a tmpfs on the job
    dir itself. The epilog detaches them, removes everything, and the bound file is untouched."""
    import subprocess
    node = hook_node
    assert node.prolog(950, SPEC).returncode == 0
    jdir = os.path.join(node.state, "jobs", "950")
    os.mkdir(os.path.join(jdir, "mnt"))
    keep = os.path.join(node.tmp, "keep.txt")
    with open(keep, "w") as fh:
        fh.write("keep\n")
    for argv in (["mount", "-t", "tmpfs", "tmpfs", os.path.join(jdir, "mnt")],
                 ["mount", "--bind", keep, os.path.join(jdir, "seed.iso")]):
        subprocess.run(argv, check=True, timeout=20)
    open(os.path.join(jdir, "mnt", "inside"), "w").close()
    proc = node.epilog(950, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(950) == [] and open(keep).read() == "keep\n"
    assert node.prolog(951, SPEC).returncode == 0
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(node.state, "jobs", "951")], check=True, timeout=20)
    proc = node.epilog(951, SPEC)
    assert proc.returncode == 0, proc.stderr
    assert node.leftovers(951) == []
    assert f"{node.state}/" not in open("/proc/self/mountinfo").read()
