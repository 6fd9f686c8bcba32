"""What `node check` requires of a node follows the config; drain/resume decisions (no root)."""

from __future__ import annotations

from slurm_vm.config import parse_config
from slurm_vm.node.readycheck import Check, Result, drain_command, drain_reason, required_checks


def config(text: str):
    return parse_config("images: {}\n" + text, "test")


def names(cfg) -> set[tuple[str, str]]:
    return {(c.kind, c.name) for c in required_checks(cfg)}


def test_only_what_the_config_uses():
    bare = names(config("networks: {}\nhypervisor: {default: qemu}\n"))
    assert bare == {("file", "/usr/bin/qemu-img"), ("file", "/usr/bin/qemu-system-x86_64")}
    mac = names(config("networks: {m: {kind: macvtap, parent: eth1}}\n"))
    assert {("module", "macvtap"), ("sysctl", "fs.protected_hardlinks"), ("acl", "state_dir"),
            ("link", "eth1"), ("module", "nf_tables")} <= mac
    assert ("module", "vxlan") not in mac and ("device", "/dev/net/tun") not in mac
    trusted = names(config("networks: {b: {kind: bridge, bridge: br0, trusted: true}}\n"))
    assert ("module", "nf_tables") not in trusted and ("link", "br0") in trusted
    ch = names(config("hypervisor: {default: cloud-hypervisor}\n"))
    assert {("device", "/dev/kvm"), ("module", "kvm"), ("file", "/usr/bin/cloud-hypervisor")} <= ch


def test_drain_reason_and_commands():
    bad = Result(Check("link", "br-vm", "network lan", "bridge"), False, "no such interface", "create it")
    good = Result(Check("module", "tun", "network lan"), True)
    assert drain_reason([good]) is None
    reason = drain_reason([good, bad, bad])
    assert reason == "slurm-vm node check: link br-vm: no such interface (+1 more: slurm-vm node check)"
    assert drain_command("scontrol", "n1", reason, "none") == ["scontrol", "update", "NodeName=n1", "State=DRAIN",
                                                               f"Reason={reason}"]
    assert drain_command("scontrol", "n1", reason, reason) is None
    assert drain_command("scontrol", "n1", None, reason) == ["scontrol", "update", "NodeName=n1", "State=RESUME"]
    assert drain_command("scontrol", "n1", None, "admin: broken fan") is None   # not ours to resume
