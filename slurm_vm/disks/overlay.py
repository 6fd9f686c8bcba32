"""qcow2 overlays on admin base images: the base is the backing file, never copied."""

from __future__ import annotations

import json
import os
import struct
import subprocess

from ..errors import DiskSizeError, NodeError

QEMU_IMG_TIMEOUT = 60


def qemu_img_info(path: str, fmt: str | None = None, qemu_img: str = "qemu-img",
                  timeout: int = QEMU_IMG_TIMEOUT) -> dict:
    argv = [qemu_img, "info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    proc = _run([*argv, path], timeout)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise NodeError(f"qemu-img info gave no JSON for {path}") from None


def _run(argv: list[str], timeout: int):
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise NodeError(f"{argv[0]} not found: install qemu-utils or set hypervisor.qemu_img") from None
    except subprocess.TimeoutExpired:
        raise NodeError(f"{os.path.basename(argv[0])} {argv[1]} took longer than {timeout}s") from None
    if proc.returncode != 0:
        raise NodeError(f"{os.path.basename(argv[0])} {argv[1]} failed: {' '.join(proc.stderr.split())}")
    return proc


def base_virtual_size(base: str, base_format: str, qemu_img: str = "qemu-img",
                      timeout: int = QEMU_IMG_TIMEOUT) -> int:
    """The guest-visible size of an admin's base image: read from the qcow2 header or the raw file's size
    (no subprocess on the prolog's hot path); anything unusual is left to qemu-img."""
    try:
        with open(base, "rb") as fh:
            header = fh.read(32)
            size = os.fstat(fh.fileno()).st_size
    except OSError as exc:
        raise NodeError(f"cannot read base image {base}: {exc.strerror}") from None
    if base_format == "raw":
        return size
    if len(header) == 32 and header[:4] == b"QFI\xfb":
        return struct.unpack(">Q", header[24:32])[0]
    return int(qemu_img_info(base, base_format, qemu_img, timeout).get("virtual-size", 0))


def create_overlay(base: str, base_format: str, overlay: str, size_bytes: int | None, uid: int, gid: int,
                   qemu_img: str = "qemu-img", timeout: int = QEMU_IMG_TIMEOUT, base_size: int | None = None) -> int:
    """Create `overlay` (qcow2, backing file `base`), at least as large as the base; returns its size.

    `base_size` given (a user's image, inspected as the user): root never opens the base, not even its header,
    and qemu-img is told not to (`-u`): the backing file is the user's to open, as the user, in QEMU."""
    if base_size is not None:
        _check_size(size_bytes, base_size)
        size = size_bytes if size_bytes is not None else base_size
        _run([qemu_img, "create", "-q", "-f", "qcow2", "-u", "-b", base, "-F", base_format, overlay, str(size)],
             timeout)
        os.chown(overlay, uid, gid, follow_symlinks=False)
        os.chmod(overlay, 0o600, follow_symlinks=False)
        return size
    if not os.path.isfile(base):
        raise NodeError(f"base image {base} does not exist on this node")
    base_size = base_virtual_size(base, base_format, qemu_img, timeout)
    _check_size(size_bytes, base_size)
    size = size_bytes if size_bytes is not None else base_size
    _run([qemu_img, "create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, overlay, str(size)], timeout)
    os.chown(overlay, uid, gid, follow_symlinks=False)
    os.chmod(overlay, 0o600, follow_symlinks=False)
    return size


def _check_size(size_bytes: int | None, base_size: int) -> None:
    if size_bytes is not None and size_bytes < base_size:
        raise DiskSizeError(f"disk: {size_bytes >> 20}M is smaller than the image's {base_size >> 20}M; "
                            "ask for at least the image size or leave `disk` out")
