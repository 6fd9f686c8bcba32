"""What a user may put in a spec: the site's images and the networks this user may use (`slurm-vm images`,
`slurm-vm networks`)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import asdict, dataclass

from .config import Config, Image, Network, groups_of_user, user_may_use_network


@dataclass(frozen=True)
class ImageInfo:
    name: str
    description: str
    boot: str              # "kernel" (direct boot) or "firmware" (disk boot)
    format: str
    login_user: str | None  # the image's default user (cloud-init's), as the admins name it
    size_bytes: int | None  # the base image's virtual size, where this host can read it

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    kind: str
    subnet: str | None
    private: bool          # each job gets a segment of its own (vxlan with a vni_range)

    def as_json(self) -> dict:
        return asdict(self)


def image_size(image: Image, qemu_img: str, timeout: int = 10) -> int | None:
    """The virtual size from `qemu-img info --output=json`; the file size where qemu-img is missing;
    None where the image is not readable here (it may live on the nodes only)."""
    if not os.access(image.path, os.R_OK):
        return None
    try:
        proc = subprocess.run([qemu_img, "info", "--output=json", "-f", image.format, "--", image.path],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return os.path.getsize(image.path)
    if proc.returncode != 0:
        return None
    try:
        return int(json.loads(proc.stdout)["virtual-size"])
    except (ValueError, KeyError, TypeError):
        return None


def list_images(config: Config) -> list[ImageInfo]:
    return [ImageInfo(name=name, description=image.description, boot="firmware" if image.firmware else "kernel",
                      format=image.format, login_user=image.login_user, size_bytes=image_size(image, config.hypervisor.qemu_img))
            for name, image in sorted(config.images.items())]


def network_info(name: str, net: Network) -> NetworkInfo:
    return NetworkInfo(name=name, kind=net.kind, subnet=net.subnet,
                       private=net.kind == "vxlan" and net.vni_range is not None and net.vni is None)


def list_networks(config: Config, user: str) -> list[NetworkInfo]:
    """The networks `user` may use (allowed_users / allowed_groups)."""
    groups = groups_of_user(user)
    return [network_info(name, net) for name, net in sorted(config.networks.items())
            if user_may_use_network(net, user, groups)]
