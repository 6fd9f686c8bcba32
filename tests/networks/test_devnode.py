"""The macvtap device node's ACL (pure) and its revocation (root, on a real filesystem)."""

from __future__ import annotations

import os
import stat
import subprocess
import tempfile

import pytest

from slurm_vm.errors import NodeError
from slurm_vm.networks.devnode import (check_protected_hardlinks, make_device_node, remove_job_nodes,
                                       revoke_same_device, user_rw_acl)


def test_acl_is_user_rw_with_mask_and_nothing_for_group_or_others():
    assert user_rw_acl(4201).hex() == ("02000000" "01000600ffffffff" "02000600" "69100000"
                                       "04000000ffffffff" "10000600ffffffff" "20000000ffffffff")


def test_unprotected_hardlinks_are_refused(tmp_path):
    knob = tmp_path / "protected_hardlinks"
    knob.write_text("0\n")
    with pytest.raises(NodeError, match="protected_hardlinks"):
        check_protected_hardlinks(str(knob))
    knob.write_text("1\n")
    check_protected_hardlinks(str(knob))


def opens_as(uid: int, path: str) -> str:
    code = f"import os\ntry:\n    os.close(os.open({path!r}, os.O_RDWR)); print('ok')\n" \
           "except OSError as e:\n    print(type(e).__name__)"
    return subprocess.run(["python3", "-c", code], user=uid, group=uid, extra_groups=[], capture_output=True,
                          text=True, check=True, timeout=30).stdout.strip()


@pytest.mark.root
def test_only_the_user_opens_the_node_and_revocation_reaches_every_name_reads_the_acl_and_revocation_reaches_every_name():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        jobs = os.path.join(tmp, "nics")
        os.makedirs(os.path.join(jobs, "5"))
        node = os.path.join(jobs, "5", "macvtap0")
        rdev = os.makedev(1, 3)                                 # /dev/null: harmless to open
        make_device_node(node, rdev, 4201)
        os.chmod(tmp, 0o711)
        os.chmod(jobs, 0o711)
        os.chmod(os.path.join(jobs, "5"), 0o711)
        assert opens_as(4201, node) == "ok" and opens_as(4202, node) == "PermissionError"
        other = os.path.join(tmp, "root-made-link")
        os.link(node, other)                                    # root may; the point is the shared inode
        assert revoke_same_device(jobs, rdev) == [node]
        st = os.lstat(other)
        assert stat.S_IMODE(st.st_mode) == 0 and not os.listxattr(other)
        assert opens_as(4201, other) == "PermissionError"
        remove_job_nodes(os.path.join(jobs, "5"))
        assert not os.path.exists(os.path.join(jobs, "5"))
        remove_job_nodes(os.path.join(jobs, "5"))              # idempotent
