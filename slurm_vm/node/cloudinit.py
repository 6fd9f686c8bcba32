"""Everything slurm-vm writes for cloud-init, in one place (pure): meta-data, user-data, vendor-data and
network-config of a VM's NoCloud seed. disks.seed packs them into the ISO."""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from ..hypervisor.shares import guest_fstype, guest_mount_options
from ..limits import GUEST_READY_MARKER
from ..spec import VMSpec

if TYPE_CHECKING:
    from .plan import NicPlan
    from .shares import SharePlan

CLOUD_CONFIG_HEADER = "#cloud-config"


def render_meta_data(instance_id: str, hostname: str) -> str:
    return yaml.safe_dump({"instance-id": instance_id, "local-hostname": hostname}, sort_keys=False)


def _cloud_config(data: dict) -> str:
    return CLOUD_CONFIG_HEADER + "\n" + yaml.safe_dump(data, sort_keys=False, width=4096)


def render_user_data(user_data: str | None, ssh_authorized_keys: list[str], hostname: str) -> tuple[str, str | None]:
    """(user-data, vendor-data). Keys are merged into the user's #cloud-config; any other kind of user-data
    (a script, MIME, an include) is left byte-for-byte as it is and the keys travel in vendor-data."""
    keys = list(ssh_authorized_keys)
    if user_data is None:
        return _cloud_config({"ssh_authorized_keys": keys} if keys else {}), None
    if not keys:
        return user_data, None
    if user_data.lstrip().startswith(CLOUD_CONFIG_HEADER):
        try:
            parsed = yaml.safe_load(user_data)
        except (yaml.YAMLError, RecursionError):   # not ours to judge: it goes to the guest as written
            parsed = None
        if isinstance(parsed, dict):
            existing = parsed.get("ssh_authorized_keys")
            merged = list(existing) if isinstance(existing, list) else []
            parsed["ssh_authorized_keys"] = merged + [k for k in keys if k not in merged]
            return _cloud_config(parsed), None
    return user_data, _cloud_config({"ssh_authorized_keys": keys})


def _vendor_mapping(vendor_data: str | None) -> dict:
    """The cloud-config mapping of vendor-data built so far (slurm-vm's own, so always a mapping or nothing)."""
    loaded = yaml.safe_load(vendor_data) if vendor_data else None
    return loaded if isinstance(loaded, dict) else {}


def hosts_vendor_data(entries: list[tuple[str, str]], vendor_data: str | None) -> str | None:
    """Merge an /etc/hosts for the job's VMs into the vendor-data cloud-config."""
    if not entries:
        return vendor_data
    base = _vendor_mapping(vendor_data)
    files = base.pop("write_files", [])
    base["manage_etc_hosts"] = False
    # Written by hand so that /etc/hosts is a literal block (`content: |`), the most portable YAML form.
    lines = ["127.0.0.1 localhost", *(f"{ip} {name}" for ip, name in entries)]
    block = "write_files:\n- path: /etc/hosts\n  permissions: '0644'\n  content: |\n" + \
        "".join(f"    {line}\n" for line in lines)
    if files:
        block += yaml.safe_dump(files, sort_keys=False, width=4096)
    return "#cloud-config\n" + yaml.safe_dump(base, sort_keys=False, width=4096) + block


READY_MESSAGE = GUEST_READY_MARKER + " cloud-init $VERSION finished after $UPTIME s"


def ready_vendor_data(vendor_data: str | None) -> str:
    """vendor-data whose cloud-init final message (printed on the console when cloud-init is done) is the
    fixed line slurm-vm's readiness wait looks for. A user-data `final_message` overrides it."""
    base: dict = {}
    body = ""
    if vendor_data:
        loaded = yaml.safe_load(vendor_data)
        if isinstance(loaded, dict):
            body = vendor_data.split("\n", 1)[1] if vendor_data.startswith(CLOUD_CONFIG_HEADER) else vendor_data
    base["final_message"] = READY_MESSAGE
    return CLOUD_CONFIG_HEADER + "\n" + yaml.safe_dump(base, sort_keys=False, width=4096) + body


def render_network_config(spec: VMSpec, nics: tuple[NicPlan, ...],
                          addresses: tuple[tuple[str, ...], ...]) -> str | None:
    """`addresses`: each NIC's static addresses (IPv4, IPv6); a NIC without any uses DHCP."""
    if spec.cloud_init.network_config is not None:
        return yaml.safe_dump(spec.cloud_init.network_config, sort_keys=False)
    if not nics:
        return None
    ethernets = {}
    for nic, ref, address in zip(nics, spec.networks, addresses):
        entry: dict = {"match": {"macaddress": nic.mac}, "set-name": f"eth{nic.index}"}
        if address:
            entry["addresses"] = list(address)
            if ref.gateway:
                entry["routes"] = [{"to": "0.0.0.0/0", "via": ref.gateway}]
        else:
            entry["dhcp4"] = True
        ethernets[f"eth{nic.index}"] = entry
    return yaml.safe_dump({"version": 2, "ethernets": ethernets}, sort_keys=False)


def mounts_vendor_data(shares: tuple[SharePlan, ...], transport: str, vendor_data: str | None) -> str | None:
    """Add cloud-init `mounts:` (one flow list per share, the form the tiny test guest reads too).

    The tags contain ':' so that cloud-init (22.4, Debian 12) keeps them as they are instead of
    looking for a block device of that name.
    """
    if not shares:
        return vendor_data
    base = _vendor_mapping(vendor_data)
    base.pop("mounts", None)
    head = "#cloud-config\n" + (yaml.safe_dump(base, sort_keys=False, width=4096) if base else "")
    lines = [f"- ['{s.tag}', '{s.target}', '{guest_fstype(transport)}', "
             f"'{guest_mount_options(transport, s.readonly)}', '0', '0']" for s in shares]
    return head + "mounts:\n" + "".join(line + "\n" for line in lines)
