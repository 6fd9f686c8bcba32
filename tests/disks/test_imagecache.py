"""The node cache of admin base images (disks/imagecache.py), on real files: one fill for concurrent jobs, LRU
eviction within the limit, a damaged copy detected and refilled, `node doctor`'s full check."""

from __future__ import annotations

import multiprocessing
import os
import time

import pytest

from slurm_vm.disks import imagecache as ic

M = 1 << 20


def base(tmp_path, name: str, size: int = 3 * M) -> str:
    path = str(tmp_path / name)
    with open(path, "wb") as fh:
        fh.write(os.urandom(size))
    return path


def read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def test_fill_then_hit(tmp_path):
    src = base(tmp_path, "deb.qcow2")
    cache = str(tmp_path / "cache")
    first = ic.ensure_cached(src, cache, 100 * M)
    assert first.filled and not first.refetched and read(first.path) == read(src)
    assert os.stat(first.path).st_mode & 0o777 == 0o644 and os.stat(cache).st_mode & 0o777 == 0o755
    second = ic.ensure_cached(src, cache, 100 * M)
    assert second.path == first.path and not second.filled


def test_a_replaced_source_is_a_new_entry(tmp_path):
    src = base(tmp_path, "deb.qcow2")
    cache = str(tmp_path / "cache")
    old = ic.ensure_cached(src, cache, 100 * M).path
    with open(src, "wb") as fh:
        fh.write(os.urandom(M))
    os.utime(src, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    new = ic.ensure_cached(src, cache, 100 * M)
    assert new.filled and new.path != old and read(new.path) == read(src)


def test_a_damaged_copy_is_detected_and_refetched(tmp_path):
    src = base(tmp_path, "deb.qcow2")
    cache = str(tmp_path / "cache")
    path = ic.ensure_cached(src, cache, 100 * M).path
    with open(path, "r+b") as fh:
        fh.seek(M)
        byte = fh.read(1)
        fh.seek(M)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert ic.check_cache(cache, 100 * M) and "damaged" in ic.check_cache(cache, 100 * M)[0]
    again = ic.ensure_cached(src, cache, 100 * M)
    assert again.filled and again.refetched and read(again.path) == read(src)
    assert ic.check_cache(cache, 100 * M) == []


def test_lru_eviction_keeps_the_limit(tmp_path):
    cache = str(tmp_path / "cache")
    a, b, c = (base(tmp_path, f"{n}.img", 4 * M) for n in "abc")
    ic.ensure_cached(a, cache, 10 * M)
    ic.ensure_cached(b, cache, 10 * M)
    ic.ensure_cached(a, cache, 10 * M)           # a used again: b is now the least recently used
    result = ic.ensure_cached(c, cache, 10 * M)
    kept = {meta["source"] for _, meta, _ in ic.entries(cache)}
    assert kept == {a, c} and len(result.evicted) == 1
    assert sum(size for _, _, size in ic.entries(cache)) <= 10 * M


def _fill_one(args: tuple[str, str]) -> bool:
    src, cache = args
    return ic.ensure_cached(src, cache, 100 * M).filled


def test_concurrent_jobs_fill_once(tmp_path):
    src = base(tmp_path, "big.img", 64 * M)
    cache = str(tmp_path / "cache")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        filled = pool.map(_fill_one, [(src, cache)] * 4)
    assert sorted(filled) == [False, False, False, True]
    assert [n for n in os.listdir(cache) if ".fill-" in n] == []


def test_a_fill_past_its_deadline_leaves_nothing(tmp_path):
    src = base(tmp_path, "big.img", 16 * M)
    cache = str(tmp_path / "cache")
    with pytest.raises(Exception, match="too long"):
        ic.ensure_cached(src, cache, 100 * M, deadline=time.monotonic() - 1)
    assert ic.entries(cache) == [] and [n for n in os.listdir(cache) if ".fill-" in n] == []


def test_doctor_fix_removes_damaged_entries(tmp_path):
    src = base(tmp_path, "deb.img")
    cache = str(tmp_path / "cache")
    path = ic.ensure_cached(src, cache, 100 * M).path
    with open(path, "r+b") as fh:
        fh.write(b"X")
    assert len(ic.remove_damaged(cache)) == 1 and ic.entries(cache) == []
