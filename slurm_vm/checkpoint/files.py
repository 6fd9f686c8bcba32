"""A checkpoint's files, whatever the VMM: seal a state file the VMM wrote, copy the overlay in with its digest,
put a saved overlay back in place. Every file private to the user, on disk (fsync) before the manifest names it."""

from __future__ import annotations

import hashlib
import os

from .manifest import CHUNK, FileEntry, sha256_of


def seal(path: str) -> FileEntry:
    """A state file the VMM wrote: private, on disk (fsync), hashed for the manifest."""
    os.chmod(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size, digest = sha256_of(path)
    return FileEntry(os.path.basename(path), size, digest)


def copy_with_digest(src: str, dst_dir: str, name: str) -> FileEntry:
    """Copy a file into the checkpoint dir (0600), fsync it, and hash it on the way."""
    digest, size = hashlib.sha256(), 0
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(os.path.join(dst_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                         os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd_in, CHUNK):
                digest.update(chunk)
                os.write(fd_out, chunk)
                size += len(chunk)
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return FileEntry(name, size, digest.hexdigest())


def restore_file(src: str, dst: str) -> None:
    """Put the saved overlay in place of the fresh one the prolog made (same directory, atomic rename)."""
    tmp = dst + ".restoring"
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            remaining = os.fstat(fd_in).st_size
            while remaining > 0:
                copied = os.copy_file_range(fd_in, fd_out, min(remaining, 1 << 30))
                if copied == 0:
                    break
                remaining -= copied
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    os.replace(tmp, dst)
