"""A job's user can use its macvtap during the job and keeps nothing that reaches a later job's (root).

The real prolog and epilog on a fake node (tests/fixtures/hooknode.py) with a macvtap network on a veth.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from devtools.hooknode import SPEC

pytestmark = pytest.mark.root
UID = 4201
SPEC_MACVTAP = SPEC.replace("network: lan\n", "network: fabric\n")

HOLDER = r"""
import os, sys
node, keep = sys.argv[1], sys.argv[2]
def attempt(call):
    try:
        os.close(call()); return "ok"
    except OSError as exc:
        return type(exc).__name__
print("open", attempt(lambda: os.open(node, os.O_RDWR)), flush=True)
try:
    os.link(node, keep); print("link ok", flush=True)
except OSError as exc:
    print("link", type(exc).__name__, flush=True)
held = os.open(node, os.O_PATH)
print("held", flush=True)
sys.stdin.readline()
print("reopen", attempt(lambda: os.open(f"/proc/self/fd/{held}", os.O_RDWR)), flush=True)
print("path", attempt(lambda: os.open(node, os.O_RDWR)), flush=True)
"""


def device_of(node, job: int) -> str:
    with open(os.path.join(node.state, "jobs", str(job), "vm.json")) as fh:
        return json.load(fh)["nics"][0]["device"]


def test_the_user_keeps_no_access_to_the_macvtap_after_the_job(hook_node):
    node = hook_node
    for args in (["link", "add", "up0", "type", "veth", "peer", "name", "up0p"], ["link", "set", "up0", "up"]):
        subprocess.run(["ip", "-n", node.netns, *args], check=True, timeout=20)
    node.write_config({"networks": {"fabric": {"kind": "macvtap", "parent": "up0"}}})
    proc = node.prolog(301, SPEC_MACVTAP)
    assert proc.returncode == 0, proc.stderr
    device = device_of(node, 301)
    st = os.stat(device)
    assert st.st_uid == 0 and not device.startswith(os.path.join(node.state, "jobs"))
    userdir = os.path.join(node.tmp, "userdir")
    os.mkdir(userdir)
    os.chown(userdir, UID, UID)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, device, os.path.join(userdir, "kept")], user=UID,
                              group=UID, extra_groups=[], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = [holder.stdout.readline().strip() for _ in range(3)]
        assert lines == ["open ok", "link PermissionError", "held"]   # usable in the job, not linkable out
        assert node.epilog(301, SPEC_MACVTAP).returncode == 0
        proc = node.prolog(302, SPEC_MACVTAP)
        assert proc.returncode == 0, proc.stderr
        assert os.stat(device_of(node, 302)).st_rdev == st.st_rdev     # the kernel reused the minor number
        out, _ = holder.communicate("go\n", timeout=30)
    finally:
        holder.kill()
    assert out.split("\n")[:2] == ["reopen PermissionError", "path FileNotFoundError"]
    assert not os.path.exists(os.path.join(userdir, "kept"))
    assert node.epilog(302, SPEC_MACVTAP).returncode == 0
    assert node.leftovers(302) == [] and not os.listdir(os.path.join(node.state, "nics"))
