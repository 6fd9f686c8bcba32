"""How a VM spec travels from `slurm-vm submit` to the node prolog, without a shared filesystem, and
without showing it to other users.

- The batch script carries the spec: base64 between marker lines, after a line with a random salt.
  Only the job's owner, root and SlurmUser can read a batch script (`scontrol write batch_script`).
- The job's Comment only marks it as a VM job and binds it to that script:
  `slurm-vm:2:<sha256 hex of salt + spec>`. Every user can read comments (`squeue -o %k`), so the
  comment carries nothing of the spec; the salt keeps a guessed spec from being confirmed against the
  digest. The prolog reads the script with one bounded RPC and checks the digest.
Slurm hands the prolog the comment that was set when the job was allocated (SLURM_JOB_COMMENT), so a
job without our prefix costs the prolog nothing. The spec is validated again on the node: the comment
and the script are the user's, untrusted.

Comments of slurm-vm 1 (`slurm-vm:1:z:<base64 zlib spec>`, readable by all, and `slurm-vm:1:sha256:<plain
digest>`) are still read, so that jobs queued before an upgrade run; `submit` no longer writes them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import zlib
from dataclasses import dataclass

from .errors import TransportError

COMMENT_PREFIX = "slurm-vm:"          # every version's; the hooks' shell entry checks only this
CURRENT_PREFIX = "slurm-vm:2:"
LEGACY_PREFIX = "slurm-vm:1:"
MAX_COMMENT = 1024
SALT_MARK = "# slurm-vm-spec-salt "
BEGIN_MARK = "# slurm-vm-spec-begin"
END_MARK = "# slurm-vm-spec-end"
MAX_SPEC_BYTES = 1 << 20
SALT_BYTES = 16
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class SpecReference:
    """What a VM job's comment says about its spec: the text itself (slurm-vm 1's inline form), or the
    digest the batch script's spec must have (salted unless `legacy`)."""
    inline: str | None = None
    digest: str | None = None
    legacy: bool = False


def new_salt() -> str:
    return secrets.token_hex(SALT_BYTES)


def spec_digest(spec_text: str, salt: str = "") -> str:
    """sha256 of the salt's bytes and the spec's UTF-8; no salt: slurm-vm 1's plain digest."""
    return hashlib.sha256(bytes.fromhex(salt) + spec_text.encode("utf-8")).hexdigest()


def encode_comment(spec_text: str, salt: str) -> str:
    return CURRENT_PREFIX + spec_digest(spec_text, salt)


def legacy_inline_comment(spec_text: str) -> str:
    """slurm-vm 1's inline form (readable by every user): for tests of the hooks without Slurm only."""
    return LEGACY_PREFIX + "z:" + base64.b64encode(zlib.compress(spec_text.encode("utf-8"), 9)).decode("ascii")


def is_vm_comment(comment: str | None) -> bool:
    return bool(comment) and comment.startswith(COMMENT_PREFIX)  # type: ignore[union-attr]


def parse_comment(comment: str) -> SpecReference:
    """The comment's reference to the spec; TransportError (the user's fault) for anything else."""
    if comment.startswith(CURRENT_PREFIX):
        return SpecReference(digest=_digest(comment[len(CURRENT_PREFIX):]))
    if not comment.startswith(LEGACY_PREFIX):
        raise TransportError("the job comment has an unknown slurm-vm format; resubmit with this slurm-vm version")
    body = comment[len(LEGACY_PREFIX):]
    if body.startswith("sha256:"):
        return SpecReference(digest=_digest(body[len("sha256:"):]), legacy=True)
    if not body.startswith("z:"):
        raise TransportError("the job comment has an unknown slurm-vm format; resubmit with this slurm-vm version")
    try:
        raw = zlib.decompressobj().decompress(base64.b64decode(body[2:], validate=True), MAX_SPEC_BYTES + 1)
    except (binascii.Error, zlib.error, ValueError):
        raise TransportError("the job comment's slurm-vm spec is damaged; do not edit the comment of VM jobs") from None
    return SpecReference(inline=_decode(raw), legacy=True)


def _digest(text: str) -> str:
    if len(text) != 64 or not set(text) <= _HEX:
        raise TransportError("the job comment's slurm-vm digest is damaged; do not edit the comment of VM jobs")
    return text


def comment_digest(comment: str) -> str:
    """The digest a digest-form comment (either version) binds its batch script to."""
    digest = parse_comment(comment).digest
    if digest is None:
        raise TransportError("the job comment carries the spec inline, not a digest")
    return digest


def inline_spec(comment: str) -> str | None:
    """The spec text if the comment carries it inline (slurm-vm 1), None if it only carries a digest."""
    return parse_comment(comment).inline


def embed_in_script(spec_text: str, salt: str) -> str:
    encoded = base64.encodebytes(spec_text.encode("utf-8")).decode("ascii")
    lines = [f"# {line}" for line in encoded.splitlines()]
    return "\n".join([SALT_MARK + salt, BEGIN_MARK, *lines, END_MARK])


def spec_from_script(script: str, ref: SpecReference) -> str:
    """Extract the embedded spec from a batch script; check it against the comment's digest."""
    lines = script.splitlines()
    try:
        start = lines.index(BEGIN_MARK)
        end = lines.index(END_MARK, start)
    except ValueError:
        raise TransportError("the batch script carries no slurm-vm spec; submit VMs with `slurm-vm submit`") from None
    body = "".join(line[2:] for line in lines[start + 1:end] if line.startswith("# "))
    if len(body) > 2 * MAX_SPEC_BYTES:
        raise TransportError("the embedded spec is too large")
    try:
        raw = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise TransportError("the batch script's embedded spec is damaged") from None
    text = _decode(raw)
    salt = "" if ref.legacy else _salt(lines[start - 1] if start > 0 else "")
    if ref.digest is None or spec_digest(text, salt) != ref.digest:
        raise TransportError("the batch script's spec does not match the job comment; do not edit VM jobs")
    return text


def _salt(line: str) -> str:
    salt = line[len(SALT_MARK):] if line.startswith(SALT_MARK) else ""
    if len(salt) != 2 * SALT_BYTES or not set(salt) <= _HEX:
        raise TransportError("the batch script's slurm-vm salt is damaged; submit VMs with `slurm-vm submit`")
    return salt


def _decode(raw: bytes) -> str:
    if len(raw) > MAX_SPEC_BYTES:
        raise TransportError("the spec is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TransportError("the spec is not UTF-8 text") from None
