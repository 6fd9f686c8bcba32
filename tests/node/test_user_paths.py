"""Paths the user names or owns, met by the real prolog (root): hung mounts and squatted checkpoint dirs.

- A share or volume on a mount that never answers (a real FUSE mount whose daemon reads every request
  and answers none: tests/fixtures/hangfs.py) fails the job as the user's fault within the check's bound,
  long before the prolog's own limit; the node is not drained and nothing is left made.
- A user's checkpoint dir that another user made first (under a 1777 parent) is refused with what the
  admins must do; under a root-owned 0755 parent the prolog makes the dir itself, owned by the user.
"""

from __future__ import annotations

import os
import pwd
import time

import pytest

from devtools.hooknode import OTHER, USER
from slurm_vm.disks.safefs import USER_CHECK_TIMEOUT
from tests.fixtures.hangfs import HungMount

pytestmark = pytest.mark.root

BASE = "name: web\nimage: base\nmemory: 256M\nnetworks: [{network: lan}]\n"
CHECKPOINTING = BASE + "on_timeout: checkpoint\n"


def refusal(node, job: int) -> str:
    with open(os.path.join(node.state, "jobs", f"{job}.error")) as fh:
        return fh.read()


def nothing_made(node, job: int) -> bool:
    """Nothing but the refusal note."""
    return not os.path.isdir(os.path.join(node.state, "jobs", str(job))) and \
        [x for x in node.leftovers(job) if x != f"jobs/{job}.error"] == []


@pytest.fixture
def hung(hook_node):
    shares = os.path.join(hook_node.tmp, "shares")
    os.makedirs(shares, mode=0o755, exist_ok=True)
    mount = HungMount.start(os.path.join(shares, "hung"))
    yield mount
    mount.close()


@pytest.mark.parametrize("field,spec_tail", [
    ("mounts[0].source", "mounts:\n  - {{source: {mnt}/data, target: /mnt/data, readonly: true}}\n"),
    ("volume", "volumes:\n  - path: {mnt}/disk.img\n"),
])
def test_a_path_on_a_hung_mount_fails_the_job_within_the_bound(hook_node, hung, field, spec_tail):
    node = hook_node
    node.write_config({"mounts": {"allowed": [os.path.dirname(hung.mountpoint)]}})
    job = 910 if field == "volume" else 911
    spec = BASE + spec_tail.format(mnt=hung.mountpoint)
    started = time.monotonic()
    proc = node.prolog(job, spec)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr          # the user's fault: the job fails, the node stays
    note = refusal(node, job)
    assert field in note and "did not answer" in note and len(note.strip().splitlines()) == 1, note
    assert took < USER_CHECK_TIMEOUT + 20, f"the prolog took {took:.0f}s"
    assert nothing_made(node, job)
    assert node.epilog(job, spec).returncode == 0


def checkpoint_config(node, parent_mode: int) -> str:
    root = os.path.join(node.tmp, f"ckpt-{parent_mode:o}")
    os.makedirs(root)
    os.chmod(root, parent_mode)
    node.write_config({"checkpoint": {"dir": os.path.join(root, "%u")}})
    return root


def test_a_squatted_checkpoint_dir_is_refused_with_what_the_admins_must_do(hook_node):
    node = hook_node
    root = checkpoint_config(node, 0o1777)
    other = pwd.getpwnam(OTHER)
    squat = os.path.join(root, USER)
    os.mkdir(squat, 0o777)
    os.chown(squat, other.pw_uid, other.pw_gid)          # svmother was first
    proc = node.prolog(920, CHECKPOINTING)
    assert proc.returncode == 0, proc.stderr
    note = refusal(node, 920)
    assert f"belongs to user {OTHER}" in note and "admins" in note and "0755" in note, note
    assert nothing_made(node, 920)
    # a link in its place (to the user's own dir or anywhere) is no better
    os.rmdir(squat)
    os.symlink(node.tmp, squat)
    os.lchown(squat, other.pw_uid, other.pw_gid)
    assert node.prolog(921, CHECKPOINTING).returncode == 0
    assert "is not a directory" in refusal(node, 921)
    assert os.stat(node.tmp).st_uid == 0                  # nothing followed the link
    for job in (920, 921):
        assert node.epilog(job, CHECKPOINTING).returncode == 0


def test_the_prolog_makes_the_users_checkpoint_dir(hook_node):
    """Under a root-owned 0755 parent (users cannot make names there) root makes it for the user; under a
    1777 parent the user's own prolog child makes it. Either way: the user's, 0700, before the job runs."""
    node = hook_node
    me = pwd.getpwnam(USER)
    for job, mode in ((930, 0o755), (931, 0o1777)):
        root = checkpoint_config(node, mode)
        proc = node.prolog(job, CHECKPOINTING)
        assert proc.returncode == 0 and not os.path.exists(os.path.join(node.state, "jobs", f"{job}.error")), \
            (proc.stderr, refusal(node, job) if os.path.exists(os.path.join(node.state, "jobs", f"{job}.error"))
             else "")
        st = os.lstat(os.path.join(root, USER))
        assert (st.st_uid, st.st_mode & 0o7777) == (me.pw_uid, 0o700), (oct(mode), st)
        assert node.epilog(job, CHECKPOINTING).returncode == 0
        assert node.leftovers(job) == []


def test_a_parent_others_may_write_without_the_sticky_bit_is_not_trusted(hook_node):
    """0775 group-writable parent: the user (not in the group) may not create, and root does not make it
    there either (a group member could swap names): the admins are told what to do."""
    node = hook_node
    root = checkpoint_config(node, 0o755)
    os.chmod(root, 0o775)
    proc = node.prolog(940, CHECKPOINTING)
    assert proc.returncode == 0, proc.stderr
    note = refusal(node, 940)
    assert "may not create it" in note and "0755" in note, note
    assert not os.path.exists(os.path.join(root, USER))
    assert node.epilog(940, CHECKPOINTING).returncode == 0


def test_a_missing_parent_and_a_link_above_are_the_admins_to_fix(hook_node):
    """No parent: nothing is made (not by the user, not by root), the line says what to create. A symlink
    on the way to a root-only parent is not followed by root."""
    from slurm_vm.checkpoint.userdir import ensure_user_dir
    from slurm_vm.errors import CheckpointDirError
    me = pwd.getpwnam(USER)
    groups = os.getgrouplist(USER, me.pw_gid)
    missing = os.path.join(hook_node.tmp, "nowhere", USER)
    with pytest.raises(CheckpointDirError, match="does not exist"):
        ensure_user_dir(missing, USER, me.pw_uid, me.pw_gid, groups)
    assert not os.path.exists(os.path.dirname(missing))
    real = os.path.join(hook_node.tmp, "real-parent")
    os.makedirs(real, mode=0o755)
    link = os.path.join(hook_node.tmp, "link-parent")
    os.symlink(real, link)
    with pytest.raises(CheckpointDirError, match="may not create it"):
        ensure_user_dir(os.path.join(link, USER), USER, me.pw_uid, me.pw_gid, groups)
    assert os.listdir(real) == []
