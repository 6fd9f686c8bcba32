"""`checkpoint.compress: auto`: which pieces of guest RAM are sampled, what of them QEMU would write, and when the
sample is worth compressing (pure parts of launcher/qemu_save.py), and the zstd it runs on real data."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from slurm_vm.launcher.qemu_save import (COMPRESSORS, PAGE, SAMPLE_BYTES, SAMPLES, nonzero_pages, sample_offsets,
                                         worth_compressing)


def test_samples_are_page_aligned_inside_low_ram_above_the_first_mib():
    for memory in (64 << 20, 512 << 20, 2 << 30, 64 << 30):
        offsets = sample_offsets(memory)
        assert len(offsets) == SAMPLES and offsets == sorted(set(offsets))
        assert all(off % PAGE == 0 and off >= 1 << 20 for off in offsets)
        assert offsets[-1] + SAMPLE_BYTES <= min(memory, 3 << 30)
    assert sample_offsets(1 << 20) == []


def test_zero_pages_are_left_out_as_qemu_skips_them():
    data = bytes(PAGE) + b"x" * PAGE + bytes(PAGE - 1) + b"\x01"
    assert nonzero_pages(data) == b"x" * PAGE + bytes(PAGE - 1) + b"\x01"
    assert nonzero_pages(bytes(8 * PAGE)) == b""


def test_an_empty_sample_compresses_and_a_sample_must_shrink_enough():
    assert worth_compressing(b"", 0)
    assert worth_compressing(b"a" * 1000, 100)
    assert not worth_compressing(b"a" * 1000, 950)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="zstd not installed")
def test_the_compressor_tells_random_from_text():
    def compressed(data: bytes) -> int:
        return len(subprocess.run(COMPRESSORS["zstd"], input=data, capture_output=True, check=True).stdout)
    rnd = os.urandom(SAMPLES * SAMPLE_BYTES)
    text = b"".join(b"line %d of a guest's page cache\n" % i for i in range(40000))
    assert not worth_compressing(rnd, compressed(rnd))
    assert worth_compressing(text, compressed(text))
