"""`mounts:` in the spec and `mounts.allowed` in the config: every refusal names its field."""

from __future__ import annotations

import pwd

import pytest

from slurm_vm.config import parse_config
from slurm_vm.errors import ValidationError
from slurm_vm.mounts import TAG_MAX_9P, expand_home, mount_tag
from slurm_vm.spec import check_user_access, parse_spec

CONFIG = "images: {deb: {path: /img/deb.qcow2, firmware: /f}}\nmounts: {allowed: [$HOME, /scratch, /projects/p1]}\n"
USER = "root"   # always exists; home /root


@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG, "config.yaml")


def spec_with(source: str, target: str, extra: str = "") -> str:
    return f"name: web\nimage: deb\nmounts:\n  - {{source: '{source}', target: '{target}'{extra}}}\n"


def refusal(text: str, config, user: str = USER) -> str:
    with pytest.raises(ValidationError) as info:
        spec = parse_spec(text, "vm.yaml", config)
        check_user_access(spec, config, user, "vm.yaml")
    assert len(info.value.problems) >= 1
    assert "\n" not in info.value.problems[0].message
    return str(info.value)


@pytest.mark.parametrize("source,target", [
    ("$HOME", "/home/me/host"), ("$HOME/data", "/data"), ("/scratch/run1", "/mnt/scratch"),
    ("/scratch", "/scratch"), ("/projects/p1/in", "/home/debian/in"), ("/projects/p1", "/opt/p1"),
])
def test_good_mounts(config, source, target):
    spec = parse_spec(spec_with(source, target, ", readonly: true"), "vm.yaml", config)
    check_user_access(spec, config, USER, "vm.yaml")
    assert spec.mounts[0].readonly is True


@pytest.mark.parametrize("source,target,field", [
    ("/etc", "/mnt/etc", "mounts[0].source"),
    ("/", "/mnt/all", "mounts[0].source"),
    ("/home/svmother", "/mnt/o", "mounts[0].source"),        # another user's home: not $HOME
    ("/projects/p2", "/mnt/p2", "mounts[0].source"),
    ("/projects/p1x", "/mnt/p", "mounts[0].source"),         # prefix match is by path component
    ("/scratch/../etc", "/mnt/x", "mounts[0].source"),
    ("/scratch/./a", "/mnt/x", "mounts[0].source"),
    ("scratch/a", "/mnt/x", "mounts[0].source"),
    ("~/data", "/mnt/x", "mounts[0].source"),
    ("$HOMER/x", "/mnt/x", "mounts[0].source"),
    ("/scratch/$USER", "/mnt/x", "mounts[0].source"),
    ("/scratch//a", "/mnt/x", "mounts[0].source"),
    ("/scratch/a/", "/mnt/x", "mounts[0].source"),
    ("/scratch/a", "/", "mounts[0].target"),
    ("/scratch/a", "/etc", "mounts[0].target"),
    ("/scratch/a", "/etc/ssh", "mounts[0].target"),
    ("/scratch/a", "/usr/local", "mounts[0].target"),
    ("/scratch/a", "/bin", "mounts[0].target"),
    ("/scratch/a", "/lib64", "mounts[0].target"),
    ("/scratch/a", "/boot", "mounts[0].target"),
    ("/scratch/a", "/proc/sys", "mounts[0].target"),
    ("/scratch/a", "/sys", "mounts[0].target"),
    ("/scratch/a", "/dev/shm", "mounts[0].target"),
    ("/scratch/a", "/run", "mounts[0].target"),
    ("/scratch/a", "/var/lib/cloud", "mounts[0].target"),
    ("/scratch/a", "/home", "mounts[0].target"),
    ("/scratch/a", "/root", "mounts[0].target"),
    ("/scratch/a", "data", "mounts[0].target"),
    ("/scratch/a", "/mnt/../etc", "mounts[0].target"),
    ("/scratch/a", "$HOME/x", "mounts[0].target"),
    ("/scratch/a b", "/mnt/x", "mounts[0].source"),
    ("/scratch/a,b", "/mnt/x", "mounts[0].source"),
    ("/scratch/a", "/mnt/x\ty", "mounts[0].target"),
    ("/scratch/a", "/mnt/x y", "mounts[0].target"),
    ("/scratch/a", "/mnt/a''b", "mounts[0].target"),    # a'b: broke the vendor-data YAML (issue 20)
    ("/scratch/a''b", "/mnt/x", "mounts[0].source"),
    ("/scratch/a", '/mnt/a"b', "mounts[0].target"),
])
def test_bad_mounts_name_the_field(config, source, target, field):
    assert f"{field}:" in refusal(spec_with(source, target), config)


def test_readonly_must_be_a_boolean(config):
    assert "mounts[0].readonly" in refusal(spec_with("/scratch/a", "/mnt/a", ", readonly: 'yes'"), config)


def test_duplicate_and_nested_targets(config):
    text = ("name: web\nimage: deb\nmounts:\n  - {source: /scratch/a, target: /mnt/a}\n"
            "  - {source: /scratch/b, target: /mnt/a/b}\n")
    assert "mounts[1].target" in refusal(text, config)


def test_too_many_mounts(config):
    body = "".join(f"  - {{source: /scratch/{i}, target: /mnt/{i}}}\n" for i in range(9))
    assert "mounts:" in refusal("name: web\nimage: deb\nmounts:\n" + body, config)


def test_mounts_refused_when_the_site_allows_none():
    config = parse_config("images: {deb: {path: /i, firmware: /f}}\n", "config.yaml")
    assert "mounts.allowed" in refusal(spec_with("/scratch/a", "/mnt/a"), config)


def test_home_expands_to_the_job_users_home(config):
    assert expand_home("$HOME/x", pwd.getpwnam(USER).pw_dir) == "/root/x"
    # The same spec is refused for a user whose home is outside the allowlist and not $HOME.
    other = parse_config("images: {deb: {path: /i, firmware: /f}}\nmounts: {allowed: [/scratch]}\n", "c.yaml")
    assert "mounts[0].source" in refusal(spec_with("$HOME/x", "/mnt/x"), other)


@pytest.mark.parametrize("entry", ["/", "/proc", "/etc", "/dev/shm", "relative", "/a/../etc", "$HOMEX"])
def test_bad_allowlist_entries(entry):
    with pytest.raises(ValidationError) as info:
        parse_config(f"images: {{deb: {{path: /i}}}}\nmounts: {{allowed: ['{entry}']}}\n", "config.yaml")
    assert "mounts.allowed[0]" in str(info.value)


def test_mount_tags_are_short_distinct_and_stable():
    targets = ["/data", "/mnt/a", "/mnt/a-", "/mnt/a_", "/home/alice/" + "x" * 200, "/home/alice/" + "x" * 201,
               "/mnt/ü", "/mnt/a.b", "/mnt/a+b"]
    tags = [mount_tag(t) for t in targets]
    assert len(set(tags)) == len(tags)
    assert all(len(t) <= TAG_MAX_9P and t.isascii() and " " not in t and "," not in t for t in tags)
    assert mount_tag("/data") == mount_tag("/data")
