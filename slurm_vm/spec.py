"""The user's VM spec: what a VM needs, validated alone and then against the admin config."""

from __future__ import annotations

import pwd
from dataclasses import dataclass

from .config import Config, groups_of_user, is_user_image, user_may_use_network
from .errors import Problem, ValidationError
from .hypervisor import registry
from .limits import DERIVED_MAC_FIRST_OCTET, MAX_NICS, MAX_VMS_PER_JOB
from .mounts import HOME, allowed_prefix, expand_home, home_is_usable, is_under, target_problem
from .schema import (NAME_HELP, NAME_PATTERN, AbsPath, Bool, Context, Int, ListOf, Obj, RawMapping, SharePath, Size,
                     SlurmTime, Str, Text, field, parse_object)
from .yamldoc import load_document

MAX_SPEC_BYTES = 1 << 20
M = 1 << 20
G = 1 << 30
VM_NAME_PATTERN = r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?"
VM_NAME_HELP = "1-32 lower-case letters, digits or '-', starting and ending with a letter or digit"
HOSTNAME_PATTERN = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
MAC_PATTERN = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"
SSH_KEY_PATTERN = r"(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com) [A-Za-z0-9+/=]{16,16384}( [^\n\r\x00]{0,256})?"
IPV4_CIDR = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)/([0-9]|[12][0-9]|3[0-2])"
IPV4 = r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"
MAX_VOLUMES = 8
MAX_MOUNTS = 8


@dataclass(frozen=True)
class NetworkRef:
    network: str = field(Str(pattern=NAME_PATTERN, pattern_help=NAME_HELP), "name of an admin-defined network")
    mac: str | None = field(Str(pattern=MAC_PATTERN, pattern_help="a MAC such as 52:54:00:12:34:56"),
                            "MAC address (default: derived from the job, starting 02:); unique among running VMs", None)
    address: str | None = field(Str(pattern=IPV4_CIDR, pattern_help="an IPv4 address with prefix, e.g. 10.0.0.5/24"),
                                "static IPv4 address/prefix written to network-config (default: DHCP)", None)
    gateway: str | None = field(Str(pattern=IPV4, pattern_help="an IPv4 address"), "default gateway", None)


@dataclass(frozen=True)
class CloudInit:
    hostname: str | None = field(Str(pattern=HOSTNAME_PATTERN, pattern_help="a DNS label"),
                                 "guest hostname (default: the VM name; `NAME-i` in multi-VM jobs)", None)
    user_data: str | None = field(Text(limit_name="max_user_data"),
                                  "cloud-init user-data, e.g. `#cloud-config` text", None)
    ssh_authorized_keys: tuple = field(ListOf(Str(pattern=SSH_KEY_PATTERN, max_len=16700,
                                                  pattern_help="an OpenSSH public key line"), 32),
                                       "public keys for the default user", [])
    network_config: dict | None = field(RawMapping(), "cloud-init network-config (v1 or v2); default: "
                                        "generated from `networks`", None)


@dataclass(frozen=True)
class Volume:
    path: str = field(AbsPath(), "persistent disk image on the node (raw or qcow2), opened with your rights")
    readonly: bool = field(Bool(), "attach read-only", False)


@dataclass(frozen=True)
class Mount:
    source: str = field(SharePath(allow_home=True), "host directory, shared with your rights; `$HOME` is your "
                        "home; must lie under the admin's `mounts.allowed`")
    target: str = field(SharePath(), "directory in the guest where it appears (not a system directory)")
    readonly: bool = field(Bool(), "share read-only", False)


@dataclass(frozen=True)
class VMSpec:
    name: str = field(Str(pattern=VM_NAME_PATTERN, pattern_help=VM_NAME_HELP), "VM name; the job name is `vm-NAME`")
    image: str = field(Str(pattern=f"(user:)?{NAME_PATTERN}", pattern_help=NAME_HELP + ", or user:NAME for one "
                           "of your own images"), "name of an image in the admin's store, or `user:NAME`: an "
                       "image in your own repository (`slurm-vm image list`)")
    cpus: int = field(Int(1, 4096), "vCPUs; each gets one allocated core", 1)
    memory: int = field(Size(16 * M, 1 << 42), "guest memory", "1G")
    disk: int | None = field(Size(1 * M, 1 << 50), "root disk size (default: the image's size)", None)
    networks: tuple = field(ListOf(Obj(NetworkRef), MAX_NICS), "NICs, in order", [])
    cloud_init: CloudInit = field(Obj(CloudInit), "cloud-init NoCloud seed", CloudInit())
    volumes: tuple = field(ListOf(Obj(Volume), MAX_VOLUMES), "persistent disks, attached after the root disk", [])
    hypervisor: str = field(Str(choices=registry.NAMES), "hypervisor", registry.AUTO)
    time: str | None = field(SlurmTime(), "Slurm time limit (default: the partition's)", None)
    count: int = field(Int(1, 4096), "VMs in the job, one per node, on a job-private network", 1)
    mounts: tuple = field(ListOf(Obj(Mount), MAX_MOUNTS), "host directories shared into the VM", [])
    on_preempt: str = field(Str(choices=("shutdown", "checkpoint")),
                            "on preemption: ACPI shutdown, or save the VM and continue it when Slurm requeues the "
                            "job (needs the site's `checkpoint.dir`)", "shutdown")
    on_timeout: str = field(Str(choices=("shutdown", "checkpoint")),
                            "at the time-limit warning: ACPI shutdown, or save the VM and requeue the job "
                            "(`slurm-vm submit` adds `--requeue`)", "shutdown")
    on_restore_failure: str = field(Str(choices=("fail", "boot")),
                                    "a checkpoint that cannot be used (damaged, foreign, other VMM version): fail "
                                    "the job and keep the checkpoint, or boot the VM afresh", "fail")

    @property
    def checkpoints(self) -> bool:
        return "checkpoint" in (self.on_preempt, self.on_timeout)

    def hostname(self, vm_index: int = 0) -> str:
        base = self.cloud_init.hostname or self.name
        return base if self.count == 1 else f"{base}-{vm_index}"


def parse_spec(text: str | bytes, source: str, config: Config | None = None) -> VMSpec:
    """Validate a spec on its own, and against `config` when given. Raises ValidationError."""
    doc = load_document(text, source, MAX_SPEC_BYTES)
    limits = config.limits_by_name() if config else None

    def extra(spec: VMSpec, ctx: Context) -> None:
        _check_spec_shape(spec, ctx)
        if config is not None:
            _check_against_config(spec, config, ctx)

    return parse_object(VMSpec, doc, limits, extra)


def _check_spec_shape(spec: VMSpec, ctx: Context) -> None:
    macs: dict[str, int] = {}
    for i, nic in enumerate(spec.networks):
        if nic.mac is not None:
            first = int(nic.mac.split(":")[0], 16)
            if first & 1:
                ctx.problem(("networks", i, "mac"), f"{nic.mac} is a multicast address; use a unicast MAC "
                            "(even first octet), or leave it out")
            elif nic.mac.lower() == "00:00:00:00:00:00":
                ctx.problem(("networks", i, "mac"), "the all-zero MAC is not allowed")
            elif first == DERIVED_MAC_FIRST_OCTET:
                ctx.problem(("networks", i, "mac"), f"{nic.mac}: MACs starting with 02: are the ones slurm-vm gives "
                            "VMs; use another (e.g. 52:54:00:…), or leave `mac` out")
            elif nic.mac.lower() in macs:
                ctx.problem(("networks", i, "mac"), f"same MAC as networks[{macs[nic.mac.lower()]}]")
            else:
                macs[nic.mac.lower()] = i
            if spec.count > 1:
                ctx.problem(("networks", i, "mac"), "a fixed MAC cannot be used with `count` > 1")
        if nic.gateway and not nic.address:
            ctx.problem(("networks", i, "gateway"), "`gateway` needs `address`")
        if nic.address and spec.count > 1:
            ctx.problem(("networks", i, "address"), "a fixed address cannot be used with `count` > 1")
    if spec.cloud_init.network_config is not None and any(n.address for n in spec.networks):
        ctx.problem(("cloud_init", "network_config"), "give either `network_config` or per-network `address`")
    if spec.count > MAX_VMS_PER_JOB:
        ctx.problem(("count",), f"{spec.count} is more than {MAX_VMS_PER_JOB}, the most VMs a job can have "
                    "(unique MAC addresses per job)")
    seen_paths: set[str] = set()
    for i, vol in enumerate(spec.volumes):
        if vol.path in seen_paths:
            ctx.problem(("volumes", i, "path"), "this volume is listed twice")
        seen_paths.add(vol.path)
        if spec.count > 1 and not vol.readonly:
            ctx.problem(("volumes", i, "readonly"), "with `count` > 1 every VM would write the same volume: "
                        "set `readonly: true`")
    for i, target, message in mount_target_problems([m.target for m in spec.mounts]):
        ctx.problem(("mounts", i, "target"), message)


def _check_against_config(spec: VMSpec, config: Config, ctx: Context) -> None:
    limits = config.limits
    if spec.cpus > limits.max_cpus:
        ctx.problem(("cpus",), f"{spec.cpus} is more than the site limit of {limits.max_cpus}")
    if spec.memory > limits.max_memory:
        ctx.problem(("memory",), f"more than the site limit of {limits.max_memory >> 20}M")
    if spec.disk is not None and spec.disk > limits.max_disk:
        ctx.problem(("disk",), f"more than the site limit of {limits.max_disk >> 30}G")
    if spec.count > limits.max_count:
        ctx.problem(("count",), f"{spec.count} is more than the site limit of {limits.max_count}")
    if is_user_image(spec.image):
        if config.user_images.repository is None:
            ctx.problem(("image",), f"{spec.image!r}: this site has no user images (the admins' "
                        "`user_images.repository` is unset); use an image of `slurm-vm images`")
    elif spec.image not in config.images:
        known = ", ".join(sorted(config.images)) or "none configured"
        ctx.problem(("image",), f"no image {spec.image!r} in the image store; available: {known} "
                    "(`slurm-vm images` describes them)")
    elif not (config.images[spec.image].kernel or config.images[spec.image].firmware):
        ctx.problem(("image",), f"image {spec.image!r} has neither `kernel` nor `firmware` in the admin config, so "
                    "no VM can boot from it: ask the admins to add one")
    if spec.mounts and not config.mounts.allowed:
        ctx.problem(("mounts",), "this site shares no host directories (the admins' `mounts.allowed` is empty); "
                    "remove `mounts:` and copy data in over ssh")
    if spec.checkpoints:
        _check_checkpoint(spec, config, ctx)
    for i, nic in enumerate(spec.networks):
        if nic.network not in config.networks:
            known = ", ".join(sorted(config.networks)) or "none configured"
            ctx.problem(("networks", i, "network"), f"no network {nic.network!r}; available: {known} "
                        "(`slurm-vm networks` lists the ones you may use)")
        else:
            _check_addressing(spec, i, nic, config.networks[nic.network], ctx)
            _check_identity(i, nic, config, ctx)


def _check_addressing(spec: VMSpec, i: int, nic: NetworkRef, net, ctx: Context) -> None:
    """`count` must fit the network's addresses; a static address must lie in the subnet, outside the range
    slurm-vm hands out (whether another running VM holds it is checked by the prolog)."""
    from .networks.addresses import AddressError, network_address_plan
    if net.subnet is None:
        return
    plan = network_address_plan(net)
    if nic.address is None and spec.count > plan.size:
        ctx.problem(("count",), f"{spec.count} VMs do not fit network {nic.network!r}: slurm-vm hands out "
                    f"{plan.size} addresses there ({plan.range_text()})")
    if nic.address is not None:
        try:
            offset = plan.offset_of(nic.address)
        except AddressError as exc:
            ctx.problem(("networks", i, "address"), f"{exc}; leave `address` out to get one from slurm-vm")
            return
        if nic.address.split("/")[1] != str(plan.network.prefixlen):
            ctx.problem(("networks", i, "address"), f"use the subnet's prefix: {nic.address.split('/')[0]}/"
                        f"{plan.network.prefixlen}")
        elif net.vni_range is None and plan.in_range(offset):
            ctx.problem(("networks", i, "address"), f"{nic.address} is in the range slurm-vm hands out "
                        f"({plan.range_text()}); pick an address outside it, or leave `address` out")


def _check_identity(i: int, nic: NetworkRef, config: Config, ctx: Context) -> None:
    """A static address is no non-VM host's (the network's `reserved`, or those of networks on the same bridge,
    parent or VNI), and not one slurm-vm hands out on a network that shares the wire. Whether a running VM or the
    node holds it is checked by the prolog."""
    import ipaddress

    from .networks.addresses import network_address_plan
    from .networks.allocation import identity_domain
    net = config.networks[nic.network]
    domain = identity_domain(net)
    if nic.address is None or domain is None:
        return
    ip = ipaddress.IPv4Interface(nic.address).ip
    for name, other in sorted(config.networks.items()):
        if identity_domain(other) != domain:
            continue
        if any(ip in ipaddress.ip_network(r, strict=False) for r in other.reserved
               if ipaddress.ip_network(r, strict=False).version == 4):
            ctx.problem(("networks", i, "address"), f"{ip} is reserved by the admins (network {name!r}: a router or "
                        "server, not a VM); pick another address")
            return
        if name != nic.network and other.subnet and ip in ipaddress.IPv4Network(other.subnet):
            plan = network_address_plan(other)
            offset = int(ip) - int(plan.network.network_address)
            if plan.in_range(offset):
                ctx.problem(("networks", i, "address"), f"{ip} is handed out by slurm-vm on network {name!r}, which "
                            f"shares this network's wire ({plan.range_text()}); pick an address outside it")
                return


def _check_checkpoint(spec: VMSpec, config: Config, ctx: Context) -> None:
    key = ("on_preempt",) if spec.on_preempt == "checkpoint" else ("on_timeout",)
    if config.checkpoint.dir is None:
        ctx.problem(key, "this site has no checkpoint storage (`checkpoint.dir` in the admin config); "
                    "use `shutdown` or ask the admins")
    hypervisor = spec.hypervisor if spec.hypervisor != registry.AUTO else config.hypervisor.default
    kind = registry.HYPERVISORS.get(hypervisor)
    if kind is not None and not kind.keeps_running_after_save and spec.count > 1:
        keepers = " or ".join(h.name for h in registry.HYPERVISORS.values() if h.keeps_running_after_save)
        ctx.problem(key, f"checkpoints of multi-VM jobs need `hypervisor: {keepers}`: a {hypervisor} guest ends with "
                    "its save, so a round that another VM fails could not resume it")
    if spec.mounts:
        ctx.problem(key, "a VM with `mounts` cannot be checkpointed (neither QEMU nor cloud-hypervisor can save "
                    "9p/virtiofs shares); remove `mounts` or use `shutdown`")


def check_user_access(spec: VMSpec, config: Config, user: str, source: str) -> None:
    """Networks restricted to users or groups, mounts outside the allowlist. Raises ValidationError naming the field."""
    groups = groups_of_user(user)
    problems = [Problem(f"mounts[{i}].source", message, None, source)
                for i, message in mount_source_problems(spec, config, user)]
    for i, nic in enumerate(spec.networks):
        net = config.networks.get(nic.network)
        if net is not None and not user_may_use_network(net, user, groups):
            problems.append(Problem(f"networks[{i}].network", f"user {user!r} may not use network {nic.network!r}; "
                                    "ask the admins or pick another network (`slurm-vm networks` lists yours)", None, source))
    if problems:
        raise ValidationError(problems)


def mount_target_problems(targets: list[str]) -> list[tuple[int, str, str]]:
    out = []
    for i, target in enumerate(targets):
        problem = target_problem(target)
        if problem is None:
            other = next((j for j in range(i) if is_under(target, targets[j]) or is_under(targets[j], target)), None)
            if other is not None:
                problem = f"same as or nested with mounts[{other}].target; give each share its own directory"
        if problem is not None:
            out.append((i, target, problem))
    return out


def mount_source_problems(spec: VMSpec, config: Config, user: str) -> list[tuple[int, str]]:
    """Sources outside the allowlist, with `$HOME` expanded to `user`'s home (lexical: the node re-checks)."""
    if not spec.mounts or not config.mounts.allowed:
        return []
    try:
        home = pwd.getpwnam(user).pw_dir
    except KeyError:
        home = ""
    out = []
    for i, mount in enumerate(spec.mounts):
        uses_home = mount.source.startswith(HOME) or any(a.startswith(HOME) for a in config.mounts.allowed)
        if uses_home and not home_is_usable(home):
            out.append((i, f"user {user!r} has no usable home directory here to stand for $HOME"))
            continue
        path = expand_home(mount.source, home)
        if allowed_prefix(path, config.mounts.allowed, home) is None:
            allowed = ", ".join(config.mounts.allowed)
            out.append((i, f"{path} is not under a directory the admins allow ({allowed}); pick a directory there"))
    return out


def validate_files(paths: tuple[str, ...], config: Config, user: str) -> list[tuple[str, list[Problem]]]:
    """Each spec file with its problems (an empty list: it would be accepted)."""
    results = []
    for path in paths:
        try:
            spec, _ = load_spec_file(path, config)
            check_user_access(spec, config, user, path)
            results.append((path, []))
        except ValidationError as exc:
            results.append((path, list(exc.problems)))
    return results


def load_spec_file(path: str, config: Config | None = None) -> tuple[VMSpec, str]:
    """Read a spec file; returns the spec and its text (what travels with the job)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise ValidationError([Problem("", f"cannot read the spec: {exc.strerror}", None, path)]) from None
    spec = parse_spec(data, path, config)
    return spec, data.decode("utf-8")

