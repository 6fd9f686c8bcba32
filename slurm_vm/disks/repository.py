"""A user's own image repository: one directory per user (the admin's `user_images.repository` with `%u`).

```
<repository>/<user>/        the user's, mode 0700 (made by the user on the first import)
  NAME.qcow2                a self-contained qcow2 (no backing file, no external data file), mode 0600
  NAME.json                 what slurm-vm knows of it: the admin image it boots like, its size, where it came from
  .NAME.part-*.qcow2        an import or save in progress (removed when it fails)
```

Every function here runs with the user's rights: on the login side the CLI is the user, on a node root calls
`resolve_for_use` only through `safefs.run_as_user`. Nothing here trusts the directory's contents: each image
is inspected (`userimage.inspect_image`, format fixed to qcow2) before it is listed as usable or booted.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from dataclasses import asdict, dataclass

from ..errors import ImageError
from ..schema import NAME_HELP, NAME_PATTERN
from . import userimage

META_MAX = 65536
PART_PREFIX = "."


@dataclass(frozen=True)
class UserImage:
    name: str
    path: str
    boot: str                 # the admin image whose kernel/firmware/cmdline boots it
    virtual_size: int
    allocated: int            # bytes the file takes on disk (what the quota counts)
    created: float
    source: str               # "import FILE" or "save VM (job N)"

    def as_json(self) -> dict:
        return asdict(self)


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ImageError(f"image name {name!r}: {NAME_HELP}")


def image_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.qcow2")


def meta_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.json")


def ensure_user_dir(directory: str, uid: int, create: bool) -> bool:
    """The user's repository dir exists (made with mode 0700 when `create`) and is a plain directory of the
    user's that no one else may write. False: it does not exist (and was not to be made)."""
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        if not create:
            return False
        try:
            os.mkdir(directory, 0o700)
        except FileNotFoundError:
            raise ImageError(f"the image repository {os.path.dirname(directory)} does not exist: ask the admins "
                             "(user_images.repository)") from None
        except PermissionError:
            raise ImageError(f"you may not make your image dir {directory}: ask the admins to make it for you "
                             "(user_images.repository)") from None
        st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise ImageError(f"your image dir {directory} is not a directory (a link or a file): remove it")
    if st.st_uid != uid:
        raise ImageError(f"your image dir {directory} belongs to uid {st.st_uid}, not you: ask the admins to "
                         "remove it (another user made it first)")
    if st.st_mode & 0o022:
        raise ImageError(f"your image dir {directory} is writable by others: `chmod 700 {directory}`")
    return True


def usage(directory: str) -> int:
    """Bytes the regular files in the user's dir take (allocated blocks: a sparse file counts what it uses)."""
    total = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        try:
            st = os.lstat(os.path.join(directory, name))
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_blocks * 512
    return total


def read_meta(directory: str, name: str) -> dict:
    try:
        fd = os.open(meta_path(directory, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        raise ImageError(f"image {name}: its record {meta_path(directory, name)} is missing or not a file") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError(f"image {name}: its record is not a regular file")
        data = os.read(fd, META_MAX)
    finally:
        os.close(fd)
    try:
        meta = json.loads(data)
    except ValueError:
        raise ImageError(f"image {name}: its record {meta_path(directory, name)} is not JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("boot"), str) or not re.fullmatch(NAME_PATTERN,
                                                                                                 meta["boot"]):
        raise ImageError(f"image {name}: its record names no admin image to boot like")
    return meta


def write_meta(directory: str, name: str, meta: dict) -> None:
    tmp = os.path.join(directory, f"{PART_PREFIX}{name}.json-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(meta, fh, indent=1, sort_keys=True)
    os.rename(tmp, meta_path(directory, name))


def names(directory: str) -> list[str]:
    """The image names in the dir (a NAME.qcow2 beside a NAME.json), sorted; nothing inspected yet."""
    try:
        entries = set(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in entries:
        stem, ext = os.path.splitext(entry)
        if ext == ".qcow2" and f"{stem}.json" in entries and re.fullmatch(NAME_PATTERN, stem):
            out.append(stem)
    return sorted(out)


def record(directory: str, name: str, max_virtual_size: int, qemu_img: str, deep: bool = False) -> UserImage:
    """The image `name`, inspected (format qcow2, self-contained, within the size limit)."""
    meta = read_meta(directory, name)
    path = image_path(directory, name)
    fd = userimage.open_image(path)
    try:
        facts = userimage.inspect_fd(path, fd, "qcow2", max_virtual_size, qemu_img, deep=deep)
        allocated = os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)
    return UserImage(name=name, path=path, boot=meta["boot"], virtual_size=facts.virtual_size, allocated=allocated,
                     created=float(meta.get("created", 0) or 0), source=str(meta.get("source", ""))[:300])


def unknown(directory: str, name: str, admin_names: list[str]) -> ImageError:
    yours = ", ".join(f"user:{n}" for n in names(directory)) or "none"
    admins = ", ".join(admin_names) or "none"
    return ImageError(f"image: no user:{name} in your repository; yours: {yours}; the admins': {admins} "
                      "(`slurm-vm images`)")


def resolve_for_use(directory: str, name: str, uid: int, max_virtual_size: int, qemu_img: str,
                    admin_names: list[str]) -> UserImage:
    """As the user, at use (the prolog): the dir is the user's, the image exists and passes every check again."""
    if not ensure_user_dir(directory, uid, create=False) or name not in names(directory):
        raise unknown(directory, name, admin_names)
    return record(directory, name, max_virtual_size, qemu_img, deep=True)


def list_images(directory: str, uid: int, max_virtual_size: int, qemu_img: str) -> list[tuple[str, UserImage | str]]:
    """Each image name with its record, or why it is refused (a file changed behind slurm-vm's back)."""
    if not ensure_user_dir(directory, uid, create=False):
        return []
    out: list[tuple[str, UserImage | str]] = []
    for name in names(directory):
        try:
            out.append((name, record(directory, name, max_virtual_size, qemu_img)))
        except ImageError as exc:
            out.append((name, str(exc)))
    return out


@dataclass(frozen=True)
class ImportRequest:
    source: str
    format: str
    name: str
    boot: str


def import_image(req: ImportRequest, directory: str, uid: int, quota: int, max_virtual_size: int,
                 qemu_img: str) -> UserImage:
    """Check the source (format fixed), convert it to a self-contained qcow2 in the user's dir, check the result."""
    check_name(req.name)
    ensure_user_dir(directory, uid, create=True)
    if req.name in names(directory) or os.path.lexists(image_path(directory, req.name)):
        raise ImageError(f"you already have an image {req.name}: `slurm-vm image rm {req.name}` first, or pick "
                         "another name")
    fd = userimage.open_image(req.source)
    try:
        userimage.inspect_fd(req.source, fd, req.format, max_virtual_size, qemu_img, deep=True)
        need = userimage.qemu_img_json(qemu_img, ["measure", "--output=json", "-f", req.format, "-O", "qcow2"],
                                       fd).get("required", 0)
        used = usage(directory)
        if used + int(need) > quota:
            raise ImageError(f"quota: {req.source} needs about {_mib(int(need))} and your images take "
                             f"{_mib(used)} of your {_mib(quota)}: `slurm-vm image rm` some first")
        return _convert_into(req, fd, directory, quota, max_virtual_size, qemu_img, f"import {req.source}")
    finally:
        os.close(fd)


def _convert_into(req: ImportRequest, fd: int, directory: str, quota: int, max_virtual_size: int, qemu_img: str,
                  source: str) -> UserImage:
    part = os.path.join(directory, f"{PART_PREFIX}{req.name}.part-{os.urandom(4).hex()}.qcow2")
    try:
        userimage.run_qemu_img(qemu_img, ["convert", "-q", "-f", req.format, "-O", "qcow2",
                                          f"/proc/self/fd/{fd}", part], pass_fds=(fd,))
        os.chmod(part, 0o600)
        return finish(part, req.name, req.boot, directory, quota, max_virtual_size, qemu_img, source)
    finally:
        if os.path.lexists(part):
            os.unlink(part)


def finish(part: str, name: str, boot: str, directory: str, quota: int, max_virtual_size: int, qemu_img: str,
           source: str) -> UserImage:
    """A finished qcow2 in the dir (import or save): check it, hold the quota, give it its name and record."""
    userimage.inspect_image(part, "qcow2", max_virtual_size, qemu_img, deep=True)
    used = usage(directory)
    if used > quota:
        raise ImageError(f"quota: with {name} your images would take {_mib(used)} of your {_mib(quota)}: "
                         "`slurm-vm image rm` some first")
    if os.path.lexists(image_path(directory, name)):
        raise ImageError(f"you already have an image {name}")
    write_meta(directory, name, {"boot": boot, "created": time.time(), "source": source})
    os.rename(part, image_path(directory, name))
    return record(directory, name, max_virtual_size, qemu_img)


def remove_image(directory: str, uid: int, name: str, admin_names: list[str]) -> None:
    check_name(name)
    if not ensure_user_dir(directory, uid, create=False) or not (
            os.path.lexists(image_path(directory, name)) or os.path.lexists(meta_path(directory, name))):
        raise unknown(directory, name, admin_names)
    for path in (image_path(directory, name), meta_path(directory, name)):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.0f}M"
