"""Hostile specs and environments: refused by the real prolog before it makes anything.

User-caused refusals (the default `user_errors: fail-job`) exit 0 and leave only the refusal note
for the launcher; malformed Slurm environments exit 1. Either way no link, job dir, journal or lock
remains, and no file outside the state dir is touched.
"""

from __future__ import annotations

import base64
import os
import pwd
import zlib

import pytest

from slurm_vm import transport
from devtools.hooknode import SPEC, USER

pytestmark = pytest.mark.root

BASE = """name: web
image: base
memory: 256M
networks: [{network: lan}]
"""


def with_volume(path: str) -> str:
    return BASE + f"volumes:\n  - path: {path}\n"


def prepare_files(tmp: str) -> dict[str, str]:
    files = {}
    files["shadow_link"] = os.path.join(tmp, "shadow-link.img")
    os.symlink("/etc/shadow", files["shadow_link"])
    files["other"] = os.path.join(tmp, "other.img")
    with open(files["other"], "wb") as fh:
        fh.truncate(1 << 20)
    os.chown(files["other"], pwd.getpwnam("svmother").pw_uid, pwd.getpwnam("svmother").pw_gid)
    os.chmod(files["other"], 0o600)
    files["dir"] = os.path.join(tmp, "a-directory")
    os.mkdir(files["dir"])
    files["fifo"] = os.path.join(tmp, "fifo.img")
    os.mkfifo(files["fifo"])
    files["dangling"] = os.path.join(tmp, "dangling.img")
    os.symlink("/nonexistent/target", files["dangling"])
    return files


def user_cases(files: dict[str, str]) -> list[tuple[str, str, str]]:
    """(id, spec text, text the refusal must contain)"""
    big = "#cloud-config\n# " + "x" * (100 << 10) + "\n"   # over the 64K limit, still fits the comment
    return [
        ("volume-symlink-to-shadow", with_volume(files["shadow_link"]), "volume"),
        ("volume-of-other-user", with_volume(files["other"]), "volume"),
        ("volume-dotdot", with_volume("/tmp/../etc/shadow"), "volumes[0].path"),
        ("volume-relative", with_volume("etc/shadow"), "volumes[0].path"),
        ("volume-directory", with_volume(files["dir"]), "volume"),
        ("volume-fifo", with_volume(files["fifo"]), "volume"),
        ("volume-dangling", with_volume(files["dangling"]), "volume"),
        ("volume-block-device", with_volume("/dev/vda"), "volume"),
        ("volume-proc", with_volume("/proc/1/environ"), "volume"),
        ("image-not-in-store", BASE.replace("image: base", "image: nope"), "image"),
        ("image-path-outside", BASE.replace("image: base", "image: /etc/shadow"), "image"),
        ("network-not-allowed", BASE.replace("network: lan", "network: staff"), "networks[0].network"),
        ("network-unknown", BASE.replace("network: lan", "network: wan"), "networks[0].network"),
        ("mac-multicast", BASE.replace("{network: lan}", "{network: lan, mac: '01:00:5e:00:00:01'}"),
         "networks[0].mac"),
        ("mac-broadcast", BASE.replace("{network: lan}", "{network: lan, mac: 'ff:ff:ff:ff:ff:ff'}"),
         "networks[0].mac"),
        ("user-data-100K", BASE + "cloud_init:\n  user_data: |\n" + "".join(f"    {line}\n" for line in
                                                                        big.splitlines()), "user_data"),
        ("name-with-slash", BASE.replace("name: web", "name: ../../etc"), "name"),
        ("hostname-injection", BASE + "cloud_init:\n  hostname: 'a;reboot'\n", "hostname"),
        ("yaml-alias-bomb", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "alias"),
        ("not-a-mapping", "- just\n- a list\n", "mapping"),
        ("unknown-field", BASE + "privileged: true\n", "privileged"),
        ("cpus-huge", BASE + "cpus: 100000\n", "cpus"),
        ("memory-negative", BASE.replace("256M", "-1G"), "memory"),
        ("disk-huge", BASE + "disk: 9000T\n", "disk"),
        ("ssh-key-garbage", BASE + "cloud_init:\n  ssh_authorized_keys: ['$(reboot)']\n", "ssh_authorized_keys"),
    ]


@pytest.fixture
def hostile(hook_node):
    return hook_node, prepare_files(hook_node.tmp)


def assert_nothing_made(node, job_id: int) -> None:
    """Nothing but the refusal note (checked by the callers) may exist."""
    assert [x for x in node.leftovers(job_id) if x != f"jobs/{job_id}.error"] == []
    jobs = os.path.join(node.state, "jobs")
    assert not os.path.exists(os.path.join(jobs, str(job_id)))


def test_hostile_specs_are_refused_with_the_reason(hostile):
    node, files = hostile
    cases = user_cases(files)
    assert len(cases) >= 20
    shadow = os.stat("/etc/shadow")
    for i, (case, spec, expected) in enumerate(cases):
        job = 300 + i
        proc = node.prolog(job, spec)
        assert proc.returncode == 0, (case, proc.stderr)
        assert "refused" in proc.stderr, (case, proc.stderr)
        note_path = os.path.join(node.state, "jobs", f"{job}.error")
        note = open(note_path).read()
        assert expected in note, (case, note)
        st = os.stat(note_path)
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(USER).pw_uid, 0o400)
        assert_nothing_made(node, job)
        assert node.epilog(job, spec).returncode == 0
        assert not os.path.exists(note_path), case
    after = os.stat("/etc/shadow")
    assert (after.st_mode, after.st_uid, after.st_mtime) == (shadow.st_mode, shadow.st_uid, shadow.st_mtime)


def test_drain_node_policy_exits_nonzero(hostile):
    node, files = hostile
    node.write_config({"user_errors": "drain-node"})
    proc = node.prolog(400, with_volume(files["shadow_link"]))
    assert proc.returncode == 1
    assert "volume" in proc.stderr
    assert_nothing_made(node, 400)
    assert not os.path.exists(os.path.join(node.state, "jobs", "400.error"))


@pytest.mark.parametrize("case,env_change", [
    ("job-id-not-number", {"SLURM_JOB_ID": "12abc"}),
    ("job-id-shell", {"SLURM_JOB_ID": "1;touch /tmp/pwned"}),
    ("job-id-path", {"SLURM_JOB_ID": "../../etc"}),
    ("uid-root", {"SLURM_JOB_UID": "0"}),
    ("uid-unknown", {"SLURM_JOB_UID": "3999999"}),
    ("uid-negative", {"SLURM_JOB_UID": "-5"}),
    ("nodelist-garbage", {"SLURM_JOB_NODELIST": "n[1-"}),
])
def test_malformed_slurm_environment_is_refused(hook_node, case, env_change):
    env = hook_node.env(500, SPEC)
    env.update(env_change)
    proc = hook_node.hook("prolog", env)
    assert proc.returncode == 1, (case, proc.stderr)
    assert "job" in proc.stderr
    assert not os.path.exists(os.path.join(hook_node.state, "jobs")) or os.listdir(
        os.path.join(hook_node.state, "jobs")) == []
    assert not os.path.exists("/tmp/pwned")


@pytest.mark.parametrize("comment", [
    "slurm-vm:1:z:not-base64!!",
    "slurm-vm:1:z:" + base64.b64encode(b"not zlib").decode(),
    "slurm-vm:1:z:" + base64.b64encode(zlib.compress(b"\xff\xfe not utf-8")).decode(),
    "slurm-vm:1:zz:abc",
    "slurm-vm:1:sha256:" + "0" * 10,
    "slurm-vm:2:" + "0" * 10,
    "slurm-vm:2:" + "G" * 64,
    "slurm-vm:9:" + "0" * 64,
])
def test_damaged_comment_is_refused(hook_node, comment):
    proc = hook_node.prolog(600, None, comment=comment)
    assert proc.returncode == 0, proc.stderr
    note = open(os.path.join(hook_node.state, "jobs", "600.error")).read()
    assert "comment" in note or "spec" in note, note
    assert_nothing_made(hook_node, 600)


def test_digest_comment_without_reachable_slurm_fails_the_node_step_cleanly(hook_node):
    comment = "slurm-vm:1:sha256:" + transport.spec_digest(SPEC)
    proc = hook_node.prolog(700, None, comment=comment)
    assert proc.returncode == 1
    assert "scontrol" in proc.stderr
    assert_nothing_made(hook_node, 700)


def test_hostile_mounts_are_refused_as_the_user(hook_node):
    """Sources are resolved on the node as the job user: links out of the allowlist, other users'
    private directories and root's are refused with the field named, and nothing is made."""
    node = hook_node
    shares = os.path.join(node.tmp, "shares")
    os.makedirs(shares)
    os.chmod(shares, 0o755)
    node.write_config({"mounts": {"allowed": [shares]}})
    os.symlink("/etc", os.path.join(shares, "to-etc"))
    os.symlink("../..", os.path.join(shares, "up"))
    for name, owner, mode in (("other", "svmother", 0o700), ("rootonly", "root", 0o700),
                              ("readable", "svmother", 0o755)):
        path = os.path.join(shares, name)
        os.mkdir(path)
        os.chown(path, pwd.getpwnam(owner).pw_uid, pwd.getpwnam(owner).pw_gid)
        os.chmod(path, mode)
    with open(os.path.join(shares, "a-file"), "w") as fh:
        fh.write("x")
    cases = [
        ("link-to-etc", f"{shares}/to-etc", "", "outside"),
        ("link-up", f"{shares}/up", "", "outside"),
        ("other-users-private-dir", f"{shares}/other", "", "may not"),
        ("root-only-dir", f"{shares}/rootonly", "", "may not"),
        ("readable-but-not-writable", f"{shares}/readable", "", "readonly: true"),
        ("a-file", f"{shares}/a-file", "", "not a directory"),
        ("missing", f"{shares}/missing", "", "does not exist"),
        ("outside-allowlist", "/etc", "", "mounts[0].source"),
        ("target-etc", f"{shares}/readable", ", target: /etc", "mounts[0].target"),
    ]
    for i, (case, source, target, expected) in enumerate(cases):
        job = 800 + i
        mount = f"{{source: {source}{target or ', target: /mnt/x'}, readonly: {str('readonly' in case).lower()}}}"
        if case == "target-etc":
            mount = f"{{source: {source}, target: /etc, readonly: true}}"
        spec = BASE + f"mounts:\n  - {mount}\n"
        proc = node.prolog(job, spec)
        assert proc.returncode == 0, (case, proc.stderr)
        note = open(os.path.join(node.state, "jobs", f"{job}.error")).read()
        assert "mounts[0]" in note and expected in note, (case, note)
        assert_nothing_made(node, job)
        assert node.epilog(job, spec).returncode == 0
    # the same readable directory shared read-only is accepted: the job is prepared
    accepted = BASE + f"mounts:\n  - {{source: {shares}/readable, target: /mnt/x, readonly: true}}\n"
    proc = node.prolog(899, accepted)
    assert proc.returncode == 0 and not os.path.exists(os.path.join(node.state, "jobs", "899.error")), proc.stderr
    import json
    definition = json.load(open(os.path.join(node.state, "jobs", "899", "vm.json")))
    assert definition["shares"] == [{"tag": definition["shares"][0]["tag"], "path": f"{shares}/readable",
                                     "readonly": True}]
    assert node.epilog(899, accepted).returncode == 0
    assert node.leftovers(899) == []
