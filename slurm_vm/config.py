"""The admin's node configuration (/etc/slurm-vm/config.yaml, or $SLURM_VM_CONFIG)."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from .errors import Problem, ValidationError
from .hypervisor import registry
from .limits import CONFIG_ENV, DEFAULT_CONFIG_PATH, GUARD_VNI  # noqa: F401  (spelled in limits for light importers)
from .schema import (AbsPath, Bool, BoolOrChoice, Context, Int, ListOf, MapOf, Obj, SharePath, Size, Str, field,
                     parse_object)
from .yamldoc import load_document


G = 1 << 30
M = 1 << 20

USER_PATTERN = r"[a-z_][a-z0-9_.-]{0,31}\$?"
USER_HELP = "a user or group name"


@dataclass(frozen=True)
class Image:
    path: str = field(AbsPath(), "base disk image (backing file of every VM's overlay; must be readable by job users)")
    format: str = field(Str(choices=("qcow2", "raw")), "format of the base image", "qcow2")
    kernel: str | None = field(AbsPath(), "kernel for direct boot (exclusive with `firmware`)", None)
    initrd: str | None = field(AbsPath(), "initramfs for direct boot", None)
    cmdline: str | None = field(Str(max_len=2048), "kernel command line for direct boot", None)
    firmware: str | None = field(AbsPath(), "firmware (e.g. CLOUDHV.fd or OVMF) for disk boot", None)
    description: str = field(Str(max_len=200), "shown by `slurm-vm images`", "")
    login_user: str | None = field(Str(pattern=USER_PATTERN, pattern_help=USER_HELP),
                                   "the image's login user (cloud-init's default user, who gets the spec's "
                                   "`ssh_authorized_keys`), shown by `slurm-vm images`", None)


@dataclass(frozen=True)
class Network:
    kind: str = field(Str(choices=("bridge", "macvtap", "vxlan")), "how a VM NIC reaches the network")
    bridge: str | None = field(Str(pattern=r"[A-Za-z0-9_.-]{1,15}", pattern_help="an interface name"),
                               "`bridge`: existing host bridge the job's tap joins", None)
    parent: str | None = field(Str(pattern=r"[A-Za-z0-9_.-]{1,15}", pattern_help="an interface name"),
                               "`macvtap`: parent interface; `vxlan`: underlay interface", None)
    mode: str = field(Str(choices=("bridge", "vepa", "private", "passthru")), "`macvtap` mode", "bridge")
    vni: int | None = field(Int(1, 16777215), "`vxlan`: fixed VNI shared by all jobs using this network", None)
    vni_range: tuple | None = field(ListOf(Int(1, 16777215), 2),
                                    "`vxlan`: [first, last] VNIs for job-private segments (multi-VM jobs)", None)
    port: int = field(Int(1, 65535), "`vxlan`: UDP port", 4789)
    mtu: int | None = field(Int(576, 65535), "MTU of the VM's device", None)
    vxlan_mode: str = field(Str(choices=("multicast", "unicast")),
                            "`vxlan`: how VTEPs find each other: a multicast group per VNI, or (`unicast`, "
                            "job-private segments only) static FDB entries to exactly the job's nodes, learning "
                            "off, VXLAN packets of the VNI from other hosts dropped", "multicast")
    underlay_addresses: dict = field(MapOf(Str(pattern=r"[0-9A-Fa-f.:]{2,45}", pattern_help="an IPv4 or IPv6 address")),
                                     "`unicast`: underlay address of each node name (default: the node's NodeAddr "
                                     "from Slurm, resolved by DNS where it is a name)", {})
    subnet: str | None = field(Str(pattern=r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)/(1[6-9]|2[0-9]|30)",
                                   pattern_help="an IPv4 subnet /16 to /30, e.g. 192.168.100.0/24"),
                               "IPv4 addresses slurm-vm gives VMs (network-config): on a job-private segment VM i "
                               "gets host i+1 and every guest's /etc/hosts names the job's VMs; on a shared network "
                               "each VM gets a free address of `address_range`, agreed cluster-wide", None)
    subnet6: str | None = field(Str(pattern=r"[0-9A-Fa-f:]{2,39}/[0-9]{2,3}", pattern_help="an IPv6 network, e.g. fd00:77::/64"),
                                "IPv6 network (/64 to /120) of the same VMs: a VM gets the same host offset as in "
                                "`subnet`", None)
    address_range: tuple | None = field(ListOf(Str(pattern=r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
                                                   pattern_help="an IPv4 address"), 2),
                                        "shared networks with `subnet`: [first, last] addresses slurm-vm hands out "
                                        "(default: every host address but the first); static addresses in specs "
                                        "must lie outside it", None)
    trusted: bool = field(Bool(), "turn off anti-spoofing on this network's VM ports (see the admin guide, "
                          "\"Network isolation\")", False)
    allow_dhcp_server: bool = field(Bool(), "let guests send DHCP/DHCPv6 server replies (UDP source port 67/547)",
                                    False)
    allow_router_advertisements: bool = field(Bool(), "let guests send IPv6 router advertisements and redirects",
                                              False)
    reserved: tuple = field(ListOf(Str(pattern=r"[0-9A-Fa-f.:]{2,45}(/[0-9]{1,3})?",
                                       pattern_help="an IPv4 or IPv6 address or network, e.g. 10.0.0.1 or 10.0.0.0/28")),
                            "addresses of hosts that are not VMs (routers, servers, the gateway): no spec's static "
                            "`address` may claim one (the node's own addresses and MACs are refused anyway)", [])
    allowed_users: tuple = field(ListOf(Str(pattern=USER_PATTERN, pattern_help=USER_HELP)),
                                 "users who may use it (empty and no groups: everyone)", [])
    allowed_groups: tuple = field(ListOf(Str(pattern=USER_PATTERN, pattern_help=USER_HELP)),
                                  "groups whose members may use it", [])


@dataclass(frozen=True)
class HypervisorConfig:
    default: str = field(Str(choices=registry.NAMES), "hypervisor for specs that say `auto`",
                         "auto")
    accelerator: str = field(Str(choices=("auto", "kvm", "tcg")),
                             "`auto` uses KVM only where it can boot guests, else TCG", "auto")
    qemu_binary: str = field(AbsPath(), "QEMU system emulator", "/usr/bin/qemu-system-x86_64")
    cloud_hypervisor_binary: str = field(AbsPath(), "cloud-hypervisor binary", "/usr/bin/cloud-hypervisor")
    qemu_img: str = field(AbsPath(), "qemu-img, used by the prolog", "/usr/bin/qemu-img")
    memory_overhead: int = field(Size(0, 64 * G), "added to the guest memory for the job's --mem (VMM overhead)",
                                 "256M")


@dataclass(frozen=True)
class Limits:
    max_cpus: int = field(Int(1, 4096), "most vCPUs one VM may have", 64)
    max_memory: int = field(Size(16 * M, 1 << 42), "most guest memory", "256G")
    max_disk: int = field(Size(1 * M, 1 << 50), "largest root overlay", "1T")
    max_user_data: int = field(Size(1024, 16 * M), "largest cloud-init user-data", "64K")
    max_count: int = field(Int(1, 4096), "most VMs in one job (`count`)", 64)


@dataclass(frozen=True)
class SlurmConfig:
    backend: str = field(Str(choices=("auto", "cli", "pyslurm")), "`auto`: pyslurm where it imports, else the CLI",
                         "cli")
    command_timeout: int = field(Int(1, 600), "seconds any Slurm command may take", 30)
    kill_wait: int = field(Int(1, 3600), "slurm.conf KillWait; the grace time must fit inside it", 30)
    bin_dir: str | None = field(AbsPath(), "where sbatch, squeue, scontrol, scancel live (default: PATH)", None)


@dataclass(frozen=True)
class MountsConfig:
    allowed: tuple = field(ListOf(SharePath(allow_home=True)), "directories (prefixes) users may share into VMs; "
                           "`$HOME` is the job user's own home. Empty: no `mounts:` allowed", [])
    transport: str = field(Str(choices=("9p", "virtiofs")), "QEMU's share device: `9p` (built in, no daemon) or "
                           "`virtiofs` (a virtiofsd per share); cloud-hypervisor always uses virtiofs", "9p")
    virtiofsd: str = field(AbsPath(), "virtiofsd binary (run as the job user in a user namespace)",
                           "/usr/lib/qemu/virtiofsd")


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str | None = field(AbsPath(), "where VM checkpoints go: storage every node sees; `%u` is replaced by the "
                            "job's user name. The prolog makes the per-user dir, owned by the user with mode "
                            "0700: as root when its parent is root's with mode 0755 (recommended: no user can "
                            "make another's first), else as the user; a dir another user made is refused. "
                            "Unset: specs may not ask for `checkpoint`", None, example="/scratch/slurm-vm/%u")
    keep: int = field(Int(1, 100), "complete checkpoints kept per job (older ones are removed after a new save)", 1)
    compress: str = field(BoolOrChoice(("auto", "zstd", "none"), "zstd", "none"),
                          "compress the saved RAM and device state (QEMU): `auto` uses zstd when a sample of the "
                          "guest's RAM compresses (else it writes it as is, at the storage's speed), `zstd` always, "
                          "`none` never", "auto")

    def user_dir(self, user: str) -> str | None:
        return None if self.dir is None else self.dir.replace("%u", user)


@dataclass(frozen=True)
class ImageCacheConfig:
    dir: str | None = field(AbsPath(), "node-local directory where the prolog keeps copies of the admins' base "
                            "images (`%n`: the node name), so VMs read local disk, not the shared store; verified by "
                            "SHA-256, one fill per image and node. Unset: VMs read `images[].path` directly", None,
                            example="/var/cache/slurm-vm/images")
    max_size: int = field(Size(1 * M, 1 << 50), "most bytes the cache may hold; least-recently-used copies are "
                          "removed after a fill", "50G")
    fill_seconds: int = field(Int(1, 80), "longest a prolog spends copying one image into the cache; a longer copy "
                              "is given up and the job reads the shared path (prefill big images with `slurm-vm node "
                              "cache-fill`)", 45)

    def node_dir(self, node: str) -> str | None:
        return None if self.dir is None else self.dir.replace("%n", node)


USER_IMAGE_PREFIX = "user:"   # a spec's `image: user:NAME` is the job user's own image, never an admin's


@dataclass(frozen=True)
class UserImagesConfig:
    repository: str | None = field(AbsPath(), "where each user's own images live: storage every node and login node "
                                   "sees; `%u` is replaced by the user name. The user's dir is made by the user "
                                   "(mode 0700) on the first import; a dir another user made is refused. Unset: no "
                                   "user images (`image: user:NAME` is refused)", None,
                                   example="/shared/slurm-vm/images/%u")
    quota: int = field(Size(1 * M, 1 << 50), "most bytes one user's images may take (the files' allocated size)",
                       "50G")
    max_virtual_size: int = field(Size(1 * M, 1 << 50), "largest virtual size (guest disk) of a user's image: "
                                  "bigger ones are refused at import and at use", "1T")

    def user_dir(self, user: str) -> str | None:
        return None if self.repository is None else self.repository.replace("%u", user)


def is_user_image(name: str) -> bool:
    return name.startswith(USER_IMAGE_PREFIX)


@dataclass(frozen=True)
class Config:
    images: dict = field(MapOf(Obj(Image)), "the image store: names users may put in `image`")
    networks: dict = field(MapOf(Obj(Network)), "networks users may put in `networks[].network`", {})
    state_dir: str = field(AbsPath(), "per-node state: job dirs, journals, locks (node-local; `%n` is replaced by "
                           "the Slurm node name, for nodes that share a filesystem)", "/var/lib/slurm-vm")
    hypervisor: HypervisorConfig = field(Obj(HypervisorConfig), "hypervisor binaries and defaults",
                                         HypervisorConfig())
    grace_seconds: int = field(Int(1, 3600), "seconds between the ACPI power button and a hard stop", 20)
    limits: Limits = field(Obj(Limits), "limits on what a spec may ask for", Limits())
    slurm: SlurmConfig = field(Obj(SlurmConfig), "how slurm-vm talks to Slurm", SlurmConfig())
    slurm_vm_command: str = field(Str(max_len=4000, pattern=r"[A-Za-z0-9_./+-]+", pattern_help="a command or path"),
                                  "command the batch script runs on the node to launch the VM", "slurm-vm")
    user_errors: str = field(Str(choices=("fail-job", "drain-node")),
                             "prolog refusal of a user's spec: fail the job with the reason, or exit non-zero "
                             "(Slurm drains the node and requeues the job held)", "fail-job")
    allocation_timeout: int = field(Int(1, 60), "seconds a prolog waits for a free job-private VNI or shared "
                                    "address before the job fails with the reason (the job's other nodes wait 20s "
                                    "longer for the first node's choice; the prolog's own limit is 90s)", 30)
    log_file: str | None = field(AbsPath(), "file the node hooks append one line per event to (besides syslog)",
                                 None)
    mounts: MountsConfig = field(Obj(MountsConfig), "host directories users may share into their VMs",
                                 MountsConfig())
    checkpoint: CheckpointConfig = field(Obj(CheckpointConfig), "checkpoints on preemption and time limit",
                                         CheckpointConfig())
    image_cache: ImageCacheConfig = field(Obj(ImageCacheConfig), "node-local copies of the admins' base images",
                                          ImageCacheConfig())
    user_images: UserImagesConfig = field(Obj(UserImagesConfig), "images users import or save themselves "
                                          "(`slurm-vm image`), beside the admins' `images`", UserImagesConfig())
    novnc_dir: str = field(AbsPath(), "noVNC's web files on login nodes, for `slurm-vm vnc --web` (Debian "
                           "package novnc)", "/usr/share/novnc")

    def node_state_dir(self, node: str) -> str:
        return self.state_dir.replace("%n", node)

    def limits_by_name(self) -> dict[str, int]:
        return {"max_user_data": self.limits.max_user_data}


def _check_config(cfg: Config, ctx: Context) -> None:
    for name, image in cfg.images.items():
        path = ("images", name)
        if image.kernel and image.firmware:
            ctx.problem(path + ("firmware",), "give either `kernel` (direct boot) or `firmware`, not both")
        if image.initrd and not image.kernel:
            ctx.problem(path + ("initrd",), "`initrd` needs `kernel`")
        if image.cmdline and not image.kernel:
            ctx.problem(path + ("cmdline",), "`cmdline` needs `kernel`")
    for name, net in cfg.networks.items():
        _check_network(name, net, ctx)
    _check_vni_overlap(cfg, ctx)
    for i, entry in enumerate(cfg.mounts.allowed):
        if entry == "/" or any(entry == t or entry.startswith(t + "/") for t in ("/proc", "/sys", "/dev", "/etc",
                                                                             "/boot", "/run")):
            ctx.problem(("mounts", "allowed", i), f"{entry} would let users share system files; list data "
                        "directories such as /home, /scratch or $HOME")
    if cfg.checkpoint.dir is not None and "%u" not in cfg.checkpoint.dir:
        ctx.problem(("checkpoint", "dir"), "put `%u` (the user name) in the path, e.g. /scratch/slurm-vm/%u: "
                    "every user needs a directory of their own")
    if cfg.user_images.repository is not None and "%u" not in cfg.user_images.repository:
        ctx.problem(("user_images", "repository"), "put `%u` (the user name) in the path, e.g. "
                    "/shared/slurm-vm/images/%u: every user needs a directory of their own")
    if cfg.grace_seconds + 5 > cfg.slurm.kill_wait:
        ctx.problem(("grace_seconds",), f"{cfg.grace_seconds}s does not leave 5s before slurm.kill_wait "
                    f"({cfg.slurm.kill_wait}s): lower it or raise KillWait in slurm.conf and slurm.kill_wait here")


def _check_network(name: str, net: Network, ctx: Context) -> None:
    path = ("networks", name)
    needs = {"bridge": ("bridge",), "macvtap": ("parent",), "vxlan": ("parent",)}[net.kind]
    for key in needs:
        if getattr(net, key) is None:
            ctx.problem(path + (key,), f"a `{net.kind}` network needs `{key}`")
    if net.kind == "vxlan":
        if (net.vni is None) == (net.vni_range is None):
            ctx.problem(path + ("vni",), "a `vxlan` network needs exactly one of `vni` or `vni_range`")
        if net.vni_range is not None and (len(net.vni_range) != 2 or net.vni_range[0] > net.vni_range[1]):
            ctx.problem(path + ("vni_range",), "use [first, last] with first <= last")
    _check_addressing(name, net, ctx)
    if net.kind != "vxlan" and (net.vni is not None or net.vni_range is not None):
        ctx.problem(path + ("vni",), f"`vni`/`vni_range` apply to `vxlan` networks only, not `{net.kind}`")
    if net.kind == "vxlan" and net.vni == GUARD_VNI or net.vni_range and GUARD_VNI in range(net.vni_range[0],
                                                                                              net.vni_range[-1] + 1):
        ctx.problem(path + ("vni",), f"VNI {GUARD_VNI} is slurm-vm's own (the node's VXLAN guard devices); use "
                    "lower VNIs")


def _check_addressing(name: str, net: Network, ctx: Context) -> None:
    import ipaddress

    from .networks.addresses import AddressError, check_ip, check_subnet6
    path = ("networks", name)
    if net.kind != "vxlan" and (net.vxlan_mode != "multicast" or net.underlay_addresses):
        ctx.problem(path + ("vxlan_mode",), "`vxlan_mode`/`underlay_addresses` apply to `vxlan` networks only")
    if net.vxlan_mode == "unicast" and net.vni_range is None:
        ctx.problem(path + ("vxlan_mode",), "`unicast` needs `vni_range` (job-private segments): a shared `vni` has "
                    "no job node list to replicate to")
    for i, entry in enumerate(net.reserved):
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            ctx.problem(path + ("reserved", i), f"{entry!r} is not an address or network such as 10.0.0.1 or "
                        "10.0.0.0/28")
    for node, address in net.underlay_addresses.items():
        try:
            check_ip(address)
        except AddressError as exc:
            ctx.problem(path + ("underlay_addresses", node), str(exc))
    if (net.subnet6 or net.address_range) and net.subnet is None:
        ctx.problem(path + ("subnet",), "`subnet6` and `address_range` need `subnet`")
        return
    if net.subnet is None:
        return
    subnet = ipaddress.ip_interface(net.subnet)
    if subnet.network.network_address != subnet.ip:
        ctx.problem(path + ("subnet",), f"{net.subnet} has host bits set; use the network address")
        return
    if net.subnet6 is not None:
        try:
            six = ipaddress.IPv6Network(check_subnet6(net.subnet6))
        except AddressError as exc:
            ctx.problem(path + ("subnet6",), str(exc))
        else:
            if six.num_addresses < subnet.network.num_addresses:
                ctx.problem(path + ("subnet6",), f"smaller than `subnet` {net.subnet}: every IPv4 host offset "
                            "needs its IPv6 address")
    if net.address_range is not None:
        if net.vni_range is not None:
            ctx.problem(path + ("address_range",), "a job-private segment (`vni_range`) has no shared range: "
                        "VM i gets host i+1")
            return
        from .networks.addresses import shared_plan
        try:
            shared_plan(net.subnet, tuple(net.address_range))
        except AddressError as exc:
            ctx.problem(path + ("address_range",), str(exc))


def _check_vni_overlap(cfg: Config, ctx: Context) -> None:
    """A shared segment's fixed `vni` inside some network's `vni_range` would let a job-private segment be
    the shared one."""
    ranges = [(name, net.vni_range) for name, net in cfg.networks.items()
              if net.vni_range is not None and len(net.vni_range) == 2]
    for name, net in cfg.networks.items():
        for other, (first, last) in ranges:
            if net.vni is not None and first <= net.vni <= last:
                ctx.problem(("networks", name, "vni"), f"{net.vni} lies in network {other!r}'s vni_range "
                            f"[{first}, {last}]: a job-private segment could be this shared one; pick a VNI "
                            "outside every vni_range")


def config_path() -> str:
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def parse_config(text: str | bytes, source: str) -> Config:
    doc = load_document(text, source)
    return parse_object(Config, doc, extra_checks=_check_config)


def load_config(path: str | None = None) -> Config:
    """Read and validate the admin config. Raises ValidationError (one Problem per mistake)."""
    path = path or config_path()
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 20 + 1)
    except OSError as exc:
        raise ValidationError([Problem("", f"cannot read the slurm-vm config ({exc.strerror}); set {CONFIG_ENV} "
                                           f"or create {DEFAULT_CONFIG_PATH}", None, path)]) from None
    return parse_config(data, path)


def user_may_use_network(net: Network, user: str, groups: set[str]) -> bool:
    if not net.allowed_users and not net.allowed_groups:
        return True
    return user in net.allowed_users or bool(groups & set(net.allowed_groups))


def groups_of_user(user: str) -> set[str]:
    """Names of the user's groups (primary and supplementary) from the system's databases."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return set()
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return names
