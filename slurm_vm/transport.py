"""How a VM spec travels from `slurm-vm submit` to the node prolog, without a shared filesystem.

The spec text rides in the job itself:
- the job's Comment marks it as a VM job: `slurm-vm:1:z:<base64 zlib of the spec>` when that fits in
  Slurm's 1024-character comment, else `slurm-vm:1:sha256:<hex digest of the spec>`;
- the batch script always carries the spec, base64 between marker lines, for the second form: the prolog
  reads it with `scontrol write batch_script` (one bounded RPC) and checks the digest.
Slurm hands the prolog the comment that was set when the job was allocated (SLURM_JOB_COMMENT), so a
job without our prefix costs the prolog nothing. The spec is validated again on the node: the comment
and the script are the user's, untrusted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib

from .errors import TransportError

COMMENT_PREFIX = "slurm-vm:1:"
MAX_COMMENT = 1024
BEGIN_MARK = "# slurm-vm-spec-begin"
END_MARK = "# slurm-vm-spec-end"
MAX_SPEC_BYTES = 1 << 20


def spec_digest(spec_text: str) -> str:
    return hashlib.sha256(spec_text.encode("utf-8")).hexdigest()


def encode_comment(spec_text: str) -> str:
    inline = COMMENT_PREFIX + "z:" + base64.b64encode(zlib.compress(spec_text.encode("utf-8"), 9)).decode("ascii")
    if len(inline) <= MAX_COMMENT:
        return inline
    return COMMENT_PREFIX + "sha256:" + spec_digest(spec_text)


def is_vm_comment(comment: str | None) -> bool:
    return bool(comment) and comment.startswith(COMMENT_PREFIX)  # type: ignore[union-attr]


def inline_spec(comment: str) -> str | None:
    """The spec text if the comment carries it inline, None if it only carries a digest."""
    body = comment[len(COMMENT_PREFIX):]
    if body.startswith("sha256:"):
        return None
    if not body.startswith("z:"):
        raise TransportError("the job comment has an unknown slurm-vm format; resubmit with this slurm-vm version")
    try:
        raw = zlib.decompressobj().decompress(base64.b64decode(body[2:], validate=True), MAX_SPEC_BYTES + 1)
    except (binascii.Error, zlib.error, ValueError):
        raise TransportError("the job comment's slurm-vm spec is damaged; do not edit the comment of VM jobs") from None
    return _decode(raw)


def comment_digest(comment: str) -> str:
    body = comment[len(COMMENT_PREFIX):]
    digest = body[len("sha256:"):]
    if not body.startswith("sha256:") or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise TransportError("the job comment's slurm-vm digest is damaged; do not edit the comment of VM jobs")
    return digest


def embed_in_script(spec_text: str) -> str:
    encoded = base64.encodebytes(spec_text.encode("utf-8")).decode("ascii")
    lines = [f"# {line}" for line in encoded.splitlines()]
    return "\n".join([BEGIN_MARK, *lines, END_MARK])


def spec_from_script(script: str, digest: str | None = None) -> str:
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
    if digest is not None and spec_digest(text) != digest:
        raise TransportError("the batch script's spec does not match the job comment; do not edit VM jobs")
    return text


def _decode(raw: bytes) -> str:
    if len(raw) > MAX_SPEC_BYTES:
        raise TransportError("the spec is larger than 1 MiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TransportError("the spec is not UTF-8 text") from None
