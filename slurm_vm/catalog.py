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


# --- the user's own images (`slurm-vm image ...`, disks/repository.py); the CLI runs as the user ---------------

def user_repo(config: Config, user: str) -> str:
    from .errors import ImageError
    directory = config.user_images.user_dir(user)
    if directory is None:
        raise ImageError("this site has no user images (the admins' `user_images.repository` is unset)")
    return directory


def list_user_images(config: Config, user: str) -> list:
    """(name, UserImage or why it is refused) for each image in the user's repository; [] where there is none."""
    from .disks.repository import list_images as repo_list
    if config.user_images.repository is None:
        return []
    return repo_list(user_repo(config, user), os.getuid(), config.user_images.max_virtual_size,
                     config.hypervisor.qemu_img)


def check_user_image_named(config: Config, user: str, image: str) -> None:
    """At submit, as the user: a spec's `user:NAME` is in the user's repository (the prolog checks it in full)."""
    from .config import USER_IMAGE_PREFIX, is_user_image
    from .disks import repository
    if not is_user_image(image) or config.user_images.repository is None:
        return
    directory = user_repo(config, user)
    name = image.removeprefix(USER_IMAGE_PREFIX)
    if name not in repository.names(directory):
        raise repository.unknown(directory, name, sorted(config.images))


def user_image_info(config: Config, user: str, name: str):
    from .disks import repository
    from .config import USER_IMAGE_PREFIX
    name = name.removeprefix(USER_IMAGE_PREFIX)
    repository.check_name(name)
    directory = user_repo(config, user)
    if name not in repository.names(directory):
        raise repository.unknown(directory, name, sorted(config.images))
    return repository.record(directory, name, config.user_images.max_virtual_size, config.hypervisor.qemu_img,
                             deep=True)


def import_user_image(config: Config, user: str, source: str, name: str, boot: str | None, fmt: str | None):
    from .config import USER_IMAGE_PREFIX
    from .disks import repository, userimage
    from .errors import ImageError
    name = name.removeprefix(USER_IMAGE_PREFIX)
    boot = boot or _only_admin_image(config)
    if boot not in config.images:
        raise ImageError(f"--boot {boot}: not an admin image; give one of {', '.join(sorted(config.images))} "
                         "(its kernel or firmware boots your image)")
    userimage.check_path_name(source)
    source = os.path.abspath(source)
    req = repository.ImportRequest(source=source, format=userimage.format_from_name(source, fmt), name=name,
                                   boot=boot)
    cfg = config.user_images
    return repository.import_image(req, user_repo(config, user), os.getuid(), cfg.quota, cfg.max_virtual_size,
                                   config.hypervisor.qemu_img)


def _only_admin_image(config: Config) -> str:
    from .errors import ImageError
    if len(config.images) == 1:
        return next(iter(config.images))
    raise ImageError(f"--boot: name the admin image whose kernel or firmware boots yours: "
                     f"{', '.join(sorted(config.images))}")


def remove_user_image(config: Config, user: str, name: str) -> None:
    from .config import USER_IMAGE_PREFIX
    from .disks import repository
    repository.remove_image(user_repo(config, user), os.getuid(), name.removeprefix(USER_IMAGE_PREFIX),
                            sorted(config.images))


def user_usage(config: Config, user: str) -> tuple[int, int]:
    """(bytes the user's images take, the quota)."""
    from .disks.repository import usage
    if config.user_images.repository is None:
        return 0, 0
    return usage(user_repo(config, user)), config.user_images.quota
