"""Sizes and Slurm durations as users write them."""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE_RE = re.compile(r"^([0-9]{1,19})\s*([KMGT]?)(i?B)?$", re.IGNORECASE)
# Slurm's --time forms: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S, and the words below.
_TIME_RES = [
    re.compile(r"^(?P<m>\d+)$"),
    re.compile(r"^(?P<m>\d+):(?P<s>\d+)$"),
    re.compile(r"^(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+)$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)$"),
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"),
]
UNLIMITED_TIMES = ("infinite", "unlimited")


def parse_size(value: object) -> int:
    """'2G' -> 2147483648. Plain integers are bytes. Raises ValueError with the accepted forms."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512M or 2G, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 512M or 2G, got {type(value).__name__}")
    match = _SIZE_RE.match(value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size: use a whole number with an optional K, M, G or T suffix, e.g. 2G")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def format_size(n: int) -> str:
    """The largest exact unit: 2147483648 -> '2G', 1536M stays '1536M'."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SIZE_UNITS[suffix]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def mebibytes_rounded_up(n: int) -> int:
    return -(-n // (1 << 20))


def parse_slurm_time(value: object) -> int | None:
    """A Slurm time limit in seconds; None for unlimited. Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("expected a Slurm time limit such as 60, 2:00:00 or 1-12:00:00")
    text = str(value).strip()
    if text.lower() in UNLIMITED_TIMES:
        return None
    for regex in _TIME_RES:
        match = regex.match(text)
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            seconds = parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
            if seconds <= 0:
                raise ValueError("a time limit must be longer than 0")
            return seconds
    raise ValueError(f"{text!r} is not a Slurm time: use minutes (60), H:MM:SS (2:00:00) or D-HH:MM:SS (1-12:00:00)")

