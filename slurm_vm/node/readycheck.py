"""`slurm-vm node check`: is this node ready for the VM jobs the config allows? One line per prerequisite.

Functional core: `required_checks(config)` lists what the config needs (plain data); `run_checks` evaluates each
against a `NodeView`, which reads files under a root directory (`/` on a node, a test's directory elsewhere) and
asks the kernel for this network namespace's links (`ip -j link show`). Nothing is changed on the node except
one probe file in `state_dir` (POSIX ACL support), removed at once.
Exit status of the command: 0 ready, 1 something is missing (each problem names its fix).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field

from ..config import Config

NFT_NETDEV_EGRESS = (5, 16)   # nf_tables netdev egress hook (macvtap port filters)
# An extended POSIX ACL as the macvtap node gets (user::rw-, user:0:rw-, group::---, mask::rw-, other::---):
# the xattr's version 2 header, then (tag u16, perm u16, id u32) entries in tag order.
PROBE_ACL = struct.pack("<I" + "HHI" * 5, 2, 0x01, 6, 0xFFFFFFFF, 0x02, 6, 0, 0x04, 0, 0xFFFFFFFF,
                        0x10, 6, 0xFFFFFFFF, 0x20, 0, 0xFFFFFFFF)
CONFIG_SYMBOLS = {"tun": "CONFIG_TUN", "bridge": "CONFIG_BRIDGE", "vxlan": "CONFIG_VXLAN", "macvtap": "CONFIG_MACVTAP",
                  "nf_tables": "CONFIG_NF_TABLES", "kvm": "CONFIG_KVM"}
MODULE_FIX = "modprobe {0} and list it in /etc/modules-load.d/slurm-vm.conf"


@dataclass(frozen=True)
class Check:
    kind: str       # module | sysctl | link | file | command | device | acl | kernel
    name: str
    why: str        # what in the config needs it
    want: str = ""  # sysctl value, link kind, file access


@dataclass(frozen=True)
class Result:
    check: Check
    ok: bool
    detail: str = ""
    fix: str = ""

    def line(self) -> str:
        head = f"{'ok  ' if self.ok else 'FAIL'} {self.check.kind} {self.check.name}"
        if self.ok:
            return f"{head} ({self.check.why})"
        return f"{head}: {self.detail} (needed by {self.check.why}); fix: {self.fix}"

    def as_json(self) -> dict:
        return {"kind": self.check.kind, "name": self.check.name, "why": self.check.why, "ok": self.ok,
                "detail": self.detail, "fix": self.fix}


def _network_checks(name: str, net) -> list[Check]:
    why = f"network {name}"
    out: list[Check] = []
    if net.kind == "bridge":
        out += [Check("module", "tun", why), Check("module", "bridge", why), Check("link", net.bridge, why, "bridge")]
    elif net.kind == "macvtap":
        out += [Check("module", "macvtap", why), Check("link", net.parent, why),
                Check("sysctl", "fs.protected_hardlinks", why, "1"), Check("acl", "state_dir", why)]
        if not net.trusted:
            out.append(Check("kernel", "nf_tables netdev egress", why))
    else:
        out += [Check("module", "tun", why), Check("module", "bridge", why), Check("module", "vxlan", why),
                Check("link", net.parent, why)]
    if not net.trusted or net.vxlan_mode == "unicast":
        out += [Check("module", "nf_tables", why), Check("command", "nft", why)]
    return out


def _hypervisor_checks(config: Config) -> list[Check]:
    """The default hypervisor's binary (for `auto`, the fallback's: it must always work), KVM where it is
    required, virtiofsd where shares use virtio-fs (hypervisor/registry.py says which hypervisor needs what)."""
    from ..hypervisor import registry
    hv = config.hypervisor
    name = registry.AUTO_ORDER[-1] if hv.default == registry.AUTO else hv.default
    kind = registry.HYPERVISORS[name]
    why = f"hypervisor.default {hv.default}"
    out = [Check("file", hv.qemu_img, "the prolog (overlays)", "x"),
           Check("file", getattr(hv, kind.binary_field), why, "x")]
    if kind.needs_kvm or hv.accelerator == "kvm":
        reason = why if kind.needs_kvm else "hypervisor.accelerator kvm"
        out += [Check("device", "/dev/kvm", reason), Check("module", "kvm", reason)]
    if config.mounts.allowed and kind.transport_for(config.mounts.transport) == "virtiofs":
        out += [Check("file", config.mounts.virtiofsd, "mounts (virtio-fs)", "x"),
                Check("sysctl", "user.max_user_namespaces", "mounts (virtio-fs)", ">0")]
    return out


def _image_checks(config: Config) -> list[Check]:
    out = []
    for name, image in sorted(config.images.items()):
        for path in (image.path, image.kernel, image.initrd, image.firmware):
            if path:
                out.append(Check("file", path, f"image {name}", "r"))
    return out


def required_checks(config: Config) -> list[Check]:
    """Everything this config needs on a node, each once (first reason kept), in a stable order."""
    checks = _hypervisor_checks(config) + _image_checks(config)
    if any(net.kind != "macvtap" for net in config.networks.values()):
        checks.append(Check("device", "/dev/net/tun", "bridge and vxlan networks (taps)"))
    for name, net in sorted(config.networks.items()):
        checks += _network_checks(name, net)
    seen: dict[tuple[str, str], Check] = {}
    for check in checks:
        seen.setdefault((check.kind, check.name), check)
    order = ("module", "sysctl", "kernel", "link", "device", "file", "command", "acl")
    return sorted(seen.values(), key=lambda c: (order.index(c.kind), c.name))


@dataclass
class NodeView:
    """What the checks read: files under `root`, this network namespace's links, commands on PATH."""
    root: str = "/"
    state_dir: str = "/var/lib/slurm-vm"
    _links: dict | None = field(default=None, repr=False)

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> str | None:
        try:
            with open(self.path(path)) as fh:
                return fh.read()
        except OSError:
            return None

    def kernel_release(self) -> str:
        return (self.read("/proc/sys/kernel/osrelease") or "").strip()

    def module_state(self, name: str) -> str:
        """loaded | builtin | installed | missing (installed: the kernel loads it on first use)."""
        loaded = {line.split()[0] for line in (self.read("/proc/modules") or "").splitlines() if line.strip()}
        if name in loaded:
            return "loaded"
        if os.path.isdir(self.path(f"/sys/module/{name}")) or self.kernel_config().get(CONFIG_SYMBOLS[name]) == "y":
            return "builtin"
        base = f"/lib/modules/{self.kernel_release()}"
        for listing, state in (("modules.builtin", "builtin"), ("modules.dep", "installed")):
            entries = (line.split(":")[0] for line in (self.read(f"{base}/{listing}") or "").splitlines())
            if any(os.path.basename(e).split(".ko")[0].replace("-", "_") == name for e in entries):
                return state
        return "missing"

    def kernel_config(self) -> dict[str, str]:
        """CONFIG_X -> y|m from /proc/config.gz or /boot/config-<release> (empty when neither is there)."""
        text = self.read(f"/boot/config-{self.kernel_release()}")
        if text is None:
            try:
                with gzip.open(self.path("/proc/config.gz"), "rt") as fh:
                    text = fh.read()
            except OSError:
                text = ""
        pairs = (line.split("=", 1) for line in text.splitlines() if line.startswith("CONFIG_") and "=" in line)
        return {key: value for key, value in pairs}

    def links(self) -> dict:
        if self._links is None:
            proc = subprocess.run(["ip", "-j", "-d", "link", "show"], capture_output=True, text=True, timeout=30,
                                  check=False)
            self._links = {link["ifname"]: link for link in json.loads(proc.stdout or "[]")}
        return self._links


def _check_module(view: NodeView, check: Check) -> Result:
    state = view.module_state(check.name)
    if state != "missing":
        return Result(check, True)
    return Result(check, False, f"neither loaded, built in nor installed for kernel {view.kernel_release() or '?'}",
                  MODULE_FIX.format(check.name) + " (or install the kernel's modules package)")


def _check_sysctl(view: NodeView, check: Check) -> Result:
    raw = view.read("/proc/sys/" + check.name.replace(".", "/"))
    value = raw.strip() if raw is not None else None
    good = value is not None and (value == check.want if not check.want.startswith(">") else
                                  value.isdigit() and int(value) > int(check.want[1:]))
    if good:
        return Result(check, True)
    want = "1" if check.want == ">0" else check.want
    return Result(check, False, f"is {value if value is not None else 'missing'}, needs {check.want}",
                  f"sysctl -w {check.name}={want} and put `{check.name} = {want}` in /etc/sysctl.d/90-slurm-vm.conf")


def _check_link(view: NodeView, check: Check) -> Result:
    link = view.links().get(check.name)
    if link is None:
        if check.want == "bridge":
            fix = f"create bridge {check.name} on every VM node (e.g. a systemd-networkd .netdev, or ip link add " \
                  f"{check.name} type bridge) and bring it up"
        else:
            fix = f"the interface {check.name} must exist and be up on every VM node (or change `parent`)"
        return Result(check, False, "no such interface", fix)
    kind = link.get("linkinfo", {}).get("info_kind", "")
    if check.want == "bridge" and kind != "bridge":
        return Result(check, False, f"is a {kind or 'plain'} interface, not a bridge",
                      f"make {check.name} a bridge, or point the network at one")
    if "UP" not in link.get("flags", []):
        return Result(check, False, "is down", f"ip link set {check.name} up (and in the node's network config)")
    return Result(check, True)


def _world_access(view: NodeView, path: str, want: str) -> str:
    """'' when every user may reach and open `path` as wanted (r or x), else what stops them."""
    full = view.path(path)
    try:
        st = os.stat(full)
    except OSError as exc:
        return f"missing ({exc.strerror})"
    bit = stat.S_IROTH if want == "r" else stat.S_IXOTH
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & bit:
        return f"not {'readable' if want == 'r' else 'executable'} by job users (mode {stat.filemode(st.st_mode)})"
    parent = os.path.dirname(path)
    while parent not in ("/", ""):
        try:
            if not os.stat(view.path(parent)).st_mode & stat.S_IXOTH:
                return f"directory {parent} is not searchable by job users"
        except OSError:
            return f"directory {parent} is missing"
        parent = os.path.dirname(parent)
    return ""


def _check_file(view: NodeView, check: Check) -> Result:
    problem = _world_access(view, check.name, check.want)
    if not problem:
        return Result(check, True)
    fix = "chmod a+r the file and a+x its directories" if check.want == "r" else "install it (docs/install.md)"
    return Result(check, False, problem, fix)


def _check_device(view: NodeView, check: Check) -> Result:
    try:
        st = os.stat(view.path(check.name))
    except OSError:
        return Result(check, False, "missing", f"load the module that provides {check.name} (docs/install.md)")
    if not stat.S_ISCHR(st.st_mode):
        return Result(check, False, "not a character device", f"recreate {check.name}")
    if check.name == "/dev/net/tun" and st.st_mode & 0o006 != 0o006:
        return Result(check, False, f"mode {stat.filemode(st.st_mode)}: job users cannot open it",
                      "chmod 0666 /dev/net/tun (Debian's default; a udev rule keeps it)")
    return Result(check, True)


def _check_command(view: NodeView, check: Check) -> Result:
    exe = shutil.which(check.name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if exe is None:
        return Result(check, False, "not installed", "install nftables (docs/install.md)")
    proc = subprocess.run([exe, "-j", "list", "tables"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        return Result(check, False, f"`nft list tables` fails: {proc.stderr.strip()[:200]}",
                      "load nf_tables and run the check as root")
    return Result(check, True)


def _check_kernel(view: NodeView, check: Check) -> Result:
    release = view.kernel_release()
    try:
        version = tuple(int(p) for p in release.split("-")[0].split(".")[:2])
    except ValueError:
        version = (0, 0)
    if version >= NFT_NETDEV_EGRESS:
        return Result(check, True)
    return Result(check, False, f"kernel {release or '?'} is older than 5.16",
                  "a kernel of 5.16 or later (Debian 12's 6.1), or `trusted: true` on the network")


def _check_acl(view: NodeView, check: Check) -> Result:
    directory = view.path(view.state_dir)
    probe_dir = directory if os.path.isdir(directory) else os.path.dirname(directory)
    try:
        fd, probe = tempfile.mkstemp(dir=probe_dir, prefix=".svm-acl-probe.")
    except OSError as exc:
        return Result(check, False, f"cannot write in {probe_dir}: {exc.strerror}", "create state_dir (root, 0755)")
    try:
        os.close(fd)
        os.setxattr(probe, "system.posix_acl_access", PROBE_ACL)
    except OSError as exc:
        return Result(check, False, f"{view.state_dir} has no POSIX ACLs ({exc.strerror})",
                      "put state_dir on ext4, xfs or tmpfs (mounted with acl)")
    finally:
        os.unlink(probe)
    return Result(check, True)


RUNNERS = {"module": _check_module, "sysctl": _check_sysctl, "link": _check_link, "file": _check_file,
           "device": _check_device, "command": _check_command, "kernel": _check_kernel, "acl": _check_acl}


def run_checks(checks: list[Check], view: NodeView) -> list[Result]:
    return [RUNNERS[check.kind](view, check) for check in checks]


def check_node(config: Config, node: str, root: str = "/") -> list[Result]:
    view = NodeView(root=root, state_dir=config.node_state_dir(node))
    return run_checks(required_checks(config), view)


DRAIN_PREFIX = "slurm-vm node check:"


def drain_reason(results: list[Result]) -> str | None:
    """The node's drain reason for Slurm (None: ready), the first problem and how many more."""
    bad = [r for r in results if not r.ok]
    if not bad:
        return None
    first = f"{bad[0].check.kind} {bad[0].check.name}: {bad[0].detail}"
    more = f" (+{len(bad) - 1} more: slurm-vm node check)" if len(bad) > 1 else ""
    return f"{DRAIN_PREFIX} {first}{more}"[:250]


def drain_command(scontrol: str, node: str, reason: str | None, current_reason: str) -> list[str] | None:
    """scontrol to drain a node that is not ready, or to resume one this check drained before; None: nothing."""
    if reason is not None:
        return None if current_reason == reason else [scontrol, "update", f"NodeName={node}", "State=DRAIN",
                                                      f"Reason={reason}"]
    if current_reason.startswith(DRAIN_PREFIX):
        return [scontrol, "update", f"NodeName={node}", "State=RESUME"]
    return None
